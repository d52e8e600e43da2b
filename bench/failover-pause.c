/* failover-pause.c — how long the caller's I/O stops when the active path
 * fails, measured from outside the library.
 *
 * A unit gets two direct paths to the same image, each wrapped in the
 * fault-injecting path (ap_path_fault_wrap), and carries steady 4 KiB
 * random reads at a fixed queue depth, kept full from the completion
 * callbacks.  After a warm-up the active path is made to fail:
 *
 *   eio   every request sent to it from now on completes with EIO;
 *   hang  every request sent to it from now on is held, never completed,
 *         so only the unit's request timeout (--timeout-ms) can notice.
 *
 *   completions ─┬──┬──┬──┬──┬───────────────────┬──┬──┬──┬─ time
 *                          ▲ fault     pause     ▲ first completion after
 *                          (active path)           the switch
 *
 * Every completion the caller sees is logged (a timestamp in an array
 * sized up front); the figures are worked out afterwards.  Per run, all
 * on CLOCK_MONOTONIC:
 *   pause        the longest gap between two consecutive completions seen
 *                by the caller from the fault until the caller's first
 *                completion after the other path has served a request (the
 *                gap that spans the fault counts; if the other path never
 *                serves one, the gap runs to the end of the run): the stall
 *                the failover causes;
 *   max after    the longest gap anywhere in the time after the fault, for
 *                comparison: the disk's own hiccups show up here too;
 *   baseline     the longest gap in the half of the warm-up before the
 *                fault (what steady state looks like on this machine);
 *   to other     fault → first successful request on the other path (its
 *                completion as the path trace hook sees it);
 *   to switch    fault → the unit's SWITCH event;
 *   errors       requests that completed with an error for the caller
 *                (the unit should hide the path failure: expect 0);
 *   overlap      requests sent to one path while requests of the caller
 *                were still in flight on the other (seen by the trace
 *                hook).  With --rw write this is DESIGN.md invariant 1
 *                and must be 0; with reads it still shows whether the
 *                unit drained before switching.
 *
 * Each scenario runs --reps times on a fresh unit; the summary gives the
 * median, minimum and maximum, beside the goal (eio: pause < 50 ms; hang:
 * pause < request timeout + 50 ms).  The output is Markdown so that
 * bench/run.sh can paste it into its report.
 *
 * Exit status: 0 whatever the figures (a benchmark reports, it does not
 * fail CI); 1 if setup failed or requests never completed (a hang).
 */
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "altpath.h"
#include "clock.h"
#include "bench.h"

#define MAX_REPS 100
/* Completion timestamps logged per run: 128 MiB of address space, touched
 * only as far as used (a million completions a second for 16 s). */
#define MAX_STAMPS (16u << 20)

struct run;

struct slot {
  struct ap_io io;
  struct run *r;
  uint64_t rng;
  struct slot *next;            /* on the thread's deferred list */
};

/* One repetition of one scenario. */
struct run {
  struct ap_unit *unit;
  struct ap_path *fp[2];        /* the two fault wrappers the unit owns */
  uint64_t bs, span;
  enum ap_op op;
  int active;                   /* index in fp of the path we fail */

  uint64_t *stamps;             /* when each caller completion came */
  _Atomic uint64_t nstamps;     /* may pass MAX_STAMPS: then truncated */
  _Atomic uint64_t fault_ns;    /* 0 until the fault is injected */
  _Atomic uint64_t first_other; /* first good completion on the other path */
  _Atomic uint64_t switch_ns;   /* first SWITCH event after the fault */
  _Atomic uint64_t switches_early; /* SWITCH events before the fault */
  _Atomic uint64_t errors;      /* failed for the caller */
  _Atomic int first_err;
  _Atomic int path_inflight[2]; /* caller requests on each path (trace) */
  _Atomic uint64_t path_failed[2]; /* path completions with an error */
  _Atomic uint64_t overlap;
  char switch_to[AP_NAME_MAX];  /* written by the event thread only */

  _Atomic bool stop;
  _Atomic unsigned inflight;    /* slots not yet retired */
  pthread_mutex_t lock;         /* guards only the drain wait */
  pthread_cond_t drained;
};

