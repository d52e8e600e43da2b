/* path-direct.c — the "direct" path kind: this node is attached to the disk.
 *
 * A direct path is a regular file (a disk image on shared storage) or a
 * block device, opened O_DIRECT so that nothing a write acknowledged sits
 * in this node's page cache (DESIGN.md invariant 4), and driven through one
 * io_uring per path.
 *
 *   any thread ── submit() ─┐                       ┌─ reaper thread ─┐
 *   reaper (in a callback) ─┤  sq_lock: prep SQE,   │ wait CQE, take  │
 *   fence(), close() ───────┘  io_uring_submit ───► │ it, continue a  │
 *                                    kernel         │ short I/O or    │
 *                                                   │ ap_path_done()  │
 *                                                   └─────────────────┘
 *
 * Submission side: the SQ ring is shared by every submitting thread and is
 * protected by sq_lock.  Completion side: only the reaper thread touches
 * the CQ ring, so it needs no lock.  The reaper never holds sq_lock while
 * it calls ap_path_done(), because completion callbacks submit.
 *
 * Batching: when the reaper itself submits (a completion callback starts
 * the next request, or a short I/O is continued), the SQE is only prepared;
 * the reaper's loop makes one io_uring_submit per batch of completions.
 * This is what keeps a queue-depth-32 random-read load at one submit and
 * one wait syscall per batch, as fio's io_uring engine does.
 *
 * CQ capacity: the CQ ring is twice the queue depth.  cq_used counts the
 * SQEs prepared whose CQE the reaper has not yet taken (every SQE this
 * file prepares makes exactly one CQE: no links, no multishot).  A request
 * that would take cq_used past the limit is refused with -EAGAIN, so the
 * CQ never overflows.  Two slots stay reserved: one for a fence's cancel
 * and one for the NOP that stops the reaper.
 *
 * Per-request scratch state lives in io->internal (the unit owns the rest
 * of it):
 *   cookie  bytes of a read or write done so far (short I/O continues)
 *   err     write-zeroes: 1 once it fell back to punching a hole
 *   due_ns  the path's fence generation when the request was submitted;
 *           a short I/O that comes back after a later fence is ended with
 *           -ECANCELED instead of being continued, so that a fence really
 *           ends every request (ops->fence contract)
 *
 * Locks: sq_lock only.  Never held across ap_path_done().
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE             /* O_DIRECT, FALLOC_FL_*, statx */
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>

#include <linux/fs.h>           /* BLKGETSIZE64, BLKSSZGET, RWF_DSYNC */
#include <liburing.h>

#include "internal.h"

/* A request passes from the submitting thread to the reaper through the
 * kernel (SQ ring, then CQ ring), which ThreadSanitizer cannot see: tell
 * it about that hand-over, so that TSan runs of the tests stay clean. */
#if defined (__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define handover_release(p) __tsan_release (p)
#define handover_acquire(p) __tsan_acquire (p)
#else
#define handover_release(p) ((void) (p))
#define handover_acquire(p) ((void) (p))
#endif

#define DEFAULT_QUEUE_DEPTH 128u
#define MAX_QUEUE_DEPTH 32768u
/* io_uring takes a 32-bit length; keep well inside it. */
#define MAX_RW_LENGTH (UINT64_C (1) << 30)
#define REAPER_STACK (256 * 1024)
/* CQ slots kept free for control SQEs: a fence's cancel, the stop NOP. */
#define CQ_RESERVED 2u
/* Most SQEs the reaper prepares before it submits them mid-batch.  Small:
 * at queue depth 32 completions keep arriving, and a batch of 32 would
 * hold every new request back until all 32 in flight had completed
 * (measured: p50 +15% against fio; 8 matches fio). */
#define BATCH_MAX 8u

/* user_data of control SQEs.  Requests carry their struct ap_io pointer,
 * which is never this small. */
#define UD_FENCE ((uint64_t) 1)
#define UD_STOP  ((uint64_t) 2)

struct direct_path {
  struct ap_path base;          /* first: container_of() from ops */
  int fd;                       /* O_DIRECT */
  bool read_only;               /* fd is O_RDONLY: refuse changes */

