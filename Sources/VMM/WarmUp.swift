import KVM

extension VCPU {
    /// Runs the vCPU once, in real mode with CS base 0, from `address` up to
    /// the `out` to `port` that the caller placed there. On kvm_pvm, state
    /// given to a vCPU before its first KVM_RUN can be lost, so a VMM makes
    /// this run first and sets the state it means to start from after it.
    /// A signal's `.interrupted` is retried a few times. Returns nil once the
    /// `out` arrived, or the exit that came instead.
    public func warmUp(at address: UInt64, port: UInt16) throws(KVMError) -> VCPUExit? {
        var special = try specialRegisters()
        special.cs.base = 0
        special.cs.selector = 0
        try setSpecialRegisters(special)
        var registers = Registers()
        registers.rip = address
        try setRegisters(registers)
        for _ in 0..<4 {
            let exit = try run()
            if case .io(let io) = exit, io.port == port { return nil }
            guard exit == .interrupted else { return exit }
        }
        return .interrupted
    }
}
