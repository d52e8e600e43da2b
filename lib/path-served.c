/* path-served.c — the "served" path kind: a peer does the I/O for us, over
 * NBD, through libnbd's asynchronous API.
 *
 * A served path holds one connection (libnbd handle) to one export, or
 * several when the server offers multi-conn (requests are spread round
 * robin).  One I/O thread per path drives them all:
 *
 *   any thread ── submit() ─┐ lock: pick a connection, put the request on
 *                           │ `inflight`, nbd_aio_pread/pwrite/...()
 *   the unit ──── fence() ──┤ lock: close every connection abortively,
 *                           │ sort what was in flight (below)
 *                           ▼
 *   I/O thread  poll(eventfd, each handle's fd in the direction libnbd
 *               wants; timeout: the next timer)
 *     lock  ─► nbd_aio_notify_read/write ─► completion callbacks: the
 *              request moves from `inflight` to `done`
 *           ─► a connection died: sorted like a fence, closed when seen
 *           ─► writes in doubt whose time came: to `done`, -ECANCELED
 *           ─► reconnect when due (50 ms doubling to 2 s), connecting in
 *              the same poll loop, so timers never wait for a connect
 *     unlock ─► ap_path_done() for everything in `done`
 *
 * Why completions are handed to the I/O thread: libnbd calls completion
 * callbacks with the handle's lock held, and a callback must not call
 * into the same handle; ap_path_done() goes to the unit, which may submit
 * the next request on this very path from inside it.  So a callback only
 * moves its request to `done`, and the I/O thread calls ap_path_done(),
 * exactly once per request, with no lock held.
 *
 * Writes in doubt (DESIGN.md invariant 3).  When connections close —
 * fenced by the unit, or lost by themselves — with requests in flight:
 *   - reads end at once (-ECANCELED after a fence, -ENOTCONN after a
 *     loss): once libnbd's handle is closed nothing writes into their
 *     buffers, and a read cannot harm the disk;
 *   - writes, flushes, trims and zeroes go to `doubt` and end with
 *     -ECANCELED only when the server can no longer execute them, at
 *     close time + wait, where wait is, for the connection it was sent on:
 *       the server agreed "altpath:deadline-ms=N"  N + N/10 + 20 ms
 *       a plain NBD server                          fence_wait_ms (a guess)
 *     docs/served.md has the arithmetic.  Every socket has SO_LINGER
 *     {1, 0} from the moment its connection is up, so any close of it —
 *     ours, or libnbd's own when the connection dies — sends RST: the
 *     kernel throws away what it had not sent and retransmits nothing, so
 *     nothing reaches the server after the close that was not already on
 *     the wire.  The close time is taken after the close; a connection
 *     that dropped by itself counts as closed when the loss was seen.
 * While no connection is up, submit refuses with -ENOTCONN: a path fault,
 * so the unit fails over at once and its checker probes the path until
 * the background reconnection succeeds.
 *
 * Per-request state in io->internal (no allocation per request):
 *   pnext/pprev  the list it is on: inflight, reissue, doubt or done
 *   cookie       the connection it was sent on (a pointer, 8-aligned);
 *                in its low bits FUA_EMULATED for a FUA write the server
 *                cannot do natively (a write, then a flush) and
 *                STAGE_FLUSH once that flush is out; in doubt: the close
 *                time
 *   due_ns       in flight: the wait its connection needs (above);
 *                in doubt: when it ends
 *   err          in done: its result
 *
 * Lock: s->lock protects everything in struct served_path and is held
 * across every call into libnbd, so the callbacks (which run inside those
 * calls) need no lock of their own.  Order: s->lock, then libnbd's handle
 * lock (taken inside libnbd).  Never held across ap_path_done(), poll() or
 * any wait.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <libnbd.h>

#include "internal.h"

#define MAX_CONNS 16u
#define DEFAULT_CONNS 2u
#define DEFAULT_CONNECT_TIMEOUT_MS 5000u
#define DEFAULT_DEADLINE_MS 2000u
#define DEFAULT_FENCE_WAIT_MS 10000u
#define DEADLINE_MIN_MS 100u            /* what altpathd accepts */
#define DEADLINE_MAX_MS 600000u
/* Requests in flight per connection at most (the unit keeps the rest in
 * its backlog, in order). */
#define INFLIGHT_PER_CONN 64u
#define BACKOFF_MIN_MS 50u
#define BACKOFF_MAX_MS 2000u
/* libnbd refuses reads and writes over 64 MiB; NBD lengths are 32-bit. */
#define LIBNBD_MAX_RW (64u * 1024 * 1024)
#define IO_STACK (256 * 1024)
/* close(): how long a polite NBD_CMD_DISC may take. */
#define DISCONNECT_MS 1000u

/* Flags in the low bits of io->internal.cookie (a struct conn pointer). */
#define STAGE_FLUSH ((uint64_t) 1)      /* emulated FUA: the flush is out */
#define FUA_EMULATED ((uint64_t) 2)     /* emulated FUA: write, then flush */
#define COOKIE_FLAGS (STAGE_FLUSH | FUA_EMULATED)

/* Test knob (docs/served.md): do not propose the deadline, so that the
 * path fences like one to a plain NBD server.  Lets a test show that
 * without the deadline a stale write does land. */
#define ENV_NO_DEADLINE "ALTPATH_SERVED_NO_DEADLINE"

enum conn_state {
  CONN_DOWN,                    /* no handle */
  CONN_CONNECTING,              /* handshake under way */
  CONN_UP,                      /* takes requests */
};

struct served_path;

struct conn {
  struct served_path *s;
  unsigned idx;
  enum conn_state state;
  struct nbd_handle *h;         /* NULL when down */
  unsigned gen;                 /* bumped at every close: a poll result
                                   for an older handle is ignored */
  uint64_t connect_by_ns;       /* CONNECTING: give up then */
  bool deadline_agreed;         /* UP: the server agreed the context */
  uint64_t wait_ns;             /* UP: what a write in doubt sent on it
                                   waits after the close */
};

