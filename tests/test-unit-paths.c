/* test-unit-paths.c — the paths of a unit: their states (active, standby,
 * failed, disabled) and what the operator does with them: disable (the
 * active one: the unit switches; the last usable one: refused with EBUSY),
 * enable, add a better path while I/O runs (the unit drains and switches,
 * never using both: a trace witness watches), remove, refuse a path of
 * another size or block size with a clear message, and the order of
 * preference among direct paths (priority).
 */
#include <sys/stat.h>
#include <sys/wait.h>
/* ------------------------------------------------------------------
 * Test helpers.  The same block opens each tests/test-unit-*.c: every
 * test file is its own program (Makefile: tests/NAME.c → build/tests/NAME),
 * so they are kept identical by hand.
 *
 *   struct tu   one unit over N paths "A", "B", "C": direct paths on one
 *               image file in /dev/shm (tmpfs: no disk latency under the short timeouts), each under a fault wrapper of the
 *               same name; short timeouts (TU_RT_MS ...)
 *   witness     a trace hook on every wrapper: user requests in flight
 *               per path; a submission on one path while another has one
 *               in flight is an overlap (invariant 1)
 *   evlog       every event the unit delivers, copied
 *   struct req  one asynchronous request that counts its completions
 * ------------------------------------------------------------------ */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "altpath.h"

/* Each program uses only some of the helpers. */
#pragma GCC diagnostic ignored "-Wunused-function"

#define TU_BS 4096              /* request size and buffer alignment */
#define TU_SIZE (8u << 20)      /* image size */
#define TU_RT_MS 200            /* request timeout */
#define TU_VT_MS 1000           /* verification timeout */
#define TU_CK_MS 20             /* checker interval */
#define TU_FB_MS 50             /* failback interval */
#define TU_MAXP 4

