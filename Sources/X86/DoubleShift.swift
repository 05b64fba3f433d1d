// SHLD and SHRD.

extension X86CPU {
    /// 0F A4/A5 SHLD Ev, Gv, imm8/CL and 0F AC/AD SHRD: the destination
    /// shifted, filled from the register source. The count is masked to 5
    /// bits (6 for 64-bit operands); a masked count of 0 changes nothing (a
    /// 32-bit register is still written, as by the shifts). CF is the last
    /// bit shifted out, SF ZF PF follow the result, OF is whether the sign
    /// changed (defined for a count of 1 only), AF is 0 (undefined).
    ///
    /// A 16-bit operand with a count above 16 has an undefined result; this
    /// does what P6 and later do, shifting destination:source:destination.
    mutating func executeDoubleShift(_ insn: inout Instruction) -> Bool {
        let op = insn.opcode
        let size = insn.operandSize
        let bits = size * 8
        let raw = op == 0x1A4 || op == 0x1AC ? insn.immediate : state.reg(1)
        let count = Int(raw & (size == 8 ? 0x3F : 0x1F))
        guard let destination = readOperandForUpdate(insn, size: size) else { return false }
        guard count != 0 else { return insn.isMemory || writeOperand(insn, destination, size: size) }
        let source = readRegister(insn, size: size)
        let mask = sizeMask(size)
        let result: UInt64
        let carry: Bool
        // 16-bit counts reach beyond destination:source, into the destination again.
        let wideBits = size == 2 ? 48 : 2 * bits
        let wide: UInt128
        if op <= 0x1A5 {
            wide = size == 2
                ? UInt128(destination) << 32 | UInt128(source) << 16 | UInt128(destination)
                : UInt128(destination) << UInt128(bits) | UInt128(source)
            result = UInt64(truncatingIfNeeded: (wide << UInt128(count)) >> UInt128(wideBits - bits)) & mask
            carry = (wide >> UInt128(wideBits - count)) & 1 != 0
        } else {
            wide = size == 2
                ? UInt128(destination) << 32 | UInt128(source) << 16 | UInt128(destination)
                : UInt128(source) << UInt128(bits) | UInt128(destination)
            result = UInt64(truncatingIfNeeded: wide >> UInt128(count)) & mask
            carry = (wide >> UInt128(count - 1)) & 1 != 0
        }
        let sign = signBit(size)
        let overflow = (result ^ destination) & sign != 0
        state.flags.set(arithmetic: resultFlags(result, size: size) | (carry ? RFLAGS.cf : 0) | (overflow ? RFLAGS.of : 0))
        return writeOperand(insn, result, size: size)
    }
}
