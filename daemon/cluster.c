/* cluster.c — what a node does with what it learns: the two seed notes as
 * a whole.
 *
 *   registry ──watch──► reconcile() ──► local units, one per disk:
 *      ▲                                  "direct"       (this node is
 *      │ publish                                          attached; preferred)
 *      │  node, shared ports,             "served:BETA"  (a peer serves it;
 *      │  disks served here                               hidden standby)
 *   main.c (exports) ──cluster_set_direct──┘
 *                                         └──► local NBD socket (the units,
 *                                              for this node's users only)
 *
 * The seed's race — a served path found before the direct one — cannot
 * leave both in use: the unit takes the direct path when it joins (drain,
 * then flip).  And when a peer announces a disk on a bus this node
 * attaches too, the node rescans its ports and waits briefly for its own
 * direct path before bringing the unit up served.
 *
 * Invariant 5: only disks reached directly are ever published or served
 * to peers; the units built here are exported on the local socket only.
 *
 * One thread (cluster_thread) does all the work on the units, so the table
 * needs its lock only against cluster_set_direct and the watch callback.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "clock.h"
#include "daemon.h"
#include "log.h"
#include "registry.h"

#define MAX_SERVED 15           /* served paths per unit (AP_MAX_PATHS - 1) */

/* A disk this node reaches directly, as main.c handed it over. */
struct direct_disk {
  char device[AP_NAME_MAX];
  char file[4096];
  char identity[AP_NAME_MAX];
  bool read_only;
  char port_letter;
  unsigned alloclass;
  uint64_t size;
  uint32_t block_size;
};

/* One of the node's own units. */
struct lunit {
  char device[AP_NAME_MAX];
  struct export *ex;            /* wraps the unit; the table's reference */
  bool direct;                  /* has its direct path */
  struct ap_path *fault;        /* fault-dir: the wrapper of the direct
                                   path (owned by the unit), or NULL */
  int fault_mode;               /* what the trigger files said last */
  char served[MAX_SERVED][REG_NAME_MAX]; /* nodes it has served paths to */
  unsigned nserved;
};

/* A disk a peer announced on a bus we attach: wait for our own path. */
struct pending {
  char device[AP_NAME_MAX];
  uint64_t since_ns;
};

struct cluster {
  /* Settings copied at start (main's config changes on reload). */
  char node[REG_NAME_MAX];
  struct config_port *ports;
  size_t nports;
  struct config knobs;          /* scalar settings only; pointers zeroed */

  struct registry *reg;
  bool registry_ok;
  struct choices *choices;      /* the operator's, kept across restarts */

  struct nbd_server *local;     /* the units on the local socket */
  pthread_t local_thread;
  int local_quit[2];

  void (*rescan) (void *);
  void *rescan_opaque;

  pthread_mutex_t lock;         /* protects the fields below */
  pthread_cond_t cond;
  bool stop;
  bool changed;                 /* the registry or the direct list moved */
  struct direct_disk *direct;
  size_t ndirect;
  bool rescan_wanted;

  /* Owned by the cluster thread; units_lock guards the array against
   * readers (cluster_units), not the units themselves. */
  pthread_t thread;
  pthread_mutex_t units_lock;
  struct lunit *units;
  size_t nunits;
  /* The control socket's watchers: set while unit threads may read it,
   * so atomic; the opaque is stored before the function and read after
   * it. */
  _Atomic (ap_event_fn *) event_hook;
  _Atomic (void *) event_opaque;
  pthread_mutex_t hook_lock;    /* held while units_hook runs */
  void (*units_hook) (void *, struct export **, size_t);
  void *units_opaque;
  struct pending *pending;
  size_t npending;
  char **conflicts;             /* reported once each */
  size_t nconflicts;
  char **warned;                /* "NODE/DEVICE" whose served path fails */
  size_t nwarned;
  int inotify_fd;
};

/* ---------------------------------------------------------- publishing */

static void
publish_self (struct cluster *c)
{
  struct reg_node n = { 0 };
  snprintf (n.name, sizeof n.name, "%s", c->node);
  snprintf (n.uri, sizeof n.uri, "%s", c->knobs.advertise);
  snprintf (n.tls_identity, sizeof n.tls_identity, "%s",
            c->knobs.client_username);
  bool ok = registry_publish_node (c->reg, &n) == 0;
  for (size_t i = 0; i < c->nports; i++) {
    const struct config_port *cp = &c->ports[i];
    if (!cp->alloclass)
      continue;                 /* node-local: nothing to share */
    struct reg_port p = { .letter = cp->letter, .alloclass = cp->alloclass };
    snprintf (p.node, sizeof p.node, "%s", c->node);
    snprintf (p.bus, sizeof p.bus, "%.*s", (int) sizeof p.bus - 1, cp->bus);
    ok = registry_publish_port (c->reg, &p) == 0 && ok;
  }
  if (!ok)
    ap_warn ("cluster: could not publish node %s in the registry; peers "
             "will not see it until the registry answers", c->node);
}

static void
publish_disk (struct cluster *c, const struct direct_disk *d)
{
  struct reg_disk r = { .port_letter = d->port_letter,
                        .alloclass = d->alloclass, .size = d->size,
                        .block_size = d->block_size };
  snprintf (r.node, sizeof r.node, "%s", c->node);
  snprintf (r.device, sizeof r.device, "%s", d->device);
  snprintf (r.identity, sizeof r.identity, "%s", d->identity);
  if (registry_publish_disk (c->reg, &r) < 0)
    ap_warn ("cluster: could not publish %s in the registry", d->device);
}

/* -------------------------------------------------------- local units */