struct result {
  double pause_ms;              /* the failover's stall */
  double pause_at_ms;           /* when it began, from the fault */
  double max_after_ms, baseline_ms, to_other_ms, to_switch_ms, close_ms;
  uint64_t errors, overlap, failed_on_path;
  char active_before[AP_NAME_MAX], active_after[AP_NAME_MAX];
};

/* See ap-bench.c: a completion nested inside ap_unit_submit on the same
 * thread is queued and sent by the outermost submitter. */
static _Thread_local unsigned submit_depth;
static _Thread_local struct slot *deferred;

static void io_done (struct ap_io *io, int err);

static void
retire (struct run *r)
{
  if (atomic_fetch_sub (&r->inflight, 1) == 1) {
    pthread_mutex_lock (&r->lock);
    pthread_cond_broadcast (&r->drained);
    pthread_mutex_unlock (&r->lock);
  }
}

static void
send (struct slot *s)
{
  deferred = NULL;
  submit_depth++;
  while (s) {
    struct run *r = s->r;
    s->io.op = r->op;
    s->io.flags = 0;
    s->io.offset = bench_rand (&s->rng) % (r->span / r->bs) * r->bs;
    s->io.length = r->bs;
    s->io.done = io_done;
    s->io.opaque = s;
    if (ap_unit_submit (r->unit, &s->io) == -1) {
      int expected = 0;
      atomic_compare_exchange_strong (&r->first_err, &expected,
                                      ap_get_errno () ? ap_get_errno () : EIO);
      if (atomic_fetch_add (&r->errors, 1) == 0)
        fprintf (stderr, "failover-pause: ap_unit_submit refused: %s\n",
                 ap_get_error ());
      retire (r);
    }
    s = deferred;
    if (s)
      deferred = s->next;
  }
  submit_depth--;
}

static void
io_done (struct ap_io *io, int err)
{
  struct slot *s = io->opaque;
  struct run *r = s->r;
  uint64_t now = ap_now_ns ();

  uint64_t n = atomic_fetch_add_explicit (&r->nstamps, 1,
                                         memory_order_relaxed);
  if (n < MAX_STAMPS)
    r->stamps[n] = now;
  if (err) {
    int expected = 0;
    atomic_compare_exchange_strong (&r->first_err, &expected, -err);
    atomic_fetch_add (&r->errors, 1);
  }
  if (atomic_load_explicit (&r->stop, memory_order_relaxed)) {
    retire (r);
    return;
  }
  if (submit_depth > 0) {
    s->next = deferred;
    deferred = s;
    return;
  }
  send (s);
}

/* The trace hook on both fault wrappers: what the unit sends to each path
 * and what comes back, before the unit acts on it. */
static void
trace (void *opaque, struct ap_path *path, enum ap_trace_point point,
       const struct ap_io *io, bool probe, int err)
{
  struct run *r = opaque;
  (void) io;
  if (probe)
    return;
  int i = path == r->fp[0] ? 0 : 1;
  if (point == AP_TRACE_SUBMIT) {
    atomic_fetch_add (&r->path_inflight[i], 1);
    if (atomic_load (&r->path_inflight[1 - i]) > 0)
      atomic_fetch_add (&r->overlap, 1);
    return;
  }
  atomic_fetch_sub (&r->path_inflight[i], 1);
  if (err) {
    atomic_fetch_add (&r->path_failed[i], 1);
    return;
  }
  uint64_t fault = atomic_load (&r->fault_ns);
  if (fault && i != r->active) {
    uint64_t zero = 0, now = ap_now_ns ();
    atomic_compare_exchange_strong (&r->first_other, &zero, now);
  }
}

static void
on_event (void *opaque, const struct ap_event *ev)
{
  struct run *r = opaque;
  if (ev->type != AP_EVENT_SWITCH)
    return;
  if (atomic_load (&r->fault_ns) == 0) {
    atomic_fetch_add (&r->switches_early, 1);
    return;
  }
  uint64_t zero = 0;
  if (atomic_compare_exchange_strong (&r->switch_ns, &zero, ev->mono_ns))
    snprintf (r->switch_to, sizeof r->switch_to, "%s",
              ev->path ? ev->path : "?");
}

