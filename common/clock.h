/* clock.h — monotonic and wall-clock time in nanoseconds.
 *
 * Every timeout in altpath is measured on CLOCK_MONOTONIC, so that a change
 * of the wall clock never fires or stalls one.  Wall-clock time is used
 * only for what an operator reads ("last error at ...").
 */
#ifndef ALTPATH_CLOCK_H
#define ALTPATH_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t
ap_now_ns (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static inline int64_t
ap_unix_ms (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_REALTIME, &ts);
  return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A CLOCK_MONOTONIC deadline as a timespec, for pthread_cond_timedwait on
 * a condition variable created with pthread_condattr_setclock. */
static inline struct timespec
ap_ns_to_timespec (uint64_t ns)
{
  struct timespec ts = { .tv_sec = (time_t) (ns / 1000000000u),
                         .tv_nsec = (long) (ns % 1000000000u) };
  return ts;
}

#define AP_MS(x) ((uint64_t) (x) * 1000000u)
#define AP_US(x) ((uint64_t) (x) * 1000u)

#endif /* ALTPATH_CLOCK_H */
