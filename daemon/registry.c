/* registry.c — the registry's shared layer: picks the backend, checks and
 * encodes what a node publishes (JSON, with json-c), decodes and sorts a
 * snapshot, and runs the watcher callback on its own thread.
 *
 *   registry_open ── opt->backend ──► reg_dir_ops  (registry-dir.c)
 *                                 └─► reg_etcd_ops (registry-etcd.c)
 *
 * Backends store opaque records (kind, id, JSON text) under this node's
 * lease and list the records of live nodes; everything that knows what a
 * node, port or disk record holds is here, so both backends publish the
 * same bytes (docs/registry.md, "Records").
 *
 * The watcher: backend threads call reg_changed(), which only sets a flag;
 * the notify thread calls the watcher.  A slow watcher (one that takes a
 * snapshot and rebuilds units) therefore never delays a heartbeat or the
 * reading of etcd's watch stream, and bursts of changes fold into one
 * call.
 *
 * Lock order: registry.mu is a leaf (nothing else is taken while it is
 * held; the watcher is called without it).
 */
#define REGISTRY_BACKEND
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <json-c/json.h>

#include "log.h"
#include "registry.h"

struct registry {
  const struct reg_backend_ops *ops;
  void *be;                     /* what ops->open returned */
  char node[REG_NAME_MAX];      /* this node */

  pthread_mutex_t mu;           /* guards the fields below */
  pthread_cond_t cond;          /* pending or stop changed */
  void (*fn) (void *opaque);    /* the watcher; NULL: none */
  void *opaque;
  bool pending;                 /* a change not yet told to fn */
  bool stop;                    /* registry_close: notify thread, exit */
  pthread_t notify;             /* calls fn */
};

/* -------------------------------------------------------- small helpers */

const char *
reg_kind_dir (enum reg_kind kind)
{
  switch (kind) {
  case REG_KIND_NODE: return "nodes";
  case REG_KIND_PORT: return "ports";
  case REG_KIND_DISK: return "disks";
  }
  return "?";
}

bool
reg_escape (const char *id, char *out, size_t outlen)
{
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;

  for (const unsigned char *p = (const unsigned char *) id; *p; p++) {
    bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
      || (*p >= '0' && *p <= '9') || *p == '$' || *p == '_' || *p == '-';
    if (plain) {
      if (o + 1 >= outlen)
        return false;
      out[o++] = (char) *p;
    }
    else {
      if (o + 3 >= outlen)
        return false;
      out[o++] = '%';
      out[o++] = hex[*p >> 4];
      out[o++] = hex[*p & 15];
    }
  }
  if (o >= outlen)
    return false;
  out[o] = '\0';
  return true;
}

/* A node name is part of file names and keys: keep it plain.  (The
 * configuration allows letters, digits and '_'; '-' is harmless.) */
static bool
reg_valid_node (const char *s)
{
  size_t n = strlen (s);
  return n > 0 && n < REG_NAME_MAX
    && strspn (s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
               "0123456789_-") == n;
}

/* A fixed-size string field of a caller's struct, NUL inside it. */
#define reg_terminated(field) (strnlen ((field), sizeof (field)) < sizeof (field))

/* ------------------------------------------------------------ pub set */

static ssize_t
reg_pubset_index (const struct reg_pubset *s, enum reg_kind kind,
                  const char *id)
{
  for (size_t i = 0; i < s->n; i++)
    if (s->v[i].kind == kind && strcmp (s->v[i].id, id) == 0)
      return (ssize_t) i;
  return -1;
}

