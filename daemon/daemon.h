/* daemon.h — what the files of altpathd share.  altpathd uses libaltpath
 * through its public header only (altpath.h).
 *
 * Sections are headed by the .c file that defines what follows.
 *
 *   main.c ── reads config.c's struct ap_config, opens the node's disks
 *     │       (exports.c: one unit over one direct path per disk), starts
 *     │       the NBD server, waits for signals (SIGTERM/SIGINT: quit,
 *     │       SIGHUP: reload the disk list)
 *     ▼
 *   nbd-server.c ── listeners, accept, one connection per client
 *   nbd-handshake.c ── fixed newstyle option haggling (pure: fuzzed)
 *   nbd-conn.c ── transmission: requests in, replies out
 *   tls.c ── GnuTLS sessions (PSK, X.509)
 *   control.c ── the control socket altpath talks to (control-request.h:
 *                its request parser, pure: fuzzed)
 *   metrics.c ── Prometheus text over HTTP ([metrics]; read only)
 */
#ifndef ALTPATHD_H
#define ALTPATHD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "altpath.h"

/* ------------------------------------------------------------ config.c */

/* The directory of file ("." for a bare name, "/" for one at the root). */
void dir_of (const char *file, char *out, size_t size);

enum tls_mode {
  TLS_OFF,                      /* plaintext only; STARTTLS refused */
  TLS_ON,                       /* STARTTLS offered, plaintext allowed */
  TLS_REQUIRE,                  /* nothing but STARTTLS before TLS is up */
};

struct config_listen {
  bool is_unix;                 /* Unix socket (path) or TCP (host, port) */
  char path[108];               /* sun_path */
  char host[256];
  char port[16];
  enum tls_mode tls;            /* default: require unless loopback/unix */
  bool tls_explicit;            /* set in the file rather than defaulted */
};

struct config_disk {
  char device[AP_NAME_MAX];     /* $4$DKB100 or ALPHA$DKA100 */
  char file[4096];              /* the image file or block device */
  unsigned unit_number;         /* 100 in DKB100 */
  char port_letter;             /* 'B' */
  bool read_only;
  char identity[AP_NAME_MAX];   /* optional WWID/serial override */
  char **allow;                 /* peers (PSK identity or certificate
                                   name) allowed to open it; NULL: any
                                   allowed by the listener */
  size_t nallow;
  unsigned line;                /* where it was configured, for messages */
  bool from_glob;               /* found by its port's glob (replaced on
                                   each config_scan_ports) */
};

struct config_port {
  char letter;                  /* 'A'..'Z' */
  unsigned alloclass;           /* 0: none (node-local port) */
  char glob[4096];              /* optional: disks found by a glob */
  char bus[4096];               /* what the port is attached to, the same
                                   on every node sharing it; default: the
                                   real path of the glob's directory */
  unsigned line;                /* the [port X] header */
  unsigned glob_line;           /* the glob key, for messages */
  bool read_only;               /* default for the port's disks */
  char **allow;                 /* default allow list of the port's disks;
                                   NULL: none */
  size_t nallow;
};

struct config {
  char file[4096];              /* where it was read from */
  char node[64];                /* node name, e.g. ALPHA */
  unsigned node_alloclass;      /* 0: none */
  unsigned nbd_buffer_mib;      /* the NBD server's request buffers, for
                                   the whole daemon (nbd-bufpool.h) */
  struct config_listen *listen;
  size_t nlisten;
  /* TLS */
  char tls_psk_file[4096];      /* user:hexkey lines, as nbdkit/qemu */
  char tls_cert_dir[4096];      /* X.509: ca-cert.pem, server-cert.pem,
                                   server-key.pem, as qemu/nbdkit */
  char tls_verify_peer;         /* X.509: require a client certificate */
  char tls_priority[1024];      /* GnuTLS priority string; "": ours */
  char **allow;                 /* peers allowed on every export; NULL:
                                   any */
  size_t nallow;
  struct config_port *ports;
  size_t nports;
  struct config_disk *disks;    /* listed and globbed, after expansion */
  size_t ndisks;
  /* unit tuning for the served disks */
  unsigned request_timeout_ms;
  unsigned verify_timeout_ms;

  /* [registry]: present → the node joins a cluster (cluster.c) */
  bool cluster;                 /* a [registry] section was given */
  char registry_backend[16];    /* "dir" (default) or "etcd" */
  char registry_dir[4096];      /* dir backend */
  char registry_endpoints[1024];/* etcd: comma-separated URLs */
  /* etcd over https: the CA that signed the members' certificates ("":
   * the system's), and a client certificate for --client-cert-auth */
  char registry_ca_file[4096];
  char registry_cert_file[4096], registry_key_file[4096];
  /* etcd authentication (users and roles): the user, and the password
   * read from password-file when the configuration is read */
  char registry_username[128];
  char registry_password[256];
  char registry_prefix[128];    /* etcd key prefix */
  unsigned registry_lease_ms;