static uint64_t
now_ms (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static void
sleep_ms (unsigned ms)
{
  usleep (ms * 1000u);
}

/* ---------------------------------------------------------- events */

struct evrec {
  enum ap_event_type type;
  int old_state, new_state;
  char path[AP_NAME_MAX], from[AP_NAME_MAX], reason[128];
  int err;
  uint64_t mono_ns;
};

struct evlog {
  pthread_mutex_t lock;
  struct evrec ev[512];
  unsigned n;
  bool bad_order;               /* mono_ns went backwards */
};

static void
ev_cb (void *opaque, const struct ap_event *e)
{
  struct evlog *l = opaque;
  pthread_mutex_lock (&l->lock);
  if (l->n && e->mono_ns < l->ev[l->n - 1].mono_ns)
    l->bad_order = true;
  if (l->n < sizeof l->ev / sizeof l->ev[0]) {
    struct evrec *r = &l->ev[l->n++];
    r->type = e->type;
    r->old_state = e->old_state;
    r->new_state = e->new_state;
    snprintf (r->path, sizeof r->path, "%s", e->path ? e->path : "");
    snprintf (r->from, sizeof r->from, "%s",
              e->from_path ? e->from_path : "");
    snprintf (r->reason, sizeof r->reason, "%s", e->reason ? e->reason : "");
    r->err = e->err;
    r->mono_ns = e->mono_ns;
  }
  pthread_mutex_unlock (&l->lock);
}

static void
ev_reset (struct evlog *l)
{
  pthread_mutex_lock (&l->lock);
  l->n = 0;
  l->bad_order = false;
  pthread_mutex_unlock (&l->lock);
}

/* The unit-state events so far, as "old>new" pairs joined by spaces,
 * e.g. "online>verify verify>online". */
static void
ev_unit_seq (struct evlog *l, char *buf, size_t n)
{
  size_t k = 0;
  buf[0] = '\0';
  pthread_mutex_lock (&l->lock);
  for (unsigned i = 0; i < l->n && k < n; i++)
    if (l->ev[i].type == AP_EVENT_UNIT_STATE) {
      int w = snprintf (buf + k, n - k, "%s%s>%s", k ? " " : "",
                        ap_unit_state_name (l->ev[i].old_state),
                        ap_unit_state_name (l->ev[i].new_state));
      if (w > 0)
        k += (size_t) w;
    }
  pthread_mutex_unlock (&l->lock);
}

/* Wait until the unit-state sequence is exactly want. */
static bool
ev_wait_seq (struct evlog *l, const char *want, unsigned ms)
{
  char seq[1024];
  uint64_t until = now_ms () + ms;
  do {
    ev_unit_seq (l, seq, sizeof seq);
    if (strcmp (seq, want) == 0)
      return true;
    sleep_ms (5);
  } while (now_ms () < until);
  fprintf (stderr, "unit-state events: got \"%s\", want \"%s\"\n", seq, want);
  return false;
}

/* Whether an event of this type for this path (and, if new_state >= 0,
 * to this state) has been delivered. */
static bool
ev_has (struct evlog *l, enum ap_event_type type, const char *path,
        int new_state)
{
  bool found = false;
  pthread_mutex_lock (&l->lock);
  for (unsigned i = 0; i < l->n && !found; i++)
    found = l->ev[i].type == type
      && (!path || strcmp (l->ev[i].path, path) == 0)
      && (new_state < 0 || l->ev[i].new_state == new_state);
  pthread_mutex_unlock (&l->lock);
  return found;
}

static bool
ev_wait_has (struct evlog *l, enum ap_event_type type, const char *path,
             int new_state, unsigned ms)
{
  uint64_t until = now_ms () + ms;
  do {
    if (ev_has (l, type, path, new_state))
      return true;
    sleep_ms (5);
  } while (now_ms () < until);
  return false;
}

/* --------------------------------------------------------- witness */

struct witness;
struct tpath {
  struct witness *w;
  char name[AP_NAME_MAX];
  _Atomic int inflight;         /* user requests in flight */
  _Atomic unsigned submits, reads, writes, flushes, fua_writes, probes;
};
struct witness {
  struct tpath p[TU_MAXP];
  unsigned n;
  _Atomic unsigned overlaps;
  _Atomic bool record;          /* count per-op submissions */
};

static void
w_trace (void *opaque, struct ap_path *path, enum ap_trace_point point,
         const struct ap_io *io, bool probe, int err)
{
  struct tpath *tp = opaque;
  struct witness *w = tp->w;
  (void) path;
  (void) err;
  if (probe) {
    if (point == AP_TRACE_SUBMIT)
      atomic_fetch_add (&tp->probes, 1);
    return;
  }
  if (point == AP_TRACE_DONE) {
    atomic_fetch_sub (&tp->inflight, 1);
    return;
  }
  atomic_fetch_add (&tp->inflight, 1);
  for (unsigned i = 0; i < w->n; i++)
    if (&w->p[i] != tp && atomic_load (&w->p[i].inflight) > 0) {
      atomic_fetch_add (&w->overlaps, 1);
      fprintf (stderr, "OVERLAP: request sent on %s while %s has %d in "
               "flight\n", tp->name, w->p[i].name,
               atomic_load (&w->p[i].inflight));
    }
  atomic_fetch_add (&tp->submits, 1);
  switch (io->op) {
  case AP_OP_READ: atomic_fetch_add (&tp->reads, 1); break;
  case AP_OP_WRITE:
    atomic_fetch_add (&tp->writes, 1);
    if (io->flags & AP_IO_FUA)
      atomic_fetch_add (&tp->fua_writes, 1);
    break;
  case AP_OP_FLUSH: atomic_fetch_add (&tp->flushes, 1); break;
  default: break;
  }
}

/* ------------------------------------------------------- the unit */

struct tu {
  char image[64];
  struct ap_path *f[TU_MAXP];   /* fault wrappers; the unit owns them */
  unsigned n;
  struct ap_unit *u;
  struct evlog ev;
  struct witness w;
};

static void
tu_opts (struct ap_unit_options *o)
{
  ap_unit_options_init (o);
  o->name = "test-unit";
  o->request_timeout_ms = TU_RT_MS;
  o->verify_timeout_ms = TU_VT_MS;
  o->checker_interval_ms = TU_CK_MS;
  o->failback_ms = TU_FB_MS;
}

static int
tu_setup (void **state)
{
  struct tu *t = calloc (1, sizeof *t);
  assert_non_null (t);
  pthread_mutex_init (&t->ev.lock, NULL);
  snprintf (t->image, sizeof t->image, "/dev/shm/test-unit-XXXXXX");
  int fd = mkstemp (t->image);
  assert_true (fd >= 0);
  assert_int_equal (ftruncate (fd, TU_SIZE), 0);
  close (fd);
  *state = t;
  return 0;
}

static int
tu_teardown (void **state)
{
  struct tu *t = *state;
  if (t->u)
    ap_unit_close (t->u);
  unlink (t->image);
  free (t);
  return 0;
}

/* A direct path on the image under a fault wrapper, both named name,
 * watched by the witness. */
static struct ap_path *
tu_path_on (struct tu *t, const char *file, const char *name)
{
  struct ap_direct_options d = { .name = name };
  struct ap_path *inner = ap_path_open_direct (file, &d);
  if (!inner)
    fprintf (stderr, "ap_path_open_direct: %s\n", ap_get_error ());
  assert_non_null (inner);
  struct ap_path *f = ap_path_fault_wrap (inner, name);
  assert_non_null (f);
  assert_true (t->n < TU_MAXP);
  struct tpath *tp = &t->w.p[t->w.n++];
  tp->w = &t->w;
  snprintf (tp->name, sizeof tp->name, "%s", name);
  ap_path_set_trace (f, w_trace, tp);
  t->f[t->n++] = f;
  return f;
}

static struct ap_path *
tu_path (struct tu *t, const char *name)
{
  return tu_path_on (t, t->image, name);
}

static struct ap_path *
tu_fault (struct tu *t, const char *name)
{
  for (unsigned i = 0; i < t->n; i++)
    if (strcmp (ap_path_name (t->f[i]), name) == 0)
      return t->f[i];
  fail_msg ("no path %s", name);
  return NULL;
}

static struct tpath *
tu_tp (struct tu *t, const char *name)
{
  for (unsigned i = 0; i < t->w.n; i++)
    if (strcmp (t->w.p[i].name, name) == 0)
      return &t->w.p[i];
  fail_msg ("no traced path %s", name);
  return NULL;
}

static void
tu_status (struct tu *t, struct ap_unit_status *st)
{
  assert_int_equal (ap_unit_get_status (t->u, st), 0);
}

/* The active path's name ("" if none), into buf. */
static const char *
tu_active (struct tu *t, char *buf)
{
  struct ap_unit_status st;
  tu_status (t, &st);
  buf[0] = '\0';
  for (unsigned i = 0; i < st.npaths; i++)
    if (st.paths[i].active)
      snprintf (buf, AP_NAME_MAX, "%s", st.paths[i].name);
  return buf;
}

static const struct ap_path_status *
find_ps (const struct ap_unit_status *st, const char *name)
{
  for (unsigned i = 0; i < st->npaths; i++)
    if (strcmp (st->paths[i].name, name) == 0)
      return &st->paths[i];
  return NULL;
}

static int
tu_path_state (struct tu *t, const char *name)
{
  struct ap_unit_status st;
  tu_status (t, &st);
  const struct ap_path_status *ps = find_ps (&st, name);
  return ps ? (int) ps->state : -1;
}

static bool
tu_wait_state (struct tu *t, enum ap_unit_state s, unsigned ms)
{
  struct ap_unit_status st;
  uint64_t until = now_ms () + ms;
  do {
    tu_status (t, &st);
    if (st.state == s)
      return true;
    sleep_ms (2);
  } while (now_ms () < until);
  fprintf (stderr, "unit state %s, waited for %s\n",
           ap_unit_state_name (st.state), ap_unit_state_name (s));
  return false;
}

/* ONLINE on path name. */
static bool
tu_wait_active (struct tu *t, const char *name, unsigned ms)
{
  struct ap_unit_status st;
  uint64_t until = now_ms () + ms;
  do {
    tu_status (t, &st);
    const struct ap_path_status *ps = find_ps (&st, name);
    if (st.state == AP_UNIT_ONLINE && ps && ps->active)
      return true;
    sleep_ms (2);
  } while (now_ms () < until);
  char act[AP_NAME_MAX];
  fprintf (stderr, "unit %s on \"%s\", waited for %s\n",
           ap_unit_state_name (st.state), tu_active (t, act), name);
  return false;
}

static bool
tu_wait_path_state (struct tu *t, const char *name, enum ap_path_state s,
                    unsigned ms)
{
  uint64_t until = now_ms () + ms;
  do {
    if (tu_path_state (t, name) == (int) s)
      return true;
    sleep_ms (2);
  } while (now_ms () < until);
  fprintf (stderr, "path %s is %s, waited for %s\n", name,
           ap_path_state_name (tu_path_state (t, name)),
           ap_path_state_name (s));
  return false;
}

/* Create the unit over the paths made so far; wait until it is online
 * and settled, then start the event log afresh. */
static void
tu_unit (struct tu *t, const struct ap_unit_options *opt)
{
  struct ap_unit_options o;
  if (!opt) {
    tu_opts (&o);
    opt = &o;
  }
  t->u = ap_unit_create (opt, t->f, t->n);
  if (!t->u)
    fprintf (stderr, "ap_unit_create: %s\n", ap_get_error ());
  assert_non_null (t->u);
  ap_unit_set_event_cb (t->u, ev_cb, &t->ev);
  assert_true (tu_wait_state (t, AP_UNIT_ONLINE, 2000));
  sleep_ms (3 * TU_CK_MS);      /* first probes of every path answered */
  ev_reset (&t->ev);
}

/* -------------------------------------------------------- requests */

struct req {
  struct ap_io io;
  _Atomic int ndone;            /* completions seen */
  _Atomic int err;
  _Atomic uint64_t done_ms;
};

static void
req_done (struct ap_io *io, int err)
{
  struct req *r = io->opaque;
  atomic_store (&r->err, err);
  atomic_store (&r->done_ms, now_ms ());
  atomic_fetch_add (&r->ndone, 1);
}

static void *
tu_buf (size_t len, int fill)
{
  void *b = NULL;
  assert_int_equal (posix_memalign (&b, TU_BS, len), 0);
  memset (b, fill, len);
  return b;
}

/* A request with its own buffer (read/write), not yet submitted. */
static struct req *
req_new (enum ap_op op, uint64_t off, uint64_t len, int fill, uint32_t flags)
{
  struct req *r = calloc (1, sizeof *r);
  assert_non_null (r);
  r->io.op = op;
  r->io.flags = flags;
  r->io.offset = off;
  r->io.length = len;
  r->io.done = req_done;
  r->io.opaque = r;
  if ((op == AP_OP_READ || op == AP_OP_WRITE) && len)
    r->io.buf = tu_buf (len, fill);
  return r;
}

static void
req_free (struct req *r)
{
  if (r) {
    free (r->io.buf);
    free (r);
  }
}

static bool
req_wait (struct req *r, unsigned ms)
{
  uint64_t until = now_ms () + ms;
  while (atomic_load (&r->ndone) == 0 && now_ms () < until)
    sleep_ms (1);
  return atomic_load (&r->ndone) > 0;
}

/* What the image file holds at off (plain pread, not through the unit):
 * true if every byte of len is fill. */
static bool
file_holds (struct tu *t, uint64_t off, uint64_t len, int fill)
{
  unsigned char *b = malloc (len);
  assert_non_null (b);
  int fd = open (t->image, O_RDONLY);
  assert_true (fd >= 0);
  assert_int_equal (pread (fd, b, len, (off_t) off), (ssize_t) len);
  close (fd);
  bool ok = true;
  for (uint64_t i = 0; i < len && ok; i++)
    ok = b[i] == (unsigned char) fill;
  free (b);
  return ok;
}

/* Synchronous write of fill through the unit. */
static int
tu_write (struct tu *t, uint64_t off, int fill)
{
  void *b = tu_buf (TU_BS, fill);
  int r = ap_unit_pwrite (t->u, b, TU_BS, off, 0);
  free (b);
  return r;
}

/* ----------------------------------------------------------- load */

/* Threads writing and reading back their own blocks through the unit,
 * synchronously, until stopped: I/O in flight across switches. */
struct load {
  struct tu *t;
  pthread_t th[4];
  unsigned n;
  _Atomic bool stop;
  _Atomic unsigned ops, errors, mismatches;
};

struct load_arg {
  struct load *l;
  unsigned id;
};

static void *
load_main (void *arg)
{
  struct load_arg *a = arg;
  struct load *l = a->l;
  unsigned char *w = tu_buf (TU_BS, 0), *r = tu_buf (TU_BS, 0);
  for (unsigned k = 0; !atomic_load (&l->stop); k++) {
    uint64_t off = (uint64_t) (64 + a->id * 16 + k % 16) * TU_BS;
    memset (w, (int) ((a->id * 31 + k) & 0xff) | 1, TU_BS);
    if (ap_unit_pwrite (l->t->u, w, TU_BS, off, k % 4 ? 0 : AP_IO_FUA) == -1
        || ap_unit_pread (l->t->u, r, TU_BS, off) == -1) {
      atomic_fetch_add (&l->errors, 1);
      fprintf (stderr, "load: %s\n", ap_get_error ());
      continue;
    }
    if (memcmp (w, r, TU_BS) != 0)
      atomic_fetch_add (&l->mismatches, 1);
    atomic_fetch_add (&l->ops, 1);
  }
  free (w);
  free (r);
  free (a);
  return NULL;
}

static void
load_start (struct load *l, struct tu *t, unsigned n)
{
  memset (l, 0, sizeof *l);
  l->t = t;
  l->n = n;
  for (unsigned i = 0; i < n; i++) {
    struct load_arg *a = malloc (sizeof *a);
    assert_non_null (a);
    a->l = l;
    a->id = i;
    assert_int_equal (pthread_create (&l->th[i], NULL, load_main, a), 0);
  }
}

static void
load_stop (struct load *l)
{
  atomic_store (&l->stop, true);
  for (unsigned i = 0; i < l->n; i++)
    pthread_join (l->th[i], NULL);
}

/* Wait until the load has done at least n more operations. */
static bool
load_progress (struct load *l, unsigned n, unsigned ms)
{
  unsigned start = atomic_load (&l->ops);
  uint64_t until = now_ms () + ms;
  while (atomic_load (&l->ops) < start + n && now_ms () < until)
    sleep_ms (2);
  return atomic_load (&l->ops) >= start + n;
}

/* ----------------------------------------------- end of the helpers */

/* The new states of path name's AP_EVENT_PATH_STATE events, in order. */
static unsigned
path_events (struct tu *t, const char *name, int *out, unsigned max)
{
  unsigned k = 0;
  pthread_mutex_lock (&t->ev.lock);
  for (unsigned i = 0; i < t->ev.n && k < max; i++)
    if (t->ev.ev[i].type == AP_EVENT_PATH_STATE
        && strcmp (t->ev.ev[i].path, name) == 0)
      out[k++] = t->ev.ev[i].new_state;
  pthread_mutex_unlock (&t->ev.lock);
  return k;
}

/* Whether want[] occurs in order (not necessarily adjacent) in got[]. */
static bool
in_order (const int *got, unsigned ngot, const int *want, unsigned nwant)
{
  unsigned j = 0;
  for (unsigned i = 0; i < ngot && j < nwant; i++)
    if (got[i] == want[j])
      j++;
  return j == nwant;
}

/* active → failed → disabled → (enabled, probed) standby, each with its
 * event. */
static void
test_path_states (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_ACTIVE);
  assert_int_equal (tu_path_state (t, "B"), AP_PATH_STANDBY);

  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x11), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_FAILED);
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_int_equal (find_ps (&st, "A")->last_errno, EIO);
  assert_true (find_ps (&st, "A")->last_error[0] != '\0');
  assert_true (find_ps (&st, "A")->last_error_unix_ms > 0);

  assert_int_equal (ap_unit_disable_path (t->u, "A"), 0);
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_DISABLED);
  /* A disabled path stays disabled even once it works, and is not
   * probed. */
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  sleep_ms (TU_CK_MS * 3);
  unsigned probes = atomic_load (&tu_tp (t, "A")->probes);
  sleep_ms (TU_CK_MS * 5);
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_DISABLED);
  assert_int_equal (atomic_load (&tu_tp (t, "A")->probes), probes);
  /* Disabling it again is not an error. */
  assert_int_equal (ap_unit_disable_path (t->u, "A"), 0);

  assert_int_equal (ap_unit_enable_path (t->u, "A"), 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  tu_status (t, &st);
  assert_true (find_ps (&st, "A")->probes_ok > 0);
  /* Equal priority: no reason to go back. */
  assert_true (tu_wait_active (t, "B", 10));

  /* Events come on the unit thread, after the status changed. */
  assert_true (ev_wait_has (&t->ev, AP_EVENT_PATH_STATE, "A",
                            AP_PATH_STANDBY, 1000));
  int got[32];
  unsigned n = path_events (t, "A", got, 32);
  const int want[] = { AP_PATH_FAILED, AP_PATH_DISABLED, AP_PATH_STANDBY };
  assert_true (in_order (got, n, want, 3));
  n = path_events (t, "B", got, 32);
  const int wantb[] = { AP_PATH_ACTIVE };
  assert_true (in_order (got, n, wantb, 1));
}

