// KVM_ENABLE_CAP, KVM_CAP_X86_USER_SPACE_MSR, KVM_X86_SET_MSR_FILTER and
// KVM_GET_XSAVE2 as a VMM makes them: capability checks, the errno of bad
// requests, and a real-mode guest whose RDMSR and WRMSR exit to user space
// (answered with data, or with error=1 which raises #GP through the IVT)
// or are denied by a filter.
#include "kvmtest.h"

static const uint8_t code[] = {
    0x66, 0xB9, 0x78, 0x56, 0x34, 0x12,  // 1000 mov ecx, 0x12345678 (no such MSR)
    0x0F, 0x32,                          // 1006 rdmsr
    0x66, 0xE7, 0x10,                    // 1008 out 0x10, eax
    0x66, 0x89, 0xD0,                    // 100B mov eax, edx
    0x66, 0xE7, 0x11,                    // 100E out 0x11, eax
    0x66, 0xB8, 0xDD, 0xCC, 0xBB, 0xAA,  // 1011 mov eax, 0xaabbccdd
    0x66, 0xBA, 0x44, 0x33, 0x22, 0x11,  // 1017 mov edx, 0x11223344
    0x0F, 0x30,                          // 101D wrmsr
    0xE6, 0x12,                          // 101F out 0x12, al
    0x66, 0xB9, 0x74, 0x01, 0x00, 0x00,  // 1021 mov ecx, 0x174 (SYSENTER_CS, filtered)
    0x0F, 0x32,                          // 1027 rdmsr
    0x66, 0xE7, 0x14,                    // 1029 out 0x14, eax
    0x66, 0xB9, 0x80, 0x00, 0x00, 0xC0,  // 102C mov ecx, 0xc0000080 (EFER)
    0x66, 0x31, 0xD2,                    // 1032 xor edx, edx
    0x66, 0xB8, 0x00, 0x00, 0x01, 0x00,  // 1035 mov eax, 0x10000 (a reserved bit)
    0x0F, 0x30,                          // 103B wrmsr
    0xE6, 0x15,                          // 103D out 0x15, al
    0xB0, 0x00,                          // 103F mov al, 0
    0xE6, 0xFF,                          // 1041 out 0xff, al
};

// The #GP handler at 0x1100: reports the faulting IP and skips the 2-byte instruction.
static const uint8_t handler[] = {
    0x58,              // pop ax
    0xE7, 0x13,        // out 0x13, ax
    0x83, 0xC0, 0x02,  // add ax, 2
    0x50,              // push ax
    0xCF,              // iret
};

static int enable_cap(int fd, uint32_t cap, uint32_t flags, uint64_t arg) {
    struct kvm_enable_cap value = {.cap = cap, .flags = flags};
    value.args[0] = arg;
    return ioctl(fd, KVM_ENABLE_CAP, &value);
}

static int set_filter(int vm, uint32_t flags, uint32_t range_flags, uint32_t nmsrs, uint32_t base, uint8_t *bitmap) {
    struct kvm_msr_filter filter = {.flags = flags};
    filter.ranges[0] = (struct kvm_msr_filter_range){.flags = range_flags, .nmsrs = nmsrs, .base = base, .bitmap = bitmap};
    return ioctl(vm, KVM_X86_SET_MSR_FILTER, &filter);
}

static void run_msr_guest(struct guest *g) {
    for (int exits = 0; exits < 30; exits++) {
        if (ioctl(g->vcpu, KVM_RUN, 0) < 0) {
            printf("KVM_RUN: -1 %s\n", strerrorname_np(errno));
            return;
        }
        struct kvm_run *run = g->run;
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            uint32_t value = 0;
            memcpy(&value, (uint8_t *)run + run->io.data_offset, run->io.size);
            if (run->io.port == 0xff) {
                printf("done\n");
                return;
            }
            printf("out %x = %x\n", run->io.port, value);
            break;
        }
        case KVM_EXIT_X86_RDMSR:
            printf("rdmsr exit index %x reason %u error %u data %llx\n", run->msr.index, run->msr.reason, run->msr.error,
                   (unsigned long long)run->msr.data);
            run->msr.data = 0x0102030405060708ull ^ run->msr.index;
            break;
        case KVM_EXIT_X86_WRMSR:
            printf("wrmsr exit index %x reason %u error %u data %llx\n", run->msr.index, run->msr.reason, run->msr.error,
                   (unsigned long long)run->msr.data);
            // Refuse the unknown MSR (the guest takes #GP); take the others as done.
            if (run->msr.index == 0x12345678) run->msr.error = 1;
            break;
        default:
            printf("exit reason %d\n", run->exit_reason);
            return;
        }
    }
    printf("too many exits\n");
}

