/* test-unit-states.c — one test per transition of the unit's state
 * machine (lib/unit-state.c), driven through the fault wrapper, with the
 * AP_EVENT_UNIT_STATE events checked against each transition:
 *
 *   ONLINE ─ path error ─► VERIFY ─ other path ok ─► ONLINE
 *   VERIFY ─ no path within verify_timeout ─► OFFLINE (I/O fails: EIO)
 *   OFFLINE ─ a path recovers (checker) ─► ONLINE
 *   OFFLINE with queue_if_no_path: I/O held, completed when a path returns
 *   ONLINE ─ ap_unit_switch ─► SWITCH ─► ONLINE (pinned, switches_manual)
 *   failback to the preferred path after failback_ms; not while pinned;
 *   ap_unit_unpin, then failback
 *   request timeout (hang, drop) ─► VERIFY; the request completes once,
 *   on the other path, and the held copy never runs
 *   any state ─ close ─► CLOSED
 * and the whole sequence of events of one unit's life, from creation
 * (ap_unit_options.events) to close.
 */
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

/* ONLINE → VERIFY (EIO on the active path) → ONLINE on the other one; the
 * caller sees no error. */
static void
test_online_verify_online (void **state)
{
  struct tu *t = *state;
  char act[AP_NAME_MAX];
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_string_equal (tu_active (t, act), "A");
  struct ap_unit_status st;
  tu_status (t, &st);
  uint64_t sw = st.switches_auto;

  assert_int_equal (ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0),
                    0);
  assert_int_equal (tu_write (t, 0, 0x11), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  assert_true (file_holds (t, 0, TU_BS, 0x11));
  assert_true (ev_wait_seq (&t->ev, "online>verify verify>online", 1000));
  tu_status (t, &st);
  assert_int_equal (st.switches_auto, sw + 1);
  assert_int_equal (find_ps (&st, "A")->state, AP_PATH_FAILED);
  assert_int_equal (find_ps (&st, "A")->last_errno, EIO);
  assert_true (ev_wait_has (&t->ev, AP_EVENT_SWITCH, "B", -1, 500));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_PATH_STATE, "A", AP_PATH_FAILED,
                            500));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  /* The event that took it to VERIFY names the error. */
  pthread_mutex_lock (&t->ev.lock);
  for (unsigned i = 0; i < t->ev.n; i++)
    if (t->ev.ev[i].type == AP_EVENT_UNIT_STATE
        && t->ev.ev[i].new_state == AP_UNIT_VERIFY) {
      assert_int_equal (t->ev.ev[i].err, -EIO);
      assert_true (t->ev.ev[i].reason[0] != '\0');
    }
  pthread_mutex_unlock (&t->ev.lock);
}

/* Both paths fail: VERIFY → OFFLINE after verify_timeout; the held write
 * fails with EIO, and new I/O is refused at once with EIO. */
static void
test_verify_offline (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_int_equal (ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0),
                    0);
  assert_int_equal (ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0),
                    0);
  uint64_t t0 = now_ms ();
  assert_int_equal (tu_write (t, 0, 0x22), -1);
  uint64_t took = now_ms () - t0;
  assert_int_equal (ap_get_errno (), EIO);
  /* Failed by the verification timeout: not before it, not much after. */
  assert_true (took >= TU_VT_MS * 9 / 10);
  assert_true (took <= TU_VT_MS + 1000);
  assert_true (tu_wait_state (t, AP_UNIT_OFFLINE, 100));
  assert_true (ev_wait_seq (&t->ev, "online>verify verify>offline", 1000));

  /* Offline, not queueing: refused at once, done never called. */
  struct req *r = req_new (AP_OP_WRITE, 0, TU_BS, 0x23, 0);
  errno = 0;
  assert_int_equal (ap_unit_submit (t->u, &r->io), -1);
  assert_int_equal (ap_get_errno (), EIO);
  assert_true (strlen (ap_get_error ()) > 0);
  sleep_ms (50);
  assert_int_equal (atomic_load (&r->ndone), 0);
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_int_equal (find_ps (&st, "A")->state, AP_PATH_FAILED);
  assert_int_equal (find_ps (&st, "B")->state, AP_PATH_FAILED);
  req_free (r);
}

/* OFFLINE → ONLINE once the checker finds a path working again. */
static void
test_offline_online (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x31), -1);
  assert_true (tu_wait_state (t, AP_UNIT_OFFLINE, 100));

  uint64_t t0 = now_ms ();
  assert_int_equal (ap_fault_set (tu_fault (t, "B"), AP_FAULT_NONE, 0, 0), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  /* Within a few checker periods. */
  assert_true (now_ms () - t0 < 10 * TU_CK_MS + 200);
  assert_true (ev_wait_seq (&t->ev,
                            "online>verify verify>offline offline>online",
                            1000));
  assert_int_equal (tu_write (t, 0, 0x32), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x32));
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_FAILED);
}

