// What the CPU leaves to the platform around it (on SoftKVM, the local
// APIC and KVM's MSRs): MSRs and CR8 accesses the owner carries out, NMIs
// with their blocking until IRET, and stopping the run as soon as an
// event the owner holds could be taken.

/// An RDMSR, WRMSR or MOV to or from CR8 that the owner carries out (see
/// `forwardsSystemRegisters`). The instruction waits, RIP at it, until
/// `completeSystemRegisterAccess`.
public struct SystemRegisterExit: Equatable, Sendable {
    public enum Register: Equatable, Sendable {
        case msr(UInt32)
        /// CR8, the task-priority register's bits 7:4.
        case cr8
    }

    public var register: Register
    public var isWrite: Bool
    /// The value written; 0 for a read.
    public var value: UInt64
}

/// The CPU's side of the platform's events, kept together in `X86CPU`.
struct PlatformState {
    /// See `X86CPU.forwardsSystemRegisters`.
    var forwardsSystemRegisters = false
    /// The forwarded access waiting for its completion.
    var systemRegister: PendingSystemRegister? = nil
    /// An NMI handler runs: no NMI until the next IRET.
    var nmiBlocked = false
    /// Events the owner holds while the CPU blocks them (bits of `WaitingEvents`).
    var waitingEvents: UInt8 = 0
    var tsc = TimeStampCounter()
}

struct PendingSystemRegister {
    var register: SystemRegisterExit.Register
    var isWrite: Bool
    /// For a CR8 read, the register that gets it.
    var destination: Int
    var nextRIP: UInt64
}

/// Events an owner holds and the CPU blocks now.
public struct WaitingEvents: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// A maskable interrupt, blocked by IF or an STI/SS shadow.
    public static let interrupt = WaitingEvents(rawValue: 1)
    /// An NMI, blocked by a running NMI handler or a shadow.
    public static let nmi = WaitingEvents(rawValue: 2)
}

extension X86CPU {
    /// The time-stamp counter and its MSRs.
    public var tsc: TimeStampCounter {
        get { platform.tsc }
        set { platform.tsc = newValue }
    }

    /// Whether RDMSR and WRMSR of MSRs the CPU does not have, and of
    /// IA32_APIC_BASE, and MOV to or from CR8, stop the run with
    /// `.systemRegister` for the owner to carry out. Off, such MSRs raise
    /// #GP and CR8 reads 0, as for a CPU without a local APIC.
    public var forwardsSystemRegisters: Bool {
        get { platform.forwardsSystemRegisters }
        set { platform.forwardsSystemRegisters = newValue }
    }

    /// NMIs are blocked from an NMI's delivery until the next IRET
    /// (KVM_GET_VCPU_EVENTS' `nmi.masked`).
    public var nmiBlocked: Bool {
        get { platform.nmiBlocked }
        set { platform.nmiBlocked = newValue }
    }

    /// Events the owner has pending but the CPU blocks now: `run` returns
    /// `.instructionLimit` at the first instruction boundary where one of
    /// them could be taken, so that the owner delivers it there.
    public var waitingEvents: WaitingEvents {
        get { WaitingEvents(rawValue: platform.waitingEvents) }
        set { platform.waitingEvents = newValue.rawValue }
    }

    /// Whether an NMI would be taken now: no NMI handler is running and no
    /// STI or SS-load shadow covers this boundary (as VMX blocks NMIs).
    public var nmiAllowed: Bool { !platform.nmiBlocked && !interruptShadow }

    /// Whether one of `waitingEvents` could be taken at this boundary.
    var waitingEventCanBeTaken: Bool {
        let waiting = platform.waitingEvents
        return (waiting & WaitingEvents.interrupt.rawValue != 0 && interruptsEnabled)
            || (waiting & WaitingEvents.nmi.rawValue != 0 && nmiAllowed)
    }

    /// Delivers an NMI (vector 2) before the next instruction and blocks
    /// NMIs until IRET. Returns nil when delivered, or the exit delivery
    /// ended in.
    public mutating func deliverNMI() -> X86Exit? {
        platform.nmiBlocked = true
        return deliverExternalInterrupt(2)
    }

    // MARK: Forwarded MSRs and CR8

    /// Whether RDMSR or WRMSR of `index` goes to the owner.
    func forwardsMSR(_ index: UInt32) -> Bool {
        platform.forwardsSystemRegisters && (index == MSR.apicBase || readMSR(index) == nil)
    }

    /// Stops at the instruction with a `.systemRegister` exit.
    mutating func forwardSystemRegister(_ register: SystemRegisterExit.Register, written: UInt64?, destination: Int = 0,
                                        nextRIP: UInt64) -> Bool {
        platform.systemRegister = PendingSystemRegister(register: register, isWrite: written != nil,
                                                        destination: destination, nextRIP: nextRIP)
        return exit(.systemRegister(SystemRegisterExit(register: register, isWrite: written != nil, value: written ?? 0)))
    }

    /// Completes the access of the last `.systemRegister` exit: a read
    /// takes `result`, a write is done when `result` is not nil; nil raises
    /// #GP(0) at the instruction. Returns nil, or the exit that delivering
    /// the #GP ended in (`.exception` when the CPU does not deliver exceptions).
    public mutating func completeSystemRegisterAccess(_ result: UInt64?) -> X86Exit? {
        guard let access = platform.systemRegister else { return nil }
        platform.systemRegister = nil
        guard let result else {
            guard deliversExceptions else { return .exception(vector: Vector.gp.rawValue, errorCode: 0) }
            return deliverException(Vector.gp.rawValue, errorCode: 0) ? nil : pending
        }
        if !access.isWrite {
            switch access.register {
            case .msr:
                state.setReg(0, result & 0xFFFF_FFFF)
                state.setReg(2, result >> 32)
            case .cr8:
                state.setReg(access.destination, result)
            }
        }
        state.rip = access.nextRIP
        return nil
    }
}
