/* nbd-tls.h — the NBD server's TLS (GnuTLS), defined in tls.c.
 *
 * One struct nbd_tls per server holds the credentials (PSK file and/or an
 * X.509 directory, read at start); one struct nbd_tls_session per
 * connection after NBD_OPT_STARTTLS.  A session may be read by one thread
 * and written by another at the same time (GnuTLS allows one sender and
 * one receiver): the connection's reader and writer threads do exactly
 * that.
 */
#ifndef ALTPATHD_NBD_TLS_H
#define ALTPATHD_NBD_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "daemon.h"

/* Longest peer name kept (PSK username or certificate CN). */
#define NBD_TLS_PEER_MAX 256

struct nbd_tls;
struct nbd_tls_session;

/* Read the credentials.  cfg with neither psk_file nor cert_dir: returns
 * NULL with err[0] == '\0' (no TLS).  On error NULL and a message naming
 * the file and what to do. */
struct nbd_tls *nbd_tls_new (const struct nbd_server_tls *cfg, char *err,
                             size_t errlen);
void nbd_tls_free (struct nbd_tls *t);  /* NULL is a no-op */

/* Run the server side of the TLS handshake on fd (blocking, bounded by
 * timeout_ms).  On success the peer's name — the PSK username, or the CN
 * of a client certificate that the CA verified; "" if none — goes into
 * peer.  On failure NULL and a message (the caller closes fd). */
struct nbd_tls_session *nbd_tls_accept (struct nbd_tls *t, int fd,
                                        unsigned timeout_ms, char *peer,
                                        size_t peerlen, char *err,
                                        size_t errlen);

/* The negotiated protocol, key exchange and cipher, as GnuTLS names them
 * ("(TLS1.3)--(AES-128-GCM)" with a PSK), into buf. */
void nbd_tls_describe (struct nbd_tls_session *s, char *buf, size_t len);
/* Up to n bytes: > 0 read, 0 end of stream, -1 error (errno set; EAGAIN
 * when SO_RCVTIMEO expired). */
ssize_t nbd_tls_recv (struct nbd_tls_session *s, void *buf, size_t n);
/* Decrypted bytes are waiting (poll would not see them). */
bool nbd_tls_pending (struct nbd_tls_session *s);
/* Send every byte of iov: 0, or -1 (errno set). */
int nbd_tls_sendv (struct nbd_tls_session *s, const struct iovec *iov,
                   int iovcnt);
/* Read the session's records through pull instead of recv(2) on its
 * socket: up to n bytes, > 0, 0 at end of stream, -1 with errno (EINTR,
 * EAGAIN retried by GnuTLS).  pull_timeout waits up to ms for data as
 * poll(2) does: > 0 ready, 0 timeout, -1 error.  The connection uses this
 * to take the kernel's arrival time of what it reads (nbd-conn.c,
 * docs/served.md).  Call once, after nbd_tls_accept, from the reading
 * thread; sending is unaffected. */
typedef ssize_t nbd_tls_pull_fn (void *opaque, void *buf, size_t n);
typedef int nbd_tls_pull_timeout_fn (void *opaque, unsigned ms);
void nbd_tls_set_pull (struct nbd_tls_session *s, nbd_tls_pull_fn *pull,
                       nbd_tls_pull_timeout_fn *pull_timeout, void *opaque);
/* bye: send close_notify first (a clean end; not after an error). */
void nbd_tls_close (struct nbd_tls_session *s, bool bye);

#endif /* ALTPATHD_NBD_TLS_H */