int
reg_pubset_put (struct reg_pubset *s, enum reg_kind kind, const char *id,
                const char *json)
{
  char *j = strdup (json);
  if (!j)
    return -1;
  ssize_t i = reg_pubset_index (s, kind, id);
  if (i >= 0) {
    free (s->v[i].json);
    s->v[i].json = j;
    return 0;
  }
  char *idc = strdup (id);
  struct reg_record *v = realloc (s->v, (s->n + 1) * sizeof *v);
  if (!idc || !v) {
    free (idc);
    free (j);
    if (v)
      s->v = v;
    errno = ENOMEM;
    return -1;
  }
  s->v = v;
  s->v[s->n++] = (struct reg_record) { .kind = kind, .id = idc, .json = j };
  return 0;
}

bool
reg_pubset_del (struct reg_pubset *s, enum reg_kind kind, const char *id)
{
  ssize_t i = reg_pubset_index (s, kind, id);
  if (i < 0)
    return false;
  free (s->v[i].id);
  free (s->v[i].json);
  s->v[i] = s->v[--s->n];
  return true;
}

const struct reg_record *
reg_pubset_find (const struct reg_pubset *s, enum reg_kind kind,
                 const char *id)
{
  ssize_t i = reg_pubset_index (s, kind, id);
  return i >= 0 ? &s->v[i] : NULL;
}

void
reg_pubset_free (struct reg_pubset *s)
{
  for (size_t i = 0; i < s->n; i++) {
    free (s->v[i].id);
    free (s->v[i].json);
  }
  free (s->v);
  s->v = NULL;
  s->n = 0;
}

/* ------------------------------------------------------------ records
 *
 * One JSON object per record, the same in both backends:
 *   node: {"v":1,"kind":"node","node":"ALPHA","uri":"nbd://...",
 *          "tls_identity":""}
 *   port: {"v":1,"kind":"port","node":"ALPHA","letter":"B","alloclass":4,
 *          "bus":"/srv/shared"}
 *   disk: {"v":1,"kind":"disk","node":"ALPHA","device":"$4$DKB100",
 *          "port_letter":"B","alloclass":4,"size":1073741824,
 *          "block_size":512,"identity":"..."}
 * Readers ignore fields they do not know, so fields can be added. */

#define REG_FORMAT_VERSION 1

static json_object *
reg_new_record (const char *kind, const char *node)
{
  json_object *o = json_object_new_object ();
  if (!o)
    return NULL;
  json_object_object_add (o, "v", json_object_new_int (REG_FORMAT_VERSION));
  json_object_object_add (o, "kind", json_object_new_string (kind));
  json_object_object_add (o, "node", json_object_new_string (node));
  return o;
}

