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
/// Instructions per slice: long enough that the checks cost nothing, short
/// enough that a kick is seen within about a millisecond.
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
        return vcpu.arch.withLock { arch in
            arch.hasRun = true
            complete_userspace_io(&arch, vcpu)
            if let exit = complete_userspace_msr(&arch, vcpu) {
                handleExit(exit, &arch, vcpu)
                post_kvm_run_save(arch, run, irqchip: irqchip)
                return 0
            }
            refreshMemoryView(&arch, vcpu.vm)
            // A debug trap of the instruction before the last exit comes
            // before what is injected now.
            if let exit = arch.cpu.takePendingDebugTraps() {
                handleExit(exit, &arch, vcpu)
                post_kvm_run_save(arch, run, irqchip: irqchip)
                return 0
            }
            // Event injection at entry, which does not look at IF (user space
            // asks ready_for_interrupt_injection first).
            if let exit = inject_pending_event(&arch) {
                handleExit(exit, &arch, vcpu)
                post_kvm_run_save(arch, run, irqchip: irqchip)
                return 0
            }
            // A vCPU that halted with an in-kernel LAPIC blocks again until
            // it has an interrupt (vcpu_run's kvm_vcpu_block).
            if let irqchip, arch.mpState == UInt32(KVM_MP_STATE_HALTED),
               !waitForInterrupt(&arch, vcpu, irqchip) {
                return interrupted(arch, run, irqchip: irqchip)
            }
            while true {
                refreshMemoryView(&arch, vcpu.vm)
                // After an OUT or MMIO write served in the kernel: its traps before an interrupt.
                if let exit = arch.cpu.takePendingDebugTraps() {
                    handleExit(exit, &arch, vcpu)
                    post_kvm_run_save(arch, run, irqchip: irqchip)
                    return 0
                }
                var stepOne = false
                if let irqchip {
                    // The PIC's INTR, through the BSP's LINT0 (ExtINT at
                    // reset): taken at an instruction boundary when IF allows,
                    // the vector from the INTA cycle (kvm_cpu_get_interrupt).
                    // KVM_GUESTDBG_BLOCKIRQ keeps them out while a debugger steps.
                    if takesPICInterrupts(vcpu, irqchip) && arch.guestDebug & UInt32(KVM_GUESTDBG_BLOCKIRQ) == 0 {
                        if arch.cpu.interruptsEnabled {
                            let vector = irqchip.picAcknowledge()
                            if let exit = arch.cpu.deliverExternalInterrupt(vector) {
                                handleExit(exit, &arch, vcpu)
                                post_kvm_run_save(arch, run, irqchip: irqchip)
                                return 0
                            }
                        } else {
                            // Pending but masked by IF: look again after each instruction.
                            stepOne = true
                        }
                    }
                } else {
                    // An interrupt window asked for (only without an in-kernel
                    // PIC, as dm_request_for_irq_injection): exit as soon as
                    // IF allows an interrupt, checking after each instruction.
                    let windowRequested = run.pointee.request_interrupt_window != 0
                    if windowRequested && arch.cpu.interruptsEnabled {
                        run.pointee.exit_reason = UInt32(KVM_EXIT_IRQ_WINDOW_OPEN)
                        post_kvm_run_save(arch, run, irqchip: irqchip)
                        return 0
                    }
                    stepOne = windowRequested
                }
                var exit = arch.cpu.run(maxInstructions: stepOne ? 1 : runSliceInstructions)
                if case .instructionLimit = exit {
                    // A kick between slices: the signal the kernel would see.
                    if run.pointee.immediate_exit != 0 { return interrupted(arch, run, irqchip: irqchip) }
                    continue
                }
                if case .msr(let access) = exit {
                    guard let next = kvm_emulate_msr(access, &arch, vcpu) else { continue }
                    exit = next
                }
                if handledInKernel(exit, &arch, vcpu, irqchip) { continue }
                if case .halt = exit, let irqchip {
                    // kvm_emulate_halt with an in-kernel LAPIC: no exit, the
                    // vCPU sleeps until an interrupt can be delivered.
                    if !waitForInterrupt(&arch, vcpu, irqchip) { return interrupted(arch, run, irqchip: irqchip) }
                    continue
                }
                handleExit(exit, &arch, vcpu)
                post_kvm_run_save(arch, run, irqchip: irqchip)
                return 0
            }
        }
    }

    /// KVM_RUN ended by a signal or kick: EINTR with KVM_EXIT_INTR.
    func interrupted(_ arch: VCPUArch, _ run: UnsafeMutablePointer<kvm_run>, irqchip: SoftIrqchip?) -> Int32 {
        run.pointee.exit_reason = UInt32(KVM_EXIT_INTR)
        post_kvm_run_save(arch, run, irqchip: irqchip)
        return fail(.interrupted)
    }

    /// kvm_cpu_has_extint: the PIC's output is high and this vCPU's LAPIC
    /// takes it (kvm_apic_accept_pic_intr: at reset only the BSP's LINT0 is
    /// ExtINT; SoftKVM has no LAPIC to reprogram that yet).
    func takesPICInterrupts(_ vcpu: SoftVCPU, _ irqchip: SoftIrqchip) -> Bool {
        vcpu.id == 0 && irqchip.picOutput
    }

    /// kvm_vcpu_block for a halted vCPU: sleeps on the irqchip's wakeup
    /// eventfd until an interrupt is deliverable (true), or until a kick or
    /// `immediate_exit` ends KVM_RUN (false). The kick's signal interrupts
    /// the poll; the timeout covers a signal that lands between the check
    /// of `immediate_exit` and the poll. IOAPIC messages do not wake it:
    /// with every LAPIC at reset they are refused, as on the host.
    func waitForInterrupt(_ arch: inout VCPUArch, _ vcpu: SoftVCPU, _ irqchip: SoftIrqchip) -> Bool {
        arch.mpState = UInt32(KVM_MP_STATE_HALTED)
        let wakeup = (irqchip.bus as? UnwiredLocalAPICs)?.wakeup ?? -1
        while true {
            // Drained before the check, so that a raise after the check leaves it readable.
            if wakeup >= 0 {
                var count: UInt64 = 0
                _ = withUnsafeMutableBytes(of: &count) { Glibc.read(wakeup, $0.baseAddress, 8) }
            }
            if arch.cpu.interruptsEnabled && takesPICInterrupts(vcpu, irqchip) {
                arch.mpState = UInt32(KVM_MP_STATE_RUNNABLE)
                return true
            }
            if vcpu.run.pointee.immediate_exit != 0 { return false }
            var entry = pollfd(fd: wakeup, events: Int16(POLLIN), revents: 0)
            _ = poll(&entry, 1, 50)
        }
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
        case .emulationFailure, .exception, .instructionLimit:
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
    func post_kvm_run_save(_ arch: VCPUArch, _ run: UnsafeMutablePointer<kvm_run>, irqchip: SoftIrqchip?) {
        run.pointee.if_flag = arch.cpu.state.rflags & RFLAGS.if != 0 ? 1 : 0
        run.pointee.cr8 = arch.extraSregs.cr8
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
