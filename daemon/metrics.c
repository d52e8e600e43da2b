/* metrics.c — altpathd's metrics for Prometheus: the node's units, their
 * paths and the node's own health, in the text exposition format
 * (version 0.0.4), on GET /metrics over plain HTTP/1.x.  Read only:
 * nothing here changes a unit (that is the control socket's business).
 *
 *   acceptor thread ── accept ── METRICS_MAX_CLIENTS already? 503, close
 *        │
 *        ▼ one thread per client (at most METRICS_MAX_CLIENTS)
 *   client thread ── the request head: at most REQUEST_MAX bytes (else
 *        │           431), all of it within READ_TIMEOUT_MS of the
 *        │           accept (else 408)
 *        │        ── GET or HEAD /metrics?  else 404 (another path),
 *        │           405 (another method), 400 (not HTTP)
 *        │        ── render: view.units ── ap_unit_get_status of each
 *        │        ── the reply, taken within WRITE_TIMEOUT_MS
 *        │        ── lingering close: shut our side, discard what the
 *        ▼           client still sends (bounded), so that it reads the
 *                    reply before our close resets the connection
 *
 * One request per connection (Connection: close): Prometheus opens a
 * connection per scrape anyway when told so, and it keeps this simple.
 *
 * A client that is slow, silent or hostile holds only its own thread, and
 * only for a bounded time: every wait of a client thread is a poll()
 * bounded by a deadline and by the stop pipe (a pipe-to-self, as nbdkit's
 * quit.c: metrics_stop writes it once and every poll() sees it readable
 * from then on).  No thread is ever cancelled.
 *
 * Lock: m->lock guards the client list.  It is a leaf: never held while
 * calling the view (the daemon) or the library.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "daemon.h"
#include "client-threads.h"
#include "accept-trouble.h"
#include "log.h"

/* Limits (a test may define smaller ones before including this file). */
#ifndef METRICS_MAX_CLIENTS
#define METRICS_MAX_CLIENTS 16  /* scrapers at once; more get a 503 */
#endif
#ifndef REQUEST_MAX
#define REQUEST_MAX       8192  /* bytes of request line and headers */
#endif
#ifndef READ_TIMEOUT_MS
#define READ_TIMEOUT_MS   5000  /* for the whole request head */
#endif
#ifndef WRITE_TIMEOUT_MS
#define WRITE_TIMEOUT_MS  10000 /* for the client to take the reply */
#endif
#define LINGER_MS         2000  /* discarding what the client still sends */
#define LINGER_MAX        (4u << 20)
#define LISTEN_BACKLOG    64

/* The latency histogram's edges: the library's log2 buckets (bucket b
 * counts requests faster than 2^b µs) from 2^LAT_FIRST µs (8 µs) to
 * 2^LAT_LAST µs (33.6 s).  The cumulative count at each of these edges is
 * exact; the library's finer edges below 8 µs and coarser ones above
 * 33.6 s are left out to keep the series per histogram down (27). */
#define LAT_FIRST 3
#define LAT_LAST  25

struct client {
  struct ct_thread ct;          /* first: in m->clients (done: under
                                   m->lock, the thread has finished) */
  struct metrics *m;
  int fd;                       /* the connection, non-blocking */
  uint64_t accepted_ns;         /* READ_TIMEOUT_MS counts from here */
  char addr[INET6_ADDRSTRLEN + 8]; /* the peer, for debug lines */
};
_Static_assert (offsetof (struct client, ct) == 0,
                "ct_reap frees a struct client through its ct");

struct metrics {
  char where[300];              /* host:port, for messages */
  struct accept_trouble accept_trouble;
  char node[64];
  char daemon_version[64];
  struct metrics_view view;     /* its strings point at the copies above */
  int listen_fd;
  int stop_pipe[2];             /* [0] readable once stopping */
  pthread_t acceptor;
  bool acceptor_started;

  pthread_mutex_t lock;         /* the fields below; a leaf (see top) */
  struct ct_set clients;        /* of struct client, at most
                                   METRICS_MAX_CLIENTS */
};


/* --------------------------------------------------------------- output */

/* A growing text buffer; on out of memory it stops growing and says so
 * (the reply is then a 500). */
struct out {
  char *p;
  size_t len, cap;
  bool failed;
};

static void __attribute__ ((format (printf, 2, 3)))
out_printf (struct out *o, const char *fmt, ...)
{
  while (!o->failed) {
    va_list ap;
    size_t room = o->cap - o->len;
    va_start (ap, fmt);
    int n = vsnprintf (o->p ? o->p + o->len : NULL, room, fmt, ap);
    va_end (ap);
    if (n < 0) {
      o->failed = true;
      return;
    }
    if ((size_t) n < room) {
      o->len += (size_t) n;
      return;
    }
    size_t ncap = o->cap ? o->cap * 2 : 65536;
    while (ncap - o->len <= (size_t) n)
      ncap *= 2;
    char *np = realloc (o->p, ncap);
    if (!np) {
      o->failed = true;
      return;
    }
    o->p = np;
    o->cap = ncap;
  }
}

/* A label value as the text format wants it: backslash, double quote and
 * newline escaped.  out holds 2 * strlen (s) + 1. */