static char *
reg_to_text (json_object *o)
{
  if (!o)
    return NULL;
  const char *s = json_object_to_json_string_ext
    (o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
  char *t = s ? strdup (s) : NULL;
  json_object_put (o);
  return t;
}

static char *
reg_encode_node (const char *node, const struct reg_node *n)
{
  json_object *o = reg_new_record ("node", node);
  if (!o)
    return NULL;
  json_object_object_add (o, "uri", json_object_new_string (n->uri));
  json_object_object_add (o, "tls_identity",
                          json_object_new_string (n->tls_identity));
  return reg_to_text (o);
}

static char *
reg_encode_port (const char *node, const struct reg_port *p)
{
  json_object *o = reg_new_record ("port", node);
  if (!o)
    return NULL;
  char letter[2] = { p->letter, '\0' };
  json_object_object_add (o, "letter", json_object_new_string (letter));
  json_object_object_add (o, "alloclass",
                          json_object_new_int64 (p->alloclass));
  json_object_object_add (o, "bus", json_object_new_string (p->bus));
  return reg_to_text (o);
}

static char *
reg_encode_disk (const char *node, const struct reg_disk *d)
{
  json_object *o = reg_new_record ("disk", node);
  if (!o)
    return NULL;
  char letter[2] = { d->port_letter, '\0' };
  json_object_object_add (o, "device", json_object_new_string (d->device));
  json_object_object_add (o, "port_letter", json_object_new_string (letter));
  json_object_object_add (o, "alloclass",
                          json_object_new_int64 (d->alloclass));
  json_object_object_add (o, "size",
                          json_object_new_int64 ((int64_t) d->size));
  json_object_object_add (o, "block_size",
                          json_object_new_int64 (d->block_size));
  json_object_object_add (o, "identity",
                          json_object_new_string (d->identity));
  return reg_to_text (o);
}

/* Decoding: a record that does not parse is left out of the snapshot (a
 * newer or broken writer must not hide the rest of the cluster). */

static bool
reg_get_str (json_object *o, const char *key, char *out, size_t outlen,
             bool required)
{
  json_object *v;
  if (!json_object_object_get_ex (o, key, &v)) {
    if (required)
      return false;
    out[0] = '\0';
    return true;
  }
  if (!json_object_is_type (v, json_type_string))
    return false;
  const char *s = json_object_get_string (v);
  size_t n = (size_t) json_object_get_string_len (v);
  if (n >= outlen || strlen (s) != n)
    return false;
  memcpy (out, s, n + 1);
  return true;
}

static bool
reg_get_u64 (json_object *o, const char *key, uint64_t max, uint64_t *out)
{
  json_object *v;
  if (!json_object_object_get_ex (o, key, &v)
      || !json_object_is_type (v, json_type_int))
    return false;
  int64_t x = json_object_get_int64 (v);
  if (x < 0 || (uint64_t) x > max)
    return false;
  *out = (uint64_t) x;
  return true;
}

static bool
reg_get_letter (json_object *o, const char *key, char *out)
{
  char s[4];
  if (!reg_get_str (o, key, s, sizeof s, true) || strlen (s) != 1
      || s[0] < 'A' || s[0] > 'Z')
    return false;
  *out = s[0];
  return true;
}

struct reg_collect {
  struct reg_view *v;
  size_t cap_nodes, cap_ports, cap_disks;
  size_t skipped;
};

/* Grow *arr (of elem bytes, *n used, *cap allocated) by one; returns the
 * new element, zeroed. */
static void *
reg_grow (void **arr, size_t *n, size_t *cap, size_t elem)
{
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 8;
    void *p = realloc (*arr, c * elem);
    if (!p)
      return NULL;
    *arr = p;
    *cap = c;
  }
  void *e = (char *) *arr + *n * elem;
  memset (e, 0, elem);
  (*n)++;
  return e;
}

