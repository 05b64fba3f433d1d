import Foundation

/// Whether tests on the host's /dev/kvm run: where it exists, or where
/// SWIFTKVM_REQUIRE_HOST_KVM=1 (as .ci/run sets it) demands it, so that a
/// missing /dev/kvm fails those tests instead of skipping them unseen.
/// Use as `.enabled(if: HostKVM.isAvailable)`.
public enum HostKVM {
    public static var isRequired: Bool { ProcessInfo.processInfo.environment["SWIFTKVM_REQUIRE_HOST_KVM"] == "1" }
    public static var isAvailable: Bool { FileManager.default.isReadableFile(atPath: "/dev/kvm") || isRequired }
}