static void
esc (const char *s, char *out, size_t size)
{
  size_t k = 0;
  for (; *s && k + 2 < size; s++) {
    if (*s == '\\' || *s == '"') {
      out[k++] = '\\';
      out[k++] = *s;
    }
    else if (*s == '\n') {
      out[k++] = '\\';
      out[k++] = 'n';
    }
    else
      out[k++] = *s;
  }
  out[k] = '\0';
}

/* ---------------------------------------------------------------- render */

/* A unit's status and its label sets, taken once per scrape. */
struct snap {
  struct ap_unit_status st;
  char labels[2 * AP_NAME_MAX + 16];    /* device="..." */
  char plabels[AP_MAX_PATHS][6 * AP_NAME_MAX]; /* device, path, kind */
};

static const char *const op_names[] = {
  "read", "write", "flush", "trim", "zeroes",
};

static uint64_t
op_count (const struct ap_counters *c, size_t k)
{
  switch (k) {
  case 0: return c->reads;
  case 1: return c->writes;
  case 2: return c->flushes;
  case 3: return c->trims;
  default: return c->zeroes;
  }
}

static void
family (struct out *o, const char *name, const char *type, const char *help)
{
  out_printf (o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The library's log2 histogram as a Prometheus one.  _sum is not
 * measured by the library; it is estimated from the buckets: the middle
 * of each bucket ([2^(b-1), 2^b) µs: 0.75 · 2^b µs; bucket 0, under 1 µs:
 * 0.5 µs), and for the last, open-ended bucket its lower edge. */
static void
histogram (struct out *o, const char *name, const char *labels,
           const struct ap_counters *c)
{
  uint64_t cum = 0;
  double sum_us = 0;
  for (unsigned b = 0; b < AP_LAT_BUCKETS; b++) {
    uint64_t v = c->latency[b];
    cum += v;
    if (b == 0)
      sum_us += 0.5 * (double) v;
    else if (b < AP_LAT_BUCKETS - 1)
      sum_us += 0.75 * ldexp (1.0, (int) b) * (double) v;
    else
      sum_us += ldexp (1.0, (int) b - 1) * (double) v;
    if (b >= LAT_FIRST && b <= LAT_LAST)
      out_printf (o, "%s_bucket{%s,le=\"%.9g\"} %" PRIu64 "\n", name, labels,
                  ldexp (1.0, (int) b) / 1e6, cum);
  }
  out_printf (o, "%s_bucket{%s,le=\"+Inf\"} %" PRIu64 "\n", name, labels,
              cum);
  out_printf (o, "%s_sum{%s} %.9g\n", name, labels, sum_us / 1e6);
  out_printf (o, "%s_count{%s} %" PRIu64 "\n", name, labels, cum);
}

/* Families of one sample per unit (st: its status) or per path (ps). */
#define UNIT_INT(name, type, help, expr)                                \
  do {                                                                  \
    family (o, name, type, help);                                       \
    for (size_t i_ = 0; i_ < n; i_++) {                                 \
      const struct ap_unit_status *st = &s[i_].st;                      \
      out_printf (o, name "{%s} %" PRIu64 "\n", s[i_].labels,           \
                  (uint64_t) (expr));                                   \
    }                                                                   \
  } while (0)
#define PATH_INT(name, type, help, expr)                                \
  do {                                                                  \
    family (o, name, type, help);                                       \
    for (size_t i_ = 0; i_ < n; i_++)                                   \
      for (unsigned k_ = 0; k_ < s[i_].st.npaths; k_++) {               \
        const struct ap_path_status *ps = &s[i_].st.paths[k_];          \
        out_printf (o, name "{%s} %" PRIu64 "\n", s[i_].plabels[k_],    \
                    (uint64_t) (expr));                                 \
      }                                                                 \
  } while (0)

/* The NBD server's connections: server="peers" is the one that serves
 * this node's disks to its peers, server="local" the local exports of the
 * units (in a cluster). */
static void
render_nbd (struct metrics *m, struct out *o)
{
  struct { const char *name; struct nbd_server_stats st; } v[2];
  size_t n = 0;

  if (m->view.nbd_peers) {
    v[n].name = "peers";
    m->view.nbd_peers (m->view.opaque, &v[n++].st);
  }
  if (m->view.nbd_local && m->view.nbd_local (m->view.opaque, &v[n].st))
    v[n++].name = "local";
  if (n == 0)
    return;
  static const struct {
    const char *name, *type, *help;
    size_t off;
  } fam[] = {
    { "altpath_nbd_connections", "gauge",
      "NBD connections open now, in any phase (handshake or I/O).",
      offsetof (struct nbd_server_stats, open) },
    { "altpath_nbd_connections_accepted_total", "counter",
      "NBD connections accepted since the daemon started.",
      offsetof (struct nbd_server_stats, accepted) },
    { "altpath_nbd_connections_refused_total", "counter",
      "NBD connections closed as soon as accepted: too many open (16384), "
      "or no memory or thread for them (see the log).",
      offsetof (struct nbd_server_stats, refused) },
    { "altpath_nbd_sessions_total", "counter",
      "NBD connections whose handshake opened a disk; the difference to "
      "accepted is lists, aborts and refused handshakes (no such disk, "
      "TLS, a peer not allowed).",
      offsetof (struct nbd_server_stats, sessions) },
  };
  for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
    family (o, fam[f].name, fam[f].type, fam[f].help);
    for (size_t i = 0; i < n; i++) {
      uint64_t val;
      memcpy (&val, (const char *) &v[i].st + fam[f].off, sizeof val);
      out_printf (o, "%s{server=\"%s\"} %" PRIu64 "\n", fam[f].name,
                  v[i].name, val);
    }
  }
}

static void
render_node (struct metrics *m, struct out *o, size_t nunits)
{
  char node[2 * sizeof m->node], version[2 * sizeof m->daemon_version];
  esc (m->node, node, sizeof node);
  esc (m->daemon_version, version, sizeof version);
  family (o, "altpath_node_info", "gauge",
          "This node's name and altpathd's version; always 1.");
  out_printf (o, "altpath_node_info{node=\"%s\",version=\"%s\"} 1\n", node,
              version);

  family (o, "altpath_served_exports", "gauge",
          "Disks this node serves to its peers over NBD (the disks it "
          "reaches directly).");
  out_printf (o, "altpath_served_exports %zu\n",
              m->view.served ? m->view.served (m->view.opaque) : 0);

  render_nbd (m, o);

  family (o, "altpath_units", "gauge",
          "The node's units (devices): the cluster's units in a cluster, "
          "else the disks it serves.");
  out_printf (o, "altpath_units %zu\n", nunits);

  bool healthy = false;
  const char *backend = "";
  size_t conflicts = 0;
  bool in_cluster = m->view.registry
    && m->view.registry (m->view.opaque, &healthy, &backend, &conflicts);
  family (o, "altpath_in_cluster", "gauge",
          "1 if the node is in a cluster (has a [registry] section).");
  out_printf (o, "altpath_in_cluster %d\n", in_cluster ? 1 : 0);
  if (!in_cluster)
    return;
  char be[64];
  esc (backend ? backend : "", be, sizeof be);
  family (o, "altpath_registry_healthy", "gauge",
          "1 while the cluster registry answers; 0: discovery waits, I/O "
          "on the paths in use goes on.");
  out_printf (o, "altpath_registry_healthy{backend=\"%s\"} %d\n", be,
              healthy ? 1 : 0);
  family (o, "altpath_cluster_configuration_errors", "gauge",
          "Configuration errors across nodes this node has found (one bus "
          "under two names, two buses under one); altpath show cluster "
          "lists them.");
  out_printf (o, "altpath_cluster_configuration_errors %zu\n", conflicts);
}

static void
render_units (struct out *o, const struct snap *s, size_t n)
{
  family (o, "altpath_unit_state", "gauge",
          "1 for the state the unit is in, 0 for the others: online (I/O "
          "flows), verify (a path failed: holding, draining, fencing, "
          "choosing the next), switch (a planned change of path), offline "
          "(no usable path), closed.");
  for (size_t i = 0; i < n; i++)
    for (int k = AP_UNIT_ONLINE; k <= AP_UNIT_CLOSED; k++)
      out_printf (o, "altpath_unit_state{%s,state=\"%s\"} %d\n", s[i].labels,
                  ap_unit_state_name ((enum ap_unit_state) k),
                  s[i].st.state == (enum ap_unit_state) k);

  UNIT_INT ("altpath_unit_size_bytes", "gauge", "The unit's size.",
            st->size);
  UNIT_INT ("altpath_unit_paths", "gauge", "Paths the unit has.",
            st->npaths);
  {
    family (o, "altpath_unit_usable_paths", "gauge",
            "Paths of the unit that are active or standby (healthy and "
            "enabled); below 2 there is nothing left to fail over to.");
    for (size_t i = 0; i < n; i++) {
      unsigned usable = 0;
      for (unsigned k = 0; k < s[i].st.npaths; k++)
        usable += s[i].st.paths[k].state == AP_PATH_ACTIVE
          || s[i].st.paths[k].state == AP_PATH_STANDBY;
      out_printf (o, "altpath_unit_usable_paths{%s} %u\n", s[i].labels,
                  usable);
    }
  }
  {
    family (o, "altpath_unit_pinned", "gauge",
            "1 if an operator pinned the unit to a path (altpath switch); "
            "automatic failback does not undo it until altpath unpin.");
    for (size_t i = 0; i < n; i++) {
      bool pinned = false;
      for (unsigned k = 0; k < s[i].st.npaths; k++)
        pinned |= s[i].st.paths[k].pinned;
      out_printf (o, "altpath_unit_pinned{%s} %d\n", s[i].labels, pinned);
    }
  }

  family (o, "altpath_unit_ops_total", "counter",
          "Requests the unit completed successfully, by operation.");
  for (size_t i = 0; i < n; i++)
    for (size_t k = 0; k < 5; k++)
      out_printf (o, "altpath_unit_ops_total{%s,op=\"%s\"} %" PRIu64 "\n",
                  s[i].labels, op_names[k], op_count (&s[i].st.counters, k));
  UNIT_INT ("altpath_unit_read_bytes_total", "counter",
            "Bytes the unit read for its callers.", st->counters.bytes_read);
  UNIT_INT ("altpath_unit_written_bytes_total", "counter",
            "Bytes the unit wrote for its callers.",
            st->counters.bytes_written);
  UNIT_INT ("altpath_unit_errors_total", "counter",
            "Requests the unit failed to its caller (a path failure the "
            "unit recovered from is not counted here).",
            st->counters.errors);

  family (o, "altpath_unit_switches_total", "counter",
          "Changes of the unit's active path: automatic (failover, "
          "failback, a better path joining) or manual (altpath switch).");
  for (size_t i = 0; i < n; i++) {
    out_printf (o, "altpath_unit_switches_total{%s,type=\"automatic\"} %"
                PRIu64 "\n", s[i].labels, s[i].st.switches_auto);
    out_printf (o, "altpath_unit_switches_total{%s,type=\"manual\"} %"
                PRIu64 "\n", s[i].labels, s[i].st.switches_manual);
  }
  family (o, "altpath_unit_last_switch_timestamp_seconds", "gauge",
          "When the unit last changed its active path (Unix time); 0 if "
          "never.");
  for (size_t i = 0; i < n; i++)
    out_printf (o, "altpath_unit_last_switch_timestamp_seconds{%s} %.3f\n",
                s[i].labels, (double) s[i].st.last_switch_unix_ms / 1000);
  family (o, "altpath_unit_longest_verify_seconds", "gauge",
          "The longest time the unit has spent in verify (holding I/O "
          "while it failed over).");
  for (size_t i = 0; i < n; i++)
    out_printf (o, "altpath_unit_longest_verify_seconds{%s} %.6f\n",
                s[i].labels, (double) s[i].st.longest_verify_us / 1e6);
  UNIT_INT ("altpath_unit_inflight", "gauge",
            "Requests in flight on the unit's active path.", st->inflight);
  UNIT_INT ("altpath_unit_held", "gauge",
            "Requests the unit holds while it verifies or switches (or "
            "queues while offline with queue-if-no-path).", st->held);

  family (o, "altpath_unit_latency_seconds", "histogram",
          "Latency of the unit's successful requests, from submission to "
          "completion (failovers included).  Buckets are the library's "
          "log2 microsecond buckets; _sum is an estimate from the bucket "
          "midpoints, not a measured sum.");
  for (size_t i = 0; i < n; i++)
    histogram (o, "altpath_unit_latency_seconds", s[i].labels,
               &s[i].st.counters);
}

static void
render_paths (struct out *o, const struct snap *s, size_t n)
{
  family (o, "altpath_path_state", "gauge",
          "1 for the state the path is in, 0 for the others: active "
          "(carries the unit's I/O), standby (healthy, hidden, ready), "
          "failed (an error, a timeout or a failed probe; probed until it "
          "works), disabled (by the operator).");
  for (size_t i = 0; i < n; i++)
    for (unsigned k = 0; k < s[i].st.npaths; k++)
      for (int v = AP_PATH_ACTIVE; v <= AP_PATH_DISABLED; v++)
        out_printf (o, "altpath_path_state{%s,state=\"%s\"} %d\n",
                    s[i].plabels[k],
                    ap_path_state_name ((enum ap_path_state) v),
                    s[i].st.paths[k].state == (enum ap_path_state) v);
  PATH_INT ("altpath_path_preferred", "gauge",
            "1 for the path the unit wants to be on (direct first, a "
            "pinned path while pinned).", ps->preferred);
  PATH_INT ("altpath_path_pinned", "gauge",
            "1 for the path an operator pinned the unit to.", ps->pinned);

  family (o, "altpath_path_ops_total", "counter",
          "Requests the path completed successfully, by operation (probes "
          "not included).");
  for (size_t i = 0; i < n; i++)
    for (unsigned k = 0; k < s[i].st.npaths; k++)
      for (size_t op = 0; op < 5; op++)
        out_printf (o, "altpath_path_ops_total{%s,op=\"%s\"} %" PRIu64 "\n",
                    s[i].plabels[k], op_names[op],
                    op_count (&s[i].st.paths[k].counters, op));
  PATH_INT ("altpath_path_read_bytes_total", "counter",
            "Bytes read through the path.", ps->counters.bytes_read);
  PATH_INT ("altpath_path_written_bytes_total", "counter",
            "Bytes written through the path.", ps->counters.bytes_written);
  PATH_INT ("altpath_path_errors_total", "counter",
            "Requests that failed on the path (the unit resubmits those "
            "that failed the path on another one).", ps->counters.errors);
  PATH_INT ("altpath_path_inflight", "gauge",
            "Requests in flight on the path.", ps->inflight);

  family (o, "altpath_path_probes_total", "counter",
          "Checker probes of the path (a one-block read), by result.");
  for (size_t i = 0; i < n; i++)
    for (unsigned k = 0; k < s[i].st.npaths; k++) {
      out_printf (o, "altpath_path_probes_total{%s,result=\"ok\"} %" PRIu64
                  "\n", s[i].plabels[k], s[i].st.paths[k].probes_ok);
      out_printf (o, "altpath_path_probes_total{%s,result=\"failed\"} %"
                  PRIu64 "\n", s[i].plabels[k],
                  s[i].st.paths[k].probes_failed);
    }
  family (o, "altpath_path_last_error_timestamp_seconds", "gauge",
          "When the path last failed a request or a probe (Unix time); 0 if "
          "never.  altpath show device NAME --full says what it was.");
  for (size_t i = 0; i < n; i++)
    for (unsigned k = 0; k < s[i].st.npaths; k++)
      out_printf (o, "altpath_path_last_error_timestamp_seconds{%s} %.3f\n",
                  s[i].plabels[k],
                  (double) s[i].st.paths[k].last_error_unix_ms / 1000);

  family (o, "altpath_path_latency_seconds", "histogram",
          "Latency of the path's successful requests, from sending to the "
          "path to completion.  Buckets are the library's log2 microsecond "
          "buckets; _sum is an estimate from the bucket midpoints, not a "
          "measured sum.");
  for (size_t i = 0; i < n; i++)
    for (unsigned k = 0; k < s[i].st.npaths; k++)
      histogram (o, "altpath_path_latency_seconds", s[i].plabels[k],
                 &s[i].st.paths[k].counters);
}

#undef UNIT_INT
#undef PATH_INT

static int
by_name (const void *a, const void *b)
{
  const struct export *x = *(struct export *const *) a;
  const struct export *y = *(struct export *const *) b;
  return strcmp (x->name, y->name);
}

/* The whole exposition into o. */
static void
render (struct metrics *m, struct out *o)
{
  struct export **v = NULL;
  size_t nv = m->view.units (m->view.opaque, &v);
  size_t n = nv;
  struct snap *s = calloc (n ? n : 1, sizeof *s);
  if (!s) {
    o->failed = true;
    n = 0;
  }
  if (v && n > 1)
    qsort (v, n, sizeof *v, by_name);
  for (size_t i = 0; i < n; i++) {
    struct snap *u = &s[i];
    ap_unit_get_status (v[i]->unit, &u->st);
    char dev[2 * AP_NAME_MAX], path[2 * AP_NAME_MAX];
    esc (u->st.name, dev, sizeof dev);
    snprintf (u->labels, sizeof u->labels, "device=\"%s\"", dev);
    for (unsigned k = 0; k < u->st.npaths; k++) {
      esc (u->st.paths[k].name, path, sizeof path);
      snprintf (u->plabels[k], sizeof u->plabels[k],
                "device=\"%s\",path=\"%s\",kind=\"%s\"", dev, path,
                ap_path_kind_name (u->st.paths[k].kind));
    }
  }
  for (size_t i = 0; i < nv; i++)
    export_put (v[i]);
  free (v);

  render_node (m, o, n);
  render_units (o, s, n);
  render_paths (o, s, n);
  free (s);
}

/* ------------------------------------------------------------------ HTTP */

/* Write all of buf before deadline, unless stopping.  0 or -1. */
static int
send_all (struct metrics *m, int fd, const char *buf, size_t len,
          uint64_t deadline)
{
  return ct_send_all (fd, buf, len, deadline, m->stop_pipe[0]);
}

static const char *
status_text (int code)
{
  switch (code) {
  case 200: return "OK";
  case 400: return "Bad Request";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 431: return "Request Header Fields Too Large";
  case 503: return "Service Unavailable";
  default: return "Internal Server Error";
  }
}

/* The reply's head into buf; body_len is the Content-Length. */
static int
reply_head (char *buf, size_t size, int code, const char *type,
            size_t body_len)
{
  return snprintf (buf, size,
                   "HTTP/1.1 %d %s\r\n"
                   "Content-Type: %s\r\n"
                   "Content-Length: %zu\r\n"
                   "%s%s"
                   "Connection: close\r\n"
                   "\r\n", code, status_text (code), type, body_len,
                   code == 405 ? "Allow: GET, HEAD\r\n" : "",
                   code == 503 ? "Retry-After: 1\r\n" : "");
}

/* An error reply with a one-line text body, within the deadline. */
static void
send_error (struct metrics *m, int fd, int code, bool head_only,
            const char *msg, uint64_t deadline)
{
  char body[512], hdr[512];
  int bl = snprintf (body, sizeof body, "%d %s: %s\n", code,
                     status_text (code), msg);
  if (bl < 0 || (size_t) bl >= sizeof body)
    bl = (int) strlen (body);
  int hl = reply_head (hdr, sizeof hdr, code, "text/plain; charset=utf-8",
                       (size_t) bl);
  if (send_all (m, fd, hdr, (size_t) hl, deadline) == 0 && !head_only)
    send_all (m, fd, body, (size_t) bl, deadline);
}

/* Read the request head (up to the empty line) into buf.  0 when it is
 * all there; else the status to answer (408, 431), or -1 to close
 * without a word (the client went away, or stopping). */
static int
read_head (struct client *cl, char *buf, size_t *have)
{
  struct metrics *m = cl->m;
  uint64_t deadline = cl->accepted_ns
    + (uint64_t) READ_TIMEOUT_MS * 1000000u;
  size_t len = 0, from = 0;

  for (;;) {
    /* The end of the head: an empty line ("\r\n\r\n", or "\n\n" from a
     * lax client), looked for in what is new and the 2 bytes before. */
    for (size_t i = from; i + 1 < len; i++)
      if (buf[i] == '\n'
          && (buf[i + 1] == '\n'
              || (buf[i + 1] == '\r' && i + 2 < len && buf[i + 2] == '\n'))) {
        *have = len;
        return 0;
      }
    if (len == REQUEST_MAX)
      return 431;
    uint64_t now = ap_now_ns ();
    if (now >= deadline)
      return len ? 408 : -1;    /* a silent connection gets nothing */
    struct pollfd pfd[2] = { { .fd = cl->fd, .events = POLLIN },
                             { .fd = m->stop_pipe[0], .events = POLLIN } };
    int r = poll (pfd, 2, (int) ((deadline - now) / 1000000u) + 1);
    if (r < 0 && errno != EINTR)
      return -1;
    if (r > 0 && pfd[1].revents)
      return -1;
    if (r <= 0 || !pfd[0].revents)
      continue;
    ssize_t n = read (cl->fd, buf + len, REQUEST_MAX - len);
    if (n == 0)
      return -1;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR)
        continue;
      return -1;
    }
    from = len > 2 ? len - 2 : 0;
    len += (size_t) n;
  }
}

