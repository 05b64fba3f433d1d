import CLinuxKVM
import SystemPackage
import Testing
@testable import KVM

@Suite("System requests on the host's /dev/kvm", .enabled(if: HostKVM.isAvailable))
struct SystemTests {
    @Test func apiVersionIsTwelve() throws {
        #expect(try HostKVM.hypervisor().apiVersion() == 12)
    }

    @Test func userMemoryCapabilityIsReported() throws {
        let hypervisor = try HostKVM.hypervisor()
        #expect(try hypervisor.checkExtension(.userMemory) > 0)
        #expect(try hypervisor.checkExtension(Capability(rawValue: 100_000)) == 0)
    }

    @Test func vcpuMappingCoversRunPageAndPioPage() throws {
        let size = try HostKVM.hypervisor().vcpuMmapSize()
        #expect(size >= 2 * 4096)
        #expect(size % 4096 == 0)
    }

    @Test func supportedCPUIDHasBasicAndExtendedLeaves() throws {
        let entries = try HostKVM.hypervisor().supportedCPUID()
        let functions = Set(entries.map(\.function))
        #expect(functions.contains(0))
        #expect(functions.contains(1))
        #expect(functions.contains(0x8000_0000))
        let leaf0 = try #require(entries.first { $0.function == 0 })
        #expect(functions.contains(leaf0.eax), "leaf 0's EAX names the highest basic leaf, which must be listed")
    }

    @Test func msrIndexListIncludesTimeStampCounter() throws {
        let indices = try HostKVM.hypervisor().msrIndexList()
        #expect(indices.contains(0x10), "IA32_TIME_STAMP_COUNTER")
        #expect(indices.contains(0xC000_0080) == false || indices.count > 1)
        #expect(Set(indices).count == indices.count)
    }

    @Test func unknownVMTypeIsRejected() throws {
        let hypervisor = try HostKVM.hypervisor()
        let error = try #require(throws: KVMError.self) { try hypervisor.createVM(type: 0xff) }
        #expect(error.errno == .invalidArgument)
        #expect(error.request == .createVM)
    }

    @Test func unknownSystemRequestGivesEINVAL() throws {
        let hypervisor = try HostKVM.hypervisor()
        let bogus = KVMRequest(name: "bogus", number: 0xAEFF)
        let error = try #require(throws: KVMError.self) { try hypervisor.handle.call(bogus, value: 0) }
        #expect(error.errno == .invalidArgument)
    }

    @Test func unknownVMRequestGivesENOTTY() throws {
        let vm = try HostKVM.hypervisor().createVM()
        let bogus = KVMRequest(name: "bogus", number: 0xAEFF)
        let error = try #require(throws: KVMError.self) { try vm.handle.call(bogus, value: 0) }
        #expect(error.errno == .inappropriateIOCTLForDevice)
    }

    @Test func unknownVCPURequestGivesEINVAL() throws {
        let vcpu = try HostKVM.hypervisor().createVM().createVCPU(id: 0)
        let bogus = KVMRequest(name: "bogus", number: 0xAEFF)
        let error = try #require(throws: KVMError.self) { try vcpu.handle.call(bogus, value: 0) }
        #expect(error.errno == .invalidArgument)
    }

    /// The trace requests were removed from the kernel; what is left of them
    /// falls to kvm_dev_ioctl's default case, EINVAL, as on any unknown request.
    @Test func removedTraceRequestsGiveEINVAL() throws {
        let hypervisor = try HostKVM.hypervisor()
        let error = try #require(throws: KVMError.self) { try hypervisor.handle.call(.traceEnable, value: 0) }
        #expect(error.errno == .invalidArgument)
    }

    @Test func errorMessageNamesRequestAndErrno() throws {
        let vm = try HostKVM.hypervisor().createVM()
        _ = try vm.createVCPU(id: 3)
        let error = try #require(throws: KVMError.self) { try vm.createVCPU(id: 3) }
        #expect(error.description.contains("KVM_CREATE_VCPU"))
        #expect(error.description.contains("EEXIST"))
        #expect(error.description.contains("already exists"))
    }

    @Test func everyGeneratedRequestHasADistinctNumber() {
        let numbers = KVMRequest.all.map(\.number)
        #expect(Set(numbers).count == numbers.count)
        #expect(KVMRequest.run.number == 0xAE80)
        #expect(KVMRequest.createVCPU.number == 0xAE41)
    }
}
