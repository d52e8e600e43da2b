/* client.c — altpath's side of the control socket (docs/cli.md): connect,
 * send one request line, read one reply line, and for "watch" the event
 * lines after it.
 *
 * Every wait is bounded by the deadline of --timeout (connect and reply
 * together), so a daemon that is busy failing over, stopped (SIGSTOP) or
 * wedged costs the operator at most that long: a full accept backlog is
 * retried until the deadline, a reply that does not come is given up on.
 * Only the event stream of "watch" waits without a deadline, until a
 * signal ends it.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* The longest reply line taken (a status of every unit of a big node is a
 * few hundred KiB). */
#define REPLY_MAX (64u * 1024 * 1024)
#define PROTOCOL_VERSION 1

uint64_t
cli_now_ns (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static int __attribute__ ((format (printf, 4, 5)))
fail (struct cli_error *e, int status, const char *code, const char *fmt, ...)
{
  va_list ap;
  e->status = status;
  e->code = code;
  va_start (ap, fmt);
  vsnprintf (e->msg, sizeof e->msg, fmt, ap);
  va_end (ap);
  return -1;
}

static int
timed_out (struct conn *c, struct cli_error *e, const char *what)
{
  return fail (e, EXIT_TIMEOUT, "ETIMEDOUT", "altpathd on %s did not %s "
               "within %g s (busy failing over, or stopped?); try again, or "
               "give a longer --timeout", c->socket, what, c->timeout_s);
}

/* Milliseconds left until the deadline, for poll(); 0 when past it. */
static int
ms_left (const struct conn *c)
{
  uint64_t now = cli_now_ns ();
  if (now >= c->deadline_ns)
    return 0;
  uint64_t ms = (c->deadline_ns - now + 999999u) / 1000000u;
  return ms > 3600000u ? 3600000 : (int) ms;
}

int
conn_open (struct conn *c, const char *socket_path, double timeout_s,
           struct cli_error *e)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };

  memset (c, 0, sizeof *c);
  c->fd = -1;
  c->socket = socket_path;
  c->timeout_s = timeout_s;
  c->deadline_ns = cli_now_ns () + (uint64_t) (timeout_s * 1e9);
  if (strlen (socket_path) >= sizeof sa.sun_path)
    return fail (e, EXIT_USAGE, "EINVAL", "the socket path %s is longer than "
                 "%zu bytes, the most a Unix socket address holds",
                 socket_path, sizeof sa.sun_path - 1);
  memcpy (sa.sun_path, socket_path, strlen (socket_path) + 1);

  for (;;) {
    int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
      return fail (e, EXIT_UNREACHABLE, "EMFILE", "cannot make a socket: %s",
                   strerror (errno));
    if (connect (fd, (struct sockaddr *) &sa, sizeof sa) == 0) {
      c->fd = fd;
      return 0;
    }
    int err = errno;
    close (fd);
    switch (err) {
    case ENOENT:
      return fail (e, EXIT_UNREACHABLE, "ENOENT", "cannot reach altpathd: "
                   "%s does not exist; is altpathd running? (systemctl "
                   "status altpathd; another socket: --socket PATH)",
                   socket_path);
    case ECONNREFUSED:
      return fail (e, EXIT_UNREACHABLE, "ECONNREFUSED", "cannot reach "
                   "altpathd: nothing listens on %s (left by an altpathd "
                   "that stopped?); start altpathd, or give --socket PATH",
                   socket_path);
    case EACCES:
    case EPERM:
      return fail (e, EXIT_PERMISSION, "EACCES", "permission denied on %s: "
                   "the control socket is for root and the group named in "
                   "altpathd's [control] section; run altpath as root",
                   socket_path);
    case EAGAIN:
      /* The backlog is full: the daemon is not accepting (stopped, or
       * swamped).  Try again until the deadline. */
      if (ms_left (c) == 0)
        return timed_out (c, e, "accept the connection");
      poll (NULL, 0, 20);
      continue;
    case EINTR:
      continue;
    default:
      return fail (e, EXIT_UNREACHABLE, strerrorname_np (err) ?
                   strerrorname_np (err) : "EIO", "cannot reach altpathd on "
                   "%s: %s", socket_path, strerror (err));
    }
  }
}

/* A whole line from the buffer into *msg (parsed), if there is one:
 * 1; 0 if none yet; -1 and *e on a line that is not a message. */
static int
take_line (struct conn *c, json_object **msg, struct cli_error *e)
{
  char *nl = c->len ? memchr (c->buf, '\n', c->len) : NULL;
  if (!nl)
    return 0;
  size_t n = (size_t) (nl - c->buf);
  json_tokener *tok = json_tokener_new ();
  if (!tok)
    return fail (e, EXIT_REFUSED, "ENOMEM", "out of memory");
  json_object *o = json_tokener_parse_ex (tok, c->buf, (int) n);
  enum json_tokener_error je = json_tokener_get_error (tok);
  if (o && json_tokener_get_parse_end (tok) < n) {
    /* Only white space may follow the object. */
    for (size_t k = json_tokener_get_parse_end (tok); k < n; k++)
      if (c->buf[k] != ' ' && c->buf[k] != '\r' && c->buf[k] != '\t') {
        json_object_put (o);
        o = NULL;
        break;
      }
  }
  json_tokener_free (tok);
  memmove (c->buf, nl + 1, c->len - n - 1);
  c->len -= n + 1;
  if (!o || !json_object_is_type (o, json_type_object)) {
    json_object_put (o);
    return fail (e, EXIT_UNREACHABLE, "EPROTO", "altpathd on %s sent a line "
                 "that is not a JSON object (%s); is that an altpathd "
                 "control socket?", c->socket,
                 o ? "another JSON value" : je == json_tokener_continue
                 ? "it ends too soon" : json_tokener_error_desc (je));
  }
  json_object *v;
  if (!json_object_object_get_ex (o, "version", &v)
      || json_object_get_int (v) != PROTOCOL_VERSION) {
    int got = v ? json_object_get_int (v) : 0;
    json_object_put (o);
    return fail (e, EXIT_UNREACHABLE, "EPROTO", "altpathd on %s speaks "
                 "control protocol version %d, this altpath version %d; use "
                 "the altpath of the same release as the daemon", c->socket,
                 got, PROTOCOL_VERSION);
  }
  *msg = o;
  return 1;
}

/* Read more into the buffer: 1 read, 0 end of stream, -1 error (errno). */
static int
read_more (struct conn *c)
{
  if (c->cap - c->len < 4096) {
    size_t ncap = c->cap ? 2 * c->cap : 65536;
    if (ncap > REPLY_MAX + 4096) {
      errno = EMSGSIZE;
      return -1;
    }
    char *nb = realloc (c->buf, ncap);
    if (!nb)
      return -1;
    c->buf = nb;
    c->cap = ncap;
  }
  ssize_t n = read (c->fd, c->buf + c->len, c->cap - c->len);
  if (n > 0) {
    c->len += (size_t) n;
    return 1;
  }
  return n == 0 ? 0 : -1;
}

static int
gone (struct conn *c, struct cli_error *e, int err)
{
  if (err == EMSGSIZE)
    return fail (e, EXIT_UNREACHABLE, "EMSGSIZE", "altpathd on %s sent a "
                 "reply longer than %u bytes; not taken", c->socket,
                 REPLY_MAX);
  return fail (e, EXIT_UNREACHABLE, "ECONNRESET", "altpathd on %s closed "
               "the connection without a reply%s%s (it stopped?)",
               c->socket, err ? ": " : "", err ? strerror (err) : "");
}

int
conn_call (struct conn *c, json_object *req, json_object **reply,
           struct cli_error *e)
{
  const char *s = json_object_to_json_string_ext (req, JSON_C_TO_STRING_PLAIN
                                                  | JSON_C_TO_STRING_NOSLASHESCAPE);
  size_t n = strlen (s);
  char *line = malloc (n + 1);
  if (!line) {
    json_object_put (req);
    return fail (e, EXIT_REFUSED, "ENOMEM", "out of memory");
  }
  memcpy (line, s, n);
  line[n++] = '\n';
  json_object_put (req);

  /* Send.  A daemon that closes at once (it refused us) may still have
   * said why: read on after EPIPE. */
  size_t off = 0;
  while (off < n) {
    ssize_t w = send (c->fd, line + off, n - off, MSG_NOSIGNAL);
    if (w > 0) {
      off += (size_t) w;
      continue;
    }
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && errno == EAGAIN) {
      struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
      int ms = ms_left (c);
      if (ms == 0 || poll (&pfd, 1, ms) == 0) {
        free (line);
        return timed_out (c, e, "take the request");
      }
      continue;
    }
    break;                      /* EPIPE, ECONNRESET: read what it said */
  }
  free (line);

  for (;;) {
    int r = take_line (c, reply, e);
    if (r != 0)
      return r < 0 ? -1 : 0;
    struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
    int ms = ms_left (c);
    if (ms == 0)
      return timed_out (c, e, "answer");
    r = poll (&pfd, 1, ms);
    if (r < 0 && errno == EINTR)
      continue;
    if (r == 0)
      return timed_out (c, e, "answer");
    r = read_more (c);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
      continue;
    if (r <= 0)
      return gone (c, e, r < 0 ? errno : 0);
  }
}

int
conn_next (struct conn *c, const sigset_t *wait_mask,
           volatile sig_atomic_t *stopped, json_object **msg,
           struct cli_error *e)
{
  *msg = NULL;
  for (;;) {
    if (*stopped)
      return 1;
    int r = take_line (c, msg, e);
    if (r != 0)
      return r < 0 ? -1 : 0;
    struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
    /* The stop signals are blocked except inside ppoll: one that comes
     * before it is seen by it, not lost between the test and the wait. */
    r = ppoll (&pfd, 1, NULL, wait_mask);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return fail (e, EXIT_UNREACHABLE, "EIO", "waiting for events from "
                   "altpathd on %s: %s", c->socket, strerror (errno));
    r = read_more (c);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
      continue;
    if (r == 0)
      return fail (e, EXIT_UNREACHABLE, "ECONNRESET", "altpathd on %s "
                   "closed the connection (it stopped?)", c->socket);
    if (r < 0)
      return gone (c, e, errno);
  }
}

void
conn_close (struct conn *c)
{
  if (c->fd >= 0)
    close (c->fd);
  c->fd = -1;
  free (c->buf);
  c->buf = NULL;
  c->len = c->cap = 0;
}