/* Shut our side and discard what the client still sends, for a bounded
 * time and amount, so that a client still sending (a body, a huge
 * header) reads our reply before the close resets the connection. */
static void
linger_close (struct metrics *m, int fd)
{
  char sink[16384];
  size_t dropped = 0;
  uint64_t deadline = ap_now_ns () + (uint64_t) LINGER_MS * 1000000u;
  shutdown (fd, SHUT_WR);
  while (dropped < LINGER_MAX) {
    uint64_t now = ap_now_ns ();
    if (now >= deadline)
      break;
    struct pollfd pfd[2] = { { .fd = fd, .events = POLLIN },
                             { .fd = m->stop_pipe[0], .events = POLLIN } };
    int r = poll (pfd, 2, (int) ((deadline - now) / 1000000u) + 1);
    if (r < 0 && errno != EINTR)
      break;
    if (r > 0 && pfd[1].revents)
      break;
    if (r <= 0 || !pfd[0].revents)
      continue;
    ssize_t n = read (fd, sink, sizeof sink);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
      break;
    if (n > 0)
      dropped += (size_t) n;
  }
  close (fd);
}

/* The target's path: "/metrics" of "/metrics?x" or of an absolute-form
 * "http://host:9469/metrics". */
static void
target_path (const char *t, size_t len, char *out, size_t size)
{
  if (len >= 7 && (strncasecmp (t, "http://", 7) == 0
                   || (len >= 8 && strncasecmp (t, "https://", 8) == 0))) {
    const char *a = (const char *) memchr (t, ':', len) + 3;
    const char *slash = memchr (a, '/', len - (size_t) (a - t));
    if (!slash) {
      snprintf (out, size, "/");
      return;
    }
    len -= (size_t) (slash - t);
    t = slash;
  }
  size_t k = 0;
  while (k < len && t[k] != '?' && t[k] != '#')
    k++;
  snprintf (out, size, "%.*s", (int) k, t);
}