  /* [cluster]: the node's own units (direct + served paths) */
  char advertise[512];          /* the NBD URI peers use to reach this
                                   node; default from the first listener */
  char local_socket[108];       /* local NBD socket exporting the units */
  struct config_listen local_tcp; /* and on loopback TCP, if host[0] */
  unsigned local_request_timeout_ms, local_verify_timeout_ms;
  unsigned checker_interval_ms, failback_ms;
  bool queue_if_no_path;
  unsigned direct_wait_ms;      /* how long to wait for our own direct
                                   path to a shared disk a peer announced
                                   before using it served */
  char client_psk_file[4096];   /* served paths' TLS */
  char client_username[64];
  char client_cert_dir[4096];
  unsigned client_connections, deadline_ms, fence_wait_ms;
  char state_file[4096];        /* the operator's choices (choices.c);
                                   default /var/lib/altpath/NODE.json */
  char fault_dir[4096];         /* tests and demos: trigger files that
                                   inject faults on the direct paths */
  char devices[4096];           /* device files (fuse.c): the directory;
                                   "" for none ('devices = none');
                                   default /run/altpath/dev */

  /* [control]: the socket altpath talks to (control.c) */
  char control_socket[108];     /* default /run/altpath/control.sock */
  bool control_explicit;        /* set in the file: failing to open it
                                   stops the start (else only logged) */
  char control_group[64];       /* may use it besides root; "": none */

  /* [metrics]: Prometheus text over HTTP (metrics.c) */
  bool metrics;                 /* a [metrics] section was given; else
                                   no metrics listener at all */
  char metrics_host[256];       /* numeric address or host name;
                                   default 127.0.0.1 */
  char metrics_port[16];        /* default 9469 */
  bool metrics_allow_remote;    /* a non-loopback address is refused
                                   without 'allow-remote = yes' */
};

/* Parse FILE.  On error returns -1 and writes into err a message naming
 * the file, the line, the key and what is wrong (e.g. "/etc/altpath.conf
 * line 12, key 'alloclass': 'x' is not a number from 1 to 32767"). */
int config_load (const char *file, struct config *cfg, char *err,
                 size_t errlen);
/* Expand port globs into disks (run at start and on each rescan). */
int config_scan_ports (struct config *cfg, char *err, size_t errlen);
void config_free (struct config *cfg);

/* --------------------------------------------------------- nbd-server.c */

/* One disk this node serves.  Refcounted: a reload may drop an export
 * that connections still use; the last reference closes the unit. */
struct export {
  char name[AP_NAME_MAX];       /* the NBD export name: the device name */
  char description[256];
  struct ap_unit *unit;         /* one direct path (invariant 5: never a
                                   served one) */
  bool read_only;
  char **allow;                 /* NULL: anyone the listener admits */
  size_t nallow;
  _Atomic unsigned refs;
};

struct nbd_server;

struct nbd_server_tls {
  const char *psk_file;         /* NULL: no PSK */
  const char *cert_dir;         /* NULL: no X.509 */
  bool verify_peer;
  const char *priority;         /* NULL: the server's own choice */
};

struct nbd_server *nbd_server_new (const struct nbd_server_tls *tls,
                                   char *err, size_t errlen);
int nbd_server_listen (struct nbd_server *s, const struct config_listen *l,
                       char *err, size_t errlen);
/* Replace the export list (takes the references; connections keep the
 * exports they opened). */
void nbd_server_set_exports (struct nbd_server *s, struct export **exports,
                             size_t n);
/* Serve until quit_fd becomes readable; then stop accepting, finish the
 * requests in flight, close every connection, return. */
int nbd_server_run (struct nbd_server *s, int quit_fd);
void nbd_server_free (struct nbd_server *s);

/* What the server's connections have been (metrics.c).  Counted from the
 * server's start; `open` is now. */
struct nbd_server_stats {
  uint64_t accepted;            /* connections accepted */
  uint64_t refused;             /* closed at once: too many, or no memory */
  uint64_t sessions;            /* handshakes that opened an export */
  uint64_t open;                /* connections open now (any phase) */
};
void nbd_server_get_stats (struct nbd_server *s, struct nbd_server_stats *st);

/* ----------------------------------------------------------- exports.c */

/* Open one configured disk for serving: a unit over one direct path.  On
 * error NULL and a message naming the disk and the file. */
struct export *export_open (const struct config *cfg,
                            const struct config_disk *d, char *err,
                            size_t errlen);
