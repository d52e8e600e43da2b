/* fuzz-nbd-handshake.c — libFuzzer target: the NBD option haggling
 * (daemon/nbd-handshake.c) from a byte stream, as a client would send it.
 *
 * Input:  1 byte   environment: bits 0-1 TLS mode (0 off, 1 on,
 *                  2-3 require), bit 2 shutting down, bit 3 no exports
 *         4 bytes  client flags
 *         then     options: 16-byte header, payload (truncated input ends
 *                  the session)
 * STARTTLS acknowledged is taken as a TLS handshake that succeeded.
 *
 * Besides the sanitizers, every reply the parser produces is checked to be
 * well formed (magic, the option echoed, lengths that add up), and GO to
 * name an export that exists and that this peer may open.
 *
 * Build and run: fuzzing/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbd-handshake.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static const struct nbd_hs_export exports[] = {
  { "ALPHA$DKA100", "altpath disk, read-write", 64u << 20, 512, false,
    false, true, NULL },
  { "ALPHA$DKA101", "", 8u << 20, 4096, true, false, true, NULL },
  { "secret", "restricted, this peer is not on the list", 1u << 20, 512,
    false, true, false, NULL },
  { "alice-only", "restricted, this peer is alice", 1u << 20, 512, false,
    true, true, NULL },
};

#define NEXPORTS (sizeof exports / sizeof exports[0])

static void
check_replies (const struct nbd_hs_out *out, uint32_t option,
               const struct nbd_hs *hs, const struct nbd_hs_env *env)
{
  size_t pos = 0;

  if (option == NBD_OPT_EXPORT_NAME) {
    if (out->next == NBD_HS_GO && out->len != 10 && out->len != 134)
      abort ();
    if (out->next != NBD_HS_GO && out->len != 0)
      abort ();
    return;
  }
  while (pos < out->len) {
    if (out->len - pos < NBD_OPT_REPLY_HEADER_LEN)
      abort ();
    const uint8_t *p = out->buf + pos;
    if (nbd_get64 (p) != NBD_REP_MAGIC || nbd_get32 (p + 8) != option)
      abort ();
    uint32_t type = nbd_get32 (p + 12), len = nbd_get32 (p + 16);
    if (len > out->len - pos - NBD_OPT_REPLY_HEADER_LEN)
      abort ();
    pos += NBD_OPT_REPLY_HEADER_LEN + len;
    bool last = pos == out->len;
    /* Only the last reply may be final (ACK or an error). */
    if ((type == NBD_REP_ACK || (type & NBD_REP_FLAG_ERROR)) != last)
      abort ();
    if (type == NBD_REP_INFO && len < 2)
      abort ();
    /* The spec's TLS rules: never ERR_TLS_REQD once TLS is up, nor in
     * NOTLS mode; in SELECTIVETLS only for INFO and GO. */
    if (type == NBD_REP_ERR_TLS_REQD
        && (hs->tls_active || env->tls == TLS_OFF
            || (env->tls == TLS_ON && option != NBD_OPT_INFO
                && option != NBD_OPT_GO)))
      abort ();
    /* ABORT is always acknowledged. */
    if (option == NBD_OPT_ABORT && type != NBD_REP_ACK)
      abort ();
  }
  if (out->next == NBD_HS_GO) {
    if (option != NBD_OPT_GO || out->export >= NEXPORTS
        || !exports[out->export].admitted)
      abort ();
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct nbd_hs hs;
  struct nbd_hs_out out = { 0 };
  struct nbd_hs_env env;
  size_t pos = 0;

  if (size < 5)
    return 0;
  uint8_t cfg = data[pos++];
  env.tls = (cfg & 3) == 0 ? TLS_OFF : (cfg & 3) == 1 ? TLS_ON : TLS_REQUIRE;
  env.shutting_down = (cfg & 4) != 0;
  env.exports = exports;
  env.nexports = (cfg & 8) ? 0 : NEXPORTS;

  nbd_hs_init (&hs);
  /* Half the inputs on a connection that can stamp arrivals, so the
   * deadline context (altpath:deadline-ms=N) is offered and parsed. */
  hs.arrival_stamps = (cfg & 16) != 0;
  if (nbd_hs_client_flags (&hs, data + pos) < 0)
    return 0;
  pos += 4;

  while (size - pos >= NBD_OPT_HEADER_LEN) {
    uint32_t option, len;
    enum nbd_hs_header h = nbd_hs_opt_header (&hs, data + pos, &option, &len);
    pos += NBD_OPT_HEADER_LEN;
    if (h == NBD_HS_HDR_HANGUP)
      break;
    if (h == NBD_HS_HDR_TOO_BIG) {
      if (len > NBD_HS_OPT_DISCARD_MAX || len <= NBD_HS_OPT_MAX)
        abort ();
      if (size - pos < len)
        break;
      pos += len;
      nbd_hs_too_big (&hs, option, &out);
    }
    else {
      if (len > NBD_HS_OPT_MAX)
        abort ();
      if (size - pos < len)
        break;
      /* A copy of exactly len bytes, so that ASan sees any overread. */
      uint8_t *payload = malloc (len ? len : 1);
      if (!payload)
        break;
      memcpy (payload, data + pos, len);
      pos += len;
      nbd_hs_option (&hs, &env, option, payload, len, &out);
      free (payload);
    }
    if (out.oom)
      break;
    check_replies (&out, option, &hs, &env);
    if (out.next == NBD_HS_STARTTLS) {
      if (env.tls == TLS_OFF || hs.tls_active)
        abort ();
      nbd_hs_tls_started (&hs);
      if (hs.structured || hs.meta_base)
        abort ();
    }
    else if (out.next == NBD_HS_GO) {
      if (env.tls == TLS_REQUIRE && !hs.tls_active)
        abort ();
      uint16_t f = out.tflags;
      if (!(f & NBD_FLAG_HAS_FLAGS))
        abort ();
      break;
    }
    else if (out.next == NBD_HS_CLOSE)
      break;
  }
  nbd_hs_out_free (&out);
  return 0;
}
