/* test-unit-errors.c — what errors mean, and what reaches the paths:
 *
 *   not path faults (ENOSPC, EINVAL, EROFS, ENODATA): the request fails
 *     with that errno, the path stays active, no switch
 *   path faults (EIO, ETIMEDOUT, ENOLINK): the path fails, the request
 *     succeeds on another path
 *   bad requests: refused by ap_unit_submit (-1, errno), done never called
 *   closing a unit with I/O in flight: everything completes exactly once
 *   FLUSH after a failover reaches the new path; FUA reaches the path
 *     (the wrapper the unit sees, and the direct path under it)
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

/* Errors that blame the request or the disk, not the way to it. */
static void
test_not_path_faults (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  static const int errs[] = { ENOSPC, EINVAL, EROFS, ENODATA };
  /* Static: a failed assertion does not come back to free it. */
  static _Alignas (TU_BS) unsigned char buf[TU_BS];
  memset (buf, 0x5a, sizeof buf);

  for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
    int e = errs[i];
    fprintf (stderr, "-- %s\n", strerror (e));
    assert_false (ap_error_is_path_fault (-e));
    assert_false (ap_error_is_path_fault (e));
    struct ap_unit_status st;
    tu_status (t, &st);
    uint64_t sw = st.switches_auto + st.switches_manual;

    assert_int_equal (ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -e, 0),
                      0);
    assert_int_equal (ap_unit_pwrite (t->u, buf, TU_BS, 0, 0), -1);
    assert_int_equal (ap_get_errno (), e);
    assert_int_equal (ap_unit_pread (t->u, buf, TU_BS, 0), -1);
    assert_int_equal (ap_get_errno (), e);
    assert_int_equal (ap_unit_flush (t->u), -1);
    assert_int_equal (ap_get_errno (), e);
    /* Keep the fault a few checker periods: whatever the checker does
     * meanwhile must not blame the path either. */
    sleep_ms (5 * TU_CK_MS);
    tu_status (t, &st);
    assert_int_equal (st.state, AP_UNIT_ONLINE);
    assert_true (find_ps (&st, "A")->active);
    assert_int_equal (find_ps (&st, "A")->state, AP_PATH_ACTIVE);
    assert_int_equal (st.switches_auto + st.switches_manual, sw);
    assert_int_equal (ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0),
                      0);
    assert_int_equal (ap_unit_pwrite (t->u, buf, TU_BS, 0, 0), 0);
  }
  assert_int_equal (atomic_load (&tu_tp (t, "B")->submits), 0);
}

/* Errors that blame the path: the request is carried over to the other
 * path and succeeds there. */
static void
test_path_faults (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  static const int errs[] = { EIO, ETIMEDOUT, ENOLINK };

  for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
    int e = errs[i];
    fprintf (stderr, "-- %s\n", strerror (e));
    assert_true (ap_error_is_path_fault (-e));
    assert_true (ap_error_is_path_fault (e));
    char from[AP_NAME_MAX];
    tu_active (t, from);
    const char *to = strcmp (from, "A") == 0 ? "B" : "A";
    struct ap_unit_status st;
    tu_status (t, &st);
    uint64_t sw = st.switches_auto;

    ap_fault_set (tu_fault (t, from), AP_FAULT_ERROR, -e, 0);
    assert_int_equal (tu_write (t, (uint64_t) i * TU_BS, 0x60 + (int) i), 0);
    assert_true (tu_wait_active (t, to, 1000));
    assert_true (file_holds (t, (uint64_t) i * TU_BS, TU_BS, 0x60 + (int) i));
    tu_status (t, &st);
    assert_int_equal (find_ps (&st, from)->state, AP_PATH_FAILED);
    assert_int_equal (find_ps (&st, from)->last_errno, e);
    assert_int_equal (st.switches_auto, sw + 1);
    ap_fault_set (tu_fault (t, from), AP_FAULT_NONE, 0, 0);
    assert_true (tu_wait_path_state (t, from, AP_PATH_STANDBY, 1000));
  }
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  /* And the classification itself, for a few more. */
  assert_true (ap_error_is_path_fault (-ECONNRESET));
  assert_true (ap_error_is_path_fault (-ECANCELED));
  assert_false (ap_error_is_path_fault (0));
  assert_false (ap_error_is_path_fault (-EOPNOTSUPP));
  assert_false (ap_error_is_path_fault (-EPERM));
  assert_false (ap_error_is_path_fault (-EILSEQ));
  assert_false (ap_error_is_path_fault (-EREMOTEIO));
}

/* One bad request: refused with want, the message names the unit, and
 * done is never called. */
