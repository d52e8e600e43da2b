/* altpath.c — the command line: what altpathd's units (devices) and their
 * paths are doing on this node, and the operator's hand on them — the
 * OpenVMS SHOW DEVICE[/FULL] and SET DEVICE/SWITCH, SET DEVICE/PATH of
 * DESIGN.md's glossary.
 *
 *   altpath [--socket PATH] [--json] [--timeout S] COMMAND ...
 *      │ one request, one reply (client.c; docs/cli.md has the protocol)
 *      ▼
 *   altpathd's control socket ── units, cluster, events
 *
 * Output: tables and text for people on stdout; with --json the daemon's
 * reply as it is, one object per line (errors too), for programs.  An
 * error is one line (stderr, or the JSON object on stdout) and the exit
 * status says what kind it was (cli.h, docs/cli.md).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "altpath.h"
#include "cli.h"

#define DEFAULT_SOCKET "/run/altpath/control.sock"
#define DEFAULT_TIMEOUT_S 10.0
#define PROTOCOL_VERSION 1

static struct {
  const char *socket;
  double timeout_s;
  bool json;
  bool full;
} opt = { DEFAULT_SOCKET, DEFAULT_TIMEOUT_S, false, false };

/* ------------------------------------------------------------------ usage */

#define SYNOPSIS \
  "usage: altpath [OPTIONS] COMMAND [ARGUMENTS]\n" \
  "       altpath --help | --version\n"

static void
usage (FILE *f)
{
  fprintf (f, SYNOPSIS
"\n"
"Show and steer the devices (units) of altpathd on this node and their\n"
"paths: the direct one (this node is attached to the disk) and the served\n"
"ones (another node does the I/O, 'served:NODE').\n"
"\n"
"Commands:\n"
"  show devices              every device: state, current path, paths up\n"
"                            of all, operations, errors\n"
"  show device NAME [--full] one device and each of its paths (kind, state,\n"
"                            current and preferred, I/O, errors); --full:\n"
"                            every counter, last errors, latencies,\n"
"                            switches (as OpenVMS SHOW DEVICE/FULL)\n"
"  show cluster              nodes, shared ports and who attaches them,\n"
"                            served disks, the registry and its health,\n"
"                            configuration errors\n"
"  switch NAME PATH          move NAME's I/O to PATH and pin it there:\n"
"                            automatic failback does not undo it\n"
"  unpin NAME                let NAME go back to its preferred path again\n"
"  path disable NAME PATH    take PATH out of use; it stays out until\n"
"                            enabled (the device moves off it first)\n"
"  path enable NAME PATH     put PATH back in use (probed first)\n"
"  rescan                    look for new disks on the ports now\n"
"  watch                     print each state change as it happens (time,\n"
"                            device, what), until interrupted (Ctrl-C)\n"
"  ping                      check that altpathd answers\n"
"\n"
"Options (anywhere on the line):\n"
"  -s, --socket PATH   altpathd's control socket\n"
"                      (default " DEFAULT_SOCKET ")\n"
"  -j, --json          print altpathd's reply as JSON, one object per line\n"
"                      (watch: the reply, then one object per event);\n"
"                      errors too, as {\"ok\":false,\"error\":...,\"code\":...}\n"
"  -t, --timeout SECS  give up waiting for altpathd after SECS seconds\n"
"                      (default %g; watch: for the start only)\n"
"  -f, --full          with 'show device': everything\n"
"  -h, --help          this text\n"
"  -V, --version       the version\n"
"\n"
"NAME is a device name such as '$4$DKB100' (quote it: the shell expands\n"
"'$'), matched ignoring case.  PATH is a path's name as 'show device'\n"
"lists it: 'direct', 'served:BETA', ...\n"
"\n"
"Exit status:\n"
"  0  done\n"
"  1  altpathd refused or failed the command (an unknown device or path,\n"
"     the last usable path, a path that is not healthy, ...)\n"
"  2  a bad command line\n"
"  3  cannot reach altpathd (not running, another --socket, or it broke\n"
"     the protocol)\n"
"  4  permission denied (the socket is for root and the group named in\n"
"     altpathd's [control] section)\n"
"  5  no answer within --timeout\n"
"\n"
"docs/cli.md has the details and the JSON of every reply.\n",
           DEFAULT_TIMEOUT_S);
}

static int __attribute__ ((format (printf, 1, 2)))
usage_error (const char *fmt, ...)
{
  va_list ap;
  fprintf (stderr, "altpath: ");
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, "\n" SYNOPSIS "Try 'altpath --help' for more.\n");
  return EXIT_USAGE;
}

/* ---------------------------------------------------------------- JSON */

static const char *
jstr (json_object *o, const char *key)
{
  json_object *v;
  if (o && json_object_object_get_ex (o, key, &v)
      && json_object_is_type (v, json_type_string))
    return json_object_get_string (v);
  return "";
}