/* Answer one request. */
static void
serve (struct client *cl, char *buf, size_t len)
{
  struct metrics *m = cl->m;
  uint64_t wdeadline = ap_now_ns () + (uint64_t) WRITE_TIMEOUT_MS * 1000000u;

  /* The request line: METHOD SP TARGET SP HTTP/1.x */
  char *eol = memchr (buf, '\n', len);
  size_t ll = (size_t) (eol - buf);
  if (ll && buf[ll - 1] == '\r')
    ll--;
  buf[ll] = '\0';
  char *sp1 = strchr (buf, ' ');
  char *sp2 = sp1 ? strchr (sp1 + 1, ' ') : NULL;
  if (!sp1 || !sp2 || sp1 == buf || sp2 == sp1 + 1
      || strncmp (sp2 + 1, "HTTP/1.", 7) != 0) {
    ap_debug (AP_DEBUG_CONTROL, "metrics: %s: not an HTTP/1.x request",
              cl->addr);
    send_error (m, cl->fd, 400, false, "not an HTTP/1.x request; "
                "GET /metrics", wdeadline);
    return;
  }
  *sp1 = '\0';
  const char *method = buf;
  bool head = strcmp (method, "HEAD") == 0;
  char path[256];
  target_path (sp1 + 1, (size_t) (sp2 - sp1 - 1), path, sizeof path);

  if (strcmp (path, "/metrics") != 0) {
    ap_debug (AP_DEBUG_CONTROL, "metrics: %s: %s %s: 404", cl->addr, method,
              path);
    send_error (m, cl->fd, 404, head, "the metrics are at /metrics",
                wdeadline);
    return;
  }
  if (!head && strcmp (method, "GET") != 0) {
    ap_debug (AP_DEBUG_CONTROL, "metrics: %s: %s %s: 405", cl->addr, method,
              path);
    send_error (m, cl->fd, 405, false, "the metrics are read with GET "
                "(or HEAD)", wdeadline);
    return;
  }

  struct out o = { 0 };
  render (m, &o);
  if (o.failed) {
    ap_warn ("metrics: out of memory rendering the metrics for %s",
             cl->addr);
    send_error (m, cl->fd, 500, head, "out of memory; try again",
                wdeadline);
    free (o.p);
    return;
  }
  char hdr[512];
  int hl = reply_head (hdr, sizeof hdr, 200,
                       "text/plain; version=0.0.4; charset=utf-8", o.len);
  if (send_all (m, cl->fd, hdr, (size_t) hl, wdeadline) == 0 && !head)
    send_all (m, cl->fd, o.p, o.len, wdeadline);
  free (o.p);
}