static int
reg_collect_one (void *opaque, enum reg_kind kind, const char *node,
                 const char *json, size_t len)
{
  struct reg_collect *c = opaque;
  struct reg_view *v = c->v;
  static const char *const kinds[] = { "node", "port", "disk" };
  char kname[8], rnode[REG_NAME_MAX];
  uint64_t x;
  bool ok = false;

  json_tokener *tok = json_tokener_new ();
  if (!tok)
    return -1;
  json_object *o = json_tokener_parse_ex (tok, json, (int) len);
  bool parsed = o && json_tokener_get_error (tok) == json_tokener_success;
  json_tokener_free (tok);

  /* The record names its kind and publisher; both must agree with where
   * it is stored, so that a node can only speak for itself. */
  if (!parsed || !json_object_is_type (o, json_type_object)
      || !reg_get_str (o, "kind", kname, sizeof kname, true)
      || strcmp (kname, kinds[kind]) != 0
      || !reg_get_str (o, "node", rnode, sizeof rnode, true)
      || strcmp (rnode, node) != 0)
    goto out;

  switch (kind) {
  case REG_KIND_NODE: {
    struct reg_node n = { 0 };
    memcpy (n.name, rnode, sizeof n.name);
    if (!reg_get_str (o, "uri", n.uri, sizeof n.uri, true)
        || !reg_get_str (o, "tls_identity", n.tls_identity,
                         sizeof n.tls_identity, false))
      goto out;
    struct reg_node *e = reg_grow ((void **) &v->nodes, &v->nnodes,
                                   &c->cap_nodes, sizeof *e);
    if (!e)
      goto oom;
    *e = n;
    break;
  }
  case REG_KIND_PORT: {
    struct reg_port p = { 0 };
    memcpy (p.node, rnode, sizeof p.node);
    if (!reg_get_letter (o, "letter", &p.letter)
        || !reg_get_u64 (o, "alloclass", UINT32_MAX, &x)
        || !reg_get_str (o, "bus", p.bus, sizeof p.bus, false))
      goto out;
    p.alloclass = (unsigned) x;
    struct reg_port *e = reg_grow ((void **) &v->ports, &v->nports,
                                   &c->cap_ports, sizeof *e);
    if (!e)
      goto oom;
    *e = p;
    break;
  }
  case REG_KIND_DISK: {
    struct reg_disk d = { 0 };
    memcpy (d.node, rnode, sizeof d.node);
    if (!reg_get_str (o, "device", d.device, sizeof d.device, true)
        || !d.device[0]
        || !reg_get_letter (o, "port_letter", &d.port_letter)
        || !reg_get_u64 (o, "alloclass", UINT32_MAX, &x))
      goto out;
    d.alloclass = (unsigned) x;
    if (!reg_get_u64 (o, "size", INT64_MAX, &d.size)
        || !reg_get_u64 (o, "block_size", UINT32_MAX, &x)
        || !reg_get_str (o, "identity", d.identity, sizeof d.identity, false))
      goto out;
    d.block_size = (uint32_t) x;
    struct reg_disk *e = reg_grow ((void **) &v->disks, &v->ndisks,
                                   &c->cap_disks, sizeof *e);
    if (!e)
      goto oom;
    *e = d;
    break;
  }
  }
  ok = true;

 out:
  if (!ok) {
    c->skipped++;
    ap_debug (AP_DEBUG_CONTROL, "registry: ignoring a malformed %s record "
              "of node %s: %.*s", kinds[kind], node,
              (int) (len > 200 ? 200 : len), json);
  }
  json_object_put (o);
  return 0;

 oom:
  json_object_put (o);
  errno = ENOMEM;
  return -1;
}

static int
reg_cmp_node (const void *a, const void *b)
{
  return strcmp (((const struct reg_node *) a)->name,
                 ((const struct reg_node *) b)->name);
}

static int
reg_cmp_port (const void *a, const void *b)
{
  const struct reg_port *x = a, *y = b;
  int c = strcmp (x->node, y->node);
  return c ? c : (x->letter > y->letter) - (x->letter < y->letter);
}

static int
reg_cmp_disk (const void *a, const void *b)
{
  const struct reg_disk *x = a, *y = b;
  int c = strcmp (x->device, y->device);
  return c ? c : strcmp (x->node, y->node);
}

/* ------------------------------------------------------------ watcher */

void
reg_changed (struct registry *r)
{
  pthread_mutex_lock (&r->mu);
  if (r->fn) {
    r->pending = true;
    pthread_cond_signal (&r->cond);
  }
  pthread_mutex_unlock (&r->mu);
}

static void *
reg_notify_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "reg-notify");
  struct registry *r = arg;

  pthread_mutex_lock (&r->mu);
  for (;;) {
    while (!r->stop && !(r->pending && r->fn))
      pthread_cond_wait (&r->cond, &r->mu);
    if (r->stop)
      break;
    r->pending = false;
    void (*fn) (void *) = r->fn;
    void *opaque = r->opaque;
    pthread_mutex_unlock (&r->mu);
    fn (opaque);
    pthread_mutex_lock (&r->mu);
  }
  pthread_mutex_unlock (&r->mu);
  return NULL;
}

void
registry_watch (struct registry *r, void (*fn) (void *opaque), void *opaque)
{
  if (!r)
    return;
  pthread_mutex_lock (&r->mu);
  r->fn = fn;
  r->opaque = opaque;
  r->pending = false;
  pthread_mutex_unlock (&r->mu);
}

