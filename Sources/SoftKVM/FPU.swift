import CLinuxKVM
import SystemPackage
import X86

// KVM_GET_FPU/KVM_SET_FPU and KVM_GET_XSAVE/KVM_SET_XSAVE, made from and
// written into the CPU's x87 and SSE state (the kernel's
// kvm_arch_vcpu_ioctl_get_fpu/set_fpu and
// fpu_copy_guest_fpstate_to_uabi/fpu_copy_uabi_to_guest_fpstate).
//
// SoftKVM's CPU has no XSAVE: its XSAVE area is the kernel's for such a
// CPU, the 512-byte FXSAVE image (64-bit layout, as the kernel's FXSAVE64
// and XSAVE64 write it) followed by the XSAVE header; only the x87 (bit
// 0) and SSE (bit 1) components exist. Where the kernel on an XSAVE CPU
// keeps a component whose XSTATE_BV bit is clear in its buffer but treats
// it as initial (KVM_GET_XSAVE gives the initial values, the next entry's
// XRSTOR loads them), SoftKVM resets the component: the state a
// KVM_GET_* gives is the state the guest runs with. Likewise KVM_SET_FPU:
// the host kernel writes its buffer but not XSTATE_BV, so its
// KVM_GET_XSAVE may still show the initial values; SoftKVM's shows the
// state that was set (XSTATE_BV has every component not in its initial
// state).

/// The XSAVE header's offset in the area, and the size of what the header holds.
let XSAVE_HEADER_OFFSET = 512
let XSAVE_HEADER_SIZE = 64

extension VCPUArch {
    /// kvm_fpu (kvm_arch_vcpu_ioctl_get_fpu): MXCSR is not given (it reads 0).
    var fpu: kvm_fpu {
        mutating get {
            var fpu = kvm_fpu()
            withUnsafeMutableBytes(of: &fpu.fpr) { bytes in
                for i in 0..<8 { bytes.storeBytes(of: cpu.state.fpu.st(i), toByteOffset: 16 * i, as: UInt128.self) }
            }
            withUnsafeMutableBytes(of: &fpu.xmm) { bytes in
                for i in 0..<16 { bytes.storeBytes(of: cpu.state.fpu.xmm(i), toByteOffset: 16 * i, as: UInt128.self) }
            }
            fpu.fcw = cpu.state.fpu.fcw
            fpu.fsw = cpu.state.fpu.fsw
            fpu.ftwx = cpu.state.fpu.tags
            fpu.last_opcode = cpu.state.fpu.fop
            fpu.last_ip = cpu.state.fpu.fip
            fpu.last_dp = cpu.state.fpu.fdp
            return fpu
        }
    }

    /// KVM_SET_FPU (kvm_arch_vcpu_ioctl_set_fpu): every field but MXCSR,
    /// as given (the register slots' reserved bytes included).
    mutating func setFPU(_ fpu: kvm_fpu) {
        cpu.state.fpu.fcw = fpu.fcw
        cpu.state.fpu.fsw = fpu.fsw
        cpu.state.fpu.tags = fpu.ftwx
        cpu.state.fpu.fop = fpu.last_opcode
        cpu.state.fpu.fip = fpu.last_ip
        cpu.state.fpu.fdp = fpu.last_dp
        cpu.state.fpu.fcs = 0
        cpu.state.fpu.fds = 0
        withUnsafeBytes(of: fpu.fpr) { bytes in
            for i in 0..<8 { cpu.state.fpu.setPhysical(cpu.state.fpu.top + i, bytes.loadUnaligned(fromByteOffset: 16 * i, as: UInt128.self)) }
        }
        withUnsafeBytes(of: fpu.xmm) { bytes in
            for i in 0..<16 { cpu.state.fpu.setXMM(i, bytes.loadUnaligned(fromByteOffset: 16 * i, as: UInt128.self)) }
        }
    }

