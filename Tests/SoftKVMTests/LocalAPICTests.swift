import Testing
@testable import SoftKVM
import X86

/// SoftKVM's local APIC as a register state machine, alone: the Intel
/// SDM's rules (chapter 11) and KVM's choices where the SDM leaves room.
@Suite("SoftKVM's local APIC registers")
struct LocalAPICTests {
    /// An APIC after RESET, software-enabled with spurious vector 0xFF.
    func enabledAPIC(id: UInt32 = 0) -> KVMLapic {
        var apic = KVMLapic(vcpuID: id)
        _ = apic.reset(initEvent: false, isResetBSP: id == 0)
        _ = apic.regWrite(APIC_SPIV, 0x1FF, now: 0)
        return apic
    }

    func fixed(_ vector: UInt8, level: Bool = false) -> LAPICIRQ {
        LAPICIRQ(vector: vector, deliveryMode: APIC_DM_FIXED, logicalDestination: false, levelTriggered: level, destination: 0)
    }

    @Test func resetGivesKVMsVersionIDAndMaskedLVTs() {
        var apic = KVMLapic(vcpuID: 3)
        _ = apic.reset(initEvent: false, isResetBSP: false)
        #expect(apic.reg(APIC_ID) == 3 << 24)
        #expect(apic.reg(APIC_LVR) == 0x50014)
        #expect(apic.reg(APIC_DFR) == 0xFFFF_FFFF)
        #expect(apic.reg(APIC_SPIV) == 0xFF)
        #expect(!apic.swEnabled)
        for lvt in [APIC_LVTT, APIC_LVTTHMR, APIC_LVTPC, APIC_LVT0, APIC_LVT1, APIC_LVTERR] {
            #expect(apic.reg(lvt) == APIC_LVT_MASKED)
        }
        #expect(apic.apicBase == 0xFEE0_0800)
    }

    @Test func bootstrapProcessorTakesThePICThroughLINT0() {
        var bsp = KVMLapic(vcpuID: 0)
        _ = bsp.reset(initEvent: false, isResetBSP: true)
        #expect(bsp.reg(APIC_LVT0) == 0x700)
        #expect(bsp.apicBase == 0xFEE0_0900)
        #expect(bsp.acceptsPICInterrupt)
        var ap = KVMLapic(vcpuID: 1)
        _ = ap.reset(initEvent: false, isResetBSP: false)
        #expect(!ap.acceptsPICInterrupt)
        // A hardware-disabled APIC passes INTR straight to the CPU.
        _ = ap.setBase(0xFEE0_0000)
        #expect(ap.acceptsPICInterrupt)
    }

    @Test func softwareDisabledAPICRefusesFixedInterrupts() {
        var apic = KVMLapic(vcpuID: 0)
        _ = apic.reset(initEvent: false, isResetBSP: true)
        #expect(apic.acceptIRQ(fixed(0x40)) == 0)
        #expect(apic.hasInterrupt() == nil)
        _ = apic.regWrite(APIC_SPIV, 0x1FF, now: 0)
        #expect(apic.acceptIRQ(fixed(0x40)) == 1)
        #expect(apic.hasInterrupt() == 0x40)
    }

    @Test func lvtWritesWhileSoftwareDisabledStayMasked() {
        var apic = KVMLapic(vcpuID: 1)
        _ = apic.reset(initEvent: false, isResetBSP: false)
        _ = apic.regWrite(APIC_LVT1, 0x400, now: 0)
        #expect(apic.reg(APIC_LVT1) == 0x10400)
        _ = apic.regWrite(APIC_SPIV, 0x1FF, now: 0)
        _ = apic.regWrite(APIC_LVT1, 0x400, now: 0)
        #expect(apic.reg(APIC_LVT1) == 0x400)
        // Clearing the software enable masks every LVT entry.
        _ = apic.regWrite(APIC_SPIV, 0xFF, now: 0)
        #expect(apic.reg(APIC_LVT1) == 0x10400)
    }

