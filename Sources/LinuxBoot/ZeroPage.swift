/// struct boot_params, the 4 KiB "zero page" whose address the kernel gets
/// in RSI: the setup header the loader filled in, the e820 map, and where
/// the command line, the initrd and the RSDP are.
public struct ZeroPage: Sendable, Equatable {
    public static let size = 4096
    public static let maximumE820Entries = 128

    // Offsets in struct boot_params (arch/x86/include/uapi/asm/bootparam.h).
    static let acpiRSDPAddressOffset = 0x070
    static let extRamdiskImageOffset = 0x0c0
    static let extRamdiskSizeOffset = 0x0c4
    static let extCmdLinePtrOffset = 0x0c8
    static let e820EntriesOffset = 0x1e8
    static let setupHeaderOffset = 0x1f1
    static let typeOfLoaderOffset = 0x210
    static let loadflagsOffset = 0x211
    static let ramdiskImageOffset = 0x218
    static let ramdiskSizeOffset = 0x21c
    static let heapEndPtrOffset = 0x224
    static let cmdLinePtrOffset = 0x228
    static let e820TableOffset = 0x2d0

    /// "Undefined" loader: a boot loader with no assigned id.
    public static let undefinedLoader: UInt8 = 0xff

    public var setupHeader: [UInt8]
    public var e820: [E820Entry]
    public var commandLineAddress: UInt64 = 0
    public var initrdAddress: UInt64 = 0
    public var initrdSize: UInt64 = 0
    public var rsdpAddress: UInt64 = 0

    public init(kernel: LoadedKernel, e820: [E820Entry]) {
        setupHeader = kernel.setupHeader
        self.e820 = e820
    }

    public var bytes: [UInt8] {
        var page = [UInt8](repeating: 0, count: Self.size)
        let header = setupHeader.prefix(Self.size - Self.setupHeaderOffset)
        page.replaceSubrange(Self.setupHeaderOffset..<Self.setupHeaderOffset + header.count, with: header)
        page[Self.typeOfLoaderOffset] = Self.undefinedLoader
        // No real-mode setup code runs, so there is no heap to announce.
        page[Self.loadflagsOffset] &= ~SetupHeader.canUseHeap
        page.setLE(UInt16(0), at: Self.heapEndPtrOffset)
        page.setLE(UInt32(truncatingIfNeeded: commandLineAddress), at: Self.cmdLinePtrOffset)
        page.setLE(UInt32(truncatingIfNeeded: commandLineAddress >> 32), at: Self.extCmdLinePtrOffset)
        page.setLE(UInt32(truncatingIfNeeded: initrdAddress), at: Self.ramdiskImageOffset)
        page.setLE(UInt32(truncatingIfNeeded: initrdAddress >> 32), at: Self.extRamdiskImageOffset)
        page.setLE(UInt32(truncatingIfNeeded: initrdSize), at: Self.ramdiskSizeOffset)
        page.setLE(UInt32(truncatingIfNeeded: initrdSize >> 32), at: Self.extRamdiskSizeOffset)
        page.setLE(rsdpAddress, at: Self.acpiRSDPAddressOffset)
        let entries = e820.prefix(Self.maximumE820Entries)
        page[Self.e820EntriesOffset] = UInt8(entries.count)
        for (index, entry) in entries.enumerated() {
            let base = Self.e820TableOffset + index * 20
            page.setLE(entry.address, at: base)
            page.setLE(entry.size, at: base + 8)
            page.setLE(entry.kind.rawValue, at: base + 16)
        }
        return page
    }
}

/// Where the initrd goes: as high as the kernel allows (`initrd_addr_max`,
/// the last byte it may occupy) and RAM below 4 GiB allow, page aligned,
/// and above the kernel's working area.
public enum InitrdPlacement {
    public static let alignment: UInt64 = 4096

    public static func address(size: UInt64, kernel: LoadedKernel, lowRAMEnd: UInt64) throws(LinuxBootError) -> UInt64 {
        let limit = min(kernel.initrdAddressMax == 0 ? 0x37ff_ffff : kernel.initrdAddressMax + 1, lowRAMEnd)
        let alignedKernelEnd = (kernel.end + alignment - 1) / alignment * alignment
        guard size <= limit, (limit - size) / alignment * alignment >= alignedKernelEnd else {
            let needed = alignedKernelEnd + (size + alignment - 1) / alignment * alignment
            throw .doesNotFit(needed: needed, available: limit,
                              what: "the kernel and a \(size)-byte initrd (below the initrd limit)")
        }
        return (limit - size) / alignment * alignment
    }
}