static void *
client_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "ap-metrics-req");
  struct client *cl = arg;
  struct metrics *m = cl->m;
  char *buf = malloc (REQUEST_MAX + 1);

  if (!buf)
    send_error (m, cl->fd, 500, false, "out of memory; try again",
                ap_now_ns () + (uint64_t) WRITE_TIMEOUT_MS * 1000000u);
  else {
    size_t len = 0;
    int r = read_head (cl, buf, &len);
    uint64_t wdeadline = ap_now_ns ()
      + (uint64_t) WRITE_TIMEOUT_MS * 1000000u;
    if (r == 0)
      serve (cl, buf, len);
    else if (r == 408)
      send_error (m, cl->fd, 408, false, "the request did not arrive "
                  "within the read timeout", wdeadline);
    else if (r == 431) {
      char msg[128];
      snprintf (msg, sizeof msg, "the request line and headers are longer "
                "than %d bytes", REQUEST_MAX);
      ap_debug (AP_DEBUG_CONTROL, "metrics: %s: %s", cl->addr, msg);
      send_error (m, cl->fd, 431, false, msg, wdeadline);
    }
  }
  free (buf);
  linger_close (m, cl->fd);
  pthread_mutex_lock (&m->lock);
  cl->fd = -1;
  cl->ct.done = true;
  pthread_mutex_unlock (&m->lock);
  return NULL;
}

