/* registry-dir.c — the registry in a local directory: the default backend,
 * for any number of nodes on ONE host (tests, the demo, a single machine
 * with several altpathd).  docs/registry.md describes it for operators.
 *
 *   DIR/leases/ALPHA.json          this node's lease: {"node","pid","host",
 *                                  "lease_ms"}; its mtime is the last renewal
 *   DIR/nodes/ALPHA.json           the node record
 *   DIR/ports/ALPHA.B.json         one per shared port
 *   DIR/disks/ALPHA.$4$DKB100.json one per served disk (device name escaped
 *                                  by reg_escape)
 *
 * Every file is written whole under a dot-name and renamed into place, so
 * a reader sees the old record or the new one, never half of one.
 *
 * Liveness: the node's thread renews its lease by setting the lease file's
 * mtime (utimensat) every lease_ms/3.  A reader leaves out every record of
 * a node whose lease file is missing or older than that node's lease_ms
 * (as its lease file says), so a node killed with SIGKILL disappears
 * lease_ms after its last renewal at the latest.  The files of a node dead
 * for 2 * lease_ms + 1 s are removed by whichever live node notices
 * (lazily); should that node come back (SIGCONT), its next renewal finds
 * its files gone and writes them again.
 *
 * Renewals touch only the mtime, which inotify reports as IN_ATTRIB, an
 * event nobody watches: heartbeats wake no one.  Changes reach the other
 * nodes through inotify on the four subdirectories (renames and deletes of
 * non-dot files), and leases that expire or come back through a scan of
 * leases/ every lease_ms/10 (20..250 ms).  One thread per registry handle
 * does the renewals, the inotify reading and the scans; it never calls
 * the watcher itself (registry.c's notify thread does), so a slow watcher
 * cannot make this node miss a renewal.
 *
 * The clock is CLOCK_REALTIME (file times), the only one that processes
 * can compare.  A step of the wall clock makes leases look older or
 * younger by the step until the next renewals.
 *
 * Lock order: rd.mu, then registry.mu (reg_changed) — never the reverse.
 */
#define REGISTRY_BACKEND
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "clock.h"
#include "log.h"
#include "registry.h"

#define RD_DEFAULT_DIR "/run/altpath/registry"
#define RD_LEASES "leases"
#define RD_MAX_FILE (64 * 1024)  /* a record is far smaller */

/* Subdirectories; the first three hold records, indexed by enum reg_kind. */
static const char *const rd_subdirs[] = { "nodes", "ports", "disks",
                                          RD_LEASES };
#define RD_NSUB 4

/* A set of node names, sorted. */
struct rd_names {
  char (*v)[REG_NAME_MAX];
  size_t n, cap;
};

struct rd {
  struct registry *r;
  char dir[PATH_MAX - 512];     /* room left for subdirectory/file names */
  char node[REG_NAME_MAX];
  unsigned lease_ms;
  char host[256];               /* uname nodename, in the lease file */
  int ino;                      /* inotify, non-blocking */
  int stop[2];                  /* pipe-to-self: registry_close */
  pthread_t thread;
  struct rd_names live;         /* thread only: live nodes at the last scan */
  bool rewatch;                 /* thread only: a watched dir went away */

  pthread_mutex_t mu;           /* guards the fields below, and is held
                                   across every write of our own files */
  struct reg_pubset pub;        /* what this node published */
  bool healthy;                 /* the last renewal worked */
  char error[600];              /* why not, for registry_health */
  bool restored_warned;         /* warned once about restoring our files */
  unsigned long tmpseq;         /* temporary file names */
};

/* -------------------------------------------------------------- names */

static int
rd_names_cmp (const void *a, const void *b)
{
  return strcmp (a, b);
}

static int
rd_names_add (struct rd_names *s, const char *name)
{
  if (s->n == s->cap) {
    size_t c = s->cap ? s->cap * 2 : 8;
    void *p = realloc (s->v, c * sizeof *s->v);
    if (!p)
      return -1;
    s->v = p;
    s->cap = c;
  }
  snprintf (s->v[s->n++], REG_NAME_MAX, "%s", name);
  return 0;
}