/* The name of the unit's active path, or "" if it has none. */
static void
active_name (struct ap_unit *u, char *out, size_t n)
{
  struct ap_unit_status st;
  out[0] = '\0';
  if (ap_unit_get_status (u, &st) == -1)
    return;
  for (unsigned i = 0; i < st.npaths && i < AP_MAX_PATHS; i++)
    if (st.paths[i].active)
      snprintf (out, n, "%s", st.paths[i].name);
}

struct config {
  const char *file;
  uint64_t size, bs;
  unsigned qd, reps;
  unsigned warmup_ms, after_ms, timeout_ms;
  bool write;                   /* random writes instead of reads */
};

static double
ms (uint64_t ns)
{
  return (double) ns / 1e6;
}

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return (x > y) - (x < y);
}

/* The gaps in the completion log of a finished run (see the top). */
static void
analyse (struct run *r, uint64_t warm, uint64_t fault, uint64_t stop,
         struct result *res)
{
  uint64_t n = atomic_load (&r->nstamps);
  if (n > MAX_STAMPS) {
    fprintf (stderr, "failover-pause: the completion log is full; figures "
             "cover the first %u completions only\n", MAX_STAMPS);
    n = MAX_STAMPS;
  }
  /* Callbacks on several threads log slightly out of order. */
  qsort (r->stamps, n, sizeof *r->stamps, cmp_u64);
  /* What completed during the drain after the stop does not count. */
  while (n > 0 && r->stamps[n - 1] > stop)
    n--;

  /* The failover is over at the caller's first completion once the other
   * path has served a request (the trace sees that just before). */
  uint64_t other = atomic_load (&r->first_other);
  uint64_t recovered = UINT64_MAX;
  if (other)
    for (uint64_t i = 0; i < n; i++)
      if (r->stamps[i] >= other) {
        recovered = r->stamps[i];
        break;
      }

  uint64_t base = 0, pause = 0, pause_from = fault, after = 0;
  for (uint64_t i = 1; i < n; i++) {
    uint64_t a = r->stamps[i - 1], b = r->stamps[i], gap = b - a;
    if (a >= warm && b < fault && gap > base)
      base = gap;
    if (b >= fault && gap > after)
      after = gap;
    if (b >= fault && b <= recovered && gap > pause) {
      pause = gap;
      pause_from = a;
    }
  }
  /* Completions that stopped for good leave a gap open until the stop. */
  uint64_t last = n ? r->stamps[n - 1] : 0;
  if (last < fault)
    last = fault;
  if (recovered == UINT64_MAX && stop - last > pause) {
    pause = stop - last;
    pause_from = last;
  }
  if (stop - last > after)
    after = stop - last;

  res->pause_ms = ms (pause);
  res->pause_at_ms = ((double) pause_from - (double) fault) / 1e6;
  res->max_after_ms = ms (after);
  res->baseline_ms = ms (base);
}

/* One repetition.  0: figures in *res; -1: setup failed; -2: requests
 * never came back (the unit is left open, its memory leaked). */
static int
run_once (const struct config *cf, enum ap_fault_mode mode,
          struct result *res)
{
  memset (res, 0, sizeof *res);
  struct run *r = calloc (1, sizeof *r);
  struct slot *slots = calloc (cf->qd, sizeof *slots);
  if (r)
    r->stamps = malloc (MAX_STAMPS * sizeof *r->stamps);
  if (!r || !slots || !r->stamps) {
    perror ("failover-pause: calloc");
    return -1;
  }
  pthread_mutex_init (&r->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&r->drained, &ca);

  static const char *const inner_name[2] = { "direct-a", "direct-b" };
  static const char *const wrap_name[2] = { "fault-a", "fault-b" };
  for (int i = 0; i < 2; i++) {
    struct ap_direct_options dopt = { .name = inner_name[i],
                                      .read_only = !cf->write };
    struct ap_path *p = ap_path_open_direct (cf->file, &dopt);
    if (p)
      p = ap_path_fault_wrap (p, wrap_name[i]);
    if (!p) {
      fprintf (stderr, "failover-pause: %s\n", ap_get_error ());
      if (i == 1)
        ap_path_close (r->fp[0]);
      return -1;
    }
    r->fp[i] = p;
    ap_path_set_trace (p, trace, r);
  }

