/* unit-helpers.h — the helpers shared by tests/test-unit-errors.c,
 * tests/test-unit-paths.c and tests/test-unit-states.c.  Each of those is
 * its own cmocka program (Makefile: tests/NAME.c -> build/tests/NAME; a
 * header here is not built as a program) and includes this header once.
 *
 *   struct tu   one unit over N paths "A", "B", "C": direct paths on one
 *               image file in /dev/shm (tmpfs: no disk latency under the
 *               short timeouts), each under a fault wrapper of the same
 *               name; short timeouts (TU_RT_MS ...)
 *   witness     a trace hook on every wrapper: user requests in flight
 *               per path; a submission on one path while another has one
 *               in flight is an overlap (invariant 1)
 *   evlog       every event the unit delivers, copied
 *   struct req  one asynchronous request that counts its completions
 *   struct load threads doing synchronous I/O through the unit until stopped
 *
 * Every function is static inline: each program uses only some of them,
 * and an unused static inline function draws no -Wunused-function warning.
 */
#ifndef ALTPATH_TESTS_UNIT_HELPERS_H
#define ALTPATH_TESTS_UNIT_HELPERS_H

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

#define TU_BS 4096              /* request size and buffer alignment */
#define TU_SIZE (8u << 20)      /* image size */
#define TU_RT_MS 200            /* request timeout */
#define TU_VT_MS 1000           /* verification timeout */
#define TU_CK_MS 20             /* checker interval */
#define TU_FB_MS 50             /* failback interval */
#define TU_MAXP 8               /* paths made in one test, removed ones too */

static inline uint64_t
now_ms (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static inline void
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

static inline void
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

static inline void
ev_reset (struct evlog *l)
{
  pthread_mutex_lock (&l->lock);
  l->n = 0;
  l->bad_order = false;
  pthread_mutex_unlock (&l->lock);
}

/* The unit-state events so far, as "old>new" pairs joined by spaces,
 * e.g. "online>verify verify>online". */
static inline void
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
static inline bool
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
static inline bool
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

static inline bool
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

static inline void
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

static inline void
tu_opts (struct ap_unit_options *o)
{
  ap_unit_options_init (o);
  o->name = "test-unit";
  o->request_timeout_ms = TU_RT_MS;
  o->verify_timeout_ms = TU_VT_MS;
  o->checker_interval_ms = TU_CK_MS;
  o->failback_ms = TU_FB_MS;
}

static inline int
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

static inline int
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
static inline struct ap_path *
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

static inline struct ap_path *
tu_path (struct tu *t, const char *name)
{
  return tu_path_on (t, t->image, name);
}

static inline struct ap_path *
tu_fault (struct tu *t, const char *name)
{
  for (unsigned i = 0; i < t->n; i++)
    if (strcmp (ap_path_name (t->f[i]), name) == 0)
      return t->f[i];
  fail_msg ("no path %s", name);
  return NULL;
}

static inline struct tpath *
tu_tp (struct tu *t, const char *name)
{
  for (unsigned i = 0; i < t->w.n; i++)
    if (strcmp (t->w.p[i].name, name) == 0)
      return &t->w.p[i];
  fail_msg ("no traced path %s", name);
  return NULL;
}

static inline void
tu_status (struct tu *t, struct ap_unit_status *st)
{
  assert_int_equal (ap_unit_get_status (t->u, st), 0);
}

/* The active path's name ("" if none), into buf. */
static inline const char *
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

static inline const struct ap_path_status *
find_ps (const struct ap_unit_status *st, const char *name)
{
  for (unsigned i = 0; i < st->npaths; i++)
    if (strcmp (st->paths[i].name, name) == 0)
      return &st->paths[i];
  return NULL;
}

static inline int
tu_path_state (struct tu *t, const char *name)
{
  struct ap_unit_status st;
  tu_status (t, &st);
  const struct ap_path_status *ps = find_ps (&st, name);
  return ps ? (int) ps->state : -1;
}

static inline bool
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
static inline bool
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

static inline bool
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
static inline void
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

static inline void
req_done (struct ap_io *io, int err)
{
  struct req *r = io->opaque;
  atomic_store (&r->err, err);
  atomic_store (&r->done_ms, now_ms ());
  atomic_fetch_add (&r->ndone, 1);
}

static inline void *
tu_buf (size_t len, int fill)
{
  void *b = NULL;
  assert_int_equal (posix_memalign (&b, TU_BS, len), 0);
  memset (b, fill, len);
  return b;
}

/* A request with its own buffer (read/write), not yet submitted. */
static inline struct req *
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

static inline void
req_free (struct req *r)
{
  if (r) {
    free (r->io.buf);
    free (r);
  }
}

static inline bool
req_wait (struct req *r, unsigned ms)
{
  uint64_t until = now_ms () + ms;
  while (atomic_load (&r->ndone) == 0 && now_ms () < until)
    sleep_ms (1);
  return atomic_load (&r->ndone) > 0;
}

/* What the image file holds at off (plain pread, not through the unit):
 * true if every byte of len is fill. */
static inline bool
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
static inline int
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

static inline void *
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

static inline void
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

static inline void
load_stop (struct load *l)
{
  atomic_store (&l->stop, true);
  for (unsigned i = 0; i < l->n; i++)
    pthread_join (l->th[i], NULL);
}

/* Wait until the load has done at least n more operations. */
static inline bool
load_progress (struct load *l, unsigned n, unsigned ms)
{
  unsigned start = atomic_load (&l->ops);
  uint64_t until = now_ms () + ms;
  while (atomic_load (&l->ops) < start + n && now_ms () < until)
    sleep_ms (2);
  return atomic_load (&l->ops) >= start + n;
}

#endif /* ALTPATH_TESTS_UNIT_HELPERS_H */
