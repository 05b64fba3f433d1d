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
}
