import GuestMemory
import Testing
@testable import LinuxBoot

@Suite struct BzImageTests {
    @Test func installedKernelHeaderHas64BitRelocatableEntry() throws {
        let image = try BzImage(bytes: InstalledKernel.bytes())
        #expect(image.header.version >= 0x020c)
        #expect(image.header.xloadflags & SetupHeader.kernel64 != 0)
        #expect(image.header.relocatableKernel)
        #expect(image.header.loadflags & SetupHeader.loadedHigh != 0)
        #expect(image.header.kernelAlignment == 0x20_0000)
        #expect(image.header.prefAddress == 0x100_0000)
        #expect(image.header.cmdlineSize >= 255)
        #expect(image.header.initSize > UInt32(image.protectedModeKernel.count))
        #expect(image.header.bootFlag == 0xaa55)
        // syssize counts the protected-mode part in 16-byte paragraphs; a
        // signed Debian kernel carries its signature after that part.
        #expect(Int(image.header.syssize) * 16 <= image.protectedModeKernel.count)
        #expect(Int(image.header.syssize) * 16 > image.protectedModeKernel.count - 4096)
    }

    @Test func loadingCopiesProtectedModePartToOneMiB() throws {
        let bytes = try InstalledKernel.bytes()
        let image = try BzImage(bytes: bytes)
        let memory = try GuestMemoryRegion(size: machineMemory)
        let kernel = try image.load(into: memory)
        #expect(kernel.loadAddress == 0x10_0000)
        #expect(kernel.entryPoint == 0x10_0200)
        let offset = (Int(bytes[0x1f1]) + 1) * 512
        let loaded = try memory.read(at: 0x10_0000, count: bytes.count - offset)
        #expect(loaded == Array(bytes[offset...]))
        // The decompressor runs at pref_address (16 MiB) and uses init_size bytes there.
        #expect(kernel.end == 0x100_0000 + UInt64(image.header.initSize))
    }

    @Test func kernelTooBigForMemorySaysHowMuchIsNeeded() throws {
        let image = try BzImage(bytes: InstalledKernel.bytes())
        let memory = try GuestMemoryRegion(size: 16 << 20)
        let needed = 0x100_0000 + UInt64(image.header.initSize)
        #expect(throws: LinuxBootError.doesNotFit(needed: needed, available: 16 << 20,
                                                  what: "the kernel (loaded at 0x100000 with its init_size)")) {
            try image.load(into: memory)
        }
        let message = LinuxBootError.doesNotFit(needed: needed, available: 16 << 20, what: "x").description
        #expect(message.contains("\(needed.mebibytesRoundedUp) MiB"))
    }

    @Test func randomBytesAreNotAKernel() {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<8192).map { _ in UInt8.random(in: 0...255, using: &generator) }
        #expect(throws: LinuxBootError.notAKernel("no \"HdrS\" magic at offset 0x202")) {
            try BzImage(bytes: bytes)
        }
    }

    @Test func shortFileIsNotAKernel() {
        #expect(throws: LinuxBootError.notAKernel("16 bytes is too short to hold a setup header (0x270)")) {
            try BzImage(bytes: [UInt8](repeating: 0, count: 16))
        }
    }

    @Test func oldProtocolIsRejectedWithVersions() throws {
        var bytes = try InstalledKernel.bytes()
        bytes.setLE(UInt16(0x0206), at: 0x206)
        #expect(throws: LinuxBootError.protocolTooOld(version: 0x0206, minimum: 0x020c)) {
            try BzImage(bytes: bytes)
        }
        #expect(LinuxBootError.protocolTooOld(version: 0x0206, minimum: 0x020c).description.contains("2.6"))
    }

    @Test func kernelWithout64BitEntryIsRejected() throws {
        var bytes = try InstalledKernel.bytes()
        bytes[0x236] &= ~0x01
        #expect(throws: LinuxBootError.not64Bit("XLF_KERNEL_64 is clear in xloadflags (0x7e)")) {
            try BzImage(bytes: bytes)
        }
    }
}

@Suite struct ELFKernelTests {
    @Test func segmentsLoadAtPhysicalAddressesWithBSSZeroed() throws {
        let memory = try GuestMemoryRegion(size: 4 << 20)
        try memory.fill(0xcc, at: 0x20_0000, count: 0x2000)
        let elf = makeELF(entry: 0x20_0040, segments: [(0x20_0000, [1, 2, 3, 4], 0x1000), (0x30_0000, [9], 1)])
        let kernel = try KernelImage.load(elf, into: memory)
        #expect(kernel.entryPoint == 0x20_0040)
        #expect(kernel.loadAddress == 0x20_0000)
        #expect(kernel.end == 0x30_0001)
        #expect(try memory.read(at: 0x20_0000, count: 6) == [1, 2, 3, 4, 0, 0])
        #expect(try memory.load(UInt8.self, at: 0x20_0fff) == 0)
        #expect(try memory.load(UInt8.self, at: 0x20_1000) == 0xcc)
        #expect(try memory.load(UInt8.self, at: 0x30_0000) == 9)
    }

    @Test func elfForAnotherMachineIsRejected() {
        let elf = makeELF(machine: 183, segments: [(0x20_0000, [1], 1)])  // EM_AARCH64
        #expect(throws: LinuxBootError.unsupportedELF("e_machine is 183, not EM_X86_64 (62)")) {
            try ELFKernel(bytes: elf)
        }
    }

    @Test func thirtyTwoBitELFIsRejected() {
        #expect(throws: LinuxBootError.unsupportedELF("ELF class 1 is not ELFCLASS64")) {
            try ELFKernel(bytes: makeELF(class: 1))
        }
    }

    @Test func sharedObjectIsRejected() {
        #expect(throws: LinuxBootError.unsupportedELF("e_type is 3, not ET_EXEC (2)")) {
            try ELFKernel(bytes: makeELF(type: 3, segments: [(0, [1], 1)]))
        }
    }

    @Test func elfWithoutLoadSegmentIsRejected() {
        #expect(throws: LinuxBootError.unsupportedELF("no PT_LOAD segment")) {
            try ELFKernel(bytes: makeELF())
        }
    }

    @Test func elfLargerThanMemoryIsRejected() throws {
        let memory = try GuestMemoryRegion(size: 1 << 20)
        let elf = makeELF(segments: [(0x10_0000, [1], 0x1000)])
        #expect(throws: LinuxBootError.doesNotFit(needed: 0x10_1000, available: 1 << 20, what: "the ELF kernel's segments")) {
            try ELFKernel(bytes: elf).load(into: memory)
        }
    }
}