/* Disable the active path while I/O runs: the unit switches (drain, then
 * flip), never two paths at once, no error to callers. */
static void
test_disable_active (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  struct load l;
  load_start (&l, t, 3);
  assert_true (load_progress (&l, 20, 2000));
  assert_int_equal (ap_unit_disable_path (t->u, "A"), 0);
  /* disable returns once the unit has left the path. */
  char act[AP_NAME_MAX];
  assert_string_equal (tu_active (t, act), "B");
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_DISABLED);
  assert_true (load_progress (&l, 20, 2000));
  load_stop (&l);
  assert_int_equal (l.errors, 0);
  assert_int_equal (l.mismatches, 0);
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  assert_true (ev_wait_seq (&t->ev, "online>switch switch>online", 1000));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_SWITCH, "B", -1, 500));

  /* Nothing goes to a disabled path. */
  unsigned a_sub = atomic_load (&tu_tp (t, "A")->submits);
  assert_int_equal (tu_write (t, 0, 0x21), 0);
  assert_int_equal (atomic_load (&tu_tp (t, "A")->submits), a_sub);
  /* Switching to it is refused until enabled. */
  assert_int_equal (ap_unit_switch (t->u, "A"), -1);
  assert_int_equal (ap_unit_enable_path (t->u, "A"), 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  assert_int_equal (ap_unit_switch (t->u, "A"), 0);
  assert_true (tu_wait_active (t, "A", 100));
}

