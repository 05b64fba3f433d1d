import Accelerators
import ArgumentParser
import Foundation
import Glibc
import KVM
import LinuxBoot
import VMM

/// `swiftkvm bench boot`: wall time from start to the marker the
/// initramfs's /init prints, and to the process's end (the guest powers
/// off), for `swiftkvm run` and for `qemu-system-x86_64 -accel tcg` on the
/// same kernel, initramfs, command line, RAM and vCPUs, in one run; and each
/// process's peak resident memory beside the guest's RAM.
struct BootBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boot",
        abstract: "Time a Linux boot to the initramfs's marker and to poweroff, beside QEMU's TCG.")

    static let marker = "SWIFTKVM-INITRAMFS: init started"

    @Option(help: "The kernel (default: the newest /boot/vmlinuz-*-cloud-amd64).")
    var kernel: String?

    @Option(help: "An initramfs whose /init prints \"\(BootBench.marker)\" and powers off (default: built now with scripts/build-initramfs.sh, run from the repository).")
    var initrd: String?

    @Option(help: "The kernel command line, the same for both.")
    var cmdline = MachineConfiguration.defaultCommandLine

    @Option(help: "RAM for both: a number with K, M, G or T (a bare number is MiB).")
    var memory = "256M"

    @Option(help: "vCPUs for both.")
    var cpus = 1

    @Option(help: "The accelerator of the swiftkvm run.")
    var accel: Accelerator = .soft

    @Flag(inversion: .prefixedNo, help: "Also boot under qemu-system-x86_64 -accel tcg (Debian's qemu-system-x86).")
    var qemu = true

    @Option(help: "Seconds after which a boot counts as failed and its process is killed.")
    var timeout: Double = 600

    func run() throws {
        guard let kernel = kernel ?? DebianCloudKernel.installedPath() else {
            throw ValidationError(DebianCloudKernel.installHint)
        }
        let memorySize = try MachineConfiguration.parseMemorySize(memory)
        var temporary: String?
        defer { if let temporary { try? FileManager.default.removeItem(atPath: temporary) } }
        let initrd: String
        if let given = self.initrd {
            initrd = given
        } else {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-bench-\(getpid()).cpio.gz").path
            guard FileManager.default.isExecutableFile(atPath: "scripts/build-initramfs.sh") else {
                throw ValidationError("give --initrd, or run from the repository so that scripts/build-initramfs.sh builds one")
            }
            let status = try BootProcess.runQuietly(["scripts/build-initramfs.sh", path])
            guard status == 0 else { throw ValidationError("scripts/build-initramfs.sh failed with status \(status)") }
            temporary = path
            initrd = path
        }
        let guestMiB = Double(memorySize) / 1048576
        print("kernel \(kernel), initrd \(initrd), \(Int(guestMiB)) MiB, \(cpus) vCPU(s), command line \"\(cmdline)\"")

        let ownExecutable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let swiftkvm = try BootProcess.measure(
            [ownExecutable, "run", "--accel", accel.rawValue, "--kernel", kernel, "--initrd", initrd,
             "--cmdline", cmdline, "--memory", memory, "--cpus", String(cpus)],
            marker: Self.marker, timeout: timeout, guestMemoryBytes: memorySize)
        report("swiftkvm run --accel \(accel.rawValue)", swiftkvm, guestMiB: guestMiB)
        guard qemu else { return }
        let tcg = try BootProcess.measure(
            ["/usr/bin/env", "qemu-system-x86_64", "-accel", "tcg", "-nographic", "-no-reboot", "-nodefaults",
             "-serial", "stdio", "-m", String(memorySize >> 20), "-smp", String(cpus),
             "-kernel", kernel, "-initrd", initrd, "-append", cmdline],
            marker: Self.marker, timeout: timeout, guestMemoryBytes: memorySize)
        report("qemu-system-x86_64 -accel tcg", tcg, guestMiB: guestMiB)
        if let ours = swiftkvm.markerSeconds, let theirs = tcg.markerSeconds {
            print(String(format: "ratio to the marker: %.2f (swiftkvm / QEMU TCG; goal below 3)", ours / theirs))
        }
        if swiftkvm.status == 0, tcg.status == 0 {
            print(String(format: "ratio to the end: %.2f", swiftkvm.seconds / tcg.seconds))
        }
    }

    private func report(_ name: String, _ result: BootProcess.Result, guestMiB: Double) {
        print(name)
        if let marker = result.markerSeconds {
            print(String(format: "  marker after %.2f s", marker))
        } else {
            print("  marker never printed")
        }
        let ending = result.timedOut ? "killed after the \(Int(timeout)) s timeout" : "exited with status \(result.status)"
        print(String(format: "  %@ after %.2f s", ending, result.seconds))
        print(String(format: "  peak resident memory %.0f MiB; beyond guest RAM (sampled from smaps every 0.1 s) %.1f MiB at its peak",
                     Double(result.maxResidentKiB) / 1024, Double(result.peakBeyondGuestKiB) / 1024))
        if result.markerSeconds == nil || result.status != 0 {
            print("  last output:")
            for line in result.lastLines { print("    \(line)") }
        }
    }
}

