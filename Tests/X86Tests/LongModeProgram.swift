@testable import X86

/// 64-bit checkpoints: REX prefixes, the registers R8-R15, 64-bit operands
/// and SIB memory operands in the data area at 0x2000.
enum LongModeProgram {
    /// mov r64, imm64 (REX.W B8+r).
    static func mov64(_ register: Int, _ value: UInt64) -> [UInt8] {
        [0x48 | (register >= 8 ? 1 : 0), 0xB8 + UInt8(register & 7)] + (0..<8).map { UInt8(truncatingIfNeeded: value >> UInt64($0 * 8)) }
    }

    /// The prefixes of an instruction with operand width `width`, ModRM.reg
    /// register `reg` and ModRM.rm register `rm`.
    static func prefixes(width: Int, reg: Int, rm: Int) -> [UInt8] {
        var rex: UInt8 = 0
        if width == 64 { rex |= 8 }
        if reg >= 8 { rex |= 4 }
        if rm >= 8 { rex |= 1 }
        // SPL BPL SIL DIL need a REX prefix; without one, 4-7 are AH CH DH BH: both are worth covering.
        return (width == 16 ? [0x66] : []) + (rex != 0 ? [0x40 | rex] : [])
    }

    static func generate(seed: UInt64, count: Int) -> [Checkpoint] {
        var rng = SplitMix64(state: seed)
        var points: [Checkpoint] = []
        // Registers the snippets may use: everything but RSP (the stack) and RBX/RSI (addresses).
        let usable = [0, 1, 2, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        for _ in 0..<count {
            let width = [8, 16, 32, 64][Int(rng.next() % 4)]
            let dst = usable[Int(rng.next() % UInt64(usable.count))]
            let src = usable[Int(rng.next() % UInt64(usable.count))]
            let a = rng.operand(64), b = rng.operand(64)
            let carry: [UInt8] = rng.next() & 1 == 0 ? [0xF8] : [0xF9]
            var code = mov64(dst, a) + mov64(src, b) + carry
            var undefined = UndefinedFlags.none
            let byteForm: UInt8 = width == 8 ? 0 : 1
            let modrm = UInt8(0xC0 | ((src & 7) << 3) | (dst & 7))
            let label: String
            switch Int(rng.next() % 7) {
            case 0, 1:  // op dst, src
                let op = Int(rng.next() % 8)
                code += prefixes(width: width, reg: src, rm: dst) + [UInt8(op << 3) | byteForm, modrm]
                if op == 1 || op == 4 || op == 6 { undefined = UndefinedFlags.logic }
                label = "alu/\(op) w\(width) r\(dst), r\(src)"
            case 2:  // group 3: NOT NEG MUL IMUL on dst, with RAX/RDX implied
                let sub = [2, 3, 4, 5][Int(rng.next() % 4)]
                code += prefixes(width: width, reg: 0, rm: dst) + [0xF6 | byteForm, UInt8(0xC0 | (sub << 3) | (dst & 7))]
                if sub >= 4 { undefined = UndefinedFlags.multiply }
                label = "group3/\(sub) w\(width) r\(dst)"
            case 3:  // shifts and rotates by CL
                let op = Int(rng.next() % 8)
                let count = Int(rng.next() % 80)
                code += mov64(1, UInt64(count)) + prefixes(width: width, reg: 0, rm: dst)
                code += [0xD2 | byteForm, UInt8(0xC0 | (op << 3) | (dst & 7))]
                let masked = count & (width == 64 ? 63 : 31)
                undefined = op < 4 ? UndefinedFlags.rotate(count: masked) : UndefinedFlags.shift(count: masked, width: width)
                label = "shift/\(op) w\(width) r\(dst) by \(count)"
            case 4:  // DIV r/m64 by a nonzero divisor with RDX = 0
                let divisor = b == 0 ? 7 : b
                code = mov64(0, a) + mov64(2, 0) + mov64(9, divisor) + [0x49, 0xF7, 0xF1]  // div r9
                undefined = UndefinedFlags.divide
                label = "div64"
            case 5:  // op [rbx + rsi*2 + d8], src with RBX in the data area
                let op = Int(rng.next() % 8)
                let d8 = UInt8(rng.next() % 0x40)
                code += mov64(3, 0x2000 + rng.next() % 0x100) + mov64(6, rng.next() % 0x40) + carry
                code += prefixes(width: width, reg: src, rm: 0) + [UInt8(op << 3) | byteForm, UInt8(0x44 | ((src & 7) << 3)), 0x73, d8]
                if op == 1 || op == 4 || op == 6 { undefined = UndefinedFlags.logic }
                label = "alu/\(op) w\(width) [rbx+rsi*2+\(d8)], r\(src)"
            default:  // MOVSXD, MOVZX, IMUL r, r/m, imm8
                code += [0x48 | (src >= 8 ? 4 : 0) | (dst >= 8 ? 1 : 0), 0x63, modrm]  // movsxd src, dst32
                code += [0x48 | (dst >= 8 ? 4 : 0) | (src >= 8 ? 1 : 0), 0x0F, 0xB7, UInt8(0xC0 | ((dst & 7) << 3) | (src & 7))]  // movzx dst, src16
                code += [0x48 | (dst >= 8 ? 4 : 0) | (src >= 8 ? 1 : 0), 0x6B, UInt8(0xC0 | ((dst & 7) << 3) | (src & 7)), UInt8(truncatingIfNeeded: rng.next())]
                undefined = UndefinedFlags.multiply
                label = "movsxd/movzx/imul3 r\(dst), r\(src)"
            }
            points.append(Checkpoint(code: code + DifferentialProgram.out, undefined: undefined, label: label + " a=\(a) b=\(b)"))
        }
        return points
    }
}