/* queue_if_no_path: offline, I/O waits (old and new), and completes once
 * a path returns. */
static void
test_queue_if_no_path (void **state)
{
  struct tu *t = *state;
  struct ap_unit_options o;
  tu_opts (&o);
  o.queue_if_no_path = true;
  o.verify_timeout_ms = 300;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, &o);
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);

  struct req *r1 = req_new (AP_OP_WRITE, 0, TU_BS, 0x41, 0);
  assert_int_equal (ap_unit_submit (t->u, &r1->io), 0);
  assert_true (tu_wait_state (t, AP_UNIT_OFFLINE, 1500));
  /* Offline and queueing: accepted, held. */
  struct req *r2 = req_new (AP_OP_WRITE, TU_BS, TU_BS, 0x42, AP_IO_FUA);
  assert_int_equal (ap_unit_submit (t->u, &r2->io), 0);
  sleep_ms (300);
  assert_int_equal (atomic_load (&r1->ndone), 0);
  assert_int_equal (atomic_load (&r2->ndone), 0);
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_true (st.queue_if_no_path);
  assert_int_equal (st.state, AP_UNIT_OFFLINE);
  assert_true (st.held >= 2);

  assert_int_equal (ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0), 0);
  assert_true (req_wait (r1, 2000));
  assert_true (req_wait (r2, 2000));
  assert_int_equal (atomic_load (&r1->err), 0);
  assert_int_equal (atomic_load (&r2->err), 0);
  assert_true (tu_wait_active (t, "A", 1000));
  sleep_ms (100);
  assert_int_equal (atomic_load (&r1->ndone), 1);
  assert_int_equal (atomic_load (&r2->ndone), 1);
  assert_true (file_holds (t, 0, TU_BS, 0x41));
  assert_true (file_holds (t, TU_BS, TU_BS, 0x42));
  assert_true (ev_wait_seq (&t->ev,
                            "online>verify verify>offline offline>online",
                            1000));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  req_free (r1);
  req_free (r2);
}

/* ONLINE → SWITCH → ONLINE on ap_unit_switch, with I/O running: the path
 * is pinned, switches_manual counts it, never two paths at once. */
static void
test_switch (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  struct ap_unit_status st;
  tu_status (t, &st);
  uint64_t man = st.switches_manual, aut = st.switches_auto;

  struct load l;
  load_start (&l, t, 3);
  assert_true (load_progress (&l, 20, 2000));
  assert_int_equal (ap_unit_switch (t->u, "B"), 0);
  /* Switch waits until done. */
  char act[AP_NAME_MAX];
  assert_string_equal (tu_active (t, act), "B");
  assert_true (load_progress (&l, 20, 2000));
  load_stop (&l);

  tu_status (t, &st);
  assert_int_equal (st.state, AP_UNIT_ONLINE);
  assert_int_equal (st.switches_manual, man + 1);
  assert_int_equal (st.switches_auto, aut);
  assert_true (find_ps (&st, "B")->pinned);
  assert_false (find_ps (&st, "A")->pinned);
  assert_int_equal (find_ps (&st, "A")->state, AP_PATH_STANDBY);
  assert_true (ev_wait_seq (&t->ev, "online>switch switch>online", 1000));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_SWITCH, "B", -1, 500));
  assert_int_equal (l.errors, 0);
  assert_int_equal (l.mismatches, 0);
  assert_int_equal (atomic_load (&t->w.overlaps), 0);

  /* Switching to the path already active changes nothing. */
  assert_int_equal (ap_unit_switch (t->u, "B"), 0);
  tu_status (t, &st);
  assert_int_equal (st.switches_manual, man + 1);
  /* A path that does not exist: ENOENT. */
  assert_int_equal (ap_unit_switch (t->u, "nosuch"), -1);
  assert_int_equal (ap_get_errno (), ENOENT);
  assert_non_null (strstr (ap_get_error (), "nosuch"));
}

/* A unit over B with A joining at a higher priority: A is preferred. */
static void
preferred_a (struct tu *t)
{
  tu_path (t, "B");
  tu_unit (t, NULL);
  struct ap_path *a = tu_path (t, "A");
  assert_int_equal (ap_unit_add_path (t->u, a, 10), 0);
  assert_true (tu_wait_active (t, "A", 2000));
  sleep_ms (2 * TU_CK_MS);
  ev_reset (&t->ev);
}

/* Failback: the preferred path fails, the unit leaves it, and goes back
 * once it has been healthy for failback_ms. */