    @Test func lvtEntriesKeepOnlyTheirDefinedBits() {
        var apic = enabledAPIC()
        _ = apic.regWrite(APIC_LVTERR, 0xFFFF_FFFF, now: 0)
        #expect(apic.reg(APIC_LVTERR) == 0x110FF)
        _ = apic.regWrite(APIC_LVT0, 0xFFFF_FFFF, now: 0)
        #expect(apic.reg(APIC_LVT0) == 0x1F7FF)
        _ = apic.regWrite(APIC_LVTPC, 0xFFFF_FFFF, now: 0)
        #expect(apic.reg(APIC_LVTPC) == 0x117FF)
    }

    @Test func highestVectorIsDeliveredFirstAndPPRFollowsIt() {
        var apic = enabledAPIC()
        _ = apic.acceptIRQ(fixed(0x41))
        _ = apic.acceptIRQ(fixed(0x81))
        #expect(apic.hasInterrupt() == 0x81)
        apic.acknowledge(0x81)
        #expect(apic.reg(APIC_PROCPRI) == 0x80)
        // 0x41's class (4) is below the one in service (8).
        #expect(apic.hasInterrupt() == nil)
        let eoi = apic.setEOI()
        #expect(eoi?.vector == 0x81)
        #expect(apic.reg(APIC_PROCPRI) == 0)
        #expect(apic.hasInterrupt() == 0x41)
    }

    @Test func taskPriorityMasksInterruptsOfItsClassAndBelow() {
        var apic = enabledAPIC()
        _ = apic.regWrite(APIC_TASKPRI, 0x50, now: 0)
        _ = apic.acceptIRQ(fixed(0x5F))
        #expect(apic.hasInterrupt() == nil)
        _ = apic.acceptIRQ(fixed(0x60))
        #expect(apic.hasInterrupt() == 0x60)
        #expect(apic.read(register: APIC_PROCPRI, now: 0) == 0x50)
        _ = apic.regWrite(APIC_TASKPRI, 0, now: 0)
        #expect(apic.hasInterrupt() == 0x60)
    }

    @Test func eoiOfALevelTriggeredVectorSaysSoForTheIOAPIC() {
        var apic = enabledAPIC()
        _ = apic.acceptIRQ(fixed(0x30, level: true))
        #expect(apic.testVector(0x30, APIC_TMR))
        apic.acknowledge(0x30)
        let effects = apic.regWrite(APIC_EOI, 0, now: 0)
        #expect(effects.eoi?.vector == 0x30)
        #expect(effects.eoi?.levelTriggered == true)
        // An EOI with nothing in service ends nothing.
        #expect(apic.regWrite(APIC_EOI, 0, now: 0).eoi == nil)
    }

    @Test func icrWriteSendsItsMessageAndNeverStaysBusy() {
        var apic = enabledAPIC()
        _ = apic.regWrite(APIC_ICR2, 0x0312_3456, now: 0)
        #expect(apic.reg(APIC_ICR2) == 0x0300_0000)
        // INIT, logical, assert, vector 0x31.
        let effects = apic.regWrite(APIC_ICR, 0x0000_4D31 | APIC_ICR_BUSY, now: 0)
        let ipi = effects.ipi
        #expect(ipi?.vector == 0x31)
        #expect(ipi?.deliveryMode == APIC_DM_INIT)
        #expect(ipi?.logicalDestination == true)
        #expect(ipi?.level == true)
        #expect(ipi?.levelTriggered == false)
        #expect(ipi?.destination == 3)
        #expect(apic.reg(APIC_ICR) & APIC_ICR_BUSY == 0)
        let allButSelf = apic.regWrite(APIC_ICR, APIC_DEST_ALLBUT | 0x4640, now: 0).ipi
        #expect(allButSelf?.shorthand == APIC_DEST_ALLBUT)
        #expect(allButSelf?.deliveryMode == APIC_DM_STARTUP)
    }

    @Test func idLDRAndDFRChangeTheMap() {
        var apic = enabledAPIC()
        #expect(apic.regWrite(APIC_ID, 0x0500_00FF, now: 0).mapDirty)
        #expect(apic.xapicID == 5)
        #expect(apic.regWrite(APIC_LDR, 0x0F00_1234, now: 0).mapDirty)
        #expect(apic.reg(APIC_LDR) == 0x0F00_0000)
        #expect(apic.regWrite(APIC_DFR, 0, now: 0).mapDirty)
        #expect(apic.reg(APIC_DFR) == 0x0FFF_FFFF)
        #expect(!apic.regWrite(APIC_TASKPRI, 0, now: 0).mapDirty)
    }

