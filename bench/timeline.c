/* timeline.c — per-request latency over time through one unit while its
 * paths fail and come back, for bench/timeline.sh (issue 6: the failover
 * timeline plot).
 *
 * One unit over three paths to the same image:
 *
 *   direct  the image opened with O_DIRECT, inside the fault-injecting
 *           wrapper (ap_path_fault_wrap), so that EIO and a hang can be
 *           injected in-process;
 *   S1      a served path to an altpathd node (priority 2);
 *   S2      a served path to another altpathd node (priority 1).
 *
 * A steady open-loop workload runs through the unit: one 4 KiB request
 * every --period-us (random offsets, reads and writes alternating), each
 * in its own slot, so a stall shows as a rising latency of every request
 * issued during it rather than as a quiet gap.  Every request is logged
 * (submit and completion time, the path that completed it as the path
 * trace hook saw it, the error the caller got); every unit event
 * (switch, unit and path state) is logged with its CLOCK_MONOTONIC
 * stamp.
 *
 * The schedule is driven from outside (bench/timeline.sh owns the altpathd
 * processes and the network namespace) by commands on stdin, one a line;
 * each is answered on stdout with "ok T" (T: seconds since start, on this
 * program's CLOCK_MONOTONIC, the one clock of every figure) once done:
 *
 *   fault LABEL PATH GOAL_MS eio|hang|ext
 *                     a fault begins now on PATH (eio and hang are put on
 *                     the direct path's wrapper here; ext: the script
 *                     does it right after the answer — a kill, a link
 *                     cut — so the mark may be early by the time that
 *                     takes, which counts in the time to the switch but
 *                     not in the stall, which no request is held for)
 *   restore fault|ext the fault ends now (fault: the wrapper passes I/O
 *                     through again; ext: the script has restored it)
 *   end               the phase ends (bounds its failback window)
 *   disable PATH | enable PATH      the operator's ap_unit_*_path
 *   wait PATH MS      until PATH is the active path ("timeout T" if not
 *                     within MS)
 *   quit              stop the workload, wait for it, write the files
 *
 * Files in --out: requests.tsv (t_done_s lat_ms path op err t_submit_s;
 * path 0 direct, 1 S1, 2 S2, 3 unknown), events.tsv, marks.tsv, and
 * summary.tsv: per fault phase the time of the fault, of the switch away
 * from PATH, of the restore and of the failback to PATH, the longest stall
 * (the longest a request in flight at some time between the fault and
 * the switch waited after the fault: see longest()), the longest stall of the failback (the same between the unit
 * entering SWITCH and its flip back), the goal, errors and requests that
 * never completed; a "baseline" line (p50, p99 and max latency before
 * the first fault); a "late" line (how often and by how much at most the
 * submitter fell more than one period behind its schedule).
 *
 * Exit status: 0 when the run completed (whatever the figures); 1 when the
 * setup failed, the unit did not come up, or requests never came back.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "altpath.h"
#include "clock.h"
#include "bench.h"

#define NPATHS 3
#define PATH_UNKNOWN 3
static const char *const path_names[NPATHS] = { "direct", "S1", "S2" };

/* One logged request; written by its completion, read after the run. */
struct rec {
  uint64_t submit_ns, done_ns;  /* done_ns 0: never completed */
  int32_t err;
  uint8_t op, path;
};

struct slot {
  struct ap_io io;
  uint64_t rec;                 /* index in recs */
  _Atomic int path;             /* set by the trace hook */
  struct slot *next;            /* free list */
};

#define MAX_EVENTS 4096
struct event {
  uint64_t ns;
  int type, old_state, new_state, err;
  char path[32], from[32], reason[96];
};

#define MAX_MARKS 256
struct mark {
  uint64_t ns;
  char kind[16];                /* fault restore end disable enable */
  char label[48], path[32];
  unsigned goal_ms;
};

static uint64_t t0;
static struct rec *recs;
static uint64_t max_recs;
static _Atomic uint64_t nrecs;
static _Atomic uint64_t errors;

