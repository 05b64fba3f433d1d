import CLinuxKVM
import Glibc
import KVM
import SystemPackage
import X86

// KVM_RUN on the X86 CPU, after the kernel's vcpu_run and its exit
// handlers (arch/x86/kvm/x86.c): the CPU runs in slices, between which
// `immediate_exit` (which a kick sets before its signal) and memory-slot
// changes are checked; an exit fills `kvm_run` as the kernel fills it.

/// KVM_PIO_PAGE_OFFSET: port I/O data lives in the page after kvm_run.
let KVM_PIO_PAGE_OFFSET = 1
/// The most instructions per slice: long enough that the checks between
/// slices (the kick, the APIC timer, events other threads delivered) cost
/// nothing. Slices are shorter when the CPU is slower (see sliceLength).
let runSliceInstructions = 100_000

extension SoftBackend {
    /// KVM_RUN (kvm_arch_vcpu_ioctl_run).
    func kvm_arch_vcpu_ioctl_run(_ vcpu: SoftVCPU) -> Int32 {
        let run = vcpu.run
        // The kernel returns EINTR for immediate_exit before entering the
        // guest, and leaves exit_reason as it was (only a pending signal sets KVM_EXIT_INTR).
        if run.pointee.immediate_exit != 0 { return fail(.interrupted) }
        // Read once: KVM_CREATE_IRQCHIP is refused once a vCPU exists.
        let irqchip = vcpu.vm.irqchip
        let bus = irqchip?.bus as? SoftAPICBus
        return vcpu.arch.withLock { arch in
            arch.hasRun = true
            // An AP waits for INIT inside KVM_RUN; once INIT or SIPI came,
            // KVM_RUN returns EAGAIN for user space to run it again (vcpu_run).
            if let apic = vcpu.apic, let bus, arch.mpState == KVM_MP_STATE_UNINITIALIZED_ {
                guard vcpu_block(&arch, vcpu, apic, bus) else { return interrupted(arch, vcpu, irqchip: irqchip) }
                return fail(.resourceTemporarilyUnavailable)
            }
            complete_userspace_io(&arch, vcpu)
            if let exit = complete_userspace_msr(&arch, vcpu) {
                handleExit(exit, &arch, vcpu)
                post_kvm_run_save(arch, vcpu, irqchip: irqchip)
                return 0
            }
            refreshMemoryView(&arch, vcpu.vm)
            // A debug trap of the instruction before the last exit comes
            // before what is injected now.
            if let exit = arch.cpu.takePendingDebugTraps() {
                handleExit(exit, &arch, vcpu)
                post_kvm_run_save(arch, vcpu, irqchip: irqchip)
                return 0
            }
            kvm_guest_time_update(&arch, vcpu.vm)
            // Event injection at entry, which does not look at IF (user space
            // asks ready_for_interrupt_injection first).
            if let exit = inject_pending_event(&arch) {
                handleExit(exit, &arch, vcpu)
                post_kvm_run_save(arch, vcpu, irqchip: irqchip)
                return 0
            }
            while true {
                refreshMemoryView(&arch, vcpu.vm)
                // After an OUT or MMIO write served in the kernel: its traps before an interrupt.
                if let exit = arch.cpu.takePendingDebugTraps() {
                    handleExit(exit, &arch, vcpu)
                    post_kvm_run_save(arch, vcpu, irqchip: irqchip)
                    return 0
                }
                let sliceStart = TimeStampCounter.hostNanoseconds()
                var slice = arch.sliceLength(until: .max, now: sliceStart)
                if let apic = vcpu.apic, let bus, let irqchip {
                    serviceTimer(apic, now: sliceStart)
                    slice = arch.sliceLength(until: apic.nextTimerExpiration, now: sliceStart)
                    kvm_apic_accept_events(&arch, vcpu)
                    // A halted vCPU, or one waiting for SIPI, sleeps until
                    // an event makes it runnable (vcpu_block).
                    if arch.mpState != KVM_MP_STATE_RUNNABLE_ {
                        guard vcpu_block(&arch, vcpu, apic, bus) else { return interrupted(arch, vcpu, irqchip: irqchip) }
                        continue
                    }
                    if let exit = injectPendingEvents(&arch, vcpu, apic, bus, irqchip) {
                        handleExit(exit, &arch, vcpu)
                        post_kvm_run_save(arch, vcpu, irqchip: irqchip)
                        return 0
                    }
                } else {
                    if let exit = injectPendingNMI(&arch, vcpu) {
                        handleExit(exit, &arch, vcpu)
                        post_kvm_run_save(arch, vcpu, irqchip: irqchip)
                        return 0
                    }
                    // An interrupt window asked for (only without an in-kernel
                    // PIC, as dm_request_for_irq_injection): exit as soon as
                    // IF allows an interrupt.
                    let windowRequested = run.pointee.request_interrupt_window != 0
                    if windowRequested && arch.cpu.interruptsEnabled {
                        run.pointee.exit_reason = UInt32(KVM_EXIT_IRQ_WINDOW_OPEN)
                        post_kvm_run_save(arch, vcpu, irqchip: irqchip)
                        return 0
                    }
                    if windowRequested { arch.cpu.waitingEvents.insert(.interrupt) }
                }
                var exit = arch.cpu.run(maxInstructions: slice)
                if case .instructionLimit = exit {
                    arch.measureSlice(slice, from: sliceStart, to: TimeStampCounter.hostNanoseconds())
                    // A kick between slices: the signal the kernel would see.
                    if run.pointee.immediate_exit != 0 { return interrupted(arch, vcpu, irqchip: irqchip) }
                    // The guest may have moved its TSC: its pvclock follows.
                    kvm_guest_time_update(&arch, vcpu.vm)
                    continue
                }
                if case .systemRegister(let access) = exit {
                    if let failed = handleSystemRegister(access, &arch, vcpu) {
                        handleExit(failed, &arch, vcpu)
                        post_kvm_run_save(arch, vcpu, irqchip: irqchip)
                        return 0
                    }
                    continue
                }
                if case .msr(let access) = exit {
                    guard let next = kvm_emulate_msr(access, &arch, vcpu) else { continue }
                    exit = next
                }
                if handledInKernel(exit, &arch, vcpu, irqchip) { continue }
                if case .halt = exit, vcpu.apic != nil {
                    // kvm_emulate_halt with an in-kernel LAPIC: no exit, the
                    // vCPU sleeps until an event ends the halt.
                    arch.mpState = KVM_MP_STATE_HALTED_
                    continue
                }
                handleExit(exit, &arch, vcpu)
                post_kvm_run_save(arch, vcpu, irqchip: irqchip)
                return 0
            }
        }
    }

