import CLinuxKVM

// KVM_CAP_XSAVE2's size. KVM_GET_XSAVE2 itself is KVM_GET_XSAVE's area
// (FPU.swift): with only x87 and SSE the state fits in struct kvm_xsave.

/// The bytes KVM_GET_XSAVE2 writes (the kernel's guest_fpu.uabi_size) and
/// KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) reports: the standard XSAVE size of
/// SoftKVM's features (x87 and SSE, 576 bytes), but never less than
/// `struct kvm_xsave`, as the kernel rounds it up.
let softXSave2Size = MemoryLayout<kvm_xsave>.size
