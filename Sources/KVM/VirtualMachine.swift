import CLinuxKVM
import GuestMemory
import KVMPlatform
import Synchronization
import SystemPackage

/// How a memory slot behaves (`kvm_userspace_memory_region.flags`).
public struct MemoryRegionFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Track which pages the guest writes, for KVM_GET_DIRTY_LOG (`KVM_MEM_LOG_DIRTY_PAGES`).
    public static let logDirtyPages = MemoryRegionFlags(rawValue: UInt32(KVM_MEM_LOG_DIRTY_PAGES))
    /// Guest writes exit to user space as MMIO writes (`KVM_MEM_READONLY`).
    public static let readOnly = MemoryRegionFlags(rawValue: UInt32(KVM_MEM_READONLY))
}

/// A memory slot as the VM has it mapped.
public struct MemorySlot: Sendable {
    public let slot: UInt32
    public let guestAddress: UInt64
    public let size: UInt64
    public let flags: MemoryRegionFlags
    /// The region backing the slot when the VM owns it; nil for a slot mapped with the raw variant.
    public let region: GuestMemoryRegion?
    /// The host address of the slot's first byte.
    public let hostAddress: UInt

    /// The pages the slot covers, as its dirty bitmap counts them.
    public var pageCount: Int { Int(size) / GuestMemoryRegion.pageSize }
}

/// A KVM virtual machine: its memory slots, vCPUs, and interrupt plumbing.
///
/// Lifetimes: each vCPU keeps its VM alive, and guest memory the VM was
/// given is released only after the VM's descriptor is closed, so the
/// guest (or the host kernel) never sees freed memory.
public final class VirtualMachine: Sendable {
    /// The system object this VM was created from.
    public let hypervisor: Hypervisor
    let handle: KVMHandle
    private let state = Mutex(State())
    /// The eventfds registered with irqfd and ioeventfd, and the coalesced
    /// MMIO ring's place (VirtualMachine+Interrupts.swift).
    let interrupts = Mutex(InterruptState())
    /// The size of a vCPU's mapping, asked once.
    let vcpuMmapSize: Int

    private struct State {
        var slots: [UInt32: MemorySlot] = [:]
    }

    init(hypervisor: Hypervisor, handle: KVMHandle) throws(KVMError) {
        self.hypervisor = hypervisor
        self.handle = handle
        vcpuMmapSize = try hypervisor.vcpuMmapSize()
    }

    deinit {
        // The slots' regions are released with `state`, after this body: close
        // the VM descriptor first, so the kernel object that maps them is gone
        // before the memory is.
        handle.close()
    }

    /// The VM descriptor, for requests this API does not wrap. It stays open
    /// while the VM lives; do not close it.
    public var rawDescriptor: Int32 { handle.descriptor }

    /// Whether, and how far, this VM supports `capability` (KVM_CAP_CHECK_EXTENSION_VM).
    /// The ioctl is KVM_CHECK_EXTENSION on the VM descriptor.
    public func checkExtension(_ capability: Capability) throws(KVMError) -> Int32 {
        try handle.call(.checkExtension, value: UInt(capability.rawValue))
    }

    // MARK: Memory

    /// Maps `region` into guest-physical memory at `guestAddress` as slot
    /// `slot`. The VM keeps the region until the slot is removed and the VM
    /// is gone. The slot is the whole region. An existing slot may be moved
    /// (a new `guestAddress`) or have dirty logging turned on or off;
    /// resizing it or toggling `.readOnly` gives EINVAL, as in the kernel. The ioctl is KVM_SET_USER_MEMORY_REGION.
    public func setMemoryRegion(
        slot: UInt32, guestAddress: UInt64, region: GuestMemoryRegion, flags: MemoryRegionFlags = []
    ) throws(KVMError) {
        let host = UInt(bitPattern: region.hostAddress)
        try setSlot(MemorySlot(slot: slot, guestAddress: guestAddress, size: UInt64(region.size),
                               flags: flags, region: region, hostAddress: host))
    }

    /// Maps host memory the VM does not own. The caller must keep
    /// `size` bytes at `hostAddress` mapped and writable until the slot is
    /// removed and the VM is gone; violating that lets the guest write freed
    /// memory. The ioctl is KVM_SET_USER_MEMORY_REGION.
    public func setUserMemoryRegionUnsafe(
        slot: UInt32, guestAddress: UInt64, size: UInt64, hostAddress: UInt, flags: MemoryRegionFlags = []
    ) throws(KVMError) {
        try setSlot(MemorySlot(slot: slot, guestAddress: guestAddress, size: size,
                               flags: flags, region: nil, hostAddress: hostAddress))
    }

