// RDMSR and WRMSR carried out by the CPU's owner. A hypervisor decides
// each guest MSR access itself (KVM: the MSR filter, then its own MSRs,
// then an exit to user space or #GP), so with `interceptsMSRs` the CPU
// stops at the instruction and hands the access over, and the owner
// finishes it with `completeMSRAccess`. The privilege check (#GP at CPL > 0)
// stays the CPU's, as on hardware it comes before any VM exit.

/// An RDMSR or WRMSR for the owner to carry out. RIP stays at the
/// instruction until `completeMSRAccess`.
public struct MSRAccessExit: Equatable, Sendable {
    /// ECX: the MSR.
    public var index: UInt32
    public var isWrite: Bool
    /// EDX:EAX for WRMSR; 0 for RDMSR.
    public var value: UInt64

    public init(index: UInt32, isWrite: Bool, value: UInt64) {
        self.index = index
        self.isWrite = isWrite
        self.value = value
    }
}

/// The CPU's side of intercepted MSR accesses, kept in `X86CPU`.
struct MSRInterceptState {
    var enabled = false
    /// Where RIP goes when the waiting access completes, and whether it is
    /// a write; nil when no access waits.
    var waiting: (nextRIP: UInt64, isWrite: Bool)? = nil
}

extension X86CPU {
    /// Whether RDMSR and WRMSR at CPL 0 stop the run with `.msr` for the
    /// owner to carry out. Off, the CPU reads and writes the MSRs it has and
    /// raises #GP(0) for the others.
    public var interceptsMSRs: Bool {
        get { msrIntercept.enabled }
        set { msrIntercept.enabled = newValue }
    }

    /// Whether an intercepted access waits for `completeMSRAccess`.
    public var hasWaitingMSRAccess: Bool { msrIntercept.waiting != nil }

    /// Stops at the instruction with an `.msr` exit.
    mutating func interceptMSR(_ insn: inout Instruction, index: UInt32) -> Bool {
        let isWrite = insn.opcode != 0x132
        let value = isWrite ? (state.reg(2) << 32) | (state.reg(0) & 0xFFFF_FFFF) : 0
        msrIntercept.waiting = (insn.nextRIP, isWrite)
        return exit(.msr(MSRAccessExit(index: index, isWrite: isWrite, value: value)))
    }

    /// Completes the access of the last `.msr` exit: RDMSR takes `result`
    /// into EDX:EAX, WRMSR is done when `result` is not nil; nil raises
    /// #GP(0) at the instruction. Returns nil, or the exit that delivering
    /// the #GP ended in (`.exception` when the CPU does not deliver exceptions).
    public mutating func completeMSRAccess(_ result: UInt64?) -> X86Exit? {
        guard let access = msrIntercept.waiting else { return nil }
        msrIntercept.waiting = nil
        guard let result else {
            guard deliversExceptions else { return .exception(vector: Vector.gp.rawValue, errorCode: 0) }
            return deliverException(Vector.gp.rawValue, errorCode: 0) ? nil : pending
        }
        if !access.isWrite {
            state.setReg(0, result & 0xFFFF_FFFF)
            state.setReg(2, result >> 32)
        }
        state.rip = access.nextRIP
        // The instruction completed: RF goes, as the step loop clears it after any other.
        state.rflags &= ~RFLAGS.rf
        return nil
    }
}
