import Foundation
import Testing

/// Whether tests on the host's /dev/kvm should run: where it exists, or
/// where SWIFTKVM_REQUIRE_HOST_KVM=1 (CI) demands it, so a missing one fails.
enum HostKVM {
    static var isRequired: Bool { ProcessInfo.processInfo.environment["SWIFTKVM_REQUIRE_HOST_KVM"] == "1" }
    static var isAvailable: Bool { FileManager.default.isReadableFile(atPath: "/dev/kvm") || isRequired }
}