/* An error reply to a client that gets no thread: best effort, never
 * waiting. */
static void
refuse_now (int fd, int code, const char *msg)
{
  char buf[768], body[512];
  int bl = snprintf (body, sizeof body, "%d %s: %s\n", code,
                     status_text (code), msg);
  int hl = reply_head (buf, sizeof buf - sizeof body, code,
                       "text/plain; charset=utf-8", (size_t) bl);
  memcpy (buf + hl, body, (size_t) bl);
  if (send (fd, buf, (size_t) (hl + bl), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
    /* gone already: nothing to tell */
  }
  close (fd);
}

static void
peer_string (const struct sockaddr_storage *sa, char *out, size_t size)
{
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (sa->ss_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *) sa;
    inet_ntop (AF_INET, &s4->sin_addr, host, sizeof host);
    port = ntohs (s4->sin_port);
  }
  else if (sa->ss_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *) sa;
    inet_ntop (AF_INET6, &s6->sin6_addr, host, sizeof host);
    port = ntohs (s6->sin6_port);
  }
  snprintf (out, size, "%s:%u", host, port);
}

static void
accept_one (struct metrics *m)
{
  struct sockaddr_storage sa;
  socklen_t salen = sizeof sa;
  int fd = accept4 (m->listen_fd, (struct sockaddr *) &sa, &salen,
                    SOCK_NONBLOCK | SOCK_CLOEXEC);
  char what[sizeof m->where + 32];
  snprintf (what, sizeof what, "the metrics listener on %s", m->where);
  if (fd < 0) {
    if (accept_trouble_failed (&m->accept_trouble, what, errno))
      usleep (ACCEPT_TROUBLE_WAIT_MS * 1000);   /* no busy loop */
    return;
  }
  accept_trouble_ok (&m->accept_trouble, what);
  struct client *cl = calloc (1, sizeof *cl);
  if (cl) {
    cl->m = m;
    cl->fd = fd;
    cl->accepted_ns = ap_now_ns ();
    peer_string (&sa, cl->addr, sizeof cl->addr);
  }
  int r = ct_start (&m->clients, cl ? &cl->ct : NULL, client_thread, cl);
  if (r == 0)
    return;
  if (r == CT_FULL)
    refuse_now (fd, 503, "too many scrapes at once; try again");
  else if (r == CT_NOMEM)
    refuse_now (fd, 500, "out of memory; try again");
  else
    refuse_now (fd, 503, "cannot start a thread for this request; try "
                "again");
  free (cl);
}