static pthread_mutex_t free_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t free_cond;           /* CLOCK_MONOTONIC */
static struct slot *free_slots;
static unsigned nslots_out;

static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ev_cond;
static struct event events[MAX_EVENTS];
static unsigned nevents;
static char active[AP_NAME_MAX];

static struct mark marks[MAX_MARKS];
static unsigned nmarks;

static _Atomic bool stop;
/* The submitter's lateness (written by it only, read after the join). */
static uint64_t late_count, late_max_ns;

static double
secs (uint64_t ns)
{
  return ns ? ((double) ns - (double) t0) / 1e9 : -1;
}

static void
put_slot (struct slot *s)
{
  pthread_mutex_lock (&free_lock);
  s->next = free_slots;
  free_slots = s;
  nslots_out--;
  pthread_cond_broadcast (&free_cond);
  pthread_mutex_unlock (&free_lock);
}

static void
io_done (struct ap_io *io, int err)
{
  struct slot *s = io->opaque;
  struct rec *r = &recs[s->rec];
  r->done_ns = ap_now_ns ();
  r->err = err;
  r->path = (uint8_t) atomic_load (&s->path);
  if (err && atomic_fetch_add (&errors, 1) == 0)
    fprintf (stderr, "timeline: a request failed for the caller: %s\n",
             strerror (-err));
  put_slot (s);
}

/* Which path completed each request: the trace hook sees the path's
 * completion just before the unit passes it on to io_done.  A request
 * failed on one path and resubmitted on another ends with the last. */
static void
trace (void *opaque, struct ap_path *path, enum ap_trace_point point,
       const struct ap_io *io, bool probe, int err)
{
  (void) path;
  /* Only the caller's requests: the unit's own (probes, the flush of a
   * planned switch) carry no slot. */
  if (probe || point != AP_TRACE_DONE || err || io->done != io_done)
    return;
  struct slot *s = io->opaque;
  atomic_store (&s->path, (int) (intptr_t) opaque);
}

static void
on_event (void *opaque, const struct ap_event *ev)
{
  (void) opaque;
  pthread_mutex_lock (&ev_lock);
  if (nevents < MAX_EVENTS) {
    struct event *e = &events[nevents++];
    e->ns = ev->mono_ns;
    e->type = ev->type;
    e->old_state = ev->old_state;
    e->new_state = ev->new_state;
    e->err = ev->err;
    snprintf (e->path, sizeof e->path, "%s", ev->path ? ev->path : "");
    snprintf (e->from, sizeof e->from, "%s",
              ev->from_path ? ev->from_path : "");
    snprintf (e->reason, sizeof e->reason, "%s",
              ev->reason ? ev->reason : "");
  }
  if (ev->type == AP_EVENT_SWITCH) {
    snprintf (active, sizeof active, "%s", ev->path ? ev->path : "");
    pthread_cond_broadcast (&ev_cond);
  }
  pthread_mutex_unlock (&ev_lock);
}

struct workload {
  struct ap_unit *unit;
  uint64_t period_ns, span, bs;
};

/* The open-loop submitter: one request per period, whatever the unit is
 * doing, as long as a slot is free (if none is, it waits and then goes
 * on from the current time rather than sending a burst). */
