// A real-mode guest: port output and input, an MMIO write and read above its memory.
#include "kvmtest.h"

static const uint8_t code[] = {
    0xB0, 0x42,              // mov al, 0x42
    0xE6, 0x10,              // out 0x10, al
    0xE4, 0x11,              // in al, 0x11
    0x88, 0xC3,              // mov bl, al
    0xB8, 0x00, 0x20,        // mov ax, 0x2000
    0x8E, 0xD8,              // mov ds, ax
    0x88, 0x1E, 0x10, 0x00,  // mov [0x10], bl      (0x20010: MMIO)
    0x8B, 0x0E, 0x20, 0x00,  // mov cx, [0x20]      (0x20020: MMIO)
    0x89, 0xC8,              // mov ax, cx
    0xE7, 0x12,              // out 0x12, ax
    0xB0, 0x00,              // mov al, 0
    0xE6, 0xFF,              // out 0xff, al
    0xF4,                    // hlt
};

int main(void) {
    struct guest g = make_guest(code, sizeof code);
    struct kvm_sregs sregs;
    must("KVM_GET_SREGS", ioctl(g.vcpu, KVM_GET_SREGS, &sregs));
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    must("KVM_SET_SREGS", ioctl(g.vcpu, KVM_SET_SREGS, &sregs));
    set_entry(g.vcpu, 0x1000);
    run_guest(g.vcpu, g.run);
    print_registers(g.vcpu);
    return 0;
}
