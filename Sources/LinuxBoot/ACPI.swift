/// What the ACPI tables describe of the machine: its CPUs, interrupt
/// controllers and the fixed-hardware power-management ports the VMM
/// answers (PM1a event and control blocks, optional PM timer, reset register).
public struct ACPIConfiguration: Sendable, Equatable {
    public var cpuCount: Int
    public var ioapicAddress: UInt32 = 0xfec0_0000
    /// 0, what the IOAPIC's ID register holds at reset in KVM and QEMU.
    public var ioapicID: UInt8 = 0
    public var lapicAddress: UInt32 = 0xfee0_0000
    /// The SCI's ISA IRQ (9, as on a PIIX4 or ICH9).
    public var sciIRQ: UInt8 = 9
    /// PM1a_EVT_BLK: 4 bytes (status, enable) at this port.
    public var pm1aEventPort: UInt16 = 0x600
    /// PM1a_CNT_BLK: 2 bytes at this port; a write with SLP_EN and
    /// SLP_TYP = `sleepTypeS5` powers the machine off.
    public var pm1aControlPort: UInt16 = 0x604
    /// The 3.579545 MHz ACPI PM timer (32-bit), when the machine has one
    /// (Devices' ACPIPowerManagement has it at PM base + 8).
    public var pmTimerPort: UInt16? = 0x608
    /// RESET_REG: a write of `resetValue` to this port resets the machine (0xcf9 as on ICH9).
    public var resetPort: UInt16 = 0xcf9
    public var resetValue: UInt8 = 0x06
    /// The CMOS RAM index of the RTC's century byte.
    public var rtcCenturyIndex: UInt8 = 0x32
    /// The SLP_TYP value \_S5 gives.
    public var sleepTypeS5: UInt8 = 5

    public init(cpuCount: Int) {
        self.cpuCount = cpuCount
    }
}

/// The ACPI tables of a PC with no firmware: RSDP -> XSDT -> {FADT -> DSDT
/// (and FACS), MADT}. The Debian kernel has no MP-table support, so the
/// MADT is how it finds its CPUs and the IOAPIC.
public struct ACPITables: Sendable {
    public static let rsdpAddress: UInt64 = 0xe0000
    static let oemID = Array("SWKVM ".utf8)
    static let oemTableID = Array("SWIFTKVM".utf8)
    static let creatorID = Array("SKVM".utf8)

    public let configuration: ACPIConfiguration
    /// Each table and its guest-physical address, RSDP first.
    public let tables: [(address: UInt64, bytes: [UInt8])]

    public init(_ configuration: ACPIConfiguration, at base: UInt64 = ACPITables.rsdpAddress) {
        self.configuration = configuration
        // Each table starts on a 64-byte boundary (the FACS must).
        var next = base
        func place(_ size: Int) -> UInt64 {
            let address = next
            next = (next + UInt64(size) + 63) & ~63
            return address
        }
        let rsdpAt = place(36)
        let dsdt = Self.dsdt(configuration)
        let dsdtAt = place(dsdt.count)
        let facsAt = place(64)
        let fadt = Self.fadt(configuration, dsdt: dsdtAt, facs: facsAt)
        let fadtAt = place(fadt.count)
        let madt = Self.madt(configuration)
        let madtAt = place(madt.count)
        let xsdt = Self.xsdt(entries: [fadtAt, madtAt])
        let xsdtAt = place(xsdt.count)
        tables = [
            (rsdpAt, Self.rsdp(xsdt: xsdtAt)), (xsdtAt, xsdt), (fadtAt, fadt), (facsAt, Self.facs()),
            (dsdtAt, dsdt), (madtAt, madt),
        ]
    }

    public var rsdpAddress: UInt64 { tables[0].address }
    /// The first byte after the last table.
    public var end: UInt64 { tables.map { $0.address + UInt64($0.bytes.count) }.max() ?? 0 }

