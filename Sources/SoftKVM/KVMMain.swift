import CLinuxKVM
import Glibc
import KVM
import Synchronization
import SystemPackage
import X86

// The generic part of KVM, after the kernel's virt/kvm/kvm_main.c: the
// device, VM and vCPU dispatchers, memory slots and vCPU creation. Each
// function carries the kernel's name so that a reader of one finds the same
// rule in the other.

/// The kernel's KVM_API_VERSION.
let KVM_API_VERSION: Int32 = 12
/// KVM_USER_MEM_SLOTS on x86: SHRT_MAX less the three private slots.
let KVM_USER_MEM_SLOTS: UInt32 = 32764
/// KVM_MAX_VCPUS and KVM_MAX_VCPU_IDS on x86.
let KVM_MAX_VCPUS: Int32 = 1024
let KVM_MAX_VCPU_IDS: UInt = 4096
/// KVM_MEM_MAX_NR_PAGES: a slot's page count must fit in 31 bits.
let KVM_MEM_MAX_NR_PAGES: UInt64 = (1 << 31) - 1
let PAGE_SIZE: UInt64 = 4096
/// TASK_SIZE_MAX on x86-64 with 4-level paging, the end of what access_ok accepts.
let TASK_SIZE_MAX: UInt64 = 0x7FFF_FFFF_F000

extension SoftBackend {
    // MARK: kvm_dev_ioctl

    /// The system descriptor's requests (/dev/kvm).
    func kvm_dev_ioctl(_ request: UInt, _ arg: UInt) -> Int32 {
        switch request {
        case KVMRequest.getAPIVersion.number:
            if arg != 0 { return fail(.invalidArgument) }
            return KVM_API_VERSION
        case KVMRequest.createVM.number:
            return kvm_dev_ioctl_create_vm(arg)
        case KVMRequest.checkExtension.number:
            return kvm_vm_ioctl_check_extension_generic(nil, arg)
        case KVMRequest.getVCPUMmapSize.number:
            if arg != 0 { return fail(.invalidArgument) }
            return Int32(SoftVCPU.mmapSize)
        default:
            return kvm_arch_dev_ioctl(request, arg)
        }
    }

    func kvm_dev_ioctl_create_vm(_ type: UInt) -> Int32 {
        // kvm_arch_init_vm: x86 knows KVM_X86_DEFAULT_VM (0); the others need SEV/TDX/SW_PROTECTED support SoftKVM lacks.
        guard type == 0 else { return fail(.invalidArgument) }
        let descriptor = SoftBackend.anonymousDescriptor()
        guard descriptor >= 0 else { return descriptor }
        // kvm_coalesced_mmio_init: the ring page is allocated with the VM.
        guard let ring = CoalescedMMIO() else {
            _ = Glibc.close(descriptor)
            return fail(.noMemory)
        }
        install(descriptor, .vm(SoftVM(creator: currentProcess(), coalesced: ring)))
        return descriptor
    }

