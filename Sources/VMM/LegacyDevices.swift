import Devices
import Foundation
import LinuxBoot

/// The PC's devices on the port bus besides COM1: the i8042 (reset), the
/// CMOS RTC with its interrupt on IRQ 8, the ACPI PM registers (poweroff,
/// the SCI on the FADT's IRQ, the power button), POST port 0x80 and reset
/// control; and the device timer that brings the RTC's and the PM timer's
/// interrupts on time. Their callbacks run with the device lock held.
final class LegacyDevices: @unchecked Sendable {
    static let rtcIRQ: UInt32 = 8

    let keyboard: I8042
    let rtc: CMOSRTC
    let powerManagement: ACPIPowerManagement
    let timer: DeviceTimer

    /// The host's clocks: wall time for the RTC, monotonic nanoseconds for the PM timer.
    static func realtime() -> RTCInstant {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return RTCInstant(seconds: Int64(now.tv_sec), nanoseconds: Int32(now.tv_nsec))
    }

    static func monotonic() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    /// Registers the devices on `ports` at the addresses `acpi` gives the
    /// guest. `irq(n)` drives ISA IRQ n.
    init(acpi: ACPIConfiguration, ports: Bus, deviceLock: NSLock, irq: (UInt32) -> (Bool) -> Void,
         reset: @escaping () -> Void, powerOff: @escaping () -> Void) throws(BusError) {
        keyboard = I8042(keyboardInterrupt: irq(LinuxMachine.keyboardIRQ), auxInterrupt: irq(LinuxMachine.auxIRQ), reset: reset)
        let rtc = CMOSRTC(clock: Self.realtime, interrupt: irq(Self.rtcIRQ))
        let pm = ACPIPowerManagement(sleepTypeS5: acpi.sleepTypeS5, clock: Self.monotonic,
                                     interrupt: irq(UInt32(acpi.sciIRQ)), powerOff: powerOff)
        self.rtc = rtc
        powerManagement = pm
        let timer = DeviceTimer(deviceLock: deviceLock, sources: [
            DeviceTimer.Source(nextEvent: {
                rtc.nextEventTime.map { Date(timeIntervalSince1970: Double($0.seconds) + Double($0.nanoseconds) / 1e9) }
            }, update: rtc.update),
            DeviceTimer.Source(nextEvent: {
                pm.nextEventTime.map { Date(timeIntervalSinceNow: (Double($0) - Double(Self.monotonic())) / 1e9) }
            }, update: pm.update),
        ])
        self.timer = timer
        let keyboard = self.keyboard
        try ports.register(ByteRegisterDevice(read: { keyboard.read(offset: I8042.dataOffset + $0) },
                                              write: { keyboard.write(offset: I8042.dataOffset + $0, value: $1) }),
                           at: 0x60, size: 1, name: "i8042 data")
        try ports.register(ByteRegisterDevice(read: { keyboard.read(offset: I8042.commandOffset + $0) },
                                              write: { keyboard.write(offset: I8042.commandOffset + $0, value: $1) }),
                           at: 0x64, size: 1, name: "i8042 command")
        // Any access may move the RTC's next interrupt: a rate or enable
        // written, or register C read, which lets the line rise again.
        try ports.register(ByteRegisterDevice(read: { offset in
                                                  defer { timer.reschedule() }
                                                  return rtc.read(offset: offset)
                                              },
                                              write: { offset, value in
                                                  rtc.write(offset: offset, value: value)
                                                  timer.reschedule()
                                              }),
                           at: UInt64(LinuxMachine.rtcPort), size: 2, name: "CMOS RTC")
        try ports.register(PowerManagementDevice(pm, afterWrite: timer.reschedule), at: UInt64(acpi.pm1aEventPort),
                           size: UInt64(ACPIPowerManagement.size), name: "ACPI PM")
        try ports.register(IgnoredDevice(), at: UInt64(LinuxMachine.postPort), size: 1, name: "POST")
        try ports.register(ResetControlDevice(reset: reset), at: UInt64(acpi.resetPort), size: 1, name: "reset control")
    }
}

final class PowerManagementDevice: BusDevice {
    let pm: ACPIPowerManagement
    private let afterWrite: () -> Void

    init(_ pm: ACPIPowerManagement, afterWrite: @escaping () -> Void = {}) {
        self.pm = pm
        self.afterWrite = afterWrite
    }

    func read(offset: UInt64, size: Int) -> UInt64 { UInt64(pm.read(offset: Int(offset), size: min(size, 4))) }

    func write(offset: UInt64, size: Int, value: UInt64) {
        pm.write(offset: Int(offset), size: min(size, 4), value: UInt32(truncatingIfNeeded: value))
        afterWrite()
    }
}