static void
rd_names_sort (struct rd_names *s)
{
  if (s->n)
    qsort (s->v, s->n, sizeof *s->v, rd_names_cmp);
}

static bool
rd_names_has (const struct rd_names *s, const char *name)
{
  return s->n && bsearch (name, s->v, s->n, sizeof *s->v, rd_names_cmp);
}

static bool
rd_names_equal (const struct rd_names *a, const struct rd_names *b)
{
  if (a->n != b->n)
    return false;
  for (size_t i = 0; i < a->n; i++)
    if (strcmp (a->v[i], b->v[i]) != 0)
      return false;
  return true;
}

static void
rd_names_free (struct rd_names *s)
{
  free (s->v);
  memset (s, 0, sizeof *s);
}

/* "ALPHA.B.json" -> node "ALPHA"; false for dot-files (ours in flight),
 * names without ".json" and names that cannot be a node's. */
static bool
rd_file_node (const char *fname, char node[REG_NAME_MAX])
{
  size_t len = strlen (fname);
  if (fname[0] == '.' || len < 6 || strcmp (fname + len - 5, ".json") != 0)
    return false;
  size_t n = strcspn (fname, ".");
  if (n == 0 || n >= REG_NAME_MAX)
    return false;
  memcpy (node, fname, n);
  node[n] = '\0';
  return true;
}

/* The file name of one of our records in its subdirectory. */
static bool
rd_record_name (const struct rd *rd, enum reg_kind kind, const char *id,
                char *out, size_t outlen)
{
  char esc[3 * AP_NAME_MAX + 1];
  if (kind == REG_KIND_NODE)
    return (size_t) snprintf (out, outlen, "%s.json", rd->node) < outlen;
  if (!reg_escape (id, esc, sizeof esc))
    return false;
  return (size_t) snprintf (out, outlen, "%s.%s.json", rd->node, esc)
    < outlen;
}

/* dir/sub/name; false (and a truncated path no file has) if too long. */
static bool
rd_path (const struct rd *rd, const char *sub, const char *name, char *out,
         size_t outlen)
{
  return (size_t) snprintf (out, outlen, "%s/%s/%s", rd->dir, sub, name)
    < outlen;
}

/* -------------------------------------------------------------- files */

static int
rd_mkdirs (const struct rd *rd, char *err, size_t errlen)
{
  char p[PATH_MAX];
  snprintf (p, sizeof p, "%s", rd->dir);
  /* mkdir -p: every prefix, then the leaf. */
  for (char *s = p + 1; ; s++) {
    if (*s == '/' || *s == '\0') {
      char c = *s;
      *s = '\0';
      if (mkdir (p, 0755) == -1 && errno != EEXIST) {
        snprintf (err, errlen, "registry directory %s: cannot create %s: %s",
                  rd->dir, p, strerror (errno));
        return -1;
      }
      *s = c;
      if (c == '\0')
        break;
    }
  }
  for (size_t i = 0; i < RD_NSUB; i++) {
    snprintf (p, sizeof p, "%s/%s", rd->dir, rd_subdirs[i]);
    if (mkdir (p, 0755) == -1 && errno != EEXIST) {
      snprintf (err, errlen, "registry directory %s: cannot create %s: %s",
                rd->dir, p, strerror (errno));
      return -1;
    }
  }
  return 0;
}

/* Write sub/name whole: a dot-file first, renamed into place.  Called with
 * rd->mu held (tmpseq). */
static int
rd_write (struct rd *rd, const char *sub, const char *name, const char *text)
{
  char tmp[PATH_MAX], path[PATH_MAX], tname[REG_NAME_MAX + 64];
  snprintf (tname, sizeof tname, ".%s.%ld.%lu.tmp", rd->node,
            (long) getpid (), rd->tmpseq++);
  rd_path (rd, sub, tname, tmp, sizeof tmp);
  rd_path (rd, sub, name, path, sizeof path);

  int fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd == -1)
    return -1;
  size_t len = strlen (text), off = 0;
  while (off < len) {
    ssize_t w = write (fd, text + off, len - off);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      goto fail;
    }
    off += (size_t) w;
  }
  if (close (fd) == -1) {
    fd = -1;
    goto fail;
  }
  fd = -1;
  if (rename (tmp, path) == -1)
    goto fail;
  return 0;

 fail:;
  int e = errno;
  if (fd >= 0)
    close (fd);
  unlink (tmp);
  errno = e;
  return -1;
}