static void *
submitter (void *arg)
{
  struct workload *w = arg;
  uint64_t rng = ap_now_ns () | 1, next = ap_now_ns (), n = 0;
  while (!atomic_load (&stop)) {
    bench_sleep_until (next);
    uint64_t due = next;
    next += w->period_ns;
    pthread_mutex_lock (&free_lock);
    while (!free_slots && !atomic_load (&stop))
      pthread_cond_wait (&free_cond, &free_lock);
    struct slot *s = free_slots;
    if (s) {
      free_slots = s->next;
      nslots_out++;
    }
    pthread_mutex_unlock (&free_lock);
    if (!s)
      break;
    uint64_t now = ap_now_ns ();
    /* Late by more than 10 ms: this thread got no CPU (a busy machine)
     * or no slot.  The requests it did not send are missing from the log
     * (not slow), so how far it fell behind is reported beside the
     * figures. */
    if (now - due > AP_MS (10)) {
      late_count++;
      if (now - due > late_max_ns)
        late_max_ns = now - due;
    }
    if (now > next)
      next = now;
    uint64_t i = atomic_fetch_add (&nrecs, 1);
    if (i >= max_recs) {
      fprintf (stderr, "timeline: request log full (%" PRIu64 " requests); "
               "the workload stops here\n", max_recs);
      put_slot (s);
      break;
    }
    s->rec = i;
    atomic_store (&s->path, PATH_UNKNOWN);
    struct ap_io *io = &s->io;
    io->op = (n++ & 1) ? AP_OP_WRITE : AP_OP_READ;
    io->flags = 0;
    io->offset = bench_rand (&rng) % (w->span / w->bs) * w->bs;
    io->length = w->bs;
    io->done = io_done;
    io->opaque = s;
    io->deadline_ns = 0;
    recs[i].op = (uint8_t) io->op;
    recs[i].path = PATH_UNKNOWN;
    recs[i].submit_ns = now;
    if (ap_unit_submit (w->unit, io) == -1) {
      /* Refused at once: the caller got an error. */
      recs[i].done_ns = ap_now_ns ();
      recs[i].err = -(ap_get_errno () ? ap_get_errno () : EIO);
      if (atomic_fetch_add (&errors, 1) == 0)
        fprintf (stderr, "timeline: ap_unit_submit refused: %s\n",
                 ap_get_error ());
      put_slot (s);
    }
  }
  return NULL;
}

static void
add_mark (const char *kind, const char *label, const char *path,
          unsigned goal)
{
  if (nmarks >= MAX_MARKS)
    return;
  struct mark *m = &marks[nmarks++];
  m->ns = ap_now_ns ();
  snprintf (m->kind, sizeof m->kind, "%s", kind);
  snprintf (m->label, sizeof m->label, "%s", label);
  snprintf (m->path, sizeof m->path, "%s", path);
  m->goal_ms = goal;
}

static void
reply (const char *word)
{
  printf ("%s %.6f\n", word, secs (ap_now_ns ()));
  fflush (stdout);
}

/* The longest a request in flight at some time in [a, b) (submitted
 * before b, completed at or after a; never completed: counted until end)
 * waited from a or from its submission, whichever is later: a request
 * that was already slow before the fault (this machine's hiccups) does
 * not make the failover look longer than it was. */
static double
longest (uint64_t a, uint64_t b, uint64_t end, uint64_t n)
{
  uint64_t worst = 0;
  for (uint64_t i = 0; i < n; i++) {
    const struct rec *r = &recs[i];
    uint64_t done = r->done_ns ? r->done_ns : end;
    uint64_t from = r->submit_ns > a ? r->submit_ns : a;
    if (r->submit_ns < b && done >= a && done - from > worst)
      worst = done - from;
  }
  return (double) worst / 1e6;
}

