import Testing
@testable import X86

@Suite("X86 arithmetic")
struct ArithmeticTests {
    /// Runs `op` (bytes) on AX=a, BX=b in real mode, then HLT.
    func run16(_ op: [UInt8], a: UInt64, b: UInt64, carry: Bool = false) -> Machine {
        let m = Machine(code: (carry ? [0xF9] : [0xF8]) + op + [hlt])
        m[.rax] = a
        m[.rbx] = b
        #expect(m.run() == .halt)
        return m
    }

    @Test func addSetsCarryZeroParityAuxOnWrapToZero() {
        let m = run16([0x01, 0xD8], a: 0xFFFF, b: 1)  // add ax, bx
        #expect(m[.rax] == 0)
        #expect(m.flags == flags("ZAPC"))
    }

    @Test func addSignedOverflowAtSignBoundary() {
        let m = run16([0x01, 0xD8], a: 0x7FFF, b: 1)
        #expect(m[.rax] == 0x8000)
        #expect(m.flags == flags("OSAP"))
    }

    @Test func byteAddUsesLowRegistersAndHighBytes() {
        let m = run16([0x00, 0xFC], a: 0x1280, b: 0)  // add ah, bh ... encoded 00 FC = add ah, bh
        #expect(m[.rax] == 0x1280)
        let n = run16([0x00, 0xE0], a: 0x0180, b: 0)  // add al, ah: 0x80 + 0x01
        #expect(n[.rax] == 0x0181)
        #expect(n.flags == flags("SP"))
    }

    @Test func adcAddsCarryAndDetectsCarryOutWithMaxOperand() {
        let m = run16([0x11, 0xD8], a: 0, b: 0xFFFF, carry: true)  // adc ax, bx: 0 + FFFF + 1
        #expect(m[.rax] == 0)
        #expect(m.flags == flags("ZAPC"))
    }

    @Test func subBorrowAndOverflow() {
        let m = run16([0x29, 0xD8], a: 0x8000, b: 1)  // sub ax, bx
        #expect(m[.rax] == 0x7FFF)
        #expect(m.flags == flags("OAP"))
        let n = run16([0x29, 0xD8], a: 0, b: 1)
        #expect(n[.rax] == 0xFFFF)
        #expect(n.flags == flags("SAPC"))
    }

    @Test func sbbWithCarryAndEqualOperandsBorrows() {
        let m = run16([0x19, 0xD8], a: 5, b: 5, carry: true)  // sbb ax, bx
        #expect(m[.rax] == 0xFFFF)
        #expect(m.flags == flags("SAPC"))
    }

    @Test func cmpDoesNotWriteBack() {
        let m = run16([0x39, 0xD8], a: 3, b: 3)
        #expect(m[.rax] == 3)
        #expect(m.flags == flags("ZP"))
    }

    @Test func logicClearsCarryAndOverflow() {
        let m = run16([0x31, 0xC0], a: 0x1234, b: 0, carry: true)  // xor ax, ax
        #expect(m[.rax] == 0)
        #expect(m.flags == flags("ZP"))
        let n = run16([0x09, 0xD8], a: 0x8000, b: 1, carry: true)  // or ax, bx
        #expect(n[.rax] == 0x8001)
        #expect(n.flags == flags("S"))
    }

    @Test func group1SignExtendsImm8() {
        let m = run16([0x83, 0xC0, 0xFF], a: 1, b: 0)  // add ax, -1
        #expect(m[.rax] == 0)
        #expect(m.flags == flags("ZAPC"))
        let n = run16([0x81, 0xEB, 0x01, 0x00], a: 0, b: 0)  // sub bx, 1
        #expect(n[.rbx] == 0xFFFF)
    }

    @Test func aluImmediateFormsOnAccumulator() {
        let m = run16([0x04, 0x01, 0x2D, 0x00, 0x01], a: 0x00FF, b: 0)  // add al, 1; sub ax, 0x100
        #expect(m[.rax] == 0xFF00)
        #expect(m.flags == flags("SPC"))
    }

    @Test func incDecKeepCarry() {
        let m = run16([0x40], a: 0xFFFF, b: 0, carry: true)  // inc ax
        #expect(m[.rax] == 0)
        #expect(m.flags == flags("ZAPC"))
        let n = run16([0xFE, 0xCB], a: 0, b: 0x80)  // dec bl
        #expect(n[.rbx] == 0x7F)
        #expect(n.flags == flags("OA"))
    }