/* The last usable path cannot be disabled (or removed): EBUSY, and the
 * unit carries on. */
static void
test_disable_last_refused (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_int_equal (ap_unit_disable_path (t->u, "B"), 0);
  assert_int_equal (ap_unit_disable_path (t->u, "A"), -1);
  assert_int_equal (ap_get_errno (), EBUSY);
  assert_non_null (strstr (ap_get_error (), "A"));
  assert_true (tu_wait_active (t, "A", 10));
  assert_int_equal (tu_write (t, 0, 0x31), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x31));

  /* The same when the other path is enabled but failed. */
  assert_int_equal (ap_unit_enable_path (t->u, "B"), 0);
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);
  assert_true (tu_wait_path_state (t, "B", AP_PATH_FAILED, 1000));
  sleep_ms (2 * TU_CK_MS);
  assert_int_equal (ap_unit_disable_path (t->u, "A"), -1);
  assert_int_equal (ap_get_errno (), EBUSY);
  assert_int_equal (ap_unit_remove_path (t->u, "A"), -1);
  assert_int_equal (ap_get_errno (), EBUSY);
  assert_true (tu_wait_active (t, "A", 10));
  assert_int_equal (tu_write (t, 0, 0x32), 0);

  /* Unknown paths: ENOENT, named. */
  assert_int_equal (ap_unit_disable_path (t->u, "nosuch"), -1);
  assert_int_equal (ap_get_errno (), ENOENT);
  assert_non_null (strstr (ap_get_error (), "nosuch"));
  assert_int_equal (ap_unit_enable_path (t->u, "nosuch"), -1);
  assert_int_equal (ap_get_errno (), ENOENT);
}