static int
write_files (const char *dir, uint64_t end)
{
  char fn[4096];
  FILE *f;
  uint64_t n = atomic_load (&nrecs);
  if (n > max_recs)
    n = max_recs;

  snprintf (fn, sizeof fn, "%s/requests.tsv", dir);
  if (!(f = fopen (fn, "w")))
    goto fail;
  fprintf (f, "# t_done_s\tlat_ms\tpath\top\terr\tt_submit_s\n");
  for (uint64_t i = 0; i < n; i++) {
    const struct rec *r = &recs[i];
    if (!r->done_ns)
      continue;
    fprintf (f, "%.6f\t%.4f\t%u\t%s\t%d\t%.6f\n", secs (r->done_ns),
             (double) (r->done_ns - r->submit_ns) / 1e6, r->path,
             r->op == AP_OP_WRITE ? "w" : "r", r->err, secs (r->submit_ns));
  }
  fclose (f);

  snprintf (fn, sizeof fn, "%s/events.tsv", dir);
  if (!(f = fopen (fn, "w")))
    goto fail;
  fprintf (f, "# t_s\ttype\tpath\tfrom\told\tnew\terr\treason\n");
  pthread_mutex_lock (&ev_lock);
  for (unsigned i = 0; i < nevents; i++) {
    const struct event *e = &events[i];
    static const char *const tn[] = { "unit", "path", "switch", "added",
                                      "removed" };
    const char *o = "", *nw = "";
    if (e->type == AP_EVENT_UNIT_STATE) {
      o = ap_unit_state_name (e->old_state);
      nw = ap_unit_state_name (e->new_state);
    } else if (e->type == AP_EVENT_PATH_STATE) {
      o = ap_path_state_name (e->old_state);
      nw = ap_path_state_name (e->new_state);
    }
    fprintf (f, "%.6f\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", secs (e->ns),
             e->type >= 0 && e->type < 5 ? tn[e->type] : "?", e->path,
             e->from, o, nw, e->err, e->reason);
  }
  pthread_mutex_unlock (&ev_lock);
  fclose (f);

  snprintf (fn, sizeof fn, "%s/marks.tsv", dir);
  if (!(f = fopen (fn, "w")))
    goto fail;
  fprintf (f, "# t_s\tkind\tlabel\tpath\tgoal_ms\n");
  for (unsigned i = 0; i < nmarks; i++)
    fprintf (f, "%.6f\t%s\t%s\t%s\t%u\n", secs (marks[i].ns), marks[i].kind,
             marks[i].label, marks[i].path, marks[i].goal_ms);
  fclose (f);

  snprintf (fn, sizeof fn, "%s/summary.tsv", dir);
  if (!(f = fopen (fn, "w")))
    goto fail;
  fprintf (f, "# label\tpath\tt_fault\tt_switch\tswitch_to\tt_restore\t"
           "t_failback\tstall_ms\tfailback_stall_ms\tgoal_ms\terrors\t"
           "lost\n");

  /* Baseline: latencies completed between 0.5 s after the start and the
   * first fault. */
  uint64_t first_fault = end;
  for (unsigned i = 0; i < nmarks; i++)
    if (strcmp (marks[i].kind, "fault") == 0) {
      first_fault = marks[i].ns;
      break;
    }
  double *lat = malloc ((n ? n : 1) * sizeof *lat);
  size_t nl = 0;
  if (lat) {
    for (uint64_t i = 0; i < n; i++)
      if (recs[i].done_ns && recs[i].submit_ns > t0 + AP_MS (500)
          && recs[i].done_ns < first_fault)
        lat[nl++] = (double) (recs[i].done_ns - recs[i].submit_ns) / 1e6;
    qsort (lat, nl, sizeof *lat, bench_cmp_double);
    if (nl)
      fprintf (f, "baseline\t-\t%zu\t%.3f\t%.3f\t%.3f\n", nl,
               lat[nl / 2], lat[nl * 99 / 100], lat[nl - 1]);
    fprintf (f, "late\t-\t%" PRIu64 "\t%.1f\n", late_count,
             (double) late_max_ns / 1e6);
    free (lat);
  }

  for (unsigned i = 0; i < nmarks; i++) {
    const struct mark *m = &marks[i];
    if (strcmp (m->kind, "fault") != 0)
      continue;
    uint64_t restore = 0, phase_end = end;
    for (unsigned j = i + 1; j < nmarks; j++) {
      if (!restore && strcmp (marks[j].kind, "restore") == 0)
        restore = marks[j].ns;
      if (strcmp (marks[j].kind, "end") == 0
          || strcmp (marks[j].kind, "fault") == 0) {
        phase_end = marks[j].ns;
        break;
      }
    }
    uint64_t restore_or_end = restore ? restore : phase_end;
    uint64_t sw = 0, fb = 0, fb_start = 0;
    char sw_to[32] = "";
    pthread_mutex_lock (&ev_lock);
    for (unsigned j = 0; j < nevents; j++) {
      const struct event *e = &events[j];
      if (e->ns < m->ns || e->ns >= phase_end)
        continue;
      /* The planned switch back begins when the unit enters SWITCH (it
       * then drains, flushes and flips: the SWITCH event). */
      if (!fb && restore && e->ns >= restore
          && e->type == AP_EVENT_UNIT_STATE && e->new_state == AP_UNIT_SWITCH)
        fb_start = e->ns;
      if (e->type != AP_EVENT_SWITCH)
        continue;
      if (!sw && e->ns < restore_or_end && strcmp (e->from, m->path) == 0) {
        sw = e->ns;
        snprintf (sw_to, sizeof sw_to, "%s", e->path);
      }
      if (!fb && restore && e->ns >= restore && strcmp (e->path, m->path) == 0)
        fb = e->ns;
    }
    pthread_mutex_unlock (&ev_lock);
    uint64_t errs = 0, lost = 0;
    for (uint64_t k = 0; k < n; k++) {
      const struct rec *r = &recs[k];
      if (r->submit_ns >= phase_end || (r->done_ns && r->done_ns < m->ns))
        continue;
      if (!r->done_ns)
        lost++;
      else if (r->err)
        errs++;
    }
    /* The failover's stall: requests in flight at some time between the
     * fault and the switch (or the restore, if the unit never switched);
     * later hiccups of the new path are not the failover's. */
    double stall = longest (m->ns, sw ? sw : restore_or_end, end, n);
    /* The failback's: requests in flight while the unit switched back. */
    double fb_stall = fb ? longest (fb_start ? fb_start : fb, fb, end, n)
                         : -1;
    fprintf (f, "%s\t%s\t%.3f\t%.3f\t%s\t%.3f\t%.3f\t%.1f\t%.1f\t%u\t%"
             PRIu64 "\t%" PRIu64 "\n", m->label, m->path, secs (m->ns),
             secs (sw), sw_to[0] ? sw_to : "-", secs (restore), secs (fb),
             stall, fb_stall, m->goal_ms, errs, lost);
    fprintf (stderr, "timeline: %-10s fault %.3f s, switch %+.0f ms to %s, "
             "failback %+.0f ms after restore; longest stall %.1f ms "
             "(goal %u ms), at failback %.1f ms; errors %" PRIu64 "\n",
             m->label, secs (m->ns), sw ? (double) (sw - m->ns) / 1e6 : -1,
             sw_to[0] ? sw_to : "-",
             fb ? (double) (fb - restore) / 1e6 : -1, stall, m->goal_ms,
             fb_stall, errs + lost);
  }
  fclose (f);
  return 0;
fail:
  fprintf (stderr, "timeline: cannot write %s: %s\n", fn, strerror (errno));
  return -1;
}

