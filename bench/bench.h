/* bench.h — small helpers the benchmarks in bench/ share.
 *
 * Each benchmark is one .c file built into its own program (Makefile:
 * bench/NAME.c → build/bench/NAME), so what they share lives here as
 * static functions: a latency histogram that completion callbacks on
 * several library threads can fill without a lock, a per-slot random
 * generator, size parsing, a median.  Nothing here allocates per request.
 */
#ifndef ALTPATH_BENCH_H
#define ALTPATH_BENCH_H

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "altpath.h"
#include "atomic-max.h"
#include "clock.h"

/* ------------------------------------------------------------ histogram */

/* Log-linear buckets over nanoseconds (as fio and HdrHistogram do): values
 * below 2^SUB_BITS ns have a bucket each; above, every power of two is cut
 * into 2^SUB_BITS equal buckets, so a percentile is off by at most 1/64
 * (1.6 %) — fine enough to compare with fio, which has the same kind of
 * error.  The library's own histogram (AP_LAT_BUCKETS, powers of two) is
 * too coarse for that. */
#define BH_SUB_BITS 6
#define BH_SUB (1u << BH_SUB_BITS)
#define BH_BUCKETS ((64 - BH_SUB_BITS + 1) * BH_SUB)

struct bench_hist {
  _Atomic uint64_t count[BH_BUCKETS];
  _Atomic uint64_t n;
  _Atomic uint64_t sum_ns;
  _Atomic uint64_t max_ns;
};

static inline unsigned
bh_index (uint64_t ns)
{
  if (ns < BH_SUB)
    return (unsigned) ns;
  unsigned msb = 63u - (unsigned) __builtin_clzll (ns);
  unsigned shift = msb - BH_SUB_BITS;
  /* (ns >> shift) lies in [BH_SUB, 2 * BH_SUB). */
  return (shift + 1) * BH_SUB + (unsigned) ((ns >> shift) - BH_SUB);
}

/* The middle of a bucket, in ns. */
static inline double
bh_value (unsigned i)
{
  if (i < BH_SUB)
    return i;
  unsigned shift = i / BH_SUB - 1;
  uint64_t lo = ((uint64_t) (i % BH_SUB) + BH_SUB) << shift;
  return (double) lo + (double) ((uint64_t) 1 << shift) / 2.0;
}

static inline void
bh_add (struct bench_hist *h, uint64_t ns)
{
  atomic_fetch_add_explicit (&h->count[bh_index (ns)], 1,
                             memory_order_relaxed);
  atomic_fetch_add_explicit (&h->n, 1, memory_order_relaxed);
  atomic_fetch_add_explicit (&h->sum_ns, ns, memory_order_relaxed);
  ap_atomic_max (&h->max_ns, ns);
}

/* Percentile q (0 < q < 1) in µs; 0 if empty.  Read once the writers have
 * stopped. */
static inline double
bh_percentile_us (const struct bench_hist *h, double q)
{
  uint64_t n = atomic_load (&h->n);
  if (n == 0)
    return 0;
  uint64_t rank = (uint64_t) (q * (double) n);
  if (rank >= n)
    rank = n - 1;
  uint64_t seen = 0;
  for (unsigned i = 0; i < BH_BUCKETS; i++) {
    seen += atomic_load (&h->count[i]);
    if (seen > rank)
      return bh_value (i) / 1000.0;
  }
  return (double) atomic_load (&h->max_ns) / 1000.0;
}

static inline double
bh_mean_us (const struct bench_hist *h)
{
  uint64_t n = atomic_load (&h->n);
  return n ? (double) atomic_load (&h->sum_ns) / (double) n / 1000.0 : 0;
}

/* ---------------------------------------------------------------- misc */

/* xorshift64*: one state per request slot, so no shared random state on
 * the completion path. */
static inline uint64_t
bench_rand (uint64_t *s)
{
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1DULL;
}

/* "4096", "4k", "1M", "1G" (powers of 1024) → bytes; -1 if malformed. */
static inline int
bench_parse_size (const char *s, uint64_t *out)
{
  char *end;
  errno = 0;
  unsigned long long v = strtoull (s, &end, 10);
  if (errno || end == s)
    return -1;
  unsigned shift = 0;
  switch (*end) {
  case '\0': break;
  case 'k': case 'K': shift = 10; end++; break;
  case 'm': case 'M': shift = 20; end++; break;
  case 'g': case 'G': shift = 30; end++; break;
  case 't': case 'T': shift = 40; end++; break;
  default: return -1;
  }
  if (*end == 'i' || *end == 'I')
    end++;
  if (*end == 'b' || *end == 'B')
    end++;
  if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
    return -1;
  *out = (uint64_t) v << shift;
  return 0;
}

/* Sleep until a CLOCK_MONOTONIC instant. */
static inline void
bench_sleep_until (uint64_t ns)
{
  struct timespec ts = ap_ns_to_timespec (ns);
  while (clock_nanosleep (CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
    ;
}

static inline int
bench_cmp_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

/* Median, minimum and maximum of n values (sorts v). */
static inline void
bench_stats (double *v, size_t n, double *med, double *min, double *max)
{
  if (n == 0) {
    *med = *min = *max = 0;
    return;
  }
  qsort (v, n, sizeof *v, bench_cmp_double);
  *min = v[0];
  *max = v[n - 1];
  *med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#endif /* ALTPATH_BENCH_H */
