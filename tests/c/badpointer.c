// Requests whose pointer is bad get EFAULT, as from the kernel.
#include "kvmtest.h"

int main(void) {
    int kvm = open_kvm();
    int vm = must("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0));
    int vcpu = must("KVM_CREATE_VCPU", ioctl(vm, KVM_CREATE_VCPU, 0));
    void *readonly = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *unmapped = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(unmapped, 4096);
    CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, NULL));
    CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, (void *)1));
    CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, unmapped));
    CHECK(ioctl(vcpu, KVM_GET_REGS, NULL));
    CHECK(ioctl(vcpu, KVM_GET_REGS, unmapped));
    CHECK(ioctl(vcpu, KVM_GET_REGS, readonly));
    CHECK(ioctl(vcpu, KVM_SET_REGS, unmapped));
    CHECK(ioctl(vcpu, KVM_GET_SREGS, (char *)readonly + 4000));
    CHECK(ioctl(vcpu, KVM_SET_SREGS, (void *)0x800000000000ULL));
    CHECK(ioctl(vm, KVM_IRQFD, unmapped));
    CHECK(ioctl(vm, KVM_IOEVENTFD, unmapped));
    CHECK(ioctl(kvm, KVM_GET_SUPPORTED_CPUID, unmapped));
    CHECK(ioctl(kvm, KVM_GET_MSR_INDEX_LIST, readonly));
    // The header is readable, the entries after it are not.
    char *pages = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(pages + 4096, 4096);
    struct kvm_msrs *msrs = (struct kvm_msrs *)(pages + 4096 - sizeof(struct kvm_msrs));
    msrs->nmsrs = 1;
    CHECK(ioctl(vcpu, KVM_GET_MSRS, msrs));
    printf("still running\n");
    return 0;
}
