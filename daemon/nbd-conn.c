/* nbd-conn.c — one NBD client: the handshake, then transmission.
 *
 * Threads of one connection:
 *
 *   connection thread (the reader)       unit's library thread(s)
 *   ──────────────────────────────       ────────────────────────
 *   handshake (nbd-handshake.c parses)
 *   loop: read a request header,          slot_done(): note the result,
 *     take a free slot (its buffer),  ┌──   put the slot on the reply
 *     read the WRITE payload into it, │     queue, wake the writer
 *     ap_unit_submit() ───────────────┘     (never blocks: the queue is
 *                                            a list through the slots)
 *   writer thread
 *   ─────────────
 *   take the whole reply queue, build headers, one writev (or corked TLS
 *   records) for the batch, put the slots back on the free list.
 *
 * A slot goes FREE -> reader fills it -> unit (or straight to the queue
 * with an error) -> reply queue -> writer -> FREE.  `busy` counts slots
 * that are not free; the connection ends once the reader has stopped and
 * busy is 0, i.e. every request taken has been completed by the unit and
 * its reply sent (or dropped, when the socket is dead).
 *
 * Why no deadlock when a client stops reading replies: completions only
 * append to a list; the writer alone blocks on the socket; the reader
 * blocks only when all slots are taken, and every taken slot comes back
 * once the writer can send again (or the socket dies, which frees them
 * all).  FLUSH covers every write replied to on any connection, because a
 * write is replied to only after the unit completed it.
 *
 * Lock order: conn->lock is a leaf: nothing else is locked while it is
 * held (in particular no unit call is made under it).
 *
 * Request deadline (docs/served.md, DESIGN.md invariant 3).  A client
 * that selected the metadata context "altpath:deadline-ms=N" is promised
 * that no request of its is started on the disk later than N ms after it
 * reached this host.  "Reached" is taken from the kernel, not from when
 * the reader got round to it: TCP sockets get SO_TIMESTAMPNS, every read
 * (recvmsg, or the GnuTLS pull function for TLS) notes the stamp of the
 * newest segment it took, and a request gets deadline_ns = that arrival
 * (converted to CLOCK_MONOTONIC) + N, which the unit enforces: it never
 * sends a request to its path after the deadline and completes it with
 * -ETIMEDOUT instead, answered as NBD_EIO with a message.  Requests that
 * sat in the socket buffer while the daemon was frozen (SIGSTOP) are
 * refused so.  Unix sockets have no arrival stamps: the context is not
 * offered on them.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "altpath.h"
#include "clock.h"
#include "log.h"
#include "nbd-bufpool.h"
#include "nbd-handshake.h"
#include "nbd-internal.h"
#include "nbd-proto.h"
#include "nbd-request.h"
#include "nbd-tls.h"

#define RBUF_SIZE       (128u * 1024)
#define BATCH_SLOTS     64      /* replies per writev at most */

#ifndef container_of
#define container_of(ptr, type, member) \
  ((type *) ((char *) (ptr) - offsetof (type, member)))
#endif

struct slot {
  struct ap_io io;              /* submitted to the unit */
  struct nbd_conn *conn;
  struct slot *next;            /* free list or reply queue */
  uint64_t cookie;
  uint64_t offset;
  uint32_t length;
  uint16_t type, flags;
  uint32_t error;               /* NBD_E* of the reply; 0: success */
  const char *msg;              /* structured error message, or NULL */
  bool flush_after;             /* TRIM+FUA: a FLUSH before the reply */
  uint64_t deadline_ns;         /* CLOCK_MONOTONIC; 0: none (see top) */
  void *buf;                    /* READ/WRITE data, lent by the daemon's
                                   buffer pool (nbd-bufpool.c) while the
                                   slot is taken; NULL otherwise */
  size_t cap;                   /* bytes at buf, to give back */
  uint8_t hdr[64];              /* reply header(s), built by the writer */
};

struct nbd_conn {
  struct nbd_server *srv;
  void *link;                   /* the server's entry for us */
  int fd;
  int stop_fd;                  /* readable once the server stops */
  enum tls_mode tls_mode;       /* the listener's */
  struct nbd_tls_session *tls;  /* NULL: plaintext */
  char addr[128];               /* the client, for messages */
  char peer[NBD_TLS_PEER_MAX];  /* authenticated name; "" if none */
  pthread_t thread, writer;
  bool started, writer_started;

  /* Receive buffer (reader thread only). */
  uint8_t *rbuf;
  size_t rpos, rlen;
  size_t rbuf_want;             /* how much a refill asks for: RBUF_SIZE,
                                   or one header after a large write */

  /* Arrival times (reader thread only; see the top of the file). */
  bool stamps;                  /* SO_TIMESTAMPNS is on (TCP) */
  bool have_stamp;              /* stamp_real holds one */
  bool warned_stamp;            /* "no stamp" said once */
  struct timespec stamp_real;   /* newest arrival stamp read (REALTIME) */
  uint64_t stamp_read_ns;       /* CLOCK_MONOTONIC when it was read */
  uint32_t deadline_ms;         /* agreed request deadline; 0: none */

  /* Handshake (reader thread only). */
  struct nbd_hs hs;

  /* Transmission; fixed once it starts. */
  struct export *export;        /* reference held */
  struct ap_unit *unit;
  struct nbd_req_limits limits;
  struct slot *slots;
  struct nbd_bufuser bufs;      /* our account with the buffer pool */

  /* Protected by lock. */
  pthread_mutex_t lock;
  pthread_cond_t slot_cond;     /* a slot came back (reader waits) */
  pthread_cond_t reply_cond;    /* a reply is queued, or the reader is
                                   done (writer waits) */
  struct slot *free_list;
  struct slot *q_head, *q_tail; /* replies to send, in completion order */
  unsigned busy;                /* slots not on the free list */
  bool sending;                 /* a thread is writing replies */
  struct slot *handoff;         /* replies (a list through next) sent in
                                   part without waiting, for the writer
                                   to finish */
  size_t handoff_sent;          /* bytes of them already sent */
  bool reader_done;             /* no further request will be taken */
  bool dead;                    /* the socket failed: drop replies */
  unsigned deferrals;           /* completion threads that will look at
                                   our queue at the end of their run
                                   (flush_deferred); the connection
                                   stays until none does */
};

