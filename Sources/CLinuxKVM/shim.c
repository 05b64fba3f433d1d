#define _GNU_SOURCE
#include "CLinuxKVM.h"

#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

int swiftkvm_ioctl_pointer(int fd, unsigned long request, void *argument) {
    return ioctl(fd, request, argument);
}

int swiftkvm_ioctl_value(int fd, unsigned long request, unsigned long argument) {
    return ioctl(fd, request, argument);
}

static void swiftkvm_ignore_kick(int signal) { (void)signal; }

int swiftkvm_install_kick_handler(int signal) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = swiftkvm_ignore_kick;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0; /* no SA_RESTART: KVM_RUN must return EINTR */
    return sigaction(signal, &action, NULL);
}

int swiftkvm_kick_signal(void) { return SIGRTMIN + 2; }

int swiftkvm_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

#include <sys/uio.h>
#include <unistd.h>

int swiftkvm_copy_from_user(void *destination, uintptr_t address, size_t count) {
    struct iovec local = {destination, count}, remote = {(void *)address, count};
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)count ? 0 : -1;
}

int swiftkvm_copy_to_user(uintptr_t address, const void *source, size_t count) {
    struct iovec local = {(void *)source, count}, remote = {(void *)address, count};
    return process_vm_writev(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)count ? 0 : -1;
}

int swiftkvm_wait_readable(int fd, uint64_t nanoseconds) {
    struct pollfd entry = { .fd = fd, .events = POLLIN, .revents = 0 };
    struct timespec timeout = { .tv_sec = (time_t)(nanoseconds / 1000000000u),
                                .tv_nsec = (long)(nanoseconds % 1000000000u) };
    return ppoll(&entry, 1, &timeout, NULL);
}
