// System requests: API version, the vCPU mmap size, capability answers
// SoftKVM implements with the host's values, VM types, unknown requests.
#include "kvmtest.h"

int main(void) {
    int kvm = open_kvm();
    CHECK(ioctl(kvm, KVM_GET_API_VERSION, 0));
    CHECK(ioctl(kvm, KVM_GET_API_VERSION, 1));
    int size = CHECK(ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0));
    printf("mmap size is at least 3 pages: %d\n", size >= 3 * 4096);
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_DESTROY_MEMORY_REGION_WORKS));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_JOIN_MEMORY_REGIONS_WORKS));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_CHECK_EXTENSION_VM));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPU_ID));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IRQ_ROUTING));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IRQFD));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IOEVENTFD));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_COALESCED_MMIO));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_COALESCED_PIO));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_TSS_ADDR));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_EXT_CPUID));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, 100000));
    CHECK(ioctl(kvm, KVM_CREATE_VM, 12345));
    CHECK(ioctl(kvm, KVM_RUN, 0));
    CHECK(ioctl(kvm, KVM_CREATE_VM, 0) >= 0);
    int again = openat(AT_FDCWD, "/dev/kvm", O_RDWR);
    CHECK(ioctl(again, KVM_GET_API_VERSION, 0));
    CHECK(ioctl(again, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY));
    CHECK(fcntl(again, F_GETFD) & FD_CLOEXEC);
    CHECK(close(again));
    CHECK(ioctl(-1, KVM_GET_API_VERSION, 0));
    CHECK(close(kvm));
    CHECK(ioctl(kvm, KVM_GET_API_VERSION, 0));
    return 0;
}
