/* unit.c — the switching unit: one logical disk over several paths.
 *
 * A unit sends I/O down exactly one path (the active one) and keeps the
 * others as standbys.  This file is the policy: it classifies errors,
 * fences and drains a failed path, picks the next path, resubmits what was
 * held in its original order, fails back, and follows the operator.  The
 * paths (path-*.c) only do I/O.  The transitions themselves are the table
 * in unit-state.c.
 *
 * Threads.  Callers submit from any thread; completions arrive on path
 * threads; one unit thread per unit does everything that waits or may
 * block (fencing, probing, switching, resubmitting, the checker, timers,
 * delivering events).  The fast path — submit on an ONLINE unit, complete
 * without error — takes the unit lock twice, briefly, and never waits.
 *
 * Locks.  One mutex per unit (u->lock) protects everything in struct
 * ap_unit and struct upath.  It is never held while calling into a path
 * (submit, fence, close), the caller's done callback, or the event
 * callback.  Path implementations have their own locks below it.
 *
 * Invariant 1 (one active path) is kept by two rules: a request is sent
 * only to u->active, and u->active changes only when no path has I/O of
 * the unit in flight (every old request completed or was fenced).
 * Probes, one block read into the unit's own buffer, are the exception:
 * they carry no data of the caller's and no write.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "unit-state.h"

/* Where a request is in its life (io->internal.state). */
enum io_state {
  IO_FREE = 0,
  IO_HELD,                      /* in u->held, waiting for a path */
  IO_BACKLOG,                   /* in u->backlog, waiting for room on the
                                   active path */
  IO_INFLIGHT,                  /* in u->inflight, sent to a path */
  IO_DONE,                      /* completed to the caller */
};

/* A doubly linked list of requests through io->internal.next/prev. */
struct io_list {
  struct ap_io *head, *tail;
  uint64_t count;
};

/* The unit's slot for one path. */
struct upath {
  struct ap_path *path;
  struct ap_unit *unit;
  int priority;                 /* higher is preferred within a kind */
  bool enabled;                 /* false: disabled by the operator */
  bool healthy;                 /* last probe or I/O said it works */
  bool never_probed;            /* joined or enabled, not probed yet */
  bool switch_now;              /* first probe after joining was good: a
                                   better path switches at once, without
                                   the failback interval */
  bool removing;                /* ap_unit_remove_path() is waiting */
  bool fence_sent;              /* fence issued since it last drained */
  bool probe_fenced;            /* fence issued for a hung probe */
  bool dirty;                   /* writes since its last flush */
  uint64_t inflight;            /* the unit's requests on this path */
  uint64_t healthy_since_ns;
  uint64_t failed_ns;           /* when it last failed */
  uint64_t lat_ewma_ns;         /* tie-break between equal paths */
  enum ap_path_state reported;  /* last state told in an event */

  bool probe_busy;
  uint64_t probe_started_ns;
  uint64_t probe_ok_ns;         /* last good probe */
  uint64_t probe_ok_sent_ns;    /* when that probe was sent */
  struct ap_io probe;
  void *probe_buf;

  struct ap_counters counters;
  uint64_t probes_ok, probes_failed;
  int last_errno;
  char last_error[160];
  int64_t last_error_unix_ms;
};

#define EVENT_RING 128

/* An event waiting for delivery, with its own copies of the strings. */
struct queued_event {
  struct ap_event ev;
  char path[AP_NAME_MAX];
  char from[AP_NAME_MAX];
  char reason[128];
};

struct ap_unit {
  pthread_mutex_t lock;
  pthread_cond_t wake;          /* wakes the unit thread */
  pthread_cond_t changed;       /* wakes API callers waiting for a change */
  pthread_t thread;

  char name[AP_NAME_MAX];
  struct ap_unit_options opt;
  uint64_t size;
  uint32_t block_size;
  char identity[AP_NAME_MAX];

  enum ap_unit_state state;
  struct upath *paths[AP_MAX_PATHS];
  unsigned npaths;
  struct upath *active;         /* NULL in VERIFY and OFFLINE */
  struct upath *verify_from;    /* the path that failed last (for the
                                   switch event) */
  struct upath *pinned;         /* operator's choice, or NULL */
  struct ap_unit_choices choices; /* the operator's choices by name, kept
                                   while their paths come and go */
  struct upath *switch_target;  /* SWITCH: where to */
  bool switch_manual;
  struct upath *switch_request; /* operator's switch, not yet begun */
  bool sync_flush_busy;         /* SWITCH: the flush of the old path */
  struct ap_io sync_flush;
  char switch_reason[96];

  uint64_t seq;                 /* submission order */
  struct io_list held;          /* sorted by seq */
  struct io_list backlog;       /* ONLINE: more than the active path takes
                                   at once; sorted by seq, sent in order as
                                   room frees up */
  struct io_list inflight;      /* in order of sending: oldest first */
  uint64_t state_since_ns;
  uint64_t verify_deadline_ns;
  uint64_t verify_started_ns;
  struct upath *verify_probe;   /* VERIFY: candidate being probed */
  uint64_t next_check_ns;
  uint64_t thread_wake_ns;      /* when the unit thread means to wake */

  struct ap_counters counters;
  uint64_t switches_auto, switches_manual;
  int64_t last_switch_unix_ms;
  uint64_t longest_verify_ns;

  struct queued_event events[EVENT_RING];
  unsigned ev_head, ev_count;
  uint64_t events_dropped;
  ap_event_fn *event_cb;
  void *event_opaque;

  bool closing;                 /* refuse new I/O */
  bool stop;                    /* the unit thread must exit */
  bool no_probes;               /* closing: start no probe */
};

static void unit_path_done (void *owner, struct ap_path *p,
                            struct ap_io *io, int err);

/* ------------------------------------------------------------- lists */

static void
list_append (struct io_list *l, struct ap_io *io)
{
  io->internal.next = NULL;
  io->internal.prev = l->tail;
  if (l->tail)
    l->tail->internal.next = io;
  else
    l->head = io;
  l->tail = io;
  l->count++;
}

/* Insert keeping the list sorted by seq.  Requests coming back from a
 * failed path are older than most of what is held, so walk from the tail
 * only as far as needed. */
static void
list_insert_by_seq (struct io_list *l, struct ap_io *io)
{
  struct ap_io *after = l->tail;
  while (after && after->internal.seq > io->internal.seq)
    after = after->internal.prev;
  io->internal.prev = after;
  io->internal.next = after ? after->internal.next : l->head;
  if (io->internal.next)
    io->internal.next->internal.prev = io;
  else
    l->tail = io;
  if (after)
    after->internal.next = io;
  else
    l->head = io;
  l->count++;
}

static void
list_remove (struct io_list *l, struct ap_io *io)
{
  if (io->internal.prev)
    io->internal.prev->internal.next = io->internal.next;
  else
    l->head = io->internal.next;
  if (io->internal.next)
    io->internal.next->internal.prev = io->internal.prev;
  else
    l->tail = io->internal.prev;
  io->internal.next = io->internal.prev = NULL;
  l->count--;
}

static struct io_list
list_take_all (struct io_list *l)
{
  struct io_list all = *l;
  l->head = l->tail = NULL;
  l->count = 0;
  return all;
}

/* ------------------------------------------------------ events, states */

static enum ap_path_state
path_state (const struct ap_unit *u, const struct upath *up)
{
  if (up == u->active)
    return AP_PATH_ACTIVE;
  if (!up->enabled)
    return AP_PATH_DISABLED;
  if (!up->healthy)
    return AP_PATH_FAILED;
  return AP_PATH_STANDBY;
}

static void
push_event (struct ap_unit *u, enum ap_event_type type, const char *path,
            const char *from, int old_state, int new_state,
            const char *reason, int err)
{
  if (u->ev_count == EVENT_RING) {
    /* The consumer is slow: drop the oldest rather than block I/O. */
    u->ev_head = (u->ev_head + 1) % EVENT_RING;
    u->ev_count--;
    u->events_dropped++;
  }
  struct queued_event *q = &u->events[(u->ev_head + u->ev_count) % EVENT_RING];
  u->ev_count++;
  memset (&q->ev, 0, sizeof q->ev);
  snprintf (q->path, sizeof q->path, "%s", path ? path : "");
  snprintf (q->from, sizeof q->from, "%s", from ? from : "");
  snprintf (q->reason, sizeof q->reason, "%s", reason ? reason : "");
  q->ev.type = type;
  q->ev.old_state = old_state;
  q->ev.new_state = new_state;
  q->ev.err = err;
  q->ev.mono_ns = ap_now_ns ();
  pthread_cond_signal (&u->wake);
}

