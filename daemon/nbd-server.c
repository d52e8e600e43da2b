/* nbd-server.c — the NBD server of altpathd (the seed's "MSCP server"):
 * listeners, the accept loop, the export list, and an orderly shutdown.
 *
 *   nbd_server_new        credentials (tls.c), the stop and wake pipes
 *   nbd_server_listen     one listening socket per config_listen (TCP or
 *                         Unix), each with its TLS mode
 *   nbd_server_set_exports   swap the export list (reload)
 *   nbd_server_run        poll: listeners, quit_fd, wake pipe
 *        accept ──► nbd_conn_new + thread (nbd-conn.c)
 *        wake   ──► join and free the connections that ended
 *        quit   ──► close the listeners, make the stop fd readable
 *                   (connections stop reading requests, finish what is in
 *                   flight, send the replies, close), wait for them;
 *                   after NBD_SHUTDOWN_GRACE_MS shut the sockets of the
 *                   stragglers down under them (a client that does not
 *                   read its replies), then wait for the rest.
 *
 * Only units over direct paths are ever given to us (exports.c;
 * invariant 5): this file never looks at paths.
 *
 * Lock: s->lock guards the export list and the connection list.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "accept-trouble.h"
#include "clock.h"
#include "log.h"
#include "nbd-internal.h"

struct listener {
  int fd;
  enum tls_mode tls;
  char desc[300];               /* "127.0.0.1:10809", "unix:/run/x.sock" */
  char unix_path[108];          /* removed at close; "" for TCP */
  struct accept_trouble accept_trouble;
};

struct conn_entry {
  struct nbd_conn *conn;
  struct conn_entry *next;
  bool done;                    /* its thread is returning: join it */
};

struct nbd_server {
  struct nbd_tls *tls;          /* NULL: no TLS credentials */
  struct listener *listeners;
  size_t nlisteners;
  int stop_pipe[2];             /* [0] readable once stopping */
  int wake_pipe[2];             /* a connection ended */
  atomic_bool stopping;

  pthread_mutex_t lock;
  struct export **exports;      /* references held */
  size_t nexports;
  struct conn_entry *conns;
  size_t nconns;
  struct nbd_server_stats stats;  /* all but `open` (which is nconns) */
};

static const char *
tls_name (enum tls_mode m)
{
  return m == TLS_OFF ? "off" : m == TLS_ON ? "on" : "require";
}

/* ------------------------------------------------- for nbd-conn.c */

struct nbd_tls *
nbd_server_tls_creds (struct nbd_server *s)
{
  return s->tls;
}

int
nbd_server_stop_fd (struct nbd_server *s)
{
  return s->stop_pipe[0];
}

bool
nbd_server_stopping (struct nbd_server *s)
{
  return atomic_load (&s->stopping);
}

struct export **
nbd_server_exports_get (struct nbd_server *s, size_t *n)
{
  struct export **v = NULL;

  pthread_mutex_lock (&s->lock);
  *n = 0;
  if (s->nexports && (v = calloc (s->nexports, sizeof *v)) != NULL) {
    for (size_t i = 0; i < s->nexports; i++)
      v[i] = export_get (s->exports[i]);
    *n = s->nexports;
  }
  pthread_mutex_unlock (&s->lock);
  return v;
}

void
nbd_server_exports_put (struct export **v, size_t n)
{
  for (size_t i = 0; i < n; i++)
    export_put (v[i]);
  free (v);
}

void
nbd_server_session_opened (struct nbd_server *s)
{
  pthread_mutex_lock (&s->lock);
  s->stats.sessions++;
  pthread_mutex_unlock (&s->lock);
}

void
nbd_server_conn_done (struct nbd_server *s, void *link)
{
  struct conn_entry *e = link;
  char b = 1;

  pthread_mutex_lock (&s->lock);
  e->done = true;
  pthread_mutex_unlock (&s->lock);
  if (write (s->wake_pipe[1], &b, 1) < 0) {
    /* Full pipe: the run loop has wakeups pending anyway. */
  }
}

/* --------------------------------------------------------------- API */