static struct lunit *
find_unit (struct cluster *c, const char *device)
{
  for (size_t i = 0; i < c->nunits; i++)
    if (strcmp (c->units[i].device, device) == 0)
      return &c->units[i];
  return NULL;
}

/* Hand the current units to whoever follows them (the device files). */
static void
call_units_hook (struct cluster *c)
{
  pthread_mutex_lock (&c->hook_lock);
  if (c->units_hook) {
    struct export **list;
    size_t n = cluster_units (c, &list);
    if (list)
      c->units_hook (c->units_opaque, list, n);     /* takes the refs */
    free (list);
  }
  pthread_mutex_unlock (&c->hook_lock);
}

/* Give the local NBD server (and the units hook) the current units. */
static void
export_units (struct cluster *c)
{
  struct export **list = calloc (c->nunits ? c->nunits : 1, sizeof *list);
  if (!list)
    return;
  for (size_t i = 0; i < c->nunits; i++)
    list[i] = export_get (c->units[i].ex);
  nbd_server_set_exports (c->local, list, c->nunits);
  free (list);
  call_units_hook (c);
}

static void
on_unit_event (void *opaque, const struct ap_event *e)
{
  struct cluster *c = opaque;
  ap_event_fn *hook = atomic_load_explicit (&c->event_hook,
                                            memory_order_acquire);
  if (hook)
    hook (atomic_load_explicit (&c->event_opaque, memory_order_relaxed), e);
  switch (e->type) {
  case AP_EVENT_SWITCH:
    ap_info ("%s: now on path %s%s%s (%s)", e->unit, e->path,
             e->from_path[0] ? ", was " : "", e->from_path, e->reason);
    break;
  case AP_EVENT_UNIT_STATE:
    if (e->new_state == AP_UNIT_OFFLINE || e->old_state == AP_UNIT_OFFLINE)
      ap_info ("%s: %s -> %s (%s)", e->unit,
               ap_unit_state_name (e->old_state),
               ap_unit_state_name (e->new_state), e->reason);
    break;
  default:
    break;
  }
}

static struct lunit *
new_unit (struct cluster *c, const char *device, struct ap_path *first)
{
  pthread_mutex_lock (&c->units_lock);
  struct lunit *nu = realloc (c->units, (c->nunits + 1) * sizeof *nu);
  if (nu)
    c->units = nu;
  pthread_mutex_unlock (&c->units_lock);
  if (!nu) {
    ap_path_close (first);
    return NULL;
  }
  struct ap_unit_options o;
  ap_unit_options_init (&o);
  o.name = device;
  o.request_timeout_ms = c->knobs.local_request_timeout_ms;
  o.verify_timeout_ms = c->knobs.local_verify_timeout_ms;
  o.checker_interval_ms = c->knobs.checker_interval_ms;
  o.failback_ms = c->knobs.failback_ms;
  o.queue_if_no_path = c->knobs.queue_if_no_path;
  o.events.fn = on_unit_event;
  o.events.opaque = c;
  struct ap_unit_choices ch;
  if (choices_get (c->choices, device, &ch))
    o.choices = &ch;
  struct ap_unit *u = ap_unit_create (&o, &first, 1);
  if (!u) {
    ap_error ("cluster: cannot make unit %s: %s", device, ap_get_error ());
    return NULL;
  }
  char desc[256];
  snprintf (desc, sizeof desc, "altpath unit %.*s on node %s",
            AP_NAME_MAX - 1, device, c->node);
  struct export *ex = export_wrap (device, desc, u);
  if (!ex) {
    ap_unit_close (u);
    return NULL;
  }
  pthread_mutex_lock (&c->units_lock);
  struct lunit *lu = &c->units[c->nunits];
  memset (lu, 0, sizeof *lu);
  snprintf (lu->device, sizeof lu->device, "%s", device);
  lu->ex = ex;
  c->nunits++;
  pthread_mutex_unlock (&c->units_lock);
  ap_info ("cluster: unit %s made", device);
  return lu;
}

static void
drop_unit (struct cluster *c, struct lunit *lu)
{
  ap_info ("cluster: unit %s has no path left; removed", lu->device);
  struct export *ex = lu->ex;
  pthread_mutex_lock (&c->units_lock);
  size_t i = (size_t) (lu - c->units);
  memmove (&c->units[i], &c->units[i + 1],
           (c->nunits - i - 1) * sizeof c->units[0]);
  c->nunits--;
  pthread_mutex_unlock (&c->units_lock);
  export_put (ex);
}

/* The direct path of a unit; with fault-dir set, inside a fault wrapper
 * (*fault) driven by trigger files. */
static struct ap_path *
open_direct (struct cluster *c, const struct direct_disk *d,
             struct ap_path **fault)
{
  struct ap_direct_options o = { .name = "direct", .read_only = d->read_only,
                                 .identity = d->identity[0] ? d->identity
                                 : NULL };
  struct ap_path *p = ap_path_open_direct (d->file, &o);
  *fault = NULL;
  if (p && c->knobs.fault_dir[0]) {
    p = ap_path_fault_wrap (p, "direct");
    *fault = p;
  }
  if (!p)
    ap_error ("cluster: %s: cannot open the direct path %s: %s", d->device,
              d->file, ap_get_error ());
  return p;
}

/* fault-dir: <alias>.eio, <alias>.hang, <alias>.slow (its content: the
 * delay in µs, default 50000) switch the direct path of that unit into
 * the fault; no file, no fault. */
