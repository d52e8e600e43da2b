/* test-served.c — the served path against real NBD servers, and the
 * fencing of writes in doubt (DESIGN.md invariant 3, docs/served.md).
 *
 * Peers, each started here as a child on a socket in a temporary
 * directory in /dev/shm and stopped by its PID: altpathd (this tree's,
 * over a Unix socket and over TCP on loopback), nbdkit's file plugin,
 * qemu-nbd, nbd-server.  A missing tool skips its cases.
 *
 *   peer cases     a unit over the served path alone: writes (some FUA),
 *                  flush, reads, write-zeroes, trim, many requests at once,
 *                  each checked against the image file itself; what each
 *                  peer negotiated (connections, the request deadline);
 *                  altpathd also over TLS-PSK
 *   negotiation    the altpath:deadline-ms context against altpathd with
 *                  libnbd itself: listed, selected, refused when out of
 *                  range or not canonical, not offered on Unix sockets,
 *                  BLOCK_STATUS with it
 *   open errors    nothing listening: a prompt error naming the URI
 *   reconnect      the server killed: the unit fails over to a direct
 *                  path; the server restarted: the served path reconnects
 *                  and comes back as a standby within the backoff bound
 *   fence          the test: a write stream through a served path
 *                  to altpathd, SIGSTOP of altpathd, failover to the
 *                  direct path, newer data written to every block,
 *                  SIGCONT: no block may end with the older data
 *                  (and the same over TLS-PSK); on a loop device, root
 *                  only (see fence_run)
 *   fence control  the same without the deadline (the client does not
 *                  propose it, and waits 1 ms): the stale writes land, so
 *                  the fence case can fail
 *
 * By hand: TEST_SERVED_ONLY='test_fence*' runs only the matching cases,
 * TEST_SERVED_KEEP=1 keeps each case's directory (images, server logs).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <cmocka.h>
#include <libnbd.h>

#include "internal.h"

#define KiB 1024u
#define MiB (1024u * 1024u)
#define IMG_SIZE (16 * MiB)
#define EXPORT "ALPHA$DKA100"
#define EXPORT_URI "ALPHA%24DKA100"

/* -------------------------------------------------------------- helpers */

static char tmpdir[128];
static char img[256];
static char loopdev[64];        /* a loop device over img, when attached */

/* Children to stop at the end of a case (by PID). */
#define MAX_KIDS 8
static pid_t kids[MAX_KIDS];

static void
note (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  printf ("# ");
  vprintf (fmt, ap);
  printf ("\n");
  fflush (stdout);
  va_end (ap);
}

static bool
have_prog (const char *name)
{
  const char *path = getenv ("PATH");
  char buf[4096];

  if (strchr (name, '/'))
    return access (name, X_OK) == 0;
  while (path && *path) {
    const char *colon = strchr (path, ':');
    size_t n = colon ? (size_t) (colon - path) : strlen (path);
    snprintf (buf, sizeof buf, "%.*s/%s", (int) n, path, name);
    if (access (buf, X_OK) == 0)
      return true;
    path = colon ? colon + 1 : NULL;
  }
  return false;
}

static const char *
altpathd_bin (void)
{
  static char bin[4096];
  const char *b = getenv ("BUILD");
  snprintf (bin, sizeof bin, "%s/altpathd", b ? b : "build");
  return bin;
}

/* Start argv with stdout and stderr to log; it dies with us. */
static pid_t
spawn (char *const argv[], const char *log)
{
  pid_t parent = getpid ();
  pid_t pid = fork ();

  if (pid == 0) {
    int fd = open (log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int nul = open ("/dev/null", O_RDONLY | O_CLOEXEC);
    prctl (PR_SET_PDEATHSIG, SIGKILL);
    if (getppid () != parent)
      _exit (127);
    if (fd >= 0) {
      dup2 (fd, 1);
      dup2 (fd, 2);
    }
    if (nul >= 0)
      dup2 (nul, 0);
    execvp (argv[0], argv);
    _exit (127);
  }
  assert_true (pid > 0);
  for (unsigned i = 0; i < MAX_KIDS; i++)
    if (kids[i] == 0) {
      kids[i] = pid;
      break;
    }
  return pid;
}

static void
forget_kid (pid_t pid)
{
  for (unsigned i = 0; i < MAX_KIDS; i++)
    if (kids[i] == pid)
      kids[i] = 0;
}

/* SIGTERM (after SIGCONT, in case it is stopped), then SIGKILL after
 * 5 s.  Returns its exit status (0 for a daemon that is not our child),
 * or -1 if it had to be killed. */
static int
stop_pid (pid_t pid)
{
  if (pid <= 0)
    return 0;
  kill (pid, SIGCONT);
  kill (pid, SIGTERM);
  for (int i = 0; i < 100; i++) {
    int st = 0;
    pid_t r = waitpid (pid, &st, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) {
      if (r < 0 && kill (pid, 0) == 0) {
        /* Not our child (a daemon that forked): wait for it to go. */
        usleep (50000);
        continue;
      }
      forget_kid (pid);
      return r == pid ? (WIFEXITED (st) ? WEXITSTATUS (st) : 128) : 0;
    }
    usleep (50000);
  }
  kill (pid, SIGKILL);
  waitpid (pid, NULL, 0);
  forget_kid (pid);
  return -1;
}


static bool
file_contains (const char *file, const char *what)
{
  char buf[65536];
  int fd = open (file, O_RDONLY | O_CLOEXEC);
  ssize_t n;
  if (fd < 0)
    return false;
  n = read (fd, buf, sizeof buf - 1);
  close (fd);
  if (n <= 0)
    return false;
  buf[n] = '\0';
  return strstr (buf, what) != NULL;
}

static bool
can_connect_unix (const char *path)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool ok;
  snprintf (sa.sun_path, sizeof sa.sun_path, "%s", path);
  ok = fd >= 0 && connect (fd, (struct sockaddr *) &sa, sizeof sa) == 0;
  if (fd >= 0)
    close (fd);
  return ok;
}

static int
free_port (void)
{
  struct sockaddr_in sa = { .sin_family = AF_INET };
  socklen_t len = sizeof sa;
  int fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sa.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
  assert_int_equal (bind (fd, (struct sockaddr *) &sa, sizeof sa), 0);
  assert_int_equal (getsockname (fd, (struct sockaddr *) &sa, &len), 0);
  close (fd);
  return ntohs (sa.sin_port);
}

