@testable import X86

/// Real-mode checkpoints that use memory operands (16- and 32-bit
/// addressing over the data area at 0x2000), the stack, string
/// instructions, branches and conditional moves. Each checkpoint first loads
/// registers so that every address stays in 0x2000..<0x2200 or the stack.
enum MixedProgram {
    static func generate(seed: UInt64, count: Int) -> [Checkpoint] {
        var rng = SplitMix64(state: seed)
        var points: [Checkpoint] = []
        for _ in 0..<count {
            let a = rng.operand(16), b = rng.operand(16)
            let dx = rng.operand(16)
            let bx = 0x2000 + (rng.next() % 0x80), si = rng.next() % 0x40, di = rng.next() % 0x40
            var code: [UInt8] = [0xB8] + le16(a) + [0xBB] + le16(bx) + [0xBA] + le16(dx)
                + [0xBE] + le16(si) + [0xBF] + le16(di) + [0xB9] + le16(b & 0x1F)
                + (rng.next() & 1 == 0 ? [0xF8] : [0xF9])
            var undefined: UInt64 = 0
            let cc = UInt8(rng.next() % 16)
            let d8 = UInt8(rng.next() % 0x40)
            let template = Int(rng.next() % 30)
            switch template {
            case 0: code += [0x01, 0x40, d8]  // add [bx+si+d8], ax
            case 1: code += [0x2B, 0x01]  // sub ax, [bx+di]
            case 2: code += [0x80, 0x57, d8, UInt8(truncatingIfNeeded: a)]  // adc byte [bx+d8], imm8
            case 3: code += [0xFF, 0x07]  // inc word [bx]
            case 4: code += [0xF6, 0x18]  // neg byte [bx+si]
            case 5: code += [0xD3, 0x27]; undefined = UndefinedFlags.shift(count: Int(b & 0x1F), width: 16)  // shl word [bx], cl
            case 6: code += [0xD0, 0x5F, 0x01]  // rcr byte [bx+1], 1
            case 7: code += [0x87, 0x10]  // xchg [bx+si], dx
            case 8: code += [0x66, 0x0F, 0xB6, 0x07, 0x0F, 0xBE, 0x11]  // movzx eax, byte [bx]; movsx dx, byte [bx+di]
            case 9: code += [0x8D, 0x50, 0x7F]  // lea dx, [bx+si+0x7F]
            case 10: code += [0xFF, 0x37, 0x8F, 0x47, 0x02]  // push word [bx]; pop word [bx+2]
            case 11: code += [0x50, 0x53, 0x59, 0x5A]  // push ax; push bx; pop cx; pop dx
            case 12: code += [0xE8, 0x00, 0x00, 0x5E]  // call next; pop si
            case 13: code += [0x98, 0x99, 0x66, 0x98, 0x66, 0x99]  // cbw; cwd; cwde; cdq
            case 14: code += [0x39, 0xD0, 0x0F, 0x90 | cc, 0xC0]  // cmp ax, dx; setcc al
            case 15: code += [0x39, 0xD0, 0x0F, 0x40 | cc, 0x07]  // cmp ax, dx; cmovcc ax, [bx]
            case 16: code += [0x39, 0xD0, 0x70 | cc, 0x02, 0xB2, 0x01]  // cmp ax, dx; jcc +2; mov dl, 1
            case 17: code += [0x9E, 0x9F]  // sahf; lahf
            case 18: code += [0x9C, 0x58]  // pushf; pop ax
            case 19: code += [0xF3, 0xA4]  // rep movsb
            case 20: code += [0xFD, 0xF3, 0xAB, 0xFC]  // std; rep stosw; cld
            case 21: code += [0xF3, 0xA6]  // repe cmpsb
            case 22: code += [0xF2, 0xAE]  // repne scasb
            case 23: code += [0xAD, 0xAC]  // lodsw; lodsb
            case 24: code += [0x41, 0x40, 0xE2, 0xFD]  // inc cx; inc ax; loop -3: ax += cx+1
            case 25: code += [0x67, 0x8B, 0x04, 0x8B]  // mov ax, [ebx+ecx*4]
            case 26: code += [0x69, 0x07] + le16(b); undefined = UndefinedFlags.multiply  // imul ax, [bx], imm16
            case 27: code += [0xC6, 0x07, 0x07, 0x25, 0xFF, 0x06, 0xF6, 0x37]; undefined = UndefinedFlags.divide  // mov byte [bx], 7; and ax, 0x6FF; div byte [bx]
            case 28: code += [0x85, 0x10, 0x30, 0x07]; undefined = UndefinedFlags.logic  // test [bx+si], dx; xor [bx], al
            default: code += [0x6A, 0x80, 0x5D, 0x86, 0xE0]  // push -128; pop bp; xchg al, ah
            }
            // String templates address [si]/[di] directly: move them into the data area.
            if (19...23).contains(template) {
                code = [0x81, 0xC6, 0x00, 0x20, 0x81, 0xC7, 0x80, 0x20] + code
                code = fixSetup(code)
            }
            points.append(Checkpoint(code: code + DifferentialProgram.out, undefined: undefined, label: "template \(template) cc \(cc)"))
        }
        return points
    }

    /// String templates address DS:SI and ES:DI directly: move the 8-byte
    /// `add si, 0x2000; add di, 0x2080` from the front to just after the six
    /// 3-byte register loads, before CLC/STC, so that the carry the
    /// template starts with is still the chosen one.
    static func fixSetup(_ code: [UInt8]) -> [UInt8] {
        let adjust = Array(code[0..<8])
        let rest = Array(code[8...])
        return Array(rest[0..<18]) + adjust + Array(rest[18...])
    }

    static func le16(_ v: UInt64) -> [UInt8] { [UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8)] }
}
