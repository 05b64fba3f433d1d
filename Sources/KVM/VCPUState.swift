import CLinuxKVM

// The vCPU's architectural state as Swift values. Each type converts to and
// from the `struct kvm_*` its requests carry; the methods that move them are
// in VCPU+State.swift.

// MARK: General-purpose registers

/// The general-purpose registers, RIP and RFLAGS (`struct kvm_regs`).
public struct Registers: Hashable, Sendable {
    public var rax: UInt64 = 0
    public var rbx: UInt64 = 0
    public var rcx: UInt64 = 0
    public var rdx: UInt64 = 0
    public var rsi: UInt64 = 0
    public var rdi: UInt64 = 0
    public var rsp: UInt64 = 0
    public var rbp: UInt64 = 0
    public var r8: UInt64 = 0
    public var r9: UInt64 = 0
    public var r10: UInt64 = 0
    public var r11: UInt64 = 0
    public var r12: UInt64 = 0
    public var r13: UInt64 = 0
    public var r14: UInt64 = 0
    public var r15: UInt64 = 0
    public var rip: UInt64 = 0
    /// Bit 1 is reserved and reads as 1; a value without it is still taken by KVM.
    public var rflags: UInt64 = 0x2

    public init() {}

    init(_ regs: kvm_regs) {
        rax = regs.rax; rbx = regs.rbx; rcx = regs.rcx; rdx = regs.rdx
        rsi = regs.rsi; rdi = regs.rdi; rsp = regs.rsp; rbp = regs.rbp
        r8 = regs.r8; r9 = regs.r9; r10 = regs.r10; r11 = regs.r11
        r12 = regs.r12; r13 = regs.r13; r14 = regs.r14; r15 = regs.r15
        rip = regs.rip; rflags = regs.rflags
    }

    var kernelValue: kvm_regs {
        kvm_regs(rax: rax, rbx: rbx, rcx: rcx, rdx: rdx, rsi: rsi, rdi: rdi, rsp: rsp, rbp: rbp,
                 r8: r8, r9: r9, r10: r10, r11: r11, r12: r12, r13: r13, r14: r14, r15: r15,
                 rip: rip, rflags: rflags)
    }
}

// MARK: Special registers

/// A segment register's selector and hidden descriptor cache (`struct kvm_segment`).
public struct Segment: Hashable, Sendable {
    public var base: UInt64 = 0
    public var limit: UInt32 = 0xFFFF
    public var selector: UInt16 = 0
    /// The descriptor type field (4 bits): 0x3 is read/write data accessed, 0xB execute/read code accessed.
    public var type: UInt8 = 0x3
    public var present: Bool = true
    /// The descriptor privilege level, 0 to 3.
    public var dpl: UInt8 = 0
    /// D/B: 32-bit default operand size (code) or stack (data).
    public var db: Bool = false
    /// S: a code or data segment, rather than a system one (TSS, LDT, gates).
    public var s: Bool = true
    /// L: a 64-bit code segment.
    public var l: Bool = false
    /// G: the limit counts 4 KiB pages rather than bytes.
    public var g: Bool = false
    /// AVL: the bit the descriptor leaves to software.
    public var avl: Bool = false
    /// The segment is unusable (a null selector loaded in protected mode).
    public var unusable: Bool = false

    public init(base: UInt64 = 0, limit: UInt32 = 0xFFFF, selector: UInt16 = 0, type: UInt8 = 0x3,
                present: Bool = true, dpl: UInt8 = 0, db: Bool = false, s: Bool = true,
                l: Bool = false, g: Bool = false, avl: Bool = false, unusable: Bool = false) {
        self.base = base
        self.limit = limit
        self.selector = selector
        self.type = type
        self.present = present
        self.dpl = dpl
        self.db = db
        self.s = s
        self.l = l
        self.g = g
        self.avl = avl
        self.unusable = unusable
    }

    init(_ segment: kvm_segment) {
        self.init(base: segment.base, limit: segment.limit, selector: segment.selector, type: segment.type,
                  present: segment.present != 0, dpl: segment.dpl, db: segment.db != 0, s: segment.s != 0,
                  l: segment.l != 0, g: segment.g != 0, avl: segment.avl != 0, unusable: segment.unusable != 0)
    }