/* Read a small file whole, NUL-terminated; NULL on error (errno). */
static char *
rd_read (const char *path, size_t *lenp)
{
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return NULL;
  char *buf = malloc (RD_MAX_FILE + 1);
  size_t len = 0;
  if (!buf) {
    close (fd);
    errno = ENOMEM;
    return NULL;
  }
  for (;;) {
    ssize_t n = read (fd, buf + len, RD_MAX_FILE - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int e = errno;
      free (buf);
      close (fd);
      errno = e;
      return NULL;
    }
    if (n == 0)
      break;
    len += (size_t) n;
    if (len == RD_MAX_FILE) {   /* not one of ours */
      free (buf);
      close (fd);
      errno = EFBIG;
      return NULL;
    }
  }
  close (fd);
  buf[len] = '\0';
  *lenp = len;
  return buf;
}

/* ------------------------------------------------------------- leases */

struct rd_lease {
  int64_t age_ms;               /* since the last renewal */
  unsigned lease_ms;            /* the owner's lease */
  long pid;                     /* the owner, 0 if unknown */
  char host[256];
};

static int64_t
rd_mtime_ms (const struct stat *st)
{
  return (int64_t) st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
}

/* Read leases/NAME: false if it is not there (or not a lease). */
static bool
rd_read_lease (const struct rd *rd, const char *fname, int64_t now_ms,
               struct rd_lease *l)
{
  char path[PATH_MAX];
  struct stat st;
  size_t len;

  rd_path (rd, RD_LEASES, fname, path, sizeof path);
  if (stat (path, &st) == -1 || !S_ISREG (st.st_mode))
    return false;
  memset (l, 0, sizeof *l);
  l->age_ms = now_ms - rd_mtime_ms (&st);
  if (l->age_ms < 0)            /* coarse file times; a clock step */
    l->age_ms = 0;
  l->lease_ms = rd->lease_ms;   /* if the file does not say */

  char *text = rd_read (path, &len);
  if (text) {
    json_object *o = json_tokener_parse (text), *v;
    if (o && json_object_object_get_ex (o, "lease_ms", &v)
        && json_object_is_type (v, json_type_int)) {
      int64_t x = json_object_get_int64 (v);
      if (x >= 100 && x <= 3600 * 1000)
        l->lease_ms = (unsigned) x;
    }
    if (o && json_object_object_get_ex (o, "pid", &v)
        && json_object_is_type (v, json_type_int))
      l->pid = (long) json_object_get_int64 (v);
    if (o && json_object_object_get_ex (o, "host", &v)
        && json_object_is_type (v, json_type_string))
      snprintf (l->host, sizeof l->host, "%s", json_object_get_string (v));
    json_object_put (o);
    free (text);
  }
  return true;
}

static bool
rd_lease_live (const struct rd_lease *l)
{
  return l->age_ms <= (int64_t) l->lease_ms;
}

/* A lease gone this long is reaped: twice the lease and a second more,
 * so that no reader can still be counting the node as alive. */
static bool
rd_lease_reapable (const struct rd_lease *l)
{
  return l->age_ms > 2 * (int64_t) l->lease_ms + 1000;
}

static int
rd_write_lease (struct rd *rd)
{
  char name[REG_NAME_MAX + 8];
  json_object *o = json_object_new_object ();
  if (!o)
    return -1;
  json_object_object_add (o, "node", json_object_new_string (rd->node));
  json_object_object_add (o, "pid", json_object_new_int64 (getpid ()));
  json_object_object_add (o, "host", json_object_new_string (rd->host));
  json_object_object_add (o, "lease_ms", json_object_new_int64 (rd->lease_ms));
  snprintf (name, sizeof name, "%s.json", rd->node);
  int rc = rd_write (rd, RD_LEASES, name,
                     json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN));
  int e = errno;
  json_object_put (o);
  errno = e;
  return rc;
}

