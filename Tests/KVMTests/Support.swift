import Foundation
import KVM
import Testing

/// Opens the host's /dev/kvm for a test, or returns nil where the machine has
/// none — unless SWIFTKVM_REQUIRE_HOST_KVM=1 (as CI sets it), where a missing
/// /dev/kvm fails the test instead of skipping it.
enum HostKVM {
    static var isRequired: Bool { ProcessInfo.processInfo.environment["SWIFTKVM_REQUIRE_HOST_KVM"] == "1" }

    static var isAvailable: Bool { FileManager.default.isReadableFile(atPath: "/dev/kvm") || isRequired }

    static func hypervisor() throws -> Hypervisor { try Hypervisor(accelerator: .host) }
}
