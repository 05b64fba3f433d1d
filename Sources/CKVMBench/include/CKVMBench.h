#ifndef CKVMBENCH_H
#define CKVMBENCH_H

#include <stdint.h>

/// The port-I/O benchmark written in C on raw ioctls: the baseline the Swift
/// API is measured against. `vcpu_fd` is a vCPU whose guest does `out` to
/// `port` in a loop; `run` is its mapped kvm_run page. Runs KVM_RUN until
/// `exits` port-I/O exits to `port` have been handled, checking each as the
/// Swift loop does. Returns the exits handled, or -errno on a failed
/// KVM_RUN, or -1000 - exit_reason on an unexpected exit.
int64_t swiftkvm_bench_port_io_c(int vcpu_fd, void *run, uint16_t port, int64_t exits);

#endif
