/// The setup header of a bzImage (Documentation/arch/x86/boot.rst), the
/// fields a 64-bit loader reads or fills in, at their offsets in the file
/// (which are also their offsets in the zero page).
public struct SetupHeader: Sendable, Equatable {
    /// The oldest protocol with `xloadflags`, `pref_address` and a
    /// documented 64-bit entry point (2.12, Linux 3.8).
    public static let minimumVersion: UInt16 = 0x020c
    public static let magic: UInt32 = 0x5372_6448  // "HdrS"

    public static let loadedHigh: UInt8 = 0x01
    public static let canUseHeap: UInt8 = 0x80
    public static let kernel64: UInt16 = 0x01
    public static let canBeLoadedAbove4G: UInt16 = 0x02

    public var setupSects: UInt8
    public var syssize: UInt32
    public var bootFlag: UInt16
    public var version: UInt16
    public var loadflags: UInt8
    public var code32Start: UInt32
    public var initrdAddrMax: UInt32
    public var kernelAlignment: UInt32
    public var relocatableKernel: Bool
    public var xloadflags: UInt16
    public var cmdlineSize: UInt32
    public var prefAddress: UInt64
    public var initSize: UInt32
    /// Offset of the header's end in the file: 0x202 plus the byte at 0x201
    /// (the operand of the jump over the header).
    public var endOffset: Int

    /// Parses the header of the image whose first bytes are `bytes`.
    public init(parsing bytes: [UInt8]) throws(LinuxBootError) {
        guard bytes.count >= 0x270 else {
            throw .notAKernel("\(bytes.count) bytes is too short to hold a setup header (0x270)")
        }
        guard bytes.le(UInt32.self, at: 0x202) == Self.magic else {
            throw .notAKernel("no \"HdrS\" magic at offset 0x202")
        }
        bootFlag = bytes.le(UInt16.self, at: 0x1fe)
        guard bootFlag == 0xaa55 else {
            throw .notAKernel("boot flag at 0x1fe is 0x\(String(bootFlag, radix: 16)), not 0xaa55")
        }
        version = bytes.le(UInt16.self, at: 0x206)
        guard version >= Self.minimumVersion else {
            throw .protocolTooOld(version: version, minimum: Self.minimumVersion)
        }
        setupSects = bytes[0x1f1]
        syssize = bytes.le(UInt32.self, at: 0x1f4)
        loadflags = bytes[0x211]
        code32Start = bytes.le(UInt32.self, at: 0x214)
        initrdAddrMax = bytes.le(UInt32.self, at: 0x22c)
        kernelAlignment = bytes.le(UInt32.self, at: 0x230)
        relocatableKernel = bytes[0x234] != 0
        xloadflags = bytes.le(UInt16.self, at: 0x236)
        cmdlineSize = bytes.le(UInt32.self, at: 0x238)
        prefAddress = bytes.le(UInt64.self, at: 0x258)
        initSize = bytes.le(UInt32.self, at: 0x260)
        endOffset = 0x202 + Int(bytes[0x201])
        guard xloadflags & Self.kernel64 != 0 else {
            throw .not64Bit("XLF_KERNEL_64 is clear in xloadflags (0x\(String(xloadflags, radix: 16)))")
        }
        guard loadflags & Self.loadedHigh != 0 else {
            throw .notAKernel("LOADED_HIGH is clear: a zImage, which loads at 0x10000 and has no 64-bit entry")
        }
    }

    /// The number of 512-byte setup sectors after the boot sector (0 means 4).
    public var setupSectors: Int { setupSects == 0 ? 4 : Int(setupSects) }
}

/// A bzImage: the real-mode setup, whose header the zero page copies, and
/// the protected-mode kernel that is loaded into guest memory.
public struct BzImage: Sendable {
    public let header: SetupHeader
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) throws(LinuxBootError) {
        header = try SetupHeader(parsing: bytes)
        guard bytes.count > (header.setupSectors + 1) * 512 else {
            throw .notAKernel("the file ends inside its \(header.setupSectors) setup sectors")
        }
        guard header.endOffset <= bytes.count, header.endOffset > 0x202 else {
            throw .notAKernel("the setup header's end (0x\(String(header.endOffset, radix: 16))) is outside the file")
        }
        self.bytes = bytes
    }

    /// Offset of the protected-mode kernel in the file.
    public var protectedModeOffset: Int { (header.setupSectors + 1) * 512 }
    /// The part of the file loaded at the load address.
    public var protectedModeKernel: ArraySlice<UInt8> { bytes[protectedModeOffset...] }
    /// The setup header as it is in the file, from 0x1f1 to its end, for the zero page.
    public var setupHeaderBytes: ArraySlice<UInt8> { bytes[0x1f1..<header.endOffset] }

    /// Where the protected-mode kernel goes: 1 MiB (code32_start's default,
    /// as QEMU and Firecracker load it) for a relocatable kernel, which moves
    /// itself to an aligned address; `pref_address` otherwise.
    public var defaultLoadAddress: UInt64 {
        header.relocatableKernel ? 0x10_0000 : header.prefAddress
    }

    /// The end of what the kernel occupies when loaded at `address`: the
    /// file itself, and the `init_size` bytes its decompressor works in from
    /// the address it runs at (the load address rounded up to
    /// `kernel_alignment`, and no lower than `pref_address`, as startup_64 does).
    public func memoryEnd(loadedAt address: UInt64) -> UInt64 {
        let alignment = UInt64(max(header.kernelAlignment, 1))
        var runAddress = header.prefAddress
        if header.relocatableKernel {
            let aligned = (address + alignment - 1) / alignment * alignment
            runAddress = max(aligned, header.prefAddress)
        }
        return max(address + UInt64(protectedModeKernel.count), runAddress + UInt64(header.initSize))
    }

    /// Copies the protected-mode kernel to `address` (default
    /// `defaultLoadAddress`) after checking that its working area fits.
    public func load(into memory: some GuestPhysicalMemory, at address: UInt64? = nil) throws(LinuxBootError) -> LoadedKernel {
        let loadAddress = address ?? defaultLoadAddress
        let end = memoryEnd(loadedAt: loadAddress)
        guard end <= memory.guestMemorySize else {
            throw .doesNotFit(needed: end, available: memory.guestMemorySize, what: "the kernel (loaded at 0x\(String(loadAddress, radix: 16)) with its init_size)")
        }
        try memory.put(protectedModeKernel, at: loadAddress)
        return LoadedKernel(loadAddress: loadAddress, entryPoint: loadAddress + 0x200, end: end,
                            setupHeader: Array(setupHeaderBytes), commandLineLimit: Int(header.cmdlineSize),
                            initrdAddressMax: UInt64(header.initrdAddrMax))
    }
}

/// A kernel in guest memory: where it runs from and what the rest of the
/// boot must respect.
public struct LoadedKernel: Sendable, Equatable {
    public var loadAddress: UInt64
    /// The 64-bit entry point (startup_64 for a bzImage: load address + 0x200).
    public var entryPoint: UInt64
    /// The first byte after everything the kernel may use while starting.
    public var end: UInt64
    /// The bytes copied to the zero page at 0x1f1 (empty for an ELF vmlinux).
    public var setupHeader: [UInt8]
    /// The longest command line the kernel takes, without its NUL.
    public var commandLineLimit: Int
    /// The highest address the initrd may occupy.
    public var initrdAddressMax: UInt64
}