    public func write(into memory: some GuestPhysicalMemory) throws(LinuxBootError) {
        for table in tables { try memory.put(table.bytes, at: table.address) }
    }

    // MARK: Tables

    static func rsdp(xsdt: UInt64) -> [UInt8] {
        var table = [UInt8](repeating: 0, count: 36)
        table.replaceSubrange(0..<8, with: Array("RSD PTR ".utf8))
        table.replaceSubrange(9..<15, with: oemID)
        table[15] = 2  // ACPI 2.0+: XSDT and the extended checksum
        table.setLE(UInt32(36), at: 20)
        table.setLE(xsdt, at: 24)
        table[8] = checksum(table[0..<20])
        table[32] = checksum(table)
        return table
    }

    static func header(_ signature: String, length: Int, revision: UInt8) -> [UInt8] {
        var table = [UInt8](repeating: 0, count: length)
        table.replaceSubrange(0..<4, with: Array(signature.utf8))
        table.setLE(UInt32(length), at: 4)
        table[8] = revision
        table.replaceSubrange(10..<16, with: oemID)
        table.replaceSubrange(16..<24, with: oemTableID)
        table.setLE(UInt32(1), at: 24)
        table.replaceSubrange(28..<32, with: creatorID)
        table.setLE(UInt32(1), at: 32)
        return table
    }

    static func sealed(_ table: [UInt8]) -> [UInt8] {
        var table = table
        table[9] = 0
        table[9] = checksum(table)
        return table
    }