    @Test func logicalDestinationsMatchFlatAndClusterModels() {
        var apic = enabledAPIC()
        _ = apic.regWrite(APIC_LDR, 0x0400_0000, now: 0)
        #expect(apic.matchLogical(0x04))
        #expect(apic.matchLogical(0x0C))
        #expect(!apic.matchLogical(0x08))
        _ = apic.regWrite(APIC_DFR, APIC_DFR_CLUSTER, now: 0)
        _ = apic.regWrite(APIC_LDR, 0x2100_0000, now: 0)
        #expect(apic.matchLogical(0x21))
        #expect(apic.matchLogical(0x23))
        #expect(!apic.matchLogical(0x11))
        #expect(apic.matchLogical(0xFF))
    }

    @Test func registerReadsFollowKVMsReadableMask() {
        var apic = enabledAPIC()
        #expect(apic.regRead(APIC_EOI, length: 4, now: 0) == nil)
        #expect(apic.regRead(0x3F0, length: 4, now: 0) == nil)  // SELF_IPI is x2APIC's.
        #expect(apic.regRead(APIC_LVR, length: 4, now: 0) == 0x50014)
        #expect(apic.regRead(APIC_LVR + 2, length: 2, now: 0) == 0x5)
        #expect(apic.regRead(APIC_LVR, length: 8, now: 0) == nil)
        // A hardware-disabled APIC's page reads as ones and ignores writes.
        _ = apic.setBase(0xFEE0_0000)
        #expect(apic.mmioRead(APIC_LVR, length: 4, now: 0) == 0xFFFF_FFFF)
        _ = apic.mmioWrite(APIC_TASKPRI, length: 4, value: 0x20, now: 0)
        #expect(apic.reg(APIC_TASKPRI) == 0)
    }

    @Test func onlyAlignedFourByteWritesReachTheRegisters() {
        var apic = enabledAPIC()
        _ = apic.mmioWrite(APIC_TASKPRI, length: 2, value: 0x20, now: 0)
        _ = apic.mmioWrite(APIC_TASKPRI + 4, length: 4, value: 0x20, now: 0)
        #expect(apic.reg(APIC_TASKPRI) == 0)
        _ = apic.mmioWrite(APIC_TASKPRI, length: 4, value: 0x1_0020, now: 0)
        #expect(apic.reg(APIC_TASKPRI) == 0x20)
    }

    @Test func initMessagesReplaceAPendingSIPIAndDeassertIsIgnored() {
        var apic = enabledAPIC(id: 1)
        let sipi = LAPICIRQ(vector: 0x08, deliveryMode: APIC_DM_STARTUP, logicalDestination: false, levelTriggered: false, destination: 1)
        #expect(apic.acceptIRQ(sipi) == 1)
        #expect(apic.pendingSIPI && apic.sipiVector == 8)
        let deassert = LAPICIRQ(vector: 0, deliveryMode: APIC_DM_INIT, logicalDestination: false, level: false,
                                levelTriggered: true, destination: 1)
        #expect(apic.acceptIRQ(deassert) == 0)
        let initIRQ = LAPICIRQ(vector: 0, deliveryMode: APIC_DM_INIT, logicalDestination: false, levelTriggered: false, destination: 1)
        #expect(apic.acceptIRQ(initIRQ) == 1)
        #expect(apic.pendingINIT && !apic.pendingSIPI)
    }

    // MARK: Timer