/* A better path joins while I/O runs: the unit drains the old path and
 * switches to the new one, never sending on both at once. */
static void
test_add_better_path_while_io (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_unit (t, NULL);
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_int_equal (st.npaths, 1);
  uint64_t aut = st.switches_auto;

  struct load l;
  load_start (&l, t, 4);
  assert_true (load_progress (&l, 20, 2000));
  struct ap_path *b = tu_path (t, "B");
  assert_int_equal (ap_unit_add_path (t->u, b, 5), 0);
  assert_true (tu_wait_active (t, "B", 2000));
  unsigned a_sub = atomic_load (&tu_tp (t, "A")->submits);
  assert_true (load_progress (&l, 20, 2000));
  load_stop (&l);

  assert_int_equal (l.errors, 0);
  assert_int_equal (l.mismatches, 0);
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  /* Everything after the switch went to B. */
  assert_int_equal (atomic_load (&tu_tp (t, "A")->submits), a_sub);
  assert_true (atomic_load (&tu_tp (t, "B")->submits) > 0);
  tu_status (t, &st);
  assert_int_equal (st.npaths, 2);
  assert_int_equal (st.switches_auto, aut + 1);
  assert_int_equal (find_ps (&st, "A")->state, AP_PATH_STANDBY);
  assert_int_equal (find_ps (&st, "B")->priority, 5);
  assert_true (ev_wait_has (&t->ev, AP_EVENT_PATH_ADDED, "B", -1, 500));
  assert_true (ev_wait_seq (&t->ev, "online>switch switch>online", 1000));
}