struct nbd_server *
nbd_server_new (const struct nbd_server_tls *tls, char *err, size_t errlen)
{
  struct nbd_server *s = calloc (1, sizeof *s);

  if (!s) {
    snprintf (err, errlen, "out of memory");
    return NULL;
  }
  s->stop_pipe[0] = s->stop_pipe[1] = -1;
  s->wake_pipe[0] = s->wake_pipe[1] = -1;
  /* Replies completed together go out together (nbd-conn.c). */
  ap_set_completion_hook (nbd_conn_completion_run_end);
  pthread_mutex_init (&s->lock, NULL);
  atomic_init (&s->stopping, false);

  s->tls = nbd_tls_new (tls, err, errlen);
  if (!s->tls && errlen && err[0])
    goto fail;
  if (pipe2 (s->stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0
      || pipe2 (s->wake_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
    snprintf (err, errlen, "NBD server: pipe: %s", strerror (errno));
    goto fail;
  }
  /* A client that closes while we write must not kill the daemon: every
   * send uses MSG_NOSIGNAL (GnuTLS too), and this covers anything else. */
  signal (SIGPIPE, SIG_IGN);
  return s;

 fail:
  nbd_server_free (s);
  return NULL;
}

static int
add_listener (struct nbd_server *s, int fd, enum tls_mode tls,
              const char *desc, const char *unix_path)
{
  struct listener *v = realloc (s->listeners,
                                (s->nlisteners + 1) * sizeof *v);
  if (!v)
    return -1;
  s->listeners = v;
  struct listener *l = &v[s->nlisteners++];
  memset (l, 0, sizeof *l);
  l->fd = fd;
  l->tls = tls;
  snprintf (l->desc, sizeof l->desc, "%s", desc);
  snprintf (l->unix_path, sizeof l->unix_path, "%s", unix_path);
  ap_info ("NBD server listening on %s (TLS %s)", desc, tls_name (tls));
  return 0;
}

static int
listen_unix (struct nbd_server *s, const struct config_listen *l, char *err,
             size_t errlen)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  struct stat st;
  char desc[300];
  int fd;

  if (strlen (l->path) >= sizeof sa.sun_path || l->path[0] == '\0') {
    snprintf (err, errlen, "listen: unix socket path '%s' is empty or too "
              "long (at most %zu bytes)", l->path, sizeof sa.sun_path - 1);
    return -1;
  }
  memcpy (sa.sun_path, l->path, strlen (l->path));
  /* A socket left by a previous run would make bind fail; anything else
   * at that path is not ours to remove. */
  if (lstat (l->path, &st) == 0) {
    if (!S_ISSOCK (st.st_mode)) {
      snprintf (err, errlen, "listen: %s exists and is not a socket", l->path);
      return -1;
    }
    unlink (l->path);
  }
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0 || bind (fd, (struct sockaddr *) &sa, sizeof sa) < 0
      || listen (fd, 128) < 0) {
    snprintf (err, errlen, "listen on unix socket %s: %s", l->path,
              strerror (errno));
    if (fd >= 0)
      close (fd);
    return -1;
  }
  snprintf (desc, sizeof desc, "unix:%s", l->path);
  if (add_listener (s, fd, l->tls, desc, l->path) < 0) {
    close (fd);
    unlink (l->path);
    snprintf (err, errlen, "out of memory");
    return -1;
  }
  return 0;
}

static void
addr_string (const struct sockaddr *sa, char *buf, size_t len)
{
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;

  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const void *) sa;
    inet_ntop (AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs (in->sin_port);
    snprintf (buf, len, "%s:%u", host, port);
  }
  else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const void *) sa;
    inet_ntop (AF_INET6, &in6->sin6_addr, host, sizeof host);
    port = ntohs (in6->sin6_port);
    snprintf (buf, len, "[%s]:%u", host, port);
  }
  else
    snprintf (buf, len, "unix");
}

static int
listen_tcp (struct nbd_server *s, const struct config_listen *l, char *err,
            size_t errlen)
{
  struct addrinfo hints = {
    .ai_family = AF_UNSPEC,
    .ai_socktype = SOCK_STREAM,
    .ai_flags = AI_PASSIVE | AI_ADDRCONFIG,
  };
  struct addrinfo *res, *ai;
  const char *port = l->port[0] ? l->port : "10809";
  int r, bound = 0, lasterr = 0;

  r = getaddrinfo (l->host[0] ? l->host : NULL, port, &hints, &res);
  if (r != 0) {
    snprintf (err, errlen, "listen on %s port %s: %s",
              l->host[0] ? l->host : "*", port, gai_strerror (r));
    return -1;
  }
  for (ai = res; ai; ai = ai->ai_next) {
    int one = 1;
    int fd = socket (ai->ai_family,
                     ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                     ai->ai_protocol);
    if (fd < 0) {
      lasterr = errno;
      continue;
    }
    setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6)
      setsockopt (fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind (fd, ai->ai_addr, ai->ai_addrlen) < 0
        || listen (fd, 128) < 0) {
      lasterr = errno;
      close (fd);
      continue;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char desc[300];
    if (getsockname (fd, (struct sockaddr *) &ss, &sl) == 0)
      addr_string ((struct sockaddr *) &ss, desc, sizeof desc);
    else
      snprintf (desc, sizeof desc, "%s:%s", l->host, port);
    if (add_listener (s, fd, l->tls, desc, "") < 0) {
      close (fd);
      lasterr = ENOMEM;
      continue;
    }
    bound++;
  }
  freeaddrinfo (res);
  if (bound == 0) {
    snprintf (err, errlen, "listen on %s port %s: %s (is another server "
              "using the port?)", l->host[0] ? l->host : "*", port,
              strerror (lasterr ? lasterr : EADDRNOTAVAIL));
    return -1;
  }
  return 0;
}

