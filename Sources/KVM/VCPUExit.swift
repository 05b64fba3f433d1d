/// Why `VCPU.run()` returned: one case per x86 exit reason of
/// `<linux/kvm.h>`, its payload copied out of `kvm_run`. Reasons of other
/// architectures, and numbers the header does not know, come as
/// `.unhandled` with the raw reason kept.
public enum VCPUExit: Sendable, Equatable {
    /// Port I/O (`KVM_EXIT_IO`); answer an `in` with `VCPU.setInput`.
    case io(PortIO)
    /// A guest-physical access outside RAM, or a write to a read-only slot (`KVM_EXIT_MMIO`).
    case mmio(MMIOAccess)
    /// HLT with no in-kernel irqchip to wait on (`KVM_EXIT_HLT`).
    case halt
    /// A triple fault or an INIT that reset the vCPU (`KVM_EXIT_SHUTDOWN`).
    case shutdown
    /// A signal, kick or `immediate_exit` ended the run (`KVM_EXIT_INTR`, or KVM_RUN's EINTR).
    case interrupted
    /// The guest can take an interrupt now (`KVM_EXIT_IRQ_WINDOW_OPEN`).
    case irqWindowOpen
    /// A single-step or breakpoint stop (`KVM_EXIT_DEBUG`).
    case debug(DebugExit)
    /// The hardware refused to enter the guest (`KVM_EXIT_FAIL_ENTRY`).
    case failEntry(hardwareReason: UInt64, cpu: UInt32)
    /// An exit the hardware gave and KVM did not understand (`KVM_EXIT_UNKNOWN`).
    case hardwareUnknown(hardwareReason: UInt64)
    /// `KVM_EXIT_EXCEPTION`.
    case exception(vector: UInt32, errorCode: UInt32)
    /// `KVM_EXIT_HYPERCALL`.
    case hypercall(Hypercall)
    /// KVM could not go on, for instance an instruction it cannot emulate (`KVM_EXIT_INTERNAL_ERROR`).
    case internalError(InternalError)
    /// Shutdown, reset or crash asked for by the guest through the platform (`KVM_EXIT_SYSTEM_EVENT`).
    case systemEvent(SystemEvent)
    /// An EOI for a level-triggered vector with a split irqchip (`KVM_EXIT_IOAPIC_EOI`).
    case ioapicEOI(vector: UInt8)
    /// `KVM_EXIT_TPR_ACCESS`.
    case tprAccess(rip: UInt64, isWrite: Bool)
    /// RDMSR or WRMSR of an MSR user space asked to handle
    /// (`KVM_EXIT_X86_RDMSR`, `KVM_EXIT_X86_WRMSR`; see
    /// `VirtualMachine.enableUserSpaceMSR`); answer with `VCPU.setMSRData`
    /// or `VCPU.failMSRAccess` before the next run.
    case msr(MSRExit)
    /// `KVM_EXIT_NMI`.
    case nmi
    /// A split lock was detected (`KVM_EXIT_X86_BUS_LOCK`).
    case busLock
    /// The dirty ring is full (`KVM_EXIT_DIRTY_RING_FULL`).
    case dirtyRingFull
    /// The guest made no progress within the notify window (`KVM_EXIT_NOTIFY`).
    case notify(flags: UInt32)
    /// Any other exit reason, kept as the kernel gave it.
    case unhandled(ExitReason)
}

/// A port I/O exit. The data of an `out` is copied at the exit; an `in`
/// is answered with `VCPU.setInput` before the next run.
public struct PortIO: Sendable, Equatable {
    public enum Direction: Sendable, Equatable { case `in`, out }

    public let direction: Direction
    public let port: UInt16
    /// Bytes per access: 1, 2 or 4.
    public let size: UInt8
    /// Accesses: more than 1 for string I/O (`rep outsb` and the like).
    public let count: UInt32
    /// The first access's data, for an `out` (little-endian, `size` bytes).
    public let value: UInt32
    /// Every access's data for an `out` with `count` > 1, in order; empty otherwise.
    public let stringData: [UInt8]