  struct ap_unit_options uopt;
  ap_unit_options_init (&uopt);
  uopt.name = "bench-failover";
  uopt.no_failback = true;      /* one failover per run, nothing more */
  if (mode == AP_FAULT_HANG)
    uopt.request_timeout_ms = cf->timeout_ms;
  r->unit = ap_unit_create (&uopt, r->fp, 2);
  if (!r->unit) {
    fprintf (stderr, "failover-pause: %s\n", ap_get_error ());
    return -1;
  }
  ap_unit_set_event_cb (r->unit, on_event, r);

  uint64_t size = ap_unit_size (r->unit);
  if (cf->size && cf->size < size)
    size = cf->size;
  r->bs = cf->bs;
  r->op = cf->write ? AP_OP_WRITE : AP_OP_READ;
  r->span = size / r->bs * r->bs;
  if (r->span == 0 || r->bs % ap_unit_block_size (r->unit) != 0) {
    fprintf (stderr, "failover-pause: block size %" PRIu64 " does not fit "
             "the unit (size %" PRIu64 ", logical block %" PRIu32 ")\n",
             r->bs, size, ap_unit_block_size (r->unit));
    return -1;
  }

  uint64_t seed = ap_now_ns () ^ ((uint64_t) getpid () << 32);
  for (unsigned i = 0; i < cf->qd; i++) {
    if (posix_memalign (&slots[i].io.buf, 4096, r->bs) != 0) {
      perror ("failover-pause: posix_memalign");
      return -1;
    }
    memset (slots[i].io.buf, 0xa5, r->bs);
    slots[i].r = r;
    slots[i].rng = bench_rand (&seed) | 1;
  }

  /* Warm up, find the active path, fail it, keep going. */
  uint64_t t0 = ap_now_ns ();
  atomic_store (&r->inflight, cf->qd);
  for (unsigned i = 0; i < cf->qd; i++)
    send (&slots[i]);
  bench_sleep_until (t0 + AP_MS (cf->warmup_ms));

  active_name (r->unit, res->active_before, sizeof res->active_before);
  r->active = strcmp (res->active_before, ap_path_name (r->fp[1])) == 0;
  if (res->active_before[0] == '\0')
    fprintf (stderr, "failover-pause: the unit reports no active path after "
             "the warm-up; failing %s\n", ap_path_name (r->fp[0]));
  uint64_t fault = ap_now_ns ();
  atomic_store (&r->fault_ns, fault);
  if (ap_fault_set (r->fp[r->active], mode, -EIO, 0) == -1) {
    fprintf (stderr, "failover-pause: ap_fault_set: %s\n", ap_get_error ());
    return -1;
  }
  bench_sleep_until (fault + AP_MS (cf->after_ms));

  uint64_t t_stop = ap_now_ns ();
  atomic_store (&r->stop, true);

  struct timespec dl = ap_ns_to_timespec (ap_now_ns () + AP_MS (30000));
  pthread_mutex_lock (&r->lock);
  while (atomic_load (&r->inflight) > 0)
    if (pthread_cond_timedwait (&r->drained, &r->lock, &dl) == ETIMEDOUT)
      break;
  pthread_mutex_unlock (&r->lock);
  unsigned left = atomic_load (&r->inflight);
  if (left > 0) {
    fprintf (stderr, "failover-pause: %u of %u requests never completed "
             "(30 s after the end of the run, %s fault on %s)\n",
             left, cf->qd, mode == AP_FAULT_HANG ? "hang" : "error",
             ap_path_name (r->fp[r->active]));
    return -2;
  }

  active_name (r->unit, res->active_after, sizeof res->active_after);