static void *
acceptor_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "ap-metrics");
  struct metrics *m = arg;
  for (;;) {
    struct pollfd pfd[2] = {
      { .fd = m->listen_fd, .events = POLLIN },
      { .fd = m->stop_pipe[0], .events = POLLIN },
    };
    /* A second now and then to join the clients that finished. */
    int r = poll (pfd, 2, 1000);
    if (r < 0 && errno != EINTR) {
      ap_error ("metrics: poll on %s: %s; the metrics stop", m->where,
                strerror (errno));
      break;
    }
    if (r > 0 && pfd[1].revents)
      break;
    ct_reap (&m->clients, false);
    if (r > 0 && pfd[0].revents)
      accept_one (m);
  }
  return NULL;
}

/* ------------------------------------------------------------ start/stop */

static bool
sockaddr_is_loopback (const struct sockaddr *sa)
{
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *) sa;
    return (ntohl (s4->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *) sa)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK (a6)
      || (IN6_IS_ADDR_V4MAPPED (a6) && a6->s6_addr[12] == 127);
  }
  return false;
}

/* Bind and listen on the first address of host:port that works. */
static int
open_listener (struct metrics *m, const char *host, const char *port,
               bool allow_remote, char *err, size_t errlen)
{
  struct addrinfo hints = { .ai_family = AF_UNSPEC,
                            .ai_socktype = SOCK_STREAM,
                            .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
  struct addrinfo *res = NULL;
  int g = getaddrinfo (host, port, &hints, &res);
  if (g != 0) {
    snprintf (err, errlen, "metrics: cannot resolve %s: %s; give an address "
              "in [metrics] listen, e.g. 127.0.0.1:9469", m->where,
              gai_strerror (g));
    return -1;
  }
  int e = 0;
  bool remote_refused = false;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    if (!allow_remote && !sockaddr_is_loopback (ai->ai_addr)) {
      remote_refused = true;
      continue;
    }
    int fd = socket (ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK
                     | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      e = errno;
      continue;
    }
    int one = 1;
    setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6)
      setsockopt (fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind (fd, ai->ai_addr, ai->ai_addrlen) < 0
        || listen (fd, LISTEN_BACKLOG) < 0) {
      e = errno;
      close (fd);
      continue;
    }
    m->listen_fd = fd;
    break;
  }
  freeaddrinfo (res);
  if (m->listen_fd >= 0)
    return 0;
  if (e == EADDRINUSE)
    snprintf (err, errlen, "metrics: cannot listen on %s: the port is in "
              "use (another altpathd, or another exporter?); choose "
              "another port in [metrics] listen", m->where);
  else if (e)
    snprintf (err, errlen, "metrics: cannot listen on %s: %s; check "
              "[metrics] listen", m->where, strerror (e));
  else if (remote_refused)
    snprintf (err, errlen, "metrics: %s is not a loopback address; write "
              "'allow-remote = yes' in [metrics] to serve the metrics on "
              "the network, or listen on 127.0.0.1", m->where);
  else
    snprintf (err, errlen, "metrics: %s names no address to listen on",
              m->where);
  return -1;
}