    var kernelValue: kvm_segment {
        kvm_segment(base: base, limit: limit, selector: selector, type: type,
                    present: present ? 1 : 0, dpl: dpl, db: db ? 1 : 0, s: s ? 1 : 0,
                    l: l ? 1 : 0, g: g ? 1 : 0, avl: avl ? 1 : 0, unusable: unusable ? 1 : 0, padding: 0)
    }
}

/// The GDT or IDT register: where the table is and its limit (`struct kvm_dtable`).
public struct DescriptorTable: Hashable, Sendable {
    public var base: UInt64
    public var limit: UInt16

    public init(base: UInt64 = 0, limit: UInt16 = 0xFFFF) {
        self.base = base
        self.limit = limit
    }

    init(_ table: kvm_dtable) {
        self.init(base: table.base, limit: table.limit)
    }

    var kernelValue: kvm_dtable {
        kvm_dtable(base: base, limit: limit, padding: (0, 0, 0))
    }
}

/// Segment registers, descriptor tables, control registers, EFER and the
/// APIC base (`struct kvm_sregs`).
public struct SpecialRegisters: Hashable, Sendable {
    public var cs = Segment(type: 0xB)
    public var ds = Segment()
    public var es = Segment()
    public var fs = Segment()
    public var gs = Segment()
    public var ss = Segment()
    public var tr = Segment(type: 0xB, s: false)
    public var ldt = Segment(type: 0x2, s: false)
    public var gdt = DescriptorTable()
    public var idt = DescriptorTable()
    public var cr0: UInt64 = 0x6000_0010
    public var cr2: UInt64 = 0
    public var cr3: UInt64 = 0
    public var cr4: UInt64 = 0
    public var cr8: UInt64 = 0
    public var efer: UInt64 = 0
    /// IA32_APIC_BASE: the xAPIC's address, its enable bits and the BSP bit.
    public var apicBase: UInt64 = 0
    /// Four words, 256 bits: the external interrupt KVM has queued for
    /// injection (KVM_INTERRUPT, user-space irqchip only). Setting a bit
    /// queues that vector.
    public var interruptBitmap: [UInt64] = [0, 0, 0, 0]

    public init() {}

    init(_ sregs: kvm_sregs) {
        cs = Segment(sregs.cs); ds = Segment(sregs.ds); es = Segment(sregs.es)
        fs = Segment(sregs.fs); gs = Segment(sregs.gs); ss = Segment(sregs.ss)
        tr = Segment(sregs.tr); ldt = Segment(sregs.ldt)
        gdt = DescriptorTable(sregs.gdt); idt = DescriptorTable(sregs.idt)
        cr0 = sregs.cr0; cr2 = sregs.cr2; cr3 = sregs.cr3; cr4 = sregs.cr4; cr8 = sregs.cr8
        efer = sregs.efer
        apicBase = sregs.apic_base
        interruptBitmap = CArray.elements(of: sregs.interrupt_bitmap, as: UInt64.self)
    }

    var kernelValue: kvm_sregs {
        var sregs = kvm_sregs()
        sregs.cs = cs.kernelValue; sregs.ds = ds.kernelValue; sregs.es = es.kernelValue
        sregs.fs = fs.kernelValue; sregs.gs = gs.kernelValue; sregs.ss = ss.kernelValue
        sregs.tr = tr.kernelValue; sregs.ldt = ldt.kernelValue
        sregs.gdt = gdt.kernelValue; sregs.idt = idt.kernelValue
        sregs.cr0 = cr0; sregs.cr2 = cr2; sregs.cr3 = cr3; sregs.cr4 = cr4; sregs.cr8 = cr8
        sregs.efer = efer
        sregs.apic_base = apicBase
        CArray.store(interruptBitmap, into: &sregs.interrupt_bitmap)
        return sregs
    }
}

// MARK: FPU, XSAVE, XCRs