/* An export over a unit made elsewhere (the node's own units, exported on
 * the local socket); takes ownership of the unit. */
struct export *export_wrap (const char *name, const char *description,
                            struct ap_unit *u);
struct export *export_get (struct export *e);
/* A shell-friendly alias of a device name: "$4$DKB100" → "4-DKB100",
 * "ALPHA$DKA100" → "ALPHA-DKA100" (leading '$' dropped, '$' → '-'). */
void device_alias (const char *device, char *out, size_t len);
void export_put (struct export *e);     /* NULL is a no-op */

/* ----------------------------------------------------------- choices.c */

/* The operator's choices (pinned and disabled paths) per unit, kept in a
 * file across restarts ([cluster] state-file; format in choices.c). */
struct choices;
/* Read file (a missing one is no choices yet).  On error NULL and a
 * message naming the file and what to do: a file that is there but
 * cannot be read must stop the start. */
struct choices *choices_open (const char *file, const char *node,
                              char *err, size_t errlen);
size_t choices_count (struct choices *cs);     /* units with a choice */
/* unit's choices into *out; false if it has none. */
bool choices_get (struct choices *cs, const char *unit,
                  struct ap_unit_choices *out);
/* unit's choices are now *now: write the file if they changed.  0, or -1
 * and a message (the file and memory are then as before). */
int choices_keep (struct choices *cs, const char *unit,
                  const struct ap_unit_choices *now, char *err,
                  size_t errlen);
void choices_close (struct choices *cs);       /* NULL is a no-op */

/* ----------------------------------------------------------- cluster.c */

/* The node in its cluster (only with a [registry] section): publishes
 * what it reaches directly, builds one unit per disk it can reach (direct
 * path preferred, one served path per serving peer as hidden standbys),
 * exports those units on the local socket, and follows the registry. */
struct cluster;

/* rescan: asked to look for new disks on the ports (a peer announced a
 * disk on a bus we attach, or a file appeared); called on a cluster
 * thread. */
struct cluster *cluster_start (const struct config *cfg,
                               void (*rescan) (void *opaque), void *opaque,
                               char *err, size_t errlen);
/* The disks this node serves now (start, reload, rescan). */
void cluster_set_direct (struct cluster *c, struct export **exports,
                         const struct config_disk *const *disks, size_t n);
void cluster_stop (struct cluster *c);
/* The node's units now: references (export_put each) in a malloc'd
 * array (free it). */
size_t cluster_units (struct cluster *c, struct export ***out);
/* The cluster as this node sees it, as JSON text (free it): node,
 * registry backend and health, live nodes, shared ports and who attaches
 * them, served disks, configuration errors found. */
char *cluster_json (struct cluster *c);
/* fn gets the node's units (references it must put, in an array it must
 * not keep) now and whenever they change, on the cluster thread.  After
 * cluster_set_units_hook (c, NULL, NULL) returns, fn runs no more. */
void cluster_set_units_hook (struct cluster *c,
                             void (*fn) (void *opaque, struct export **u,
                                         size_t n),
                             void *opaque);
/* Every event of every unit of the node also goes to fn (the control
 * socket's watchers), on the unit's thread. */
void cluster_set_event_hook (struct cluster *c, ap_event_fn *fn,
                             void *opaque);
/* For metrics.c: whether the registry answers now (never waits for the
 * network); *backend ("dir", "etcd") and *config_errors (how many
 * configuration errors across nodes were found) if not NULL. */
bool cluster_registry_ok (struct cluster *c, const char **backend,
                          size_t *config_errors);
/* For metrics.c: the connections of the node's local exports of its units
 * (local-socket, local-tcp). */
void cluster_local_nbd_stats (struct cluster *c, struct nbd_server_stats *st);
/* The operator changed unit e's choices (control.c): keep them in the
 * state file.  0, or -1 and a message saying they were not kept. */
int cluster_keep_choices (struct cluster *c, struct export *e, char *err,
                          size_t errlen);

/* ----------------------------------------------------------- control.c */

/* The control socket (docs/cli.md): a Unix socket, mode 0660, group
 * [control] group (else root's), on which root, the daemon's own user and
 * members of that group send one JSON request per line and get one JSON
 * reply per line; "watch" then streams the units' events.
 *
 * What it needs from the rest of the daemon comes through this view, so
 * that control.c knows nothing of main.c's state.  The callbacks run on
 * control threads, never with a control lock held, and may block (a
 * rescan); each client has a thread of its own. */