/* ------------------------------------------------------------ errors */

/* A host errno (positive) as an NBD error value. */
static uint32_t
nbd_errno (int e)
{
  switch (e) {
  case EPERM: case EACCES: case EROFS:
    return NBD_EPERM;
  case ENOMEM:
    return NBD_ENOMEM;
  case EINVAL:
    return NBD_EINVAL;
  case ENOSPC: case EDQUOT: case EFBIG:
    return NBD_ENOSPC;
  case EOVERFLOW:
    return NBD_EOVERFLOW;
  case EOPNOTSUPP:
    return NBD_ENOTSUP;
  case ESHUTDOWN:
    return NBD_ESHUTDOWN;
  case EIO:
  default:
    return NBD_EIO;
  }
}

/* --------------------------------------------------------- socket I/O */

/* Up to n bytes from the socket itself (plaintext, or TLS records for
 * GnuTLS), noting the kernel's arrival stamp when timestamps are on: the
 * stamp of the newest segment the read took (tcp_recvmsg reports that
 * one), which is never earlier than the arrival of any byte read, and is
 * the arrival of a byte the client sent. */
static ssize_t
sock_recv (struct nbd_conn *c, void *buf, size_t n, int flags)
{
  union {
    char buf[CMSG_SPACE (sizeof (struct timespec))];
    struct cmsghdr align;
  } ctl;
  struct iovec iov = { .iov_base = buf, .iov_len = n };
  struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
  ssize_t r;

  for (;;) {
    if (c->stamps) {
      m.msg_control = ctl.buf;
      m.msg_controllen = sizeof ctl.buf;
      r = recvmsg (c->fd, &m, flags);
    }
    else
      r = recv (c->fd, buf, n, flags);
    if (r >= 0 || errno != EINTR)
      break;
  }
  if (r > 0 && c->stamps) {
    for (struct cmsghdr *cm = CMSG_FIRSTHDR (&m); cm;
         cm = CMSG_NXTHDR (&m, cm))
      if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS
          && cm->cmsg_len >= CMSG_LEN (sizeof (struct timespec))) {
        memcpy (&c->stamp_real, CMSG_DATA (cm), sizeof c->stamp_real);
        c->stamp_read_ns = ap_now_ns ();
        c->have_stamp = true;
      }
  }
  return r;
}

/* GnuTLS's way in (nbd_tls_set_pull). */
static ssize_t
tls_pull (void *opaque, void *buf, size_t n)
{
  return sock_recv (opaque, buf, n, 0);
}

static int
tls_pull_timeout (void *opaque, unsigned ms)
{
  struct nbd_conn *c = opaque;
  struct pollfd p = { .fd = c->fd, .events = POLLIN };
  int r;
  do
    r = poll (&p, 1, ms > INT32_MAX ? -1 : (int) ms);
  while (r < 0 && errno == EINTR);
  return r;
}

/* Up to n bytes from the client: > 0, 0 at end of stream, -1 error.
 * flags: MSG_WAITALL to wait for all n in one call (plaintext only). */
static ssize_t
raw_recv (struct nbd_conn *c, void *buf, size_t n, int flags)
{
  if (c->tls)
    return nbd_tls_recv (c->tls, buf, n);
  return sock_recv (c, buf, n, flags);
}

/* When the request just read reached this host, on CLOCK_MONOTONIC: the
 * newest kernel stamp read so far (see sock_recv: never earlier than the
 * request's own arrival, and the arrival of something the client sent
 * before it closed), converted from CLOCK_REALTIME with the current
 * offset between the two clocks.  Never later than the moment that stamp
 * was read, which bounds the error a backward step of the wall clock can
 * cause (docs/served.md). */
static uint64_t
arrival_ns (struct nbd_conn *c)
{
  struct timespec real;
  uint64_t now = ap_now_ns ();

  if (!c->have_stamp) {
    /* SO_TIMESTAMPNS is on from accept, so every segment of the
     * transmission phase carries a stamp; this would be a kernel that
     * stopped giving them. */
    if (!c->warned_stamp) {
      c->warned_stamp = true;
      ap_warn ("nbd: %s: the kernel gives no arrival time stamps; request "
               "deadlines count from when requests are read, which does "
               "not cover a frozen daemon", c->addr);
    }
    return now;
  }
  clock_gettime (CLOCK_REALTIME, &real);
  int64_t age = ((int64_t) real.tv_sec - (int64_t) c->stamp_real.tv_sec)
    * 1000000000 + (real.tv_nsec - c->stamp_real.tv_nsec);
  if (age < 0)
    age = 0;                    /* the wall clock stepped back */
  uint64_t a = now > (uint64_t) age ? now - (uint64_t) age : 0;
  return a < c->stamp_read_ns ? a : c->stamp_read_ns;
}

/* Exactly n bytes into dst (NULL: read and drop them).  -1 on error or
 * end of stream. */
static int
read_exact (struct nbd_conn *c, void *dst, size_t n)
{
  uint8_t *d = dst;

  while (n > 0) {
    if (c->rpos < c->rlen) {
      size_t k = c->rlen - c->rpos < n ? c->rlen - c->rpos : n;
      if (d) {
        memcpy (d, c->rbuf + c->rpos, k);
        d += k;
      }
      c->rpos += k;
      n -= k;
      continue;
    }
    ssize_t r;
    if (d && n >= RBUF_SIZE / 2) {
      /* Large payloads go straight into their buffer, in one call
       * rather than one per segment that arrived. */
      r = raw_recv (c, d, n, MSG_WAITALL);
      if (r <= 0)
        return -1;
      d += r;
      n -= (size_t) r;
      continue;
    }
    /* A header after a large write: that header only (transmission). */
    size_t want = c->rbuf_want && n <= c->rbuf_want ? c->rbuf_want
      : RBUF_SIZE;
    r = raw_recv (c, c->rbuf, want, 0);
    if (r <= 0)
      return -1;
    c->rpos = 0;
    c->rlen = (size_t) r;
  }
  return 0;
}

