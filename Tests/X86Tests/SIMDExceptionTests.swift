import Testing
@testable import X86

/// What the host CPU cannot show the test process (an unmasked SIMD
/// exception would signal it, CR0 and CR4 are not its to change): the
/// faults of the SDM's exception tables for x87, MMX and SSE instructions.
@Suite("x87, MMX and SSE faults")
struct SIMDExceptionTests {
    /// A 64-bit machine with `code` then HLT, CR4.OSFXSR and OSXMMEXCPT set
    /// unless `cr4` says otherwise, and the FPU in its FNINIT state.
    func machine(_ code: [UInt8], cr0Set: UInt64 = 0, cr4: UInt64 = ControlBits.cr4OSFXSR | ControlBits.cr4OSXMMEXCPT) -> Machine {
        let m = Machine(.long64, code: code + [hlt])
        m.cpu.state.cr4 |= cr4
        m.cpu.state.cr0 |= cr0Set | ControlBits.cr0NE
        m.cpu.state.fpu = .initialized
        m[.rsi] = 0x4000
        return m
    }

    let addps: [UInt8] = [0x0F, 0x58, 0xC1]
    let paddb: [UInt8] = [0x66, 0x0F, 0xFC, 0xC1]
    let pxorMMX: [UInt8] = [0x0F, 0xEF, 0xC1]
    let fninit: [UInt8] = [0xDB, 0xE3]

    @Test func sseNeedsOSFXSRAndNotEM() {
        #expect(machine(addps, cr4: 0).run() == .exception(vector: 6, errorCode: nil))
        #expect(machine(paddb, cr4: 0).run() == .exception(vector: 6, errorCode: nil))
        #expect(machine(addps, cr0Set: ControlBits.cr0EM).run() == .exception(vector: 6, errorCode: nil))
        #expect(machine(addps).run() == .halt)
    }

    @Test func taskSwitchedGivesDeviceNotAvailable() {
        for code in [addps, paddb, pxorMMX, fninit, [0x0F, 0xAE, 0x06] /* fxsave [rsi] */] {
            #expect(machine(code, cr0Set: ControlBits.cr0TS).run() == .exception(vector: 7, errorCode: nil), "\(code)")
        }
        // FWAIT only with MP and TS both set.
        #expect(machine([0x9B], cr0Set: ControlBits.cr0TS).run() == .halt)
        #expect(machine([0x9B], cr0Set: ControlBits.cr0TS | ControlBits.cr0MP).run() == .exception(vector: 7, errorCode: nil))
    }

    @Test func emulationBitSendsX87ToDeviceNotAvailableAndMMXToInvalidOpcode() {
        #expect(machine(fninit, cr0Set: ControlBits.cr0EM).run() == .exception(vector: 7, errorCode: nil))
        #expect(machine([0x0F, 0xAE, 0x06], cr0Set: ControlBits.cr0EM).run() == .exception(vector: 7, errorCode: nil))
        #expect(machine(pxorMMX, cr0Set: ControlBits.cr0EM).run() == .exception(vector: 6, errorCode: nil))
        // MMX needs no OSFXSR.
        #expect(machine(pxorMMX, cr4: 0).run() == .halt)
    }

    @Test func pendingX87ExceptionStopsWaitingInstructionsOnly() {
        for (code, faults) in [([UInt8](arrayLiteral: 0x9B), true), (pxorMMX, true), ([0xDF, 0xE0], false), (fninit, false),
                               ([0xDB, 0xE2], false), ([0x0F, 0xAE, 0x06], false)] {
            let m = machine(code)
            m.cpu.state.fpu.fsw = 0x8081  // IE, ES, B
            m.cpu.state.fpu.fcw = 0x37E  // IE unmasked
            #expect(m.run() == (faults ? .exception(vector: 16, errorCode: nil) : .halt), "\(code)")
        }
        // With CR0.NE clear the PC-style FERR# is not modelled: nothing is raised.
        let m = machine([0x9B])
        m.cpu.state.cr0 &= ~ControlBits.cr0NE
        m.cpu.state.fpu.fsw = 0x8081
        #expect(m.run() == .halt)
    }

