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
        return vcpu.arch.withLock { arch in
            arch.hasRun = true
            complete_userspace_io(&arch, vcpu)
            refreshMemoryView(&arch, vcpu.vm)
            // Event injection at entry, which does not look at IF (user space
            // asks ready_for_interrupt_injection first).
            if let vector = arch.queuedInterrupt {
                arch.queuedInterrupt = nil
                if let exit = arch.cpu.deliverExternalInterrupt(vector) {
                    handleExit(exit, &arch, vcpu)
                    post_kvm_run_save(arch, run)
                    return 0
                }
            }
            while true {
                refreshMemoryView(&arch, vcpu.vm)
                // An interrupt window asked for: exit as soon as IF allows an
                // interrupt, checking after each instruction until it does.
                let windowRequested = run.pointee.request_interrupt_window != 0
                if windowRequested && arch.cpu.interruptsEnabled {
                    run.pointee.exit_reason = UInt32(KVM_EXIT_IRQ_WINDOW_OPEN)
                    post_kvm_run_save(arch, run)
                    return 0
                }
                let exit = arch.cpu.run(maxInstructions: windowRequested ? 1 : runSliceInstructions)
                if case .instructionLimit = exit {
                    // A kick between slices: the signal the kernel would see.
                    if run.pointee.immediate_exit != 0 {
                        run.pointee.exit_reason = UInt32(KVM_EXIT_INTR)
                        post_kvm_run_save(arch, run)
                        return fail(.interrupted)
                    }
                    continue
                }
                handleExit(exit, &arch, vcpu)
                post_kvm_run_save(arch, run)
                return 0
            }
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
    func post_kvm_run_save(_ arch: VCPUArch, _ run: UnsafeMutablePointer<kvm_run>) {
        run.pointee.if_flag = arch.cpu.state.rflags & RFLAGS.if != 0 ? 1 : 0
        run.pointee.cr8 = arch.extraSregs.cr8
        run.pointee.apic_base = arch.cpu.state.msrs.apicBase
        // With no irqchip, an interrupt can be injected when IF is set and none is queued.
        run.pointee.ready_for_interrupt_injection = run.pointee.if_flag != 0 && arch.queuedInterrupt == nil ? 1 : 0
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