static void
poll_faults (struct cluster *c)
{
  for (size_t i = 0; i < c->nunits; i++) {
    struct lunit *lu = &c->units[i];
    if (!lu->fault)
      continue;
    char alias[AP_NAME_MAX], f[4096 + AP_NAME_MAX + 8];
    device_alias (lu->device, alias, sizeof alias);
    int mode = AP_FAULT_NONE;
    uint64_t delay = 50000;
    static const struct { const char *ext; int mode; } kinds[] = {
      { "eio", AP_FAULT_ERROR }, { "hang", AP_FAULT_HANG },
      { "slow", AP_FAULT_DELAY },
    };
    for (size_t k = 0; k < 3 && mode == AP_FAULT_NONE; k++) {
      snprintf (f, sizeof f, "%s/%s.%s", c->knobs.fault_dir, alias,
                kinds[k].ext);
      FILE *fp = fopen (f, "r");
      if (!fp)
        continue;
      mode = kinds[k].mode;
      unsigned long long us;
      if (fscanf (fp, "%llu", &us) == 1 && us > 0)
        delay = us;
      fclose (fp);
    }
    if (mode != lu->fault_mode) {
      ap_warn ("cluster: %s: fault injection on the direct path: %s",
               lu->device, mode == AP_FAULT_ERROR ? "EIO"
               : mode == AP_FAULT_HANG ? "hang"
               : mode == AP_FAULT_DELAY ? "slow" : "none");
      ap_fault_set (lu->fault, mode, -EIO, delay);
      lu->fault_mode = mode;
    }
  }
}

/* URI of export device at node n: the node's URI with the (encoded) name
 * put in as the path, before any query. */
static void
served_uri (const struct reg_node *n, const char *device, char *out,
            size_t len)
{
  char enc[3 * AP_NAME_MAX];
  size_t k = 0;
  for (const char *s = device; *s && k + 4 < sizeof enc; s++) {
    unsigned char ch = (unsigned char) *s;
    if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z')
        || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.')
      enc[k++] = (char) ch;
    else
      k += (size_t) snprintf (enc + k, sizeof enc - k, "%%%02X", ch);
  }
  enc[k] = '\0';
  /* scheme://authority[/path][?query]: keep scheme and authority (empty
   * for nbd+unix), put the export as the path, keep the query. */
  const char *auth = strstr (n->uri, "://");
  auth = auth ? auth + 3 : n->uri;
  size_t base = (size_t) (auth - n->uri) + strcspn (auth, "/?");
  const char *q = strchr (n->uri + base, '?');
  snprintf (out, len, "%.*s/%s%s", (int) base, n->uri, enc, q ? q : "");
}

/* Whether to log a failure once (set) or its end (clear): repeated
 * retries stay quiet.  Returns true when the state changed. */
static bool
note_once (struct cluster *c, const char *key, bool failing)
{
  for (size_t i = 0; i < c->nwarned; i++)
    if (strcmp (c->warned[i], key) == 0) {
      if (failing)
        return false;
      free (c->warned[i]);
      c->warned[i] = c->warned[--c->nwarned];
      return true;
    }
  if (!failing)
    return false;
  char **n = realloc (c->warned, (c->nwarned + 1) * sizeof *n);
  if (n) {
    c->warned = n;
    if ((c->warned[c->nwarned] = strdup (key)))
      c->nwarned++;
  }
  return true;
}

/* A served path to open: filled in by reconcile(), opened by
 * open_all_served() on worker threads, reported and used by reconcile(). */
struct to_open {
  const struct reg_node *n;
  const struct reg_disk *d;
  struct ap_served_options o;
  char uri[REG_URI_MAX + 3 * AP_NAME_MAX], name[AP_NAME_MAX];
  struct ap_path *p;            /* NULL: failed, with err */
  char err[512];
};

/* Opening a served path waits for a connection and an NBD handshake (up
 * to connect_timeout_ms when the peer does not answer): one at a time, a
 * node with 250 disks served by one peer took 10-15 s to converge, and
 * minutes when that peer's packets were dropped.  Up to this many open
 * at once. */
#define OPEN_WORKERS 16

struct open_batch {
  struct to_open *v;
  size_t n;
  atomic_size_t next;
};

static void *
open_worker (void *arg)
{
  struct open_batch *b = arg;
  size_t i;
  while ((i = atomic_fetch_add (&b->next, 1)) < b->n) {
    struct to_open *t = &b->v[i];
    t->p = ap_path_open_served (&t->o);
    if (!t->p)
      snprintf (t->err, sizeof t->err, "%s", ap_get_error ());
  }
  return NULL;
}

static void
prepare_served (struct cluster *c, const struct reg_node *n,
                const struct reg_disk *d, struct to_open *t)
{
  memset (t, 0, sizeof *t);
  t->n = n;
  t->d = d;
  served_uri (n, d->device, t->uri, sizeof t->uri);
  snprintf (t->name, sizeof t->name, "served:%s", n->name);
  t->o = (struct ap_served_options) {
    .name = t->name, .uri = t->uri,
    .tls_psk_file = c->knobs.client_psk_file[0] ? c->knobs.client_psk_file
    : NULL,
    .tls_username = c->knobs.client_username[0] ? c->knobs.client_username
    : NULL,
    .tls_cert_dir = c->knobs.client_cert_dir[0] ? c->knobs.client_cert_dir
    : NULL,
    .connections = c->knobs.client_connections,
    .connect_timeout_ms = 2000,
    .deadline_ms = c->knobs.deadline_ms,
    .fence_wait_ms = c->knobs.fence_wait_ms,
    .identity = d->identity,
  };
}

/* Open every path of v at once (at most OPEN_WORKERS at a time; on this
 * thread alone if threads cannot be had), then say what became of each. */