static void
wait_for_socket (const char *sock, pid_t pid, const char *log)
{
  for (int i = 0; i < 200; i++) {
    if (can_connect_unix (sock))
      return;
    if (pid > 0 && waitpid (pid, NULL, WNOHANG) == pid) {
      forget_kid (pid);
      fail_msg ("%s exited at start; see %s", sock, log);
    }
    usleep (50000);
  }
  fail_msg ("nothing listens on %s after 10 s; see %s", sock, log);
}

static void
make_image (const char *path)
{
  int fd = open (path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  assert_true (fd >= 0);
  assert_int_equal (ftruncate (fd, IMG_SIZE), 0);
  close (fd);
}

static int
setup (void **state)
{
  snprintf (tmpdir, sizeof tmpdir, "/dev/shm/ap-served.XXXXXX");
  assert_non_null (mkdtemp (tmpdir));
  snprintf (img, sizeof img, "%s/disk.img", tmpdir);
  make_image (img);
  return 0;
}

static int
teardown (void **state)
{
  char cmd[256];
  for (unsigned i = 0; i < MAX_KIDS; i++)
    if (kids[i])
      stop_pid (kids[i]);
  if (loopdev[0]) {
    snprintf (cmd, sizeof cmd, "losetup -d %s", loopdev);
    if (system (cmd) != 0)
      note ("could not detach %s", loopdev);
    loopdev[0] = '\0';
  }
  if (getenv ("TEST_SERVED_KEEP")) {
    note ("kept %s", tmpdir);
    return 0;
  }
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system (cmd) != 0)
    note ("could not remove %s", tmpdir);
  return 0;
}

/* A loop device over img (root only): a block device, whose writes the
 * kernel carries out whatever the process that submitted them does. */
static bool
attach_loop (void)
{
  char cmd[400];
  FILE *p;
  bool ok = false;

  if (geteuid () != 0 || !have_prog ("losetup"))
    return false;
  snprintf (cmd, sizeof cmd, "losetup -f --show '%s' 2>/dev/null", img);
  p = popen (cmd, "r");
  if (!p)
    return false;
  if (fgets (loopdev, sizeof loopdev, p)) {
    loopdev[strcspn (loopdev, "\n")] = '\0';
    ok = loopdev[0] == '/';
  }
  if (pclose (p) != 0 || !ok)
    loopdev[0] = '\0';
  return loopdev[0] != '\0';
}

static void *
aligned (size_t n)
{
  void *p = NULL;
  assert_int_equal (posix_memalign (&p, 4096, n), 0);
  return p;
}

/* ---------------------------------------------------------------- peers */

struct server {
  pid_t pid;
  char sock[256];               /* Unix socket */
  int port;                     /* altpathd: TCP port on 127.0.0.1 */
  char log[256];
  char conf[256];
  char uri[512];                /* over the Unix socket */
  char tcp_uri[512];            /* over TCP (altpathd) */
  char psk[256];                /* altpathd with TLS: its PSK file, whose
                                   identity "alice" the client uses; the
                                   TCP listener then requires TLS */
};

/* altpathd must stop cleanly (and, under the sanitizers, without a
 * report: those make it exit non-zero). */
static void
stop_altpathd (struct server *sv)
{
  int st = stop_pid (sv->pid);
  if (st != 0)
    fail_msg ("altpathd exited with status %d; see %s", st, sv->log);
}

/* altpathd serving disk (img, or a block device over it) as
 * ALPHA$DKA100 on a Unix socket and on TCP. */
static void
start_altpathd_disk (struct server *sv, int port, const char *disk)
{
  char *argv[] = { (char *) altpathd_bin (), (char *) "--config", sv->conf,
                   NULL };
  FILE *f;

  snprintf (sv->sock, sizeof sv->sock, "%s/altpathd.sock", tmpdir);
  snprintf (sv->log, sizeof sv->log, "%s/altpathd.log", tmpdir);
  snprintf (sv->conf, sizeof sv->conf, "%s/altpath.conf", tmpdir);
  sv->port = port ? port : free_port ();
  f = fopen (sv->conf, "we");
  assert_non_null (f);
  fprintf (f, "[node]\nname = ALPHA\n"
           "[listen]\naddress = unix:%s\n"
           "[listen]\naddress = 127.0.0.1:%d\ntls = %s\n"
           "[port A]\n100 = %s\n", sv->sock, sv->port,
           sv->psk[0] ? "require" : "off", disk);
  if (sv->psk[0])
    fprintf (f, "[tls]\npsk-file = %s\n", sv->psk);
  fclose (f);
  if (truncate (sv->log, 0) < 0 && errno != ENOENT)
    note ("cannot truncate %s", sv->log);
  unlink (sv->sock);
  sv->pid = spawn (argv, sv->log);
  for (int i = 0; i < 200 && !file_contains (sv->log, "ready"); i++) {
    if (waitpid (sv->pid, NULL, WNOHANG) == sv->pid) {
      forget_kid (sv->pid);
      fail_msg ("altpathd exited at start; see %s", sv->log);
    }
    usleep (50000);
  }
  assert_true (file_contains (sv->log, "ready"));
  snprintf (sv->uri, sizeof sv->uri, "nbd+unix:///%s?socket=%s", EXPORT_URI,
            sv->sock);
  snprintf (sv->tcp_uri, sizeof sv->tcp_uri, "nbd://127.0.0.1:%d/%s",
            sv->port, EXPORT_URI);
}

static void
start_altpathd (struct server *sv, int port)
{
  start_altpathd_disk (sv, port, img);
}

/* A PSK file with the identity alice, for altpathd and the client. */
static bool
make_psk (struct server *sv)
{
  char cmd[600];
  if (!have_prog ("psktool"))
    return false;
  snprintf (sv->psk, sizeof sv->psk, "%s/keys.psk", tmpdir);
  snprintf (cmd, sizeof cmd, "psktool -u alice -p '%s' > /dev/null 2>&1",
            sv->psk);
  if (system (cmd) != 0) {
    sv->psk[0] = '\0';
    return false;
  }
  return true;
}

