/* tls.c — GnuTLS for the NBD server: PSK and X.509, as qemu-nbd and nbdkit.
 *
 *   PSK    a file of "username:hexkey" lines, as `psktool -u alice -p
 *          keys.psk` writes and nbdkit --tls-psk / qemu tls-creds-psk read.
 *          The peer's name is its PSK username.
 *   X.509  a directory with ca-cert.pem, server-cert.pem, server-key.pem
 *          (and optionally ca-crl.pem), as qemu and nbdkit.  With
 *          verify_peer the client must present a certificate the CA
 *          signed; the peer's name is that certificate's CN.  Without it a
 *          client certificate is asked for but optional, and its CN counts
 *          only if it verifies.
 *
 * Both may be configured at once; the client's credentials pick one.  The
 * export allow-lists (struct export.allow) are matched against the peer's
 * name by the connection code.
 *
 * TLS 1.2 and 1.3 only (the spec: MUST support 1.2, SHOULD NOT offer
 * older by default).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#if defined(__aarch64__)
#include <sys/auxv.h>
#include <asm/hwcap.h>
#endif

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "nbd-tls.h"

struct nbd_tls {
  gnutls_psk_server_credentials_t psk;   /* NULL: no PSK */
  gnutls_certificate_credentials_t x509; /* NULL: no X.509 */
  bool verify_peer;
  bool have_ca;
  gnutls_priority_t priority;
};

struct nbd_tls_session {
  gnutls_session_t session;
  int fd;
  nbd_tls_pull_fn *pull;        /* nbd_tls_set_pull(); NULL: recv(2) */
  nbd_tls_pull_timeout_fn *pull_timeout;
  void *pull_opaque;
};

static void
seterr (char *err, size_t errlen, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

static void
seterr (char *err, size_t errlen, const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (err, errlen, fmt, ap);
  va_end (ap);
}

/* GnuTLS reads the PSK file itself at each handshake (so a rewritten
 * file takes effect for new connections); check it once here so that a
 * mistake is reported at start, with its line, rather than as failed
 * handshakes.  The keys themselves are never logged. */
static int
check_psk_file (const char *file, char *err, size_t errlen)
{
  FILE *f = fopen (file, "r");
  char line[1024];
  unsigned lineno = 0, keys = 0;

  if (!f) {
    seterr (err, errlen, "TLS PSK file %s: %s (create it with `psktool -u "
            "NAME -p %s`)", file, strerror (errno), file);
    return -1;
  }
  while (fgets (line, sizeof line, f)) {
    lineno++;
    size_t n = strcspn (line, "\r\n");
    line[n] = '\0';
    if (n == 0)
      continue;
    char *colon = strchr (line, ':');
    bool ok = colon && colon != line && colon[1] != '\0';
    if (ok)
      for (char *p = colon + 1; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')
              || (*p >= 'A' && *p <= 'F')))
          ok = false;
    if (ok && strlen (colon + 1) % 2 != 0)
      ok = false;
    if (!ok) {
      fclose (f);
      seterr (err, errlen, "TLS PSK file %s line %u: not a 'username:hexkey' "
              "line (the format psktool writes)", file, lineno);
      return -1;
    }
    keys++;
  }
  fclose (f);
  if (keys == 0) {
    seterr (err, errlen, "TLS PSK file %s has no keys (add one with "
            "`psktool -u NAME -p %s`)", file, file);
    return -1;
  }
  return 0;
}

static bool
file_exists (const char *path)
{
  struct stat st;
  return stat (path, &st) == 0;
}

static int
load_x509 (struct nbd_tls *t, const char *dir, char *err, size_t errlen)
{
  char ca[4200], cert[4200], key[4200], crl[4200];
  int r;

  snprintf (ca, sizeof ca, "%s/ca-cert.pem", dir);
  snprintf (cert, sizeof cert, "%s/server-cert.pem", dir);
  snprintf (key, sizeof key, "%s/server-key.pem", dir);
  snprintf (crl, sizeof crl, "%s/ca-crl.pem", dir);

  r = gnutls_certificate_allocate_credentials (&t->x509);
  if (r < 0) {
    seterr (err, errlen, "TLS: %s", gnutls_strerror (r));
    return -1;
  }
  if (!file_exists (cert) || !file_exists (key)) {
    seterr (err, errlen, "TLS certificate directory %s must hold "
            "server-cert.pem and server-key.pem (as for qemu-nbd and "
            "nbdkit)", dir);
    return -1;
  }
  r = gnutls_certificate_set_x509_key_file (t->x509, cert, key,
                                            GNUTLS_X509_FMT_PEM);
  if (r < 0) {
    seterr (err, errlen, "TLS: cannot load %s with %s: %s", cert, key,
            gnutls_strerror (r));
    return -1;
  }
  if (file_exists (ca)) {
    r = gnutls_certificate_set_x509_trust_file (t->x509, ca,
                                                GNUTLS_X509_FMT_PEM);
    if (r < 0) {
      seterr (err, errlen, "TLS: cannot load CA certificate %s: %s", ca,
              gnutls_strerror (r));
      return -1;
    }
    t->have_ca = true;
  }
  else if (t->verify_peer) {
    seterr (err, errlen, "TLS: verifying client certificates needs the CA "
            "certificate %s", ca);
    return -1;
  }
  if (file_exists (crl)) {
    r = gnutls_certificate_set_x509_crl_file (t->x509, crl,
                                              GNUTLS_X509_FMT_PEM);
    if (r < 0) {
      seterr (err, errlen, "TLS: cannot load CRL %s: %s", crl,
              gnutls_strerror (r));
      return -1;
    }
  }
  gnutls_certificate_set_known_dh_params (t->x509, GNUTLS_SEC_PARAM_MEDIUM);
  return 0;
}

