// KVM_GET_DIRTY_LOG on a slot nothing wrote, on a slot without logging,
// on no slot, and into a bad buffer.
#include "kvmtest.h"

int main(void) {
    int kvm = open_kvm();
    int vm = must("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0));
    char *memory = mmap(NULL, 0x20000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .flags = KVM_MEM_LOG_DIRTY_PAGES, .memory_size = 0x10000, .userspace_addr = (uint64_t)memory};
    CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region));
    region = (struct kvm_userspace_memory_region){
        .slot = 1, .guest_phys_addr = 0x10000, .memory_size = 0x10000, .userspace_addr = (uint64_t)memory + 0x10000};
    CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region));
    uint64_t bitmap[4];
    memset(bitmap, 0xAA, sizeof bitmap);
    struct kvm_dirty_log log = {.slot = 0, .dirty_bitmap = bitmap};
    CHECK(ioctl(vm, KVM_GET_DIRTY_LOG, &log));
    printf("bitmap %llx %llx\n", (unsigned long long)bitmap[0], (unsigned long long)bitmap[1]);
    log.slot = 1;
    CHECK(ioctl(vm, KVM_GET_DIRTY_LOG, &log));
    log.slot = 7;
    CHECK(ioctl(vm, KVM_GET_DIRTY_LOG, &log));
    log.slot = 1 << 16;
    CHECK(ioctl(vm, KVM_GET_DIRTY_LOG, &log));
    log.slot = 0;
    log.dirty_bitmap = (void *)8;
    CHECK(ioctl(vm, KVM_GET_DIRTY_LOG, &log));
    return 0;
}