/// A child process whose output is watched for a marker line, and whose
/// peak memory comes from wait4's rusage (per child, which Foundation's
/// Process does not give).
enum BootProcess {
    struct Result {
        var markerSeconds: Double?
        var seconds: Double
        var status: Int32
        var timedOut: Bool
        var maxResidentKiB: Int
        /// The largest resident size outside the guest-RAM mapping seen while sampling.
        var peakBeyondGuestKiB: Int
        var lastLines: [String]
    }

    static func measure(_ arguments: [String], marker: String, timeout: Double, guestMemoryBytes: UInt64) throws -> Result {
        var pipeEnds: [Int32] = [0, 0]
        guard pipe(&pipeEnds) == 0 else { throw ValidationError("pipe failed: errno \(errno)") }
        let start = ContinuousClock.now
        let pid = try spawn(arguments, output: pipeEnds[1])
        close(pipeEnds[1])
        defer { close(pipeEnds[0]) }

        var markerSeconds: Double?
        var timedOut = false
        var pending: [UInt8] = []
        var lines: [String] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        let markerBytes = Array(marker.utf8)
        var peakBeyondGuestKiB = 0
        var lastSample = start
        while true {
            if ContinuousClock.now - lastSample >= .milliseconds(100), let beyond = residentBeyondGuestKiB(pid, guestMemoryBytes) {
                peakBeyondGuestKiB = max(peakBeyondGuestKiB, beyond)
                lastSample = ContinuousClock.now
            }
            let remaining = timeout - (ContinuousClock.now - start).seconds
            if remaining <= 0 {
                timedOut = true
                kill(pid, SIGKILL)
                break
            }
            var entry = pollfd(fd: pipeEnds[0], events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, Int32(min(remaining, 0.1) * 1000)) >= 0 || errno == EINTR else { break }
            guard entry.revents != 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(pipeEnds[0], $0.baseAddress, $0.count) }
            if count <= 0 { break }
            for byte in buffer[0..<count] {
                if byte == UInt8(ascii: "\n") {
                    if markerSeconds == nil, containsSubsequence(pending, markerBytes) {
                        markerSeconds = (ContinuousClock.now - start).seconds
                    }
                    lines.append(String(decoding: pending.filter { $0 != UInt8(ascii: "\r") }, as: UTF8.self))
                    if lines.count > 20 { lines.removeFirst() }
                    pending.removeAll(keepingCapacity: true)
                } else {
                    pending.append(byte)
                }
            }
        }
        var status: Int32 = 0
        var usage = rusage()
        while wait4(pid, &status, 0, &usage) < 0 && errno == EINTR {}
        let seconds = (ContinuousClock.now - start).seconds
        // WIFEXITED / WEXITSTATUS, which Swift does not import as macros.
        let exitStatus: Int32 = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Result(markerSeconds: markerSeconds, seconds: seconds, status: exitStatus, timedOut: timedOut,
                      maxResidentKiB: usage.ru_maxrss, peakBeyondGuestKiB: peakBeyondGuestKiB, lastLines: lines)
    }

    /// The process's resident memory outside the mapping of the guest's RAM
    /// (the one mapping of exactly the guest's size, as both swiftkvm and
    /// QEMU map RAM below 4 GiB in one piece for these sizes), from
    /// /proc/PID/smaps; nil once the process is gone.
    static func residentBeyondGuestKiB(_ pid: pid_t, _ guestMemoryBytes: UInt64) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/smaps", encoding: .utf8) else { return nil }
        let guestKiB = Int(guestMemoryBytes / 1024)
        var total = 0, guest = 0, mappingSize = 0
        for line in text.split(separator: "\n") {
            if line.hasPrefix("Size:") {
                mappingSize = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
            } else if line.hasPrefix("Rss:") {
                let rss = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
                total += rss
                if mappingSize == guestKiB { guest = max(guest, rss) }
            }
        }
        return total - guest
    }

    /// Runs a command with its output discarded and returns its exit status.
    static func runQuietly(_ arguments: [String]) throws -> Int32 {
        let devNull = open("/dev/null", O_WRONLY)
        defer { close(devNull) }
        let pid = try spawn(arguments, output: devNull)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    private static func spawn(_ arguments: [String], output: Int32) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output, 1)
        posix_spawn_file_actions_adddup2(&actions, output, 2)
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, arguments[0], &actions, nil, &argv, environ)
        guard result == 0 else {
            throw ValidationError("could not start \(arguments[0]): \(String(cString: strerror(result)))")
        }
        return pid
    }

    private static func containsSubsequence(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard needle.count <= haystack.count else { return false }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if haystack[start..<(start + needle.count)].elementsEqual(needle) { return true }
        }
        return false
    }
}
