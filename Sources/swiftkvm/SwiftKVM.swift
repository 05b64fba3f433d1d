import ArgumentParser

@main
struct SwiftKVMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftkvm",
        abstract: "Run virtual machines on Linux KVM or on SoftKVM, KVM in Swift.",
        subcommands: [])
}
