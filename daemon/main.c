/* main.c — altpathd: read the configuration, open the node's disks, serve
 * them over NBD, and react to signals.
 *
 *   altpathd --config FILE [--check-config] [--verbose]
 *
 * Threads and signals:
 *
 *   main thread ── config, listeners, exports ── nbd_server_run(quit_fd)
 *        │                                              ▲ returns once
 *        │ blocks SIGTERM/SIGINT/SIGHUP in every thread │ quit_fd is
 *        ▼ (set before any thread starts, so inherited) │ readable
 *   signal thread ── signalfd + stop pipe ──────────────┘
 *        SIGTERM, SIGINT: write to the quit pipe (a second one: exit now)
 *        SIGHUP: reload the disk list (config_load + config_scan_ports),
 *                open what is new, keep what is unchanged, drop the rest,
 *                nbd_server_set_exports
 *
 * Only the signal thread changes the list of served disks once the
 * server runs; the main thread reads it again only after joining it.
 *
 * Logs: one line per event on stderr, "altpathd: LEVEL: ...", which
 * journald takes as it is.  Exit status: 0 after a clean shutdown, 1 for a
 * configuration or start-up error, 2 for a bad command line.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "daemon.h"
#include "nbd-bufpool.h"

#define ALTPATHD_VERSION "0.1"

static bool verbose;

/* ------------------------------------------------------------- logging */

static void __attribute__ ((format (printf, 2, 3)))
logmsg (const char *level, const char *fmt, ...)
{
  char line[2048];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (line, sizeof line, fmt, ap);
  va_end (ap);
  /* One call per line: lines of several threads do not mix. */
  fprintf (stderr, "altpathd: %s: %s\n", level, line);
}

#define log_error(...) logmsg ("error", __VA_ARGS__)
#define log_warn(...)  logmsg ("warning", __VA_ARGS__)
#define log_info(...)  logmsg ("info", __VA_ARGS__)
#define log_debug(...)                          \
  do {                                          \
    if (verbose)                                \
      logmsg ("debug", __VA_ARGS__);            \
  } while (0)

/* ------------------------------------------------------ file limits */

/* Every disk costs several descriptors (its image, io_uring, the NBD
 * connections of each served path and of each peer that serves it from
 * us): about 11 per disk on a node that reaches a disk directly and
 * serves it to two peers (bench/scale.sh).  The usual soft limit of a
 * shell, 1024, stops such a node at about 90 disks with "Too many open
 * files", so raise the soft limit to the hard one (the systemd unit sets
 * both, LimitNOFILE).  Nothing here uses select(), so descriptors above
 * FD_SETSIZE are safe. */
