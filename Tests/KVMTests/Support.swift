import CLinuxKVM
import Foundation
import GuestMemory
@testable import KVM
import Testing
@_exported import KVMTestSupport  // HostKVM and RealModeGuest, for every file of this test target

extension HostKVM {
    static func hypervisor() throws -> Hypervisor { try Hypervisor(accelerator: .host) }
}

extension RealModeGuest {
    /// The guest on the host's /dev/kvm.
    init(code: [UInt8]) throws {
        try self.init(hypervisor: HostKVM.hypervisor(), code: code)
    }
}