static void
open_all_served (struct cluster *c, struct to_open *v, size_t n)
{
  struct open_batch b = { .v = v, .n = n };
  pthread_t th[OPEN_WORKERS];
  size_t started = 0;

  atomic_init (&b.next, 0);
  for (; n > 1 && started < OPEN_WORKERS && started < n; started++)
    if (pthread_create (&th[started], NULL, open_worker, &b) != 0)
      break;
  open_worker (&b);             /* this thread helps, and covers n == 1 */
  for (size_t i = 0; i < started; i++)
    pthread_join (th[i], NULL);

  for (size_t i = 0; i < n; i++) {
    struct to_open *t = &v[i];
    char key[REG_NAME_MAX + AP_NAME_MAX + 2];
    snprintf (key, sizeof key, "%s/%s", t->n->name, t->d->device);
    if (!t->p && note_once (c, key, true))
      ap_warn ("cluster: %s: no served path through %s yet (retrying "
               "quietly): %s", t->d->device, t->n->name, t->err);
    else if (t->p && note_once (c, key, false))
      ap_info ("cluster: %s: served path through %s connected",
               t->d->device, t->n->name);
  }
}

static bool
has_served (const struct lunit *lu, const char *node)
{
  for (unsigned i = 0; i < lu->nserved; i++)
    if (strcmp (lu->served[i], node) == 0)
      return true;
  return false;
}

/* ------------------------------------------------------- reconciling */

static const struct reg_node *
view_node (const struct reg_view *v, const char *name)
{
  for (size_t i = 0; i < v->nnodes; i++)
    if (strcmp (v->nodes[i].name, name) == 0)
      return &v->nodes[i];
  return NULL;
}

/* Whether any node announces the disk. */
static bool
announced (const struct reg_view *v, const char *device)
{
  for (size_t i = 0; i < v->ndisks; i++)
    if (strcmp (v->disks[i].device, device) == 0)
      return true;
  return false;
}

/* Whether a disk a peer announced is on a shared port we attach too, so
 * that we should reach it directly. */
static bool
attached_here (const struct cluster *c, const struct reg_view *v,
               const struct reg_disk *d)
{
  if (!d->alloclass)
    return false;
  for (size_t i = 0; i < c->nports; i++)
    if (c->ports[i].alloclass == d->alloclass
        && c->ports[i].letter == d->port_letter)
      return true;
  (void) v;
  return false;
}

static void
report_conflict (struct cluster *c, const char *msg)
{
  for (size_t i = 0; i < c->nconflicts; i++)
    if (strcmp (c->conflicts[i], msg) == 0)
      return;
  pthread_mutex_lock (&c->lock);
  char **n = realloc (c->conflicts, (c->nconflicts + 1) * sizeof *n);
  char *copy = strdup (msg);
  if (n && copy) {
    c->conflicts = n;
    c->conflicts[c->nconflicts++] = copy;
  }
  else
    free (copy);
  pthread_mutex_unlock (&c->lock);
  ap_error ("cluster: configuration error: %s", msg);
}

/* The seed's alloclass$letter lock: one bus, one name, cluster-wide. */
static void
check_ports (struct cluster *c, const struct reg_view *v)
{
  char msg[4 * 4096 + 512];
  for (size_t i = 0; i < v->nports; i++) {
    const struct reg_port *p = &v->ports[i];
    if (strcmp (p->node, c->node) == 0)
      continue;
    for (size_t k = 0; k < c->nports; k++) {
      const struct config_port *o = &c->ports[k];
      if (!o->alloclass)
        continue;
      bool same_bus = strcmp (o->bus, p->bus) == 0;
      bool same_name = o->letter == p->letter && o->alloclass == p->alloclass;
      if (same_bus && !same_name)
        snprintf (msg, sizeof msg, "bus %s is port %c with allocation class "
                  "%u on node %s but port %c with class %u on node %s; "
                  "its disks would have different names; give both nodes "
                  "the same letter and class for it", p->bus, p->letter,
                  p->alloclass, p->node, o->letter, o->alloclass, c->node);
      else if (same_name && !same_bus)
        snprintf (msg, sizeof msg, "$%u$DK%c names bus %s on node %s but "
                  "bus %s on node %s; two different buses must not share "
                  "a port allocation class and letter", p->alloclass,
                  p->letter, p->bus, p->node, o->bus, c->node);
      else
        continue;
      report_conflict (c, msg);
    }
  }
}

static bool
pending_wait (struct cluster *c, const char *device, uint64_t now,
              uint64_t *wake)
{
  for (size_t i = 0; i < c->npending; i++)
    if (strcmp (c->pending[i].device, device) == 0) {
      uint64_t due = c->pending[i].since_ns
        + (uint64_t) c->knobs.direct_wait_ms * 1000000u;
      if (now >= due)
        return false;
      if (due < *wake)
        *wake = due;
      return true;
    }
  struct pending *np = realloc (c->pending, (c->npending + 1) * sizeof *np);
  if (!np)
    return false;
  c->pending = np;
  snprintf (np[c->npending].device, sizeof np->device, "%s", device);
  np[c->npending++].since_ns = now;
  uint64_t due = now + (uint64_t) c->knobs.direct_wait_ms * 1000000u;
  if (due < *wake)
    *wake = due;
  return true;
}

static void
pending_done (struct cluster *c, const char *device)
{
  for (size_t i = 0; i < c->npending; i++)
    if (strcmp (c->pending[i].device, device) == 0) {
      c->pending[i] = c->pending[--c->npending];
      return;
    }
}

/* Make the units match what this node reaches directly and what the live
 * registry says peers serve.  Returns when to look again at the latest. */
