import CLinuxKVM
import GuestMemory
@testable import KVM
@testable import SoftKVM
import SystemPackage
import Testing

/// KVM_GET_FPU, KVM_SET_FPU, KVM_GET_XSAVE and KVM_SET_XSAVE on the host's
/// /dev/kvm and on SoftKVM: the same state set on both comes back with the
/// same bytes, and the same bad input gets the same errno. Left out of the
/// byte comparisons, because they describe the host CPU: MXCSR_MASK (bytes
/// 28-31: 0x2FFFF on the host's AMD CPU, 0xFFFF on SoftKVM's) and the
/// XSAVE area's software-reserved bytes 464-511 and extended components.
@Suite("FPU and XSAVE state against the host's /dev/kvm", .enabled(if: HostKVM.isAvailable))
struct FPUDifferentialTests {
    /// A raw request with a buffer of `size` bytes, as a C program makes it.
    static func call(_ vcpu: VCPU, _ request: KVMRequest, _ buffer: inout [UInt8]) -> Outcome {
        let backend = vcpu.handle.backend
        return buffer.withUnsafeMutableBytes { rawOutcome(backend, vcpu.rawDescriptor, request.number, $0.baseAddress) }
    }

    static func fpuBytes(_ vcpu: VCPU) -> ([UInt8], Outcome) {
        var buffer = [UInt8](repeating: 0xEE, count: MemoryLayout<kvm_fpu>.size)
        let outcome = call(vcpu, .getFPU, &buffer)
        return (buffer, outcome)
    }

    static func xsaveBytes(_ vcpu: VCPU) -> ([UInt8], Outcome) {
        var buffer = [UInt8](repeating: 0xEE, count: MemoryLayout<kvm_xsave>.size)
        let outcome = call(vcpu, .getXsave, &buffer)
        // What describes the host CPU rather than the state.
        for i in 28..<32 { buffer[i] = 0 }
        for i in 464..<512 { buffer[i] = 0 }
        return (Array(buffer[0..<576]), outcome)
    }

    /// A kvm_fpu with every byte chosen: register slots with their reserved
    /// bytes, all 16 FOP bits, 64-bit instruction and operand pointers.
    static func fpuImage(seed: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: MemoryLayout<kvm_fpu>.size)
        var state = seed
        for i in 0..<bytes.count {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            bytes[i] = UInt8(truncatingIfNeeded: state >> 33)
        }
        let mxcsr = MemoryLayout<kvm_fpu>.offset(of: \kvm_fpu.mxcsr)!
        for i in mxcsr..<bytes.count { bytes[i] = 0 }  // MXCSR and pad2: KVM_GET_FPU gives zeros
        bytes[MemoryLayout<kvm_fpu>.offset(of: \kvm_fpu.pad1)!] = 0
        return bytes
    }

    /// An XSAVE area with both components present and every legacy byte
    /// chosen but the reserved byte 5 (which the host keeps and FXSAVE
    /// writes as zero) and a valid MXCSR.
    static func xsaveImage(seed: UInt64, features: UInt64 = 3) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: MemoryLayout<kvm_xsave>.size)
        var state = seed
        for i in 0..<416 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            bytes[i] = UInt8(truncatingIfNeeded: state >> 33)
        }
        bytes[5] = 0
        bytes[24] = 0x80; bytes[25] = 0x3F; bytes[26] = 0; bytes[27] = 0  // MXCSR 0x3F80
        for i in 0..<8 { bytes[512 + i] = UInt8(truncatingIfNeeded: features >> (8 * UInt64(i))) }
        return bytes
    }

    @Test func newVCPUStateAgrees() throws {
        let host = try Backend.host.hypervisor().createVM().createVCPU(id: 0)
        let soft = try Backend.soft.hypervisor().createVM().createVCPU(id: 0)
        #expect(Self.fpuBytes(soft) == Self.fpuBytes(host))
        #expect(Self.xsaveBytes(soft) == Self.xsaveBytes(host))
    }

    @Test(arguments: [UInt64(1), 2, 3])
    func setFPUComesBackWithTheSameBytes(_ seed: UInt64) throws {
        let host = try Backend.host.hypervisor().createVM().createVCPU(id: 0)
        let soft = try Backend.soft.hypervisor().createVM().createVCPU(id: 0)
        var image = Self.fpuImage(seed: seed)
        image[MemoryLayout<kvm_fpu>.offset(of: \kvm_fpu.mxcsr)!] = 0x80  // set, and not given back
        var other = image
        #expect(Self.call(host, .setFPU, &image) == .ok(0))
        #expect(Self.call(soft, .setFPU, &other) == .ok(0))
        let (hostBytes, _) = Self.fpuBytes(host)
        let (softBytes, _) = Self.fpuBytes(soft)
        #expect(softBytes == hostBytes)
        #expect(hostBytes[0..<128] == image[0..<128], "the host gives the registers back as set")
    }

    @Test(arguments: [UInt64(7), 8, 9])
    func setXSaveComesBackWithTheSameBytes(_ seed: UInt64) throws {
        let host = try Backend.host.hypervisor().createVM().createVCPU(id: 0)
        let soft = try Backend.soft.hypervisor().createVM().createVCPU(id: 0)
        var image = Self.xsaveImage(seed: seed)
        var other = image
        #expect(Self.call(host, .setXsave, &image) == .ok(0))
        #expect(Self.call(soft, .setXsave, &other) == .ok(0))
        let (hostArea, _) = Self.xsaveBytes(host)
        let (softArea, _) = Self.xsaveBytes(soft)
        for offset in stride(from: 0, to: 576, by: 32) {
            #expect(softArea[offset..<offset + 32] == hostArea[offset..<offset + 32], "bytes \(offset)")
        }
        // And KVM_GET_FPU sees what KVM_SET_XSAVE loaded.
        #expect(Self.fpuBytes(soft) == Self.fpuBytes(host))
    }

    @Test func onlyTheX87ComponentLoadsAndSSEIsInitial() throws {
        let host = try Backend.host.hypervisor().createVM().createVCPU(id: 0)
        let soft = try Backend.soft.hypervisor().createVM().createVCPU(id: 0)
        var image = Self.xsaveImage(seed: 11, features: 1)
        image[24] = 0x80; image[25] = 0x1F  // the default MXCSR: see SoftKVM's FPU.swift on MXCSR
        var other = image
        #expect(Self.call(host, .setXsave, &image) == .ok(0))
        #expect(Self.call(soft, .setXsave, &other) == .ok(0))
        #expect(Self.xsaveBytes(soft) == Self.xsaveBytes(host))
    }

    @Test func badXSaveAreasAreRefusedAlike() throws {
        try expectSameOnBothBackends { hypervisor in
            let vcpu = try hypervisor.createVM().createVCPU(id: 0)
            func set(_ change: (inout [UInt8]) -> Void) -> Outcome {
                var image = Self.xsaveImage(seed: 5)
                change(&image)
                return Self.call(vcpu, .setXsave, &image)
            }
            return [
                ("valid", set { _ in }),
                ("MXCSR bit 16", set { $0[26] = 1 }),
                ("MXCSR bit 31", set { $0[27] = 0x80 }),
                ("compacted (XCOMP_BV bit 63)", set { $0[527] = 0x80 }),
                ("reserved header byte", set { $0[540] = 1 }),
                ("no components", set { $0[512] = 0 }),
                ("bad pointer", rawOutcome(hypervisor.handle.backend, vcpu.rawDescriptor, KVMRequest.setXsave.number, nil)),
                ("bad pointer for get", rawOutcome(hypervisor.handle.backend, vcpu.rawDescriptor, KVMRequest.getXsave.number, nil)),
                ("bad pointer for get FPU", rawOutcome(hypervisor.handle.backend, vcpu.rawDescriptor, KVMRequest.getFPU.number, nil)),
            ]
        }
    }
}