/// The x87 and SSE state in FXSAVE terms (`struct kvm_fpu`).
///
/// KVM_SET_FPU writes the legacy region of the guest's XSAVE buffer but not
/// its XSTATE_BV, so on a vCPU whose x87/SSE components are still in their
/// initial state the values show in KVM_GET_FPU and not in KVM_GET_XSAVE
/// (and XRSTOR on entry may drop them). `XSaveArea` with XSTATE_BV set is
/// the reliable way to load FPU state.
public struct FPUState: Hashable, Sendable {
    /// ST0-ST7 (MM0-MM7): 80-bit values in the low 10 bytes of each, little-endian.
    public var fpr: [UInt128] = Array(repeating: 0, count: 8)
    /// The x87 control word; 0x37F after FNINIT.
    public var fcw: UInt16 = 0x37F
    public var fsw: UInt16 = 0
    /// The abridged tag word of FXSAVE: one bit per register, 1 for valid.
    public var ftwx: UInt8 = 0
    public var lastOpcode: UInt16 = 0
    public var lastIP: UInt64 = 0
    public var lastDP: UInt64 = 0
    /// XMM0-XMM15, little-endian.
    public var xmm: [UInt128] = Array(repeating: 0, count: 16)
    /// MXCSR. KVM_GET_FPU never fills it (it reads 0) and KVM_SET_FPU
    /// ignores it: the kernel copies every field but this one. Use
    /// `XSaveArea.mxcsr` for the real value.
    public var mxcsr: UInt32 = 0

    public init() {}

    init(_ fpu: kvm_fpu) {
        fpr = CArray.elements(of: fpu.fpr, as: UInt128.self)
        fcw = fpu.fcw
        fsw = fpu.fsw
        ftwx = fpu.ftwx
        lastOpcode = fpu.last_opcode
        lastIP = fpu.last_ip
        lastDP = fpu.last_dp
        xmm = CArray.elements(of: fpu.xmm, as: UInt128.self)
        mxcsr = fpu.mxcsr
    }

    var kernelValue: kvm_fpu {
        var fpu = kvm_fpu()
        CArray.store(fpr, into: &fpu.fpr)
        fpu.fcw = fcw
        fpu.fsw = fsw
        fpu.ftwx = ftwx
        fpu.last_opcode = lastOpcode
        fpu.last_ip = lastIP
        fpu.last_dp = lastDP
        CArray.store(xmm, into: &fpu.xmm)
        fpu.mxcsr = mxcsr
        return fpu
    }
}

/// The XSAVE area (`struct kvm_xsave`, 4096 bytes) in the standard
/// (uncompacted) format: the legacy FXSAVE region, the XSAVE header at byte
/// 512, and the extended components at the offsets the host's CPUID leaf 0xD
/// gives.
public struct XSaveArea: Hashable, Sendable {
    /// The area as the kernel's `region`: 1024 little-endian words.
    public var region: [UInt32]

    /// The byte size of the area KVM_GET_XSAVE and KVM_SET_XSAVE move.
    public static let size = 4096

    public init(region: [UInt32] = Array(repeating: 0, count: XSaveArea.size / 4)) {
        self.region = region
    }

    init(_ xsave: kvm_xsave) {
        region = CArray.elements(of: xsave.region, as: UInt32.self)
    }

    var kernelValue: kvm_xsave {
        var xsave = kvm_xsave()
        CArray.store(region, into: &xsave.region)
        return xsave
    }

    /// The x87 control word (bytes 0-1 of the legacy region).
    public var fcw: UInt16 {
        get { UInt16(truncatingIfNeeded: region[0]) }
        set { region[0] = region[0] & 0xFFFF_0000 | UInt32(newValue) }
    }

    /// MXCSR (bytes 24-27 of the legacy region).
    public var mxcsr: UInt32 {
        get { region[6] }
        set { region[6] = newValue }
    }

    /// XSTATE_BV (byte 512): which components the area holds; a component
    /// whose bit is clear is in its initial state, whatever its bytes say.
    public var xstateBV: UInt64 {
        get { load(UInt64.self, at: 512) }
        set { store(newValue, at: 512) }
    }

    /// XCOMP_BV (byte 520): bit 63 set marks the compacted format.
    public var xcompBV: UInt64 {
        get { load(UInt64.self, at: 520) }
        set { store(newValue, at: 520) }
    }

    /// XMM register `index` (0-15), at byte 160 + 16 × index.
    public func xmm(_ index: Int) -> UInt128 {
        precondition((0..<16).contains(index), "XMM register \(index) does not exist")
        return load(UInt128.self, at: 160 + 16 * index)
    }