static uint64_t
reconcile (struct cluster *c, const struct direct_disk *direct, size_t nd,
           const struct reg_view *v, bool view_ok)
{
  uint64_t now = ap_now_ns ();
  uint64_t wake = now + 1000000000u;
  bool changed = false;

  /* Direct paths first: when both appear at once, the unit starts on
   * the direct path. */
  for (size_t i = 0; i < nd; i++) {
    const struct direct_disk *d = &direct[i];
    struct lunit *lu = find_unit (c, d->device);
    pending_done (c, d->device);
    if (lu && lu->direct)
      continue;
    struct ap_path *fault;
    struct ap_path *p = open_direct (c, d, &fault);
    if (!p)
      continue;
    if (!lu) {
      if ((lu = new_unit (c, d->device, p))) {
        lu->direct = true;
        lu->fault = fault;
      }
      changed = true;
    }
    else if (ap_unit_add_path (lu->ex->unit, p, 0) == 0) {
      lu->direct = true;
      lu->fault = fault;
      ap_info ("cluster: %s: direct path joined; the unit moves to it",
               d->device);
    }
    else
      ap_error ("cluster: %s: direct path refused: %s", d->device,
                ap_get_error ());
  }
  /* Direct paths gone (disk removed from the port). */
  for (size_t i = 0; i < c->nunits; i++) {
    struct lunit *lu = &c->units[i];
    bool still = false;
    for (size_t k = 0; k < nd && !still; k++)
      still = strcmp (direct[k].device, lu->device) == 0;
    if (!lu->direct || still)
      continue;
    if (ap_unit_remove_path (lu->ex->unit, "direct") == 0) {
      lu->direct = false;
      lu->fault = NULL;         /* closed with its path */
    }
    else if (lu->nserved == 0) {
      drop_unit (c, lu);
      changed = true;
      i--;
    }
  }

  if (view_ok) {
    check_ports (c, v);
    /* The served paths to open: all of them at once, then each used in
     * the registry's order (the first one of a disk makes its unit). */
    struct to_open *todo = NULL;
    size_t ntodo = 0;
    for (size_t i = 0; i < v->ndisks; i++) {
      const struct reg_disk *d = &v->disks[i];
      if (strcmp (d->node, c->node) == 0)
        continue;
      const struct reg_node *n = view_node (v, d->node);
      if (!n)
        continue;
      struct lunit *lu = find_unit (c, d->device);
      if (lu && has_served (lu, n->name))
        continue;
      if (lu && lu->nserved >= MAX_SERVED)
        continue;
      if (!lu && attached_here (c, v, d)
          && pending_wait (c, d->device, now, &wake)) {
        /* Ours too: look on the ports, and give our own direct path a
         * moment before using the disk served. */
        c->rescan_wanted = true;
        continue;
      }
      if (!todo && !(todo = calloc (v->ndisks, sizeof *todo))) {
        ap_error ("cluster: out of memory opening served paths; trying "
                  "again in 0.5 s");
        wake = now + 500000000u;
        break;
      }
      prepare_served (c, n, d, &todo[ntodo++]);
    }
    if (ntodo)
      open_all_served (c, todo, ntodo);
    for (size_t i = 0; i < ntodo; i++) {
      struct to_open *t = &todo[i];
      struct ap_path *p = t->p;
      if (!p) {
        wake = now + 500000000u;        /* try again soon */
        continue;
      }
      struct lunit *lu = find_unit (c, t->d->device);
      if (lu && lu->nserved >= MAX_SERVED) {
        ap_path_close (p);
        continue;
      }
      if (!lu) {
        lu = new_unit (c, t->d->device, p);
        changed = true;
      }
      else if (ap_unit_add_path (lu->ex->unit, p, 0) < 0) {
        ap_error ("cluster: %s: served path through %s refused: %s",
                  t->d->device, t->n->name, ap_get_error ());
        continue;
      }
      if (lu)
        snprintf (lu->served[lu->nserved++], REG_NAME_MAX, "%s",
                  t->n->name);
    }
    free (todo);
    /* Served paths whose node no longer serves the disk. */
    for (size_t i = 0; i < c->nunits; i++) {
      struct lunit *lu = &c->units[i];
      bool withdrawn = false;
      for (unsigned k = 0; k < lu->nserved; k++) {
        bool still = false;
        for (size_t j = 0; j < v->ndisks && !still; j++)
          still = strcmp (v->disks[j].node, lu->served[k]) == 0
            && strcmp (v->disks[j].device, lu->device) == 0;
        if (still)
          continue;
        char name[AP_NAME_MAX];
        snprintf (name, sizeof name, "served:%s", lu->served[k]);
        if (ap_unit_remove_path (lu->ex->unit, name) == 0) {
          ap_info ("cluster: %s: node %s left; path %s removed", lu->device,
                   lu->served[k], name);
          memmove (&lu->served[k], &lu->served[k + 1],
                   (lu->nserved - k - 1) * sizeof lu->served[0]);
          lu->nserved--;
          k--;
        }
        /* Its last path.  A node that left (crashed, cut off) may come
         * back: the path stays, failed, until it returns or another path
         * joins.  A node that is up but no longer announces the disk,
         * when no node does and we have no direct path, took it away:
         * the disk left the cluster, and so does its unit. */
        else if (!lu->direct && view_node (v, lu->served[k])
                 && !announced (v, lu->device))
          withdrawn = true;
      }
      if (withdrawn || (!lu->direct && lu->nserved == 0)) {
        ap_info ("cluster: %s: no node serves it any more (the disk was "
                 "removed from its port)", lu->device);
        drop_unit (c, lu);
        changed = true;
        i--;
      }
    }
  }
  if (changed)
    export_units (c);
  return wake;
}