    init(direction: Direction, port: UInt16, size: UInt8, count: UInt32, mapping data: UnsafeMutableRawPointer) {
        self.direction = direction
        self.port = port
        self.size = size
        self.count = count
        if direction == .out {
            var first: UInt32 = 0
            withUnsafeMutableBytes(of: &first) { $0.copyMemory(from: UnsafeRawBufferPointer(start: data, count: Int(min(size, 4)))) }
            value = UInt32(littleEndian: first)
            stringData = count > 1 ? Array(UnsafeRawBufferPointer(start: data, count: Int(size) * Int(count))) : []
        } else {
            value = 0
            stringData = []
        }
    }

    public init(direction: Direction, port: UInt16, size: UInt8, count: UInt32 = 1, value: UInt32 = 0, stringData: [UInt8] = []) {
        self.direction = direction
        self.port = port
        self.size = size
        self.count = count
        self.value = value
        self.stringData = stringData
    }

    /// The bytes an `in` must be answered with.
    public var length: Int { Int(size) * Int(count) }

    /// An `out`'s bytes: all of them for string I/O, else the `size` bytes of `value`.
    public var bytes: [UInt8] {
        if count > 1 { return stringData }
        return withUnsafeBytes(of: value.littleEndian) { Array($0.prefix(Int(size))) }
    }
}

/// An MMIO exit: a guest-physical access no memory slot served.
public struct MMIOAccess: Sendable, Equatable {
    public let address: UInt64
    /// Bytes accessed, 1 to 8.
    public let length: UInt32
    public let isWrite: Bool
    /// A write's data, little-endian, in the first `length` bytes.
    public let data: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

    public init(address: UInt64, length: UInt32, isWrite: Bool, data: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0)) {
        self.address = address
        self.length = length
        self.isWrite = isWrite
        self.data = data
    }

    /// A write's value, the first `length` bytes read little-endian.
    public var value: UInt64 {
        let all = withUnsafeBytes(of: data) { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        return length >= 8 ? all : all & ((1 << (UInt64(length) * 8)) - 1)
    }

    public static func == (lhs: MMIOAccess, rhs: MMIOAccess) -> Bool {
        lhs.address == rhs.address && lhs.length == rhs.length && lhs.isWrite == rhs.isWrite && lhs.value == rhs.value
    }
}

/// A debug exit's state (`struct kvm_debug_exit_arch`).
public struct DebugExit: Sendable, Equatable {
    /// The exception vector: 1 for #DB (single-step, hardware breakpoint), 3 for #BP.
    public let exception: UInt32
    public let pc: UInt64
    public let dr6: UInt64
    public let dr7: UInt64
}

/// `KVM_EXIT_HYPERCALL`'s payload.
public struct Hypercall: Sendable, Equatable {
    public let number: UInt64
    public let arguments: [UInt64]
    public let longMode: Bool
}

/// `KVM_EXIT_INTERNAL_ERROR`'s payload.
public struct InternalError: Sendable, Equatable {
    /// `KVM_INTERNAL_ERROR_EMULATION` (1), `_SIMUL_EX` (2), `_DELIVERY_EV` (3), `_UNEXPECTED_EXIT_REASON` (4).
    public let suberror: UInt32
    public let data: [UInt64]
}

/// `KVM_EXIT_SYSTEM_EVENT`'s payload.
public struct SystemEvent: Sendable, Equatable {
    /// `KVM_SYSTEM_EVENT_SHUTDOWN` (1), `_RESET` (2), `_CRASH` (3), `_WAKEUP`, `_SUSPEND`, `_SEV_TERM`.
    public let type: UInt32
    public let data: [UInt64]
}

/// `KVM_EXIT_X86_RDMSR` and `KVM_EXIT_X86_WRMSR`'s payload.
public struct MSRExit: Sendable, Equatable {
    public let isWrite: Bool
    public let index: UInt32
    /// `KVM_MSR_EXIT_REASON_INVAL`, `_UNKNOWN` or `_FILTER`.
    public let reason: UInt32
    /// The value written, for WRMSR.
    public let data: UInt64
}