static void
raise_nofile_limit (void)
{
  struct rlimit rl;
  if (getrlimit (RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
    return;
  rlim_t old = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit (RLIMIT_NOFILE, &rl) < 0) {
    log_warn ("cannot raise the open file limit from %llu to %llu: %s; "
              "with many disks, raise it (ulimit -n, LimitNOFILE)",
              (unsigned long long) old, (unsigned long long) rl.rlim_max,
              strerror (errno));
    return;
  }
  log_info ("open file limit raised from %llu to %llu (the hard limit)",
            (unsigned long long) old, (unsigned long long) rl.rlim_max);
}

/* ------------------------------------------------------ command line */

#define SYNOPSIS \
  "usage: altpathd --config FILE [--check-config] [--verbose]\n" \
  "       altpathd --help | --version\n"

/* After a command-line error: the synopsis only. */
static void
usage_error (void)
{
  fprintf (stderr, SYNOPSIS "Try 'altpathd --help' for more.\n");
}

static void
usage (FILE *f)
{
  fprintf (f, SYNOPSIS
"\n"
"Serve this node's directly attached disks over NBD, named as in\n"
"DESIGN.md (e.g. $4$DKB100, ALPHA$DKA100).  Runs in the foreground and\n"
"logs to stderr.\n"
"\n"
"  -c, --config FILE   the configuration file (docs/configuration.md)\n"
"      --check-config  check the file, print the disks it would serve,\n"
"                      exit 0 if it is valid, 1 if not\n"
"  -v, --verbose       debug messages (also ALTPATH_DEBUG=control)\n"
"  -h, --help          this text\n"
"  -V, --version       the version\n"
"\n"
"Signals: SIGTERM or SIGINT stops (stop accepting, finish the requests in\n"
"flight, close; a second one exits at once); SIGHUP reloads the disk list.\n"
"\n"
"Operators use altpath (docs/cli.md) over the control socket, [control]\n"
"socket in the file (default /run/altpath/control.sock).\n");
}

static void
print_listen (FILE *f, const struct config_listen *l)
{
  if (l->is_unix)
    fprintf (f, "unix:%s", l->path);
  else if (strchr (l->host, ':'))
    fprintf (f, "[%s]:%s", l->host, l->port);
  else
    fprintf (f, "%s:%s", l->host, l->port);
}

static const char *
tls_name (enum tls_mode m)
{
  return m == TLS_OFF ? "off" : m == TLS_ON ? "on" : "require";
}

/* --check-config: what the daemon would do, on stdout. */
static void
print_config (const struct config *cfg)
{
  printf ("%s: valid\n", cfg->file);
  printf ("node %s", cfg->node);
  if (cfg->node_alloclass)
    printf (", node allocation class %u", cfg->node_alloclass);
  printf ("\n");
  for (size_t i = 0; i < cfg->nlisten; i++) {
    const struct config_listen *l = &cfg->listen[i];
    printf ("listen ");
    print_listen (stdout, l);
    printf (", tls %s%s\n", tls_name (l->tls),
            l->tls_explicit ? "" : " (default)");
  }
  if (cfg->tls_psk_file[0])
    printf ("tls psk-file %s\n", cfg->tls_psk_file);
  if (cfg->tls_cert_dir[0])
    printf ("tls cert-dir %s%s\n", cfg->tls_cert_dir,
            cfg->tls_verify_peer ? ", client certificates required" : "");
  if (cfg->tls_priority[0])
    printf ("tls priority %s\n", cfg->tls_priority);
  printf ("units: request timeout %u ms, verify timeout %u ms\n",
          cfg->request_timeout_ms, cfg->verify_timeout_ms);
  printf ("control socket %s%s, for root%s%s\n", cfg->control_socket,
          cfg->control_explicit ? "" : " (default)",
          cfg->control_group[0] ? " and group " : " only",
          cfg->control_group);
  if (cfg->metrics)
    printf ("metrics http://%s%s%s:%s/metrics%s\n",
            strchr (cfg->metrics_host, ':') ? "[" : "", cfg->metrics_host,
            strchr (cfg->metrics_host, ':') ? "]" : "", cfg->metrics_port,
            cfg->metrics_allow_remote ? ", remote scrapers allowed" : "");
  else
    printf ("metrics none (no [metrics] section)\n");
  printf ("%zu disk%s:\n", cfg->ndisks, cfg->ndisks == 1 ? "" : "s");
  for (size_t i = 0; i < cfg->ndisks; i++) {
    const struct config_disk *d = &cfg->disks[i];
    printf ("  %-16s %s %s", d->device, d->file,
            d->read_only ? "read-only" : "read-write");
    if (d->identity[0])
      printf (" identity=%s", d->identity);
    if (d->nallow) {
      printf (" allow=");
      for (size_t k = 0; k < d->nallow; k++)
        printf ("%s%s", k ? "," : "", d->allow[k]);
    }
    printf (" (line %u%s)", d->line, d->from_glob ? ", glob" : "");
    /* Not an error of the file: the daemon would skip it and serve the
     * others.  But say so. */
    /* (No open(): closing a block device opened for writing makes udev
     * probe it again.) */
    if (access (d->file, d->read_only ? R_OK : R_OK | W_OK) < 0)
      printf (" -- cannot open it now: %s; it would be skipped",
              strerror (errno));
    printf ("\n");
  }
}

/* The device files (fuse.c); NULL: none. */
static struct devfs *devfs;

static void
devfs_units_changed (void *opaque, struct export **units, size_t n)
{
  devfs_set_units (opaque, units, n);
}

/* ------------------------------------------------------ served disks */

/* A disk being served, with what decides whether a reload may keep it. */
struct served {
  struct export *e;             /* main's reference */
  char file[4096];
  char identity[AP_NAME_MAX];
  unsigned request_timeout_ms, verify_timeout_ms;
};

struct daemon {
  pthread_mutex_t lock;         /* reload (signal thread) against rescan
                                   (cluster thread): cfg, served */
  struct config cfg;            /* listeners and TLS as started; the disk
                                   list as last reloaded or rescanned */
  struct nbd_server *server;
  struct cluster *cluster;      /* NULL: not in a cluster */
  _Atomic (struct control *) control; /* NULL: no control socket */
  struct metrics *metrics;      /* NULL: no [metrics] */
  struct served *served;
  size_t nserved;
  int quit_pipe[2];             /* the server's quit_fd is [0] */
  int stop_pipe[2];             /* ends the signal thread */
  int sigfd;
  bool quitting;                /* signal thread only */
};

static bool
same_disk (const struct served *s, const struct config *cfg,
           const struct config_disk *d)
{
  const struct export *e = s->e;
  if (strcmp (e->name, d->device) != 0 || strcmp (s->file, d->file) != 0
      || e->read_only != d->read_only
      || strcmp (s->identity, d->identity) != 0
      || s->request_timeout_ms != cfg->request_timeout_ms
      || s->verify_timeout_ms != cfg->verify_timeout_ms
      || e->nallow != d->nallow)
    return false;
  for (size_t i = 0; i < e->nallow; i++)
    if (strcmp (e->allow[i], d->allow[i]) != 0)
      return false;
  return true;
}

static void
describe (const struct export *e, const char *file, char *buf, size_t n)
{
  uint64_t size = ap_unit_size (e->unit);
  snprintf (buf, n, "%s (%s, %llu MiB, %s%s)", e->name, file,
            (unsigned long long) (size >> 20),
            e->read_only ? "read-only" : "read-write",
            e->nallow ? ", allow list" : "");
}

/* Events of a served disk's unit (outside a cluster), for altpath watch. */
static void
served_event (void *opaque, const struct ap_event *ev)
{
  struct daemon *dm = opaque;
  struct control *ctl = atomic_load (&dm->control);
  if (ctl)
    control_event (ctl, ev);
}

/* Make the served list match cfg's disks: keep what is unchanged, open
 * what is new (a disk that cannot be opened is reported and skipped), drop
 * the rest.  Returns how many disks failed to open. */
static size_t
update_exports (struct daemon *dm, const struct config *cfg)
{
  struct served *nv = calloc (cfg->ndisks ? cfg->ndisks : 1, sizeof *nv);
  bool *kept = calloc (dm->nserved ? dm->nserved : 1, sizeof *kept);
  size_t nn = 0, failed = 0;
  char msg[4096 + 512];

  if (!nv || !kept) {
    log_error ("out of memory updating the disk list; keeping the current "
               "one");
    free (nv);
    free (kept);
    return cfg->ndisks;
  }
  for (size_t i = 0; i < cfg->ndisks; i++) {
    const struct config_disk *d = &cfg->disks[i];
    size_t k;
    for (k = 0; k < dm->nserved; k++)
      if (!kept[k] && same_disk (&dm->served[k], cfg, d))
        break;
    if (k < dm->nserved) {
      kept[k] = true;
      nv[nn++] = dm->served[k];
      log_debug ("%s: unchanged", d->device);
      continue;
    }
    struct export *e = export_open (cfg, d, msg, sizeof msg);
    if (!e) {
      log_error ("%s (%s line %u); skipped, the other disks are served",
                 msg, cfg->file, d->line);
      failed++;
      continue;
    }
    /* Outside a cluster the served disks are the node's units: their
     * events go to the control socket's watchers. */
    if (!cfg->cluster)
      ap_unit_set_event_cb (e->unit, served_event, dm);
    struct served *s = &nv[nn++];
    s->e = e;
    snprintf (s->file, sizeof s->file, "%s", d->file);
    snprintf (s->identity, sizeof s->identity, "%s", d->identity);
    s->request_timeout_ms = cfg->request_timeout_ms;
    s->verify_timeout_ms = cfg->verify_timeout_ms;
    describe (e, d->file, msg, sizeof msg);
    log_info ("serving %s", msg);
  }
  for (size_t k = 0; k < dm->nserved; k++) {
    if (kept[k])
      continue;
    log_info ("no longer serving %s (%s); connections that use it keep it "
              "until they close", dm->served[k].e->name,
              dm->served[k].file);
    export_put (dm->served[k].e);
  }
  free (kept);
  free (dm->served);
  dm->served = nv;
  dm->nserved = nn;
  return failed;
}

/* Give the server the current list; it takes one reference of each. */
static void
publish (struct daemon *dm)
{
  struct export **list = calloc (dm->nserved ? dm->nserved : 1,
                                 sizeof *list);
  if (!list) {
    log_error ("out of memory publishing the disk list");
    return;
  }
  for (size_t i = 0; i < dm->nserved; i++)
    list[i] = export_get (dm->served[i].e);
  nbd_server_set_exports (dm->server, list, dm->nserved);
  free (list);
}

/* Tell the cluster which disks this node now serves (it publishes them
 * and gives the node's units their direct paths). */
static void
tell_cluster (struct daemon *dm, const struct config *cfg)
{
  if (!dm->cluster)
    return;
  struct export **ex = calloc (dm->nserved ? dm->nserved : 1, sizeof *ex);
  const struct config_disk **d = calloc (dm->nserved ? dm->nserved : 1,
                                         sizeof *d);
  size_t n = 0;
  for (size_t i = 0; ex && d && i < dm->nserved; i++)
    for (size_t k = 0; k < cfg->ndisks; k++)
      if (strcmp (cfg->disks[k].device, dm->served[i].e->name) == 0) {
        ex[n] = dm->served[i].e;
        d[n++] = &cfg->disks[k];
        break;
      }
  if (ex && d)
    cluster_set_direct (dm->cluster, ex, d, n);
  free (ex);
  free (d);
}

/* A rescan of the ports' globs: a file appeared or left, or a peer
 * announced a disk on a bus this node attaches. */
static void
rescan (void *opaque)
{
  struct daemon *dm = opaque;
  char err[2048];
  pthread_mutex_lock (&dm->lock);
  if (config_scan_ports (&dm->cfg, err, sizeof err) < 0)
    log_error ("rescan: %s", err);
  else {
    size_t before = dm->nserved;
    update_exports (dm, &dm->cfg);
    publish (dm);
    tell_cluster (dm, &dm->cfg);
    if (dm->nserved != before)
      log_info ("rescan: serving %zu disk%s", dm->nserved,
                dm->nserved == 1 ? "" : "s");
  }
  pthread_mutex_unlock (&dm->lock);
}

/* ------------------------------------------------------ control socket */

/* What the control socket shows as the node's units: the cluster's when
 * the node is in one, else the served disks'. */
static size_t
view_units (void *opaque, struct export ***out)
{
  struct daemon *dm = opaque;
  if (dm->cluster)
    return cluster_units (dm->cluster, out);
  pthread_mutex_lock (&dm->lock);
  size_t n = dm->nserved;
  struct export **v = calloc (n ? n : 1, sizeof *v);
  for (size_t i = 0; v && i < n; i++)
    v[i] = export_get (dm->served[i].e);
  pthread_mutex_unlock (&dm->lock);
  *out = v;
  return v ? n : 0;
}

static char *
view_cluster_json (void *opaque)
{
  struct daemon *dm = opaque;
  return dm->cluster ? cluster_json (dm->cluster) : NULL;
}

static int
view_keep_choices (void *opaque, struct export *e, char *err, size_t errlen)
{
  struct daemon *dm = opaque;
  /* A node out of a cluster serves each disk over its one direct path:
   * there is nothing to choose between, and nothing to keep. */
  if (!dm->cluster)
    return 0;
  return cluster_keep_choices (dm->cluster, e, err, errlen);
}

/* The control socket, once the node's units exist.  A socket set in the
 * file that cannot be made stops the start, as a listener does; the
 * default one only gets a warning (another altpathd on this host may hold
 * it, or /run/altpath may not be writable). */
static int
start_control (struct daemon *dm)
{
  struct control_view view = {
    .node = dm->cfg.node, .daemon_version = "altpathd " ALTPATHD_VERSION,
    .units = view_units, .cluster_json = view_cluster_json,
    .rescan = rescan, .keep_choices = view_keep_choices, .opaque = dm,
  };
  char err[2048];
  struct control *ctl = control_start (dm->cfg.control_socket,
                                       dm->cfg.control_group, &view, err,
                                       sizeof err);
  if (!ctl && dm->cfg.control_explicit) {
    log_error ("%s; not started", err);
    return -1;
  }
  if (!ctl) {
    log_warn ("%s; running without a control socket, so altpath cannot "
              "reach this altpathd (set [control] socket to a path of its "
              "own)", err);
    return 0;
  }
  if (dm->cluster)
    cluster_set_event_hook (dm->cluster, control_event, ctl);
  atomic_store (&dm->control, ctl);
  return 0;
}

/* ------------------------------------------------------------- metrics */

/* How many disks the node serves over NBD now. */
static size_t
view_served (void *opaque)
{
  struct daemon *dm = opaque;
  pthread_mutex_lock (&dm->lock);
  size_t n = dm->nserved;
  pthread_mutex_unlock (&dm->lock);
  return n;
}

static bool
view_registry (void *opaque, bool *healthy, const char **backend,
               size_t *config_errors)
{
  struct daemon *dm = opaque;
  if (!dm->cluster)
    return false;
  *healthy = cluster_registry_ok (dm->cluster, backend, config_errors);
  return true;
}

static void
view_nbd_peers (void *opaque, struct nbd_server_stats *st)
{
  struct daemon *dm = opaque;
  nbd_server_get_stats (dm->server, st);
}

static bool
view_nbd_local (void *opaque, struct nbd_server_stats *st)
{
  struct daemon *dm = opaque;
  if (!dm->cluster)
    return false;
  cluster_local_nbd_stats (dm->cluster, st);
  return true;
}

/* The metrics listener, with a [metrics] section only.  It was asked for,
 * so failing to open it stops the start, as a listener does. */
static int
start_metrics (struct daemon *dm)
{
  if (!dm->cfg.metrics)
    return 0;
  struct metrics_view view = {
    .node = dm->cfg.node, .daemon_version = "altpathd " ALTPATHD_VERSION,
    .units = view_units, .served = view_served, .registry = view_registry,
    .nbd_peers = view_nbd_peers, .nbd_local = view_nbd_local,
    .opaque = dm,
  };
  char err[2048];
  dm->metrics = metrics_start (dm->cfg.metrics_host, dm->cfg.metrics_port,
                               dm->cfg.metrics_allow_remote, &view, err,
                               sizeof err);
  if (!dm->metrics) {
    log_error ("%s; not started", err);
    return -1;
  }
  return 0;
}

/* --------------------------------------------------------------- reload */

static bool
same_listeners (const struct config *a, const struct config *b)
{
  if (a->nlisten != b->nlisten
      || strcmp (a->tls_psk_file, b->tls_psk_file) != 0
      || strcmp (a->tls_cert_dir, b->tls_cert_dir) != 0
      || a->tls_verify_peer != b->tls_verify_peer
      || strcmp (a->tls_priority, b->tls_priority) != 0)
    return false;
  for (size_t i = 0; i < a->nlisten; i++) {
    const struct config_listen *x = &a->listen[i], *y = &b->listen[i];
    if (x->is_unix != y->is_unix || x->tls != y->tls
        || strcmp (x->path, y->path) != 0 || strcmp (x->host, y->host) != 0
        || strcmp (x->port, y->port) != 0)
      return false;
  }
  return true;
}

static void
reload (struct daemon *dm)
{
  struct config ncfg;
  char err[2048];

  log_info ("SIGHUP: reloading the disk list from %s", dm->cfg.file);
  pthread_mutex_lock (&dm->lock);
  if (config_load (dm->cfg.file, &ncfg, err, sizeof err) < 0
      || config_scan_ports (&ncfg, err, sizeof err) < 0) {
    log_error ("%s; keeping the current disk list", err);
    config_free (&ncfg);
    pthread_mutex_unlock (&dm->lock);
    return;
  }
  if (!same_listeners (&dm->cfg, &ncfg))
    log_warn ("%s: [listen] and [tls] changes take effect at the next "
              "start, not on reload; the listeners stay as they are",
              ncfg.file);
  if (strcmp (dm->cfg.control_socket, ncfg.control_socket) != 0
      || strcmp (dm->cfg.control_group, ncfg.control_group) != 0)
    log_warn ("%s: [control] changes take effect at the next start, not "
              "on reload; the control socket stays as it is", ncfg.file);
  if (dm->cfg.metrics != ncfg.metrics
      || strcmp (dm->cfg.metrics_host, ncfg.metrics_host) != 0
      || strcmp (dm->cfg.metrics_port, ncfg.metrics_port) != 0
      || dm->cfg.metrics_allow_remote != ncfg.metrics_allow_remote)
    log_warn ("%s: [metrics] changes take effect at the next start, not "
              "on reload; the metrics listener stays as it is", ncfg.file);
  size_t failed = update_exports (dm, &ncfg);
  publish (dm);
  tell_cluster (dm, &ncfg);
  log_info ("reloaded: serving %zu disk%s%s", dm->nserved,
            dm->nserved == 1 ? "" : "s",
            failed ? " (some could not be opened, see above)" : "");
  /* The new disk list is the one rescans start from; the listeners, TLS
   * and cluster settings stay as started. */
  struct config old = dm->cfg;
  dm->cfg = ncfg;
  config_free (&old);
  pthread_mutex_unlock (&dm->lock);
}

/* ---------------------------------------------------------- signal thread */

static void *
signal_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "ap-signal");
  struct daemon *dm = arg;
  struct pollfd pfd[2] = {
    { .fd = dm->sigfd, .events = POLLIN },
    { .fd = dm->stop_pipe[0], .events = POLLIN },
  };

  for (;;) {
    if (poll (pfd, 2, -1) < 0) {
      if (errno == EINTR)
        continue;
      log_error ("signal thread: poll: %s", strerror (errno));
      break;
    }
    if (pfd[1].revents)
      break;
    if (!(pfd[0].revents & POLLIN))
      continue;
    struct signalfd_siginfo si;
    if (read (dm->sigfd, &si, sizeof si) != (ssize_t) sizeof si)
      continue;
    switch (si.ssi_signo) {
    case SIGTERM:
    case SIGINT:
      if (dm->quitting) {
        log_warn ("second SIG%s while stopping: exiting now, requests in "
                  "flight are abandoned", sigabbrev_np ((int) si.ssi_signo));
        _exit (1);
      }
      dm->quitting = true;
      log_info ("SIG%s: stopping: no new connections, finishing the "
                "requests in flight", sigabbrev_np ((int) si.ssi_signo));
      while (write (dm->quit_pipe[1], "q", 1) < 0 && errno == EINTR)
        ;
      break;
    case SIGHUP:
      if (dm->quitting)
        log_info ("SIGHUP while stopping: ignored");
      else
        reload (dm);
      break;
    default:
      break;
    }
  }
  return NULL;
}