struct metrics *
metrics_start (const char *host, const char *port, bool allow_remote,
               const struct metrics_view *view, char *err, size_t errlen)
{
  struct metrics *m = calloc (1, sizeof *m);
  if (!m) {
    snprintf (err, errlen, "metrics: out of memory");
    return NULL;
  }
  m->listen_fd = -1;
  m->stop_pipe[0] = m->stop_pipe[1] = -1;
  pthread_mutex_init (&m->lock, NULL);
  m->clients = (struct ct_set) { .lock = &m->lock,
                                 .max = METRICS_MAX_CLIENTS };
  m->view = *view;
  snprintf (m->node, sizeof m->node, "%s", view->node ? view->node : "");
  snprintf (m->daemon_version, sizeof m->daemon_version, "%s",
            view->daemon_version ? view->daemon_version : "altpathd");
  m->view.node = m->node;
  m->view.daemon_version = m->daemon_version;
  snprintf (m->where, sizeof m->where, strchr (host, ':') ? "[%s]:%s"
            : "%s:%s", host, port);

  if (pipe2 (m->stop_pipe, O_CLOEXEC) < 0) {
    snprintf (err, errlen, "metrics on %s: pipe: %s", m->where,
              strerror (errno));
    goto fail;
  }
  if (open_listener (m, host, port, allow_remote, err, errlen) < 0)
    goto fail;
  int r = pthread_create (&m->acceptor, NULL, acceptor_thread, m);
  if (r != 0) {
    snprintf (err, errlen, "metrics on %s: cannot start its thread: %s",
              m->where, strerror (r));
    goto fail;
  }
  m->acceptor_started = true;
  ap_info ("metrics: http://%s/metrics%s", m->where,
           allow_remote ? " (remote scrapers allowed)" : "");
  return m;

 fail:
  if (m->listen_fd >= 0)
    close (m->listen_fd);
  for (int i = 0; i < 2; i++)
    if (m->stop_pipe[i] >= 0)
      close (m->stop_pipe[i]);
  pthread_mutex_destroy (&m->lock);
  free (m);
  return NULL;
}

void
metrics_stop (struct metrics *m)
{
  if (!m)
    return;
  while (write (m->stop_pipe[1], "s", 1) < 0 && errno == EINTR)
    ;
  if (m->acceptor_started)
    pthread_join (m->acceptor, NULL);
  close (m->listen_fd);
  /* Every client thread sees the stop pipe in its next wait; one that is
   * rendering finishes that first (a few locks of the units, briefly). */
  ct_reap (&m->clients, true);
  for (int i = 0; i < 2; i++)
    close (m->stop_pipe[i]);
  pthread_mutex_destroy (&m->lock);
  free (m);
}
