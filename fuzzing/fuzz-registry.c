/* fuzz-registry.c — libFuzzer target: what a node reads from the cluster
 * registry, which comes from the network (etcd) or from peers (the
 * records they publish): daemon/registry.c's record decoder and
 * daemon/registry-etcd.c's parsers of etcd's JSON gateway answers.
 *
 * Input:  1 byte   what the rest is (its value modulo 6):
 *           0 record     1 byte kind (modulo 3: node, port, disk), the
 *                        publishing node's name up to a '\n', then the
 *                        record's JSON as a peer published it
 *                        (docs/registry.md "Records")
 *           1 range      a /v3/kv/range answer under the prefix /altpath/
 *                        ({"kvs":[{"key":B64,"value":B64},...]}), read
 *                        as a snapshot is
 *           2 watch      the /v3/watch stream: JSON messages one a line,
 *                        handed over in chunks of 1 to 64 bytes (TCP
 *                        splits anywhere)
 *           3 grant      a /v3/lease/grant answer
 *           4 keepalive  a /v3/lease/keepalive answer
 *           5 login      a /v3/auth/authenticate answer (its token)
 *         then     the bytes, any at all.
 *
 * The answers go through what re_call does to every answer (re_parse,
 * re_error_of) and then the function that reads that answer; records and
 * range answers go through registry_snapshot (its decoder, its sort) with
 * a backend whose list hands over the input.  Debug logging is on (its
 * formatting of bad records is fuzzed too) and written to /dev/null.
 *
 * Checked besides the sanitizers (leaks included):
 *   - a snapshot holds only well-formed entries: strings NUL-terminated
 *     within their fields, node names that are what the key says (no '/',
 *     not empty), port letters A..Z, disk names not empty; no more entries
 *     than records; sorted as registry_snapshot promises;
 *   - a record accepted, encoded again (reg_encode_*, as the publisher
 *     does) and decoded again gives the same entry;
 *   - the watch asks for a snapshot only after a whole line arrived, and
 *     keeps no whole line in its buffer;
 *   - a grant accepted gives a lease ID and a TTL from 1 to RE_MAX_TTL
 *     seconds (the keepalive period, TTL*1000/3 ms, is an int); a refusal
 *     says why;
 *   - a token taken fits its buffer, is not empty and has no line break
 *     (it goes into an HTTP header).
 *
 * The registry's sources are compiled in (included below), as
 * tests/test-registry.c does, to reach their static functions; libcurl
 * is linked but no request is ever made.
 *
 * Build and run: fuzzing/run.sh fuzz-registry.  FUZZ_VERBOSE=1 in the
 * environment prints what each input gave (to see what seeds reach).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../daemon/registry.c"
#include "../daemon/registry-dir.c"
#include "../daemon/registry-etcd.c"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

#define PREFIX "/altpath/"

static FILE *devnull;
static FILE *verbose;            /* FUZZ_VERBOSE: stderr, else NULL */

/* The input a backend's list hands over. */
struct feed {
  int mode;                     /* 0 record, 1 range */
  enum reg_kind kind;           /* record */
  const char *node;             /* record */
  const char *text;
  size_t len;
  size_t records;               /* how many fn was given */
};

static struct feed *current;     /* the feed being listed */
static reg_list_fn *real_fn;     /* registry.c's collector */

/* What re_list hands registry.c's collector, counted. */
static int
counting_fn (void *opaque, enum reg_kind kind, const char *node,
             const char *json, size_t len)
{
  current->records++;
  return real_fn (opaque, kind, node, json, len);
}

/* The backend's list: a range answer goes through what re_call and
 * re_list do with it; a record is handed over as it is. */
static int
feed_list (void *be, reg_list_fn *fn, void *opaque)
{
  struct feed *f = be;
  current = f;
  real_fn = fn;
  if (f->mode == 0) {
    f->records++;
    return fn (opaque, f->kind, f->node, f->text, f->len);
  }
  json_object *o = re_parse (f->text, f->len);
  int code;
  char emsg[400];
  if (!o || re_error_of (o, &code, emsg, sizeof emsg)) {
    json_object_put (o);
    return -1;                  /* re_call's "etcd said no" */
  }
  int rc = re_list_answer (PREFIX, o, counting_fn, opaque);
  json_object_put (o);
  return rc ? -1 : 0;
}

static const struct reg_backend_ops feed_ops = { .name = "fuzz",
                                                 .list = feed_list };

/* ------------------------------------------------------------- checks */

#define TERMINATED(field) (strnlen ((field), sizeof (field)) < sizeof (field))

static bool
node_ok (const char *s, size_t size)
{
  size_t n = strnlen (s, size);
  return n > 0 && n < size && !memchr (s, '/', n);
}