static int64_t
jint (json_object *o, const char *key)
{
  json_object *v;
  if (o && json_object_object_get_ex (o, key, &v))
    return json_object_get_int64 (v);
  return 0;
}

static uint64_t
juint (json_object *o, const char *key)
{
  json_object *v;
  if (o && json_object_object_get_ex (o, key, &v))
    return json_object_get_uint64 (v);
  return 0;
}

static bool
jbool (json_object *o, const char *key)
{
  json_object *v;
  return o && json_object_object_get_ex (o, key, &v)
    && json_object_get_boolean (v);
}

static json_object *
jobj (json_object *o, const char *key)
{
  json_object *v;
  if (o && json_object_object_get_ex (o, key, &v))
    return v;
  return NULL;
}

static size_t
jlen (json_object *a)
{
  return a && json_object_is_type (a, json_type_array)
    ? json_object_array_length (a) : 0;
}

static void
print_json (json_object *o)
{
  printf ("%s\n", json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN
                                                  | JSON_C_TO_STRING_NOSLASHESCAPE));
}

/* ------------------------------------------------------------ formatting */

static void
fmt_size (char *buf, size_t n, uint64_t bytes)
{
  static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB",
                                      "PiB" };
  double v = (double) bytes;
  int u = 0;
  while (v >= 1024 && u < 5)
    v /= 1024, u++;
  if (u == 0)
    snprintf (buf, n, "%" PRIu64 " B", bytes);
  else
    snprintf (buf, n, "%.1f %s", v, unit[u]);
}

/* A wall-clock time in milliseconds since the epoch, in local time. */
static void
fmt_time (char *buf, size_t n, int64_t ms, bool millis)
{
  if (ms <= 0) {
    snprintf (buf, n, "never");
    return;
  }
  time_t t = (time_t) (ms / 1000);
  struct tm tm;
  localtime_r (&t, &tm);
  size_t k = strftime (buf, n, "%Y-%m-%d %H:%M:%S", &tm);
  if (millis && k)
    snprintf (buf + k, n - k, ".%03d", (int) (ms % 1000));
}

static void
fmt_us (char *buf, size_t n, uint64_t us)
{
  if (us < 1000)
    snprintf (buf, n, "%" PRIu64 " us", us);
  else if (us < 1000000)
    snprintf (buf, n, "%.1f ms", (double) us / 1e3);
  else
    snprintf (buf, n, "%.2f s", (double) us / 1e6);
}

static uint64_t
ops_of (json_object *counters)
{
  return juint (counters, "reads") + juint (counters, "writes")
    + juint (counters, "flushes") + juint (counters, "trims")
    + juint (counters, "zeroes");
}

/* "direct", or "served via BETA" for a path named served:BETA. */
static void
fmt_kind (char *buf, size_t n, json_object *path)
{
  const char *kind = jstr (path, "kind"), *name = jstr (path, "name");
  if (strcmp (kind, "served") == 0 && strncmp (name, "served:", 7) == 0
      && name[7])
    snprintf (buf, n, "served via %s", name + 7);
  else
    snprintf (buf, n, "%s", kind[0] ? kind : "?");
}

/* ---------------------------------------------------------------- tables */

#define TABLE_COLS 8

struct table {
  size_t ncols, nrows, alloc;
  char *(*rows)[TABLE_COLS];
};

static void __attribute__ ((sentinel))
table_row (struct table *t, ...)
{
  if (t->nrows == t->alloc) {
    size_t na = t->alloc ? 2 * t->alloc : 16;
    void *nr = realloc (t->rows, na * sizeof *t->rows);
    if (!nr)
      return;
    t->rows = nr;
    t->alloc = na;
  }
  va_list ap;
  va_start (ap, t);
  size_t c = 0;
  for (const char *s; c < TABLE_COLS && (s = va_arg (ap, const char *)); c++)
    t->rows[t->nrows][c] = strdup (s);
  va_end (ap);
  for (size_t k = c; k < TABLE_COLS; k++)
    t->rows[t->nrows][k] = NULL;
  if (c > t->ncols)
    t->ncols = c;
  t->nrows++;
}

static void
table_print (struct table *t, const char *indent)
{
  size_t w[TABLE_COLS] = { 0 };
  for (size_t r = 0; r < t->nrows; r++)
    for (size_t c = 0; c < t->ncols; c++)
      if (t->rows[r][c] && strlen (t->rows[r][c]) > w[c])
        w[c] = strlen (t->rows[r][c]);
  for (size_t r = 0; r < t->nrows; r++) {
    printf ("%s", indent);
    size_t last = 0;
    for (size_t c = 0; c < t->ncols; c++)
      if (t->rows[r][c] && t->rows[r][c][0])
        last = c;
    for (size_t c = 0; c <= last; c++)
      printf ("%-*s%s", c == last ? 0 : (int) w[c],
              t->rows[r][c] ? t->rows[r][c] : "", c == last ? "" : "  ");
    printf ("\n");
    for (size_t c = 0; c < TABLE_COLS; c++)
      free (t->rows[r][c]);
  }
  free (t->rows);
  memset (t, 0, sizeof *t);
}