static void
copy_view_ok (struct cluster *c, bool ok, const char *msg)
{
  if (ok != c->registry_ok) {
    if (ok)
      ap_info ("cluster: registry (%s) answers again",
               registry_backend (c->reg));
    else
      ap_error ("cluster: registry (%s) does not answer: %s; I/O on the "
                "paths in use goes on, discovery waits",
                registry_backend (c->reg), msg);
    c->registry_ok = ok;
  }
}

static void *
cluster_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "ap-cluster");
  struct cluster *c = arg;
  uint64_t wake = 0;

  pthread_mutex_lock (&c->lock);
  while (!c->stop) {
    uint64_t now = ap_now_ns ();
    if (!c->changed && now < wake) {
      struct timespec ts = ap_ns_to_timespec (wake);
      pthread_cond_timedwait (&c->cond, &c->lock, &ts);
      continue;
    }
    c->changed = false;
    size_t nd = c->ndirect;
    struct direct_disk *direct = malloc ((nd ? nd : 1) * sizeof *direct);
    if (direct && nd)
      memcpy (direct, c->direct, nd * sizeof *direct);
    pthread_mutex_unlock (&c->lock);

    char msg[512] = "";
    struct reg_view v = { 0 };
    bool ok = registry_health (c->reg, msg, sizeof msg);
    if (ok && registry_snapshot (c->reg, &v) != 0) {
      /* Healthy a moment ago (msg says so), but the list did not come:
       * say that, not the healthy state. */
      snprintf (msg, sizeof msg, "the list of nodes and disks could not "
                "be read");
      ok = false;
    }
    copy_view_ok (c, ok, msg);
    if (direct)
      wake = reconcile (c, direct, nd, &v, ok);
    else
      wake = ap_now_ns () + 1000000000u;
    if (c->knobs.fault_dir[0]) {
      poll_faults (c);
      if (wake > ap_now_ns () + 100000000u)
        wake = ap_now_ns () + 100000000u;
    }
    reg_view_free (&v);
    free (direct);
    bool rescan = c->rescan_wanted;
    c->rescan_wanted = false;
    if (rescan && c->rescan)
      c->rescan (c->rescan_opaque);

    pthread_mutex_lock (&c->lock);
  }
  pthread_mutex_unlock (&c->lock);
  return NULL;
}

static void
registry_changed (void *opaque)
{
  struct cluster *c = opaque;
  pthread_mutex_lock (&c->lock);
  c->changed = true;
  pthread_cond_signal (&c->cond);
  pthread_mutex_unlock (&c->lock);
}

/* A file appearing on or leaving a shared port's directory: rescan. */
static void *
inotify_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "ap-inotify");
  struct cluster *c = arg;
  char buf[4096] __attribute__ ((aligned (__alignof__ (struct inotify_event))));
  struct pollfd pfd = { .fd = c->inotify_fd, .events = POLLIN };
  for (;;) {
    int r = poll (&pfd, 1, 200);
    pthread_mutex_lock (&c->lock);
    bool stop = c->stop;
    pthread_mutex_unlock (&c->lock);
    if (stop)
      break;
    if (r <= 0)
      continue;
    if (read (c->inotify_fd, buf, sizeof buf) <= 0)
      continue;
    /* Let a burst of events (a copy in progress) settle. */
    usleep (50000);
    while (read (c->inotify_fd, buf, sizeof buf) > 0)
      ;
    if (c->rescan)
      c->rescan (c->rescan_opaque);
  }
  return NULL;
}

static void *
local_server_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "nbd-local");
  struct cluster *c = arg;
  nbd_server_run (c->local, c->local_quit[0]);
  return NULL;
}

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