/* The server picks the cipher (%SERVER_PRECEDENCE) so that a client's
 * preference for ChaCha20 cannot cost both ends several times the CPU.
 * With AES and carry-less multiply in the CPU, AES-GCM runs at gigabytes
 * a second where ChaCha20-Poly1305 runs at a few hundred megabytes
 * (gnutls-cli --benchmark-ciphers); without them ChaCha20 is the faster.
 * AES-128 comes before AES-256: TLS 1.3 binds an external PSK to SHA-256,
 * which rules out TLS_AES_256_GCM_SHA384, and a client that offers only
 * that and ChaCha20 would otherwise get ChaCha20. */
static const char *
cipher_order (void)
{
  static const char aes_first[] =
    ":-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305"
    ":+AES-128-CCM:+AES-256-CCM:+AES-256-CBC:+AES-128-CBC";
  static const char chacha_first[] =
    ":-CIPHER-ALL:+CHACHA20-POLY1305:+AES-128-GCM:+AES-256-GCM"
    ":+AES-128-CCM:+AES-256-CCM:+AES-256-CBC:+AES-128-CBC";
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init ();
  if (__builtin_cpu_supports ("aes") && __builtin_cpu_supports ("pclmul"))
    return aes_first;
#elif defined(__aarch64__)
  unsigned long hw = getauxval (AT_HWCAP);
  if ((hw & HWCAP_AES) && (hw & HWCAP_PMULL))
    return aes_first;
#endif
  return chacha_first;
}

struct nbd_tls *
nbd_tls_new (const struct nbd_server_tls *cfg, char *err, size_t errlen)
{
  struct nbd_tls *t;
  const char *errpos = NULL;
  int r;

  if (errlen)
    err[0] = '\0';
  if (!cfg || (!cfg->psk_file && !cfg->cert_dir))
    return NULL;
  t = calloc (1, sizeof *t);
  if (!t) {
    seterr (err, errlen, "TLS: out of memory");
    return NULL;
  }
  t->verify_peer = cfg->verify_peer;

  if (cfg->psk_file) {
    if (check_psk_file (cfg->psk_file, err, errlen) < 0)
      goto fail;
    r = gnutls_psk_allocate_server_credentials (&t->psk);
    if (r == 0)
      r = gnutls_psk_set_server_credentials_file (t->psk, cfg->psk_file);
    if (r < 0) {
      seterr (err, errlen, "TLS PSK file %s: %s", cfg->psk_file,
              gnutls_strerror (r));
      goto fail;
    }
    gnutls_psk_set_server_known_dh_params (t->psk, GNUTLS_SEC_PARAM_MEDIUM);
  }
  if (cfg->cert_dir && load_x509 (t, cfg->cert_dir, err, errlen) < 0)
    goto fail;

  /* The operator's string replaces ours whole; the PSK key exchanges are
   * added to either, as qemu does, or a PSK could never be used. */
  char ours[256], prio[1280];
  snprintf (ours, sizeof ours, "NORMAL:%%SERVER_PRECEDENCE%s"
            ":-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2", cipher_order ());
  snprintf (prio, sizeof prio, "%s%s", cfg->priority ? cfg->priority : ours,
            t->psk ? ":+ECDHE-PSK:+DHE-PSK:+PSK" : "");
  r = gnutls_priority_init (&t->priority, prio, &errpos);
  if (r < 0) {
    seterr (err, errlen, "TLS priority string '%s' refused at '%s': %s",
            prio, errpos ? errpos : "?", gnutls_strerror (r));
    goto fail;
  }
  return t;

 fail:
  nbd_tls_free (t);
  return NULL;
}

