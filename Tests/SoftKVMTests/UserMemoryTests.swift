import CLinuxKVM
import Glibc
@testable import KVM
@testable import SoftKVM
import SystemPackage
import Testing

/// User memory a request points at is copied as the kernel's
/// copy_from_user/copy_to_user copy it: a bad pointer is EFAULT, on the
/// Swift API's raw path as under the preload library, never a crash.
@Suite("SoftKVM user memory")
struct UserMemoryTests {
    /// A system, VM and vCPU descriptor made with raw requests.
    struct Objects {
        let system: Int32
        let vm: Int32
        let vcpu: Int32

        init(_ backend: any KVMBackend) throws {
            system = backend.openSystem()
            try #require(system >= 0)
            vm = backend.ioctl(system, KVMRequest.createVM.number, value: 0)
            try #require(vm >= 0)
            vcpu = backend.ioctl(vm, KVMRequest.createVCPU.number, value: 0)
            try #require(vcpu >= 0)
        }

        func close(_ backend: any KVMBackend) {
            backend.close(vcpu)
            backend.close(vm)
            backend.close(system)
        }
    }

    /// Pages for bad pointers: one unmapped, one read-only.
    struct BadPages {
        let unmapped: UnsafeMutableRawPointer
        let readonly: UnsafeMutableRawPointer
        /// A page whose last bytes are readable and whose next page is unmapped.
        let edge: UnsafeMutableRawPointer

        init() throws {
            let pages = try #require(mmap(nil, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
            try #require(pages != MAP_FAILED)
            unmapped = pages
            munmap(pages, 4096)
            readonly = pages + 4096
            mprotect(readonly, 4096, PROT_READ)
            edge = pages + 2 * 4096
            munmap(pages + 3 * 4096, 4096)
        }
    }

    func badPointerOutcomes(_ backend: any KVMBackend) throws -> [(String, Outcome)] {
        let objects = try Objects(backend)
        defer { objects.close(backend) }
        let pages = try BadPages()
        // kvm_msrs with one entry: the header fits in the page, the entry does not.
        let msrs = pages.edge + 4096 - MemoryLayout<kvm_msrs>.size
        msrs.storeBytes(of: 1, as: UInt32.self)
        return [
            ("KVM_GET_REGS null", rawOutcome(backend, objects.vcpu, KVMRequest.getRegs.number, nil)),
            ("KVM_GET_REGS unmapped", rawOutcome(backend, objects.vcpu, KVMRequest.getRegs.number, pages.unmapped)),
            ("KVM_GET_REGS read-only", rawOutcome(backend, objects.vcpu, KVMRequest.getRegs.number, pages.readonly)),
            ("KVM_SET_REGS unmapped", rawOutcome(backend, objects.vcpu, KVMRequest.setRegs.number, pages.unmapped)),
            ("KVM_GET_FPU read-only", rawOutcome(backend, objects.vcpu, KVMRequest.getFPU.number, pages.readonly)),
            ("KVM_GET_MSRS entries unmapped", rawOutcome(backend, objects.vcpu, KVMRequest.getMSRs.number, msrs)),
            // After the MSRs: a partial copy out overwrites the header they read.
            ("KVM_GET_SREGS across the edge", rawOutcome(backend, objects.vcpu, KVMRequest.getSregs.number, pages.edge + 4000)),
            ("KVM_SET_USER_MEMORY_REGION unmapped", rawOutcome(backend, objects.vm, KVMRequest.setUserMemoryRegion.number, pages.unmapped)),
            ("KVM_IRQFD unmapped", rawOutcome(backend, objects.vm, KVMRequest.irqfd.number, pages.unmapped)),
            ("KVM_GET_SUPPORTED_CPUID unmapped", rawOutcome(backend, objects.system, KVMRequest.getSupportedCPUID.number, pages.unmapped)),
            ("KVM_GET_MSR_INDEX_LIST read-only", rawOutcome(backend, objects.system, KVMRequest.getMSRIndexList.number, pages.readonly)),
        ]
    }

    @Test func badPointersGiveEFAULTOnSoftKVM() throws {
        let outcomes = try badPointerOutcomes(SoftBackend())
        for (name, outcome) in outcomes {
            #expect(outcome == .failed(.badAddress), "\(name): \(outcome)")
        }
    }

    @Test(.enabled(if: HostKVM.isAvailable))
    func badPointersAreAnsweredAsByTheHost() throws {
        let host = try badPointerOutcomes(HostBackend.shared)
        let soft = try badPointerOutcomes(SoftBackend())
        for ((name, expected), (_, actual)) in zip(host, soft) {
            #expect(actual == expected, "\(name): host gave \(expected), SoftKVM gave \(actual)")
        }
    }

    /// The bytes SoftKVM copies for a request are its struct's, the size its
    /// ioctl number encodes (_IOC_SIZE): a layout that drifted from the
    /// kernel's would copy too little or too much.
    @Test(arguments: [
        (KVMRequest.getRegs, MemoryLayout<kvm_regs>.size), (KVMRequest.setRegs, MemoryLayout<kvm_regs>.size),
        (KVMRequest.getSregs, MemoryLayout<kvm_sregs>.size), (KVMRequest.setSregs, MemoryLayout<kvm_sregs>.size),
        (KVMRequest.getFPU, MemoryLayout<kvm_fpu>.size), (KVMRequest.setFPU, MemoryLayout<kvm_fpu>.size),
        (KVMRequest.getMPState, MemoryLayout<kvm_mp_state>.size),
        (KVMRequest.getVCPUEvents, MemoryLayout<kvm_vcpu_events>.size),
        (KVMRequest.getDebugregs, MemoryLayout<kvm_debugregs>.size),
        (KVMRequest.getXcrs, MemoryLayout<kvm_xcrs>.size),
        (KVMRequest.getMSRs, MemoryLayout<kvm_msrs>.size), (KVMRequest.setCPUID2, MemoryLayout<kvm_cpuid2>.size),
        (KVMRequest.getMSRIndexList, MemoryLayout<kvm_msr_list>.size),
        (KVMRequest.setUserMemoryRegion, MemoryLayout<kvm_userspace_memory_region>.size),
        (KVMRequest.getDirtyLog, MemoryLayout<kvm_dirty_log>.size),
        (KVMRequest.irqfd, MemoryLayout<kvm_irqfd>.size), (KVMRequest.ioeventfd, MemoryLayout<kvm_ioeventfd>.size),
        (KVMRequest.registerCoalescedMMIO, MemoryLayout<kvm_coalesced_mmio_zone>.size),
        (KVMRequest.irqLine, MemoryLayout<kvm_irq_level>.size), (KVMRequest.getIrqchip, MemoryLayout<kvm_irqchip>.size),
        (KVMRequest.signalMSI, MemoryLayout<kvm_msi>.size), (KVMRequest.setGSIRouting, MemoryLayout<kvm_irq_routing>.size),
    ])
    func copiedStructIsTheSizeTheRequestEncodes(request: KVMRequest, size: Int) {
        let encoded = Int((request.number >> 16) & 0x3FFF)  // _IOC_SIZE
        #expect(encoded == size, "\(request.name)")
    }
}