static void
usage (void)
{
  fprintf (stderr,
           "usage: timeline --image FILE --s1 URI --s2 URI --out DIR\n"
           "         [--timeout-ms 200] [--deadline-ms 300] [--failback-ms "
           "1000]\n         [--checker-ms 100] [--period-us 2000] "
           "[--slots 1024]\n"
           "commands on stdin: see the top of bench/timeline.c\n");
}

int
main (int argc, char **argv)
{
  const char *image = NULL, *uri[2] = { NULL, NULL }, *out = NULL;
  unsigned timeout_ms = 200, deadline_ms = 300, failback_ms = 1000;
  unsigned checker_ms = 100, period_us = 2000, nslots = 1024;
  static const struct option lo[] = {
    { "image", required_argument, NULL, 'i' },
    { "s1", required_argument, NULL, '1' },
    { "s2", required_argument, NULL, '2' },
    { "out", required_argument, NULL, 'o' },
    { "timeout-ms", required_argument, NULL, 't' },
    { "deadline-ms", required_argument, NULL, 'd' },
    { "failback-ms", required_argument, NULL, 'f' },
    { "checker-ms", required_argument, NULL, 'c' },
    { "period-us", required_argument, NULL, 'p' },
    { "slots", required_argument, NULL, 's' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  int c;
  while ((c = getopt_long (argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case 'i': image = optarg; break;
    case '1': uri[0] = optarg; break;
    case '2': uri[1] = optarg; break;
    case 'o': out = optarg; break;
    case 't': timeout_ms = (unsigned) atoi (optarg); break;
    case 'd': deadline_ms = (unsigned) atoi (optarg); break;
    case 'f': failback_ms = (unsigned) atoi (optarg); break;
    case 'c': checker_ms = (unsigned) atoi (optarg); break;
    case 'p': period_us = (unsigned) atoi (optarg); break;
    case 's': nslots = (unsigned) atoi (optarg); break;
    case 'h': usage (); return 0;
    default: usage (); return 1;
    }
  }
  if (!image || !uri[0] || !uri[1] || !out || !timeout_ms || !deadline_ms
      || !period_us || !nslots) {
    usage ();
    return 1;
  }
  setvbuf (stdout, NULL, _IOLBF, 0);
  t0 = ap_now_ns ();
  pthread_condattr_t ca;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&ev_cond, &ca);
  pthread_cond_init (&free_cond, &ca);

  /* One request per period for up to an hour. */
  max_recs = 3600ull * 1000000 / period_us;
  recs = calloc (max_recs, sizeof *recs);
  struct slot *slots = calloc (nslots, sizeof *slots);
  if (!recs || !slots) {
    perror ("timeline: calloc");
    return 1;
  }
  for (unsigned i = 0; i < nslots; i++) {
    if (posix_memalign (&slots[i].io.buf, 4096, 4096) != 0) {
      perror ("timeline: posix_memalign");
      return 1;
    }
    memset (slots[i].io.buf, 0x5a, 4096);
    slots[i].next = free_slots;
    free_slots = &slots[i];
  }

  struct ap_direct_options dopt = { .name = "direct-raw" };
  struct ap_path *fault = ap_path_open_direct (image, &dopt);
  if (fault)
    fault = ap_path_fault_wrap (fault, "direct");
  if (!fault) {
    fprintf (stderr, "timeline: %s\n", ap_get_error ());
    return 1;
  }
  ap_path_set_trace (fault, trace, (void *) (intptr_t) 0);

  struct ap_unit_options uo;
  ap_unit_options_init (&uo);
  uo.name = "timeline";
  uo.request_timeout_ms = timeout_ms;
  uo.checker_interval_ms = checker_ms;
  uo.failback_ms = failback_ms;
  uo.verify_timeout_ms = 10000;
  uo.events.fn = on_event;
  struct ap_unit *u = ap_unit_create (&uo, &fault, 1);
  if (!u) {
    fprintf (stderr, "timeline: %s\n", ap_get_error ());
    return 1;
  }
  for (int i = 0; i < 2; i++) {
    struct ap_served_options so = {
      .name = path_names[1 + i], .uri = uri[i], .connections = 2,
      .connect_timeout_ms = 1000, .deadline_ms = deadline_ms,
    };
    struct ap_path *p = ap_path_open_served (&so);
    if (!p) {
      fprintf (stderr, "timeline: %s: %s\n", uri[i], ap_get_error ());
      ap_unit_close (u);
      return 1;
    }
    ap_path_set_trace (p, trace, (void *) (intptr_t) (1 + i));
    if (ap_unit_add_path (u, p, 2 - i) == -1) {
      fprintf (stderr, "timeline: adding %s: %s\n", path_names[1 + i],
               ap_get_error ());
      ap_unit_close (u);
      return 1;
    }
  }
  /* The unit reports its first active path before our callback is set
   * only through its status. */
  {
    struct ap_unit_status st;
    if (ap_unit_get_status (u, &st) == 0) {
      pthread_mutex_lock (&ev_lock);
      for (unsigned i = 0; i < st.npaths && i < AP_MAX_PATHS; i++)
        if (st.paths[i].active && !active[0])
          snprintf (active, sizeof active, "%s", st.paths[i].name);
      pthread_mutex_unlock (&ev_lock);
    }
  }

  struct workload w = { .unit = u, .period_ns = AP_US (period_us),
                        .bs = 4096 };
  w.span = ap_unit_size (u) / w.bs * w.bs;
  if (w.span == 0 || w.bs % ap_unit_block_size (u) != 0) {
    fprintf (stderr, "timeline: the unit's size or block size does not fit "
             "4 KiB requests\n");
    ap_unit_close (u);
    return 1;
  }
  pthread_t th;
  if (pthread_create (&th, NULL, submitter, &w) != 0) {
    perror ("timeline: pthread_create");
    ap_unit_close (u);
    return 1;
  }
  reply ("ready");

  char line[512];
  int rc = 0;
  while (fgets (line, sizeof line, stdin)) {
    char a[64] = "", b[64] = "", cc[64] = "", d[64] = "", e[64] = "";
    int nw = sscanf (line, "%63s %63s %63s %63s %63s", a, b, cc, d, e);
    if (nw <= 0)
      continue;
    if (strcmp (a, "fault") == 0 && nw == 5) {
      add_mark ("fault", b, cc, (unsigned) atoi (d));
      if (strcmp (e, "eio") == 0)
        ap_fault_set (fault, AP_FAULT_ERROR, -EIO, 0);
      else if (strcmp (e, "hang") == 0)
        ap_fault_set (fault, AP_FAULT_HANG, 0, 0);
      reply ("ok");
    } else if (strcmp (a, "restore") == 0 && nw == 2) {
      if (strcmp (b, "fault") == 0)
        ap_fault_set (fault, AP_FAULT_NONE, 0, 0);
      add_mark ("restore", "", "", 0);
      reply ("ok");
    } else if (strcmp (a, "end") == 0) {
      add_mark ("end", "", "", 0);
      reply ("ok");
    } else if ((strcmp (a, "disable") == 0 || strcmp (a, "enable") == 0)
               && nw == 2) {
      add_mark (a, b, b, 0);
      int r = a[0] == 'd' ? ap_unit_disable_path (u, b)
                          : ap_unit_enable_path (u, b);
      if (r == -1)
        fprintf (stderr, "timeline: %s %s: %s\n", a, b, ap_get_error ());
      reply (r == -1 ? "error" : "ok");
    } else if (strcmp (a, "wait") == 0 && nw == 3) {
      uint64_t until = ap_now_ns () + AP_MS (atoi (cc));
      struct timespec ts = ap_ns_to_timespec (until);
      bool ok;
      pthread_mutex_lock (&ev_lock);
      while (!(ok = strcmp (active, b) == 0) && ap_now_ns () < until)
        pthread_cond_timedwait (&ev_cond, &ev_lock, &ts);
      pthread_mutex_unlock (&ev_lock);
      reply (ok ? "ok" : "timeout");
    } else if (strcmp (a, "quit") == 0) {
      break;
    } else {
      fprintf (stderr, "timeline: unknown command: %s", line);
      reply ("error");
    }
  }

  /* Stop the workload and wait for every request: bounded, since a
   * request that never comes back is exactly what this looks for. */
  uint64_t end = ap_now_ns ();
  atomic_store (&stop, true);
  pthread_mutex_lock (&free_lock);
  pthread_cond_broadcast (&free_cond);
  pthread_mutex_unlock (&free_lock);
  pthread_join (th, NULL);
  struct timespec ts = ap_ns_to_timespec (ap_now_ns () + AP_MS (15000));
  pthread_mutex_lock (&free_lock);
  while (nslots_out > 0)
    if (pthread_cond_timedwait (&free_cond, &free_lock, &ts) == ETIMEDOUT)
      break;
  unsigned left = nslots_out;
  pthread_mutex_unlock (&free_lock);
  if (left) {
    fprintf (stderr, "timeline: %u requests never completed (15 s after "
             "the stop)\n", left);
    char *js = ap_unit_status_json (u);
    if (js)
      fprintf (stderr, "timeline: the unit's status: %s\n", js);
    free (js);
    rc = 1;
  }
  if (write_files (out, end) == -1)
    rc = 1;
  fprintf (stderr, "timeline: %" PRIu64 " requests, %" PRIu64 " failed for "
           "the caller\n", atomic_load (&nrecs), atomic_load (&errors));
  if (!left && ap_unit_close (u) == -1) {
    fprintf (stderr, "timeline: closing the unit: %s\n", ap_get_error ());
    rc = 1;
  }
  return rc;
}