/* A path no better than the active one joins as a standby. */
static void
test_add_equal_path (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_unit (t, NULL);
  struct ap_path *b = tu_path (t, "B");
  assert_int_equal (ap_unit_add_path (t->u, b, 0), 0);
  assert_true (tu_wait_path_state (t, "B", AP_PATH_STANDBY, 1000));
  sleep_ms (TU_FB_MS * 4);
  assert_true (tu_wait_active (t, "A", 10));
  /* A second path of the same name is refused. */
  struct ap_path *b2 = tu_path (t, "B");
  t->n--;                       /* consumed by add_path, even on failure */
  assert_int_equal (ap_unit_add_path (t->u, b2, 0), -1);
  assert_int_equal (ap_get_errno (), EEXIST);
}

/* Remove: a standby, then the active one (the unit switches first), and
 * never the last. */
static void
test_remove_path (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_path (t, "C");
  tu_unit (t, NULL);
  struct ap_unit_status st;

  assert_int_equal (ap_unit_remove_path (t->u, "C"), 0);
  tu_status (t, &st);
  assert_int_equal (st.npaths, 2);
  assert_null (find_ps (&st, "C"));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_PATH_REMOVED, "C", -1, 500));

  struct load l;
  load_start (&l, t, 3);
  assert_true (load_progress (&l, 20, 2000));
  assert_int_equal (ap_unit_remove_path (t->u, "A"), 0);
  tu_status (t, &st);
  assert_int_equal (st.npaths, 1);
  assert_true (find_ps (&st, "B")->active);
  assert_true (load_progress (&l, 20, 2000));
  load_stop (&l);
  assert_int_equal (l.errors, 0);
  assert_int_equal (l.mismatches, 0);
  assert_int_equal (atomic_load (&t->w.overlaps), 0);

  assert_int_equal (ap_unit_remove_path (t->u, "B"), -1);
  assert_int_equal (ap_get_errno (), EBUSY);
  assert_int_equal (ap_unit_remove_path (t->u, "A"), -1);
  assert_int_equal (ap_get_errno (), ENOENT);
  assert_int_equal (tu_write (t, 0, 0x41), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x41));
}