    /// KVM_CHECK_EXTENSION, on the system (vm nil) or a VM: what SoftKVM
    /// implements now, and 0 for everything else.
    func kvm_vm_ioctl_check_extension_generic(_ vm: SoftVM?, _ arg: UInt) -> Int32 {
        switch UInt32(truncatingIfNeeded: arg) {
        case Capability.userMemory.rawValue, Capability.destroyMemoryRegionWorks.rawValue,
             Capability.joinMemoryRegionsWorks.rawValue, Capability.checkExtensionVM.rawValue,
             Capability.immediateExit.rawValue, Capability.deviceCtrl.rawValue, Capability.enableCapVM.rawValue:
            return 1
        // SoftKVM's CPU reads guest memory through the slot's host address,
        // so user space changes to that memory are always seen (the sense of SYNC_MMU).
        case Capability.syncMMU.rawValue:
            return 1
        // Read-only slots: guest writes to them become MMIO exits (the CPU's view marks them read-only).
        case Capability.readonlyMem.rawValue:
            return 1
        case Capability.nrMemslots.rawValue:
            return Int32(KVM_USER_MEM_SLOTS)
        case Capability.nrVCPUs.rawValue:
            // The recommended count: the host's online CPUs, capped as the kernel caps it.
            return Int32(min(Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), Int(KVM_MAX_VCPUS)))
        case Capability.maxVCPUs.rawValue:
            return KVM_MAX_VCPUS
        case Capability.maxVCPUID.rawValue:
            return Int32(KVM_MAX_VCPU_IDS)
        case Capability.irqRouting.rawValue:
            return Int32(KVM_MAX_IRQ_ROUTES)
        case Capability.irqfd.rawValue, Capability.irqfdResample.rawValue, Capability.ioeventfd.rawValue,
             Capability.ioeventfdAnyLength.rawValue, Capability.coalescedPio.rawValue:
            return 1
        case Capability.coalescedMMIO.rawValue:
            return Int32(KVM_COALESCED_MMIO_PAGE_OFFSET)
        default:
            return kvm_vm_ioctl_check_extension(vm, arg)
        }
    }

    // MARK: kvm_vm_ioctl

    /// The VM descriptor's requests.
    func kvm_vm_ioctl(_ vm: SoftVM, _ request: UInt, _ arg: UInt) -> Int32 {
        // The kernel's `kvm->mm != current->mm`: a VM belongs to the process that made it.
        if vm.creator != currentProcess() { return fail(.ioError) }
        switch request {
        case KVMRequest.createVCPU.number:
            return kvm_vm_ioctl_create_vcpu(vm, arg)
        case KVMRequest.setUserMemoryRegion.number:
            guard let mem = UserMemory.read(kvm_userspace_memory_region.self, from: arg) else { return fail(.badAddress) }
            return kvm_vm_ioctl_set_memory_region(vm, mem)
        case KVMRequest.getDirtyLog.number:
            guard let log = UserMemory.read(kvm_dirty_log.self, from: arg) else { return fail(.badAddress) }
            return kvm_vm_ioctl_get_dirty_log(vm, log)
        case KVMRequest.checkExtension.number:
            return kvm_vm_ioctl_check_extension_generic(vm, arg)
        case KVMRequest.irqLine.number, KVMRequest.irqLineStatus.number:
            return kvm_vm_ioctl_irq_line(vm, arg, withStatus: request == KVMRequest.irqLineStatus.number)
        case KVMRequest.setGSIRouting.number:
            return kvm_vm_ioctl_set_gsi_routing(vm, arg)
        case KVMRequest.signalMSI.number:
            return kvm_send_userspace_msi(vm, arg)
        case KVMRequest.irqfd.number:
            guard let args = UserMemory.read(kvm_irqfd.self, from: arg) else { return fail(.badAddress) }
            return kvm_vm_irqfd(vm, args)
        case KVMRequest.ioeventfd.number:
            guard let args = UserMemory.read(kvm_ioeventfd.self, from: arg) else { return fail(.badAddress) }
            return vm.ioeventfds.withLock { $0.ioctl(args) }
        case KVMRequest.registerCoalescedMMIO.number:
            guard let zone = UserMemory.read(kvm_coalesced_mmio_zone.self, from: arg) else { return fail(.badAddress) }
            return vm.coalesced.register(zone)
        case KVMRequest.unregisterCoalescedMMIO.number:
            guard let zone = UserMemory.read(kvm_coalesced_mmio_zone.self, from: arg) else { return fail(.badAddress) }
            return vm.coalesced.unregister(zone)
        case KVMRequest.createDevice.number:
            return kvm_ioctl_create_device(vm, arg)
        case KVMRequest.enableCap.number:
            return kvm_vm_ioctl_enable_cap_generic(vm, arg)
        default:
            return kvm_arch_vm_ioctl(vm, request, arg)
        }
    }

    // MARK: Memory slots

    func kvm_vm_ioctl_set_memory_region(_ vm: SoftVM, _ mem: kvm_userspace_memory_region) -> Int32 {
        // Only the user slots are reachable from the ioctl; the top ones are KVM's own.
        if UInt16(truncatingIfNeeded: mem.slot) >= KVM_USER_MEM_SLOTS { return fail(.invalidArgument) }
        return vm.slots.withLock { slots in
            let r = kvm_set_memory_region(&slots, mem)
            // vCPUs rebuild their memory view when they see a new generation (kvm_memslots.generation).
            if r == 0 { slots.generation &+= 1 }
            return r
        }
    }

    /// The flags a slot may have: KVM_MEM_LOG_DIRTY_PAGES, and KVM_MEM_READONLY
    /// since x86 has read-only memory (kvm_arch_has_readonly_mem).
    static let validMemoryRegionFlags = UInt32(KVM_MEM_LOG_DIRTY_PAGES) | UInt32(KVM_MEM_READONLY)

    func check_memory_region_flags(_ mem: kvm_userspace_memory_region) -> Int32 {
        mem.flags & ~SoftBackend.validMemoryRegionFlags != 0 ? fail(.invalidArgument) : 0
    }

    /// The kernel's __kvm_set_memory_region, rule for rule.
    func kvm_set_memory_region(_ slots: inout MemorySlots, _ mem: kvm_userspace_memory_region) -> Int32 {
        let r = check_memory_region_flags(mem)
        if r != 0 { return r }
        let asID = mem.slot >> 16
        let id = UInt16(truncatingIfNeeded: mem.slot)

        // General sanity checks.
        if mem.memory_size & (PAGE_SIZE - 1) != 0 { return fail(.invalidArgument) }
        if mem.guest_phys_addr & (PAGE_SIZE - 1) != 0 { return fail(.invalidArgument) }
        // access_ok: the host range must lie in user space.
        if mem.userspace_addr & (PAGE_SIZE - 1) != 0
            || mem.userspace_addr > TASK_SIZE_MAX || mem.memory_size > TASK_SIZE_MAX - mem.userspace_addr {
            return fail(.invalidArgument)
        }
        // One address space: SoftKVM has no SMM.
        if asID >= 1 || UInt32(id) >= KVM_USER_MEM_SLOTS { return fail(.invalidArgument) }
        if mem.guest_phys_addr &+ mem.memory_size < mem.guest_phys_addr { return fail(.invalidArgument) }
        if mem.memory_size / PAGE_SIZE > KVM_MEM_MAX_NR_PAGES { return fail(.invalidArgument) }

        let old = slots.byID[id]
        if mem.memory_size == 0 {
            guard old != nil else { return fail(.invalidArgument) }
            slots.byID[id] = nil  // KVM_MR_DELETE
            return 0
        }

        let baseGFN = mem.guest_phys_addr / PAGE_SIZE
        let npages = mem.memory_size / PAGE_SIZE
        if let old {
            // A slot may move or change its logging; not change its memory, size or writability.
            if mem.userspace_addr != old.userspaceAddress || npages != old.npages
                || (mem.flags ^ old.flags) & UInt32(KVM_MEM_READONLY) != 0 {
                return fail(.invalidArgument)
            }
            if baseGFN != old.baseGFN {
                // KVM_MR_MOVE: checked for overlap below.
            } else if mem.flags != old.flags {
                slots.byID[id] = old.withFlags(mem.flags)  // KVM_MR_FLAGS_ONLY
                return 0
            } else {
                return 0  // Nothing to change.
            }
        }
        if kvm_check_memslot_overlap(slots, id: id, start: baseGFN, end: baseGFN + npages) {
            return fail(.fileExists)
        }
        slots.byID[id] = MemorySlotState(
            id: id, baseGFN: baseGFN, npages: npages, userspaceAddress: mem.userspace_addr, flags: mem.flags)
        return 0
    }

    func kvm_check_memslot_overlap(_ slots: MemorySlots, id: UInt16, start: UInt64, end: UInt64) -> Bool {
        slots.byID.values.contains { $0.id != id && start < $0.baseGFN + $0.npages && end > $0.baseGFN }
    }

    /// KVM_GET_DIRTY_LOG: copies the slot's bitmap out and clears it (kvm_get_dirty_log_protect).
    func kvm_vm_ioctl_get_dirty_log(_ vm: SoftVM, _ log: kvm_dirty_log) -> Int32 {
        let asID = log.slot >> 16
        let id = UInt16(truncatingIfNeeded: log.slot)
        if asID >= 1 || UInt32(id) >= KVM_USER_MEM_SLOTS { return fail(.invalidArgument) }
        return vm.slots.withLock { slots in
            guard let dirty = slots.byID[id]?.dirtyBitmap else { return fail(.noSuchFileOrDirectory) }
            // Taken word by word with an atomic exchange (a vCPU may be
            // setting bits meanwhile), then copied out as copy_to_user would:
            // a bad pointer is EFAULT, and the bits taken are gone, as in the kernel.
            let words = dirty.takeAll()
            let destination = UInt(bitPattern: log.dirty_bitmap)
            guard words.withUnsafeBytes({ UserMemory.copyOut($0, to: destination) }) else { return fail(.badAddress) }
            return 0
        }
    }

    // MARK: vCPUs

    /// KVM_CREATE_VCPU (kvm_vm_ioctl_create_vcpu).
    func kvm_vm_ioctl_create_vcpu(_ vm: SoftVM, _ id: UInt) -> Int32 {
        if id >= KVM_MAX_VCPU_IDS { return fail(.invalidArgument) }
        return vm.vcpus.withLock { vcpus in
            if vcpus.created >= Int(KVM_MAX_VCPUS) { return fail(.invalidArgument) }
            if vcpus.ids.contains(UInt32(id)) { return fail(.fileExists) }
            let descriptor = swiftkvm_memfd_create("kvm-vcpu:\(id)")
            guard descriptor >= 0 else { return -errno }
            guard ftruncate(descriptor, off_t(SoftVCPU.mmapSize)) == 0,
                  let vcpu = SoftVCPU(vm: vm, id: UInt32(id), index: vcpus.created, descriptor: descriptor) else {
                let error = errno
                _ = Glibc.close(descriptor)
                return -(error == 0 ? Errno.noMemory.rawValue : error)
            }
            vcpus.created += 1
            vcpus.ids.insert(UInt32(id))
            kvm_arch_vcpu_postcreate(vcpu)
            if let apic = vcpu.apic { vcpu.apicBus?.vcpuOnline(apic) }
            install(descriptor, .vcpu(vcpu))
            return descriptor
        }
    }

    // MARK: kvm_vcpu_ioctl

    /// The vCPU descriptor's requests. The kernel holds `vcpu->mutex` around
    /// each; SoftKVM holds the vCPU's state lock.
    func kvm_vcpu_ioctl(_ vcpu: SoftVCPU, _ request: UInt, _ arg: UInt) -> Int32 {
        if vcpu.vm.creator != currentProcess() { return fail(.ioError) }
        switch request {
        case KVMRequest.run.number:
            if arg != 0 { return fail(.invalidArgument) }
            return kvm_arch_vcpu_ioctl_run(vcpu)
        default:
            return kvm_arch_vcpu_ioctl(vcpu, request, arg)
        }
    }
}