  analyse (r, t0 + AP_MS (cf->warmup_ms) / 2, fault, t_stop, res);
  uint64_t other = atomic_load (&r->first_other);
  uint64_t sw = atomic_load (&r->switch_ns);
  res->to_other_ms = other ? ms (other - fault) : -1;
  res->to_switch_ms = sw ? ms (sw > fault ? sw - fault : 0) : -1;
  res->errors = atomic_load (&r->errors);
  res->overlap = atomic_load (&r->overlap);
  res->failed_on_path = atomic_load (&r->path_failed[r->active]);
  if (atomic_load (&r->switches_early))
    fprintf (stderr, "failover-pause: the unit switched paths %" PRIu64
             " time(s) before the fault\n", atomic_load (&r->switches_early));
  if (res->errors)
    fprintf (stderr, "failover-pause: %" PRIu64 " request(s) failed for the "
             "caller (first: %s)\n", res->errors,
             strerror (atomic_load (&r->first_err)));

  /* Heal the failed path so that closing does not wait on held probes,
   * then close and time it. */
  ap_fault_set (r->fp[r->active], AP_FAULT_NONE, 0, 0);
  uint64_t c0 = ap_now_ns ();
  if (ap_unit_close (r->unit) == -1)
    fprintf (stderr, "failover-pause: closing the unit: %s\n",
             ap_get_error ());
  res->close_ms = ms (ap_now_ns () - c0);

  for (unsigned i = 0; i < cf->qd; i++)
    free (slots[i].io.buf);
  free (slots);
  pthread_cond_destroy (&r->drained);
  pthread_mutex_destroy (&r->lock);
  free (r->stamps);
  free (r);
  return 0;
}

static void
print_ms (double v)
{
  if (v < 0)
    printf (" never |");
  else
    printf (" %.1f |", v);
}