static void
start_nbdkit (struct server *sv)
{
  snprintf (sv->sock, sizeof sv->sock, "%s/nbdkit.sock", tmpdir);
  snprintf (sv->log, sizeof sv->log, "%s/nbdkit.log", tmpdir);
  char *argv[] = { (char *) "nbdkit", (char *) "-U", sv->sock, (char *) "-f",
                   (char *) "--exit-with-parent", (char *) "file", img,
                   NULL };
  sv->pid = spawn (argv, sv->log);
  wait_for_socket (sv->sock, sv->pid, sv->log);
  snprintf (sv->uri, sizeof sv->uri, "nbd+unix:///?socket=%s", sv->sock);
}

static void
start_qemu_nbd (struct server *sv)
{
  snprintf (sv->sock, sizeof sv->sock, "%s/qemu.sock", tmpdir);
  snprintf (sv->log, sizeof sv->log, "%s/qemu-nbd.log", tmpdir);
  /* -t: stay for the next client.  One client at a time (the default),
   * which also means no multi-conn. */
  char *argv[] = { (char *) "qemu-nbd", (char *) "-k", sv->sock,
                   (char *) "-f", (char *) "raw", (char *) "-t", img, NULL };
  sv->pid = spawn (argv, sv->log);
  wait_for_socket (sv->sock, sv->pid, sv->log);
  snprintf (sv->uri, sizeof sv->uri, "nbd+unix:///?socket=%s", sv->sock);
}

/* nbd-server forks into the background: its PID comes from its PID file.
 * No "fua" in its configuration, so FUA is emulated with a flush. */
static void
start_nbd_server (struct server *sv)
{
  char pidfile[300], conf[300];
  FILE *f;

  snprintf (sv->sock, sizeof sv->sock, "%s/nbd-server.sock", tmpdir);
  snprintf (sv->log, sizeof sv->log, "%s/nbd-server.log", tmpdir);
  snprintf (conf, sizeof conf, "%s/nbd-server.conf", tmpdir);
  snprintf (pidfile, sizeof pidfile, "%s/nbd-server.pid", tmpdir);
  f = fopen (conf, "we");
  assert_non_null (f);
  fprintf (f, "[generic]\nunixsock = %s\n[disk]\nexportname = %s\n"
           "flush = true\ntrim = true\n", sv->sock, img);
  fclose (f);
  char *argv[] = { (char *) "nbd-server", (char *) "-C", conf,
                   (char *) "-p", pidfile, NULL };
  pid_t starter = spawn (argv, sv->log);
  waitpid (starter, NULL, 0);
  forget_kid (starter);
  wait_for_socket (sv->sock, -1, sv->log);
  f = fopen (pidfile, "re");
  assert_non_null (f);
  assert_int_equal (fscanf (f, "%d", &sv->pid), 1);
  fclose (f);
  for (unsigned i = 0; i < MAX_KIDS; i++)
    if (kids[i] == 0) {
      kids[i] = sv->pid;
      break;
    }
  snprintf (sv->uri, sizeof sv->uri, "nbd+unix:///disk?socket=%s", sv->sock);
}

/* --------------------------------------------------------------- units */

static struct ap_path *
open_served_tls (const char *uri, unsigned deadline_ms,
                 unsigned fence_wait_ms, const char *psk)
{
  struct ap_served_options o = {
    .name = "served",
    .uri = uri,
    .deadline_ms = deadline_ms,
    .fence_wait_ms = fence_wait_ms,
    .connect_timeout_ms = 3000,
    .tls_psk_file = psk,
    .tls_username = psk ? "alice" : NULL,
  };
  struct ap_path *p = ap_path_open_served (&o);
  if (!p)
    fail_msg ("ap_path_open_served (%s): %s", uri, ap_get_error ());
  return p;
}

static struct ap_path *
open_served (const char *uri, unsigned deadline_ms, unsigned fence_wait_ms)
{
  return open_served_tls (uri, deadline_ms, fence_wait_ms, NULL);
}

static struct ap_unit *
make_unit (struct ap_path **paths, size_t n, uint32_t request_timeout_ms)
{
  struct ap_unit_options o;
  ap_unit_options_init (&o);
  o.name = "TEST$DKA100";
  o.request_timeout_ms = request_timeout_ms;
  o.verify_timeout_ms = 15000;
  o.checker_interval_ms = 200;
  struct ap_unit *u = ap_unit_create (&o, paths, n);
  if (!u)
    fail_msg ("ap_unit_create: %s", ap_get_error ());
  return u;
}

static void
path_status (struct ap_unit *u, const char *name, struct ap_path_status *out)
{
  struct ap_unit_status st;
  ap_unit_get_status (u, &st);
  for (unsigned i = 0; i < st.npaths; i++)
    if (strcmp (st.paths[i].name, name) == 0) {
      *out = st.paths[i];
      return;
    }
  fail_msg ("unit has no path %s", name);
}

static bool
wait_path_state (struct ap_unit *u, const char *name, enum ap_path_state s,
                 uint64_t timeout_ms)
{
  uint64_t until = ap_now_ns () + AP_MS (timeout_ms);
  struct ap_path_status ps;
  do {
    path_status (u, name, &ps);
    if (ps.state == s)
      return true;
    usleep (10000);
  } while (ap_now_ns () < until);
  return false;
}

static void
file_read (const char *file, void *buf, size_t len, uint64_t off)
{
  int fd = open (file, O_RDONLY | O_CLOEXEC);
  assert_true (fd >= 0);
  assert_int_equal (pread (fd, buf, len, (off_t) off), (ssize_t) len);
  close (fd);
}

/* Many requests at once through ap_unit_submit. */
struct batch {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  unsigned done, errors;
  int last_err;
};

static void
batch_done (struct ap_io *io, int err)
{
  struct batch *b = io->opaque;
  pthread_mutex_lock (&b->lock);
  b->done++;
  if (err) {
    b->errors++;
    b->last_err = err;
  }
  pthread_cond_broadcast (&b->cond);
  pthread_mutex_unlock (&b->lock);
}

static void
batch_wait (struct batch *b, unsigned n)
{
  pthread_mutex_lock (&b->lock);
  while (b->done < n)
    pthread_cond_wait (&b->cond, &b->lock);
  pthread_mutex_unlock (&b->lock);
}

/* Writes (some FUA), flush, reads, zeroes, trim, 64 requests at once;
 * the data checked through the unit and in the image file. */
