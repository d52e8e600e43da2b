/* ap-bench.c — a load generator on one altpath unit, to compare with fio.
 *
 * It opens FILE as one direct path (O_DIRECT, io_uring), makes a unit of
 * it and keeps a fixed number of requests in flight through the unit's
 * asynchronous API: each completion callback accounts its request and
 * submits the next one from the same slot, so the queue depth stays full
 * without a submitting thread (what fio's io_uring engine does at
 * --iodepth=N with one job).
 *
 *   main ── submits QD slots once, sleeps, sets stop, waits for the drain
 *   done() ── on a library thread: latency into the histogram,
 *             next offset, ap_unit_submit() again (unless stopping)
 *
 * Only requests that complete inside the measured window (after --ramp)
 * count; latency is submit → completion callback, as fio's "lat" (not
 * "clat").  One JSON line goes to stdout; --kv prints key=value instead.
 *
 * --uri URI makes the one path a served path instead (libnbd to an NBD
 * server, e.g. altpathd serving the file): the unit over the served path
 * against fio's nbd engine on the same server.
 *
 * --breakdown also hooks the path's trace (ap_path_set_trace) and splits
 * each request's latency in three: caller → path (the unit's submit side),
 * path submit → path completion (io_uring, kernel, disk), path completion
 * → caller's callback (the unit's completion side).
 *
 *   ap-bench --file IMG --mode randread  [--bs 4k] [--qd 32] --seconds 10
 *   ap-bench --file IMG --mode seqwrite  [--bs 1M] [--qd 8]  --seconds 10
 *   ap-bench --uri nbd://127.0.0.1:10809/NAME --mode randwrite --seconds 5
 *
 * Exit status: 0 ok; 1 setup failed, a request failed, or the drain hung.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "altpath.h"
#include "clock.h"
#include "bench.h"

enum mode { RANDREAD, RANDWRITE, SEQREAD, SEQWRITE };
static const char *const mode_name[] = {
  "randread", "randwrite", "seqread", "seqwrite",
};

struct bench;

/* One request slot: the request, its buffer and its own random state. */
struct slot {
  struct ap_io io;
  struct bench *b;
  uint64_t submit_ns;           /* when the request was handed over */
  uint64_t path_submit_ns;      /* --breakdown: when it reached the path */
  uint64_t path_done_ns;        /* --breakdown: when the path completed it */
  uint64_t rng;
  struct slot *next;            /* on the thread's deferred list */
};

struct bench {
  struct ap_unit *unit;
  enum mode mode;
  uint64_t bs;
  uint64_t span;                /* bytes of the file used: a multiple of bs */
  uint64_t t_start, t_end;      /* the measured window, monotonic ns */

  _Atomic bool stop;            /* no more resubmission */
  _Atomic uint64_t next_seq;    /* sequential modes: next block number */
  _Atomic uint64_t ios;         /* completed inside the window */
  _Atomic uint64_t errors;
  _Atomic int first_err;
  _Atomic unsigned inflight;    /* slots not yet retired */

  pthread_mutex_t lock;         /* guards only the drain wait */
  pthread_cond_t drained;

  struct bench_hist hist;
  /* --breakdown: the three parts of hist (see the top). */
  struct bench_hist h_unit_in, h_path, h_unit_out;
};

/* A completion may come on the submitting thread, inside ap_unit_submit.
 * Resubmitting from there would recurse once per request, so a nested
 * completion only queues its slot and the outermost submitter on this
 * thread sends it (a trampoline). */
static _Thread_local unsigned submit_depth;
static _Thread_local struct slot *deferred;

static void retire (struct bench *b);
static void io_done (struct ap_io *io, int err);

