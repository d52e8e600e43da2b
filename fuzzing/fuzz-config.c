/* fuzz-config.c — libFuzzer target: altpathd's configuration parser
 * (daemon/config.c with the system's inih), end to end, on any bytes.
 *
 * Input:  the whole configuration file, any bytes at all (NULs, no final
 *         newline, over-long lines, a BOM...).
 *
 * config_load() reads a file by name, so each input is written to
 * altpath.conf in a private directory made at start-up (mkdtemp under
 * $TMPDIR, else /dev/shm, else /tmp; removed at exit, left behind only
 * when a crash kills the process).  The directory also holds what a good file
 * refers to, by relative path, so that the fuzzer can reach the success
 * paths and the checks that need the whole file:
 *   keys.psk                       a PSK file        (psk-file = keys.psk)
 *   pki/{server-cert,server-key,ca-cert}.pem       (cert-dir = pki)
 *   shared/disk100.img disk101.img disk9999.img disk10000.img nounit.img
 *          archive202.img, shared/disk7/ (a directory)
 *   local/disk0
 * Nothing here writes anywhere else: the parser only stat()s, access()es
 * and realpath()s what a file names.  Port globs are expanded
 * (config_scan_ports) only when every glob stays inside that directory,
 * so that a pattern over the whole file system never walks the machine.
 *
 * Checked besides the sanitizers (leaks included: every path must free
 * what it took):
 *   - an error is -1 with a message that starts with the file's name, and
 *     leaves the config zeroed (nothing half-built to use or free);
 *   - success leaves no message and a config the daemon can trust: a
 *     valid node name, at least one listener, timeouts in range, port
 *     letters unique A..Z, every disk on a known port with a unit number
 *     0..9999 and a device name unique on the node, NUL-terminated;
 *   - loading the same bytes twice gives the same answer.
 *
 * Build and run: fuzzing/run.sh fuzz-config.  FUZZ_VERBOSE=1 in the
 * environment prints what each input gave (to see what seeds reach):
 *   FUZZ_VERBOSE=1 build-fuzz/fuzz-config fuzzing/corpus/fuzz-config/\*
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon.h"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static char ws[PATH_MAX];               /* the private directory */
static char conf[PATH_MAX];             /* ws/altpath.conf */
static FILE *devnull;                   /* config_scan_ports' warnings */
static bool verbose;                    /* FUZZ_VERBOSE */

/* ------------------------------------------------------------ workspace */

static void
put_file (const char *rel, const char *text)
{
  char p[PATH_MAX];
  snprintf (p, sizeof p, "%s/%s", ws, rel);
  int fd = open (p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || write (fd, text, strlen (text)) != (ssize_t) strlen (text)) {
    perror (p);
    abort ();
  }
  close (fd);
}

static void
put_dir (const char *rel)
{
  char p[PATH_MAX];
  snprintf (p, sizeof p, "%s/%s", ws, rel);
  if (mkdir (p, 0700) < 0) {
    perror (p);
    abort ();
  }
}

/* Remove ws and what is in it (two levels, as made below). */
static void
remove_tree (const char *dir)
{
  DIR *d = opendir (dir);
  struct dirent *de;
  if (!d)
    return;
  while ((de = readdir (d))) {
    char p[PATH_MAX];
    if (!strcmp (de->d_name, ".") || !strcmp (de->d_name, ".."))
      continue;
    snprintf (p, sizeof p, "%s/%s", dir, de->d_name);
    if (unlink (p) < 0)
      remove_tree (p);
  }
  closedir (d);
  rmdir (dir);
}

static void
cleanup (void)
{
  if (ws[0])
    remove_tree (ws);
  ws[0] = '\0';
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  /* In memory when there is /dev/shm: every run writes the file twice. */
  const char *tmp = getenv ("TMPDIR");
  struct stat st;
  if (!tmp || !*tmp)
    tmp = stat ("/dev/shm", &st) == 0 && S_ISDIR (st.st_mode) ? "/dev/shm"
      : "/tmp";
  snprintf (ws, sizeof ws, "%s/altpath-fuzz-config.XXXXXX", tmp);
  if (!mkdtemp (ws)) {
    perror ("fuzz-config: mkdtemp");
    abort ();
  }
  atexit (cleanup);
  snprintf (conf, sizeof conf, "%s/altpath.conf", ws);
  put_file ("keys.psk", "beta:0123456789abcdef0123456789abcdef\n");
  put_dir ("pki");
  put_file ("pki/server-cert.pem", "");
  put_file ("pki/server-key.pem", "");
  put_file ("pki/ca-cert.pem", "");
  put_dir ("shared");
  put_file ("shared/disk100.img", "");
  put_file ("shared/disk101.img", "");
  put_file ("shared/disk9999.img", "");
  put_file ("shared/disk10000.img", "");
  put_file ("shared/nounit.img", "");
  put_file ("shared/archive202.img", "");
  put_dir ("shared/disk7");
  put_dir ("local");
  put_file ("local/disk0", "");
  devnull = fopen ("/dev/null", "we");
  if (!devnull)
    abort ();
  verbose = getenv ("FUZZ_VERBOSE") != NULL;
  return 0;
}