/* ------------------------------------------------------------- requests */

static int
print_error (const struct cli_error *e)
{
  if (opt.json) {
    json_object *o = json_object_new_object ();
    json_object_object_add (o, "version", json_object_new_int (PROTOCOL_VERSION));
    json_object_object_add (o, "ok", json_object_new_boolean (false));
    json_object_object_add (o, "error", json_object_new_string (e->msg));
    json_object_object_add (o, "code", json_object_new_string (e->code));
    print_json (o);
    json_object_put (o);
  }
  else
    fprintf (stderr, "altpath: %s\n", e->msg);
  return e->status;
}

static json_object *
request (const char *cmd, const char *device, const char *path)
{
  json_object *o = json_object_new_object ();
  json_object_object_add (o, "version", json_object_new_int (PROTOCOL_VERSION));
  json_object_object_add (o, "cmd", json_object_new_string (cmd));
  if (device)
    json_object_object_add (o, "device", json_object_new_string (device));
  if (path)
    json_object_object_add (o, "path", json_object_new_string (path));
  return o;
}

/* A refusal from the daemon: one line, and its exit status. */
static int
refused (json_object *reply)
{
  const char *code = jstr (reply, "code");
  if (opt.json)
    print_json (reply);
  else
    fprintf (stderr, "altpath: %s\n", jstr (reply, "error")[0]
             ? jstr (reply, "error") : "altpathd refused the command");
  return strcmp (code, "EACCES") == 0 ? EXIT_PERMISSION : EXIT_REFUSED;
}

/* One request on its own connection.  EXIT_OK and *reply (an "ok" one;
 * put it), or the exit status after the error was printed. */
static int
call (struct conn *c, const char *cmd, const char *device, const char *path,
      json_object **reply)
{
  struct cli_error e;
  *reply = NULL;
  if (conn_open (c, opt.socket, opt.timeout_s, &e) < 0)
    return print_error (&e);
  if (conn_call (c, request (cmd, device, path), reply, &e) < 0) {
    conn_close (c);
    return print_error (&e);
  }
  if (!jbool (*reply, "ok")) {
    int st = refused (*reply);
    json_object_put (*reply);
    *reply = NULL;
    conn_close (c);
    return st;
  }
  return EXIT_OK;
}

static int
simple_call (const char *cmd, const char *device, const char *path,
             json_object **reply)
{
  struct conn c;
  int st = call (&c, cmd, device, path, reply);
  if (st == EXIT_OK)
    conn_close (&c);
  return st;
}

/* simple_call for the commands whose --json output is the daemon's answer
 * as it came: with --json the answer is printed here and *reply is NULL,
 * so that the caller has only its text to write. */
static int
query (const char *cmd, const char *device, const char *path,
       json_object **reply)
{
  int st = simple_call (cmd, device, path, reply);
  if (st == EXIT_OK && opt.json) {
    print_json (*reply);
    json_object_put (*reply);
    *reply = NULL;
  }
  return st;
}

/* -------------------------------------------------------------- commands */

/* The first path of unit whose boolean field flag ("active",
 * "preferred") is true, or NULL. */
static json_object *
path_with (json_object *unit, const char *flag)
{
  json_object *paths = jobj (unit, "paths");
  for (size_t i = 0; i < jlen (paths); i++) {
    json_object *p = json_object_array_get_idx (paths, i);
    if (jbool (p, flag))
      return p;
  }
  return NULL;
}

static json_object *
path_named (json_object *unit, const char *name)
{
  json_object *paths = jobj (unit, "paths");
  for (size_t i = 0; i < jlen (paths); i++) {
    json_object *p = json_object_array_get_idx (paths, i);
    if (strcmp (jstr (p, "name"), name) == 0)
      return p;
  }
  return NULL;
}

/* The operator's choices for paths that are not there now (the unit keeps
 * them until they join, and across altpathd's restarts). */
static void
print_absent_choices (json_object *u)
{
  json_object *ch = jobj (u, "choices");
  const char *pinned = jstr (ch, "pinned");
  if (pinned[0] && !path_named (u, pinned))
    printf ("\n  Pinned to %s, which is not here now: the unit goes back to "
            "it when it joins ('altpath unpin %s' releases it)\n", pinned,
            jstr (u, "name"));
  json_object *dis = jobj (ch, "disabled");
  bool first = true;
  for (size_t i = 0; i < jlen (dis); i++) {
    const char *n = json_object_get_string (json_object_array_get_idx (dis,
                                                                       i));
    if (!n || path_named (u, n))
      continue;
    printf ("%s%s", first ? "\n  Disabled, not here now: " : ", ", n);
    first = false;
  }
  if (!first)
    printf (" (they join disabled; 'altpath path enable %s PATH' lets "
            "them be used)\n", jstr (u, "name"));
}

