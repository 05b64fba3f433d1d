// KVM_SET_GUEST_DEBUG with each documented control bit, and a bad pointer.
// (Undefined bits are left out: this host's kvm_pvm accepts them where
// upstream KVM answers EINVAL, so no answer would be the kernel's.)
#include "kvmtest.h"

static int set_debug(int vcpu, uint32_t control) {
    struct kvm_guest_debug debug = {.control = control};
    return ioctl(vcpu, KVM_SET_GUEST_DEBUG, &debug);
}

int main(void) {
    int kvm = open_kvm();
    int vm = must("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0));
    int vcpu = must("KVM_CREATE_VCPU", ioctl(vm, KVM_CREATE_VCPU, 0));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_GUEST_DEBUG));
    CHECK(set_debug(vcpu, 0));
    CHECK(set_debug(vcpu, KVM_GUESTDBG_ENABLE));
    CHECK(set_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP));
    CHECK(set_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP));
    CHECK(set_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP));
    CHECK(set_debug(vcpu, 0));
    CHECK(ioctl(vcpu, KVM_SET_GUEST_DEBUG, (void *)8));
    return 0;
}