static void
expect_refused (struct tu *t, struct req *r, int want, const char *what)
{
  fprintf (stderr, "-- %s\n", what);
  errno = 0;
  int rc = ap_unit_submit (t->u, &r->io);
  int e = ap_get_errno ();
  if (rc == 0)
    req_wait (r, 1000);
  else
    fprintf (stderr, "   %s\n", ap_get_error ());
  assert_int_equal (rc, -1);
  assert_int_equal (e, want);
  assert_non_null (strstr (ap_get_error (), "test-unit"));
  req_free (r);
}

static void
test_bad_input (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  uint64_t size = ap_unit_size (t->u);
  uint32_t bs = ap_unit_block_size (t->u);
  assert_int_equal (size, TU_SIZE);
  assert_true (bs >= 512 && TU_BS % bs == 0);
  struct req *keep[16];
  unsigned nkeep = 0;
  struct req *r;

  r = req_new (AP_OP_WRITE, 0, TU_BS, 1, 0);
  void *aligned = r->io.buf;
  r->io.buf = (char *) aligned + 1;
  fprintf (stderr, "-- misaligned buffer\n");
  assert_int_equal (ap_unit_submit (t->u, &r->io), -1);
  assert_int_equal (ap_get_errno (), EINVAL);
  r->io.buf = aligned;
  keep[nkeep++] = r;

  r = req_new (AP_OP_READ, 0, TU_BS, 1, 0);
  aligned = r->io.buf;
  r->io.buf = (char *) aligned + bs / 2;
  fprintf (stderr, "-- misaligned read buffer\n");
  assert_int_equal (ap_unit_submit (t->u, &r->io), -1);
  assert_int_equal (ap_get_errno (), EINVAL);
  r->io.buf = aligned;
  keep[nkeep++] = r;

  r = req_new (AP_OP_WRITE, 0, TU_BS, 1, 0);
  free (r->io.buf);
  r->io.buf = NULL;
  expect_refused (t, r, EINVAL, "write without a buffer");
  expect_refused (t, req_new (AP_OP_READ, bs / 2, TU_BS, 1, 0), EINVAL,
                  "misaligned offset");
  expect_refused (t, req_new (AP_OP_WRITE, 0, TU_BS + bs / 2, 1, 0), EINVAL,
                  "misaligned length");
  expect_refused (t, req_new (AP_OP_TRIM, bs / 2, bs, 0, 0), EINVAL,
                  "misaligned trim");
  expect_refused (t, req_new (AP_OP_READ, size, TU_BS, 1, 0), EINVAL,
                  "read at the end");
  expect_refused (t, req_new (AP_OP_READ, size - TU_BS, 2 * TU_BS, 1, 0),
                  EINVAL, "read across the end");
  expect_refused (t, req_new (AP_OP_READ, UINT64_MAX - bs + 1, TU_BS, 1, 0),
                  EINVAL, "read at an offset that wraps");
  /* Past the end a write is ENOSPC, as NBD asks of servers. */
  expect_refused (t, req_new (AP_OP_WRITE, size - TU_BS, 2 * TU_BS, 1, 0),
                  ENOSPC, "write across the end");
  expect_refused (t, req_new (AP_OP_WRITE_ZEROES, size, TU_BS, 0, 0),
                  ENOSPC, "write-zeroes past the end");
  r = req_new (AP_OP_READ, 0, TU_BS, 1, 0);
  r->io.length = 0;
  expect_refused (t, r, EINVAL, "zero-length read");
  r = req_new (AP_OP_WRITE, 0, TU_BS, 1, 0);
  r->io.length = 0;
  expect_refused (t, r, EINVAL, "zero-length write");
  expect_refused (t, req_new (AP_OP_TRIM, 0, 0, 0, 0), EINVAL,
                  "zero-length trim");
  r = req_new (AP_OP_READ, 0, TU_BS, 1, 0);
  r->io.op = (enum ap_op) 99;
  expect_refused (t, r, EINVAL, "unknown operation");
  expect_refused (t, req_new (AP_OP_READ, 0, TU_BS, 1, AP_IO_FUA), EINVAL,
                  "FUA on a read");
  expect_refused (t, req_new (AP_OP_WRITE, 0, TU_BS, 1, 1u << 7), EINVAL,
                  "unknown flag");
  r = req_new (AP_OP_WRITE, 0, TU_BS, 1, 0);
  r->io.done = NULL;
  expect_refused (t, r, EINVAL, "no done callback");

  /* Nothing refused was called back, or sent anywhere. */
  sleep_ms (50);
  for (unsigned i = 0; i < nkeep; i++) {
    assert_int_equal (atomic_load (&keep[i]->ndone), 0);
    req_free (keep[i]);
  }
  assert_int_equal (atomic_load (&tu_tp (t, "A")->submits), 0);
  assert_int_equal (atomic_load (&tu_tp (t, "B")->submits), 0);
  /* The unit is fine after all that. */
  assert_int_equal (tu_write (t, 0, 0x77), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x77));
  /* A good request at the very end. */
  assert_int_equal (tu_write (t, size - TU_BS, 0x78), 0);
  assert_true (file_holds (t, size - TU_BS, TU_BS, 0x78));
}

