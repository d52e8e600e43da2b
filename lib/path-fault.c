/* path-fault.c — a path that wraps any other path and injects faults, for
 * tests and the demo: errors, hangs, added latency, silent loss, and slow
 * fencing, each switchable while I/O runs.
 *
 *   unit ──► fault ──(forwarded)──► inner path (direct, served)
 *              │ held    (HANG: not run yet; run late when the mode
 *              │          changes, cancelled unrun when fenced)
 *              │ dropped (DROP: lost; ended only by a fence)
 *              └ ready   (completions waiting for their time: ERROR,
 *                         DELAY, fenced requests)
 *
 * A hang releases its requests to the inner path when the mode changes:
 * that is a write in doubt landing late.  If the unit ever resubmitted such
 * a write elsewhere without fencing first, the late copy would overwrite
 * newer data, and the integrity verifier would see it.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct fault_path {
  struct ap_path base;
  struct ap_path *inner;

  pthread_mutex_t lock;         /* protects everything below */
  pthread_cond_t cond;          /* wakes the completion thread */
  pthread_t thread;

  enum ap_fault_mode mode;
  int err;                      /* ERROR: negative errno */
  uint64_t delay_ns;            /* DELAY */
  uint64_t fence_delay_ns;
  struct ap_plist held, dropped;
  struct ap_plist ready;           /* sorted by internal.due_ns */
  uint64_t forwarded;           /* in the inner path now */
  bool stop;
};

static const struct ap_path_ops fault_ops;

/* Queue a completion for time due; keeps ready sorted. */
static void
ready_insert (struct fault_path *f, struct ap_io *io, int err, uint64_t due)
{
  io->internal.err = err;
  io->internal.due_ns = due;
  ap_plist_insert_by_due (&f->ready, io);
  pthread_cond_signal (&f->cond);
}

static void
inner_done (void *owner, struct ap_path *inner, struct ap_io *io, int err)
{
  struct fault_path *f = owner;
  pthread_mutex_lock (&f->lock);
  f->forwarded--;
  if (f->mode == AP_FAULT_DELAY && f->delay_ns) {
    ready_insert (f, io, err, ap_now_ns () + f->delay_ns);
    pthread_mutex_unlock (&f->lock);
    return;
  }
  pthread_mutex_unlock (&f->lock);
  ap_path_done (&f->base, io, err);
}

static int
forward (struct fault_path *f, struct ap_io *io)
{
  pthread_mutex_lock (&f->lock);
  f->forwarded++;
  pthread_mutex_unlock (&f->lock);
  int r = ap_path_submit (f->inner, io);
  if (r < 0) {
    pthread_mutex_lock (&f->lock);
    f->forwarded--;
    pthread_mutex_unlock (&f->lock);
  }
  return r;
}

static int
fault_submit (struct ap_path *p, struct ap_io *io)
{
  struct fault_path *f = container_of (p, struct fault_path, base);
  pthread_mutex_lock (&f->lock);
  switch (f->mode) {
  case AP_FAULT_NONE:
  case AP_FAULT_DELAY:
    pthread_mutex_unlock (&f->lock);
    return forward (f, io);
  case AP_FAULT_ERROR:
    /* Complete from the thread, as a real path would, never inside
     * submit. */
    ready_insert (f, io, f->err, ap_now_ns ());
    break;
  case AP_FAULT_HANG:
    ap_plist_append (&f->held, io);
    break;
  case AP_FAULT_DROP:
    ap_plist_append (&f->dropped, io);
    break;
  }
  pthread_mutex_unlock (&f->lock);
  return 0;
}

static void
fault_fence (struct ap_path *p)
{
  struct fault_path *f = container_of (p, struct fault_path, base);
  pthread_mutex_lock (&f->lock);
  uint64_t due = ap_now_ns () + f->fence_delay_ns;
  struct ap_io *io;
  /* Held and lost requests never ran: cancel them, unrun. */
  while ((io = ap_plist_pop (&f->held)))
    ready_insert (f, io, -ECANCELED, due);
  while ((io = ap_plist_pop (&f->dropped)))
    ready_insert (f, io, -ECANCELED, due);
  /* Delayed completions already ran; deliver them by the fence's time. */
  for (io = f->ready.head; io; io = io->internal.pnext)
    if (io->internal.due_ns > due)
      io->internal.due_ns = due;
  bool inner = f->forwarded > 0;
  pthread_mutex_unlock (&f->lock);
  if (inner)
    f->inner->ops->fence (f->inner);
}