    /// NMIs without an in-kernel APIC (KVM_NMI works with a user-space
    /// irqchip too): delivered when NMIs are not blocked, else waited for.
    func injectPendingNMI(_ arch: inout VCPUArch, _ vcpu: SoftVCPU) -> X86Exit? {
        process_nmi(&arch, vcpu)
        if arch.nmiPending > 0 && arch.cpu.nmiAllowed {
            arch.nmiPending -= 1
            if let exit = arch.cpu.deliverNMI() { return exit }
        }
        arch.cpu.waitingEvents = arch.nmiPending > 0 ? [.nmi] : []
        return nil
    }

    /// KVM_RUN ended by a signal or kick: EINTR with KVM_EXIT_INTR.
    func interrupted(_ arch: VCPUArch, _ vcpu: SoftVCPU, irqchip: SoftIrqchip?) -> Int32 {
        vcpu.run.pointee.exit_reason = UInt32(KVM_EXIT_INTR)
        post_kvm_run_save(arch, vcpu, irqchip: irqchip)
        return fail(.interrupted)
    }

    /// The kernel's in-kernel devices on the PIO and MMIO buses, tried
    /// before an exit to user space (kernel_pio, vcpu_mmio_write/read):
    /// the PIC and IOAPIC, ioeventfds, coalesced zones. True when the
    /// access was handled and the guest goes on. Only single accesses are
    /// taken; string I/O (REP INS/OUTS) still exits.
    func handledInKernel(_ exit: X86Exit, _ arch: inout VCPUArch, _ vcpu: SoftVCPU, _ irqchip: SoftIrqchip?) -> Bool {
        switch exit {
        case .io(let io) where io.count == 1:
            if let irqchip, irqchip.handlesPort(io.port) {
                if io.isWrite {
                    irqchip.portWrite(io.port, value: UInt8(truncatingIfNeeded: io.data), length: io.size)
                } else {
                    if arch.cpu.hasStringInput { return false }
                    arch.cpu.completeInput(UInt64(irqchip.portRead(io.port, length: io.size)))
                }
                return true
            }
            if kernel_pio_pit(io, &arch, vcpu) { return true }
            guard io.isWrite else { return false }
            let address = UInt64(io.port)
            if vcpu.vm.ioeventfds.withLock({ $0.write(.pio, address: address, length: io.size, value: io.data) }) { return true }
            return vcpu.vm.coalesced.write(address: address, length: io.size, value: io.data, pio: true)
        case .mmio(let access) where access.size <= 8:
            if handleAPICAccess(access, &arch, vcpu) { return true }
            if let irqchip, irqchip.handlesMMIO(access.address) {
                if access.isWrite {
                    irqchip.mmioWrite(access.address, length: access.size, value: access.data)
                } else {
                    arch.cpu.completeMMIORead(address: access.address,
                                              value: irqchip.mmioRead(access.address, length: access.size))
                }
                return true
            }
            guard access.isWrite else { return false }
            if vcpu.vm.ioeventfds.withLock({ $0.write(.mmio, address: access.address, length: access.size, value: access.data) }) {
                return true
            }
            return vcpu.vm.coalesced.write(address: access.address, length: access.size, value: access.data, pio: false)
        default:
            return false
        }
    }

