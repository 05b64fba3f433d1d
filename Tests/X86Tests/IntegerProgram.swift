@testable import X86

/// Checkpoints for the integer instructions beyond the ALU core, in one of
/// the three set-ups of `DifferentialTests.compare`, restricted to what KVM's
/// emulator runs the way the CPU does (see `IntegerDifferentialTests`).
/// Memory operands are [rBX + d8] with rBX in the data area at 0x2000; stack
/// operations start from an rSP inside the compared stack range.
struct IntegerProgram {
    let setup: Machine.Setup

    var long: Bool { setup == .long64 }
    var code16: Bool { setup == .real }

    /// Registers the snippets use as operands: not rSP, nor rBX (the address).
    var registers: [Int] { long ? [0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] : [0, 1, 2, 5, 6, 7] }

    /// Loads `value` into register `index`: all 64 bits in long mode, else 32.
    func load(_ index: Int, _ value: UInt64) -> [UInt8] {
        if long { return LongModeProgram.mov64(index, value) }
        return (code16 ? [0x66] : []) + [0xB8 + UInt8(index)] + DifferentialProgram.le32(value)
    }

    /// Loads the low 32 bits of `value`, clearing the upper half in long mode.
    func load32(_ index: Int, _ value: UInt64) -> [UInt8] {
        guard long else { return load(index, value) }
        return (index >= 8 ? [0x41] : []) + [0xB8 + UInt8(index & 7)] + DifferentialProgram.le32(value)
    }

    /// The prefixes and opcode of an instruction with operand width `width`
    /// (8 means the byte form, chosen by the caller's opcode), ModRM `reg`
    /// and `rm`, a memory operand [rBX + d8] when `memory` (rm is then 3).
    func instruction(_ opcode: [UInt8], width: Int, reg: Int, rm: Int, memory: Bool, d8: UInt8 = 0,
                     lock: Bool = false, immediate: [UInt8] = []) -> [UInt8] {
        var prefixes: [UInt8] = lock ? [0xF0] : []
        if width == 16 && !code16 || width == 32 && code16 { prefixes.append(0x66) }
        if memory && code16 { prefixes.append(0x67) }
        if long {
            var rex: UInt8 = 0
            if width == 64 { rex |= 8 }
            if reg >= 8 { rex |= 4 }
            if !memory && rm >= 8 { rex |= 1 }
            if rex != 0 { prefixes.append(0x40 | rex) }
        }
        let modrm = memory ? UInt8(0x43 | ((reg & 7) << 3)) : UInt8(0xC0 | ((reg & 7) << 3) | (rm & 7))
        return prefixes + opcode + [modrm] + (memory ? [d8] : []) + immediate
    }

    /// The stack pointer set before stack templates: inside 0x7F00..<0x8000.
    func loadStack(_ value: UInt64) -> [UInt8] {
        if code16 { return [0xBC] + DifferentialProgram.le32(value).prefix(2) }
        return load(4, value)
    }