int
nbd_server_listen (struct nbd_server *s, const struct config_listen *l,
                   char *err, size_t errlen)
{
  if (l->tls != TLS_OFF && !s->tls) {
    snprintf (err, errlen, "listen %s%s%s: tls = %s needs TLS credentials "
              "(tls_psk_file or tls_cert_dir)",
              l->is_unix ? l->path : l->host, l->is_unix ? "" : ":",
              l->is_unix ? "" : l->port, tls_name (l->tls));
    return -1;
  }
  return l->is_unix ? listen_unix (s, l, err, errlen)
    : listen_tcp (s, l, err, errlen);
}

void
nbd_server_set_exports (struct nbd_server *s, struct export **exports,
                        size_t n)
{
  struct export **v = n ? calloc (n, sizeof *v) : NULL;
  struct export **old;
  size_t nold;

  if (n && !v) {
    ap_error ("NBD server: out of memory replacing the export list; the "
              "old list stays");
    for (size_t i = 0; i < n; i++)
      export_put (exports[i]);
    return;
  }
  if (n)
    memcpy (v, exports, n * sizeof *v);
  pthread_mutex_lock (&s->lock);
  old = s->exports;
  nold = s->nexports;
  s->exports = v;
  s->nexports = n;
  pthread_mutex_unlock (&s->lock);
  /* Connections keep the exports they opened: they hold references. */
  for (size_t i = 0; i < nold; i++)
    export_put (old[i]);
  free (old);
}

static void
close_listeners (struct nbd_server *s)
{
  for (size_t i = 0; i < s->nlisteners; i++) {
    if (s->listeners[i].fd >= 0)
      close (s->listeners[i].fd);
    s->listeners[i].fd = -1;
    if (s->listeners[i].unix_path[0]) {
      unlink (s->listeners[i].unix_path);
      s->listeners[i].unix_path[0] = '\0';
    }
  }
}

/* Join and free the connections that ended.  Returns how many remain. */
static size_t
reap (struct nbd_server *s)
{
  struct conn_entry *dead = NULL, **pp;
  char buf[64];
  size_t left;

  while (read (s->wake_pipe[0], buf, sizeof buf) > 0)
    ;
  pthread_mutex_lock (&s->lock);
  for (pp = &s->conns; *pp;) {
    struct conn_entry *e = *pp;
    if (e->done) {
      *pp = e->next;
      e->next = dead;
      dead = e;
      s->nconns--;
    }
    else
      pp = &e->next;
  }
  left = s->nconns;
  pthread_mutex_unlock (&s->lock);
  while (dead) {
    struct conn_entry *e = dead;
    dead = e->next;
    nbd_conn_free (e->conn);    /* joins its thread */
    free (e);
  }
  return left;
}