static void
check_view (const struct reg_view *v, size_t records)
{
  if (v->nnodes + v->nports + v->ndisks > records)
    abort ();
  for (size_t i = 0; i < v->nnodes; i++) {
    const struct reg_node *n = &v->nodes[i];
    if (!node_ok (n->name, sizeof n->name) || !TERMINATED (n->uri)
        || !TERMINATED (n->tls_identity))
      abort ();
    if (i && reg_cmp_node (&v->nodes[i - 1], n) > 0)
      abort ();
  }
  for (size_t i = 0; i < v->nports; i++) {
    const struct reg_port *p = &v->ports[i];
    if (!node_ok (p->node, sizeof p->node) || p->letter < 'A'
        || p->letter > 'Z' || !TERMINATED (p->bus))
      abort ();
    if (i && reg_cmp_port (&v->ports[i - 1], p) > 0)
      abort ();
  }
  for (size_t i = 0; i < v->ndisks; i++) {
    const struct reg_disk *d = &v->disks[i];
    if (!node_ok (d->node, sizeof d->node) || !d->device[0]
        || !TERMINATED (d->device) || d->port_letter < 'A'
        || d->port_letter > 'Z' || !TERMINATED (d->identity)
        || d->size > INT64_MAX)
      abort ();
    if (i && reg_cmp_disk (&v->disks[i - 1], d) > 0)
      abort ();
  }
}

static void
snapshot (struct feed *f, struct reg_view *v)
{
  struct registry r = { .ops = &feed_ops, .be = f };
  if (registry_snapshot (&r, v) != 0) {
    /* Refused whole (an error answer): nothing to free or to use. */
    if (v->nodes || v->ports || v->disks || v->nnodes || v->nports
        || v->ndisks)
      abort ();
  }
  check_view (v, f->records);
  if (verbose)
    fprintf (verbose, "fuzz-registry: %zu records: %zu nodes, %zu ports, "
             "%zu disks\n", f->records, v->nnodes, v->nports, v->ndisks);
}

/* The one entry of v, encoded as its publisher would and decoded again,
 * must come back the same. */
static void
round_trip (const struct reg_view *v, enum reg_kind kind)
{
  char *json = NULL;
  const char *node;
  switch (kind) {
  case REG_KIND_NODE:
    node = v->nodes[0].name;
    json = reg_encode_node (node, &v->nodes[0]);
    break;
  case REG_KIND_PORT:
    node = v->ports[0].node;
    json = reg_encode_port (node, &v->ports[0]);
    break;
  case REG_KIND_DISK:
  default:
    node = v->disks[0].node;
    json = reg_encode_disk (node, &v->disks[0]);
    break;
  }
  if (!json)
    abort ();
  struct feed f = { .mode = 0, .kind = kind, .node = node, .text = json,
                    .len = strlen (json) };
  struct reg_view w;
  snapshot (&f, &w);
  switch (kind) {
  case REG_KIND_NODE:
    if (w.nnodes != 1 || strcmp (w.nodes[0].name, v->nodes[0].name)
        || strcmp (w.nodes[0].uri, v->nodes[0].uri)
        || strcmp (w.nodes[0].tls_identity, v->nodes[0].tls_identity))
      abort ();
    break;
  case REG_KIND_PORT:
    if (w.nports != 1 || strcmp (w.ports[0].node, v->ports[0].node)
        || w.ports[0].letter != v->ports[0].letter
        || w.ports[0].alloclass != v->ports[0].alloclass
        || strcmp (w.ports[0].bus, v->ports[0].bus))
      abort ();
    break;
  case REG_KIND_DISK:
    if (w.ndisks != 1 || strcmp (w.disks[0].node, v->disks[0].node)
        || strcmp (w.disks[0].device, v->disks[0].device)
        || w.disks[0].port_letter != v->disks[0].port_letter
        || w.disks[0].alloclass != v->disks[0].alloclass
        || w.disks[0].size != v->disks[0].size
        || w.disks[0].block_size != v->disks[0].block_size
        || strcmp (w.disks[0].identity, v->disks[0].identity))
      abort ();
    break;
  }
  reg_view_free (&w);
  free (json);
}

/* -------------------------------------------------------------- modes */

static void
fuzz_record (const uint8_t *data, size_t size)
{
  if (size < 1)
    return;
  enum reg_kind kind = (enum reg_kind) (data[0] % 3);
  data++, size--;
  const uint8_t *nl = memchr (data, '\n', size);
  if (!nl)
    return;
  /* The node as the backend gives it: a C string, no '/' (a key's or a
   * file name's component). */
  size_t n = (size_t) (nl - data);
  if (n == 0 || n >= REG_NAME_MAX || memchr (data, '\0', n)
      || memchr (data, '/', n))
    return;
  char node[REG_NAME_MAX];
  memcpy (node, data, n);
  node[n] = '\0';
  /* The record: exactly its bytes (ASan sees a read beyond). */
  size_t len = size - n - 1;
  char *json = malloc (len ? len : 1);
  if (!json)
    abort ();
  memcpy (json, nl + 1, len);

  struct feed f = { .mode = 0, .kind = kind, .node = node, .text = json,
                    .len = len };
  struct reg_view v;
  snapshot (&f, &v);
  if (v.nnodes + v.nports + v.ndisks == 1)
    round_trip (&v, kind);
  reg_view_free (&v);
  free (json);
}