    /// Sets XMM register `index` (0-15). The value counts only while XSTATE_BV has the SSE bit (1).
    public mutating func setXMM(_ index: Int, _ value: UInt128) {
        precondition((0..<16).contains(index), "XMM register \(index) does not exist")
        store(value, at: 160 + 16 * index)
    }

    private func load<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        region.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }

    private mutating func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        region.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
    }
}

/// One extended control register: XCR0 (index 0) enables XSAVE components (`struct kvm_xcr`).
public struct ExtendedControlRegister: Hashable, Sendable {
    /// The XCR number, as XSETBV's ECX takes it.
    public var index: UInt32
    public var value: UInt64

    public init(index: UInt32, value: UInt64) {
        self.index = index
        self.value = value
    }

    /// The most XCRs one request carries (`KVM_MAX_XCRS`).
    public static let maximumCount = Int(KVM_MAX_XCRS)
}

// MARK: MSRs

/// A model-specific register and its value (`struct kvm_msr_entry`).
public struct MSREntry: Hashable, Sendable {
    public var index: UInt32
    public var data: UInt64

    public init(index: UInt32, data: UInt64 = 0) {
        self.index = index
        self.data = data
    }

    init(_ entry: kvm_msr_entry) {
        self.init(index: entry.index, data: entry.data)
    }

    var kernelValue: kvm_msr_entry {
        kvm_msr_entry(index: index, reserved: 0, data: data)
    }
}

/// What `VCPU.readMSRs` found: the MSRs it read, in the order asked, and the
/// indices KVM refused to read.
public struct MSRReading: Hashable, Sendable {
    public var entries: [MSREntry]
    public var unreadable: [UInt32]
}

// MARK: Local APIC

/// The in-kernel local APIC's register page (`struct kvm_lapic_state`): the
/// xAPIC's 1 KiB of registers, each 32 bits at a 16-byte-aligned offset.
public struct LAPICState: Hashable, Sendable {
    /// The page, byte for byte.
    public var bytes: [UInt8]

    public static let size = Int(KVM_APIC_REG_SIZE)

    // Offsets of the registers a VMM most often touches.
    public static let id = 0x20
    public static let version = 0x30
    public static let taskPriority = 0x80
    public static let spuriousInterruptVector = 0xF0
    public static let lvtTimer = 0x320
    public static let lvtLINT0 = 0x350
    public static let lvtLINT1 = 0x360
    public static let timerInitialCount = 0x380
    public static let timerDivideConfiguration = 0x3E0

    public init(bytes: [UInt8] = Array(repeating: 0, count: LAPICState.size)) {
        self.bytes = bytes
    }

    init(_ state: kvm_lapic_state) {
        bytes = CArray.elements(of: state.regs, as: UInt8.self)
    }

    var kernelValue: kvm_lapic_state {
        var state = kvm_lapic_state()
        CArray.store(bytes, into: &state.regs)
        return state
    }

    /// The 32-bit register at byte `offset` (a multiple of 4 below 1024).
    public func register(at offset: Int) -> UInt32 {
        LAPICState.check(offset)
        return bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    }

    /// Sets the 32-bit register at byte `offset` (a multiple of 4 below 1024).
    public mutating func setRegister(at offset: Int, to value: UInt32) {
        LAPICState.check(offset)
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self) }
    }

    private static func check(_ offset: Int) {
        precondition(offset >= 0 && offset % 4 == 0 && offset + 4 <= size, "LAPIC register offset \(offset) is not a 4-byte-aligned offset within the \(size)-byte page")
    }
}

// MARK: Multiprocessing state

/// A vCPU's multiprocessing state (`struct kvm_mp_state`). States other than
/// `runnable` need the in-kernel irqchip.
public enum MPState: Hashable, Sendable {
    /// Running, or ready to run.
    case runnable
    /// An application processor waiting for INIT.
    case uninitialized
    /// An AP that took INIT and waits for a SIPI.
    case initReceived
    /// Stopped in HLT until an interrupt.
    case halted
    /// An AP that took a SIPI and starts on the next run.
    case sipiReceived
    /// Stopped (s390).
    case stopped
    /// Check-stopped (s390).
    case checkStop
    /// Operating (s390).
    case operating
    /// Loading (s390).
    case load
    /// An SEV-ES AP waiting in the AP reset hold.
    case apResetHold
    /// Suspended by the guest (arm64 PSCI).
    case suspended
    /// A state number this library does not name, kept as given.
    case unknown(UInt32)