    @Test(arguments: [(0x0 as UInt32, 2 as UInt32), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32), (0x9, 64), (0xA, 128), (0xB, 1)])
    func divideConfigurationGivesTheDivisor(_ tdcr: UInt32, _ divisor: UInt32) {
        var apic = enabledAPIC()
        _ = apic.regWrite(APIC_TDCR, tdcr, now: 0)
        #expect(apic.divideCount == divisor)
    }

    @Test func oneShotCountsDownAndFiresOnce() {
        var apic = enabledAPIC()
        _ = apic.regWrite(APIC_TDCR, 0xB, now: 0)  // Divide by 1: 1 ns per count.
        _ = apic.regWrite(APIC_LVTT, 0x40, now: 0)
        _ = apic.regWrite(APIC_TMICT, 1_000_000, now: 1000)
        #expect(apic.nextExpiration == 1_001_000)
        #expect(apic.read(register: APIC_TMCCT, now: 251_000) == 750_000)
        apic.timerFunction(now: 1_000_999)
        #expect(apic.timer.pending == 0)
        apic.timerFunction(now: 1_001_000)
        apic.injectPendingTimerIRQs()
        #expect(apic.hasInterrupt() == 0x40)
        #expect(apic.nextExpiration == nil)
        #expect(apic.read(register: APIC_TMCCT, now: 1_001_000) == 0)
    }

    @Test func periodicTimerRearmsEveryPeriodAndIsLimitedTo200us() {
        var apic = enabledAPIC()
        _ = apic.regWrite(APIC_TDCR, 0xB, now: 0)
        apic.timer.modeMask = 3 << 17
        _ = apic.regWrite(APIC_LVTT, APIC_LVT_TIMER_PERIODIC | 0x40, now: 0)
        _ = apic.regWrite(APIC_TMICT, 1000, now: 0)
        // 1 us asked, 200 us given.
        #expect(apic.nextExpiration == 200_000)
        apic.timerFunction(now: 200_000)
        #expect(apic.nextExpiration == 400_000)
        #expect(apic.read(register: APIC_TMCCT, now: 300_000) == 100_000)
        apic.injectPendingTimerIRQs()
        #expect(apic.hasInterrupt() == 0x40)
    }

    @Test func maskedTimerExpiresWithoutAnInterrupt() {
        var apic = enabledAPIC()
        _ = apic.regWrite(APIC_LVTT, APIC_LVT_MASKED | 0x40, now: 0)
        _ = apic.regWrite(APIC_TMICT, 10, now: 0)
        apic.timerFunction(now: 1000)
        apic.injectPendingTimerIRQs()
        #expect(apic.hasInterrupt() == nil)
    }

    @Test func tscDeadlineModeArmsFromTheMSRAndStopsTheCount() {
        var apic = enabledAPIC()
        let tsc = TimeStampCounter(kilohertz: 2_000_000, offset: 0)  // 2 cycles per ns
        // Without TSC-deadline in the guest's CPUID the mode bit is dropped.
        _ = apic.regWrite(APIC_LVTT, APIC_LVT_TIMER_TSCDEADLINE | 0x50, now: 0)
        #expect(apic.timer.mode == APIC_LVT_TIMER_ONESHOT)
        apic.timer.modeMask = 3 << 17
        _ = apic.regWrite(APIC_TMICT, 500, now: 0)
        _ = apic.regWrite(APIC_LVTT, APIC_LVT_TIMER_TSCDEADLINE | 0x50, now: 0)
        #expect(apic.timer.mode == APIC_LVT_TIMER_TSCDEADLINE)
        #expect(apic.reg(APIC_TMICT) == 0)
        _ = apic.regWrite(APIC_TMICT, 500, now: 0)
        #expect(apic.reg(APIC_TMICT) == 0)
        apic.setTSCDeadline(2_000_000, tsc: tsc, now: 0)
        #expect(apic.tscDeadlineMSR == 2_000_000)
        #expect(apic.nextExpiration == 1_000_000)
        apic.timerFunction(now: 1_000_000)
        apic.injectPendingTimerIRQs()
        #expect(apic.hasInterrupt() == 0x50)
        #expect(apic.tscDeadlineMSR == 0)
        // A deadline already passed fires at once.
        apic.setTSCDeadline(1, tsc: tsc, now: 5)
        #expect(apic.timer.pending == 1)
    }

    @Test func changingTheDivisorScalesWhatIsLeft() {
        var apic = enabledAPIC()
        _ = apic.regWrite(APIC_TDCR, 0xB, now: 0)
        _ = apic.regWrite(APIC_LVTT, 0x40, now: 0)
        _ = apic.regWrite(APIC_TMICT, 1000, now: 0)
        _ = apic.regWrite(APIC_TDCR, 0x0, now: 500)  // Divide by 2: the remaining 500 ns take 1000.
        #expect(apic.nextExpiration == 1500)
    }

    @Test func stateRoundTripsThroughThePage() {
        var apic = enabledAPIC(id: 2)
        _ = apic.regWrite(APIC_TASKPRI, 0x30, now: 0)
        _ = apic.acceptIRQ(fixed(0x77))
        let tsc = TimeStampCounter()
        let page = apic.getState(now: 0)
        #expect(page.count == 1024)
        var copy = KVMLapic(vcpuID: 2)
        _ = copy.reset(initEvent: false, isResetBSP: false)
        _ = copy.setState(page, tsc: tsc, now: 0)
        #expect(copy.getState(now: 0) == page)
        #expect(copy.swEnabled)
        #expect(copy.hasInterrupt() == 0x77)
    }

    @Test func timeScaleOfKVMClockMatchesTheFrequency() {
        // 2 GHz: exactly half a nanosecond per cycle.
        let (shift, multiplier) = kvm_get_time_scale(scaledHz: 1_000_000_000, baseHz: 2_000_000_000)
        #expect(shift == 0 && multiplier == 1 << 31)
        // 2.5 GHz: 0.4 ns per cycle, to 32 bits of fraction.
        let scale = kvm_get_time_scale(scaledHz: 1_000_000_000, baseHz: 2_500_000_000)
        let ns = (UInt64(2_500_000_000) >> UInt64(-Int(min(scale.shift, 0)))) << UInt64(max(scale.shift, 0))
        #expect((ns * UInt64(scale.multiplier)) >> 32 >= 999_999_990)
    }
}

