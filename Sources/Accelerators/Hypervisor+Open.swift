import KVM
import SoftKVM

// The accelerator choice lives here, above both KVM and SoftKVM: module KVM
// cannot name SoftKVM (SoftKVM is built on it), so `Hypervisor(accelerator:)`
// there serves the host only, and programs that want either call `open`.

extension Hypervisor {
    /// Opens the system object of `accelerator`: the host's /dev/kvm,
    /// SoftKVM, or (`.automatic`) the host where its /dev/kvm opens, speaks
    /// API version 12 and runs guests on hardware virtualization
    /// (`HostKVMKind`), and SoftKVM otherwise.
    public static func open(_ accelerator: Accelerator, hostKind: HostKVMKind = .probe()) throws(KVMError) -> Hypervisor {
        switch accelerator {
        case .host:
            return try Hypervisor(accelerator: .host)
        case .soft:
            return try Hypervisor(backend: SoftBackend())
        case .automatic:
            guard hostKind.isPreferredOverSoft else { return try Hypervisor(backend: SoftBackend()) }
            do {
                return try Hypervisor(accelerator: .host)
            } catch {
                return try Hypervisor(backend: SoftBackend())
            }
        }
    }
}
