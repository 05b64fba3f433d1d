import CLinuxKVM
import Glibc
import KVM
import SystemPackage
import X86

// A vCPU's side of its local APIC, after arch/x86/kvm/x86.c and lapic.c:
// KVM_GET/SET_LAPIC, KVM_NMI, the MP states with INIT and SIPI, the MSRs
// and CR8 the CPU forwards, the APIC's page on the MMIO path, and the
// injection of NMIs and interrupts at instruction boundaries.

let KVM_MP_STATE_RUNNABLE_ = UInt32(KVM_MP_STATE_RUNNABLE)
let KVM_MP_STATE_UNINITIALIZED_ = UInt32(KVM_MP_STATE_UNINITIALIZED)
let KVM_MP_STATE_INIT_RECEIVED_ = UInt32(KVM_MP_STATE_INIT_RECEIVED)
let KVM_MP_STATE_HALTED_ = UInt32(KVM_MP_STATE_HALTED)
let KVM_MP_STATE_SIPI_RECEIVED_ = UInt32(KVM_MP_STATE_SIPI_RECEIVED)
let KVM_MP_STATE_AP_RESET_HOLD_ = UInt32(KVM_MP_STATE_AP_RESET_HOLD)

/// The bits of CR8 above its 4 (CR8_RESERVED_BITS).
let CR8_RESERVED_BITS: UInt64 = ~0xF

extension SoftVCPU {
    /// The VM's APIC bus, when the VM has an in-kernel irqchip.
    var apicBus: SoftAPICBus? { vm.irqchip?.bus as? SoftAPICBus }

    /// kvm_create_lapic and the LAPIC half of kvm_vcpu_reset(RESET): with
    /// an in-kernel irqchip every vCPU gets an APIC; the APIC map is
    /// rebuilt before the vCPU is online.
    static func kvm_create_lapic(_ vm: SoftVM, id: UInt32, index: Int) -> LocalAPIC? {
        guard let bus = vm.irqchip?.bus as? SoftAPICBus else { return nil }
        let apic = LocalAPIC(vcpuID: id, index: index)
        _ = apic.withState { $0.reset(initEvent: false, isResetBSP: id == 0) }
        bus.vcpuCreating(apic)
        return apic
    }
}

extension SoftBackend {
    // MARK: Effects of register accesses

    /// What a register access left to do once the APIC's lock is released:
    /// the IPI, the EOI to the IOAPIC, the map.
    func apply(_ effects: LAPICEffects, _ vcpu: SoftVCPU) {
        guard let apic = vcpu.apic, let bus = vcpu.apicBus else { return }
        if effects.mapDirty { bus.recalculateMap() }
        if let eoi = effects.eoi {
            // kvm_ioapic_send_eoi: ack notifiers hear every EOI; a level-
            // triggered one also ends the IOAPIC pin's remote IRR.
            vcpu.vm.irqchip?.endOfInterrupt(vector: eoi.vector, levelTriggered: eoi.levelTriggered)
        }
        if let ipi = effects.ipi { _ = bus.deliver(ipi, source: apic) }
    }

    // MARK: KVM_GET_LAPIC, KVM_SET_LAPIC

    func kvm_vcpu_ioctl_get_lapic(_ vcpu: SoftVCPU, _ arg: UInt) -> Int32 {
        guard let apic = vcpu.apic else { return fail(.invalidArgument) }
        let page = apic.withState { $0.getState(now: TimeStampCounter.hostNanoseconds()) }
        return page.withUnsafeBytes { UserMemory.copyOut($0, to: arg) } ? 0 : fail(.badAddress)
    }

    func kvm_vcpu_ioctl_set_lapic(_ vcpu: SoftVCPU, _ arch: inout VCPUArch, _ arg: UInt) -> Int32 {
        guard let apic = vcpu.apic else { return fail(.invalidArgument) }
        var page = [UInt8](repeating: 0, count: MemoryLayout<kvm_lapic_state>.size)
        let copied = page.withUnsafeMutableBytes { bytes in
            bytes.baseAddress.map { UserMemory.copyIn($0, from: arg, count: bytes.count) } ?? false
        }
        guard copied else {
            return fail(.badAddress)
        }
        let tsc = arch.cpu.tsc
        let effects = apic.withState { $0.setState(page, tsc: tsc, now: TimeStampCounter.hostNanoseconds()) }
        apply(effects, vcpu)
        return 0
    }