    /// The XSAVE area of KVM_GET_XSAVE: XSTATE_BV has the components set
    /// by KVM_SET_XSAVE and those not in their initial state.
    mutating func xsave(into area: UnsafeMutableRawBufferPointer) {
        guard let base = area.baseAddress else { return }
        area.initializeMemory(as: UInt8.self, repeating: 0)
        cpu.state.fpu.storeFXSAVE(to: base, layout64: true, xmmCount: 16, architectural: false)
        var inUse = xfeatures
        if !cpu.state.fpu.x87IsInitial() { inUse |= XFEATURE_MASK_FP }
        if !cpu.state.fpu.sseIsInitial() { inUse |= XFEATURE_MASK_SSE }
        base.storeBytes(of: inUse, toByteOffset: XSAVE_HEADER_OFFSET, as: UInt64.self)
    }

    /// KVM_SET_XSAVE: EINVAL for components the CPU does not have, a
    /// compacted area, a non-zero reserved header or reserved MXCSR bits
    /// (the kernel's validate_user_xstate_header and MXCSR check). A
    /// component whose XSTATE_BV bit is clear is put in its initial state;
    /// MXCSR is loaded with either component.
    mutating func setXSave(from area: UnsafeRawBufferPointer) -> Errno? {
        guard let base = area.baseAddress else { return .badAddress }
        let features = base.loadUnaligned(fromByteOffset: XSAVE_HEADER_OFFSET, as: UInt64.self)
        if features & ~softSupportedXCR0 != 0 { return .invalidArgument }
        for offset in stride(from: XSAVE_HEADER_OFFSET + 8, to: XSAVE_HEADER_OFFSET + XSAVE_HEADER_SIZE, by: 8)
        where base.loadUnaligned(fromByteOffset: offset, as: UInt64.self) != 0 {
            return .invalidArgument
        }
        let mxcsr = base.loadUnaligned(fromByteOffset: 24, as: UInt32.self)
        if features != 0 && mxcsr & ~FloatingPointState.mxcsrMask != 0 { return .invalidArgument }
        var loaded = cpu.state.fpu
        loaded.loadFXSAVE(from: base, layout64: true, xmmCount: 16, architectural: false)
        var fpu = cpu.state.fpu
        if features & XFEATURE_MASK_FP != 0 {
            fpu.fcw = loaded.fcw
            fpu.fsw = loaded.fsw
            fpu.tags = loaded.tags
            fpu.fop = loaded.fop
            fpu.fip = loaded.fip
            fpu.fdp = loaded.fdp
            fpu.fcs = 0
            fpu.fds = 0
            for i in 0..<8 { fpu.setPhysical(i, loaded.physical(i)) }
        } else {
            fpu.resetX87()
        }
        if features & XFEATURE_MASK_SSE != 0 {
            for i in 0..<16 { fpu.setXMM(i, loaded.xmm(i)) }
        } else {
            let mxcsr = fpu.mxcsr
            fpu.resetSSE()
            fpu.mxcsr = mxcsr
        }
        if features != 0 { fpu.mxcsr = mxcsr }
        cpu.state.fpu = fpu
        xfeatures = features
        return nil
    }
}

extension SoftBackend {
    /// KVM_GET_XSAVE and KVM_GET_XSAVE2: the 4096-byte area.
    func kvm_vcpu_ioctl_x86_get_xsave(_ arch: inout VCPUArch, _ arg: UInt) -> Int32 {
        let area = UnsafeMutableRawBufferPointer.allocate(byteCount: MemoryLayout<kvm_xsave>.size, alignment: 64)
        defer { area.deallocate() }
        arch.xsave(into: area)
        return UserMemory.copyOut(UnsafeRawBufferPointer(area), to: arg) ? 0 : fail(.badAddress)
    }

    func kvm_vcpu_ioctl_x86_set_xsave(_ arch: inout VCPUArch, _ arg: UInt) -> Int32 {
        let area = UnsafeMutableRawBufferPointer.allocate(byteCount: MemoryLayout<kvm_xsave>.size, alignment: 64)
        defer { area.deallocate() }
        guard let base = area.baseAddress, arg != 0, UserMemory.copyIn(base, from: arg, count: area.count) else {
            return fail(.badAddress)
        }
        if let errno = arch.setXSave(from: UnsafeRawBufferPointer(area)) { return fail(errno) }
        return 0
    }
}