static int
cmd_show_devices (void)
{
  json_object *r;
  int st = query ("list", NULL, NULL, &r);
  if (st || !r)
    return st;
  json_object *units = jobj (r, "devices");
  if (jlen (units) == 0) {
    printf ("node %s has no devices\n", jstr (r, "node"));
    json_object_put (r);
    return EXIT_OK;
  }
  struct table t = { 0 };
  table_row (&t, "DEVICE", "STATE", "PATH", "PATHS", "OPS", "ERRORS", NULL);
  for (size_t i = 0; i < jlen (units); i++) {
    json_object *u = json_object_array_get_idx (units, i);
    json_object *paths = jobj (u, "paths");
    size_t up = 0;
    for (size_t k = 0; k < jlen (paths); k++) {
      const char *s = jstr (json_object_array_get_idx (paths, k), "state");
      if (strcmp (s, "active") == 0 || strcmp (s, "standby") == 0)
        up++;
    }
    json_object *a = path_with (u, "active");
    char cur[AP_NAME_MAX + 16], nup[32], ops[32], errs[32];
    snprintf (cur, sizeof cur, "%s%s", a ? jstr (a, "name") : "-",
              a && jbool (a, "pinned") ? " (pinned)" : "");
    snprintf (nup, sizeof nup, "%zu/%zu", up, jlen (paths));
    snprintf (ops, sizeof ops, "%" PRIu64, ops_of (jobj (u, "counters")));
    snprintf (errs, sizeof errs, "%" PRIu64,
              juint (jobj (u, "counters"), "errors"));
    table_row (&t, jstr (u, "name"), jstr (u, "state"), cur, nup, ops, errs,
               NULL);
  }
  table_print (&t, "");
  json_object_put (r);
  return EXIT_OK;
}