    // MARK: KVM_NMI

    /// kvm_vcpu_ioctl_nmi (kvm_inject_nmi): queued, taken at the next boundary NMIs allow.
    func kvm_vcpu_ioctl_nmi(_ arch: inout VCPUArch) -> Int32 {
        arch.nmiQueued += 1
        return 0
    }

    /// process_nmi: queued NMIs join the pending ones, at most two (one
    /// while an NMI handler runs).
    func process_nmi(_ arch: inout VCPUArch, _ vcpu: SoftVCPU) {
        var queued = arch.nmiQueued
        arch.nmiQueued = 0
        if let apic = vcpu.apic {
            queued += apic.withState { lapic in
                defer { lapic.nmiQueued = 0 }
                return lapic.nmiQueued
            }
        }
        guard queued > 0 || arch.nmiPending > 0 else { return }
        let limit = arch.cpu.nmiBlocked ? 1 : 2
        arch.nmiPending = min(arch.nmiPending + queued, limit)
    }

    // MARK: MP state

    /// KVM_GET_MP_STATE: INIT and SIPI are taken first.
    func kvm_arch_vcpu_ioctl_get_mpstate(_ vcpu: SoftVCPU, _ arch: inout VCPUArch) -> UInt32 {
        kvm_apic_accept_events(&arch, vcpu)
        let unhalted = vcpu.apic?.withState { $0.pvUnhalted } ?? false
        if (arch.mpState == KVM_MP_STATE_HALTED_ || arch.mpState == KVM_MP_STATE_AP_RESET_HOLD_) && unhalted {
            return KVM_MP_STATE_RUNNABLE_
        }
        return arch.mpState
    }

    /// KVM_SET_MP_STATE: the waiting states need an in-kernel APIC; SIPI
    /// received is INIT received with the SIPI pending.
    func kvm_arch_vcpu_ioctl_set_mpstate(_ vcpu: SoftVCPU, _ arch: inout VCPUArch, _ state: UInt32) -> Int32 {
        switch state {
        case KVM_MP_STATE_UNINITIALIZED_, KVM_MP_STATE_HALTED_, KVM_MP_STATE_AP_RESET_HOLD_,
             KVM_MP_STATE_INIT_RECEIVED_, KVM_MP_STATE_SIPI_RECEIVED_:
            if vcpu.apic == nil { return fail(.invalidArgument) }
        case KVM_MP_STATE_RUNNABLE_:
            break
        default:
            return fail(.invalidArgument)
        }
        if state == KVM_MP_STATE_SIPI_RECEIVED_ {
            arch.mpState = KVM_MP_STATE_INIT_RECEIVED_
            vcpu.apic?.withState { $0.pendingSIPI = true }
        } else {
            arch.mpState = state
        }
        return 0
    }

    // MARK: INIT and SIPI

    /// kvm_apic_accept_events: a pending INIT resets the vCPU (the BSP
    /// stays runnable, the others wait for SIPI); a SIPI starts a vCPU
    /// waiting for one at vector << 12 in real mode, and is dropped otherwise.
    func kvm_apic_accept_events(_ arch: inout VCPUArch, _ vcpu: SoftVCPU) {
        guard let apic = vcpu.apic else { return }
        let (initEvent, sipi, vector, bsp) = apic.withState { lapic in
            defer {
                lapic.pendingINIT = false
                lapic.pendingSIPI = false
            }
            return (lapic.pendingINIT, lapic.pendingSIPI, lapic.sipiVector, lapic.apicBase & MSR_IA32_APICBASE_BSP != 0)
        }
        if initEvent {
            kvm_vcpu_reset_init(&arch, vcpu)
            arch.mpState = bsp ? KVM_MP_STATE_RUNNABLE_ : KVM_MP_STATE_INIT_RECEIVED_
        }
        if sipi && arch.mpState == KVM_MP_STATE_INIT_RECEIVED_ {
            // kvm_vcpu_deliver_sipi_vector.
            var cs = arch.cpu.state.cs
            cs.selector = UInt16(vector) << 8
            cs.base = UInt64(vector) << 12
            arch.cpu.state.cs = cs
            arch.cpu.state.rip = 0
            arch.mpState = KVM_MP_STATE_RUNNABLE_
        }
    }