static void
io_suite (struct ap_unit *u)
{
  const size_t len = MiB, chunk = 64 * KiB;
  uint8_t *w = aligned (len), *r = aligned (len), *f = malloc (len);
  unsigned seed = 42;

  assert_non_null (f);
  for (size_t i = 0; i < len; i++)
    w[i] = (uint8_t) rand_r (&seed);
  for (size_t off = 0; off < len; off += chunk)
    assert_int_equal (ap_unit_pwrite (u, w + off, chunk, off,
                                      (off / chunk) % 2 ? AP_IO_FUA : 0), 0);
  assert_int_equal (ap_unit_flush (u), 0);
  memset (r, 0, len);
  for (size_t off = 0; off < len; off += 2 * chunk)
    assert_int_equal (ap_unit_pread (u, r + off, 2 * chunk, off), 0);
  assert_memory_equal (r, w, len);
  file_read (img, f, len, 0);
  assert_memory_equal (f, w, len);

  /* Write-zeroes, plain and NO_HOLE with FUA. */
  assert_int_equal (ap_unit_write_zeroes (u, 128 * KiB, 256 * KiB, 0), 0);
  memset (w + 256 * KiB, 0, 128 * KiB);
  if (ap_unit_write_zeroes (u, 64 * KiB, 512 * KiB,
                            AP_IO_NO_HOLE | AP_IO_FUA) == 0)
    memset (w + 512 * KiB, 0, 64 * KiB);
  else {
    /* The server's right: altpathd on tmpfs cannot allocate zeroes. */
    note ("write-zeroes with NO_HOLE refused: %s", ap_get_error ());
    assert_int_equal (ap_get_errno (), EOPNOTSUPP);
  }
  assert_int_equal (ap_unit_pread (u, r, len, 0), 0);
  assert_memory_equal (r, w, len);
  /* Trim: must be accepted; what the range reads afterwards is up to the
   * server. */
  assert_int_equal (ap_unit_trim (u, 64 * KiB, 768 * KiB), 0);
  assert_int_equal (ap_unit_flush (u), 0);
  file_read (img, f, 768 * KiB, 0);
  assert_memory_equal (f, w, 768 * KiB);

  /* 64 at once: 32 writes of 16 KiB, then 32 reads of them. */
  struct batch b = { .done = 0 };
  struct ap_io ios[32];
  uint8_t *buf = aligned (32 * 16 * KiB), *back = aligned (32 * 16 * KiB);
  pthread_mutex_init (&b.lock, NULL);
  pthread_cond_init (&b.cond, NULL);
  for (size_t i = 0; i < 32 * 16 * KiB; i++)
    buf[i] = (uint8_t) rand_r (&seed);
  for (unsigned i = 0; i < 32; i++) {
    ios[i] = (struct ap_io) { .op = AP_OP_WRITE, .buf = buf + i * 16 * KiB,
                              .offset = 2 * MiB + (uint64_t) i * 48 * KiB,
                              .length = 16 * KiB, .done = batch_done,
                              .opaque = &b };
    assert_int_equal (ap_unit_submit (u, &ios[i]), 0);
  }
  batch_wait (&b, 32);
  assert_int_equal (b.errors, 0);
  for (unsigned i = 0; i < 32; i++) {
    ios[i] = (struct ap_io) { .op = AP_OP_READ, .buf = back + i * 16 * KiB,
                              .offset = 2 * MiB + (uint64_t) i * 48 * KiB,
                              .length = 16 * KiB, .done = batch_done,
                              .opaque = &b };
    assert_int_equal (ap_unit_submit (u, &ios[i]), 0);
  }
  batch_wait (&b, 64);
  assert_int_equal (b.errors, 0);
  assert_memory_equal (back, buf, 32 * 16 * KiB);
  assert_int_equal (ap_unit_flush (u), 0);
  for (unsigned i = 0; i < 32; i++) {
    file_read (img, f, 16 * KiB, 2 * MiB + (uint64_t) i * 48 * KiB);
    assert_memory_equal (f, buf + i * 16 * KiB, 16 * KiB);
  }
  pthread_mutex_destroy (&b.lock);
  pthread_cond_destroy (&b.cond);
  free (buf);
  free (back);
  free (w);
  free (r);
  free (f);
}

/* A unit over one served path to uri; the I/O suite; what it agreed. */
static void
peer_case_tls (const char *uri, unsigned want_conns, bool want_deadline,
               const char *psk)
{
  struct ap_path *p = open_served_tls (uri, 1000, 0, psk);
  struct ap_served_state st;
  struct ap_path_info info;

  ap_path_get_info (p, &info);
  assert_int_equal (info.kind, AP_PATH_SERVED);
  assert_int_equal (info.size, IMG_SIZE);
  assert_true (info.caps & AP_CAN_FLUSH);
  assert_int_equal (ap_served_get_state (p, &st), 0);
  note ("%s: %u connection(s), deadline %u ms, block size %u, caps 0x%x",
        uri, st.connections, st.deadline_ms, info.block_size, info.caps);
  assert_true (st.connected);
  assert_int_equal (st.connections, want_conns);
  assert_int_equal (st.deadline_ms, want_deadline ? 1000 : 0);
  assert_int_equal (st.doubt_wait_ns, want_deadline ? AP_MS (1000 + 100 + 20)
                    : AP_MS (10000));

  struct ap_unit *u = make_unit (&p, 1, 5000);
  io_suite (u);
  assert_int_equal (ap_unit_close (u), 0);
}

static void
peer_case (const char *uri, unsigned want_conns, bool want_deadline)
{
  peer_case_tls (uri, want_conns, want_deadline, NULL);
}

/* How a peer case reaches altpathd. */
enum via { VIA_UNIX, VIA_TCP, VIA_TLS };

/* altpathd (on a free port) against peer_case: over its Unix socket, over
 * TCP, or over TCP with TLS-PSK (skipped without psktool); then it must
 * stop cleanly. */
static void
altpathd_case (enum via via, bool want_deadline)
{
  struct server sv = { 0 };
  if (!have_prog (altpathd_bin ()) || (via == VIA_TLS && !make_psk (&sv)))
    skip ();
  start_altpathd (&sv, 0);
  peer_case_tls (via == VIA_UNIX ? sv.uri : sv.tcp_uri, 2, want_deadline,
                 via == VIA_TLS ? sv.psk : NULL);
  stop_altpathd (&sv);
}