void
nbd_tls_free (struct nbd_tls *t)
{
  if (!t)
    return;
  if (t->priority)
    gnutls_priority_deinit (t->priority);
  if (t->psk)
    gnutls_psk_free_server_credentials (t->psk);
  if (t->x509)
    gnutls_certificate_free_credentials (t->x509);
  free (t);
}

/* The CN of the peer's verified certificate into peer; -1 if it has none
 * or it does not verify. */
static int
peer_cn (gnutls_session_t s, char *peer, size_t peerlen, char *err,
         size_t errlen)
{
  const gnutls_datum_t *certs;
  unsigned ncerts = 0, status = 0;
  gnutls_x509_crt_t crt;
  size_t sz = peerlen;
  int r;

  certs = gnutls_certificate_get_peers (s, &ncerts);
  if (!certs || ncerts == 0) {
    seterr (err, errlen, "the client sent no certificate");
    return -1;
  }
  r = gnutls_certificate_verify_peers3 (s, NULL, &status);
  if (r < 0 || status != 0) {
    gnutls_datum_t txt = { NULL, 0 };
    if (r >= 0)
      gnutls_certificate_verification_status_print (status,
                                                    GNUTLS_CRT_X509, &txt, 0);
    seterr (err, errlen, "client certificate not accepted: %s",
            r < 0 ? gnutls_strerror (r)
            : txt.data ? (const char *) txt.data : "verification failed");
    gnutls_free (txt.data);
    return -1;
  }
  if (gnutls_x509_crt_init (&crt) < 0) {
    seterr (err, errlen, "out of memory");
    return -1;
  }
  r = gnutls_x509_crt_import (crt, &certs[0], GNUTLS_X509_FMT_DER);
  if (r == 0)
    r = gnutls_x509_crt_get_dn_by_oid (crt, GNUTLS_OID_X520_COMMON_NAME, 0,
                                       0, peer, &sz);
  gnutls_x509_crt_deinit (crt);
  if (r < 0) {
    seterr (err, errlen, "client certificate has no usable CN: %s",
            gnutls_strerror (r));
    return -1;
  }
  return 0;
}

struct nbd_tls_session *
nbd_tls_accept (struct nbd_tls *t, int fd, unsigned timeout_ms, char *peer,
                size_t peerlen, char *err, size_t errlen)
{
  struct nbd_tls_session *ts = calloc (1, sizeof *ts);
  gnutls_session_t s = NULL;
  int r;

  peer[0] = '\0';
  if (!ts) {
    seterr (err, errlen, "out of memory");
    return NULL;
  }
  r = gnutls_init (&s, GNUTLS_SERVER | GNUTLS_NO_SIGNAL);
  if (r < 0) {
    seterr (err, errlen, "gnutls_init: %s", gnutls_strerror (r));
    free (ts);
    return NULL;
  }
  ts->session = s;
  r = gnutls_priority_set (s, t->priority);
  if (r == 0 && t->psk)
    r = gnutls_credentials_set (s, GNUTLS_CRD_PSK, t->psk);
  if (r == 0 && t->x509) {
    r = gnutls_credentials_set (s, GNUTLS_CRD_CERTIFICATE, t->x509);
    gnutls_certificate_server_set_request (s, t->verify_peer
                                           ? GNUTLS_CERT_REQUIRE
                                           : t->have_ca ? GNUTLS_CERT_REQUEST
                                           : GNUTLS_CERT_IGNORE);
  }
  if (r < 0) {
    seterr (err, errlen, "TLS session setup: %s", gnutls_strerror (r));
    goto fail;
  }
  ts->fd = fd;
  gnutls_transport_set_int (s, fd);
  gnutls_handshake_set_timeout (s, timeout_ms);
  struct timespec t0, now;
  clock_gettime (CLOCK_MONOTONIC, &t0);
  for (;;) {
    r = gnutls_handshake (s);
    if (r >= 0 || gnutls_error_is_fatal (r))
      break;
    /* E_AGAIN from a blocking socket means SO_RCVTIMEO expired: give up
     * at the handshake's own deadline rather than spin. */
    clock_gettime (CLOCK_MONOTONIC, &now);
    if ((uint64_t) (now.tv_sec - t0.tv_sec) * 1000
        + (uint64_t) ((now.tv_nsec - t0.tv_nsec) / 1000000) >= timeout_ms) {
      r = GNUTLS_E_TIMEDOUT;
      break;
    }
  }
  if (r < 0) {
    seterr (err, errlen, "TLS handshake failed: %s", gnutls_strerror (r));
    goto fail;
  }

  switch (gnutls_auth_get_type (s)) {
  case GNUTLS_CRD_PSK: {
    const char *u = gnutls_psk_server_get_username (s);
    snprintf (peer, peerlen, "%s", u ? u : "");
    break;
  }
  case GNUTLS_CRD_CERTIFICATE:
    if (t->verify_peer) {
      if (peer_cn (s, peer, peerlen, err, errlen) < 0)
        goto fail;
    }
    else if (t->have_ca && gnutls_certificate_get_peers (s, NULL)) {
      char e2[16];
      /* Optional certificate: its name counts only if it verifies. */
      if (peer_cn (s, peer, peerlen, e2, sizeof e2) < 0)
        peer[0] = '\0';
    }
    break;
  default:
    seterr (err, errlen, "TLS: unexpected authentication type");
    goto fail;
  }
  return ts;

 fail:
  gnutls_deinit (s);
  free (ts);
  return NULL;
}