/* Wait until the client sent something.  1: data (or end of stream)
 * waiting; 0: the server is stopping; -1: timeout or error. */
static int
wait_input (struct nbd_conn *c, int timeout_ms)
{
  if (c->rpos < c->rlen || (c->tls && nbd_tls_pending (c->tls)))
    return nbd_server_stopping (c->srv) ? 0 : 1;
  for (;;) {
    struct pollfd p[2] = {
      { .fd = c->fd, .events = POLLIN },
      { .fd = c->stop_fd, .events = POLLIN },
    };
    int r = poll (p, 2, timeout_ms);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return -1;
    if (p[1].revents)
      return 0;
    if (r == 0)
      return -1;
    return 1;
  }
}

/* Send every byte of iov (plaintext or TLS).  0, or -1. */
static int
send_iov (struct nbd_conn *c, struct iovec *iov, int n)
{
  if (c->tls)
    return nbd_tls_sendv (c->tls, iov, n);
  while (n > 0) {
    struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t) n };
    ssize_t r = sendmsg (c->fd, &m, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    size_t k = (size_t) r;
    while (n > 0 && k >= iov->iov_len) {
      k -= iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (uint8_t *) iov->iov_base + k;
      iov->iov_len -= k;
    }
  }
  return 0;
}

static int
send_bytes (struct nbd_conn *c, const void *buf, size_t len)
{
  struct iovec iov = { .iov_base = (void *) buf, .iov_len = len };
  return len ? send_iov (c, &iov, 1) : 0;
}