    public init(rawValue: UInt32) {
        switch rawValue {
        case UInt32(KVM_MP_STATE_RUNNABLE): self = .runnable
        case UInt32(KVM_MP_STATE_UNINITIALIZED): self = .uninitialized
        case UInt32(KVM_MP_STATE_INIT_RECEIVED): self = .initReceived
        case UInt32(KVM_MP_STATE_HALTED): self = .halted
        case UInt32(KVM_MP_STATE_SIPI_RECEIVED): self = .sipiReceived
        case UInt32(KVM_MP_STATE_STOPPED): self = .stopped
        case UInt32(KVM_MP_STATE_CHECK_STOP): self = .checkStop
        case UInt32(KVM_MP_STATE_OPERATING): self = .operating
        case UInt32(KVM_MP_STATE_LOAD): self = .load
        case UInt32(KVM_MP_STATE_AP_RESET_HOLD): self = .apResetHold
        case UInt32(KVM_MP_STATE_SUSPENDED): self = .suspended
        default: self = .unknown(rawValue)
        }
    }

    /// The kernel's `KVM_MP_STATE_*` number.
    public var rawValue: UInt32 {
        switch self {
        case .runnable: UInt32(KVM_MP_STATE_RUNNABLE)
        case .uninitialized: UInt32(KVM_MP_STATE_UNINITIALIZED)
        case .initReceived: UInt32(KVM_MP_STATE_INIT_RECEIVED)
        case .halted: UInt32(KVM_MP_STATE_HALTED)
        case .sipiReceived: UInt32(KVM_MP_STATE_SIPI_RECEIVED)
        case .stopped: UInt32(KVM_MP_STATE_STOPPED)
        case .checkStop: UInt32(KVM_MP_STATE_CHECK_STOP)
        case .operating: UInt32(KVM_MP_STATE_OPERATING)
        case .load: UInt32(KVM_MP_STATE_LOAD)
        case .apResetHold: UInt32(KVM_MP_STATE_AP_RESET_HOLD)
        case .suspended: UInt32(KVM_MP_STATE_SUSPENDED)
        case .unknown(let raw): raw
        }
    }
}

// MARK: Pending events

/// Exceptions, interrupts, NMIs and SMIs KVM holds for a vCPU between
/// instructions (`struct kvm_vcpu_events`), for saving and restoring a vCPU.
public struct VCPUEvents: Hashable, Sendable {
    public struct Exception: Hashable, Sendable {
        /// The exception is being delivered (it was in the middle of injection at the exit).
        public var injected: Bool = false
        public var vector: UInt8 = 0
        public var hasErrorCode: Bool = false
        /// Raised but not yet delivered (with KVM_CAP_EXCEPTION_PAYLOAD enabled).
        public var pending: Bool = false
        public var errorCode: UInt32 = 0
        public init() {}
    }

    public struct Interrupt: Hashable, Sendable {
        public var injected: Bool = false
        public var vector: UInt8 = 0
        /// A software interrupt (INT n) rather than an external one.
        public var soft: Bool = false
        /// The interrupt shadow after STI or MOV SS: `KVM_X86_SHADOW_INT_MOV_SS` (1), `_STI` (2).
        /// Set only when `flags` has `.shadow`.
        public var shadow: UInt8 = 0
        public init() {}
    }

    public struct NMI: Hashable, Sendable {
        public var injected: Bool = false
        /// An NMI waits for delivery. Set only when `flags` has `.nmiPending`.
        public var pending: Bool = false
        /// NMIs are blocked (an NMI handler is running).
        public var masked: Bool = false
        public init() {}
    }

    public struct SMI: Hashable, Sendable {
        /// The vCPU is in system management mode.
        public var smm: Bool = false
        public var pending: Bool = false
        public var insideNMI: Bool = false
        /// An INIT arrived in SMM and waits for its end.
        public var latchedInit: Bool = false
        public init() {}
    }