    @Test func fnclexClearsThePendingException() {
        let m = machine([0xDB, 0xE2, 0x9B])  // fnclex; fwait
        m.cpu.state.fpu.fsw = 0xB881  // TOP 7, C3? no: B, TOP, ES, IE
        m.cpu.state.fpu.fcw = 0x37E
        #expect(m.run() == .halt)
        #expect(m.cpu.state.fpu.fsw == 0x3800)
    }

    @Test func misalignedOperandsOfAlignedFormsRaiseGP() {
        // movaps xmm0, [rsi+1]; movdqa; fxsave [rsi+8]; addps xmm0, [rsi+4]
        for code in [[0x0F, 0x28, 0x46, 0x01], [0x66, 0x0F, 0x6F, 0x46, 0x01], [0x0F, 0xAE, 0x46, 0x08], [0x0F, 0x58, 0x46, 0x04]] as [[UInt8]] {
            #expect(machine(code).run() == .exception(vector: 13, errorCode: 0), "\(code)")
        }
        // The unaligned forms and scalar operands do not care.
        for code in [[0x0F, 0x10, 0x46, 0x01], [0xF3, 0x0F, 0x6F, 0x46, 0x01], [0xF3, 0x0F, 0x58, 0x46, 0x01]] as [[UInt8]] {
            #expect(machine(code).run() == .halt, "\(code)")
        }
    }

    @Test func reservedMXCSRBitsRaiseGP() {
        // ldmxcsr [rsi] and fxrstor [rsi] with bit 16 set.
        for code in [[0x0F, 0xAE, 0x16], [0x0F, 0xAE, 0x0E]] as [[UInt8]] {
            let m = machine(code)
            m.store64(0x4018, 0x0001_1F80 | 0x1F80)
            m.store64(0x4000, 0x0001_1F80)
            m.cpu.state.fpu.mxcsr = 0x1F80
            #expect(m.run() == .exception(vector: 13, errorCode: 0), "\(code)")
            #expect(m.cpu.state.fpu.mxcsr == 0x1F80)
        }
    }

    @Test func unmaskedExceptionFaultsWithoutWritingTheResult() {
        // addps xmm0, xmm1 with 1/3 + 1 (inexact) and PM clear.
        let m = machine(addps)
        m.cpu.state.fpu.setXMM(0, UInt128(0x3EAA_AAAB))
        m.cpu.state.fpu.setXMM(1, UInt128(0x3F80_0000))
        m.cpu.state.fpu.mxcsr = 0x1F80 & ~(MXCSRFlag.precision << 7)
        #expect(m.run() == .exception(vector: 19, errorCode: nil))
        #expect(m.cpu.state.fpu.xmm(0) == 0x3EAA_AAAB)
        #expect(m.cpu.state.fpu.mxcsr & 0x3F == MXCSRFlag.precision)
        #expect(m.cpu.state.rip == Machine.codeAddress)

        // Without CR4.OSXMMEXCPT the same is #UD.
        let n = machine(addps, cr4: ControlBits.cr4OSFXSR)
        n.cpu.state.fpu.setXMM(0, UInt128(0x3EAA_AAAB))
        n.cpu.state.fpu.setXMM(1, UInt128(0x3F80_0000))
        n.cpu.state.fpu.mxcsr = 0x1F80 & ~(MXCSRFlag.precision << 7)
        #expect(n.run() == .exception(vector: 6, errorCode: nil))
    }

