import CLinuxKVM
import KVM
import X86

// Guest debugging, translation and the vCPU's pending events, after the
// kernel's arch/x86/kvm/x86.c: kvm_arch_vcpu_ioctl_set_guest_debug,
// kvm_arch_vcpu_ioctl_translate, kvm_vcpu_ioctl_x86_{get,set}_vcpu_events,
// kvm_vcpu_ioctl_x86_{get,set}_debugregs, and the event injection of
// kvm_check_and_inject_events. The breakpoints and single-step themselves
// are the X86 CPU's (Sources/X86/Debug.swift): KVM only tells it what the
// debugger asked for.

/// KVM_GUESTDBG_VALID_MASK: what KVM_CAP_SET_GUEST_DEBUG2 reports on x86.
let KVM_GUESTDBG_VALID_MASK = UInt32(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_USE_SW_BP
    | KVM_GUESTDBG_USE_HW_BP | KVM_GUESTDBG_INJECT_DB | KVM_GUESTDBG_INJECT_BP | KVM_GUESTDBG_BLOCKIRQ)

let DB_VECTOR: UInt8 = 1
let NMI_VECTOR: UInt8 = 2
let BP_VECTOR: UInt8 = 3
let OF_VECTOR: UInt8 = 4
let X86_EFLAGS_TF: UInt64 = 1 << 8

/// An exception KVM holds for the next entry (`struct kvm_queued_exception`).
struct QueuedException {
    var vector: UInt8 = 0
    var hasErrorCode = false
    var errorCode: UInt32 = 0
    /// Raised but not yet begun (KVM_GUESTDBG_INJECT_DB/BP queue these).
    var pending = false
    /// Being delivered (restored by KVM_SET_VCPU_EVENTS).
    var injected = false

    /// kvm_exception_is_soft: #BP and #OF come from instructions, and return past them.
    var isSoft: Bool { vector == BP_VECTOR || vector == OF_VECTOR }
}

extension SoftBackend {
    // MARK: KVM_SET_GUEST_DEBUG

    /// Undefined control bits are accepted, as the host's kernel accepts them
    /// (KVM_CAP_SET_GUEST_DEBUG2 says which bits mean something).
    func kvm_arch_vcpu_ioctl_set_guest_debug(_ arch: inout VCPUArch, _ dbg: kvm_guest_debug) -> Int32 {
        if dbg.control & UInt32(KVM_GUESTDBG_INJECT_DB | KVM_GUESTDBG_INJECT_BP) != 0 {
            if arch.exception.pending || arch.exception.injected { return fail(.resourceBusy) }
            let vector = dbg.control & UInt32(KVM_GUESTDBG_INJECT_DB) != 0 ? DB_VECTOR : BP_VECTOR
            arch.exception = QueuedException(vector: vector, pending: true)
        }
        // kvm_get_rflags hid the guest's TF while KVM single-stepped; the
        // kernel writes that value back, so the guest's own TF is lost then.
        if arch.guestDebug & UInt32(KVM_GUESTDBG_SINGLESTEP) != 0 {
            arch.cpu.state.rflags &= ~X86_EFLAGS_TF
        }
        arch.guestDebug = dbg.control & UInt32(KVM_GUESTDBG_ENABLE) != 0 ? dbg.control : 0
        let control = arch.guestDebug
        var host = HostDebug(
            singleStep: control & UInt32(KVM_GUESTDBG_SINGLESTEP) != 0,
            softwareBreakpoints: control & UInt32(KVM_GUESTDBG_USE_SW_BP) != 0,
            hardwareBreakpoints: control & UInt32(KVM_GUESTDBG_USE_HW_BP) != 0)
        if host.hardwareBreakpoints {
            let registers = withUnsafeBytes(of: dbg.arch.debugreg) { Array($0.bindMemory(to: UInt64.self)) }
            for i in 0..<4 { host.registers[breakpoint: i] = registers[i] }
            host.registers.dr7 = registers[7]
        }
        arch.cpu.hostDebug = host
        return 0
    }

    // MARK: KVM_TRANSLATE