/* ------------------------------------------------------------------ main */

int
main (int argc, char **argv)
{
  enum { OPT_CHECK = 256 };
  static const struct option longopts[] = {
    { "config", required_argument, NULL, 'c' },
    { "check-config", no_argument, NULL, OPT_CHECK },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  const char *config_file = NULL;
  bool check_only = false;
  struct daemon dm = { .quit_pipe = { -1, -1 }, .stop_pipe = { -1, -1 },
                       .sigfd = -1 };
  char err[2048];
  int c, status = 1;

  opterr = 0;                   /* our own messages */
  while ((c = getopt_long (argc, argv, ":c:vhV", longopts, NULL)) != -1) {
    switch (c) {
    case 'c': config_file = optarg; break;
    case OPT_CHECK: check_only = true; break;
    case 'v': verbose = true; break;
    case 'h': usage (stdout); return 0;
    case 'V':
      printf ("altpathd %s (libaltpath API %d)\n", ALTPATHD_VERSION,
              AP_API_VERSION);
      return 0;
    case ':':
      fprintf (stderr, "altpathd: option '%s' needs a value\n",
               argv[optind - 1]);
      usage_error ();
      return 2;
    default:
      fprintf (stderr, "altpathd: unknown option '%s'\n", argv[optind - 1]);
      usage_error ();
      return 2;
    }
  }
  if (optind < argc) {
    fprintf (stderr, "altpathd: unexpected argument '%s'\n", argv[optind]);
    usage_error ();
    return 2;
  }
  if (!config_file) {
    fprintf (stderr, "altpathd: no configuration file; give --config FILE "
             "(e.g. /etc/altpath/altpath.conf)\n");
    usage_error ();
    return 2;
  }

  /* Before any thread exists, so that every thread (the library's too)
   * inherits the mask and the signals reach only the signalfd. */
  sigset_t sigs;
  sigemptyset (&sigs);
  sigaddset (&sigs, SIGTERM);
  sigaddset (&sigs, SIGINT);
  sigaddset (&sigs, SIGHUP);
  pthread_sigmask (SIG_BLOCK, &sigs, NULL);
  signal (SIGPIPE, SIG_IGN);    /* a client gone is an EPIPE, not a death */
  if (verbose)
    setenv ("ALTPATH_DEBUG", "control", 0);

  if (config_load (config_file, &dm.cfg, err, sizeof err) < 0
      || config_scan_ports (&dm.cfg, err, sizeof err) < 0) {
    fprintf (stderr, "altpathd: error: %s\n", err);
    if (!check_only)
      fprintf (stderr, "altpathd: not started\n");
    config_free (&dm.cfg);
    return 1;
  }
  if (check_only) {
    print_config (&dm.cfg);
    config_free (&dm.cfg);
    return 0;
  }

  log_info ("altpathd %s starting: node %s, configuration %s",
            ALTPATHD_VERSION, dm.cfg.node, dm.cfg.file);
  raise_nofile_limit ();

  /* Listen before opening disks: a busy port fails the start at once. */
  struct nbd_server_tls tls = {
    .psk_file = dm.cfg.tls_psk_file[0] ? dm.cfg.tls_psk_file : NULL,
    .cert_dir = dm.cfg.tls_cert_dir[0] ? dm.cfg.tls_cert_dir : NULL,
    .verify_peer = dm.cfg.tls_verify_peer,
    .priority = dm.cfg.tls_priority[0] ? dm.cfg.tls_priority : NULL,
  };
  /* Read once: a reload (SIGHUP) keeps the budget the daemon started
   * with. */
  if (dm.cfg.nbd_buffer_mib)
    nbd_bufpool_set_budget ((size_t) dm.cfg.nbd_buffer_mib << 20);
  dm.server = nbd_server_new (&tls, err, sizeof err);
  if (!dm.server) {
    log_error ("%s; not started", err);
    goto out;
  }
  for (size_t i = 0; i < dm.cfg.nlisten; i++) {
    const struct config_listen *l = &dm.cfg.listen[i];
    if (nbd_server_listen (dm.server, l, err, sizeof err) < 0) {
      log_error ("%s; not started", err);
      goto out;
    }
    char where[512];
    if (l->is_unix)
      snprintf (where, sizeof where, "unix:%s", l->path);
    else
      snprintf (where, sizeof where, strchr (l->host, ':') ? "[%s]:%s"
                : "%s:%s", l->host, l->port);
    log_info ("listening on %s, tls %s%s", where, tls_name (l->tls),
              l->tls_explicit ? "" : " (default)");
  }

  pthread_mutex_init (&dm.lock, NULL);
  size_t failed = update_exports (&dm, &dm.cfg);
  publish (&dm);
  if (dm.cfg.cluster) {
    dm.cluster = cluster_start (&dm.cfg, rescan, &dm, err, sizeof err);
    if (!dm.cluster) {
      log_error ("cannot join the cluster: %s; not started", err);
      goto out;
    }
    pthread_mutex_lock (&dm.lock);
    tell_cluster (&dm, &dm.cfg);
    pthread_mutex_unlock (&dm.lock);
  }
  /* -- device files (fuse.c): the node's units as files, for losetup.
   * A failure is logged; the units stay on the local NBD socket. */
  if (dm.cluster && dm.cfg.devices[0]) {
    devfs = devfs_start (dm.cfg.devices, err, sizeof err);
    if (!devfs)
      log_error ("%s; no device files", err);
    else
      cluster_set_units_hook (dm.cluster, devfs_units_changed, devfs);
  }
  /* -- end of device files */
  if (start_control (&dm) < 0)
    goto out;
  if (start_metrics (&dm) < 0)
    goto out;
  if (dm.cfg.ndisks == 0)
    log_warn ("%s lists no disk and its globs match none; serving nothing "
              "until a reload (SIGHUP) finds some", dm.cfg.file);

  if (pipe2 (dm.quit_pipe, O_CLOEXEC) < 0
      || pipe2 (dm.stop_pipe, O_CLOEXEC) < 0
      || (dm.sigfd = signalfd (-1, &sigs, SFD_CLOEXEC)) < 0) {
    log_error ("cannot set up signal handling: %s; not started",
               strerror (errno));
    goto out;
  }
  pthread_t sig_thread;
  int r = pthread_create (&sig_thread, NULL, signal_thread, &dm);
  if (r != 0) {
    log_error ("cannot start the signal thread: %s; not started",
               strerror (r));
    goto out;
  }

  log_info ("ready: serving %zu disk%s%s", dm.nserved,
            dm.nserved == 1 ? "" : "s",
            failed ? " (some could not be opened, see above)" : "");
  r = nbd_server_run (dm.server, dm.quit_pipe[0]);

  while (write (dm.stop_pipe[1], "s", 1) < 0 && errno == EINTR)
    ;
  pthread_join (sig_thread, NULL);
  if (r < 0)
    log_error ("the NBD server stopped on an error");
  else
    status = 0;

 out:
  /* The control socket first: no operator's command meets a half-stopped
   * node.  (Freed last: the units may send events until they close.) */
  control_stop (atomic_load (&dm.control));
  /* The metrics next: their threads read the units and the cluster. */
  metrics_stop (dm.metrics);
  /* Device files before the cluster, once it no longer calls them. */
  if (dm.cluster)
    cluster_set_units_hook (dm.cluster, NULL, NULL);
  devfs_stop (devfs);
  /* The cluster next: it leaves the registry, so peers stop using our
   * disks, and closes the node's units. */
  cluster_stop (dm.cluster);
  /* The server next: it finishes its connections and puts its
   * references; then ours, which closes the units. */
  if (dm.server)
    nbd_server_free (dm.server);
  {
    /* How often clients were held back: the operator's hint to raise
     * nbd-buffer-mib (docs/configuration.md). */
    struct nbd_bufpool_stats st;
    nbd_bufpool_stats (&st);
    log_info ("NBD buffers: budget %zu MiB; %lu requests waited for it",
             st.budget >> 20, st.waits);
  }
  for (size_t i = 0; i < dm.nserved; i++)
    export_put (dm.served[i].e);
  free (dm.served);
  for (int i = 0; i < 2; i++) {
    if (dm.quit_pipe[i] >= 0)
      close (dm.quit_pipe[i]);
    if (dm.stop_pipe[i] >= 0)
      close (dm.stop_pipe[i]);
  }
  if (dm.sigfd >= 0)
    close (dm.sigfd);
  control_free (atomic_exchange (&dm.control, NULL));
  log_info ("stopped%s", status ? " on an error" : "");
  config_free (&dm.cfg);
  return status;
}
