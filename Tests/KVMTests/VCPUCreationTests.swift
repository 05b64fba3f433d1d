import Testing
@testable import KVM

@Suite("vCPU creation on the host's /dev/kvm", .enabled(if: HostKVM.isAvailable))
struct VCPUCreationTests {
    @Test func vcpuIdAtMaximumIsRejected() throws {
        let hypervisor = try HostKVM.hypervisor()
        let maximumID = try hypervisor.checkExtension(.maxVCPUID)
        let vm = try hypervisor.createVM()
        let error = try #require(throws: KVMError.self) { try vm.createVCPU(id: UInt32(maximumID)) }
        #expect(error.errno == .invalidArgument)
        _ = try vm.createVCPU(id: UInt32(maximumID - 1))
    }

    @Test func duplicateVCPUIdGivesEEXIST() throws {
        let vm = try HostKVM.hypervisor().createVM()
        _ = try vm.createVCPU(id: 1)
        let error = try #require(throws: KVMError.self) { try vm.createVCPU(id: 1) }
        #expect(error.errno == .fileExists)
    }

    @Test func vcpuKeepsItsVMAlive() throws {
        var vcpu: VCPU? = try HostKVM.hypervisor().createVM().createVCPU(id: 0)
        weak let vm = vcpu?.vm
        #expect(vm != nil)
        vcpu = nil
        #expect(vm == nil)
    }

    @Test func manyVCPUsCanBeCreated() throws {
        let vm = try HostKVM.hypervisor().createVM()
        let vcpus = try (0..<8).map { try vm.createVCPU(id: UInt32($0)) }
        #expect(Set(vcpus.map(\.handle.descriptor)).count == 8)
    }
}
