import Foundation
import LinuxBoot
import Testing

/// The first real guest, end to end on SoftKVM through the command users
/// run: Debian's cloud kernel with the busybox initramfs boots on two
/// vCPUs, /init runs `uname -a` and `cat /proc/cpuinfo` on the serial
/// console, and the guest powers off, which ends `swiftkvm run` with
/// status 0. It runs the release build (scripts/test builds it first): the
/// soft CPU unoptimized would take many minutes for the same boot.
@Suite struct SoftLinuxBootTests {
    typealias Line = ConsoleSession.Line
    static let swiftkvm = packageRoot + "/.build/release/swiftkvm"

    @Test(.timeLimit(.minutes(20)))
    func theCloudKernelBootsOnSoftKVMRunsACommandAndPowersOff() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.swiftkvm),
                     "no \(Self.swiftkvm): build it with swift build -c release --product swiftkvm (scripts/test does)")
        let kernel = try CloudKernel.path()
        let initrd = try buildInitramfs(command: "uname -a; cat /proc/cpuinfo")
        defer { try? FileManager.default.removeItem(atPath: initrd) }
        // `timeout` ends a boot that hangs, so the test fails instead of waiting forever.
        let result = try shell("timeout 900 '\(Self.swiftkvm)' run --accel soft --kernel '\(kernel)' --initrd '\(initrd)' --memory 256M --cpus 2 < /dev/null")
        let text = result.output
        #expect(result.status == 0, "swiftkvm run ended with \(result.status); the output ended with:\n\(text.suffix(3000))")
        #expect(text.contains("SWIFTKVM-INITRAMFS: init started"))
        let version = try #require(kernel.split(separator: "vmlinuz-").last)
        #expect(text.contains("Linux (none) \(version) "), "uname -a")
        #expect(text.contains("processor\t: 0") && text.contains("processor\t: 1"), "both vCPUs in /proc/cpuinfo")
        #expect(text.contains("vendor_id\t: SoftKVMSwift"), "SoftKVM's CPU, not the host's")
        #expect(text.contains("SWIFTKVM-INITRAMFS: command exited with status 0"))
        #expect(text.contains("reboot: Power down"))
    }

    /// The release `swiftkvm` running the cloud kernel with an initramfs
    /// whose /init runs `command` on the serial console. `onTerminal` runs
    /// it on a pseudo-terminal (util-linux `script`, Debian's bsdutils,
    /// always installed), as a user at a terminal does, between two lines
    /// of `stty -g` and a line with swiftkvm's status.
    func session(command: String, cpus: Int = 1, onTerminal: Bool = false) throws -> (ConsoleSession, initrd: String) {
        try #require(FileManager.default.isExecutableFile(atPath: Self.swiftkvm),
                     "no \(Self.swiftkvm): build it with swift build -c release --product swiftkvm (scripts/test does)")
        let kernel = try CloudKernel.path()
        let initrd = try buildInitramfs(command: command)
        let arguments = ["run", "--accel", "soft", "--kernel", kernel, "--initrd", initrd, "--memory", "256M", "--cpus", String(cpus)]
        do {
            guard onTerminal else { return (try ConsoleSession(Self.swiftkvm, arguments), initrd) }
            let script = "/usr/bin/script"
            try #require(FileManager.default.isExecutableFile(atPath: script), "no \(script): apt-get install bsdutils")
            let run = ([Self.swiftkvm] + arguments).map { "'\($0)'" }.joined(separator: " ")
            let shellCommand = "echo \"TTY-BEFORE $(stty -g)\"; \(run); echo \"SWIFTKVM-STATUS $?\"; echo \"TTY-AFTER $(stty -g)\""
            return (try ConsoleSession(script, ["-qec", shellCommand, "/dev/null"]), initrd)
        } catch {
            try? FileManager.default.removeItem(atPath: initrd)
            throw error
        }
    }

    /// The interactive path, as a user at a terminal has it: a busybox shell
    /// reads the serial console, and what the test types on the terminal
    /// reaches it through swiftkvm's raw-mode console, the 16550's receive
    /// interrupt and Linux's 8250 driver. First one line, answered before
    /// the next is typed; then a burst of some 650 bytes in one write, forty
    /// times the FIFO, which goes in as the guest drains it: a byte lost or
    /// doubled changes the length the shell counts and the line it echoes.
    /// `poweroff -f` typed last ends the run with status 0, and the
    /// terminal's settings are as they were before.
    @Test(.timeLimit(.minutes(20)))
    func aShellOnTheSerialConsoleRunsWhatIsTypedAndPowersOff() throws {
        let (console, initrd) = try session(command: "sh", onTerminal: true)
        defer {
            console.terminate()
            try? FileManager.default.removeItem(atPath: initrd)
        }
        // busybox ash's prompt for root. Bytes typed before the shell opens
        // the port are lost, as on a real UART (the 8250 driver empties the
        // FIFO when it starts the port), so the test waits for it.
        try #require(console.waitFor("/ # ", timeout: 600), "no shell prompt; the output ended with:\n\(console.output.suffix(3000))")
        try console.type("echo $((6*7))\n")
        #expect(console.waitFor("\n42\r", timeout: 120), "echo $((6*7)) gave no 42:\n\(console.output.suffix(2000))")

        let digits = String((0..<300).map { Character(String($0 % 10)) })
        let letters = String(repeating: "abcdefghijklmnopqrstuvwxyz", count: 12)
        try console.type("x=\(digits); echo length ${#x}\necho \(letters)-done\npoweroff -f\n")
        let status = console.waitForExit(timeout: 600)
        let text = console.output
        let lines = console.allLines.map(\.text)
        func value(_ prefix: String) -> String? {
            lines.first { $0.hasPrefix(prefix + " ") }.map { String($0.dropFirst(prefix.count + 1)) }
        }
        #expect(status == 0 && value("SWIFTKVM-STATUS") == "0",
                "swiftkvm run ended with \(value("SWIFTKVM-STATUS") ?? "nothing: it still ran"); the output ended with:\n\(text.suffix(3000))")
        let answered = lines.contains("42"), counted = lines.contains("length 300")
        let echoed = lines.filter { $0 == letters + "-done" }.count
        #expect(answered, "no line 42")
        #expect(counted, "the 300 digits typed in one burst, as the shell counted them:\n\(text.suffix(3000))")
        #expect(echoed == 1, "the letters echoed once, whole:\n\(text.suffix(3000))")
        #expect(text.contains("reboot: Power down"))
        // In raw mode only the guest echoes what is typed; the terminal's own echo would show it twice.
        #expect(text.components(separatedBy: "echo $((6*7))").count == 2, "the typed line echoed other than once")
        let before = value("TTY-BEFORE"), after = value("TTY-AFTER")
        #expect(before != nil && before == after, "the terminal's settings before, \(before ?? "none"), and after, \(after ?? "none")")
    }

    /// The clocks and interrupts of the PC with Linux's own drivers, and a
    /// reboot, in one boot: rtc_cmos reads the RTC (busybox `hwclock -r` and
    /// sysfs) within a few seconds of the host's UTC time; an alarm set two
    /// seconds ahead through /sys/class/rtc/rtc0/wakealarm comes as IRQ 8 on
    /// time; the kernel registers the ACPI PM timer as clocksource acpi_pm
    /// and the SCI on IRQ 9, and with acpi_pm as the current clocksource the
    /// guest's uptime moves with the host's clock (3 s within 0.5 s). Then
    /// `reboot -f` (reboot=k: the i8042's reset line) ends the run as a
    /// reset: status 2, said on standard error.
    @Test(.timeLimit(.minutes(20)))
    func theRTCAlarmAndPMTimerWorkWithLinuxsDriversAndRebootEndsTheRunAsAReset() throws {
        let command = """
            t=$(hwclock -r -u); echo "HWCLOCK $? $t"
            echo "RTC-EPOCH $(cat /sys/class/rtc/rtc0/since_epoch)"
            echo "RTC-IRQ-BEFORE $(grep ' rtc0$' /proc/interrupts)"
            echo +2 > /sys/class/rtc/rtc0/wakealarm
            echo "ALARM-SET $(cat /sys/class/rtc/rtc0/wakealarm)"
            i=0; while [ -n "$(cat /sys/class/rtc/rtc0/wakealarm)" ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
            echo "ALARM-DONE $(cat /sys/class/rtc/rtc0/since_epoch)"
            echo "RTC-IRQ-AFTER $(grep ' rtc0$' /proc/interrupts)"
            echo "SCI $(grep ' acpi$' /proc/interrupts)"
            dmesg | grep 'clocksource: acpi_pm:'
            cd /sys/devices/system/clocksource/clocksource0
            echo "CLOCKSOURCES $(cat available_clocksource)"
            echo acpi_pm > current_clocksource
            echo "CLOCKSOURCE $(cat current_clocksource)"
            echo "UPTIME-A $(cat /proc/uptime)"
            sleep 3
            echo "UPTIME-B $(cat /proc/uptime)"
            reboot -f
            """
        let (console, initrd) = try session(command: command)
        defer {
            console.terminate()
            try? FileManager.default.removeItem(atPath: initrd)
        }
        let status = console.waitForExit(timeout: 900)
        let text = console.output
        let lines = console.allLines
        func line(_ prefix: String) -> Line? { lines.first { $0.text.hasPrefix(prefix + " ") } }
        func fields(_ prefix: String) -> [Substring] {
            line(prefix).map { $0.text.dropFirst(prefix.count).split(separator: " ") } ?? []
        }
        #expect(status == 2, "swiftkvm run ended with \(status.map(String.init) ?? "nothing: it still ran"), not 2 (reset); the output ended with:\n\(text.suffix(3000))")
        #expect(text.contains("reboot: Restarting system"))
        #expect(text.contains("swiftkvm: the guest reset the machine"), "the reset said on standard error")
        #expect(!text.contains("SWIFTKVM-INITRAMFS: command exited"), "reboot -f returned")

        // hwclock: "HWCLOCK 0 Wed Nov 25 17:21:36 2026  0.000000 seconds", in UTC.
        let hwclock = try #require(line("HWCLOCK"), "no hwclock line:\n\(text.suffix(3000))")
        let clock = fields("HWCLOCK")
        #expect(clock.first == "0", "hwclock -r failed: \(hwclock.text)")
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "EEE MMM d HH:mm:ss yyyy"
        let shown = clock.count >= 6 ? formatter.date(from: clock[1...5].joined(separator: " ")) : nil
        let rtcTime = try #require(shown, "hwclock's time does not parse: \(hwclock.text)")
        #expect(abs(hwclock.time.timeIntervalSince(rtcTime)) < 3, "hwclock read \(rtcTime), the host's clock was \(hwclock.time)")
        let epoch = try #require(line("RTC-EPOCH"))
        let since = try #require(fields("RTC-EPOCH").first.flatMap { Double($0) })
        #expect(abs(epoch.time.timeIntervalSince1970 - since) < 3, "rtc0's since_epoch \(since), the host's clock \(epoch.time.timeIntervalSince1970)")

        // "RTC-IRQ-BEFORE   8:          0   IO-APIC   8-edge      rtc0"
        func count(_ prefix: String) -> Int? { fields(prefix).dropFirst().first.flatMap { Int($0) } }
        #expect(fields("RTC-IRQ-BEFORE").first == "8:", "rtc0 on IRQ 8")
        let before = try #require(count("RTC-IRQ-BEFORE"), "\(text.suffix(3000))")
        let after = try #require(count("RTC-IRQ-AFTER"), "\(text.suffix(3000))")
        #expect(after == before + 1, "one alarm interrupt: rtc0 went from \(before) to \(after)")
        let alarm = try #require(fields("ALARM-SET").first.flatMap { Int($0) }, "the alarm was not set:\n\(text.suffix(3000))")
        let done = try #require(fields("ALARM-DONE").first.flatMap { Int($0) })
        #expect(done >= alarm && done <= alarm + 2, "the alarm for \(alarm) fired by \(done)")

        #expect(fields("SCI").first == "9:", "the SCI on IRQ 9: \(line("SCI")?.text ?? "none")")
        #expect(text.contains("clocksource: acpi_pm: mask:"), "the kernel registered the PM timer")
        #expect(fields("CLOCKSOURCES").contains("acpi_pm"))
        #expect(fields("CLOCKSOURCE") == ["acpi_pm"])
        let first = try #require(line("UPTIME-A")), second = try #require(line("UPTIME-B"))
        let guestA = try #require(fields("UPTIME-A").first.flatMap { Double($0) })
        let guestB = try #require(fields("UPTIME-B").first.flatMap { Double($0) })
        let host = second.time.timeIntervalSince(first.time)
        #expect(guestB - guestA >= 2.99, "sleep 3 took \(guestB - guestA) s of the guest's time")
        // A PM timer 1.5 times too fast, say, gives 3 s in the guest over 2 on the host.
        #expect(abs((guestB - guestA) - host) < 0.5, "on acpi_pm the guest counted \(guestB - guestA) s while the host counted \(host) s")
    }
}