static struct guest msr_guest(void) {
    struct guest g = make_guest(code, sizeof code);
    memcpy(g.memory + 0x1100, handler, sizeof handler);
    uint32_t vector = 0x00001100;  // IVT entry 13: 0000:1100
    memcpy(g.memory + 13 * 4, &vector, 4);
    struct kvm_sregs sregs;
    must("KVM_GET_SREGS", ioctl(g.vcpu, KVM_GET_SREGS, &sregs));
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    must("KVM_SET_SREGS", ioctl(g.vcpu, KVM_SET_SREGS, &sregs));
    set_entry(g.vcpu, 0x1000);
    return g;
}

int main(void) {
    int kvm = open_kvm();
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_ENABLE_CAP));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_ENABLE_CAP_VM));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_X86_USER_SPACE_MSR));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_X86_MSR_FILTER));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2));

    int vm = must("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0));
    CHECK(enable_cap(vm, 9999, 0, 0));
    CHECK(enable_cap(vm, KVM_CAP_X86_USER_SPACE_MSR, 1, KVM_MSR_EXIT_REASON_UNKNOWN));
    CHECK(enable_cap(vm, KVM_CAP_X86_USER_SPACE_MSR, 0, 8));
    CHECK(enable_cap(vm, KVM_CAP_X86_USER_SPACE_MSR, 0, 7));
    CHECK(enable_cap(vm, KVM_CAP_X86_MSR_FILTER, 0, 0));
    CHECK(ioctl(vm, KVM_ENABLE_CAP, (void *)8));
    uint8_t bitmap[8] = {0};
    CHECK(set_filter(vm, 2, KVM_MSR_FILTER_READ, 1, 0, bitmap));
    CHECK(set_filter(vm, KVM_MSR_FILTER_DEFAULT_DENY, 0, 0, 0, bitmap));
    CHECK(set_filter(vm, 0, 0, 1, 0, bitmap));
    CHECK(set_filter(vm, 0, 4, 1, 0, bitmap));
    CHECK(set_filter(vm, 0, KVM_MSR_FILTER_READ, 0x3001, 0, bitmap));
    CHECK(set_filter(vm, 0, KVM_MSR_FILTER_READ, 1, 0, NULL));
    CHECK(set_filter(vm, 0, KVM_MSR_FILTER_READ, 1, 0, bitmap));
    CHECK(set_filter(vm, 0, 0, 0, 0, NULL));
    int vcpu = must("KVM_CREATE_VCPU", ioctl(vm, KVM_CREATE_VCPU, 0));
    CHECK(enable_cap(vcpu, KVM_CAP_ENFORCE_PV_FEATURE_CPUID, 0, 1));
    CHECK(enable_cap(vcpu, KVM_CAP_ENFORCE_PV_FEATURE_CPUID, 1, 1));
    CHECK(enable_cap(vcpu, KVM_CAP_X86_USER_SPACE_MSR, 0, 1));

    // A new vCPU's XSAVE area: the initial x87 and SSE state.
    static uint8_t xsave[4096];
    memset(xsave, 0xAA, sizeof xsave);
    CHECK(ioctl(vcpu, KVM_GET_XSAVE2, xsave));
    uint16_t fcw;
    uint32_t mxcsr;
    uint64_t xstate_bv;
    memcpy(&fcw, xsave, 2);
    memcpy(&mxcsr, xsave + 24, 4);
    memcpy(&xstate_bv, xsave + 512, 8);
    int nonzero = 0;
    for (int i = 512; i < 4096; i++) nonzero += xsave[i] != 0;
    printf("xsave2 fcw %x mxcsr %x xstate_bv %llx nonzero header and extended bytes %d\n", fcw, mxcsr,
           (unsigned long long)xstate_bv, nonzero);
    CHECK(ioctl(vcpu, KVM_GET_XSAVE2, (void *)8));

    // Every failure exits; SYSENTER_CS is denied by a filter.
    struct guest g = msr_guest();
    CHECK(enable_cap(g.vm, KVM_CAP_X86_USER_SPACE_MSR, 0,
                     KVM_MSR_EXIT_REASON_INVAL | KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_FILTER));
    uint8_t deny[8] = {0};
    CHECK(set_filter(g.vm, 0, KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE, 1, 0x174, deny));
    run_msr_guest(&g);
    print_registers(g.vcpu);

    // No exits asked for: every failure, and the filtered read, raise #GP.
    g = msr_guest();
    CHECK(set_filter(g.vm, 0, KVM_MSR_FILTER_READ, 1, 0x174, deny));
    run_msr_guest(&g);
    print_registers(g.vcpu);
    return 0;
}