/* Remove node's records from the three record directories.  With
 * min_age_ms >= 0, only files at least that old (orphans). */
static void
rd_remove_records (const struct rd *rd, const char *node,
                   const struct rd_names *keep, int64_t min_age_ms)
{
  int64_t now = ap_unix_ms ();
  for (size_t i = 0; i < 3; i++) {
    char dpath[PATH_MAX];
    snprintf (dpath, sizeof dpath, "%s/%s", rd->dir, rd_subdirs[i]);
    DIR *d = opendir (dpath);
    if (!d)
      continue;
    struct dirent *de;
    while ((de = readdir (d)) != NULL) {
      char fnode[REG_NAME_MAX], path[PATH_MAX];
      if (!rd_file_node (de->d_name, fnode))
        continue;
      if (node && strcmp (fnode, node) != 0)
        continue;
      if (keep && rd_names_has (keep, fnode))
        continue;
      rd_path (rd, rd_subdirs[i], de->d_name, path, sizeof path);
      if (min_age_ms >= 0) {
        struct stat st;
        if (stat (path, &st) == -1 || now - rd_mtime_ms (&st) < min_age_ms)
          continue;
      }
      if (unlink (path) == 0 && !node)
        ap_debug (AP_DEBUG_CONTROL, "registry directory %s: removed %s of "
                  "node %s, which holds no lease", rd->dir, de->d_name,
                  fnode);
    }
    closedir (d);
  }
}

/* Remove the files of a dead node: records first, the lease last, each
 * step only while the lease is still stale.  Should the node come back
 * meanwhile, its next renewal writes back whatever is missing. */
static void
rd_reap (const struct rd *rd, const char *fname, const char *node)
{
  struct rd_lease l;
  char path[PATH_MAX];

  if (!rd_read_lease (rd, fname, ap_unix_ms (), &l) || !rd_lease_reapable (&l))
    return;
  rd_remove_records (rd, node, NULL, -1);
  if (!rd_read_lease (rd, fname, ap_unix_ms (), &l) || !rd_lease_reapable (&l))
    return;
  rd_path (rd, RD_LEASES, fname, path, sizeof path);
  if (unlink (path) == 0)
    ap_info ("registry directory %s: removed the records of node %s, whose "
             "lease expired %.1f s ago", rd->dir, node,
             (double) (l.age_ms - l.lease_ms) / 1000.0);
}

/* Which nodes hold a live lease.  With reap, also remove the files of long
 * dead nodes and records that no lease covers. */
static int
rd_scan (const struct rd *rd, struct rd_names *live, bool reap)
{
  char dpath[PATH_MAX];
  struct rd_names present = { 0 };
  int64_t now = ap_unix_ms ();

  memset (live, 0, sizeof *live);
  snprintf (dpath, sizeof dpath, "%s/%s", rd->dir, RD_LEASES);
  DIR *d = opendir (dpath);
  if (!d)
    return -1;
  struct dirent *de;
  while ((de = readdir (d)) != NULL) {
    char node[REG_NAME_MAX];
    struct rd_lease l;
    if (!rd_file_node (de->d_name, node)
        || strlen (node) + 5 != strlen (de->d_name)
        || !rd_read_lease (rd, de->d_name, now, &l))
      continue;
    if (rd_lease_live (&l)) {
      if (rd_names_add (live, node) == -1)
        goto oom;
    }
    else if (reap && strcmp (node, rd->node) != 0 && rd_lease_reapable (&l))
      rd_reap (rd, de->d_name, node);
    if (reap && rd_names_add (&present, node) == -1)
      goto oom;
  }
  closedir (d);
  rd_names_sort (live);
  if (reap) {
    /* Records with no lease file at all: a reaping interrupted, a node
     * that died while starting.  Old ones only, not a node that is just
     * now writing its lease back. */
    rd_names_sort (&present);
    rd_remove_records (rd, NULL, &present,
                       2 * (int64_t) rd->lease_ms + 1000);
    rd_names_free (&present);
  }
  return 0;

 oom:
  closedir (d);
  rd_names_free (&present);
  rd_names_free (live);
  errno = ENOMEM;
  return -1;
}