/// One memory slot (`struct kvm_memory_slot`).
struct MemorySlotState: Sendable {
    let id: UInt16
    let baseGFN: UInt64
    let npages: UInt64
    let userspaceAddress: UInt64
    let flags: UInt32
    /// One bit per page written since the log was last read; nil without
    /// KVM_MEM_LOG_DIRTY_PAGES. The CPU sets bits through its pointer.
    var dirtyBitmap: DirtyLog?

    init(id: UInt16, baseGFN: UInt64, npages: UInt64, userspaceAddress: UInt64, flags: UInt32) {
        self.id = id
        self.baseGFN = baseGFN
        self.npages = npages
        self.userspaceAddress = userspaceAddress
        self.flags = flags
        dirtyBitmap = flags & UInt32(KVM_MEM_LOG_DIRTY_PAGES) != 0 ? DirtyLog(npages: npages) : nil
    }

    /// The slot with new flags, keeping its bitmap while logging stays on.
    func withFlags(_ flags: UInt32) -> MemorySlotState {
        var slot = MemorySlotState(id: id, baseGFN: baseGFN, npages: npages, userspaceAddress: userspaceAddress, flags: flags)
        if slot.dirtyBitmap != nil, let kept = dirtyBitmap { slot.dirtyBitmap = kept }
        return slot
    }

