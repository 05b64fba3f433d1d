/// A KVM capability, as KVM_CHECK_EXTENSION takes it (`KVM_CAP_*`).
public struct Capability: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The kernel's name, or the number if `<linux/kvm.h>` did not name it.
    public var description: String {
        Capability.named.first { $0.capability == self }?.name ?? "KVM_CAP \(rawValue)"
    }
}

/// Why KVM_RUN returned, as `kvm_run.exit_reason` holds it (`KVM_EXIT_*`).
public struct ExitReason: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The kernel's name, or the number for a reason `<linux/kvm.h>` did not name.
    public var description: String { ExitReason.names[rawValue] ?? "exit reason \(rawValue)" }
}