/* Tell the world about every path whose state changed since last time. */
static void
note_path_states (struct ap_unit *u, const char *reason, int err)
{
  for (unsigned i = 0; i < u->npaths; i++) {
    struct upath *up = u->paths[i];
    enum ap_path_state s = path_state (u, up);
    if (s != up->reported) {
      ap_debug (AP_DEBUG_CONTROL, "unit %s: path %s %s -> %s (%s)", u->name,
                up->path->info.name, ap_path_state_name (up->reported),
                ap_path_state_name (s), reason);
      push_event (u, AP_EVENT_PATH_STATE, up->path->info.name, NULL,
                  up->reported, s, reason, err);
      up->reported = s;
    }
  }
}

/* Move the unit through the transition table. */
static bool
transition (struct ap_unit *u, enum ap_unit_event ev, const char *reason,
            int err)
{
  int next = ap_unit_next_state (u->state, ev);
  if (next < 0) {
    ap_error ("unit %s: event '%s' in state %s ignored (a bug)", u->name,
              ap_unit_event_name (ev), ap_unit_state_name (u->state));
    return false;
  }
  uint64_t now = ap_now_ns ();
  if (u->state == AP_UNIT_VERIFY && next != AP_UNIT_VERIFY
      && now - u->state_since_ns > u->longest_verify_ns)
    u->longest_verify_ns = now - u->state_since_ns;
  if ((enum ap_unit_state) next != u->state) {
    ap_debug (AP_DEBUG_CONTROL, "unit %s: %s -> %s (%s)", u->name,
              ap_unit_state_name (u->state), ap_unit_state_name (next),
              reason);
    push_event (u, AP_EVENT_UNIT_STATE, NULL, NULL, u->state, next, reason,
                err);
    u->state = next;
    u->state_since_ns = now;
  }
  pthread_cond_broadcast (&u->changed);
  return true;
}

static void
record_path_error (struct upath *up, int err, const char *what)
{
  up->last_errno = err < 0 ? -err : err;
  up->last_error_unix_ms = ap_unix_ms ();
  snprintf (up->last_error, sizeof up->last_error, "%s: %s", what,
            strerror (up->last_errno));
}

/* --------------------------------------------------------- preference */

/* Rank by class: healthy and enabled first, then direct before served,
 * then the configured priority.  Latency only breaks ties when a path
 * must be chosen; it never triggers a switch by itself (no flapping). */
static int
class_cmp (const struct upath *a, const struct upath *b)
{
  if (a->path->info.kind != b->path->info.kind)
    return a->path->info.kind == AP_PATH_DIRECT ? -1 : 1;
  if (a->priority != b->priority)
    return a->priority > b->priority ? -1 : 1;
  return 0;
}

static bool
usable (const struct upath *up)
{
  return up->enabled && up->healthy && !up->removing;
}

/* The best usable path, optionally leaving one out. */
static struct upath *
best_path (struct ap_unit *u, const struct upath *except)
{
  struct upath *best = NULL;
  for (unsigned i = 0; i < u->npaths; i++) {
    struct upath *up = u->paths[i];
    if (up == except || !usable (up))
      continue;
    if (!best)
      best = up;
    else {
      int c = class_cmp (up, best);
      if (c < 0 || (c == 0 && up->lat_ewma_ns < best->lat_ewma_ns))
        best = up;
    }
  }
  return best;
}

/* Where the unit wants to be: the pinned path while it is usable, else
 * the best by class. */
static struct upath *
preferred_path (struct ap_unit *u)
{
  if (u->pinned && usable (u->pinned))
    return u->pinned;
  struct upath *best = best_path (u, NULL);
  /* Among equals, the active path is as good as any. */
  if (best && u->active && usable (u->active)
      && class_cmp (u->active, best) == 0)
    return u->active;
  return best;
}

static uint64_t
paths_inflight (const struct ap_unit *u)
{
  uint64_t n = 0;
  for (unsigned i = 0; i < u->npaths; i++)
    n += u->paths[i]->inflight;
  return n;
}

/* ----------------------------------------------------------- dispatch */

static bool
has_room (const struct upath *up)
{
  uint32_t max = up->path->info.max_inflight;
  return max == 0 || up->inflight < max;
}

/* What waits for room was never sent: when the active path changes it
 * goes back with the held requests, in its place. */
static void
backlog_to_held (struct ap_unit *u)
{
  struct ap_io *io;
  while ((io = u->backlog.head)) {
    list_remove (&u->backlog, io);
    io->internal.state = IO_HELD;
    list_insert_by_seq (&u->held, io);
  }
}

/* Account io as sent to up; the caller sends it once the lock is
 * dropped. */
static void
dispatch_locked (struct ap_unit *u, struct upath *up, struct ap_io *io,
                 uint64_t now)
{
  io->internal.upath = up;
  io->internal.path_ns = now;
  io->internal.state = IO_INFLIGHT;
  io->internal.attempts++;
  up->inflight++;
  list_append (&u->inflight, io);
  /* The unit thread watches the oldest request for its timeout; if it is
   * sleeping past this one's deadline, wake it. */
  uint64_t deadline = now + AP_MS (u->opt.request_timeout_ms);
  if (deadline < u->thread_wake_ns) {
    u->thread_wake_ns = deadline;
    pthread_cond_signal (&u->wake);
  }
}

/* Fail the path a request was on: the path fault of the state machine. */
static void
fail_path_locked (struct ap_unit *u, struct upath *up, int err,
                  const char *what)
{
  record_path_error (up, err, what);
  up->failed_ns = ap_now_ns ();
  if (up->healthy) {
    up->healthy = false;
    up->healthy_since_ns = 0;
    ap_warn ("unit %s: path %s failed: %s", u->name, up->path->info.name,
             up->last_error);
  }
  if (up == u->active) {
    backlog_to_held (u);
    u->verify_from = up;
    u->active = NULL;
    u->verify_probe = NULL;
    u->switch_target = NULL;
    u->verify_started_ns = ap_now_ns ();
    u->verify_deadline_ns = ap_now_ns () + AP_MS (u->opt.verify_timeout_ms);
    transition (u, AP_UE_PATH_FAULT, up->last_error, err);
  }
  note_path_states (u, up->last_error, err);
  pthread_cond_signal (&u->wake);
}

/* What a completion, or a refusal at submit, means for a user request.
 * Called with the lock held; returns true if the caller must now call
 * io->done(io, err) (after unlocking). */
static bool
settle_locked (struct ap_unit *u, struct upath *up, struct ap_io *io,
               int err, uint64_t now)
{
  list_remove (&u->inflight, io);
  up->inflight--;
  if (up->inflight == 0)
    up->fence_sent = false;
  /* Someone waits for a drain only outside the steady state; signalling
   * on every completion would cost the hot path a wakeup each. */
  if (u->state != AP_UNIT_ONLINE || up != u->active || u->closing
      || up->removing || !up->enabled)
    pthread_cond_signal (&u->wake);
  if (u->closing)
    pthread_cond_broadcast (&u->changed);

  if (err == 0 || !ap_error_is_path_fault (err)) {
    uint64_t lat = now - io->internal.path_ns;
    ap_counters_account (&up->counters, io, lat, err);
    ap_counters_account (&u->counters, io, now - io->internal.submit_ns, err);
    if (err == 0) {
      up->lat_ewma_ns = up->lat_ewma_ns ? (up->lat_ewma_ns * 7 + lat) / 8 : lat;
      if (io->op == AP_OP_WRITE || io->op == AP_OP_WRITE_ZEROES
          || io->op == AP_OP_TRIM)
        up->dirty = true;
      else if (io->op == AP_OP_FLUSH)
        up->dirty = false;
    }
    else
      ap_debug (AP_DEBUG_DATA, "unit %s: request failed on %s: %s (not a "
                "path fault)", u->name, up->path->info.name, strerror (-err));
    io->internal.state = IO_DONE;
    return true;
  }

  /* A path fault: the request goes back to the held queue in its place
   * and will be resubmitted elsewhere once this path is fenced. */
  up->counters.errors++;
  io->internal.state = IO_HELD;
  list_insert_by_seq (&u->held, io);
  if (up->healthy || up == u->active) {
    char what[96];
    snprintf (what, sizeof what, "%s failed",
              io->op == AP_OP_READ ? "read" : io->op == AP_OP_WRITE ? "write"
              : io->op == AP_OP_FLUSH ? "flush" : "request");
    fail_path_locked (u, up, err, what);
  }
  return false;
}

/* A path refused io at submit.  -EAGAIN (no room) is neither a fault nor
 * an answer: the request waits for room, in order, and a completion or
 * the unit thread sends it again. */
static bool
refused_locked (struct ap_unit *u, struct upath *up, struct ap_io *io,
                int err)
{
  if (err != -EAGAIN)
    return settle_locked (u, up, io, err, ap_now_ns ());
  list_remove (&u->inflight, io);
  up->inflight--;
  io->internal.attempts--;
  if (up == u->active && u->state == AP_UNIT_ONLINE) {
    io->internal.state = IO_BACKLOG;
    list_insert_by_seq (&u->backlog, io);
  }
  else {
    io->internal.state = IO_HELD;
    list_insert_by_seq (&u->held, io);
  }
  pthread_cond_signal (&u->wake);
  return false;
}

