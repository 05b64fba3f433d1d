// ENTER, PUSHA, POPA. Each computes the new stack pointer aside and writes
// the registers last, so that a fault leaves them as they were.

extension X86CPU {
    /// C8 iw ib ENTER: pushes rBP, copies `level - 1` frame pointers from
    /// the enclosing frame (rBP walks down at the stack's address size),
    /// pushes the new frame pointer when the level is not 0, then rBP takes
    /// the frame pointer (at the operand size) and rSP drops by the
    /// allocation (at the stack's address size). The level is taken mod 32.
    mutating func executeEnter(_ insn: inout Instruction) -> Bool {
        let size = stackOperandSize(insn)
        let stackSize = stackAddressSize
        let stackMask = sizeMask(stackSize)
        let step = UInt64(size)
        let ss = SegmentRegisterName.ss.rawValue
        let allocation = insn.immediate & 0xFFFF
        let level = Int((insn.immediate >> 16) & 0x1F)
        var sp = (state.reg(4) &- step) & stackMask
        guard write(ss, sp, state.read(5, size: size, legacyHighBytes: false), size: size) else { return false }
        // The new frame pointer: rSP after the push, with the bits above the
        // stack's size as they were. The stack's size, not the operand size,
        // picks BP, EBP or RBP as its register (SDM ENTER: "The stack-size
        // attribute determines whether the BP (16 bits) or EBP (32 bits)
        // register specifies the current frame pointer").
        let frame = (state.reg(4) & ~stackMask) | sp
        if level > 0 {
            var bp = state.reg(5) & stackMask
            for _ in 1..<level {
                bp = (bp &- step) & stackMask
                guard let link = read(ss, bp, size: size) else { return false }
                sp = (sp &- step) & stackMask
                guard write(ss, sp, link, size: size) else { return false }
            }
            sp = (sp &- step) & stackMask
            guard write(ss, sp, frame, size: size) else { return false }
        }
        sp = (sp &- allocation) & stackMask
        state.write(5, frame, size: stackSize, legacyHighBytes: false)
        state.write(4, sp, size: stackSize, legacyHighBytes: false)
        return true
    }

    /// 60 PUSHA/PUSHAD: AX CX DX BX, the SP before the instruction, BP SI
    /// DI. #UD in 64-bit mode.
    mutating func executePushAll(_ insn: inout Instruction) -> Bool {
        guard !insn.mode64 else { return undefined() }
        let size = insn.operandSize
        let stackSize = stackAddressSize
        let stackMask = sizeMask(stackSize)
        var sp = state.reg(4) & stackMask
        for index in 0..<8 {
            sp = (sp &- UInt64(size)) & stackMask
            guard write(SegmentRegisterName.ss.rawValue, sp, state.read(index, size: size, legacyHighBytes: false), size: size)
            else { return false }
        }
        state.write(4, sp, size: stackSize, legacyHighBytes: false)
        return true
    }

    /// 61 POPA/POPAD: DI SI BP, a skipped SP slot, BX DX CX AX. #UD in
    /// 64-bit mode.
    mutating func executePopAll(_ insn: inout Instruction) -> Bool {
        guard !insn.mode64 else { return undefined() }
        let size = insn.operandSize
        let stackSize = stackAddressSize
        let stackMask = sizeMask(stackSize)
        let sp = state.reg(4) & stackMask
        var values = InlineArray<8, UInt64>(repeating: 0)
        for slot in 0..<8 where slot != 3 {
            guard let value = read(SegmentRegisterName.ss.rawValue, (sp &+ UInt64(slot * size)) & stackMask, size: size)
            else { return false }
            values[7 - slot] = value
        }
        for index in 0..<8 where index != 4 {
            state.write(index, values[index], size: size, legacyHighBytes: false)
        }
        state.write(4, (sp &+ UInt64(8 * size)) & stackMask, size: stackSize, legacyHighBytes: false)
        return true
    }
}
