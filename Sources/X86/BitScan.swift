// BSF, BSR, POPCNT, LZCNT, BSWAP.
//
// CPUID: POPCNT (1:ECX bit 23) and ABM (80000001:ECX bit 5, LZCNT) are
// advertised. BMI1 is not (its other instructions are VEX-encoded, which the
// decoder does not know), so F3 0F BC is BSF, as on every CPU without BMI1,
// where TZCNT's encoding is REP BSF.

extension X86CPU {
    /// 0F BC BSF, 0F BD BSR, F3 0F BD LZCNT, F3 0F B8 POPCNT (0F B8 without
    /// F3 is JMPE, #UD). BSF/BSR with a zero source set ZF and leave the
    /// destination as it was (AMD documents this, Intel CPUs do it); the
    /// other flags, undefined in the manuals, are left unchanged. LZCNT sets
    /// CF for a zero source and ZF for a zero count, leaving OF SF AF PF.
    mutating func executeBitScan(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        let bits = size * 8
        let op = insn.opcode
        guard op != 0x1B8 || insn.rep == 0xF3 else { return undefined() }
        guard let source = readOperand(insn, size: size) else { return false }
        let flags = state.flags.materialized
        if op == 0x1B8 {
            state.flags.set(arithmetic: source == 0 ? RFLAGS.zf : 0)
            writeRegister(insn, UInt64(source.nonzeroBitCount), size: size)
            return true
        }
        if op == 0x1BD && insn.rep == 0xF3 {
            let count = UInt64(source.leadingZeroBitCount - (64 - bits))
            var result = flags & ~(RFLAGS.cf | RFLAGS.zf)
            if source == 0 { result |= RFLAGS.cf }
            if count == 0 { result |= RFLAGS.zf }
            state.flags.set(arithmetic: result)
            writeRegister(insn, count, size: size)
            return true
        }
        guard source != 0 else {
            state.flags.set(arithmetic: flags | RFLAGS.zf)
            return true
        }
        state.flags.set(arithmetic: flags & ~RFLAGS.zf)
        let index = op == 0x1BC ? source.trailingZeroBitCount : 63 - source.leadingZeroBitCount
        writeRegister(insn, UInt64(index), size: size)
        return true
    }

    /// 0F C8+r BSWAP r32/r64. With a 16-bit operand the manuals leave the
    /// result undefined; Intel and AMD CPUs clear the register's low word.
    mutating func executeByteSwap(_ insn: inout Instruction) {
        let index = (insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0)
        switch insn.operandSize {
        case 8: state.setReg(index, state.reg(index).byteSwapped)
        case 4: state.write(index, UInt64(UInt32(truncatingIfNeeded: state.reg(index)).byteSwapped), size: 4, legacyHighBytes: false)
        default: state.write(index, 0, size: 2, legacyHighBytes: false)
        }
    }
}