struct cluster *
cluster_start (const struct config *cfg, void (*rescan) (void *),
               void *opaque, char *err, size_t errlen)
{
  struct cluster *c = calloc (1, sizeof *c);
  if (!c) {
    snprintf (err, errlen, "out of memory");
    return NULL;
  }
  c->local_quit[0] = c->local_quit[1] = -1;
  c->inotify_fd = -1;
  snprintf (c->node, sizeof c->node, "%s", cfg->node);
  c->knobs = *cfg;
  c->knobs.listen = NULL;
  c->knobs.ports = NULL;
  c->knobs.disks = NULL;
  c->knobs.allow = NULL;
  c->rescan = rescan;
  c->rescan_opaque = opaque;
  c->registry_ok = true;
  pthread_mutex_init (&c->lock, NULL);
  pthread_mutex_init (&c->units_lock, NULL);
  pthread_mutex_init (&c->hook_lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&c->cond, &ca);
  pthread_condattr_destroy (&ca);

  c->ports = calloc (cfg->nports ? cfg->nports : 1, sizeof *c->ports);
  if (!c->ports)
    goto oom;
  for (size_t i = 0; i < cfg->nports; i++) {
    c->ports[i] = cfg->ports[i];
    c->ports[i].allow = NULL;
    c->ports[i].nallow = 0;
  }
  c->nports = cfg->nports;

  /* Before anything is published or made: a state file that cannot be
   * read stops the start (choices.c says why). */
  c->choices = choices_open (cfg->state_file, cfg->node, err, errlen);
  if (!c->choices)
    goto fail;
  size_t nch = choices_count (c->choices);
  if (nch)
    ap_info ("cluster: the operator's pins and disabled paths of %zu "
             "unit%s are kept in %s", nch, nch == 1 ? "" : "s",
             cfg->state_file);

  struct registry_options ro = {
    .backend = cfg->registry_backend, .dir = cfg->registry_dir,
    .endpoints = cfg->registry_endpoints, .prefix = cfg->registry_prefix,
    .ca_file = cfg->registry_ca_file, .cert_file = cfg->registry_cert_file,
    .key_file = cfg->registry_key_file,
    .username = cfg->registry_username, .password = cfg->registry_password,
    .lease_ms = cfg->registry_lease_ms, .node = cfg->node,
  };
  c->reg = registry_open (&ro, err, errlen);
  if (!c->reg)
    goto fail;

  /* The local socket: the units, for this node's own users. */
  struct nbd_server_tls none = { 0 };
  c->local = nbd_server_new (&none, err, errlen);
  if (!c->local)
    goto fail;
  struct config_listen l = { .is_unix = true, .tls = TLS_OFF,
                             .tls_explicit = true };
  snprintf (l.path, sizeof l.path, "%s", cfg->local_socket);
  mkdir_parents (l.path);
  if (nbd_server_listen (c->local, &l, err, errlen) < 0)
    goto fail;
  if (cfg->local_tcp.host[0]
      && nbd_server_listen (c->local, &cfg->local_tcp, err, errlen) < 0)
    goto fail;
  if (pipe2 (c->local_quit, O_CLOEXEC) < 0) {
    snprintf (err, errlen, "pipe: %s", strerror (errno));
    goto fail;
  }
  if (pthread_create (&c->local_thread, NULL, local_server_thread, c) != 0) {
    snprintf (err, errlen, "cannot start the local server thread");
    goto fail;
  }

  /* Hot-add: watch the shared ports' directories. */
  c->inotify_fd = inotify_init1 (IN_NONBLOCK | IN_CLOEXEC);
  for (size_t i = 0; c->inotify_fd >= 0 && i < c->nports; i++) {
    char dir[4096];
    snprintf (dir, sizeof dir, "%s", c->ports[i].glob);
    char *slash = strrchr (dir, '/');
    if (!c->ports[i].glob[0] || !slash)
      continue;
    *slash = '\0';
    if (inotify_add_watch (c->inotify_fd, dir, IN_CREATE | IN_MOVED_TO
                           | IN_DELETE | IN_MOVED_FROM | IN_CLOSE_WRITE) < 0)
      ap_warn ("cluster: cannot watch %s for new disks: %s; new disks are "
               "found on SIGHUP and when a peer announces them", dir,
               strerror (errno));
  }
  pthread_t it;
  if (c->inotify_fd >= 0
      && pthread_create (&it, NULL, inotify_thread, c) == 0)
    pthread_detach (it);        /* ends on c->stop; joined by polling */

  publish_self (c);
  registry_watch (c->reg, registry_changed, c);
  c->changed = true;
  if (pthread_create (&c->thread, NULL, cluster_thread, c) != 0) {
    snprintf (err, errlen, "cannot start the cluster thread");
    goto fail;
  }
  ap_info ("cluster: node %s joined (registry %s, advertised as %s); its "
           "units are on %s", c->node, registry_backend (c->reg),
           cfg->advertise, cfg->local_socket);
  return c;

 oom:
  snprintf (err, errlen, "out of memory");
 fail:
  /* Nothing runs yet but possibly the local server. */
  if (c->local_quit[1] >= 0) {
    if (write (c->local_quit[1], "q", 1) < 0) {
      /* the thread was not started */
    }
  }
  if (c->local)
    nbd_server_free (c->local);
  registry_close (c->reg);
  choices_close (c->choices);
  free (c->ports);
  free (c);
  return NULL;
}

void
cluster_set_direct (struct cluster *c, struct export **exports,
                    const struct config_disk *const *disks, size_t n)
{
  struct direct_disk *d = calloc (n ? n : 1, sizeof *d);
  if (!d)
    return;
  for (size_t i = 0; i < n; i++) {
    snprintf (d[i].device, sizeof d[i].device, "%s", exports[i]->name);
    snprintf (d[i].file, sizeof d[i].file, "%s", disks[i]->file);
    snprintf (d[i].identity, sizeof d[i].identity, "%s", disks[i]->identity);
    d[i].read_only = disks[i]->read_only;
    d[i].port_letter = disks[i]->port_letter;
    d[i].size = ap_unit_size (exports[i]->unit);
    d[i].block_size = ap_unit_block_size (exports[i]->unit);
    for (size_t k = 0; k < c->nports; k++)
      if (c->ports[k].letter == d[i].port_letter)
        d[i].alloclass = c->ports[k].alloclass;
  }
  pthread_mutex_lock (&c->lock);
  /* Withdraw what is no longer served, publish what is. */
  for (size_t i = 0; i < c->ndirect; i++) {
    bool still = false;
    for (size_t k = 0; k < n && !still; k++)
      still = strcmp (c->direct[i].device, d[k].device) == 0;
    if (!still)
      registry_withdraw_disk (c->reg, c->direct[i].device);
  }
  for (size_t k = 0; k < n; k++)
    publish_disk (c, &d[k]);
  free (c->direct);
  c->direct = d;
  c->ndirect = n;
  c->changed = true;
  pthread_cond_signal (&c->cond);
  pthread_mutex_unlock (&c->lock);
}

void
cluster_stop (struct cluster *c)
{
  if (!c)
    return;
  pthread_mutex_lock (&c->lock);
  c->stop = true;
  pthread_cond_signal (&c->cond);
  pthread_mutex_unlock (&c->lock);
  pthread_join (c->thread, NULL);
  usleep (250000);              /* the inotify thread sees c->stop */
  /* Leave the registry first: peers stop using our disks while we still
   * serve them. */
  registry_close (c->reg);
  if (write (c->local_quit[1], "q", 1) < 0)
    ap_warn ("cluster: cannot stop the local server: %s", strerror (errno));
  pthread_join (c->local_thread, NULL);
  nbd_server_free (c->local);
  for (size_t i = 0; i < c->nunits; i++)
    export_put (c->units[i].ex);
  free (c->units);
  free (c->pending);
  for (size_t i = 0; i < c->nconflicts; i++)
    free (c->conflicts[i]);
  free (c->conflicts);
  for (size_t i = 0; i < c->nwarned; i++)
    free (c->warned[i]);
  free (c->warned);
  free (c->direct);
  free (c->ports);
  close (c->local_quit[0]);
  close (c->local_quit[1]);
  if (c->inotify_fd >= 0)
    close (c->inotify_fd);
  choices_close (c->choices);
  pthread_mutex_destroy (&c->lock);
  pthread_cond_destroy (&c->cond);
  free (c);
}

