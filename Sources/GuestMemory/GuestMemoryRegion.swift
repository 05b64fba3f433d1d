import KVMPlatform
import SystemPackage

/// A block of host memory that backs a range of guest-physical memory.
///
/// The region owns its mapping; a VM that maps it keeps it alive until the
/// VM is gone, so the guest never sees freed memory. Accesses through this
/// type are bounds-checked and report an out-of-range access as an error
/// rather than touching memory outside the region.
public final class GuestMemoryRegion: @unchecked Sendable {
    private let mapping: MappedMemory

    /// The region's size in bytes (a whole number of 4 KiB pages).
    public var size: Int { mapping.size }

    /// The host address of the region's first byte, for handing to KVM.
    /// Whoever writes through it must keep within `size` bytes.
    public var hostAddress: UnsafeMutableRawPointer { mapping.base }

    /// Allocates `size` bytes of zeroed memory. `size` must be a positive
    /// multiple of 4096, as KVM requires of a memory slot.
    public init(size: Int) throws(GuestMemoryError) {
        guard size > 0, size % GuestMemoryRegion.pageSize == 0 else {
            throw .invalidSize(size)
        }
        do {
            mapping = try MappedMemory(anonymousSize: size)
        } catch {
            throw .allocationFailed(size: size, errno: error)
        }
    }

    /// The guest page size KVM tracks memory in.
    public static let pageSize = 4096

    /// Copies `bytes` into the region at `offset`.
    public func write(_ bytes: some Collection<UInt8>, at offset: Int) throws(GuestMemoryError) {
        try checkBounds(offset: offset, count: bytes.count)
        let destination = UnsafeMutableRawBufferPointer(start: mapping.base + offset, count: bytes.count)
        destination.copyBytes(from: bytes)
    }

    /// Copies `count` bytes out of the region, starting at `offset`.
    public func read(at offset: Int, count: Int) throws(GuestMemoryError) -> [UInt8] {
        try checkBounds(offset: offset, count: count)
        return Array(UnsafeRawBufferPointer(start: mapping.base + offset, count: count))
    }

    /// Stores an integer in little-endian order at `offset`.
    public func store<T: FixedWidthInteger>(_ value: T, at offset: Int) throws(GuestMemoryError) {
        try checkBounds(offset: offset, count: MemoryLayout<T>.size)
        mapping.base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }

    /// Loads a little-endian integer from `offset`.
    public func load<T: FixedWidthInteger>(_ type: T.Type = T.self, at offset: Int) throws(GuestMemoryError) -> T {
        try checkBounds(offset: offset, count: MemoryLayout<T>.size)
        return T(littleEndian: mapping.base.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// Sets `count` bytes at `offset` to `value`.
    public func fill(_ value: UInt8, at offset: Int, count: Int) throws(GuestMemoryError) {
        try checkBounds(offset: offset, count: count)
        (mapping.base + offset).initializeMemory(as: UInt8.self, repeating: value, count: count)
    }

    private func checkBounds(offset: Int, count: Int) throws(GuestMemoryError) {
        guard offset >= 0, count >= 0, offset <= size, count <= size - offset else {
            throw .outOfRange(offset: offset, count: count, size: size)
        }
    }
}

/// What went wrong with guest memory, and what to do about it.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible {
    case invalidSize(Int)
    case allocationFailed(size: Int, errno: Errno)
    case outOfRange(offset: Int, count: Int, size: Int)

    public var description: String {
        switch self {
        case .invalidSize(let size):
            "guest memory size \(size) is not a positive multiple of 4096 bytes; round it up to whole pages"
        case .allocationFailed(let size, let errno):
            "could not allocate \(size) bytes of guest memory: \(errno)"
        case .outOfRange(let offset, let count, let size):
            "access of \(count) bytes at offset \(offset) falls outside the \(size)-byte region"
        }
    }
}