/* Another NBD server (the program prog, started by start) against
 * peer_case over its Unix socket. */
static void
server_case (const char *prog, void (*start) (struct server *),
             unsigned want_conns)
{
  struct server sv = { 0 };
  if (!have_prog (prog))
    skip ();
  start (&sv);
  peer_case (sv.uri, want_conns, false);
  stop_pid (sv.pid);
}

static void
test_altpathd_unix (void **state)
{
  /* Unix sockets have no arrival stamps: altpathd does not offer the
   * deadline there, and the path falls back to fence_wait_ms. */
  altpathd_case (VIA_UNIX, false);
}

static void
test_altpathd_tcp (void **state)
{
  altpathd_case (VIA_TCP, true);
}

/* TLS-PSK on TCP: the server takes arrival times through its GnuTLS pull
 * function, so the deadline is agreed here too. */
static void
test_altpathd_tls (void **state)
{
  altpathd_case (VIA_TLS, true);
}

static void
test_nbdkit (void **state)
{
  server_case ("nbdkit", start_nbdkit, 2);      /* nbdkit offers multi-conn */
}

static void
test_qemu_nbd (void **state)
{
  server_case ("qemu-nbd", start_qemu_nbd, 1);  /* qemu-nbd: no multi-conn */
}

static void
test_nbd_server (void **state)
{
  server_case ("nbd-server", start_nbd_server, 2); /* no structured replies */
}

static void
test_open_errors (void **state)
{
  char uri[512];
  struct ap_served_options o = { .uri = uri, .connect_timeout_ms = 2000 };
  uint64_t t0 = ap_now_ns ();

  snprintf (uri, sizeof uri, "nbd+unix:///x?socket=%s/nobody.sock", tmpdir);
  assert_null (ap_path_open_served (&o));
  note ("nothing listening: %s", ap_get_error ());
  assert_non_null (strstr (ap_get_error (), uri));
  assert_true (ap_now_ns () - t0 < AP_MS (1000));

  o.uri = NULL;
  assert_null (ap_path_open_served (&o));
  assert_int_equal (ap_get_errno (), EINVAL);
  o.uri = uri;
  o.deadline_ms = 50;
  assert_null (ap_path_open_served (&o));
  assert_int_equal (ap_get_errno (), EINVAL);
}

/* ---------------------------------------------------------- negotiation */

struct ctx_list {
  char names[8][128];
  unsigned n;
};

static int
ctx_cb (void *opaque, const char *name)
{
  struct ctx_list *l = opaque;
  if (l->n < 8)
    snprintf (l->names[l->n++], sizeof l->names[0], "%s", name);
  return 0;
}

/* LIST_META_CONTEXT with one query (NULL: none); how many came back. */
static unsigned
list_ctx (struct nbd_handle *h, const char *query, struct ctx_list *l)
{
  l->n = 0;
  assert_int_equal (nbd_clear_meta_contexts (h), 0);
  if (query)
    assert_int_equal (nbd_add_meta_context (h, query), 0);
  if (nbd_opt_list_meta_context (h, (nbd_context_callback) {
        .callback = ctx_cb, .user_data = l }) < 0)
    fail_msg ("LIST_META_CONTEXT %s: %s", query ? query : "(none)",
              nbd_get_error ());
  return l->n;
}

static int
extent_cb (void *opaque, const char *ctx, uint64_t off, uint32_t *ents,
           size_t n, int *err)
{
  struct ctx_list *l = opaque;
  if (l->n < 8)
    snprintf (l->names[l->n++], sizeof l->names[0], "%s", ctx);
  assert_true (n >= 2 && ents[1] == 0);
  return 0;
}

static struct nbd_handle *
opt_connect (const char *uri)
{
  struct nbd_handle *h = nbd_create ();
  assert_non_null (h);
  assert_int_equal (nbd_set_opt_mode (h, true), 0);
  if (nbd_connect_uri (h, uri) < 0)
    fail_msg ("connect %s: %s", uri, nbd_get_error ());
  return h;
}

static void
test_negotiation (void **state)
{
  struct server sv = { 0 };
  struct ctx_list l;
  static const char *const bad[] = {
    "altpath:deadline-ms=99", "altpath:deadline-ms=600001",
    "altpath:deadline-ms=0500", "altpath:deadline-ms=+500",
    "altpath:deadline-ms=500 ", "altpath:deadline-ms=5x0",
    "altpath:deadline-ms=", "altpath:deadline-ms=99999999999",
    "altpath:deadline", "x-altpath:deadline-ms=500",
  };

  if (!have_prog (altpathd_bin ()))
    skip ();
  start_altpathd (&sv, 0);
  struct nbd_handle *h = opt_connect (sv.tcp_uri);

  /* LIST: "altpath:" shows the context with the default N; a valid query
   * comes back as asked; no query lists base:allocation alone. */
  assert_int_equal (list_ctx (h, "altpath:", &l), 1);
  assert_string_equal (l.names[0], "altpath:deadline-ms=2000");
  assert_int_equal (list_ctx (h, "altpath:deadline-ms=250", &l), 1);
  assert_string_equal (l.names[0], "altpath:deadline-ms=250");
  assert_int_equal (list_ctx (h, "altpath:deadline-ms=100", &l), 1);
  assert_int_equal (list_ctx (h, "altpath:deadline-ms=600000", &l), 1);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (list_ctx (h, bad[i], &l) != 0)
      fail_msg ("'%s' was listed as '%s'", bad[i], l.names[0]);
  assert_int_equal (list_ctx (h, NULL, &l), 1);
  assert_string_equal (l.names[0], "base:allocation");

  /* SET both, then GO: both agreed, BLOCK_STATUS answers for both. */
  assert_int_equal (nbd_clear_meta_contexts (h), 0);
  assert_int_equal (nbd_add_meta_context (h, "base:allocation"), 0);
  assert_int_equal (nbd_add_meta_context (h, "altpath:deadline-ms=250"), 0);
  if (nbd_opt_go (h) < 0)
    fail_msg ("GO: %s", nbd_get_error ());
  assert_int_equal (nbd_can_meta_context (h, "base:allocation"), 1);
  assert_int_equal (nbd_can_meta_context (h, "altpath:deadline-ms=250"), 1);
  l.n = 0;
  assert_int_equal (nbd_block_status (h, 65536, 0, (nbd_extent_callback) {
        .callback = extent_cb, .user_data = &l }, 0), 0);
  assert_int_equal (l.n, 2);
  char buf[4096];
  assert_int_equal (nbd_pread (h, buf, sizeof buf, 0, 0), 0);
  nbd_shutdown (h, 0);
  nbd_close (h);

  /* The deadline alone (no base:allocation): agreed; block status has a
   * chunk for it only. */
  h = nbd_create ();
  assert_int_equal (nbd_add_meta_context (h, "altpath:deadline-ms=800"), 0);
  assert_int_equal (nbd_connect_uri (h, sv.tcp_uri), 0);
  assert_int_equal (nbd_can_meta_context (h, "altpath:deadline-ms=800"), 1);
  l.n = 0;
  assert_int_equal (nbd_block_status (h, 4096, 0, (nbd_extent_callback) {
        .callback = extent_cb, .user_data = &l }, 0), 0);
  assert_int_equal (l.n, 1);
  assert_string_equal (l.names[0], "altpath:deadline-ms=800");
  nbd_shutdown (h, 0);
  nbd_close (h);

  /* A Unix socket has no arrival stamps: nothing offered or agreed. */
  h = opt_connect (sv.uri);
  assert_int_equal (list_ctx (h, "altpath:", &l), 0);
  assert_int_equal (list_ctx (h, "altpath:deadline-ms=250", &l), 0);
  assert_int_equal (nbd_add_meta_context (h, "base:allocation"), 0);
  assert_int_equal (nbd_opt_go (h), 0);
  assert_int_equal (nbd_can_meta_context (h, "altpath:deadline-ms=250"), 0);
  assert_int_equal (nbd_can_meta_context (h, "base:allocation"), 1);
  nbd_shutdown (h, 0);
  nbd_close (h);
  stop_altpathd (&sv);
}