/* -------------------------------------------------------------- watch */

static void
rd_watch_dirs (struct rd *rd)
{
  for (size_t i = 0; i < RD_NSUB; i++) {
    char p[PATH_MAX];
    snprintf (p, sizeof p, "%s/%s", rd->dir, rd_subdirs[i]);
    /* Adding a watch twice returns the same one: this is idempotent. */
    if (inotify_add_watch (rd->ino, p, IN_MOVED_TO | IN_MOVED_FROM
                           | IN_DELETE | IN_CLOSE_WRITE | IN_DELETE_SELF
                           | IN_MOVE_SELF | IN_ONLYDIR) == -1)
      rd->rewatch = true;
  }
}

/* Read every pending inotify event; true if any may change a snapshot. */
static bool
rd_read_events (struct rd *rd)
{
  char buf[8192] __attribute__ ((aligned (__alignof__ (struct inotify_event))));
  bool changed = false;

  for (;;) {
    ssize_t n = read (rd->ino, buf, sizeof buf);
    if (n <= 0)
      break;
    for (char *p = buf; p < buf + n; ) {
      struct inotify_event *ev = (struct inotify_event *) p;
      if (ev->mask & IN_Q_OVERFLOW)
        changed = true;
      if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) {
        rd->rewatch = true;     /* the directory went away */
        changed = true;
      }
      /* Dot-files are writes in flight; their rename is the event. */
      if (ev->len && ev->name[0] != '.')
        changed = true;
      p += sizeof *ev + ev->len;
    }
  }
  return changed;
}

/* -------------------------------------------------------------- renew */

