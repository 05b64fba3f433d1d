import ArgumentParser
import KVM

@main
struct SwiftKVMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftkvm",
        abstract: "Run virtual machines on Linux KVM or on SoftKVM, KVM in Swift.",
        subcommands: [Run.self, Info.self, Bench.self, Exec.self])
}

/// The accelerator choice every subcommand that opens a hypervisor takes.
struct AcceleratorOptions: ParsableArguments {
    @Option(name: .long, help: "The accelerator: host (/dev/kvm), soft (SoftKVM, a software CPU), or auto (host where /dev/kvm is usable and runs guests on VMX/SVM, else soft: kvm_pvm emulates guest code too slowly to boot Linux).")
    var accel: Accelerator = .automatic
}

extension Accelerator: ExpressibleByArgument {}