    /// Which optional parts KVM_SET_VCPU_EVENTS should apply (`KVM_VCPUEVENT_VALID_*`).
    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        public static let nmiPending = Flags(rawValue: UInt32(KVM_VCPUEVENT_VALID_NMI_PENDING))
        public static let sipiVector = Flags(rawValue: UInt32(KVM_VCPUEVENT_VALID_SIPI_VECTOR))
        public static let shadow = Flags(rawValue: UInt32(KVM_VCPUEVENT_VALID_SHADOW))
        public static let smm = Flags(rawValue: UInt32(KVM_VCPUEVENT_VALID_SMM))
        public static let payload = Flags(rawValue: UInt32(KVM_VCPUEVENT_VALID_PAYLOAD))
        public static let tripleFault = Flags(rawValue: UInt32(KVM_VCPUEVENT_VALID_TRIPLE_FAULT))
    }

    public var exception = Exception()
    public var interrupt = Interrupt()
    public var nmi = NMI()
    /// The SIPI vector of an AP in `.sipiReceived`, applied only when `flags`
    /// has `.sipiVector` and the VM has an in-kernel irqchip. KVM always
    /// reports 0 here: the field is write-only.
    public var sipiVector: UInt32 = 0
    public var flags: Flags = []
    /// Set only when `flags` has `.smm`.
    public var smi = SMI()
    /// A triple fault waits (KVM_CAP_X86_TRIPLE_FAULT_EVENT). Set only when `flags` has `.tripleFault`.
    public var tripleFaultPending: Bool = false
    /// The exception's payload (CR2 for #PF, DR6 bits for #DB) is in `exceptionPayload`.
    public var exceptionHasPayload: Bool = false
    public var exceptionPayload: UInt64 = 0

    public init() {}

    init(_ events: kvm_vcpu_events) {
        exception.injected = events.exception.injected != 0
        exception.vector = events.exception.nr
        exception.hasErrorCode = events.exception.has_error_code != 0
        exception.pending = events.exception.pending != 0
        exception.errorCode = events.exception.error_code
        interrupt.injected = events.interrupt.injected != 0
        interrupt.vector = events.interrupt.nr
        interrupt.soft = events.interrupt.soft != 0
        interrupt.shadow = events.interrupt.shadow
        nmi.injected = events.nmi.injected != 0
        nmi.pending = events.nmi.pending != 0
        nmi.masked = events.nmi.masked != 0
        sipiVector = events.sipi_vector
        flags = Flags(rawValue: events.flags)
        smi.smm = events.smi.smm != 0
        smi.pending = events.smi.pending != 0
        smi.insideNMI = events.smi.smm_inside_nmi != 0
        smi.latchedInit = events.smi.latched_init != 0
        tripleFaultPending = events.triple_fault.pending != 0
        exceptionHasPayload = events.exception_has_payload != 0
        exceptionPayload = events.exception_payload
    }

    var kernelValue: kvm_vcpu_events {
        var events = kvm_vcpu_events()
        events.exception.injected = exception.injected ? 1 : 0
        events.exception.nr = exception.vector
        events.exception.has_error_code = exception.hasErrorCode ? 1 : 0
        events.exception.pending = exception.pending ? 1 : 0
        events.exception.error_code = exception.errorCode
        events.interrupt.injected = interrupt.injected ? 1 : 0
        events.interrupt.nr = interrupt.vector
        events.interrupt.soft = interrupt.soft ? 1 : 0
        events.interrupt.shadow = interrupt.shadow
        events.nmi.injected = nmi.injected ? 1 : 0
        events.nmi.pending = nmi.pending ? 1 : 0
        events.nmi.masked = nmi.masked ? 1 : 0
        events.sipi_vector = sipiVector
        events.flags = flags.rawValue
        events.smi.smm = smi.smm ? 1 : 0
        events.smi.pending = smi.pending ? 1 : 0
        events.smi.smm_inside_nmi = smi.insideNMI ? 1 : 0
        events.smi.latched_init = smi.latchedInit ? 1 : 0
        events.triple_fault.pending = tripleFaultPending ? 1 : 0
        events.exception_has_payload = exceptionHasPayload ? 1 : 0
        events.exception_payload = exceptionPayload
        return events
    }
}

