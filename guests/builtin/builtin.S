/*
 * SwiftKVM's built-in guest: what `swiftkvm run` boots with no arguments.
 *
 * A flat binary loaded at guest-physical 0x8000. The VMM maps a page at
 * 0xfffff000 whose reset vector (0xfffffff0) jumps to 0000:8000, so the
 * guest starts in 16-bit real mode with the vCPU's reset state and nothing
 * else set by the VMM. It then walks the x86 boot path:
 *
 *   real mode -> protected mode (GDT, CR0.PE)
 *             -> long mode (2 MiB identity page, CR4.PAE, EFER.LME, CR0.PG)
 *
 * printing a line over the 16550 at 0x3f8 in each mode, computes the
 * Adler-32 of its own image [image_start, image_end) with a 64-bit loop,
 * prints it in hex, and writes its status to the debug-exit port 0x501
 * (0 = success, 2 = the CPU has no long mode).
 *
 * Everything the guest writes lies outside the image (page tables at
 * 0x1000-0x3fff, stack below 0x7c00), so the checksum is of the bytes the
 * VMM loaded. Keep it small: the host /dev/kvm here emulates CPL-0 code at
 * ~1M instructions/s and every port access is an exit to user space.
 *
 * Assemble with scripts/build-builtin-guest.sh (GNU as, AT&T syntax, no C
 * preprocessor needed: comments are C-style so gcc -c works too).
 */

        .set LOAD_ADDRESS, 0x8000
        .set COM1, 0x3f8
        .set COM1_LSR, COM1 + 5
        .set LSR_THR_EMPTY, 0x20
        .set DEBUG_EXIT, 0x501
        .set STATUS_SUCCESS, 0
        .set STATUS_NO_LONG_MODE, 2
        .set STACK_TOP, 0x7c00
        .set PML4, 0x1000
        .set PDPT, 0x2000
        .set PD, 0x3000
        .set MSR_EFER, 0xc0000080
        .set EFER_LME, 1 << 8
        .set CR0_PE, 1
        .set CR0_PG, 1 << 31
        .set CR4_PAE, 1 << 5
        .set PTE_PRESENT_WRITABLE, 0x3
        .set PDE_LARGE_PAGE, 0x80
        .set CODE32, gdt_code32 - gdt
        .set DATA, gdt_data - gdt
        .set CODE64, gdt_code64 - gdt

/*
 * Prints the NUL-terminated string at (e|r)si, waiting for LSR.THRE before
 * each byte as a 16550 driver must. The same source serves all three modes;
 * clobbers al, ah, dx, si.
 */
        .macro PUTS_BODY
1:      lodsb
        test %al, %al
        jz 3f
        mov %al, %ah
        mov $COM1_LSR, %dx
2:      in %dx, %al
        test $LSR_THR_EMPTY, %al
        jz 2b
        mov %ah, %al
        mov $COM1, %dx
        out %al, %dx
        jmp 1b
3:      ret
        .endm

        .text
        .globl start
image_start:

/* ---- 16-bit real mode, CS = 0, IP = 0x8000 ---- */
        .code16
start:
        cli
        cld
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $STACK_TOP, %sp
        mov $banner, %si
        call puts16
        mov $real_mode_line, %si
        call puts16

        lgdtl gdt_descriptor
        mov %cr0, %eax
        or $CR0_PE, %eax
        mov %eax, %cr0
        ljmpl $CODE32, $protected_mode

puts16:
        PUTS_BODY

/* ---- 32-bit protected mode, flat segments, no paging ---- */
        .code32
protected_mode:
        mov $DATA, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $STACK_TOP, %esp
        mov $protected_mode_line, %esi
        call puts32

        /* Long mode needs CPUID.80000001h:EDX.LM (bit 29). */
        mov $0x80000001, %eax
        cpuid
        bt $29, %edx
        jc 1f
        mov $no_long_mode_line, %esi
        call puts32
        mov $STATUS_NO_LONG_MODE, %al
        mov $DEBUG_EXIT, %dx
        out %al, %dx
        jmp halt32