    /// The CPU's page walk without its side effects. As in the kernel, the
    /// walk is the system's (permissions are not checked), so `writeable`
    /// is always 1 and `usermode` 0; an unmapped address gives `valid` 0 and
    /// the physical address INVALID_GPA (all ones).
    func kvm_arch_vcpu_ioctl_translate(_ arch: inout VCPUArch, _ vm: SoftVM, _ arg: UInt) -> Int32 {
        guard var translation = UserMemory.read(kvm_translation.self, from: arg) else { return fail(.badAddress) }
        refreshMemoryView(&arch, vm)
        // INVALID_GPA stands for a failed walk, so an identity map of it is "not valid" too.
        let physical = arch.cpu.translateForDebugger(
            translation.linear_address, gigabytePages: arch.guestHasSupportedFeature(function: 0x8000_0001, edxBit: 26),
            pse36: arch.guestHasSupportedFeature(function: 1, edxBit: 17)) ?? UInt64.max
        translation.physical_address = physical
        translation.valid = physical != UInt64.max ? 1 : 0
        translation.writeable = 1
        translation.usermode = 0
        return UserMemory.write(translation, to: arg) ? 0 : fail(.badAddress)
    }

    // MARK: KVM_GET_DEBUGREGS, KVM_SET_DEBUGREGS

    func kvm_vcpu_ioctl_x86_get_debugregs(_ arch: VCPUArch) -> kvm_debugregs {
        let registers = arch.cpu.state.debugRegisters
        var debug = kvm_debugregs()
        debug.db = (registers.dr0, registers.dr1, registers.dr2, registers.dr3)
        debug.dr6 = registers.dr6
        debug.dr7 = registers.dr7
        return debug
    }

    /// The values are taken as given (no fixed bits added), as the kernel
    /// takes them; bits above 31 of DR6 or DR7 and non-zero flags are EINVAL.
    func kvm_vcpu_ioctl_x86_set_debugregs(_ arch: inout VCPUArch, _ debug: kvm_debugregs) -> Int32 {
        if debug.flags != 0 || debug.dr6 >> 32 != 0 || debug.dr7 >> 32 != 0 { return fail(.invalidArgument) }
        var registers = DebugRegisterFile()
        (registers.dr0, registers.dr1, registers.dr2, registers.dr3) = debug.db
        registers.dr6 = debug.dr6
        registers.dr7 = debug.dr7
        arch.cpu.state.debugRegisters = registers
        return 0
    }

    // MARK: KVM_GET_VCPU_EVENTS, KVM_SET_VCPU_EVENTS

    /// The flags say which parts are valid, not what was set. Without
    /// KVM_CAP_EXCEPTION_PAYLOAD (SoftKVM has no KVM_ENABLE_CAP for it) a
    /// pending exception is reported as injected too; #BP and #OF are not
    /// reported at all (the ABI has no instruction length for them).
    func kvm_vcpu_ioctl_x86_get_vcpu_events(_ arch: VCPUArch) -> kvm_vcpu_events {
        var events = kvm_vcpu_events()
        let exception = arch.exception
        if !exception.isSoft {
            events.exception.injected = exception.injected || exception.pending ? 1 : 0
            events.exception.pending = exception.pending ? 1 : 0
        }
        events.exception.nr = exception.vector
        events.exception.has_error_code = exception.hasErrorCode ? 1 : 0
        events.exception.error_code = exception.errorCode
        events.interrupt.injected = arch.queuedInterrupt != nil && !arch.interruptSoft ? 1 : 0
        events.interrupt.nr = arch.interruptVector
        events.interrupt.shadow = arch.cpu.interruptShadowKind
        events.nmi = arch.events.nmi
        // Pending NMIs and their blocking are the LAPIC code's and the CPU's (LAPICVCPU.swift).
        events.nmi.pending = arch.nmiPending != 0 ? 1 : 0
        events.nmi.masked = arch.cpu.nmiBlocked ? 1 : 0
        // sipi_vector is never reported; there is no SMM.
        events.flags = UInt32(KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM)
        return events
    }

