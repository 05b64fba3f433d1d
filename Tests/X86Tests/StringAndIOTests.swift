import Testing
@testable import X86

@Suite("X86 string instructions")
struct StringTests {
    @Test func repMovsbCopiesAndAdvances() {
        // mov si, 0x2000; mov di, 0x3000; mov cx, 5; rep movsb; hlt
        let m = Machine(code: [0xBE, 0x00, 0x20, 0xBF, 0x00, 0x30, 0xB9, 0x05, 0x00, 0xF3, 0xA4, hlt])
        m.write([1, 2, 3, 4, 5, 6], at: 0x2000)
        #expect(m.run() == .halt)
        #expect((0..<6).map { m.load8(0x3000 + UInt64($0)) } == [1, 2, 3, 4, 5, 0])
        #expect(m[.rsi] == 0x2005)
        #expect(m[.rdi] == 0x3005)
        #expect(m[.rcx] == 0)
    }

    @Test func repStoswBackwardsWithDF() {
        // std; mov di, 0x3004; mov cx, 3; mov ax, 0xABCD; rep stosw; hlt
        let m = Machine(code: [0xFD, 0xBF, 0x04, 0x30, 0xB9, 0x03, 0x00, 0xB8, 0xCD, 0xAB, 0xF3, 0xAB, hlt])
        #expect(m.run() == .halt)
        #expect(m.load64(0x3000) == 0xABCD_ABCD_ABCD)
        #expect(m[.rdi] == 0x2FFE)
    }

    @Test func repWithZeroCountDoesNothing() {
        let m = Machine(code: [0xF3, 0xA4, hlt])
        m[.rsi] = 0x2000
        #expect(m.run() == .halt)
        #expect(m[.rsi] == 0x2000)
    }

    @Test func lodsLoadsAccumulator() {
        let m = Machine(code: [0xBE, 0x00, 0x20, 0xAD, hlt])
        m.write([0x34, 0x12], at: 0x2000)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x1234)
        #expect(m[.rsi] == 0x2002)
    }

    @Test func repeCmpsbStopsAtFirstDifference() {
        // mov si, 0x2000; mov di, 0x3000; mov cx, 8; repe cmpsb
        let m = Machine(code: [0xBE, 0x00, 0x20, 0xBF, 0x00, 0x30, 0xB9, 0x08, 0x00, 0xF3, 0xA6, hlt])
        m.write([1, 2, 3, 9], at: 0x2000)
        m.write([1, 2, 3, 4], at: 0x3000)
        #expect(m.run() == .halt)
        #expect(m[.rcx] == 4)
        #expect(m[.rsi] == 0x2004)
        #expect(m.flags & flags("ZC") == 0)  // 9 - 4: not zero, no borrow
    }

    @Test func repneScasbFindsTheByte() {
        // mov di, 0x3000; mov al, 0x42; mov cx, 0x10; repne scasb
        let m = Machine(code: [0xBF, 0x00, 0x30, 0xB0, 0x42, 0xB9, 0x10, 0x00, 0xF2, 0xAE, hlt])
        m.write([0, 0, 0x42, 0], at: 0x3000)
        #expect(m.run() == .halt)
        #expect(m[.rdi] == 0x3003)
        #expect(m[.rcx] == 0x0D)
        #expect(m.flags & flags("Z") == flags("Z"))
    }

    @Test func longRepRestartsButCompletes() {
        // rep stosb of 10000 bytes at 0x20000 (ES = 0x2000) spans several chunks
        let m = Machine(code: [0xF3, 0xAA, hlt])
        m.cpu.state[.es] = .realMode(selector: 0x2000)
        m[.rcx] = 10000
        m[.rax] = 0x5A
        #expect(m.run() == .halt)
        #expect(m[.rcx] == 0)
        #expect(m.load8(0x20000 + 9999) == 0x5A)
        #expect(m.load8(0x20000 + 10000) == 0)
    }
}

