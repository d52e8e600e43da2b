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
 */
#ifndef ALTPATHD_H
#define ALTPATHD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "altpath.h"

/* ------------------------------------------------------------ config.c */

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
  struct config_listen *listen;
  size_t nlisten;
  /* TLS */
  char tls_psk_file[4096];      /* user:hexkey lines, as nbdkit/qemu */
  char tls_cert_dir[4096];      /* X.509: ca-cert.pem, server-cert.pem,
                                   server-key.pem, as qemu/nbdkit */
  char tls_verify_peer;         /* X.509: require a client certificate */
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

/* ----------------------------------------------------------- exports.c */

/* Open one configured disk for serving: a unit over one direct path.  On
 * error NULL and a message naming the disk and the file. */
struct export *export_open (const struct config *cfg,
                            const struct config_disk *d, char *err,
                            size_t errlen);
struct export *export_get (struct export *e);
void export_put (struct export *e);     /* NULL is a no-op */

#endif
