import Testing
@testable import Devices

final class PMRecorder {
    var powerOffs = 0
    var levels: [Bool] = []
    var nanoseconds: UInt64 = 0
}

@Suite struct ACPIPowerManagementTests {
    func make() -> (ACPIPowerManagement, PMRecorder) {
        let recorder = PMRecorder()
        let pm = ACPIPowerManagement(sleepTypeS5: 5, clock: { recorder.nanoseconds },
                                     interrupt: { recorder.levels.append($0) }, powerOff: { recorder.powerOffs += 1 })
        return (pm, recorder)
    }

    @Test func sleepEnableWithS5TypePowersOff() {
        let (pm, recorder) = make()
        pm.write(offset: 4, size: 2, value: 5 << 10)
        #expect(recorder.powerOffs == 0)
        pm.write(offset: 4, size: 2, value: 5 << 10 | 1 << 13)
        #expect(recorder.powerOffs == 1)
        #expect(pm.read(offset: 4, size: 2) & (1 << 13) == 0)
    }

    @Test func sleepEnableWithOtherTypeDoesNotPowerOff() {
        let (pm, recorder) = make()
        pm.write(offset: 4, size: 2, value: 1 << 10 | 1 << 13)
        #expect(recorder.powerOffs == 0)
    }

    @Test func controlReadsSCIEnabledAtReset() {
        let (pm, _) = make()
        #expect(pm.read(offset: 4, size: 2) & 1 == 1)
    }

    @Test func powerButtonRaisesSCIWhenEnabledAndStatusWriteClearsIt() {
        let (pm, recorder) = make()
        pm.pressPowerButton()
        #expect(recorder.levels.isEmpty)
        #expect(pm.read(offset: 0, size: 2) & 0x100 == 0x100)
        pm.write(offset: 2, size: 2, value: 0x100)
        #expect(recorder.levels == [true])
        pm.write(offset: 0, size: 2, value: 0x100)
        #expect(recorder.levels == [true, false])
        #expect(pm.read(offset: 0, size: 2) & 0x100 == 0)
    }

    @Test func timerCountsAt3579545HzFromTheClock() {
        let (pm, recorder) = make()
        recorder.nanoseconds = 1_000_000_000
        #expect(pm.read(offset: 8, size: 4) == 3_579_545)
        recorder.nanoseconds = 2_000_000_000
        #expect(pm.read(offset: 8, size: 4) == 7_159_090)
    }

    /// The timer's full 32 bits from a monotonic clock of any age (a
    /// 64-bit product of nanoseconds and the frequency overflows after 85 minutes).
    @Test func timerIsRightAfterHoursOfHostUptime() {
        let (pm, recorder) = make()
        recorder.nanoseconds = 10_000_000_000_000  // 10,000 s
        #expect(pm.read(offset: 8, size: 4) == UInt32(35_795_450_000 % (1 << 32)))
    }

    /// TMR_STS sets when the timer's bit 31 changes; with TMR_EN the SCI
    /// rises, and writing the bit back clears it.
    @Test func timerStatusSetsWhenBit31ChangesAndRaisesTheSCIWithTimerEnable() {
        let (pm, recorder) = make()
        pm.write(offset: 2, size: 2, value: 1)  // TMR_EN
        // 2^31 ticks at 3.579545 MHz: 599.9 s.
        recorder.nanoseconds = 599_000_000_000
        pm.update()
        #expect(recorder.levels.isEmpty)
        #expect(pm.nextEventTime == 599_932_015_941)  // ceil(2^31 * 10^9 / 3579545)
        recorder.nanoseconds = 600_000_000_000
        pm.update()
        #expect(recorder.levels == [true])
        #expect(pm.read(offset: 0, size: 2) & 1 == 1)
        #expect(pm.nextEventTime == nil)
        pm.write(offset: 0, size: 2, value: 1)
        #expect(recorder.levels == [true, false])
    }
}