/* Move up to max requests from src (in order) to the path up, accounted
 * as in flight and threaded through pnext into send, for the caller to
 * send once the lock is dropped.  0: no limit. */
static void
dispatch_batch_locked (struct ap_unit *u, struct upath *up,
                       struct io_list *src, struct io_list *send)
{
  uint64_t now = ap_now_ns ();
  struct ap_io *io;
  while ((io = src->head) && has_room (up)) {
    list_remove (src, io);
    io->internal.pnext = NULL;
    if (send->tail)
      send->tail->internal.pnext = io;
    else
      send->head = io;
    send->tail = io;
    send->count++;
    dispatch_locked (u, up, io, now);
  }
}

/* ONLINE: send what waits for room, if there is room now. */
static void
pump_backlog_locked (struct ap_unit *u, struct io_list *send)
{
  if (u->state == AP_UNIT_ONLINE && u->backlog.count && u->active)
    dispatch_batch_locked (u, u->active, &u->backlog, send);
}

static void send_all (struct ap_unit *u, struct upath *up,
                      struct io_list *batch);

/* The sync flush of a planned switch is the unit's own: no caller. */
static void
settle_sync_locked (struct ap_unit *u, struct upath *up, struct ap_io *io,
                    int err)
{
  list_remove (&u->inflight, io);
  up->inflight--;
  if (up->inflight == 0)
    up->fence_sent = false;
  u->sync_flush_busy = false;
  io->internal.state = IO_DONE;
  if (err == 0)
    up->dirty = false;
  else if (ap_error_is_path_fault (err))
    fail_path_locked (u, up, err, "flush before switch failed");
  pthread_cond_signal (&u->wake);
}

static void
probe_done_locked (struct ap_unit *u, struct upath *up, int err,
                   uint64_t now)
{
  up->probe_busy = false;
  up->probe_fenced = false;
  up->probe.internal.state = IO_FREE;
  bool first = up->never_probed;
  up->never_probed = false;
  /* Closing: ap_unit_close fenced the probes itself.  A probe it ended
   * says nothing about the path, and failing the active path now would
   * start a verification that cannot probe (no_probes). */
  if (u->no_probes) {
    pthread_cond_signal (&u->wake);
    pthread_cond_broadcast (&u->changed);
    return;
  }
  /* The disk answered: a medium error on the probed block, say, blames
   * the data, not the way to it; every path would say the same. */
  if (err == 0 || !ap_error_is_path_fault (err)) {
    up->probes_ok++;
    /* A probe sent before the path last failed says nothing about it
     * now. */
    if (up->probe_started_ns < up->failed_ns) {
      pthread_cond_signal (&u->wake);
      pthread_cond_broadcast (&u->changed);
      return;
    }
    up->probe_ok_ns = now;
    up->probe_ok_sent_ns = up->probe_started_ns;
    if (!up->healthy) {
      up->healthy = true;
      up->healthy_since_ns = now;
      up->switch_now = first;
      if (!first)
        ap_info ("unit %s: path %s is healthy again", u->name,
                 up->path->info.name);
      note_path_states (u, "probe succeeded", 0);
    }
  }
  else {
    up->probes_failed++;
    fail_path_locked (u, up, err, "probe failed");
  }
  pthread_cond_signal (&u->wake);
  pthread_cond_broadcast (&u->changed);
}

static void
unit_path_done (void *owner, struct ap_path *p, struct ap_io *io, int err)
{
  struct upath *up = owner;
  struct ap_unit *u = up->unit;
  uint64_t now = ap_now_ns ();

  pthread_mutex_lock (&u->lock);
  if (io->internal.kind == AP_IO_KIND_PROBE) {
    probe_done_locked (u, up, err, now);
    pthread_mutex_unlock (&u->lock);
    return;
  }
  if (io->internal.kind == AP_IO_KIND_SYNC) {
    settle_sync_locked (u, up, io, err);
    pthread_mutex_unlock (&u->lock);
    return;
  }
  if (io->internal.state != IO_INFLIGHT) {
    /* A path completed something twice or something it never had: never
     * pass it on, or the caller would see two completions. */
    ap_error ("unit %s: path %s completed a request that was not in "
              "flight on it (ignored)", u->name, p->info.name);
    pthread_mutex_unlock (&u->lock);
    return;
  }
  bool done = settle_locked (u, up, io, err, now);
  struct io_list send = { 0 };
  pump_backlog_locked (u, &send);
  struct upath *to = u->active;
  pthread_mutex_unlock (&u->lock);
  if (done)
    io->done (io, err);
  if (send.head)
    send_all (u, to, &send);
}

/* A request whose deadline passed before it could be sent: it never
 * reaches a path.  Completes it to the caller with -ETIMEDOUT. */
static void
expire (struct ap_unit *u, struct upath *up, struct ap_io *io)
{
  pthread_mutex_lock (&u->lock);
  list_remove (&u->inflight, io);
  up->inflight--;
  if (up->inflight == 0)
    up->fence_sent = false;
  io->internal.state = IO_DONE;
  u->counters.errors++;
  pthread_cond_signal (&u->wake);
  pthread_mutex_unlock (&u->lock);
  io->done (io, -ETIMEDOUT);
}

static bool
expired (const struct ap_io *io)
{
  return io->deadline_ns && ap_now_ns () > io->deadline_ns;
}

/* Send a batch of requests already accounted to up, in order.  A refusal
 * is settled like a completion with that error. */
static void
send_all (struct ap_unit *u, struct upath *up, struct io_list *batch)
{
  struct ap_io *io = batch->head;
  while (io) {
    struct ap_io *next = io->internal.pnext;
    /* Checked as late as we can: the last moment before the path. */
    if (expired (io)) {
      expire (u, up, io);
      io = next;
      continue;
    }
    int r = ap_path_submit (up->path, io);
    if (r < 0) {
      pthread_mutex_lock (&u->lock);
      bool done = refused_locked (u, up, io, r);
      pthread_mutex_unlock (&u->lock);
      if (done)
        io->done (io, r);
    }
    io = next;
  }
}

/* ------------------------------------------------------------- submit */

static int
validate (struct ap_unit *u, const struct ap_io *io)
{
  uint64_t bs = u->block_size;
  if (!io->done)
    return ap_set_error (EINVAL, "unit %s: request has no completion "
                         "callback", u->name);
  switch (io->op) {
  case AP_OP_FLUSH:
    if (io->flags)
      return ap_set_error (EINVAL, "unit %s: flush takes no flags", u->name);
    return 0;
  case AP_OP_READ:
  case AP_OP_WRITE:
    if (io->buf == NULL)
      return ap_set_error (EINVAL, "unit %s: read or write without a "
                           "buffer", u->name);
    if (((uintptr_t) io->buf % bs) != 0)
      return ap_set_error (EINVAL, "unit %s: buffer %p is not aligned to "
                           "the block size %llu (direct I/O needs it; use "
                           "posix_memalign)", u->name, io->buf,
                           (unsigned long long) bs);
    /* fallthrough */
  case AP_OP_TRIM:
  case AP_OP_WRITE_ZEROES:
    break;
  default:
    return ap_set_error (EINVAL, "unit %s: unknown operation %d", u->name,
                         (int) io->op);
  }
  uint32_t allowed = io->op == AP_OP_WRITE ? AP_IO_FUA
    : io->op == AP_OP_WRITE_ZEROES ? (AP_IO_FUA | AP_IO_NO_HOLE) : 0;
  if (io->flags & ~allowed)
    return ap_set_error (EINVAL, "unit %s: flags 0x%x are not valid for "
                         "this operation", u->name, io->flags);
  if (io->length == 0)
    return ap_set_error (EINVAL, "unit %s: zero-length request", u->name);
  if (io->offset % bs || io->length % bs)
    return ap_set_error (EINVAL, "unit %s: offset %llu and length %llu must "
                         "be multiples of the block size %llu", u->name,
                         (unsigned long long) io->offset,
                         (unsigned long long) io->length,
                         (unsigned long long) bs);
  if (io->offset > u->size || io->length > u->size - io->offset)
    return ap_set_error (io->op == AP_OP_READ ? EINVAL : ENOSPC,
                         "unit %s: request at offset %llu length %llu goes "
                         "past the end of the disk (%llu bytes)", u->name,
                         (unsigned long long) io->offset,
                         (unsigned long long) io->length,
                         (unsigned long long) u->size);
  return 0;
}

