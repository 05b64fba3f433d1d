// The coalesced MMIO ring through the vCPU mapping: at page
// KVM_COALESCED_MMIO_PAGE_OFFSET of every vCPU's mapping, one page shared by
// the VM's vCPUs, and mappable alone at that offset.
#include "kvmtest.h"

int main(void) {
    int kvm = open_kvm();
    int vm = must("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0));
    int offset = CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_COALESCED_MMIO));
    int size = must("KVM_GET_VCPU_MMAP_SIZE", ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0));
    struct kvm_coalesced_mmio_zone zone = {.addr = 0xd0000000, .size = 0x1000};
    CHECK(ioctl(vm, KVM_REGISTER_COALESCED_MMIO, &zone));
    int vcpu0 = must("KVM_CREATE_VCPU", ioctl(vm, KVM_CREATE_VCPU, 0));
    int vcpu1 = must("KVM_CREATE_VCPU", ioctl(vm, KVM_CREATE_VCPU, 1));
    char *run0 = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu0, 0);
    char *run1 = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu1, 0);
    if (run0 == MAP_FAILED || run1 == MAP_FAILED) return 2;
    struct kvm_coalesced_mmio_ring *ring0 = (void *)(run0 + offset * 4096);
    struct kvm_coalesced_mmio_ring *ring1 = (void *)(run1 + offset * 4096);
    printf("ring first %u last %u\n", ring0->first, ring0->last);
    ring0->first = 0;
    ((struct kvm_run *)run0)->immediate_exit = 7;
    printf("run pages are the vCPU's own: %d\n", ((struct kvm_run *)run1)->immediate_exit == 0);
    // User space owns `first`: a write through one vCPU's mapping shows in the other's.
    ring0->first = 3;
    printf("ring is shared: %u\n", ring1->first);
    struct kvm_coalesced_mmio_ring *alone = mmap(NULL, 4096, PROT_READ, MAP_SHARED, vcpu1, offset * 4096);
    printf("ring mapped alone: %u\n", alone == MAP_FAILED ? 99u : alone->first);
    ring0->first = 0;
    CHECK(munmap(run1, size));
    CHECK(ioctl(vm, KVM_UNREGISTER_COALESCED_MMIO, &zone));
    return 0;
}
