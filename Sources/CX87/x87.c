// The soft CPU's x87 arithmetic runs on the host's x87 FPU: FRSTOR the
// guest's state, run the very instruction the guest runs, FNSAVE it back.
// Results, the rounding and precision control, C0-C3, the exception flags
// and the masked and unmasked responses, unsupported formats, stack faults
// and the transcendental instructions' exact bits are then the host CPU's,
// which is what the guest gets from KVM on this host.
//
// The instruction is picked from a table of every D8-DF encoding, each
// entry 8 bytes: the instruction (register forms, or memory forms on
// [rsi]), a jump to the common tail, a pad byte.

#include "CX87.h"

#if defined(__x86_64__)

bool cx87_available(void) { return true; }

void cx87_execute(void *image, uint32_t form, void *operand, uint64_t *flags) {
    if (form >= CX87_FORMS) return;
    uint16_t *status = (uint16_t *)((uint8_t *)image + 4);
    uint16_t sticky = *status & 0x7F;  // the exception flags and SF
    *status &= (uint16_t)~0x80FF;
    uint16_t hostControl;
    uint64_t arithmetic = *flags & 0x8D5;
    __asm__ volatile("fnstcw %0" : "=m"(hostControl));
    __asm__ volatile(
        "frstor (%[image])\n\t"
        // Below the red zone: the compiler may keep values there.
        "sub $128, %%rsp\n\t"
        "pushfq\n\t"
        "andq $~0x8D5, (%%rsp)\n\t"
        "orq %[arithmetic], (%%rsp)\n\t"
        "popfq\n\t"
        "lea 10f(%%rip), %%rcx\n\t"
        "lea (%%rcx,%[form],8), %%rcx\n\t"
        "jmp *%%rcx\n"
        "10:\n\t"
        ".set cx87_entry, 0\n\t"
        ".rept 512\n\t"
        ".byte 0xD8 + (cx87_entry >> 6), 0xC0 + (cx87_entry & 63)\n\t"
        ".byte 0xE9\n\t"
        ".long 20f - . - 4\n\t"
        ".byte 0x90\n\t"
        ".set cx87_entry, cx87_entry + 1\n\t"
        ".endr\n\t"
        ".set cx87_entry, 0\n\t"
        ".rept 64\n\t"
        ".byte 0xD8 + (cx87_entry >> 3), ((cx87_entry & 7) << 3) | 6\n\t"  // [rsi]
        ".byte 0xE9\n\t"
        ".long 20f - . - 4\n\t"
        ".byte 0x90\n\t"
        ".set cx87_entry, cx87_entry + 1\n\t"
        ".endr\n"
        "20:\n\t"
        "pushfq\n\t"
        "pop %[arithmetic]\n\t"
        "add $128, %%rsp\n\t"
        "fnsave (%[image])\n\t"
        : [arithmetic] "+r"(arithmetic)
        : [image] "r"(image), [form] "r"((uint64_t)form), "S"(operand)
        : "rax", "rcx", "memory", "cc", "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)");
    __asm__ volatile("fldcw %0" : : "m"(hostControl));
    *flags = (*flags & ~(uint64_t)0x8D5) | (arithmetic & 0x8D5);
    uint16_t control = *(uint16_t *)image;
    uint16_t result = *status | sticky;
    if (result & 0x3F & ~control) {
        result |= 0x8080;
    } else {
        result &= (uint16_t)~0x8080;
    }
    *status = result;
}

#else

bool cx87_available(void) { return false; }

void cx87_execute(void *image, uint32_t form, void *operand, uint64_t *flags) {
    (void)image; (void)form; (void)operand; (void)flags;
}

#endif
