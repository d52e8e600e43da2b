/* test-control.c — the control socket (daemon/control.c) in-process: its
 * request parser (every kind of refusal, with its code), and the server
 * over a real unit with two paths: every command, case-insensitive names,
 * unknown device and path named in the error, manual choices that stick
 * (a pinned path survives failback, a disabled path stays disabled),
 * watchers that see the events of a switch, a watcher that reads too
 * slowly (told what it lost, the unit never waits), garbage and over-long
 * lines (an error, then closed), the read and idle timeouts, the cap on
 * clients, and a stop with clients connected.
 *
 * control.c and exports.c are compiled into this program (included
 * below), as tests/test-config.c does with config.c; the limits are made
 * small first so that the timeouts and caps are reached quickly.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define CONTROL_MAX_CLIENTS 4
#define READ_TIMEOUT_MS 300
#define IDLE_TIMEOUT_MS 1500
#define WRITE_TIMEOUT_MS 30000
#define WATCH_QUEUE_MAX 16

#include "../daemon/exports.c"
#include "../daemon/control.c"
#include "../daemon/accept-trouble.c"

/* --------------------------------------------------------------- parser */

static int
parse (const char *s, struct ctl_request *rq, const char **code, char *err,
       size_t errlen)
{
  return ctl_parse_request (s, strlen (s), rq, code, err, errlen);
}