static void
set_rcvtimeo (int fd, unsigned ms)
{
  struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
  setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

/* ---------------------------------------------------------- handshake */

static bool
peer_allowed (const struct export *e, const char *peer)
{
  if (!e->allow)
    return true;
  if (!peer[0])
    return false;
  for (size_t i = 0; i < e->nallow; i++)
    if (e->allow[i] && strcmp (e->allow[i], peer) == 0)
      return true;
  return false;
}

/* Answer one option against a snapshot of the export list.  On GO, takes
 * a reference to the chosen export into c->export. */
static void
answer_option (struct nbd_conn *c, uint32_t option, const uint8_t *data,
               uint32_t len, struct nbd_hs_out *out)
{
  size_t n = 0;
  struct export **ev = nbd_server_exports_get (c->srv, &n);
  struct nbd_hs_export *hx = n ? calloc (n, sizeof *hx) : NULL;

  if (n && !hx) {
    nbd_server_exports_put (ev, n);
    out->len = 0;
    out->next = NBD_HS_CLOSE;
    out->why = "out of memory";
    return;
  }
  for (size_t i = 0; i < n; i++) {
    struct export *e = ev[i];
    hx[i] = (struct nbd_hs_export) {
      .name = e->name,
      .description = e->description,
      .size = ap_unit_size (e->unit),
      .block_size = ap_unit_block_size (e->unit),
      .read_only = e->read_only,
      .restricted = e->allow != NULL,
      .admitted = peer_allowed (e, c->peer),
      .handle = e,
    };
  }
  struct nbd_hs_env env = {
    .exports = hx,
    .nexports = n,
    .tls = c->tls_mode,
    .shutting_down = nbd_server_stopping (c->srv),
  };
  nbd_hs_option (&c->hs, &env, option, data, len, out);
  if (out->next == NBD_HS_GO)
    c->export = export_get (ev[out->export]);
  free (hx);
  nbd_server_exports_put (ev, n);
}

/* The handshake.  Returns the transmission flags sent (c->export set), or
 * -1 to close. */
static int
handshake (struct nbd_conn *c, uint8_t *optbuf)
{
  uint8_t greet[NBD_GREETING_LEN], flags[4], hdr[NBD_OPT_HEADER_LEN];
  struct nbd_hs_out out = { 0 };
  int ret = -1;

  nbd_hs_init (&c->hs);
  c->hs.arrival_stamps = c->stamps;
  nbd_hs_greeting (greet);
  if (send_bytes (c, greet, sizeof greet) < 0)
    return -1;
  if (wait_input (c, NBD_HANDSHAKE_TIMEOUT_MS) <= 0
      || read_exact (c, flags, 4) < 0)
    return -1;
  if (nbd_hs_client_flags (&c->hs, flags) < 0) {
    ap_info ("nbd: %s: unknown client flags 0x%08x: closing", c->addr,
             nbd_get32 (flags));
    return -1;
  }

  for (;;) {
    uint32_t option, len;
    int w = wait_input (c, NBD_HANDSHAKE_TIMEOUT_MS);
    if (w <= 0) {
      if (w < 0)
        ap_debug (AP_DEBUG_CONTROL, "nbd: %s: handshake timed out or "
                  "failed", c->addr);
      break;
    }
    if (read_exact (c, hdr, sizeof hdr) < 0)
      break;
    switch (nbd_hs_opt_header (&c->hs, hdr, &option, &len)) {
    case NBD_HS_HDR_HANGUP:
      ap_info ("nbd: %s: bad option header (option %u, length %u): "
               "closing", c->addr, option, len);
      goto done;
    case NBD_HS_HDR_TOO_BIG:
      if (read_exact (c, NULL, len) < 0)
        goto done;
      nbd_hs_too_big (&c->hs, option, &out);
      break;
    case NBD_HS_HDR_OK:
      if (read_exact (c, optbuf, len) < 0)
        goto done;
      answer_option (c, option, optbuf, len, &out);
      break;
    }
    if (out.oom || send_bytes (c, out.buf, out.len) < 0)
      goto done;
    switch (out.next) {
    case NBD_HS_CONTINUE:
      break;
    case NBD_HS_CLOSE:
      if (option != NBD_OPT_ABORT)
        ap_info ("nbd: %s: %s: closing", c->addr,
                 out.why ? out.why : "handshake ended");
      goto done;
    case NBD_HS_GO:
      ret = out.tflags;
      goto done;
    case NBD_HS_STARTTLS: {
      char err[256];
      if (c->rpos < c->rlen) {
        ap_info ("nbd: %s: data sent before the TLS handshake: closing",
                 c->addr);
        goto done;
      }
      c->tls = nbd_tls_accept (nbd_server_tls_creds (c->srv), c->fd,
                               NBD_HANDSHAKE_TIMEOUT_MS, c->peer,
                               sizeof c->peer, err, sizeof err);
      if (!c->tls) {
        ap_info ("nbd: %s: %s: closing", c->addr, err);
        goto done;
      }
      /* GnuTLS reads the socket through us from now on, so that TLS
       * connections get arrival stamps too. */
      if (c->stamps)
        nbd_tls_set_pull (c->tls, tls_pull, tls_pull_timeout, c);
      nbd_hs_tls_started (&c->hs);
      char desc[128];
      nbd_tls_describe (c->tls, desc, sizeof desc);
      ap_debug (AP_DEBUG_CONTROL, "nbd: %s: TLS up, peer '%s', %s", c->addr,
                c->peer, desc);
      break;
    }
    }
  }
 done:
  nbd_hs_out_free (&out);
  return ret;
}

/* ------------------------------------------------------------- slots */

static void
slot_free_locked (struct nbd_conn *c, struct slot *s)
{
  s->next = c->free_list;
  c->free_list = s;
  c->busy--;
}

/* Give a slot's buffer back to the pool (outside c->lock, which stays a
 * leaf). */
static void
slot_drop_buf (struct nbd_conn *c, struct slot *s)
{
  nbd_bufpool_put (&c->bufs, s->buf, s->cap);
  s->buf = NULL;
  s->cap = 0;
}

/* Give back a slot that never reached the reply queue. */
static void
slot_release (struct nbd_conn *c, struct slot *s)
{
  slot_drop_buf (c, s);
  pthread_mutex_lock (&c->lock);
  slot_free_locked (c, s);
  pthread_cond_signal (&c->reply_cond);
  pthread_mutex_unlock (&c->lock);
}

/* A free slot with a buffer of at least need bytes from the daemon's
 * pool.  Waits while every slot is busy, or while the pool's budget is
 * spent: the socket is then not read, which is the back-pressure on the
 * client.  NULL if the connection died; a slot with cap < need if memory
 * ran out. */
static struct slot *
slot_get (struct nbd_conn *c, size_t need)
{
  struct slot *s;

  pthread_mutex_lock (&c->lock);
  while (!c->free_list && !c->dead)
    pthread_cond_wait (&c->slot_cond, &c->lock);
  if (c->dead) {
    pthread_mutex_unlock (&c->lock);
    return NULL;
  }
  s = c->free_list;
  c->free_list = s->next;
  c->busy++;
  pthread_mutex_unlock (&c->lock);
  if (need == 0)
    return s;

  s->buf = nbd_bufpool_get (&c->bufs, need, &s->cap);
  if (!s->buf) {
    s->cap = 0;
    if (c->bufs.cancelled) {    /* set only by mark_dead */
      slot_release (c, s);
      return NULL;
    }
  }
  return s;
}

static int build_reply (struct nbd_conn *c, struct slot *s,
                        struct iovec *iov);
static void mark_dead (struct nbd_conn *c);

/* A reply sent by the completing thread itself (send_now) rather than
 * by the writer, when nothing else is queued or being sent: the only
 * request in flight, with a reply of at most ALONE_MAX.  At queue depth 1
 * the hand-off to the writer is a wake-up per request, a good part of the
 * request's time.  With more in flight the replies of a completion run go
 * out together at its end (nbd_conn_completion_run_end), or from the
 * writer: sending each 4 KiB reply alone took 30% more system calls per
 * request at QD 32, and sending each 256 KiB one alone (nbdcopy) took
 * 20-40% more server CPU time over TCP (interleaved A/B, 2026-12-07). */
#define ALONE_MAX   (64u * 1024)

static bool
reply_alone (const struct nbd_conn *c, const struct slot *s)
{
  return c->busy == 1
    && (s->type != NBD_CMD_READ || s->error || s->length <= ALONE_MAX);
}

/* Send a list of replies (through next, at most BATCH_SLOTS) from the
 * thread that completed them, without waiting (called with c->sending
 * set by us).  What the socket cannot take at once goes to the writer,
 * which may block. */
static void
send_now (struct nbd_conn *c, struct slot *list)
{
  struct iovec iov[BATCH_SLOTS * 3];
  int n = 0;
  size_t total = 0;
  for (struct slot *s = list; s; s = s->next)
    n += build_reply (c, s, iov + n);
  for (int i = 0; i < n; i++)
    total += iov[i].iov_len;
  struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t) n };
  ssize_t r;
  do
    r = sendmsg (c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (r < 0 && errno == EINTR);

  if ((r >= 0 && (size_t) r < total)
      || (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) {
    pthread_mutex_lock (&c->lock);
    c->handoff = list;
    c->handoff_sent = r > 0 ? (size_t) r : 0;
    pthread_cond_signal (&c->reply_cond);
    pthread_mutex_unlock (&c->lock);
    return;
  }
  if (r < 0)
    mark_dead (c);              /* the replies are dropped, as the writer does */
  for (struct slot *s = list; s; s = s->next)
    slot_drop_buf (c, s);
  pthread_mutex_lock (&c->lock);
  for (struct slot *s = list; s;) {
    struct slot *next = s->next;
    slot_free_locked (c, s);
    s = next;
  }
  c->sending = false;
  pthread_cond_broadcast (&c->slot_cond);
  /* Wake the writer only if it has something to do: a wake-up per
   * request is what this function saves. */
  if (c->q_head || (c->reader_done && c->busy == 0 && c->deferrals == 0))
    pthread_cond_signal (&c->reply_cond);
  pthread_mutex_unlock (&c->lock);
}

/* Connections whose replies this completion thread put off to the end
 * of its run (ap_in_completion_run), and each one's place there. */
#define DEFER_MAX 64
static _Thread_local struct nbd_conn *deferred[DEFER_MAX];
static _Thread_local unsigned ndeferred;

/* Put c on this thread's list (c->lock held); false if it is full. */
static bool
defer (struct nbd_conn *c)
{
  for (unsigned i = 0; i < ndeferred; i++)
    if (deferred[i] == c)
      return true;
  if (ndeferred == DEFER_MAX)
    return false;
  deferred[ndeferred++] = c;
  c->deferrals++;
  return true;
}

/* The end of a completion run (ap_set_completion_hook): send what each
 * connection on the list has queued, in one system call, unless its
 * writer is at it already.  At queue depth 32 a run has about four
 * completions; the writer's wake-up for them is saved. */
void
nbd_conn_completion_run_end (void)
{
  for (unsigned i = 0; i < ndeferred; i++) {
    struct nbd_conn *c = deferred[i];
    pthread_mutex_lock (&c->lock);
    c->deferrals--;
    if (c->q_head && !c->sending && !c->dead) {
      struct slot *list = c->q_head, *last = list;
      for (unsigned k = 1; k < BATCH_SLOTS && last->next; k++)
        last = last->next;
      c->q_head = last->next;
      if (!c->q_head)
        c->q_tail = NULL;
      last->next = NULL;
      c->sending = true;
      pthread_mutex_unlock (&c->lock);
      send_now (c, list);
      continue;
    }
    if (c->q_head || (c->reader_done && c->busy == 0 && c->deferrals == 0))
      pthread_cond_signal (&c->reply_cond);
    pthread_mutex_unlock (&c->lock);
  }
  ndeferred = 0;
}

/* Put a finished slot on the reply queue (any thread; never blocks for
 * long): for the writer, or for the end of the completion run this
 * thread is in; or send its reply at once (see ALONE_MAX). */
static void
queue_reply (struct slot *s)
{
  struct nbd_conn *c = s->conn;

  s->next = NULL;
  pthread_mutex_lock (&c->lock);
  if (!c->q_head && !c->sending && !c->dead && !c->tls
      && reply_alone (c, s)) {
    c->sending = true;
    pthread_mutex_unlock (&c->lock);
    send_now (c, s);
    return;
  }
  if (c->q_tail)
    c->q_tail->next = s;
  else
    c->q_head = s;
  c->q_tail = s;
  /* TLS replies go through the writer only (a blocking GnuTLS send). */
  if (c->tls || c->dead || !ap_in_completion_run () || !defer (c))
    pthread_cond_signal (&c->reply_cond);
  pthread_mutex_unlock (&c->lock);
}

/* The unit is done with a request (library thread). */
static void
slot_done (struct ap_io *io, int err)
{
  struct slot *s = container_of (io, struct slot, io);
  struct nbd_conn *c = s->conn;

  if (err == 0 && s->flush_after) {
    /* TRIM with FUA: persisted before the reply. */
    s->flush_after = false;
    io->op = AP_OP_FLUSH;
    io->flags = 0;
    io->buf = NULL;
    io->offset = 0;
    io->length = 0;
    /* The trim has run; a late flush cannot reorder any write. */
    io->deadline_ns = 0;
    if (ap_unit_submit (c->unit, io) == 0)
      return;
    err = -ap_get_errno ();
  }
  /* A trim is a hint: a disk that cannot discard did nothing wrong. */
  if (s->type == NBD_CMD_TRIM && err == -EOPNOTSUPP)
    err = 0;
  if (err) {
    s->error = nbd_errno (-err);
    s->msg = NULL;
    /* The unit refused it unstarted: its deadline passed (see the top).
     * NBD has no ETIMEDOUT; EIO with a message.  The client treats it as
     * a failure of its path and fails over; the request was not done. */
    if (err == -ETIMEDOUT && s->deadline_ns && ap_now_ns () > s->deadline_ns)
      s->msg = "request deadline passed before the disk could start it; "
        "not executed";
    ap_debug (AP_DEBUG_DATA, "nbd: %s: request type %u at %llu+%u failed: "
              "%s", c->addr, s->type, (unsigned long long) s->offset,
              s->length, strerror (-err));
  }
  queue_reply (s);
}

/* Send a checked request to the unit, or answer it at once. */
static void
dispatch (struct nbd_conn *c, struct slot *s)
{
  struct ap_io *io = &s->io;

  memset (io, 0, offsetof (struct ap_io, internal));
  io->done = slot_done;
  io->opaque = s;
  io->offset = s->offset;
  io->length = s->length;
  io->deadline_ns = s->deadline_ns;

  switch (s->type) {
  case NBD_CMD_READ:
    io->op = AP_OP_READ;
    io->buf = s->buf;
    break;
  case NBD_CMD_WRITE:
    io->op = AP_OP_WRITE;
    io->buf = s->buf;
    if (s->flags & NBD_CMD_FLAG_FUA)
      io->flags |= AP_IO_FUA;
    break;
  case NBD_CMD_FLUSH:
    io->op = AP_OP_FLUSH;
    io->offset = io->length = 0;
    break;
  case NBD_CMD_TRIM:
    io->op = AP_OP_TRIM;
    s->flush_after = (s->flags & NBD_CMD_FLAG_FUA) != 0;
    break;
  case NBD_CMD_WRITE_ZEROES:
    io->op = AP_OP_WRITE_ZEROES;
    if (s->flags & NBD_CMD_FLAG_FUA)
      io->flags |= AP_IO_FUA;
    if (s->flags & NBD_CMD_FLAG_NO_HOLE)
      io->flags |= AP_IO_NO_HOLE;
    break;
  default:
    /* CACHE: the unit has no cache to warm (O_DIRECT); a no-op success.
     * BLOCK_STATUS: everything is data; the writer builds the chunk. */
    queue_reply (s);
    return;
  }
  /* Zero-length requests: the spec leaves them unspecified but asks not
   * to disconnect; the unit refuses them, so succeed without it. */
  if (io->op != AP_OP_FLUSH && s->length == 0) {
    queue_reply (s);
    return;
  }

  /* The unit queues what its path cannot take yet (a full ring is
   * backpressure there, not an error), so this never blocks for long. */
  if (ap_unit_submit (c->unit, io) < 0) {
    int e = ap_get_errno ();
    s->error = nbd_errno (e ? e : EIO);
    s->msg = NULL;
    ap_debug (AP_DEBUG_DATA, "nbd: %s: submit refused: %s", c->addr,
              ap_get_error ());
    queue_reply (s);
  }
}

/* ------------------------------------------------------------ writer */

/* The reply of one slot as up to 3 iovecs; returns how many. */
static int
build_reply (struct nbd_conn *c, struct slot *s, struct iovec *iov)
{
  uint8_t *h = s->hdr;

  if (!c->limits.structured
      || (s->error == 0 && s->type != NBD_CMD_READ
          && s->type != NBD_CMD_BLOCK_STATUS)) {
    nbd_put32 (h, NBD_SIMPLE_REPLY_MAGIC);
    nbd_put32 (h + 4, s->error);
    nbd_put64 (h + 8, s->cookie);
    iov[0] = (struct iovec) { h, NBD_SIMPLE_REPLY_LEN };
    if (s->type == NBD_CMD_READ && s->error == 0 && s->length > 0) {
      iov[1] = (struct iovec) { s->buf, s->length };
      return 2;
    }
    return 1;
  }

  nbd_put32 (h, NBD_STRUCTURED_REPLY_MAGIC);
  nbd_put16 (h + 4, NBD_REPLY_FLAG_DONE);
  nbd_put64 (h + 8, s->cookie);
  if (s->error) {
    const char *msg = s->msg ? s->msg : strerror (s->error);
    size_t ml = strlen (msg);
    if (ml > 200)
      ml = 200;
    nbd_put16 (h + 6, NBD_REPLY_TYPE_ERROR);
    nbd_put32 (h + 16, (uint32_t) (6 + ml));
    nbd_put32 (h + 20, s->error);
    nbd_put16 (h + 24, (uint16_t) ml);
    iov[0] = (struct iovec) { h, 26 };
    if (ml == 0)
      return 1;
    iov[1] = (struct iovec) { (void *) msg, ml };
    return 2;
  }
  if (s->type == NBD_CMD_READ) {
    if (s->length == 0) {
      nbd_put16 (h + 6, NBD_REPLY_TYPE_NONE);
      nbd_put32 (h + 16, 0);
      iov[0] = (struct iovec) { h, NBD_STRUCTURED_REPLY_LEN };
      return 1;
    }
    nbd_put16 (h + 6, NBD_REPLY_TYPE_OFFSET_DATA);
    nbd_put32 (h + 16, 8 + s->length);
    nbd_put64 (h + 20, s->offset);
    iov[0] = (struct iovec) { h, 28 };
    iov[1] = (struct iovec) { s->buf, s->length };
    return 2;
  }
  /* BLOCK_STATUS: one chunk per selected context.  base:allocation: all
   * of it is allocated data (status 0, always true of a disk).  The
   * deadline context has nothing to say about extents: status 0 too.
   * Without REQ_ONE the extent may run past the request, to the end of
   * the export, which saves clients mapping the disk a round trip per
   * request. */
  uint64_t ext = s->length;
  if (!(s->flags & NBD_CMD_FLAG_REQ_ONE)) {
    uint64_t rest = c->limits.size - s->offset;
    uint64_t cap = UINT32_MAX - UINT32_MAX % c->limits.min_block;
    ext = rest < cap ? rest : cap;
  }
  uint32_t ids[2];
  int n = 0;
  if (c->hs.meta_base)
    ids[n++] = NBD_META_BASE_ALLOCATION_ID;
  if (c->deadline_ms)
    ids[n++] = NBD_META_ALTPATH_DEADLINE_ID;
  for (int k = 0; k < n; k++) {
    uint8_t *b = h + 32 * k;
    nbd_put32 (b, NBD_STRUCTURED_REPLY_MAGIC);
    nbd_put16 (b + 4, k == n - 1 ? NBD_REPLY_FLAG_DONE : 0);
    nbd_put16 (b + 6, NBD_REPLY_TYPE_BLOCK_STATUS);
    nbd_put64 (b + 8, s->cookie);
    nbd_put32 (b + 16, 12);
    nbd_put32 (b + 20, ids[k]);
    nbd_put32 (b + 24, (uint32_t) ext);
    nbd_put32 (b + 28, 0);
  }
  iov[0] = (struct iovec) { h, 32 * (size_t) n };
  return 1;
}

static void
mark_dead (struct nbd_conn *c)
{
  pthread_mutex_lock (&c->lock);
  bool was = c->dead;
  c->dead = true;
  pthread_cond_broadcast (&c->slot_cond);
  pthread_mutex_unlock (&c->lock);
  nbd_bufpool_cancel (&c->bufs);
  if (!was) {
    /* Wake the reader if it is blocked in recv. */
    shutdown (c->fd, SHUT_RDWR);
    ap_debug (AP_DEBUG_CONTROL, "nbd: %s: connection lost", c->addr);
  }
}

static void *
writer_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "nbd-reply");
  struct nbd_conn *c = arg;
  struct iovec iov[BATCH_SLOTS * 3];

  for (;;) {
    pthread_mutex_lock (&c->lock);
    /* Not done while a completion thread may still look at the queue
     * (deferrals): the connection is freed after we return. */
    while (!c->handoff && !(c->q_head && !c->sending)
           && !(c->reader_done && c->busy == 0 && c->deferrals == 0))
      pthread_cond_wait (&c->reply_cond, &c->lock);
    if (c->handoff) {
      /* The rest of replies send_now could not send without waiting
       * (c->sending is still set for them). */
      struct slot *list = c->handoff;
      size_t skip = c->handoff_sent;
      c->handoff = NULL;
      bool dead = c->dead;
      pthread_mutex_unlock (&c->lock);
      int n = 0, i = 0;
      for (struct slot *s = list; s; s = s->next)
        n += build_reply (c, s, iov + n);
      while (i < n && skip >= iov[i].iov_len)
        skip -= iov[i++].iov_len;
      if (i < n) {
        iov[i].iov_base = (uint8_t *) iov[i].iov_base + skip;
        iov[i].iov_len -= skip;
      }
      if (!dead && i < n && send_iov (c, iov + i, n - i) < 0)
        mark_dead (c);
      for (struct slot *s = list; s; s = s->next)
        slot_drop_buf (c, s);
      pthread_mutex_lock (&c->lock);
      for (struct slot *s = list; s;) {
        struct slot *next = s->next;
        slot_free_locked (c, s);
        s = next;
      }
      c->sending = false;
      pthread_cond_broadcast (&c->slot_cond);
      pthread_mutex_unlock (&c->lock);
      continue;
    }
    struct slot *batch = c->q_head;
    c->q_head = c->q_tail = NULL;
    bool dead = c->dead;
    c->sending = batch != NULL;
    pthread_mutex_unlock (&c->lock);
    if (!batch)
      break;                    /* reader done and nothing left */

    struct slot *s = batch;
    while (s) {
      struct slot *first = s;
      int n = 0, k = 0;
      for (; s && k < BATCH_SLOTS; s = s->next, k++)
        n += build_reply (c, s, iov + n);
      if (!dead && send_iov (c, iov, n) < 0) {
        dead = true;
        mark_dead (c);
      }
      /* Give the buffers and the slots of this batch back. */
      for (struct slot *f = first; f != s; f = f->next)
        slot_drop_buf (c, f);
      pthread_mutex_lock (&c->lock);
      for (struct slot *f = first; f != s;) {
        struct slot *nx = f->next;
        slot_free_locked (c, f);
        f = nx;
      }
      pthread_cond_broadcast (&c->slot_cond);
      pthread_mutex_unlock (&c->lock);
    }
    pthread_mutex_lock (&c->lock);
    c->sending = false;
    pthread_mutex_unlock (&c->lock);
  }
  return NULL;
}