int
ap_unit_submit (struct ap_unit *u, struct ap_io *io)
{
  if (validate (u, io) < 0)
    return -1;
  memset (&io->internal, 0, sizeof io->internal);
  io->internal.unit = u;
  io->internal.kind = AP_IO_KIND_USER;
  uint64_t now = ap_now_ns ();
  io->internal.submit_ns = now;

  pthread_mutex_lock (&u->lock);
  if (u->closing) {
    pthread_mutex_unlock (&u->lock);
    return ap_set_error (ESHUTDOWN, "unit %s is closing; no new I/O is "
                         "accepted", u->name);
  }
  io->internal.seq = ++u->seq;
  if (u->state == AP_UNIT_ONLINE && u->held.count == 0) {
    struct upath *up = u->active;
    if (u->backlog.count || !has_room (up)) {
      io->internal.state = IO_BACKLOG;
      list_append (&u->backlog, io);
      pthread_mutex_unlock (&u->lock);
      return 0;
    }
    dispatch_locked (u, up, io, now);
    pthread_mutex_unlock (&u->lock);
    if (expired (io)) {
      expire (u, up, io);
      return 0;
    }
    int r = ap_path_submit (up->path, io);
    if (r < 0) {
      pthread_mutex_lock (&u->lock);
      bool done = refused_locked (u, up, io, r);
      pthread_mutex_unlock (&u->lock);
      if (done)
        io->done (io, r);
    }
    return 0;
  }
  if (u->state == AP_UNIT_OFFLINE && !u->active
      && !u->opt.queue_if_no_path) {
    pthread_mutex_unlock (&u->lock);
    return ap_set_error (EIO, "unit %s is offline: no usable path (see "
                         "the paths' last errors); the I/O was not done",
                         u->name);
  }
  /* VERIFY, SWITCH, a queueing OFFLINE, or ONLINE still resubmitting:
   * wait behind what is held, in order. */
  io->internal.state = IO_HELD;
  list_append (&u->held, io);
  pthread_mutex_unlock (&u->lock);
  return 0;
}

/* ------------------------------------------------- the unit thread */

/* Fence every path that failed with I/O still on it (once per drain). */
static void
send_fences (struct ap_unit *u)
{
  for (unsigned i = 0; i < u->npaths; i++) {
    struct upath *up = u->paths[i];
    bool must = false;
    if (up->inflight > 0 && up != u->active && !up->fence_sent
        && (!up->healthy || up->removing || !up->enabled)) {
      up->fence_sent = true;
      must = true;
    }
    if (up->probe_busy && !up->probe_fenced
        && ap_now_ns () - up->probe_started_ns
           >= AP_MS (u->opt.request_timeout_ms)) {
      up->probe_fenced = true;
      must = true;
    }
    if (must) {
      ap_debug (AP_DEBUG_CONTROL, "unit %s: fencing path %s (%llu in "
                "flight)", u->name, up->path->info.name,
                (unsigned long long) up->inflight);
      pthread_mutex_unlock (&u->lock);
      up->path->ops->fence (up->path);
      pthread_mutex_lock (&u->lock);
    }
  }
}

/* Requests and probes older than the request timeout fail their path. */
static uint64_t
check_timeouts (struct ap_unit *u, uint64_t now)
{
  uint64_t limit = AP_MS (u->opt.request_timeout_ms);
  uint64_t wake = UINT64_MAX;
  for (struct ap_io *io = u->inflight.head; io; io = io->internal.next) {
    struct upath *up = io->internal.upath;
    if (now - io->internal.path_ns < limit) {
      /* Sent in order, so the rest are younger. */
      wake = io->internal.path_ns + limit;
      break;
    }
    if (up->healthy || up == u->active) {
      char what[96];
      snprintf (what, sizeof what, "request timed out after %u ms",
                u->opt.request_timeout_ms);
      fail_path_locked (u, up, -ETIMEDOUT, what);
    }
  }
  for (unsigned i = 0; i < u->npaths; i++) {
    struct upath *up = u->paths[i];
    if (!up->probe_busy)
      continue;
    if (now - up->probe_started_ns >= limit) {
      if (up->healthy || up == u->active)
        fail_path_locked (u, up, -ETIMEDOUT, "probe timed out");
    }
    else if (up->probe_started_ns + limit < wake)
      wake = up->probe_started_ns + limit;
  }
  return wake;
}

static void
start_probe (struct ap_unit *u, struct upath *up, uint64_t now)
{
  if (up->probe_busy || up->removing || u->no_probes)
    return;
  up->probe_busy = true;
  up->probe_started_ns = now;
  struct ap_io *io = &up->probe;
  memset (io, 0, sizeof *io);
  io->op = AP_OP_READ;
  io->buf = up->probe_buf;
  io->offset = 0;
  io->length = u->block_size;
  io->internal.unit = u;
  io->internal.upath = up;
  io->internal.kind = AP_IO_KIND_PROBE;
  io->internal.state = IO_INFLIGHT;
  pthread_mutex_unlock (&u->lock);
  int r = ap_path_submit (up->path, io);
  pthread_mutex_lock (&u->lock);
  if (r < 0)
    probe_done_locked (u, up, r, ap_now_ns ());
}

/* The path checker: probe every enabled path that is not busy, so a
 * failed path comes back and a dead standby is noticed before it is
 * needed.  The active path is probed only when idle: its own I/O tells. */
static void
run_checker (struct ap_unit *u, uint64_t now)
{
  for (unsigned i = 0; i < u->npaths; i++) {
    struct upath *up = u->paths[i];
    if (!up->enabled || up->probe_busy || up->removing)
      continue;
    if (up->inflight > 0)
      continue;                 /* busy, or being fenced */
    start_probe (u, up, now);
  }
  u->next_check_ns = now + AP_MS (u->opt.checker_interval_ms);
}

/* Make up the active path and send it everything held, in order; ONLINE
 * once nothing is held.  Called in VERIFY, OFFLINE or SWITCH with no I/O
 * in flight on any path. */
static void
activate (struct ap_unit *u, struct upath *up, enum ap_unit_event ev,
          bool manual, const char *reason)
{
  struct upath *from = u->active ? u->active : u->verify_from;
  u->verify_from = NULL;
  u->active = up;
  if (from != up) {
    /* Coming online the first time is not a switch. */
    if (from && manual)
      u->switches_manual++;
    else if (from)
      u->switches_auto++;
    if (from)
      u->last_switch_unix_ms = ap_unix_ms ();
    up->switch_now = false;
    ap_info ("unit %s: now on path %s%s%s (%s)", u->name, up->path->info.name,
             from ? ", was " : "", from ? from->path->info.name : "", reason);
    push_event (u, AP_EVENT_SWITCH, up->path->info.name,
                from ? from->path->info.name : "", 0, 0, reason, 0);
  }
  note_path_states (u, reason, 0);

  /* Resubmit what was held.  New requests keep joining the held queue
   * behind these until it is empty, so the order is kept; what the path
   * has no room for waits in the backlog, still in order. */
  while (u->held.count > 0) {
    struct io_list send = { 0 };
    if (u->backlog.count == 0)
      dispatch_batch_locked (u, up, &u->held, &send);
    struct ap_io *io;
    while ((io = u->held.head)) {
      list_remove (&u->held, io);
      io->internal.state = IO_BACKLOG;
      list_append (&u->backlog, io);
    }
    pthread_mutex_unlock (&u->lock);
    send_all (u, up, &send);
    pthread_mutex_lock (&u->lock);
    if (u->active != up)
      return;                   /* it failed under the resubmission */
  }
  transition (u, ev, reason, 0);
  /* Room may have freed while we were not ONLINE. */
  struct io_list send = { 0 };
  pump_backlog_locked (u, &send);
  if (send.head) {
    pthread_mutex_unlock (&u->lock);
    send_all (u, up, &send);
    pthread_mutex_lock (&u->lock);
  }
}

/* Fail (or, when closing, end) everything held. */
static void
fail_held (struct ap_unit *u, int err)
{
  struct io_list all = list_take_all (&u->held);
  pthread_mutex_unlock (&u->lock);
  struct ap_io *io = all.head;
  while (io) {
    struct ap_io *next = io->internal.next;
    io->internal.state = IO_DONE;
    pthread_mutex_lock (&u->lock);
    u->counters.errors++;
    pthread_mutex_unlock (&u->lock);
    io->done (io, err);
    io = next;
  }
  pthread_mutex_lock (&u->lock);
  pthread_cond_broadcast (&u->changed);
}