static void
print_field (const char *label, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static void
print_field (const char *label, const char *fmt, ...)
{
  va_list ap;
  printf ("    %-26s", label);
  va_start (ap, fmt);
  vprintf (fmt, ap);
  va_end (ap);
  printf ("\n");
}

static void
print_counters (json_object *c)
{
  char r[32], w[32], p50[32], p99[32];
  print_field ("Operations", "%" PRIu64 " (reads %" PRIu64 ", writes %"
               PRIu64 ", flushes %" PRIu64 ", trims %" PRIu64 ", zeroes %"
               PRIu64 ")", ops_of (c), juint (c, "reads"), juint (c, "writes"),
               juint (c, "flushes"), juint (c, "trims"), juint (c, "zeroes"));
  fmt_size (r, sizeof r, juint (c, "bytes_read"));
  fmt_size (w, sizeof w, juint (c, "bytes_written"));
  print_field ("Bytes", "read %s, written %s", r, w);
  print_field ("Errors", "%" PRIu64, juint (c, "errors"));
  fmt_us (p50, sizeof p50, juint (c, "latency_p50_us"));
  fmt_us (p99, sizeof p99, juint (c, "latency_p99_us"));
  print_field ("Latency", "p50 %s, p99 %s", p50, p99);
}

/* "current, preferred, pinned" for a path. */
static void
fmt_marks (char *buf, size_t n, json_object *p)
{
  snprintf (buf, n, "%s%s%s%s%s",
            jbool (p, "active") ? "current" : "",
            jbool (p, "active") && jbool (p, "preferred") ? ", " : "",
            jbool (p, "preferred") ? "preferred" : "",
            jbool (p, "pinned") && (jbool (p, "active")
                                    || jbool (p, "preferred")) ? ", " : "",
            jbool (p, "pinned") ? "pinned" : "");
}

static void
fmt_last_error (char *buf, size_t n, json_object *p)
{
  int64_t when = jint (p, "last_error_unix_ms");
  const char *msg = jstr (p, "last_error");
  if (!when && !msg[0]) {
    snprintf (buf, n, "none");
    return;
  }
  char t[64];
  fmt_time (t, sizeof t, when, false);
  int en = (int) jint (p, "last_errno");
  const char *name = en ? strerrorname_np (en) : NULL;
  snprintf (buf, n, "%s%s%s at %s", name ? name : "", name ? ": " : "",
            msg[0] ? msg : "(no message)", t);
}

static void
print_device_full (json_object *r, json_object *u)
{
  char size[32], t[64], v[32];
  json_object *a = path_with (u, "active"), *pref = path_with (u, "preferred");

  printf ("Device %s on node %s, is %s\n\n", jstr (u, "name"),
          jstr (r, "node"), jstr (u, "state"));
  fmt_size (size, sizeof size, juint (u, "size"));
  print_field ("Size", "%s (%" PRIu64 " bytes, blocks of %" PRIu64 ")",
               size, juint (u, "size"), juint (u, "block_size"));
  print_field ("Current path", "%s%s", a ? jstr (a, "name") : "none",
               a && jbool (a, "pinned") ? " (pinned by the operator)" : "");
  print_field ("Preferred path", "%s", pref ? jstr (pref, "name") : "none");
  print_counters (jobj (u, "counters"));
  print_field ("In flight, held", "%" PRIu64 ", %" PRIu64,
               juint (u, "inflight"), juint (u, "held"));
  print_field ("Switches", "%" PRIu64 " automatic, %" PRIu64 " manual",
               juint (u, "switches_auto"), juint (u, "switches_manual"));
  fmt_time (t, sizeof t, jint (u, "last_switch_unix_ms"), false);
  print_field ("Last switch", "%s", t);
  fmt_us (v, sizeof v, juint (u, "longest_verify_us"));
  print_field ("Longest verification", "%s", v);
  print_field ("Queue I/O with no path", "%s",
               jbool (u, "queue_if_no_path") ? "yes" : "no (fail it)");

  json_object *paths = jobj (u, "paths");
  for (size_t i = 0; i < jlen (paths); i++) {
    json_object *p = json_object_array_get_idx (paths, i);
    char kind[AP_NAME_MAX + 16], marks[64], le[512];
    fmt_kind (kind, sizeof kind, p);
    fmt_marks (marks, sizeof marks, p);
    printf ("\n  Path %s (%s)\n", jstr (p, "name"), kind);
    print_field ("State", "%s%s%s", jstr (p, "state"), marks[0] ? ", " : "",
                 marks);
    print_counters (jobj (p, "counters"));
    fmt_last_error (le, sizeof le, p);
    print_field ("Last error", "%s", le);
    print_field ("In flight", "%" PRIu64, juint (p, "inflight"));
    print_field ("Probes", "%" PRIu64 " ok, %" PRIu64 " failed",
                 juint (p, "probes_ok"), juint (p, "probes_failed"));
    print_field ("Priority", "%" PRId64, jint (p, "priority"));
  }
  print_absent_choices (u);
}

static void
print_device (json_object *r, json_object *u)
{
  char size[32], t[64];
  json_object *a = path_with (u, "active"), *pref = path_with (u, "preferred");

  fmt_size (size, sizeof size, juint (u, "size"));
  printf ("%s on node %s: %s, %s (%" PRIu64 "-byte blocks)\n",
          jstr (u, "name"), jstr (r, "node"), jstr (u, "state"), size,
          juint (u, "block_size"));
  printf ("  current path %s%s, preferred path %s\n",
          a ? jstr (a, "name") : "none",
          a && jbool (a, "pinned") ? " (pinned)" : "",
          pref ? jstr (pref, "name") : "none");
  fmt_time (t, sizeof t, jint (u, "last_switch_unix_ms"), false);
  printf ("  switches: %" PRIu64 " automatic, %" PRIu64 " manual; last %s\n\n",
          juint (u, "switches_auto"), juint (u, "switches_manual"), t);

  struct table tb = { 0 };
  table_row (&tb, "PATH", "KIND", "STATE", "OPS", "BYTES", "ERRORS", "",
             NULL);
  json_object *paths = jobj (u, "paths");
  for (size_t i = 0; i < jlen (paths); i++) {
    json_object *p = json_object_array_get_idx (paths, i);
    json_object *c = jobj (p, "counters");
    char kind[AP_NAME_MAX + 16], marks[64], ops[32], bytes[32], errs[32];
    fmt_kind (kind, sizeof kind, p);
    fmt_marks (marks, sizeof marks, p);
    snprintf (ops, sizeof ops, "%" PRIu64, ops_of (c));
    fmt_size (bytes, sizeof bytes, juint (c, "bytes_read")
              + juint (c, "bytes_written"));
    snprintf (errs, sizeof errs, "%" PRIu64, juint (c, "errors"));
    table_row (&tb, jstr (p, "name"), kind, jstr (p, "state"), ops, bytes,
               errs, marks, NULL);
  }
  table_print (&tb, "  ");
  print_absent_choices (u);
}

static int
cmd_show_device (const char *name)
{
  json_object *r;
  int st = query ("show", name, NULL, &r);
  if (st || !r)
    return st;
  if (opt.full)
    print_device_full (r, jobj (r, "device"));
  else
    print_device (r, jobj (r, "device"));
  json_object_put (r);
  return EXIT_OK;
}

static int
cmd_show_cluster (void)
{
  json_object *r;
  int st = query ("cluster", NULL, NULL, &r);
  if (st || !r)
    return st;
  if (!jbool (r, "in_cluster")) {
    printf ("node %s is not in a cluster (its configuration has no "
            "[registry] section)\n", jstr (r, "node"));
    json_object_put (r);
    return EXIT_OK;
  }
  json_object *c = jobj (r, "cluster");
  bool healthy = jbool (c, "registry_healthy");
  printf ("Node %s; registry %s: %s%s%s\n", jstr (r, "node"),
          jstr (c, "registry_backend"), healthy ? "healthy" : "NOT ANSWERING",
          healthy ? "" : ": ", healthy ? "" : jstr (c, "registry_error"));
  if (!healthy)
    printf ("  (the paths in use carry on; discovery waits for the "
            "registry)\n");

  json_object *nodes = jobj (c, "nodes");
  printf ("\nNodes (%zu):\n", jlen (nodes));
  struct table t = { 0 };
  for (size_t i = 0; i < jlen (nodes); i++) {
    json_object *n = json_object_array_get_idx (nodes, i);
    table_row (&t, jstr (n, "name"), jstr (n, "uri"),
               strcmp (jstr (n, "name"), jstr (r, "node")) == 0 ? "(this node)"
               : "", NULL);
  }
  table_print (&t, "  ");

  /* Shared ports: one line per port and bus, with who attaches it. */
  json_object *ports = jobj (c, "ports");
  size_t np = jlen (ports);
  bool *done = calloc (np ? np : 1, sizeof *done);
  printf ("\nShared ports:%s\n", np ? "" : " none");
  for (size_t i = 0; done && i < np; i++) {
    if (done[i])
      continue;
    json_object *p = json_object_array_get_idx (ports, i);
    char who[1024];
    size_t len = (size_t) snprintf (who, sizeof who, "%s", jstr (p, "node"));
    for (size_t k = i + 1; k < np; k++) {
      json_object *q = json_object_array_get_idx (ports, k);
      if (!done[k] && strcmp (jstr (p, "port"), jstr (q, "port")) == 0
          && strcmp (jstr (p, "bus"), jstr (q, "bus")) == 0) {
        done[k] = true;
        if (len < sizeof who)
          len += (size_t) snprintf (who + len, sizeof who - len, ", %s",
                                    jstr (q, "node"));
      }
    }
    table_row (&t, jstr (p, "port"), "attached by", who, "bus",
               jstr (p, "bus"), NULL);
  }
  free (done);
  table_print (&t, "  ");

  /* Served disks: one line per disk, with who serves it. */
  json_object *disks = jobj (c, "disks");
  size_t nd = jlen (disks);
  done = calloc (nd ? nd : 1, sizeof *done);
  printf ("\nServed disks:%s\n", nd ? "" : " none");
  for (size_t i = 0; done && i < nd; i++) {
    if (done[i])
      continue;
    json_object *d = json_object_array_get_idx (disks, i);
    char who[1024], size[32], bs[32];
    size_t len = (size_t) snprintf (who, sizeof who, "%s",
                                    jstr (d, "served_by"));
    for (size_t k = i + 1; k < nd; k++) {
      json_object *q = json_object_array_get_idx (disks, k);
      if (!done[k] && strcmp (jstr (d, "device"), jstr (q, "device")) == 0) {
        done[k] = true;
        if (len < sizeof who)
          len += (size_t) snprintf (who + len, sizeof who - len, ", %s",
                                    jstr (q, "served_by"));
      }
    }
    fmt_size (size, sizeof size, juint (d, "size"));
    snprintf (bs, sizeof bs, "%" PRIu64 "-byte blocks",
              juint (d, "block_size"));
    char id[AP_NAME_MAX + 16] = "";
    if (jstr (d, "identity")[0])
      snprintf (id, sizeof id, "identity %s", jstr (d, "identity"));
    table_row (&t, jstr (d, "device"), size, bs, "served by", who, id, NULL);
  }
  free (done);
  table_print (&t, "  ");

  json_object *errs = jobj (c, "configuration_errors");
  printf ("\nConfiguration errors:%s\n", jlen (errs) ? "" : " none");
  for (size_t i = 0; i < jlen (errs); i++)
    printf ("  %s\n", json_object_get_string (json_object_array_get_idx (errs,
                                                                         i)));
  json_object_put (r);
  return EXIT_OK;
}

enum change { CH_SWITCH, CH_UNPIN, CH_DISABLE, CH_ENABLE };

static int
cmd_change (enum change what, const char *device, const char *path)
{
  static const char *const cmd[] = {
    [CH_SWITCH] = "switch", [CH_UNPIN] = "unpin",
    [CH_DISABLE] = "disable-path", [CH_ENABLE] = "enable-path",
  };
  json_object *r;
  int st = query (cmd[what], device, path, &r);
  if (st || !r)
    return st;
  json_object *u = jobj (r, "device");
  const char *dev = jstr (u, "name")[0] ? jstr (u, "name") : device;
  const char *p = jstr (r, "path")[0] ? jstr (r, "path") : path;
  json_object *a = path_with (u, "active"), *pref = path_with (u, "preferred");
  const char *cur = a ? jstr (a, "name") : "none";
  switch (what) {
  case CH_SWITCH:
    printf ("%s: switched to %s and pinned there; automatic failback will "
            "not undo it ('altpath unpin %s' releases it)\n", dev, p, dev);
    break;
  case CH_UNPIN:
    printf ("%s: unpinned; it may go back to its preferred path (%s) once "
            "that is healthy; current path %s\n", dev,
            pref ? jstr (pref, "name") : "none", cur);
    break;
  case CH_DISABLE:
    printf ("%s: path %s disabled; it stays out of use until 'altpath path "
            "enable %s %s'; current path %s\n", dev, p, dev, p, cur);
    break;
  case CH_ENABLE:
    if (!path_named (u, p))
      printf ("%s: path %s enabled; it is not here now, and joins enabled "
              "when it returns; current path %s\n", dev, p, cur);
    else
      printf ("%s: path %s enabled; it is probed and used again as "
              "preferred; current path %s\n", dev, p, cur);
    break;
  }
  json_object_put (r);
  return EXIT_OK;
}

static int
cmd_rescan (void)
{
  json_object *r;
  int st = query ("rescan", NULL, NULL, &r);
  if (st || !r)
    return st;
  printf ("rescan done: node %s has %" PRId64 " device%s\n",
          jstr (r, "node"), jint (r, "device_count"),
          jint (r, "device_count") == 1 ? "" : "s");
  json_object_put (r);
  return EXIT_OK;
}

static int
cmd_ping (void)
{
  json_object *r;
  int st = query ("ping", NULL, NULL, &r);
  if (st || !r)
    return st;
  printf ("%s on node %s answers on %s\n", jstr (r, "daemon"),
          jstr (r, "node"), opt.socket);
  json_object_put (r);
  return EXIT_OK;
}

/* ------------------------------------------------------------------ watch */

static volatile sig_atomic_t stop_signal;

static void
on_stop (int sig)
{
  stop_signal = sig;
}

static void
print_event (json_object *line)
{
  json_object *e = jobj (line, "event");
  const char *type = jstr (e, "type"), *unit = jstr (e, "device");
  const char *path = jstr (e, "path"), *reason = jstr (e, "reason");
  char t[64], what[1024];
  fmt_time (t, sizeof t, jint (e, "time_unix_ms"), true);
  if (strcmp (type, "switch") == 0)
    snprintf (what, sizeof what, "switched %s -> %s",
              jstr (e, "from_path")[0] ? jstr (e, "from_path") : "(none)",
              path);
  else if (strcmp (type, "device-state") == 0)
    snprintf (what, sizeof what, "state %s -> %s", jstr (e, "old_state"),
              jstr (e, "new_state"));
  else if (strcmp (type, "path-state") == 0)
    snprintf (what, sizeof what, "path %s %s -> %s", path,
              jstr (e, "old_state"), jstr (e, "new_state"));
  else if (strcmp (type, "path-added") == 0)
    snprintf (what, sizeof what, "path %s added", path);
  else if (strcmp (type, "path-removed") == 0)
    snprintf (what, sizeof what, "path %s removed", path);
  else if (strcmp (type, "lost") == 0) {
    printf ("%s  %s\n", t, reason);
    return;
  }
  else
    snprintf (what, sizeof what, "%s%s%s", type, path[0] ? " " : "", path);
  printf ("%s  %s  %s%s%s%s%s%s\n", t, unit, what, reason[0] ? " (" : "",
          reason, reason[0] ? ")" : "", jstr (e, "error")[0] ? " " : "",
          jstr (e, "error"));
}

static int
cmd_watch (void)
{
  /* SIGINT and SIGTERM end the watch with status 0: blocked except while
   * waiting (conn_next's ppoll), so none is lost. */
  sigset_t block, wait_mask;
  sigemptyset (&block);
  sigaddset (&block, SIGINT);
  sigaddset (&block, SIGTERM);
  sigprocmask (SIG_BLOCK, &block, &wait_mask);
  sigdelset (&wait_mask, SIGINT);
  sigdelset (&wait_mask, SIGTERM);
  struct sigaction sa = { .sa_handler = on_stop };
  sigemptyset (&sa.sa_mask);
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);

  struct conn c;
  json_object *r;
  int st = call (&c, "watch", NULL, NULL, &r);
  if (st)
    return st;
  if (opt.json)
    print_json (r);
  else
    fprintf (stderr, "altpath: watching the devices of node %s; Ctrl-C "
             "stops\n", jstr (r, "node"));
  json_object_put (r);
  if (fflush (stdout) == EOF) {
    conn_close (&c);
    return EXIT_OK;             /* whoever read us is gone */
  }

  for (;;) {
    struct cli_error e;
    json_object *ev;
    int n = conn_next (&c, &wait_mask, &stop_signal, &ev, &e);
    if (n == 1)
      break;
    if (n < 0) {
      conn_close (&c);
      return print_error (&e);
    }
    if (opt.json)
      print_json (ev);
    else
      print_event (ev);
    json_object_put (ev);
    if (fflush (stdout) == EOF)
      break;                    /* e.g. piped into head: done */
  }
  conn_close (&c);
  return EXIT_OK;
}

