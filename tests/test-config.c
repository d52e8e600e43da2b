/* test-config.c — altpathd's configuration parser (daemon/config.c): the
 * format, the device names of DESIGN.md "Naming", TLS defaults, every
 * kind of error with its file, line and key, and glob rescans.
 *
 * config.c is compiled into this program (included below): the daemon is
 * not a library, and this way the test needs no special link rule.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "../daemon/config.c"

static char dir[] = "/tmp/altpath-test-config.XXXXXX";

/* Write FILE in the test directory; returns its path (static buffer). */
static const char *
write_file (const char *name, const char *text)
{
  static char path[PATH_MAX];
  snprintf (path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen (path, "w");
  assert_non_null (f);
  fputs (text, f);
  assert_int_equal (fclose (f), 0);
  return path;
}

static void
make_image (const char *name)
{
  char path[PATH_MAX];
  snprintf (path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen (path, "w");
  assert_non_null (f);
  assert_int_equal (ftruncate (fileno (f), 1 << 20), 0);
  fclose (f);
}

static int
setup (void **state)
{
  if (!mkdtemp (dir))
    return -1;
  char sub[PATH_MAX];
  snprintf (sub, sizeof sub, "%s/shared", dir);
  mkdir (sub, 0755);
  return 0;
}

static int
teardown (void **state)
{
  char cmd[PATH_MAX + 16];
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system (cmd) == 0 ? 0 : -1;
}

static const struct config_disk *
find_disk (const struct config *cfg, const char *device)
{
  for (size_t i = 0; i < cfg->ndisks; i++)
    if (strcmp (cfg->disks[i].device, device) == 0)
      return &cfg->disks[i];
  return NULL;
}

/* ------------------------------------------------------------ good */

static void
test_good (void **state)
{
  struct config cfg;
  char err[2048];
  make_image ("a0.img");
  make_image ("b100.img");
  write_file ("keys.psk", "alice:0123456789abcdef\n");
  const char *f = write_file ("good.conf",
    "; comment\n"
    "# another\n"
    "[node]\n"
    "name = alpha_1\n"
    "\n"
    "[listen]\n"
    "address = 127.0.0.1:10809\n"
    "[listen]\n"
    "  address = 0.0.0.0\n"                  /* indented: fine */
    "[listen]\n"
    "address = unix:nbd.sock ; inline comment\n"
    "[listen]\n"
    "address = [::1]:10810\n"
    "tls = on\n"
    "[TLS]\n"
    "psk_file = keys.psk\n"                  /* '_' for '-', relative */
    "allow = alice, bob carol\n"
    "priority = NORMAL:%SERVER_PRECEDENCE:-VERS-TLS1.2\n"
    "[units]\n"
    "request-timeout-ms = 1500\n"
    "[port b]\n"
    "alloclass = 4\n"
    "read-only = yes\n"
    "allow = alice\n"
    "100 = b100.img, read-write, identity=WWN-100\n"
    "101 = \"/srv/with,comma.img\", allow=bob\n"
    "[port A]\n"
    "0 = a0.img\n");

  assert_int_equal (config_load (f, &cfg, err, sizeof err), 0);
  assert_string_equal (err, "");
  assert_string_equal (cfg.node, "ALPHA_1");
  assert_int_equal (cfg.node_alloclass, 0);
  assert_int_equal (cfg.nlisten, 4);
  assert_false (cfg.listen[0].is_unix);
  assert_string_equal (cfg.listen[0].host, "127.0.0.1");
  assert_string_equal (cfg.listen[0].port, "10809");
  assert_int_equal (cfg.listen[0].tls, TLS_OFF);        /* loopback */
  assert_false (cfg.listen[0].tls_explicit);
  assert_string_equal (cfg.listen[1].host, "0.0.0.0");
  assert_string_equal (cfg.listen[1].port, "10809");    /* default port */
  assert_int_equal (cfg.listen[1].tls, TLS_REQUIRE);    /* not loopback */
  assert_true (cfg.listen[2].is_unix);
  char want[PATH_MAX + 32];
  snprintf (want, sizeof want, "%s/nbd.sock", dir);
  assert_string_equal (cfg.listen[2].path, want);
  assert_int_equal (cfg.listen[2].tls, TLS_OFF);
  assert_string_equal (cfg.listen[3].host, "::1");
  assert_string_equal (cfg.listen[3].port, "10810");
  assert_int_equal (cfg.listen[3].tls, TLS_ON);
  assert_true (cfg.listen[3].tls_explicit);
  snprintf (want, sizeof want, "%s/keys.psk", dir);
  assert_string_equal (cfg.tls_psk_file, want);
  assert_string_equal (cfg.tls_priority, "NORMAL:%SERVER_PRECEDENCE:-VERS-TLS1.2");
  assert_int_equal (cfg.nallow, 3);
  assert_string_equal (cfg.allow[2], "carol");
  assert_int_equal (cfg.request_timeout_ms, 1500);
  assert_int_equal (cfg.verify_timeout_ms, DEFAULT_VERIFY_TIMEOUT_MS);
  assert_int_equal (cfg.ndisks, 3);

  const struct config_disk *d = find_disk (&cfg, "$4$DKB100");
  assert_non_null (d);
  assert_false (d->read_only);          /* read-write beats the port */
  assert_string_equal (d->identity, "WWN-100");
  assert_int_equal (d->nallow, 1);      /* the port's list */
  assert_string_equal (d->allow[0], "alice");
  assert_int_equal (d->line, 25);
  d = find_disk (&cfg, "$4$DKB101");
  assert_non_null (d);
  assert_true (d->read_only);           /* the port's default */
  assert_string_equal (d->file, "/srv/with,comma.img");
  assert_int_equal (d->nallow, 1);
  assert_string_equal (d->allow[0], "bob");
  d = find_disk (&cfg, "ALPHA_1$DKA0");  /* no port allocation class */
  assert_non_null (d);
  assert_int_equal (d->nallow, 3);      /* the node's list */
  assert_false (d->read_only);
  config_free (&cfg);
  config_free (&cfg);                   /* twice: harmless */
}

static void
test_node_alloclass (void **state)
{
  struct config cfg;
  char err[2048];
  const char *f = write_file ("nodeclass.conf",
    "[node]\nname = BETA\nalloclass = 7\nnbd-buffer-mib = 48\n"
    "[listen]\naddress = unix:/tmp/x.sock\n"
    "[port A]\n100 = /dev/null\n"
    "[port B]\nalloclass = 4\n100 = /dev/zero\n");
  assert_int_equal (config_load (f, &cfg, err, sizeof err), 0);
  /* OpenVMS: a node allocation class names the node's own ports, a port
   * allocation class wins over it. */
  assert_non_null (find_disk (&cfg, "$7$DKA100"));
  assert_non_null (find_disk (&cfg, "$4$DKB100"));
  assert_int_equal (cfg.nbd_buffer_mib, 48);
  config_free (&cfg);
}

/* ------------------------------------------------------------ errors */

struct bad {
  const char *text;
  const char *where;            /* expected "line N, key 'K'" or so */
  const char *what;             /* a fragment of the explanation */
};

#define NODE "[node]\nname = A\n"
#define LISTEN "[listen]\naddress = 127.0.0.1:10809\n"

static const struct bad bad_configs[] = {
  { NODE LISTEN "[bogus]\nx = 1\n", "line 5, section [bogus]",
    "unknown section" },
  { NODE LISTEN "[port 1]\n", "line 5, section [port 1]", "one port letter" },
  { NODE LISTEN "[port AB]\n", "line 5, section [port AB]",
    "one port letter" },
  { NODE LISTEN "[port B\n", "line 5", "without its ']'" },
  { NODE LISTEN "[port B]\n[port b]\n", "line 6, section [port B]",
    "already described at line 5" },
  { NODE LISTEN "[node]\n", "line 5, section [node]", "already appears" },
  { NODE LISTEN "just words\n", "line 5", "neither 'key = value'" },
  { "name = A\n", "line 1, key 'name'", "before any section" },
  { NODE "colour = red\n" LISTEN, "line 3, key 'colour'",
    "unknown key in [node]" },
  { NODE "name = B\n" LISTEN, "line 3, key 'name'", "given twice" },
  { "[node]\nname = alpha-1\n" LISTEN, "line 2, key 'name'",
    "not a node name" },
  { "[node]\nname = ABCDEFGHIJKLMNOP\n" LISTEN, "line 2, key 'name'",
    "not a node name" },
  { NODE "alloclass = 256\n" LISTEN, "line 3, key 'alloclass'",
    "from 1 to 255" },
  { NODE "alloclass = x\n" LISTEN, "line 3, key 'alloclass'",
    "'x' is not a node allocation class" },
  { NODE LISTEN "[port B]\nalloclass = 32768\n", "line 6, key 'alloclass'",
    "from 1 to 32767" },
  { NODE LISTEN "[port B]\nalloclass = -1\n", "line 6, key 'alloclass'",
    "from 1 to 32767" },
  { NODE LISTEN "[port B]\n10000 = /dev/null\n", "line 6, key '10000'",
    "from 0 to 9999" },
  { NODE LISTEN "[port B]\n0100 = /dev/null\n", "line 6, key '0100'",
    "leading zeros" },
  { NODE LISTEN "[port B]\n100 = /dev/null\n100 = /dev/zero\n",
    "line 7, key '100'", "given twice" },
  { NODE LISTEN "[port B]\n100 =\n", "line 6, key '100'", "no file given" },
  { NODE LISTEN "[port B]\n100 = /dev/null, fast\n", "line 6, key '100'",
    "unknown option 'fast'" },
  { NODE LISTEN "[port B]\n100 = /dev/null, ro, rw\n", "line 6, key '100'",
    "both read-only and read-write" },
  { NODE LISTEN "[port B]\n100 = /dev/null,\n", "line 6, key '100'",
    "empty option" },
  { NODE LISTEN "[port B]\n100 = \"/dev/null\n", "line 6, key '100'",
    "without closing" },
  { NODE LISTEN "[port B]\nread-only = maybe\n", "line 6, key 'read-only'",
    "neither yes nor no" },
  { NODE LISTEN "[port B]\nfoo = 1\n", "line 6, key 'foo'",
    "unknown key in [port B]" },
  { NODE LISTEN "[port B]\n1 = /dev/null\n[port C]\n1 = /dev/null\n",
    "line 8, key '1'", "already served as A$DKB1" },
  { NODE LISTEN "[port B]\nalloclass = 4\n1 = /dev/null\n"
    "[port C]\nalloclass = 4\n1 = /dev/zero\n[port B]\n",
    "line 11, section [port B]", "already described" },
  { NODE "[listen]\naddress = 127.0.0.1:0\n", "line 4, key 'address'",
    "port number from 1 to 65535" },
  { NODE "[listen]\naddress = 127.0.0.1:http\n", "line 4, key 'address'",
    "port number" },
  { NODE "[listen]\naddress = 300.1.1.1:10809\n", "line 4, key 'address'",
    "not an IPv4 address" },
  { NODE "[listen]\naddress = ::1:10809\n", "line 4, key 'address'",
    "in brackets" },
  { NODE "[listen]\naddress = [::1\n", "line 4, key 'address'",
    "without ']'" },
  { NODE "[listen]\naddress = [fe80::zz]:1\n", "line 4, key 'address'",
    "not an IPv6 address" },
  { NODE "[listen]\naddress = :10809\n", "line 4, key 'address'",
    "names no host" },
  { NODE "[listen]\naddress = unix:\n", "line 4, key 'address'",
    "needs a socket path" },
  { NODE "[listen]\naddress = unix:/" "0123456789012345678901234567890123456789"
    "0123456789012345678901234567890123456789"
    "0123456789012345678901234567890123456789.sock\n",
    "line 4, key 'address'", "longer than 107" },
  { NODE "[listen]\naddress = bad_host!:1\n", "line 4, key 'address'",
    "not a host name" },
  { NODE "[listen]\naddress = 127.0.0.1\ntls = maybe\n", "line 5, key 'tls'",
    "not a TLS mode" },
  { NODE "[listen]\naddress = 127.0.0.1\ntls = require\n",
    "line 5, key 'tls'", "neither psk-file nor cert-dir" },
  { NODE "[listen]\naddress = 127.0.0.1\ntls = on\n",
    "line 5, key 'tls'", "neither psk-file nor cert-dir" },
  { NODE "[listen]\naddress = 0.0.0.0:10809\n", "line 4, key 'address'",
    "TLS is required by default" },
  { NODE "[listen]\nport = 1\n", "line 4, key 'port'",
    "unknown key in [listen]" },
  { NODE "[listen]\n", "line 3, section [listen]", "no 'address'" },
  { NODE LISTEN LISTEN, "line 6, key 'address'", "same address" },
  { NODE, ".conf: no [listen] section", "nothing could connect" },
  { LISTEN, ".conf: no [node] section", "name = ALPHA" },
  { "[node]\nalloclass = 1\n" LISTEN, "line 1, section [node]", "no 'name'" },
  { NODE "nbd-buffer-mib = 0\n" LISTEN, "line 3, key 'nbd-buffer-mib'",
    "not a buffer budget" },
  { NODE "nbd-buffer-mib = 32M\n" LISTEN, "line 3, key 'nbd-buffer-mib'",
    "1 to 65536" },
  { NODE LISTEN "[tls]\npsk-file = /nonexistent/keys.psk\n",
    "line 6, key 'psk-file'", "psktool" },
  { NODE LISTEN "[tls]\ncert-dir = /nonexistent\n", "line 6, key 'cert-dir'",
    "not a directory" },
  { NODE LISTEN "[tls]\ncert-dir = /tmp\n", "line 6, key 'cert-dir'",
    "server-cert.pem" },
  { NODE LISTEN "[tls]\nverify-peer = yes\n", "line 6, key 'verify-peer'",
    "no cert-dir" },
  { NODE LISTEN "[tls]\nallow = alice\n", "line 6, key 'allow'",
    "neither psk-file nor cert-dir" },
  { NODE LISTEN "[tls]\npsk-file = keys.psk\npriority = NORMAL:+NOSUCH\n",
    "line 7, key 'priority'", "refuses 'NORMAL:+NOSUCH' at '+NOSUCH'" },
  { NODE LISTEN "[tls]\npsk-file = keys.psk\npriority = \n",
    "line 7, key 'priority'", "GnuTLS priority string" },
  { NODE LISTEN "[tls]\npriority = NORMAL\n", "line 6, key 'priority'",
    "neither psk-file nor cert-dir" },
  { NODE LISTEN "[tls]\nallow = ,\n", "line 6, key 'allow'",
    "the list is empty" },
  { NODE LISTEN "[tls]\npsk-file = keys.psk\nallow = alice\n[port A]\n"
    "1 = /dev/null, allow=mallory\n", "line 9, key '1'",
    "'mallory' is not in [tls] allow" },
  { NODE LISTEN "[tls]\npsk-file = keys.psk\nallow = alice\n[port A]\n"
    "allow = eve\n", "line 9, key 'allow'", "'eve' is not in [tls] allow" },
  { NODE LISTEN "[port A]\n1 = /dev/null, allow=alice\n", "line 6, key '1'",
    "neither psk-file nor cert-dir" },
  { NODE LISTEN "[tls]\nspeed = 1\n", "line 6, key 'speed'",
    "unknown key in [tls]" },
  { NODE LISTEN "[units]\nrequest-timeout-ms = 50\n",
    "line 6, key 'request-timeout-ms'", "from 100 to 3600000" },
  { NODE LISTEN "[units]\nverify-timeout-ms = 1e3\n",
    "line 6, key 'verify-timeout-ms'", "milliseconds" },
  { NODE LISTEN "[units]\nqueue = yes\n", "line 6, key 'queue'",
    "unknown key in [units]" },
};

static void
test_errors (void **state)
{
  write_file ("keys.psk", "alice:0123456789abcdef\n");
  for (size_t i = 0; i < sizeof bad_configs / sizeof *bad_configs; i++) {
    const struct bad *b = &bad_configs[i];
    struct config cfg;
    char err[2048], name[32], want[PATH_MAX + 128];
    snprintf (name, sizeof name, "bad%zu.conf", i);
    const char *f = write_file (name, b->text);
    int r = config_load (f, &cfg, err, sizeof err);
    if (r == 0) {
      config_free (&cfg);
      print_error ("config %zu was accepted:\n%s\n", i, b->text);
      fail ();
    }
    if (b->where[0] == '.')
      snprintf (want, sizeof want, "%s/bad%zu%s", dir, i, b->where);
    else
      snprintf (want, sizeof want, "%s %s: ", f, b->where);
    if (strncmp (err, want, strlen (want)) != 0 || !strstr (err, b->what)) {
      print_error ("config %zu:\n%s\nmessage: %s\nwanted:  %s ... %s\n", i,
                   b->text, err, want, b->what);
      fail ();
    }
    /* Nothing is left behind on error. */
    assert_null (cfg.disks);
    assert_null (cfg.listen);
  }
}

static void
test_missing_file (void **state)
{
  struct config cfg;
  char err[2048];
  assert_int_equal (config_load ("/nonexistent/altpath.conf", &cfg, err,
                                 sizeof err), -1);
  assert_non_null (strstr (err, "/nonexistent"));
  assert_int_equal (config_load ("/tmp/../nonexistent-dir/x.conf", &cfg, err,
                                 sizeof err), -1);
}

static void
test_long_line (void **state)
{
  struct config cfg;
  char err[2048];
  size_t n = LINE_CHARS + 100;
  char *text = malloc (n + 200);
  assert_non_null (text);
  strcpy (text, NODE LISTEN "[port A]\n1 = /");
  size_t len = strlen (text);
  memset (text + len, 'x', n);
  strcpy (text + len + n, "\n");
  const char *f = write_file ("long.conf", text);
  free (text);
  assert_int_equal (config_load (f, &cfg, err, sizeof err), -1);
  assert_non_null (strstr (err, "line 6: the line is longer than"));

  /* A path of a few hundred characters is fine (inih's default buffer
   * holds 200). */
  char path[600];
  memset (path, 'y', sizeof path);
  path[0] = '/';
  path[sizeof path - 1] = '\0';
  char text2[1024];
  snprintf (text2, sizeof text2, NODE LISTEN "[port A]\n1 = %s, ro\n", path);
  f = write_file ("long2.conf", text2);
  assert_int_equal (config_load (f, &cfg, err, sizeof err), 0);
  assert_string_equal (cfg.disks[0].file, path);
  assert_true (cfg.disks[0].read_only);
  config_free (&cfg);
}

/* ------------------------------------------------------------- globs */

static void
test_glob (void **state)
{
  struct config cfg;
  char err[2048];
  make_image ("shared/disk100.img");
  make_image ("shared/disk7.img");
  make_image ("shared/disk-nonumber.img");
  make_image ("shared/disk12345.img");
  make_image ("shared/dup0100.img");     /* unit 100 again */
  make_image ("listed.img");
  const char *f = write_file ("glob.conf",
    NODE LISTEN
    "[port B]\n"
    "alloclass = 4\n"
    "glob = shared/*.img\n"
    "read-only = yes\n"
    "5 = listed.img, rw\n"
    "7 = shared/disk7.img\n");           /* listed and globbed */
  assert_int_equal (config_load (f, &cfg, err, sizeof err), 0);
  assert_int_equal (cfg.ndisks, 2);
  assert_int_equal (cfg.ports[0].glob_line, 7);
  assert_int_equal (config_scan_ports (&cfg, err, sizeof err), 0);
  /* listed 5 and 7, globbed 100; no number, > 9999 and a second 100 are
   * skipped, disk7.img is not doubled. */
  assert_int_equal (cfg.ndisks, 3);
  assert_string_equal (cfg.disks[0].device, "$4$DKB5");
  assert_false (cfg.disks[0].read_only);
  assert_false (cfg.disks[0].from_glob);
  assert_string_equal (cfg.disks[1].device, "$4$DKB7");
  assert_false (cfg.disks[1].from_glob);
  assert_true (cfg.disks[1].read_only);
  assert_string_equal (cfg.disks[2].device, "$4$DKB100");
  assert_true (cfg.disks[2].from_glob);
  assert_true (cfg.disks[2].read_only);
  assert_int_equal (cfg.disks[2].line, 7);
  char want[PATH_MAX + 32];
  snprintf (want, sizeof want, "%s/shared/disk100.img", dir);
  assert_string_equal (cfg.disks[2].file, want);

  /* Rescan: same result; then a new disk appears, an old one goes. */
  assert_int_equal (config_scan_ports (&cfg, err, sizeof err), 0);
  assert_int_equal (cfg.ndisks, 3);
  make_image ("shared/disk200.img");
  snprintf (want, sizeof want, "%s/shared/disk100.img", dir);
  unlink (want);
  assert_int_equal (config_scan_ports (&cfg, err, sizeof err), 0);
  assert_int_equal (cfg.ndisks, 4);     /* 5, 7, 100 (was dup0100), 200 */
  assert_non_null (find_disk (&cfg, "$4$DKB200"));
  const struct config_disk *d = find_disk (&cfg, "$4$DKB100");
  assert_non_null (d);
  assert_non_null (strstr (d->file, "dup0100.img"));
  config_free (&cfg);
}

static void
test_glob_nomatch (void **state)
{
  struct config cfg;
  char err[2048];
  const char *f = write_file ("nomatch.conf",
    NODE LISTEN "[port C]\nglob = /nonexistent/dir/*.img\n");
  assert_int_equal (config_load (f, &cfg, err, sizeof err), 0);
  assert_int_equal (config_scan_ports (&cfg, err, sizeof err), 0);
  assert_int_equal (cfg.ndisks, 0);
  config_free (&cfg);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test (test_good),
    cmocka_unit_test (test_node_alloclass),
    cmocka_unit_test (test_errors),
    cmocka_unit_test (test_missing_file),
    cmocka_unit_test (test_long_line),
    cmocka_unit_test (test_glob),
    cmocka_unit_test (test_glob_nomatch),
  };
  return cmocka_run_group_tests (tests, setup, teardown);
}
