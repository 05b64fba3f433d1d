import CLinuxKVM
@testable import KVM
import Testing
@testable import SoftKVM

/// KVM_SET_SREGS takes CR4.SMEP and CR4.SMAP whatever the guest's CPUID
/// says, as the host does (only the instruction MOV to CR4 checks the
/// CPUID), and both backends give them back.
@Suite("CR4 feature bits through KVM_SET_SREGS", .enabled(if: HostKVM.isAvailable))
struct CR4FeatureTests {
    @Test func smepAndSMAPAreTakenWithoutTheirCPUIDBits() throws {
        try expectSameOnBothBackends { hypervisor in
            let guest = try RealModeGuest(hypervisor: hypervisor, code: [0xF4])
            var results: [(String, Outcome)] = []
            for (name, bit) in [("SMEP", UInt64(1) << 20), ("SMAP", 1 << 21)] {
                results.append((name, outcome { () throws(KVMError) -> Int32 in
                    var sregs = try guest.vcpu.handle.get(.getSregs, kvm_sregs.self)
                    sregs.cr4 |= bit
                    try guest.vcpu.handle.call(.setSregs, &sregs)
                    return Int32(truncatingIfNeeded: try guest.vcpu.handle.get(.getSregs, kvm_sregs.self).cr4 >> 20)
                }))
            }
            return results
        }
    }
}