/* ---------------------------------------------------------- interface */

struct registry *
registry_open (const struct registry_options *opt, char *err, size_t errlen)
{
  char dummy[1];
  if (!err || errlen == 0) {
    err = dummy;
    errlen = sizeof dummy;
  }
  err[0] = '\0';
  if (!opt) {
    snprintf (err, errlen, "registry: no options given");
    errno = EINVAL;
    return NULL;
  }

  const char *backend = opt->backend && *opt->backend ? opt->backend : "dir";
  const struct reg_backend_ops *ops;
  if (strcmp (backend, "dir") == 0)
    ops = &reg_dir_ops;
  else if (strcmp (backend, "etcd") == 0)
    ops = &reg_etcd_ops;
  else {
    snprintf (err, errlen, "registry: unknown backend '%s'; use 'dir' (one "
              "host) or 'etcd' (a cluster)", backend);
    errno = EINVAL;
    return NULL;
  }
  if (!opt->node || !reg_valid_node (opt->node)) {
    snprintf (err, errlen, "registry (%s): '%s' is not a node name; use 1 "
              "to %d letters, digits, '_' or '-'", backend,
              opt->node ? opt->node : "(none)", REG_NAME_MAX - 1);
    errno = EINVAL;
    return NULL;
  }
  unsigned lease_ms = opt->lease_ms ? opt->lease_ms : 3000;
  if (lease_ms < 100 || lease_ms > 3600 * 1000) {
    snprintf (err, errlen, "registry (%s): a lease of %u ms is out of "
              "range; give 100 to 3600000 ms", backend, lease_ms);
    errno = EINVAL;
    return NULL;
  }

  struct registry *r = calloc (1, sizeof *r);
  if (!r) {
    snprintf (err, errlen, "registry (%s): out of memory", backend);
    return NULL;
  }
  r->ops = ops;
  snprintf (r->node, sizeof r->node, "%s", opt->node);
  pthread_mutex_init (&r->mu, NULL);
  pthread_cond_init (&r->cond, NULL);
  int e = pthread_create (&r->notify, NULL, reg_notify_thread, r);
  if (e) {
    snprintf (err, errlen, "registry (%s): cannot start a thread: %s",
              backend, strerror (e));
    goto fail;
  }

  /* The notify thread runs first: backend threads may report changes as
   * soon as they start. */
  r->be = ops->open (r, opt, r->node, lease_ms, err, errlen);
  if (!r->be) {
    e = errno;
    pthread_mutex_lock (&r->mu);
    r->stop = true;
    pthread_cond_signal (&r->cond);
    pthread_mutex_unlock (&r->mu);
    pthread_join (r->notify, NULL);
    errno = e;
    goto fail;
  }
  return r;

 fail:
  e = errno;
  pthread_cond_destroy (&r->cond);
  pthread_mutex_destroy (&r->mu);
  free (r);
  errno = e;
  return NULL;
}

void
registry_close (struct registry *r)
{
  if (!r)
    return;
  /* The watcher first: once joined, no callback can be running and none
   * will start, so it cannot snapshot a half-closed backend.  Backend
   * threads may still call reg_changed until ops->close has joined them;
   * that only sets a flag. */
  pthread_mutex_lock (&r->mu);
  r->stop = true;
  r->fn = NULL;
  pthread_cond_signal (&r->cond);
  pthread_mutex_unlock (&r->mu);
  pthread_join (r->notify, NULL);

  r->ops->close (r->be);
  pthread_cond_destroy (&r->cond);
  pthread_mutex_destroy (&r->mu);
  free (r);
}

const char *
registry_backend (const struct registry *r)
{
  return r ? r->ops->name : "none";
}

bool
registry_health (struct registry *r, char *msg, size_t msglen)
{
  char dummy[1];
  if (!msg || msglen == 0) {
    msg = dummy;
    msglen = sizeof dummy;
  }
  if (!r) {
    snprintf (msg, msglen, "no registry");
    return false;
  }
  return r->ops->health (r->be, msg, msglen);
}