static uint64_t
min64 (uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

/* VERIFY: fence, drain, probe a candidate, resubmit. */
static uint64_t
verify_step (struct ap_unit *u, uint64_t now)
{
  uint64_t wake = u->verify_deadline_ns;

  if (paths_inflight (u) > 0) {
    /* Not fenced yet: nothing may go to another path (invariant 1). */
    if (now >= u->verify_deadline_ns)
      goto offline;
    return wake;
  }
  if (u->verify_probe) {
    struct upath *c = u->verify_probe;
    if (c->probe_busy)
      return wake;
    u->verify_probe = NULL;
    /* Only a probe sent after the failure vouches for the candidate. */
    if (usable (c) && c->probe_ok_sent_ns >= u->verify_started_ns) {
      activate (u, c, AP_UE_PATH_FOUND, false, "verification found a path");
      return now;
    }
  }
  struct upath *c = best_path (u, NULL);
  if (c) {
    u->verify_probe = c;
    start_probe (u, c, now);
    if (c->probe_busy || !u->no_probes)
      return now;               /* look again at once */
    /* Closing: no probe will come; do not look again in a loop (the unit
     * thread would spin holding the lock, and close would wait forever). */
    u->verify_probe = NULL;
  }
  if (now >= u->verify_deadline_ns)
    goto offline;
  /* No candidate: the checker keeps probing the failed paths. */
  return min64 (wake, now + AP_MS (u->opt.checker_interval_ms));

offline:
  ap_warn ("unit %s: no usable path within %u ms: offline%s", u->name,
           u->opt.verify_timeout_ms,
           u->opt.queue_if_no_path ? " (I/O queued)" : " (held I/O fails)");
  transition (u, AP_UE_VERIFY_TIMEOUT, "no usable path", -EIO);
  if (!u->opt.queue_if_no_path || u->closing)
    fail_held (u, -EIO);
  return now;
}

/* SWITCH: drain the old path, flush it, flip. */
static uint64_t
switch_step (struct ap_unit *u, uint64_t now)
{
  struct upath *old = u->active, *target = u->switch_target;
  if (old->inflight > 0)
    return UINT64_MAX;          /* completions (or timeouts) wake us */
  if (old->dirty && !u->sync_flush_busy && old->healthy) {
    /* Whatever the old path acknowledged is on the disk before the new
     * path carries anything (invariant 4 across a planned switch). */
    struct ap_io *io = &u->sync_flush;
    memset (io, 0, sizeof *io);
    io->op = AP_OP_FLUSH;
    io->internal.unit = u;
    io->internal.kind = AP_IO_KIND_SYNC;
    u->sync_flush_busy = true;
    dispatch_locked (u, old, io, now);
    pthread_mutex_unlock (&u->lock);
    int r = ap_path_submit (old->path, io);
    pthread_mutex_lock (&u->lock);
    if (r < 0)
      settle_sync_locked (u, old, io, r);
    return UINT64_MAX;
  }
  if (u->sync_flush_busy)
    return UINT64_MAX;
  u->switch_target = NULL;
  if (!usable (target)) {
    /* The target failed meanwhile: stay. */
    activate (u, old, AP_UE_SWITCH_DONE, false, "switch target unusable");
    return now;
  }
  activate (u, target, AP_UE_SWITCH_DONE, u->switch_manual, u->switch_reason);
  return now;
}

static void
begin_switch (struct ap_unit *u, struct upath *target, bool manual,
              const char *reason)
{
  backlog_to_held (u);
  u->switch_target = target;
  u->switch_manual = manual;
  snprintf (u->switch_reason, sizeof u->switch_reason, "%s", reason);
  transition (u, AP_UE_SWITCH_REQUEST, reason, 0);
}

/* ONLINE: operator requests, a disabled or removed active path, a better
 * path that joined, failback. */
static uint64_t
online_step (struct ap_unit *u, uint64_t now)
{
  struct upath *act = u->active;
  if (u->switch_request) {
    struct upath *t = u->switch_request;
    u->switch_request = NULL;
    if (t != act && usable (t)) {
      begin_switch (u, t, true, "operator switch");
      return now;
    }
    pthread_cond_broadcast (&u->changed);
  }
  if (!act->enabled || act->removing) {
    struct upath *t = best_path (u, act);
    if (t) {
      begin_switch (u, t, true, act->removing ? "active path removed"
                    : "active path disabled");
      return now;
    }
  }
  struct upath *p = preferred_path (u);
  if (!p || p == act)
    return UINT64_MAX;
  bool better = p == u->pinned || class_cmp (p, act) < 0;
  if (!better)
    return UINT64_MAX;
  if (p->switch_now) {
    begin_switch (u, p, false, p == u->pinned ? "the pinned path joined"
                  : "a better path joined");
    return now;
  }
  if (u->opt.no_failback && p != u->pinned)
    return UINT64_MAX;
  uint64_t due = p->healthy_since_ns + AP_MS (u->opt.failback_ms);
  if (now >= due) {
    begin_switch (u, p, false, p == u->pinned ? "failback to pinned path"
                  : "failback");
    return now;
  }
  return due;
}

/* OFFLINE: come back once a path is healthy and nothing is in flight. */
static uint64_t
offline_step (struct ap_unit *u, uint64_t now)
{
  if (paths_inflight (u) > 0)
    return UINT64_MAX;
  /* At start, let every path answer its first probe before choosing, so
   * the unit does not come up on a worse path and switch at once. */
  for (unsigned i = 0; i < u->npaths; i++)
    if (u->paths[i]->never_probed && u->paths[i]->probe_busy)
      return UINT64_MAX;
  struct upath *p = preferred_path (u);
  if (!p)
    return UINT64_MAX;
  activate (u, p, AP_UE_PATH_FOUND, false, "path available");
  return now;
}

/* Detach and close paths being removed once nothing is on them. */
static void
reap_removed (struct ap_unit *u)
{
  for (unsigned i = 0; i < u->npaths; i++) {
    struct upath *up = u->paths[i];
    if (!up->removing || up == u->active || up->inflight || up->probe_busy)
      continue;
    if (up == u->pinned)
      u->pinned = NULL;
    if (up == u->verify_from)
      u->verify_from = NULL;
    if (u->switch_target == up || u->switch_request == up
        || u->verify_probe == up)
      continue;
    memmove (&u->paths[i], &u->paths[i + 1],
             (u->npaths - i - 1) * sizeof u->paths[0]);
    u->npaths--;
    push_event (u, AP_EVENT_PATH_REMOVED, up->path->info.name, NULL,
                up->reported, up->reported, "removed by the operator", 0);
    pthread_mutex_unlock (&u->lock);
    ap_path_close (up->path);
    free (up->probe_buf);
    free (up);
    pthread_mutex_lock (&u->lock);
    pthread_cond_broadcast (&u->changed);
    i--;
  }
}

static void
deliver_events (struct ap_unit *u)
{
  while (u->ev_count > 0) {
    struct queued_event q = u->events[u->ev_head];
    u->ev_head = (u->ev_head + 1) % EVENT_RING;
    u->ev_count--;
    ap_event_fn *cb = u->event_cb;
    void *opaque = u->event_opaque;
    if (!cb)
      continue;
    q.ev.unit = u->name;
    q.ev.path = q.path;
    q.ev.from_path = q.from;
    q.ev.reason = q.reason;
    pthread_mutex_unlock (&u->lock);
    cb (opaque, &q.ev);
    pthread_mutex_lock (&u->lock);
  }
}

static void *
unit_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "ap-unit");
  struct ap_unit *u = arg;

  pthread_mutex_lock (&u->lock);
  for (;;) {
    deliver_events (u);
    if (u->stop)
      break;
    uint64_t now = ap_now_ns ();
    uint64_t wake = check_timeouts (u, now);
    send_fences (u);
    reap_removed (u);
    now = ap_now_ns ();
    if (now >= u->next_check_ns)
      run_checker (u, now);
    wake = min64 (wake, u->next_check_ns);

    uint64_t w = UINT64_MAX;
    switch (u->state) {
    case AP_UNIT_ONLINE: w = online_step (u, now); break;
    case AP_UNIT_VERIFY: w = verify_step (u, now); break;
    case AP_UNIT_SWITCH: w = switch_step (u, now); break;
    case AP_UNIT_OFFLINE: w = offline_step (u, now); break;
    case AP_UNIT_CLOSED: break;
    }
    if (u->state == AP_UNIT_OFFLINE && u->closing && u->held.count)
      fail_held (u, -ESHUTDOWN);
    if (u->backlog.count) {
      /* A refusal with nothing in flight has no completion to send it
       * again: do it from here. */
      struct io_list send = { 0 };
      struct upath *to = u->active;
      pump_backlog_locked (u, &send);
      if (send.head) {
        pthread_mutex_unlock (&u->lock);
        send_all (u, to, &send);
        pthread_mutex_lock (&u->lock);
        continue;
      }
      if (!u->active || u->active->inflight == 0)
        w = min64 (w, ap_now_ns () + AP_MS (1));
    }
    wake = min64 (wake, w);
    if (u->ev_count > 0 || wake <= ap_now_ns ())
      continue;
    u->thread_wake_ns = wake;
    struct timespec ts = ap_ns_to_timespec (wake);
    pthread_cond_timedwait (&u->wake, &u->lock, &ts);
    u->thread_wake_ns = 0;      /* awake: dispatch need not signal */
  }
  pthread_mutex_unlock (&u->lock);
  return NULL;
}

