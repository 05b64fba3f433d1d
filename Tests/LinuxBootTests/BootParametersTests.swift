import GuestMemory
import Testing
@testable import LinuxBoot

@Suite struct CommandLineTests {
    @Test func parametersAreJoinedWithSpacesAndNULTerminated() throws {
        var line = try KernelCommandLine("console=ttyS0", maximumLength: 2047)
        try line.append("panic=-1")
        #expect(line.description == "console=ttyS0 panic=-1")
        #expect(line.bytes == Array("console=ttyS0 panic=-1".utf8) + [0])
    }

    @Test func commandLineLongerThanCmdlineSizeIsAnError() throws {
        var line = try KernelCommandLine("a=1", maximumLength: 8)
        #expect(throws: LinuxBootError.commandLineTooLong(length: 9, maximum: 8)) {
            try line.append("b=222")
        }
        #expect(line.description == "a=1")
    }

    @Test func installedKernelRefusesCommandLineOverItsCmdlineSize() throws {
        let memory = try GuestMemoryRegion(size: machineMemory)
        let limit = Int(try BzImage(bytes: InstalledKernel.bytes()).header.cmdlineSize)
        let configuration = LinuxBootConfiguration(kernel: try InstalledKernel.bytes(),
                                                   commandLine: String(repeating: "x", count: limit + 1),
                                                   memorySize: UInt64(machineMemory))
        #expect(throws: LinuxBootError.commandLineTooLong(length: limit + 1, maximum: limit)) {
            try LinuxBoot.prepare(configuration, in: memory)
        }
    }

    @Test func nulInCommandLineIsAnError() {
        #expect(throws: LinuxBootError.commandLineHasNUL) {
            try KernelCommandLine("a\u{0}b", maximumLength: 100)
        }
    }
}

@Suite struct E820Tests {
    @Test func ramAvoidsLegacyHoleAndDevicesAreReserved() {
        let entries = MemoryMap(ramSize: 128 << 20).entries
        #expect(entries == [
            E820Entry(address: 0, size: 0x9fc00, kind: .ram),
            E820Entry(address: 0x9fc00, size: 0x400, kind: .reserved),
            E820Entry(address: 0xe0000, size: 0x20000, kind: .reserved),
            E820Entry(address: 0x10_0000, size: (128 << 20) - 0x10_0000, kind: .ram),
            E820Entry(address: 0xfec0_0000, size: 0x1000, kind: .reserved),
            E820Entry(address: 0xfee0_0000, size: 0x1000, kind: .reserved),
        ])
    }

    @Test func ramPastThreeGiBContinuesAboveFourGiB() {
        let entries = MemoryMap(ramSize: 4 << 30).entries
        #expect(entries.contains(E820Entry(address: 0x10_0000, size: 0xc000_0000 - 0x10_0000, kind: .ram)))
        #expect(entries.last == E820Entry(address: 1 << 32, size: 1 << 30, kind: .ram))
        let ram = entries.filter { $0.kind == .ram }.reduce(0) { $0 + $1.size }
        #expect(ram == (4 << 30) - 0x10_0000 + 0x9fc00)
    }
}

@Suite struct InitrdPlacementTests {
    let kernel = LoadedKernel(loadAddress: 0x10_0000, entryPoint: 0x10_0200, end: 0x400_0123, setupHeader: [],
                              commandLineLimit: 2047, initrdAddressMax: 0x7fff_ffff)

    @Test func initrdGoesAtTopOfRAMPageAligned() throws {
        let address = try InitrdPlacement.address(size: 0x12345, kernel: kernel, lowRAMEnd: 128 << 20)
        #expect(address % 4096 == 0)
        #expect(address + 0x12345 <= 128 << 20)
        #expect(address > (128 << 20) - 0x12345 - 4096)
    }

    @Test func initrdStaysBelowInitrdAddrMax() throws {
        var kernel = kernel
        kernel.initrdAddressMax = 0x37ff_ffff
        let address = try InitrdPlacement.address(size: 0x10_0000, kernel: kernel, lowRAMEnd: 2 << 30)
        #expect(address == 0x3800_0000 - 0x10_0000)
    }

    @Test func initrdThatWouldOverlapKernelDoesNotFit() {
        #expect(throws: LinuxBootError.doesNotFit(needed: 0x400_1000 + 0x400_0000, available: 0x600_0000,
                                                  what: "the kernel and a 67108864-byte initrd (below the initrd limit)")) {
            try InitrdPlacement.address(size: 0x400_0000, kernel: kernel, lowRAMEnd: 0x600_0000)
        }
    }
}