  pthread_mutex_t sq_lock;      /* the SQ side of the ring */
  struct io_uring ring;
  unsigned cq_limit;            /* most SQEs outstanding at once */
  atomic_uint cq_used;          /* SQEs prepared, CQE not yet taken;
                                   raised under sq_lock, lowered by the
                                   reaper */
  atomic_bool fence_wanted;     /* a fence found no room; reaper retries */
  atomic_bool sq_stuck;         /* io_uring_submit kept failing; SQEs
                                   wait in the ring for the next submit */
  atomic_uint_fast64_t fence_gen; /* bumped by every fence() */
  bool always_async;            /* the file cannot do non-blocking I/O:
                                   send every SQE to io-wq at once */

  pthread_t reaper;
  unsigned batched;             /* reaper thread only: SQEs it prepared
                                   and has not submitted yet */
};

/* The path whose reaper is the calling thread, if any: submissions made
 * from its completion callbacks are batched, not submitted one by one. */
static _Thread_local struct direct_path *reaping;

static int direct_submit (struct ap_path *p, struct ap_io *io);
static void direct_fence (struct ap_path *p);
static void direct_close (struct ap_path *p);

static const struct ap_path_ops direct_ops = {
  .kind_name = "direct",
  .submit = direct_submit,
  .fence = direct_fence,
  .close = direct_close,
};

/* ------------------------------------------------------- submission side */

/* Push prepared SQEs to the kernel.  sq_lock held.
 *
 * A failure here cannot be undone: the SQEs are already published in the
 * ring and belong to requests that were accepted.  io_uring_enter fails to
 * submit only when the kernel is short of memory (-EAGAIN) or busy
 * flushing an overflowed CQ (-EBUSY, which cq_limit prevents), so try a
 * little longer, then leave them in the ring: the next submit, fence or
 * reaper pass pushes them, and the unit's request timeout bounds the wait
 * if none comes. */
static void
submit_locked (struct direct_path *d)
{
  int tries = 0;

  while (io_uring_sq_ready (&d->ring) > 0) {
    int r = io_uring_submit (&d->ring);
    if (r > 0) {
      /* Progress; without SUBMIT_ALL the kernel stops at a bad SQE and
       * the rest go on the next round. */
      tries = 0;
      continue;
    }
    if ((r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR)
        || ++tries >= 100) {
      if (!atomic_exchange (&d->sq_stuck, true))
        ap_error ("%s: io_uring submit keeps failing (%s); requests wait "
                  "in the ring until it recovers; check the kernel log "
                  "for memory pressure",
                  d->base.info.name, r < 0 ? strerror (-r) : "no progress");
      return;
    }
    if (tries > 10)
      usleep (100);
  }
  atomic_store (&d->sq_stuck, false);
}

/* A free SQE, submitting what is queued to make room.  sq_lock held. */
static struct io_uring_sqe *
get_sqe_locked (struct direct_path *d)
{
  struct io_uring_sqe *sqe = io_uring_get_sqe (&d->ring);
  if (!sqe) {
    /* The SQ is full only of SQEs the reaper batched or that a failed
     * submit left behind: push them and try once more. */
    submit_locked (d);
    sqe = io_uring_get_sqe (&d->ring);
  }
  return sqe;
}

/* Fill sqe for io (or for what is left of it). */
static void
prep_io (struct direct_path *d, struct io_uring_sqe *sqe, struct ap_io *io)
{
  uint64_t done = io->internal.cookie;
  int mode;

  switch (io->op) {
  case AP_OP_READ:
    io_uring_prep_read (sqe, d->fd, (char *) io->buf + done,
                        (unsigned) (io->length - done), io->offset + done);
    break;
  case AP_OP_WRITE:
    io_uring_prep_write (sqe, d->fd, (const char *) io->buf + done,
                         (unsigned) (io->length - done), io->offset + done);
    /* FUA: RWF_DSYNC makes an O_DIRECT write on a block device a
     * REQ_FUA write, and on a file also commits the metadata needed to
     * read it back. */
    if (io->flags & AP_IO_FUA)
      sqe->rw_flags = RWF_DSYNC;
    break;
  case AP_OP_FLUSH:
    io_uring_prep_fsync (sqe, d->fd, IORING_FSYNC_DATASYNC);
    break;
  case AP_OP_TRIM:
    /* Punch hole reads back as zeroes on files and (via
     * blkdev_issue_zeroout) on block devices: TRIM is safe to use for
     * zeroing too. */
    io_uring_prep_fallocate (sqe, d->fd,
                             FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                             (off_t) io->offset, (off_t) io->length);
    break;
  case AP_OP_WRITE_ZEROES:
    mode = io->internal.err ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE;
    io_uring_prep_fallocate (sqe, d->fd, mode | FALLOC_FL_KEEP_SIZE,
                             (off_t) io->offset, (off_t) io->length);
    break;
  }
  /* io_uring would find out for each request that the file system cannot
   * do it without blocking, and only then hand it to a worker: skip the
   * attempt.  On tmpfs this gave 10-30% more 4 KiB IOPS through the NBD
   * server (bench/nbd-server.sh). */
  if (d->always_async)
    sqe->flags |= IOSQE_ASYNC;
  io_uring_sqe_set_data64 (sqe, (uint64_t) (uintptr_t) io);
  handover_release (io);
}