static void
rd_set_error (struct rd *rd, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* Called with rd->mu held. */
static void
rd_set_error (struct rd *rd, const char *fmt, ...)
{
  char msg[sizeof rd->error];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  if (rd->healthy)
    ap_warn ("%s", msg);
  rd->healthy = false;
  memcpy (rd->error, msg, sizeof msg);
}

/* Write one of our records from the pub set. */
static int
rd_write_record (struct rd *rd, const struct reg_record *rec)
{
  char name[NAME_MAX + 1];
  if (!rd_record_name (rd, rec->kind, rec->id, name, sizeof name)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return rd_write (rd, reg_kind_dir (rec->kind), name, rec->json);
}

/* Renew the lease; put back whatever of ours is missing (someone reaped
 * us while we were stopped, or emptied the directory). */
static void
rd_renew (struct rd *rd)
{
  char path[PATH_MAX], name[REG_NAME_MAX + 8], err[512];
  bool restored = false;

  pthread_mutex_lock (&rd->mu);
  snprintf (name, sizeof name, "%s.json", rd->node);
  rd_path (rd, RD_LEASES, name, path, sizeof path);
  if (utimensat (AT_FDCWD, path, NULL, 0) == -1) {
    if (errno != ENOENT) {
      rd_set_error (rd, "registry directory %s: cannot renew the lease of "
                    "node %s (%s): %s", rd->dir, rd->node, path,
                    strerror (errno));
      goto out;
    }
    if (rd_mkdirs (rd, err, sizeof err) == -1) {
      rd_set_error (rd, "%s", err);
      goto out;
    }
    if (rd_write_lease (rd) == -1) {
      rd_set_error (rd, "registry directory %s: cannot write the lease of "
                    "node %s (%s): %s", rd->dir, rd->node, path,
                    strerror (errno));
      goto out;
    }
    restored = true;
  }
  for (size_t i = 0; i < rd->pub.n; i++) {
    const struct reg_record *rec = &rd->pub.v[i];
    char rname[NAME_MAX + 1], rpath[PATH_MAX];
    if (!rd_record_name (rd, rec->kind, rec->id, rname, sizeof rname))
      continue;
    rd_path (rd, reg_kind_dir (rec->kind), rname, rpath, sizeof rpath);
    if (access (rpath, F_OK) == 0)
      continue;
    if (rd_write_record (rd, rec) == -1) {
      rd_set_error (rd, "registry directory %s: cannot write %s: %s",
                    rd->dir, rpath, strerror (errno));
      goto out;
    }
    restored = true;
  }
  if (restored && !rd->restored_warned) {
    ap_warn ("registry directory %s: the files of node %s had been removed "
             "(stopped for longer than the lease of %u ms?); written again",
             rd->dir, rd->node, rd->lease_ms);
    rd->restored_warned = true;
  }
  if (!rd->healthy)
    ap_info ("registry directory %s: node %s renews its lease again",
             rd->dir, rd->node);
  rd->healthy = true;
  rd->error[0] = '\0';
 out:
  pthread_mutex_unlock (&rd->mu);
  if (restored)
    rd->rewatch = true;
}

static void *
rd_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "reg-dir");
  struct rd *rd = arg;
  uint64_t renew_every = AP_MS (rd->lease_ms / 3);
  unsigned tick_ms = rd->lease_ms / 10;
  if (tick_ms < 20)
    tick_ms = 20;
  if (tick_ms > 250)
    tick_ms = 250;
  uint64_t now = ap_now_ns ();
  uint64_t next_renew = now + renew_every;
  uint64_t next_scan = now + AP_MS (tick_ms);
  uint64_t next_reap = now + AP_MS (rd->lease_ms);

  for (;;) {
    now = ap_now_ns ();
    uint64_t next = next_renew < next_scan ? next_renew : next_scan;
    int timeout = next > now ? (int) ((next - now + 999999) / 1000000) : 0;
    struct pollfd pfd[2] = { { .fd = rd->stop[0], .events = POLLIN },
                             { .fd = rd->ino, .events = POLLIN } };
    if (poll (pfd, 2, timeout) == -1 && errno != EINTR)
      break;
    if (pfd[0].revents)
      break;

    bool changed = false;
    if (pfd[1].revents & POLLIN)
      changed = rd_read_events (rd);

    now = ap_now_ns ();
    if (now >= next_renew) {
      rd_renew (rd);
      next_renew = now + renew_every;
    }
    if (rd->rewatch) {
      rd->rewatch = false;
      rd_watch_dirs (rd);
    }
    if (now >= next_scan) {
      bool reap = now >= next_reap;
      struct rd_names live;
      if (rd_scan (rd, &live, reap) == 0) {
        if (!rd_names_equal (&live, &rd->live))
          changed = true;
        rd_names_free (&rd->live);
        rd->live = live;
      }
      if (reap)
        next_reap = now + AP_MS (rd->lease_ms);
      next_scan = now + AP_MS (tick_ms);
    }
    if (changed)
      reg_changed (rd->r);
  }
  return NULL;
}

/* ---------------------------------------------------------------- ops */

