/* control.c — the control socket: the operator's requests (altpath, or
 * any program) and their replies, one JSON object per line each way
 * (docs/cli.md has the protocol).  The shape is multipath-tools': a
 * listener (uxlsnr.c) and one handler per command (cli_handlers.c).
 *
 *   acceptor thread ── accept ── SO_PEERCRED: root, the daemon's own user,
 *        │                       or the [control] group?  no: EACCES, close
 *        │                       CONTROL_MAX_CLIENTS already? EBUSY, close
 *        ▼ one thread per client
 *   client thread ── a line (at most CTL_LINE_MAX, within READ_TIMEOUT_MS
 *        │           once begun; idle connections end after
 *        │           IDLE_TIMEOUT_MS)
 *        │        ── ctl_parse_request (control-request.h: pure, fuzzed);
 *        │           a line it refuses gets an error and the connection
 *        │           is closed: nothing after it can be trusted
 *        │        ── the command's handler ── one reply line (its write
 *        │           bounded by WRITE_TIMEOUT_MS)
 *        ▼ after "watch" the client only receives
 *   unit threads ── control_event ── each watcher's queue (bounded: a slow
 *                   watcher loses events and is told, the unit never
 *                   waits) ── eventfd ── the client thread writes them
 *
 * A client that is slow, silent or hostile holds only its own thread:
 * every wait of a client thread is a poll() bounded by a timeout and by
 * the stop pipe (a pipe-to-self, as nbdkit's quit.c: control_stop writes
 * it once and every thread's poll() sees it readable from then on).
 *
 * Lock: ctl->lock guards the client list and the watchers' queues.  It
 * is a leaf: never held while calling the daemon (the view's callbacks)
 * or the library, because a library call (ap_unit_switch) may wait for a
 * unit thread that is itself waiting for ctl->lock in control_event.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "clock.h"
#include "daemon.h"
#include "client-threads.h"
#include "control-request.h"
#include "accept-trouble.h"
#include "log.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59        /* Linux 4.13; older headers lack it */
#endif

/* Limits (tests/test-control.c defines smaller ones before including
 * this file). */
#ifndef CONTROL_MAX_CLIENTS
#define CONTROL_MAX_CLIENTS 64
#endif
#ifndef READ_TIMEOUT_MS
#define READ_TIMEOUT_MS   10000 /* to finish a request line once begun */
#endif
#ifndef IDLE_TIMEOUT_MS
#define IDLE_TIMEOUT_MS   60000 /* between requests (watchers: none) */
#endif
#ifndef WRITE_TIMEOUT_MS
#define WRITE_TIMEOUT_MS  10000 /* to take one reply or event line */
#endif
#ifndef WATCH_QUEUE_MAX
#define WATCH_QUEUE_MAX   4096  /* event lines waiting for one watcher */
#endif
#define LISTEN_BACKLOG    CONTROL_MAX_CLIENTS /* a burst of clients
                                   waits in the queue, not refused */

/* An event line waiting for a watcher. */
struct qline {
  struct qline *next;
  size_t len;
  char text[];                  /* ends with '\n' */
};

struct client {
  struct ct_thread ct;          /* first: in ctl->clients (done: under
                                   ctl->lock, the thread has finished) */
  struct control *ctl;
  int fd;                       /* the connection, non-blocking */
  int wake_fd;                  /* eventfd: events queued */
  uid_t uid;
  pid_t pid;
  /* Under ctl->lock: */
  bool watching;                /* receives events */
  struct qline *qhead, *qtail;  /* events not yet written */
  size_t qlen;
  uint64_t lost;                /* dropped since the last "lost" line */
};
_Static_assert (offsetof (struct client, ct) == 0,
                "ct_reap frees a struct client through its ct");

struct control {
  char path[sizeof ((struct sockaddr_un *) 0)->sun_path];
  char node[64];
  char daemon_version[64];
  struct control_view view;     /* its strings point at the copies above */
  char group[64];               /* "" if none */
  gid_t gid;
  int listen_fd;
  dev_t sock_dev;               /* the socket file made, to remove only */
  ino_t sock_ino;               /* that one */
  int stop_pipe[2];             /* [0] readable once stopping */
  pthread_t acceptor;
  bool acceptor_started;
  struct accept_trouble accept_trouble;
  atomic_uint nwatchers;        /* a fast "nobody listens" for events */

  pthread_mutex_t lock;         /* the fields below; a leaf (see top) */
  struct ct_set clients;        /* of struct client, at most
                                   CONTROL_MAX_CLIENTS */
  bool stopping;
};


/* An errno as the protocol names it ("ENOENT"). */
static const char *
errno_code (int e)
{
  if (e < 0)
    e = -e;
  const char *s = e ? strerrorname_np (e) : NULL;
  return s ? s : "EIO";
}

/* ------------------------------------------------------------ replies */

static json_object *
reply_ok (void)
{
  json_object *o = json_object_new_object ();
  json_object_object_add (o, "version", json_object_new_int (CTL_VERSION));
  json_object_object_add (o, "ok", json_object_new_boolean (true));
  return o;
}

static json_object * __attribute__ ((format (printf, 2, 3)))
reply_error (const char *code, const char *fmt, ...)
{
  char msg[2048];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  json_object *o = json_object_new_object ();
  json_object_object_add (o, "version", json_object_new_int (CTL_VERSION));
  json_object_object_add (o, "ok", json_object_new_boolean (false));
  json_object_object_add (o, "error", json_object_new_string (msg));
  json_object_object_add (o, "code", json_object_new_string (code));
  return o;
}

