import Accelerators
import ArgumentParser
import KVM
import VMM

/// `swiftkvm run --kernel K [--initrd I] [--cmdline ...] [--memory 512M] [--cpus N]`:
/// boots a Linux kernel on the PC of `LinuxMachine`, its COM1 on this terminal.
struct LinuxRunOptions: ParsableArguments {
    @Option(help: "A Linux kernel (bzImage, such as /boot/vmlinuz-*-cloud-amd64, or ELF vmlinux) to boot instead of the built-in guest.")
    var kernel: String?

    @Option(help: "An initramfs (scripts/build-initramfs.sh builds one from busybox).")
    var initrd: String?

    @Option(help: "The kernel command line (default: \"\(MachineConfiguration.defaultCommandLine)\").")
    var cmdline: String?

    @Option(help: "RAM: a number with K, M, G or T (a bare number is MiB).")
    var memory: String = "512M"

    @Option(help: "vCPUs.")
    var cpus: Int = 1

    func validate() throws {
        if kernel == nil && (initrd != nil || cmdline != nil) {
            throw ValidationError("--initrd and --cmdline go with --kernel: give the kernel to boot")
        }
    }

    func machineConfiguration() throws(MachineConfigurationError) -> MachineConfiguration? {
        guard let kernel else { return nil }
        return MachineConfiguration(kernelPath: kernel, initrdPath: initrd,
                                    commandLine: cmdline ?? MachineConfiguration.defaultCommandLine,
                                    memorySize: try MachineConfiguration.parseMemorySize(memory), cpuCount: cpus)
    }
}

/// Boots the kernel `options` name and returns when the machine ends: with
/// status 0 on poweroff or Ctrl-A x, 2 on a reset (reboot, or a panic with
/// panic=-1), and 1 with a message on an error. The terminal is restored
/// on every way out.
func runLinux(_ options: LinuxRunOptions, accelerator: Accelerator) throws {
    let outcome: MachineOutcome
    do {
        guard let configuration = try options.machineConfiguration() else { return }
        let machine = try LinuxMachine(configuration: configuration, hypervisor: try Hypervisor.open(accelerator),
                                       output: { Console.output($0) })
        let console = try Console()
        defer {
            console.stop()
            console.restore()
        }
        console.start(input: { machine.sendInput($0) }, quit: { machine.stop() })
        outcome = try machine.run()
    } catch {
        printError("\(error)")
        throw ExitCode.failure
    }
    if outcome == .reset {
        // Status 2 alone would read as a failure of swiftkvm; say what the guest did.
        printError("the guest reset the machine (reboot, or a panic with panic=-1); it is not restarted: exit status \(outcome.exitStatus)")
    }
    if outcome.exitStatus != 0 {
        throw ExitCode(outcome.exitStatus)
    }
}