/* Run one scenario cf->reps times and print its section. */
static int
scenario (const struct config *cf, enum ap_fault_mode mode)
{
  bool hang = mode == AP_FAULT_HANG;
  double goal = hang ? cf->timeout_ms + 50.0 : 50.0;
  struct config c = *cf;
  if (hang)
    c.after_ms += cf->timeout_ms;

  printf ("### %s on the active path, random %s\n\n",
          hang ? "Hang (requests never complete)" : "EIO",
          c.write ? "writes" : "reads");
  char tmo[64];
  if (hang)
    snprintf (tmo, sizeof tmo, "%u ms", cf->timeout_ms);
  else
    snprintf (tmo, sizeof tmo, "the default (5000 ms)");
  printf ("%" PRIu64 "-byte random %s, QD %u, %u ms warm-up, %u ms after "
          "the fault; request timeout %s; goal: pause < %.0f ms.\n\n",
          c.bs, c.write ? "writes" : "reads", c.qd, c.warmup_ms, c.after_ms,
          tmo, goal);
  printf ("| run | pause ms | pause began ms | max gap after ms "
          "| baseline gap ms | fault→other path ms | fault→SWITCH ms "
          "| caller errors | failed on path | overlap | close ms "
          "| active before → after |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  fflush (stdout);

  double pause[MAX_REPS], after[MAX_REPS], base[MAX_REPS], other[MAX_REPS],
    sw[MAX_REPS];
  size_t n = 0, nother = 0, nsw = 0;
  uint64_t errors = 0, overlap = 0;
  for (unsigned i = 0; i < c.reps; i++) {
    struct result res;
    int rc = run_once (&c, mode, &res);
    if (rc < 0)
      return rc;
    printf ("| %u |", i + 1);
    print_ms (res.pause_ms);
    printf (" %+.1f |", res.pause_at_ms);
    print_ms (res.max_after_ms);
    print_ms (res.baseline_ms);
    print_ms (res.to_other_ms);
    print_ms (res.to_switch_ms);
    printf (" %" PRIu64 " | %" PRIu64 " | %" PRIu64 " |", res.errors,
            res.failed_on_path, res.overlap);
    print_ms (res.close_ms);
    printf (" %s → %s |\n", res.active_before[0] ? res.active_before : "?",
            res.active_after[0] ? res.active_after : "none");
    fflush (stdout);
    pause[n] = res.pause_ms;
    after[n] = res.max_after_ms;
    base[n] = res.baseline_ms;
    n++;
    if (res.to_other_ms >= 0)
      other[nother++] = res.to_other_ms;
    if (res.to_switch_ms >= 0)
      sw[nsw++] = res.to_switch_ms;
    errors += res.errors;
    overlap += res.overlap;
  }

  double pmed, pmin, pmax, amed, amin, amax, bmed, bmin, bmax, omed, omin,
    omax, smed, smin, smax;
  bench_stats (pause, n, &pmed, &pmin, &pmax);
  bench_stats (after, n, &amed, &amin, &amax);
  bench_stats (base, n, &bmed, &bmin, &bmax);
  bench_stats (other, nother, &omed, &omin, &omax);
  bench_stats (sw, nsw, &smed, &smin, &smax);
  printf ("\n| %s | median | min | max |\n|---|---|---|---|\n",
          hang ? "hang" : "eio");
  printf ("| pause ms (goal < %.0f) | %.1f | %.1f | %.1f |\n", goal, pmed,
          pmin, pmax);
  printf ("| max gap after the fault ms | %.1f | %.1f | %.1f |\n", amed,
          amin, amax);
  printf ("| baseline gap ms | %.1f | %.1f | %.1f |\n", bmed, bmin, bmax);
  if (nother)
    printf ("| fault → first completion on other path ms | %.1f | %.1f "
            "| %.1f |\n", omed, omin, omax);
  if (nsw)
    printf ("| fault → SWITCH event ms | %.1f | %.1f | %.1f |\n", smed, smin,
            smax);
  printf ("\nGoal %s: median pause %.1f ms %s %.0f ms (worst %.1f ms, "
          "%zu of %zu runs switched to the other path); "
          "caller errors: %" PRIu64 ".\n\n",
          pmed < goal ? "met" : "MISSED", pmed, pmed < goal ? "<" : "≥",
          goal, pmax, nother, n, errors);
  /* One line for scripts. */
  printf ("<!-- scenario=%s rw=%s reps=%zu pause_ms_median=%.1f pause_ms_min=%.1f "
          "pause_ms_max=%.1f goal_ms=%.0f met=%s to_other_ms_median=%.1f "
          "caller_errors=%" PRIu64 " overlap=%" PRIu64 " -->\n\n",
          hang ? "hang" : "eio", c.write ? "write" : "read", n, pmed, pmin,
          pmax, goal,
          pmed < goal ? "yes" : "no", nother ? omed : -1.0, errors, overlap);
  fflush (stdout);
  return 0;
}

/* No --file: a scratch image in /tmp, filled so reads hit real blocks. */
static char *
make_scratch (uint64_t size)
{
  static char name[] = "/tmp/failover-pause.XXXXXX";
  int fd = mkstemp (name);
  if (fd == -1) {
    perror ("failover-pause: mkstemp");
    return NULL;
  }
  char *buf = malloc (1 << 20);
  if (!buf) {
    close (fd);
    unlink (name);
    return NULL;
  }
  uint64_t seed = 0x9e3779b97f4a7c15ULL;
  for (size_t j = 0; j < (1 << 20); j += 8) {
    uint64_t v = bench_rand (&seed);
    memcpy (buf + j, &v, 8);
  }
  for (uint64_t off = 0; off < size; off += 1 << 20) {
    size_t len = size - off < (1 << 20) ? (size_t) (size - off) : 1 << 20;
    if (pwrite (fd, buf, len, (off_t) off) != (ssize_t) len) {
      perror ("failover-pause: writing the scratch image");
      free (buf);
      close (fd);
      unlink (name);
      return NULL;
    }
  }
  free (buf);
  fsync (fd);
  close (fd);
  return name;
}

static void
usage (FILE *f)
{
  fprintf (f,
"usage: failover-pause [--file IMG] [--scenario eio|hang|both] [--reps N]\n"
"                      [--qd N] [--bs SIZE] [--size SIZE] [--warmup-ms MS]\n"
"                      [--after-ms MS] [--timeout-ms MS] [--rw read|write]\n"
"  --file IMG       image both paths open (default: a scratch file in /tmp\n"
"                   of --size bytes, removed at exit)\n"
"  --scenario S     default both\n"
"  --reps N         runs per scenario (default 5)\n"
"  --qd N           requests in flight (default 8)\n"
"  --bs SIZE        read size (default 4k)\n"
"  --size SIZE      bytes of the image to read (default: all; scratch 256M)\n"
"  --warmup-ms MS   steady load before the fault (default 1000)\n"
"  --after-ms MS    load after the fault (default 1000; hang adds the\n"
"                   request timeout)\n"
"  --timeout-ms MS  the unit's request timeout in the hang scenario\n"
"                   (default 200)\n"
"  --rw read|write  random reads (default) or writes (overwrites IMG)\n");
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "file", required_argument, NULL, 'f' },
    { "scenario", required_argument, NULL, 'S' },
    { "reps", required_argument, NULL, 'n' },
    { "qd", required_argument, NULL, 'q' },
    { "bs", required_argument, NULL, 'b' },
    { "size", required_argument, NULL, 'z' },
    { "warmup-ms", required_argument, NULL, 'w' },
    { "after-ms", required_argument, NULL, 'a' },
    { "timeout-ms", required_argument, NULL, 't' },
    { "rw", required_argument, NULL, 'W' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct config cf = {
    .bs = 4096, .qd = 8, .reps = 5,
    .warmup_ms = 1000, .after_ms = 1000, .timeout_ms = 200,
  };
  bool do_eio = true, do_hang = true;
  int c;

  while ((c = getopt_long (argc, argv, "f:S:n:q:b:z:w:a:t:W:h", longopts,
                           NULL)) != -1) {
    switch (c) {
    case 'f': cf.file = optarg; break;
    case 'S':
      do_eio = strcmp (optarg, "eio") == 0 || strcmp (optarg, "both") == 0;
      do_hang = strcmp (optarg, "hang") == 0 || strcmp (optarg, "both") == 0;
      if (!do_eio && !do_hang) {
        fprintf (stderr, "failover-pause: unknown --scenario %s\n", optarg);
        return 1;
      }
      break;
    case 'n': cf.reps = (unsigned) atoi (optarg); break;
    case 'q': cf.qd = (unsigned) atoi (optarg); break;
    case 'b':
      if (bench_parse_size (optarg, &cf.bs) == -1 || cf.bs == 0) {
        fprintf (stderr, "failover-pause: bad --bs %s\n", optarg);
        return 1;
      }
      break;
    case 'z':
      if (bench_parse_size (optarg, &cf.size) == -1) {
        fprintf (stderr, "failover-pause: bad --size %s\n", optarg);
        return 1;
      }
      break;
    case 'w': cf.warmup_ms = (unsigned) atoi (optarg); break;
    case 'a': cf.after_ms = (unsigned) atoi (optarg); break;
    case 't': cf.timeout_ms = (unsigned) atoi (optarg); break;
    case 'W':
      if (strcmp (optarg, "read") != 0 && strcmp (optarg, "write") != 0) {
        fprintf (stderr, "failover-pause: --rw is read or write\n");
        return 1;
      }
      cf.write = strcmp (optarg, "write") == 0;
      break;
    case 'h': usage (stdout); return 0;
    default: usage (stderr); return 1;
    }
  }
  if (optind != argc || cf.reps == 0 || cf.reps > MAX_REPS || cf.qd == 0
      || cf.timeout_ms == 0) {
    usage (stderr);
    return 1;
  }

  char *scratch = NULL;
  if (!cf.file) {
    if (cf.size == 0)
      cf.size = 256 << 20;
    scratch = make_scratch (cf.size);
    if (!scratch)
      return 1;
    cf.file = scratch;
  }

  int rc = 0;
  if (do_eio)
    rc = scenario (&cf, AP_FAULT_ERROR);
  if (rc == 0 && do_hang)
    rc = scenario (&cf, AP_FAULT_HANG);
  if (scratch)
    unlink (scratch);
  if (rc == -2)
    _exit (1);                  /* library threads may still hold our slots */
  return rc == 0 ? 0 : 1;
}