void
nbd_tls_describe (struct nbd_tls_session *ts, char *buf, size_t len)
{
  char *d = gnutls_session_get_desc (ts->session);
  snprintf (buf, len, "%s", d ? d : "?");
  gnutls_free (d);
}

ssize_t
nbd_tls_recv (struct nbd_tls_session *ts, void *buf, size_t n)
{
  for (;;) {
    ssize_t r = gnutls_record_recv (ts->session, buf, n);
    if (r >= 0)
      return r;
    if (r == GNUTLS_E_INTERRUPTED)
      continue;
    if (r == GNUTLS_E_AGAIN) {
      /* A blocking socket returns this only when SO_RCVTIMEO expired. */
      errno = EAGAIN;
      return -1;
    }
    if (r == GNUTLS_E_PREMATURE_TERMINATION)
      return 0;                 /* closed without close_notify */
    errno = EIO;
    return -1;
  }
}

bool
nbd_tls_pending (struct nbd_tls_session *ts)
{
  return gnutls_record_check_pending (ts->session) > 0;
}

static int
send_all (gnutls_session_t s, const uint8_t *p, size_t n)
{
  while (n > 0) {
    ssize_t r = gnutls_record_send (s, p, n);
    if (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN)
      continue;
    if (r < 0) {
      errno = EPIPE;
      return -1;
    }
    p += r;
    n -= (size_t) r;
  }
  return 0;
}

int
nbd_tls_sendv (struct nbd_tls_session *ts, const struct iovec *iov,
               int iovcnt)
{
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++)
    total += iov[i].iov_len;

  /* Many small replies: cork them into few records.  Big reads: send
   * them straight, or the cork buffer would copy megabytes. */
  bool cork = iovcnt > 1 && total <= 256 * 1024;
  if (cork)
    gnutls_record_cork (ts->session);
  for (int i = 0; i < iovcnt; i++)
    if (send_all (ts->session, iov[i].iov_base, iov[i].iov_len) < 0)
      return -1;
  if (cork) {
    int r;
    do
      r = gnutls_record_uncork (ts->session, GNUTLS_RECORD_WAIT);
    while (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN);
    if (r < 0) {
      errno = EPIPE;
      return -1;
    }
  }
  return 0;
}

static ssize_t
pull_trampoline (gnutls_transport_ptr_t ptr, void *buf, size_t n)
{
  struct nbd_tls_session *ts = ptr;
  return ts->pull (ts->pull_opaque, buf, n);
}

static int
pull_timeout_trampoline (gnutls_transport_ptr_t ptr, unsigned ms)
{
  struct nbd_tls_session *ts = ptr;
  return ts->pull_timeout (ts->pull_opaque, ms);
}

void
nbd_tls_set_pull (struct nbd_tls_session *ts, nbd_tls_pull_fn *pull,
                  nbd_tls_pull_timeout_fn *pull_timeout, void *opaque)
{
  ts->pull = pull;
  ts->pull_timeout = pull_timeout;
  ts->pull_opaque = opaque;
  /* The receiving side gets our functions and pointer; the sending side
   * keeps GnuTLS's own writev on the socket (its pointer stays the fd). */
  gnutls_transport_set_ptr2 (ts->session, ts,
                             (gnutls_transport_ptr_t) (intptr_t) ts->fd);
  gnutls_transport_set_pull_function (ts->session, pull_trampoline);
  gnutls_transport_set_pull_timeout_function (ts->session,
                                              pull_timeout_trampoline);
}

void
nbd_tls_close (struct nbd_tls_session *ts, bool bye)
{
  if (!ts)
    return;
  /* SHUT_WR: send close_notify without waiting for the peer's. */
  if (bye)
    gnutls_bye (ts->session, GNUTLS_SHUT_WR);
  gnutls_deinit (ts->session);
  free (ts);
}
