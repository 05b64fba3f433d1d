// KVM_CREATE_DEVICE: x86's kvm-vfio device, its descriptor (real, pollable,
// closed on exec, duplicable) and its attribute rules and errno.
#include "kvmtest.h"
#include <poll.h>

static int set_attr(int device, uint32_t group, uint64_t attr, int32_t *value) {
    struct kvm_device_attr a = {.group = group, .attr = attr, .addr = (uint64_t)(uintptr_t)value};
    return ioctl(device, KVM_SET_DEVICE_ATTR, &a);
}

static int has_attr(int device, uint32_t group, uint64_t attr) {
    struct kvm_device_attr a = {.group = group, .attr = attr};
    return ioctl(device, KVM_HAS_DEVICE_ATTR, &a);
}

int main(void) {
    int kvm = open_kvm();
    int vm = must("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_DEVICE_CTRL));
    for (uint32_t type = 0; type < 8; type++) {
        struct kvm_create_device test = {.type = type, .flags = KVM_CREATE_DEVICE_TEST};
        printf("type %u: ", type);
        CHECK(ioctl(vm, KVM_CREATE_DEVICE, &test));
    }
    struct kvm_create_device create = {.type = KVM_DEV_TYPE_VFIO};
    CHECK(ioctl(vm, KVM_CREATE_DEVICE, &create));
    int device = (int)create.fd;
    CHECK(ioctl(vm, KVM_CREATE_DEVICE, &create));
    CHECK(ioctl(vm, KVM_CREATE_DEVICE, (void *)8));
    printf("close-on-exec: %d\n", (fcntl(device, F_GETFD) & FD_CLOEXEC) != 0);

    CHECK(has_attr(device, KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_ADD));
    CHECK(has_attr(device, KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_DEL));
    CHECK(has_attr(device, KVM_DEV_VFIO_GROUP, 7));
    CHECK(has_attr(device, 9, KVM_DEV_VFIO_GROUP_ADD));
    int32_t not_vfio = open("/dev/null", O_RDONLY);
    int32_t closed = 999;
    CHECK(set_attr(device, KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_ADD, &not_vfio));
    CHECK(set_attr(device, KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_ADD, &closed));
    CHECK(set_attr(device, KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_DEL, &not_vfio));
    CHECK(set_attr(device, KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_ADD, (int32_t *)8));
    CHECK(set_attr(device, 9, KVM_DEV_VFIO_GROUP_ADD, &not_vfio));
    struct kvm_device_attr get = {.group = KVM_DEV_VFIO_GROUP, .attr = KVM_DEV_VFIO_GROUP_ADD};
    CHECK(ioctl(device, KVM_GET_DEVICE_ATTR, &get));
    CHECK(ioctl(device, KVM_SET_DEVICE_ATTR, (void *)8));
    CHECK(ioctl(device, KVM_CREATE_VCPU, 0));

    // A duplicate keeps the device; closing both releases it, so a new one can be made.
    int copy = dup(device);
    CHECK(has_attr(copy, KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_ADD));
    CHECK(close(device));
    CHECK(ioctl(vm, KVM_CREATE_DEVICE, &create));
    CHECK(close(copy));
    CHECK(ioctl(vm, KVM_CREATE_DEVICE, &create) == 0 ? 0 : -1);
    CHECK(has_attr((int)create.fd, KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_ADD));
    CHECK(close((int)create.fd));
    // A closed device descriptor is an ordinary bad descriptor again.
    CHECK(has_attr((int)create.fd, KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_ADD));
    return 0;
}
