// JMP, Jcc, JCXZ, LOOP, CALL, RET: near, relative and indirect. Each
// handler sets RIP itself.

extension X86CPU {
    /// A branch target truncated to the operand size (16-bit code wraps at 64 KiB).
    @inline(__always)
    func branchTarget(_ target: UInt64, _ insn: Instruction) -> UInt64 {
        insn.mode64 ? target : target & sizeMask(insn.operandSize)
    }

    mutating func executeControlFlow(_ insn: inout Instruction) -> Bool {
        let op = insn.opcode
        let next = insn.nextRIP
        switch op {
        case 0x70...0x7F:
            state.rip = state.flags.condition(op & 0xF)
                ? branchTarget(next &+ signExtend(insn.immediate, size: 1), insn) : next
        case 0x180...0x18F:
            let displacement = signExtend(insn.immediate, size: insn.mode64 ? 4 : min(insn.operandSize, 4))
            state.rip = state.flags.condition(op & 0xF) ? branchTarget(next &+ displacement, insn) : next
        case 0xEB:
            state.rip = branchTarget(next &+ signExtend(insn.immediate, size: 1), insn)
        case 0xE9:
            state.rip = branchTarget(next &+ signExtend(insn.immediate, size: insn.mode64 ? 4 : min(insn.operandSize, 4)), insn)
        case 0xE0...0xE3:  // LOOPNE LOOPE LOOP JCXZ: the count is rCX at the address size
            let count: UInt64
            if op == 0xE3 {
                count = state.read(1, size: insn.addressSize, legacyHighBytes: false)
            } else {
                count = (state.read(1, size: insn.addressSize, legacyHighBytes: false) &- 1) & sizeMask(insn.addressSize)
                state.write(1, count, size: insn.addressSize, legacyHighBytes: false)
            }
            let zf = state.flags.materialized & RFLAGS.zf != 0
            let taken: Bool
            switch op {
            case 0xE0: taken = count != 0 && !zf
            case 0xE1: taken = count != 0 && zf
            case 0xE2: taken = count != 0
            default: taken = count == 0
            }
            state.rip = taken ? branchTarget(next &+ signExtend(insn.immediate, size: 1), insn) : next
        case 0xE8:
            let size = stackOperandSize(insn)
            let target = branchTarget(next &+ signExtend(insn.immediate, size: insn.mode64 ? 4 : min(insn.operandSize, 4)), insn)
            guard push(next, size: size) else { return false }
            state.rip = target
        case 0xC2, 0xC3:
            let size = stackOperandSize(insn)
            guard let target = pop(size: size) else { return false }
            if op == 0xC2 {
                let addressSize = stackAddressSize
                state.write(4, (state.reg(4) &+ (insn.immediate & 0xFFFF)) & sizeMask(addressSize), size: addressSize, legacyHighBytes: false)
            }
            state.rip = target
        default:  // FF /2 CALL Ev, FF /4 JMP Ev: 64-bit operands in 64-bit mode
            let size = insn.mode64 ? 8 : insn.operandSize
            guard let target = readOperand(insn, size: size) else { return false }
            if insn.reg & 7 == 2 {
                guard push(next, size: size) else { return false }
            }
            state.rip = target
        }
        return true
    }
}
