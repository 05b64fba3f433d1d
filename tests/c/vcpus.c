// vCPU creation limits, the run mapping, and state at reset.
#include "kvmtest.h"

int main(void) {
    int kvm = open_kvm();
    int vm = must("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0));
    int size = must("KVM_GET_VCPU_MMAP_SIZE", ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0));
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    CHECK(vcpu >= 0);
    CHECK(ioctl(vm, KVM_CREATE_VCPU, 0) >= 0);
    CHECK(ioctl(vm, KVM_CREATE_VCPU, 4096));
    CHECK(ioctl(vm, KVM_CREATE_VCPU, -1));
    int second = CHECK(ioctl(vm, KVM_CREATE_VCPU, 4095) >= 0);
    (void)second;
    struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    printf("mmap of the vCPU: %s\n", run == MAP_FAILED ? strerrorname_np(errno) : "ok");
    printf("mmap of the VM: %s\n", mmap(NULL, 4096, PROT_READ, MAP_SHARED, vm, 0) == MAP_FAILED ? strerrorname_np(errno) : "ok");
    printf("mmap of the system: %s\n", mmap(NULL, 4096, PROT_READ, MAP_SHARED, kvm, 0) == MAP_FAILED ? strerrorname_np(errno) : "ok");
    struct kvm_regs regs;
    CHECK(ioctl(vcpu, KVM_GET_REGS, &regs));
    printf("rip %llx rflags %llx\n", regs.rip, regs.rflags);
    struct kvm_sregs sregs;
    CHECK(ioctl(vcpu, KVM_GET_SREGS, &sregs));
    printf("cs %x base %llx cr0 %llx\n", sregs.cs.selector, sregs.cs.base, sregs.cr0);
    regs.rip = 0x1234;
    regs.rax = 0x55;
    CHECK(ioctl(vcpu, KVM_SET_REGS, &regs));
    struct kvm_regs again;
    CHECK(ioctl(vcpu, KVM_GET_REGS, &again));
    printf("rip %llx rax %llx\n", again.rip, again.rax);
    run->immediate_exit = 1;
    CHECK(ioctl(vcpu, KVM_RUN, 0));
    run->immediate_exit = 0;
    CHECK(ioctl(vcpu, KVM_RUN, 1));
    // A duplicated vCPU descriptor is the same vCPU; closing the original keeps it.
    int copy = dup(vcpu);
    CHECK(copy >= 0);
    int high = fcntl(vcpu, F_DUPFD_CLOEXEC, 100);
    printf("F_DUPFD_CLOEXEC at 100 or above: %d\n", high >= 100);
    CHECK(close(vcpu));
    CHECK(ioctl(copy, KVM_GET_REGS, &again));
    printf("rip %llx\n", again.rip);
    CHECK(ioctl(high, KVM_GET_REGS, &again));
    CHECK(dup2(high, copy) == copy);
    CHECK(ioctl(copy, KVM_GET_REGS, &again));
    CHECK(close(high));
    CHECK(close(copy));
    CHECK(ioctl(copy, KVM_GET_REGS, &again));
    CHECK(ioctl(vcpu, KVM_GET_REGS, &again));
    return 0;
}