/* The object as one line, '\n' included (malloc'd); consumes o. */
static char *
to_line (json_object *o, size_t *len)
{
  const char *s = json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN
                                                  | JSON_C_TO_STRING_NOSLASHESCAPE);
  size_t n = s ? strlen (s) : 0;
  char *line = malloc (n + 2);
  if (line) {
    memcpy (line, s, n);
    line[n] = '\n';
    line[n + 1] = '\0';
    *len = n + 1;
  }
  json_object_put (o);
  return line;
}

/* Write all of buf, within WRITE_TIMEOUT_MS, unless stopping.  0 or -1. */
static int
send_all (struct control *ctl, int fd, const char *buf, size_t len)
{
  return ct_send_all (fd, buf, len, ap_now_ns ()
                      + (uint64_t) WRITE_TIMEOUT_MS * 1000000u,
                      ctl->stop_pipe[0]);
}

static int
send_reply (struct client *cl, json_object *o)
{
  size_t len;
  char *line = to_line (o, &len);
  if (!line)
    return -1;
  int r = send_all (cl->ctl, cl->fd, line, len);
  free (line);
  return r;
}

/* To a client we are about to close without a thread of its own: one
 * short line, best effort, never waiting. */
static void
send_now (int fd, json_object *o)
{
  size_t len;
  char *line = to_line (o, &len);
  if (line && send (fd, line, len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
    /* it went away: nothing to tell */
  }
  free (line);
}

/* ------------------------------------------------------------- units */

static int
by_name (const void *a, const void *b)
{
  const struct export *x = *(struct export *const *) a;
  const struct export *y = *(struct export *const *) b;
  return strcmp (x->name, y->name);
}

/* The node's units, sorted by name. */
static size_t
get_units (struct control *ctl, struct export ***out)
{
  size_t n = ctl->view.units (ctl->view.opaque, out);
  if (*out && n > 1)
    qsort (*out, n, sizeof **out, by_name);
  return n;
}

static void
put_units (struct export **v, size_t n)
{
  for (size_t i = 0; i < n; i++)
    export_put (v[i]);
  free (v);
}

/* A unit's status (ap_unit_status_json's stable schema) as an object. */
static json_object *
unit_json (struct export *e)
{
  char *s = ap_unit_status_json (e->unit);
  json_object *o = s ? json_tokener_parse (s) : NULL;
  free (s);
  return o;
}

/* "a, b and c", the names of v (the first few), into buf. */
static void
name_list (char *buf, size_t size, const char *const *names, size_t n)
{
  size_t len = 0;
  const size_t show = 12;
  buf[0] = '\0';
  for (size_t i = 0; i < n && i < show && len < size; i++)
    len += (size_t) snprintf (buf + len, size - len, "%s%s",
                              i == 0 ? "" : i + 1 == n ? " and " : ", ",
                              names[i]);
  if (n > show && len < size)
    snprintf (buf + len, size - len, " and %zu more", n - show);
}

/* The unit named name (exact, else ignoring case, as OpenVMS names are):
 * a reference, or NULL and *err an ENOENT reply listing the devices. */
static struct export *
find_unit (struct control *ctl, const char *name, json_object **err)
{
  struct export **v = NULL;
  size_t n = get_units (ctl, &v);
  struct export *found = NULL;
  for (size_t i = 0; i < n && !found; i++)
    if (strcmp (v[i]->name, name) == 0)
      found = v[i];
  for (size_t i = 0; i < n && !found; i++)
    if (strcasecmp (v[i]->name, name) == 0)
      found = v[i];
  if (found) {
    export_get (found);
    put_units (v, n);
    return found;
  }
  if (n == 0)
    *err = reply_error ("ENOENT", "no device '%s': node %s has no devices "
                        "(yet); 'altpath rescan' looks on its ports again",
                        name, ctl->node);
  else {
    const char **names = calloc (n, sizeof *names);
    char list[1024] = "";
    for (size_t i = 0; names && i < n; i++)
      names[i] = v[i]->name;
    if (names)
      name_list (list, sizeof list, names, n);
    free (names);
    *err = reply_error ("ENOENT", "no device '%s' on node %s; its devices "
                        "are %s ('altpath show devices')", name, ctl->node,
                        list);
  }
  put_units (v, n);
  return NULL;
}

/* Where name is among names: the exact spelling, else ignoring case; -1
 * if nowhere. */
static int
name_index (const char *const *names, unsigned n, const char *name)
{
  for (unsigned i = 0; i < n; i++)
    if (strcmp (names[i], name) == 0)
      return (int) i;
  for (unsigned i = 0; i < n; i++)
    if (strcasecmp (names[i], name) == 0)
      return (int) i;
  return -1;
}

/* The path of unit e named name into out; else -1 and *err an ENOENT
 * reply listing its paths.  kept_disabled: a name the unit keeps disabled
 * though no path of that name is there now (struct ap_unit_choices) is
 * found too (enabling it forgets the choice). */
static int
find_path (struct export *e, const char *name, bool kept_disabled,
           char out[AP_NAME_MAX], json_object **err)
{
  struct ap_unit_status *st = malloc (sizeof *st);
  if (!st) {
    *err = reply_error ("ENOMEM", "out of memory");
    return -1;
  }
  ap_unit_get_status (e->unit, st);
  const char *names[AP_MAX_PATHS], *kept[AP_MAX_PATHS];
  for (unsigned i = 0; i < st->npaths; i++)
    names[i] = st->paths[i].name;
  for (unsigned i = 0; i < st->choices.ndisabled; i++)
    kept[i] = st->choices.disabled[i];
  int found = name_index (names, st->npaths, name);
  if (found < 0 && kept_disabled
      && (found = name_index (kept, st->choices.ndisabled, name)) >= 0)
    names[found] = kept[found];
  if (found >= 0) {
    snprintf (out, AP_NAME_MAX, "%s", names[found]);
    free (st);
    return 0;
  }
  char list[1024] = "";
  name_list (list, sizeof list, names, st->npaths);
  *err = reply_error ("ENOENT", "device %s has no path '%s'; its paths are "
                      "%s ('altpath show device %s')", e->name, name,
                      st->npaths ? list : "none", e->name);
  free (st);
  return -1;
}

/* ----------------------------------------------------------- handlers */

/* Each returns the reply (never NULL); cl is the asking client. */
typedef json_object *handler_fn (struct client *cl,
                                 const struct ctl_request *rq);

static json_object *
do_ping (struct client *cl, const struct ctl_request *rq)
{
  json_object *o = reply_ok ();
  json_object_object_add (o, "node", json_object_new_string (cl->ctl->node));
  json_object_object_add (o, "daemon",
                          json_object_new_string (cl->ctl->daemon_version));
  json_object_object_add (o, "api", json_object_new_int (AP_API_VERSION));
  return o;
}

static json_object *
do_list (struct client *cl, const struct ctl_request *rq)
{
  struct export **v = NULL;
  size_t n = get_units (cl->ctl, &v);
  json_object *o = reply_ok ();
  json_object *units = json_object_new_array ();
  for (size_t i = 0; i < n; i++) {
    json_object *u = unit_json (v[i]);
    if (u)
      json_object_array_add (units, u);
  }
  put_units (v, n);
  json_object_object_add (o, "node", json_object_new_string (cl->ctl->node));
  json_object_object_add (o, "devices", units);
  return o;
}

static json_object *
do_show (struct client *cl, const struct ctl_request *rq)
{
  json_object *err = NULL;
  struct export *e = find_unit (cl->ctl, rq->device, &err);
  if (!e)
    return err;
  json_object *u = unit_json (e);
  export_put (e);
  if (!u)
    return reply_error ("ENOMEM", "out of memory reading the status of %s",
                        rq->device);
  json_object *o = reply_ok ();
  json_object_object_add (o, "node", json_object_new_string (cl->ctl->node));
  json_object_object_add (o, "device", u);
  return o;
}

static json_object *
do_cluster (struct client *cl, const struct ctl_request *rq)
{
  struct control *ctl = cl->ctl;
  char *s = ctl->view.cluster_json ? ctl->view.cluster_json (ctl->view.opaque)
    : NULL;
  json_object *o = reply_ok ();
  json_object_object_add (o, "node", json_object_new_string (ctl->node));
  json_object_object_add (o, "in_cluster", json_object_new_boolean (s != NULL));
  if (s) {
    json_object *c = json_tokener_parse (s);
    free (s);
    if (!c) {
      json_object_put (o);
      return reply_error ("EIO", "the cluster's state could not be read "
                          "(internal error); see altpathd's log");
    }
    json_object_object_add (o, "cluster", c);
  }
  return o;
}

/* The common part of the commands that change a unit. */
enum change { CH_SWITCH, CH_UNPIN, CH_DISABLE, CH_ENABLE };

static json_object *
do_change (struct client *cl, const struct ctl_request *rq, enum change what)
{
  static const char *const verb[] = {
    [CH_SWITCH] = "switch", [CH_UNPIN] = "unpin",
    [CH_DISABLE] = "disable path", [CH_ENABLE] = "enable path",
  };
  json_object *err = NULL;
  struct export *e = find_unit (cl->ctl, rq->device, &err);
  if (!e)
    return err;
  char path[AP_NAME_MAX] = "";
  /* A path that is gone but kept disabled may be enabled: the unit then
   * forgets the choice, and the path joins enabled when it returns. */
  if (what != CH_UNPIN
      && find_path (e, rq->path, what == CH_ENABLE, path, &err) < 0) {
    export_put (e);
    return err;
  }
  ap_info ("control: uid %u (pid %d): %s %s%s%s", (unsigned) cl->uid,
           (int) cl->pid, verb[what], e->name, path[0] ? " " : "", path);
  int r;
  switch (what) {
  case CH_SWITCH: r = ap_unit_switch (e->unit, path); break;
  case CH_UNPIN: r = ap_unit_unpin (e->unit); break;
  case CH_DISABLE: r = ap_unit_disable_path (e->unit, path); break;
  default: r = ap_unit_enable_path (e->unit, path); break;
  }
  int en = r < 0 ? ap_get_errno () : 0;
  char failed[1024] = "";
  if (r < 0)
    snprintf (failed, sizeof failed, "%s", ap_get_error ());
  /* Keep the choice for the next start, also after a command that failed
   * part way (a switch that is still draining has pinned the path). */
  char why[1024] = "";
  struct control *ctl = cl->ctl;
  int kept = ctl->view.keep_choices
    ? ctl->view.keep_choices (ctl->view.opaque, e, why, sizeof why) : 0;
  if (kept < 0)
    ap_error ("control: %s %s%s%s: the choice is not kept for altpathd's "
              "next start: %s", verb[what], e->name, path[0] ? " " : "",
              path, why);
  json_object *o;
  if (r < 0) {
    ap_warn ("control: %s %s%s%s failed: %s", verb[what], e->name,
             path[0] ? " " : "", path, failed);
    o = reply_error (errno_code (en), "%s", failed);
  }
  else if (kept < 0)
    o = reply_error ("EIO", "%s %s%s%s is done, but altpathd could not keep "
                     "it for its next start (%s): a restart would undo it; "
                     "fix that and run the command again", verb[what],
                     e->name, path[0] ? " " : "", path, why);
  else {
    o = reply_ok ();
    json_object_object_add (o, "node", json_object_new_string (cl->ctl->node));
    if (path[0])
      json_object_object_add (o, "path", json_object_new_string (path));
    json_object *u = unit_json (e);
    if (u)
      json_object_object_add (o, "device", u);
  }
  export_put (e);
  return o;
}

static json_object *
do_switch (struct client *cl, const struct ctl_request *rq)
{
  return do_change (cl, rq, CH_SWITCH);
}

static json_object *
do_unpin (struct client *cl, const struct ctl_request *rq)
{
  return do_change (cl, rq, CH_UNPIN);
}

static json_object *
do_disable (struct client *cl, const struct ctl_request *rq)
{
  return do_change (cl, rq, CH_DISABLE);
}

static json_object *
do_enable (struct client *cl, const struct ctl_request *rq)
{
  return do_change (cl, rq, CH_ENABLE);
}

static json_object *
do_rescan (struct client *cl, const struct ctl_request *rq)
{
  struct control *ctl = cl->ctl;
  ap_info ("control: uid %u (pid %d): rescan", (unsigned) cl->uid,
           (int) cl->pid);
  if (ctl->view.rescan)
    ctl->view.rescan (ctl->view.opaque);
  json_object *o = reply_ok ();
  struct export **v = NULL;
  size_t n = get_units (ctl, &v);
  put_units (v, n);
  json_object_object_add (o, "node", json_object_new_string (ctl->node));
  json_object_object_add (o, "device_count", json_object_new_int ((int) n));
  return o;
}

static json_object *
do_watch (struct client *cl, const struct ctl_request *rq)
{
  struct control *ctl = cl->ctl;
  /* Subscribe before the reply goes out: an event from now on follows
   * it (the thread writes the reply first, then the queue). */
  pthread_mutex_lock (&ctl->lock);
  if (!cl->watching) {
    cl->watching = true;
    atomic_fetch_add (&ctl->nwatchers, 1);
  }
  pthread_mutex_unlock (&ctl->lock);
  json_object *o = reply_ok ();
  json_object_object_add (o, "node", json_object_new_string (ctl->node));
  json_object_object_add (o, "watching", json_object_new_boolean (true));
  return o;
}

static handler_fn *const handlers[CTL_NCMDS] = {
  [CTL_PING] = do_ping, [CTL_LIST] = do_list, [CTL_SHOW] = do_show,
  [CTL_CLUSTER] = do_cluster, [CTL_SWITCH] = do_switch,
  [CTL_UNPIN] = do_unpin, [CTL_DISABLE_PATH] = do_disable,
  [CTL_ENABLE_PATH] = do_enable, [CTL_RESCAN] = do_rescan,
  [CTL_WATCH] = do_watch,
};

/* --------------------------------------------------------------- events */

static const char *const event_type_names[] = {
  [AP_EVENT_UNIT_STATE] = "device-state", [AP_EVENT_PATH_STATE] = "path-state",
  [AP_EVENT_SWITCH] = "switch", [AP_EVENT_PATH_ADDED] = "path-added",
  [AP_EVENT_PATH_REMOVED] = "path-removed",
};

static struct qline *
qline_new (json_object *o)
{
  size_t len;
  char *s = to_line (o, &len);
  struct qline *q = s ? malloc (sizeof *q + len + 1) : NULL;
  if (q) {
    q->next = NULL;
    q->len = len;
    memcpy (q->text, s, len + 1);
  }
  free (s);
  return q;
}

static json_object *
event_object (int64_t time_ms, const char *type)
{
  json_object *o = json_object_new_object ();
  json_object_object_add (o, "time_unix_ms", json_object_new_int64 (time_ms));
  json_object_object_add (o, "type", json_object_new_string (type));
  return o;
}

static json_object *
event_line (json_object *ev)
{
  json_object *o = json_object_new_object ();
  json_object_object_add (o, "version", json_object_new_int (CTL_VERSION));
  json_object_object_add (o, "event", ev);
  return o;
}

void
control_event (void *opaque, const struct ap_event *ev)
{
  struct control *ctl = opaque;
  if (!ctl || atomic_load (&ctl->nwatchers) == 0)
    return;
  if ((unsigned) ev->type >= sizeof event_type_names / sizeof event_type_names[0])
    return;

  /* When it happened, on the wall clock. */
  uint64_t now = ap_now_ns ();
  int64_t ago_ms = now > ev->mono_ns ? (int64_t) ((now - ev->mono_ns) / 1000000u)
    : 0;
  json_object *e = event_object (ap_unix_ms () - ago_ms,
                                 event_type_names[ev->type]);
  json_object_object_add (e, "device", json_object_new_string (ev->unit ? ev->unit
                                                             : ""));
  json_object_object_add (e, "path", json_object_new_string (ev->path ? ev->path
                                                             : ""));
  if (ev->type == AP_EVENT_SWITCH)
    json_object_object_add (e, "from_path",
                            json_object_new_string (ev->from_path
                                                    ? ev->from_path : ""));
  if (ev->type == AP_EVENT_UNIT_STATE) {
    json_object_object_add (e, "old_state", json_object_new_string
                            (ap_unit_state_name ((enum ap_unit_state) ev->old_state)));
    json_object_object_add (e, "new_state", json_object_new_string
                            (ap_unit_state_name ((enum ap_unit_state) ev->new_state)));
  }
  else if (ev->type == AP_EVENT_PATH_STATE) {
    json_object_object_add (e, "old_state", json_object_new_string
                            (ap_path_state_name ((enum ap_path_state) ev->old_state)));
    json_object_object_add (e, "new_state", json_object_new_string
                            (ap_path_state_name ((enum ap_path_state) ev->new_state)));
  }
  json_object_object_add (e, "reason", json_object_new_string (ev->reason
                                                               ? ev->reason
                                                               : ""));
  int err = ev->err < 0 ? -ev->err : ev->err;
  json_object_object_add (e, "errno", json_object_new_int (err));
  json_object_object_add (e, "error", json_object_new_string (err
                                                              ? errno_code (err)
                                                              : ""));
  struct qline *proto = qline_new (event_line (e));
  if (!proto)
    return;

  pthread_mutex_lock (&ctl->lock);
  for (struct ct_thread *t = ctl->clients.head; t && !ctl->stopping;
       t = t->next) {
    struct client *cl = (struct client *) t;
    if (!cl->watching)
      continue;
    struct qline *q = NULL;
    if (cl->qlen < WATCH_QUEUE_MAX
        && (q = malloc (sizeof *q + proto->len + 1))) {
      memcpy (q, proto, sizeof *q + proto->len + 1);
      q->next = NULL;
      if (cl->qtail)
        cl->qtail->next = q;
      else
        cl->qhead = q;
      cl->qtail = q;
      cl->qlen++;
    }
    else
      cl->lost++;
    uint64_t one = 1;
    if (write (cl->wake_fd, &one, sizeof one) < 0) {
      /* the counter is already non-zero: it is awake anyway */
    }
  }
  pthread_mutex_unlock (&ctl->lock);
  free (proto);
}

/* The next line for a watcher (free it), or NULL. */
static struct qline *
next_event (struct client *cl)
{
  struct control *ctl = cl->ctl;
  pthread_mutex_lock (&ctl->lock);
  struct qline *q = cl->qhead;
  if (q) {
    cl->qhead = q->next;
    if (!cl->qhead)
      cl->qtail = NULL;
    cl->qlen--;
  }
  uint64_t lost = q ? 0 : cl->lost;
  if (!q)
    cl->lost = 0;
  pthread_mutex_unlock (&ctl->lock);
  if (q || !lost)
    return q;
  /* The queue ran dry after overflowing: say what was missed, in order. */
  char why[160];
  snprintf (why, sizeof why, "%llu event%s lost: this watcher read too "
            "slowly", (unsigned long long) lost, lost == 1 ? "" : "s");
  json_object *e = event_object (ap_unix_ms (), "lost");
  json_object_object_add (e, "count", json_object_new_uint64 (lost));
  json_object_object_add (e, "reason", json_object_new_string (why));
  return qline_new (event_line (e));
}

/* ------------------------------------------------------------- clients */

/* One request line (without its newline): 0 to go on, -1 to close. */
static int
handle_line (struct client *cl, const char *line, size_t len)
{
  struct ctl_request rq;
  const char *code;
  char err[512];

  if (ctl_parse_request (line, len, &rq, &code, err, sizeof err) < 0) {
    ap_debug (AP_DEBUG_CONTROL, "control: uid %u (pid %d): refused: %s",
              (unsigned) cl->uid, (int) cl->pid, err);
    send_reply (cl, reply_error (code, "%s; closing the connection", err));
    return -1;
  }
  json_object *o = handlers[rq.cmd] (cl, &rq);
  return send_reply (cl, o);
}

static int
ms_until (uint64_t deadline, uint64_t now)
{
  return deadline > now ? (int) ((deadline - now) / 1000000u) + 1 : 0;
}

static void *
client_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "ap-ctl-client");
  struct client *cl = arg;
  struct control *ctl = cl->ctl;
  char *buf = malloc (CTL_LINE_MAX);
  size_t have = 0;
  uint64_t line_start = 0;      /* when the unfinished line began */
  uint64_t idle_since = ap_now_ns ();

  while (buf) {
    bool watching;
    pthread_mutex_lock (&ctl->lock);
    watching = cl->watching;
    pthread_mutex_unlock (&ctl->lock);

    if (watching) {
      struct qline *q;
      bool failed = false;
      while (!failed && (q = next_event (cl))) {
        failed = send_all (ctl, cl->fd, q->text, q->len) < 0;
        free (q);
      }
      if (failed)
        break;                  /* gone, stuck for WRITE_TIMEOUT_MS, or
                                   stopping */
    }

    uint64_t now = ap_now_ns ();
    int timeout = -1;
    if (!watching)
      timeout = have ? ms_until (line_start
                                 + (uint64_t) READ_TIMEOUT_MS * 1000000u, now)
        : ms_until (idle_since + (uint64_t) IDLE_TIMEOUT_MS * 1000000u, now);
    struct pollfd pfd[3] = {
      { .fd = cl->fd, .events = POLLIN },
      { .fd = ctl->stop_pipe[0], .events = POLLIN },
      { .fd = cl->wake_fd, .events = POLLIN },
    };
    int r = poll (pfd, 3, timeout);
    if (r < 0 && errno != EINTR)
      break;
    if (r < 0)
      continue;
    if (pfd[1].revents)
      break;                    /* stopping */
    if (r == 0) {
      if (have)
        send_reply (cl, reply_error ("ETIMEDOUT", "the request line was not "
                                     "finished within %g s; send a whole "
                                     "line at once; closing the connection",
                                     READ_TIMEOUT_MS / 1000.0));
      else
        ap_debug (AP_DEBUG_CONTROL, "control: uid %u (pid %d): idle for "
                  "%g s; closed", (unsigned) cl->uid, (int) cl->pid,
                  IDLE_TIMEOUT_MS / 1000.0);
      break;
    }
    if (pfd[2].revents) {
      uint64_t v;
      if (read (cl->wake_fd, &v, sizeof v) < 0) {
        /* EAGAIN: nothing new */
      }
    }
    if (!pfd[0].revents)
      continue;

    ssize_t n = read (cl->fd, buf + have, CTL_LINE_MAX - have);
    if (n == 0)
      break;                    /* the client closed */
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR)
        continue;
      break;
    }
    if (watching)
      continue;                 /* a watcher only listens */
    have += (size_t) n;
    idle_since = ap_now_ns ();
    if (!line_start)
      line_start = idle_since;

    bool close_it = false;
    char *nl;
    while (!close_it && (nl = memchr (buf, '\n', have))) {
      size_t len = (size_t) (nl - buf), rest = have - len - 1;
      if (len && buf[len - 1] == '\r')
        len--;
      size_t k = 0;
      while (k < len && (buf[k] == ' ' || buf[k] == '\t'))
        k++;
      if (k < len)              /* a blank line is not a request */
        close_it = handle_line (cl, buf, len) < 0;
      memmove (buf, nl + 1, rest);
      have = rest;
      line_start = have ? ap_now_ns () : 0;
      pthread_mutex_lock (&ctl->lock);
      bool w = cl->watching;
      pthread_mutex_unlock (&ctl->lock);
      if (w) {
        have = 0;               /* nothing after "watch" is read */
        line_start = 0;
        break;
      }
    }
    if (close_it)
      break;
    if (have == CTL_LINE_MAX) {
      send_reply (cl, reply_error ("EMSGSIZE", "the request line is longer "
                                   "than %d bytes, so it is no request of "
                                   "this protocol; closing the connection",
                                   CTL_LINE_MAX));
      break;
    }
  }

  free (buf);
  pthread_mutex_lock (&ctl->lock);
  if (cl->watching) {
    cl->watching = false;
    atomic_fetch_sub (&ctl->nwatchers, 1);
  }
  for (struct qline *q = cl->qhead, *nx; q; q = nx) {
    nx = q->next;
    free (q);
  }
  cl->qhead = cl->qtail = NULL;
  cl->qlen = 0;
  close (cl->fd);
  cl->fd = -1;
  close (cl->wake_fd);
  cl->wake_fd = -1;
  cl->ct.done = true;
  pthread_mutex_unlock (&ctl->lock);
  return NULL;
}