    /// kvm_vcpu_reset with init_event: the registers as at RESET but CR0's
    /// CD and NW, with the APIC base, the FPU, XCR0 and the MSRs kept.
    func kvm_vcpu_reset_init(_ arch: inout VCPUArch, _ vcpu: SoftVCPU) {
        if let apic = vcpu.apic {
            apply(apic.withState { $0.reset(initEvent: true, isResetBSP: vcpu.id == 0) }, vcpu)
        }
        let fresh = VCPUArch(id: vcpu.id)
        let oldCR0 = arch.cpu.state.cr0
        var sregs = fresh.sregs
        sregs.cr0 = 0x10 | (oldCR0 & (X86_CR0_NW | X86_CR0_CD))
        sregs.apic_base = arch.cpu.state.msrs.apicBase
        arch.sregs = sregs
        var regs = fresh.regs
        let leaf1 = arch.cpuid.first { $0.function == 1 }
        regs.rdx = UInt64(leaf1?.eax ?? 0x600)
        arch.regs = regs
        arch.nmiQueued = 0
        arch.nmiPending = 0
        arch.cpu.nmiBlocked = false
        arch.cpu.interruptShadow = false
        arch.cpu.waitingEvents = []
        arch.queuedInterrupt = nil
        arch.cpu.state.debugRegisters = DebugRegisterFile()
        // kvmclock_reset: the guest sets it up again.
        arch.clock = VCPUClock()
    }

    // MARK: IA32_APIC_BASE

    /// The guest's MAXPHYADDR, from CPUID 0x80000008 (36 without it).
    func maxPhysicalAddressBits(_ arch: VCPUArch) -> UInt64 {
        guard let leaf = arch.cpuid.first(where: { $0.function == 0x8000_0008 }), leaf.eax & 0xFF != 0 else { return 36 }
        return UInt64(leaf.eax & 0xFF)
    }

    /// kvm_apic_set_base: false for reserved bits, an invalid mode, or a
    /// transition the guest may not make.
    func kvm_apic_set_base(_ arch: inout VCPUArch, _ vcpu: SoftVCPU, _ value: UInt64, hostInitiated: Bool) -> Bool {
        let old = arch.cpu.state.msrs.apicBase
        if old == value { return true }
        // No x2APIC in the CPUID SoftKVM supports: its enable bit is reserved.
        let reserved = ~((1 << maxPhysicalAddressBits(arch)) - 1) | 0x2FF | X2APIC_ENABLE
        if value & reserved != 0 { return false }
        arch.cpu.state.msrs.apicBase = value
        if let apic = vcpu.apic { apply(apic.withState { $0.setBase(value) }, vcpu) }
        return true
    }

    // MARK: MSRs

    /// The MSRs of the APIC, the TSC and kvmclock for KVM_GET_MSRS and a
    /// guest RDMSR (kvm_get_msr_common's cases). nil: not one of these,
    /// .some(nil): one of these, failing.
    func kvm_get_msr_local(_ arch: VCPUArch, _ vcpu: SoftVCPU, _ index: UInt32) -> UInt64?? {
        switch index {
        case MSR_IA32_APICBASE:
            return .some(arch.cpu.state.msrs.apicBase)
        case 0x800...0xBFF:
            return .some(nil)  // x2APIC registers: not in x2APIC mode.
        case MSR_IA32_TSC_DEADLINE:
            return .some(vcpu.apic?.withState { $0.tscDeadlineMSR } ?? 0)
        case MSR_IA32_TSC_ADJUST:
            return .some(arch.cpu.tsc.adjust)
        case MSR_KVM_SYSTEM_TIME, MSR_KVM_SYSTEM_TIME_NEW:
            return .some(arch.clock.systemTime)
        case MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW:
            return .some(vcpu.vm.arch.withLock { $0.clock.wallClock })
        default:
            return nil
        }
    }