/* Publish one encoded record; json is freed. */
static int
reg_put (struct registry *r, enum reg_kind kind, const char *id, char *json)
{
  if (!json) {
    errno = ENOMEM;
    return -1;
  }
  int rc = r->ops->put (r->be, kind, id, json);
  int e = errno;
  free (json);
  errno = e;
  return rc;
}

/* A record names its publisher; it can only be this node ("" means this
 * node too). */
static bool
reg_own (struct registry *r, const char *what, const char *node)
{
  if (node[0] == '\0' || strcmp (node, r->node) == 0)
    return true;
  ap_warn ("registry: node %s cannot publish a %s for node %s (records "
           "live under the lease of the node that publishes them)",
           r->node, what, node);
  errno = EINVAL;
  return false;
}

int
registry_publish_node (struct registry *r, const struct reg_node *n)
{
  if (!r || !n || !reg_terminated (n->name) || !reg_terminated (n->uri)
      || !reg_terminated (n->tls_identity)) {
    errno = EINVAL;
    return -1;
  }
  if (!reg_own (r, "node record", n->name))
    return -1;
  return reg_put (r, REG_KIND_NODE, "", reg_encode_node (r->node, n));
}

int
registry_publish_port (struct registry *r, const struct reg_port *p)
{
  if (!r || !p || !reg_terminated (p->node) || !reg_terminated (p->bus)
      || p->letter < 'A' || p->letter > 'Z') {
    errno = EINVAL;
    return -1;
  }
  if (!reg_own (r, "port", p->node))
    return -1;
  /* registry.h: a port without an allocation class is the node's own
   * business; nothing to tell the others. */
  if (p->alloclass == 0)
    return 0;
  char id[2] = { p->letter, '\0' };
  return reg_put (r, REG_KIND_PORT, id, reg_encode_port (r->node, p));
}

int
registry_publish_disk (struct registry *r, const struct reg_disk *d)
{
  if (!r || !d || !reg_terminated (d->node) || !reg_terminated (d->device)
      || !reg_terminated (d->identity) || d->device[0] == '\0'
      || d->port_letter < 'A' || d->port_letter > 'Z'
      || d->size > INT64_MAX) {
    errno = EINVAL;
    return -1;
  }
  if (!reg_own (r, "disk", d->node))
    return -1;
  return reg_put (r, REG_KIND_DISK, d->device, reg_encode_disk (r->node, d));
}

int
registry_withdraw_disk (struct registry *r, const char *device)
{
  if (!r || !device || !*device || strlen (device) >= AP_NAME_MAX) {
    errno = EINVAL;
    return -1;
  }
  return r->ops->del (r->be, REG_KIND_DISK, device);
}

int
registry_snapshot (struct registry *r, struct reg_view *v)
{
  if (!v) {
    errno = EINVAL;
    return -1;
  }
  memset (v, 0, sizeof *v);
  if (!r) {
    errno = EINVAL;
    return -1;
  }
  struct reg_collect c = { .v = v };
  if (r->ops->list (r->be, reg_collect_one, &c) != 0) {
    int e = errno;
    reg_view_free (v);
    errno = e;
    return -1;
  }
  if (v->nnodes)
    qsort (v->nodes, v->nnodes, sizeof *v->nodes, reg_cmp_node);
  if (v->nports)
    qsort (v->ports, v->nports, sizeof *v->ports, reg_cmp_port);
  if (v->ndisks)
    qsort (v->disks, v->ndisks, sizeof *v->disks, reg_cmp_disk);
  return 0;
}

void
reg_view_free (struct reg_view *v)
{
  if (!v)
    return;
  free (v->nodes);
  free (v->ports);
  free (v->disks);
  memset (v, 0, sizeof *v);
}
