#ifndef CX86ATOMICS_H
#define CX86ATOMICS_H

// Host atomics on guest memory, for the soft CPU's LOCK prefix: the guest
// operand's host address is shared with every other vCPU thread, so a locked
// read-modify-write must be one host atomic, never a read then a write.
// Swift has no atomics on an arbitrary address without a package, so these
// wrap the compiler's __atomic builtins. All are sequentially consistent, as
// a locked x86 instruction is a full barrier.

#include <stdbool.h>
#include <stdint.h>

// Compares the `size`-byte (1, 2, 4 or 8) value at `address` with `*expected`
// and, when equal, stores `desired`; otherwise loads the value found into
// `*expected`. Returns whether the store happened.
static inline bool cx86_compare_exchange(void *address, uint64_t *expected, uint64_t desired, int size) {
    switch (size) {
    case 1: {
        uint8_t e = (uint8_t)*expected;
        bool done = __atomic_compare_exchange_n((uint8_t *)address, &e, (uint8_t)desired, false,
                                                __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        *expected = e;
        return done;
    }
    case 2: {
        uint16_t e = (uint16_t)*expected;
        bool done = __atomic_compare_exchange_n((uint16_t *)address, &e, (uint16_t)desired, false,
                                                __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        *expected = e;
        return done;
    }
    case 4: {
        uint32_t e = (uint32_t)*expected;
        bool done = __atomic_compare_exchange_n((uint32_t *)address, &e, (uint32_t)desired, false,
                                                __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        *expected = e;
        return done;
    }
    default:
        return __atomic_compare_exchange_n((uint64_t *)address, expected, desired, false,
                                           __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
}

// The `size`-byte value at `address`, read in one access.
static inline uint64_t cx86_load(const void *address, int size) {
    switch (size) {
    case 1: return __atomic_load_n((const uint8_t *)address, __ATOMIC_SEQ_CST);
    case 2: return __atomic_load_n((const uint16_t *)address, __ATOMIC_SEQ_CST);
    case 4: return __atomic_load_n((const uint32_t *)address, __ATOMIC_SEQ_CST);
    default: return __atomic_load_n((const uint64_t *)address, __ATOMIC_SEQ_CST);
    }
}

// Sets `bits` in the 64-bit word at `address` in one atomic OR: a dirty log's
// word is shared by every vCPU thread marking pages in it (and by the
// KVM_GET_DIRTY_LOG that takes it), and a load-or-store would lose a bit
// another thread set in between.
static inline void cx86_fetch_or_u64(uint64_t *address, uint64_t bits) {
    __atomic_fetch_or(address, bits, __ATOMIC_SEQ_CST);
}

// The 16-byte form (CMPXCHG16B): `address` must be 16-byte aligned. Defined
// in the .c file, where x86-64 uses `lock cmpxchg16b` directly (no -mcx16 or
// libatomic needed).
bool cx86_compare_exchange16(void *address, uint64_t *expected_low, uint64_t *expected_high,
                             uint64_t desired_low, uint64_t desired_high);

// One process-wide lock for the locked operations host atomics cannot do
// (an operand across a page or a cache line, or in MMIO): they run the
// ordinary read-then-write path while holding it.
void cx86_split_lock_acquire(void);
void cx86_split_lock_release(void);

#endif
