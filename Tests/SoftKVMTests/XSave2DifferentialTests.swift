import CLinuxKVM
import Foundation
import SystemPackage
import Testing
@testable import KVM
@testable import SoftKVM

/// KVM_GET_XSAVE2 and KVM_CAP_XSAVE2 on the host and on SoftKVM.
@Suite("KVM_GET_XSAVE2 on both backends")
struct XSave2DifferentialTests {
    /// The bytes of a new vCPU's area: the initial x87 and SSE state in the
    /// standard format (FCW 0x37F, MXCSR 0x1F80, XSTATE_BV 0, all else 0 up
    /// to KVM_CAP_XSAVE2's size), the same on both backends but for what
    /// describes the host CPU itself: MXCSR_MASK (bytes 28-31) and the
    /// software-reserved bytes 464-511.
    @Test(.enabled(if: HostKVM.isAvailable))
    func aNewVCPUsAreaIsTheSameOnBothBackends() throws {
        let host = try Self.newVCPUArea(.host)
        let soft = try Self.newVCPUArea(.soft)
        #expect(host.count == soft.count)
        let hostCompared = Self.masked(host)
        let softCompared = Self.masked(soft)
        let differing = zip(hostCompared, softCompared).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
        #expect(differing.isEmpty, "bytes \(differing.prefix(16)) differ")
    }

    /// What both must hold, from the SDM's XSAVE layout and the kernel's initial FPU state.
    @Test(arguments: Backend.available)
    func aNewVCPUsAreaHoldsTheInitialState(_ backend: Backend) throws {
        let area = try Self.newVCPUArea(backend)
        let size = Int(try backend.hypervisor().createVM().checkExtension(.xsave2))
        #expect(area.count == size)
        #expect(size >= 4096)
        #expect(Self.load(UInt16.self, area, 0) == 0x37F)
        #expect(Self.load(UInt32.self, area, 24) == 0x1F80)
        #expect(Self.load(UInt64.self, area, 512) == 0, "XSTATE_BV")
        #expect(Self.load(UInt64.self, area, 520) == 0, "XCOMP_BV: the standard format")
        #expect(Self.masked(area).enumerated().allSatisfy { offset, byte in [0, 1, 24, 25].contains(offset) || byte == 0 })
    }

    /// The first 4096 bytes of KVM_GET_XSAVE2 are KVM_GET_XSAVE's.
    @Test(arguments: Backend.available)
    func theFirst4096BytesAreKVMGetXSave(_ backend: Backend) throws {
        let vcpu = try backend.hypervisor().createVM().createVCPU(id: 0)
        let area2 = try vcpu.xsave2()
        let area = try vcpu.xsave()
        #expect(Array(area2.region.prefix(1024)) == area.region)
    }

    @Test(.enabled(if: HostKVM.isAvailable))
    func badRequestsGiveTheSameErrors() throws {
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            let vcpu = try vm.createVCPU(id: 0)
            let backend = hypervisor.handle.backend
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 8)
            defer { buffer.deallocate() }
            let readOnly = mmap(nil, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            defer { munmap(readOnly, 4096) }
            return [
                ("on the vCPU", rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.getXsave2.number, buffer)),
                ("bad pointer", rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.getXsave2.number, UnsafeMutableRawPointer(bitPattern: 8))),
                ("read-only buffer", rawOutcome(backend, vcpu.rawDescriptor, KVMRequest.getXsave2.number, readOnly)),
                ("on the VM", rawOutcome(backend, vm.rawDescriptor, KVMRequest.getXsave2.number, buffer)),
                ("on the system descriptor", rawOutcome(backend, hypervisor.rawDescriptor, KVMRequest.getXsave2.number, buffer)),
            ]
        }
    }

    /// SoftKVM's area follows its x87 and XMM registers: set through
    /// KVM_SET_FPU, they show at their standard offsets with their
    /// XSTATE_BV bits set. (The host's KVM_SET_FPU leaves XSTATE_BV alone,
    /// so its area shows the initial state instead; see FPUState.)
    @Test func softKVMsAreaFollowsTheFPURegisters() throws {
        let vcpu = try Backend.soft.hypervisor().createVM().createVCPU(id: 0)
        var fpu = try vcpu.fpu()
        fpu.fcw = 0x27F
        fpu.fsw = 0x3800
        fpu.ftwx = 0x80
        fpu.fpr[7] = 0x4000_8000_0000_0000_0000
        fpu.xmm[15] = 0x0011_2233_4455_6677_8899_AABB_CCDD_EEFF
        try vcpu.setFPU(fpu)
        let area = try vcpu.xsave2()
        #expect(area.fcw == 0x27F)
        #expect(area.xstateBV == 3)
        #expect(area.xmm(15) == 0x0011_2233_4455_6677_8899_AABB_CCDD_EEFF)
        let bytes = area.region.withUnsafeBytes { Array($0) }
        #expect(Self.load(UInt16.self, bytes, 2) == 0x3800)
        #expect(bytes[4] == 0x80)
        #expect(Self.load(UInt64.self, bytes, 32 + 7 * 16) == 0x8000_0000_0000_0000)
        #expect(Self.load(UInt16.self, bytes, 32 + 7 * 16 + 8) == 0x4000)
        #expect(area.mxcsr == 0x1F80)
    }

    static func newVCPUArea(_ backend: Backend) throws -> [UInt8] {
        let vcpu = try backend.hypervisor().createVM().createVCPU(id: 0)
        return try vcpu.xsave2().region.withUnsafeBytes { Array($0) }
    }

    /// The area with MXCSR_MASK and the software-reserved bytes zeroed.
    static func masked(_ area: [UInt8]) -> [UInt8] {
        var area = area
        for offset in Array(28..<32) + Array(464..<512) where offset < area.count { area[offset] = 0 }
        return area
    }

    static func load<T: FixedWidthInteger>(_ type: T.Type, _ bytes: [UInt8], _ offset: Int) -> T {
        bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
}