/* Close with requests in flight, no faults: each completes once, with
 * success, and the data is on the disk. */
static void
test_close_inflight (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  enum { N = 64 };
  struct req *r[N];
  for (int i = 0; i < N; i++) {
    r[i] = req_new (i % 4 == 3 ? AP_OP_FLUSH : AP_OP_WRITE,
                    i % 4 == 3 ? 0 : (uint64_t) i * TU_BS,
                    i % 4 == 3 ? 0 : TU_BS, i + 1, i % 8 == 1 ? AP_IO_FUA : 0);
    assert_int_equal (ap_unit_submit (t->u, &r[i]->io), 0);
  }
  assert_int_equal (ap_unit_close (t->u), 0);
  t->u = NULL;
  for (int i = 0; i < N; i++) {
    assert_int_equal (atomic_load (&r[i]->ndone), 1);
    assert_int_equal (atomic_load (&r[i]->err), 0);
  }
  sleep_ms (50);
  for (int i = 0; i < N; i++) {
    assert_int_equal (atomic_load (&r[i]->ndone), 1);
    if (i % 4 != 3)
      assert_true (file_holds (t, (uint64_t) i * TU_BS, TU_BS, i + 1));
    req_free (r[i]);
  }
}

/* Close while the active path hangs: the requests time out, fail over,
 * and complete once, on the other path, before close returns. */
static void
test_close_hung_path (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  enum { N = 16 };
  struct req *r[N];
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_HANG, 0, 0);
  for (int i = 0; i < N; i++) {
    r[i] = req_new (AP_OP_WRITE, (uint64_t) i * TU_BS, TU_BS, 0x80 + i, 0);
    assert_int_equal (ap_unit_submit (t->u, &r[i]->io), 0);
  }
  uint64_t t0 = now_ms ();
  assert_int_equal (ap_unit_close (t->u), 0);
  t->u = NULL;
  uint64_t took = now_ms () - t0;
  assert_true (took >= TU_RT_MS * 9 / 10);
  assert_true (took < TU_VT_MS + 2 * TU_RT_MS + 500);
  for (int i = 0; i < N; i++) {
    assert_int_equal (atomic_load (&r[i]->ndone), 1);
    assert_int_equal (atomic_load (&r[i]->err), 0);
    assert_true (file_holds (t, (uint64_t) i * TU_BS, TU_BS, 0x80 + i));
    req_free (r[i]);
  }
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
}

/* Close while every path hangs: bounded, and every request still
 * completes exactly once (with an error). */
static void
test_close_all_hung (void **state)
{
  struct tu *t = *state;
  struct ap_unit_options o;
  tu_opts (&o);
  o.verify_timeout_ms = 400;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, &o);
  enum { N = 8 };
  struct req *r[N];
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_HANG, 0, 0);
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_HANG, 0, 0);
  for (int i = 0; i < N; i++) {
    r[i] = req_new (AP_OP_WRITE, (uint64_t) i * TU_BS, TU_BS, 0x90 + i, 0);
    assert_int_equal (ap_unit_submit (t->u, &r[i]->io), 0);
  }
  uint64_t t0 = now_ms ();
  int rc = ap_unit_close (t->u);
  t->u = NULL;
  uint64_t took = now_ms () - t0;
  fprintf (stderr, "close took %" PRIu64 " ms, returned %d\n", took, rc);
  assert_true (took < 400 + 4 * TU_RT_MS + 1000);
  sleep_ms (50);
  for (int i = 0; i < N; i++) {
    assert_int_equal (atomic_load (&r[i]->ndone), 1);
    assert_true (atomic_load (&r[i]->err) < 0);
    req_free (r[i]);
  }
}

/* After a failover, FLUSH goes to the new path (and not to the old). */
static void
test_flush_after_failover (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_int_equal (tu_write (t, 0, 0xa1), 0);
  assert_int_equal (ap_unit_flush (t->u), 0);
  struct tpath *ta = tu_tp (t, "A"), *tb = tu_tp (t, "B");
  assert_true (atomic_load (&ta->flushes) >= 1);
  assert_int_equal (atomic_load (&tb->flushes), 0);

  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, TU_BS, 0xa2), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  unsigned a_fl = atomic_load (&ta->flushes);
  unsigned b_fl = atomic_load (&tb->flushes);
  assert_int_equal (ap_unit_flush (t->u), 0);
  assert_true (atomic_load (&tb->flushes) >= b_fl + 1);
  assert_int_equal (atomic_load (&ta->flushes), a_fl);
  assert_true (file_holds (t, 0, TU_BS, 0xa1));
  assert_true (file_holds (t, TU_BS, TU_BS, 0xa2));

  /* A flush that fails on the path fails over too. */
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  a_fl = atomic_load (&ta->flushes);
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (ap_unit_flush (t->u), 0);
  assert_true (tu_wait_active (t, "A", 1000));
  assert_true (atomic_load (&ta->flushes) >= a_fl + 1);
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
}

/* FUA on a write reaches the path the unit sees and the direct path
 * under it; a write without FUA arrives without it. */
struct fua_trace {
  _Atomic unsigned writes, fua;
};

static void
fua_cb (void *opaque, struct ap_path *path, enum ap_trace_point point,
        const struct ap_io *io, bool probe, int err)
{
  struct fua_trace *f = opaque;
  (void) path;
  (void) err;
  if (probe || point != AP_TRACE_SUBMIT || io->op != AP_OP_WRITE)
    return;
  atomic_fetch_add (&f->writes, 1);
  if (io->flags & AP_IO_FUA)
    atomic_fetch_add (&f->fua, 1);
}

static void
test_fua_reaches_path (void **state)
{
  struct tu *t = *state;
  struct fua_trace inner[2] = { 0 };
  static const char *const names[] = { "A", "B" };
  for (int i = 0; i < 2; i++) {
    struct ap_direct_options d = { .name = names[i] };
    struct ap_path *in = ap_path_open_direct (t->image, &d);
    assert_non_null (in);
    struct ap_path_info info;
    ap_path_get_info (in, &info);
    assert_true (info.caps & AP_CAN_FUA);
    assert_true (info.caps & AP_CAN_FLUSH);
    assert_true (info.o_direct);
    ap_path_set_trace (in, fua_cb, &inner[i]);
    struct ap_path *f = ap_path_fault_wrap (in, names[i]);
    assert_non_null (f);
    struct tpath *tp = &t->w.p[t->w.n++];
    tp->w = &t->w;
    snprintf (tp->name, sizeof tp->name, "%s", names[i]);
    ap_path_set_trace (f, w_trace, tp);
    t->f[t->n++] = f;
  }
  tu_unit (t, NULL);
  struct tpath *ta = tu_tp (t, "A"), *tb = tu_tp (t, "B");
  void *buf = tu_buf (TU_BS, 0xb1);

  assert_int_equal (ap_unit_pwrite (t->u, buf, TU_BS, 0, AP_IO_FUA), 0);
  assert_int_equal (atomic_load (&ta->fua_writes), 1);
  assert_int_equal (atomic_load (&inner[0].fua), 1);
  assert_int_equal (ap_unit_pwrite (t->u, buf, TU_BS, TU_BS, 0), 0);
  assert_int_equal (atomic_load (&ta->fua_writes), 1);
  assert_int_equal (atomic_load (&ta->writes), 2);
  assert_int_equal (atomic_load (&inner[0].fua), 1);
  assert_int_equal (atomic_load (&inner[0].writes), 2);

  /* After a failover, on the new path; a FUA write that fails over keeps
   * its FUA. */
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (ap_unit_pwrite (t->u, buf, TU_BS, 2 * TU_BS, AP_IO_FUA),
                    0);
  assert_true (tu_wait_active (t, "B", 1000));
  assert_int_equal (atomic_load (&tb->fua_writes), 1);
  assert_int_equal (atomic_load (&inner[1].fua), 1);
  /* Write-zeroes with FUA is accepted too. */
  assert_int_equal (ap_unit_write_zeroes (t->u, TU_BS, 3 * TU_BS, AP_IO_FUA),
                    0);
  assert_true (file_holds (t, 3 * TU_BS, TU_BS, 0));
  free (buf);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown (f, tu_setup, tu_teardown)
    T (test_not_path_faults),
    T (test_path_faults),
    T (test_bad_input),
    T (test_close_inflight),
    T (test_close_hung_path),
    T (test_close_all_hung),
    T (test_flush_after_failover),
    T (test_fua_reaches_path),
#undef T
  };
  return cmocka_run_group_tests (tests, NULL, NULL);
}