static void
prepare (struct slot *s)
{
  struct bench *b = s->b;
  uint64_t nblocks = b->span / b->bs;
  uint64_t blk;

  if (b->mode == SEQREAD || b->mode == SEQWRITE)
    blk = atomic_fetch_add_explicit (&b->next_seq, 1, memory_order_relaxed)
      % nblocks;
  else
    blk = bench_rand (&s->rng) % nblocks;
  s->io.offset = blk * b->bs;
  s->io.length = b->bs;
  s->io.flags = 0;
  s->io.op = (b->mode == RANDREAD || b->mode == SEQREAD)
    ? AP_OP_READ : AP_OP_WRITE;
  s->io.done = io_done;
  s->io.opaque = s;
}

/* Send s, then whatever nested completions queued meanwhile. */
static void
send (struct slot *s)
{
  deferred = NULL;
  submit_depth++;
  while (s) {
    struct bench *b = s->b;
    prepare (s);
    s->path_submit_ns = s->path_done_ns = 0;
    s->submit_ns = ap_now_ns ();
    if (ap_unit_submit (b->unit, &s->io) == -1) {
      int expected = 0;
      atomic_compare_exchange_strong (&b->first_err, &expected,
                                      ap_get_errno () ? ap_get_errno () : EIO);
      if (atomic_fetch_add (&b->errors, 1) == 0)
        fprintf (stderr, "ap-bench: ap_unit_submit: %s\n", ap_get_error ());
      atomic_store (&b->stop, true);
      retire (b);
    }
    s = deferred;
    if (s)
      deferred = s->next;
  }
  submit_depth--;
}

static void
retire (struct bench *b)
{
  if (atomic_fetch_sub (&b->inflight, 1) == 1) {
    pthread_mutex_lock (&b->lock);
    pthread_cond_broadcast (&b->drained);
    pthread_mutex_unlock (&b->lock);
  }
}

static void
io_done (struct ap_io *io, int err)
{
  struct slot *s = io->opaque;
  struct bench *b = s->b;
  uint64_t now = ap_now_ns ();

  if (err) {
    int expected = 0;
    atomic_compare_exchange_strong (&b->first_err, &expected, -err);
    if (atomic_fetch_add (&b->errors, 1) == 0)
      fprintf (stderr, "ap-bench: %s at offset %" PRIu64 " failed: %s\n",
               io->op == AP_OP_READ ? "read" : "write", io->offset,
               strerror (-err));
    /* A benchmark on a healthy file has no business seeing errors. */
    atomic_store (&b->stop, true);
  }
  else if (now >= b->t_start && now < b->t_end) {
    bh_add (&b->hist, now - s->submit_ns);
    if (s->path_done_ns) {
      bh_add (&b->h_unit_in, s->path_submit_ns - s->submit_ns);
      bh_add (&b->h_path, s->path_done_ns - s->path_submit_ns);
      bh_add (&b->h_unit_out, now - s->path_done_ns);
    }
    atomic_fetch_add_explicit (&b->ios, 1, memory_order_relaxed);
  }

  if (atomic_load_explicit (&b->stop, memory_order_relaxed)) {
    retire (b);
    return;
  }
  if (submit_depth > 0) {       /* nested inside ap_unit_submit */
    s->next = deferred;
    deferred = s;
    return;
  }
  send (s);
}

/* --breakdown: the path's trace hook.  Every request but the unit's probes
 * is one of our slots (struct ap_io first in struct slot). */
static void
trace (void *opaque, struct ap_path *path, enum ap_trace_point point,
       const struct ap_io *io, bool probe, int err)
{
  if (probe || io->done != io_done)
    return;
  struct slot *s = (struct slot *) io;
  if (point == AP_TRACE_SUBMIT)
    s->path_submit_ns = ap_now_ns ();
  else
    s->path_done_ns = ap_now_ns ();
}

static void
print_breakdown (struct bench *b)
{
  static const char *const name[] = { "unit submit", "path", "unit done" };
  struct bench_hist *h[] = { &b->h_unit_in, &b->h_path, &b->h_unit_out };
  fprintf (stderr, "ap-bench: latency breakdown (µs)       mean      p50      "
           "p99\n");
  for (int i = 0; i < 3; i++)
    fprintf (stderr, "ap-bench:   %-24s %8.1f %8.1f %8.1f\n", name[i],
             bh_mean_us (h[i]), bh_percentile_us (h[i], 0.50),
             bh_percentile_us (h[i], 0.99));
}

