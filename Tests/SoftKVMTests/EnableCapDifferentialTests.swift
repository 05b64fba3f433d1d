import CLinuxKVM
import Foundation
import SystemPackage
import Testing
@testable import KVM
@testable import SoftKVM

/// KVM_ENABLE_CAP, KVM_X86_SET_MSR_FILTER's validation and what
/// KVM_CHECK_EXTENSION says of these capabilities, on the host and on
/// SoftKVM: the same requests give the same results and errno.
@Suite("KVM_ENABLE_CAP and the MSR filter's rules on both backends")
struct EnableCapDifferentialTests {
    /// The capabilities SoftKVM has give what the host gives: 1 for the
    /// requests, and KVM_CAP_XSAVE2's 4096 (no dynamic XSAVE features on either).
    @Test(.enabled(if: HostKVM.isAvailable))
    func checkExtensionAgreesForTheCapabilitiesSoftKVMHas() throws {
        let capabilities: [Capability] = [.enableCap, .enableCapVM, .x86UserSpaceMSR, .x86MSRFilter, .enforcePvFeatureCPUID, .xsave2]
        for backend in Backend.allCases {
            let hypervisor = try backend.hypervisor()
            for capability in capabilities {
                #expect(try hypervisor.checkExtension(capability) != 0, "\(backend): \(capability.rawValue)")
            }
        }
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            return capabilities.map { capability in
                ("KVM_CHECK_EXTENSION(\(capability.rawValue)) on the VM", outcome { () throws(KVMError) in try vm.checkExtension(capability) })
            } + capabilities.map { capability in
                ("KVM_CHECK_EXTENSION(\(capability.rawValue))", outcome { () throws(KVMError) in try hypervisor.checkExtension(capability) })
            }
        }
    }

    /// The VM's KVM_ENABLE_CAP: non-zero flags, unknown capabilities and
    /// capabilities that are only reported (KVM_CAP_X86_MSR_FILTER,
    /// KVM_CAP_XSAVE2) are EINVAL; KVM_CAP_X86_USER_SPACE_MSR takes the
    /// three reasons and nothing else, before and after vCPUs exist;
    /// KVM_CAP_X86_DISABLE_EXITS takes 0 before the first vCPU only; a bad
    /// pointer is EFAULT; per-vCPU capabilities are EINVAL on the VM.
    @Test(.enabled(if: HostKVM.isAvailable))
    func vmEnableCapGivesTheSameResults() throws {
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            let backend = hypervisor.handle.backend
            func enable(_ cap: UInt32, flags: UInt32 = 0, _ arg: UInt64 = 0) -> Outcome {
                var value = kvm_enable_cap()
                value.cap = cap
                value.flags = flags
                value.args.0 = arg
                return withUnsafeMutablePointer(to: &value) { rawOutcome(backend, vm.rawDescriptor, KVMRequest.enableCap.number, $0) }
            }
            var results: [(String, Outcome)] = [
                ("unknown capability", enable(9999)),
                ("capability 0", enable(0)),
                ("KVM_CAP_X86_MSR_FILTER", enable(Capability.x86MSRFilter.rawValue)),
                ("KVM_CAP_XSAVE2", enable(Capability.xsave2.rawValue)),
                ("KVM_CAP_ENFORCE_PV_FEATURE_CPUID on the VM", enable(Capability.enforcePvFeatureCPUID.rawValue, 1)),
                ("USER_SPACE_MSR 0", enable(Capability.x86UserSpaceMSR.rawValue, 0)),
                ("USER_SPACE_MSR INVAL|UNKNOWN|FILTER", enable(Capability.x86UserSpaceMSR.rawValue, 7)),
                ("USER_SPACE_MSR bit 3", enable(Capability.x86UserSpaceMSR.rawValue, 8)),
                ("USER_SPACE_MSR bit 32", enable(Capability.x86UserSpaceMSR.rawValue, 1 << 32)),
                ("USER_SPACE_MSR with flags", enable(Capability.x86UserSpaceMSR.rawValue, flags: 1, 1)),
                ("DISABLE_EXITS 0 with flags", enable(Capability.x86DisableExits.rawValue, flags: 1, 0)),
                ("DISABLE_EXITS MWAIT|bit 4", enable(Capability.x86DisableExits.rawValue, 0x11)),
                ("DISABLE_EXITS 0 before vCPUs", enable(Capability.x86DisableExits.rawValue, 0)),
                ("bad pointer", rawOutcome(backend, vm.rawDescriptor, KVMRequest.enableCap.number, UnsafeMutableRawPointer(bitPattern: 8))),
                ("on the system descriptor", {
                    var value = kvm_enable_cap()
                    value.cap = Capability.x86UserSpaceMSR.rawValue
                    return rawOutcome(backend, hypervisor.rawDescriptor, KVMRequest.enableCap.number, &value)
                }()),
            ]
            let vcpu = try vm.createVCPU(id: 0)
            results += [
                ("DISABLE_EXITS 0 after a vCPU", enable(Capability.x86DisableExits.rawValue, 0)),
                ("USER_SPACE_MSR after a vCPU", enable(Capability.x86UserSpaceMSR.rawValue, 2)),
            ]
            withExtendedLifetime(vcpu) {}
            return results
        }
    }

    /// The vCPU's KVM_ENABLE_CAP: KVM_CAP_ENFORCE_PV_FEATURE_CPUID takes any
    /// argument; flags, VM capabilities and unknown ones are EINVAL; a bad
    /// pointer is EFAULT.
    @Test(.enabled(if: HostKVM.isAvailable))
    func vcpuEnableCapGivesTheSameResults() throws {
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            let vcpu = try vm.createVCPU(id: 0)
            let backend = hypervisor.handle.backend
            return [
                ("ENFORCE_PV_FEATURE_CPUID 1", outcome { () throws(KVMError) in try vcpu.enforcePVFeatureCPUID() }),
                ("ENFORCE_PV_FEATURE_CPUID 2", outcome { () throws(KVMError) in try vcpu.enableCapability(.enforcePvFeatureCPUID, arguments: [2]) }),
                ("ENFORCE_PV_FEATURE_CPUID 0", outcome { () throws(KVMError) in try vcpu.enforcePVFeatureCPUID(false) }),
                ("ENFORCE_PV_FEATURE_CPUID with flags", outcome { () throws(KVMError) in try vcpu.enableCapability(.enforcePvFeatureCPUID, flags: 1, arguments: [1]) }),
                ("USER_SPACE_MSR on the vCPU", outcome { () throws(KVMError) in try vcpu.enableCapability(.x86UserSpaceMSR, arguments: [1]) }),
                ("unknown capability", outcome { () throws(KVMError) in try vcpu.enableCapability(Capability(rawValue: 9999)) }),
                ("HYPERV_SYNIC", outcome { () throws(KVMError) in try vcpu.enableCapability(.hypervSynic) }),
                ("bad pointer", rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.enableCap.number, UnsafeMutableRawPointer(bitPattern: 8))),
            ]
        }
    }

    /// KVM_CHECK_EXTENSION(KVM_CAP_X86_DISABLE_EXITS) is the set of intercepts
    /// that can be turned off: each bit it lists is taken, each other bit is
    /// refused, on whichever backend answers.
    @Test(arguments: Backend.available)
    func disableExitsTakesExactlyWhatCheckExtensionLists(_ backend: Backend) throws {
        let hypervisor = try backend.hypervisor()
        let allowed = UInt64(try hypervisor.checkExtension(.x86DisableExits))
        for bit in 0..<5 {
            let vm = try hypervisor.createVM()
            let exits = DisabledExits(rawValue: 1 << UInt64(bit))
            let result = outcome { () throws(KVMError) in try vm.disableExits(exits) }
            #expect(result == (allowed & exits.rawValue != 0 ? .ok(0) : .failed(.invalidArgument)), "bit \(bit), allowed \(allowed)")
        }
    }

    /// SoftKVM turns off no intercept (see softAllowedDisableExits), and the
    /// capabilities it does not implement read 0 and cannot be enabled.
    @Test func softKVMReportsZeroForWhatItCannotDo() throws {
        let hypervisor = try Backend.soft.hypervisor()
        let vm = try hypervisor.createVM()
        for capability in [Capability.x86DisableExits, .splitIrqchip, .exitHypercall, .haltPoll] {
            #expect(try vm.checkExtension(capability) == 0, "\(capability.rawValue)")
        }
        for (capability, argument) in [(Capability.splitIrqchip, UInt64(24)), (.exitHypercall, 1 << 12), (.haltPoll, 1000)] {
            let error = try #require(throws: KVMError.self) { try vm.enableCapability(capability, arguments: [argument]) }
            #expect(error.errno == .invalidArgument)
        }
    }

    /// KVM_X86_SET_MSR_FILTER's checks (kvm_vm_ioctl_set_msr_filter,
    /// kvm_add_msr_filter): unknown filter flags, a range with no or unknown
    /// access flags, a bitmap larger than 0x600 bytes, deny by default with
    /// no ranges are EINVAL; a missing bitmap or filter is EFAULT; ranges of
    /// no MSRs are skipped whatever their flags; bases and ends anywhere in
    /// 32 bits are taken; the request is the VM's only.
    @Test(.enabled(if: HostKVM.isAvailable))
    func msrFilterValidationGivesTheSameResults() throws {
        let bitmap = UnsafeMutableRawBufferPointer.allocate(byteCount: 0x800, alignment: 8)
        defer { bitmap.deallocate() }
        bitmap.initializeMemory(as: UInt8.self, repeating: 0xFF)
        let bits = bitmap.baseAddress?.assumingMemoryBound(to: UInt8.self)
        func range(_ flags: UInt32, _ nmsrs: UInt32, base: UInt32 = 0x10, bitmap: UnsafeMutablePointer<UInt8>? = bits) -> kvm_msr_filter_range {
            kvm_msr_filter_range(flags: flags, nmsrs: nmsrs, base: base, bitmap: bitmap)
        }
        let cases: [(String, UInt32, [Int: kvm_msr_filter_range])] = [
            ("empty, allow", 0, [:]),
            ("empty, deny", 1, [:]),
            ("unknown filter flag", 2, [:]),
            ("range with no access flags", 0, [0: range(0, 1)]),
            ("range with an unknown access flag", 0, [0: range(4, 1)]),
            ("range of no MSRs with an unknown flag", 0, [0: range(4, 0)]),
            ("0x3000 MSRs (0x600 bytes)", 0, [0: range(1, 0x3000)]),
            ("0x3001 MSRs", 0, [0: range(1, 0x3001)]),
            ("0x3040 MSRs", 0, [0: range(1, 0x3040)]),
            ("0xFFFFFFFF MSRs", 0, [0: range(1, 0xFFFF_FFFF)]),
            ("no bitmap", 0, [0: range(1, 1, bitmap: nil)]),
            ("unmapped bitmap", 0, [0: range(1, 1, bitmap: UnsafeMutablePointer(bitPattern: 8))]),
            ("a good range, then a bad one", 0, [0: range(1, 1), 1: range(8, 1)]),
            ("base 0xFFFFFFFF", 0, [0: range(3, 1, base: 0xFFFF_FFFF)]),
            ("a range that wraps", 0, [0: range(3, 0x3000, base: 0xFFFF_FFF0)]),
            ("deny, the last range only", 1, [15: range(3, 1)]),
        ]
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            let vcpu = try vm.createVCPU(id: 0)
            let backend = hypervisor.handle.backend
            var results = cases.map { name, flags, ranges in
                var filter = kvm_msr_filter()
                filter.flags = flags
                withUnsafeMutableBytes(of: &filter.ranges) { storage in
                    for (index, range) in ranges {
                        storage.storeBytes(of: range, toByteOffset: index * MemoryLayout<kvm_msr_filter_range>.stride, as: kvm_msr_filter_range.self)
                    }
                }
                return (name, rawOutcome(backend, vm.rawDescriptor, KVMRequest.x86SetMSRFilter.number, &filter))
            }
            var empty = kvm_msr_filter()
            results += [
                ("bad pointer", rawOutcome(backend, vm.rawDescriptor, KVMRequest.x86SetMSRFilter.number, UnsafeMutableRawPointer(bitPattern: 8))),
                ("on the vCPU", rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.x86SetMSRFilter.number, &empty)),
                ("on the system descriptor", rawOutcome(backend, hypervisor.rawDescriptor, KVMRequest.x86SetMSRFilter.number, &empty)),
                ("through the API: 17 ranges", outcome { () throws(KVMError) in
                    try vm.setMSRFilter(MSRFilter(ranges: Array(repeating: .denying([.read], 0...0), count: 17)))
                }),
                ("through the API: a short bitmap", outcome { () throws(KVMError) in
                    try vm.setMSRFilter(MSRFilter(ranges: [MSRFilter.Range(accesses: [.read], base: 0, count: 0x3000, bitmap: [1])]))
                }),
            ]
            return results
        }
    }
}