1:
        /* Identity-map the first 2 MiB with one large page: PML4 -> PDPT -> PD. */
        mov $PML4, %edi
        xor %eax, %eax
        mov $(3 * 4096 / 4), %ecx
        rep stosl
        movl $(PDPT | PTE_PRESENT_WRITABLE), PML4
        movl $(PD | PTE_PRESENT_WRITABLE), PDPT
        movl $(0 | PDE_LARGE_PAGE | PTE_PRESENT_WRITABLE), PD
        mov $PML4, %eax
        mov %eax, %cr3

        mov %cr4, %eax
        or $CR4_PAE, %eax
        mov %eax, %cr4
        mov $MSR_EFER, %ecx
        rdmsr
        or $EFER_LME, %eax
        wrmsr
        mov %cr0, %eax
        or $CR0_PG, %eax
        mov %eax, %cr0
        ljmp $CODE64, $long_mode

halt32:
        hlt
        jmp halt32

puts32:
        PUTS_BODY

/* ---- 64-bit long mode ---- */
        .code64
long_mode:
        mov $DATA, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $STACK_TOP, %esp
        mov $long_mode_line, %esi
        call puts64

        /*
         * Adler-32 (RFC 1950) of the image. The sums are reduced once at the
         * end: for fewer than 5552 bytes they cannot overflow 32 bits.
         */
        mov $image_start, %esi
        mov $(image_end - image_start), %ecx
        mov $1, %eax
        xor %edx, %edx
1:      movzbl (%rsi), %ebx
        add %ebx, %eax
        add %eax, %edx
        inc %rsi
        dec %ecx
        jnz 1b
        mov $65521, %ebx
        mov %edx, %edi
        xor %edx, %edx
        div %ebx
        mov %edx, %r8d
        mov %edi, %eax
        xor %edx, %edx
        div %ebx
        shl $16, %edx
        or %edx, %r8d

        mov $checksum_line, %esi
        call puts64
        mov $8, %ecx
2:      rol $4, %r8d
        mov %r8d, %eax
        and $0xf, %eax
        mov hex_digits(%rax), %al
        call putc64
        dec %ecx
        jnz 2b
        mov $'\n', %al
        call putc64

        mov $STATUS_SUCCESS, %al
        mov $DEBUG_EXIT, %dx
        out %al, %dx
halt64:
        hlt
        jmp halt64

/* Prints al; clobbers ah, dx. */
putc64:
        mov %al, %ah
        mov $COM1_LSR, %dx
1:      in %dx, %al
        test $LSR_THR_EMPTY, %al
        jz 1b
        mov %ah, %al
        mov $COM1, %dx
        out %al, %dx
        ret

puts64:
        PUTS_BODY

/* ---- data ---- */
/*
 * The descriptors have their Accessed bit set already: the CPU would set it
 * when loading a segment, writing into the image and changing its checksum.
 */
        .p2align 3
gdt:
        .quad 0
gdt_code32:
        .quad 0x00cf9b000000ffff        /* base 0, limit 4 GiB, 32-bit code */
gdt_data:
        .quad 0x00cf93000000ffff        /* base 0, limit 4 GiB, data */
gdt_code64:
        .quad 0x00af9b000000ffff        /* L = 1: 64-bit code */
gdt_end:
gdt_descriptor:
        .word gdt_end - gdt - 1
        .long gdt

hex_digits:
        .ascii "0123456789abcdef"
banner:
        .asciz "SwiftKVM built-in guest\n"
real_mode_line:
        .asciz "real mode: 16-bit\n"
protected_mode_line:
        .asciz "protected mode: 32-bit\n"
long_mode_line:
        .asciz "long mode: 64-bit, paging on\n"
checksum_line:
        .asciz "adler32: 0x"
no_long_mode_line:
        .asciz "this CPU has no long mode\n"
/* scripts/build-builtin-guest.sh checks that the image stays under 5552 bytes. */
image_end:
