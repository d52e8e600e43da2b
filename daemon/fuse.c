/* fuse.c — device files: the node's units as files in one directory, for
 * losetup (docs/devices.md).
 *
 *   /run/altpath/dev  (one FUSE mount, flat, read-only directory)
 *     $4$DKB100  ┐ one inode, two names (st_nlink 2), size = the unit's,
 *     4-DKB100   ┘ mode 0600 root; opened with FOPEN_DIRECT_IO: no page
 *                  cache in this daemon (invariant 4)
 *
 *   kernel ──/dev/fuse──► worker threads (WORKERS, epoll + quit pipe)
 *                           │ read/write: aligned bounce buffer, then
 *                           ▼ ap_unit_submit() and return at once
 *                         unit ──done()──► fuse_reply_*() on the unit's
 *                                          completion thread
 *
 * Buffers.  A unit wants buffers and offsets aligned to its block size;
 * the kernel's request data are not.  Every buffer here (struct dio and
 * the receive buffers of the workers are the same kind) is
 *
 *   base ─┬─ BUF_HEAD bytes: struct dio, then the FUSE headers of a
 *         │  WRITE (fuse_in_header + fuse_write_in) just before ...
 *         └─ base + BUF_HEAD: the data, page aligned, BUF_DATA bytes
 *
 * so a WRITE the kernel hands us lands aligned, and an aligned WRITE is
 * submitted from the receive buffer itself: the worker gives that buffer
 * to the request and takes a fresh one (no copy).  READs are read into
 * an aligned buffer and replied from it (no copy but the kernel's).
 * Unaligned requests go through the covering aligned range: READs return
 * the slice, WRITEs read the partial edge blocks first (read-modify-
 * write).
 *
 * Range locks.  Two read-modify-writes of one block must not lose each
 * other's bytes, and an RMW must not put back an edge block that a
 * plain write changed in the meantime.  Each write registers its aligned
 * block range with its file (struct rlock) until it completes; an RMW
 * waits for every overlapping write, a plain write waits only for
 * overlapping RMWs (two plain writes of one block are the caller's own
 * race, as on a disk).
 *
 * Threads and locks, in the order they may be taken:
 *   devfs.lock     the node list, lookup counts, open counts
 *   dnode.rl_mu    a file's range locks (never with devfs.lock held)
 *   devfs.pool_mu  the free buffers (leaf)
 *   devfs.io_mu    in-flight count, for devfs_stop (leaf)
 *
 * Lifetime of a file.  devfs_set_units() gives the set of units; a unit
 * that leaves the set leaves the directory at once (its names are
 * invalidated in the kernel), and its export reference is put when no
 * open handle is left (a loop device keeps one).  Inode numbers are
 * never reused, so a unit that comes back is a new file.
 *
 * Shutdown (devfs_stop, once cluster.c no longer calls devfs_set_units):
 * stop the workers through the
 * quit pipe (STYLE.md: no thread cancellation, unlike libfuse's own
 * multi-threaded loop), unmount (lazily if a file is still open: its
 * I/O then fails, which the log says), wait for the requests still in a
 * unit, put the units.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <linux/fuse.h>         /* fuse_open_out, FOPEN_PARALLEL_DIRECT_WRITES,
                                   the sizes of a WRITE's headers */

#include "daemon.h"
#include "log.h"

#define MAX_IO (1u << 20)       /* max_write; reads are cut to it too */
#define BUF_HEAD 4096u          /* struct dio + a WRITE's headers */
#define BUF_DATA (MAX_IO + 8192u) /* an unaligned MAX_IO with its edge
                                     blocks (up to 4 KiB each); also
                                     room for any request the kernel
                                     sends (a WRITE: headers + MAX_IO) */
#define BUF_SIZE (BUF_HEAD + BUF_DATA)
#define WRITE_HDR (sizeof (struct fuse_in_header) \
                   + sizeof (struct fuse_write_in))
#define WORKERS 8               /* they only queue requests; waits are
                                   RMW reads and range locks */
#define POOL_MAX 32             /* free buffers kept */
#define STOP_WAIT_MS 10000      /* devfs_stop: requests still in a unit */
#define ZERO_CHUNK (1ull << 30) /* write-zeroes per request (NBD: 32 bit) */
#define FUSE_SUPER_MAGIC_ 0x65735546

/* A write's claim on a block range of its file, while it is in flight. */
struct rlock {
  uint64_t start, end;          /* bytes, block aligned */
  bool rmw;                     /* read-modify-write: excludes all */
  struct rlock *next, *prev;
};

/* One unit's file. */
struct dnode {
  struct dnode *next;           /* devfs.nodes */
  fuse_ino_t ino;               /* never reused */
  struct export *ex;            /* our reference; NULL once the file is
                                   gone and no handle is open */
  char name[AP_NAME_MAX];       /* $4$DKB100 */
  char alias[AP_NAME_MAX];      /* 4-DKB100 */
  uint64_t size;
  uint32_t bs;                  /* the unit's block size */
  bool read_only;
  bool listed;                  /* in the directory */
  uint64_t nlookup;             /* the kernel's references */
  unsigned nopen;               /* open handles */
  struct timespec born;         /* its times */

  pthread_mutex_t rl_mu;
  pthread_cond_t rl_cv;
  struct rlock *rl_head;        /* writes in flight */
  unsigned rl_waiters;
};

/* One request to a unit, at the start of its buffer (or alone, calloc'd,
 * for a flush).  io must stay first: done() gets &io. */
struct dio {
  struct ap_io io;
  struct devfs *fs;
  struct dnode *node;
  fuse_req_t req;
  char *base;                   /* this allocation (NULL: a flush) */
  char *data;                   /* aligned to the block size: base +
                                   BUF_HEAD in a pool buffer */
  bool pooled;                  /* base is a pool buffer */
  size_t skip, len;             /* READ: the slice asked for;
                                   WRITE: len = bytes to report */
  struct rlock rl;
  bool locked;                  /* rl is registered */
};

struct worker {
  struct devfs *fs;
  pthread_t thread;
  char *rb;                     /* receive buffer (a pool buffer); NULL
                                   after a WRITE took it */
};