// MARK: Debugging

/// The guest's own debug registers (`struct kvm_debugregs`).
public struct DebugRegisters: Hashable, Sendable {
    /// DR0-DR3: breakpoint addresses.
    public var db: [UInt64] = [0, 0, 0, 0]
    /// DR6, the debug status; 0xFFFF0FF0 at reset. KVM refuses bits above 31.
    public var dr6: UInt64 = 0xFFFF_0FF0
    /// DR7, the debug control; 0x400 at reset. KVM refuses bits above 31.
    public var dr7: UInt64 = 0x400
    /// Must be 0.
    public var flags: UInt64 = 0

    public init() {}

    init(_ regs: kvm_debugregs) {
        db = CArray.elements(of: regs.db, as: UInt64.self)
        dr6 = regs.dr6
        dr7 = regs.dr7
        flags = regs.flags
    }

    var kernelValue: kvm_debugregs {
        var regs = kvm_debugregs()
        CArray.store(db, into: &regs.db)
        regs.dr6 = dr6
        regs.dr7 = dr7
        regs.flags = flags
        return regs
    }
}

/// How the host debugs the guest: what KVM_SET_GUEST_DEBUG turns on. Debug
/// stops come back from `run()` as `.debug`.
public struct GuestDebug: Hashable, Sendable {
    /// An x86 hardware breakpoint, held in one of DR0-DR3 while the host debugs.
    public struct HardwareBreakpoint: Hashable, Sendable {
        /// What access triggers it (DR7's R/W field).
        public enum Kind: UInt64, Hashable, Sendable {
            case execute = 0
            case write = 1
            /// Port I/O; needs CR4.DE.
            case io = 2
            case readWrite = 3
        }

        /// How many bytes it watches (DR7's LEN field). Execute breakpoints take `.byte`.
        public enum Length: Hashable, Sendable {
            case byte, word, doubleWord, quadWord

            var code: UInt64 {
                switch self {
                case .byte: 0
                case .word: 1
                case .quadWord: 2
                case .doubleWord: 3
                }
            }
        }

        /// A linear address.
        public var address: UInt64
        public var kind: Kind
        public var length: Length

        public init(address: UInt64, kind: Kind = .execute, length: Length = .byte) {
            self.address = address
            self.kind = kind
            self.length = length
        }
    }

    /// Debugging is on at all; without it the other settings do nothing.
    public var isEnabled: Bool
    /// Stop after each instruction (`KVM_GUESTDBG_SINGLESTEP`).
    public var singleStep: Bool
    /// INT3 stops in the host rather than reaching the guest (`KVM_GUESTDBG_USE_SW_BP`).
    public var softwareBreakpoints: Bool
    /// Up to four (`KVM_GUESTDBG_USE_HW_BP`), in DR0 to DR3.
    public var hardwareBreakpoints: [HardwareBreakpoint]
    /// A guest access to a debug register stops in the host (DR7.GD in the
    /// host's DR7; uses `KVM_GUESTDBG_USE_HW_BP` even without breakpoints).
    public var generalDetect: Bool
    /// No interrupts from the in-kernel irqchip while debugging, so that a
    /// step does not land in an interrupt handler (`KVM_GUESTDBG_BLOCKIRQ`).
    public var blockInterrupts: Bool
    /// An exception to queue for the guest, delivered at the next `run()`
    /// (`KVM_GUESTDBG_INJECT_DB`, `KVM_GUESTDBG_INJECT_BP`); EBUSY if one is
    /// queued already. Queued even when `isEnabled` is off.
    public var injection: Injection?

    /// What `injection` queues.
    public enum Injection: Hashable, Sendable {
        /// #DB.
        case debugException
        /// #BP, returning past the INT3 of the last software-breakpoint stop.
        case breakpoint
    }

    public init(isEnabled: Bool = true, singleStep: Bool = false, softwareBreakpoints: Bool = false,
                hardwareBreakpoints: [HardwareBreakpoint] = [], generalDetect: Bool = false,
                blockInterrupts: Bool = false, injection: Injection? = nil) {
        self.isEnabled = isEnabled
        self.singleStep = singleStep
        self.softwareBreakpoints = softwareBreakpoints
        self.hardwareBreakpoints = hardwareBreakpoints
        self.generalDetect = generalDetect
        self.blockInterrupts = blockInterrupts
        self.injection = injection
    }

