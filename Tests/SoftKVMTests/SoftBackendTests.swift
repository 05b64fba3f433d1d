import CLinuxKVM
import Glibc
@testable import KVM
@testable import SoftKVM
import Synchronization
import SystemPackage
import Testing

/// SoftKVM's own rules, checked where the host cannot be the oracle, and on
/// every backend this machine has where it can.
@Suite("SoftKVM")
struct SoftBackendTests {
    @Test(arguments: Backend.available)
    func apiVersionIsTwelve(_ backend: Backend) throws {
        #expect(try backend.hypervisor().apiVersion() == 12)
    }

    @Test(arguments: Backend.available)
    func vcpuMappingIsThreePages(_ backend: Backend) throws {
        #expect(try backend.hypervisor().vcpuMmapSize() == 3 * 4096)
    }

    @Test(arguments: Backend.available)
    func duplicateVCPUGivesEEXIST(_ backend: Backend) throws {
        let vm = try backend.hypervisor().createVM()
        _ = try vm.createVCPU(id: 1)
        let error = try #require(throws: KVMError.self) { try vm.createVCPU(id: 1) }
        #expect(error.errno == .fileExists)
    }

    @Test(arguments: Backend.available)
    func newVCPUStartsAtTheResetVector(_ backend: Backend) throws {
        let vcpu = try backend.hypervisor().createVM().createVCPU(id: 0)
        let sregs = try vcpu.specialRegisters()
        #expect(sregs.cs.selector == 0xF000)
        #expect(sregs.cs.base == 0xFFFF_0000)
        #expect(try vcpu.registers().rip == 0xFFF0)
        #expect(try vcpu.registers().rflags == 2)
        #expect(try vcpu.registers().rdx == 0x600)
        #expect(sregs.cr0 == 0x6000_0010)
        #expect(sregs.apicBase == 0xFEE0_0900)
    }

