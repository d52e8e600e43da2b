/* nbd-internal.h — what nbd-server.c and nbd-conn.c share (the NBD
 * server's private interface; daemon.h has the public one).
 *
 *   nbd-server.c                      nbd-conn.c (one thread per client,
 *   ────────────                      plus a writer thread once in
 *   listeners, accept ──────────────► transmission)
 *   export list  ◄─ snapshot per option during the handshake
 *   stop fd      ◄─ polled between requests: readable once shutting down
 *   reaping      ◄─ nbd_server_conn_done() when a connection is over
 *
 * Lock order: the server's lock, then a connection's lock (no code path
 * takes both today).
 */
#ifndef ALTPATHD_NBD_INTERNAL_H
#define ALTPATHD_NBD_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "daemon.h"
#include "nbd-tls.h"

/* Requests of one connection in flight at once (a pool of slots, each with
 * its own buffer: no allocation per request). */
#define NBD_CONN_SLOTS        128u
/* Request buffers: one budget for the daemon (nbd-bufpool.h). */
/* Handshake: longest wait for the client's next bytes, and for TLS. */
#ifndef NBD_HANDSHAKE_TIMEOUT_MS
#define NBD_HANDSHAKE_TIMEOUT_MS 30000u
#endif
/* Shutdown: how long connections may take to send their last replies
 * before their sockets are shut down under them. */
#define NBD_SHUTDOWN_GRACE_MS 10000u
/* Most connections at once; more are closed at accept.  Each peer opens
 * `connections` (default 2) per disk it reaches served, so 1024 stopped a
 * node serving two peers at 256 disks (bench/scale.sh).  The real limits
 * are the descriptors (altpathd raises its soft limit to the hard one)
 * and threads (two per connection); request buffers are bounded apart
 * (nbd-bufpool.h). */
#define NBD_MAX_CONNS         16384u

/* ------------------------------------------------------- nbd-server.c */

struct nbd_server;
struct nbd_conn;

struct nbd_tls *nbd_server_tls_creds (struct nbd_server *s);
/* Readable once the server is shutting down (never read from it). */
int nbd_server_stop_fd (struct nbd_server *s);
bool nbd_server_stopping (struct nbd_server *s);
/* The current exports, each with a reference taken; release with
 * nbd_server_exports_put.  *n may be 0 (and the result NULL). */
struct export **nbd_server_exports_get (struct nbd_server *s, size_t *n);
void nbd_server_exports_put (struct export **v, size_t n);
/* The connection thread is about to return: the server may join it. */
void nbd_server_conn_done (struct nbd_server *s, void *link);
/* A connection's handshake opened an export (counted for metrics). */
void nbd_server_session_opened (struct nbd_server *s);

/* --------------------------------------------------------- nbd-conn.c */

/* A new connection on fd (accepted; the connection owns fd from here). */
struct nbd_conn *nbd_conn_new (struct nbd_server *s, void *link, int fd,
                               enum tls_mode tls, const char *addr);
/* Start its thread.  -1 on failure (then free it with nbd_conn_free). */
int nbd_conn_start (struct nbd_conn *c);
/* Shut its socket down under it (shutdown grace expired). */
void nbd_conn_force_close (struct nbd_conn *c);
/* Join its thread (if started) and free it. */
void nbd_conn_free (struct nbd_conn *c);
/* The library's completion-run hook (ap_set_completion_hook): sends the
 * replies the run's completions put off. */
void nbd_conn_completion_run_end (void);

#endif /* ALTPATHD_NBD_INTERNAL_H */