static void
test_parse_ok (void **state)
{
  struct ctl_request rq;
  const char *code;
  char err[512];

  assert_int_equal (parse ("{\"version\":1,\"cmd\":\"list\"}", &rq, &code,
                           err, sizeof err), 0);
  assert_int_equal (rq.cmd, CTL_LIST);
  assert_int_equal (rq.version, 1);
  assert_null (code);

  assert_int_equal (parse (" { \"cmd\" : \"switch\" , \"path\":\"served:BETA\","
                           "\"device\":\"$4$DKB100\", \"version\" : 1 }\r\n ",
                           &rq, &code, err, sizeof err), 0);
  assert_int_equal (rq.cmd, CTL_SWITCH);
  assert_string_equal (rq.device, "$4$DKB100");
  assert_string_equal (rq.path, "served:BETA");

  /* Escapes: \u0024 is '$', a surrogate pair is one 4-byte character. */
  assert_int_equal (parse ("{\"version\":1,\"cmd\":\"show\",\"device\":"
                           "\"\\u0024\\u0034\\u0024DKB\\/1\\t\\ud83d\\ude00\"}",
                           &rq, &code, err, sizeof err), 0);
  assert_string_equal (rq.device, "$4$DKB/1\t\xF0\x9F\x98\x80");

  /* Every command by name. */
  static const char *const ok[] = {
    "{\"version\":1,\"cmd\":\"ping\"}",
    "{\"version\":1,\"cmd\":\"cluster\"}",
    "{\"version\":1,\"cmd\":\"unpin\",\"device\":\"x\"}",
    "{\"version\":1,\"cmd\":\"disable-path\",\"device\":\"x\",\"path\":\"p\"}",
    "{\"version\":1,\"cmd\":\"enable-path\",\"device\":\"x\",\"path\":\"p\"}",
    "{\"version\":1,\"cmd\":\"rescan\"}",
    "{\"version\":1,\"cmd\":\"watch\"}",
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
    assert_int_equal (parse (ok[i], &rq, &code, err, sizeof err), 0);
}

static void
test_parse_refused (void **state)
{
  static const struct {
    const char *line;
    const char *code;
    const char *in_message;     /* a part of the message */
  } cases[] = {
    { "", "EPROTO", "empty request" },
    { "garbage", "EPROTO", "does not start with '{'" },
    { "[1,2]", "EPROTO", "does not start with '{'" },
    { "{\"version\":1,\"cmd\":\"list\"", "EPROTO", "not closed" },
    { "{\"version\":1,\"cmd\":\"list\"} {}", "EPROTO", "more text" },
    { "{\"version\":1,\"cmd\":\"list\",}", "EPROTO", "not a string" },
    { "{\"version\":1 \"cmd\":\"list\"}", "EPROTO", "neither ',' nor '}'" },
    { "{\"version\":1,\"cmd\":{\"a\":1}}", "EPROTO", "holds an object" },
    { "{\"version\":1,\"cmd\":[\"list\"]}", "EPROTO", "holds an array" },
    { "{\"version\":1,\"cmd\":\"li\nst\"}", "EPROTO", "control character" },
    { "{\"version\":1,\"cmd\":\"\\x\"}", "EPROTO", "unknown escape" },
    { "{\"version\":1,\"cmd\":\"\\ud800\"}", "EPROTO", "high surrogate" },
    { "{\"version\":1,\"cmd\":\"\\udc00\"}", "EPROTO", "low surrogate" },
    { "{\"version\":1,\"cmd\":\"\\u12\"}", "EPROTO", "hexadecimal" },
    { "{\"version\":1,\"cmd\":\"\xC0\xAF\"}", "EPROTO", "UTF-8" },
    { "{\"version\":1,\"cmd\":\"\xED\xA0\x80\"}", "EPROTO", "UTF-8" },
    { "{\"version\":01,\"cmd\":\"list\"}", "EPROTO", "leading zero" },
    { "{\"version\":1.,\"cmd\":\"list\"}", "EPROTO", "'.'" },
    { "{\"version\":tru,\"cmd\":\"list\"}", "EPROTO", "where a value" },
    { "{\"cmd\":\"list\"}", "EPROTO", "no 'version'" },
    { "{\"version\":\"1\",\"cmd\":\"list\"}", "EPROTO", "not a string" },
    { "{\"version\":1.0,\"cmd\":\"list\"}", "EPROTO", "whole number" },
    { "{\"version\":-1,\"cmd\":\"list\"}", "EPROTO", "whole number" },
    { "{\"version\":2,\"cmd\":\"list\"}", "EPROTONOSUPPORT", "version 2" },
    { "{\"version\":99999999999,\"cmd\":\"list\"}", "EPROTO", "whole" },
    { "{\"version\":1}", "EINVAL", "no 'cmd'" },
    { "{\"version\":1,\"cmd\":\"format-disk\"}", "EINVAL",
      "unknown command 'format-disk'" },
    { "{\"version\":1,\"cmd\":1}", "EINVAL", "'cmd' must be a string" },
    { "{\"version\":1,\"cmd\":\"list\",\"devcie\":\"x\"}", "EINVAL",
      "unknown field 'devcie'" },
    { "{\"version\":1,\"cmd\":\"list\",\"cmd\":\"list\"}", "EINVAL",
      "given twice" },
    { "{\"version\":1,\"cmd\":\"show\"}", "EINVAL", "needs the field 'device'" },
    { "{\"version\":1,\"cmd\":\"switch\",\"device\":\"x\"}", "EINVAL",
      "needs the field 'path'" },
    { "{\"version\":1,\"cmd\":\"unpin\",\"device\":\"x\",\"path\":\"p\"}",
      "EINVAL", "takes no field 'path'" },
    { "{\"version\":1,\"cmd\":\"show\",\"device\":\"\"}", "EINVAL", "empty" },
    { "{\"version\":1,\"cmd\":\"show\",\"device\":null}", "EINVAL",
      "not null" },
    { "{\"version\":1,\"cmd\":\"show\",\"device\":\"a\\u0000b\"}", "EINVAL",
      "NUL" },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct ctl_request rq;
    const char *code = NULL;
    char err[512];
    int r = parse (cases[i].line, &rq, &code, err, sizeof err);
    if (r != -1 || !code || strcmp (code, cases[i].code) != 0
        || !strstr (err, cases[i].in_message))
      fail_msg ("'%s': r=%d code=%s message '%s' (wanted %s, '%s')",
                cases[i].line, r, code ? code : "(null)", err, cases[i].code,
                cases[i].in_message);
  }

  /* A raw NUL byte inside the line. */
  struct ctl_request rq;
  const char *code;
  char err[512];
  static const char nul[] = "{\"version\":1,\"cmd\":\"li\0st\"}";
  assert_int_equal (ctl_parse_request (nul, sizeof nul - 1, &rq, &code, err,
                                       sizeof err), -1);
  assert_string_equal (code, "EPROTO");

  /* A name that cannot fit is refused, not cut. */
  char line[1024];
  char longname[300];
  memset (longname, 'A', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  snprintf (line, sizeof line, "{\"version\":1,\"cmd\":\"show\",\"device\":"
            "\"%s\"}", longname);
  assert_int_equal (parse (line, &rq, &code, err, sizeof err), -1);
  assert_string_equal (code, "EINVAL");
  assert_non_null (strstr (err, "longer than 127 bytes"));
  assert_string_equal (rq.device, "");
}

/* --------------------------------------------------------------- server */

#define IMG_SIZE (8u << 20)
#define DEV "$4$DKB100"

static char dir[] = "/dev/shm/altpath-test-control.XXXXXX";
static char sock[100];

static struct {
  struct export *ex;
  struct control *ctl;
  atomic_int rescans;
} fx;

static size_t
view_units (void *opaque, struct export ***out)
{
  struct export **v = calloc (1, sizeof *v);
  if (!v) {
    *out = NULL;
    return 0;
  }
  v[0] = export_get (fx.ex);
  *out = v;
  return 1;
}

static char *
view_cluster (void *opaque)
{
  return NULL;                  /* not in a cluster */
}

static void
view_rescan (void *opaque)
{
  atomic_fetch_add (&fx.rescans, 1);
}

static struct ap_path *
open_path (const char *file, const char *name)
{
  struct ap_direct_options o = { .name = name };
  struct ap_path *p = ap_path_open_direct (file, &o);
  if (!p)
    fail_msg ("cannot open %s: %s", file, ap_get_error ());
  return p;
}

static int
setup_server (void **state)
{
  char img[512];
  if (!mkdtemp (dir))
    return -1;
  snprintf (img, sizeof img, "%s/disk100.img", dir);
  int fd = open (img, O_CREAT | O_RDWR, 0600);
  if (fd < 0 || ftruncate (fd, IMG_SIZE) < 0)
    return -1;
  close (fd);

  struct ap_unit_options o;
  ap_unit_options_init (&o);
  o.name = DEV;
  o.request_timeout_ms = 500;
  o.verify_timeout_ms = 2000;
  o.checker_interval_ms = 30;
  o.failback_ms = 100;
  struct ap_path *direct = open_path (img, "direct");
  struct ap_unit *u = ap_unit_create (&o, &direct, 1);
  if (!u)
    return -1;
  /* The second path is less preferred: failback goes to "direct". */
  if (ap_unit_add_path (u, open_path (img, "served:BETA"), -1) < 0)
    return -1;
  fx.ex = export_wrap (DEV, "test unit", u);

  snprintf (sock, sizeof sock, "%.60s/sub/control.sock", dir);
  struct control_view view = {
    .node = "ALPHA", .daemon_version = "altpathd test",
    .units = view_units, .cluster_json = view_cluster,
    .rescan = view_rescan,
  };
  char err[1024];
  fx.ctl = control_start (sock, NULL, &view, err, sizeof err);
  if (!fx.ctl) {
    fprintf (stderr, "control_start: %s\n", err);
    return -1;
  }
  ap_unit_set_event_cb (u, control_event, fx.ctl);
  /* Both paths probed healthy before the tests start. */
  for (int i = 0; i < 200; i++) {
    struct ap_unit_status st;
    ap_unit_get_status (u, &st);
    if (st.npaths == 2 && st.paths[1].state == AP_PATH_STANDBY)
      break;
    usleep (10000);
  }
  return 0;
}

static int
teardown_server (void **state)
{
  control_stop (fx.ctl);
  export_put (fx.ex);           /* closes the unit: no more events */
  control_free (fx.ctl);
  char cmd[600];
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system (cmd) == 0 ? 0 : -1;
}

/* A connection to the test's socket. */
static int
connect_sock (void)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  snprintf (sa.sun_path, sizeof sa.sun_path, "%s", sock);
  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true (fd >= 0);
  assert_int_equal (connect (fd, (struct sockaddr *) &sa, sizeof sa), 0);
  struct timeval tv = { .tv_sec = 10 };
  setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

static void
send_str (int fd, const char *s)
{
  size_t n = strlen (s);
  while (n) {
    ssize_t w = send (fd, s, n, MSG_NOSIGNAL);
    assert_true (w > 0);
    s += w;
    n -= (size_t) w;
  }
}

/* What was read from each fd past the last line returned. */
static struct {
  char buf[256 * 1024];
  size_t len;
} rbuf[256];

/* One line from fd as JSON (NULL at the end of the stream). */
static json_object *
read_msg (int fd)
{
  assert_true (fd >= 0 && fd < 256);
  char *b = rbuf[fd].buf, *nl;
  while (!(nl = memchr (b, '\n', rbuf[fd].len))) {
    assert_true (rbuf[fd].len < sizeof rbuf[fd].buf);
    ssize_t r = read (fd, b + rbuf[fd].len, sizeof rbuf[fd].buf
                      - rbuf[fd].len);
    if (r <= 0)
      return NULL;
    rbuf[fd].len += (size_t) r;
  }
  *nl = '\0';
  json_object *o = json_tokener_parse (b);
  if (!o)
    fail_msg ("not JSON: '%s'", b);
  size_t used = (size_t) (nl + 1 - b);
  memmove (b, nl + 1, rbuf[fd].len - used);
  rbuf[fd].len -= used;
  return o;
}

static void
close_fd (int fd)
{
  if (fd >= 0 && fd < 256)
    rbuf[fd].len = 0;
  close (fd);
}

static bool
at_eof (int fd)
{
  if (fd >= 0 && fd < 256 && rbuf[fd].len)
    return false;
  char c;
  ssize_t r = read (fd, &c, 1);
  return r == 0 || (r < 0 && errno == ECONNRESET);
}

/* Send one request, return the reply. */
static json_object *
ask (int fd, const char *cmd, const char *device, const char *path)
{
  char line[1024];
  int n = snprintf (line, sizeof line, "{\"version\":1,\"cmd\":\"%s\"", cmd);
  if (device)
    n += snprintf (line + n, sizeof line - (size_t) n, ",\"device\":\"%s\"",
                   device);
  if (path)
    n += snprintf (line + n, sizeof line - (size_t) n, ",\"path\":\"%s\"",
                   path);
  snprintf (line + n, sizeof line - (size_t) n, "}\n");
  send_str (fd, line);
  json_object *r = read_msg (fd);
  assert_non_null (r);
  return r;
}

static const char *
js (json_object *o, const char *key)
{
  json_object *v;
  return json_object_object_get_ex (o, key, &v) ? json_object_get_string (v)
    : NULL;
}

static bool
jok (json_object *o)
{
  json_object *v;
  return json_object_object_get_ex (o, "ok", &v)
    && json_object_get_boolean (v);
}

/* The unit's state by the library: active path name, pinned. */
static void
unit_now (char *active, size_t n, bool *pinned, char *direct_state,
          size_t dn)
{
  struct ap_unit_status st;
  ap_unit_get_status (fx.ex->unit, &st);
  snprintf (active, n, "-");
  *pinned = false;
  for (unsigned i = 0; i < st.npaths; i++) {
    if (st.paths[i].active) {
      snprintf (active, n, "%s", st.paths[i].name);
      *pinned = st.paths[i].pinned;
    }
    if (strcmp (st.paths[i].name, "direct") == 0 && direct_state)
      snprintf (direct_state, dn, "%s",
                ap_path_state_name (st.paths[i].state));
  }
}

static bool
wait_active (const char *want, int ms)
{
  char a[AP_NAME_MAX];
  bool pinned;
  for (int i = 0; i < ms / 10; i++) {
    unit_now (a, sizeof a, &pinned, NULL, 0);
    if (strcmp (a, want) == 0)
      return true;
    usleep (10000);
  }
  return false;
}

static void
test_socket_mode (void **state)
{
  struct stat st;
  assert_int_equal (stat (sock, &st), 0);
  assert_true (S_ISSOCK (st.st_mode));
  assert_int_equal (st.st_mode & 0777, 0660);
}

static void
test_ping_list_show (void **state)
{
  int fd = connect_sock ();
  json_object *r = ask (fd, "ping", NULL, NULL);
  assert_true (jok (r));
  assert_string_equal (js (r, "node"), "ALPHA");
  assert_string_equal (js (r, "version"), "1");
  json_object_put (r);

  r = ask (fd, "list", NULL, NULL);
  assert_true (jok (r));
  json_object *units;
  assert_true (json_object_object_get_ex (r, "devices", &units));
  assert_int_equal (json_object_array_length (units), 1);
  assert_string_equal (js (json_object_array_get_idx (units, 0), "name"), DEV);
  json_object_put (r);

  /* Names ignore case, as OpenVMS's do. */
  r = ask (fd, "show", "$4$dkb100", NULL);
  assert_true (jok (r));
  json_object *u;
  assert_true (json_object_object_get_ex (r, "device", &u));
  assert_string_equal (js (u, "name"), DEV);
  json_object_put (r);

  r = ask (fd, "cluster", NULL, NULL);
  assert_true (jok (r));
  assert_string_equal (js (r, "in_cluster"), "false");
  json_object_put (r);

  r = ask (fd, "rescan", NULL, NULL);
  assert_true (jok (r));
  assert_int_equal (atomic_load (&fx.rescans), 1);
  json_object_put (r);
  close_fd (fd);
}

static void
test_unknown_names (void **state)
{
  int fd = connect_sock ();
  json_object *r = ask (fd, "show", "$4$DKB999", NULL);
  assert_false (jok (r));
  assert_string_equal (js (r, "code"), "ENOENT");
  assert_non_null (strstr (js (r, "error"), "'$4$DKB999'"));
  assert_non_null (strstr (js (r, "error"), DEV));     /* what there is */
  json_object_put (r);

  r = ask (fd, "switch", DEV, "served:GAMMA");
  assert_false (jok (r));
  assert_string_equal (js (r, "code"), "ENOENT");
  assert_non_null (strstr (js (r, "error"), "'served:GAMMA'"));
  assert_non_null (strstr (js (r, "error"), "direct and served:BETA"));
  json_object_put (r);

  /* The connection stays usable after a refused command. */
  r = ask (fd, "ping", NULL, NULL);
  assert_true (jok (r));
  json_object_put (r);
  close_fd (fd);
}

/* The first event of type t on fd (within a few seconds), or NULL. */
static json_object *
wait_event (int fd, const char *type, const char *path)
{
  for (;;) {
    json_object *m = read_msg (fd);
    if (!m)
      return NULL;
    json_object *e;
    if (json_object_object_get_ex (m, "event", &e)
        && strcmp (js (e, "type"), type) == 0
        && (!path || strcmp (js (e, "path"), path) == 0))
      return m;
    json_object_put (m);
  }
}

static void
test_switch_sticks_and_watch (void **state)
{
  char a[AP_NAME_MAX], ds[32];
  bool pinned;
  assert_true (wait_active ("direct", 2000));

  int w = connect_sock ();
  json_object *r = ask (w, "watch", NULL, NULL);
  assert_true (jok (r));
  assert_string_equal (js (r, "watching"), "true");
  json_object_put (r);

  int fd = connect_sock ();
  r = ask (fd, "switch", DEV, "SERVED:beta");   /* case ignored */
  assert_true (jok (r));
  assert_string_equal (js (r, "path"), "served:BETA");
  json_object_put (r);

  /* The watcher saw the switch, with both paths named. */
  json_object *m = wait_event (w, "switch", NULL);
  assert_non_null (m);
  json_object *e;
  json_object_object_get_ex (m, "event", &e);
  assert_string_equal (js (e, "device"), DEV);
  assert_string_equal (js (e, "path"), "served:BETA");
  assert_string_equal (js (e, "from_path"), "direct");
  assert_true (json_object_get_int64 (json_object_object_get (e,
                                                              "time_unix_ms"))
               > 1600000000000);
  json_object_put (m);

  /* Pinned: many failback intervals later it is still there. */
  usleep (800000);
  unit_now (a, sizeof a, &pinned, NULL, 0);
  assert_string_equal (a, "served:BETA");
  assert_true (pinned);

  r = ask (fd, "unpin", DEV, NULL);
  assert_true (jok (r));
  json_object_put (r);
  assert_true (wait_active ("direct", 3000));

  /* Disabled: the unit leaves it and never comes back on its own. */
  r = ask (fd, "disable-path", DEV, "direct");
  assert_true (jok (r));
  json_object_put (r);
  usleep (800000);
  unit_now (a, sizeof a, &pinned, ds, sizeof ds);
  assert_string_equal (a, "served:BETA");
  assert_string_equal (ds, "disabled");

  /* The last usable path cannot be disabled; the library says why. */
  r = ask (fd, "disable-path", DEV, "served:BETA");
  assert_false (jok (r));
  assert_string_equal (js (r, "code"), "EBUSY");
  assert_non_null (strstr (js (r, "error"), "last usable path"));
  json_object_put (r);

  r = ask (fd, "enable-path", DEV, "direct");
  assert_true (jok (r));
  json_object_put (r);
  assert_true (wait_active ("direct", 3000));

  m = wait_event (w, "path-state", "direct");
  assert_non_null (m);
  json_object_put (m);
  close_fd (fd);
  close_fd (w);
}

static void
test_garbage_and_long_lines (void **state)
{
  int fd = connect_sock ();
  send_str (fd, "hello there\n");
  json_object *r = read_msg (fd);
  assert_non_null (r);
  assert_false (jok (r));
  assert_string_equal (js (r, "code"), "EPROTO");
  assert_string_equal (js (r, "version"), "1");
  json_object_put (r);
  assert_true (at_eof (fd));
  close_fd (fd);

  /* A line longer than the cap, no newline in sight. */
  fd = connect_sock ();
  size_t n = CTL_LINE_MAX + 4096;
  char *big = malloc (n + 1);
  memset (big, 'x', n);
  big[n] = '\0';
  big[0] = '{';
  ssize_t w = send (fd, big, n, MSG_NOSIGNAL);  /* some of it, at least */
  assert_true (w > 0);
  free (big);
  r = read_msg (fd);
  assert_non_null (r);
  assert_string_equal (js (r, "code"), "EMSGSIZE");
  json_object_put (r);
  close_fd (fd);

  /* Blank lines are no requests; the one after them is answered. */
  fd = connect_sock ();
  r = ask (fd, "ping", NULL, NULL);
  json_object_put (r);
  send_str (fd, "\n  \r\n{\"version\":1,\"cmd\":\"ping\"}\r\n");
  r = read_msg (fd);
  assert_true (jok (r));
  json_object_put (r);
  close_fd (fd);
}

static void
test_timeouts (void **state)
{
  /* Half a line, then silence: an error after READ_TIMEOUT_MS. */
  int fd = connect_sock ();
  send_str (fd, "{\"version\":1,");
  json_object *r = read_msg (fd);
  assert_non_null (r);
  assert_string_equal (js (r, "code"), "ETIMEDOUT");
  json_object_put (r);
  assert_true (at_eof (fd));
  close_fd (fd);

  /* Silence from the start: closed after IDLE_TIMEOUT_MS. */
  fd = connect_sock ();
  struct timespec t0, t1;
  clock_gettime (CLOCK_MONOTONIC, &t0);
  assert_true (at_eof (fd));
  clock_gettime (CLOCK_MONOTONIC, &t1);
  double s = (double) (t1.tv_sec - t0.tv_sec)
    + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9;
  assert_true (s >= IDLE_TIMEOUT_MS / 1000.0 * 0.9 && s < 5);
  close_fd (fd);
}

static void
test_client_cap (void **state)
{
  int fds[CONTROL_MAX_CLIENTS];
  /* Let the acceptor join the clients of the tests before. */
  usleep (1200000);
  for (int i = 0; i < CONTROL_MAX_CLIENTS; i++) {
    fds[i] = connect_sock ();
    json_object *r = ask (fds[i], "ping", NULL, NULL);
    assert_true (jok (r));
    json_object_put (r);
  }
  int extra = connect_sock ();
  json_object *r = read_msg (extra);
  assert_non_null (r);
  assert_string_equal (js (r, "code"), "EBUSY");
  json_object_put (r);
  close_fd (extra);
  for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
    close_fd (fds[i]);
  /* Slots come back once the threads are joined. */
  int ok = 0;
  for (int k = 0; k < 40 && !ok; k++) {
    usleep (100000);
    int fd = connect_sock ();
    send_str (fd, "{\"version\":1,\"cmd\":\"ping\"}\n");
    r = read_msg (fd);
    ok = r && jok (r);
    json_object_put (r);
    close_fd (fd);
  }
  assert_true (ok);
}

static void
test_slow_watcher (void **state)
{
  usleep (1200000);             /* free slots */
  int w = connect_sock ();
  json_object *r = ask (w, "watch", NULL, NULL);
  assert_true (jok (r));
  json_object_put (r);

  /* Many events while the watcher does not read: far more than the
   * socket buffer and the queue hold.  The unit's side never waits. */
  const int n = 6000;            /* ~1.6 MB of lines */
  struct ap_event ev = { .type = AP_EVENT_PATH_STATE, .unit = DEV,
                         .path = "direct", .from_path = "",
                         .old_state = AP_PATH_STANDBY,
                         .new_state = AP_PATH_FAILED,
                         .reason = "a made-up event of the test, long "
                         "enough to fill the socket buffer soon", .err = -EIO };
  struct timespec t0, t1;
  clock_gettime (CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < n; i++) {
    clock_gettime (CLOCK_MONOTONIC, &t1);
    ev.mono_ns = (uint64_t) t1.tv_sec * 1000000000u + (uint64_t) t1.tv_nsec;
    control_event (fx.ctl, &ev);
  }
  clock_gettime (CLOCK_MONOTONIC, &t1);
  /* Had it waited for the watcher, which reads nothing until the loop
   * is over, it would never have finished; under valgrind it is slow. */
  double s = (double) (t1.tv_sec - t0.tv_sec)
    + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9;
  assert_true (s < 60.0);

  /* Now read: events, a "lost" line saying how many were dropped, and
   * together they account for all. */
  long got = 0, lost = 0;
  bool saw_eio = false;
  struct timeval tv = { .tv_sec = 1 };
  setsockopt (w, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  while (got + lost < n) {
    json_object *m = read_msg (w);
    if (!m)
      break;
    json_object *e = json_object_object_get (m, "event");
    if (strcmp (js (e, "type"), "lost") == 0)
      lost += json_object_get_int64 (json_object_object_get (e, "count"));
    else {
      got++;
      saw_eio = saw_eio || strcmp (js (e, "error"), "EIO") == 0;
    }
    json_object_put (m);
  }
  assert_true (lost > 0);
  assert_true (saw_eio);
  assert_int_equal (got + lost, n);
  close_fd (w);
}

static void
test_stop_with_clients (void **state)
{
  usleep (1200000);
  int w = connect_sock ();
  json_object *r = ask (w, "watch", NULL, NULL);
  json_object_put (r);
  int idle = connect_sock ();
  struct timespec t0, t1;
  clock_gettime (CLOCK_MONOTONIC, &t0);
  control_stop (fx.ctl);
  clock_gettime (CLOCK_MONOTONIC, &t1);
  assert_true (t1.tv_sec - t0.tv_sec < 3);
  assert_true (at_eof (w));
  assert_true (at_eof (idle));
  close_fd (w);
  close_fd (idle);
  /* The socket is gone: a new client hears "not running" at once. */
  struct stat st;
  assert_int_equal (stat (sock, &st), -1);
  /* Events after the stop are dropped quietly. */
  struct ap_event ev = { .type = AP_EVENT_SWITCH, .unit = DEV,
                         .path = "direct", .from_path = "x", .reason = "" };
  control_event (fx.ctl, &ev);
}

int
main (void)
{
  ap_log_quiet = true;
  const struct CMUnitTest parser[] = {
    cmocka_unit_test (test_parse_ok),
    cmocka_unit_test (test_parse_refused),
  };
  const struct CMUnitTest server[] = {
    cmocka_unit_test (test_socket_mode),
    cmocka_unit_test (test_ping_list_show),
    cmocka_unit_test (test_unknown_names),
    cmocka_unit_test (test_switch_sticks_and_watch),
    cmocka_unit_test (test_garbage_and_long_lines),
    cmocka_unit_test (test_timeouts),
    cmocka_unit_test (test_client_cap),
    cmocka_unit_test (test_slow_watcher),
    cmocka_unit_test (test_stop_with_clients),
  };
  int r = cmocka_run_group_tests_name ("parser", parser, NULL, NULL);
  return r | cmocka_run_group_tests_name ("server", server, setup_server,
                                          teardown_server);
}