struct served_path {
  struct ap_path base;          /* first: container_of() from ops */

  /* Fixed at open. */
  char *uri;
  char *psk_file, *username, *cert_dir;
  unsigned want_conns;          /* asked for (multi-conn permitting) */
  unsigned connect_timeout_ms;
  unsigned deadline_ms;         /* proposed; 0: not proposed (test knob) */
  unsigned fence_wait_ms;
  char ctx[64];                 /* "altpath:deadline-ms=N" */
  int efd;                      /* eventfd: wakes the I/O thread */
  pthread_t thread;
  bool thread_started;

  pthread_mutex_t lock;         /* everything below; see the top */
  pthread_cond_t changed;       /* open() waits for the first connect */
  struct conn conns[MAX_CONNS];
  unsigned nconns;              /* in use: want_conns with multi-conn,
                                   else 1 */
  unsigned rr;                  /* round robin */
  bool connected;               /* connection 0 is up */
  bool opening;                 /* open() waits: do not retry */
  bool open_failed;
  bool stop;
  unsigned backoff_ms;
  uint64_t next_attempt_ns;     /* reconnect then (when down) */
  char last_error[256];

  /* What the server said on connection 0 (checked on reconnects). */
  bool can_flush, can_fua, can_trim, can_zero, read_only;
  uint64_t max_rw;              /* longest read or write we send */

  /* Requests, each on one list (io->internal.pnext/pprev). */
  struct ap_plist inflight;     /* libnbd has a command for each */
  struct ap_plist reissue;      /* FUA emulation: written, flush next */
  struct ap_plist doubt;        /* sorted by due_ns */
  struct ap_plist done;         /* for the I/O thread to complete */
  unsigned outstanding;         /* inflight + reissue */

  /* Counters (ap_served_get_state). */
  uint64_t connects, losses, fences, last_doubt_ns;
};

static int served_submit (struct ap_path *p, struct ap_io *io);
static void served_fence (struct ap_path *p);
static void served_close (struct ap_path *p);

static const struct ap_path_ops served_ops = {
  .kind_name = "served",
  .submit = served_submit,
  .fence = served_fence,
  .close = served_close,
};

/* ----------------------------------------------------------- helpers */

static void
wake (struct served_path *s)
{
  uint64_t one = 1;
  ssize_t r;
  do
    r = write (s->efd, &one, sizeof one);
  while (r < 0 && errno == EINTR);
  /* EAGAIN: the counter is full, so the thread is woken anyway. */
}

static struct conn *
conn_of (const struct ap_io *io)
{
  return (struct conn *) (uintptr_t) (io->internal.cookie & ~COOKIE_FLAGS);
}

static bool
is_write_class (const struct ap_io *io)
{
  return io->op != AP_OP_READ;
}

/* libnbd's last error of this thread, after what, into buf. */
static void
format_nbd_error (char *buf, size_t len, const char *what)
{
  const char *e = nbd_get_error ();
  snprintf (buf, len, "%s: %s", what,
            e && *e ? e : strerror (nbd_get_errno () ? nbd_get_errno ()
                                    : EIO));
}

/* The same as the path's last error.  Lock held. */
static void
note_nbd_error (struct served_path *s, const char *what)
{
  format_nbd_error (s->last_error, sizeof s->last_error, what);
}

/* Abortive close from now on: close() sends RST and discards what the
 * kernel has not sent (see the top). */