/* ------------------------------------------------------- transmission */

static int
transmission_setup (struct nbd_conn *c, uint16_t tflags)
{
  uint32_t bs = ap_unit_block_size (c->export->unit);

  c->unit = c->export->unit;
  if (bs > 65536) {
    /* The pool aligns buffers to at most 64 KiB (nbd-bufpool.h). */
    ap_error ("nbd: %s: export '%s' has %" PRIu32 "-byte blocks; at most "
              "65536 can be served", c->addr, c->export->name, bs);
    return -1;
  }
  c->limits = (struct nbd_req_limits) {
    .size = ap_unit_size (c->unit),
    .min_block = nbd_min_block (bs),
    .max_block = NBD_MAX_BLOCK,
    .tflags = tflags,
    .structured = c->hs.structured,
    /* BLOCK_STATUS is allowed once any context is selected (spec); the
     * reply has a chunk for each (build_reply). */
    .meta_base = c->hs.meta_base || c->hs.meta_deadline_ms,
  };
  c->deadline_ms = c->hs.meta_deadline_ms;
  if (c->deadline_ms)
    ap_debug (AP_DEBUG_CONTROL, "nbd: %s: request deadline %" PRIu32 " ms "
              "agreed: requests not started within it of their arrival "
              "are refused", c->addr, c->deadline_ms);
  c->slots = calloc (NBD_CONN_SLOTS, sizeof *c->slots);
  if (!c->slots)
    return -1;
  for (unsigned i = 0; i < NBD_CONN_SLOTS; i++) {
    c->slots[i].conn = c;
    c->slots[i].next = c->free_list;
    c->free_list = &c->slots[i];
  }
  if (pthread_create (&c->writer, NULL, writer_thread, c) != 0)
    return -1;
  c->writer_started = true;
  return 0;
}

