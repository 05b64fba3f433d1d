// KVM_SET_GUEST_DEBUG: each control bit, an undefined one (accepted on x86:
// KVM_CAP_SET_GUEST_DEBUG2 says which bits mean something), a bad pointer,
// a #DB queued twice; then a real-mode guest single-stepped through an INT
// and its IRET, stopped by a hardware breakpoint and let go; KVM_TRANSLATE.
// (A debug exit's dr7 is not printed: KVM's emulator, which runs real-mode
// code on this host, leaves it as it was.)
#include "kvmtest.h"

static int set_debug(int vcpu, uint32_t control) {
    struct kvm_guest_debug debug = {.control = control};
    return ioctl(vcpu, KVM_SET_GUEST_DEBUG, &debug);
}

static const uint8_t code[] = {
    0x90,              // 1000: nop
    0xB8, 0x34, 0x12,  // 1001: mov ax, 0x1234
    0x40,              // 1004: inc ax
    0xCD, 0x21,        // 1005: int 0x21 (handler at 2000: iret)
    0x90,              // 1007: nop
    0xE6, 0xFF,        // 1008: out 0xff, al
    0xF4,              // 100a: hlt
};

static void report_exit(int vcpu, struct kvm_run *run) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) {
        printf("KVM_RUN: -1 %s\n", strerrorname_np(errno));
        exit(4);
    }
    struct kvm_regs regs;
    must("KVM_GET_REGS", ioctl(vcpu, KVM_GET_REGS, &regs));
    if (run->exit_reason == KVM_EXIT_DEBUG)
        printf("debug exception %u pc %llx dr6 %llx rip %llx rflags %llx\n", run->debug.arch.exception,
               (unsigned long long)run->debug.arch.pc, (unsigned long long)run->debug.arch.dr6, regs.rip, regs.rflags);
    else if (run->exit_reason == KVM_EXIT_IO)
        printf("io port %x rip %llx\n", run->io.port, regs.rip);
    else
        printf("exit reason %d rip %llx\n", run->exit_reason, regs.rip);
}

int main(void) {
    int kvm = open_kvm();
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_GUEST_DEBUG));
    CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_GUEST_DEBUG2));

    struct guest g = make_guest(code, sizeof code);
    g.memory[0x2000] = 0xCF;  // iret
    g.memory[0x21 * 4 + 1] = 0x20;  // IVT[0x21] = 0000:2000
    int vcpu = g.vcpu;
    CHECK(set_debug(vcpu, 0));
    CHECK(set_debug(vcpu, KVM_GUESTDBG_ENABLE));
    CHECK(set_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP));
    CHECK(set_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP));
    CHECK(set_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP));
    CHECK(set_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_BLOCKIRQ));
    CHECK(set_debug(vcpu, KVM_GUESTDBG_ENABLE | (1u << 30)));
    CHECK(set_debug(vcpu, 0));
    CHECK(ioctl(vcpu, KVM_SET_GUEST_DEBUG, (void *)8));

    // A second vCPU takes the queued #DBs: the second finds the first pending.
    int other = must("KVM_CREATE_VCPU", ioctl(g.vm, KVM_CREATE_VCPU, 1));
    CHECK(set_debug(other, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_INJECT_DB));
    CHECK(set_debug(other, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_INJECT_BP));
    struct kvm_vcpu_events events;
    CHECK(ioctl(other, KVM_GET_VCPU_EVENTS, &events));
    printf("exception injected %d pending %d vector %d\n", events.exception.injected, events.exception.pending,
           events.exception.nr);

    struct kvm_sregs sregs;
    must("KVM_GET_SREGS", ioctl(vcpu, KVM_GET_SREGS, &sregs));
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    must("KVM_SET_SREGS", ioctl(vcpu, KVM_SET_SREGS, &sregs));
    set_entry(vcpu, 0x1000);

    CHECK(set_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP));
    for (int i = 0; i < 6; i++) report_exit(vcpu, g.run);

    struct kvm_guest_debug breakpoint = {.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP};
    breakpoint.arch.debugreg[0] = 0x1008;
    breakpoint.arch.debugreg[7] = 0x400 | 0x2;  // G0: an instruction breakpoint
    CHECK(ioctl(vcpu, KVM_SET_GUEST_DEBUG, &breakpoint));
    set_entry(vcpu, 0x1005);
    report_exit(vcpu, g.run);
    CHECK(set_debug(vcpu, 0));
    report_exit(vcpu, g.run);

    struct kvm_translation translation = {.linear_address = 0x12345};
    CHECK(ioctl(vcpu, KVM_TRANSLATE, &translation));
    printf("physical %llx valid %d writeable %d usermode %d\n", (unsigned long long)translation.physical_address,
           translation.valid, translation.writeable, translation.usermode);
    CHECK(ioctl(vcpu, KVM_TRANSLATE, (void *)8));
    return 0;
}