static void
test_failback (void **state)
{
  struct tu *t = *state;
  preferred_a (t);
  struct ap_unit_status st;
  tu_status (t, &st);
  uint64_t aut = st.switches_auto;

  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x51), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  sleep_ms (100);
  /* Still failed: no failback to a broken path. */
  assert_true (tu_wait_active (t, "B", 10));

  uint64_t t0 = now_ms ();
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  assert_true (tu_wait_active (t, "A", 2000));
  uint64_t took = now_ms () - t0;
  assert_true (took >= TU_FB_MS);
  assert_true (ev_wait_seq (&t->ev, "online>verify verify>online "
                            "online>switch switch>online", 1000));
  tu_status (t, &st);
  assert_int_equal (st.switches_auto, aut + 2);
  assert_int_equal (st.switches_manual, 0);
  assert_int_equal (tu_write (t, 0, 0x52), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x52));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
}

/* Failback waits failback_ms: with a long interval it has not happened
 * early. */
static void
test_failback_interval (void **state)
{
  struct tu *t = *state;
  struct ap_unit_options o;
  tu_opts (&o);
  o.failback_ms = 600;
  tu_path (t, "B");
  tu_unit (t, &o);
  struct ap_path *a = tu_path (t, "A");
  assert_int_equal (ap_unit_add_path (t->u, a, 10), 0);
  /* A better path that joins is taken at once, not after failback_ms. */
  assert_true (tu_wait_active (t, "A", 400));

  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x53), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  uint64_t healthy = now_ms ();
  sleep_ms (300);
  assert_true (tu_wait_active (t, "B", 10));
  assert_true (tu_wait_active (t, "A", 1500));
  assert_true (now_ms () - healthy >= 600 - 2 * TU_CK_MS);
}

/* no_failback: the unit stays where failover put it. */
static void
test_no_failback (void **state)
{
  struct tu *t = *state;
  struct ap_unit_options o;
  tu_opts (&o);
  o.no_failback = true;
  tu_path (t, "B");
  tu_unit (t, &o);
  struct ap_path *a = tu_path (t, "A");
  assert_int_equal (ap_unit_add_path (t->u, a, 10), 0);
  assert_true (tu_wait_active (t, "A", 2000));
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x54), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  sleep_ms (TU_FB_MS * 6);
  assert_true (tu_wait_active (t, "B", 10));
}

/* A pinned path is not undone by failback; unpin, and failback happens;
 * a pinned path that fails is left, and failback returns to it. */
static void
test_pinned_and_unpin (void **state)
{
  struct tu *t = *state;
  preferred_a (t);
  assert_int_equal (ap_unit_switch (t->u, "B"), 0);
  assert_true (tu_wait_active (t, "B", 100));
  sleep_ms (TU_FB_MS * 6);
  /* A is healthy and preferred by priority, but B is pinned. */
  assert_true (tu_wait_active (t, "B", 10));
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_true (find_ps (&st, "B")->pinned);
  assert_true (find_ps (&st, "B")->preferred);

  /* The pinned path fails: failover leaves it ... */
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x61), 0);
  assert_true (tu_wait_active (t, "A", 1000));
  /* ... and failback returns to it once it is back. */
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_active (t, "B", 2000));
  tu_status (t, &st);
  assert_true (find_ps (&st, "B")->pinned);

  ev_reset (&t->ev);
  assert_int_equal (ap_unit_unpin (t->u), 0);
  assert_true (tu_wait_active (t, "A", 2000));
  tu_status (t, &st);
  assert_false (find_ps (&st, "A")->pinned);
  assert_false (find_ps (&st, "B")->pinned);
  assert_true (find_ps (&st, "A")->preferred);
  assert_true (ev_wait_seq (&t->ev, "online>switch switch>online", 1000));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
}

/* A request that never comes back (hang or drop) times out: VERIFY, the
 * path is fenced, the request completes once, on the other path, and the
 * held copy never runs (restoring the path afterwards releases nothing). */
static void
timeout_case (struct tu *t, enum ap_fault_mode mode)
{
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_int_equal (tu_write (t, 0, 0x70), 0);
  struct tpath *tb = tu_tp (t, "B");
  unsigned b_writes = atomic_load (&tb->writes);

  assert_int_equal (ap_fault_set (tu_fault (t, "A"), mode, 0, 0), 0);
  struct req *r = req_new (AP_OP_WRITE, 0, TU_BS, 0x71, 0);
  uint64_t t0 = now_ms ();
  assert_int_equal (ap_unit_submit (t->u, &r->io), 0);
  assert_true (req_wait (r, TU_RT_MS + TU_VT_MS + 1000));
  uint64_t took = now_ms () - t0;
  assert_int_equal (atomic_load (&r->err), 0);
  assert_true (took >= TU_RT_MS * 9 / 10);
  assert_true (took < TU_RT_MS + TU_VT_MS);
  assert_true (tu_wait_active (t, "B", 500));
  assert_true (atomic_load (&tb->writes) >= b_writes + 1);
  assert_true (file_holds (t, 0, TU_BS, 0x71));
  assert_true (ev_wait_seq (&t->ev, "online>verify verify>online", 1000));
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_int_equal (find_ps (&st, "A")->last_errno, ETIMEDOUT);

  /* Overwrite on B, then end the fault on A: had A kept the old write,
   * it would run now and put 0x71 back over 0x72. */
  assert_int_equal (tu_write (t, 0, 0x72), 0);
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  sleep_ms (200);
  assert_true (file_holds (t, 0, TU_BS, 0x72));
  assert_int_equal (atomic_load (&r->ndone), 1);
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  req_free (r);
}

