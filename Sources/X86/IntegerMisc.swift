// BOUND, INTO, XLAT, MOVNTI and the prefetch hints of 0F 0D.

extension X86CPU {
    /// 62 BOUND Gv, Ma: #BR (a fault) unless lower <= index <= upper, all
    /// signed at the operand size. #UD in 64-bit mode (EVEX there) and with
    /// a register operand.
    mutating func executeBound(_ insn: inout Instruction) -> Bool {
        guard !insn.mode64, insn.isMemory else { return undefined() }
        let size = insn.operandSize
        guard let lower = read(insn.segment, insn.offset, size: size),
              let upper = read(insn.segment, (insn.offset &+ UInt64(size)) & sizeMask(insn.addressSize), size: size)
        else { return false }
        let index = Int64(bitPattern: signExtend(readRegister(insn, size: size), size: size))
        if index < Int64(bitPattern: signExtend(lower, size: size)) || index > Int64(bitPattern: signExtend(upper, size: size)) {
            return fault(.br)
        }
        return true
    }

    /// CE INTO: #OF (vector 4, a trap: the return address is the next
    /// instruction, and the gate's DPL is checked as for INT n) when OF is
    /// set. #UD in 64-bit mode. Sets RIP itself.
    mutating func executeInterruptOnOverflow(_ insn: inout Instruction) -> Bool {
        guard !insn.mode64 else { return undefined() }
        guard state.flags.materialized & RFLAGS.of != 0 else {
            state.rip = insn.nextRIP
            return true
        }
        return deliver(Vector.of.rawValue, errorCode: nil, returnRIP: insn.nextRIP, software: true)
    }

    /// D7 XLAT: AL = [seg:rBX + AL] at the address size (DS unless overridden).
    mutating func executeTranslate(_ insn: inout Instruction) -> Bool {
        let segment = insn.segmentOverride >= 0 ? insn.segmentOverride : SegmentRegisterName.ds.rawValue
        let offset = (state.reg(3) &+ (state.reg(0) & 0xFF)) & sizeMask(insn.addressSize)
        guard let value = read(segment, offset, size: 1) else { return false }
        state.write(0, value, size: 1, legacyHighBytes: false)
        return true
    }
}
