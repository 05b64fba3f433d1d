/// An uncompressed x86-64 kernel (vmlinux): an ELF64 executable whose
/// PT_LOAD segments are copied to their physical addresses and whose entry
/// point is startup_64's physical address.
public struct ELFKernel: Sendable {
    public struct Segment: Sendable, Equatable {
        public var fileOffset: Int
        public var physicalAddress: UInt64
        public var fileSize: Int
        public var memorySize: UInt64
    }

    static let machineX86_64: UInt16 = 62
    static let typeExecutable: UInt16 = 2
    static let programHeaderLoad: UInt32 = 1

    public let bytes: [UInt8]
    public let entryPoint: UInt64
    public let segments: [Segment]

    public init(bytes: [UInt8]) throws(LinuxBootError) {
        guard bytes.count >= 64, bytes[0..<4] == [0x7f, 0x45, 0x4c, 0x46] else {
            throw .notAKernel("no ELF magic and no bzImage header")
        }
        guard bytes[4] == 2 else {
            throw .unsupportedELF("ELF class \(bytes[4]) is not ELFCLASS64")
        }
        guard bytes[5] == 1 else {
            throw .unsupportedELF("the ELF data is not little-endian")
        }
        let machine = bytes.le(UInt16.self, at: 18)
        guard machine == Self.machineX86_64 else {
            throw .unsupportedELF("e_machine is \(machine), not EM_X86_64 (62)")
        }
        let type = bytes.le(UInt16.self, at: 16)
        guard type == Self.typeExecutable else {
            throw .unsupportedELF("e_type is \(type), not ET_EXEC (2)")
        }
        let programHeaderOffset = Int(truncatingIfNeeded: bytes.le(UInt64.self, at: 32))
        let entrySize = Int(bytes.le(UInt16.self, at: 54))
        let count = Int(bytes.le(UInt16.self, at: 56))
        guard entrySize >= 56, programHeaderOffset >= 0,
              programHeaderOffset <= bytes.count, count * entrySize <= bytes.count - programHeaderOffset else {
            throw .unsupportedELF("the program headers lie outside the file")
        }
        var segments: [Segment] = []
        for index in 0..<count {
            let base = programHeaderOffset + index * entrySize
            guard bytes.le(UInt32.self, at: base) == Self.programHeaderLoad else { continue }
            let segment = Segment(
                fileOffset: Int(truncatingIfNeeded: bytes.le(UInt64.self, at: base + 8)),
                physicalAddress: bytes.le(UInt64.self, at: base + 24),
                fileSize: Int(truncatingIfNeeded: bytes.le(UInt64.self, at: base + 32)),
                memorySize: bytes.le(UInt64.self, at: base + 40))
            guard segment.fileOffset >= 0, segment.fileSize >= 0, segment.fileOffset <= bytes.count,
                  segment.fileSize <= bytes.count - segment.fileOffset,
                  UInt64(segment.fileSize) <= segment.memorySize else {
                throw .unsupportedELF("PT_LOAD segment \(index) lies outside the file")
            }
            segments.append(segment)
        }
        guard !segments.isEmpty else {
            throw .unsupportedELF("no PT_LOAD segment")
        }
        self.bytes = bytes
        self.entryPoint = bytes.le(UInt64.self, at: 24)
        self.segments = segments
    }

    /// The first byte after the highest segment.
    public var end: UInt64 {
        segments.map { $0.physicalAddress + $0.memorySize }.max() ?? 0
    }

    /// Copies every PT_LOAD segment to its physical address, zeroing the
    /// part of the segment past the file's bytes (.bss).
    public func load(into memory: some GuestPhysicalMemory) throws(LinuxBootError) -> LoadedKernel {
        guard end <= memory.guestMemorySize else {
            throw .doesNotFit(needed: end, available: memory.guestMemorySize, what: "the ELF kernel's segments")
        }
        for segment in segments {
            try memory.put(bytes[segment.fileOffset..<segment.fileOffset + segment.fileSize], at: segment.physicalAddress)
            let zeroes = segment.memorySize - UInt64(segment.fileSize)
            if zeroes > 0 {
                try memory.put(repeatElement(0, count: Int(zeroes)), at: segment.physicalAddress + UInt64(segment.fileSize))
            }
        }
        return LoadedKernel(loadAddress: segments.map(\.physicalAddress).min() ?? 0, entryPoint: entryPoint, end: end,
                            setupHeader: Self.synthesizedSetupHeader, commandLineLimit: 2047,
                            initrdAddressMax: 0x7fff_ffff)
    }

    /// A vmlinux has no setup header, but startup_64 reads a few of its
    /// fields in the zero page; these are the values a bzImage of the same
    /// era would carry (as Firecracker writes them for a vmlinux).
    static var synthesizedSetupHeader: [UInt8] {
        var header = [UInt8](repeating: 0, count: 0x26c - 0x1f1)
        header.setLE(UInt16(0xaa55), at: 0x1fe - 0x1f1)
        header.setLE(SetupHeader.magic, at: 0x202 - 0x1f1)
        header.setLE(SetupHeader.minimumVersion, at: 0x206 - 0x1f1)
        header[0x211 - 0x1f1] = SetupHeader.loadedHigh
        header.setLE(UInt32(0x100_0000), at: 0x230 - 0x1f1)
        header.setLE(UInt32(2047), at: 0x238 - 0x1f1)
        return header
    }
}

/// Loads a kernel file, a bzImage or an ELF vmlinux, whichever it is.
public enum KernelImage {
    public static func load(_ bytes: [UInt8], into memory: some GuestPhysicalMemory) throws(LinuxBootError) -> LoadedKernel {
        if bytes.count >= 4, bytes[0..<4] == [0x7f, 0x45, 0x4c, 0x46] {
            return try ELFKernel(bytes: bytes).load(into: memory)
        }
        return try BzImage(bytes: bytes).load(into: memory)
    }
}