struct control_view {
  const char *node;             /* this node's name (copied) */
  const char *daemon_version;   /* e.g. "altpathd 0.1" (copied) */
  /* The node's units now (the cluster's, else the served disks'):
   * references (export_put each) in a malloc'd array (free it). */
  size_t (*units) (void *opaque, struct export ***out);
  /* The cluster as JSON text (cluster_json; free it); NULL: the node is
   * not in a cluster. */
  char *(*cluster_json) (void *opaque);
  /* Look for new disks on the ports now; returns when done. */
  void (*rescan) (void *opaque);
  /* The operator changed unit e's choices (switch, unpin, path enable or
   * disable, also one that failed part way): keep them across restarts.
   * 0, or -1 and a message saying what was not kept.  NULL: not kept. */
  int (*keep_choices) (void *opaque, struct export *e, char *err,
                       size_t errlen);
  void *opaque;
};

struct control;

/* Make the socket at path (its directory too; a stale socket there is
 * replaced, a live one is not) and serve it on threads of its own.  group:
 * NULL or "" for none.  On error NULL and a message naming the socket and
 * what to do. */
struct control *control_start (const char *path, const char *group,
                               const struct control_view *view, char *err,
                               size_t errlen);
/* An ap_event_fn (opaque: the struct control) feeding the watchers: give
 * it to cluster_set_event_hook or ap_unit_set_event_cb.  Never blocks
 * (a watcher that reads too slowly loses events, and is told); a no-op
 * once control_stop has begun. */
void control_event (void *opaque, const struct ap_event *ev);
/* Stop: remove the socket, end every client (watchers included), join
 * the threads.  NULL is a no-op. */
void control_stop (struct control *ctl);
/* Free what control_stop left: only once nothing can call control_event
 * any more (the units it was given to are closed).  NULL is a no-op. */
void control_free (struct control *ctl);

/* ----------------------------------------------------------- metrics.c */

/* Metrics for Prometheus (docs/operations.md): GET /metrics on an HTTP
 * listener ([metrics] listen, loopback unless allow-remote), in the text
 * exposition format 0.0.4.  Read only: nothing it serves changes a unit.
 *
 * As for control.c, what it needs from the rest of the daemon comes
 * through a view; the callbacks run on metrics threads with no metrics
 * lock held, once per scrape. */
struct metrics_view {
  const char *node;             /* this node's name (copied) */
  const char *daemon_version;   /* e.g. "altpathd 0.1" (copied) */
  /* The node's units now, as control_view's units (the same function). */
  size_t (*units) (void *opaque, struct export ***out);
  /* How many disks the node serves to peers over NBD now. */
  size_t (*served) (void *opaque);
  /* false: not in a cluster.  Else *healthy, *backend, *config_errors
   * as cluster_registry_ok. */
  bool (*registry) (void *opaque, bool *healthy, const char **backend,
                    size_t *config_errors);
  /* The NBD connections of the server for peers; and, in a cluster, of
   * the local exports of the units (returns false when there are none). */
  void (*nbd_peers) (void *opaque, struct nbd_server_stats *st);
  bool (*nbd_local) (void *opaque, struct nbd_server_stats *st);
  void *opaque;
};

struct metrics;

/* Listen on host:port (TCP; resolved now; a non-loopback address only if
 * allow_remote) and serve on threads of its own.  On error NULL and a
 * message naming the address and what to do. */
struct metrics *metrics_start (const char *host, const char *port,
                               bool allow_remote,
                               const struct metrics_view *view, char *err,
                               size_t errlen);
/* Stop listening, end every client (through the stop pipe: no thread is
 * cancelled), join the threads, free.  NULL is a no-op. */
void metrics_stop (struct metrics *m);

/* -------------------------------------------------------------- fuse.c */

/* Device files (docs/devices.md): the node's units as files in one
 * directory (a FUSE mount, [cluster] devices = DIR), each under its
 * device name ($4$DKB100) and its alias (4-DKB100, device_alias()), of
 * the unit's size, mode 0600 root, direct I/O, for losetup. */
struct devfs;

/* Mount FUSE on dir (made if missing; a dead mount left there is
 * detached) and serve it on threads of its own; no files until
 * devfs_set_units.  On error NULL and a message (not root, no /dev/fuse,
 * dir already a FUSE mount). */
struct devfs *devfs_start (const char *dir, char *err, size_t errlen);
/* The files are now those of these units: takes the references, as
 * nbd_server_set_exports does (pass cluster_units()'s array, then free
 * it).  A unit no longer given loses its names at once; its reference is
 * put once no handle is open on it (a loop device keeps one).  Any
 * thread, not concurrently with devfs_stop. */
void devfs_set_units (struct devfs *fs, struct export **units, size_t n);
/* Unmount and free: ends the follower and the threads, unmounts (lazily
 * if a file is still open: its I/O then fails; a warning names it),
 * waits (at most 10 s) for requests still in the units, puts the units.
 * NULL is a no-op. */
void devfs_stop (struct devfs *fs);

#endif