    /// The byte that makes `bytes` sum to 0 modulo 256.
    static func checksum(_ bytes: some Sequence<UInt8>) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }

    static func xsdt(entries: [UInt64]) -> [UInt8] {
        var table = header("XSDT", length: 36 + 8 * entries.count, revision: 1)
        for (index, address) in entries.enumerated() { table.setLE(address, at: 36 + 8 * index) }
        return sealed(table)
    }

    static let madtPCATCompat: UInt32 = 1
    static let lapicEnabled: UInt32 = 1
    /// Level-triggered, active high: the SCI as QEMU describes it.
    static let levelActiveHigh: UInt16 = 0x000d

    static func madt(_ configuration: ACPIConfiguration) -> [UInt8] {
        var entries: [UInt8] = []
        for cpu in 0..<configuration.cpuCount {
            entries += [0, 8, UInt8(truncatingIfNeeded: cpu), UInt8(truncatingIfNeeded: cpu)]
            entries += le(lapicEnabled)
        }
        entries += [1, 12, configuration.ioapicID, 0] + le(configuration.ioapicAddress) + le(UInt32(0))
        // The PIT's IRQ 0 is wired to IOAPIC pin 2, as on every PC since the
        // IOAPIC took pin 0 for the 8259's INTR.
        entries += [2, 10, 0, 0] + le(UInt32(2)) + le(UInt16(0))
        entries += [2, 10, 0, configuration.sciIRQ] + le(UInt32(configuration.sciIRQ)) + le(levelActiveHigh)
        // LINT1 of every processor (UID 0xff: all) is the NMI input.
        entries += [4, 6, 0xff] + le(UInt16(0)) + [1]
        var table = header("APIC", length: 44 + entries.count, revision: 4)
        table.setLE(configuration.lapicAddress, at: 36)
        table.setLE(madtPCATCompat, at: 40)
        table.replaceSubrange(44..., with: entries)
        return sealed(table)
    }

    static func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: MemoryLayout<T>.size)
        bytes.setLE(value, at: 0)
        return bytes
    }

    static let fadtLength = 276
    // FADT flags (ACPI 6.5, table 5.10).
    static let flagWBINVD: UInt32 = 1 << 0
    static let flagProcC1: UInt32 = 1 << 2
    static let flagPowerButton: UInt32 = 1 << 4
    static let flagSleepButton: UInt32 = 1 << 5
    static let flagTimerValueExtended: UInt32 = 1 << 8
    static let flagResetRegister: UInt32 = 1 << 10
    // IA-PC boot architecture flags: legacy ISA devices (the 16550s and
    // the RTC) and an 8042; without the 8042 bit Linux skips the i8042.
    static let bootArchLegacyDevices: UInt16 = 1 << 0
    static let bootArch8042: UInt16 = 1 << 1
    static let bootArchNoVGA: UInt16 = 1 << 2

    /// A register in system I/O space. The access size stays 0
    /// ("undefined"), as QEMU leaves it: ACPICA then accesses the register
    /// in units of its bit width, and splits the PM1 event block into its
    /// 16-bit status and enable halves itself.
    static func gas(port: UInt16, bits: UInt8) -> [UInt8] {
        [1, bits, 0, 0] + le(UInt64(port))
    }

    static func fadt(_ configuration: ACPIConfiguration, dsdt: UInt64, facs: UInt64) -> [UInt8] {
        var table = header("FACP", length: fadtLength, revision: 6)
        // FIRMWARE_CTRL stays 0: with both it and X_FIRMWARE_CTRL set,
        // ACPICA installs the FACS twice (Linux 6.1 lists it twice).
        table.setLE(UInt32(truncatingIfNeeded: dsdt), at: 40)
        table.setLE(UInt16(configuration.sciIRQ), at: 46)
        // SMI_CMD 0: no SMM, the machine is always in ACPI mode.
        table.setLE(UInt32(configuration.pm1aEventPort), at: 56)
        table.setLE(UInt32(configuration.pm1aControlPort), at: 64)
        table[88] = 4
        table[89] = 2
        var flags = flagWBINVD | flagProcC1 | flagPowerButton | flagSleepButton | flagResetRegister
        if let timer = configuration.pmTimerPort {
            table.setLE(UInt32(timer), at: 76)
            table[91] = 4
            table.replaceSubrange(208..<220, with: gas(port: timer, bits: 32))
            flags |= flagTimerValueExtended
        }
        table[108] = configuration.rtcCenturyIndex
        table.setLE(bootArchLegacyDevices | bootArch8042 | bootArchNoVGA, at: 109)
        table.setLE(flags, at: 112)
        table.replaceSubrange(116..<128, with: gas(port: configuration.resetPort, bits: 8))
        table[128] = configuration.resetValue
        table[131] = 5  // FADT minor version: ACPI 6.5
        table.setLE(facs, at: 132)
        table.setLE(dsdt, at: 140)
        table.replaceSubrange(148..<160, with: gas(port: configuration.pm1aEventPort, bits: 32))
        table.replaceSubrange(172..<184, with: gas(port: configuration.pm1aControlPort, bits: 16))
        return sealed(table)
    }

    /// The FACS: the firmware waking vector and global lock, all zero; it has no checksum.
    static func facs() -> [UInt8] {
        var table = [UInt8](repeating: 0, count: 64)
        table.replaceSubrange(0..<4, with: Array("FACS".utf8))
        table.setLE(UInt32(64), at: 4)
        table[32] = 2
        return table
    }

    /// A DSDT holding `Name (\_S5, Package () { SLP_TYP, SLP_TYP })`, which is
    /// what ACPICA reads to power off; the devices are found by legacy probing
    /// and the MADT, so nothing else is declared.
    static func dsdt(_ configuration: ACPIConfiguration) -> [UInt8] {
        let nameOp: UInt8 = 0x08, packageOp: UInt8 = 0x12, bytePrefix: UInt8 = 0x0a
        let elements: [UInt8] = [bytePrefix, configuration.sleepTypeS5, bytePrefix, configuration.sleepTypeS5]
        // PkgLength counts itself, NumElements and the elements: one byte here.
        let package = [packageOp, UInt8(2 + elements.count), 2] + elements
        let aml = [nameOp] + Array("_S5_".utf8) + package
        var table = header("DSDT", length: 36 + aml.count, revision: 2)
        table.replaceSubrange(36..., with: aml)
        return sealed(table)
    }
}
