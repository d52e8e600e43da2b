/* nbd-handshake.h — the fixed newstyle option haggling as pure functions.
 *
 * Nothing here touches a socket, a lock or a unit: the connection code
 * (nbd-conn.c) reads bytes, hands them to these functions with a snapshot
 * of what the server exports (struct nbd_hs_env), and sends the bytes they
 * put into struct nbd_hs_out.  That is what lets fuzzing/fuzz-nbd-handshake.c
 * drive the whole option parser from a byte buffer.
 *
 *   conn                               nbd-handshake.c
 *   ────                               ───────────────
 *   send nbd_hs_greeting()
 *   read 4 bytes ───────────────────►  nbd_hs_client_flags()
 *   loop:
 *     read 16 bytes ────────────────►  nbd_hs_opt_header()  OK / TOO_BIG /
 *     read payload                                          HANGUP
 *     (or discard it) ──────────────►  nbd_hs_option() / nbd_hs_too_big()
 *     send out.buf ◄───────────────── replies, and what comes next:
 *                                      CONTINUE, STARTTLS, GO, CLOSE
 *     STARTTLS: TLS handshake, then ►  nbd_hs_tls_started()
 */
#ifndef ALTPATHD_NBD_HANDSHAKE_H
#define ALTPATHD_NBD_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon.h"             /* enum tls_mode */
#include "nbd-proto.h"

/* Option payloads up to this are read and parsed.  The largest sensible
 * one (NBD_OPT_GO with a 4096-byte name and every information request)
 * is far below it. */
#define NBD_HS_OPT_MAX          (64u * 1024)
/* Larger payloads up to this are read and thrown away, then refused with
 * NBD_REP_ERR_TOO_BIG; beyond it the client is hung up on. */
#define NBD_HS_OPT_DISCARD_MAX  (16u * 1024 * 1024)
/* A client that haggles longer than this many options is hung up on. */
#define NBD_HS_MAX_OPTIONS      4096u

/* The negotiation state of one connection. */
struct nbd_hs {
  bool fixed;                   /* client set NBD_FLAG_C_FIXED_NEWSTYLE */
  bool no_zeroes;               /* client set NBD_FLAG_C_NO_ZEROES */
  bool tls_active;              /* TLS is up (nbd_hs_tls_started) */
  bool structured;              /* structured replies negotiated */
  bool meta_base;               /* base:allocation selected ... */
  uint32_t meta_deadline_ms;    /* altpath:deadline-ms=N selected (N), or
                                   0 ... */
  char meta_export[NBD_MAX_STRING + 1]; /* ... for this (canonical) export */
  unsigned options;             /* options seen so far */
  bool arrival_stamps;          /* set by the caller after nbd_hs_init:
                                   the connection can take each request's
                                   arrival time from the kernel, so it may
                                   agree to a request deadline (without
                                   it the deadline context is neither
                                   listed nor selected) */
};

/* One export as this connection may see it. */
struct nbd_hs_export {
  const char *name;             /* canonical name */
  const char *description;      /* "" if none */
  uint64_t size;                /* bytes */
  uint32_t block_size;          /* the unit's logical block size */
  bool read_only;
  bool restricted;              /* only listed peers may open it */
  bool admitted;                /* this connection's peer may open it */
  void *handle;                 /* for the caller (struct export *) */
};

/* What the server offers this connection, when the option arrives. */
struct nbd_hs_env {
  const struct nbd_hs_export *exports;
  size_t nexports;
  enum tls_mode tls;            /* the listener's TLS mode */
  bool shutting_down;           /* answer options with ERR_SHUTDOWN */
};

/* What to do after sending out.buf. */
enum nbd_hs_next {
  NBD_HS_CONTINUE,              /* read the next option */
  NBD_HS_STARTTLS,              /* run the TLS handshake, then continue */
  NBD_HS_GO,                    /* enter transmission with export */
  NBD_HS_CLOSE,                 /* close the connection */
};

