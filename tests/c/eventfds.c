// irqfd and ioeventfd registration and their errno.
#include "kvmtest.h"
#include <sys/eventfd.h>

int main(void) {
    int kvm = open_kvm();
    int vm = must("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0));
    int event = eventfd(0, EFD_CLOEXEC);
    int other = eventfd(0, EFD_CLOEXEC);
    struct kvm_ioeventfd io = {.addr = 0x1000, .len = 4, .fd = event, .flags = KVM_IOEVENTFD_FLAG_PIO};
    CHECK(ioctl(vm, KVM_IOEVENTFD, &io));
    CHECK(ioctl(vm, KVM_IOEVENTFD, &io));
    io.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    io.datamatch = 7;
    CHECK(ioctl(vm, KVM_IOEVENTFD, &io));
    io.len = 3;
    CHECK(ioctl(vm, KVM_IOEVENTFD, &io));
    io.len = 4;
    io.flags = 1 << 10;
    CHECK(ioctl(vm, KVM_IOEVENTFD, &io));
    io.flags = 0;
    io.addr = 0xd0000000;
    io.fd = open("/dev/null", O_RDONLY);
    CHECK(ioctl(vm, KVM_IOEVENTFD, &io));
    io.fd = 999;
    CHECK(ioctl(vm, KVM_IOEVENTFD, &io));
    io.fd = other;
    CHECK(ioctl(vm, KVM_IOEVENTFD, &io));
    io.flags = KVM_IOEVENTFD_FLAG_DEASSIGN;
    CHECK(ioctl(vm, KVM_IOEVENTFD, &io));
    CHECK(ioctl(vm, KVM_IOEVENTFD, &io));
    io = (struct kvm_ioeventfd){.addr = 0x1000, .len = 4, .fd = event, .flags = KVM_IOEVENTFD_FLAG_PIO | KVM_IOEVENTFD_FLAG_DEASSIGN};
    CHECK(ioctl(vm, KVM_IOEVENTFD, &io));

    CHECK(ioctl(vm, KVM_CREATE_IRQCHIP, 0));
    struct kvm_irqfd irq = {.fd = event, .gsi = 5};
    CHECK(ioctl(vm, KVM_IRQFD, &irq));
    CHECK(ioctl(vm, KVM_IRQFD, &irq));
    irq.fd = other;
    irq.gsi = 6;
    irq.flags = 1 << 5;
    CHECK(ioctl(vm, KVM_IRQFD, &irq));
    irq.flags = 0;
    irq.fd = 999;
    CHECK(ioctl(vm, KVM_IRQFD, &irq));
    irq.fd = event;
    irq.gsi = 5;
    irq.flags = KVM_IRQFD_FLAG_DEASSIGN;
    CHECK(ioctl(vm, KVM_IRQFD, &irq));
    CHECK(ioctl(vm, KVM_IRQFD, &irq));
    return 0;
}