@Suite("X86 port I/O and MMIO exits")
struct ExitTests {
    @Test func outReportsPortSizeAndData() {
        let m = Machine(code: [0xB0, 0x41, 0xE6, 0x80, 0xBA, 0xF8, 0x03, 0x66, 0xEF, hlt])
        m[.rax] = 0
        #expect(m.run() == .io(PortIOExit(port: 0x80, size: 1, isWrite: true, data: 0x41)))
        #expect(m.cpu.state.rip == 0x1004)
        m[.rax] = 0xDEAD_BEEF
        #expect(m.run() == .io(PortIOExit(port: 0x3F8, size: 4, isWrite: true, data: 0xDEAD_BEEF)))
        #expect(m.run() == .halt)
    }

    @Test func inWaitsForTheHostAnswer() {
        let m = Machine(code: [0xE5, 0x60, 0x89, 0xC3, hlt])  // in ax, 0x60; mov bx, ax
        m[.rax] = 0xFFFF_0000
        #expect(m.run() == .io(PortIOExit(port: 0x60, size: 2, isWrite: false, data: 0)))
        m.cpu.completeInput(0x1234)
        #expect(m.run() == .halt)
        #expect(m[.rbx] == 0x1234)
        #expect(m[.rax] == 0xFFFF_1234)
    }

    /// Above IOPL the TSS's I/O bitmap decides: here it begins past the TSS's limit.
    @Test func ioAtCPL3WithIOPL0AndNoBitmapFaults() {
        let m = Machine(.protected32, code: [0xE6, 0x80])
        m.cpu.state[.cs].attributes |= 0x60
        m.cpu.state.tr.limit = 0x67
        m.write([0x68, 0x00], at: 0x66)
        #expect(m.run() == .exception(vector: 13, errorCode: 0))
    }

    @Test func readOutsideRAMIsAnMMIOExitThatRestarts() {
        // 32-bit: mov eax, [0xFEE00030]; hlt
        let m = Machine(.protected32, code: [0xA1, 0x30, 0x00, 0xE0, 0xFE, hlt])
        #expect(m.run() == .mmio(MMIOExit(address: 0xFEE0_0030, size: 4, isWrite: false, data: 0)))
        #expect(m.cpu.state.rip == 0x1000)
        m.cpu.completeMMIORead(address: 0xFEE0_0030, value: 0x50014)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x50014)
    }

    @Test func writeOutsideRAMIsAnMMIOExitAfterTheInstruction() {
        // mov dword [0xFEC00000], 0x12 (C7 05 00 00 C0 FE 12 00 00 00); hlt
        let m = Machine(.protected32, code: [0xC7, 0x05, 0x00, 0x00, 0xC0, 0xFE, 0x12, 0x00, 0x00, 0x00, hlt])
        #expect(m.run() == .mmio(MMIOExit(address: 0xFEC0_0000, size: 4, isWrite: true, data: 0x12)))
        #expect(m.cpu.state.rip == 0x100A)
        #expect(m.run() == .halt)
    }

    @Test func accessStraddlingTheEndOfRAMIsMMIONotAHostAccess() {
        let m = Machine(.protected32, code: [0x8B, 0x05, 0xFE, 0xFF, 0x0F, 0x00, hlt])  // mov eax, [0xFFFFE]
        // The RAM half is read; the half above RAM is the MMIO access.
        #expect(m.run() == .mmio(MMIOExit(address: 0x10_0000, size: 2, isWrite: false, data: 0)))
        m.cpu.completeMMIORead(address: 0x10_0000, value: 0xBBAA)
        m.write([0x22, 0x11], at: 0xF_FFFE)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0xBBAA_1122)
    }

    @Test func codeFetchOutsideRAMIsAnEmulationFailure() {
        let m = Machine(.protected32, code: [])
        m.cpu.state.rip = 0x1000_0000
        #expect(m.run() == .emulationFailure(address: 0x1000_0000))
    }
}

@Suite("X86 long-mode paging")
struct PagingTests {
    @Test func notPresentPageFaultsWithAddressInCR2() {
        let m = Machine(.long64, code: [0x8B, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, hlt])  // mov eax, [0x5000]
        m.store64(Machine.pageTable + 5 * 8, 0)
        #expect(m.run() == .exception(vector: 14, errorCode: 0))
        #expect(m.cpu.state.cr2 == 0x5000)
    }

    @Test func writeToReadOnlyPageFaultsWithWPSet() {
        let m = Machine(.long64, code: [0x89, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, hlt])  // mov [0x5000], eax
        m.store64(Machine.pageTable + 5 * 8, 0x5000 | 5)  // present, user, read-only
        m.cpu.state.cr0 |= ControlBits.cr0WP
        #expect(m.run() == .exception(vector: 14, errorCode: 3))
    }