/* Refuse what can be refused before it reaches the kernel. */
static int
check_request (const struct direct_path *d, const struct ap_io *io)
{
  switch (io->op) {
  case AP_OP_READ:
  case AP_OP_WRITE:
    /* A zero-length transfer would complete with 0 bytes, which this
     * file reads as an I/O error; and io_uring's length is 32 bits. */
    if (io->length == 0 || io->length > MAX_RW_LENGTH)
      return -EINVAL;
    break;
  case AP_OP_FLUSH:
    return 0;
  case AP_OP_TRIM:
  case AP_OP_WRITE_ZEROES:
    if (io->length == 0)
      return -EINVAL;
    break;
  default:
    return -EINVAL;
  }
  if (io->offset > (uint64_t) INT64_MAX - io->length)
    return -EINVAL;
  /* The fd is O_RDONLY: say why the write fails rather than -EBADF. */
  if (d->read_only && io->op != AP_OP_READ)
    return -EROFS;
  return 0;
}

static int
direct_submit (struct ap_path *p, struct ap_io *io)
{
  struct direct_path *d = container_of (p, struct direct_path, base);
  struct io_uring_sqe *sqe;
  int r = check_request (d, io);

  if (r < 0)
    return r;
  io->internal.cookie = 0;
  io->internal.err = 0;
  io->internal.due_ns = atomic_load (&d->fence_gen);

  pthread_mutex_lock (&d->sq_lock);
  /* cq_used only grows under sq_lock, so this check cannot be raced past
   * the limit; the reaper lowering it concurrently only makes it safer. */
  if (atomic_load (&d->cq_used) >= d->cq_limit) {
    pthread_mutex_unlock (&d->sq_lock);
    return -EAGAIN;
  }
  sqe = get_sqe_locked (d);
  if (!sqe) {
    pthread_mutex_unlock (&d->sq_lock);
    return -EAGAIN;
  }
  prep_io (d, sqe, io);
  atomic_fetch_add (&d->cq_used, 1);
  if (reaping == d)
    d->batched++;               /* the reaper's loop submits the batch */
  else
    submit_locked (d);
  pthread_mutex_unlock (&d->sq_lock);
  return 0;
}

/* Queue the cancel of everything in flight.  sq_lock held.  If the CQ or
 * SQ has no room, leave fence_wanted set: the CQ is then full of requests
 * whose completions will wake the reaper, which tries again. */
static void
fence_locked (struct direct_path *d)
{
  struct io_uring_sqe *sqe;

  if (atomic_load (&d->cq_used) >= d->cq_limit + 1
      || !(sqe = get_sqe_locked (d))) {
    atomic_store (&d->fence_wanted, true);
    return;
  }
  atomic_store (&d->fence_wanted, false);
  /* Requests cancelled this way complete with -ECANCELED through the
   * reaper like any other completion; requests already on the wire to
   * the device cannot be cancelled and complete with their real result. */
  io_uring_prep_cancel64 (sqe, 0, IORING_ASYNC_CANCEL_ANY);
  io_uring_sqe_set_data64 (sqe, UD_FENCE);
  atomic_fetch_add (&d->cq_used, 1);
  if (reaping == d)
    d->batched++;
  else
    submit_locked (d);
}

static void
direct_fence (struct ap_path *p)
{
  struct direct_path *d = container_of (p, struct direct_path, base);

  atomic_fetch_add (&d->fence_gen, 1);
  pthread_mutex_lock (&d->sq_lock);
  fence_locked (d);
  pthread_mutex_unlock (&d->sq_lock);
}

/* ------------------------------------------------------- completion side */

/* The request is over: free its CQ slot first, so that the callback may
 * submit the next request into it. */