    @Test func descriptorsAreRealAndDistinct() throws {
        let hypervisor = try Hypervisor(backend: SoftBackend())
        let vm = try hypervisor.createVM()
        let vcpu = try vm.createVCPU(id: 0)
        let descriptors = [hypervisor.rawDescriptor, vm.rawDescriptor, vcpu.rawDescriptor]
        #expect(Set(descriptors).count == 3)
        for descriptor in descriptors { #expect(fcntl(descriptor, F_GETFD) & FD_CLOEXEC != 0) }
    }

    /// The vCPU descriptor's mapping is SoftKVM's own run page: what SoftKVM
    /// writes there, user space reads, and the other way round.
    @Test func vcpuMappingSharesTheRunPage() throws {
        let backend = SoftBackend()
        let vcpu = try Hypervisor(backend: backend).createVM().createVCPU(id: 0)
        guard case .vcpu(let soft) = backend.lookup(vcpu.rawDescriptor) else {
            Issue.record("the vCPU descriptor is not in SoftKVM's table")
            return
        }
        vcpu.immediateExit = true
        #expect(soft.run.pointee.immediate_exit == 1)
        soft.run.pointee.exit_reason = UInt32(KVM_EXIT_HLT)
        #expect(vcpu.runMapping.load(fromByteOffset: MemoryLayout<kvm_run>.offset(of: \.exit_reason) ?? 0, as: UInt32.self) == UInt32(KVM_EXIT_HLT))
    }

    /// The reset vector with no memory: nothing to fetch, which KVM reports
    /// as an emulation failure. (Not compared with this host: its kvm_pvm
    /// fails KVM_RUN of a VM with no memory slots with ENOSPC.)
    @Test func runWithNoMemoryIsAnEmulationFailure() throws {
        let vcpu = try Hypervisor(backend: SoftBackend()).createVM().createVCPU(id: 0)
        let exit = try vcpu.run()
        guard case .internalError(let failure) = exit else {
            Issue.record("expected an internal error, got \(exit)")
            return
        }
        #expect(failure.suberror == UInt32(KVM_INTERNAL_ERROR_EMULATION))
        #expect(failure.data.first == 0, "the flags word: no instruction bytes")
    }

    @Test func runWithImmediateExitIsInterrupted() throws {
        let vcpu = try Hypervisor(backend: SoftBackend()).createVM().createVCPU(id: 0)
        vcpu.immediateExit = true
        #expect(try vcpu.run() == .interrupted)
    }

    @Test func aVMUsedFromAnotherProcessGivesEIO() throws {
        let process = Atomic<Int32>(100)
        let backend = SoftBackend(currentProcess: { process.load(ordering: .relaxed) })
        let vm = try Hypervisor(backend: backend).createVM()
        let vcpu = try vm.createVCPU(id: 0)
        process.store(101, ordering: .relaxed)
        #expect(backend.ioctl(vm.rawDescriptor, KVMRequest.checkExtension.number, value: 3) == -Errno.ioError.rawValue)
        #expect(backend.ioctl(vcpu.rawDescriptor, KVMRequest.getRegs.number, value: 0) == -Errno.ioError.rawValue)
        // The system object belongs to no process: kvm_dev_ioctl has no such check.
        #expect(backend.ioctl(vm.hypervisor.rawDescriptor, KVMRequest.getAPIVersion.number, value: 0) == 12)
    }

    @Test func aVCPUKeepsItsVMAliveAfterTheVMDescriptorCloses() throws {
        let backend = SoftBackend()
        let hypervisor = try Hypervisor(backend: backend)
        let vmDescriptor = backend.ioctl(hypervisor.rawDescriptor, KVMRequest.createVM.number, value: 0)
        let vcpuDescriptor = backend.ioctl(vmDescriptor, KVMRequest.createVCPU.number, value: 0)
        #expect(vcpuDescriptor >= 0)
        weak var vm: SoftVM?
        if case .vm(let object) = backend.lookup(vmDescriptor) { vm = object }
        backend.close(vmDescriptor)
        #expect(backend.lookup(vmDescriptor) == nil)
        #expect(vm != nil)
        var regs = kvm_regs()
        #expect(backend.ioctl(vcpuDescriptor, KVMRequest.getRegs.number, &regs) == 0)
        backend.close(vcpuDescriptor)
        #expect(vm == nil)
    }

    @Test func closedDescriptorGivesEBADF() throws {
        let backend = SoftBackend()
        let descriptor = backend.openSystem()
        backend.close(descriptor)
        #expect(backend.ioctl(descriptor, KVMRequest.getAPIVersion.number, value: 0) == -Errno.badFileDescriptor.rawValue)
    }

    @Test func dirtyLogIsReadAndCleared() throws {
        let backend = SoftBackend()
        let vm = try Hypervisor(backend: backend).createVM()
        let region = try GuestMemoryRegionForTests.make()
        try vm.setMemoryRegion(slot: 0, guestAddress: 0x10000, region: region, flags: .logDirtyPages)
        guard case .vm(let soft) = backend.lookup(vm.rawDescriptor) else {
            Issue.record("the VM descriptor is not in SoftKVM's table")
            return
        }
        soft.slots.withLock { $0.byID[0]?.markDirty(gfn: 0x12) }
        #expect(try vm.dirtyLog(slot: 0).words.first == 1 << 2)
        #expect(try vm.dirtyLog(slot: 0).words.first == 0)
    }

    @Test func supportedCPUIDListsEveryLeafItsMaximaName() throws {
        let entries = try Hypervisor(backend: SoftBackend()).supportedCPUID()
        let functions = Set(entries.map(\.function))
        let basic = try #require(entries.first { $0.function == 0 })
        let extended = try #require(entries.first { $0.function == 0x8000_0000 })
        #expect((0...basic.eax).allSatisfy(functions.contains))
        #expect((0x8000_0000...extended.eax).allSatisfy(functions.contains))
    }

    @Test func msrIndexListIsSoftKVMsOwn() throws {
        let list = try Hypervisor(backend: SoftBackend()).msrIndexList()
        #expect(list == msrsToSave)
    }
}

import GuestMemory

enum GuestMemoryRegionForTests {
    static func make() throws -> GuestMemoryRegion { try GuestMemoryRegion(size: 0x10000) }
}
