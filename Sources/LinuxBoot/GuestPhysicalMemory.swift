import GuestMemory

/// Where the loaders write: guest-physical memory seen as addresses, not
/// as the regions that back it, so a machine whose RAM is split across
/// several regions can present it as one.
public protocol GuestPhysicalMemory: AnyObject {
    /// The size of RAM starting at guest-physical 0 that writes may reach.
    var guestMemorySize: UInt64 { get }
    /// Copies `bytes` to guest-physical `address`.
    func writeGuest(_ bytes: some Collection<UInt8>, at address: UInt64) throws(GuestMemoryError)
    /// Copies `count` bytes out of guest-physical `address`.
    func readGuest(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8]
}

/// A region mapped at guest-physical 0.
extension GuestMemoryRegion: GuestPhysicalMemory {
    public var guestMemorySize: UInt64 { UInt64(size) }

    public func writeGuest(_ bytes: some Collection<UInt8>, at address: UInt64) throws(GuestMemoryError) {
        guard let offset = Int(exactly: address) else {
            throw .outOfRange(offset: Int.max, count: bytes.count, size: size)
        }
        try write(bytes, at: offset)
    }

    public func readGuest(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        guard let offset = Int(exactly: address) else {
            throw .outOfRange(offset: Int.max, count: count, size: size)
        }
        return try read(at: offset, count: count)
    }
}

extension GuestPhysicalMemory {
    func put(_ bytes: some Collection<UInt8>, at address: UInt64) throws(LinuxBootError) {
        do {
            try writeGuest(bytes, at: address)
        } catch {
            throw .memory(error)
        }
    }
}

/// Little-endian field access on a byte array, for the fixed layouts of
/// the boot protocol and ACPI.
extension Array where Element == UInt8 {
    func le<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size where offset + index < count {
            value |= T(self[offset + index]) << (8 * index)
        }
        return value
    }

    mutating func setLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for index in 0..<MemoryLayout<T>.size {
            self[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index))
        }
    }
}