static void
finish (struct direct_path *d, struct ap_io *io, int err)
{
  atomic_fetch_sub (&d->cq_used, 1);
  ap_path_done (&d->base, io, err);
}

/* Send the rest of io again from the reaper.  Its CQ slot carries over:
 * cq_used is not raised, so a request in progress is never refused for
 * lack of room.  Returns 0 or a negative errno. */
static int
resubmit (struct direct_path *d, struct ap_io *io)
{
  struct io_uring_sqe *sqe;

  pthread_mutex_lock (&d->sq_lock);
  sqe = get_sqe_locked (d);
  if (sqe) {
    prep_io (d, sqe, io);
    d->batched++;
  }
  pthread_mutex_unlock (&d->sq_lock);
  return sqe ? 0 : -EAGAIN;
}

static void
complete_io (struct direct_path *d, struct ap_io *io, int res)
{
  switch (io->op) {
  case AP_OP_READ:
  case AP_OP_WRITE:
    if (res == 0)
      /* No progress: a read at or past the end, or a device that took
       * nothing.  Retrying would loop. */
      res = -EIO;
    else if (res > 0 && (uint64_t) res < io->length - io->internal.cookie) {
      /* Short transfer (O_DIRECT on a file: only at EOF, which the unit
       * prevents; a block device may split).  Continue the remainder,
       * unless the path was fenced since: a fence must end requests,
       * not let them run on. */
      io->internal.cookie += (uint64_t) res;
      if (io->internal.due_ns != atomic_load (&d->fence_gen))
        res = -ECANCELED;
      else if ((res = resubmit (d, io)) == 0)
        return;
    }
    break;
  case AP_OP_WRITE_ZEROES:
    /* tmpfs and some filesystems can punch holes but not zero a range.
     * A hole reads back as zeroes, which is all write-zeroes promises
     * unless the caller asked to keep the range allocated. */
    if (res == -EOPNOTSUPP && !(io->flags & AP_IO_NO_HOLE)
        && !io->internal.err) {
      io->internal.err = 1;
      if ((res = resubmit (d, io)) == 0)
        return;
    }
    break;
  default:
    break;
  }
  finish (d, io, res < 0 ? res : 0);
}

/* Submit what the reaper batched, and a fence that found no room. */
static void
reaper_flush (struct direct_path *d)
{
  pthread_mutex_lock (&d->sq_lock);
  if (atomic_load (&d->fence_wanted))
    fence_locked (d);
  submit_locked (d);
  d->batched = 0;
  pthread_mutex_unlock (&d->sq_lock);
}

static void *
reaper_thread (void *arg)
{
  struct direct_path *d = arg;
  bool stop = false;

  reaping = d;
  while (!stop) {
    struct io_uring_cqe *cqe;
    int r;

    if (d->batched || atomic_load (&d->fence_wanted)
        || atomic_load (&d->sq_stuck))
      reaper_flush (d);

    if (atomic_load (&d->sq_stuck)) {
      /* Nothing may complete to wake us while SQEs wait unsubmitted:
       * look again soon. */
      struct __kernel_timespec ts = { .tv_sec = 0, .tv_nsec = 10000000 };
      r = io_uring_wait_cqe_timeout (&d->ring, &cqe, &ts);
    }
    else
      r = io_uring_wait_cqe (&d->ring, &cqe);
    if (r == -EINTR || r == -ETIME || r == -EAGAIN)
      continue;
    if (r < 0) {
      ap_error ("%s: waiting for io_uring completions failed: %s",
                d->base.info.name, strerror (-r));
      usleep (1000);            /* do not spin on a persistent error */
      continue;
    }

    /* Take every CQE that is there.  Each is released (cqe_seen) before
     * it is handled, so callbacks that submit never find the CQ full of
     * entries that were already read. */
    ap_completion_run_begin ();
    do {
      uint64_t ud = io_uring_cqe_get_data64 (cqe);
      int res = cqe->res;

      io_uring_cqe_seen (&d->ring, cqe);
      if (ud == UD_STOP)
        stop = true;
      else if (ud == UD_FENCE)
        /* The cancel's own result (how many it cancelled, or -ENOENT
         * for none) says nothing the requests will not. */
        atomic_fetch_sub (&d->cq_used, 1);
      else {
        handover_acquire ((void *) (uintptr_t) ud);
        complete_io (d, (struct ap_io *) (uintptr_t) ud, res);
      }
      /* A long run of completions: do not keep the requests their
       * callbacks started waiting for the end of it. */
      if (d->batched >= BATCH_MAX)
        reaper_flush (d);
    } while (io_uring_peek_cqe (&d->ring, &cqe) == 0);
    ap_completion_run_end ();
  }
  reaping = NULL;
  return NULL;
}

