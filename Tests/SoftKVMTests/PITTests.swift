import CLinuxKVM
import Foundation
import Testing
@testable import KVM
@testable import SoftKVM

/// The 8254's counting as the kernel models it, on SoftKVM's state alone
/// with a clock the test sets: 1 ms is 1193 input clocks (1.193182 MHz).
@Suite("SoftKVM's 8254 state machine")
struct PITStateTests {
    static let loaded: Int64 = 1_000_000_000
    static let oneMillisecond: Int64 = 1_000_000

    /// Counter 2 programmed with `control` and `count` (low byte then high
    /// byte) at `loaded`.
    func counter2(control: UInt8, count: UInt16) -> KPITState {
        var s = KPITState()
        _ = s.ioportWrite(3, value: control, now: Self.loaded)
        _ = s.ioportWrite(2, value: UInt8(count & 0xFF), now: Self.loaded)
        _ = s.ioportWrite(2, value: UInt8(count >> 8), now: Self.loaded)
        return s
    }

    @Test func mulU64U32DivKeepsTheFull128BitProduct() {
        #expect(mul_u64_u32_div(1_000_000, KVM_PIT_FREQ, NSEC_PER_SEC) == 1193)
        // 2^63 * 10^9 / 10^9 needs more than 64 bits in between.
        #expect(mul_u64_u32_div(1 << 63, NSEC_PER_SEC, NSEC_PER_SEC) == 1 << 63)
    }

    /// Mode 0 counts down once and wraps; its output rises at zero and stays.
    @Test func modeZeroCountsDownAndItsOutputRisesAtZero() {
        let s = counter2(control: 0xB0, count: 2000)
        #expect(s.channels[2].mode == 0 && s.channels[2].count == 2000)
        #expect(s.count(2, now: Self.loaded + Self.oneMillisecond) == 2000 - 1193)
        #expect(!s.out(2, now: Self.loaded + Self.oneMillisecond))
        let later = Self.loaded + 2 * Self.oneMillisecond  // 2386 clocks: past zero
        #expect(s.out(2, now: later))
        #expect(s.count(2, now: later) == (2000 - 2386) & 0xFFFF)
    }

    /// Mode 2 reloads at zero; mode 3 counts by twos, its output high for
    /// the first half of the period.
    @Test func periodicModesReload() {
        let rate = counter2(control: 0xB4, count: 1000)
        #expect(rate.count(2, now: Self.loaded + Self.oneMillisecond) == 1000 - 193)
        let square = counter2(control: 0xB6, count: 1000)
        #expect(square.count(2, now: Self.loaded + Self.oneMillisecond) == 1000 - (2 * 1193) % 1000)
        #expect(square.out(2, now: Self.loaded + Self.oneMillisecond))  // 1193 % 1000 = 193 clocks in: high
        #expect(!square.out(2, now: Self.loaded + 600_000))  // 715 clocks in: the second half, low
    }

    /// Modes 6 and 7 are 2 and 3; a count of 0 is 65536.
    @Test func modesSixAndSevenAreTwoAndThree() {
        var s = KPITState()
        _ = s.ioportWrite(3, value: 0x3C, now: 0)
        #expect(s.channels[0].mode == 2)
        _ = s.ioportWrite(3, value: 0x7E, now: 0)
        #expect(s.channels[1].mode == 3)
        _ = s.ioportWrite(1, value: 0, now: 0)
        _ = s.ioportWrite(1, value: 0, now: 0)
        #expect(s.channels[1].count == 0x10000)
    }

    /// A latched count is read low byte then high byte, and a second latch
    /// before it is read changes nothing.
    @Test func latchHoldsTheCountUntilRead() {
        var s = counter2(control: 0xB0, count: 0x1234)
        _ = s.ioportWrite(3, value: 0x80, now: Self.loaded)
        _ = s.ioportWrite(3, value: 0x80, now: Self.loaded + Self.oneMillisecond)
        #expect(s.ioportRead(2, now: Self.loaded + 5 * Self.oneMillisecond) == 0x34)
        #expect(s.ioportRead(2, now: Self.loaded + 5 * Self.oneMillisecond) == 0x12)
        #expect(s.channels[2].countLatched == 0)
    }

    /// Read-back of status and count: the status first (output, access,
    /// mode, BCD), then the count.
    @Test func readBackGivesStatusThenCount() {
        var s = counter2(control: 0xB1, count: 0x5000)  // BCD bit kept; the kernel counts in binary
        _ = s.ioportWrite(3, value: 0xC8, now: Self.loaded)  // count and status of counter 2
        #expect(s.ioportRead(2, now: Self.loaded) == 0x31)
        #expect(s.ioportRead(2, now: Self.loaded) == 0x00)
        #expect(s.ioportRead(2, now: Self.loaded) == 0x50)
    }