static void
set_linger_abort (struct nbd_handle *h)
{
  int fd = nbd_aio_get_fd (h);
  struct linger l = { .l_onoff = 1, .l_linger = 0 };
  if (fd >= 0)
    setsockopt (fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

/* Close a connection's handle, whatever its state.  Lock held.  The
 * callbacks of requests still in libnbd are not called by nbd_close():
 * those requests stay on our lists and are sorted by the caller. */
static void
conn_close_locked (struct conn *c)
{
  if (c->h) {
    nbd_close (c->h);
    c->h = NULL;
  }
  c->state = CONN_DOWN;
  c->deadline_agreed = false;
  c->gen++;
}

/* ------------------------------------------------ completions (libnbd) */

/* Completion callback: runs inside a libnbd call made with s->lock held
 * (the I/O thread's notify, a submitter's nbd_aio_*, or a connect), so
 * it may touch the lists.  It must not call libnbd. */
static int
on_complete (void *user_data, int *error)
{
  struct ap_io *io = user_data;
  struct conn *c = conn_of (io);
  struct served_path *s = c->s;
  int e = *error;

  if (e == ENOTCONN) {
    /* libnbd aborts what is in flight when the connection dies, with
     * ENOTCONN, which no server reply maps to: the request was not
     * answered and is in doubt.  It stays on `inflight`; the code that
     * sees the dead handle sorts it (lose_all_locked). */
    return 1;
  }
  if (e == 0 && (io->internal.cookie & FUA_EMULATED)
      && !(io->internal.cookie & STAGE_FLUSH)) {
    /* The write of an emulated FUA write is done: the I/O thread sends
     * the flush (not from here: we are inside libnbd). */
    ap_plist_remove (&s->inflight, io);
    ap_plist_append (&s->reissue, io);
    return 1;
  }
  ap_plist_remove (&s->inflight, io);
  s->outstanding--;
  io->internal.err = -e;
  ap_plist_append (&s->done, io);
  return 1;
}

/* Send io on connection c.  Lock held.  Returns 0 (io is on inflight, a
 * completion will come) or a negative errno (io is on no list). */
static int
issue_locked (struct served_path *s, struct conn *c, struct ap_io *io,
              bool flush_stage)
{
  nbd_completion_callback cb = { .callback = on_complete, .user_data = io };
  uint32_t f = 0;
  int64_t r;

  if (flush_stage)
    io->internal.cookie |= STAGE_FLUSH;
  else {
    bool emulate = (io->flags & AP_IO_FUA) && !s->can_fua;
    io->internal.cookie = (uint64_t) (uintptr_t) c
      | (emulate ? FUA_EMULATED : 0);
  }
  io->internal.due_ns = c->wait_ns;
  ap_plist_append (&s->inflight, io);
  if (flush_stage)
    r = nbd_aio_flush (c->h, cb, 0);
  else {
    if ((io->flags & AP_IO_FUA) && s->can_fua)
      f |= LIBNBD_CMD_FLAG_FUA;
    switch (io->op) {
    case AP_OP_READ:
      r = nbd_aio_pread (c->h, io->buf, io->length, io->offset, cb, 0);
      break;
    case AP_OP_WRITE:
      r = nbd_aio_pwrite (c->h, io->buf, io->length, io->offset, cb, f);
      break;
    case AP_OP_FLUSH:
      r = nbd_aio_flush (c->h, cb, 0);
      break;
    case AP_OP_TRIM:
      r = nbd_aio_trim (c->h, io->length, io->offset, cb, 0);
      break;
    case AP_OP_WRITE_ZEROES:
      if (io->flags & AP_IO_NO_HOLE)
        f |= LIBNBD_CMD_FLAG_NO_HOLE;
      r = nbd_aio_zero (c->h, io->length, io->offset, cb, f);
      break;
    default:
      r = -1;
      break;
    }
  }
  if (r < 0) {
    /* Not queued: libnbd did not and will not call the callback. */
    int e = nbd_get_errno ();
    ap_plist_remove (&s->inflight, io);
    if (nbd_aio_is_dead (c->h) || nbd_aio_is_closed (c->h) || e == 0) {
      e = ENOTCONN;
      wake (s);                 /* to sort what the dead handle had */
    }
    return -e;
  }
  /* Queued.  If libnbd could not write all of it now (a full socket
   * buffer), the I/O thread must poll for POLLOUT; if the handle died
   * meanwhile (the callback then saw ENOTCONN), it must sort it. */
  if (nbd_aio_is_dead (c->h)) {
    note_nbd_error (s, "notify (sending)");
    wake (s);
  }
  else if (nbd_aio_get_direction (c->h) & LIBNBD_AIO_DIRECTION_WRITE)
    wake (s);
  return 0;
}

/* ------------------------------------------------------------ closing */

/* Every connection has closed at close_ns (or was found dead by then):
 * end the reads, put the writes in doubt.  Lock held. */
static void
sort_inflight_locked (struct served_path *s, uint64_t close_ns, int read_err)
{
  struct ap_io *io;

  while ((io = ap_plist_pop (&s->inflight))) {
    s->outstanding--;
    if (!is_write_class (io)) {
      io->internal.err = read_err;
      ap_plist_append (&s->done, io);
    }
    else {
      /* due_ns held the wait of its connection. */
      io->internal.due_ns = close_ns + io->internal.due_ns;
      io->internal.cookie = close_ns; /* for last_doubt_ns */
      ap_plist_insert_by_due (&s->doubt, io);
    }
  }
  /* Emulated FUA writes between their two stages: the server answered the
   * write, so it is not in doubt, but its flush was never sent. */
  while ((io = ap_plist_pop (&s->reissue))) {
    s->outstanding--;
    io->internal.err = read_err;
    ap_plist_append (&s->done, io);
  }
}

static void
schedule_reconnect_locked (struct served_path *s, uint64_t now)
{
  s->next_attempt_ns = now + AP_MS (s->backoff_ms);
}

static void
backoff_grow_locked (struct served_path *s)
{
  s->backoff_ms *= 2;
  if (s->backoff_ms > BACKOFF_MAX_MS)
    s->backoff_ms = BACKOFF_MAX_MS;
}

/* Close every connection (read_err for the reads in flight) and note the
 * close time after the last close.  Lock held. */
static void
close_all_locked (struct served_path *s, int read_err)
{
  /* A connection being started (CONNECTING without a handle yet, see
   * conn_start_locked) is closed too: its start then gives up. */
  for (unsigned i = 0; i < MAX_CONNS; i++)
    if (s->conns[i].h || s->conns[i].state != CONN_DOWN)
      conn_close_locked (&s->conns[i]);
  s->connected = false;
  sort_inflight_locked (s, ap_now_ns (), read_err);
}

/* A connection that was up died by itself.  Lock held. */
static void
lose_all_locked (struct served_path *s, struct conn *dead)
{
  unsigned doubt_before = s->doubt.count;

  s->losses++;
  close_all_locked (s, -ENOTCONN);
  ap_warn ("%s: connection %u to %s lost (%s); reconnecting in the "
           "background%s", s->base.info.name, dead->idx, s->uri,
           s->last_error,
           s->doubt.count > doubt_before
           ? "; the writes it had in flight are in doubt until the server "
             "can no longer execute them" : "");
  s->backoff_ms = BACKOFF_MIN_MS;
  schedule_reconnect_locked (s, ap_now_ns ());
}

/* ---------------------------------------------------------- connecting */

/* A new handle, set up to connect (TLS, the deadline context).  Reads
 * only what is fixed at open, so it needs no lock; errors go to err. */
static struct nbd_handle *
new_handle (struct served_path *s, char *err, size_t errlen)
{
  struct nbd_handle *h = nbd_create ();

  if (!h) {
    format_nbd_error (err, errlen, "nbd_create");
    return NULL;
  }
  nbd_set_handle_name (h, "altpath-served");
  /* The URI comes from our configuration or registry, not from a peer:
   * let it name a PSK file or certificate directory. */
  nbd_set_uri_allow_local_file (h, true);
  if ((s->psk_file || s->cert_dir)
      && nbd_set_tls (h, LIBNBD_TLS_REQUIRE) < 0)
    goto err;
  if (s->psk_file && nbd_set_tls_psk_file (h, s->psk_file) < 0)
    goto err;
  if (s->cert_dir && nbd_set_tls_certificates (h, s->cert_dir) < 0)
    goto err;
  if (s->username && nbd_set_tls_username (h, s->username) < 0)
    goto err;
  /* Ask for the request deadline (docs/served.md).  Servers that do not
   * know the namespace ignore it (NBD spec), and libnbd then reports it
   * as not agreed. */
  if (s->deadline_ms && nbd_add_meta_context (h, s->ctx) < 0)
    goto err;
  return h;

 err:
  format_nbd_error (err, errlen, "setting up the connection");
  nbd_close (h);
  return NULL;
}

/* Start connecting c.  Lock held on entry and on return, but dropped
 * around nbd_aio_connect_uri, which resolves host names (getaddrinfo may
 * take seconds): submitters and fence() never wait for that.  The slot is
 * reserved meanwhile (CONNECTING, no handle); a fence or close that
 * closes it makes the start give up.  false: failed, or given up. */
static bool
conn_start_locked (struct served_path *s, struct conn *c)
{
  unsigned gen = c->gen;
  char err[sizeof s->last_error] = "";
  struct nbd_handle *h;
  bool ok;

  c->state = CONN_CONNECTING;
  pthread_mutex_unlock (&s->lock);
  h = new_handle (s, err, sizeof err);
  ok = h && nbd_aio_connect_uri (h, s->uri) == 0;
  if (h && !ok)
    format_nbd_error (err, sizeof err, "connect");
  pthread_mutex_lock (&s->lock);

  if (c->gen != gen || s->stop) {
    /* Closed meanwhile (fence, loss, close): this start is void. */
    nbd_close (h);
    return false;
  }
  if (!ok) {
    nbd_close (h);
    c->state = CONN_DOWN;
    snprintf (s->last_error, sizeof s->last_error, "%s", err);
    return false;
  }
  c->h = h;
  c->connect_by_ns = ap_now_ns () + AP_MS (s->connect_timeout_ms);
  return true;
}

/* Connection 0 could not be made. */
static void
attempt_failed_locked (struct served_path *s, uint64_t now)
{
  if (s->opening) {
    s->open_failed = true;
    pthread_cond_broadcast (&s->changed);
    return;
  }
  ap_debug (AP_DEBUG_CONTROL, "%s: reconnecting to %s failed: %s; next "
            "try in %u ms", s->base.info.name, s->uri, s->last_error,
            s->backoff_ms);
  schedule_reconnect_locked (s, now);
  backoff_grow_locked (s);
}

/* c finished its handshake.  Lock held.  false: refused (closed). */
static bool
conn_ready_locked (struct served_path *s, struct conn *c)
{
  struct nbd_handle *h = c->h;
  int64_t size = nbd_get_size (h);
  int64_t minbs = nbd_get_block_size (h, LIBNBD_SIZE_MINIMUM);
  int64_t maxbs = nbd_get_block_size (h, LIBNBD_SIZE_MAXIMUM);
  uint32_t bs = minbs > 512 ? (uint32_t) minbs : 512;

  if (size <= 0) {
    snprintf (s->last_error, sizeof s->last_error, "the export reports "
              "size %" PRId64 "; check the export name in the URI", size);
    return false;
  }
  if (s->base.info.size && ((uint64_t) size != s->base.info.size
                             || bs != s->base.info.block_size)) {
    snprintf (s->last_error, sizeof s->last_error, "the export changed: "
              "size %" PRId64 " and block size %" PRIu32 " now, %" PRIu64
              " and %" PRIu32 " before; it is not the same disk", size, bs,
              s->base.info.size, s->base.info.block_size);
    return false;
  }
  set_linger_abort (h);
  c->deadline_agreed = s->deadline_ms
    && nbd_can_meta_context (h, s->ctx) == 1;
  c->wait_ns = c->deadline_agreed
    ? AP_MS (s->deadline_ms + s->deadline_ms / 10 + 20)
    : AP_MS (s->fence_wait_ms);
  c->state = CONN_UP;
  s->connects++;

  if (c->idx == 0) {
    s->last_error[0] = '\0';
    s->can_flush = nbd_can_flush (h) == 1;
    s->can_fua = nbd_can_fua (h) == 1;
    s->can_trim = nbd_can_trim (h) == 1;
    s->can_zero = nbd_can_zero (h) == 1;
    s->read_only = nbd_is_read_only (h) == 1;
    s->max_rw = maxbs > 0 && (uint64_t) maxbs < LIBNBD_MAX_RW
      ? (uint64_t) maxbs : LIBNBD_MAX_RW;
    /* Several connections only where the server says their flushes
     * cover each other's writes (NBD_FLAG_CAN_MULTI_CONN). */
    unsigned n = nbd_can_multi_conn (h) == 1 ? s->want_conns : 1;
    for (unsigned i = n; i < s->nconns; i++)
      if (s->conns[i].h)
        conn_close_locked (&s->conns[i]);
    s->nconns = n;
    s->base.info.size = (uint64_t) size;
    s->base.info.block_size = bs;
    s->connected = true;
    s->backoff_ms = BACKOFF_MIN_MS;
    if (!s->opening)
      ap_info ("%s: connected again to %s", s->base.info.name, s->uri);
  }
  /* Once per connection: which fencing applies to it. */
  if (c->deadline_agreed)
    ap_info ("%s: connection %u: the server agreed to the %u ms request "
             "deadline; a write in doubt on it ends %u ms after the close",
             s->base.info.name, c->idx, s->deadline_ms,
             (unsigned) (c->wait_ns / 1000000));
  else
    ap_info ("%s: connection %u: no request deadline agreed (%s); a write "
             "in doubt on it ends fence_wait_ms = %u ms after the close, "
             "a guess about the peer (docs/served.md)", s->base.info.name,
             c->idx, s->deadline_ms ? "a plain NBD server, or a Unix socket"
             : "not proposed", s->fence_wait_ms);
  pthread_cond_broadcast (&s->changed);

  /* The other connections, once the first has said how many may be.
   * Last: starting one drops the lock. */
  for (unsigned i = 1; c->idx == 0 && i < s->nconns; i++) {
    if (!s->connected || s->stop)
      break;                    /* fenced or closed meanwhile */
    if (s->conns[i].state == CONN_DOWN
        && !conn_start_locked (s, &s->conns[i]) && s->connected)
      ap_warn ("%s: extra connection %u to %s: %s; using fewer",
               s->base.info.name, i, s->uri, s->last_error);
  }
  return true;
}

/* Look at c after libnbd ran: it may have finished connecting, or died.
 * Lock held. */
static void
conn_check_locked (struct served_path *s, struct conn *c, uint64_t now)
{
  if (!c->h)
    return;
  bool dead = nbd_aio_is_dead (c->h) || nbd_aio_is_closed (c->h);

  if (c->state == CONN_CONNECTING) {
    if (!dead && nbd_aio_is_connecting (c->h)) {
      if (now < c->connect_by_ns)
        return;
      snprintf (s->last_error, sizeof s->last_error, "no answer within "
                "%u ms", s->connect_timeout_ms);
    }
    else if (!dead && nbd_aio_is_ready (c->h)) {
      if (conn_ready_locked (s, c))
        return;
    }
    else if (dead && !s->last_error[0])
      snprintf (s->last_error, sizeof s->last_error, "the connection "
                "closed during the handshake");
    conn_close_locked (c);
    if (c->idx == 0)
      attempt_failed_locked (s, now);
    else
      ap_warn ("%s: extra connection %u to %s: %s; using fewer",
               s->base.info.name, c->idx, s->uri, s->last_error);
    pthread_cond_broadcast (&s->changed);
    return;
  }
  if (c->state == CONN_UP && dead) {
    /* The I/O thread's notify noted libnbd's reason; a death inside a
     * submitter's call left none here. */
    if (strncmp (s->last_error, "notify", 6) != 0)
      snprintf (s->last_error, sizeof s->last_error, "%s",
                "the connection closed");
    lose_all_locked (s, c);
  }
}

/* ---------------------------------------------------------- I/O thread */

/* Send the flush of emulated FUA writes.  Lock held. */
static void
reissue_locked (struct served_path *s)
{
  struct ap_io *io;

  while ((io = ap_plist_pop (&s->reissue))) {
    struct conn *c = conn_of (io);
    int r = c->state == CONN_UP ? issue_locked (s, c, io, true) : -ENOTCONN;
    if (r < 0) {
      s->outstanding--;
      io->internal.err = r;
      ap_plist_append (&s->done, io);
    }
  }
}

/* Timers: writes in doubt whose time came, reconnection, connect
 * timeouts.  Returns when the thread must look again (UINT64_MAX: no
 * timer).  Lock held. */
static uint64_t
timers_locked (struct served_path *s, uint64_t now)
{
  uint64_t next = UINT64_MAX;
  struct ap_io *io;

  while ((io = s->doubt.head) && io->internal.due_ns <= now) {
    ap_plist_remove (&s->doubt, io);
    s->last_doubt_ns = now - io->internal.cookie;
    io->internal.err = -ECANCELED;
    ap_plist_append (&s->done, io);
  }
  if (io)
    next = io->internal.due_ns;

  if (!s->connected && s->conns[0].state == CONN_DOWN && !s->opening) {
    if (now >= s->next_attempt_ns) {
      s->last_error[0] = '\0';
      if (!conn_start_locked (s, &s->conns[0]) && !s->stop)
        attempt_failed_locked (s, ap_now_ns ());
    }
    if (s->conns[0].state == CONN_DOWN && s->next_attempt_ns < next)
      next = s->next_attempt_ns;
  }
  for (unsigned i = 0; i < MAX_CONNS; i++) {
    struct conn *c = &s->conns[i];
    if (c->state != CONN_CONNECTING)
      continue;
    conn_check_locked (s, c, now);
    if (c->state == CONN_CONNECTING && c->connect_by_ns < next)
      next = c->connect_by_ns;
  }
  return next;
}

static void
deliver (struct served_path *s, struct ap_plist *l)
{
  struct ap_io *io;
  while ((io = ap_plist_pop (l)))
    ap_path_done (&s->base, io, io->internal.err);
}

static void *
io_thread (void *arg)
{
  struct served_path *s = arg;
  struct pollfd pfd[1 + MAX_CONNS];
  unsigned which[MAX_CONNS], gens[MAX_CONNS];

  pthread_mutex_lock (&s->lock);
  while (!s->stop) {
    uint64_t now = ap_now_ns ();
    uint64_t next = timers_locked (s, now);

    if (s->done.count) {
      /* Complete first, with no lock held; then look again. */
      struct ap_plist l = s->done;
      s->done = (struct ap_plist) { 0 };
      pthread_mutex_unlock (&s->lock);
      deliver (s, &l);
      pthread_mutex_lock (&s->lock);
      continue;
    }

    int n = 1;
    pfd[0] = (struct pollfd) { .fd = s->efd, .events = POLLIN };
    for (unsigned i = 0; i < MAX_CONNS; i++) {
      struct conn *c = &s->conns[i];
      if (!c->h)
        continue;
      int fd = nbd_aio_get_fd (c->h);
      unsigned dir = nbd_aio_get_direction (c->h);
      if (fd < 0)
        continue;
      short ev = (short) (((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0)
                          | ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT
                             : 0));
      pfd[n] = (struct pollfd) { .fd = fd, .events = ev };
      which[n - 1] = i;
      gens[n - 1] = c->gen;
      n++;
    }
    int timeout = -1;
    if (next != UINT64_MAX) {
      uint64_t ms = next > now ? (next - now + 999999) / 1000000 : 0;
      timeout = ms > 60000 ? 60000 : (int) ms;
    }
    pthread_mutex_unlock (&s->lock);

    int r = poll (pfd, (nfds_t) n, timeout);

    pthread_mutex_lock (&s->lock);
    if (r < 0)
      continue;                 /* EINTR; signals are blocked anyway */
    if (pfd[0].revents) {
      uint64_t v;
      if (read (s->efd, &v, sizeof v) < 0)
        (void) 0;               /* EAGAIN: someone else drained it */
    }
    now = ap_now_ns ();
    for (int k = 1; k < n; k++) {
      struct conn *c = &s->conns[which[k - 1]];
      short re = pfd[k].revents;
      /* A handle closed and perhaps replaced while we polled: its
       * results belong to the old one. */
      if (!re || !c->h || c->gen != gens[k - 1])
        continue;
      /* One notification per round, as nbd_poll does: the first may
       * change what the handle waits for.  An error or hangup alone goes
       * to the side we waited on, so that libnbd finds it (instead of
       * poll reporting it again and again). */
      int rr;
      if (re & POLLIN)
        rr = nbd_aio_notify_read (c->h);
      else if (re & POLLOUT)
        rr = nbd_aio_notify_write (c->h);
      else if (pfd[k].events & POLLIN)
        rr = nbd_aio_notify_read (c->h);
      else
        rr = nbd_aio_notify_write (c->h);
      if (rr < 0)
        note_nbd_error (s, "notify");
    }
    /* Whatever a submitter or callback did meanwhile, look at every
     * connection: one may have died inside a submitter's nbd_aio_*. */
    for (unsigned i = 0; i < MAX_CONNS; i++)
      conn_check_locked (s, &s->conns[i], now);
    if (s->reissue.count)
      reissue_locked (s);
  }
  pthread_mutex_unlock (&s->lock);
  return NULL;
}

/* ---------------------------------------------------------------- ops */

static int
check_request (struct served_path *s, const struct ap_io *io)
{
  switch (io->op) {
  case AP_OP_READ:
  case AP_OP_WRITE:
    if (io->length == 0 || io->length > s->max_rw)
      return -EINVAL;
    break;
  case AP_OP_FLUSH:
    if (!s->can_flush)
      return -EOPNOTSUPP;
    break;
  case AP_OP_TRIM:
    if (!s->can_trim)
      return -EOPNOTSUPP;
    if (io->length == 0 || io->length > UINT32_MAX)
      return -EINVAL;
    break;
  case AP_OP_WRITE_ZEROES:
    if (!s->can_zero)
      return -EOPNOTSUPP;
    if (io->length == 0 || io->length > UINT32_MAX)
      return -EINVAL;
    break;
  default:
    return -EINVAL;
  }
  if (io->op != AP_OP_READ && s->read_only)
    return -EROFS;
  /* FUA the server cannot do is a write then a flush; without flush
   * either, nothing makes the write durable before we answer. */
  if ((io->flags & AP_IO_FUA) && !s->can_fua && !s->can_flush)
    return -EOPNOTSUPP;
  return 0;
}

static int
served_submit (struct ap_path *p, struct ap_io *io)
{
  struct served_path *s = container_of (p, struct served_path, base);
  int r;

  pthread_mutex_lock (&s->lock);
  if (!s->connected) {
    pthread_mutex_unlock (&s->lock);
    return -ENOTCONN;
  }
  r = check_request (s, io);
  if (r == 0 && s->outstanding >= s->base.info.max_inflight)
    r = -EAGAIN;
  if (r == 0) {
    /* Round robin over the connections that are up; 0 always is. */
    struct conn *c = NULL;
    for (unsigned k = 0; k < s->nconns && !c; k++) {
      struct conn *t = &s->conns[(s->rr + k) % s->nconns];
      if (t->state == CONN_UP)
        c = t;
    }
    s->rr = (s->rr + 1) % s->nconns;
    /* Counted before it is sent: a callback may run inside libnbd. */
    s->outstanding++;
    r = c ? issue_locked (s, c, io, false) : -ENOTCONN;
    if (r < 0)
      s->outstanding--;
  }
  pthread_mutex_unlock (&s->lock);
  return r;
}

static void
served_fence (struct ap_path *p)
{
  struct served_path *s = container_of (p, struct served_path, base);

  pthread_mutex_lock (&s->lock);
  s->fences++;
  ap_debug (AP_DEBUG_CONTROL, "%s: fenced: closing %s abortively with %u "
            "requests in flight", s->base.info.name, s->uri,
            s->outstanding);
  /* Close now, in the caller's thread: the RST leaves at once.  The reads
   * end now; the writes wait in doubt (the I/O thread's timer). */
  close_all_locked (s, -ECANCELED);
  /* Reconnect soon: the checker probes this path to bring it back. */
  s->backoff_ms = BACKOFF_MIN_MS;
  schedule_reconnect_locked (s, ap_now_ns ());
  pthread_mutex_unlock (&s->lock);
  wake (s);
}

/* Say goodbye on an idle connection (NBD_CMD_DISC), briefly. */
static void
disconnect_politely (struct nbd_handle *h)
{
  struct linger l = { .l_onoff = 0, .l_linger = 0 };
  int fd = nbd_aio_get_fd (h);
  uint64_t until = ap_now_ns () + AP_MS (DISCONNECT_MS);

  if (fd >= 0)
    setsockopt (fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  if (nbd_aio_disconnect (h, 0) < 0)
    return;
  while (!nbd_aio_is_closed (h) && !nbd_aio_is_dead (h)
         && ap_now_ns () < until) {
    struct pollfd p = { .fd = nbd_aio_get_fd (h) };
    unsigned dir = nbd_aio_get_direction (h);
    if (p.fd < 0)
      break;
    p.events = (short) (((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0)
                        | ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0));
    if (poll (&p, 1, 100) < 0 && errno != EINTR)
      break;
    if (p.revents & (POLLIN | POLLHUP | POLLERR))
      nbd_aio_notify_read (h);
    else if (p.revents & POLLOUT)
      nbd_aio_notify_write (h);
  }
}

static void
free_path (struct served_path *s)
{
  for (unsigned i = 0; i < MAX_CONNS; i++)
    if (s->conns[i].h)
      nbd_close (s->conns[i].h);
  if (s->efd >= 0)
    close (s->efd);
  pthread_mutex_destroy (&s->lock);
  pthread_cond_destroy (&s->changed);
  free (s->uri);
  free (s->psk_file);
  free (s->username);
  free (s->cert_dir);
  free (s);
}

static void
served_close (struct ap_path *p)
{
  struct served_path *s = container_of (p, struct served_path, base);

  if (s->thread_started && pthread_equal (pthread_self (), s->thread)) {
    /* Joining ourselves would hang: a caller bug.  Leak rather than free
     * what the thread is using. */
    ap_error ("%s: path closed from its own completion callback; not "
              "closing it", s->base.info.name);
    return;
  }
  pthread_mutex_lock (&s->lock);
  s->stop = true;
  pthread_mutex_unlock (&s->lock);
  wake (s);
  if (s->thread_started)
    pthread_join (s->thread, NULL);

  if (s->outstanding || s->doubt.count || s->done.count)
    ap_error ("%s: closed with %u requests in flight, %u in doubt and %u "
              "not completed (a bug of the caller); they are dropped",
              s->base.info.name, s->outstanding, s->doubt.count,
              s->done.count);
  for (unsigned i = 0; i < MAX_CONNS; i++) {
    struct conn *c = &s->conns[i];
    if (c->h && c->state == CONN_UP)
      disconnect_politely (c->h);
    if (c->h)
      conn_close_locked (c);
  }
  ap_debug (AP_DEBUG_CONTROL, "%s: closed", s->base.info.name);
  free_path (s);
}

/* ---------------------------------------------------------------- state */

int
ap_served_get_state (struct ap_path *p, struct ap_served_state *st)
{
  memset (st, 0, sizeof *st);
  if (!p || p->ops != &served_ops)
    return ap_set_error (EINVAL, "path %s is not a served path",
                         p ? p->info.name : "(null)");
  struct served_path *s = container_of (p, struct served_path, base);
  pthread_mutex_lock (&s->lock);
  st->connected = s->connected;
  bool all = true;
  for (unsigned i = 0; i < MAX_CONNS; i++)
    if (s->conns[i].state == CONN_UP) {
      st->connections++;
      all = all && s->conns[i].deadline_agreed;
    }
  st->deadline_ms = st->connections && all ? s->deadline_ms : 0;
  st->doubt_wait_ns = s->conns[0].state == CONN_UP ? s->conns[0].wait_ns
    : 0;
  st->in_doubt = s->doubt.count;
  st->connects = s->connects;
  st->losses = s->losses;
  st->fences = s->fences;
  st->last_doubt_ns = s->last_doubt_ns;
  pthread_mutex_unlock (&s->lock);
  return 0;
}

/* ----------------------------------------------------------------- open */

static char *
dup_opt (const char *v, bool *oom)
{
  char *r;
  if (!v || !*v)
    return NULL;
  r = strdup (v);
  if (!r)
    *oom = true;
  return r;
}

/* Wait (lock held) until connection 0 is up and every extra connection
 * has settled, or the first attempt failed, or until. */
static bool
open_wait_locked (struct served_path *s, uint64_t until)
{
  for (;;) {
    bool settled = s->connected;
    for (unsigned i = 1; i < s->nconns && settled; i++)
      if (s->conns[i].state == CONN_CONNECTING)
        settled = false;
    if (settled || s->open_failed)
      return s->connected;
    if (ap_now_ns () >= until)
      return s->connected;
    struct timespec ts = ap_ns_to_timespec (until);
    pthread_cond_timedwait (&s->changed, &s->lock, &ts);
  }
}

struct ap_path *
ap_path_open_served (const struct ap_served_options *opt)
{
  struct served_path *s;
  char name[AP_NAME_MAX];
  pthread_condattr_t ca;
  pthread_attr_t attr;
  sigset_t all, old;
  bool oom = false;
  int r;

  if (!opt || !opt->uri || !*opt->uri) {
    ap_set_error (EINVAL, "served path: no NBD URI given; give one like "
                  "nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH");
    return NULL;
  }
  unsigned deadline = opt->deadline_ms ? opt->deadline_ms
    : DEFAULT_DEADLINE_MS;
  if (deadline < DEADLINE_MIN_MS || deadline > DEADLINE_MAX_MS) {
    ap_set_error (EINVAL, "served path to %s: deadline_ms %u is out of "
                  "range; give %u to %u (or 0 for %u)", opt->uri, deadline,
                  DEADLINE_MIN_MS, DEADLINE_MAX_MS, DEFAULT_DEADLINE_MS);
    return NULL;
  }
  if (opt->connections > MAX_CONNS) {
    ap_set_error (EINVAL, "served path to %s: %u connections asked; give "
                  "at most %u", opt->uri, opt->connections, MAX_CONNS);
    return NULL;
  }

  s = calloc (1, sizeof *s);
  if (!s) {
    ap_set_error (ENOMEM, "served path to %s: out of memory", opt->uri);
    return NULL;
  }
  s->efd = -1;
  pthread_mutex_init (&s->lock, NULL);
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&s->changed, &ca);
  pthread_condattr_destroy (&ca);

  if (opt->name && *opt->name)
    snprintf (name, sizeof name, "%s", opt->name);
  else
    snprintf (name, sizeof name, "served:%s", opt->uri);
  ap_path_init (&s->base, &served_ops, AP_PATH_SERVED, name);

  s->uri = dup_opt (opt->uri, &oom);
  s->psk_file = dup_opt (opt->tls_psk_file, &oom);
  s->username = dup_opt (opt->tls_username, &oom);
  s->cert_dir = dup_opt (opt->tls_cert_dir, &oom);
  if (oom) {
    ap_set_error (ENOMEM, "served path to %s: out of memory", opt->uri);
    free_path (s);
    return NULL;
  }
  s->want_conns = opt->connections ? opt->connections : DEFAULT_CONNS;
  s->nconns = s->want_conns;
  s->connect_timeout_ms = opt->connect_timeout_ms ? opt->connect_timeout_ms
    : DEFAULT_CONNECT_TIMEOUT_MS;
  s->fence_wait_ms = opt->fence_wait_ms ? opt->fence_wait_ms
    : DEFAULT_FENCE_WAIT_MS;
  s->deadline_ms = deadline;
  const char *knob = getenv (ENV_NO_DEADLINE);
  if (knob && *knob && strcmp (knob, "0") != 0) {
    ap_warn ("%s: %s is set: not proposing the request deadline (a test "
             "setting: writes in doubt wait only fence_wait_ms = %u ms)",
             name, ENV_NO_DEADLINE, s->fence_wait_ms);
    s->deadline_ms = 0;
  }
  snprintf (s->ctx, sizeof s->ctx, "altpath:deadline-ms=%u", deadline);
  s->backoff_ms = BACKOFF_MIN_MS;
  for (unsigned i = 0; i < MAX_CONNS; i++) {
    s->conns[i].s = s;
    s->conns[i].idx = i;
  }

  s->efd = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->efd < 0) {
    int e = errno;
    ap_set_error (e, "served path to %s: eventfd: %s; check the process's "
                  "descriptor limit", opt->uri, strerror (e));
    free_path (s);
    return NULL;
  }

  /* Connection 0 now, in the I/O thread's loop; the others follow once
   * it has said whether the server takes several. */
  s->opening = true;
  uint64_t until = ap_now_ns () + AP_MS (s->connect_timeout_ms);
  pthread_mutex_lock (&s->lock);
  bool started = conn_start_locked (s, &s->conns[0]);
  pthread_mutex_unlock (&s->lock);
  if (!started) {
    ap_set_error (ECONNREFUSED, "cannot connect served path %s to %s: %s; "
                  "check the URI", name, opt->uri, s->last_error);
    free_path (s);
    return NULL;
  }

  pthread_attr_init (&attr);
  pthread_attr_setstacksize (&attr, IO_STACK);
  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  r = pthread_create (&s->thread, &attr, io_thread, s);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  pthread_attr_destroy (&attr);
  if (r != 0) {
    ap_set_error (r, "cannot start the I/O thread of served path %s: %s; "
                  "check the process and memory limits", name, strerror (r));
    free_path (s);
    return NULL;
  }
  s->thread_started = true;
  pthread_setname_np (s->thread, "ap-served");

  pthread_mutex_lock (&s->lock);
  bool ok = open_wait_locked (s, until + AP_MS (100));
  char why[sizeof s->last_error];
  snprintf (why, sizeof why, "%s", s->last_error[0] ? s->last_error
            : "no answer in time");
  s->opening = false;
  if (!ok)
    s->stop = true;             /* no reconnecting in the background */
  pthread_mutex_unlock (&s->lock);
  if (!ok) {
    served_close (&s->base);
    ap_set_error (ECONNREFUSED, "cannot connect served path %s to %s "
                  "within %u ms: %s; check that the server runs and exports "
                  "that name (nbdinfo URI), and the TLS settings", name,
                  opt->uri, opt->connect_timeout_ms ? opt->connect_timeout_ms
                  : DEFAULT_CONNECT_TIMEOUT_MS, why);
    return NULL;
  }

  struct ap_path_info *info = &s->base.info;
  snprintf (info->target, sizeof info->target, "%s", opt->uri);
  if (opt->identity)
    snprintf (info->identity, sizeof info->identity, "%s", opt->identity);
  info->read_only = s->read_only;
  info->caps = (s->can_flush ? AP_CAN_FLUSH : 0)
    | (s->can_fua || s->can_flush ? AP_CAN_FUA : 0)
    | (s->can_trim ? AP_CAN_TRIM : 0) | (s->can_zero ? AP_CAN_ZERO : 0);
  /* Nothing is cached on this side (libnbd keeps no cache), and altpathd
   * serves with O_DIRECT, so an acknowledged write is on its disk
   * (invariant 4).  True only because of the server: a plain NBD server
   * may keep writes in its page cache until a FLUSH, which the unit
   * sends (FLUSH and FUA reach the disk whoever serves). */
  info->o_direct = true;
  info->max_inflight = INFLIGHT_PER_CONN * s->nconns;
  ap_debug (AP_DEBUG_CONTROL, "%s: opened %s: size %" PRIu64 ", block size "
            "%" PRIu32 ", %u connection(s), caps 0x%x%s", info->name,
            s->uri, info->size, info->block_size, s->nconns, info->caps,
            info->read_only ? ", read-only" : "");
  return &s->base;
}