    /// The same for KVM_SET_MSRS and a guest WRMSR: nil when not one of
    /// these, else whether the write was taken.
    func kvm_set_msr_local(_ arch: inout VCPUArch, _ vcpu: SoftVCPU, _ index: UInt32, _ value: UInt64,
                           hostInitiated: Bool) -> Bool? {
        switch index {
        case MSR_IA32_APICBASE:
            return kvm_apic_set_base(&arch, vcpu, value, hostInitiated: hostInitiated)
        case 0x800...0xBFF:
            return false
        case MSR_IA32_TSC_DEADLINE:
            let tsc = arch.cpu.tsc
            vcpu.apic?.withState { $0.setTSCDeadline(value, tsc: tsc, now: TimeStampCounter.hostNanoseconds()) }
            return true
        case MSR_IA32_TSC where hostInitiated:
            kvm_synchronize_tsc(vcpu.vm, &arch.cpu.tsc, value)
            return true
        case MSR_IA32_TSC_ADJUST:
            // Taken only when the guest's CPUID has TSC_ADJUST, and ignored
            // (not refused) otherwise; from user space it only sets the MSR.
            guard arch.cpuid.contains(where: { $0.function == 7 && $0.index == 0 && $0.ebx & (1 << 1) != 0 }) else {
                return true
            }
            if hostInitiated { arch.cpu.tsc.adjust = value } else { arch.cpu.tsc.guestWriteAdjust(value) }
            return true
        case MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW:
            vcpu.vm.arch.withLock { $0.clock.wallClock = value }
            refreshMemoryView(&arch, vcpu.vm)
            kvm_write_wall_clock(vcpu.vm, arch.cpu.memory, value)
            return true
        case MSR_KVM_SYSTEM_TIME, MSR_KVM_SYSTEM_TIME_NEW:
            refreshMemoryView(&arch, vcpu.vm)
            kvm_write_system_time(&arch, vcpu.vm, vcpuID: vcpu.id, value, oldMSR: index == MSR_KVM_SYSTEM_TIME,
                                  hostInitiated: hostInitiated)
            return true
        default:
            return nil
        }
    }

    // MARK: CR8

    /// kvm_get_cr8: the APIC's TPR class, or what was set without an APIC.
    func kvm_get_cr8(_ arch: VCPUArch, _ vcpu: SoftVCPU) -> UInt64 {
        guard let apic = vcpu.apic else { return arch.extraSregs.cr8 }
        return UInt64((apic.withState { $0.tpr } & 0xF0) >> 4)
    }

    /// kvm_set_cr8: false for reserved bits.
    func kvm_set_cr8(_ arch: inout VCPUArch, _ vcpu: SoftVCPU, _ value: UInt64) -> Bool {
        if value & CR8_RESERVED_BITS != 0 { return false }
        if let apic = vcpu.apic {
            apic.withState { $0.setTPR(UInt32(value & 0xF) << 4) }
        } else {
            arch.extraSregs.cr8 = value
        }
        return true
    }

    /// An MSR or CR8 access the CPU forwarded: done here, in the kernel,
    /// as KVM's exit handlers do it. Returns the exit a #GP delivery ended in, if any.
    func handleSystemRegister(_ access: SystemRegisterExit, _ arch: inout VCPUArch, _ vcpu: SoftVCPU) -> X86Exit? {
        let result: UInt64?
        switch access.register {
        case .cr8:
            if access.isWrite {
                result = kvm_set_cr8(&arch, vcpu, access.value) ? 0 : nil
            } else {
                result = kvm_get_cr8(arch, vcpu)
            }
        case .msr(let index):
            if access.isWrite {
                result = kvm_set_msr_local(&arch, vcpu, index, access.value, hostInitiated: false) == true ? 0 : nil
            } else {
                result = kvm_get_msr_local(arch, vcpu, index) ?? nil
            }
        }
        return arch.cpu.completeSystemRegisterAccess(result)
    }

