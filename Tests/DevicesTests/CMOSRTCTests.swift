import Testing
@testable import Devices

@Suite struct CMOSRTCTests {
    // 2024-02-29 15:04:05 UTC, a Thursday.
    static let leapDay = RTCInstant(seconds: 1_709_219_045)

    func read(_ rtc: CMOSRTC, _ index: UInt8) -> UInt8 {
        rtc.write(offset: 0, value: index)
        return rtc.read(offset: 1)
    }

    func write(_ rtc: CMOSRTC, _ index: UInt8, _ value: UInt8) {
        rtc.write(offset: 0, value: index)
        rtc.write(offset: 1, value: value)
    }

    @Test func timeReadsInBCDByDefault() {
        let rtc = CMOSRTC(clock: { Self.leapDay })
        #expect(read(rtc, 0x00) == 0x05)
        #expect(read(rtc, 0x02) == 0x04)
        #expect(read(rtc, 0x04) == 0x15)
        #expect(read(rtc, 0x06) == 0x05)
        #expect(read(rtc, 0x07) == 0x29)
        #expect(read(rtc, 0x08) == 0x02)
        #expect(read(rtc, 0x09) == 0x24)
        #expect(read(rtc, 0x32) == 0x20)
    }

    @Test func binaryModeGivesPlainNumbers() {
        let rtc = CMOSRTC(clock: { Self.leapDay })
        write(rtc, 0x0b, 0x06)
        #expect(read(rtc, 0x04) == 15)
        #expect(read(rtc, 0x07) == 29)
        #expect(read(rtc, 0x09) == 24)
    }

    @Test func twelveHourModeSetsPMBit() {
        let rtc = CMOSRTC(clock: { Self.leapDay })
        write(rtc, 0x0b, 0x00)
        #expect(read(rtc, 0x04) == 0x83)
        write(rtc, 0x0b, 0x04)
        #expect(read(rtc, 0x04) == 0x83)
        let midnight = CMOSRTC(clock: { RTCInstant(seconds: 0) })
        write(midnight, 0x0b, 0x00)
        #expect(read(midnight, 0x04) == 0x12)
    }

    @Test func updateInProgressIsSetJustBeforeTheSecondTurns() {
        var now = RTCInstant(seconds: 100, nanoseconds: 500_000_000)
        let rtc = CMOSRTC(clock: { now })
        #expect(read(rtc, 0x0a) == 0x26)
        now.nanoseconds = 999_900_000
        #expect(read(rtc, 0x0a) == 0xa6)
    }

    @Test func statusDReportsValidRAMAndIndexBit7MasksNMI() {
        let rtc = CMOSRTC(clock: { Self.leapDay })
        rtc.write(offset: 0, value: 0x8d)
        #expect(rtc.nmiMasked)
        #expect(rtc.read(offset: 1) == 0x80)
        rtc.write(offset: 0, value: 0x0d)
        #expect(!rtc.nmiMasked)
    }

    @Test func timeSetByGuestKeepsRunningFromHostClock() {
        var now = Self.leapDay
        let rtc = CMOSRTC(clock: { now })
        write(rtc, 0x0b, 0x82)  // SET, 24h, BCD
        write(rtc, 0x04, 0x09)
        write(rtc, 0x09, 0x25)
        write(rtc, 0x0b, 0x02)
        now.seconds += 60
        #expect(read(rtc, 0x04) == 0x09)
        #expect(read(rtc, 0x02) == 0x05)
        #expect(read(rtc, 0x09) == 0x25)
        #expect(read(rtc, 0x08) == 0x03)  // 2025 has no 29 February: 1 March
        #expect(read(rtc, 0x07) == 0x01)
    }

    @Test func cmosRAMHoldsBytes() {
        let rtc = CMOSRTC(clock: { Self.leapDay })
        write(rtc, 0x40, 0xab)
        #expect(read(rtc, 0x40) == 0xab)
    }

    // MARK: Interrupts

    /// A clock the test moves, and the IRQ line's changes.
    final class Harness {
        var now: RTCInstant
        var levels: [Bool] = []
        var rtc: CMOSRTC!

        init(_ start: RTCInstant = CMOSRTCTests.leapDay) {
            now = start
            rtc = CMOSRTC(clock: { [unowned self] in self.now }, interrupt: { [unowned self] in self.levels.append($0) })
        }

        func advance(nanoseconds: Int64) {
            let total = now.seconds * 1_000_000_000 + Int64(now.nanoseconds) + nanoseconds
            now = RTCInstant(seconds: total / 1_000_000_000, nanoseconds: Int32(total % 1_000_000_000))
        }
    }

