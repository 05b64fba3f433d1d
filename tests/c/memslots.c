// Memory slots: the rules of KVM_SET_USER_MEMORY_REGION and their errno.
#include "kvmtest.h"

static int set_region(int vm, uint32_t slot, uint32_t flags, uint64_t guest, uint64_t size, void *host) {
    struct kvm_userspace_memory_region region = {
        .slot = slot, .flags = flags, .guest_phys_addr = guest, .memory_size = size, .userspace_addr = (uint64_t)host};
    return ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region);
}

int main(void) {
    int kvm = open_kvm();
    int vm = must("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0));
    char *memory = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(set_region(vm, 0, 0, 0, 0x10000, memory));
    CHECK(set_region(vm, 0, 0, 0, 0x10000, memory));
    CHECK(set_region(vm, 1, 0, 0x8000, 0x10000, memory + 0x10000));
    CHECK(set_region(vm, 1, 0, 0x10000, 0x1001, memory + 0x10000));
    CHECK(set_region(vm, 1, 0, 0x10800, 0x1000, memory + 0x10000));
    CHECK(set_region(vm, 1, 0, 0x10000, 0x1000, memory + 0x10800));
    CHECK(set_region(vm, 1, 0x80, 0x10000, 0x1000, memory + 0x10000));
    CHECK(set_region(vm, 32764, 0, 0x100000, 0x1000, memory + 0x20000));
    CHECK(set_region(vm, 1 << 16, 0, 0x100000, 0x1000, memory + 0x20000));
    CHECK(set_region(vm, 5, 0, 0x100000, 0, memory));
    CHECK(set_region(vm, 1, KVM_MEM_LOG_DIRTY_PAGES, 0x10000, 0x10000, memory + 0x10000));
    CHECK(set_region(vm, 1, 0, 0x10000, 0x10000, memory + 0x10000));
    CHECK(set_region(vm, 1, 0, 0x40000, 0x10000, memory + 0x10000));
    CHECK(set_region(vm, 1, 0, 0x40000, 0x20000, memory + 0x10000));
    CHECK(set_region(vm, 1, 0, 0x40000, 0x10000, memory + 0x20000));
    CHECK(set_region(vm, 1, KVM_MEM_READONLY, 0x40000, 0x10000, memory + 0x10000));
    CHECK(set_region(vm, 2, KVM_MEM_READONLY, 0x80000, 0x10000, memory + 0x30000));
    CHECK(set_region(vm, 1, 0, 0x40000, 0, memory + 0x10000));
    CHECK(set_region(vm, 1, 0, 0x40000, 0, memory + 0x10000));
    CHECK(set_region(vm, 3, 0, 0xFFFFFFFFFFFFF000ULL, 0x2000, memory));
    CHECK(set_region(vm, 3, 0, 0x200000, 0x1000, (void *)0x800000000000ULL));
    CHECK(set_region(vm, 3, 0, 0x200000, 0x1000, memory));
    return 0;
}