/* ------------------------------------------------------------ reconnect */

static struct ap_path *
open_direct_disk (const char *disk)
{
  struct ap_direct_options o = { .name = "direct" };
  struct ap_path *p = ap_path_open_direct (disk, &o);
  if (!p)
    fail_msg ("ap_path_open_direct: %s", ap_get_error ());
  return p;
}

static struct ap_path *
open_direct (void)
{
  return open_direct_disk (img);
}

static void
test_reconnect (void **state)
{
  struct server sv = { 0 };
  struct ap_served_state st;
  uint8_t *buf = aligned (64 * KiB);

  if (!have_prog (altpathd_bin ()))
    skip ();
  start_altpathd (&sv, 0);
  struct ap_path *served = open_served (sv.tcp_uri, 500, 0);
  struct ap_path *paths[2] = { served, open_direct () };
  struct ap_unit *u = make_unit (paths, 2, 1000);
  /* Direct paths are preferred: pin the served one to make it active. */
  assert_int_equal (ap_unit_switch (u, "served"), 0);
  memset (buf, 0x5a, 64 * KiB);
  assert_int_equal (ap_unit_pwrite (u, buf, 64 * KiB, 0, 0), 0);

  /* The server dies: requests fail over to the direct path. */
  kill (sv.pid, SIGKILL);
  waitpid (sv.pid, NULL, 0);
  forget_kid (sv.pid);
  uint64_t t0 = ap_now_ns ();
  memset (buf, 0xa5, 64 * KiB);
  for (int i = 0; i < 8; i++)
    assert_int_equal (ap_unit_pwrite (u, buf, 64 * KiB, i * 64 * KiB, 0), 0);
  struct ap_path_status ps;
  path_status (u, "direct", &ps);
  assert_true (ps.active);
  note ("failover to the direct path after the server died: %.0f ms",
        (ap_now_ns () - t0) / 1e6);
  ap_served_get_state (served, &st);
  assert_false (st.connected);
  assert_true (st.losses >= 1);
  assert_int_equal (ap_unit_unpin (u), 0);

  /* Down a while (the backoff reaches its 2 s cap), then back. */
  sleep (3);
  start_altpathd (&sv, sv.port);
  t0 = ap_now_ns ();
  /* Bound: one backoff period (2 s), a connect (at most its 3 s timeout),
   * a checker round. */
  assert_true (wait_path_state (u, "served", AP_PATH_STANDBY, 2000 + 3000
                                + 500));
  note ("served path back as standby %.0f ms after the restart",
        (ap_now_ns () - t0) / 1e6);
  ap_served_get_state (served, &st);
  assert_true (st.connected);
  assert_int_equal (st.deadline_ms, 500);
  path_status (u, "direct", &ps);
  assert_true (ps.active);
  assert_int_equal (ap_unit_close (u), 0);
  stop_altpathd (&sv);
  free (buf);
}

/* ---------------------------------------------------------------- fence */

#define FENCE_BLOCKS 64u
#define FENCE_QD 4u
#define FENCE_BURST 16u         /* written into the frozen server */
#define FENCE_PACE_US 1000      /* between two writes of the stream */
#define FENCE_MAGIC UINT64_C (0x616c747061746821) /* "altpath!" */

/* A stream of writes of one generation over FENCE_BLOCKS blocks, at
 * most FENCE_QD in flight, paced, from its own thread; and the burst. */
struct stream {
  struct ap_unit *u;
  uint32_t bs;
  uint8_t *bufs;                /* FENCE_QD + FENCE_BURST blocks */
  struct ap_io ios[FENCE_QD + FENCE_BURST];
  bool busy[FENCE_QD];
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool stop;
  unsigned outstanding;
  uint64_t next_block, written, errors;
  int last_err;
  uint64_t gen;
};

static void
fill_block (uint8_t *b, uint32_t bs, uint64_t block, uint64_t gen)
{
  memset (b, (int) ((gen * 31 + block) & 0xff), bs);
  memcpy (b, &(uint64_t) { FENCE_MAGIC }, 8);
  memcpy (b + 8, &block, 8);
  memcpy (b + 16, &gen, 8);
}