    /// With PIE, the periodic flag at register A's rate (1024 Hz at reset)
    /// raises IRQ 8 with IRQF; reading register C gives the flags, clears
    /// them and lowers the line.
    @Test func periodicInterruptAtTheRateOfRegisterAUntilRegisterCIsRead() {
        let h = Harness()
        write(h.rtc, 0x0b, 0x42)  // PIE, 24 h
        #expect(h.levels.isEmpty)
        h.advance(nanoseconds: 900_000)  // less than 1/1024 s: no edge yet
        h.rtc.update()
        #expect(h.levels.isEmpty)
        h.advance(nanoseconds: 100_000)
        h.rtc.update()
        #expect(h.levels == [true])
        #expect(read(h.rtc, 0x0c) == 0xc0)
        #expect(h.levels == [true, false])
        #expect(read(h.rtc, 0x0c) == 0x00)
    }

    /// Rate select 15 is 2 Hz, and 1 is 256 Hz (as 8); 0 gives no flag.
    @Test func rateSelectGivesThePeriod() {
        let h = Harness()
        write(h.rtc, 0x0a, 0x2f)
        _ = read(h.rtc, 0x0c)
        h.advance(nanoseconds: 499_000_000)
        #expect(read(h.rtc, 0x0c) & 0x40 == 0)
        h.advance(nanoseconds: 2_000_000)
        #expect(read(h.rtc, 0x0c) & 0x40 == 0x40)
        write(h.rtc, 0x0a, 0x21)
        _ = read(h.rtc, 0x0c)
        h.advance(nanoseconds: 3_907_000)
        #expect(read(h.rtc, 0x0c) & 0x40 == 0x40)
        write(h.rtc, 0x0a, 0x20)
        h.advance(nanoseconds: 1_000_000_000)
        #expect(read(h.rtc, 0x0c) & 0x40 == 0)
    }

    /// The flags are set whether or not their interrupt is enabled: PF
    /// read with PIE off has no IRQF, and enabling PIE then raises the line.
    @Test func flagsSetWithoutTheirEnableAndRaiseTheLineWhenEnabled() {
        let h = Harness()
        h.advance(nanoseconds: 2_000_000)
        h.rtc.update()
        #expect(h.levels.isEmpty)
        write(h.rtc, 0x0b, 0x42)
        #expect(h.levels == [true])
        write(h.rtc, 0x0b, 0x02)  // IRQF follows the enables
        #expect(h.levels == [true, false])
        #expect(read(h.rtc, 0x0c) == 0x40)
    }

    /// UIE: the update-ended flag once the second turns.
    @Test func updateEndedInterruptWhenTheSecondTurns() {
        let h = Harness(RTCInstant(seconds: 1_709_219_045, nanoseconds: 600_000_000))
        write(h.rtc, 0x0b, 0x12)
        write(h.rtc, 0x0a, 0x20)  // no periodic rate
        h.advance(nanoseconds: 300_000_000)
        h.rtc.update()
        #expect(h.levels.isEmpty)
        h.advance(nanoseconds: 200_000_000)
        h.rtc.update()
        #expect(h.levels == [true])
        #expect(read(h.rtc, 0x0c) == 0x90)
    }

    /// AIE: the alarm flag when hours, minutes and seconds match the alarm
    /// registers, a value of 0xc0 or more matching any.
    @Test func alarmInterruptWhenTheTimeMatches() {
        let h = Harness()  // 15:04:05
        write(h.rtc, 0x0a, 0x20)
        write(h.rtc, 0x01, 0x08)
        write(h.rtc, 0x03, 0x04)
        write(h.rtc, 0x05, 0xff)  // any hour
        write(h.rtc, 0x0b, 0x22)
        h.advance(nanoseconds: 2_000_000_000)  // 15:04:07
        h.rtc.update()
        #expect(h.levels.isEmpty)
        #expect(read(h.rtc, 0x0c) == 0x10)  // UF only: no IRQ without UIE
        h.advance(nanoseconds: 1_000_000_000)  // 15:04:08
        h.rtc.update()
        #expect(h.levels == [true])
        #expect(read(h.rtc, 0x0c) == 0xb0)
    }

    /// SET stops the updates and clears UIE.
    @Test func setStopsUpdatesAndClearsUIE() {
        let h = Harness()
        write(h.rtc, 0x0a, 0x20)
        write(h.rtc, 0x0b, 0x92)
        #expect(read(h.rtc, 0x0b) == 0x82)
        h.advance(nanoseconds: 3_000_000_000)
        #expect(read(h.rtc, 0x0c) == 0x00)
    }

    /// When the machine must look again: the next periodic edge with PIE,
    /// the next second with UIE or AIE, nothing while the line is high or
    /// nothing is enabled.
    @Test func nextEventTimeIsTheNextEnabledEdge() {
        let h = Harness(RTCInstant(seconds: 100, nanoseconds: 0))
        #expect(h.rtc.nextEventTime == nil)
        write(h.rtc, 0x0b, 0x42)
        #expect(h.rtc.nextEventTime == RTCInstant(seconds: 100, nanoseconds: 976_563))  // 1/1024 s, rounded up
        write(h.rtc, 0x0b, 0x12)
        #expect(h.rtc.nextEventTime == RTCInstant(seconds: 101))
        h.advance(nanoseconds: 1_000_000_000)
        h.rtc.update()
        #expect(h.levels == [true])
        #expect(h.rtc.nextEventTime == nil)
    }
}