static void
fuzz_range (const char *text, size_t len)
{
  struct feed f = { .mode = 1, .text = text, .len = len };
  struct reg_view v;
  snapshot (&f, &v);
  reg_view_free (&v);
}

/* The watcher: never called here (no notify thread); reg_changed only
 * marks a change pending when there is one. */
static void
never_called (void *opaque)
{
  abort ();
}

static void
fuzz_watch (const char *text, size_t len)
{
  struct registry r = { .fn = never_called };
  struct re e = { .r = &r };
  struct re_wstate w = { .e = &e };
  pthread_mutex_init (&r.mu, NULL);
  pthread_cond_init (&r.cond, NULL);
  uint32_t seed = (uint32_t) len * 2654435761u;
  bool line_seen = false;

  for (size_t off = 0; off < len && !w.restart;) {
    seed = seed * 1103515245u + 12345u;
    size_t chunk = 1 + (seed >> 16) % 64;
    if (chunk > len - off)
      chunk = len - off;
    /* Exactly the chunk, as libcurl hands it (not NUL-terminated). */
    char *c = malloc (chunk);
    if (!c)
      abort ();
    memcpy (c, text + off, chunk);
    line_seen |= memchr (c, '\n', chunk) != NULL;
    if (re_watch_cb (c, 1, chunk, &w) != chunk)
      abort ();
    free (c);
    off += chunk;
    if (verbose && w.restart)
      fprintf (verbose, "fuzz-registry: watch: restart\n");
    /* What is kept is never a whole line. */
    if (w.buf.p && memchr (w.buf.p, '\n', w.buf.n))
      abort ();
    if (r.pending && !line_seen)
      abort ();
  }
  if (verbose)
    fprintf (verbose, "fuzz-registry: watch: created %d, changed %d\n",
             w.created, r.pending);
  free (w.buf.p);
  pthread_cond_destroy (&r.cond);
  pthread_mutex_destroy (&r.mu);
}

static void
fuzz_grant (const char *text, size_t len, bool keepalive)
{
  json_object *o = re_parse (text, len);
  int code;
  char emsg[400], msg[512] = "";
  if (!o)
    return;
  if (re_error_of (o, &code, emsg, sizeof emsg)) {
    if (!memchr (emsg, '\0', sizeof emsg))
      abort ();
    if (verbose)
      fprintf (verbose, "fuzz-registry: error %d: %s\n", code, emsg);
  }
  else if (keepalive) {
    int64_t ttl = re_keepalive_ttl (o);
    if (ttl < 0)
      abort ();
    if (verbose)
      fprintf (verbose, "fuzz-registry: keepalive: TTL %" PRId64 "\n", ttl);
  }
  else {
    int64_t id, ttl;
    int rc = re_grant_answer (o, &id, &ttl, msg, sizeof msg);
    if (rc == 0 ? id == 0 || ttl <= 0 || ttl > RE_MAX_TTL || msg[0]
        : rc != -1 || !msg[0])
      abort ();
    if (verbose)
      fprintf (verbose, "fuzz-registry: grant: %s\n", rc ? msg : "a lease");
  }
  json_object_put (o);
}

static void
fuzz_login (const char *text, size_t len)
{
  json_object *o = re_parse (text, len);
  int code;
  char emsg[400], token[64];
  if (!o)
    return;
  memset (token, 'x', sizeof token);
  if (re_error_of (o, &code, emsg, sizeof emsg)) {
    if (!memchr (emsg, '\0', sizeof emsg))
      abort ();
  }
  /* A small buffer, so that "does not fit" is reached. */
  else if (re_token_of (o, token, sizeof token)) {
    size_t n = strnlen (token, sizeof token);
    if (n == 0 || n == sizeof token || strpbrk (token, "\r\n"))
      abort ();
    if (verbose)
      fprintf (verbose, "fuzz-registry: login: token %s\n", token);
  }
  json_object_put (o);
}

/* ------------------------------------------------------------- target */

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  devnull = fopen ("/dev/null", "we");
  if (!devnull)
    abort ();
  ap_log_set_debug (AP_DEBUG_CONTROL);
  if (getenv ("FUZZ_VERBOSE"))
    verbose = stderr;
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size < 1)
    return 0;
  int mode = data[0] % 6;
  data++, size--;
  /* Exactly the bytes, as re_post's buffer holds them (it adds a NUL,
   * which the parsers must not need: json_tokener gets the length). */
  char *text = malloc (size ? size : 1);
  if (!text)
    abort ();
  memcpy (text, data, size);

  FILE *saved = stderr;
  stderr = devnull;             /* the debug log; sanitizers use fd 2 */
  switch (mode) {
  case 0: fuzz_record (data, size); break;
  case 1: fuzz_range (text, size); break;
  case 2: fuzz_watch (text, size); break;
  case 3: fuzz_grant (text, size, false); break;
  case 4: fuzz_grant (text, size, true); break;
  case 5: fuzz_login (text, size); break;
  }
  stderr = saved;
  free (text);
  return 0;
}