static void
test_timeout_hang (void **state)
{
  timeout_case (*state, AP_FAULT_HANG);
}

static void
test_timeout_drop (void **state)
{
  timeout_case (*state, AP_FAULT_DROP);
}

/* A slow fence (a slow server): the unit waits for it before using the
 * other path; still exactly once, still no overlap. */
static void
test_timeout_slow_fence (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_int_equal (ap_fault_set_fence_delay (tu_fault (t, "A"), 300000), 0);
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_HANG, 0, 0);
  struct req *r = req_new (AP_OP_WRITE, 0, TU_BS, 0x75, 0);
  uint64_t t0 = now_ms ();
  assert_int_equal (ap_unit_submit (t->u, &r->io), 0);
  assert_true (req_wait (r, TU_RT_MS + TU_VT_MS + 1000));
  assert_int_equal (atomic_load (&r->err), 0);
  assert_true (now_ms () - t0 >= TU_RT_MS + 300 - 20);
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  sleep_ms (100);
  assert_int_equal (atomic_load (&r->ndone), 1);
  assert_true (file_holds (t, 0, TU_BS, 0x75));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  req_free (r);
}

/* The whole life in one event log: every unit-state event, in order,
 * with increasing times, naming the unit; close ends in CLOSED. */
static void
test_event_sequence (void **state)
{
  struct tu *t = *state;
  struct ap_unit_options o;
  tu_opts (&o);
  o.verify_timeout_ms = 300;
  /* Events from creation on: the first is the unit coming online. */
  o.events.fn = ev_cb;
  o.events.opaque = &t->ev;
  tu_path (t, "A");
  tu_path (t, "B");
  t->u = ap_unit_create (&o, t->f, t->n);
  assert_non_null (t->u);
  assert_true (tu_wait_active (t, "A", 1000));
  assert_true (ev_wait_seq (&t->ev, "offline>online", 1000));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_PATH_STATE, "A", AP_PATH_ACTIVE,
                            500));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_PATH_STATE, "B",
                            AP_PATH_STANDBY, 500));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_SWITCH, "A", -1, 500));

  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 1), 0);               /* failover */
  assert_true (tu_wait_active (t, "B", 1000));
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  assert_int_equal (ap_unit_switch (t->u, "A"), 0);       /* switch */
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 2), -1);              /* offline */
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_active (t, "B", 1000));            /* back */
  const char *want = "offline>online online>verify verify>online "
    "online>switch switch>online online>verify verify>offline "
    "offline>online";
  assert_true (ev_wait_seq (&t->ev, want, 1000));

  assert_int_equal (ap_unit_close (t->u), 0);
  t->u = NULL;
  char seq[512];
  ev_unit_seq (&t->ev, seq, sizeof seq);
  char want2[512];
  snprintf (want2, sizeof want2, "%s online>closed", want);
  assert_string_equal (seq, want2);
  assert_false (t->ev.bad_order);
  pthread_mutex_lock (&t->ev.lock);
  /* Consecutive unit-state events chain: each starts where the last
   * ended. */
  int last = -1;
  for (unsigned i = 0; i < t->ev.n; i++) {
    if (t->ev.ev[i].type != AP_EVENT_UNIT_STATE)
      continue;
    if (last >= 0)
      assert_int_equal (t->ev.ev[i].old_state, last);
    last = t->ev.ev[i].new_state;
  }
  pthread_mutex_unlock (&t->ev.lock);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown (f, tu_setup, tu_teardown)
    T (test_online_verify_online),
    T (test_verify_offline),
    T (test_offline_online),
    T (test_queue_if_no_path),
    T (test_switch),
    T (test_failback),
    T (test_failback_interval),
    T (test_no_failback),
    T (test_pinned_and_unpin),
    T (test_timeout_hang),
    T (test_timeout_drop),
    T (test_timeout_slow_fence),
    T (test_event_sequence),
#undef T
  };
  return cmocka_run_group_tests (tests, NULL, NULL);
}