struct nbd_hs_out {
  uint8_t *buf;                 /* bytes to send, in order (malloc'd, */
  size_t len, cap;              /*  kept across calls; free with _free) */
  enum nbd_hs_next next;
  size_t export;                /* GO: index into env->exports */
  uint16_t tflags;              /* GO: transmission flags sent */
  bool oom;                     /* out of memory: close */
  const char *why;              /* CLOSE: the reason, for the log */
};

void nbd_hs_init (struct nbd_hs *hs);
void nbd_hs_out_free (struct nbd_hs_out *out);

/* The server's first 18 bytes. */
void nbd_hs_greeting (uint8_t out[NBD_GREETING_LEN]);

/* The client's 32-bit flags.  0, or -1: hang up (unknown flags). */
int nbd_hs_client_flags (struct nbd_hs *hs, const uint8_t in[4]);

enum nbd_hs_header {
  NBD_HS_HDR_OK,                /* read *len bytes, call nbd_hs_option */
  NBD_HS_HDR_TOO_BIG,           /* discard *len bytes, call nbd_hs_too_big */
  NBD_HS_HDR_HANGUP,            /* bad magic, absurd length, non-fixed
                                   client, too many options: close */
};
enum nbd_hs_header nbd_hs_opt_header (struct nbd_hs *hs,
                                      const uint8_t in[NBD_OPT_HEADER_LEN],
                                      uint32_t *option, uint32_t *len);

/* Answer one option whose whole payload is data[0..len).  Fills out
 * (resetting it first). */
void nbd_hs_option (struct nbd_hs *hs, const struct nbd_hs_env *env,
                    uint32_t option, const uint8_t *data, uint32_t len,
                    struct nbd_hs_out *out);

/* Answer an option whose payload was too big to read (and was thrown
 * away): NBD_REP_ERR_TOO_BIG, or CLOSE for NBD_OPT_EXPORT_NAME. */
void nbd_hs_too_big (struct nbd_hs *hs, uint32_t option,
                     struct nbd_hs_out *out);

/* TLS is up: forget everything negotiated in plaintext. */
void nbd_hs_tls_started (struct nbd_hs *hs);

/* The transmission flags of an export for this negotiation. */
uint16_t nbd_hs_tflags (const struct nbd_hs *hs,
                        const struct nbd_hs_export *e);

/* The block size constraints we advertise for a unit block size. */
static inline uint32_t
nbd_min_block (uint32_t unit_bs)
{
  return unit_bs ? unit_bs : 512;
}
static inline uint32_t
nbd_preferred_block (uint32_t unit_bs)
{
  uint32_t m = nbd_min_block (unit_bs);
  return m > NBD_PREFERRED_BLOCK ? m : NBD_PREFERRED_BLOCK;
}

/* The metadata contexts we offer, and their ids. */
#define NBD_META_BASE_ALLOCATION    "base:allocation"
#define NBD_META_BASE_ALLOCATION_ID 1u

/* altpath's request deadline (docs/served.md): a client that selects
 * "altpath:deadline-ms=N" learns that this server refuses every request it
 * cannot start within N ms of the request's arrival at the server host.
 * The name selected is the query itself; N is a decimal without leading
 * zeros in [MIN, MAX].  LIST with the query "altpath:" shows the context
 * with the default N.  It has no block status meaning: BLOCK_STATUS
 * reports one extent of status 0 for it. */
#define NBD_META_ALTPATH_NS          "altpath:"
#define NBD_META_ALTPATH_DEADLINE    "altpath:deadline-ms="
#define NBD_META_ALTPATH_DEADLINE_ID 2u
#define NBD_META_DEADLINE_MIN_MS     100u
#define NBD_META_DEADLINE_MAX_MS     600000u
#define NBD_META_DEADLINE_LIST_MS    2000u

/* N of a query "altpath:deadline-ms=N" of len bytes (not NUL-terminated),
 * or 0 if it is not one, or N is outside the range or not in canonical
 * form. */
uint32_t nbd_hs_deadline_query (const uint8_t *q, uint32_t len);

#endif /* ALTPATHD_NBD_HANDSHAKE_H */