/* ------------------------------------------------------ construction */

void
ap_unit_options_init (struct ap_unit_options *opt)
{
  memset (opt, 0, sizeof *opt);
  opt->request_timeout_ms = 5000;
  opt->verify_timeout_ms = 30000;
  opt->checker_interval_ms = 2000;
  opt->failback_ms = 5000;
}

/* Whether a path may join the unit: same disk by size, block size and
 * identity; never guess (DESIGN.md "Naming"). */
static int
check_compatible (struct ap_unit *u, const struct ap_path *p)
{
  const struct ap_path_info *i = &p->info;
  if (i->size != u->size)
    return ap_set_error (EINVAL, "path %s refused by unit %s: its size is "
                         "%llu bytes but the unit's is %llu; it is not the "
                         "same disk", i->name, u->name,
                         (unsigned long long) i->size,
                         (unsigned long long) u->size);
  if (i->block_size != u->block_size)
    return ap_set_error (EINVAL, "path %s refused by unit %s: its logical "
                         "block size is %u bytes but the unit's is %u",
                         i->name, u->name, i->block_size, u->block_size);
  if (i->identity[0] && u->identity[0] && strcmp (i->identity, u->identity))
    return ap_set_error (EINVAL, "path %s refused by unit %s: its identity "
                         "'%s' differs from the unit's '%s'", i->name,
                         u->name, i->identity, u->identity);
  for (unsigned k = 0; k < u->npaths; k++)
    if (strcmp (u->paths[k]->path->info.name, i->name) == 0)
      return ap_set_error (EEXIST, "unit %s already has a path named %s",
                           u->name, i->name);
  if (u->npaths == AP_MAX_PATHS)
    return ap_set_error (ENOSPC, "unit %s has %d paths, the most it can "
                         "have", u->name, AP_MAX_PATHS);
  return 0;
}

/* ------------------------------------------------ the operator's choices */

static int
disabled_index (const struct ap_unit *u, const char *name)
{
  for (unsigned i = 0; i < u->choices.ndisabled; i++)
    if (strcmp (u->choices.disabled[i], name) == 0)
      return (int) i;
  return -1;
}

/* Keep name disabled.  -1 (error set) when the list is full. */
static int
choose_disabled (struct ap_unit *u, const char *name)
{
  if (disabled_index (u, name) >= 0)
    return 0;
  if (u->choices.ndisabled >= AP_MAX_PATHS)
    return ap_set_error (ENOSPC, "unit %s keeps at most %d disabled path "
                         "names; enable one that has no path now (see the "
                         "unit's status) before disabling %s", u->name,
                         AP_MAX_PATHS, name);
  snprintf (u->choices.disabled[u->choices.ndisabled++], AP_NAME_MAX, "%s",
            name);
  return 0;
}

static void
forget_disabled (struct ap_unit *u, const char *name)
{
  int i = disabled_index (u, name);
  if (i < 0)
    return;
  u->choices.ndisabled--;
  memmove (u->choices.disabled[i], u->choices.disabled[i + 1],
           (u->choices.ndisabled - (unsigned) i) * AP_NAME_MAX);
}

/* Take the restored choices: only well-formed names, no pin on a disabled
 * name (disabling unpins). */
static void
restore_choices (struct ap_unit *u, const struct ap_unit_choices *c)
{
  if (!c)
    return;
  for (unsigned i = 0; i < c->ndisabled && i < AP_MAX_PATHS; i++)
    if (memchr (c->disabled[i], 0, AP_NAME_MAX) && c->disabled[i][0])
      choose_disabled (u, c->disabled[i]);
  if (memchr (c->pinned, 0, AP_NAME_MAX)
      && disabled_index (u, c->pinned) < 0)
    snprintf (u->choices.pinned, AP_NAME_MAX, "%s", c->pinned);
}

/* A path joins: as the operator left its name. */
static void
apply_choices (struct ap_unit *u, struct upath *up)
{
  const char *name = up->path->info.name;
  if (disabled_index (u, name) >= 0) {
    up->enabled = false;
    ap_info ("unit %s: path %s joins disabled, as the operator left it "
             "(altpath path enable to use it)", u->name, name);
  }
  else if (u->choices.pinned[0] && strcmp (u->choices.pinned, name) == 0) {
    u->pinned = up;
    ap_info ("unit %s: path %s joins pinned, as the operator left it",
             u->name, name);
  }
}

static struct upath *
upath_new (struct ap_unit *u, struct ap_path *p, int priority)
{
  struct upath *up = calloc (1, sizeof *up);
  if (!up)
    return NULL;
  size_t align = u->block_size < 4096 ? 4096 : u->block_size;
  if (posix_memalign (&up->probe_buf, align, u->block_size) != 0) {
    free (up);
    return NULL;
  }
  up->path = p;
  up->unit = u;
  up->priority = priority;
  up->enabled = true;
  up->never_probed = true;
  up->reported = AP_PATH_FAILED;
  p->owner = up;
  p->owner_done = unit_path_done;
  return up;
}

static void
close_paths (struct ap_path *const *paths, size_t n)
{
  for (size_t i = 0; i < n; i++)
    ap_path_close (paths[i]);
}

struct ap_unit *
ap_unit_create (const struct ap_unit_options *opt,
                struct ap_path *const *paths, size_t npaths)
{
  ap_log_init_from_env ();
  if (npaths == 0 || npaths > AP_MAX_PATHS) {
    close_paths (paths, npaths);
    ap_set_error (EINVAL, "a unit needs between 1 and %d paths, not %zu",
                  AP_MAX_PATHS, npaths);
    return NULL;
  }
  struct ap_unit *u = calloc (1, sizeof *u);
  if (!u) {
    close_paths (paths, npaths);
    ap_set_error (ENOMEM, "out of memory creating a unit");
    return NULL;
  }
  struct ap_unit_options defaults;
  ap_unit_options_init (&defaults);
  u->opt = opt ? *opt : defaults;
  if (!u->opt.request_timeout_ms)
    u->opt.request_timeout_ms = defaults.request_timeout_ms;
  if (!u->opt.verify_timeout_ms)
    u->opt.verify_timeout_ms = defaults.verify_timeout_ms;
  if (!u->opt.checker_interval_ms)
    u->opt.checker_interval_ms = defaults.checker_interval_ms;
  snprintf (u->name, sizeof u->name, "%s",
            u->opt.name && u->opt.name[0] ? u->opt.name
            : paths[0]->info.name);
  u->opt.name = u->name;
  u->opt.choices = NULL;        /* copied below, not kept */
  restore_choices (u, opt ? opt->choices : NULL);
  u->size = paths[0]->info.size;
  u->block_size = paths[0]->info.block_size;
  snprintf (u->identity, sizeof u->identity, "%s", paths[0]->info.identity);
  u->state = AP_UNIT_OFFLINE;
  u->state_since_ns = ap_now_ns ();
  u->event_cb = u->opt.events.fn;
  u->event_opaque = u->opt.events.opaque;

  pthread_mutex_init (&u->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&u->wake, &ca);
  pthread_cond_init (&u->changed, &ca);
  pthread_condattr_destroy (&ca);

  for (size_t i = 0; i < npaths; i++) {
    if (!u->identity[0] && paths[i]->info.identity[0])
      snprintf (u->identity, sizeof u->identity, "%s",
                paths[i]->info.identity);
    struct upath *up = NULL;
    if (check_compatible (u, paths[i]) == 0
        && !(up = upath_new (u, paths[i], 0)))
      ap_set_error (ENOMEM, "out of memory creating unit %s", u->name);
    if (!up) {
      int e = ap_get_errno ();
      char msg[512];
      snprintf (msg, sizeof msg, "%s", ap_get_error ());
      for (unsigned k = 0; k < u->npaths; k++) {
        free (u->paths[k]->probe_buf);
        free (u->paths[k]);
      }
      close_paths (paths, npaths);
      pthread_mutex_destroy (&u->lock);
      pthread_cond_destroy (&u->wake);
      pthread_cond_destroy (&u->changed);
      free (u);
      ap_set_error (e, "%s", msg);
      return NULL;
    }
    apply_choices (u, up);
    u->paths[u->npaths++] = up;
  }

  pthread_attr_t ta;
  pthread_attr_init (&ta);
  pthread_attr_setstacksize (&ta, 256 * 1024);
  int r = pthread_create (&u->thread, &ta, unit_thread, u);
  pthread_attr_destroy (&ta);
  if (r != 0) {
    for (unsigned k = 0; k < u->npaths; k++) {
      free (u->paths[k]->probe_buf);
      free (u->paths[k]);
    }
    close_paths (paths, npaths);
    free (u);
    ap_set_error (r, "cannot start the thread of a unit: %s", strerror (r));
    return NULL;
  }

