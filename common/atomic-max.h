/* atomic-max.h — raise an atomic maximum without a lock.
 *
 * For counters that several threads (completion callbacks on library
 * threads) update at once: the longest latency, the longest gap.  Used by
 * the benchmarks' histogram (bench/bench.h) and by the integrity verifier
 * (tools/ap-verify.c).  Relaxed ordering: the maximum is never lost, but
 * the update orders no other memory access.
 */
#ifndef ALTPATH_ATOMIC_MAX_H
#define ALTPATH_ATOMIC_MAX_H

#include <stdatomic.h>
#include <stdint.h>

/* Atomically raise *a to v if v is larger. */
static inline void
ap_atomic_max (_Atomic uint64_t *a, uint64_t v)
{
  uint64_t cur = atomic_load_explicit (a, memory_order_relaxed);
  while (v > cur
         && !atomic_compare_exchange_weak_explicit (a, &cur, v,
                                                    memory_order_relaxed,
                                                    memory_order_relaxed))
    ;
}

#endif /* ALTPATH_ATOMIC_MAX_H */