static void
transmission (struct nbd_conn *c)
{
  uint8_t hdr[NBD_REQUEST_LEN];

  for (;;) {
    struct nbd_req r;
    struct nbd_req_verdict v;

    if (wait_input (c, -1) <= 0)
      break;
    if (read_exact (c, hdr, sizeof hdr) < 0)
      break;                    /* the client went away */
    if (nbd_req_decode (hdr, &r) < 0) {
      ap_info ("nbd: %s: bad request magic 0x%08x: closing", c->addr,
               nbd_get32 (hdr));
      break;
    }
    nbd_req_check (&r, &c->limits, &v);
    if (v.action == NBD_REQ_DISC)
      break;
    if (v.action == NBD_REQ_HANGUP) {
      ap_info ("nbd: %s: %s: closing", c->addr, v.why);
      break;
    }

    size_t need = v.action == NBD_REQ_DO
      && (r.type == NBD_CMD_READ || r.type == NBD_CMD_WRITE) ? r.length : 0;
    struct slot *s = slot_get (c, need);
    if (!s)
      break;
    s->cookie = r.cookie;
    s->offset = r.offset;
    s->length = r.length;
    s->type = r.type;
    s->flags = r.flags;
    s->error = 0;
    s->msg = NULL;
    s->flush_after = false;
    s->deadline_ns = 0;

    if (v.action == NBD_REQ_DO && s->cap < need) {
      v.action = NBD_REQ_ERROR;
      v.error = NBD_ENOMEM;
      v.why = "out of memory for the request buffer";
    }
    if (v.action == NBD_REQ_ERROR) {
      if (v.payload && read_exact (c, NULL, v.payload) < 0) {
        slot_release (c, s);
        break;
      }
      s->error = v.error;
      s->msg = v.why;
      queue_reply (s);
      continue;
    }
    if (v.payload && read_exact (c, s->buf, v.payload) < 0) {
      slot_release (c, s);
      break;
    }
    /* After a large write, read the next header alone: a bulk refill
     * would take in part of the next payload too, to be copied once
     * more out of rbuf (up to half of every 256 KiB write nbdcopy
     * sends).  Anything else: refill in bulk, many headers per recv. */
    c->rbuf_want = v.payload >= RBUF_SIZE / 2 ? NBD_REQUEST_LEN : RBUF_SIZE;
    /* Taken after the payload: the newest stamp is then that of the
     * request's last bytes (or later ones), still the arrival of
     * something sent before the client closed (docs/served.md). */
    s->deadline_ns = c->deadline_ms
      ? arrival_ns (c) + AP_MS (c->deadline_ms) : 0;

    dispatch (c, s);
  }

  /* Stop taking requests; the writer ends once every taken request has
   * been completed and answered. */
  pthread_mutex_lock (&c->lock);
  c->reader_done = true;
  pthread_cond_signal (&c->reply_cond);
  pthread_mutex_unlock (&c->lock);
  pthread_join (c->writer, NULL);
  c->writer_started = false;
}