/* ---------------------------------------------------------------- close */

static void
direct_close (struct ap_path *p)
{
  struct direct_path *d = container_of (p, struct direct_path, base);
  struct io_uring_sqe *sqe = NULL;

  if (reaping == d) {
    /* Joining ourselves would hang; a caller bug.  Leak rather than free
     * a ring the reaper is using. */
    ap_error ("%s: path closed from its own completion callback; "
              "not closing it", d->base.info.name);
    return;
  }

  ap_debug (AP_DEBUG_CONTROL, "%s: closing", d->base.info.name);
  /* Stop the reaper through the ring itself: a NOP it recognises.  The
   * ring is idle (nothing in flight), so an SQE is always there but for
   * a kernel that keeps refusing submissions; give that a bounded time. */
  for (int tries = 0; tries < 1000; tries++) {
    pthread_mutex_lock (&d->sq_lock);
    sqe = get_sqe_locked (d);
    if (sqe) {
      io_uring_prep_nop (sqe);
      io_uring_sqe_set_data64 (sqe, UD_STOP);
      submit_locked (d);
    }
    pthread_mutex_unlock (&d->sq_lock);
    if (sqe)
      break;
    usleep (10000);
  }
  if (!sqe) {
    ap_error ("%s: cannot stop the io_uring reaper thread; leaking the "
              "path", d->base.info.name);
    return;
  }
  pthread_join (d->reaper, NULL);
  io_uring_queue_exit (&d->ring);
  close (d->fd);
  pthread_mutex_destroy (&d->sq_lock);
  free (d);
}

/* ----------------------------------------------------------------- open */

/* What to tell the operator after open(2) failed with err. */
static const char *
open_hint (int err)
{
  switch (err) {
  case ENOENT:
  case ENOTDIR:
    return "check the path";
  case EACCES:
  case EPERM:
    return "check the permissions and that altpath runs as root";
  case EROFS:
    return "the disk is read-only; open it read-only";
  case EISDIR:
    return "it is a directory; give a disk image file or a block device";
  case EINVAL:
    return "the filesystem does not support O_DIRECT; put the image on "
      "one that does (ext4, xfs) or use a block device";
  case EBUSY:
    return "another program holds the device exclusively";
  case ENXIO:
  case ENODEV:
    return "the device is not present";
  default:
    return "check the path and that altpath runs as root";
  }
}

/* The logical block size of a regular file: the O_DIRECT offset alignment
 * the filesystem reports, 512 where it cannot say. */
static uint32_t
file_block_size (int fd)
{
  uint32_t bs = 512;
#ifdef STATX_DIOALIGN
  struct statx stx;
  if (statx (fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0
      && (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align > bs)
    bs = stx.stx_dio_offset_align;
#else
  (void) fd;
#endif
  return bs;
}

/* Whether the file cannot do non-blocking I/O at all (tmpfs, most network
 * and FUSE file systems): a one-block RWF_NOWAIT read then fails with
 * EOPNOTSUPP, where block devices and local disk file systems read or say
 * EAGAIN.  io_uring hands every request on such a file to its worker
 * threads anyway. */
static bool
lacks_nowait (int fd, uint32_t block_size)
{
  void *buf;
  bool lacks = false;

  if (posix_memalign (&buf, block_size < 4096 ? 4096 : block_size,
                      block_size) != 0)
    return false;
  struct iovec iov = { .iov_base = buf, .iov_len = block_size };
  if (preadv2 (fd, &iov, 1, 0, RWF_NOWAIT) < 0 && errno == EOPNOTSUPP)
    lacks = true;
  free (buf);
  return lacks;
}

/* Read a one-line sysfs attribute into buf, whitespace trimmed.  Returns
 * true if it holds something. */
static bool
read_sysfs_id (const char *path, char *buf, size_t size)
{
  FILE *f = fopen (path, "re");
  size_t n, start = 0;

  if (!f)
    return false;
  n = fread (buf, 1, size - 1, f);
  fclose (f);
  buf[n] = '\0';
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '
                   || buf[n - 1] == '\t' || buf[n - 1] == '\r'))
    buf[--n] = '\0';
  while (buf[start] == ' ' || buf[start] == '\t')
    start++;
  if (start)
    memmove (buf, buf + start, n - start + 1);
  return buf[0] != '\0';
}