    // MARK: The APIC page

    /// The APIC's page on the MMIO path (apic_mmio_read, apic_mmio_write).
    /// False when `address` is not in this vCPU's APIC page.
    func handleAPICAccess(_ access: MMIOExit, _ arch: inout VCPUArch, _ vcpu: SoftVCPU) -> Bool {
        guard let apic = vcpu.apic, apic.handlesMMIO(access.address) else { return false }
        let offset = Int(access.address - apic.mmioBase)
        let now = TimeStampCounter.hostNanoseconds()
        if access.isWrite {
            apply(apic.withState { $0.mmioWrite(offset, length: access.size, value: UInt32(truncatingIfNeeded: access.data), now: now) },
                  vcpu)
        } else {
            let value = apic.withState { $0.mmioRead(offset, length: access.size, now: now) }
            arch.cpu.completeMMIORead(address: access.address, value: value)
        }
        return true
    }

    // MARK: Timer and event injection

    /// The APIC timer's expiry, late, on the vCPU's own thread (apic_timer_fn
    /// and kvm_inject_apic_timer_irqs): checked at every slice boundary and
    /// whenever a blocked vCPU wakes.
    func serviceTimer(_ apic: LocalAPIC, now: UInt64) {
        guard now >= apic.nextTimerExpiration else { return }
        apic.withState { lapic in
            lapic.timerFunction(now: now)
            lapic.injectPendingTimerIRQs()
        }
    }

    /// kvm_cpu_has_interrupt: the PIC through LINT0 (ExtINT), or the APIC.
    func hasInterrupt(_ apic: LocalAPIC, _ bus: SoftAPICBus) -> Bool {
        let picOutput = bus.picOutput
        return apic.withState { ($0.acceptsPICInterrupt && picOutput) || $0.hasInterrupt() != nil }
    }

    /// kvm_vcpu_has_events for a halted vCPU: an event that ends HLT.
    func hasEvents(_ arch: VCPUArch, _ apic: LocalAPIC, _ bus: SoftAPICBus) -> Bool {
        if arch.nmiPending > 0 && arch.cpu.nmiAllowed { return true }
        if apic.withState({ $0.pvUnhalted || $0.pendingINIT || $0.pendingSIPI }) { return true }
        return arch.cpu.interruptsEnabled && hasInterrupt(apic, bus)
    }

    /// kvm_check_and_inject_events at an instruction boundary: an NMI if
    /// NMIs are not blocked, then an interrupt if IF allows (ExtINT before
    /// the APIC's). What stays blocked is left in the CPU's waiting events,
    /// so that the run stops where it can be taken. Returns the exit a
    /// delivery ended in, if any.
    func injectPendingEvents(_ arch: inout VCPUArch, _ vcpu: SoftVCPU, _ apic: LocalAPIC, _ bus: SoftAPICBus,
                             _ irqchip: SoftIrqchip) -> X86Exit? {
        process_nmi(&arch, vcpu)
        // One event per boundary, as one VM entry injects one; the next
        // boundary (the handler's first instruction) may take another.
        if arch.nmiPending > 0 && arch.cpu.nmiAllowed {
            arch.nmiPending -= 1
            if let exit = arch.cpu.deliverNMI() { return exit }
        } else if arch.cpu.interruptsEnabled && arch.guestDebug & UInt32(KVM_GUESTDBG_BLOCKIRQ) == 0 {
            // KVM_GUESTDBG_BLOCKIRQ keeps interrupts out while a debugger steps.
            let picOutput = bus.picOutput
            let (extint, vector) = apic.withState { lapic -> (Bool, UInt8?) in
                if lapic.acceptsPICInterrupt && picOutput { return (true, nil) }
                guard let vector = lapic.hasInterrupt() else { return (false, nil) }
                lapic.acknowledge(vector)
                return (false, vector)
            }
            if extint {
                if let exit = arch.cpu.deliverExternalInterrupt(irqchip.picAcknowledge()) { return exit }
            } else if let vector {
                if let exit = arch.cpu.deliverExternalInterrupt(vector) { return exit }
            }
        }
        var waiting: WaitingEvents = []
        if arch.nmiPending > 0 { waiting.insert(.nmi) }
        if hasInterrupt(apic, bus) { waiting.insert(.interrupt) }
        arch.cpu.waitingEvents = waiting
        return nil
    }