    /// Marks the page at `gfn` dirty (mark_page_dirty_in_slot), as the CPU does on guest writes.
    mutating func markDirty(gfn: UInt64) {
        guard let dirtyBitmap, gfn >= baseGFN, gfn < baseGFN + npages else { return }
        PhysicalRange.markDirty(dirtyBitmap.words, page: gfn - baseGFN)
    }
}

/// A slot's dirty bitmap at a fixed address, so that the CPU can set bits
/// in it directly. The vCPU thread sets bits while KVM_GET_DIRTY_LOG takes
/// them word by word with an atomic exchange, as the kernel does: a bit set
/// meanwhile is either taken now or left for the next read, never lost.
final class DirtyLog: @unchecked Sendable {
    let words: UnsafeMutablePointer<UInt64>
    let count: Int

    init(npages: UInt64) {
        count = Int((npages + 63) / 64)
        words = .allocate(capacity: max(count, 1))
        words.initialize(repeating: 0, count: max(count, 1))
    }

    deinit { words.deallocate() }

    /// Every word's bits, each word cleared in the same atomic exchange.
    func takeAll() -> [UInt64] {
        (0..<count).map { swiftkvm_atomic_exchange_u64(words + $0, 0) }
    }
}

/// The VM's slots (`struct kvm_memslots`), one address space.
struct MemorySlots: Sendable {
    var byID: [UInt16: MemorySlotState] = [:]
    /// Bumped by every change, so that a vCPU knows when to rebuild its view.
    var generation: UInt64 = 0
}

