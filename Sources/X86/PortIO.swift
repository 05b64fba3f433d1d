// IN and OUT: the step loop stops with a port-I/O exit; RIP is already past
// the instruction, and an `in` takes its value from `completeInput`.

extension X86CPU {
    mutating func executePortIO(_ insn: inout Instruction) -> Bool {
        guard ioPrivileged() else { return fault(.gp, errorCode: 0) }
        let op = insn.opcode
        let size = op & 1 == 0 ? 1 : min(insn.operandSize, 4)
        let port = op < 0xE8 ? UInt16(insn.immediate & 0xFF) : UInt16(truncatingIfNeeded: state.reg(2))
        let isWrite = op & 2 != 0
        state.rip = insn.nextRIP
        if isWrite {
            let data = state.read(0, size: size, legacyHighBytes: false)
            return exit(.io(PortIOExit(port: port, size: size, isWrite: true, data: data)))
        }
        inputSize = size
        return exit(.io(PortIOExit(port: port, size: size, isWrite: false, data: 0)))
    }
}