  /* Wait for the first probes, bounded, so that a caller can do I/O as
   * soon as create returns when a path works. */
  pthread_mutex_lock (&u->lock);
  uint64_t until = ap_now_ns () + AP_MS (u->opt.request_timeout_ms) + AP_MS (100);
  while (u->state == AP_UNIT_OFFLINE && ap_now_ns () < until) {
    bool pending = false;
    for (unsigned i = 0; i < u->npaths; i++)
      if (u->paths[i]->never_probed && u->paths[i]->enabled)
        pending = true;
    if (!pending && !u->active && !best_path (u, NULL))
      break;
    struct timespec ts = ap_ns_to_timespec (until);
    pthread_cond_timedwait (&u->changed, &u->lock, &ts);
  }
  if (u->state == AP_UNIT_OFFLINE)
    ap_warn ("unit %s: no path works yet; it stays offline until one does",
             u->name);
  pthread_mutex_unlock (&u->lock);
  return u;
}

/* Wait on u->changed until pred(u, arg) or the deadline.  Lock held. */
static bool
wait_for (struct ap_unit *u, bool (*pred) (struct ap_unit *, void *),
          void *arg, uint64_t timeout_ns)
{
  uint64_t until = ap_now_ns () + timeout_ns;
  while (!pred (u, arg)) {
    if (ap_now_ns () >= until)
      return false;
    struct timespec ts = ap_ns_to_timespec (until);
    pthread_cond_timedwait (&u->changed, &u->lock, &ts);
  }
  return true;
}

static bool
no_probe_busy (struct ap_unit *u, void *arg)
{
  for (unsigned i = 0; i < u->npaths; i++)
    if (u->paths[i]->probe_busy)
      return false;
  return true;
}

static bool
nothing_outstanding (struct ap_unit *u, void *arg)
{
  return u->held.count == 0 && u->backlog.count == 0
    && paths_inflight (u) == 0
    && !u->sync_flush_busy;
}

int
ap_unit_close (struct ap_unit *u)
{
  if (!u)
    return 0;
  int ret = 0;
  pthread_mutex_lock (&u->lock);
  u->closing = true;
  pthread_cond_signal (&u->wake);
  /* Outstanding requests finish the normal way: drained, or failed over
   * and resubmitted, or failed by the verification timeout. */
  uint64_t bound = AP_MS (u->opt.verify_timeout_ms)
    + 2 * AP_MS (u->opt.request_timeout_ms);
  if (!wait_for (u, nothing_outstanding, NULL, bound)) {
    /* A path that never returns its requests: fence everything and end
     * what is held; paths guarantee fenced requests come back. */
    ap_warn ("unit %s: requests still outstanding at close; fencing",
             u->name);
    for (unsigned i = 0; i < u->npaths; i++)
      u->paths[i]->healthy = false;
    u->active = NULL;
    pthread_cond_signal (&u->wake);
    fail_held (u, -ESHUTDOWN);
    wait_for (u, nothing_outstanding, NULL, UINT64_MAX / 2);
    ret = ap_set_error (EIO, "unit %s: some requests had to be failed to "
                        "close it", u->name);
  }
  /* No new probes; end the ones running. */
  u->no_probes = true;
  for (unsigned i = 0; i < u->npaths; i++)
    if (u->paths[i]->probe_busy) {
      pthread_mutex_unlock (&u->lock);
      u->paths[i]->path->ops->fence (u->paths[i]->path);
      pthread_mutex_lock (&u->lock);
    }
  wait_for (u, no_probe_busy, NULL, UINT64_MAX / 2);
  transition (u, AP_UE_CLOSE, "closed", 0);
  u->active = NULL;
  u->stop = true;
  pthread_cond_signal (&u->wake);
  pthread_mutex_unlock (&u->lock);
  pthread_join (u->thread, NULL);

  for (unsigned i = 0; i < u->npaths; i++) {
    ap_path_close (u->paths[i]->path);
    free (u->paths[i]->probe_buf);
    free (u->paths[i]);
  }
  pthread_mutex_destroy (&u->lock);
  pthread_cond_destroy (&u->wake);
  pthread_cond_destroy (&u->changed);
  free (u);
  return ret;
}

/* ----------------------------------------------------- paths in use */

static struct upath *
find_path (struct ap_unit *u, const char *name)
{
  for (unsigned i = 0; i < u->npaths; i++)
    if (strcmp (u->paths[i]->path->info.name, name) == 0
        && !u->paths[i]->removing)
      return u->paths[i];
  return NULL;
}

static int
no_such_path (struct ap_unit *u, const char *name)
{
  return ap_set_error (ENOENT, "unit %s has no path named '%s' (see the "
                       "unit's status for its paths)", u->name, name);
}

int
ap_unit_add_path (struct ap_unit *u, struct ap_path *p, int priority)
{
  pthread_mutex_lock (&u->lock);
  struct upath *up = NULL;
  if (u->closing)
    ap_set_error (ESHUTDOWN, "unit %s is closing; path %s not added",
                  u->name, p->info.name);
  else if (check_compatible (u, p) == 0
           && !(up = upath_new (u, p, priority)))
    ap_set_error (ENOMEM, "out of memory adding path %s", p->info.name);
  if (!up) {
    pthread_mutex_unlock (&u->lock);
    ap_path_close (p);
    return -1;
  }
  if (!u->identity[0] && p->info.identity[0])
    snprintf (u->identity, sizeof u->identity, "%s", p->info.identity);
  apply_choices (u, up);
  u->paths[u->npaths++] = up;
  push_event (u, AP_EVENT_PATH_ADDED, p->info.name, NULL, 0,
              up->enabled ? AP_PATH_FAILED : AP_PATH_DISABLED,
              up->enabled ? "joined; not probed yet"
              : "joined disabled, as the operator left it", 0);
  up->reported = up->enabled ? AP_PATH_FAILED : AP_PATH_DISABLED;
  /* Probe it now rather than at the next checker round: a better path
   * that joins is used as soon as it is known to work. */
  u->next_check_ns = 0;
  pthread_cond_signal (&u->wake);
  pthread_mutex_unlock (&u->lock);
  ap_info ("unit %s: path %s joined", u->name, p->info.name);
  return 0;
}

static bool
path_gone (struct ap_unit *u, void *arg)
{
  for (unsigned i = 0; i < u->npaths; i++)
    if (u->paths[i] == arg)
      return false;
  return true;
}

static bool
not_active (struct ap_unit *u, void *arg)
{
  return u->active != arg && u->state != AP_UNIT_SWITCH;
}

/* The longest an operator's command waits for a drain: the request
 * timeout bounds the drain, then verification may take over. */
static uint64_t
admin_wait_ns (struct ap_unit *u)
{
  return 2 * AP_MS (u->opt.request_timeout_ms) + AP_MS (1000);
}

/* The path an operator's command names, with the lock held; NULL (lock
 * dropped, error set) if the unit has no such path. */
static struct upath *
admin_path_locked (struct ap_unit *u, const char *name)
{
  pthread_mutex_lock (&u->lock);
  struct upath *up = find_path (u, name);
  if (!up) {
    pthread_mutex_unlock (&u->lock);
    no_such_path (u, name);
  }
  return up;
}

/* Taking up out of use (verb) would leave the unit no path: refuse, drop
 * the lock and return true. */
static bool
refuse_last_locked (struct ap_unit *u, struct upath *up, const char *verb)
{
  if (up != u->active || best_path (u, up))
    return false;
  pthread_mutex_unlock (&u->lock);
  ap_set_error (EBUSY, "path %s is the last usable path of unit %s; add or "
                "enable another path before %s it", up->path->info.name,
                u->name, verb);
  return true;
}

int
ap_unit_remove_path (struct ap_unit *u, const char *name)
{
  struct upath *up = admin_path_locked (u, name);
  if (!up || refuse_last_locked (u, up, "removing"))
    return -1;
  up->removing = true;
  if (up == u->pinned)
    u->pinned = NULL;
  pthread_cond_signal (&u->wake);
  bool ok = wait_for (u, path_gone, up, admin_wait_ns (u));
  pthread_mutex_unlock (&u->lock);
  if (!ok)
    return ap_set_error (ETIMEDOUT, "path %s of unit %s is still draining; "
                         "it will be removed once its I/O completes", name,
                         u->name);
  ap_info ("unit %s: path %s removed", u->name, name);
  return 0;
}

int
ap_unit_disable_path (struct ap_unit *u, const char *name)
{
  struct upath *up = admin_path_locked (u, name);
  if (!up)
    return -1;
  if (!up->enabled) {
    pthread_mutex_unlock (&u->lock);
    return 0;
  }
  if (refuse_last_locked (u, up, "disabling"))
    return -1;
  if (choose_disabled (u, name) < 0) {
    pthread_mutex_unlock (&u->lock);
    return -1;
  }
  up->enabled = false;
  if (up == u->pinned)
    u->pinned = NULL;
  if (strcmp (u->choices.pinned, name) == 0)
    u->choices.pinned[0] = 0;
  note_path_states (u, "disabled by the operator", 0);
  pthread_cond_signal (&u->wake);
  bool ok = wait_for (u, not_active, up, admin_wait_ns (u));
  if (ok)
    note_path_states (u, "disabled by the operator", 0);
  pthread_mutex_unlock (&u->lock);
  if (!ok)
    return ap_set_error (ETIMEDOUT, "path %s of unit %s is disabled but "
                         "still draining; the unit leaves it once its I/O "
                         "completes", name, u->name);
  return 0;
}

