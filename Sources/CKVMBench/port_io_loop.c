#include "CKVMBench.h"

#include <errno.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>

int64_t swiftkvm_bench_port_io_c(int vcpu_fd, void *run_page, uint16_t port, int64_t exits) {
    struct kvm_run *run = run_page;
    uint64_t checksum = 0;
    int64_t handled = 0;
    while (handled < exits) {
        if (ioctl(vcpu_fd, KVM_RUN, 0) < 0) return -errno;
        if (run->exit_reason != KVM_EXIT_IO) return -1000 - (int64_t)run->exit_reason;
        if (run->io.port != port || run->io.direction != KVM_EXIT_IO_OUT) return -2000;
        checksum += *((uint8_t *)run + run->io.data_offset);
        handled++;
    }
    /* Keep the data read alive without changing the result. */
    __asm__ volatile("" : : "r"(checksum));
    return handled;
}
