import CLinuxKVM
import KVM
import SystemPackage

// KVM_ENABLE_CAP on the VM and on the vCPU, after the kernel's
// kvm_vm_ioctl_enable_cap_generic (virt/kvm/kvm_main.c),
// kvm_vm_ioctl_enable_cap and kvm_vcpu_ioctl_enable_cap (arch/x86/kvm/x86.c).
// Only capabilities whose promise SoftKVM keeps can be enabled; every other
// one is EINVAL, as the kernel answers a capability it does not know, and
// KVM_CHECK_EXTENSION reports it as 0.

/// KVM_MSR_EXIT_REASON_VALID_MASK: the reasons KVM_CAP_X86_USER_SPACE_MSR takes.
let KVM_MSR_EXIT_REASON_VALID_MASK = UInt64(KVM_MSR_EXIT_REASON_INVAL | KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_FILTER)

/// kvm_get_allowed_disable_exits: the KVM_CAP_X86_DISABLE_EXITS bits SoftKVM
/// honours, none. The bits ask the hardware to stop intercepting an
/// instruction so that the guest runs it natively: MWAIT and CSTATE need
/// MONITOR/MWAIT, which the CPU does not have; HLT would have the vCPU halt
/// on its own, where SoftKVM's HLT must exit (KVM_EXIT_HLT) or block in
/// KVM_RUN; PAUSE never exits here, so there is nothing to turn off. A
/// kernel with none allowed (mitigate_smt_rsb) reports 0 too, and still
/// takes 0 before the first vCPU.
let softAllowedDisableExits: UInt64 = 0

extension SoftBackend {
    /// KVM_ENABLE_CAP on a VM. The generic capabilities (dirty rings,
    /// manual dirty-log protection, halt polling) are not SoftKVM's, so each
    /// request goes to the x86 part.
    func kvm_vm_ioctl_enable_cap_generic(_ vm: SoftVM, _ arg: UInt) -> Int32 {
        guard let cap = UserMemory.read(kvm_enable_cap.self, from: arg) else { return fail(.badAddress) }
        return kvm_vm_ioctl_enable_cap(vm, cap)
    }

    /// The x86 VM capabilities: flags must be 0; each capability checks its arguments.
    func kvm_vm_ioctl_enable_cap(_ vm: SoftVM, _ cap: kvm_enable_cap) -> Int32 {
        if cap.flags != 0 { return fail(.invalidArgument) }
        switch cap.cap {
        case Capability.x86UserSpaceMSR.rawValue:
            // May change at any time, vCPUs or not: each guest MSR access reads it.
            if cap.args.0 & ~KVM_MSR_EXIT_REASON_VALID_MASK != 0 { return fail(.invalidArgument) }
            vm.arch.withLock { $0.userSpaceMSRMask = UInt32(cap.args.0) }
            return 0
        case Capability.x86DisableExits.rawValue:
            if cap.args.0 & ~softAllowedDisableExits != 0 { return fail(.invalidArgument) }
            if vm.vcpus.withLock({ $0.created }) > 0 { return fail(.invalidArgument) }
            return 0
        default:
            return fail(.invalidArgument)
        }
    }

    /// KVM_ENABLE_CAP on a vCPU (kvm_vcpu_ioctl_enable_cap): flags must be 0.
    func kvm_vcpu_ioctl_enable_cap(_ arch: inout VCPUArch, _ arg: UInt) -> Int32 {
        guard let cap = UserMemory.read(kvm_enable_cap.self, from: arg) else { return fail(.badAddress) }
        if cap.flags != 0 { return fail(.invalidArgument) }
        switch cap.cap {
        case Capability.enforcePvFeatureCPUID.rawValue:
            // Any non-zero argument turns it on, as the kernel's bool does.
            arch.pvCPUIDEnforced = cap.args.0 != 0
            return 0
        default:
            return fail(.invalidArgument)
        }
    }
}
