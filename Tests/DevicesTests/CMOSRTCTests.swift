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
}
