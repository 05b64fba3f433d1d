// The host's x87 FPU as the soft CPU's x87 arithmetic (see x87.c).

#ifndef CX87_H
#define CX87_H

#include <stdbool.h>
#include <stdint.h>

/// Register forms of D8-DF: (escape - 0xD8) * 64 + (ModRM - 0xC0).
#define CX87_REGISTER_FORMS 512
/// Memory forms of D8-DF: CX87_REGISTER_FORMS + (escape - 0xD8) * 8 + ModRM.reg.
#define CX87_FORMS 576

/// Whether the host has an x87 FPU that cx87_execute can use (x86 hosts).
bool cx87_available(void);

/// Runs one x87 instruction on the host FPU.
///
/// `image` is the x87 state as FNSAVE stores it in 32-bit protected mode
/// (108 bytes: FCW, FSW, the full tag word, the pointers, ST0-ST7 as 10
/// bytes each); it is loaded, the instruction runs, and the state is stored
/// back into it. The exception flags the image already has (and SF, ES, B)
/// are left out while the instruction runs and ORed back afterwards, with
/// ES and B recomputed: so nothing is pending on the host and the host
/// never takes #MF, whatever the image says. The pointers stored back are
/// the host's, not the guest's.
///
/// `form` selects the instruction (see CX87_REGISTER_FORMS, CX87_FORMS);
/// a memory form reads or writes `operand` (at most 10 bytes). The caller
/// must not pass a form that is undefined (#UD) or that is a control
/// instruction (FLDENV, FLDCW, FNSTENV, FNSTCW, FRSTOR, FNSAVE, FNSTSW
/// and the DB E0-E4 group): those are the caller's.
///
/// `flags` holds RFLAGS' arithmetic flags (OF SF ZF AF PF CF): the ones
/// FCMOVcc reads on the way in, the ones FCOMI and FUCOMI set on the way out.
void cx87_execute(void *image, uint32_t form, void *operand, uint64_t *flags);

#endif