int
ap_unit_enable_path (struct ap_unit *u, const char *name)
{
  pthread_mutex_lock (&u->lock);
  struct upath *up = find_path (u, name);
  bool kept = disabled_index (u, name) >= 0;
  forget_disabled (u, name);
  if (!up) {
    pthread_mutex_unlock (&u->lock);
    if (!kept)
      return no_such_path (u, name);
    ap_info ("unit %s: path %s is enabled; it has not joined, and will "
             "join enabled", u->name, name);
    return 0;
  }
  if (!up->enabled) {
    up->enabled = true;
    /* Probe before use; once it answers, treat it like a path that just
     * joined: the operator asked for it. */
    up->healthy = false;
    up->never_probed = true;
    note_path_states (u, "enabled by the operator", 0);
    u->next_check_ns = 0;
    pthread_cond_signal (&u->wake);
  }
  pthread_mutex_unlock (&u->lock);
  return 0;
}

struct switch_wait {
  struct upath *target;
};

static bool
switched (struct ap_unit *u, void *arg)
{
  struct switch_wait *w = arg;
  return (u->active == w->target && u->state == AP_UNIT_ONLINE)
    || !usable (w->target) || u->pinned != w->target;
}

int
ap_unit_switch (struct ap_unit *u, const char *name)
{
  pthread_mutex_lock (&u->lock);
  struct upath *up = find_path (u, name);
  int r = 0;
  if (!up)
    r = no_such_path (u, name);
  else if (!up->enabled)
    r = ap_set_error (EPERM, "path %s of unit %s is disabled; enable it "
                      "before switching to it", name, u->name);
  else if (!up->healthy)
    r = ap_set_error (EIO, "path %s of unit %s is not healthy (%s); it "
                      "cannot take the unit's I/O", name, u->name,
                      up->last_error);
  if (r < 0) {
    pthread_mutex_unlock (&u->lock);
    return r;
  }
  u->pinned = up;
  snprintf (u->choices.pinned, sizeof u->choices.pinned, "%s", name);
  note_path_states (u, "pinned by the operator", 0);
  if (u->active == up && u->state == AP_UNIT_ONLINE) {
    pthread_mutex_unlock (&u->lock);
    return 0;
  }
  u->switch_request = up;
  pthread_cond_signal (&u->wake);
  struct switch_wait w = { up };
  bool ok = wait_for (u, switched, &w, admin_wait_ns (u));
  bool there = u->active == up;
  pthread_mutex_unlock (&u->lock);
  if (!ok)
    return ap_set_error (ETIMEDOUT, "unit %s has not switched to %s yet "
                         "(draining the current path); the path is pinned "
                         "and the switch completes when the drain does",
                         u->name, name);
  if (!there)
    return ap_set_error (EIO, "unit %s could not switch to %s: the path "
                         "failed or was changed meanwhile", u->name, name);
  return 0;
}

int
ap_unit_unpin (struct ap_unit *u)
{
  pthread_mutex_lock (&u->lock);
  u->pinned = NULL;
  u->choices.pinned[0] = 0;
  pthread_cond_signal (&u->wake);
  pthread_mutex_unlock (&u->lock);
  return 0;
}

/* ---------------------------------------------------------- accessors */

const char *
ap_unit_name (const struct ap_unit *u)
{
  return u->name;
}

uint64_t
ap_unit_size (const struct ap_unit *u)
{
  return u->size;
}

uint32_t
ap_unit_block_size (const struct ap_unit *u)
{
  return u->block_size;
}

void
ap_unit_set_event_cb (struct ap_unit *u, ap_event_fn *fn, void *opaque)
{
  pthread_mutex_lock (&u->lock);
  u->event_cb = fn;
  u->event_opaque = opaque;
  pthread_mutex_unlock (&u->lock);
}

int
ap_unit_get_status (struct ap_unit *u, struct ap_unit_status *st)
{
  memset (st, 0, sizeof *st);
  pthread_mutex_lock (&u->lock);
  snprintf (st->name, sizeof st->name, "%s", u->name);
  st->state = u->state;
  st->size = u->size;
  st->block_size = u->block_size;
  st->inflight = u->active ? u->active->inflight : 0;
  st->held = u->held.count + u->backlog.count;
  st->counters = u->counters;
  st->p50_us = ap_counters_percentile (&u->counters, 0.50);
  st->p99_us = ap_counters_percentile (&u->counters, 0.99);
  st->switches_auto = u->switches_auto;
  st->switches_manual = u->switches_manual;
  st->last_switch_unix_ms = u->last_switch_unix_ms;
  st->longest_verify_us = u->longest_verify_ns / 1000;
  st->queue_if_no_path = u->opt.queue_if_no_path;
  struct upath *pref = preferred_path (u);
  st->npaths = u->npaths;
  for (unsigned i = 0; i < u->npaths; i++) {
    const struct upath *up = u->paths[i];
    struct ap_path_status *ps = &st->paths[i];
    snprintf (ps->name, sizeof ps->name, "%s", up->path->info.name);
    ps->kind = up->path->info.kind;
    ps->state = path_state (u, up);
    ps->active = up == u->active;
    ps->preferred = up == pref;
    ps->pinned = up == u->pinned;
    ps->priority = up->priority;
    ps->inflight = up->inflight;
    ps->counters = up->counters;
    ps->p50_us = ap_counters_percentile (&up->counters, 0.50);
    ps->p99_us = ap_counters_percentile (&up->counters, 0.99);
    ps->last_errno = up->last_errno;
    snprintf (ps->last_error, sizeof ps->last_error, "%s", up->last_error);
    ps->last_error_unix_ms = up->last_error_unix_ms;
    ps->probes_ok = up->probes_ok;
    ps->probes_failed = up->probes_failed;
  }
  st->choices = u->choices;
  pthread_mutex_unlock (&u->lock);
  return 0;
}

/* ------------------------------------------------------ synchronous */

struct sync_wait {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool done;
  int err;
};

static void
sync_done (struct ap_io *io, int err)
{
  struct sync_wait *w = io->opaque;
  pthread_mutex_lock (&w->lock);
  w->done = true;
  w->err = err;
  pthread_cond_signal (&w->cond);
  pthread_mutex_unlock (&w->lock);
}

static int
sync_io (struct ap_unit *u, enum ap_op op, void *buf, uint64_t len,
         uint64_t off, uint32_t flags)
{
  struct sync_wait w = { .done = false };
  pthread_mutex_init (&w.lock, NULL);
  pthread_cond_init (&w.cond, NULL);
  struct ap_io io = { .op = op, .flags = flags, .buf = buf, .offset = off,
                      .length = len, .done = sync_done, .opaque = &w };
  int r = ap_unit_submit (u, &io);
  if (r == 0) {
    pthread_mutex_lock (&w.lock);
    while (!w.done)
      pthread_cond_wait (&w.cond, &w.lock);
    pthread_mutex_unlock (&w.lock);
    if (w.err < 0) {
      static const char *const names[] = { "read", "write", "flush", "trim",
                                           "write-zeroes" };
      r = ap_set_error (-w.err, "unit %s: %s of %llu bytes at offset %llu "
                        "failed: %s", u->name, names[op],
                        (unsigned long long) len, (unsigned long long) off,
                        strerror (-w.err));
    }
  }
  pthread_mutex_destroy (&w.lock);
  pthread_cond_destroy (&w.cond);
  return r;
}

int
ap_unit_pread (struct ap_unit *u, void *buf, uint64_t len, uint64_t off)
{
  return sync_io (u, AP_OP_READ, buf, len, off, 0);
}

int
ap_unit_pwrite (struct ap_unit *u, const void *buf, uint64_t len,
                uint64_t off, uint32_t flags)
{
  return sync_io (u, AP_OP_WRITE, (void *) buf, len, off, flags);
}

int
ap_unit_flush (struct ap_unit *u)
{
  return sync_io (u, AP_OP_FLUSH, NULL, 0, 0, 0);
}

int
ap_unit_trim (struct ap_unit *u, uint64_t len, uint64_t off)
{
  return sync_io (u, AP_OP_TRIM, NULL, len, off, 0);
}

int
ap_unit_write_zeroes (struct ap_unit *u, uint64_t len, uint64_t off,
                      uint32_t flags)
{
  return sync_io (u, AP_OP_WRITE_ZEROES, NULL, len, off, flags);
}