/* A block device's WWID or serial, or "" if it has none.  SCSI disks
 * keep the WWID under device/, NVMe namespaces on the disk itself; SCSI
 * and USB serials sit under device/, virtio-blk's on the disk. */
static void
block_identity (dev_t rdev, char *buf, size_t size)
{
  static const char *const attrs[] = {
    "device/wwid", "wwid", "device/serial", "serial",
  };
  char path[96];

  for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
    snprintf (path, sizeof path, "/sys/dev/block/%u:%u/%s",
              major (rdev), minor (rdev), attrs[i]);
    if (read_sysfs_id (path, buf, size))
      return;
  }
  buf[0] = '\0';
}

/* Set up the ring with a CQ twice the queue depth. */
static int
setup_ring (struct direct_path *d, unsigned depth)
{
  struct io_uring_params p;
  int r;

  memset (&p, 0, sizeof p);
  /* SUBMIT_ALL: one bad SQE in a batch must not hold back the others.
   * CLAMP: a depth above the kernel's limit is reduced, not refused. */
  p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP
    | IORING_SETUP_SUBMIT_ALL;
  p.cq_entries = 2 * depth;
  r = io_uring_queue_init_params (depth, &d->ring, &p);
  if (r == -EINVAL) {
    /* A kernel before 5.18 lacks SUBMIT_ALL; submit_locked copes. */
    memset (&p, 0, sizeof p);
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
    p.cq_entries = 2 * depth;
    r = io_uring_queue_init_params (depth, &d->ring, &p);
  }
  if (r < 0)
    return r;
  d->cq_limit = p.cq_entries - CQ_RESERVED;
  /* The unit keeps the rest in order rather than have them refused. */
  d->base.info.max_inflight = d->cq_limit;
  return 0;
}

static const char *
ring_hint (int err)
{
  switch (err) {
  case ENOMEM:
    return "lower queue_depth or raise the locked-memory limit "
      "(ulimit -l)";
  case EPERM:
  case EACCES:
    return "io_uring is disabled (sysctl kernel.io_uring_disabled) or "
      "blocked by a seccomp policy";
  case ENOSYS:
    return "the kernel has no io_uring; altpath needs Linux 5.19 or later";
  default:
    return "check the kernel's io_uring support";
  }
}