struct devfs {
  char dir[PATH_MAX];
  struct fuse_session *se;
  int quit[2];                  /* the workers' stop */
  struct worker workers[WORKERS];
  unsigned nworkers;
  struct timespec born;


  pthread_mutex_t lock;
  struct dnode *nodes;
  fuse_ino_t next_ino;
  bool mounted;                 /* set after INIT: notify makes sense */

  pthread_mutex_t pool_mu;
  char *pool[POOL_MAX];
  unsigned npool;

  pthread_mutex_t io_mu;
  pthread_cond_t io_cv;
  atomic_ulong inflight;        /* dios submitted, not yet done */
  atomic_bool stopping;
};

_Static_assert (sizeof (struct dio) + WRITE_HDR <= BUF_HEAD,
                "struct dio must fit before a WRITE's headers");

static __thread struct worker *this_worker;

/* ---------------------------------------------------------- buffers */

static char *
buf_get (struct devfs *fs)
{
  char *b = NULL;
  pthread_mutex_lock (&fs->pool_mu);
  if (fs->npool)
    b = fs->pool[--fs->npool];
  pthread_mutex_unlock (&fs->pool_mu);
  if (!b) {
    void *p;
    if (posix_memalign (&p, 4096, BUF_SIZE) != 0)
      return NULL;
    b = p;
  }
  return b;
}

static void
buf_put (struct devfs *fs, char *b)
{
  if (!b)
    return;
  pthread_mutex_lock (&fs->pool_mu);
  if (fs->npool < POOL_MAX) {
    fs->pool[fs->npool++] = b;
    b = NULL;
  }
  pthread_mutex_unlock (&fs->pool_mu);
  free (b);
}

/* A request with a data area of at least len bytes aligned to the
 * block size (none for len 0): a pool buffer (its data are page
 * aligned), or for blocks above 4 KiB a private one. */
static struct dio *
dio_new (struct devfs *fs, struct dnode *n, fuse_req_t req, uint64_t len,
         char *stolen)
{
  struct dio *d;
  char *base = stolen;
  bool pooled = true;

  if (!base && len == 0) {
    d = calloc (1, sizeof *d);
    if (!d)
      return NULL;
  }
  else {
    size_t head = BUF_HEAD;
    if (!base && len <= BUF_DATA && 4096 % n->bs == 0)
      base = buf_get (fs);
    else if (!base) {
      void *p;
      pooled = false;
      if (n->bs > head)
        head = n->bs;           /* a power of two: the data start aligned */
      if (posix_memalign (&p, head, head + len) == 0)
        base = p;
    }
    if (!base)
      return NULL;
    d = (struct dio *) base;
    memset (d, 0, sizeof *d);
    d->base = base;
    d->data = base + head;
    d->pooled = pooled;
  }
  d->fs = fs;
  d->node = n;
  d->req = req;
  return d;
}

static inline char *
dio_data (struct dio *d)
{
  return d->data;
}

static void
dio_free (struct dio *d)
{
  if (!d->base)
    free (d);
  else if (d->pooled)
    buf_put (d->fs, d->base);
  else
    free (d->base);
}

/* ------------------------------------------------------- range locks */

static bool
conflicts (const struct dnode *n, const struct rlock *r)
{
  for (const struct rlock *e = n->rl_head; e; e = e->next)
    if (e->start < r->end && r->start < e->end && (e->rmw || r->rmw))
      return true;
  return false;
}

static void
range_lock (struct dnode *n, struct rlock *r)
{
  pthread_mutex_lock (&n->rl_mu);
  while (conflicts (n, r)) {
    n->rl_waiters++;
    pthread_cond_wait (&n->rl_cv, &n->rl_mu);
    n->rl_waiters--;
  }
  r->prev = NULL;
  r->next = n->rl_head;
  if (n->rl_head)
    n->rl_head->prev = r;
  n->rl_head = r;
  pthread_mutex_unlock (&n->rl_mu);
}

static void
range_unlock (struct dnode *n, struct rlock *r)
{
  pthread_mutex_lock (&n->rl_mu);
  if (r->prev)
    r->prev->next = r->next;
  else
    n->rl_head = r->next;
  if (r->next)
    r->next->prev = r->prev;
  if (n->rl_waiters)
    pthread_cond_broadcast (&n->rl_cv);
  pthread_mutex_unlock (&n->rl_mu);
}

/* --------------------------------------------------------- the nodes */

static void
node_free (struct dnode *n)
{
  pthread_mutex_destroy (&n->rl_mu);
  pthread_cond_destroy (&n->rl_cv);
  free (n);
}

static struct dnode *
find_ino (struct devfs *fs, fuse_ino_t ino)
{
  for (struct dnode *n = fs->nodes; n; n = n->next)
    if (n->ino == ino)
      return n;
  return NULL;
}

/* With fs->lock held: drop what nobody uses any more.  The export is
 * returned for the caller to put after unlocking (a last put closes the
 * unit, which may take a while). */
static struct export *
node_release_locked (struct devfs *fs, struct dnode *n)
{
  struct export *ex = NULL;
  if (n->listed || n->nopen)
    return NULL;
  ex = n->ex;
  n->ex = NULL;
  if (n->nlookup == 0) {
    for (struct dnode **pp = &fs->nodes; *pp; pp = &(*pp)->next)
      if (*pp == n) {
        *pp = n->next;
        break;
      }
    node_free (n);
  }
  return ex;
}

static void
fill_attr (const struct devfs *fs, const struct dnode *n, struct stat *st)
{
  memset (st, 0, sizeof *st);
  if (!n) {
    st->st_ino = FUSE_ROOT_ID;
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    st->st_atim = st->st_mtim = st->st_ctim = fs->born;
    return;
  }
  st->st_ino = n->ino;
  st->st_mode = S_IFREG | (n->read_only ? 0400 : 0600);
  st->st_nlink = !n->listed ? 0 : strcmp (n->name, n->alias) ? 2 : 1;
  st->st_uid = 0;
  st->st_gid = 0;
  st->st_size = (off_t) n->size;
  st->st_blksize = n->bs > 4096 ? n->bs : 4096;
  st->st_blocks = (blkcnt_t) (n->size / 512);
  st->st_atim = st->st_mtim = st->st_ctim = n->born;
}

/* -------------------------------------------------- directory ops */

