import Foundation

/// Debian's cloud kernel, the reference guest: `apt-get install
/// linux-image-cloud-amd64` puts it in /boot as vmlinuz-VERSION-cloud-amd64.
public enum DebianCloudKernel {
    /// The newest one installed in `directory`, or nil when there is none.
    public static func installedPath(in directory: String = "/boot") -> String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        // Version order, so that 6.1.0-100 comes after 6.1.0-56.
        let kernels = names.filter { $0.hasPrefix("vmlinuz-") && $0.hasSuffix("-cloud-amd64") }
            .sorted { $0.compare($1, options: .numeric) == .orderedAscending }
        return kernels.last.map { directory + "/" + $0 }
    }

    /// What to do when none is installed.
    public static let installHint = "no /boot/vmlinuz-*-cloud-amd64: install it with apt-get install linux-image-cloud-amd64 (scripts/test does)"
}