    /// Loading counter 0 in mode 2 starts a periodic timer; in mode 0 a
    /// one-shot; in mode 5 none.
    @Test func counterZeroLoadsStartTheTimer() {
        var s = KPITState()
        _ = s.ioportWrite(3, value: 0x34, now: 0)
        _ = s.ioportWrite(0, value: 0x9C, now: 0)
        #expect(s.ioportWrite(0, value: 0x2E, now: 0) == .start(count: 11932, periodic: true))
        _ = s.ioportWrite(3, value: 0x10, now: 0)
        #expect(s.ioportWrite(0, value: 5, now: 0) == .start(count: 5, periodic: false))
        _ = s.ioportWrite(3, value: 0x1A, now: 0)
        #expect(s.ioportWrite(0, value: 5, now: 0) == .stop)
    }

    /// Counter 0 reads from its timer: a periodic timer whose expiry was
    /// not handled yet counts as reloaded on time.
    @Test func counterZeroReadsFromItsTimer() {
        var s = KPITState()
        s.channels[0].mode = 2
        s.channels[0].count = 11932
        s.period = 10 * Self.oneMillisecond
        s.isPeriodic = true
        s.timerArmed = true
        s.expires = Self.loaded + s.period
        #expect(s.count(0, now: Self.loaded + Self.oneMillisecond) == 11932 - 1193)
        // 2.5 periods later, the thread not having run: half a period in.
        #expect(s.count(0, now: Self.loaded + 25 * Self.oneMillisecond) == 11932 - 5965)
    }
}

/// The PIT's ticks on SoftKVM alone (the differential suite needs the host).
@Suite("SoftKVM's PIT timer")
struct PITTimerTests {
    /// Counter 0 at 1 kHz, IRQ 0 through the PIC: twenty ticks wake the
    /// halted guest in about 20 ms.
    @Test func counterZeroTicksWakeAHaltedGuest() throws {
        let code: [UInt8] = [
            0xB0, 0x11, 0xE6, 0x20, 0xB0, 0x20, 0xE6, 0x21, 0xB0, 0x04, 0xE6, 0x21, 0xB0, 0x01, 0xE6, 0x21,
            0xB0, 0xFE, 0xE6, 0x21,  // PIC: base 0x20, IRQ 0 only
            0xB0, 0x34, 0xE6, 0x43, 0xB0, 0xA9, 0xE6, 0x40, 0xB0, 0x04, 0xE6, 0x40,  // 1193: 1 kHz
            0xFB,  // sti
            0xF4, 0x80, 0x3E, 0x00, 0x30, 0x14, 0x72, 0xF8,  // wait: hlt; cmp byte [0x3000], 20; jb wait
            0xB0, 0x99, 0xE6, 0xF1,
        ]
        let guest = try RealModeGuest(hypervisor: Backend.soft.hypervisor(), code: code, irqchip: true)
        try guest.vm.createPIT(flags: .speakerDummy)
        try guest.memory.store(UInt32(0x0000_2000), at: 0x20 * 4)
        try guest.memory.write([0xFE, 0x06, 0x00, 0x30, 0xB0, 0x20, 0xE6, 0x20, 0xCF], at: 0x2000)
        let start = ktime_get()
        let exit = try guest.vcpu.runWithDeadline()
        let seconds = Double(ktime_get() - start) / 1e9
        #expect(exit == .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x99)))
        #expect(try guest.memory.read(at: 0x3000, count: 1)[0] == 20)
        #expect(seconds > 0.018 && seconds < 2, "twenty ticks took \(seconds) s")
    }

    /// The PIT's thread ends with its VM, and the PIT goes with them.
    @Test func thePITGoesWithItsVM() throws {
        let backend = SoftBackend()
        weak var pit: SoftPIT?
        do {
            let vm = try Hypervisor(backend: backend).createVM()
            try vm.createIrqchip()
            try vm.createPIT()
            var state = try vm.pitState()
            state.channels[0].mode = 2
            state.channels[0].count = 1193
            try vm.setPITState(state)
            guard case .vm(let soft) = backend.lookup(vm.rawDescriptor) else {
                Issue.record("the VM descriptor is not SoftKVM's VM")
                return
            }
            pit = soft.pit
            #expect(pit != nil)
            usleep(5_000)  // a few ticks on its thread
        }
        #expect(pit == nil)
    }
}