/* ---------------------------------------------------------- lifecycle */

/* Arrival stamps on a TCP socket (SO_TIMESTAMPNS); Unix stream sockets
 * have none, so a connection on one cannot agree to a deadline. */
static bool
enable_stamps (int fd)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int on = 1;

  if (getsockname (fd, (struct sockaddr *) &ss, &len) < 0
      || (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
    return false;
  return setsockopt (fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) == 0;
}

static void *
conn_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "nbd-conn");
  struct nbd_conn *c = arg;
  uint8_t *optbuf = malloc (NBD_HS_OPT_MAX);
  int tflags = -1;

  c->rbuf = malloc (RBUF_SIZE);
  c->stamps = enable_stamps (c->fd);
  if (optbuf && c->rbuf) {
    set_rcvtimeo (c->fd, NBD_HANDSHAKE_TIMEOUT_MS);
    tflags = handshake (c, optbuf);
  }
  free (optbuf);
  if (tflags >= 0) {
    nbd_server_session_opened (c->srv);
    set_rcvtimeo (c->fd, 0);
    ap_debug (AP_DEBUG_CONTROL, "nbd: %s: export '%s' (peer '%s')",
              c->addr, c->export->name, c->peer);
    if (transmission_setup (c, (uint16_t) tflags) == 0)
      transmission (c);
    else
      ap_error ("nbd: %s: cannot set up the connection (out of memory or "
                "threads)", c->addr);
  }
  pthread_mutex_lock (&c->lock);
  bool dead = c->dead;
  pthread_mutex_unlock (&c->lock);
  nbd_tls_close (c->tls, !dead);
  c->tls = NULL;
  shutdown (c->fd, SHUT_RDWR);
  export_put (c->export);
  c->export = NULL;
  ap_debug (AP_DEBUG_CONTROL, "nbd: %s: closed", c->addr);
  /* Tell the server first, close after: until the server knows we are
   * done it may shut the socket down (nbd_conn_force_close), which must
   * never hit a descriptor number reused by another open.  The server
   * joins this thread before it frees c. */
  nbd_server_conn_done (c->srv, c->link);
  close (c->fd);
  c->fd = -1;
  return NULL;
}

