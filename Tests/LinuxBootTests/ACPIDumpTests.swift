import Foundation
import Testing
@testable import LinuxBoot

/// ACPICA's own disassembler as the oracle for the tables' format: the
/// same table parser and AML decoder the Linux kernel carries. scripts/test
/// installs it (acpica-tools).
@Suite struct ACPIDisassemblerTests {
    struct IaslMissing: Error, CustomStringConvertible {
        var description: String { "no /usr/bin/iasl: run scripts/test, which installs acpica-tools with apt (CI does)" }
    }

    /// Disassembles `bytes` with `iasl -d` and returns the .dsl text with iasl's own messages.
    func disassemble(_ bytes: [UInt8], name: String, in directory: URL) throws -> String {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/iasl") else { throw IaslMissing() }
        let input = directory.appendingPathComponent("\(name).dat")
        try Data(bytes).write(to: input)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/iasl")
        process.arguments = ["-d", input.path]
        process.currentDirectoryURL = directory
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let messages = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "iasl -d \(name): \(messages)")
        let listing = try String(contentsOf: directory.appendingPathComponent("\(name).dsl"), encoding: .utf8)
        return messages + listing
    }

    @Test func iaslDisassemblesEveryTableWithoutComplaint() throws {
        var configuration = ACPIConfiguration(cpuCount: 4)
        configuration.pmTimerPort = 0x608
        let tables = ACPITables(configuration)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("acpi-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var listings: [String: String] = [:]
        // iasl -d takes tables with a standard header only, so not the RSDP
        // (ACPITests checks its two checksums and its XSDT address).
        for table in tables.tables.dropFirst() {
            let name = String(decoding: table.bytes[0..<4], as: UTF8.self).trimmingCharacters(in: .whitespaces)
            let listing = try disassemble(table.bytes, name: name, in: directory)
            for complaint in ["Error", "Warning", "Incorrect", "Invalid", "Unknown"] {
                #expect(!listing.contains(complaint), "\(name): \(listing)")
            }
            listings[name] = listing
        }
        #expect(listings["DSDT"]?.contains("Name (_S5, Package (0x02)") == true)
        #expect(listings["APIC"].map { $0.components(separatedBy: "[Processor Local APIC]").count - 1 } == 4)
        #expect(listings["FACP"]?.contains("PM Timer Block Address : 00000608") == true)
    }
}
