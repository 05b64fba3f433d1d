import Testing
@testable import X86

/// What the host CPU cannot show the test process, checked against the
/// Intel SDM: the x87 data instructions' faults (#UD, #NM, #MF, memory
/// faults) and what they leave, the pointers in real and protected mode,
/// and the register slots' bits 80-127.
@Suite("x87 data instruction faults and pointers")
struct X87FaultTests {
    static let one = X87Value(significand: 1 << 63, signExponent: 0x3FFF)
    static let two = X87Value(significand: 1 << 63, signExponent: 0x4000)

    /// A 64-bit machine with `code` then HLT, CR0.NE set, the FPU after
    /// FNINIT with 1.0 pushed, RSI at 0x4000.
    func machine(_ code: [UInt8], cr0Set: UInt64 = ControlBits.cr0NE, cr0Clear: UInt64 = 0) -> Machine {
        let m = Machine(.long64, code: code + [hlt])
        m.cpu.state.cr0 = (m.cpu.state.cr0 | cr0Set) & ~cr0Clear
        m.cpu.state.fpu = .initialized
        m.cpu.state.fpu.push(Self.one)
        m[.rsi] = 0x4000
        return m
    }

    @Test func reservedEncodingsRaiseUDAndChangeNothing() {
        let register: [[UInt8]] = [[0xD9, 0xD1], [0xD9, 0xE2], [0xD9, 0xE7], [0xD9, 0xEF], [0xDA, 0xE8], [0xDA, 0xF0],
                                   [0xDB, 0xE5], [0xDB, 0xF8], [0xDD, 0xF0], [0xDE, 0xD8], [0xDE, 0xDF], [0xDF, 0xE1], [0xDF, 0xFF]]
        let memory: [[UInt8]] = [[0xD9, 0x0E], [0xDB, 0x26], [0xDB, 0x36], [0xDD, 0x2E]]  // D9 /1, DB /4, DB /6, DD /5 on [rsi]
        for code in register + memory {
            let m = machine(code)
            let before = m.cpu.state.fpu
            #expect(m.run() == .exception(vector: 6, errorCode: nil), "\(code)")
            #expect(m.cpu.state.fpu == before, "\(code)")
        }
        // The aliases are defined: FSTP1 (D9 D8+i), FXCH4 (DD C8+i), FFREEP (DF C0+i), FCOMP5 (DE D0+i).
        for code: [UInt8] in [[0xD9, 0xD9], [0xDD, 0xC9], [0xDF, 0xC1], [0xDE, 0xD1]] {
            #expect(machine(code).run() == .halt, "\(code)")
        }
    }

    @Test func taskSwitchedOrEmulationGivesNMBeforeAnythingChanges() {
        for bit in [ControlBits.cr0TS, ControlBits.cr0EM] {
            for code: [UInt8] in [[0xD9, 0xE8], [0xD8, 0x06], [0xDD, 0x1E], [0xD9, 0xFE], [0xD9, 0xD0], [0xDA, 0xE8]] {
                let m = machine(code, cr0Set: bit | ControlBits.cr0NE)
                let before = m.cpu.state.fpu
                #expect(m.run() == .exception(vector: 7, errorCode: nil), "\(code)")
                #expect(m.cpu.state.fpu == before)
                #expect(m.cpu.state.rip == Machine.codeAddress)
            }
        }
    }

    /// A pending unmasked exception (FSW.ES) is taken by the next waiting
    /// instruction before it does anything: #MF with CR0.NE. FNOP waits too.
    @Test func pendingExceptionGivesMFWithNumericError() {
        for code: [UInt8] in [[0xD9, 0xE8], [0xDD, 0x06], [0xDD, 0x1E], [0xD9, 0xD0], [0xDE, 0xC1], [0xDB, 0xF1], [0xD9, 0xC9]] {
            let m = machine(code)
            m.cpu.state.fpu.fcw = 0x37B  // ZE unmasked
            m.cpu.state.fpu.fsw |= 0x04  // ZE
            m.cpu.state.fpu.updateErrorSummary()
            let before = m.cpu.state.fpu
            let memory = m.load64(0x4000)
            #expect(m.run() == .exception(vector: 16, errorCode: nil), "\(code)")
            #expect(m.cpu.state.fpu == before, "\(code)")
            #expect(m.load64(0x4000) == memory)
            #expect(m.cpu.state.rip == Machine.codeAddress)
        }
    }

