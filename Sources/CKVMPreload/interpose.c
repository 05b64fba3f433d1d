// The preload library's C part: it interposes the libc calls a KVM program
// makes on KVM descriptors and hands those to SoftKVM (through the Swift
// entries of CKVMPreload.h); every other call goes to the next definition
// (libc) found with dlsym(RTLD_NEXT).
//
// Two rules keep it safe and cheap:
// - A thread-local flag is set while a thread is inside SoftKVM, and every
//   wrapper passes straight through while it is set: SoftKVM and the Swift
//   runtime themselves call open, mmap, close... and must reach libc, not
//   come back here. The real functions are resolved lazily, on first use,
//   because this library's wrappers can run before its constructors (other
//   libraries' constructors and the Swift runtime's start-up call them).
// - Until /dev/kvm is opened, a wrapper costs one load of a global flag;
//   after that, one bit test in a descriptor table. Only open compares its
//   path, and only its first bytes.

#define _GNU_SOURCE
#undef _FORTIFY_SOURCE
#include "CKVMPreload.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);

static const char kvm_path[] = "/dev/kvm";

// Nonzero inside a call into SoftKVM on this thread.
static __thread int inside_softkvm;

// Set once /dev/kvm was opened: before that no descriptor is SoftKVM's.
static atomic_int kvm_opened;

// One bit per descriptor number handed out by SoftKVM. The numbers are
// real descriptors of this process (eventfds, memfds), so they are small;
// beyond the table SoftKVM itself is asked.
#define TABLE_BITS (1 << 20)
static atomic_ulong kvm_fds[TABLE_BITS / (8 * sizeof(unsigned long))];

#define WORD(fd) ((unsigned)(fd) / (8 * sizeof(unsigned long)))
#define BIT(fd) (1UL << ((unsigned)(fd) % (8 * sizeof(unsigned long))))

static int is_kvm_fd(int fd) {
    if (!atomic_load_explicit(&kvm_opened, memory_order_acquire) || inside_softkvm || fd < 0) return 0;
    if (fd < TABLE_BITS) return (atomic_load_explicit(&kvm_fds[WORD(fd)], memory_order_relaxed) & BIT(fd)) != 0;
    inside_softkvm = 1;
    int owned = swiftkvm_preload_owns(fd);
    inside_softkvm = 0;
    return owned;
}

static void mark_kvm_fd(int fd, int owned) {
    if (fd < 0 || fd >= TABLE_BITS) return;
    if (owned)
        atomic_fetch_or_explicit(&kvm_fds[WORD(fd)], BIT(fd), memory_order_relaxed);
    else
        atomic_fetch_and_explicit(&kvm_fds[WORD(fd)], ~BIT(fd), memory_order_relaxed);
}

