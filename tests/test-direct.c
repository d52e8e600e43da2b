/* test-direct.c — the direct path on its own, without a unit.
 *
 * The test takes the owner's place (p->owner_done) and records every
 * completion, so it can check that each request completes exactly once
 * and with what.  Images are sparse files in /tmp (the local filesystem)
 * and /dev/shm (tmpfs: no zero-range, so write-zeroes falls back to punch
 * hole); a loop device over an image, where one can be set up, covers the
 * block-device branch.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <linux/loop.h>
#include <linux/magic.h>

#include <cmocka.h>

#include "internal.h"

#define MiB (1024u * 1024u)
#define IMG_SIZE (8 * MiB)
#define WAIT_NS AP_MS (10000)

/* ------------------------------------------------------------ recording */

/* One request and what became of it. */
struct treq {
  struct ap_io io;
  int count;                    /* completions seen: must end at 1 */
  int err;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond;     /* CLOCK_MONOTONIC; set up in main */
static unsigned completed;      /* all completions, all requests */
static bool gate_closed;        /* hold the reaper inside the callback */
static unsigned in_run_seen;    /* completions inside a completion run */
static unsigned hook_calls;     /* ends of runs (test_completion_hook) */

static void
record_done (void *owner, struct ap_path *p, struct ap_io *io, int err)
{
  struct treq *t = container_of (io, struct treq, io);
  (void) owner;
  (void) p;

  pthread_mutex_lock (&lock);
  while (gate_closed)
    pthread_cond_wait (&cond, &lock);
  t->count++;
  t->err = err;
  if (ap_in_completion_run ())
    in_run_seen++;
  completed++;
  pthread_cond_broadcast (&cond);
  pthread_mutex_unlock (&lock);
}

static void
set_gate (bool closed)
{
  pthread_mutex_lock (&lock);
  gate_closed = closed;
  pthread_cond_broadcast (&cond);
  pthread_mutex_unlock (&lock);
}

/* Wait until `completed` reaches n; false on timeout. */
static bool
wait_completed (unsigned n)
{
  struct timespec ts = ap_ns_to_timespec (ap_now_ns () + WAIT_NS);
  bool ok = true;

  pthread_mutex_lock (&lock);
  while (completed < n && ok)
    ok = pthread_cond_timedwait (&cond, &lock, &ts) != ETIMEDOUT
      || completed >= n;
  pthread_mutex_unlock (&lock);
  return ok;
}

static unsigned
completed_now (void)
{
  pthread_mutex_lock (&lock);
  unsigned n = completed;
  pthread_mutex_unlock (&lock);
  return n;
}

static int
count_of (struct treq *t)
{
  pthread_mutex_lock (&lock);
  int n = t->count;
  pthread_mutex_unlock (&lock);
  return n;
}

static void
prep (struct treq *t, enum ap_op op, uint32_t flags, void *buf,
      uint64_t off, uint64_t len)
{
  memset (t, 0, sizeof *t);
  t->io.op = op;
  t->io.flags = flags;
  t->io.buf = buf;
  t->io.offset = off;
  t->io.length = len;
}

/* Submit one request and wait for it.  Returns its error (0 or negative
 * errno), or the synchronous refusal of submit. */
static int
run (struct ap_path *p, enum ap_op op, uint32_t flags, void *buf,
     uint64_t off, uint64_t len)
{
  struct treq t;
  unsigned before = completed_now ();
  int r;

  prep (&t, op, flags, buf, off, len);
  r = ap_path_submit (p, &t.io);
  if (r < 0) {
    /* Refused at once: no completion may follow. */
    usleep (20000);
    assert_int_equal (completed_now (), before);
    assert_int_equal (count_of (&t), 0);
    return r;
  }
  assert_true (wait_completed (before + 1));
  assert_int_equal (count_of (&t), 1);
  return t.err;
}

static void *
xbuf (size_t len)
{
  void *b = NULL;
  assert_int_equal (posix_memalign (&b, 4096, len), 0);
  return b;
}

static void
fill (void *buf, size_t len, unsigned seed)
{
  unsigned char *b = buf;
  for (size_t i = 0; i < len; i++)
    b[i] = (unsigned char) (seed * 31 + i * 7 + (i >> 9));
}

static bool
is_zero (const void *buf, size_t len)
{
  const unsigned char *b = buf;
  for (size_t i = 0; i < len; i++)
    if (b[i])
      return false;
  return true;
}

/* ---------------------------------------------------------- fixtures */

/* A sparse image of `size` bytes in dir; its name goes to path. */
static void
make_image (const char *dir, uint64_t size, char *path, size_t n)
{
  snprintf (path, n, "%s/test-direct-XXXXXX", dir);
  int fd = mkstemp (path);
  assert_true (fd >= 0);
  assert_int_equal (ftruncate (fd, (off_t) size), 0);
  close (fd);
}

static struct ap_path *
open_path (const char *file, const struct ap_direct_options *opt)
{
  struct ap_path *p = ap_path_open_direct (file, opt);
  if (p) {
    p->owner_done = record_done;
    p->owner = NULL;
  }
  return p;
}

struct fixture {
  char file[64];
  struct ap_path *p;
};

static int
setup_tmp (void **state)
{
  static struct fixture f;
  make_image ("/tmp", IMG_SIZE, f.file, sizeof f.file);
  f.p = open_path (f.file, NULL);
  if (!f.p)
    fail_msg ("open %s: %s", f.file, ap_get_error ());
  *state = &f;
  return 0;
}

/* The same on tmpfs, whose files cannot do non-blocking I/O: the path
 * then sends every request to io_uring's workers at once (IOSQE_ASYNC),
 * which must change nothing a caller can see. */
static int
setup_shm (void **state)
{
  static struct fixture f;
  if (access ("/dev/shm", W_OK) != 0)
    skip ();
  make_image ("/dev/shm", IMG_SIZE, f.file, sizeof f.file);
  f.p = open_path (f.file, NULL);
  if (!f.p && ap_get_errno () == EINVAL) {
    unlink (f.file);            /* tmpfs before Linux 6.6: no O_DIRECT */
    skip ();
  }
  if (!f.p)
    fail_msg ("open %s: %s", f.file, ap_get_error ());
  *state = &f;
  return 0;
}

static int
teardown (void **state)
{
  struct fixture *f = *state;
  ap_path_close (f->p);
  unlink (f->file);
  return 0;
}

/* ------------------------------------------------------------- tests */

static void
test_info (void **state)
{
  struct fixture *f = *state;
  struct ap_path_info info;
  char want[AP_NAME_MAX];

  ap_path_get_info (f->p, &info);
  assert_int_equal (info.kind, AP_PATH_DIRECT);
  assert_int_equal (info.size, IMG_SIZE);
  /* ext4 and xfs report their O_DIRECT alignment; 512 on most disks. */
  assert_true (info.block_size >= 512);
  assert_int_equal (info.block_size & (info.block_size - 1), 0);
  assert_int_equal (info.size % info.block_size, 0);
  assert_true (info.o_direct);
  assert_false (info.read_only);
  assert_int_equal (info.caps,
                    AP_CAN_FLUSH | AP_CAN_FUA | AP_CAN_TRIM | AP_CAN_ZERO);
  assert_string_equal (info.target, f->file);
  snprintf (want, sizeof want, "direct:%s", f->file);
  assert_string_equal (info.name, want);
  assert_string_equal (ap_path_name (f->p), want);
  assert_string_equal (info.identity, "");
  assert_string_equal (f->p->ops->kind_name, "direct");
}

static void
test_options (void **state)
{
  struct fixture *f = *state;
  struct ap_direct_options opt = {
    .name = "disk-a", .identity = "naa.6001405abcdef", .read_only = true,
    .queue_depth = 8,
  };
  struct ap_path *p = open_path (f->file, &opt);
  struct ap_path_info info;
  void *buf = xbuf (4096);

  assert_non_null (p);
  ap_path_get_info (p, &info);
  assert_string_equal (info.name, "disk-a");
  assert_string_equal (info.identity, "naa.6001405abcdef");
  assert_true (info.read_only);
  assert_true (info.o_direct);
  assert_int_equal (run (p, AP_OP_READ, 0, buf, 0, 4096), 0);
  /* A read-only path refuses what would change the disk, at once. */
  assert_int_equal (run (p, AP_OP_WRITE, 0, buf, 0, 4096), -EROFS);
  assert_int_equal (run (p, AP_OP_TRIM, 0, NULL, 0, 4096), -EROFS);
  assert_int_equal (run (p, AP_OP_WRITE_ZEROES, 0, NULL, 0, 4096), -EROFS);
  ap_path_close (p);
  free (buf);
}

static void
test_write_read (void **state)
{
  struct fixture *f = *state;
  const size_t len = 64 * 1024;
  void *w = xbuf (len), *r = xbuf (len);

  fill (w, len, 1);
  assert_int_equal (run (f->p, AP_OP_WRITE, 0, w, 0, len), 0);
  memset (r, 0xee, len);
  assert_int_equal (run (f->p, AP_OP_READ, 0, r, 0, len), 0);
  assert_memory_equal (w, r, len);

  fill (w, len, 2);
  assert_int_equal (run (f->p, AP_OP_WRITE, AP_IO_FUA, w, MiB, len), 0);
  memset (r, 0xee, len);
  assert_int_equal (run (f->p, AP_OP_READ, 0, r, MiB, len), 0);
  assert_memory_equal (w, r, len);

  /* The last block of the disk. */
  fill (w, 512, 3);
  assert_int_equal (run (f->p, AP_OP_WRITE, 0, w, IMG_SIZE - 512, 512), 0);
  assert_int_equal (run (f->p, AP_OP_READ, 0, r, IMG_SIZE - 512, 512), 0);
  assert_memory_equal (w, r, 512);

  assert_int_equal (run (f->p, AP_OP_FLUSH, 0, NULL, 0, 0), 0);
  free (w);
  free (r);
}

/* Write a pattern over [off, off+len), run op on it, check it reads back
 * as zeroes.  Returns the op's error (the range is only checked on 0). */
static int
zero_op (struct ap_path *p, enum ap_op op, uint32_t flags,
         uint64_t off, uint64_t len)
{
  void *w = xbuf (len), *r = xbuf (len);
  int err;

  fill (w, len, 7);
  assert_int_equal (run (p, AP_OP_WRITE, 0, w, off, len), 0);
  err = run (p, op, flags, NULL, off, len);
  memset (r, 0xee, len);
  assert_int_equal (run (p, AP_OP_READ, 0, r, off, len), 0);
  if (err == 0)
    assert_true (is_zero (r, len));
  else
    /* A refused request leaves the data as it was. */
    assert_memory_equal (w, r, len);
  free (w);
  free (r);
  return err;
}

static bool
on_tmpfs (const char *file)
{
  struct statfs sf;
  return statfs (file, &sf) == 0 && sf.f_type == TMPFS_MAGIC;
}

/* Trim and write-zeroes on whatever filesystem `file` is on. */
static void
check_trim_zero (struct ap_path *p, const char *file)
{
  int err;

  assert_int_equal (zero_op (p, AP_OP_TRIM, 0, 0, 64 * 1024), 0);
  /* Without NO_HOLE, zero range or (tmpfs) the punch-hole fallback. */
  assert_int_equal (zero_op (p, AP_OP_WRITE_ZEROES, 0, MiB, 64 * 1024), 0);
  /* With NO_HOLE: a filesystem without zero range has no way to keep the
   * range allocated and zero it, so the documented answer is
   * -EOPNOTSUPP (a request error, not a path fault). */
  err = zero_op (p, AP_OP_WRITE_ZEROES, AP_IO_NO_HOLE, 2 * MiB, 64 * 1024);
  if (on_tmpfs (file))
    assert_true (err == -EOPNOTSUPP || err == 0);
  else
    assert_int_equal (err, 0);
  assert_false (ap_error_is_path_fault (-EOPNOTSUPP));
  /* A range already zero stays zero. */
  assert_int_equal (zero_op (p, AP_OP_WRITE_ZEROES, 0, 3 * MiB, 4096), 0);
}

static void
test_trim_zero (void **state)
{
  struct fixture *f = *state;
  check_trim_zero (f->p, f->file);
}

/* The completion-run hook: every completion of a direct path comes inside
 * a run that ends with a call of the hook, on the same thread, after the
 * completions it holds; without a hook no completion is in a run. */
static void many_in_flight (struct ap_path *p, enum ap_op op, unsigned n,
                            void *bufs, struct treq *t);

static unsigned hook_in_run;     /* hook calls that saw a run going on */

static void
count_hook (void)
{
  bool in = ap_in_completion_run ();   /* on the reaper: no cmocka here */
  pthread_mutex_lock (&lock);
  hook_calls++;
  hook_in_run += in;
  pthread_mutex_unlock (&lock);
}

static void
test_completion_hook (void **state)
{
  struct fixture *f = *state;
  enum { N = 32 };
  static struct treq t[N];
  static char bufs[N * 4096] __attribute__ ((aligned (4096)));

  assert_false (ap_in_completion_run ());
  ap_set_completion_hook (count_hook);
  pthread_mutex_lock (&lock);
  in_run_seen = hook_calls = 0;
  pthread_mutex_unlock (&lock);
  many_in_flight (f->p, AP_OP_WRITE, N, bufs, t);
  /* The last run's hook may still be running: wait for it. */
  uint64_t until = ap_now_ns () + WAIT_NS;
  unsigned calls;
  do {
    pthread_mutex_lock (&lock);
    calls = hook_calls;
    pthread_mutex_unlock (&lock);
  } while (calls == 0 && ap_now_ns () < until && usleep (1000) == 0);
  pthread_mutex_lock (&lock);
  assert_int_equal (in_run_seen, N);
  assert_in_range (hook_calls, 1, N);
  assert_int_equal (hook_in_run, 0);
  pthread_mutex_unlock (&lock);

  ap_set_completion_hook (NULL);
  pthread_mutex_lock (&lock);
  in_run_seen = 0;
  pthread_mutex_unlock (&lock);
  many_in_flight (f->p, AP_OP_WRITE, N, bufs, t);
  pthread_mutex_lock (&lock);
  assert_int_equal (in_run_seen, 0);
  pthread_mutex_unlock (&lock);
}

static void
test_tmpfs (void **state)
{
  char file[64];
  struct ap_path *p;
  (void) state;

  if (access ("/dev/shm", W_OK) != 0)
    skip ();
  make_image ("/dev/shm", IMG_SIZE, file, sizeof file);
  p = open_path (file, NULL);
  if (!p && ap_get_errno () == EINVAL) {
    /* tmpfs before Linux 6.6 has no O_DIRECT. */
    unlink (file);
    skip ();
  }
  assert_non_null (p);
  assert_true (on_tmpfs (file));
  check_trim_zero (p, file);
  /* tmpfs cannot zero a range while keeping it allocated: make sure the
   * fallback really was needed and NO_HOLE really refuses. */
  assert_int_equal (zero_op (p, AP_OP_WRITE_ZEROES, AP_IO_NO_HOLE,
                             4 * MiB, 4096), -EOPNOTSUPP);
  ap_path_close (p);
  unlink (file);
}

/* n requests in flight at once; each must complete exactly once. */
static void
many_in_flight (struct ap_path *p, enum ap_op op, unsigned n, void *bufs,
                struct treq *t)
{
  unsigned before = completed_now ();
  for (unsigned i = 0; i < n; i++) {
    prep (&t[i], op, i % 2 ? AP_IO_FUA : 0, (char *) bufs + i * 4096,
          (uint64_t) i * 8192, 4096);
    assert_int_equal (ap_path_submit (p, &t[i].io), 0);
  }
  assert_true (wait_completed (before + n));
  usleep (20000);               /* anything extra would show up now */
  assert_int_equal (completed_now (), before + n);
  for (unsigned i = 0; i < n; i++) {
    assert_int_equal (count_of (&t[i]), 1);
    assert_int_equal (t[i].err, 0);
  }
}

static void
test_many (void **state)
{
  struct fixture *f = *state;
  enum { N = 64 };
  static struct treq t[N];
  char *w = xbuf (N * 4096), *r = xbuf (N * 4096);

  for (unsigned i = 0; i < N; i++)
    fill (w + i * 4096, 4096, 100 + i);
  many_in_flight (f->p, AP_OP_WRITE, N, w, t);
  memset (r, 0xee, N * 4096);
  many_in_flight (f->p, AP_OP_READ, N, r, t);
  assert_memory_equal (w, r, N * 4096);
  free (w);
  free (r);
}

/* A completion callback that starts the next request: the reaper batches
 * those.  Keep a chain of `left` requests going per slot. */
struct chain {
  struct treq t;
  struct ap_path *p;
  unsigned left;
  unsigned long long done;
  int err;
};

static pthread_mutex_t chain_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t chain_cond = PTHREAD_COND_INITIALIZER;
static unsigned chains_running;

static void
chain_done (void *owner, struct ap_path *p, struct ap_io *io, int err)
{
  struct chain *c = container_of (io, struct chain, t.io);
  (void) owner;

  c->done++;
  if (err && !c->err)
    c->err = err;
  if (--c->left > 0) {
    io->offset = (io->offset + 4096 * 37) % IMG_SIZE;
    if (ap_path_submit (p, io) == 0)
      return;
    c->err = -EAGAIN;
  }
  pthread_mutex_lock (&chain_lock);
  chains_running--;
  pthread_cond_broadcast (&chain_cond);
  pthread_mutex_unlock (&chain_lock);
}

static void
test_chained (void **state)
{
  struct fixture *f = *state;
  enum { SLOTS = 32, EACH = 200 };
  static struct chain c[SLOTS];
  char *bufs = xbuf (SLOTS * 4096);

  f->p->owner_done = chain_done;
  chains_running = SLOTS;
  for (unsigned i = 0; i < SLOTS; i++) {
    memset (&c[i], 0, sizeof c[i]);
    prep (&c[i].t, AP_OP_READ, 0, bufs + i * 4096, (uint64_t) i * 4096,
          4096);
    c[i].p = f->p;
    c[i].left = EACH;
  }
  for (unsigned i = 0; i < SLOTS; i++)
    assert_int_equal (ap_path_submit (f->p, &c[i].t.io), 0);
  pthread_mutex_lock (&chain_lock);
  while (chains_running > 0)
    pthread_cond_wait (&chain_cond, &chain_lock);
  pthread_mutex_unlock (&chain_lock);
  for (unsigned i = 0; i < SLOTS; i++) {
    assert_int_equal (c[i].err, 0);
    assert_int_equal (c[i].done, EACH);
  }
  f->p->owner_done = record_done;
  free (bufs);
}

static void
test_fence_idle (void **state)
{
  struct fixture *f = *state;
  void *buf = xbuf (4096);
  unsigned before = completed_now ();

  f->p->ops->fence (f->p);
  f->p->ops->fence (f->p);
  usleep (20000);
  /* The fence's own completion is not a request's. */
  assert_int_equal (completed_now (), before);
  assert_int_equal (run (f->p, AP_OP_READ, 0, buf, 0, 4096), 0);
  free (buf);
}

static void
test_fence_busy (void **state)
{
  struct fixture *f = *state;
  enum { N = 64 };
  static struct treq t[N];
  char *bufs = xbuf (N * 4096);
  unsigned before = completed_now ();

  for (unsigned i = 0; i < N; i++) {
    prep (&t[i], i % 3 ? AP_OP_READ : AP_OP_FLUSH, 0, bufs + i * 4096,
          (uint64_t) i * 4096, i % 3 ? 4096 : 0);
    assert_int_equal (ap_path_submit (f->p, &t[i].io), 0);
  }
  f->p->ops->fence (f->p);
  assert_true (wait_completed (before + N));
  usleep (20000);
  assert_int_equal (completed_now (), before + N);
  for (unsigned i = 0; i < N; i++) {
    assert_int_equal (count_of (&t[i]), 1);
    assert_true (t[i].err == 0 || t[i].err == -ECANCELED);
  }
  /* The path still works after a fence. */
  assert_int_equal (run (f->p, AP_OP_READ, 0, bufs, 0, 4096), 0);
  free (bufs);
}

/* The CQ is never overfilled: with the reaper held inside a callback, the
 * path refuses with -EAGAIN once its CQ is full, and a fence still finds
 * (or waits for) room. */
static void
test_cq_limit (void **state)
{
  struct fixture *f = *state;
  struct ap_direct_options opt = { .queue_depth = 4 };
  struct ap_path *p = open_path (f->file, &opt);
  enum { N = 64 };
  static struct treq t[N];
  char *bufs = xbuf (N * 4096);
  unsigned before = completed_now (), accepted = 0;
  int r = 0;

  assert_non_null (p);
  set_gate (true);
  for (unsigned i = 0; i < N; i++) {
    prep (&t[i], AP_OP_READ, 0, bufs + i * 4096, (uint64_t) i * 4096, 4096);
    r = ap_path_submit (p, &t[i].io);
    if (r < 0)
      break;
    accepted++;
    /* Let each complete into the CQ, so the CQ, not the SQ, fills. */
    usleep (2000);
  }
  assert_int_equal (r, -EAGAIN);
  /* CQ of 2 * 4 entries, two kept for control; the reaper may have taken
   * one CQE (the one it is stuck on) and freed its slot. */
  assert_true (accepted >= 6 && accepted <= 7);
  p->ops->fence (p);            /* takes a reserved slot */
  p->ops->fence (p);            /* no room: deferred to the reaper */
  set_gate (false);
  assert_true (wait_completed (before + accepted));
  usleep (20000);
  assert_int_equal (completed_now (), before + accepted);
  for (unsigned i = 0; i < accepted; i++) {
    assert_int_equal (count_of (&t[i]), 1);
    assert_true (t[i].err == 0 || t[i].err == -ECANCELED);
  }
  /* Room again. */
  assert_int_equal (run (p, AP_OP_READ, 0, bufs, 0, 4096), 0);
  ap_path_close (p);
  free (bufs);
}

static void
test_bad_requests (void **state)
{
  struct fixture *f = *state;
  void *buf = xbuf (4096);
  struct treq t;

  /* Refused at once, no completion (run() checks). */
  assert_int_equal (run (f->p, AP_OP_READ, 0, buf, 0,
                         (UINT64_C (1) << 30) + 4096), -EINVAL);
  assert_int_equal (run (f->p, AP_OP_WRITE, 0, buf, 0,
                         UINT64_C (1) << 32), -EINVAL);
  assert_int_equal (run (f->p, AP_OP_READ, 0, buf, 0, 0), -EINVAL);
  assert_int_equal (run (f->p, AP_OP_TRIM, 0, NULL, 0, 0), -EINVAL);
  assert_int_equal (run (f->p, AP_OP_READ, 0, buf, UINT64_MAX - 511, 512),
                    -EINVAL);
  prep (&t, (enum ap_op) 99, 0, buf, 0, 4096);
  assert_int_equal (ap_path_submit (f->p, &t.io), -EINVAL);
  /* The kernel's own refusal of a misaligned O_DIRECT read comes back
   * as a completion.  (Over allocated blocks: a read of a hole is
   * served without alignment checks.) */
  memset (buf, 1, 4096);
  assert_int_equal (run (f->p, AP_OP_WRITE, 0, buf, 0, 4096), 0);
  assert_int_equal (run (f->p, AP_OP_READ, 0, buf, 100, 512), -EINVAL);
  free (buf);
}

static void
test_eof (void **state)
{
  struct fixture *f = *state;
  char *buf = xbuf (8192);

  /* The last block reads. */
  assert_int_equal (run (f->p, AP_OP_READ, 0, buf, IMG_SIZE - 512, 512), 0);
  /* Half past the end: a short read, the rest continued, which reads 0
   * bytes: an I/O error rather than a loop or a silent short read. */
  assert_int_equal (run (f->p, AP_OP_READ, 0, buf, IMG_SIZE - 4096, 8192),
                    -EIO);
  /* Entirely past the end. */
  assert_int_equal (run (f->p, AP_OP_READ, 0, buf, IMG_SIZE, 512), -EIO);
  free (buf);
}

static void
expect_open_error (const char *file, int err)
{
  struct ap_path *p = ap_path_open_direct (file, NULL);
  if (p)
    ap_path_close (p);
  assert_null (p);
  assert_int_equal (ap_get_errno (), err);
  /* The message names the thing. */
  if (!strstr (ap_get_error (), file))
    fail_msg ("error message \"%s\" does not name %s", ap_get_error (),
              file);
}

static void
test_open_errors (void **state)
{
  char dir[64], file[64];
  (void) state;

  expect_open_error ("/tmp/test-direct-does-not-exist.img", ENOENT);
  assert_non_null (strstr (ap_get_error (), "check the path"));

  snprintf (dir, sizeof dir, "/tmp/test-direct-dir-XXXXXX");
  assert_non_null (mkdtemp (dir));
  expect_open_error (dir, EISDIR);
  rmdir (dir);

  make_image ("/tmp", 0, file, sizeof file);
  expect_open_error (file, EINVAL);
  assert_non_null (strstr (ap_get_error (), "size is 0"));
  unlink (file);

  make_image ("/tmp", 1000, file, sizeof file);
  expect_open_error (file, EINVAL);
  assert_non_null (strstr (ap_get_error (), "not a multiple"));
  unlink (file);

  /* Neither a file nor a block device. */
  expect_open_error ("/dev/null", ENOTBLK);

  assert_null (ap_path_open_direct (NULL, NULL));
  assert_int_equal (ap_get_errno (), EINVAL);
}

/* Open fds of this process. */
static unsigned
count_fds (void)
{
  DIR *d = opendir ("/proc/self/fd");
  struct dirent *e;
  unsigned n = 0;

  assert_non_null (d);
  while ((e = readdir (d)) != NULL)
    n += e->d_name[0] != '.';
  closedir (d);
  return n;
}

/* Reaper threads of this process.  (The kernel's io-wq workers,
 * "iou-wrk-N", come and go on their own and are not ours to count.) */
static unsigned
count_reapers (void)
{
  DIR *d = opendir ("/proc/self/task");
  struct dirent *e;
  unsigned n = 0;

  assert_non_null (d);
  while ((e = readdir (d)) != NULL) {
    char path[300], comm[32] = "";
    FILE *f;
    if (e->d_name[0] == '.')
      continue;
    snprintf (path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    f = fopen (path, "re");
    if (!f)
      continue;                 /* it just exited */
    if (fgets (comm, sizeof comm, f) && strncmp (comm, "ap-direct", 9) == 0)
      n++;
    fclose (f);
  }
  closedir (d);
  return n;
}

static void
test_open_close_many (void **state)
{
  struct fixture *f = *state;
  unsigned fds = count_fds ();
  void *buf = xbuf (4096);

  /* Threads, rings and fds do not leak (ASan sees the memory). */
  for (int i = 0; i < 50; i++) {
    struct ap_path *p = open_path (f->file, NULL);
    assert_non_null (p);
    if (i == 0)
      assert_int_equal (count_reapers (), 2);   /* the fixture's too */
    if (i % 3 == 1)
      p->ops->fence (p);
    if (i % 3 == 2)
      assert_int_equal (run (p, AP_OP_READ, 0, buf, 0, 4096), 0);
    ap_path_close (p);
  }
  ap_path_close (NULL);
  assert_int_equal (count_fds (), fds);
  /* A joined thread can linger in /proc for a moment after
   * pthread_join() returns: give it a little time. */
  for (int i = 0; i < 100 && count_reapers () > 1; i++)
    usleep (10000);
  assert_int_equal (count_reapers (), 1);    /* the fixture's */
  free (buf);
}

/* Several threads submit at once (the unit's callers do). */
struct hammer {
  struct ap_path *p;
  unsigned idx;
  int err;
};

static void *
hammer_thread (void *arg)
{
  struct hammer *h = arg;
  enum { PER = 16, ROUNDS = 20 };
  struct treq *t = calloc (PER, sizeof *t);
  char *bufs = NULL;

  if (posix_memalign ((void **) &bufs, 4096, PER * 4096) != 0)
    abort ();
  for (int round = 0; round < ROUNDS && !h->err; round++) {
    for (unsigned i = 0; i < PER; i++) {
      prep (&t[i], AP_OP_READ, 0, bufs + i * 4096,
            ((uint64_t) h->idx * PER + i) * 4096, 4096);
      int r = ap_path_submit (h->p, &t[i].io);
      if (r < 0) {
        h->err = r;
        break;
      }
    }
    for (unsigned i = 0; i < PER && !h->err; i++) {
      struct timespec ts = ap_ns_to_timespec (ap_now_ns () + WAIT_NS);
      pthread_mutex_lock (&lock);
      while (t[i].count == 0)
        if (pthread_cond_timedwait (&cond, &lock, &ts) == ETIMEDOUT)
          break;
      if (t[i].count != 1 || t[i].err != 0)
        h->err = t[i].count != 1 ? -ETIMEDOUT : t[i].err;
      pthread_mutex_unlock (&lock);
    }
  }
  free (t);
  free (bufs);
  return NULL;
}

static void
test_threads (void **state)
{
  struct fixture *f = *state;
  enum { T = 8 };
  pthread_t th[T];
  struct hammer h[T];

  for (unsigned i = 0; i < T; i++) {
    h[i] = (struct hammer) { .p = f->p, .idx = i };
    assert_int_equal (pthread_create (&th[i], NULL, hammer_thread, &h[i]),
                      0);
  }
  for (unsigned i = 0; i < T; i++) {
    pthread_join (th[i], NULL);
    assert_int_equal (h[i].err, 0);
  }
}

/* A loop device with 4096-byte logical blocks over an image, detached
 * automatically when its last user closes it.  Returns its fd (hold it
 * for the test) or -1 where loop devices cannot be set up here. */
static int
make_loop (int backing, char *dev, size_t n)
{
  int ctl = open ("/dev/loop-control", O_RDWR | O_CLOEXEC);
  int lfd = -1;

  if (ctl < 0)
    return -1;
  for (int tries = 0; tries < 10 && lfd < 0; tries++) {
    int num = ioctl (ctl, LOOP_CTL_GET_FREE);
    if (num < 0)
      break;
    snprintf (dev, n, "/dev/loop%d", num);
    lfd = open (dev, O_RDWR | O_CLOEXEC);
    if (lfd < 0)
      break;
    struct loop_config cfg;
    memset (&cfg, 0, sizeof cfg);
    cfg.fd = (uint32_t) backing;
    cfg.block_size = 4096;
    cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    if (ioctl (lfd, LOOP_CONFIGURE, &cfg) == 0)
      break;
    close (lfd);
    lfd = -1;
    if (errno != EBUSY)         /* another test took it: try the next */
      break;
  }
  close (ctl);
  return lfd;
}

static void
test_block_device (void **state)
{
  char file[64], dev[32];
  struct ap_path *p;
  struct ap_path_info info;
  int backing, lfd;
  char *w = xbuf (65536), *r = xbuf (65536);
  (void) state;

  make_image ("/tmp", 4 * MiB, file, sizeof file);
  backing = open (file, O_RDWR | O_CLOEXEC);
  assert_true (backing >= 0);
  lfd = make_loop (backing, dev, sizeof dev);
  close (backing);
  unlink (file);
  if (lfd < 0) {
    free (w);
    free (r);
    skip ();
  }

  p = open_path (dev, NULL);
  if (!p)
    fail_msg ("open %s: %s", dev, ap_get_error ());
  ap_path_get_info (p, &info);
  assert_int_equal (info.size, 4 * MiB);
  assert_int_equal (info.block_size, 4096);   /* from BLKSSZGET */
  assert_true (info.o_direct);
  assert_int_equal (info.caps,
                    AP_CAN_FLUSH | AP_CAN_FUA | AP_CAN_TRIM | AP_CAN_ZERO);
  assert_string_equal (info.target, dev);
  assert_string_equal (info.identity, "");   /* a loop device has none */

  fill (w, 65536, 9);
  assert_int_equal (run (p, AP_OP_WRITE, AP_IO_FUA, w, 4096, 65536), 0);
  assert_int_equal (run (p, AP_OP_READ, 0, r, 4096, 65536), 0);
  assert_memory_equal (w, r, 65536);
  assert_int_equal (run (p, AP_OP_FLUSH, 0, NULL, 0, 0), 0);
  /* A misaligned (512-byte) request on a 4096-byte device. */
  assert_int_equal (run (p, AP_OP_READ, 0, r, 512, 512), -EINVAL);
  assert_int_equal (zero_op (p, AP_OP_TRIM, 0, 0, 65536), 0);
  assert_int_equal (zero_op (p, AP_OP_WRITE_ZEROES, 0, MiB, 65536), 0);
  assert_int_equal (zero_op (p, AP_OP_WRITE_ZEROES, AP_IO_NO_HOLE,
                             2 * MiB, 65536), 0);
  ap_path_close (p);
  close (lfd);                  /* autoclear detaches it */
  free (w);
  free (r);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown (test_info, setup_tmp, teardown),
    cmocka_unit_test_setup_teardown (test_options, setup_tmp, teardown),
    cmocka_unit_test_setup_teardown (test_write_read, setup_tmp, teardown),
    cmocka_unit_test_setup_teardown (test_trim_zero, setup_tmp, teardown),
    cmocka_unit_test (test_tmpfs),
    cmocka_unit_test_setup_teardown (test_completion_hook, setup_tmp,
                                     teardown),
    cmocka_unit_test_setup_teardown (test_many, setup_tmp, teardown),
    cmocka_unit_test_setup_teardown (test_chained, setup_tmp, teardown),
    cmocka_unit_test_setup_teardown (test_fence_idle, setup_tmp, teardown),
    cmocka_unit_test_setup_teardown (test_fence_busy, setup_tmp, teardown),
    cmocka_unit_test_setup_teardown (test_cq_limit, setup_tmp, teardown),
    cmocka_unit_test_setup_teardown (test_bad_requests, setup_tmp, teardown),
    cmocka_unit_test_setup_teardown (test_eof, setup_tmp, teardown),
    cmocka_unit_test (test_open_errors),
    cmocka_unit_test_setup_teardown (test_open_close_many, setup_tmp,
                                     teardown),
    cmocka_unit_test_setup_teardown (test_threads, setup_tmp, teardown),
    cmocka_unit_test_setup_teardown (test_write_read, setup_shm, teardown),
    cmocka_unit_test_setup_teardown (test_many, setup_shm, teardown),
    cmocka_unit_test_setup_teardown (test_fence_busy, setup_shm, teardown),
    cmocka_unit_test_setup_teardown (test_threads, setup_shm, teardown),
    cmocka_unit_test (test_block_device),
  };
  pthread_condattr_t ca;

  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&cond, &ca);
  pthread_condattr_destroy (&ca);
  ap_log_quiet = true;
  return cmocka_run_group_tests (tests, NULL, NULL);
}
