// A 64-bit long-mode guest on identity-mapped 2 MiB pages: port I/O and
// 64-bit MMIO through the page tables.
#include "kvmtest.h"

static const uint8_t code[] = {
    0x48, 0xB8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,  // mov rax, 0x1122334455667788
    0x48, 0xA3, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00,  // mov [0x200000], rax   (MMIO)
    0xBB, 0x08, 0x00, 0x20, 0x00,                                // mov ebx, 0x200008
    0x48, 0x8B, 0x0B,                                            // mov rcx, [rbx]        (MMIO)
    0xE7, 0x10,                                                  // out 0x10, eax
    0x89, 0xC8,                                                  // mov eax, ecx
    0xE7, 0x12,                                                  // out 0x12, eax
    0xB0, 0x00,                                                  // mov al, 0
    0xE6, 0xFF,                                                  // out 0xff, al
    0xF4,                                                        // hlt
};

int main(void) {
    struct guest g = make_guest(code, sizeof code);
    uint64_t *pml4 = (uint64_t *)(g.memory + 0x2000);
    uint64_t *pdpt = (uint64_t *)(g.memory + 0x3000);
    uint64_t *pd = (uint64_t *)(g.memory + 0x4000);
    pml4[0] = 0x3000 | 3;          // present, writable
    pdpt[0] = 0x4000 | 3;
    pd[0] = 0x000000 | 0x83;       // 2 MiB page: present, writable, PS
    pd[1] = 0x200000 | 0x83;
    struct kvm_sregs sregs;
    must("KVM_GET_SREGS", ioctl(g.vcpu, KVM_GET_SREGS, &sregs));
    struct kvm_segment code64 = {.limit = 0xFFFFFFFF, .selector = 0x08, .type = 11, .present = 1, .s = 1, .l = 1, .g = 1};
    struct kvm_segment data = {.limit = 0xFFFFFFFF, .selector = 0x10, .type = 3, .present = 1, .s = 1, .db = 1, .g = 1};
    sregs.cs = code64;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.cr3 = 0x2000;
    sregs.cr4 = 0x20;               // PAE
    sregs.cr0 = 0x80000011;         // PG, ET, PE
    sregs.efer = 0x500;             // LME, LMA
    must("KVM_SET_SREGS", ioctl(g.vcpu, KVM_SET_SREGS, &sregs));
    set_entry(g.vcpu, 0x1000);
    run_guest(g.vcpu, g.run);
    print_registers(g.vcpu);
    return 0;
}
