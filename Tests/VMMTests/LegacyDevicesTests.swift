import Accelerators
import Devices
import Foundation
import KVM
import LinuxBoot
import Testing
@testable import VMM

/// The legacy devices as LinuxMachine wires them: on the port bus at the
/// FADT's addresses, their interrupts on the ISA IRQs the MADT and FADT
/// give, brought on time by the device timer.
@Suite struct LegacyDevicesTests {
    /// The IRQ lines' changes, as (IRQ, level).
    final class Lines: @unchecked Sendable {
        private let lock = NSLock()
        private var changes: [(UInt32, Bool)] = []

        func irq(_ line: UInt32) -> (Bool) -> Void {
            { level in self.lock.withLock { self.changes.append((line, level)) } }
        }

        func levels(of line: UInt32) -> [Bool] { lock.withLock { changes.filter { $0.0 == line }.map(\.1) } }

        /// Waits up to `seconds` for `line`'s changes to number `count`.
        func wait(for line: UInt32, count: Int, seconds: Double = 2) -> [Bool] {
            let deadline = Date(timeIntervalSinceNow: seconds)
            while levels(of: line).count < count && Date() < deadline { usleep(1000) }
            return levels(of: line)
        }
    }

    func make(_ lines: Lines) throws -> (LegacyDevices, Bus, NSLock) {
        let ports = Bus()
        let lock = NSLock()
        let devices = try LegacyDevices(acpi: ACPIConfiguration(cpuCount: 1), ports: ports, deviceLock: lock,
                                        irq: lines.irq, reset: {}, powerOff: {})
        return (devices, ports, lock)
    }

    /// PIE set through ports 0x70/0x71: the timer raises IRQ 8 within a
    /// period of the RTC's 1024 Hz; reading register C lowers it, and the
    /// next period raises it again.
    @Test func rtcPeriodicInterruptRaisesIRQ8OnTimeAndRegisterCLowersIt() throws {
        let lines = Lines()
        let (devices, ports, lock) = try make(lines)
        devices.timer.start()
        defer { devices.timer.stop() }
        lock.withLock {
            ports.write(0x70, size: 1, value: 0x0b)
            ports.write(0x71, size: 1, value: 0x42)  // PIE, 24-hour
        }
        #expect(lines.wait(for: 8, count: 1) == [true])
        let flags = lock.withLock { () -> UInt64 in
            ports.write(0x70, size: 1, value: 0x0c)
            return ports.read(0x71, size: 1)
        }
        #expect(flags & 0xc0 == 0xc0)
        #expect(lines.wait(for: 8, count: 3) == [true, false, true])
    }

    /// The power button with PWRBTN_EN set (PM1 enable at the FADT's port
    /// + 2) raises the SCI on IRQ 9; writing its status bit back lowers it.
    @Test func powerButtonRaisesTheSCIOnIRQ9() throws {
        let lines = Lines()
        let (devices, ports, lock) = try make(lines)
        lock.withLock {
            ports.write(0x602, size: 2, value: 0x100)
            devices.powerManagement.pressPowerButton()
        }
        #expect(lines.levels(of: 9) == [true])
        lock.withLock { ports.write(0x600, size: 2, value: 0x100) }
        #expect(lines.levels(of: 9) == [true, false])
    }

    /// The timer thread ends at `stop`, and holds nothing of the devices after.
    @Test func theTimerStopsAndLetsTheDevicesGo() throws {
        weak var rtc: CMOSRTC?
        do {
            let (devices, _, _) = try make(Lines())
            rtc = devices.rtc
            devices.timer.start()
            devices.timer.stop()
        }
        #expect(rtc == nil)
    }

    /// The machine's routing puts the in-kernel PIT's GSI 0 on IOAPIC pin 2,
    /// where the MADT's override tells Linux to look, and on PIC pin 0, on
    /// each accelerator this machine has. IOAPIC pins 0 and 2 are made
    /// level-triggered NMIs to every LAPIC (which a LAPIC at reset accepts),
    /// so that a tick leaves its mark: remote IRR, as no EOI comes.
    @Test(arguments: HostKVM.isAvailable ? [Accelerator.soft, .host] : [.soft])
    func pitTicksReachIOAPICPin2AndPICPin0(_ accelerator: Accelerator) throws {
        let vm = try Hypervisor.open(accelerator).createVM()
        try vm.createIrqchip()
        try vm.setGSIRouting(LinuxMachine.gsiRouting)
        _ = try vm.createVCPU(id: 0)
        var ioapic = try vm.irqchipState(.ioapic)
        let levelNMIToAll: UInt64 = 0xff << 56 | 1 << 15 | 4 << 8 | 0x30
        ioapic.setIOAPICRedirection(pin: 0, levelNMIToAll)
        ioapic.setIOAPICRedirection(pin: 2, levelNMIToAll)
        try vm.setIrqchipState(ioapic)
        try vm.createPIT(flags: .speakerDummy)
        var pit = try vm.pitState()
        pit.channels[0].mode = 2
        pit.channels[0].count = 1193  // 1 kHz
        try vm.setPITState(pit)
        usleep(20_000)
        ioapic = try vm.irqchipState(.ioapic)
        let remoteIRR: UInt64 = 1 << 14
        #expect(ioapic.ioapicRedirection(pin: 2) & remoteIRR != 0, "pin 2: 0x\(String(ioapic.ioapicRedirection(pin: 2), radix: 16))")
        #expect(ioapic.ioapicRedirection(pin: 0) & remoteIRR == 0, "pin 0: 0x\(String(ioapic.ioapicRedirection(pin: 0), radix: 16))")
        let master = try vm.irqchipState(.picMaster).bytes
        #expect(master[1] & 1 == 1, "PIC master IRR 0x\(String(master[1], radix: 16))")
    }
}