static void
op_init (void *userdata, struct fuse_conn_info *conn)
{
  struct devfs *fs = userdata;
  conn->max_write = MAX_IO;     /* also bounds every request we receive:
                                   the receive buffers hold MAX_IO plus
                                   the headers */
  conn->max_background = 64;    /* async direct I/O in flight */
  conn->congestion_threshold = 48;
  conn->want &= ~(unsigned) (FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_READ
                             | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  if (conn->capable & FUSE_CAP_ASYNC_DIO)
    conn->want |= FUSE_CAP_ASYNC_DIO;
  pthread_mutex_lock (&fs->lock);
  fs->mounted = true;
  pthread_mutex_unlock (&fs->lock);
}

static void
op_lookup (fuse_req_t req, fuse_ino_t parent, const char *name)
{
  struct devfs *fs = fuse_req_userdata (req);
  struct fuse_entry_param e;
  struct dnode *n = NULL;

  if (parent != FUSE_ROOT_ID) {
    fuse_reply_err (req, ENOENT);
    return;
  }
  pthread_mutex_lock (&fs->lock);
  for (n = fs->nodes; n; n = n->next)
    if (n->listed && (strcmp (n->name, name) == 0
                      || strcmp (n->alias, name) == 0))
      break;
  if (n) {
    memset (&e, 0, sizeof e);
    e.ino = n->ino;
    e.attr_timeout = 1.0;
    e.entry_timeout = 1.0;
    fill_attr (fs, n, &e.attr);
    n->nlookup++;
  }
  pthread_mutex_unlock (&fs->lock);
  if (!n) {
    fuse_reply_err (req, ENOENT);       /* not cached: may appear soon */
    return;
  }
  if (fuse_reply_entry (req, &e) != 0) {
    /* Interrupted: the kernel holds no reference. */
    pthread_mutex_lock (&fs->lock);
    n->nlookup--;
    struct export *ex = node_release_locked (fs, n);
    pthread_mutex_unlock (&fs->lock);
    export_put (ex);
  }
}

static void
forget_one (struct devfs *fs, fuse_ino_t ino, uint64_t nlookup)
{
  struct export *ex = NULL;
  pthread_mutex_lock (&fs->lock);
  struct dnode *n = find_ino (fs, ino);
  if (n) {
    n->nlookup = nlookup < n->nlookup ? n->nlookup - nlookup : 0;
    ex = node_release_locked (fs, n);
  }
  pthread_mutex_unlock (&fs->lock);
  export_put (ex);
}

static void
op_forget (fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
  forget_one (fuse_req_userdata (req), ino, nlookup);
  fuse_reply_none (req);
}

static void
op_forget_multi (fuse_req_t req, size_t count,
                 struct fuse_forget_data *forgets)
{
  for (size_t i = 0; i < count; i++)
    forget_one (fuse_req_userdata (req), forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none (req);
}

static void
op_getattr (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct devfs *fs = fuse_req_userdata (req);
  struct stat st;
  bool found = true;

  pthread_mutex_lock (&fs->lock);
  if (ino == FUSE_ROOT_ID)
    fill_attr (fs, NULL, &st);
  else {
    struct dnode *n = find_ino (fs, ino);
    if (n)
      fill_attr (fs, n, &st);
    else
      found = false;
  }
  pthread_mutex_unlock (&fs->lock);
  if (found)
    fuse_reply_attr (req, &st, 1.0);
  else
    fuse_reply_err (req, ENOENT);
}

/* A device has a fixed size, owner and mode.  Truncation is ignored as
 * it is for a block device (dd and cp truncate their output file first);
 * times are ignored; mode and owner changes are refused. */
static void
op_setattr (fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
            struct fuse_file_info *fi)
{
  if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
    fuse_reply_err (req, EPERM);
    return;
  }
  op_getattr (req, ino, fi);
}

static void
op_readdir (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
            struct fuse_file_info *fi)
{
  struct devfs *fs = fuse_req_userdata (req);
  struct ent { char name[AP_NAME_MAX]; fuse_ino_t ino; } *ents = NULL;
  size_t nents = 0, cap = 2;
  char *buf = NULL;
  size_t used = 0;

  if (ino != FUSE_ROOT_ID) {
    fuse_reply_err (req, ENOTDIR);
    return;
  }
  /* A snapshot: ".", "..", then name and alias of each file; entry k has
   * offset k + 1. */
  pthread_mutex_lock (&fs->lock);
  for (struct dnode *n = fs->nodes; n; n = n->next)
    cap += 2;
  ents = calloc (cap, sizeof *ents);
  if (ents) {
    snprintf (ents[nents].name, AP_NAME_MAX, ".");
    ents[nents++].ino = FUSE_ROOT_ID;
    snprintf (ents[nents].name, AP_NAME_MAX, "..");
    ents[nents++].ino = FUSE_ROOT_ID;
    for (struct dnode *n = fs->nodes; n; n = n->next) {
      if (!n->listed)
        continue;
      snprintf (ents[nents].name, AP_NAME_MAX, "%s", n->name);
      ents[nents++].ino = n->ino;
      if (strcmp (n->name, n->alias) != 0) {
        snprintf (ents[nents].name, AP_NAME_MAX, "%s", n->alias);
        ents[nents++].ino = n->ino;
      }
    }
  }
  pthread_mutex_unlock (&fs->lock);
  if (!ents || !(buf = malloc (size ? size : 1))) {
    free (ents);
    fuse_reply_err (req, ENOMEM);
    return;
  }
  for (size_t k = off < 0 ? 0 : (size_t) off; k < nents; k++) {
    struct stat st = { .st_ino = ents[k].ino,
                       .st_mode = ents[k].ino == FUSE_ROOT_ID ? S_IFDIR
                       : S_IFREG };
    size_t need = fuse_add_direntry (req, NULL, 0, ents[k].name, NULL, 0);
    if (used + need > size)
      break;
    fuse_add_direntry (req, buf + used, size - used, ents[k].name, &st,
                       (off_t) k + 1);
    used += need;
  }
  fuse_reply_buf (req, buf, used);
  free (buf);
  free (ents);
}

static void
op_statfs (fuse_req_t req, fuse_ino_t ino)
{
  struct devfs *fs = fuse_req_userdata (req);
  struct statvfs sv;
  uint64_t bytes = 0;
  unsigned files = 0;
  uint32_t bs = 4096;

  memset (&sv, 0, sizeof sv);
  pthread_mutex_lock (&fs->lock);
  for (struct dnode *n = fs->nodes; n; n = n->next)
    if (n->listed) {
      bytes += n->size;
      files++;
      if (n->bs > bs)
        bs = n->bs;
    }
  pthread_mutex_unlock (&fs->lock);
  /* f_bsize is what a loop device takes as its discard granularity. */
  sv.f_bsize = bs;
  sv.f_frsize = bs;
  sv.f_blocks = bytes / bs;
  sv.f_files = files;
  sv.f_namemax = 255;
  fuse_reply_statfs (req, &sv);
}

/* Nothing may be made, removed or renamed here. */
static void
op_mknod (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
          dev_t rdev)
{
  fuse_reply_err (req, EPERM);
}

static void
op_mkdir (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
  fuse_reply_err (req, EPERM);
}

static void
op_unlink (fuse_req_t req, fuse_ino_t parent, const char *name)
{
  fuse_reply_err (req, EPERM);
}

static void
op_rename (fuse_req_t req, fuse_ino_t parent, const char *name,
           fuse_ino_t newparent, const char *newname, unsigned int flags)
{
  fuse_reply_err (req, EPERM);
}

static void
op_link (fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
         const char *newname)
{
  fuse_reply_err (req, EPERM);
}

static void
op_symlink (fuse_req_t req, const char *link, fuse_ino_t parent,
            const char *name)
{
  fuse_reply_err (req, EPERM);
}

static void
op_create (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
           struct fuse_file_info *fi)
{
  fuse_reply_err (req, EPERM);
}

/* ------------------------------------------------------- open, close */

static void
op_open (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct devfs *fs = fuse_req_userdata (req);
  int err = 0;

  pthread_mutex_lock (&fs->lock);
  struct dnode *n = find_ino (fs, ino);
  if (!n || !n->listed || !n->ex)
    err = ENOENT;
  else if (n->read_only && (fi->flags & O_ACCMODE) != O_RDONLY)
    err = EROFS;
  else
    n->nopen++;
  pthread_mutex_unlock (&fs->lock);
  if (err) {
    fuse_reply_err (req, err);
    return;
  }
  /* libfuse 3.14 has no field for FOPEN_PARALLEL_DIRECT_WRITES (without
   * it the kernel takes the inode lock around every direct write, one at
   * a time), so the reply is built here; fuse_reply_open would send the
   * same struct. */
  struct fuse_open_out out = {
    .fh = (uint64_t) (uintptr_t) n,
    .open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES
    | FOPEN_NOFLUSH,
  };
  if (fuse_reply_buf (req, (const char *) &out, sizeof out) != 0) {
    /* Interrupted open: no release will come. */
    pthread_mutex_lock (&fs->lock);
    n->nopen--;
    struct export *ex = node_release_locked (fs, n);
    pthread_mutex_unlock (&fs->lock);
    export_put (ex);
  }
}

static void
op_release (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct devfs *fs = fuse_req_userdata (req);
  struct dnode *n = (struct dnode *) (uintptr_t) fi->fh;
  pthread_mutex_lock (&fs->lock);
  n->nopen--;
  struct export *ex = node_release_locked (fs, n);
  pthread_mutex_unlock (&fs->lock);
  export_put (ex);
  fuse_reply_err (req, 0);
}

/* close(): nothing is cached here, so nothing to write back (and
 * FOPEN_NOFLUSH asks the kernel not to send it at all). */
static void
op_flush (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  fuse_reply_err (req, 0);
}

/* ------------------------------------------------------------- I/O */

static void
inflight_inc (struct devfs *fs)
{
  atomic_fetch_add_explicit (&fs->inflight, 1, memory_order_relaxed);
}

static void
inflight_dec (struct devfs *fs)
{
  if (atomic_fetch_sub_explicit (&fs->inflight, 1, memory_order_acq_rel)
      == 1 && atomic_load (&fs->stopping)) {
    pthread_mutex_lock (&fs->io_mu);
    pthread_cond_broadcast (&fs->io_cv);
    pthread_mutex_unlock (&fs->io_mu);
  }
}

/* The errno a refused submission leaves; EIO only if the unit said
 * nothing more precise. */
static int
submit_errno (void)
{
  int e = ap_get_errno ();
  return e > 0 ? e : EIO;
}

static void
io_done (struct ap_io *io, int err)
{
  struct dio *d = (struct dio *) io;
  struct devfs *fs = d->fs;

  if (d->locked)
    range_unlock (d->node, &d->rl);
  if (err < 0)
    fuse_reply_err (d->req, -err);
  else if (io->op == AP_OP_READ)
    fuse_reply_buf (d->req, dio_data (d) + d->skip, d->len);
  else if (io->op == AP_OP_WRITE)
    fuse_reply_write (d->req, d->len);
  else
    fuse_reply_err (d->req, 0);
  dio_free (d);
  inflight_dec (fs);
}

/* Submit; on refusal answer the request and free. */
static void
io_submit (struct dio *d)
{
  struct devfs *fs = d->fs;
  inflight_inc (fs);
  if (ap_unit_submit (d->node->ex->unit, &d->io) == 0)
    return;
  int e = submit_errno ();
  if (d->locked)
    range_unlock (d->node, &d->rl);
  fuse_reply_err (d->req, e);
  dio_free (d);
  inflight_dec (fs);
}

static inline uint64_t
round_down (uint64_t x, uint32_t bs)
{
  return x - x % bs;
}

static inline uint64_t
round_up (uint64_t x, uint32_t bs)
{
  return round_down (x + bs - 1, bs);
}

static void
op_read (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
         struct fuse_file_info *fi)
{
  struct devfs *fs = fuse_req_userdata (req);
  struct dnode *n = (struct dnode *) (uintptr_t) fi->fh;
  uint64_t o = (uint64_t) off;

  ap_debug (AP_DEBUG_DATA, "devfs: %s: read %zu at %lld", n->name, size,
            (long long) off);
  if (off < 0) {
    fuse_reply_err (req, EINVAL);
    return;
  }
  if (o >= n->size || size == 0) {
    fuse_reply_buf (req, NULL, 0);      /* end of the device */
    return;
  }
  if (size > MAX_IO)
    size = MAX_IO;
  if (size > n->size - o)
    size = (size_t) (n->size - o);
  uint64_t a0 = round_down (o, n->bs), a1 = round_up (o + size, n->bs);
  struct dio *d = dio_new (fs, n, req, a1 - a0, NULL);
  if (!d) {
    fuse_reply_err (req, ENOMEM);
    return;
  }
  d->skip = (size_t) (o - a0);
  d->len = size;
  d->io.op = AP_OP_READ;
  d->io.buf = dio_data (d);
  d->io.offset = a0;
  d->io.length = a1 - a0;
  d->io.done = io_done;
  io_submit (d);
}

/* Read the block at off into buf (aligned), for a read-modify-write. */
static int
read_block (struct dnode *n, char *buf, uint64_t off)
{
  if (ap_unit_pread (n->ex->unit, buf, n->bs, off) < 0)
    return -submit_errno ();
  return 0;
}

/* Make [a0, a1) in data (aligned, a1 - a0 bytes) hold the disk's bytes
 * in the partial edge blocks around [o, o + len). */
static int
read_edges (struct dnode *n, char *data, uint64_t a0, uint64_t a1,
            uint64_t o, uint64_t len)
{
  int r = 0;
  bool head = o != a0, tail = o + len != a1;
  if (head)
    r = read_block (n, data, a0);
  if (r == 0 && tail && !(head && a1 - a0 == n->bs))
    r = read_block (n, data + (a1 - a0 - n->bs), a1 - n->bs);
  return r;
}

static void
op_write (fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
          off_t off, struct fuse_file_info *fi)
{
  struct devfs *fs = fuse_req_userdata (req);
  struct dnode *n = (struct dnode *) (uintptr_t) fi->fh;
  struct worker *w = this_worker;
  uint64_t o = (uint64_t) off;

  ap_debug (AP_DEBUG_DATA, "devfs: %s: write %zu at %lld%s", n->name, size,
            (long long) off, buf == (w && w->rb ? w->rb + BUF_HEAD : NULL)
            ? "" : " (copied)");
  if (off < 0) {
    fuse_reply_err (req, EINVAL);
    return;
  }
  if (size == 0) {
    fuse_reply_write (req, 0);
    return;
  }
  if (o >= n->size) {
    fuse_reply_err (req, ENOSPC);       /* as a block device says */
    return;
  }
  if (size > n->size - o)
    size = (size_t) (n->size - o);      /* a short write at the end */
  uint64_t a0 = round_down (o, n->bs), a1 = round_up (o + size, n->bs);
  bool aligned = a0 == o && a1 == o + size;

  /* An aligned write whose data lie aligned in our receive buffer goes
   * out from there: the buffer becomes the request's. */
  char *stolen = NULL;
  if (aligned && w && w->rb && buf == w->rb + BUF_HEAD
      && (uintptr_t) buf % n->bs == 0 && size <= BUF_DATA) {
    stolen = w->rb;
    w->rb = NULL;
  }
  struct dio *d = dio_new (fs, n, req, a1 - a0, stolen);
  if (!d) {
    fuse_reply_err (req, ENOMEM);
    return;
  }
  d->len = size;
  d->rl.start = a0;
  d->rl.end = a1;
  d->rl.rmw = !aligned;
  range_lock (n, &d->rl);
  d->locked = true;
  if (!aligned) {
    int r = read_edges (n, dio_data (d), a0, a1, o, size);
    if (r < 0) {
      range_unlock (n, &d->rl);
      fuse_reply_err (req, -r);
      dio_free (d);
      return;
    }
  }
  if (!stolen)
    memcpy (dio_data (d) + (o - a0), buf, size);
  d->io.op = AP_OP_WRITE;
  d->io.buf = dio_data (d);
  d->io.offset = a0;
  d->io.length = a1 - a0;
  d->io.done = io_done;
  io_submit (d);
}

static void
op_fsync (fuse_req_t req, fuse_ino_t ino, int datasync,
          struct fuse_file_info *fi)
{
  struct devfs *fs = fuse_req_userdata (req);
  struct dnode *n = (struct dnode *) (uintptr_t) fi->fh;
  struct dio *d = dio_new (fs, n, req, 0, NULL);
  if (!d) {
    fuse_reply_err (req, ENOMEM);
    return;
  }
  d->io.op = AP_OP_FLUSH;
  d->io.done = io_done;
  io_submit (d);
}

/* Zero [o, o + len), all within one block, by read-modify-write. */
static int
zero_partial (struct devfs *fs, struct dnode *n, uint64_t o, uint64_t len)
{
  uint64_t a0 = round_down (o, n->bs);
  struct dio *d = dio_new (fs, n, NULL, n->bs, NULL);
  int r;
  if (!d)
    return -ENOMEM;
  d->rl.start = a0;
  d->rl.end = a0 + n->bs;
  d->rl.rmw = true;
  range_lock (n, &d->rl);
  r = read_block (n, dio_data (d), a0);
  if (r == 0) {
    memset (dio_data (d) + (o - a0), 0, len);
    if (ap_unit_pwrite (n->ex->unit, dio_data (d), n->bs, a0, 0) < 0)
      r = -submit_errno ();
  }
  range_unlock (n, &d->rl);
  dio_free (d);
  return r;
}

/* Aligned [a0, a1): write-zeroes in chunks, each under a range lock so
 * that RMWs of neighbouring bytes do not cross it. */
static int
zero_aligned (struct dnode *n, uint64_t a0, uint64_t a1, uint32_t flags)
{
  while (a0 < a1) {
    uint64_t len = a1 - a0 < ZERO_CHUNK ? a1 - a0 : ZERO_CHUNK;
    struct rlock rl = { .start = a0, .end = a0 + len };
    range_lock (n, &rl);
    int r = ap_unit_write_zeroes (n->ex->unit, len, a0, flags);
    int e = r < 0 ? submit_errno () : 0;
    range_unlock (n, &rl);
    if (r < 0)
      return -e;
    a0 += len;
  }
  return 0;
}

/* As blkdev_fallocate: PUNCH_HOLE (with KEEP_SIZE) and ZERO_RANGE, both
 * of which must read back as zeroes afterwards (a loop device turns
 * BLKZEROOUT into either), so both are write-zeroes: PUNCH_HOLE may
 * deallocate, ZERO_RANGE keeps the blocks (AP_IO_NO_HOLE).  A unit that
 * cannot write zeroes answers EOPNOTSUPP, and the kernel then writes
 * zeroes itself.  Plain allocation: the device is all allocated. */
static void
op_fallocate (fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
              off_t length, struct fuse_file_info *fi)
{
  struct devfs *fs = fuse_req_userdata (req);
  struct dnode *n = (struct dnode *) (uintptr_t) fi->fh;
  int kind = mode & ~FALLOC_FL_KEEP_SIZE;
  int r = 0;

  if (off < 0 || length <= 0) {
    fuse_reply_err (req, EINVAL);
    return;
  }
  uint64_t o = (uint64_t) off, end = o + (uint64_t) length;
  if (end < o) {
    fuse_reply_err (req, EINVAL);
    return;
  }
  if (kind == 0) {
    fuse_reply_err (req, end <= n->size ? 0 : ENOSPC);
    return;
  }
  if (mode != (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
      && kind != FALLOC_FL_ZERO_RANGE) {
    fuse_reply_err (req, EOPNOTSUPP);
    return;
  }
  if (o >= n->size) {
    fuse_reply_err (req, EINVAL);
    return;
  }
  if (end > n->size) {
    if (!(mode & FALLOC_FL_KEEP_SIZE)) {
      fuse_reply_err (req, EINVAL);
      return;
    }
    end = n->size;
  }
  uint32_t flags = kind == FALLOC_FL_ZERO_RANGE ? AP_IO_NO_HOLE : 0;
  uint64_t a0 = round_up (o, n->bs), a1 = round_down (end, n->bs);
  if (a0 >= a1) {                       /* within one or two blocks */
    uint64_t mid = round_down (end, n->bs);
    if (mid > o && mid < end)
      r = zero_partial (fs, n, o, mid - o);
    else
      mid = o;
    if (r == 0)
      r = zero_partial (fs, n, mid, end - mid);
  }
  else {
    r = zero_aligned (n, a0, a1, flags);
    if (r == 0 && o < a0)
      r = zero_partial (fs, n, o, a0 - o);
    if (r == 0 && end > a1)
      r = zero_partial (fs, n, a1, end - a1);
  }
  fuse_reply_err (req, -r);
}

static const struct fuse_lowlevel_ops ops = {
  .init = op_init,
  .lookup = op_lookup,
  .forget = op_forget,
  .forget_multi = op_forget_multi,
  .getattr = op_getattr,
  .setattr = op_setattr,
  .readdir = op_readdir,
  .statfs = op_statfs,
  .mknod = op_mknod,
  .mkdir = op_mkdir,
  .unlink = op_unlink,
  .rmdir = op_unlink,
  .rename = op_rename,
  .link = op_link,
  .symlink = op_symlink,
  .create = op_create,
  .open = op_open,
  .release = op_release,
  .flush = op_flush,
  .read = op_read,
  .write = op_write,
  .fsync = op_fsync,
  .fallocate = op_fallocate,
};

/* ------------------------------------------------------------ workers */

static void *
worker_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "ap-fuse");
  struct worker *w = arg;
  struct devfs *fs = w->fs;
  int fd = fuse_session_fd (fs->se);
  int ep = epoll_create1 (EPOLL_CLOEXEC);
  struct epoll_event ev = { .events = EPOLLIN | EPOLLEXCLUSIVE,
                            .data.u32 = 0 };
  /* libfuse up to 3.16 reads into buf->mem when it is set and only
   * allocates when it is NULL; later versions manage the buffer
   * themselves, so there we leave it to them (and WRITEs are copied). */
  bool own = fuse_version () <= 316;
  struct fuse_buf lbuf = { .mem = NULL };

  this_worker = w;
  if (ep < 0 || epoll_ctl (ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
    ap_error ("devfs: %s: worker: epoll: %s", fs->dir, strerror (errno));
    goto out;
  }
  ev.events = EPOLLIN;
  ev.data.u32 = 1;
  if (epoll_ctl (ep, EPOLL_CTL_ADD, fs->quit[0], &ev) < 0) {
    ap_error ("devfs: %s: worker: epoll: %s", fs->dir, strerror (errno));
    goto out;
  }

  while (!atomic_load (&fs->stopping)) {
    if (own && !w->rb && !(w->rb = buf_get (fs))) {
      ap_error ("devfs: %s: out of memory for a request buffer; retrying",
                fs->dir);
      usleep (100000);
      continue;
    }
    /* The headers in front of the data (see the top). */
    struct fuse_buf fbuf = { .mem = w->rb + BUF_HEAD - WRITE_HDR };
    if (!own)
      fbuf = lbuf;
    int r = fuse_session_receive_buf (fs->se, &fbuf);
    if (!own)
      lbuf = fbuf;
    if (r == -EAGAIN || r == -EINTR) {
      struct epoll_event got[2];
      int k = epoll_wait (ep, got, 2, -1);
      for (int i = 0; i < k; i++)
        if (got[i].data.u32 == 1)
          goto out;
      continue;
    }
    if (r <= 0) {
      /* 0: the session ended (unmounted from outside, or stopping). */
      if (r < 0)
        ap_error ("devfs: %s: reading /dev/fuse: %s", fs->dir,
                  strerror (-r));
      else if (!atomic_load (&fs->stopping))
        ap_warn ("devfs: %s was unmounted; the device files are gone "
                 "until altpathd restarts", fs->dir);
      /* Wake the other workers. */
      if (write (fs->quit[1], "q", 1) < 0) {
        /* they see the session end themselves */
      }
      break;
    }
    fuse_session_process_buf (fs->se, &fbuf);
  }
 out:
  buf_put (fs, w->rb);
  w->rb = NULL;
  free (lbuf.mem);
  if (ep >= 0)
    close (ep);
  return NULL;
}

/* ------------------------------------------------------- the unit set */

static void
invalidate (struct devfs *fs, const char *name)
{
  /* Drops the kernel's cached entry, so the name is gone at once.  Never
   * with fs->lock held: the kernel may wait for a lookup in progress. */
  fuse_lowlevel_notify_inval_entry (fs->se, FUSE_ROOT_ID, name,
                                    strlen (name));
}

void
devfs_set_units (struct devfs *fs, struct export **units, size_t n)
{
  struct export **put = calloc (n + 1, sizeof *put);
  size_t nput = 0;
  char (*gone)[AP_NAME_MAX] = NULL;
  size_t ngone = 0, maxgone = 0;
  bool *keep = NULL;
  size_t nnodes = 0;
  bool notify;

  pthread_mutex_lock (&fs->lock);
  for (struct dnode *d = fs->nodes; d; d = d->next)
    nnodes++;
  keep = calloc (nnodes + 1, sizeof *keep);
  maxgone = 2 * nnodes;
  gone = calloc (maxgone + 1, sizeof *gone);
  if (!put || !keep || !gone) {
    pthread_mutex_unlock (&fs->lock);
    ap_error ("devfs: %s: out of memory updating the device files; they "
              "stay as they are", fs->dir);
    for (size_t i = 0; i < n; i++)
      export_put (units[i]);
    free (put);
    free (keep);
    free (gone);
    return;
  }

  for (size_t i = 0; i < n; i++) {
    struct export *ex = units[i];
    size_t k = 0;
    struct dnode *d;
    for (d = fs->nodes; d; d = d->next, k++)
      if (d->listed && (d->ex == ex || strcmp (d->name, ex->name) == 0))
        break;
    if (d && d->ex == ex) {
      keep[k] = true;
      put[nput++] = ex;                 /* we hold one already */
      continue;
    }
    if (d && keep[k]) {
      ap_warn ("devfs: two units named %s; the second gets no file",
               ex->name);
      put[nput++] = ex;
      continue;
    }
    /* New, or a new unit under a known name (the old file goes below). */
    struct dnode *nn = calloc (1, sizeof *nn);
    if (!nn) {
      ap_error ("devfs: %s: out of memory; no file for %s", fs->dir,
                ex->name);
      put[nput++] = ex;
      continue;
    }
    nn->ino = fs->next_ino++;
    nn->ex = ex;                        /* the caller's reference */
    snprintf (nn->name, sizeof nn->name, "%s", ex->name);
    device_alias (ex->name, nn->alias, sizeof nn->alias);
    nn->size = ap_unit_size (ex->unit);
    nn->bs = ap_unit_block_size (ex->unit);
    if (nn->bs == 0)
      nn->bs = 512;
    nn->read_only = ex->read_only;
    nn->listed = true;
    clock_gettime (CLOCK_REALTIME, &nn->born);
    pthread_mutex_init (&nn->rl_mu, NULL);
    pthread_cond_init (&nn->rl_cv, NULL);
    /* At the end: the list keeps the order units come in, and the keep[]
     * indexes of the old nodes stay right. */
    struct dnode **pp = &fs->nodes;
    while (*pp)
      pp = &(*pp)->next;
    *pp = nn;
    ap_info ("devfs: %s/%s (alias %s): %llu MiB, block size %u", fs->dir,
             nn->name, nn->alias, (unsigned long long) (nn->size >> 20),
             nn->bs);
  }

  /* The old nodes not kept leave the directory. */
  size_t k = 0;
  for (struct dnode *d = fs->nodes, *next; d && k < nnodes; d = next, k++) {
    next = d->next;
    if (!d->listed || keep[k])
      continue;
    d->listed = false;
    if (ngone + 2 <= maxgone) {
      snprintf (gone[ngone++], AP_NAME_MAX, "%s", d->name);
      snprintf (gone[ngone++], AP_NAME_MAX, "%s", d->alias);
    }
    ap_info ("devfs: %s/%s (alias %s) removed%s", fs->dir, d->name,
             d->alias, d->nopen ? "; it stays usable through the handles "
             "still open" : "");
    struct export *ex = node_release_locked (fs, d);
    if (ex)
      put[nput++] = ex;
  }
  notify = fs->mounted;
  pthread_mutex_unlock (&fs->lock);

  for (size_t i = 0; i < nput; i++)
    export_put (put[i]);
  for (size_t i = 0; notify && i < ngone; i++)
    invalidate (fs, gone[i]);
  free (put);
  free (keep);
  free (gone);
}

/* ---------------------------------------------------- start and stop */

static void
mkdir_p (const char *path)
{
  char tmp[PATH_MAX];
  snprintf (tmp, sizeof tmp, "%s", path);
  for (char *s = tmp + 1; *s; s++)
    if (*s == '/') {
      *s = '\0';
      mkdir (tmp, 0755);
      *s = '/';
    }
  mkdir (tmp, 0755);
}

static void
devfs_free (struct devfs *fs)
{
  for (struct dnode *n = fs->nodes, *next; n; n = next) {
    next = n->next;
    export_put (n->ex);
    node_free (n);
  }
  for (unsigned i = 0; i < fs->npool; i++)
    free (fs->pool[i]);
  for (int i = 0; i < 2; i++)
    if (fs->quit[i] >= 0)
      close (fs->quit[i]);
  pthread_mutex_destroy (&fs->lock);
  pthread_mutex_destroy (&fs->pool_mu);
  pthread_mutex_destroy (&fs->io_mu);
  pthread_cond_destroy (&fs->io_cv);
  free (fs);
}

struct devfs *
devfs_start (const char *dir, char *err, size_t errlen)
{
  struct devfs *fs = calloc (1, sizeof *fs);
  struct stat st;
  struct statfs sfs;

  if (!fs) {
    snprintf (err, errlen, "device files in %s: out of memory", dir);
    return NULL;
  }
  fs->quit[0] = fs->quit[1] = -1;
  fs->next_ino = FUSE_ROOT_ID + 1;
  pthread_mutex_init (&fs->lock, NULL);
  pthread_mutex_init (&fs->pool_mu, NULL);
  pthread_mutex_init (&fs->io_mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&fs->io_cv, &ca);
  pthread_condattr_destroy (&ca);
  clock_gettime (CLOCK_REALTIME, &fs->born);
  if (strlen (dir) >= sizeof fs->dir || dir[0] != '/') {
    snprintf (err, errlen, "device files: '%s' is not an absolute "
              "directory name of at most %zu bytes", dir,
              sizeof fs->dir - 1);
    goto fail;
  }
  snprintf (fs->dir, sizeof fs->dir, "%s", dir);

  if (access ("/dev/fuse", R_OK | W_OK) < 0) {
    snprintf (err, errlen, "device files in %s: cannot use /dev/fuse: %s; "
              "altpathd needs root and the fuse module for device files "
              "(or set 'devices = none' in [cluster])", dir,
              strerror (errno));
    goto fail;
  }
  /* A mount left by an altpathd that died answers ENOTCONN: take it
   * away.  A live one (another altpathd?) is not ours to hide. */
  if (stat (dir, &st) < 0 && errno == ENOTCONN) {
    ap_warn ("devfs: %s: a dead FUSE mount is in the way (an altpathd "
             "that did not stop cleanly?); detaching it", dir);
    umount2 (dir, MNT_DETACH);
  }
  mkdir_p (dir);
  if (stat (dir, &st) < 0 || !S_ISDIR (st.st_mode)) {
    snprintf (err, errlen, "device files: %s is not a directory and cannot "
              "be made one: %s", dir, errno ? strerror (errno)
              : "not a directory");
    goto fail;
  }
  if (statfs (dir, &sfs) == 0 && sfs.f_type == FUSE_SUPER_MAGIC_) {
    snprintf (err, errlen, "device files: %s is already a FUSE mount "
              "(another altpathd?); unmount it (fusermount3 -u %s) or set "
              "another directory with 'devices =' in [cluster]", dir, dir);
    goto fail;
  }

  /* allow_other + default_permissions: the kernel checks the files'
   * modes (0600 root), so root, and only root, opens them. */
  char *argv[] = { "altpathd", "-o",
    "allow_other,default_permissions,fsname=altpath,subtype=altpath",
    NULL };
  struct fuse_args args = FUSE_ARGS_INIT (3, argv);
  fs->se = fuse_session_new (&args, &ops, sizeof ops, fs);
  fuse_opt_free_args (&args);           /* the parse may have copied them */
  if (!fs->se) {
    snprintf (err, errlen, "device files in %s: cannot make a FUSE "
              "session (see libfuse's message above)", dir);
    goto fail;
  }
  if (fuse_session_mount (fs->se, dir) != 0) {
    snprintf (err, errlen, "device files: cannot mount FUSE on %s (see "
              "libfuse's message above); altpathd needs root", dir);
    fuse_session_destroy (fs->se);
    fs->se = NULL;
    goto fail;
  }
  int fd = fuse_session_fd (fs->se);
  fcntl (fd, F_SETFL, fcntl (fd, F_GETFL) | O_NONBLOCK);
  if (pipe2 (fs->quit, O_CLOEXEC | O_NONBLOCK) < 0) {
    snprintf (err, errlen, "device files in %s: pipe: %s", dir,
              strerror (errno));
    goto unmount;
  }
  for (unsigned i = 0; i < WORKERS; i++) {
    fs->workers[i].fs = fs;
    int r = pthread_create (&fs->workers[i].thread, NULL, worker_thread,
                            &fs->workers[i]);
    if (r != 0) {
      snprintf (err, errlen, "device files in %s: cannot start a thread: "
                "%s", dir, strerror (r));
      goto unmount;
    }
    fs->nworkers++;
  }
  ap_info ("devfs: device files in %s (FUSE, direct I/O, %u threads)", dir,
           WORKERS);
  return fs;

 unmount:
  atomic_store (&fs->stopping, true);
  if (fs->quit[1] >= 0 && write (fs->quit[1], "q", 1) < 0) {
    /* the workers stop on the flag at their next request */
  }
  for (unsigned i = 0; i < fs->nworkers; i++)
    pthread_join (fs->workers[i].thread, NULL);
  fuse_session_exit (fs->se);
  fuse_session_unmount (fs->se);
  fuse_session_destroy (fs->se);
 fail:
  devfs_free (fs);
  return NULL;
}

void
devfs_stop (struct devfs *fs)
{
  if (!fs)
    return;
  atomic_store (&fs->stopping, true);
  if (write (fs->quit[1], "q", 1) < 0) {
    /* the pipe is full: a stop is already on its way */
  }
  for (unsigned i = 0; i < fs->nworkers; i++)
    pthread_join (fs->workers[i].thread, NULL);

  /* Open files (a loop device holds one): the unmount can only detach
   * the directory, and closing the session then fails their I/O. */
  bool busy = false;
  pthread_mutex_lock (&fs->lock);
  for (struct dnode *n = fs->nodes; n; n = n->next)
    if (n->nopen) {
      ap_warn ("devfs: %s/%s is still open (a loop device? losetup -d it "
               "before stopping altpathd); its I/O fails from now on",
               fs->dir, n->name);
      busy = true;
    }
  pthread_mutex_unlock (&fs->lock);
  /* Replies from now on (requests still in a unit) go nowhere, quietly. */
  fuse_session_exit (fs->se);
  /* Closes /dev/fuse (which aborts the connection), then unmounts
   * (lazily, as root: MNT_DETACH). */
  fuse_session_unmount (fs->se);

  /* Requests still in a unit call back into fs and the session. */
  struct timespec until;
  clock_gettime (CLOCK_MONOTONIC, &until);
  until.tv_sec += STOP_WAIT_MS / 1000;
  pthread_mutex_lock (&fs->io_mu);
  int r = 0;
  while (atomic_load (&fs->inflight) && r != ETIMEDOUT)
    r = pthread_cond_timedwait (&fs->io_cv, &fs->io_mu, &until);
  pthread_mutex_unlock (&fs->io_mu);
  if (atomic_load (&fs->inflight)) {
    /* A unit that queues without a path: keep what its callbacks touch. */
    ap_warn ("devfs: %s: %lu requests still in their units after %u s; "
             "abandoned", fs->dir, (unsigned long) atomic_load (&fs->inflight),
             STOP_WAIT_MS / 1000);
    return;
  }
  fuse_session_destroy (fs->se);
  ap_info ("devfs: %s unmounted%s", fs->dir, busy ? " (detached: the "
           "open files go when their last user closes them)" : "");
  devfs_free (fs);
}