/* Another size: refused, and the message gives both sizes. */
static void
test_wrong_size (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_unit (t, NULL);

  char other[64];
  snprintf (other, sizeof other, "/dev/shm/test-unit-big-XXXXXX");
  int fd = mkstemp (other);
  assert_true (fd >= 0);
  assert_int_equal (ftruncate (fd, 2 * TU_SIZE), 0);
  close (fd);
  struct ap_path *big = tu_path_on (t, other, "BIG");
  t->n--;                       /* add_path owns it, also on failure */
  int r = ap_unit_add_path (t->u, big, 0);
  int e = ap_get_errno ();
  char msg[512];
  snprintf (msg, sizeof msg, "%s", ap_get_error ());
  char small_s[32], big_s[32];
  snprintf (small_s, sizeof small_s, "%u", TU_SIZE);
  snprintf (big_s, sizeof big_s, "%u", 2 * TU_SIZE);
  fprintf (stderr, "refused: %s\n", msg);
  assert_int_equal (r, -1);
  assert_int_equal (e, EINVAL);
  assert_non_null (strstr (msg, small_s));
  assert_non_null (strstr (msg, big_s));
  assert_non_null (strstr (msg, "BIG"));
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_int_equal (st.npaths, 1);

  /* The same at creation: no unit, both sizes named. */
  struct ap_direct_options d1 = { .name = "X" }, d2 = { .name = "Y" };
  struct ap_path *ps[2] = { ap_path_open_direct (t->image, &d1),
                            ap_path_open_direct (other, &d2) };
  assert_non_null (ps[0]);
  assert_non_null (ps[1]);
  struct ap_unit_options o;
  tu_opts (&o);
  o.name = "test-mismatch";
  struct ap_unit *u = ap_unit_create (&o, ps, 2);
  snprintf (msg, sizeof msg, "%s", ap_get_error ());
  unlink (other);
  if (u)
    ap_unit_close (u);
  assert_null (u);
  assert_non_null (strstr (msg, small_s));
  assert_non_null (strstr (msg, big_s));
}

/* Another logical block size (a loop device with 4096-byte sectors over
 * a file of the same size): refused, both block sizes named.  Needs root
 * and losetup; skipped otherwise. */