/// A VM (`struct kvm`). Swift's reference count is the kernel's
/// `users_count`: the descriptor table holds one, each vCPU another.
final class SoftVM: Sendable {
    /// The process that created the VM, the kernel's `kvm->mm`.
    let creator: pid_t
    /// `kvm->slots_lock` and what it guards.
    let slots = Mutex(MemorySlots())
    /// `kvm->lock` and the vCPU bookkeeping it guards.
    let vcpus = Mutex(VCPUBookkeeping())
    /// x86 VM state (`kvm->arch`).
    let arch = Mutex(KVMArch(clock: VMClock(now: TimeStampCounter.hostNanoseconds())))
    /// The in-kernel PICs and IOAPIC, once KVM_CREATE_IRQCHIP made them.
    let irqchipSlot = Mutex<SoftIrqchip?>(nil)
    /// The in-kernel PIT, once KVM_CREATE_PIT2 made it (`kvm->arch.vpit`).
    let pitSlot = Mutex<SoftPIT?>(nil)
    /// The irqfds and their thread, from the first KVM_IRQFD.
    let irqfds = Mutex<IRQFDs?>(nil)
    /// `kvm->ioeventfds`.
    let ioeventfds = Mutex(IOEventFDs())
    /// The coalesced MMIO ring and zones.
    let coalesced: CoalescedMMIO
    /// `kvm->devices`, under `kvm->lock` in the kernel.
    let devices = Mutex<[SoftDevice]>([])

    var irqchip: SoftIrqchip? { irqchipSlot.withLock { $0 } }
    var pit: SoftPIT? { pitSlot.withLock { $0 } }

    struct VCPUBookkeeping: Sendable {
        var created = 0
        var ids: Set<UInt32> = []
    }

    init(creator: pid_t, coalesced: CoalescedMMIO) {
        self.creator = creator
        self.coalesced = coalesced
    }

    /// kvm_destroy_vm: the irqfd and PIT threads stop, the eventfds are let go.
    deinit {
        irqfds.withLock { $0?.stop() }
        pitSlot.withLock { $0?.stop() }
        ioeventfds.withLock { $0.closeAll() }
    }
}