    @Test func unmaskedPreComputationExceptionHidesPostComputationFlags() {
        // divps: lane 0 is 1/0 (ZE, unmasked), lane 1 is 1/3 (PE, masked), lanes 2 and 3 are 1/1.
        let dividend: UInt128 = 0x3F80_0000_3F80_0000_3F80_0000_3F80_0000
        let divisor: UInt128 = 0x3F80_0000_3F80_0000_4040_0000_0000_0000
        let m = machine([0x0F, 0x5E, 0xC1])
        m.cpu.state.fpu.setXMM(0, dividend)
        m.cpu.state.fpu.setXMM(1, divisor)
        m.cpu.state.fpu.mxcsr = 0x1F80 & ~(MXCSRFlag.divideByZero << 7)
        #expect(m.run() == .exception(vector: 19, errorCode: nil))
        #expect(m.cpu.state.fpu.mxcsr & 0x3F == MXCSRFlag.divideByZero)
        // With ZE masked, PE unmasked: both flags, then the fault.
        let n = machine([0x0F, 0x5E, 0xC1])
        n.cpu.state.fpu.setXMM(0, dividend)
        n.cpu.state.fpu.setXMM(1, divisor)
        n.cpu.state.fpu.mxcsr = 0x1F80 & ~(MXCSRFlag.precision << 7)
        #expect(n.run() == .exception(vector: 19, errorCode: nil))
        #expect(n.cpu.state.fpu.mxcsr & 0x3F == MXCSRFlag.divideByZero | MXCSRFlag.precision)
        #expect(n.cpu.state.fpu.xmm(0) == dividend)
    }

    @Test func unmaskedUnderflowIgnoresFTZAndSignalsExactTinyResults() {
        // mulss xmm0, xmm1: 2^-100 × 2^-30 = 2^-130, exact as a denormal; UM clear, FTZ set.
        let m = machine([0xF3, 0x0F, 0x59, 0xC1])
        m.cpu.state.fpu.setXMM(0, UInt128(0x0D80_0000))
        m.cpu.state.fpu.setXMM(1, UInt128(0x3080_0000))
        m.cpu.state.fpu.mxcsr = (0x1F80 | MXCSRFlag.ftz) & ~(MXCSRFlag.underflow << 7)
        #expect(m.run() == .exception(vector: 19, errorCode: nil))
        #expect(m.cpu.state.fpu.mxcsr & 0x3F == MXCSRFlag.underflow)
        // Masked, the same exact denormal raises nothing.
        let n = machine([0xF3, 0x0F, 0x59, 0xC1])
        n.cpu.state.fpu.setXMM(0, UInt128(0x0D80_0000))
        n.cpu.state.fpu.setXMM(1, UInt128(0x3080_0000))
        #expect(n.run() == .halt)
        #expect(n.cpu.state.fpu.xmm(0) == 0x0008_0000)  // 2^-130 = 2^19 × 2^-149
        #expect(n.cpu.state.fpu.mxcsr == 0x1F80)
    }

    @Test func unmaskedInvalidLeavesFlagsAndIntegerDestinationsAlone() {
        // comiss xmm0, xmm1 with a QNaN; cvttss2si eax, xmm1 with a NaN.
        for code in [[0x0F, 0x2F, 0xC1], [0xF3, 0x0F, 0x2C, 0xC1]] as [[UInt8]] {
            let m = machine([0x31, 0xC0] + code)  // xor eax, eax first: ZF PF set
            m.cpu.state.fpu.setXMM(1, UInt128(0x7FC0_0000))
            m.cpu.state.fpu.mxcsr = 0x1F80 & ~(MXCSRFlag.invalid << 7)
            #expect(m.run() == .exception(vector: 19, errorCode: nil), "\(code)")
            #expect(m.flags == flags("ZP"))
            #expect(m[.rax] == 0)
            #expect(m.cpu.state.fpu.mxcsr & 0x3F == MXCSRFlag.invalid)
        }
    }