/* Whether the peer may use the socket: root, the daemon's own user, or a
 * member of the [control] group (primary or supplementary, as the peer
 * was when it connected).  The socket's mode (0660) already keeps others
 * out; this holds even if the mode is changed, and in the moment between
 * bind() and chmod(). */
static bool
peer_allowed (struct control *ctl, int fd, struct ucred *cr)
{
  socklen_t len = sizeof *cr;
  if (getsockopt (fd, SOL_SOCKET, SO_PEERCRED, cr, &len) < 0)
    return false;
  if (cr->uid == 0 || cr->uid == geteuid ())
    return true;
  if (!ctl->group[0])
    return false;
  if (cr->gid == ctl->gid)
    return true;
  gid_t small[64], *groups = small;
  len = sizeof small;
  bool ok = false;
  int r = getsockopt (fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
  if (r < 0 && errno == ERANGE && (groups = malloc (len)))
    r = getsockopt (fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
  for (size_t i = 0; r == 0 && groups && i < len / sizeof (gid_t); i++)
    if (groups[i] == ctl->gid)
      ok = true;
  if (groups != small)
    free (groups);
  return ok;
}

static void
accept_one (struct control *ctl)
{
  int fd = accept4 (ctl->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  char what[sizeof ctl->path + 32];
  snprintf (what, sizeof what, "the control socket %s", ctl->path);
  if (fd < 0) {
    if (accept_trouble_failed (&ctl->accept_trouble, what, errno))
      usleep (ACCEPT_TROUBLE_WAIT_MS * 1000);   /* no busy loop */
    return;
  }
  accept_trouble_ok (&ctl->accept_trouble, what);
  struct ucred cr = { .pid = 0, .uid = (uid_t) -1, .gid = (gid_t) -1 };
  if (!peer_allowed (ctl, fd, &cr)) {
    ap_warn ("control: uid %u (pid %d) refused on %s: neither root nor %s",
             (unsigned) cr.uid, (int) cr.pid, ctl->path,
             ctl->group[0] ? "in group" : "altpathd's user");
    if (ctl->group[0])
      send_now (fd, reply_error ("EACCES", "permission denied: user %u is "
                                 "neither root nor in group '%s'; run "
                                 "altpath as root, or add the user to the "
                                 "group", (unsigned) cr.uid, ctl->group));
    else
      send_now (fd, reply_error ("EACCES", "permission denied: the control "
                                 "socket is for root only; run altpath as "
                                 "root, or set 'group = NAME' in [control] "
                                 "and add the user to that group"));
    close (fd);
    return;
  }

  struct client *cl = calloc (1, sizeof *cl);
  int wake = eventfd (0, EFD_NONBLOCK | EFD_CLOEXEC);
  bool ok = cl && wake >= 0;
  if (ok) {
    cl->ctl = ctl;
    cl->fd = fd;
    cl->wake_fd = wake;
    cl->uid = cr.uid;
    cl->pid = cr.pid;
  }
  int r = ct_start (&ctl->clients, ok ? &cl->ct : NULL, client_thread, cl);
  if (r == 0)
    return;
  if (r == CT_FULL)
    send_now (fd, reply_error ("EBUSY", "altpathd is serving %d control "
                               "clients already; try again when one has "
                               "finished", CONTROL_MAX_CLIENTS));
  else if (r == CT_NOMEM)
    send_now (fd, reply_error ("ENOMEM", "altpathd is out of memory or "
                               "file descriptors; try again"));
  else
    send_now (fd, reply_error ("EAGAIN", "altpathd cannot start a thread "
                               "for this client (%s); try again",
                               strerror (r)));
  free (cl);
  if (wake >= 0)
    close (wake);
  close (fd);
}

static void *
acceptor_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "ap-control");
  struct control *ctl = arg;
  for (;;) {
    struct pollfd pfd[2] = {
      { .fd = ctl->listen_fd, .events = POLLIN },
      { .fd = ctl->stop_pipe[0], .events = POLLIN },
    };
    /* A second now and then to join the clients that finished. */
    int r = poll (pfd, 2, 1000);
    if (r < 0 && errno != EINTR) {
      ap_error ("control: poll on %s: %s; the control socket stops",
                ctl->path, strerror (errno));
      break;
    }
    if (r > 0 && pfd[1].revents)
      break;
    ct_reap (&ctl->clients, false);
    if (r > 0 && pfd[0].revents)
      accept_one (ctl);
  }
  return NULL;
}

/* ------------------------------------------------------------- start/stop */

static void
mkdir_parents (const char *path)
{
  char tmp[PATH_MAX];
  snprintf (tmp, sizeof tmp, "%s", path);
  for (char *s = tmp + 1; *s; s++)
    if (*s == '/') {
      *s = '\0';
      mkdir (tmp, 0755);
      *s = '/';
    }
}

/* The id of group name: 0, or ENOENT if there is none, or an errno. */
static int
lookup_group (const char *name, gid_t *gid)
{
  for (size_t size = 16384;; size *= 4) {
    char *buf = malloc (size);
    struct group gr, *found = NULL;
    int e = buf ? getgrnam_r (name, &gr, buf, size, &found) : ENOMEM;
    if (found)
      *gid = gr.gr_gid;
    free (buf);
    if (e == ERANGE && size < (64u << 20))
      continue;                 /* a group with very many members */
    return found ? 0 : e ? e : ENOENT;
  }
}

/* Bind the socket: a stale socket file (nothing answers) is replaced, a
 * live one or any other file is left alone. */
static int
bind_socket (struct control *ctl, char *err, size_t errlen)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  memcpy (sa.sun_path, ctl->path, strlen (ctl->path) + 1);

  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf (err, errlen, "control socket %s: socket: %s", ctl->path,
              strerror (errno));
    return -1;
  }
  if (bind (fd, (struct sockaddr *) &sa, sizeof sa) < 0) {
    int e = errno;
    struct stat st;
    if (e != EADDRINUSE) {
      snprintf (err, errlen, "cannot make the control socket %s: %s; check "
                "that its directory exists and is writable, or set [control] "
                "socket", ctl->path, strerror (e));
      close (fd);
      return -1;
    }
    if (lstat (ctl->path, &st) == 0 && !S_ISSOCK (st.st_mode)) {
      snprintf (err, errlen, "cannot make the control socket %s: a file "
                "that is not a socket is there; remove it, or set [control] "
                "socket to another path", ctl->path);
      close (fd);
      return -1;
    }
    int probe = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int c = probe < 0 ? -1 : connect (probe, (struct sockaddr *) &sa,
                                      sizeof sa);
    int ce = errno;
    if (probe >= 0)
      close (probe);
    if (c == 0 || (ce != ECONNREFUSED && ce != ENOENT)) {
      snprintf (err, errlen, "cannot make the control socket %s: %s; is "
                "another altpathd running? Stop it, or give this one "
                "another [control] socket", ctl->path,
                c == 0 ? "something answers on it" : strerror (ce));
      close (fd);
      return -1;
    }
    /* Stale: left by a daemon that did not stop cleanly. */
    unlink (ctl->path);
    if (bind (fd, (struct sockaddr *) &sa, sizeof sa) < 0) {
      snprintf (err, errlen, "cannot make the control socket %s: %s",
                ctl->path, strerror (errno));
      close (fd);
      return -1;
    }
    ap_info ("control: replaced the stale socket %s", ctl->path);
  }
  /* 0660, group: see peer_allowed for the moment before this. */
  struct stat st;
  if (chmod (ctl->path, 0660) < 0
      || (ctl->group[0] && chown (ctl->path, (uid_t) -1, ctl->gid) < 0)
      || stat (ctl->path, &st) < 0) {
    snprintf (err, errlen, "cannot set the owner and mode of the control "
              "socket %s: %s", ctl->path, strerror (errno));
    unlink (ctl->path);
    close (fd);
    return -1;
  }
  ctl->sock_dev = st.st_dev;
  ctl->sock_ino = st.st_ino;
  if (listen (fd, LISTEN_BACKLOG) < 0) {
    snprintf (err, errlen, "cannot listen on the control socket %s: %s",
              ctl->path, strerror (errno));
    unlink (ctl->path);
    close (fd);
    return -1;
  }
  ctl->listen_fd = fd;
  return 0;
}

