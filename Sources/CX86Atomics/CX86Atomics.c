#include "CX86Atomics.h"

#include <pthread.h>

bool cx86_compare_exchange16(void *address, uint64_t *expected_low, uint64_t *expected_high,
                             uint64_t desired_low, uint64_t desired_high) {
#if defined(__x86_64__)
    bool done;
    __asm__ __volatile__("lock cmpxchg16b %1"
                         : "=@ccz"(done), "+m"(*(volatile unsigned __int128 *)address),
                           "+a"(*expected_low), "+d"(*expected_high)
                         : "b"(desired_low), "c"(desired_high)
                         : "memory");
    return done;
#else
    unsigned __int128 expected = ((unsigned __int128)*expected_high << 64) | *expected_low;
    unsigned __int128 desired = ((unsigned __int128)desired_high << 64) | desired_low;
    bool done = __atomic_compare_exchange_n((unsigned __int128 *)address, &expected, desired, false,
                                            __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    *expected_low = (uint64_t)expected;
    *expected_high = (uint64_t)(expected >> 64);
    return done;
#endif
}

static pthread_mutex_t split_lock = PTHREAD_MUTEX_INITIALIZER;

void cx86_split_lock_acquire(void) { pthread_mutex_lock(&split_lock); }

void cx86_split_lock_release(void) { pthread_mutex_unlock(&split_lock); }