static void
test_wrong_block_size (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_unit (t, NULL);
  uint32_t ubs = ap_unit_block_size (t->u);
  unsigned lbs = ubs == 4096 ? 512 : 4096;

  char img[64], cmd[256], dev[64] = "";
  snprintf (img, sizeof img, "/dev/shm/test-unit-loop-XXXXXX");
  int fd = mkstemp (img);
  assert_true (fd >= 0);
  assert_int_equal (ftruncate (fd, TU_SIZE), 0);
  close (fd);
  snprintf (cmd, sizeof cmd, "losetup -f --show --sector-size %u %s "
            "2>/dev/null", lbs, img);
  FILE *p = geteuid () == 0 ? popen (cmd, "r") : NULL;
  if (p) {
    if (!fgets (dev, sizeof dev, p))
      dev[0] = '\0';
    pclose (p);
    dev[strcspn (dev, "\n")] = '\0';
  }
  if (!dev[0]) {
    unlink (img);
    fprintf (stderr, "no loop device (needs root and losetup): skipped\n");
    skip ();
  }
  struct ap_direct_options d = { .name = "LOOP" };
  struct ap_path *lp = ap_path_open_direct (dev, &d);
  int r = -2, e = 0;
  char msg[512] = "";
  struct ap_path_info info = { 0 };
  if (lp) {
    ap_path_get_info (lp, &info);
    r = ap_unit_add_path (t->u, lp, 0);
    e = ap_get_errno ();
    snprintf (msg, sizeof msg, "%s", ap_get_error ());
  }
  else
    snprintf (msg, sizeof msg, "open: %s", ap_get_error ());
  /* Clean up before asserting: a failed assertion does not come back. */
  snprintf (cmd, sizeof cmd, "losetup -d %s", dev);
  if (r == 0) {
    ap_unit_close (t->u);       /* let go of the device */
    t->u = NULL;
  }
  if (system (cmd) != 0)
    fprintf (stderr, "%s failed\n", cmd);
  unlink (img);
  fprintf (stderr, "refused: %s\n", msg);
  assert_non_null (lp);
  assert_int_equal (info.block_size, lbs);
  assert_int_equal (info.size, TU_SIZE);
  assert_int_equal (r, -1);
  assert_int_equal (e, EINVAL);
  char a[16], b[16];
  snprintf (a, sizeof a, "%u", ubs);
  snprintf (b, sizeof b, "%u", lbs);
  assert_non_null (strstr (msg, a));
  assert_non_null (strstr (msg, b));
  assert_non_null (strstr (msg, "LOOP"));
}

/* Among direct paths, higher priority is preferred: the unit goes to the
 * best healthy one, fails over to the next best, and fails back. */
static void
test_priority_order (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_unit (t, NULL);
  assert_int_equal (ap_unit_add_path (t->u, tu_path (t, "B"), 5), 0);
  assert_true (tu_wait_active (t, "B", 2000));
  assert_int_equal (ap_unit_add_path (t->u, tu_path (t, "C"), 10), 0);
  assert_true (tu_wait_active (t, "C", 2000));
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_int_equal (find_ps (&st, "A")->priority, 0);
  assert_int_equal (find_ps (&st, "B")->priority, 5);
  assert_int_equal (find_ps (&st, "C")->priority, 10);
  assert_true (find_ps (&st, "C")->preferred);
  assert_false (find_ps (&st, "A")->preferred);
  assert_int_equal (find_ps (&st, "A")->kind, AP_PATH_DIRECT);

  /* C fails: B (5) before A (0). */
  ap_fault_set (tu_fault (t, "C"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x51), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  /* B fails too: A. */
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x52), 0);
  assert_true (tu_wait_active (t, "A", 1000));
  /* B back: failback to B; C back: to C. */
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_active (t, "B", 2000));
  ap_fault_set (tu_fault (t, "C"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_active (t, "C", 2000));
  assert_int_equal (tu_write (t, 0, 0x53), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x53));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown (f, tu_setup, tu_teardown)
    T (test_path_states),
    T (test_disable_active),
    T (test_disable_last_refused),
    T (test_add_better_path_while_io),
    T (test_add_equal_path),
    T (test_remove_path),
    T (test_wrong_size),
    T (test_wrong_block_size),
    T (test_priority_order),
#undef T
  };
  return cmocka_run_group_tests (tests, NULL, NULL);
}
