#ifndef CLINUXKVM_H
#define CLINUXKVM_H

#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include "kvm_requests.h"

/// Offsets into `struct kvm_run` of fields inside its anonymous union,
/// which Swift key paths cannot reach.
static inline size_t swiftkvm_run_mmio_data_offset(void) { return offsetof(struct kvm_run, mmio.data); }
static inline size_t swiftkvm_run_immediate_exit_offset(void) { return offsetof(struct kvm_run, immediate_exit); }

/// Atomically replaces `*word` with `value` and returns what it held: how
/// SoftKVM takes a dirty-log word while a vCPU thread may be setting bits in
/// it (the kernel's xchg in kvm_get_dirty_log_protect). Swift's atomics
/// cannot be placed on memory it does not own.
static inline uint64_t swiftkvm_atomic_exchange_u64(uint64_t *word, uint64_t value) {
    return __atomic_exchange_n(word, value, __ATOMIC_SEQ_CST);
}

/// ioctl(2) with a pointer argument. Swift cannot call the variadic libc
/// ioctl, so the C target gives it fixed arities. Returns -1 and sets errno
/// on failure, like the libc call.
int swiftkvm_ioctl_pointer(int fd, unsigned long request, void *argument);

/// ioctl(2) with an integer argument (KVM_CREATE_VCPU's id, KVM_CHECK_EXTENSION's capability...).
int swiftkvm_ioctl_value(int fd, unsigned long request, unsigned long argument);

/// Installs a handler that does nothing for `signal`, without SA_RESTART, so
/// that the signal interrupts a blocking KVM_RUN with EINTR instead of killing
/// the process. Returns 0, or -1 with errno set.
int swiftkvm_install_kick_handler(int signal);

/// memfd_create(2) with MFD_CLOEXEC: an anonymous file, for the memory
/// behind a SoftKVM vCPU descriptor. Returns the descriptor, or -1 with errno set.
int swiftkvm_memfd_create(const char *name);

/// Waits until `fd` is readable, for at most `nanoseconds` (ppoll(2), whose
/// timeout is finer than poll's millisecond; a signal ends it early).
/// Returns ppoll's result.
int swiftkvm_wait_readable(int fd, uint64_t nanoseconds);

/// The signal number SwiftKVM uses to kick a vCPU thread out of KVM_RUN.
int swiftkvm_kick_signal(void);

/// Copies `count` bytes from this process's memory at `address`, checked by
/// the kernel page by page (process_vm_readv on the own pid), so that a bad
/// address fails instead of faulting. Returns 0, or -1 (EFAULT) if not all was read.
int swiftkvm_copy_from_user(void *destination, uintptr_t address, size_t count);

/// The same in the other direction (process_vm_writev): a read-only or
/// unmapped destination fails. Returns 0, or -1 if not all was written.
int swiftkvm_copy_to_user(uintptr_t address, const void *source, size_t count);

#endif
