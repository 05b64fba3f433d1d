import CLinuxKVM
import KVM
import SystemPackage

// KVM_GET_XSAVE2 and KVM_CAP_XSAVE2, after the kernel's
// kvm_vcpu_ioctl_x86_get_xsave2 and fpu_copy_guest_fpstate_to_uabi: the
// vCPU's x87 and SSE state in the standard (uncompacted) XSAVE format,
// components the vCPU holds in their initial state shown as that state
// with their XSTATE_BV bit clear, and the rest of the buffer zero.

/// The bytes KVM_GET_XSAVE2 writes (the kernel's guest_fpu.uabi_size) and
/// KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) reports: the standard XSAVE size of
/// SoftKVM's features (x87 and SSE, 576 bytes), but never less than
/// `struct kvm_xsave`, as the kernel rounds it up.
let softXSave2Size = MemoryLayout<kvm_xsave>.size

/// MXCSR's reset value, and the MXCSR bits the CPU has (FXSAVE's MXCSR_MASK).
let MXCSR_DEFAULT: UInt32 = 0x1F80
let softMXCSRMask: UInt32 = 0xFFFF

extension SoftBackend {
    /// KVM_GET_XSAVE2: copies `softXSave2Size` bytes to user memory.
    func kvm_vcpu_ioctl_x86_get_xsave2(_ arch: VCPUArch, _ arg: UInt) -> Int32 {
        let area = Self.xsaveImage(arch, size: softXSave2Size)
        return area.withUnsafeBytes { UserMemory.copyOut($0, to: arg) } ? 0 : fail(.badAddress)
    }

    /// The vCPU's XSAVE image (__copy_xstate_to_uabi_buf in XSTATE_COPY_XSAVE
    /// mode): the legacy region, then the header at 512 with XSTATE_BV and a
    /// zero XCOMP_BV. Only FP and SSE are saved: the guest's XCR0 can hold no
    /// other component in SoftKVM. sw_reserved (bytes 464-511) is left zero.
    ///
    /// The state comes from the vCPU's `fpu` (KVM_SET_FPU's x87 and XMM
    /// registers); MXCSR is at its reset value, as the CPU has no SSE yet.
    /// Where the CPU keeps its own FPU state, KVM_GET_XSAVE and this take it
    /// from the same place.
    static func xsaveImage(_ arch: VCPUArch, size: Int) -> [UInt8] {
        var image = [UInt8](repeating: 0, count: max(size, 576))
        let fpu = arch.fpu
        let fpr = withUnsafeBytes(of: fpu.fpr) { Array($0) }
        let xmm = withUnsafeBytes(of: fpu.xmm) { Array($0) }
        let mxcsr = MXCSR_DEFAULT
        // XINUSE: a component is in use once it differs from its initial state.
        let fpInUse = fpu.fcw != 0x37F || fpu.fsw != 0 || fpu.ftwx != 0 || fpu.last_opcode != 0
            || fpu.last_ip != 0 || fpu.last_dp != 0 || fpr.contains { $0 != 0 }
        let sseInUse = mxcsr != MXCSR_DEFAULT || xmm.contains { $0 != 0 }
        let supported = arch.guestSupportedXCR0 | XFEATURE_MASK_FP | XFEATURE_MASK_SSE
        let xstateBV = ((fpInUse ? XFEATURE_MASK_FP : 0) | (sseInUse ? XFEATURE_MASK_SSE : 0)) & supported

        func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { bytes in
                for (i, byte) in bytes.enumerated() { image[offset + i] = byte }
            }
        }
        func copy(_ bytes: [UInt8], at offset: Int) {
            image.replaceSubrange(offset..<offset + bytes.count, with: bytes)
        }
        // A component not in use reads as its initial state (copy_feature with init_fpstate).
        if xstateBV & XFEATURE_MASK_FP != 0 {
            store(fpu.fcw, at: 0)
            store(fpu.fsw, at: 2)
            store(fpu.ftwx, at: 4)
            store(fpu.last_opcode, at: 6)
            store(fpu.last_ip, at: 8)
            store(fpu.last_dp, at: 16)
            copy(fpr, at: 32)
        } else {
            store(UInt16(0x37F), at: 0)
        }
        // MXCSR and its mask are copied whatever XSTATE_BV says.
        store(mxcsr, at: 24)
        store(softMXCSRMask, at: 28)
        if xstateBV & XFEATURE_MASK_SSE != 0 { copy(xmm, at: 160) }
        store(xstateBV, at: 512)
        return image
    }
}