/* Remove the socket file if it is still the one we made. */
static void
unlink_ours (struct control *ctl)
{
  struct stat st;
  if (ctl->sock_ino && stat (ctl->path, &st) == 0
      && st.st_dev == ctl->sock_dev && st.st_ino == ctl->sock_ino)
    unlink (ctl->path);
  ctl->sock_ino = 0;
}

struct control *
control_start (const char *path, const char *group,
               const struct control_view *view, char *err, size_t errlen)
{
  struct control *ctl = calloc (1, sizeof *ctl);
  if (!ctl) {
    snprintf (err, errlen, "control socket %s: out of memory", path);
    return NULL;
  }
  ctl->listen_fd = -1;
  ctl->stop_pipe[0] = ctl->stop_pipe[1] = -1;
  pthread_mutex_init (&ctl->lock, NULL);
  ctl->clients = (struct ct_set) { .lock = &ctl->lock,
                                   .max = CONTROL_MAX_CLIENTS };
  atomic_init (&ctl->nwatchers, 0);
  ctl->view = *view;
  snprintf (ctl->node, sizeof ctl->node, "%s", view->node ? view->node : "");
  snprintf (ctl->daemon_version, sizeof ctl->daemon_version, "%s",
            view->daemon_version ? view->daemon_version : "altpathd");
  ctl->view.node = ctl->node;
  ctl->view.daemon_version = ctl->daemon_version;

  if (!path || !path[0] || path[0] != '/'
      || strlen (path) >= sizeof ctl->path) {
    snprintf (err, errlen, "control socket '%s': give an absolute path of "
              "at most %zu bytes", path ? path : "", sizeof ctl->path - 1);
    goto fail;
  }
  snprintf (ctl->path, sizeof ctl->path, "%s", path);
  if (group && group[0]) {
    int e = lookup_group (group, &ctl->gid);
    if (e) {
      snprintf (err, errlen, "control socket %s: %s%s%s; create it or "
                "remove 'group' from [control]", path,
                e == ENOENT ? "group '" : "cannot look up group '", group,
                e == ENOENT ? "' does not exist" : strerror (e));
      goto fail;
    }
    snprintf (ctl->group, sizeof ctl->group, "%s", group);
  }
  if (pipe2 (ctl->stop_pipe, O_CLOEXEC) < 0) {
    snprintf (err, errlen, "control socket %s: pipe: %s", path,
              strerror (errno));
    goto fail;
  }
  mkdir_parents (ctl->path);
  if (bind_socket (ctl, err, errlen) < 0)
    goto fail;
  int r = pthread_create (&ctl->acceptor, NULL, acceptor_thread, ctl);
  if (r != 0) {
    snprintf (err, errlen, "control socket %s: cannot start its thread: %s",
              path, strerror (r));
    goto fail;
  }
  ctl->acceptor_started = true;
  ap_info ("control: listening on %s (root%s%s)", ctl->path,
           ctl->group[0] ? " and group " : " only", ctl->group);
  return ctl;

 fail:
  unlink_ours (ctl);
  if (ctl->listen_fd >= 0)
    close (ctl->listen_fd);
  for (int i = 0; i < 2; i++)
    if (ctl->stop_pipe[i] >= 0)
      close (ctl->stop_pipe[i]);
  pthread_mutex_destroy (&ctl->lock);
  free (ctl);
  return NULL;
}

void
control_stop (struct control *ctl)
{
  if (!ctl)
    return;
  pthread_mutex_lock (&ctl->lock);
  bool already = ctl->stopping;
  ctl->stopping = true;         /* control_event: no more queueing */
  pthread_mutex_unlock (&ctl->lock);
  if (already)
    return;
  /* New clients are told "not running" at once: the socket goes first. */
  unlink_ours (ctl);
  while (write (ctl->stop_pipe[1], "s", 1) < 0 && errno == EINTR)
    ;
  if (ctl->acceptor_started)
    pthread_join (ctl->acceptor, NULL);
  if (ctl->listen_fd >= 0)
    close (ctl->listen_fd);
  ctl->listen_fd = -1;
  /* Every client thread sees the stop pipe; one in a handler finishes
   * it first (bounded by the library's own timeouts). */
  ct_reap (&ctl->clients, true);
}

void
control_free (struct control *ctl)
{
  if (!ctl)
    return;
  control_stop (ctl);
  for (int i = 0; i < 2; i++)
    if (ctl->stop_pipe[i] >= 0)
      close (ctl->stop_pipe[i]);
  pthread_mutex_destroy (&ctl->lock);
  free (ctl);
}