size_t
cluster_units (struct cluster *c, struct export ***out)
{
  pthread_mutex_lock (&c->units_lock);
  size_t n = c->nunits;
  struct export **v = calloc (n ? n : 1, sizeof *v);
  for (size_t i = 0; v && i < n; i++)
    v[i] = export_get (c->units[i].ex);
  pthread_mutex_unlock (&c->units_lock);
  *out = v;
  return v ? n : 0;
}

void
cluster_set_units_hook (struct cluster *c,
                        void (*fn) (void *, struct export **, size_t),
                        void *opaque)
{
  pthread_mutex_lock (&c->hook_lock);
  c->units_hook = fn;
  c->units_opaque = opaque;
  pthread_mutex_unlock (&c->hook_lock);
  if (fn)
    call_units_hook (c);        /* what there is already */
}

void
cluster_set_event_hook (struct cluster *c, ap_event_fn *fn, void *opaque)
{
  atomic_store_explicit (&c->event_opaque, opaque, memory_order_relaxed);
  atomic_store_explicit (&c->event_hook, fn, memory_order_release);
}

char *
cluster_json (struct cluster *c)
{
  json_object *o = json_object_new_object ();
  json_object_object_add (o, "node", json_object_new_string (c->node));
  json_object_object_add (o, "registry_backend",
                          json_object_new_string (registry_backend (c->reg)));
  char msg[512] = "";
  bool ok = registry_health (c->reg, msg, sizeof msg);
  json_object_object_add (o, "registry_healthy", json_object_new_boolean (ok));
  json_object_object_add (o, "registry_error", json_object_new_string (msg));
  struct reg_view v = { 0 };
  if (ok && registry_snapshot (c->reg, &v) == 0) {
    json_object *nodes = json_object_new_array ();
    for (size_t i = 0; i < v.nnodes; i++) {
      json_object *n = json_object_new_object ();
      json_object_object_add (n, "name", json_object_new_string (v.nodes[i].name));
      json_object_object_add (n, "uri", json_object_new_string (v.nodes[i].uri));
      json_object_array_add (nodes, n);
    }
    json_object_object_add (o, "nodes", nodes);
    json_object *ports = json_object_new_array ();
    for (size_t i = 0; i < v.nports; i++) {
      json_object *p = json_object_new_object ();
      char name[32];
      snprintf (name, sizeof name, "$%u$DK%c", v.ports[i].alloclass,
                v.ports[i].letter);
      json_object_object_add (p, "port", json_object_new_string (name));
      json_object_object_add (p, "node", json_object_new_string (v.ports[i].node));
      json_object_object_add (p, "bus", json_object_new_string (v.ports[i].bus));
      json_object_array_add (ports, p);
    }
    json_object_object_add (o, "ports", ports);
    json_object *disks = json_object_new_array ();
    for (size_t i = 0; i < v.ndisks; i++) {
      json_object *d = json_object_new_object ();
      json_object_object_add (d, "device", json_object_new_string (v.disks[i].device));
      json_object_object_add (d, "served_by", json_object_new_string (v.disks[i].node));
      json_object_object_add (d, "size", json_object_new_uint64 (v.disks[i].size));
      json_object_object_add (d, "block_size",
                              json_object_new_int ((int) v.disks[i].block_size));
      json_object_object_add (d, "identity", json_object_new_string (v.disks[i].identity));
      json_object_array_add (disks, d);
    }
    json_object_object_add (o, "disks", disks);
    reg_view_free (&v);
  }
  json_object *conf = json_object_new_array ();
  pthread_mutex_lock (&c->lock);
  for (size_t i = 0; i < c->nconflicts; i++)
    json_object_array_add (conf, json_object_new_string (c->conflicts[i]));
  pthread_mutex_unlock (&c->lock);
  json_object_object_add (o, "configuration_errors", conf);
  char *s = strdup (json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN));
  json_object_put (o);
  return s;
}

/* ------------------------------------------------- for metrics.c only */

/* Whether the registry answers now (registry_health: never waits for the
 * network), its backend ("dir", "etcd"), and how many configuration
 * errors across nodes this node has found (the list is cluster_json's
 * "configuration_errors"). */
int
cluster_keep_choices (struct cluster *c, struct export *e, char *err,
                      size_t errlen)
{
  struct ap_unit_status *st = malloc (sizeof *st);
  if (!st) {
    snprintf (err, errlen, "out of memory");
    return -1;
  }
  ap_unit_get_status (e->unit, st);
  int r = choices_keep (c->choices, e->name, &st->choices, err, errlen);
  free (st);
  return r;
}

void
cluster_local_nbd_stats (struct cluster *c, struct nbd_server_stats *st)
{
  nbd_server_get_stats (c->local, st);
}

bool
cluster_registry_ok (struct cluster *c, const char **backend,
                     size_t *config_errors)
{
  char msg[512];
  bool ok = registry_health (c->reg, msg, sizeof msg);
  if (backend)
    *backend = registry_backend (c->reg);
  if (config_errors) {
    pthread_mutex_lock (&c->lock);
    *config_errors = c->nconflicts;
    pthread_mutex_unlock (&c->lock);
  }
  return ok;
}