static void *
rd_open (struct registry *r, const struct registry_options *opt,
         const char *node, unsigned lease_ms, char *err, size_t errlen)
{
  const char *dir = opt->dir && *opt->dir ? opt->dir : RD_DEFAULT_DIR;
  struct rd *rd = calloc (1, sizeof *rd);
  if (!rd) {
    snprintf (err, errlen, "registry directory %s: out of memory", dir);
    return NULL;
  }
  rd->r = r;
  rd->ino = rd->stop[0] = rd->stop[1] = -1;
  pthread_mutex_init (&rd->mu, NULL);
  if (strlen (dir) >= sizeof rd->dir) {
    snprintf (err, errlen, "registry directory %s: the name is too long", dir);
    errno = ENAMETOOLONG;
    goto fail;
  }
  snprintf (rd->dir, sizeof rd->dir, "%s", dir);
  snprintf (rd->node, sizeof rd->node, "%s", node);
  rd->lease_ms = lease_ms;
  if (gethostname (rd->host, sizeof rd->host) == -1)
    rd->host[0] = '\0';
  rd->host[sizeof rd->host - 1] = '\0';

  if (rd_mkdirs (rd, err, errlen) == -1)
    goto fail;

  /* Is this node already here, alive?  Only a process we can see on this
   * host counts (same host name, pid exists): after a crash and a quick
   * restart the old lease is still young, and must not keep us out. */
  char lname[REG_NAME_MAX + 8];
  struct rd_lease l;
  snprintf (lname, sizeof lname, "%s.json", rd->node);
  if (rd_read_lease (rd, lname, ap_unix_ms (), &l) && rd_lease_live (&l)
      && l.pid > 0 && l.pid != (long) getpid ()
      && strcmp (l.host, rd->host) == 0
      && (kill ((pid_t) l.pid, 0) == 0 || errno == EPERM)) {
    snprintf (err, errlen, "registry directory %s: node %s is already "
              "registered by process %ld, which renews its lease; is "
              "another altpathd running with the same node name?",
              rd->dir, rd->node, l.pid);
    errno = EEXIST;
    goto fail;
  }
  /* Whatever a previous incarnation of this node left is not ours to
   * keep: the caller publishes afresh. */
  rd_remove_records (rd, rd->node, NULL, -1);

  if (pipe2 (rd->stop, O_CLOEXEC) == -1
      || (rd->ino = inotify_init1 (IN_NONBLOCK | IN_CLOEXEC)) == -1) {
    snprintf (err, errlen, "registry directory %s: %s", rd->dir,
              strerror (errno));
    goto fail;
  }
  rd_watch_dirs (rd);
  if (rd->rewatch) {
    snprintf (err, errlen, "registry directory %s: cannot watch it with "
              "inotify: %s", rd->dir, strerror (errno));
    goto fail;
  }
  pthread_mutex_lock (&rd->mu);
  int rc = rd_write_lease (rd);
  pthread_mutex_unlock (&rd->mu);
  if (rc == -1) {
    snprintf (err, errlen, "registry directory %s: cannot write the lease "
              "of node %s: %s", rd->dir, rd->node, strerror (errno));
    goto fail;
  }
  rd->healthy = true;
  rd_scan (rd, &rd->live, false);
  int e = pthread_create (&rd->thread, NULL, rd_thread, rd);
  if (e) {
    char p[PATH_MAX];
    rd_path (rd, RD_LEASES, lname, p, sizeof p);
    unlink (p);
    snprintf (err, errlen, "registry directory %s: cannot start a thread: "
              "%s", rd->dir, strerror (e));
    errno = e;
    goto fail;
  }
  return rd;

 fail:;
  int saved = errno;
  if (rd->ino >= 0)
    close (rd->ino);
  if (rd->stop[0] >= 0) {
    close (rd->stop[0]);
    close (rd->stop[1]);
  }
  rd_names_free (&rd->live);
  pthread_mutex_destroy (&rd->mu);
  free (rd);
  errno = saved;
  return NULL;
}

