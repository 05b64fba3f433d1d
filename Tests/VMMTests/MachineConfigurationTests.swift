import Foundation
import Testing
@testable import VMM

struct MachineConfigurationTests {
    @Test func memorySizesParseWithSuffixesAndBareNumbersAsMiB() throws {
        let cases: [(String, UInt64)] = [
            ("512M", 512 << 20), ("1G", 1 << 30), ("1g", 1 << 30), ("2GiB", 2 << 30), ("768MB", 768 << 20),
            ("65536K", 64 << 20), ("1T", 1 << 40), ("256", 256 << 20), (" 128M ", 128 << 20),
        ]
        for (text, bytes) in cases {
            #expect(try MachineConfiguration.parseMemorySize(text) == bytes, "\(text)")
        }
    }

    @Test func badMemorySizesSayWhatToWrite() {
        for text in ["", "M", "12X", "1.5G", "-1G", "0x100M", "1GG"] {
            #expect(throws: MachineConfigurationError.badMemorySize(text)) { try MachineConfiguration.parseMemorySize(text) }
        }
        #expect(MachineConfigurationError.badMemorySize("12X").description
            == "memory size \"12X\" is not a size: write a number with a K, M, G or T suffix, such as 512M or 2G (a bare number is MiB)")
        #expect(throws: MachineConfigurationError.memorySizeOutOfRange(UInt64.max)) {
            try MachineConfiguration.parseMemorySize("99999999999999T")
        }
    }

    @Test func theDefaultsBootOnTheSerialConsole() {
        let configuration = MachineConfiguration(kernelPath: "/k")
        #expect(configuration.memorySize == 512 << 20)
        #expect(configuration.cpuCount == 1)
        #expect(configuration.commandLine == "console=ttyS0 earlyprintk=serial panic=-1 reboot=k")
        #expect(configuration.initrdPath == nil)
    }

    @Test func validationNamesTheBadFieldAndTheRemedy() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("machine-config-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let kernel = directory.appendingPathComponent("kernel").path
        #expect(FileManager.default.createFile(atPath: kernel, contents: Data([1, 2, 3])))
        let good = MachineConfiguration(kernelPath: kernel)
        try good.validate()

        var configuration = good
        configuration.memorySize = 32 << 20
        #expect(throws: MachineConfigurationError.memorySizeOutOfRange(32 << 20)) { try configuration.validate() }
        configuration.memorySize = (512 << 20) + 100
        #expect(throws: MachineConfigurationError.memorySizeNotPageAligned((512 << 20) + 100)) { try configuration.validate() }
        configuration = good
        configuration.cpuCount = 0
        #expect(throws: MachineConfigurationError.cpuCountOutOfRange(0)) { try configuration.validate() }
        configuration.cpuCount = 255
        #expect(throws: MachineConfigurationError.cpuCountOutOfRange(255)) { try configuration.validate() }
        configuration = good
        configuration.kernelPath = directory.appendingPathComponent("missing").path
        let missing = #expect(throws: MachineConfigurationError.self) { try configuration.validate() }
        #expect(missing == .missingFile(what: "kernel", path: configuration.kernelPath))
        #expect(missing?.description.contains("linux-image-cloud-amd64") == true)
        configuration = good
        configuration.initrdPath = directory.path
        #expect(throws: MachineConfigurationError.unreadableFile(what: "initrd", path: directory.path)) { try configuration.validate() }
        configuration = good
        configuration.commandLine = String(repeating: "a", count: 2048)
        #expect(throws: MachineConfigurationError.commandLineTooLong(2048)) { try configuration.validate() }
        configuration.commandLine = "console=ttyS0\0quiet"
        #expect(throws: MachineConfigurationError.commandLineHasNUL) { try configuration.validate() }
    }
}
