/// Prepares guest memory for the 64-bit Linux boot protocol: the kernel,
/// the initrd, the command line, the zero page with the e820 map, the ACPI
/// tables, and the GDT and page tables the entry state points at. Each
/// piece is its own type; this only places them and checks they fit.
public struct LinuxBootConfiguration: Sendable {
    public var kernel: [UInt8]
    public var initrd: [UInt8]?
    public var commandLine: String
    public var cpuCount: Int
    public var memoryMap: MemoryMap
    public var acpi: ACPIConfiguration

    public init(kernel: [UInt8], initrd: [UInt8]? = nil, commandLine: String = "", cpuCount: Int = 1, memorySize: UInt64) {
        self.kernel = kernel
        self.initrd = initrd
        self.commandLine = commandLine
        self.cpuCount = cpuCount
        self.memoryMap = MemoryMap(ramSize: memorySize)
        self.acpi = ACPIConfiguration(cpuCount: cpuCount)
    }
}

/// Where each piece of the boot goes in low memory.
public enum LinuxBootLayout {
    public static let zeroPageAddress: UInt64 = 0x7000
    /// Up to the EBDA, so that a long command line (2.06+ kernels take up to
    /// `cmdline_size`) still fits below 640 KiB.
    public static let commandLineAddress: UInt64 = 0x20000
    public static let commandLineEnd: UInt64 = MemoryMap.ebdaStart
}

/// The result of preparing a boot: what is where, and the vCPU state.
public struct PreparedLinuxBoot: Sendable {
    public var kernel: LoadedKernel
    public var zeroPage: ZeroPage
    public var cpuState: BootCPUState
    public var initrdAddress: UInt64?
    public var rsdpAddress: UInt64
}

public enum LinuxBoot {
    public static func prepare(_ configuration: LinuxBootConfiguration,
                               in memory: some GuestPhysicalMemory) throws(LinuxBootError) -> PreparedLinuxBoot {
        let kernel = try KernelImage.load(configuration.kernel, into: memory)
        let limit = min(kernel.commandLineLimit,
                        Int(LinuxBootLayout.commandLineEnd - LinuxBootLayout.commandLineAddress) - 1)
        let commandLine = try KernelCommandLine(configuration.commandLine, maximumLength: limit)
        try memory.put(commandLine.bytes, at: LinuxBootLayout.commandLineAddress)

        var zeroPage = ZeroPage(kernel: kernel, e820: configuration.memoryMap.entries)
        zeroPage.commandLineAddress = LinuxBootLayout.commandLineAddress
        var initrdAddress: UInt64?
        if let initrd = configuration.initrd {
            let address = try InitrdPlacement.address(size: UInt64(initrd.count), kernel: kernel,
                                                      lowRAMEnd: min(configuration.memoryMap.lowRAMEnd, memory.guestMemorySize))
            try memory.put(initrd, at: address)
            zeroPage.initrdAddress = address
            zeroPage.initrdSize = UInt64(initrd.count)
            initrdAddress = address
        }
        let tables = ACPITables(configuration.acpi)
        try tables.write(into: memory)
        zeroPage.rsdpAddress = tables.rsdpAddress
        try memory.put(zeroPage.bytes, at: LinuxBootLayout.zeroPageAddress)

        let state = try BootPageTables.write(into: memory, entryPoint: kernel.entryPoint,
                                             zeroPage: LinuxBootLayout.zeroPageAddress)
        return PreparedLinuxBoot(kernel: kernel, zeroPage: zeroPage, cpuState: state,
                                 initrdAddress: initrdAddress, rsdpAddress: tables.rsdpAddress)
    }
}