static void
stream_done (struct ap_io *io, int err)
{
  struct stream *s = io->opaque;
  unsigned k = (unsigned) (io - s->ios);
  pthread_mutex_lock (&s->lock);
  s->outstanding--;
  if (k < FENCE_QD)
    s->busy[k] = false;
  if (err) {
    s->errors++;
    s->last_err = err;
  }
  else
    s->written++;
  pthread_cond_broadcast (&s->cond);
  pthread_mutex_unlock (&s->lock);
}

/* Write block with generation s->gen from slot k.  Lock held. */
static void
stream_send_locked (struct stream *s, unsigned k, uint64_t block)
{
  uint8_t *b = s->bufs + (size_t) k * s->bs;
  fill_block (b, s->bs, block, s->gen);
  s->ios[k] = (struct ap_io) { .op = AP_OP_WRITE, .buf = b,
                               .offset = block * s->bs, .length = s->bs,
                               .done = stream_done, .opaque = s };
  s->outstanding++;
  if (k < FENCE_QD)
    s->busy[k] = true;
  pthread_mutex_unlock (&s->lock);
  int r = ap_unit_submit (s->u, &s->ios[k]);
  pthread_mutex_lock (&s->lock);
  if (r < 0) {
    s->outstanding--;
    if (k < FENCE_QD)
      s->busy[k] = false;
    s->errors++;
    s->last_err = -ap_get_errno ();
  }
}

/* Paced: the serving daemon is mostly waiting for the next request, as
 * under a moderate load; see test_fence for why. */
static void *
stream_thread (void *arg)
{
  struct stream *s = arg;
  pthread_mutex_lock (&s->lock);
  while (!s->stop) {
    unsigned k = 0;
    while (k < FENCE_QD && s->busy[k])
      k++;
    if (k == FENCE_QD) {
      pthread_cond_wait (&s->cond, &s->lock);
      continue;
    }
    stream_send_locked (s, k, s->next_block++ % FENCE_BLOCKS);
    pthread_mutex_unlock (&s->lock);
    usleep (FENCE_PACE_US);
    pthread_mutex_lock (&s->lock);
  }
  pthread_mutex_unlock (&s->lock);
  return NULL;
}

/* FENCE_BURST more writes at once, to blocks 0.. (into the frozen
 * server's socket: the stale writes every run has). */
static void
stream_burst (struct stream *s)
{
  pthread_mutex_lock (&s->lock);
  for (unsigned i = 0; i < FENCE_BURST; i++)
    stream_send_locked (s, FENCE_QD + i, i);
  pthread_mutex_unlock (&s->lock);
}

static void
stream_stop (struct stream *s)
{
  pthread_mutex_lock (&s->lock);
  s->stop = true;
  pthread_cond_broadcast (&s->cond);
  pthread_mutex_unlock (&s->lock);
  pthread_join (s->thread, NULL);
  pthread_mutex_lock (&s->lock);
  while (s->outstanding)
    pthread_cond_wait (&s->cond, &s->lock);
  pthread_mutex_unlock (&s->lock);
}

/* Wait until every thread of pid has stopped (kill returns before the
 * signal has taken effect everywhere). */
static bool
wait_stopped (pid_t pid)
{
  char dir[64], path[600], buf[512];
  snprintf (dir, sizeof dir, "/proc/%d/task", (int) pid);
  for (int tries = 0; tries < 1000; tries++) {
    DIR *d = opendir (dir);
    struct dirent *e;
    bool all = d != NULL;
    while (d && (e = readdir (d))) {
      if (e->d_name[0] == '.')
        continue;
      snprintf (path, sizeof path, "%s/%s/stat", dir, e->d_name);
      int fd = open (path, O_RDONLY | O_CLOEXEC);
      ssize_t n = fd >= 0 ? read (fd, buf, sizeof buf - 1) : -1;
      if (fd >= 0)
        close (fd);
      if (n <= 0)
        continue;                       /* a thread that just ended */
      buf[n] = '\0';
      const char *st = strrchr (buf, ')');
      if (!st || (st[2] != 'T' && st[2] != 't'))
        all = false;
    }
    if (d)
      closedir (d);
    if (all)
      return true;
    usleep (1000);
  }
  return false;
}

/* Blocks in the image not holding generation gen. */
static unsigned
count_stale (uint32_t bs, uint64_t gen, unsigned *older)
{
  uint8_t *b = malloc (bs), *want = malloc (bs);
  unsigned bad = 0;
  *older = 0;
  for (uint64_t i = 0; i < FENCE_BLOCKS; i++) {
    uint64_t g;
    file_read (img, b, bs, i * bs);
    fill_block (want, bs, i, gen);
    if (memcmp (b, want, bs) != 0) {
      bad++;
      memcpy (&g, b + 16, 8);
      if (g < gen)
        (*older)++;
    }
  }
  free (b);
  free (want);
  return bad;
}

/* The test.  Returns the number of blocks that ended with older
 * data; *fence_ms: from the first fence to the end of the last write in
 * doubt, as the unit saw it (its longest VERIFY). */
