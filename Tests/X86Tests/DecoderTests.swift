import Testing
@testable import X86

@Suite("X86 decoder")
struct DecoderTests {
    @Test func ripRelativeCountsTheImmediateInTheInstructionLength() {
        // mov dword [rip + 0x10], 0x11223344 (C7 05 10 00 00 00 44 33 22 11): 10 bytes, target 0x1000 + 10 + 0x10
        let m = Machine(.long64, code: [0xC7, 0x05, 0x10, 0x00, 0x00, 0x00, 0x44, 0x33, 0x22, 0x11, hlt])
        #expect(m.run() == .halt)
        #expect(m.load64(0x101A) & 0xFFFF_FFFF == 0x1122_3344)
    }

    @Test func addressSizePrefixInLongModeWrapsAt4GiB() {
        // lea rax, [ebx + 0x10] (67 48 8D 43 10) with EBX = 0xFFFFFFF8
        let m = Machine(.long64, code: [0x67, 0x48, 0x8D, 0x43, 0x10, hlt])
        m[.rbx] = 0xFFFF_FFF8
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x8)
    }

    @Test func fsOverrideAddsTheBaseInLongModeButDSDoesNot() {
        // mov eax, fs:[rbx] (64 8B 03); mov ecx, ds:[rbx] (3E 8B 0B)
        let m = Machine(.long64, code: [0x64, 0x8B, 0x03, 0x3E, 0x8B, 0x0B, hlt])
        m.cpu.state[.fs].base = 0x3000
        m.cpu.state[.ds].base = 0x5000  // ignored in 64-bit mode
        m[.rbx] = 0x10
        m.store64(0x3010, 0xAAAA)
        m.store64(0x0010, 0xBBBB)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0xAAAA)
        #expect(m[.rcx] == 0xBBBB)
    }

    @Test func rexBeforeALegacyPrefixIsIgnored() {
        // 48 66 B8 34 12: REX.W then 66: the REX is dropped, so this is mov ax, 0x1234
        let m = Machine(.long64, code: [0x48, 0x66, 0xB8, 0x34, 0x12, hlt])
        m[.rax] = 0xFFFF_FFFF_FFFF_FFFF
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0xFFFF_FFFF_FFFF_1234)
    }

    @Test func sibWithoutBaseAndWithoutIndex() {
        // mov eax, [rcx*8 + 0x2000] (8B 04 CD 00 20 00 00); mov edx, [0x2008] via SIB 25 (8B 14 25 08 20 00 00)
        let m = Machine(.long64, code: [0x8B, 0x04, 0xCD, 0x00, 0x20, 0x00, 0x00, 0x8B, 0x14, 0x25, 0x08, 0x20, 0x00, 0x00, hlt])
        m[.rcx] = 1
        m.store64(0x2008, 0x77)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x77)
        #expect(m[.rdx] == 0x77)
    }

    @Test func r12AndR13NeedSIBAndDisplacementLikeRSPAndRBP() {
        // mov eax, [r12] (41 8B 04 24); mov ecx, [r13 + 0] (41 8B 4D 00)
        let m = Machine(.long64, code: [0x41, 0x8B, 0x04, 0x24, 0x41, 0x8B, 0x4D, 0x00, hlt])
        m[.r12] = 0x2000
        m[.r13] = 0x2008
        m.store64(0x2000, 0x12)
        m.store64(0x2008, 0x34)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x12)
        #expect(m[.rcx] == 0x34)
    }

    @Test func sixteenBitDirectAddressAndBPDefaultsToSS() {
        // mov ax, [0x0040] (A1 40 00 is moffs; use 8B 06 40 00); mov cx, [bp] (8B 4E 00)
        let m = Machine(code: [0x8B, 0x06, 0x40, 0x00, 0x8B, 0x4E, 0x00, hlt])
        m.cpu.state[.ds] = .realMode(selector: 0x200)
        m.cpu.state[.ss] = .realMode(selector: 0x300)
        m.write([0x11, 0x22], at: 0x2040)
        m.write([0x33, 0x44], at: 0x3000)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x2211)
        #expect(m[.rcx] == 0x4433)
    }

    @Test func thirtyTwoBitAddressingInRealModeWithThe67Prefix() {
        // mov ax, [eax + ecx*2] (67 8B 04 48)
        let m = Machine(code: [0x67, 0x8B, 0x04, 0x48, hlt])
        m[.rax] = 0x2000
        m[.rcx] = 4
        m.write([0xCD, 0xAB], at: 0x2008)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0xABCD)
    }

    @Test func instructionPointerWrapsAt64KiBInRealMode() {
        // At CS:FFFF a one-byte NOP; the next instruction is at CS:0000.
        let m = Machine(code: [])
        m.cpu.state[.cs] = .realMode(selector: 0x100, code: true)
        m.cpu.state.rip = 0xFFFF
        m.write([0x90], at: 0x1000 + 0xFFFF)
        m.write([hlt], at: 0x1000)
        #expect(m.run() == .halt)
        #expect(m.cpu.state.rip == 1)
    }

    @Test func instructionFetchedAcrossAPageBoundary() {
        // mov eax, 0x11223344 (B8 44 33 22 11) starting 2 bytes before a page end
        let m = Machine(.long64, code: [])
        m.cpu.state.rip = 0x1FFE
        m.write([0xB8, 0x44, 0x33, 0x22, 0x11, hlt], at: 0x1FFE)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x1122_3344)
    }

    /// The fetch reads ahead into the next page; without the decoded cache
    /// its failed walk there used to leave CR2 set with no #PF taken.
    @Test func readAheadIntoANotPresentPageLeavesCR2() {
        let m = Machine(.long64, code: [])
        m.cpu.decodedCacheEnabled = false
        m.store64(Machine.pageTable + 2 * 8, 0)
        m.cpu.state.cr2 = 0x1234
        m.cpu.state.rip = 0x1FFC
        m.write([0x90, 0x90, 0x90, 0xB8], at: 0x1FFC)  // three NOPs; mov eax, imm32 across into page 0x2000
        #expect(m.cpu.run(maxInstructions: 3) == .instructionLimit)
        #expect(m.cpu.state.cr2 == 0x1234)
        #expect(m.cpu.run(maxInstructions: 1) == .exception(vector: 14, errorCode: 0x10))
        #expect(m.cpu.state.cr2 == 0x2000)
    }

    @Test func fetchFromANotPresentSecondPageFaultsOnlyWhenNeeded() {
        let m = Machine(.long64, code: [])
        m.store64(Machine.pageTable + 2 * 8, 0)  // page 0x2000 not present
        m.cpu.state.rip = 0x1FFE
        m.write([0x90, 0xB8], at: 0x1FFE)  // nop (fits); mov eax, imm32 (needs the next page)
        #expect(m.run(maxInstructions: 1) == .instructionLimit)
        #expect(m.cpu.state.cr2 == 0, "the NOP's fetch did not need the next page")
        #expect(m.run() == .exception(vector: 14, errorCode: 0x10))
        #expect(m.cpu.state.cr2 == 0x2000)
        #expect(m.cpu.state.rip == 0x1FFF)
    }
}