    @Test func negOfZeroClearsCarryAndOfMinimumOverflows() {
        let m = run16([0xF7, 0xD8], a: 0, b: 0, carry: true)  // neg ax
        #expect(m[.rax] == 0)
        #expect(m.flags == flags("ZP"))
        let n = run16([0xF7, 0xD8], a: 0x8000, b: 0)
        #expect(n[.rax] == 0x8000)
        #expect(n.flags == flags("OSPC"))
    }

    @Test func notChangesNoFlags() {
        let m = run16([0xF7, 0xD0], a: 0x00FF, b: 0, carry: true)
        #expect(m[.rax] == 0xFF00)
        #expect(m.flags == flags("C"))
    }

    @Test func testSetsFlagsWithoutWriting() {
        let m = run16([0x85, 0xD8], a: 0x8001, b: 0x8000)
        #expect(m[.rax] == 0x8001)
        #expect(m.flags == flags("SP"))
    }

    @Test func mulWidensIntoDXAndSetsCarryWhenHighHalfUsed() {
        let m = run16([0xF7, 0xE3], a: 0xFFFF, b: 0xFFFF)  // mul bx
        #expect(m[.rax] == 0x0001)
        #expect(m[.rdx] == 0xFFFE)
        #expect(m.flags & flags("OC") == flags("OC"))
        let n = run16([0xF6, 0xE3], a: 0x10, b: 0x0F)  // mul bl -> ax = 0xF0
        #expect(n[.rax] == 0xF0)
        #expect(n.flags & flags("OC") == 0)
    }

    @Test func imulForms() {
        let m = run16([0xF7, 0xEB], a: 0xFFFF, b: 2)  // imul bx: -1 * 2
        #expect(m[.rax] == 0xFFFE)
        #expect(m[.rdx] == 0xFFFF)
        #expect(m.flags & flags("OC") == 0)
        let n = run16([0x0F, 0xAF, 0xC3], a: 0x4000, b: 2)  // imul ax, bx: overflows 16 bits
        #expect(n[.rax] == 0x8000)
        #expect(n.flags & flags("OC") == flags("OC"))
        let k = run16([0x6B, 0xC3, 0xFD], a: 0, b: 7)  // imul ax, bx, -3
        #expect(k[.rax] == 0xFFEB)
        let q = run16([0x69, 0xC3, 0x10, 0x00], a: 0, b: 3)  // imul ax, bx, 16
        #expect(q[.rax] == 48)
    }

    @Test func divideQuotientAndRemainder() {
        let m = run16([0xF7, 0xF3], a: 100, b: 7)  // div bx (DX = 0)
        #expect(m[.rax] == 14)
        #expect(m[.rdx] == 2)
        let n = run16([0xF7, 0xFB], a: 0xFF9C, b: 7)  // idiv bx: DX:AX must be sign-extended first
        #expect(n[.rax] != 0)  // DX = 0: 0x0000FF9C / 7
        let k = Machine(code: [0x99, 0xF7, 0xFB, hlt])  // cwd; idiv bx: -100 / 7
        k[.rax] = 0xFF9C
        k[.rbx] = 7
        #expect(k.run() == .halt)
        #expect(k[.rax] == 0xFFF2)  // -14
        #expect(k[.rdx] == 0xFFFE)  // -2
    }

    @Test func divideByZeroFaultsAtTheInstruction() {
        let m = Machine(code: [0x90, 0xF7, 0xF3, hlt])
        #expect(m.run() == .exception(vector: 0, errorCode: nil))
        #expect(m.cpu.state.rip == 0x1001)
    }

    @Test func divideOverflowFaults() {
        let m = Machine(code: [0xF6, 0xF3, hlt])  // div bl: 0x1000 / 2 does not fit AL
        m[.rax] = 0x1000
        m[.rbx] = 2
        #expect(m.run() == .exception(vector: 0, errorCode: nil))
        let n = Machine(code: [0xF7, 0xFB, hlt])  // idiv bx: -32768 / -1
        n[.rax] = 0x8000
        n[.rdx] = 0xFFFF
        n[.rbx] = 0xFFFF
        #expect(n.run() == .exception(vector: 0, errorCode: nil))
    }