    @Test func writeToReadOnlyPageAtCPL0WithoutWPSucceedsAndSetsDirty() {
        let m = Machine(.long64, code: [0x89, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, hlt])
        m.store64(Machine.pageTable + 5 * 8, 0x5000 | 5)
        #expect(m.run() == .halt)
        #expect(m.load64(Machine.pageTable + 5 * 8) & 0x60 == 0x60)
    }

    @Test func userAccessToSupervisorPageFaults() {
        let m = Machine(.long64, code: [0x8B, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, hlt])
        m.store64(Machine.pageTable + 5 * 8, 0x5000 | 3)  // supervisor
        m.cpu.state[.cs].attributes |= 0x60
        #expect(m.run() == .exception(vector: 14, errorCode: 5))
    }

    @Test func fetchFromNoExecutePageFaults() {
        let m = Machine(.long64, code: [0xE9, 0xFB, 0x3F, 0x00, 0x00])  // jmp 0x5000
        m.store64(Machine.pageTable + 5 * 8, 0x5000 | 7 | (1 << 63))
        #expect(m.run() == .exception(vector: 14, errorCode: 0x11))
        #expect(m.cpu.state.rip == 0x5000)
    }

    @Test func pagesMapToOtherFrames() {
        let m = Machine(.long64, code: [0x8B, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, hlt])
        m.store64(Machine.pageTable + 5 * 8, 0x9000 | 3)
        m.store64(0x9000, 0xCAFE)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0xCAFE)
    }

    @Test func tlbKeepsATranslationUntilCR3IsWrittenOrThePageInvalidated() {
        let m = Machine(.long64, code: [0x8B, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, hlt])  // mov eax, [0x5000]
        m.store64(0x5000, 1)
        m.store64(0x9000, 2)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 1)
        // Remap without telling the CPU: the cached translation stays, as on hardware.
        m.store64(Machine.pageTable + 5 * 8, 0x9000 | 7)
        m.cpu.state.rip = 0x1000
        #expect(m.run() == .halt)
        #expect(m[.rax] == 1)
        m.cpu.invalidatePage(0x5000)
        m.cpu.state.rip = 0x1000
        #expect(m.run() == .halt)
        #expect(m[.rax] == 2)
        m.store64(Machine.pageTable + 5 * 8, 0x5000 | 7)
        m.cpu.state.cr3 = m.cpu.state.cr3
        m.cpu.state.rip = 0x1000
        #expect(m.run() == .halt)
        #expect(m[.rax] == 1)
    }

    @Test func tlbHitStillChecksWritePermission() {
        // mov eax, [0x5000]; mov [0x5000], eax: the read fills the TLB, the write must still fault
        let m = Machine(.long64, code: [0x8B, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, 0x89, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, hlt])
        m.store64(Machine.pageTable + 5 * 8, 0x5000 | 5)
        m.cpu.state[.cs].attributes |= 0x60  // CPL 3
        #expect(m.run() == .exception(vector: 14, errorCode: 7))
        #expect(m.cpu.state.rip == 0x1007)
    }

    @Test func firstWriteThroughACachedCleanPageSetsDirty() {
        let m = Machine(.long64, code: [0x8B, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, 0x89, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, hlt])
        #expect(m.run() == .halt)
        #expect(m.load64(Machine.pageTable + 5 * 8) & 0x40 == 0x40)
    }

    @Test func nonCanonicalAddressFaultsWithGP() {
        let m = Machine(.long64, code: [0x8B, 0x03, hlt])  // mov eax, [rbx]
        m[.rbx] = 0x0000_8000_0000_0000
        #expect(m.run() == .exception(vector: 13, errorCode: 0))
    }

    @Test func largePageMapping() {
        let m = Machine(.long64, code: [0x8B, 0x03, hlt])  // mov eax, [rbx]
        m.store64(0x12000 + 8, 0x0 | 0x83)  // PD[1]: 2 MiB page at physical 0
        m[.rbx] = 0x20_0000 + 0x2000
        m.store64(0x2000, 0x77)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x77)
    }
}
