// A flat 32-bit protected-mode guest: port I/O and MMIO with 32-bit operands.
#include "kvmtest.h"

static const uint8_t code[] = {
    0xB8, 0x78, 0x56, 0x34, 0x12,        // mov eax, 0x12345678
    0xE7, 0x10,                          // out 0x10, eax
    0xA3, 0x00, 0x00, 0x00, 0xD0,        // mov [0xd0000000], eax   (MMIO)
    0x8B, 0x1D, 0x04, 0x00, 0x00, 0xD0,  // mov ebx, [0xd0000004]   (MMIO)
    0xE4, 0x11,                          // in al, 0x11
    0x01, 0xD8,                          // add eax, ebx
    0xE7, 0x12,                          // out 0x12, eax
    0xB0, 0x00,                          // mov al, 0
    0xE6, 0xFF,                          // out 0xff, al
    0xF4,                                // hlt
};

static struct kvm_segment flat(uint16_t selector, uint8_t type) {
    struct kvm_segment s = {.base = 0, .limit = 0xFFFFFFFF, .selector = selector, .type = type,
                            .present = 1, .s = 1, .db = 1, .g = 1};
    return s;
}

int main(void) {
    struct guest g = make_guest(code, sizeof code);
    struct kvm_sregs sregs;
    must("KVM_GET_SREGS", ioctl(g.vcpu, KVM_GET_SREGS, &sregs));
    sregs.cr0 = 0x11;  // PE, ET
    sregs.cs = flat(0x08, 11);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat(0x10, 3);
    must("KVM_SET_SREGS", ioctl(g.vcpu, KVM_SET_SREGS, &sregs));
    set_entry(g.vcpu, 0x1000);
    run_guest(g.vcpu, g.run);
    print_registers(g.vcpu);
    return 0;
}
