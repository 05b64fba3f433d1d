import Testing
@testable import X86

@Suite("X86 data transfer")
struct DataTransferTests {
    @Test func movRegisterMemoryAndImmediateForms() {
        // mov ax, 0x1234; mov [0x2000], ax; mov bx, [0x2000]; mov byte [0x2002], 0x56; mov cl, [0x2002]; hlt
        let m = Machine(code: [0xB8, 0x34, 0x12, 0xA3, 0x00, 0x20, 0x8B, 0x1E, 0x00, 0x20,
                               0xC6, 0x06, 0x02, 0x20, 0x56, 0x8A, 0x0E, 0x02, 0x20, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rbx] == 0x1234)
        #expect(m[.rcx] == 0x56)
        #expect(m.load8(0x2000) == 0x34)
    }

    @Test func movMoffsLoadsAccumulator() {
        let m = Machine(code: [0xA0, 0x00, 0x30, 0x66, 0xA1, 0x01, 0x30, hlt])  // mov al, [0x3000]; mov eax, [0x3001]
        m.write([0x11, 0x22, 0x33, 0x44, 0x55], at: 0x3000)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x5544_3322)
    }

    @Test func movSixtyFourBitImmediateAndZeroExtension() {
        // mov rax, 0x1122334455667788; mov eax, eax; hlt
        let m = Machine(.long64, code: [0x48, 0xB8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x89, 0xC0, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x5566_7788)
    }

    @Test func rexByteRegistersReplaceHighBytes() {
        // mov sil, 0x7F (40 B6 7F); mov ah, 0x12 (B4 12); mov r9b, 1 (41 B1 01)
        let m = Machine(.long64, code: [0x40, 0xB6, 0x7F, 0xB4, 0x12, 0x41, 0xB1, 0x01, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rsi] == 0x7F)
        #expect(m[.rax] == 0x1200)
        #expect(m[.r9] == 1)
    }

    @Test func movzxMovsxMovsxd() {
        // movzx eax, bl (0F B6 C3); movsx ecx, bl (0F BE CB); movsxd rdx, ebx (48 63 D3)
        let m = Machine(.long64, code: [0x0F, 0xB6, 0xC3, 0x0F, 0xBE, 0xCB, 0x48, 0x63, 0xD3, hlt])
        m[.rbx] = 0x8000_0080
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x80)
        #expect(m[.rcx] == 0xFFFF_FF80)
        #expect(m[.rdx] == 0xFFFF_FFFF_8000_0080)
    }

    @Test func leaWithSIBAndRIPRelative() {
        // lea rax, [rbx + rcx*4 + 0x10] (48 8D 44 8B 10); lea rdx, [rip + 0x100] (48 8D 15 00 01 00 00)
        let m = Machine(.long64, code: [0x48, 0x8D, 0x44, 0x8B, 0x10, 0x48, 0x8D, 0x15, 0x00, 0x01, 0x00, 0x00, hlt])
        m[.rbx] = 0x1000
        m[.rcx] = 3
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x101C)
        #expect(m[.rdx] == 0x1000 + 12 + 0x100)
    }

    @Test func sixteenBitAddressingWrapsAndUsesSS() {
        // lea ax, [bx+si+0x10] (8D 40 10) with bx+si > 0xFFFF; mov dx, [bp+2] (8B 56 02)
        let m = Machine(code: [0x8D, 0x40, 0x10, 0x8B, 0x56, 0x02, hlt])
        m[.rbx] = 0xFFF8
        m[.rsi] = 0x10
        m[.rbp] = 0x4000
        m.cpu.state[.ss] = .realMode(selector: 0x100)
        m.write([0xCD, 0xAB], at: 0x1000 + 0x4002)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x0018)
        #expect(m[.rdx] == 0xABCD)
    }

    @Test func segmentRegisterMovesInRealMode() {
        // mov ax, 0x200; mov es, ax (8E C0); mov [es:0x10], al (26 A2 10 00); mov bx, es (8C C3)
        let m = Machine(code: [0xB8, 0x00, 0x02, 0x8E, 0xC0, 0x26, 0xA2, 0x10, 0x00, 0x8C, 0xC3, hlt])
        #expect(m.run() == .halt)
        #expect(m.cpu.state[.es].base == 0x2000)
        #expect(m.load8(0x2010) == 0x00)
        #expect(m[.rbx] == 0x200)
    }

    @Test func movToCSIsUndefined() {
        let m = Machine(code: [0x8E, 0xC8, hlt])
        #expect(m.run() == .exception(vector: 6, errorCode: nil))
    }

    @Test func pushPopRegisterImmediateAndMemory() {
        // push 0x1234 (68 34 12); push -2 (6A FE); pop bx; pop cx; push word [0x2000] (FF 36 00 20); pop dx
        let m = Machine(code: [0x68, 0x34, 0x12, 0x6A, 0xFE, 0x5B, 0x59, 0xFF, 0x36, 0x00, 0x20, 0x5A, hlt])
        m.write([0xEF, 0xBE], at: 0x2000)
        #expect(m.run() == .halt)
        #expect(m[.rbx] == 0xFFFE)
        #expect(m[.rcx] == 0x1234)
        #expect(m[.rdx] == 0xBEEF)
        #expect(m[.rsp] == 0x8000)
    }

    @Test func pushInLongModeIsEightBytes() {
        // push rbx; pop r12 (41 5C); push word 7 (66 6A 07)
        let m = Machine(.long64, code: [0x53, 0x41, 0x5C, 0x66, 0x6A, 0x07, hlt])
        m[.rbx] = 0xDEAD_BEEF_0000_0001
        #expect(m.run() == .halt)
        #expect(m[.r12] == 0xDEAD_BEEF_0000_0001)
        #expect(m[.rsp] == 0x8000 - 2)
    }

    @Test func popToMemoryUsesIncrementedStackPointer() {
        // push 0x55 (6A 55); pop dword [esp] (8F 04 24) in 32-bit code: writes at the new ESP
        let m = Machine(.protected32, code: [0x6A, 0x55, 0x8F, 0x04, 0x24, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rsp] == 0x8000)
        #expect(m.load8(0x8000) == 0x55)
    }

    @Test func exchangeForms() {
        // xchg ax, bx (93); xchg [0x2000], cl (86 0E 00 20)
        let m = Machine(code: [0x93, 0x86, 0x0E, 0x00, 0x20, hlt])
        m[.rax] = 1
        m[.rbx] = 2
        m[.rcx] = 0x33
        m.write([0x44], at: 0x2000)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 2)
        #expect(m[.rbx] == 1)
        #expect(m[.rcx] == 0x44)
        #expect(m.load8(0x2000) == 0x33)
    }

    @Test func cmovMovesOnlyWhenTheConditionHolds() {
        // cmp ax, ax; cmovz bx, cx (0F 44 D9); cmovnz dx, cx (0F 45 D1)
        let m = Machine(code: [0x39, 0xC0, 0x0F, 0x44, 0xD9, 0x0F, 0x45, 0xD1, hlt])
        m[.rcx] = 9
        #expect(m.run() == .halt)
        #expect(m[.rbx] == 9)
        #expect(m[.rdx] == 0)
    }

    @Test func protectedModeSegmentLoadReadsTheGDT() {
        // mov ax, 0x18; mov ds, ax; hlt — GDT at 0x500, entry 3: base 0x12345678, limit 0xFFFFF, G, D, data
        let m = Machine(.protected32, code: [0x66, 0xB8, 0x18, 0x00, 0x8E, 0xD8, hlt])
        m.cpu.state.gdtr = DescriptorTableRegister(base: 0x500, limit: 0x1F)
        m.store64(0x518, 0x12CF_9234_5678_FFFF)  // type 2: not yet accessed
        #expect(m.run() == .halt)
        #expect(m.cpu.state[.ds].base == 0x1234_5678)
        #expect(m.cpu.state[.ds].limit == 0xFFFF_FFFF)
        #expect(m.cpu.state[.ds].attributes == 0xC093)  // accessed, also in the GDT:
        #expect(m.load8(0x518 + 5) == 0x93)
    }

    @Test func protectedModeSegmentLoadFaultsOnNotPresentAndBeyondLimit() {
        let m = Machine(.protected32, code: [0x66, 0xB8, 0x18, 0x00, 0x8E, 0xD8, hlt])
        m.cpu.state.gdtr = DescriptorTableRegister(base: 0x500, limit: 0x1F)
        m.store64(0x518, 0x00CF_1200_0000_FFFF)  // P = 0
        #expect(m.run() == .exception(vector: 11, errorCode: 0x18))
        let n = Machine(.protected32, code: [0x66, 0xB8, 0x28, 0x00, 0x8E, 0xD8, hlt])
        n.cpu.state.gdtr = DescriptorTableRegister(base: 0x500, limit: 0x1F)
        #expect(n.run() == .exception(vector: 13, errorCode: 0x28))
    }
}
