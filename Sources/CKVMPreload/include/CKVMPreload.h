#ifndef CKVMPRELOAD_H
#define CKVMPRELOAD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// The C part of the preload library interposes the libc calls KVM programs
// make on KVM descriptors (see interpose.c). These are the Swift entries it
// forwards to, defined with @_cdecl in the KVMPreload module. Each returns a
// kernel-style result: a non-negative value, or a negated errno.

/// open("/dev/kvm"): a new system descriptor.
int32_t swiftkvm_preload_open(int32_t flags);
/// ioctl on a descriptor SoftKVM handed out.
int32_t swiftkvm_preload_ioctl(int32_t fd, unsigned long request, uintptr_t argument);
/// mmap of a descriptor SoftKVM handed out; the address, or NULL with *error set.
void *swiftkvm_preload_mmap(void *address, size_t length, int32_t prot, int32_t flags, int32_t fd, off_t offset, int32_t *error);
/// close of a descriptor SoftKVM handed out.
int32_t swiftkvm_preload_close(int32_t fd);
/// `copy` now refers to the object of `original` (dup, dup2, dup3, F_DUPFD).
void swiftkvm_preload_duplicate(int32_t original, int32_t copy);
/// `fd` was closed implicitly (the target of dup2): forget it without closing.
void swiftkvm_preload_forget(int32_t fd);
/// Whether SoftKVM handed out `fd` (for descriptors beyond the C table).
int32_t swiftkvm_preload_owns(int32_t fd);

#endif
