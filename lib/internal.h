/* internal.h — what the files of libaltpath share and nothing outside sees.
 *
 * Sections are headed by the .c file that defines what follows.
 *
 *   unit.c  ── decides (which path, when to hold, fence, resubmit)
 *     │  path->ops->submit / fence / close
 *     ▼
 *   path-direct.c  path-fault.c (wraps any path)  path-served.c
 *     │  ap_path_done(path, io, err)  ── each completion, on a path thread
 *     ▼
 *   path->owner_done: the unit, or the wrapping fault path
 *
 * Policy apart from mechanism: a path only does I/O and reports; the unit
 * alone decides what an error means.
 */
#ifndef ALTPATH_INTERNAL_H
#define ALTPATH_INTERNAL_H

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>

#include "altpath.h"
#include "clock.h"
#include "log.h"

/* ---------------------------------------------------------- path ops */

struct ap_path_ops {
  const char *kind_name;        /* "direct", "fault", "served" */

  /* Start one request.  0: accepted; its completion comes later through
   * ap_path_done() (possibly before submit returns, on another thread).
   * Negative errno: refused now, no completion will come; -EAGAIN means
   * "no room now, try again after a completion" and does not blame the
   * path.  Must not block for long; never called with a unit lock held. */
  int (*submit) (struct ap_path *p, struct ap_io *io);

  /* Fence: make every request now in flight end soon, either with its real
   * result or with -ECANCELED, and ensure that once it has ended it can no
   * longer touch the caller's buffer or the disk.  Does not block; the
   * caller waits for the completions.  For a served path a write is ended
   * only once the server can no longer execute it (DESIGN.md invariant 3). */
  void (*fence) (struct ap_path *p);

  /* Free everything.  Called only with nothing in flight. */
  void (*close) (struct ap_path *p);
};

/* Where a completion goes: the unit, or a wrapping path. */
typedef void ap_owner_done_fn (void *owner, struct ap_path *p,
                               struct ap_io *io, int err);

/* The part every path kind shares; each kind embeds it first. */
struct ap_path {
  const struct ap_path_ops *ops;
  struct ap_path_info info;     /* filled by the kind when it opens */

  ap_owner_done_fn *owner_done; /* set by whoever owns the path */
  void *owner;

  ap_trace_fn *trace;           /* ap_path_set_trace(); NULL: none */
  void *trace_opaque;
};

/* path.c */
/* Fill the shared part; the kind fills info afterwards. */
void ap_path_init (struct ap_path *p, const struct ap_path_ops *ops,
                   enum ap_path_kind kind, const char *name);
/* Send io down p (calls the trace hook). */
int ap_path_submit (struct ap_path *p, struct ap_io *io);
/* Every completion of a path goes through here exactly once. */
void ap_path_done (struct ap_path *p, struct ap_io *io, int err);
/* Around a run of completions on a path's completion thread: the end
 * calls the hook of ap_set_completion_hook(). */
void ap_completion_run_begin (void);
void ap_completion_run_end (void);
/* Requests the unit makes for itself (probes, flushes on switch). */
#define AP_IO_KIND_USER  0
#define AP_IO_KIND_PROBE 1
#define AP_IO_KIND_SYNC  2      /* a flush the unit sends on a planned switch */

/* ---------------------------------------------------------- path-served.c */

/* What a served path is doing, for tests and diagnostics (a public form
 * would belong in struct ap_path_info; see docs/served.md). */
struct ap_served_state {
  bool connected;               /* requests are being taken */
  unsigned connections;         /* connections open now */
  unsigned deadline_ms;         /* the request deadline every open
                                   connection agreed; 0: none agreed (a
                                   plain NBD peer, or a Unix socket) */
  uint64_t doubt_wait_ns;       /* how long a write in doubt waits after
                                   its connection closed, on connection 0 */
  unsigned in_doubt;            /* writes waiting out that time now */
  uint64_t connects;            /* connections made (first one included) */
  uint64_t losses;              /* connections lost by themselves */
  uint64_t fences;
  uint64_t last_doubt_ns;       /* the last write in doubt: from its
                                   connection's close to its end */
};
/* -1 (EINVAL) if p is not a served path. */
int ap_served_get_state (struct ap_path *p, struct ap_served_state *st);

/* --------------------------------------------------------------- errors.c */

/* Record the calling thread's error (message and errno), like libnbd's
 * set_error.  errnum is positive.  Returns -1 for convenience. */
int ap_set_error (int errnum, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* ------------------------------------------------------------ counters.c */

void ap_counters_account (struct ap_counters *c, const struct ap_io *io,
                          uint64_t latency_ns, int err);
/* Percentile (0 < q < 1) of a latency histogram, in µs. */
uint64_t ap_counters_percentile (const struct ap_counters *c, double q);

/* -------------------------------------------------------- a path's lists */

/* Requests a path keeps for itself (held, in flight, in doubt, ready to
 * complete), linked through io->internal.pnext/pprev: a path owns those
 * two fields while it has the request. */
struct ap_plist {
  struct ap_io *head, *tail;
  unsigned count;
};

static inline void
ap_plist_append (struct ap_plist *l, struct ap_io *io)
{
  io->internal.pnext = NULL;
  io->internal.pprev = l->tail;
  if (l->tail)
    l->tail->internal.pnext = io;
  else
    l->head = io;
  l->tail = io;
  l->count++;
}

static inline void
ap_plist_remove (struct ap_plist *l, struct ap_io *io)
{
  if (io->internal.pprev)
    io->internal.pprev->internal.pnext = io->internal.pnext;
  else
    l->head = io->internal.pnext;
  if (io->internal.pnext)
    io->internal.pnext->internal.pprev = io->internal.pprev;
  else
    l->tail = io->internal.pprev;
  io->internal.pnext = io->internal.pprev = NULL;
  l->count--;
}

static inline struct ap_io *
ap_plist_pop (struct ap_plist *l)
{
  struct ap_io *io = l->head;
  if (io)
    ap_plist_remove (l, io);
  return io;
}

/* Insert keeping the list sorted by internal.due_ns; most requests come
 * in order, so walk from the tail. */
static inline void
ap_plist_insert_by_due (struct ap_plist *l, struct ap_io *io)
{
  struct ap_io *after = l->tail;
  while (after && after->internal.due_ns > io->internal.due_ns)
    after = after->internal.pprev;
  io->internal.pprev = after;
  io->internal.pnext = after ? after->internal.pnext : l->head;
  if (io->internal.pnext)
    io->internal.pnext->internal.pprev = io;
  else
    l->tail = io;
  if (after)
    after->internal.pnext = io;
  else
    l->head = io;
  l->count++;
}

/* ---------------------------------------------------------------- helpers */

#define container_of(ptr, type, member) \
  ((type *) ((char *) (ptr) - offsetof (type, member)))

#endif /* ALTPATH_INTERNAL_H */