// The next definition of `name`, resolved on first use. Two threads may race
// to resolve it; both store the same address.
#define REAL(name)                                                                  \
    static __typeof__(name) *real_##name;                                           \
    static __typeof__(name) *next_##name(void) {                                    \
        __typeof__(name) *f = __atomic_load_n(&real_##name, __ATOMIC_RELAXED);      \
        if (!f) {                                                                   \
            f = (__typeof__(name) *)dlsym(RTLD_NEXT, #name);                        \
            __atomic_store_n(&real_##name, f, __ATOMIC_RELAXED);                    \
        }                                                                           \
        return f;                                                                   \
    }

REAL(open)
REAL(open64)
REAL(openat)
REAL(openat64)
REAL(__open_2)
REAL(__open64_2)
REAL(ioctl)
REAL(mmap)
REAL(mmap64)
REAL(close)
REAL(dup)
REAL(dup2)
REAL(dup3)
REAL(fcntl)
REAL(fcntl64)

// A kernel-style result as libc returns it.
static int set_errno(int result) {
    if (result < 0) {
        errno = -result;
        return -1;
    }
    return result;
}

static int is_kvm_path(const char *path) {
    return path && path[0] == '/' && path[1] == 'd' && !inside_softkvm && strcmp(path, kvm_path) == 0;
}

// open("/dev/kvm"): SoftKVM's system object. The kernel's descriptor is
// close-on-exec only when asked; SoftKVM's always starts so.
static int open_kvm(int flags) {
    inside_softkvm = 1;
    int fd = swiftkvm_preload_open(flags);
    inside_softkvm = 0;
    if (fd < 0) return set_errno(fd);
    if (!(flags & O_CLOEXEC)) next_fcntl()(fd, F_SETFD, 0);
    mark_kvm_fd(fd, 1);
    atomic_store_explicit(&kvm_opened, 1, memory_order_release);
    return fd;
}

// The mode argument is read only when the flags say it was passed, as libc does.
#define MODE_ARG(flags, last)                                       \
    mode_t mode = 0;                                                \
    if ((flags) & O_CREAT || ((flags) & O_TMPFILE) == O_TMPFILE) { \
        va_list ap;                                                 \
        va_start(ap, last);                                         \
        mode = va_arg(ap, mode_t);                                  \
        va_end(ap);                                                 \
    }

int open(const char *path, int flags, ...) {
    MODE_ARG(flags, flags)
    if (is_kvm_path(path)) return open_kvm(flags);
    return next_open()(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    MODE_ARG(flags, flags)
    if (is_kvm_path(path)) return open_kvm(flags);
    return next_open64()(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    MODE_ARG(flags, flags)
    // An absolute path ignores dirfd.
    if (is_kvm_path(path)) return open_kvm(flags);
    return next_openat()(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    MODE_ARG(flags, flags)
    if (is_kvm_path(path)) return open_kvm(flags);
    return next_openat64()(dirfd, path, flags, mode);
}

// The _FORTIFY_SOURCE entries of open.
int __open_2(const char *path, int flags) {
    if (is_kvm_path(path)) return open_kvm(flags);
    return next___open_2()(path, flags);
}

int __open64_2(const char *path, int flags) {
    if (is_kvm_path(path)) return open_kvm(flags);
    return next___open64_2()(path, flags);
}

int ioctl(int fd, unsigned long request, ...) {
    va_list ap;
    va_start(ap, request);
    // Every ioctl argument is one word: an integer or a pointer.
    uintptr_t argument = va_arg(ap, uintptr_t);
    va_end(ap);
    if (!is_kvm_fd(fd)) return next_ioctl()(fd, request, argument);
    switch (request) {
    // The kernel's do_vfs_ioctl answers these for any file before its own ioctl.
    case FIOCLEX:
    case FIONCLEX:
    case FIONBIO:
    case FIOASYNC:
        return next_ioctl()(fd, request, argument);
    }
    inside_softkvm = 1;
    int result = swiftkvm_preload_ioctl(fd, request, argument);
    inside_softkvm = 0;
    if (result >= 0 && (request == KVM_CREATE_VM || request == KVM_CREATE_VCPU)) mark_kvm_fd(result, 1);
    // A device's descriptor comes back in the struct, not as the result.
    // SoftKVM wrote it there, so the read cannot fault.
    if (result == 0 && request == KVM_CREATE_DEVICE) {
        const struct kvm_create_device *created = (const struct kvm_create_device *)argument;
        if (!(created->flags & KVM_CREATE_DEVICE_TEST)) mark_kvm_fd((int)created->fd, 1);
    }
    return set_errno(result);
}

static void *mmap_kvm(void *address, size_t length, int prot, int flags, int fd, off_t offset) {
    int error = 0;
    inside_softkvm = 1;
    void *result = swiftkvm_preload_mmap(address, length, prot, flags, fd, offset, &error);
    inside_softkvm = 0;
    if (!result) {
        errno = error;
        return MAP_FAILED;
    }
    return result;
}

void *mmap(void *address, size_t length, int prot, int flags, int fd, off_t offset) {
    if (flags & MAP_ANONYMOUS || !is_kvm_fd(fd)) return next_mmap()(address, length, prot, flags, fd, offset);
    return mmap_kvm(address, length, prot, flags, fd, offset);
}

void *mmap64(void *address, size_t length, int prot, int flags, int fd, off64_t offset) {
    if (flags & MAP_ANONYMOUS || !is_kvm_fd(fd)) return next_mmap64()(address, length, prot, flags, fd, offset);
    return mmap_kvm(address, length, prot, flags, fd, offset);
}

int close(int fd) {
    if (!is_kvm_fd(fd)) return next_close()(fd);
    mark_kvm_fd(fd, 0);
    inside_softkvm = 1;
    int result = swiftkvm_preload_close(fd);
    inside_softkvm = 0;
    return set_errno(result);
}

// After a successful duplication `copy` refers to what `original` referred
// to; whatever `copy` referred to before (dup2 onto an open descriptor) was closed.
static void duplicated(int original, int copy, int original_is_kvm, int copy_was_kvm) {
    inside_softkvm = 1;
    if (copy_was_kvm) swiftkvm_preload_forget(copy);
    if (original_is_kvm) swiftkvm_preload_duplicate(original, copy);
    inside_softkvm = 0;
    mark_kvm_fd(copy, original_is_kvm);
}

int dup(int fd) {
    if (!is_kvm_fd(fd)) return next_dup()(fd);
    int copy = next_dup()(fd);
    if (copy >= 0) duplicated(fd, copy, 1, 0);
    return copy;
}

int dup2(int fd, int target) {
    int original_is_kvm = is_kvm_fd(fd), target_was_kvm = is_kvm_fd(target);
    int copy = next_dup2()(fd, target);
    if (copy >= 0 && fd != target && (original_is_kvm || target_was_kvm))
        duplicated(fd, copy, original_is_kvm, target_was_kvm);
    return copy;
}

int dup3(int fd, int target, int flags) {
    int original_is_kvm = is_kvm_fd(fd), target_was_kvm = is_kvm_fd(target);
    int copy = next_dup3()(fd, target, flags);
    if (copy >= 0 && (original_is_kvm || target_was_kvm)) duplicated(fd, copy, original_is_kvm, target_was_kvm);
    return copy;
}

static int fcntl_common(int (*next)(int, int, ...), int fd, int cmd, void *argument) {
    if ((cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC) || !is_kvm_fd(fd)) return next(fd, cmd, argument);
    int copy = next(fd, cmd, argument);
    if (copy >= 0) duplicated(fd, copy, 1, 0);
    return copy;
}

// fcntl's third argument is one word whatever the command; libc reads it so too.
int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *argument = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(next_fcntl(), fd, cmd, argument);
}

int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *argument = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(next_fcntl64(), fd, cmd, argument);
}
