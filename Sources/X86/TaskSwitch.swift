// Task switches: a far JMP or CALL to a TSS or task gate, an interrupt
// through a task gate, IRET with NT. Not modelled yet: they end in an
// emulation failure (KVM's answer to what it cannot emulate), never in
// wrong behaviour.

enum TaskSwitchReason {
    case call, jump, gate, iret
}

extension X86CPU {
    mutating func taskSwitch(to selector: UInt16, reason: TaskSwitchReason, errorCode: UInt32?, ext: UInt32,
                             returnRIP: UInt64) -> Bool {
        exit(.emulationFailure(address: linear(SegmentRegisterName.cs.rawValue, state.rip)))
    }

    /// IRET with NT set outside long mode: back to the task whose selector
    /// is the current TSS's back link.
    mutating func taskReturn(_ insn: Instruction) -> Bool {
        exit(.emulationFailure(address: linear(SegmentRegisterName.cs.rawValue, state.rip)))
    }
}
