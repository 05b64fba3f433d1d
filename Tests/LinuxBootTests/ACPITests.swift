import GuestMemory
import Testing
@testable import LinuxBoot

/// Reads the tables back out of guest memory the way a kernel does: from
/// the RSDP, following addresses.
struct ACPIReader {
    let memory: GuestMemoryRegion

    func table(at address: UInt64) throws -> [UInt8] {
        let length = try memory.load(UInt32.self, at: Int(address) + 4)
        return try memory.read(at: Int(address), count: Int(length))
    }

    func signature(_ table: [UInt8]) -> String { String(decoding: table[0..<4], as: UTF8.self) }

    func sum(_ bytes: some Sequence<UInt8>) -> UInt8 { bytes.reduce(0, &+) }
}

@Suite struct ACPITests {
    func written(cpus: Int) throws -> (ACPIReader, ACPITables) {
        let memory = try GuestMemoryRegion(size: 2 << 20)
        let tables = ACPITables(ACPIConfiguration(cpuCount: cpus))
        try tables.write(into: memory)
        return (ACPIReader(memory: memory), tables)
    }

    @Test func everyTableChecksumsToZero() throws {
        let (reader, tables) = try written(cpus: 4)
        for table in tables.tables {
            let signature = reader.signature(table.bytes)
            if signature == "RSD " {
                #expect(reader.sum(table.bytes[0..<20]) == 0, "RSDP first 20 bytes")
                #expect(reader.sum(table.bytes) == 0, "RSDP extended checksum")
            } else if signature != "FACS" {
                #expect(reader.sum(table.bytes) == 0, "\(signature)")
                #expect(try reader.table(at: table.address) == table.bytes, "\(signature) in memory")
            }
        }
    }

    @Test func chainFromRSDPReachesMADTFADTAndDSDT() throws {
        let (reader, _) = try written(cpus: 2)
        let rsdp = try reader.memory.read(at: 0xe0000, count: 36)
        #expect(rsdp[0..<8] == ArraySlice("RSD PTR ".utf8))
        #expect(rsdp[15] == 2)
        let xsdt = try reader.table(at: littleEndian(UInt64.self, rsdp, at: 24))
        #expect(reader.signature(xsdt) == "XSDT")
        let entries = (xsdt.count - 36) / 8
        let signatures = try (0..<entries).map { index in
            try reader.signature(reader.table(at: littleEndian(UInt64.self, xsdt, at: 36 + 8 * index)))
        }
        #expect(signatures.sorted() == ["APIC", "FACP"])

        let fadtAddress = try (0..<entries).map { littleEndian(UInt64.self, xsdt, at: 36 + 8 * $0) }
            .first { try reader.signature(reader.table(at: $0)) == "FACP" }
        let fadt = try reader.table(at: try #require(fadtAddress))
        #expect(fadt.count == 276)
        #expect(fadt[8] == 6)
        let dsdtAddress = littleEndian(UInt64.self, fadt, at: 140)
        #expect(UInt64(littleEndian(UInt32.self, fadt, at: 40)) == dsdtAddress)
        let dsdt = try reader.table(at: dsdtAddress)
        #expect(reader.signature(dsdt) == "DSDT")
        #expect(reader.sum(dsdt) == 0)
        // Name (_S5_, Package (2) { 5, 5 })
        #expect(Array(dsdt[36...]) == [0x08, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x06, 0x02, 0x0a, 0x05, 0x0a, 0x05])

        let facs = try reader.memory.read(at: Int(littleEndian(UInt64.self, fadt, at: 132)), count: 64)
        #expect(facs[0..<4] == ArraySlice("FACS".utf8))
        #expect(littleEndian(UInt64.self, fadt, at: 132) % 64 == 0)
        #expect(littleEndian(UInt32.self, fadt, at: 36) == 0, "FACS given once, in X_FIRMWARE_CTRL")

        let flags = littleEndian(UInt32.self, fadt, at: 112)
        #expect(flags & (1 << 20) == 0, "not hardware-reduced")
        #expect(flags & (1 << 10) != 0, "reset register supported")
        #expect(littleEndian(UInt16.self, fadt, at: 46) == 9)
        #expect(littleEndian(UInt32.self, fadt, at: 64) == 0x604)
        #expect(littleEndian(UInt16.self, fadt, at: 109) & 0x2 != 0, "8042 present")
        #expect(fadt[116] == 1 && littleEndian(UInt64.self, fadt, at: 120) == 0xcf9 && fadt[128] == 6)
    }

    @Test(arguments: [1, 2, 8]) func madtHasOneEnabledLAPICPerCPUAndTheIOAPIC(cpus: Int) throws {
        let (reader, tables) = try written(cpus: cpus)
        let madt = try #require(tables.tables.first { reader.signature($0.bytes) == "APIC" }).bytes
        #expect(littleEndian(UInt32.self, madt, at: 36) == 0xfee0_0000)
        var offset = 44
        var lapics: [(uid: UInt8, apicID: UInt8, flags: UInt32)] = []
        var ioapics: [(address: UInt32, gsiBase: UInt32)] = []
        var overrides: [(source: UInt8, gsi: UInt32, flags: UInt16)] = []
        while offset < madt.count {
            let type = madt[offset], length = Int(madt[offset + 1])
            try #require(length >= 2 && offset + length <= madt.count)
            switch type {
            case 0: lapics.append((madt[offset + 2], madt[offset + 3], littleEndian(UInt32.self, madt, at: offset + 4)))
            case 1: ioapics.append((littleEndian(UInt32.self, madt, at: offset + 4), littleEndian(UInt32.self, madt, at: offset + 8)))
            case 2: overrides.append((madt[offset + 3], littleEndian(UInt32.self, madt, at: offset + 4),
                                      littleEndian(UInt16.self, madt, at: offset + 8)))
            default: break
            }
            offset += length
        }
        #expect(offset == madt.count)
        #expect(lapics.count == cpus)
        #expect(lapics.map(\.apicID) == (0..<cpus).map { UInt8($0) })
        #expect(lapics.allSatisfy { $0.flags & 1 == 1 })
        #expect(ioapics.count == 1)
        #expect(ioapics.first?.address == 0xfec0_0000 && ioapics.first?.gsiBase == 0)
        #expect(overrides.contains { $0.source == 0 && $0.gsi == 2 })
    }

    @Test func tablesStayInTheBIOSArea() throws {
        let tables = ACPITables(ACPIConfiguration(cpuCount: 64))
        #expect(tables.rsdpAddress == 0xe0000)
        #expect(tables.end <= 0x10_0000)
    }
}
