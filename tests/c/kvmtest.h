// Helpers for the preload test programs: each program makes KVM requests
// and prints one line per result, so that its output on the host's
// /dev/kvm and under `swiftkvm exec` can be compared line by line.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

// A result as "name: value" or "name: -1 ERRNAME".
static inline int report(const char *name, int result) {
    if (result < 0)
        printf("%s: -1 %s\n", name, strerrorname_np(errno));
    else
        printf("%s: %d\n", name, result);
    fflush(stdout);
    return result;
}

#define CHECK(expr) report(#expr, (expr))

static inline int open_kvm(void) {
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        perror("open /dev/kvm");
        exit(2);
    }
    return kvm;
}

static inline int must(const char *what, int result) {
    if (result < 0) {
        printf("%s failed: %s\n", what, strerrorname_np(errno));
        exit(3);
    }
    return result;
}

// Guest memory: anonymous pages the VM maps at guest-physical 0.
static inline void *guest_memory(int vm, size_t size, uint32_t slot, uint64_t guest_address) {
    void *memory = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    struct kvm_userspace_memory_region region = {
        .slot = slot, .guest_phys_addr = guest_address, .memory_size = size, .userspace_addr = (uint64_t)memory};
    must("KVM_SET_USER_MEMORY_REGION", ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region));
    return memory;
}

// Runs the vCPU until the guest writes to port 0xff, printing each exit.
// An `in` reads 0x5A in every byte, an MMIO read 0x11, 0x22, 0x33...
static inline void run_guest(int vcpu, struct kvm_run *run) {
    for (int exits = 0; exits < 20; exits++) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            printf("KVM_RUN: -1 %s\n", strerrorname_np(errno));
            exit(4);
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == 0xff) {
                printf("done\n");
                return;
            }
            if (run->io.direction == KVM_EXIT_IO_IN) {
                memset(data, 0x5A, run->io.size * run->io.count);
                printf("io in port %x size %d\n", run->io.port, run->io.size);
            } else {
                uint64_t value = 0;
                memcpy(&value, data, run->io.size);
                printf("io out port %x size %d value %llx\n", run->io.port, run->io.size, (unsigned long long)value);
            }
            break;
        }
        case KVM_EXIT_MMIO:
            if (run->mmio.is_write) {
                uint64_t value = 0;
                memcpy(&value, run->mmio.data, run->mmio.len);
                printf("mmio write %llx len %d value %llx\n", run->mmio.phys_addr, run->mmio.len, (unsigned long long)value);
            } else {
                for (unsigned i = 0; i < run->mmio.len; i++) run->mmio.data[i] = (uint8_t)(0x11 * (i + 1));
                printf("mmio read %llx len %d\n", run->mmio.phys_addr, run->mmio.len);
            }
            break;
        default:
            printf("exit reason %d\n", run->exit_reason);
            return;
        }
    }
    printf("too many exits\n");
}

static inline void print_registers(int vcpu) {
    struct kvm_regs regs;
    must("KVM_GET_REGS", ioctl(vcpu, KVM_GET_REGS, &regs));
    printf("rax %llx rbx %llx rcx %llx rip %llx\n", regs.rax, regs.rbx, regs.rcx, regs.rip);
}

// A VM with 64 KiB of memory at guest-physical 0 holding `code` at 0x1000,
// and one vCPU with its run mapping.
struct guest {
    int vm, vcpu;
    uint8_t *memory;
    struct kvm_run *run;
};

static inline struct guest make_guest(const uint8_t *code, size_t size) {
    int kvm = open_kvm();
    struct guest g;
    g.vm = must("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0));
    g.memory = guest_memory(g.vm, 0x10000, 0, 0);
    memcpy(g.memory + 0x1000, code, size);
    g.vcpu = must("KVM_CREATE_VCPU", ioctl(g.vm, KVM_CREATE_VCPU, 0));
    int mmap_size = must("KVM_GET_VCPU_MMAP_SIZE", ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0));
    g.run = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, g.vcpu, 0);
    if (g.run == MAP_FAILED) {
        perror("mmap vcpu");
        exit(2);
    }
    return g;
}

static inline void set_entry(int vcpu, uint64_t rip) {
    struct kvm_regs regs = {.rip = rip, .rflags = 2, .rsp = 0x8000};
    must("KVM_SET_REGS", ioctl(vcpu, KVM_SET_REGS, &regs));
}