    /// The kernel's checks in its order, including that what comes before
    /// an EINVAL for SMM or a triple fault is applied already.
    func kvm_vcpu_ioctl_x86_set_vcpu_events(_ arch: inout VCPUArch, _ events: kvm_vcpu_events) -> Int32 {
        let valid = UInt32(KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR | KVM_VCPUEVENT_VALID_SHADOW
            | KVM_VCPUEVENT_VALID_SMM | KVM_VCPUEVENT_VALID_PAYLOAD | KVM_VCPUEVENT_VALID_TRIPLE_FAULT)
        if events.flags & ~valid != 0 { return fail(.invalidArgument) }
        // KVM_CAP_EXCEPTION_PAYLOAD is not enabled: a payload is refused,
        // and without one an exception can only be injected, not pending.
        if events.flags & UInt32(KVM_VCPUEVENT_VALID_PAYLOAD) != 0 { return fail(.invalidArgument) }
        let exception = events.exception
        if exception.injected != 0 && (exception.nr > 31 || exception.nr == NMI_VECTOR) { return fail(.invalidArgument) }
        arch.exception = QueuedException(vector: exception.nr, hasErrorCode: exception.has_error_code != 0,
                                         errorCode: exception.error_code, pending: false, injected: exception.injected != 0)
        arch.interruptVector = events.interrupt.nr
        arch.queuedInterrupt = events.interrupt.injected != 0 ? events.interrupt.nr : nil
        arch.interruptSoft = events.interrupt.soft != 0
        if events.flags & UInt32(KVM_VCPUEVENT_VALID_SHADOW) != 0 {
            arch.cpu.interruptShadowKind = events.interrupt.shadow
        }
        arch.events.nmi.injected = events.nmi.injected
        if events.flags & UInt32(KVM_VCPUEVENT_VALID_NMI_PENDING) != 0 {
            arch.events.nmi.pending = events.nmi.pending
            arch.nmiPending = 0
            arch.nmiQueued = Int(events.nmi.pending)
        }
        arch.events.nmi.masked = events.nmi.masked
        arch.cpu.nmiBlocked = events.nmi.masked != 0
        // The SIPI vector goes to an in-kernel local APIC, which SoftKVM does not have yet.
        if events.flags & UInt32(KVM_VCPUEVENT_VALID_SMM) != 0 {
            // As a kernel built without SMM answers.
            if events.smi.smm != 0 || events.smi.pending != 0 || events.smi.smm_inside_nmi != 0 { return fail(.invalidArgument) }
        }
        // KVM_CAP_X86_TRIPLE_FAULT_EVENT is not enabled.
        if events.flags & UInt32(KVM_VCPUEVENT_VALID_TRIPLE_FAULT) != 0 { return fail(.invalidArgument) }
        return 0
    }

    // MARK: Injection at entry

    /// The events KVM injects as KVM_RUN enters the guest
    /// (kvm_check_and_inject_events): a queued or restored exception, else
    /// an interrupt from KVM_INTERRUPT or KVM_SET_VCPU_EVENTS. Neither looks
    /// at IF, and KVM_GUESTDBG_BLOCKIRQ holds back neither (it blocks new
    /// interrupts from the irqchip only). #BP and #OF, and software
    /// interrupts, return past the instruction of the last #BP stop
    /// (`event_exit_inst_len`). Returns the exit delivery ended in, if any.
    func inject_pending_event(_ arch: inout VCPUArch) -> X86Exit? {
        let exception = arch.exception
        if exception.pending || exception.injected {
            arch.exception.pending = false
            arch.exception.injected = false
            arch.exception.hasErrorCode = false
            // A queued #DB (KVM_GUESTDBG_INJECT_DB) has no payload: DR6 stays; GD goes.
            if exception.pending && exception.vector == DB_VECTOR {
                arch.cpu.state.debugRegisters.dr7 &= ~DR7.gd
            }
            return arch.cpu.injectEvent(exception.vector, errorCode: exception.hasErrorCode ? exception.errorCode : nil,
                                        software: exception.isSoft,
                                        instructionLength: exception.isSoft ? arch.eventExitInstructionLength : 0)
        }
        if let vector = arch.queuedInterrupt {
            arch.queuedInterrupt = nil
            let soft = arch.interruptSoft
            arch.interruptSoft = false
            return arch.cpu.injectEvent(vector, errorCode: nil, software: soft,
                                        instructionLength: soft ? arch.eventExitInstructionLength : 0)
        }
        return nil
    }
}

extension VCPUArch {
    /// guest_cpu_cap_has: the guest's CPUID has the feature and SoftKVM supports it.
    func guestHasSupportedFeature(function: UInt32, edxBit: UInt32) -> Bool {
        let bit: UInt32 = 1 << edxBit
        let guest = cpuid.first { $0.function == function }.map { $0.edx & bit != 0 } ?? false
        let supported = supportedCPUID.first { $0.function == function }.map { $0.edx & bit != 0 } ?? false
        return guest && supported
    }
}