/* ------------------------------------------------------------------- main */

static bool
parse_seconds (const char *s, double *out)
{
  char *end;
  errno = 0;
  double v = strtod (s, &end);
  if (errno || end == s || *end || !(v >= 0.1 && v <= 86400))
    return false;
  *out = v;
  return true;
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "socket", required_argument, NULL, 's' },
    { "json", no_argument, NULL, 'j' },
    { "timeout", required_argument, NULL, 't' },
    { "full", no_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  int c;

  signal (SIGPIPE, SIG_IGN);    /* a closed pipe is EPIPE, not a death */
  opterr = 0;
  while ((c = getopt_long (argc, argv, ":s:jt:fhV", longopts, NULL)) != -1) {
    switch (c) {
    case 's':
      if (!optarg[0])
        return usage_error ("--socket needs a path");
      opt.socket = optarg;
      break;
    case 'j': opt.json = true; break;
    case 't':
      if (!parse_seconds (optarg, &opt.timeout_s))
        return usage_error ("--timeout '%s' is not a number of seconds from "
                            "0.1 to 86400", optarg);
      break;
    case 'f': opt.full = true; break;
    case 'h': usage (stdout); return EXIT_OK;
    case 'V':
      printf ("altpath 0.1 (control protocol %d, libaltpath API %d)\n",
              PROTOCOL_VERSION, AP_API_VERSION);
      return EXIT_OK;
    case ':':
      return usage_error ("option '%s' needs a value", argv[optind - 1]);
    default:
      return usage_error ("unknown option '%s'", argv[optind - 1]);
    }
  }

  char **args = argv + optind;
  int n = argc - optind;
  if (n == 0)
    return usage_error ("no command given");
  const char *cmd = args[0];
  bool show_device = strcmp (cmd, "show") == 0 && n >= 2
    && strcmp (args[1], "device") == 0;
  if (opt.full && !show_device)
    return usage_error ("--full goes with 'show device NAME'");

#define WANT(k, synopsis)                                               \
  do {                                                                  \
    if (n != (k))                                                       \
      return usage_error ("%s: '%s'", n < (k) ? "missing arguments"     \
                          : "too many arguments", synopsis);            \
  } while (0)

  if (strcmp (cmd, "help") == 0) {
    usage (stdout);
    return EXIT_OK;
  }
  if (strcmp (cmd, "show") == 0) {
    if (n < 2)
      return usage_error ("show what? 'show devices', 'show device NAME' or "
                          "'show cluster'");
    if (strcmp (args[1], "devices") == 0) {
      WANT (2, "altpath show devices");
      return cmd_show_devices ();
    }
    if (strcmp (args[1], "device") == 0) {
      WANT (3, "altpath show device NAME [--full]");
      return cmd_show_device (args[2]);
    }
    if (strcmp (args[1], "cluster") == 0) {
      WANT (2, "altpath show cluster");
      return cmd_show_cluster ();
    }
    return usage_error ("cannot show '%s'; 'show devices', 'show device "
                        "NAME' or 'show cluster'", args[1]);
  }
  if (strcmp (cmd, "switch") == 0) {
    WANT (3, "altpath switch NAME PATH");
    return cmd_change (CH_SWITCH, args[1], args[2]);
  }
  if (strcmp (cmd, "unpin") == 0) {
    WANT (2, "altpath unpin NAME");
    return cmd_change (CH_UNPIN, args[1], NULL);
  }
  if (strcmp (cmd, "path") == 0) {
    if (n >= 2 && strcmp (args[1], "disable") == 0) {
      WANT (4, "altpath path disable NAME PATH");
      return cmd_change (CH_DISABLE, args[2], args[3]);
    }
    if (n >= 2 && strcmp (args[1], "enable") == 0) {
      WANT (4, "altpath path enable NAME PATH");
      return cmd_change (CH_ENABLE, args[2], args[3]);
    }
    return usage_error ("'path disable NAME PATH' or 'path enable NAME "
                        "PATH'");
  }
  if (strcmp (cmd, "rescan") == 0) {
    WANT (1, "altpath rescan");
    return cmd_rescan ();
  }
  if (strcmp (cmd, "watch") == 0) {
    WANT (1, "altpath watch");
    return cmd_watch ();
  }
  if (strcmp (cmd, "ping") == 0) {
    WANT (1, "altpath ping");
    return cmd_ping ();
  }
  return usage_error ("unknown command '%s'", cmd);
}