static void *
fault_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "ap-fault");
  struct fault_path *f = arg;
  pthread_mutex_lock (&f->lock);
  while (!f->stop) {
    struct ap_io *io = f->ready.head;
    uint64_t now = ap_now_ns ();
    if (io && io->internal.due_ns <= now) {
      ap_plist_pop (&f->ready);
      pthread_mutex_unlock (&f->lock);
      ap_path_done (&f->base, io, io->internal.err);
      pthread_mutex_lock (&f->lock);
      continue;
    }
    if (io) {
      struct timespec ts = ap_ns_to_timespec (io->internal.due_ns);
      pthread_cond_timedwait (&f->cond, &f->lock, &ts);
    }
    else
      pthread_cond_wait (&f->cond, &f->lock);
  }
  pthread_mutex_unlock (&f->lock);
  return NULL;
}

static void
fault_close (struct ap_path *p)
{
  struct fault_path *f = container_of (p, struct fault_path, base);
  pthread_mutex_lock (&f->lock);
  f->stop = true;
  pthread_cond_signal (&f->cond);
  pthread_mutex_unlock (&f->lock);
  pthread_join (f->thread, NULL);
  ap_path_close (f->inner);
  pthread_mutex_destroy (&f->lock);
  pthread_cond_destroy (&f->cond);
  free (f);
}

static const struct ap_path_ops fault_ops = {
  .kind_name = "fault",
  .submit = fault_submit,
  .fence = fault_fence,
  .close = fault_close,
};

struct ap_path *
ap_path_fault_wrap (struct ap_path *inner, const char *name)
{
  if (!inner) {
    ap_set_error (EINVAL, "fault wrapper: no inner path");
    return NULL;
  }
  struct fault_path *f = calloc (1, sizeof *f);
  if (!f) {
    ap_path_close (inner);
    ap_set_error (ENOMEM, "out of memory wrapping path %s",
                  inner->info.name);
    return NULL;
  }
  ap_path_init (&f->base, &fault_ops, inner->info.kind, NULL);
  /* It stands for the inner path: same disk, same kind, same limits. */
  f->base.info = inner->info;
  if (name && name[0])
    snprintf (f->base.info.name, sizeof f->base.info.name, "%s", name);
  f->inner = inner;
  f->err = -EIO;
  inner->owner = f;
  inner->owner_done = inner_done;

  pthread_mutex_init (&f->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&f->cond, &ca);
  pthread_condattr_destroy (&ca);
  pthread_attr_t ta;
  pthread_attr_init (&ta);
  pthread_attr_setstacksize (&ta, 256 * 1024);
  int r = pthread_create (&f->thread, &ta, fault_thread, f);
  pthread_attr_destroy (&ta);
  if (r != 0) {
    ap_path_close (inner);
    free (f);
    ap_set_error (r, "cannot start the thread of fault path: %s",
                  strerror (r));
    return NULL;
  }
  return &f->base;
}

int
ap_fault_set (struct ap_path *p, enum ap_fault_mode mode, int err,
              uint64_t delay_us)
{
  if (!p || p->ops != &fault_ops)
    return ap_set_error (EINVAL, "path %s is not a fault-injecting path",
                         p ? p->info.name : "(null)");
  if ((unsigned) mode > AP_FAULT_DROP)
    return ap_set_error (EINVAL, "unknown fault mode %d", (int) mode);
  struct fault_path *f = container_of (p, struct fault_path, base);
  pthread_mutex_lock (&f->lock);
  enum ap_fault_mode old = f->mode;
  f->mode = mode;
  f->err = err < 0 ? err : err > 0 ? -err : -EIO;
  f->delay_ns = mode == AP_FAULT_DELAY ? AP_US (delay_us) : 0;
  struct ap_plist late = { 0 };
  if (old == AP_FAULT_HANG && mode != AP_FAULT_HANG) {
    /* The hang ends: what was held runs now, late. */
    late = f->held;
    f->held = (struct ap_plist) { 0 };
  }
  pthread_mutex_unlock (&f->lock);

  struct ap_io *io;
  while ((io = ap_plist_pop (&late))) {
    int r = forward (f, io);
    if (r < 0) {
      pthread_mutex_lock (&f->lock);
      ready_insert (f, io, r, ap_now_ns ());
      pthread_mutex_unlock (&f->lock);
    }
  }
  return 0;
}

int
ap_fault_set_fence_delay (struct ap_path *p, uint64_t delay_us)
{
  if (!p || p->ops != &fault_ops)
    return ap_set_error (EINVAL, "path %s is not a fault-injecting path",
                         p ? p->info.name : "(null)");
  struct fault_path *f = container_of (p, struct fault_path, base);
  pthread_mutex_lock (&f->lock);
  f->fence_delay_ns = AP_US (delay_us);
  pthread_mutex_unlock (&f->lock);
  return 0;
}