struct ap_path *
ap_path_open_direct (const char *file, const struct ap_direct_options *opt)
{
  static const struct ap_direct_options defaults;
  struct direct_path *d;
  struct ap_path_info *info;
  char name[AP_NAME_MAX];
  struct stat st;
  unsigned depth;
  pthread_attr_t attr;
  sigset_t all, old;
  int flags, r;

  if (!opt)
    opt = &defaults;
  if (!file || !*file) {
    ap_set_error (EINVAL, "direct path: no disk given; name a disk image "
                  "file or a block device");
    return NULL;
  }
  depth = opt->queue_depth ? opt->queue_depth : DEFAULT_QUEUE_DEPTH;
  /* The kernel's own limit (IORING_MAX_ENTRIES); it also keeps the CQ
   * size, 2 * depth, from overflowing. */
  if (depth > MAX_QUEUE_DEPTH)
    depth = MAX_QUEUE_DEPTH;

  d = calloc (1, sizeof *d);
  if (!d) {
    ap_set_error (errno, "cannot open disk %s: out of memory", file);
    return NULL;
  }
  if (opt->name)
    snprintf (name, sizeof name, "%s", opt->name);
  else
    snprintf (name, sizeof name, "direct:%s", file);
  ap_path_init (&d->base, &direct_ops, AP_PATH_DIRECT, name);
  info = &d->base.info;
  d->read_only = opt->read_only;

  /* Look before opening: open(2) with O_DIRECT refuses a directory or a
   * character device with a vaguer error than the one we can give.  The
   * fstat() below checks again what was actually opened. */
  if (stat (file, &st) == 0 && !S_ISREG (st.st_mode)
      && !S_ISBLK (st.st_mode))
    goto err_type;

  flags = (opt->read_only ? O_RDONLY : O_RDWR) | O_DIRECT | O_CLOEXEC;
  d->fd = open (file, flags);
  if (d->fd < 0) {
    int e = errno;
    ap_set_error (e, "cannot open disk %s for direct I/O: %s; %s",
                  file, strerror (e), open_hint (e));
    goto err_free;
  }
  if (fstat (d->fd, &st) < 0) {
    int e = errno;
    ap_set_error (e, "cannot stat disk %s: %s", file, strerror (e));
    goto err_close;
  }

  if (S_ISREG (st.st_mode)) {
    info->size = (uint64_t) st.st_size;
    info->block_size = file_block_size (d->fd);
    /* Only the fallocate modes decide, per request, whether the
     * filesystem can do it (-EOPNOTSUPP is then a request error). */
    info->caps = AP_CAN_TRIM | AP_CAN_ZERO;
  }
  else if (S_ISBLK (st.st_mode)) {
    uint64_t size;
    int ssz;
    if (ioctl (d->fd, BLKGETSIZE64, &size) < 0
        || ioctl (d->fd, BLKSSZGET, &ssz) < 0) {
      int e = errno;
      ap_set_error (e, "cannot read the size of block device %s: %s; "
                    "check that the device is present", file, strerror (e));
      goto err_close;
    }
    info->size = size;
    info->block_size = (uint32_t) ssz;
    info->caps = AP_CAN_TRIM | AP_CAN_ZERO;
  }
  else {
    close (d->fd);
    goto err_type;
  }
  info->caps |= AP_CAN_FLUSH | AP_CAN_FUA;

  if (info->size == 0) {
    ap_set_error (EINVAL, "cannot use %s as a disk: its size is 0; give "
                  "it a size (e.g. truncate -s 1G %s)", file, file);
    goto err_close;
  }
  if (info->block_size == 0 || info->size % info->block_size != 0) {
    ap_set_error (EINVAL, "cannot use %s as a disk: its size %" PRIu64
                  " is not a multiple of its logical block size %" PRIu32
                  "; resize it to a multiple", file, info->size,
                  info->block_size);
    goto err_close;
  }

  r = fcntl (d->fd, F_GETFL);
  info->o_direct = r >= 0 && (r & O_DIRECT) != 0;
  info->read_only = opt->read_only;
  snprintf (info->target, sizeof info->target, "%s", file);
  if (opt->identity)
    snprintf (info->identity, sizeof info->identity, "%s", opt->identity);
  else if (S_ISBLK (st.st_mode))
    block_identity (st.st_rdev, info->identity, sizeof info->identity);

  d->always_async = lacks_nowait (d->fd, info->block_size);

  r = setup_ring (d, depth);
  if (r < 0) {
    ap_set_error (-r, "cannot set up io_uring (depth %u) for disk %s: %s; "
                  "%s", depth, file, strerror (-r), ring_hint (-r));
    goto err_close;
  }
  pthread_mutex_init (&d->sq_lock, NULL);

  /* The reaper blocks every signal (it inherits our mask while it is
   * created): signals are for the application's threads. */
  pthread_attr_init (&attr);
  pthread_attr_setstacksize (&attr, REAPER_STACK);
  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  r = pthread_create (&d->reaper, &attr, reaper_thread, d);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  pthread_attr_destroy (&attr);
  if (r != 0) {
    ap_set_error (r, "cannot start the I/O thread for disk %s: %s; check "
                  "the process and memory limits", file, strerror (r));
    goto err_ring;
  }
  pthread_setname_np (d->reaper, "ap-direct");

  ap_debug (AP_DEBUG_CONTROL,
            "%s: opened %s: size %" PRIu64 ", block size %" PRIu32
            ", identity \"%s\", queue depth %u, cq limit %u%s",
            info->name, file, info->size, info->block_size, info->identity,
            depth, d->cq_limit, d->always_async
            ? "; no non-blocking I/O on it: every request goes to "
            "io_uring's workers" : "");
  return &d->base;

 err_ring:
  pthread_mutex_destroy (&d->sq_lock);
  io_uring_queue_exit (&d->ring);
 err_close:
  close (d->fd);
  goto err_free;
 err_type:
  if (S_ISDIR (st.st_mode))
    ap_set_error (EISDIR, "cannot use %s as a disk: it is a directory; "
                  "give a disk image file or a block device", file);
  else
    ap_set_error (ENOTBLK, "cannot use %s as a disk: it is neither a "
                  "regular file nor a block device; give a disk image "
                  "file or a block device", file);
 err_free:
  free (d);
  return NULL;
}