static int
rd_put (void *be, enum reg_kind kind, const char *id, const char *json)
{
  struct rd *rd = be;
  char name[NAME_MAX + 1];
  if (!rd_record_name (rd, kind, id, name, sizeof name)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  pthread_mutex_lock (&rd->mu);
  /* Kept even if the write fails: the next renewal tries again. */
  int rc = reg_pubset_put (&rd->pub, kind, id, json);
  if (rc == 0)
    rc = rd_write (rd, reg_kind_dir (kind), name, json);
  int e = errno;
  pthread_mutex_unlock (&rd->mu);
  if (rc == -1)
    ap_debug (AP_DEBUG_CONTROL, "registry directory %s: cannot write %s/%s: "
              "%s", rd->dir, reg_kind_dir (kind), name, strerror (e));
  errno = e;
  return rc;
}

static int
rd_del (void *be, enum reg_kind kind, const char *id)
{
  struct rd *rd = be;
  char name[NAME_MAX + 1], path[PATH_MAX];
  if (!rd_record_name (rd, kind, id, name, sizeof name)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  rd_path (rd, reg_kind_dir (kind), name, path, sizeof path);
  pthread_mutex_lock (&rd->mu);
  reg_pubset_del (&rd->pub, kind, id);
  int rc = unlink (path) == -1 && errno != ENOENT ? -1 : 0;
  int e = errno;
  pthread_mutex_unlock (&rd->mu);
  errno = e;
  return rc;
}

static int
rd_list (void *be, reg_list_fn *fn, void *opaque)
{
  struct rd *rd = be;
  struct rd_names live;
  int rc = 0;

  if (rd_scan (rd, &live, false) == -1)
    return -1;
  for (size_t k = 0; k < 3 && rc == 0; k++) {
    char dpath[PATH_MAX];
    snprintf (dpath, sizeof dpath, "%s/%s", rd->dir, rd_subdirs[k]);
    DIR *d = opendir (dpath);
    if (!d) {
      rc = -1;
      break;
    }
    struct dirent *de;
    while (rc == 0 && (de = readdir (d)) != NULL) {
      char node[REG_NAME_MAX], path[PATH_MAX];
      size_t len;
      if (!rd_file_node (de->d_name, node) || !rd_names_has (&live, node))
        continue;
      /* nodes/ holds NODE.json; the others NODE.ID.json. */
      bool bare = strlen (node) + 5 == strlen (de->d_name);
      if (bare != (k == REG_KIND_NODE))
        continue;
      rd_path (rd, rd_subdirs[k], de->d_name, path, sizeof path);
      char *text = rd_read (path, &len);
      if (!text)                /* replaced or removed under us */
        continue;
      rc = fn (opaque, (enum reg_kind) k, node, text, len);
      free (text);
    }
    int e = errno;
    closedir (d);
    errno = e;
  }
  rd_names_free (&live);
  return rc ? -1 : 0;
}

static bool
rd_health (void *be, char *msg, size_t msglen)
{
  struct rd *rd = be;
  pthread_mutex_lock (&rd->mu);
  bool ok = rd->healthy;
  if (ok)
    snprintf (msg, msglen, "registry directory %s: node %s holds a lease of "
              "%u ms, renewed every %u ms", rd->dir, rd->node, rd->lease_ms,
              rd->lease_ms / 3);
  else
    snprintf (msg, msglen, "%s", rd->error);
  pthread_mutex_unlock (&rd->mu);
  return ok;
}

static void
rd_close (void *be)
{
  struct rd *rd = be;
  char path[PATH_MAX], name[NAME_MAX + 1];

  if (write (rd->stop[1], "q", 1) < 0)
    ap_warn ("registry directory %s: cannot stop its thread: %s", rd->dir,
             strerror (errno));
  pthread_join (rd->thread, NULL);

  /* The lease first: without it every record of ours is out of every
   * snapshot at once; then the records themselves. */
  pthread_mutex_lock (&rd->mu);
  snprintf (name, sizeof name, "%s.json", rd->node);
  rd_path (rd, RD_LEASES, name, path, sizeof path);
  unlink (path);
  for (size_t i = 0; i < rd->pub.n; i++) {
    const struct reg_record *rec = &rd->pub.v[i];
    if (rd_record_name (rd, rec->kind, rec->id, name, sizeof name)) {
      rd_path (rd, reg_kind_dir (rec->kind), name, path, sizeof path);
      unlink (path);
    }
  }
  reg_pubset_free (&rd->pub);
  pthread_mutex_unlock (&rd->mu);

  close (rd->ino);
  close (rd->stop[0]);
  close (rd->stop[1]);
  rd_names_free (&rd->live);
  pthread_mutex_destroy (&rd->mu);
  free (rd);
}

const struct reg_backend_ops reg_dir_ops = {
  .name = "dir",
  .open = rd_open,
  .put = rd_put,
  .del = rd_del,
  .list = rd_list,
  .health = rd_health,
  .close = rd_close,
};