    /// Deletes slot `slot` and returns the region that backed it, if the VM owned one.
    /// The ioctl is KVM_SET_USER_MEMORY_REGION with a size of 0.
    @discardableResult
    public func removeMemoryRegion(slot: UInt32) throws(KVMError) -> GuestMemoryRegion? {
        let existing = state.withLock { $0.slots[slot] }
        var region = kvm_userspace_memory_region(
            slot: slot, flags: 0, guest_phys_addr: existing?.guestAddress ?? 0, memory_size: 0, userspace_addr: 0)
        try handle.call(.setUserMemoryRegion, &region, context: "removing slot \(slot)")
        // The kernel has let go of the memory once the call returns; an
        // owned region's mapping outlives only the bookkeeping here.
        return state.withLock { $0.slots.removeValue(forKey: slot) }?.region
    }

    /// The slots mapped now, by slot number.
    public var memorySlots: [MemorySlot] {
        state.withLock { Array($0.slots.values) }.sorted { $0.slot < $1.slot }
    }

    private func setSlot(_ slot: MemorySlot) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot.slot, flags: slot.flags.rawValue, guest_phys_addr: slot.guestAddress,
            memory_size: slot.size, userspace_addr: UInt64(slot.hostAddress))
        try handle.call(.setUserMemoryRegion, &region, context: "slot \(slot.slot) at guest address 0x\(String(slot.guestAddress, radix: 16)), \(slot.size) bytes")
        if slot.size == 0 {
            state.withLock { _ = $0.slots.removeValue(forKey: slot.slot) }
        } else {
            state.withLock { $0.slots[slot.slot] = slot }
        }
    }

    /// The pages of slot `slot` written since the log was last read, which
    /// clears it. The slot must log dirty pages. The ioctl is KVM_GET_DIRTY_LOG.
    public func dirtyLog(slot: UInt32) throws(KVMError) -> DirtyBitmap {
        guard let mapped = state.withLock({ $0.slots[slot] }) else {
            throw KVMError(errno: .noSuchFileOrDirectory, request: .getDirtyLog, message: "slot \(slot) is not mapped")
        }
        var words = [UInt64](repeating: 0, count: DirtyBitmap.wordCount(pages: mapped.pageCount))
        let result = words.withUnsafeMutableBytes { bytes in
            var log = kvm_dirty_log()
            log.slot = slot
            log.dirty_bitmap = bytes.baseAddress
            return Result { () throws(KVMError) in try handle.call(.getDirtyLog, &log, context: "slot \(slot)") }
        }
        _ = try result.get()
        return DirtyBitmap(words: words, pageCount: mapped.pageCount)
    }

    // MARK: vCPUs

    /// Creates the vCPU with `id` (its APIC id on x86). Ids at or beyond
    /// KVM_CAP_MAX_VCPU_ID, and vCPUs beyond KVM_CAP_MAX_VCPUS, give EINVAL; a
    /// duplicate id gives EEXIST. The ioctl is KVM_CREATE_VCPU.
    public func createVCPU(id: UInt32) throws(KVMError) -> VCPU {
        let descriptor = try handle.call(.createVCPU, value: UInt(id), context: "vCPU id \(id)")
        return try VCPU(vm: self, id: id, handle: KVMHandle(descriptor: descriptor, backend: handle.backend))
    }

    // MARK: x86 set-up

    /// Places the three pages of the TSS Intel's VMX needs in real mode,
    /// outside guest RAM. The ioctl is KVM_SET_TSS_ADDR.
    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        try handle.call(.setTSSAddr, value: UInt(address))
    }

    /// Places the identity-map page table page VMX needs in real mode. The ioctl is KVM_SET_IDENTITY_MAP_ADDR.
    public func setIdentityMapAddress(_ address: UInt64) throws(KVMError) {
        var address = address
        try handle.call(.setIdentityMapAddr, &address)
    }

    // MARK: Clock

    /// The guest's kvmclock, in nanoseconds. The ioctl is KVM_GET_CLOCK.
    public func clock() throws(KVMError) -> ClockData {
        ClockData(try handle.get(.getClock, kvm_clock_data.self))
    }

    /// Sets the guest's kvmclock to `nanoseconds`. The ioctl is KVM_SET_CLOCK.
    public func setClock(_ nanoseconds: UInt64) throws(KVMError) {
        var data = kvm_clock_data()
        data.clock = nanoseconds
        try handle.call(.setClock, &data)
    }
}

/// The guest clock as KVM_GET_CLOCK reports it (`struct kvm_clock_data`).
public struct ClockData: Hashable, Sendable {
    /// Guest kvmclock nanoseconds.
    public var clock: UInt64
    /// `KVM_CLOCK_TSC_STABLE`, `KVM_CLOCK_REALTIME`, `KVM_CLOCK_HOST_TSC` bits.
    public var flags: UInt32
    /// Host CLOCK_REALTIME at the reading, when `KVM_CLOCK_REALTIME` is set.
    public var realtime: UInt64
    /// Host TSC at the reading, when `KVM_CLOCK_HOST_TSC` is set.
    public var hostTSC: UInt64

    init(_ data: kvm_clock_data) {
        clock = data.clock
        flags = data.flags
        realtime = data.realtime
        hostTSC = data.host_tsc
    }
}