static void
usage (FILE *f)
{
  fprintf (f,
"usage: ap-bench --file FILE | --uri URI\n"
"                [--mode randread|randwrite|seqread|seqwrite]\n"
"                [--bs SIZE] [--qd N] [--seconds S] [--ramp S] [--size SIZE]\n"
"                [--kv] [--breakdown]\n"
"  --file FILE    file or block device, opened with O_DIRECT (must exist):\n"
"                 the unit's one path is a direct path\n"
"  --uri URI      an NBD URI with the export name (nbd://HOST:PORT/NAME,\n"
"                 nbd+unix:///NAME?socket=PATH): the unit's one path is a\n"
"                 served path (libnbd) to that server\n"
"  --connections N  the served path's connections when the server offers\n"
"                 multi-conn (default: the library's, 2)\n"
"  --mode M       default randread\n"
"  --bs SIZE      block size; default 4k for rand*, 1M for seq*\n"
"  --qd N         requests kept in flight; default 32 for rand*, 8 for seq*\n"
"  --seconds S    measured time (default 10; fractions allowed)\n"
"  --ramp S       run this long before measuring (default 0)\n"
"  --size SIZE    use only the first SIZE bytes (default: the whole file)\n"
"  --kv           print key=value pairs instead of one JSON object\n"
"  --breakdown    also split the latency into unit and path parts (on\n"
"                 stderr; costs two clock reads per request)\n");
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "file", required_argument, NULL, 'f' },
    { "uri", required_argument, NULL, 'u' },
    { "connections", required_argument, NULL, 'c' },
    { "mode", required_argument, NULL, 'm' },
    { "bs", required_argument, NULL, 'b' },
    { "qd", required_argument, NULL, 'q' },
    { "seconds", required_argument, NULL, 's' },
    { "ramp", required_argument, NULL, 'r' },
    { "size", required_argument, NULL, 'z' },
    { "kv", no_argument, NULL, 'k' },
    { "breakdown", no_argument, NULL, 'B' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *file = NULL, *uri = NULL;
  unsigned connections = 0;
  enum mode mode = RANDREAD;
  uint64_t bs = 0, size = 0;
  unsigned qd = 0;
  double seconds = 10, ramp = 0;
  bool kv = false, breakdown = false;
  int c;

  while ((c = getopt_long (argc, argv, "f:u:c:m:b:q:s:r:z:kBh", longopts,
                           NULL)) != -1) {
    switch (c) {
    case 'f': file = optarg; break;
    case 'u': uri = optarg; break;
    case 'c':
      connections = (unsigned) atoi (optarg);
      if (connections == 0) {
        fprintf (stderr, "ap-bench: bad --connections %s (a number from "
                 "1)\n", optarg);
        return 1;
      }
      break;
    case 'm': {
      unsigned i;
      for (i = 0; i < 4; i++)
        if (strcmp (optarg, mode_name[i]) == 0)
          break;
      if (i == 4) {
        fprintf (stderr, "ap-bench: unknown --mode %s\n", optarg);
        return 1;
      }
      mode = (enum mode) i;
      break;
    }
    case 'b':
      if (bench_parse_size (optarg, &bs) == -1 || bs == 0) {
        fprintf (stderr, "ap-bench: bad --bs %s\n", optarg);
        return 1;
      }
      break;
    case 'q': qd = (unsigned) atoi (optarg); break;
    case 's': seconds = atof (optarg); break;
    case 'r': ramp = atof (optarg); break;
    case 'z':
      if (bench_parse_size (optarg, &size) == -1) {
        fprintf (stderr, "ap-bench: bad --size %s\n", optarg);
        return 1;
      }
      break;
    case 'k': kv = true; break;
    case 'B': breakdown = true; break;
    case 'h': usage (stdout); return 0;
    default: usage (stderr); return 1;
    }
  }
  if (!file == !uri) {
    fprintf (stderr, "ap-bench: give exactly one of --file FILE and --uri "
             "URI\n");
    usage (stderr);
    return 1;
  }
  if (optind != argc || seconds <= 0 || ramp < 0) {
    usage (stderr);
    return 1;
  }
  bool seq = mode == SEQREAD || mode == SEQWRITE;
  if (bs == 0)
    bs = seq ? 1024 * 1024 : 4096;
  if (qd == 0)
    qd = seq ? 8 : 32;

  /* One path, one unit: a direct path to the file, or a served path to
   * the NBD server. */
  struct ap_path *path;
  if (file) {
    struct ap_direct_options dopt = {
      .name = "bench-direct",
      .read_only = mode == RANDREAD || mode == SEQREAD,
      /* Leave room beside the bench's own requests for the unit's
       * probes. */
      .queue_depth = qd > 64 ? 2 * qd : 0,
    };
    path = ap_path_open_direct (file, &dopt);
  } else {
    struct ap_served_options sopt = {
      .name = "bench-served",
      .uri = uri,
      .connections = connections,
    };
    path = ap_path_open_served (&sopt);
  }
  if (!path) {
    fprintf (stderr, "ap-bench: %s\n", ap_get_error ());
    return 1;
  }
  if (breakdown)
    ap_path_set_trace (path, trace, NULL);
  struct ap_unit_options uopt;
  ap_unit_options_init (&uopt);
  uopt.name = "bench";
  struct ap_unit *unit = ap_unit_create (&uopt, &path, 1);
  if (!unit) {
    fprintf (stderr, "ap-bench: %s\n", ap_get_error ());
    return 1;
  }

  uint64_t usize = ap_unit_size (unit);
  uint32_t lbs = ap_unit_block_size (unit);
  if (size == 0 || size > usize)
    size = usize;
  if (lbs == 0 || bs % lbs != 0 || size < bs) {
    fprintf (stderr, "ap-bench: --bs %" PRIu64 " must be a multiple of the "
             "unit's block size %" PRIu32 " and at most the size %" PRIu64
             "\n", bs, lbs, size);
    ap_unit_close (unit);
    return 1;
  }

  struct bench *b = calloc (1, sizeof *b);
  struct slot *slots = calloc (qd, sizeof *slots);
  if (!b || !slots) {
    perror ("ap-bench: calloc");
    return 1;
  }
  b->unit = unit;
  b->mode = mode;
  b->bs = bs;
  b->span = size / bs * bs;
  pthread_mutex_init (&b->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&b->drained, &ca);

  uint64_t seed = ap_now_ns () ^ ((uint64_t) getpid () << 32);
  for (unsigned i = 0; i < qd; i++) {
    void *buf;
    size_t align = lbs > 4096 ? lbs : 4096;
    if (posix_memalign (&buf, align, bs) != 0) {
      perror ("ap-bench: posix_memalign");
      return 1;
    }
    /* Written data is not all zeroes (a zero page could be cheaper
     * somewhere on the way); read buffers are faulted in up front. */
    for (uint64_t j = 0; j < bs; j += 8) {
      uint64_t v = bench_rand (&seed) | 1;
      memcpy ((char *) buf + j, &v, 8);
    }
    slots[i].io.buf = buf;
    slots[i].b = b;
    slots[i].rng = bench_rand (&seed) | 1;
  }

  uint64_t t0 = ap_now_ns ();
  b->t_start = t0 + (uint64_t) (ramp * 1e9);
  b->t_end = b->t_start + (uint64_t) (seconds * 1e9);
  atomic_store (&b->inflight, qd);
  for (unsigned i = 0; i < qd; i++)
    send (&slots[i]);

  bench_sleep_until (b->t_end);
  atomic_store (&b->stop, true);

  /* Drain: every slot retires on its next completion. */
  int rc = 0;
  uint64_t drain_deadline = ap_now_ns () + AP_MS (30000);
  struct timespec dl = ap_ns_to_timespec (drain_deadline);
  pthread_mutex_lock (&b->lock);
  while (atomic_load (&b->inflight) > 0)
    if (pthread_cond_timedwait (&b->drained, &b->lock, &dl) == ETIMEDOUT)
      break;
  pthread_mutex_unlock (&b->lock);
  unsigned left = atomic_load (&b->inflight);
  if (left > 0) {
    fprintf (stderr, "ap-bench: %u requests still outstanding 30 s after "
             "the end of the run; the unit did not complete them\n", left);
    rc = 1;
  }

  struct ap_unit_status st;
  bool have_st = ap_unit_get_status (unit, &st) == 0;

  uint64_t ios = atomic_load (&b->ios);
  uint64_t errors = atomic_load (&b->errors);
  double secs = (double) (b->t_end - b->t_start) / 1e9;
  double iops = (double) ios / secs;
  double mbs = (double) ios * (double) bs / secs / 1e6;

  if (kv)
    printf ("tool=ap-bench mode=%s bs=%" PRIu64 " qd=%u seconds=%.3f "
            "ios=%" PRIu64 " iops=%.0f mb_s=%.1f lat_mean_us=%.1f "
            "lat_p50_us=%.1f lat_p99_us=%.1f lat_max_us=%.1f "
            "errors=%" PRIu64 " unit_p50_us=%" PRIu64 " unit_p99_us=%"
            PRIu64 "\n",
            mode_name[mode], bs, qd, secs, ios, iops, mbs,
            bh_mean_us (&b->hist), bh_percentile_us (&b->hist, 0.50),
            bh_percentile_us (&b->hist, 0.99),
            (double) atomic_load (&b->hist.max_ns) / 1000.0, errors,
            have_st ? st.p50_us : 0, have_st ? st.p99_us : 0);
  else
    printf ("{\"tool\":\"ap-bench\",\"mode\":\"%s\",\"bs\":%" PRIu64
            ",\"qd\":%u,\"seconds\":%.3f,\"ios\":%" PRIu64
            ",\"iops\":%.0f,\"mb_s\":%.1f,\"lat_mean_us\":%.1f"
            ",\"lat_p50_us\":%.1f,\"lat_p99_us\":%.1f,\"lat_max_us\":%.1f"
            ",\"errors\":%" PRIu64 ",\"unit_p50_us\":%" PRIu64
            ",\"unit_p99_us\":%" PRIu64 "}\n",
            mode_name[mode], bs, qd, secs, ios, iops, mbs,
            bh_mean_us (&b->hist), bh_percentile_us (&b->hist, 0.50),
            bh_percentile_us (&b->hist, 0.99),
            (double) atomic_load (&b->hist.max_ns) / 1000.0, errors,
            have_st ? st.p50_us : 0, have_st ? st.p99_us : 0);
  fflush (stdout);
  if (breakdown)
    print_breakdown (b);

  if (errors) {
    int e = atomic_load (&b->first_err);
    fprintf (stderr, "ap-bench: %" PRIu64 " request(s) failed (first: %s)\n",
             errors, strerror (e));
    rc = 1;
  }
  if (left > 0) {
    /* Closing would wait for requests that may never come back, and the
     * slots they point to must stay allocated: leave without closing. */
    return rc;
  }
  if (ap_unit_close (unit) == -1) {
    fprintf (stderr, "ap-bench: closing the unit: %s\n", ap_get_error ());
    rc = 1;
  }
  for (unsigned i = 0; i < qd; i++)
    free (slots[i].io.buf);
  free (slots);
  pthread_cond_destroy (&b->drained);
  pthread_mutex_destroy (&b->lock);
  free (b);
  return rc;
}