    /// With CR0.NE clear the pending exception is left to the external
    /// FERR# line, which the machine does not have: the instruction runs,
    /// and the old flags, ES and B stay.
    @Test func pendingExceptionWithoutNumericErrorRunsTheInstruction() {
        let m = machine([0xD9, 0xE8, 0xDE, 0xC1], cr0Set: 0, cr0Clear: ControlBits.cr0NE)  // fld1; faddp
        m.cpu.state.fpu.fcw = 0x37B
        m.cpu.state.fpu.fsw |= 0x04
        m.cpu.state.fpu.updateErrorSummary()
        #expect(m.run() == .halt)
        #expect(X87Value(slot: m.cpu.state.fpu.st(0)) == Self.two)
        #expect(m.cpu.state.fpu.fsw & 0x80BF == 0x8084)
        #expect(m.cpu.state.fpu.top == 7)
    }

    /// KVM_SET_FPU takes a status word as given: one with an unmasked flag
    /// and ES clear must neither signal the host nor lose the flag (with
    /// CR0.NE clear, so that both instructions run).
    @Test func inconsistentStatusWordNeverReachesTheHostAsPending() {
        let m = machine([0xD9, 0xE8, 0xDE, 0xF9], cr0Set: 0, cr0Clear: ControlBits.cr0NE)  // fld1; fdivp: 1/1
        m.cpu.state.fpu.fcw = 0x0340  // everything unmasked
        m.cpu.state.fpu.fsw |= 0x01  // IE without ES
        #expect(m.run() == .halt)
        #expect(X87Value(slot: m.cpu.state.fpu.st(0)) == Self.one)
        #expect(m.cpu.state.fpu.fsw & 0x80FF == 0x8081)
    }

    @Test func unmaskedInvalidStoreLeavesMemoryAndStack() {
        // fist word [rsi] of 1e10 (out of range); fistp; fstp qword [rsi] of an SNaN: IE unmasked.
        for (code, value) in [([0xDF, 0x16], X87Value(1e10)), ([0xDF, 0x1E], X87Value(1e10)),
                              ([0xDD, 0x1E], X87Value(significand: 0x8000_0000_0000_0001, signExponent: 0x7FFF))] as [([UInt8], X87Value)] {
            let m = machine(code)
            m.cpu.state.fpu.setST(0, value)
            m.cpu.state.fpu.fcw = 0x37E
            m.store64(0x4000, 0x1111_2222_3333_4444)
            #expect(m.run() == .halt)
            #expect(m.load64(0x4000) == 0x1111_2222_3333_4444, "\(code)")
            #expect(m.cpu.state.fpu.top == 7, "\(code)")
            #expect(m.cpu.state.fpu.fsw & 0x80BF == 0x8081, "\(code)")
        }
        // Masked, the integer indefinite is stored and the stack popped.
        let m = machine([0xDF, 0x1E])
        m.cpu.state.fpu.setST(0, X87Value(1e10))
        #expect(m.run() == .halt)
        #expect(m.load64(0x4000) & 0xFFFF == 0x8000)
        #expect(m.cpu.state.fpu.top == 0)
    }

    @Test func pageFaultOnAStoreLeavesTheFPUAsItWas() {
        // fstp qword [rsi]; fstp tbyte [rsi]; fbstp [rsi]; fld tbyte [rsi] across into the page at 0x10000.
        for (code, address) in [([0xDD, 0x1E], 0xFFFC), ([0xDB, 0x3E], 0xFFF8), ([0xDF, 0x36], 0xFFFA), ([0xDB, 0x2E], 0xFFF8)]
            as [([UInt8], UInt64)] {
            let m = machine(code)
            m[.rsi] = address
            m.store64(Machine.pageTable + 0x10 * 8, 0)  // unmap 0x10000
            m.cpu.state.fpu.fip = 0x1234
            let before = m.cpu.state.fpu
            let write: UInt32 = code == [0xDB, 0x2E] ? 0 : 2
            #expect(m.run() == .exception(vector: 14, errorCode: write), "\(code)")
            #expect(m.cpu.state.fpu == before, "\(code)")
            #expect(m.load64(0xFFF8) == 0, "\(code)")
        }
    }

