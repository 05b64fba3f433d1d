import Glibc

/// How the host's /dev/kvm runs guest code, told by the vendor module the
/// kernel loaded beside `kvm`: kvm_intel and kvm_amd run it on the CPU's
/// hardware virtualization; kvm_pvm (a paravirtual KVM for machines that are
/// themselves guests without nested VMX/SVM) runs kernel-mode guest code
/// through KVM's instruction emulator, at about a million instructions per
/// second: its API answers are real, but a Linux boot there takes minutes
/// and stops at instructions the emulator refuses, so SoftKVM is the faster
/// accelerator on such a machine.
public enum HostKVMKind: Equatable, Sendable, CustomStringConvertible {
    /// VMX or SVM, through the named module.
    case hardware(module: String)
    /// kvm_pvm: guest code through KVM's emulator.
    case paravirtual(module: String)
    /// No vendor module visible (no /sys, or no KVM at all).
    case unknown

    /// The kind of this machine's KVM, from /sys/module.
    public static func probe(modules: String = "/sys/module") -> HostKVMKind {
        func loaded(_ name: String) -> Bool { access("\(modules)/\(name)", F_OK) == 0 }
        for module in ["kvm_intel", "kvm_amd"] where loaded(module) { return .hardware(module: module) }
        if loaded("kvm_pvm") { return .paravirtual(module: "kvm_pvm") }
        return .unknown
    }

    /// Whether `auto` should take the host: everywhere but a paravirtual
    /// KVM (an unknown kind is trusted, as the host answers requests).
    public var isPreferredOverSoft: Bool {
        if case .paravirtual = self { return false }
        return true
    }

    public var description: String {
        switch self {
        case .hardware(let module): "hardware virtualization (\(module))"
        case .paravirtual(let module): "paravirtual, guest code through KVM's instruction emulator (\(module))"
        case .unknown: "unknown (no KVM vendor module in /sys/module)"
        }
    }
}