    /// Gives the answer user space left in kvm_run to the instruction that
    /// asked (complete_emulated_pio / complete_emulated_mmio).
    func complete_userspace_io(_ arch: inout VCPUArch, _ vcpu: SoftVCPU) {
        let data = vcpu.mapping + KVM_PIO_PAGE_OFFSET * Int(PAGE_SIZE)
        switch arch.pendingRead {
        case .none:
            return
        case .port(let size):
            arch.cpu.completeInput(Self.littleEndian(data, size: size))
        case .string(let size, let count):
            arch.cpu.completeStringInput(UnsafeRawBufferPointer(start: data, count: size * count))
        case .mmio(let address, let size):
            let value = withUnsafeBytes(of: vcpu.run.pointee.mmio.data) {
                Self.littleEndian(UnsafeMutableRawPointer(mutating: $0.baseAddress ?? UnsafeRawPointer(data)), size: size)
            }
            arch.cpu.completeMMIORead(address: address, value: value)
        }
        arch.pendingRead = .none
    }

    /// Fills kvm_run for an exit of the CPU.
    func handleExit(_ exit: X86Exit, _ arch: inout VCPUArch, _ vcpu: SoftVCPU) {
        let run = vcpu.run
        switch exit {
        case .io(let io):
            run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
            run.pointee.io.direction = UInt8(io.isWrite ? KVM_EXIT_IO_OUT : KVM_EXIT_IO_IN)
            run.pointee.io.size = UInt8(io.size)
            run.pointee.io.port = io.port
            run.pointee.io.count = UInt32(io.count)
            run.pointee.io.data_offset = UInt64(KVM_PIO_PAGE_OFFSET) * PAGE_SIZE
            let data = vcpu.mapping + KVM_PIO_PAGE_OFFSET * Int(PAGE_SIZE)
            if io.isWrite {
                Self.storeLittleEndian(io.data, to: data, size: io.size)
            } else {
                arch.pendingRead = io.count > 1 || arch.cpu.hasStringInput
                    ? .string(size: io.size, count: io.count) : .port(size: io.size)
            }
        case .mmio(let access):
            run.pointee.exit_reason = UInt32(KVM_EXIT_MMIO)
            run.pointee.mmio.phys_addr = access.address
            run.pointee.mmio.len = UInt32(min(access.size, 8))
            run.pointee.mmio.is_write = access.isWrite ? 1 : 0
            if access.isWrite {
                var data = access.data.littleEndian
                withUnsafeMutableBytes(of: &run.pointee.mmio.data) { destination in
                    withUnsafeBytes(of: &data) { destination.copyMemory(from: $0) }
                }
            } else {
                // The kernel leaves a read's data as it was (what the union last held).
                arch.pendingRead = .mmio(address: access.address, size: access.size)
            }
        case .halt:
            run.pointee.exit_reason = UInt32(KVM_EXIT_HLT)
        case .debug(let stop):
            // As VMX's handle_exception_nmi fills it: a #BP stop leaves dr6
            // and dr7 as they were.
            run.pointee.exit_reason = UInt32(KVM_EXIT_DEBUG)
            run.pointee.debug.arch.exception = UInt32(stop.vector)
            run.pointee.debug.arch.pc = stop.pc
            if let dr6 = stop.dr6 { run.pointee.debug.arch.dr6 = dr6 }
            if let dr7 = stop.dr7 { run.pointee.debug.arch.dr7 = dr7 }
            arch.eventExitInstructionLength = stop.vector == BP_VECTOR ? 1 : 0
        case .msr:
            break  // kvm_msr_user_space filled kvm_run.
        case .shutdown:
            run.pointee.exit_reason = UInt32(KVM_EXIT_SHUTDOWN)
        case .emulationFailure, .exception, .instructionLimit, .systemRegister:
            // An exception reaches here only if delivery is off; either way
            // the kernel's answer to what it cannot emulate is this.
            run.pointee.exit_reason = UInt32(KVM_EXIT_INTERNAL_ERROR)
            // As __kvm_prepare_emulation_failure_exit lays it out: the flags
            // (no instruction bytes), then five words of the vendor's exit
            // information, which a software CPU does not have (zeros).
            run.pointee.emulation_failure.suberror = UInt32(KVM_INTERNAL_ERROR_EMULATION)
            run.pointee.emulation_failure.flags = 0
            run.pointee.emulation_failure.ndata = 6
            withUnsafeMutableBytes(of: &run.pointee.internal.data) { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) }
        }
    }

    /// The state the kernel copies into kvm_run after every exit.
    func post_kvm_run_save(_ arch: VCPUArch, _ vcpu: SoftVCPU, irqchip: SoftIrqchip?) {
        let run = vcpu.run
        run.pointee.if_flag = arch.cpu.state.rflags & RFLAGS.if != 0 ? 1 : 0
        run.pointee.cr8 = kvm_get_cr8(arch, vcpu)
        run.pointee.apic_base = arch.cpu.state.msrs.apicBase
        // With an in-kernel PIC always 1; with none, when an interrupt is
        // allowed (kvm_arch_interrupt_allowed: IF and no STI or MOV SS
        // shadow) and none is queued.
        run.pointee.ready_for_interrupt_injection = irqchip != nil || (arch.cpu.interruptsEnabled && arch.queuedInterrupt == nil) ? 1 : 0
    }

    /// Builds the CPU's view of guest memory from the VM's slots when they
    /// changed since the last build.
    func refreshMemoryView(_ arch: inout VCPUArch, _ vm: SoftVM) {
        let view: (PhysicalMemory, [DirtyLog])? = vm.slots.withLock { slots in
            guard slots.generation != arch.memoryGeneration else { return nil }
            arch.memoryGeneration = slots.generation
            var owners: [DirtyLog] = []
            var ranges: [PhysicalRange] = []
            for slot in slots.byID.values {
                guard let host = UnsafeMutableRawPointer(bitPattern: UInt(slot.userspaceAddress)) else { continue }
                if let log = slot.dirtyBitmap { owners.append(log) }
                ranges.append(PhysicalRange(
                    guestAddress: slot.baseGFN * PAGE_SIZE, size: slot.npages * PAGE_SIZE, host: host,
                    readOnly: slot.flags & UInt32(KVM_MEM_READONLY) != 0, dirtyBitmap: slot.dirtyBitmap?.words))
            }
            return (PhysicalMemory(ranges: ranges), owners)
        }
        if let (memory, owners) = view {
            arch.cpu.memory = memory
            arch.memoryOwners = owners
        }
    }

    static func littleEndian(_ pointer: UnsafeMutableRawPointer, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<min(size, 8) { value |= UInt64(pointer.load(fromByteOffset: i, as: UInt8.self)) << UInt64(i * 8) }
        return value
    }

    static func storeLittleEndian(_ value: UInt64, to pointer: UnsafeMutableRawPointer, size: Int) {
        for i in 0..<min(size, 8) {
            pointer.storeBytes(of: UInt8(truncatingIfNeeded: value >> UInt64(i * 8)), toByteOffset: i, as: UInt8.self)
        }
    }
}