/// SoftKVM's FPU ABI where the host cannot be the oracle: the host CPU
/// has components SoftKVM's has not, and x87/SSE at CPL 0 give an internal
/// error on this host's kvm_pvm.
@Suite("SoftKVM's FPU and XSAVE state is the CPU's")
struct SoftFPUStateTests {
    @Test func componentsBeyondSSEAreRefused() throws {
        let vcpu = try Backend.soft.hypervisor().createVM().createVCPU(id: 0)
        var image = FPUDifferentialTests.xsaveImage(seed: 3, features: 7)  // with AVX's YMM
        #expect(FPUDifferentialTests.call(vcpu, .setXsave, &image) == .failed(.invalidArgument))
    }

    @Test func newVCPUHasTheKernelsInitialFPUState() throws {
        let vcpu = try Backend.soft.hypervisor().createVM().createVCPU(id: 0)
        let fpu = try vcpu.fpu()
        #expect(fpu.fcw == 0x37F && fpu.fsw == 0 && fpu.ftwx == 0 && fpu.mxcsr == 0)
        let area = try vcpu.xsave()
        #expect(area.mxcsr == 0x1F80 && area.fcw == 0x37F && area.xstateBV == 0)
    }

    /// The guest runs with the state KVM_SET_XSAVE gave, and KVM_GET_FPU
    /// shows what the guest left.
    @Test func guestSeesAndChangesTheIOCTLState() throws {
        // movd eax, xmm3; out 0x10, al; movd xmm5, ecx; fnstcw [0x2000]; fxsave [0x2100]; out 0x11, al
        let code: [UInt8] = [0x66, 0x0F, 0x7E, 0xD8, 0xE6, 0x10, 0x66, 0x0F, 0x6E, 0xE9, 0xD9, 0x3E, 0x00, 0x20,
                             0x0F, 0xAE, 0x06, 0x00, 0x21, 0xE6, 0x11]
        let guest = try RealModeGuest(hypervisor: Backend.soft.hypervisor(), code: code)
        var special = try guest.vcpu.specialRegisters()
        special.cr4 |= 1 << 9  // OSFXSR
        try guest.vcpu.setSpecialRegisters(special)
        var area = try guest.vcpu.xsave()
        area.setXMM(3, 0x1111_2222_3333_4444_5555_6666_7777_8888)
        area.fcw = 0x027F
        area.mxcsr = 0x9FC0
        area.xstateBV = 3
        try guest.vcpu.setXSave(area)
        var registers = try guest.vcpu.registers()
        registers.rcx = 0xCAFE_F00D
        try guest.vcpu.setRegisters(registers)

        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 0x88)))
        #expect(try guest.vcpu.registers().rax & 0xFFFF_FFFF == 0x7777_8888)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x11, size: 1, value: 0x88)))
        #expect(try guest.vcpu.fpu().xmm[5] == 0xCAFE_F00D)
        #expect(try guest.memory.load(UInt16.self, at: 0x2000) == 0x027F)
        #expect(try guest.memory.load(UInt32.self, at: 0x2100 + 24) == 0x9FC0)
        #expect(try guest.vcpu.xsave().xmm(5) == 0xCAFE_F00D)
    }
}