@Suite struct ZeroPageTests {
    @Test func zeroPageCarriesHeaderE820CommandLineInitrdAndRSDP() throws {
        let memory = try GuestMemoryRegion(size: machineMemory)
        let bytes = try InstalledKernel.bytes()
        let initrd = [UInt8](repeating: 0x5a, count: 300_000)
        let configuration = LinuxBootConfiguration(kernel: bytes, initrd: initrd, commandLine: "console=ttyS0 quiet",
                                                   cpuCount: 2, memorySize: UInt64(machineMemory))
        let boot = try LinuxBoot.prepare(configuration, in: memory)
        let page = try memory.read(at: 0x7000, count: 4096)

        let headerEnd = 0x202 + Int(bytes[0x201])
        #expect(page[0x202..<0x206] == bytes[0x202..<0x206])
        #expect(page[0x1f1] == bytes[0x1f1])
        #expect(page[0x230..<headerEnd] == bytes[0x230..<headerEnd])
        #expect(page[0x210] == 0xff)
        #expect(littleEndian(UInt32.self, page, at: 0x228) == 0x20000)
        #expect(littleEndian(UInt32.self, page, at: 0x0c8) == 0)
        #expect(try memory.read(at: 0x20000, count: 20) == Array("console=ttyS0 quiet".utf8) + [0])

        let initrdAddress = try #require(boot.initrdAddress)
        #expect(littleEndian(UInt32.self, page, at: 0x218) == UInt32(initrdAddress))
        #expect(littleEndian(UInt32.self, page, at: 0x21c) == 300_000)
        #expect(initrdAddress % 4096 == 0)
        #expect(initrdAddress >= boot.kernel.end)
        #expect(initrdAddress + 300_000 <= UInt64(machineMemory))
        #expect(try memory.read(at: Int(initrdAddress), count: 300_000) == initrd)

        #expect(littleEndian(UInt64.self, page, at: 0x070) == 0xe0000)
        let entries = Int(page[0x1e8])
        #expect(entries == 6)
        let decoded = (0..<entries).map { index in
            let base = 0x2d0 + index * 20
            return E820Entry(address: littleEndian(UInt64.self, page, at: base),
                             size: littleEndian(UInt64.self, page, at: base + 8),
                             kind: E820Entry.Kind(rawValue: littleEndian(UInt32.self, page, at: base + 16)) ?? .unusable)
        }
        #expect(decoded == MemoryMap(ramSize: UInt64(machineMemory)).entries)
    }

    @Test func kernelAndInitrdTooBigSaysHowMuchMemoryIsNeeded() throws {
        let memory = try GuestMemoryRegion(size: 80 << 20)
        let configuration = LinuxBootConfiguration(kernel: try InstalledKernel.bytes(),
                                                   initrd: [UInt8](repeating: 0, count: 64 << 20),
                                                   memorySize: 80 << 20)
        do {
            _ = try LinuxBoot.prepare(configuration, in: memory)
            Issue.record("an 80 MiB machine took the kernel and a 64 MiB initrd")
        } catch let error {
            guard case .doesNotFit(let needed, let available, _) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(needed > 80 << 20)
            #expect(available == 80 << 20)
            #expect(error.description.contains("give the machine more memory"))
        }
    }
}

@Suite struct BootStateTests {
    @Test func bootStateIsLongModeWithFlatSegmentsAndIdentityMap() throws {
        let memory = try GuestMemoryRegion(size: 16 << 20)
        let state = try BootPageTables.write(into: memory, entryPoint: 0x10_0200, zeroPage: 0x7000)
        #expect(state.rip == 0x10_0200)
        #expect(state.rsi == 0x7000)
        #expect(state.cr0 & 0x8000_0001 == 0x8000_0001)
        #expect(state.cr4 & 0x20 != 0)
        #expect(state.efer & 0x500 == 0x500)
        #expect(state.code.selector == 0x10 && state.code.l && !state.code.db)
        #expect(state.data.selector == 0x18 && state.data.db)

        let gdt = try memory.read(at: Int(state.gdtBase), count: Int(state.gdtLimit) + 1)
        #expect(littleEndian(UInt64.self, gdt, at: 0x10) == 0x00af_9b00_0000_ffff)
        #expect(littleEndian(UInt64.self, gdt, at: 0x18) == 0x00cf_9300_0000_ffff)

        // Walk the tables for a few addresses: each maps to itself with a 2 MiB page.
        for address: UInt64 in [0, 0x10_0200, 0x3fff_ffff, 0xfee0_0000] {
            let pml4e = try memory.load(UInt64.self, at: Int(state.cr3) + Int(address >> 39 & 0x1ff) * 8)
            #expect(pml4e & 1 == 1)
            let pdpte = try memory.load(UInt64.self, at: Int(pml4e & ~0xfff) + Int(address >> 30 & 0x1ff) * 8)
            #expect(pdpte & 1 == 1)
            let pde = try memory.load(UInt64.self, at: Int(pdpte & ~0xfff) + Int(address >> 21 & 0x1ff) * 8)
            #expect(pde & 0x83 == 0x83)
            #expect((pde & ~0x1f_ffff & 0xf_ffff_ffff_f000) | (address & 0x1f_ffff) == address)
        }
    }
}