/* ---------------------------------------------------------------- checks */

static bool
terminated (const char *s, size_t size)
{
  return strnlen (s, size) < size;
}

/* A config left as config_free leaves it.  (memcmp, not a loop: a loop
 * over 50 KiB would be 50 Ki traced comparisons a run.) */
static bool
zeroed (const struct config *cfg)
{
  static const struct config zero;
  return memcmp (cfg, &zero, sizeof zero) == 0;
}

static void
check_ok (const struct config *cfg)
{
  size_t n = strnlen (cfg->node, sizeof cfg->node);
  if (n == 0 || n > 15
      || strspn (cfg->node, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != n)
    abort ();
  if (cfg->nlisten == 0 || !cfg->listen)
    abort ();
  for (size_t i = 0; i < cfg->nlisten; i++) {
    const struct config_listen *l = &cfg->listen[i];
    if (l->is_unix ? l->path[0] != '/' || !terminated (l->path, sizeof l->path)
        : !l->host[0] || !l->port[0] || !terminated (l->host, sizeof l->host)
        || !terminated (l->port, sizeof l->port))
      abort ();
    if (l->tls != TLS_OFF && l->tls != TLS_ON && l->tls != TLS_REQUIRE)
      abort ();
  }
  if (cfg->request_timeout_ms < 100 || cfg->request_timeout_ms > 3600000
      || cfg->verify_timeout_ms < 100 || cfg->verify_timeout_ms > 3600000)
    abort ();
  for (size_t i = 0; i < cfg->nports; i++) {
    char l = cfg->ports[i].letter;
    if (l < 'A' || l > 'Z')
      abort ();
    for (size_t j = 0; j < i; j++)
      if (cfg->ports[j].letter == l)
        abort ();
  }
  for (size_t i = 0; i < cfg->ndisks; i++) {
    const struct config_disk *d = &cfg->disks[i];
    bool port_known = false;
    for (size_t k = 0; k < cfg->nports; k++)
      port_known |= cfg->ports[k].letter == d->port_letter;
    if (!port_known || d->unit_number > 9999 || !d->device[0]
        || !terminated (d->device, sizeof d->device) || !d->file[0]
        || !terminated (d->file, sizeof d->file))
      abort ();
    for (size_t k = 0; k < d->nallow; k++)
      if (!d->allow[k] || !d->allow[k][0])
        abort ();
    for (size_t j = 0; j < i; j++)
      if (strcmp (cfg->disks[j].device, d->device) == 0)
        abort ();
  }
}

/* Every glob under ws, without a way out of it. */
static bool
globs_inside (const struct config *cfg)
{
  size_t n = strlen (ws);
  for (size_t i = 0; i < cfg->nports; i++) {
    const char *g = cfg->ports[i].glob;
    if (g[0] && (strncmp (g, ws, n) != 0 || g[n] != '/' || strstr (g, "..")))
      return false;
  }
  return true;
}

/* --------------------------------------------------------------- target */

static int
load (const uint8_t *data, size_t size, struct config *cfg, char *err,
      size_t errlen)
{
  int fd = open (conf, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || (size && write (fd, data, size) != (ssize_t) size))
    abort ();
  close (fd);
  return config_load (conf, cfg, err, errlen);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  /* struct config is ~50 KiB: static (ASan puts red zones around
   * globals too), not on the heap, where ASan's quarantine would make
   * every run fault in fresh pages. */
  static struct config ca, cb;
  struct config *a = &ca, *b = &cb;
  char ea[1024], eb[1024];

  int ra = load (data, size, a, ea, sizeof ea);
  int rb = load (data, size, b, eb, sizeof eb);
  if (ra != rb || strcmp (ea, eb) != 0)
    abort ();

  if (ra == 0) {
    if (ea[0] || a->ndisks != b->ndisks || a->nlisten != b->nlisten)
      abort ();
    check_ok (a);
    if (globs_inside (a)) {
      /* Its warnings (files skipped) go to stderr: not to the log. */
      FILE *saved = stderr;
      stderr = devnull;
      int rs = config_scan_ports (a, ea, sizeof ea);
      stderr = saved;
      if (rs != 0)
        abort ();               /* only out of memory or a read error */
      check_ok (a);
    }
    if (verbose)
      fprintf (stderr, "fuzz-config: accepted: node %s, %zu listeners, %zu "
               "ports, %zu disks%s\n", a->node, a->nlisten, a->nports,
               a->ndisks, globs_inside (a) ? ", globs expanded" : "");
    config_free (a);
    config_free (b);
  }
  else {
    if (ra != -1 || strncmp (ea, conf, strlen (conf)) != 0
        || !zeroed (a) || !zeroed (b))
      abort ();
    if (verbose)
      fprintf (stderr, "fuzz-config: refused: %s\n", ea + strlen (conf));
  }
  return 0;
}