    /// The guest runs undebugged.
    public static let disabled = GuestDebug(isEnabled: false)

    /// The most hardware breakpoints x86 has.
    public static let maximumHardwareBreakpoints = 4

    /// The `kvm_guest_debug` these settings make; nil if there are more than
    /// four hardware breakpoints.
    var kernelValue: kvm_guest_debug? {
        guard hardwareBreakpoints.count <= GuestDebug.maximumHardwareBreakpoints else { return nil }
        var debug = kvm_guest_debug()
        var control: UInt32 = 0
        if isEnabled { control |= UInt32(KVM_GUESTDBG_ENABLE) }
        if singleStep { control |= UInt32(KVM_GUESTDBG_SINGLESTEP) }
        if softwareBreakpoints { control |= UInt32(KVM_GUESTDBG_USE_SW_BP) }
        if blockInterrupts { control |= UInt32(KVM_GUESTDBG_BLOCKIRQ) }
        switch injection {
        case .debugException: control |= UInt32(KVM_GUESTDBG_INJECT_DB)
        case .breakpoint: control |= UInt32(KVM_GUESTDBG_INJECT_BP)
        case nil: break
        }
        if !hardwareBreakpoints.isEmpty || generalDetect {
            control |= UInt32(KVM_GUESTDBG_USE_HW_BP)
            var registers: [UInt64] = Array(repeating: 0, count: 8)
            // GE (bit 9) and the reserved bit 10 that reads as 1, as QEMU sets them.
            var dr7: UInt64 = 0x600
            for (slot, breakpoint) in hardwareBreakpoints.enumerated() {
                registers[slot] = breakpoint.address
                let shift = UInt64(slot)
                dr7 |= 2 << (shift * 2)  // Gn: a global enable, kept across task switches.
                dr7 |= breakpoint.kind.rawValue << (16 + shift * 4)
                dr7 |= breakpoint.length.code << (18 + shift * 4)
            }
            if generalDetect { dr7 |= 1 << 13 }
            registers[7] = dr7
            CArray.store(registers, into: &debug.arch.debugreg)
        }
        debug.control = control
        return debug
    }
}

// MARK: Address translation

/// What KVM_TRANSLATE made of a guest linear address under the vCPU's
/// present paging mode (`struct kvm_translation`).
public struct Translation: Hashable, Sendable {
    public var linearAddress: UInt64
    public var physicalAddress: UInt64
    /// The address is mapped; the other fields mean something only then.
    public var valid: Bool
    public var writeable: Bool
    /// User-mode (CPL 3) code may access it.
    public var usermode: Bool

    init(_ translation: kvm_translation) {
        linearAddress = translation.linear_address
        physicalAddress = translation.physical_address
        valid = translation.valid != 0
        writeable = translation.writeable != 0
        usermode = translation.usermode != 0
    }
}

// MARK: C fixed-size arrays

/// Moves between Swift arrays and the homogeneous tuples Swift imports C
/// fixed-size arrays as. A tuple of one element type is laid out as the C
/// array is, so its bytes are the elements in order.
enum CArray {
    static func elements<Tuple, Element: BitwiseCopyable>(of tuple: Tuple, as type: Element.Type) -> [Element] {
        withUnsafeBytes(of: tuple) { bytes in
            let count = bytes.count / MemoryLayout<Element>.stride
            return (0..<count).map { bytes.loadUnaligned(fromByteOffset: $0 * MemoryLayout<Element>.stride, as: Element.self) }
        }
    }

    /// Copies `elements` into the tuple; missing elements are zero, extra ones dropped.
    static func store<Tuple, Element: BitwiseCopyable>(_ elements: [Element], into tuple: inout Tuple) {
        withUnsafeMutableBytes(of: &tuple) { bytes in
            let count = min(elements.count, bytes.count / MemoryLayout<Element>.stride)
            for index in 0..<bytes.count { bytes[index] = 0 }
            for index in 0..<count {
                bytes.storeBytes(of: elements[index], toByteOffset: index * MemoryLayout<Element>.stride, as: Element.self)
            }
        }
    }
}