    func generate(seed: UInt64, count: Int) -> [Checkpoint] {
        var rng = SplitMix64(state: seed)
        var points: [Checkpoint] = []
        let widths = long ? [8, 16, 32, 64] : [8, 16, 32]
        while points.count < count {
            let width = widths[Int(rng.next() % UInt64(widths.count))]
            let wide = width == 8 ? 16 : width  // for the forms without a byte variant
            let byteForm: UInt8 = width == 8 ? 0 : 1
            let reg = registers[Int(rng.next() % UInt64(registers.count))]
            var rm = registers[Int(rng.next() % UInt64(registers.count))]
            let memory = rng.next() & 1 == 0
            if memory { rm = 3 }
            let d8 = UInt8(rng.next() % 0x40)
            let a = rng.operand(64), b = rng.operand(64)
            let base = 0x2000 + rng.next() % 0x80
            let carry: [UInt8] = rng.next() & 1 == 0 ? [0xF8] : [0xF9]
            var code = load(3, base) + load(reg, a) + (memory ? [] : load(rm, b)) + carry
            var undefined = UndefinedFlags.none
            var label: String
            switch Int(rng.next() % 14) {
            case 0:  // CMPXCHG, the accumulator equal to the destination half the time
                let equal = rng.next() & 1 == 0
                if memory {
                    if equal { code += instruction([width == 8 ? 0x8A : 0x8B], width: width, reg: 0, rm: 3, memory: true, d8: d8) }
                    else { code += load(0, rng.operand(64)) }
                } else {
                    // KVM's emulator zero-extends a 32-bit register destination
                    // even when the comparison fails (the CPU does not): keep
                    // its upper half clear so that both agree.
                    if width == 32 { code += load32(rm, b) }
                    code += load(0, equal ? b : rng.operand(64))
                }
                let lock = memory && rng.next() & 1 == 0
                code += instruction([0x0F, 0xB0 | byteForm], width: width, reg: reg, rm: rm, memory: memory, d8: d8, lock: lock)
                label = "\(lock ? "lock " : "")cmpxchg w\(width) \(memory ? "[rbx+\(d8)]" : "r\(rm)"), r\(reg) equal \(equal)"
            case 1:  // XADD
                let lock = memory && rng.next() & 1 == 0
                code += instruction([0x0F, 0xC0 | byteForm], width: width, reg: reg, rm: rm, memory: memory, d8: d8, lock: lock)
                label = "\(lock ? "lock " : "")xadd w\(width) \(memory ? "[rbx+\(d8)]" : "r\(rm)"), r\(reg)"
            case 2:  // BSF, BSR, with a zero source a quarter of the time
                let reverse = rng.next() & 1 == 0
                if rng.next() % 4 == 0 {
                    code += memory ? instruction([0xC7], width: wide == 64 ? 64 : 32, reg: 0, rm: 3, memory: true, d8: d8, immediate: [0, 0, 0, 0])
                        : load(rm, 0)
                }
                code += instruction([0x0F, reverse ? 0xBD : 0xBC], width: wide, reg: reg, rm: rm, memory: memory, d8: d8)
                undefined = UndefinedFlags.bitScan
                label = "\(reverse ? "bsr" : "bsf") w\(wide) r\(reg), \(memory ? "[rbx+\(d8)]" : "r\(rm)")"
            case 3:  // SHLD, SHRD by imm8 or CL (16-bit counts up to 16: above, the result is undefined)
                let right = rng.next() & 1 == 0
                let byCL = rng.next() & 1 == 0
                let raw = Int(rng.next() % 80)
                let masked = raw & (wide == 64 ? 63 : 31)
                if wide == 16 && masked > 16 { continue }
                if byCL { code += load(1, UInt64(raw)) }
                let opcode: UInt8 = (right ? 0xAC : 0xA4) | (byCL ? 1 : 0)
                code += instruction([0x0F, opcode], width: wide, reg: reg, rm: rm, memory: memory, d8: d8,
                                    immediate: byCL ? [] : [UInt8(raw)])
                undefined = UndefinedFlags.doubleShift(count: masked, width: wide)
                label = "\(right ? "shrd" : "shld") w\(wide) \(memory ? "[rbx+\(d8)]" : "r\(rm)"), r\(reg), \(byCL ? "cl" : "imm") \(raw)"
            case 4:  // BSWAP (16-bit is undefined)
                let width = long && rng.next() & 1 == 0 ? 64 : 32
                let rex: [UInt8] = long && (width == 64 || reg >= 8) ? [0x40 | (width == 64 ? 8 : 0) | (reg >= 8 ? 1 : 0)] : []
                code += (code16 ? [0x66] : []) + rex + [0x0F, 0xC8 | UInt8(reg & 7)]
                label = "bswap w\(width) r\(reg)"
            case 5:  // CMPXCHG8B (KVM's emulator does not do CMPXCHG16B)
                let equal = rng.next() & 1 == 0
                let lock = rng.next() & 1 == 0
                if equal {
                    code += instruction([0x8B], width: 32, reg: 0, rm: 3, memory: true, d8: d8)
                    code += instruction([0x8B], width: 32, reg: 2, rm: 3, memory: true, d8: d8 + 4)
                } else {
                    code += load(0, a) + load(2, rng.operand(64))
                }
                code += load(1, b) + instruction([0x0F, 0xC7], width: 32, reg: 1, rm: 3, memory: true, d8: d8, lock: lock)
                label = "\(lock ? "lock " : "")cmpxchg8b [rbx+\(d8)] equal \(equal)"
            case 6:  // ENTER with nesting level 0 (KVM's emulator does no other)
                let allocation = UInt16(rng.next() % 0x30)
                code += loadStack(0x7FC0 + (rng.next() % 8) * 2) + load(5, a)
                code += [0xC8, UInt8(allocation & 0xFF), UInt8(allocation >> 8), 0]
                label = "enter \(allocation), 0"
            case 7:  // PUSHA, POPA (not in 64-bit mode)
                guard !long else { continue }
                let pop = rng.next() & 1 == 0
                let size32 = rng.next() & 1 == 0
                code += loadStack(0x7F80 + (rng.next() % 8) * 2) + load(6, b) + load(7, a)
                code += (size32 == code16 ? [0x66] : []) + [pop ? 0x61 : 0x60]
                label = "\(pop ? "popa" : "pusha")\(size32 ? "d" : "")"
            case 8:  // XLAT
                code += load(0, a) + [0xD7]
                label = "xlat al=\(a & 0xFF)"
            case 9:  // DAS, AAM, AAD (not in 64-bit mode)
                guard !long else { continue }
                let flags: [UInt8] = [0xB4, UInt8(truncatingIfNeeded: b), 0x9E]  // mov ah, b; sahf: AF and CF as the test wants
                code += load(0, a) + flags
                switch rng.next() % 3 {
                case 0:
                    code += [0x2F]
                    undefined = UndefinedFlags.decimalAdjust
                    label = "das al=\(a & 0xFF) flags=\(b & 0xFF)"
                case 1:
                    let base = UInt8(rng.next() % 255 + 1)
                    code += [0xD4, base]
                    // KVM's emulator sets SF and ZF from AX or EAX, not AL.
                    undefined = UndefinedFlags.asciiMultiplyDivide | RFLAGS.sf | RFLAGS.zf
                    label = "aam \(base) al=\(a & 0xFF)"
                default:
                    let base = UInt8(truncatingIfNeeded: rng.next())
                    code += [0xD5, base]
                    undefined = UndefinedFlags.asciiMultiplyDivide | RFLAGS.sf | RFLAGS.zf
                    label = "aad \(base) al=\(a & 0xFF) ah=\(b & 0xFF)"
                }
            case 10:  // LDS LES LSS LFS LGS in real mode, the segment then put back
                guard code16 else { continue }
                let which = Int(rng.next() % 5)
                let opcode: [UInt8] = [[0xC5], [0xC4], [0x0F, 0xB2], [0x0F, 0xB4], [0x0F, 0xB5]][which]
                let sreg: UInt8 = [3, 0, 2, 4, 5][which]
                let size32 = rng.next() & 1 == 0
                code += instruction(opcode, width: size32 ? 32 : 16, reg: reg, rm: 3, memory: true, d8: d8)
                code += [0x8C, 0xC2 | (sreg << 3), 0xB9, 0, 0, 0x8E, 0xC1 | (sreg << 3)]  // mov dx, sreg; mov cx, 0; mov sreg, cx
                label = "\(["lds", "les", "lss", "lfs", "lgs"][which])\(size32 ? "32" : "16") r\(reg), [bx+\(d8)]"
            case 11:  // LOCK on the ALU, group 1, NOT/NEG/INC/DEC, BTS/BTR/BTC, and XCHG with memory
                switch rng.next() % 5 {
                case 0:
                    let op = [0, 1, 2, 3, 4, 5, 6][Int(rng.next() % 7)]
                    code += instruction([UInt8(op << 3) | byteForm], width: width, reg: reg, rm: 3, memory: true, d8: d8, lock: true)
                    if op == 1 || op == 4 || op == 6 { undefined = UndefinedFlags.logic }
                    label = "lock alu/\(op) w\(width) [rbx+\(d8)], r\(reg)"
                case 1:
                    let op = Int(rng.next() % 7)
                    code += instruction([width == 8 ? 0x80 : 0x83], width: width, reg: op, rm: 3, memory: true, d8: d8,
                                        lock: true, immediate: [UInt8(truncatingIfNeeded: b)])
                    if op == 1 || op == 4 || op == 6 { undefined = UndefinedFlags.logic }
                    label = "lock group1/\(op) w\(width) [rbx+\(d8)], \(b & 0xFF)"
                case 2:
                    let op = [2, 3][Int(rng.next() % 2)]
                    let incDec = rng.next() & 1 == 0
                    code += instruction([incDec ? 0xFE | byteForm : 0xF6 | byteForm], width: width, reg: incDec ? op - 2 : op,
                                        rm: 3, memory: true, d8: d8, lock: true)
                    label = "lock \(incDec ? ["inc", "dec"][op - 2] : ["not", "neg"][op - 2]) w\(width) [rbx+\(d8)]"
                case 3:
                    let op = Int(rng.next() % 3) + 1
                    let immediate = rng.next() & 1 == 0
                    if immediate {
                        code += instruction([0x0F, 0xBA], width: wide, reg: 4 + op, rm: 3, memory: true, d8: d8, lock: true,
                                            immediate: [UInt8(truncatingIfNeeded: b)])
                    } else {
                        // A register bit offset reaches beyond the operand: keep it inside the data area.
                        code += load(reg, a % 0x100)
                        code += instruction([0x0F, [0xAB, 0xB3, 0xBB][op - 1]], width: wide, reg: reg, rm: 3, memory: true, d8: d8, lock: true)
                    }
                    undefined = UndefinedFlags.bitTest
                    label = "lock \(["bts", "btr", "btc"][op - 1]) w\(wide) [rbx+\(d8)], \(immediate ? "imm" : "r\(reg)")"
                default:
                    code += instruction([0x86 | byteForm], width: width, reg: reg, rm: 3, memory: true, d8: d8)
                    label = "xchg w\(width) [rbx+\(d8)], r\(reg)"
                }
            case 12:  // CMC
                code += [0xF5]
                label = "cmc"
            default:  // MOVNTI (32 or 64 bits: it has no 16-bit form)
                let width = long && rng.next() & 1 == 0 ? 64 : 32
                code += instruction([0x0F, 0xC3], width: code16 ? 16 : width, reg: reg, rm: 3, memory: true, d8: d8)
                label = "movnti w\(width) [rbx+\(d8)], r\(reg)"
            }
            points.append(Checkpoint(code: code + DifferentialProgram.out, undefined: undefined,
                                     label: label + " a=\(String(a, radix: 16)) b=\(String(b, radix: 16))"))
        }
        return points
    }
}
