/* counters.c — per path and per unit operation counts and the latency
 * histogram behind p50/p99.  Callers hold the lock that protects the
 * counters (the unit's). */
#include "internal.h"

static unsigned
bucket_of (uint64_t us)
{
  unsigned b = 0;
  while (b < AP_LAT_BUCKETS - 1 && us >= (1ull << b))
    b++;
  return b;
}

void
ap_counters_account (struct ap_counters *c, const struct ap_io *io,
                     uint64_t latency_ns, int err)
{
  if (err) {
    c->errors++;
    return;
  }
  switch (io->op) {
  case AP_OP_READ:
    c->reads++;
    c->bytes_read += io->length;
    break;
  case AP_OP_WRITE:
    c->writes++;
    c->bytes_written += io->length;
    break;
  case AP_OP_FLUSH:
    c->flushes++;
    break;
  case AP_OP_TRIM:
    c->trims++;
    break;
  case AP_OP_WRITE_ZEROES:
    c->zeroes++;
    break;
  }
  c->latency[bucket_of (latency_ns / 1000)]++;
}

/* Bucket b holds latencies in [2^(b-1), 2^b) µs; report its upper edge,
 * so a figure is never better than what was measured. */
uint64_t
ap_counters_percentile (const struct ap_counters *c, double q)
{
  uint64_t total = 0, seen = 0;
  for (unsigned b = 0; b < AP_LAT_BUCKETS; b++)
    total += c->latency[b];
  if (total == 0)
    return 0;
  uint64_t want = (uint64_t) (q * (double) total);
  if (want >= total)
    want = total - 1;
  for (unsigned b = 0; b < AP_LAT_BUCKETS; b++) {
    seen += c->latency[b];
    if (seen > want)
      return 1ull << b;
  }
  return 1ull << (AP_LAT_BUCKETS - 1);
}