    @Test func registerSlotsKeepTheirUpperBitsUnlessWritten() {
        let m = machine([0xD9, 0xC9, 0xD9, 0xE8])  // fxch; fld1
        m.cpu.state.fpu.push(Self.two)
        let top = m.cpu.state.fpu.top
        let high: UInt128 = 0xABCD << 96
        for i in 0..<8 { m.cpu.state.fpu.setPhysical(i, m.cpu.state.fpu.physical(i) | high) }
        #expect(m.run() == .halt)
        // FXCH swaps values: both slots are written. The pushed slot is new. Others keep theirs.
        #expect(m.cpu.state.fpu.physical(top) >> 80 == 0)
        #expect(m.cpu.state.fpu.physical(top + 1) >> 80 == 0)
        #expect(m.cpu.state.fpu.physical(top + 7) >> 80 == 0)
        for i in 2..<7 { #expect(m.cpu.state.fpu.physical(top + i) & high == high, "R\((top + i) & 7)") }
    }

    @Test func fnopUpdatesTheInstructionPointerButNotTheOperand() {
        let m = machine([0xDD, 0x06, 0xD9, 0xD0])  // fld qword [rsi]; fnop
        #expect(m.run() == .halt)
        #expect(m.cpu.state.fpu.fip == Machine.codeAddress + 2)
        #expect(m.cpu.state.fpu.fop == 0x1D0)
        #expect(m.cpu.state.fpu.fdp == 0x4000)
        #expect(m.cpu.state.fpu.fcs == 8 && m.cpu.state.fpu.fds == 16)
    }

    /// In real mode FIP and FDP are 20-bit linear addresses; the 16-bit
    /// real-mode FNSTENV layout splits them (SDM Vol. 1 figure 8-11).
    @Test func realModePointersAreLinear() {
        // fld qword [si+4]; fnstenv [di] with a 16-bit operand size.
        let m = Machine(.real, code: [])
        m.write([0xDD, 0x44, 0x04, 0xD9, 0x35, hlt], at: 0x1000)
        m.cpu.state[.cs] = .realMode(selector: 0x0F0, code: true)  // base 0xF00
        m.cpu.state.rip = 0x100
        m.cpu.state[.ds] = .realMode(selector: 0xF123)  // base 0xF1230
        m.cpu.state.fpu = .initialized
        m[.rsi] = 0x10
        m[.rdi] = 0x40
        #expect(m.run() == .halt)
        #expect(m.cpu.state.fpu.fip == 0x1000)
        #expect(m.cpu.state.fpu.fdp == 0xF1244)
        #expect(m.cpu.state.fpu.fop == 0x544)
        let image = 0xF1230 + 0x40
        func word(_ i: Int) -> UInt16 { UInt16(m.load8(UInt64(image + 2 * i))) | UInt16(m.load8(UInt64(image + 2 * i + 1))) << 8 }
        #expect(word(3) == 0x1000)
        #expect(word(4) == 0x0544)
        #expect(word(5) == 0x1244)
        #expect(word(6) == 0xF000)
    }

    /// In protected mode they are offsets with the selectors beside them.
    @Test func protectedModePointersAreOffsetsWithSelectors() {
        // fld dword [ss:esp+8]: FDS is SS's selector.
        let m = Machine(.protected32, code: [0xD9, 0x44, 0x24, 0x08, hlt])
        m.cpu.state.fpu = .initialized
        m[.rsp] = 0x7000
        #expect(m.run() == .halt)
        #expect(m.cpu.state.fpu.fip == Machine.codeAddress && m.cpu.state.fpu.fcs == 8)
        #expect(m.cpu.state.fpu.fdp == 0x7008 && m.cpu.state.fpu.fds == 16)
        #expect(m.cpu.state.fpu.fop == 0x144)
    }

    /// FCOMI sets ZF PF CF and clears OF SF AF; FCMOVcc reads them.
    @Test func fcomiAndFcmovUseEFLAGS() {
        // stc; fld1 (ST0 = 1, ST1 = 1): fcomi st, st(1) → ZF; fldz; fcmove st, st(2) → 1.
        let m = machine([0xF9, 0xD9, 0xE8, 0xDB, 0xF1, 0xD9, 0xEE, 0xDA, 0xCA])
        #expect(m.run() == .halt)
        #expect(m.flags == flags("Z"))
        #expect(X87Value(slot: m.cpu.state.fpu.st(0)) == Self.one)
    }
}
