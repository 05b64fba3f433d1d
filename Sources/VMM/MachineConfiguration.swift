import Foundation

/// What a Linux machine is made of: RAM, vCPUs, the kernel, the initrd and
/// the command line. `validate()` checks it before anything is built, with
/// errors that say what is wrong and what to do.
public struct MachineConfiguration: Sendable, Equatable {
    /// The serial console on COM1, the early console there too (which is what
    /// prints anything at all before the console driver starts), a panic
    /// that reboots at once (the machine then stops, see `MachineOutcome`),
    /// and a reboot through the keyboard controller, which the machine answers.
    public static let defaultCommandLine = "console=ttyS0 earlyprintk=serial panic=-1 reboot=k"
    public static let defaultMemorySize: UInt64 = 512 << 20
    /// Below this Debian's cloud kernel cannot even decompress itself (its init_size is some 40 MiB).
    public static let minimumMemorySize: UInt64 = 64 << 20
    /// What one host process maps without trouble; raise it when a use needs more.
    public static let maximumMemorySize: UInt64 = 1 << 40
    /// xAPIC ids are 8 bits and 0xff is the broadcast id.
    public static let maximumCPUCount = 254
    /// The boot protocol's command-line limit for 2.06+ kernels on x86 (COMMAND_LINE_SIZE).
    public static let maximumCommandLineLength = 2047

    public var memorySize: UInt64
    public var cpuCount: Int
    public var kernelPath: String
    public var initrdPath: String?
    public var commandLine: String

    public init(kernelPath: String, initrdPath: String? = nil, commandLine: String = MachineConfiguration.defaultCommandLine,
                memorySize: UInt64 = MachineConfiguration.defaultMemorySize, cpuCount: Int = 1) {
        self.kernelPath = kernelPath
        self.initrdPath = initrdPath
        self.commandLine = commandLine
        self.memorySize = memorySize
        self.cpuCount = cpuCount
    }

    /// Parses a memory size as QEMU's `-m` does: a number with an optional
    /// K, M, G or T suffix (powers of 1024; "MiB", "MB" and lower case
    /// also accepted), and a bare number in MiB.
    public static func parseMemorySize(_ text: String) throws(MachineConfigurationError) -> UInt64 {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
        var suffix = trimmed.dropFirst(digits.count).uppercased()
        for unit in ["IB", "B"] where suffix.count > 1 && suffix.hasSuffix(unit) {
            suffix.removeLast(unit.count)
            break
        }
        let shifts: [String: UInt64] = ["": 20, "K": 10, "M": 20, "G": 30, "T": 40]
        guard !digits.isEmpty, let number = UInt64(digits), let shift = shifts[suffix] else {
            throw .badMemorySize(text)
        }
        let (bytes, overflow) = number.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow else { throw .memorySizeOutOfRange(UInt64.max) }
        return bytes
    }

    /// Checks every field, and that the files can be read.
    public func validate() throws(MachineConfigurationError) {
        guard memorySize >= Self.minimumMemorySize, memorySize <= Self.maximumMemorySize else {
            throw .memorySizeOutOfRange(memorySize)
        }
        guard memorySize % 4096 == 0 else { throw .memorySizeNotPageAligned(memorySize) }
        guard (1...Self.maximumCPUCount).contains(cpuCount) else { throw .cpuCountOutOfRange(cpuCount) }
        try Self.checkReadable(kernelPath, what: "kernel")
        if let initrdPath { try Self.checkReadable(initrdPath, what: "initrd") }
        guard commandLine.utf8.count <= Self.maximumCommandLineLength else {
            throw .commandLineTooLong(commandLine.utf8.count)
        }
        guard !commandLine.utf8.contains(0) else { throw .commandLineHasNUL }
    }

    private static func checkReadable(_ path: String, what: String) throws(MachineConfigurationError) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw .missingFile(what: what, path: path)
        }
        guard !isDirectory.boolValue, FileManager.default.isReadableFile(atPath: path) else {
            throw .unreadableFile(what: what, path: path)
        }
    }
}

public enum MachineConfigurationError: Error, Equatable, CustomStringConvertible {
    case badMemorySize(String)
    case memorySizeOutOfRange(UInt64)
    case memorySizeNotPageAligned(UInt64)
    case cpuCountOutOfRange(Int)
    case missingFile(what: String, path: String)
    case unreadableFile(what: String, path: String)
    case commandLineTooLong(Int)
    case commandLineHasNUL

    public var description: String {
        switch self {
        case .badMemorySize(let text):
            return "memory size \"\(text)\" is not a size: write a number with a K, M, G or T suffix, such as 512M or 2G (a bare number is MiB)"
        case .memorySizeOutOfRange(let size):
            return "memory size \(size) bytes is out of range: give between \(MachineConfiguration.minimumMemorySize >> 20) MiB and \(MachineConfiguration.maximumMemorySize >> 30) GiB"
        case .memorySizeNotPageAligned(let size):
            return "memory size \(size) bytes is not a multiple of 4 KiB pages: round it, for instance to \(size & ~4095) bytes"
        case .cpuCountOutOfRange(let count):
            return "\(count) vCPUs is out of range: give between 1 and \(MachineConfiguration.maximumCPUCount)"
        case .missingFile(let what, let path):
            return "the \(what) \(path) does not exist: check the path"
                + (what == "kernel" ? " (Debian's cloud kernel is /boot/vmlinuz-*-cloud-amd64, from apt's linux-image-cloud-amd64)" : "")
                + (what == "initrd" ? " (scripts/build-initramfs.sh builds one from busybox)" : "")
        case .unreadableFile(let what, let path):
            return "the \(what) \(path) is a directory or cannot be read: give a readable file (check its permissions)"
        case .commandLineTooLong(let length):
            return "the kernel command line is \(length) bytes: the boot protocol takes at most \(MachineConfiguration.maximumCommandLineLength); shorten it"
        case .commandLineHasNUL:
            return "the kernel command line contains a NUL byte, which would end it early: remove it"
        }
    }
}