static void
accept_one (struct nbd_server *s, struct listener *l)
{
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  char addr[300];
  int fd = accept4 (l->fd, (struct sockaddr *) &ss, &sl, SOCK_CLOEXEC);

  if (fd < 0) {
    char what[sizeof l->desc + 32];
    snprintf (what, sizeof what, "the NBD listener on %s", l->desc);
    if (accept_trouble_failed (&l->accept_trouble, what, errno))
      usleep (ACCEPT_TROUBLE_WAIT_MS * 1000);   /* no busy loop */
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR
             && errno != ECONNABORTED)
      ap_warn ("NBD server: accept on %s: %s", l->desc, strerror (errno));
    return;
  }
  if (l->accept_trouble.failing) {
    char what[sizeof l->desc + 32];
    snprintf (what, sizeof what, "the NBD listener on %s", l->desc);
    accept_trouble_ok (&l->accept_trouble, what);
  }
  if (ss.ss_family == AF_UNIX)
    snprintf (addr, sizeof addr, "%s", l->desc);
  else {
    int one = 1;
    addr_string ((struct sockaddr *) &ss, addr, sizeof addr);
    setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt (fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  }

  struct conn_entry *e = calloc (1, sizeof *e);
  pthread_mutex_lock (&s->lock);
  bool full = s->nconns >= NBD_MAX_CONNS;
  s->stats.accepted++;
  if (!e || full)
    s->stats.refused++;
  pthread_mutex_unlock (&s->lock);
  if (!e || full) {
    ap_warn ("NBD server: refusing a connection from %s: %s", addr,
             full ? "too many connections" : "out of memory");
    free (e);
    close (fd);
    return;
  }
  e->conn = nbd_conn_new (s, e, fd, l->tls, addr);
  if (!e->conn) {
    ap_warn ("NBD server: refusing a connection from %s: out of memory",
             addr);
    pthread_mutex_lock (&s->lock);
    s->stats.refused++;
    pthread_mutex_unlock (&s->lock);
    close (fd);
    free (e);
    return;
  }
  pthread_mutex_lock (&s->lock);
  e->next = s->conns;
  s->conns = e;
  s->nconns++;
  pthread_mutex_unlock (&s->lock);
  if (nbd_conn_start (e->conn) < 0) {
    ap_warn ("NBD server: cannot start a thread for %s", addr);
    pthread_mutex_lock (&s->lock);
    e->done = true;
    s->stats.refused++;
    pthread_mutex_unlock (&s->lock);
    reap (s);
  }
}

void
nbd_server_get_stats (struct nbd_server *s, struct nbd_server_stats *st)
{
  pthread_mutex_lock (&s->lock);
  *st = s->stats;
  st->open = s->nconns;
  pthread_mutex_unlock (&s->lock);
}

int
nbd_server_run (struct nbd_server *s, int quit_fd)
{
  size_t n = s->nlisteners + 2;
  struct pollfd *p = calloc (n, sizeof *p);

  if (!p) {
    ap_error ("NBD server: out of memory");
    return -1;
  }
  for (;;) {
    p[0] = (struct pollfd) { .fd = quit_fd, .events = POLLIN };
    p[1] = (struct pollfd) { .fd = s->wake_pipe[0], .events = POLLIN };
    for (size_t i = 0; i < s->nlisteners; i++)
      p[2 + i] = (struct pollfd) { .fd = s->listeners[i].fd,
                                   .events = POLLIN };
    if (poll (p, n, -1) < 0) {
      if (errno == EINTR)
        continue;
      ap_error ("NBD server: poll: %s", strerror (errno));
      break;
    }
    if (p[0].revents)
      break;
    if (p[1].revents)
      reap (s);
    for (size_t i = 0; i < s->nlisteners; i++)
      if (p[2 + i].revents & POLLIN)
        accept_one (s, &s->listeners[i]);
  }
  free (p);

  /* Stop accepting; tell every connection; let them finish. */
  close_listeners (s);
  atomic_store (&s->stopping, true);
  char b = 1;
  if (write (s->stop_pipe[1], &b, 1) < 0)
    ap_warn ("NBD server: cannot signal the connections to stop: %s",
             strerror (errno));

  uint64_t deadline = ap_now_ns () + AP_MS (NBD_SHUTDOWN_GRACE_MS);
  bool forced = false;
  size_t left;
  while ((left = reap (s)) > 0) {
    uint64_t now = ap_now_ns ();
    if (!forced && now >= deadline) {
      ap_warn ("NBD server: %zu connection(s) still sending after %u ms; "
               "closing them", left, NBD_SHUTDOWN_GRACE_MS);
      pthread_mutex_lock (&s->lock);
      for (struct conn_entry *e = s->conns; e; e = e->next)
        if (!e->done)
          nbd_conn_force_close (e->conn);
      pthread_mutex_unlock (&s->lock);
      forced = true;
    }
    struct pollfd w = { .fd = s->wake_pipe[0], .events = POLLIN };
    int ms = forced ? 1000 : (int) ((deadline - now) / 1000000 + 1);
    poll (&w, 1, ms);
  }
  return 0;
}

void
nbd_server_free (struct nbd_server *s)
{
  if (!s)
    return;
  close_listeners (s);
  free (s->listeners);
  /* nbd_server_run waited for every connection; without it, none was
   * ever accepted. */
  nbd_server_set_exports (s, NULL, 0);
  nbd_tls_free (s->tls);
  for (int i = 0; i < 2; i++) {
    if (s->stop_pipe[i] >= 0)
      close (s->stop_pipe[i]);
    if (s->wake_pipe[i] >= 0)
      close (s->wake_pipe[i]);
  }
  pthread_mutex_destroy (&s->lock);
  free (s);
}
