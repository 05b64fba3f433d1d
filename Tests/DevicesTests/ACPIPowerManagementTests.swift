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
}