    /// vcpu_block: a vCPU that is not runnable (halted, or waiting for
    /// INIT or SIPI) sleeps on its APIC's wake-up eventfd until an event
    /// makes it runnable (true; for an uninitialized vCPU, until INIT or
    /// SIPI came), or a kick or `immediate_exit` ends KVM_RUN (false). The APIC timer wakes it at its expiry; the kick's signal
    /// interrupts the poll, and the timeout covers a signal that lands
    /// between the check of `immediate_exit` and the poll.
    func vcpu_block(_ arch: inout VCPUArch, _ vcpu: SoftVCPU, _ apic: LocalAPIC, _ bus: SoftAPICBus) -> Bool {
        while true {
            // Drained before the checks, so that an event after them leaves it readable.
            var count: UInt64 = 0
            _ = withUnsafeMutableBytes(of: &count) { Glibc.read(apic.wakeup, $0.baseAddress, 8) }
            serviceTimer(apic, now: TimeStampCounter.hostNanoseconds())
            let initOrSIPI = apic.withState { $0.pendingINIT || $0.pendingSIPI }
            let before = arch.mpState
            kvm_apic_accept_events(&arch, vcpu)
            process_nmi(&arch, vcpu)
            if before == KVM_MP_STATE_UNINITIALIZED_ && initOrSIPI { return true }
            switch arch.mpState {
            case KVM_MP_STATE_RUNNABLE_:
                return true
            case KVM_MP_STATE_HALTED_, KVM_MP_STATE_AP_RESET_HOLD_:
                if hasEvents(arch, apic, bus) {
                    apic.withState { $0.pvUnhalted = false }
                    arch.mpState = KVM_MP_STATE_RUNNABLE_
                    return true
                }
            default:
                break  // INIT received or uninitialized: only INIT and SIPI move it.
            }
            if vcpu.run.pointee.immediate_exit != 0 { return false }
            var wait: UInt64 = 50_000_000
            let expiration = apic.nextTimerExpiration
            if expiration != .max {
                let now = TimeStampCounter.hostNanoseconds()
                wait = min(wait, expiration > now ? expiration - now : 0)
            }
            _ = swiftkvm_wait_readable(apic.wakeup, wait)
        }
    }
}

extension SoftBackend {
    /// kvm_arch_vcpu_postcreate: the new vCPU's TSC at the VM's default
    /// frequency, synchronised with the others (kvm_synchronize_tsc).
    func kvm_arch_vcpu_postcreate(_ vcpu: SoftVCPU) {
        let khz = vcpu.vm.arch.withLock { $0.clock.defaultKilohertz }
        vcpu.arch.withLock { arch in
            arch.cpu.tsc.kilohertz = khz
            kvm_synchronize_tsc(vcpu.vm, &arch.cpu.tsc, nil)
        }
    }

    /// kvm_vcpu_after_set_cpuid's part for the APIC: with a leaf 1, the
    /// timer has periodic mode, and TSC-deadline mode when the leaf says so
    /// (without one, only one-shot, as the kernel leaves it).
    func kvm_lapic_after_set_cpuid(_ arch: VCPUArch, _ vcpu: SoftVCPU) {
        guard let leaf = arch.cpuid.first(where: { $0.function == 1 }) else { return }
        let mask: UInt32 = leaf.ecx & (1 << 24) != 0 ? 3 << 17 : 1 << 17
        vcpu.apic?.withState { $0.timer.modeMask = mask }
    }
}