struct nbd_conn *
nbd_conn_new (struct nbd_server *s, void *link, int fd, enum tls_mode tls,
              const char *addr)
{
  struct nbd_conn *c = calloc (1, sizeof *c);

  if (!c)
    return NULL;
  c->srv = s;
  c->link = link;
  c->fd = fd;
  c->stop_fd = nbd_server_stop_fd (s);
  c->tls_mode = tls;
  snprintf (c->addr, sizeof c->addr, "%s", addr);
  pthread_mutex_init (&c->lock, NULL);
  pthread_cond_init (&c->slot_cond, NULL);
  pthread_cond_init (&c->reply_cond, NULL);
  return c;
}

int
nbd_conn_start (struct nbd_conn *c)
{
  if (pthread_create (&c->thread, NULL, conn_thread, c) != 0)
    return -1;
  c->started = true;
  return 0;
}

void
nbd_conn_force_close (struct nbd_conn *c)
{
  /* Called by the server only while it lists c as running, and c closes
   * its fd only after it is listed as done: the fd is still ours. */
  mark_dead (c);
}

void
nbd_conn_free (struct nbd_conn *c)
{
  if (!c)
    return;
  if (c->started)
    pthread_join (c->thread, NULL);
  else if (c->fd >= 0)
    close (c->fd);
  if (c->slots) {
    for (unsigned i = 0; i < NBD_CONN_SLOTS; i++)
      slot_drop_buf (c, &c->slots[i]);
    free (c->slots);
  }
  free (c->rbuf);
  pthread_mutex_destroy (&c->lock);
  pthread_cond_destroy (&c->slot_cond);
  pthread_cond_destroy (&c->reply_cond);
  free (c);
}
