import Testing
@testable import X86

@Suite("X86 control flow")
struct ControlFlowTests {
    @Test func conditionalJumpsTakenAndNotTaken() {
        // cmp ax, 1 (83 F8 01); jl +2 (7C 02); mov bl, 1; jge +2 (7D 02)... — ax = 0: jl taken
        let m = Machine(code: [0x83, 0xF8, 0x01, 0x7C, 0x02, 0xB3, 0x01, 0x7D, 0x02, 0xB1, 0x01, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rbx] == 0)
        #expect(m[.rcx] == 1)
    }

    @Test func nearJumpWithRel16AndBackwardsRel8() {
        // jmp +3 (E9 03 00); hlt; hlt; hlt; inc ax; cmp ax, 3; jne -6 (75 FA)...
        let m = Machine(code: [0xE9, 0x03, 0x00, hlt, hlt, hlt, 0x40, 0x83, 0xF8, 0x03, 0x75, 0xFA, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rax] == 3)
        #expect(m.cpu.state.rip == 0x1000 + 13)
    }

    @Test func jccRel32InLongMode() {
        // xor eax, eax (31 C0); jz +0x100 (0F 84 00 01 00 00); at 0x1108: hlt
        let m = Machine(.long64, code: [0x31, 0xC0, 0x0F, 0x84, 0x00, 0x01, 0x00, 0x00])
        m.write([hlt], at: 0x1108)
        #expect(m.run() == .halt)
        #expect(m.cpu.state.rip == 0x1109)
    }

    @Test func loopCountsDownCX() {
        // mov cx, 5; inc ax; loop -3 (E2 FD); hlt
        let m = Machine(code: [0xB9, 0x05, 0x00, 0x40, 0xE2, 0xFD, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rax] == 5)
        #expect(m[.rcx] == 0)
    }

    @Test func jcxzAndLoopeStopOnFlags() {
        // jcxz +1 (E3 01); hlt; mov cx, 3; loope ... with ZF = 0 falls through once
        let m = Machine(code: [0xE3, 0x01, hlt, 0xB9, 0x03, 0x00, 0x31, 0xC0, 0x40, 0xE1, 0xFD, hlt])
        #expect(m.run() == .halt)
        // CX = 0 so JCXZ skipped the first HLT; XOR sets ZF, INC clears it, LOOPE exits after one pass.
        #expect(m[.rcx] == 2)
        #expect(m[.rax] == 1)
    }

    @Test func callAndReturn() {
        // call +1 (E8 01 00); hlt; mov bx, 7; ret
        let m = Machine(code: [0xE8, 0x01, 0x00, hlt, 0xBB, 0x07, 0x00, 0xC3])
        #expect(m.run() == .halt)
        #expect(m[.rbx] == 7)
        #expect(m.cpu.state.rip == 0x1004)
        #expect(m[.rsp] == 0x8000)
    }

    @Test func returnWithImmediatePopsArguments() {
        // push 1; push 2; call +1; hlt; ret 4 (C2 04 00)
        let m = Machine(code: [0x6A, 0x01, 0x6A, 0x02, 0xE8, 0x01, 0x00, hlt, 0xC2, 0x04, 0x00])
        #expect(m.run() == .halt)
        #expect(m[.rsp] == 0x8000)
    }

    @Test func indirectCallAndJumpInLongMode() {
        // mov rax, 0x1010 (48 C7 C0 10 10 00 00); call rax (FF D0); hlt; ... at 0x1010: jmp [rip+0] (FF 25 00 00 00 00) -> 0x1020
        let m = Machine(.long64, code: [0x48, 0xC7, 0xC0, 0x10, 0x10, 0x00, 0x00, 0xFF, 0xD0, hlt])
        m.write([0xFF, 0x25, 0x00, 0x00, 0x00, 0x00], at: 0x1010)
        m.store64(0x1016, 0x1020)
        m.write([0xBB, 0x09, 0x00, 0x00, 0x00, hlt], at: 0x1020)  // mov ebx, 9; hlt
        #expect(m.run() == .halt)
        #expect(m[.rbx] == 9)
        #expect(m[.rsp] == 0x8000 - 8)
        #expect(m.load64(0x8000 - 8) == 0x1009)
    }

    @Test func setccWritesOneOrZero() {
        // stc; setc al (0F 92 C0); setz bl (0F 94 C3)
        let m = Machine(code: [0xF9, 0x0F, 0x92, 0xC0, 0x0F, 0x94, 0xC3, hlt])
        m[.rbx] = 0xFF
        #expect(m.run() == .halt)
        #expect(m[.rax] == 1)
        #expect(m[.rbx] == 0)
    }

    @Test func flagInstructions() {
        // stc; cmc; std; cld... pushf; pop ax; sahf path: mov ah, 0xD5; sahf; lahf
        let m = Machine(code: [0xF9, 0xF5, 0xFD, 0x9C, 0x58, 0xFC, 0xB4, 0xD5, 0x9E, 0x9F, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rax] & 0xFF == 0x02 | 0x00)  // CF cleared by CMC, DF not in the low byte
        #expect(m.cpu.state.rflags & RFLAGS.df == 0)
        #expect(m.flags == flags("SZAPC"))
        #expect((m[.rax] >> 8) & 0xFF == 0xD7)
    }

    @Test func cliStiAndHaltPrivilege() {
        let m = Machine(code: [0xFB, 0xFA, hlt])
        #expect(m.run() == .halt)
        #expect(m.cpu.state.rflags & RFLAGS.if == 0)
        let n = Machine(.protected32, code: [hlt])
        n.cpu.state[.cs].attributes |= 0x60  // DPL 3
        #expect(n.run() == .exception(vector: 13, errorCode: 0))
    }

    @Test func undefinedOpcodesFaultWithoutMovingRIP() {
        for code: [UInt8] in [[0x0F, 0x0B], [0x0F, 0xFF], [0xD6], [0xC6, 0xC8, 0x00], [0x8D, 0xC0]] {
            let m = Machine(code: code)
            #expect(m.run() == .exception(vector: 6, errorCode: nil), "\(code)")
            #expect(m.cpu.state.rip == 0x1000)
        }
    }

    @Test func lockIsUndefinedOnRegistersAndNonLockableInstructions() {
        for code: [UInt8] in [[0xF0, 0x01, 0xD8], [0xF0, 0x39, 0x07], [0xF0, 0x8B, 0x07]] {
            let m = Machine(code: code + [hlt])
            #expect(m.run() == .exception(vector: 6, errorCode: nil), "\(code)")
        }
        let m = Machine(code: [0xF0, 0x01, 0x07, hlt])  // lock add [bx], ax
        m[.rbx] = 0x2000
        m[.rax] = 5
        #expect(m.run() == .halt)
        #expect(m.load8(0x2000) == 5)
    }

    @Test func instructionLongerThanFifteenBytesFaults() {
        let m = Machine(code: [UInt8](repeating: 0x66, count: 15) + [0x90])
        #expect(m.run() == .exception(vector: 13, errorCode: 0))
    }

    @Test func instructionLimitStopsTheLoop() {
        let m = Machine(code: [0xEB, 0xFE])  // jmp $
        #expect(m.run(maxInstructions: 1000) == .instructionLimit)
        #expect(m.cpu.state.rip == 0x1000)
    }
}