@Suite("SoftKVM's local APIC timer on the vCPU's thread")
struct LocalAPICTimerServiceTests {
    /// A TSC deadline already past when written (Linux writes one when an
    /// event is due at once) is delivered at the next boundary, not lost.
    @Test func deadlineInThePastIsDeliveredAtOnce() {
        let apic = LocalAPIC(vcpuID: 0, index: 0)
        let tsc = TimeStampCounter()
        apic.withState { lapic in
            _ = lapic.reset(initEvent: false, isResetBSP: true)
            _ = lapic.regWrite(APIC_SPIV, 0x1FF, now: 0)
            lapic.timer.modeMask = 3 << 17
            _ = lapic.regWrite(APIC_LVTT, APIC_LVT_TIMER_TSCDEADLINE | 0xEC, now: 0)
        }
        #expect(apic.nextTimerExpiration == .max)
        let now = TimeStampCounter.hostNanoseconds()
        apic.withState { $0.setTSCDeadline(tsc.value(atHostNanoseconds: now) - 1000, tsc: tsc, now: now) }
        #expect(apic.nextTimerExpiration == 0)
        SoftBackend().serviceTimer(apic, now: now)
        #expect(apic.withState { $0.hasInterrupt() } == 0xEC)
        #expect(apic.nextTimerExpiration == .max)
    }

    /// The same for a one-shot count that has run out by the time it is loaded.
    @Test func oneShotCountAlreadyRunOutIsDelivered() {
        let apic = LocalAPIC(vcpuID: 0, index: 0)
        apic.withState { lapic in
            _ = lapic.reset(initEvent: false, isResetBSP: true)
            _ = lapic.regWrite(APIC_SPIV, 0x1FF, now: 0)
            _ = lapic.regWrite(APIC_TDCR, 0xB, now: 0)
            _ = lapic.regWrite(APIC_LVTT, 0xEC, now: 0)
            lapic.timer.targetExpiration = 0
            lapic.setReg(APIC_TMICT, 1)
            lapic.timer.period = 1
            lapic.restartTimer(now: 10)
        }
        #expect(apic.nextTimerExpiration == 0)
        SoftBackend().serviceTimer(apic, now: 10)
        #expect(apic.withState { $0.hasInterrupt() } == 0xEC)
    }
}
