import Accelerators
import ArgumentParser
import Glibc
import KVM
import VMM

/// `swiftkvm run`: boots a guest and prints its serial console: a Linux
/// kernel with `--kernel`, otherwise the built-in guest.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a guest and print its serial console.",
        discussion: """
            With --kernel, boots a Linux bzImage or ELF vmlinux (with --initrd, --cmdline, \
            --memory, --cpus) on the serial console; Ctrl-A x quits on a terminal. \
            Exit status: 0 when the guest powers off (poweroff, ACPI S5) or Ctrl-A x ends it; \
            2 when the guest resets the machine (reboot, a panic with panic=-1, the i8042 reset \
            line, port 0xcf9), which is not restarted and is reported on standard error; \
            1 with a message on an error (a triple fault, which reboot=t's reboot is too; \
            an instruction the CPU lacks; a kernel that cannot be loaded).

            With no guest given, boots SwiftKVM's built-in guest, which walks from real mode \
            to long mode and prints a checksum of itself. Exits with the status the guest \
            writes to the debug-exit port (0x501).
            """)

    @OptionGroup var acceleratorOptions: AcceleratorOptions
    @OptionGroup var linux: LinuxRunOptions

    func run() throws {
        if linux.kernel != nil {
            return try runLinux(linux, accelerator: acceleratorOptions.accel)
        }
        let result: BuiltinGuest.RunResult
        do {
            let hypervisor = try Hypervisor.open(acceleratorOptions.accel)
            let guest = try BuiltinGuest(hypervisor: hypervisor)
            result = try guest.run { byte in
                var byte = byte
                _ = write(STDOUT_FILENO, &byte, 1)
            }
        } catch {
            printError("\(error)")
            throw ExitCode.failure
        }
        if result.status != 0 {
            throw ExitCode(Int32(result.status))
        }
    }
}

/// Writes `message`, and a newline, to standard error.
func printError(_ message: String) {
    let text = "swiftkvm: \(message)\n"
    var bytes = Array(text.utf8)
    _ = write(STDERR_FILENO, &bytes, bytes.count)
}
