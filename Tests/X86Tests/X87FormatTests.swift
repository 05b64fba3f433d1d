import Testing
@testable import X86

/// The image layouts the host CPU cannot show the 64-bit test process: the
/// real-mode x87 environments and FXSAVE outside 64-bit mode (SDM Vol. 1
/// figures 8-10 and 8-12, table 10-2).
@Suite("x87 environment and FXSAVE layouts outside 64-bit mode")
struct X87FormatTests {
    func machine(_ setup: Machine.Setup, _ code: [UInt8]) -> Machine {
        let m = Machine(setup, code: code + [hlt])
        m.cpu.state.cr4 |= ControlBits.cr4OSFXSR
        m.cpu.state.fpu = .initialized
        m.cpu.state.fpu.fip = 0x0001_2345
        m.cpu.state.fpu.fdp = 0x000A_BCDE
        m.cpu.state.fpu.fop = 0x5D9
        m.cpu.state.fpu.fcs = 0x0008
        m.cpu.state.fpu.fds = 0x0010
        m[.rsi] = 0x4000
        for offset in stride(from: 0x4000, to: 0x4200, by: 8) { m.store64(UInt64(offset), 0xCCCC_CCCC_CCCC_CCCC) }
        return m
    }

    func bytes(_ m: Machine, _ address: UInt64, _ count: Int) -> [UInt8] { (0..<count).map { m.load8(address + UInt64($0)) } }

    @Test func fxsaveOutside64BitModeUsesSelectorsAndEightXMMRegisters() {
        let m = machine(.protected32, [0x0F, 0xAE, 0x06])  // fxsave [esi]
        for i in 0..<8 { m.cpu.state.fpu.setXMM(i, UInt128(i + 1)) }
        #expect(m.run() == .halt)
        #expect(bytes(m, 0x4008, 8) == [0x45, 0x23, 0x01, 0x00, 0x08, 0x00, 0x00, 0x00])  // FIP, FCS
        #expect(bytes(m, 0x4010, 8) == [0xDE, 0xBC, 0x0A, 0x00, 0x10, 0x00, 0x00, 0x00])  // FDP, FDS
        #expect(bytes(m, 0x4006, 2) == [0xD9, 0x05])  // FOP
        #expect(m.load64(0x40A0 + 7 * 16) == 8)  // XMM7
        #expect(bytes(m, 0x40A0 + 8 * 16, 128).allSatisfy { $0 == 0xCC })  // XMM8-15's bytes untouched
    }

    @Test func fxrstorOutside64BitModeKeepsXMM8To15() {
        let m = machine(.protected32, [0x0F, 0xAE, 0x0E])  // fxrstor [esi]
        for offset in stride(from: 0x4000, to: 0x4200, by: 8) { m.store64(UInt64(offset), 0) }
        m.store64(0x4018, 0x1F80)
        m.cpu.state.fpu.setXMM(9, 0x99)
        m.cpu.state.fpu.setXMM(3, 0x33)
        #expect(m.run() == .halt)
        #expect(m.cpu.state.fpu.xmm(9) == 0x99)
        #expect(m.cpu.state.fpu.xmm(3) == 0)
    }

    @Test func realModeEnvironmentsSplitThePointers() {
        // fnstenv [si] (16-bit: 14 bytes), then o32 fnstenv [si+0x20] (28 bytes)
        let m = machine(.real, [0xD9, 0x34, 0x66, 0xD9, 0x74, 0x20])
        #expect(m.run() == .halt)
        // 16-bit: FCW FSW FTW, FIP[15:0], FIP[19:16] in bits 15-12 with FOP, FDP[15:0], FDP[19:16] in bits 15-12.
        #expect(bytes(m, 0x4000, 14) == [0x7F, 0x03, 0x00, 0x00, 0xFF, 0xFF, 0x45, 0x23, 0xD9, 0x15, 0xDE, 0xBC, 0x00, 0xA0])
        // 32-bit: FIP[31:16] and FDP[31:16] in bits 27-12.
        let fipLow = m.load64(0x4020 + 12) & 0xFFFF_FFFF, fipHigh = m.load64(0x4020 + 16) & 0xFFFF_FFFF
        #expect(fipLow == 0xFFFF_2345)
        #expect(fipHigh == (0x0001 << 12) | 0x5D9)
        let fdpLow = m.load64(0x4020 + 20) & 0xFFFF_FFFF, fdpHigh = m.load64(0x4020 + 24) & 0xFFFF_FFFF
        #expect(fdpLow == 0xFFFF_BCDE)
        #expect(fdpHigh == 0x000A << 12)
    }

    @Test func realModeEnvironmentRoundTrips() {
        // o32 fnstenv [si]; fninit; o32 fldenv [si]; o32 fnstenv [si+0x40]
        let m = machine(.real, [0x66, 0xD9, 0x34, 0xDB, 0xE3, 0x66, 0xD9, 0x24, 0x66, 0xD9, 0x74, 0x40])
        m.cpu.state.fpu.fcw = 0x027F
        m.cpu.state.fpu.fsw = 0x3800
        m.cpu.state.fpu.tags = 0x80
        #expect(m.run() == .halt)
        #expect(bytes(m, 0x4040, 28) == bytes(m, 0x4000, 28))
        #expect(m.cpu.state.fpu.fip == 0x0001_2345 && m.cpu.state.fpu.fdp == 0x000A_BCDE && m.cpu.state.fpu.fop == 0x5D9)
        #expect(m.cpu.state.fpu.tags == 0x80)
    }

    /// FISTTP is a non-control instruction: it leaves its opcode, its own
    /// address and its operand's in FOP, FIP/FCS and FDP/FDS, and a pending
    /// exception stops it (#MF).
    @Test func fisttpRecordsTheInstructionAndOperandPointers() {
        let m = machine(.protected32, [0x90, 0xDB, 0x4E, 0x10])  // nop; fisttp dword [esi+0x10]
        m.cpu.state.fpu.tags = 0x80
        m.cpu.state.fpu.top = 7
        m.cpu.state.fpu.setST(0, X87Value(significand: 0xC000_0000_0000_0000, signExponent: 0xC000))  // -3.0
        #expect(m.run() == .halt)
        #expect(m.load64(0x4010) & 0xFFFF_FFFF == 0xFFFF_FFFD)
        #expect(m.cpu.state.fpu.fop == 0x34E)  // DB & 7 = 3, ModRM 4E
        #expect(m.cpu.state.fpu.fip == Machine.codeAddress + 1 && m.cpu.state.fpu.fcs == 8)
        #expect(m.cpu.state.fpu.fdp == 0x4010 && m.cpu.state.fpu.fds == 16)
        #expect(m.cpu.state.fpu.tags == 0 && m.cpu.state.fpu.top == 0)

        let pending = machine(.protected32, [0xDB, 0x4E, 0x10])
        pending.cpu.state.cr0 |= ControlBits.cr0NE
        pending.cpu.state.fpu.fcw = 0x37E
        pending.cpu.state.fpu.fsw = 0x8081
        #expect(pending.run() == .exception(vector: 16, errorCode: nil))
    }
}
