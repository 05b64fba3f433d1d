// The decimal adjustments DAA DAS AAA AAS AAM AAD, all #UD in 64-bit mode.
// Flags the manuals leave undefined: OF for DAA and DAS (0 here); OF SF ZF
// PF for AAA and AAS (OF 0, the others from AL); OF AF CF for AAM and AAD
// (0 here).

extension X86CPU {
    /// 27 DAA, 2F DAS, 37 AAA, 3F AAS, D4 ib AAM, D5 ib AAD (the immediate is
    /// the base: 10 in the usual encodings). AAM with base 0 is #DE.
    mutating func executeDecimalAdjust(_ insn: inout Instruction) -> Bool {
        guard !insn.mode64 else { return undefined() }
        let flags = state.flags.materialized
        let cf = flags & RFLAGS.cf != 0, af = flags & RFLAGS.af != 0
        let ax = state.reg(0) & 0xFFFF
        let al = ax & 0xFF
        var newAX = ax
        var carry = false, adjust = false
        switch insn.opcode {
        case 0x27, 0x2F:  // DAA, DAS
            let subtract = insn.opcode == 0x2F
            var result = al
            if al & 0x0F > 9 || af {
                result = subtract ? (result &- 6) & 0xFF : (result &+ 6) & 0xFF
                carry = cf || (subtract ? al < 6 : al > 0xF9)
                adjust = true
            }
            if al > 0x99 || cf {
                result = subtract ? (result &- 0x60) & 0xFF : (result &+ 0x60) & 0xFF
                carry = true
            }
            newAX = (ax & 0xFF00) | result
            state.flags.set(arithmetic: resultFlags(result, size: 1) | (carry ? RFLAGS.cf : 0) | (adjust ? RFLAGS.af : 0))
        case 0x37, 0x3F:  // AAA, AAS
            if al & 0x0F > 9 || af {
                if insn.opcode == 0x37 {
                    newAX = (ax &+ 0x106) & 0xFFFF
                } else {
                    newAX = (ax &- 6) & 0xFFFF
                    newAX = (newAX &- 0x100) & 0xFFFF
                }
                carry = true
                adjust = true
            }
            newAX &= 0xFF0F
            state.flags.set(arithmetic: resultFlags(newAX & 0xFF, size: 1) | (carry ? RFLAGS.cf | RFLAGS.af : 0))
        case 0xD4:  // AAM
            let base = insn.immediate & 0xFF
            guard base != 0 else { return fault(.de) }
            let remainder = al % base
            newAX = ((al / base) << 8) | remainder
            state.flags.set(arithmetic: resultFlags(remainder, size: 1))
        default:  // D5 AAD
            let base = insn.immediate & 0xFF
            let result = (al &+ ((ax >> 8) &* base)) & 0xFF
            newAX = result
            state.flags.set(arithmetic: resultFlags(result, size: 1))
        }
        state.write(0, newAX, size: 2, legacyHighBytes: false)
        return true
    }
}
