import CLinuxKVM
import Glibc
import KVM
import Synchronization
import SystemPackage

// Coalesced MMIO and PIO, after the kernel's virt/kvm/coalesced_mmio.c: zones
// whose guest writes go into a ring instead of exiting, while it has room.

/// KVM_COALESCED_MMIO_MAX: the entries after the ring's header in its page.
let KVM_COALESCED_MMIO_MAX = (Int(PAGE_SIZE) - MemoryLayout<kvm_coalesced_mmio_ring>.size) / MemoryLayout<kvm_coalesced_mmio>.stride

/// The VM's ring (`kvm->coalesced_mmio_ring`) and zones (`kvm->coalesced_zones`).
/// The ring is one page of its own memfd, which every vCPU mapping shows at
/// page KVM_COALESCED_MMIO_PAGE_OFFSET, as the kernel maps the same page into each.
final class CoalescedMMIO: @unchecked Sendable {
    let descriptor: Int32
    private let page: UnsafeMutableRawPointer
    /// `kvm->slots_lock` for the zones; the ring's `ring_lock` is taken with it.
    private let zones = Mutex<[kvm_coalesced_mmio_zone]>([])

    init?() {
        let fd = swiftkvm_memfd_create("kvm-coalesced-mmio")
        guard fd >= 0 else { return nil }
        guard ftruncate(fd, off_t(PAGE_SIZE)) == 0,
              let address = mmap(nil, Int(PAGE_SIZE), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), address != MAP_FAILED else {
            _ = Glibc.close(fd)
            return nil
        }
        descriptor = fd
        page = address
    }

    deinit {
        munmap(page, Int(PAGE_SIZE))
        _ = Glibc.close(descriptor)
    }

    /// Shows the ring at page KVM_COALESCED_MMIO_PAGE_OFFSET of a vCPU
    /// mapping of `size` bytes at `base`.
    func mapInto(_ base: UnsafeMutableRawPointer, size: Int) -> Bool {
        mapInto(base, size: size, offset: 0, protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED)
    }

    /// The same for a mapping of `size` bytes from byte `offset` of the vCPU
    /// file, with the mapping's own protection and sharing.
    func mapInto(_ base: UnsafeMutableRawPointer, size: Int, offset: Int, protection: Int32, flags: Int32) -> Bool {
        let ringOffset = Int(KVM_COALESCED_MMIO_PAGE_OFFSET) * Int(PAGE_SIZE)
        guard offset <= ringOffset, offset + size >= ringOffset + Int(PAGE_SIZE) else { return true }
        let sharing = flags & (MAP_SHARED | MAP_PRIVATE)
        let address = mmap(base + (ringOffset - offset), Int(PAGE_SIZE), protection, sharing | MAP_FIXED, descriptor, 0)
        return address != MAP_FAILED
    }

    /// KVM_REGISTER_COALESCED_MMIO.
    func register(_ zone: kvm_coalesced_mmio_zone) -> Int32 {
        if zone.pio > 1 { return fail(.invalidArgument) }
        zones.withLock { $0.append(zone) }
        return 0
    }

    /// KVM_UNREGISTER_COALESCED_MMIO: every zone of the same space inside
    /// the range goes; none is not an error.
    func unregister(_ zone: kvm_coalesced_mmio_zone) -> Int32 {
        if zone.pio > 1 { return fail(.invalidArgument) }
        zones.withLock { zones in
            zones.removeAll { $0.pio == zone.pio && Self.inRange($0, zone.addr, Int(zone.size)) }
        }
        return 0
    }

    /// coalesced_mmio_in_range: the write lies wholly inside the zone.
    static func inRange(_ zone: kvm_coalesced_mmio_zone, _ address: UInt64, _ length: Int) -> Bool {
        if length < 0 || address &+ UInt64(length) < address { return false }
        return address >= zone.addr && address + UInt64(length) <= zone.addr + UInt64(zone.size)
    }

    /// For the CPU: a guest write of `bytes` (1 to 8) to `address` in the
    /// port (`pio`) or memory space. True when it went into the ring, so
    /// no exit; false when no zone covers it or the ring is full (it keeps
    /// one entry free), and the write must exit as usual.
    func write(address: UInt64, bytes: UnsafeRawBufferPointer, pio: Bool) -> Bool {
        zones.withLock { zones in
            guard bytes.count <= 8,
                  let zone = zones.first(where: { ($0.pio != 0) == pio && Self.inRange($0, address, bytes.count) }) else {
                return false
            }
            let ring = page.assumingMemoryBound(to: kvm_coalesced_mmio_ring.self)
            let entries = (page + MemoryLayout<kvm_coalesced_mmio_ring>.size).assumingMemoryBound(to: kvm_coalesced_mmio.self)
            // User space moves `first` as it drains.
            let insert = Int(atomicLoad(&ring.pointee.last))
            let first = Int(atomicLoad(&ring.pointee.first))
            if insert >= KVM_COALESCED_MMIO_MAX || (insert + 1) % KVM_COALESCED_MMIO_MAX == first { return false }
            var entry = kvm_coalesced_mmio()
            entry.phys_addr = address
            entry.len = UInt32(bytes.count)
            entry.pio = zone.pio
            withUnsafeMutableBytes(of: &entry.data) { data in
                if let base = bytes.baseAddress { data.baseAddress?.copyMemory(from: base, byteCount: bytes.count) }
            }
            entries[insert] = entry
            // The entry must be visible before `last` says it is there (smp_wmb).
            atomicMemoryFence(ordering: .releasing)
            ring.pointee.last = UInt32((insert + 1) % KVM_COALESCED_MMIO_MAX)
            return true
        }
    }

    /// A write given as a little-endian value of `length` bytes.
    func write(address: UInt64, length: Int, value: UInt64, pio: Bool) -> Bool {
        var little = value.littleEndian
        return withUnsafeBytes(of: &little) { write(address: address, bytes: UnsafeRawBufferPointer(rebasing: $0.prefix(length)), pio: pio) }
    }
}

private func atomicLoad(_ pointer: UnsafeMutablePointer<UInt32>) -> UInt32 {
    let value = UnsafeRawPointer(pointer).load(as: UInt32.self)
    atomicMemoryFence(ordering: .acquiring)
    return value
}
