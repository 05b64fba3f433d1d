/// One range of the BIOS memory map the kernel reads from the zero page.
public struct E820Entry: Sendable, Equatable {
    public enum Kind: UInt32, Sendable {
        case ram = 1
        case reserved = 2
        case acpi = 3
        case nvs = 4
        case unusable = 5
    }

    public var address: UInt64
    public var size: UInt64
    public var kind: Kind

    public init(address: UInt64, size: UInt64, kind: Kind) {
        self.address = address
        self.size = size
        self.kind = kind
    }

    public var end: UInt64 { address + size }
}

/// The guest-physical layout of a PC: RAM from 0 with the legacy hole
/// (0xA0000-0xFFFFF: VGA and BIOS ROMs) cut out, and, for RAM past
/// `lowMemoryTop`, the rest above 4 GiB so that the 32-bit device window
/// (IOAPIC, LAPIC) stays free.
public struct MemoryMap: Sendable, Equatable {
    /// The EBDA: the last KiB below 640 KiB, where a BIOS keeps its data.
    public static let ebdaStart: UInt64 = 0x9fc00
    public static let legacyHoleStart: UInt64 = 0xa0000
    /// The BIOS area where the kernel looks for the RSDP; the ACPI tables live here.
    public static let biosAreaStart: UInt64 = 0xe0000
    public static let highMemoryStart: UInt64 = 0x10_0000
    /// Where low RAM ends when there is more: the top 1 GiB of the 32-bit space is for devices.
    public static let lowMemoryTop: UInt64 = 0xc000_0000
    public static let fourGiB: UInt64 = 1 << 32
    public static let ioapicAddress: UInt64 = 0xfec0_0000
    public static let lapicAddress: UInt64 = 0xfee0_0000

    public var ramSize: UInt64
    /// Device ranges the kernel must not use, listed as reserved.
    public var deviceRanges: [E820Entry]

    public init(ramSize: UInt64, deviceRanges: [E820Entry] = MemoryMap.defaultDeviceRanges) {
        self.ramSize = ramSize
        self.deviceRanges = deviceRanges
    }

    public static let defaultDeviceRanges = [
        E820Entry(address: ioapicAddress, size: 0x1000, kind: .reserved),
        E820Entry(address: lapicAddress, size: 0x1000, kind: .reserved),
    ]

    /// The highest guest-physical address of RAM below 4 GiB, plus one.
    public var lowRAMEnd: UInt64 { min(ramSize, Self.lowMemoryTop) }

    /// The e820 table, in address order.
    public var entries: [E820Entry] {
        var entries = [
            E820Entry(address: 0, size: Self.ebdaStart, kind: .ram),
            E820Entry(address: Self.ebdaStart, size: Self.legacyHoleStart - Self.ebdaStart, kind: .reserved),
            E820Entry(address: Self.biosAreaStart, size: Self.highMemoryStart - Self.biosAreaStart, kind: .reserved),
        ]
        if lowRAMEnd > Self.highMemoryStart {
            entries.append(E820Entry(address: Self.highMemoryStart, size: lowRAMEnd - Self.highMemoryStart, kind: .ram))
        }
        entries += deviceRanges
        if ramSize > Self.lowMemoryTop {
            entries.append(E820Entry(address: Self.fourGiB, size: ramSize - Self.lowMemoryTop, kind: .ram))
        }
        return entries.sorted { $0.address < $1.address }
    }
}
