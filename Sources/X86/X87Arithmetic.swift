// The x87 arithmetic, load/store and comparison instructions of D8-DF:
// not implemented yet, so they raise #UD. They build on
// FloatingPointState (ST(i), push/pop, tags, X87Value and its Float80
// conversion) and update FOP, FIP/FCS and FDP/FDS as non-control
// instructions do.

extension X86CPU {
    /// Every D8-DF form that X87.swift's control instructions leave.
    mutating func executeX87Arithmetic(_ insn: inout Instruction) -> Bool {
        undefined()
    }
}