extension VCPUArch {
    /// The instructions of the next slice: about `sliceNanoseconds` of
    /// work at the rate the CPU has been running, or less when the APIC
    /// timer expires sooner, so that an expiry, a kick or an IPI is seen
    /// close to its time however fast the CPU runs.
    func sliceLength(until expiration: UInt64, now: UInt64) -> Int {
        let remaining = expiration > now ? min(expiration - now, sliceNanoseconds) : 0
        let instructions = Double(remaining) * instructionsPerNanosecond
        return max(minimumSliceInstructions, min(runSliceInstructions, Int(instructions)))
    }

    /// Folds a slice's instructions per nanosecond into the running rate.
    /// A slice can end early (an event window opened) and look fast: one
    /// sample moves the rate by at most a factor of two.
    mutating func measureSlice(_ instructions: Int, from start: UInt64, to end: UInt64) {
        guard end > start else { return }
        let sample = Double(instructions) / Double(end - start)
        let bounded = min(max(sample, instructionsPerNanosecond / 2), instructionsPerNanosecond * 2)
        instructionsPerNanosecond = 0.75 * instructionsPerNanosecond + 0.25 * bounded
    }
}

/// How long a slice runs when no timer is due sooner.
let sliceNanoseconds: UInt64 = 200_000
/// The shortest slice, so that a timer about to expire does not make the
/// checks between slices the CPU's main work.
let minimumSliceInstructions = 500
