import Glibc

/// Guest memory with an inaccessible page on each side, so that a host
/// access that strays past either end (an X86 bug) kills the test with a
/// SIGSEGV at the faulting access instead of corrupting the process.
public final class GuardedMemory {
    public static let guardSize = 4096
    public let base: UnsafeMutableRawPointer
    public let size: Int
    let mapping: UnsafeMutableRawPointer
    let mappingSize: Int

    /// `size` bytes (rounded up to whole pages), zeroed.
    public init(size: Int) {
        let pageSize = GuardedMemory.guardSize
        self.size = (size + pageSize - 1) / pageSize * pageSize
        mappingSize = self.size + 2 * pageSize
        let mapped = mmap(nil, mappingSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let mapped, mapped != MAP_FAILED else { fatalError("mmap of \(mappingSize) bytes failed: errno \(errno)") }
        mapping = mapped
        base = mapped + pageSize
        guard mprotect(base, self.size, PROT_READ | PROT_WRITE) == 0 else { fatalError("mprotect failed: errno \(errno)") }
    }

    deinit { munmap(mapping, mappingSize) }

    public func write(_ bytes: [UInt8], at offset: Int) {
        precondition(offset >= 0 && offset + bytes.count <= size, "write outside guest memory")
        bytes.withUnsafeBytes { source in
            guard let start = source.baseAddress else { return }
            (base + offset).copyMemory(from: start, byteCount: bytes.count)
        }
    }

    public func read(at offset: Int, count: Int) -> [UInt8] {
        precondition(offset >= 0 && offset + count <= size, "read outside guest memory")
        return [UInt8](UnsafeRawBufferPointer(start: base + offset, count: count))
    }

    public func store<T>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= size, "store outside guest memory")
        (base + offset).storeBytes(of: value, as: T.self)
    }

    public func load<T>(at offset: Int, as type: T.Type) -> T {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= size, "load outside guest memory")
        return (base + offset).loadUnaligned(as: T.self)
    }

    /// Copies all of `other` (of the same size) into this memory.
    public func copy(from other: GuardedMemory) {
        precondition(other.size == size)
        base.copyMemory(from: other.base, byteCount: size)
    }

    /// The offset of the first byte that differs from `other`'s, or nil.
    public func firstDifference(from other: GuardedMemory) -> Int? {
        precondition(other.size == size)
        if memcmp(base, other.base, size) == 0 { return nil }
        let a = base.assumingMemoryBound(to: UInt8.self), b = other.base.assumingMemoryBound(to: UInt8.self)
        return (0..<size).first { a[$0] != b[$0] }
    }
}

/// A small deterministic generator (SplitMix64), so that a failing case can
/// be replayed from its seed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(state: UInt64) { self.state = state }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in 0..<bound.
    public mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }

    /// True with probability 1/n.
    public mutating func oneIn(_ n: Int) -> Bool { below(n) == 0 }

    public mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }

    /// Operands biased to the edges: 0, 1, max, sign boundaries, or random.
    public mutating func operand(_ bits: Int) -> UInt64 {
        let mask: UInt64 = bits == 64 ? ~0 : (1 << UInt64(bits)) - 1
        let sign: UInt64 = 1 << UInt64(bits - 1)
        switch next() % 8 {
        case 0: return 0
        case 1: return 1
        case 2: return mask
        case 3: return sign
        case 4: return sign - 1
        default: return next() & mask
        }
    }

    /// A wider spread of edges of a `bits`-wide value: 0, 1, all ones, the
    /// sign bit and its neighbours, all ones but one, a small value, or random.
    public mutating func edge(_ bits: Int) -> UInt64 {
        let mask: UInt64 = bits == 64 ? ~0 : (1 << UInt64(bits)) - 1
        let sign: UInt64 = 1 << UInt64(bits - 1)
        switch next() % 12 {
        case 0: return 0
        case 1: return 1
        case 2: return mask
        case 3: return sign
        case 4: return sign - 1
        case 5: return sign + 1
        case 6: return mask - 1
        case 7: return next() & 0xFF & mask
        default: return next() & mask
        }
    }
}