    @Test func sixteenByteStoreAcrossAPageFaultWritesNothing() {
        // movups [rsi], xmm0 at 0xFFF8 with the page at 0x10000 not present.
        let m = machine([0x0F, 0x11, 0x06])
        m[.rsi] = 0xFFF8
        m.store64(Machine.pageTable + 0x10 * 8, 0)  // unmap 0x10000
        m.store64(0xFFF8, 0x1111_1111_1111_1111)
        m.cpu.state.fpu.setXMM(0, ~0)
        #expect(m.run() == .exception(vector: 14, errorCode: 2))
        #expect(m.load64(0xFFF8) == 0x1111_1111_1111_1111)
        #expect(m.cpu.state.cr2 == 0x10000)
    }

    @Test func sixteenByteAccessOutsideRAMIsAnEmulationFailure() {
        // movdqu xmm0, [rsi] with RSI past the end of RAM (identity-mapped only up to 1 MiB:
        // use real mode, where nothing is paged).
        let m = Machine(.real, code: [0xF3, 0x0F, 0x6F, 0x04, hlt])  // movdqu xmm0, [si]
        m.cpu.state.cr4 |= ControlBits.cr4OSFXSR
        m.cpu.state[.ds] = .realMode(selector: 0xFFFF)
        m[.rsi] = 0x20  // FFFF0 + 20 = 0x100010, beyond 1 MiB
        guard case .emulationFailure = m.run() else { Issue.record("no emulation failure"); return }
    }

    @Test func fnstenvMasksExceptionsAndFnsaveReinitializes() {
        // fnstenv [rsi]; fnstcw [rsi+0x40]; fnsave [rsi+0x80]; fnstcw [rsi+0x42]
        let m = machine([0xD9, 0x36, 0xD9, 0x7E, 0x40, 0xDD, 0xB6, 0x80, 0, 0, 0, 0xD9, 0x7E, 0x42])
        m.cpu.state.fpu.fcw = 0x0360
        m.cpu.state.fpu.tags = 0x01
        m.cpu.state.fpu.setPhysical(0, UInt128(0x3FFF) << 64 | UInt128(1) << 63)  // 1.0 in R0 = ST0
        #expect(m.run() == .halt)
        #expect(m.load64(0x4040) & 0xFFFF == 0x037F)  // FNSTENV masked all six
        #expect(m.load64(0x4042) & 0xFFFF == 0x037F)  // FNSAVE then FNINIT
        #expect(m.cpu.state.fpu.tags == 0)
        // The saved FTW: R0 valid (00), the rest empty (11).
        #expect(m.load64(0x4008) & 0xFFFF == 0xFFFC)
        // ST0 in the FNSAVE image, after the 28-byte environment.
        #expect(m.load64(0x4080 + 28) == 1 << 63)
    }

    @Test func powerOnAndInitializedStatesFollowTheSDMAndKVM() {
        let powerOn = CPUState().fpu
        #expect(powerOn.fcw == 0x40)
        #expect(powerOn.tags == 0xFF)
        #expect(powerOn.mxcsr == 0x1F80)
        var initialized = FloatingPointState.initialized
        #expect(initialized.fcw == 0x37F && initialized.fsw == 0 && initialized.tags == 0)
        #expect(initialized.fullTagWord() == 0xFFFF)
        #expect(initialized.x87IsInitial() && initialized.sseIsInitial())
    }

    @Test func mmxInstructionsEnterMMXStateAndEMMSLeavesIt() {
        let m = machine(pxorMMX + [0x0F, 0x77])  // pxor mm0, mm1; emms
        m.cpu.state.fpu.top = 5
        _ = m.cpu.step()
        #expect(m.cpu.state.fpu.top == 0)
        #expect(m.cpu.state.fpu.tags == 0xFF)
        // The written register's exponent bits are all ones.
        #expect(m.cpu.state.fpu.physical(0) >> 64 == 0xFFFF)
        _ = m.cpu.step()
        #expect(m.cpu.state.fpu.tags == 0)
    }
}