    @Test func sixtyFourBitDivideAndMultiply() {
        // mov rax, -1; mov rbx, 2; mul rbx; hlt
        let m = Machine(.long64, code: [0x48, 0xC7, 0xC0, 0xFF, 0xFF, 0xFF, 0xFF, 0x48, 0xC7, 0xC3, 2, 0, 0, 0,
                                        0x48, 0xF7, 0xE3, hlt])
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0xFFFF_FFFF_FFFF_FFFE)
        #expect(m[.rdx] == 1)
        // idiv rbx with RDX:RAX = INT128_MIN-ish overflow: rdx = 0x8000..., rax = 0, rbx = -1
        let n = Machine(.long64, code: [0x48, 0xF7, 0xFB, hlt])
        n[.rdx] = 0x8000_0000_0000_0000
        n[.rbx] = ~0
        #expect(n.run() == .exception(vector: 0, errorCode: nil))
    }

    @Test func convertInstructions() {
        let m = Machine(.long64, code: [0x66, 0x98, 0x98, 0x48, 0x98, 0x48, 0x99, hlt])  // cbw; cwde; cdqe; cqo
        m[.rax] = 0x80
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0xFFFF_FFFF_FFFF_FF80)
        #expect(m[.rdx] == ~0)
    }
}

@Suite("X86 shifts and rotates")
struct ShiftTests {
    func run(_ op: [UInt8], a: UInt64, count: UInt64 = 0, carry: Bool = false, flagsIn: String = "") -> Machine {
        let m = Machine(code: (carry ? [0xF9] : [0xF8]) + op + [hlt])
        m[.rax] = a
        m[.rcx] = count
        #expect(m.run() == .halt)
        return m
    }

    @Test func shlByOneSetsCarryAndOverflow() {
        let m = run([0xD1, 0xE0], a: 0x8000)  // shl ax, 1
        #expect(m[.rax] == 0)
        #expect(m.flags & flags("OSZPC") == flags("OZPC"))
    }

    @Test func shiftCountZeroChangesNoFlags() {
        let m = run([0xD3, 0xE0], a: 0x1234, count: 0, carry: true)  // shl ax, cl
        #expect(m[.rax] == 0x1234)
        #expect(m.flags == flags("C"))
    }

    @Test func shiftCountIsMaskedToFiveBits() {
        let m = run([0x66, 0xD3, 0xE0], a: 1, count: 33)  // shl eax, cl: 33 & 31 = 1
        #expect(m[.rax] == 2)
        let n = run([0x66, 0xD3, 0xE0], a: 1, count: 32, carry: true)  // count 0: nothing
        #expect(n[.rax] == 1)
        #expect(n.flags == flags("C"))
    }

    @Test func shiftOfMemoryByZeroDoesNotWrite() {
        // At an MMIO address a write would be an exit; the read is answered up front.
        let m = Machine(.protected32, code: [0xD3, 0x25, 0x00, 0x00, 0x00, 0x10, hlt])  // shl dword [0x10000000], cl
        m[.rcx] = 32
        m.cpu.completeMMIORead(address: 0x1000_0000, value: 7)
        #expect(m.run() == .halt)
    }

    @Test func shrAndSar() {
        let m = run([0xC1, 0xE8, 0x04], a: 0x8018)  // shr ax, 4
        #expect(m[.rax] == 0x0801)
        #expect(m.flags & flags("C") == flags("C"))
        let n = run([0xC1, 0xF8, 0x04], a: 0x8018)  // sar ax, 4
        #expect(n[.rax] == 0xF801)
        let k = run([0xD1, 0xE8], a: 0x8000)  // shr ax, 1: OF = old MSB
        #expect(k.flags & flags("OC") == flags("O"))
    }

    @Test func rotates() {
        let m = run([0xD0, 0xC0], a: 0x81)  // rol al, 1
        #expect(m[.rax] == 0x03)
        #expect(m.flags & flags("OC") == flags("OC"))
        let n = run([0xD0, 0xC8], a: 0x01)  // ror al, 1
        #expect(n[.rax] == 0x80)
        #expect(n.flags & flags("OC") == flags("OC"))
        let k = run([0xD0, 0xD0], a: 0x80, carry: true)  // rcl al, 1
        #expect(k[.rax] == 0x01)
        #expect(k.flags & flags("C") == flags("C"))
        let r = run([0xD2, 0xD8], a: 0x01, count: 9)  // rcr al, cl: 9 % 9 = 0
        #expect(r[.rax] == 0x01)
    }
}
