/// A device on a `Bus`: it sees offsets from the base it was registered
/// at, and accesses of 1, 2, 4 or 8 bytes, little-endian in the value.
public protocol BusDevice: AnyObject {
    func read(offset: UInt64, size: Int) -> UInt64
    func write(offset: UInt64, size: Int, value: UInt64)
}

/// One access, as the trace hook sees it.
public struct BusAccess: Sendable, Equatable {
    public var address: UInt64
    public var size: Int
    public var isWrite: Bool
    /// The value written, or the value the read returned.
    public var value: UInt64
    /// The name the device was registered under, nil for an address no device claims.
    public var device: String?
}

public enum BusError: Error, Equatable, CustomStringConvertible {
    /// The new range overlaps one already registered.
    case overlap(name: String, range: ClosedRange<UInt64>, existing: String, existingRange: ClosedRange<UInt64>)
    /// A range of no bytes, or one that runs past the end of the address space.
    case badRange(name: String, base: UInt64, size: UInt64)

    public var description: String {
        switch self {
        case .overlap(let name, let range, let existing, let existingRange):
            return "\(name) at \(hex(range)) overlaps \(existing) at \(hex(existingRange)): give one of them another address"
        case .badRange(let name, let base, let size):
            return "\(name) at 0x\(String(base, radix: 16)) with size \(size) is not a range of the address space: the size must be at least 1 and the range end at or below 2^64"
        }
    }

    private func hex(_ range: ClosedRange<UInt64>) -> String {
        "0x\(String(range.lowerBound, radix: 16))-0x\(String(range.upperBound, radix: 16))"
    }
}

/// An address space of devices, port I/O or MMIO: devices at disjoint
/// ranges, found by binary search over ranges kept sorted, so a lookup
/// allocates nothing. An address no device claims reads as all ones and
/// ignores writes, as an ISA bus with nothing driving it does on a PC.
/// Not thread-safe: the machine serializes accesses.
public final class Bus {
    struct Entry {
        var base: UInt64
        /// The last address, so that a range may end at 2^64 - 1.
        var last: UInt64
        var name: String
        var device: any BusDevice
    }

    private(set) var entries: [Entry] = []
    /// Called for every access once the device (if any) has answered. Tracing
    /// costs a closure call per access only while set.
    public var trace: ((BusAccess) -> Void)?

    public init() {}

    /// Registers `device` for `size` addresses from `base`.
    public func register(_ device: any BusDevice, at base: UInt64, size: UInt64, name: String) throws(BusError) {
        guard size > 0, base <= UInt64.max - (size - 1) else { throw .badRange(name: name, base: base, size: size) }
        let last = base + (size - 1)
        let index = insertionIndex(base)
        // The sorted ranges are disjoint: only the neighbours can overlap.
        for neighbour in [index - 1, index] where entries.indices.contains(neighbour) {
            let other = entries[neighbour]
            if other.base <= last && base <= other.last {
                throw .overlap(name: name, range: base...last, existing: other.name, existingRange: other.base...other.last)
            }
        }
        entries.insert(Entry(base: base, last: last, name: name, device: device), at: index)
    }

    /// The names and ranges registered, in address order.
    public var ranges: [(name: String, range: ClosedRange<UInt64>)] {
        entries.map { ($0.name, $0.base...$0.last) }
    }

    /// The device at `address` and the address's offset in it.
    public func device(at address: UInt64) -> (device: any BusDevice, offset: UInt64, name: String)? {
        guard let index = index(of: address) else { return nil }
        let entry = entries[index]
        return (entry.device, address - entry.base, entry.name)
    }

    public func read(_ address: UInt64, size: Int) -> UInt64 {
        let value: UInt64
        var name: String?
        if let index = index(of: address) {
            let entry = entries[index]
            value = entry.device.read(offset: address - entry.base, size: size)
            if trace != nil { name = entry.name }
        } else {
            value = size >= 8 ? UInt64.max : (1 << (UInt64(size) * 8)) - 1
        }
        trace?(BusAccess(address: address, size: size, isWrite: false, value: value, device: name))
        return value
    }

    public func write(_ address: UInt64, size: Int, value: UInt64) {
        var name: String?
        if let index = index(of: address) {
            let entry = entries[index]
            entry.device.write(offset: address - entry.base, size: size, value: value)
            if trace != nil { name = entry.name }
        }
        trace?(BusAccess(address: address, size: size, isWrite: true, value: value, device: name))
    }

    /// The first entry whose base is above `address`.
    private func insertionIndex(_ address: UInt64) -> Int {
        var low = 0, high = entries.count
        while low < high {
            let middle = (low + high) / 2
            if entries[middle].base <= address { low = middle + 1 } else { high = middle }
        }
        return low
    }

    private func index(of address: UInt64) -> Int? {
        let candidate = insertionIndex(address) - 1
        guard candidate >= 0, entries[candidate].last >= address else { return nil }
        return candidate
    }
}

/// A device of byte registers (the 16550, the i8042, the RTC): a wider
/// access reaches consecutive registers, lowest byte first, as on the ISA bus.
public final class ByteRegisterDevice: BusDevice {
    private let readByte: (Int) -> UInt8
    private let writeByte: (Int, UInt8) -> Void

    public init(read: @escaping (Int) -> UInt8, write: @escaping (Int, UInt8) -> Void) {
        readByte = read
        writeByte = write
    }

    public func read(offset: UInt64, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for byte in 0..<size { value |= UInt64(readByte(Int(offset) + byte)) << (8 * UInt64(byte)) }
        return value
    }

    public func write(offset: UInt64, size: Int, value: UInt64) {
        for byte in 0..<size { writeByte(Int(offset) + byte, UInt8(truncatingIfNeeded: value >> (8 * UInt64(byte)))) }
    }
}

/// Addresses that are claimed but do nothing: reads give all ones, writes
/// are dropped (port 0x80, where firmware and Linux's delays write POST
/// codes), so that tracing can tell them from addresses nothing claims.
public final class IgnoredDevice: BusDevice {
    public init() {}
    public func read(offset: UInt64, size: Int) -> UInt64 { size >= 8 ? UInt64.max : (1 << (UInt64(size) * 8)) - 1 }
    public func write(offset: UInt64, size: Int, value: UInt64) {}
}