static unsigned
fence_run (bool deadline, bool tls, double *verify_ms, double *doubt_ms)
{
  struct server sv = { 0 };
  struct ap_served_state st;
  struct ap_unit_status us;

  /* The disk is a loop device: a write altpathd has handed to the
   * kernel is then carried out by the kernel even while altpathd is
   * stopped, as with any disk.  (On a tmpfs image io_uring hands O_DIRECT
   * writes to io-wq worker threads of altpathd itself, which SIGSTOP
   * freezes with them: a write started before its deadline then lands
   * seconds later, after SIGCONT.  docs/served.md, "Limits".) */
  if (tls)
    assert_true (make_psk (&sv));
  start_altpathd_disk (&sv, 0, loopdev);
  /* Control run: the client does not propose the deadline and treats
   * the server as a plain one whose writes are over 1 ms after the
   * close: a stale write then lands. */
  if (!deadline)
    setenv ("ALTPATH_SERVED_NO_DEADLINE", "1", 1);
  struct ap_path *served = open_served_tls (sv.tcp_uri, 500, deadline ? 0 : 1,
                                            tls ? sv.psk : NULL);
  unsetenv ("ALTPATH_SERVED_NO_DEADLINE");
  ap_served_get_state (served, &st);
  assert_int_equal (st.deadline_ms, deadline ? 500 : 0);
  struct ap_path *paths[2] = { served, open_direct_disk (loopdev) };
  /* The unit gives up on a request after 1 s: short, but not so short
   * that a loaded test machine fails the direct path too. */
  struct ap_unit *u = make_unit (paths, 2, 1000);
  assert_int_equal (ap_unit_switch (u, "served"), 0);

  struct stream s = { .u = u, .bs = ap_unit_block_size (u), .gen = 1 };
  pthread_mutex_init (&s.lock, NULL);
  pthread_cond_init (&s.cond, NULL);
  s.bufs = aligned ((size_t) (FENCE_QD + FENCE_BURST) * s.bs);

  /* Generation 1 streams through the served path... */
  assert_int_equal (pthread_create (&s.thread, NULL, stream_thread, &s), 0);
  usleep (300000);
  struct ap_path_status ps;
  path_status (u, "served", &ps);
  if (!ps.active)
    fail_msg ("the served path is not active before the SIGSTOP: %s",
              ps.last_error);
  /* ... the serving daemon freezes; more requests reach its socket ... */
  assert_int_equal (kill (sv.pid, SIGSTOP), 0);
  uint64_t t_stop = ap_now_ns ();
  assert_true (wait_stopped (sv.pid));
  stream_burst (&s);
  /* ... the unit times out, fences, and carries on on the direct path. */
  bool moved = false;
  while (ap_now_ns () - t_stop < AP_MS (10000)) {
    path_status (u, "direct", &ps);
    if (ps.active && ps.counters.writes > 0) {
      moved = true;
      break;
    }
    usleep (10000);
  }
  double moved_ms = (ap_now_ns () - t_stop) / 1e6;
  usleep (200000);
  stream_stop (&s);
  ap_served_get_state (served, &st);
  *doubt_ms = st.last_doubt_ns / 1e6;
  ap_unit_get_status (u, &us);
  *verify_ms = us.longest_verify_us / 1e3;
  note ("%s%s: generation 1 on the direct path %.0f ms after SIGSTOP; "
        "longest VERIFY %.0f ms; last write in doubt ended %.0f ms after "
        "its close; %" PRIu64 " writes, %" PRIu64 " errors",
        deadline ? "deadline" : "control", tls ? " (TLS)" : "", moved_ms,
        *verify_ms, *doubt_ms, s.written, s.errors);
  assert_true (moved);
  assert_int_equal (s.errors, 0);

  /* Generation 2 on every block, acknowledged... */
  s.gen = 2;
  for (uint64_t i = 0; i < FENCE_BLOCKS; i++) {
    fill_block (s.bufs, s.bs, i, 2);
    assert_int_equal (ap_unit_pwrite (u, s.bufs, s.bs, i * s.bs, 0), 0);
  }
  assert_int_equal (ap_unit_flush (u), 0);
  /* ... then the daemon wakes up with generation 1 in its socket. */
  assert_int_equal (kill (sv.pid, SIGCONT), 0);
  sleep (2);
  unsigned older, bad = count_stale (s.bs, 2, &older);
  note ("%s%s: %u of %u blocks do not hold generation 2 (%u hold an "
        "older one)", deadline ? "deadline" : "control", tls ? " (TLS)" : "",
        bad, FENCE_BLOCKS, older);
  if (bad && getenv ("TEST_SERVED_KEEP")) {
    for (uint64_t i = 0; i < FENCE_BLOCKS; i++) {
      uint64_t g;
      file_read (img, s.bufs, s.bs, i * s.bs);
      memcpy (&g, s.bufs + 16, 8);
      if (g != 2)
        note ("block %" PRIu64 " holds generation %" PRIu64, i, g);
    }
  }
  assert_int_equal (bad, older);        /* no torn or foreign data */

  assert_int_equal (ap_unit_close (u), 0);
  stop_altpathd (&sv);
  free (s.bufs);
  pthread_mutex_destroy (&s.lock);
  pthread_cond_destroy (&s.cond);
  return bad;
}

static void
test_fence (void **state)
{
  double verify_ms, doubt_ms;
  if (!have_prog (altpathd_bin ()))
    skip ();
  if (!attach_loop ()) {
    note ("no loop device (needs root and losetup): skipped");
    skip ();
  }
  assert_int_equal (fence_run (true, false, &verify_ms, &doubt_ms), 0);
  /* The wait is the deadline and its margin: 500 + 50 + 20 ms. */
  assert_true (doubt_ms >= 570 && doubt_ms < 570 + 2000);
}

/* The same through TLS: the stale requests wait in the socket as TLS
 * records, read through the GnuTLS pull function. */
static void
test_fence_tls (void **state)
{
  double verify_ms, doubt_ms;
  struct server probe = { 0 };
  if (!have_prog (altpathd_bin ()) || !make_psk (&probe))
    skip ();
  if (!attach_loop ()) {
    note ("no loop device (needs root and losetup): skipped");
    skip ();
  }
  assert_int_equal (fence_run (true, true, &verify_ms, &doubt_ms), 0);
  assert_true (doubt_ms >= 570 && doubt_ms < 570 + 2000);
}

static void
test_fence_control (void **state)
{
  double verify_ms, doubt_ms;
  if (!have_prog (altpathd_bin ()))
    skip ();
  if (!attach_loop ()) {
    note ("no loop device (needs root and losetup): skipped");
    skip ();
  }
  unsigned stale = fence_run (false, false, &verify_ms, &doubt_ms);
  /* Without the deadline the burst the frozen server holds in its socket
   * lands after generation 2: the test above would see it. */
  assert_true (stale > 0);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown (f, setup, teardown)
    T (test_open_errors),
    T (test_negotiation),
    T (test_altpathd_unix),
    T (test_altpathd_tcp),
    T (test_altpathd_tls),
    T (test_nbdkit),
    T (test_qemu_nbd),
    T (test_nbd_server),
    T (test_reconnect),
    T (test_fence),
    T (test_fence_tls),
    T (test_fence_control),
#undef T
  };
  signal (SIGPIPE, SIG_IGN);
  ap_log_quiet = true;
  /* By hand: TEST_SERVED_ONLY=test_fence* runs only those cases,
   * TEST_SERVED_KEEP=1 keeps each case's directory (logs, image). */
  if (getenv ("TEST_SERVED_ONLY"))
    cmocka_set_test_filter (getenv ("TEST_SERVED_ONLY"));
  return cmocka_run_group_tests (tests, NULL, NULL);
}
