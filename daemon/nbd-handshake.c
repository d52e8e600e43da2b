/* nbd-handshake.c — fixed newstyle option haggling (see nbd-handshake.h).
 *
 * Pure: bytes in, bytes out.  No sockets, no locks, no units; the export
 * list comes in as a snapshot (struct nbd_hs_env) and the chosen export
 * goes out as an index.  Fuzzed by fuzzing/fuzz-nbd-handshake.c.
 *
 * TLS policy (the spec's three modes, per listener):
 *   TLS_OFF      NOTLS: STARTTLS gets ERR_POLICY.
 *   TLS_ON       SELECTIVETLS: everything works in plaintext except the
 *                exports restricted to listed peers, which need TLS (a peer
 *                has no name without it): GO/INFO on them get ERR_TLS_REQD,
 *                LIST hides them.
 *   TLS_REQUIRE  FORCEDTLS: before TLS, every option but STARTTLS and
 *                ABORT gets ERR_TLS_REQD, and EXPORT_NAME hangs up.
 * After STARTTLS nothing negotiated in plaintext survives.
 *
 * Metadata contexts: base:allocation (every extent is allocated data),
 * and altpath's request deadline "altpath:deadline-ms=N" (docs/served.md),
 * offered only when the connection said it can take arrival times from
 * the kernel (hs->arrival_stamps): a server that agreed must be able to
 * keep the promise.  Other namespaces are ignored, as the spec asks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbd-handshake.h"

/* ---------------------------------------------------------- out buffer */

static uint8_t *
out_grow (struct nbd_hs_out *out, size_t n)
{
  if (out->oom)
    return NULL;
  if (n > SIZE_MAX / 2 - out->len) {
    out->oom = true;
    return NULL;
  }
  if (out->len + n > out->cap) {
    size_t cap = out->cap ? out->cap : 256;
    while (cap < out->len + n)
      cap *= 2;
    uint8_t *b = realloc (out->buf, cap);
    if (!b) {
      out->oom = true;
      out->next = NBD_HS_CLOSE;
      out->why = "out of memory";
      return NULL;
    }
    out->buf = b;
    out->cap = cap;
  }
  uint8_t *p = out->buf + out->len;
  out->len += n;
  return p;
}

/* One option reply: header and payload (which may be NULL when plen is
 * 0).  Returns a pointer to the payload area, for callers that fill it in
 * place, or NULL when out of memory. */
static uint8_t *
reply (struct nbd_hs_out *out, uint32_t option, uint32_t type,
       const void *payload, size_t plen)
{
  uint8_t *p = out_grow (out, NBD_OPT_REPLY_HEADER_LEN + plen);
  if (!p)
    return NULL;
  nbd_put64 (p, NBD_REP_MAGIC);
  nbd_put32 (p + 8, option);
  nbd_put32 (p + 12, type);
  nbd_put32 (p + 16, (uint32_t) plen);
  if (payload && plen)
    memcpy (p + 20, payload, plen);
  return p + 20;
}

/* An error reply with a message for a human (the spec allows a string). */
static void
reply_err (struct nbd_hs_out *out, uint32_t option, uint32_t type,
           const char *msg)
{
  reply (out, option, type, msg, strlen (msg));
}

/* The same, naming an export: "<pre>'<name>'<post>".  The name may come
 * from the client, so only its printable bytes are copied, and at most 80
 * of them. */
static void
reply_err_name (struct nbd_hs_out *out, uint32_t option, uint32_t type,
                const char *pre, const char *name, size_t nlen,
                const char *post)
{
  char msg[256];
  size_t n = 0;

  for (const char *s = pre; *s && n < 100; s++)
    msg[n++] = *s;
  msg[n++] = '\'';
  for (size_t i = 0; i < nlen && i < 80; i++) {
    unsigned char c = (unsigned char) name[i];
    msg[n++] = c >= 0x20 && c < 0x7f ? (char) c : '?';
  }
  if (nlen > 80)
    for (int k = 0; k < 3; k++)
      msg[n++] = '.';
  msg[n++] = '\'';
  for (const char *s = post; *s && n < sizeof msg; s++)
    msg[n++] = *s;
  reply (out, option, type, msg, n);
}

/* ------------------------------------------------------------- helpers */

void
nbd_hs_init (struct nbd_hs *hs)
{
  memset (hs, 0, sizeof *hs);
}

/* Forget the selected metadata contexts. */
static void
meta_clear (struct nbd_hs *hs)
{
  hs->meta_base = false;
  hs->meta_deadline_ms = 0;
  hs->meta_export[0] = '\0';
}

/* Entering transmission with export name: contexts selected for another
 * export do not count. */
static void
meta_keep_for (struct nbd_hs *hs, const char *name)
{
  if ((hs->meta_base || hs->meta_deadline_ms)
      && strcmp (hs->meta_export, name) != 0)
    meta_clear (hs);
}

void
nbd_hs_out_free (struct nbd_hs_out *out)
{
  free (out->buf);
  memset (out, 0, sizeof *out);
}

void
nbd_hs_greeting (uint8_t out[NBD_GREETING_LEN])
{
  nbd_put64 (out, NBD_MAGIC);
  nbd_put64 (out + 8, NBD_IHAVEOPT);
  nbd_put16 (out + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
}

int
nbd_hs_client_flags (struct nbd_hs *hs, const uint8_t in[4])
{
  uint32_t f = nbd_get32 (in);

  /* The spec: the server MUST drop the connection on unknown flags. */
  if (f & ~(uint32_t) (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))
    return -1;
  hs->fixed = (f & NBD_FLAG_C_FIXED_NEWSTYLE) != 0;
  hs->no_zeroes = (f & NBD_FLAG_C_NO_ZEROES) != 0;
  return 0;
}

enum nbd_hs_header
nbd_hs_opt_header (struct nbd_hs *hs, const uint8_t in[NBD_OPT_HEADER_LEN],
                   uint32_t *option, uint32_t *len)
{
  *option = nbd_get32 (in + 8);
  *len = nbd_get32 (in + 12);
  if (nbd_get64 (in) != NBD_IHAVEOPT)
    return NBD_HS_HDR_HANGUP;
  if (++hs->options > NBD_HS_MAX_OPTIONS)
    return NBD_HS_HDR_HANGUP;
  /* A client that did not say fixed newstyle can only send EXPORT_NAME:
   * anything else would get a reply it does not expect. */
  if (!hs->fixed && *option != NBD_OPT_EXPORT_NAME)
    return NBD_HS_HDR_HANGUP;
  /* EXPORT_NAME cannot be answered with an error: a name the spec does not
   * allow ends the connection without reading it. */
  if (*option == NBD_OPT_EXPORT_NAME && *len > NBD_MAX_STRING)
    return NBD_HS_HDR_HANGUP;
  if (*len <= NBD_HS_OPT_MAX)
    return NBD_HS_HDR_OK;
  if (*len <= NBD_HS_OPT_DISCARD_MAX)
    return NBD_HS_HDR_TOO_BIG;
  return NBD_HS_HDR_HANGUP;
}

static void
out_reset (struct nbd_hs_out *out)
{
  out->len = 0;
  out->oom = false;
  out->next = NBD_HS_CONTINUE;
  out->export = 0;
  out->tflags = 0;
  out->why = NULL;
}

void
nbd_hs_too_big (struct nbd_hs *hs, uint32_t option, struct nbd_hs_out *out)
{
  out_reset (out);
  if (option == NBD_OPT_EXPORT_NAME) {
    out->next = NBD_HS_CLOSE;
    out->why = "NBD_OPT_EXPORT_NAME too long";
    return;
  }
  reply_err (out, option, NBD_REP_ERR_TOO_BIG,
             "option payload larger than 64 KiB");
}

void
nbd_hs_tls_started (struct nbd_hs *hs)
{
  hs->tls_active = true;
  hs->structured = false;
  meta_clear (hs);
}

uint16_t
nbd_hs_tflags (const struct nbd_hs *hs, const struct nbd_hs_export *e)
{
  uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_CACHE
    /* Every connection reaches the same unit, which has no cache of its
     * own (O_DIRECT), and a write is replied to only once the unit
     * completed it: a FLUSH on any connection covers them all. */
    | NBD_FLAG_CAN_MULTI_CONN;

  if (e->read_only)
    f |= NBD_FLAG_READ_ONLY;
  else
    f |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES
      | NBD_FLAG_SEND_FAST_ZERO;
  /* Reads always go out in one chunk, so "don't fragment" costs nothing;
   * the spec ties the flag to structured replies. */
  if (hs->structured)
    f |= NBD_FLAG_SEND_DF;
  return f;
}

/* Find an export by name.  "" is the default export: the first one this
 * peer may open (or the first one, so that the refusal says why). */
static const struct nbd_hs_export *
find_export (const struct nbd_hs_env *env, const uint8_t *name, size_t len,
             size_t *index)
{
  if (len == 0) {
    if (env->nexports == 0)
      return NULL;
    *index = 0;
    for (size_t i = 0; i < env->nexports; i++)
      if (env->exports[i].admitted) {
        *index = i;
        break;
      }
    return &env->exports[*index];
  }
  for (size_t i = 0; i < env->nexports; i++) {
    const char *n = env->exports[i].name;
    if (strlen (n) == len && memcmp (n, name, len) == 0) {
      *index = i;
      return &env->exports[i];
    }
  }
  return NULL;
}

/* A length-prefixed string inside an option payload.  Returns false if
 * it does not fit or is longer than the spec allows. */
static bool
get_string (const uint8_t *data, uint32_t len, uint32_t *pos,
            const uint8_t **s, uint32_t *slen)
{
  if (len - *pos < 4)
    return false;
  uint32_t n = nbd_get32 (data + *pos);
  *pos += 4;
  if (n > NBD_MAX_STRING || n > len - *pos)
    return false;
  *s = data + *pos;
  *slen = n;
  *pos += n;
  return true;
}

/* May this connection open e?  Fills the refusal into out if not. */
static bool
admit (const struct nbd_hs *hs, const struct nbd_hs_env *env,
       const struct nbd_hs_export *e, uint32_t option,
       struct nbd_hs_out *out)
{
  if (e->admitted)
    return true;
  /* SELECTIVETLS: ERR_TLS_REQD only for INFO and GO (the spec forbids it
   * for any other option), and never once TLS is up. */
  if (e->restricted && !hs->tls_active && env->tls != TLS_OFF
      && (option == NBD_OPT_INFO || option == NBD_OPT_GO))
    reply_err_name (out, option, NBD_REP_ERR_TLS_REQD, "export ", e->name,
                    strlen (e->name),
                    " is only for authenticated peers: use TLS");
  else
    reply_err_name (out, option, NBD_REP_ERR_POLICY, "export ", e->name,
                    strlen (e->name), " is not open to this peer");
  return false;
}

/* ------------------------------------------------------------- options */

static void
opt_export_name (struct nbd_hs *hs, const struct nbd_hs_env *env,
                 const uint8_t *data, uint32_t len, struct nbd_hs_out *out)
{
  size_t i;
  const struct nbd_hs_export *e;

  out->next = NBD_HS_CLOSE;
  if (env->tls == TLS_REQUIRE && !hs->tls_active) {
    out->why = "NBD_OPT_EXPORT_NAME before STARTTLS on a TLS-only listener";
    return;
  }
  if (env->shutting_down) {
    out->why = "shutting down";
    return;
  }
  e = find_export (env, data, len, &i);
  if (!e) {
    out->why = "NBD_OPT_EXPORT_NAME: no such export";
    return;
  }
  if (!e->admitted) {
    out->why = "NBD_OPT_EXPORT_NAME: export not open to this peer";
    return;
  }
  uint8_t *p = out_grow (out, 10 + (hs->no_zeroes ? 0 : 124));
  if (!p)
    return;
  out->tflags = nbd_hs_tflags (hs, e);
  nbd_put64 (p, e->size);
  nbd_put16 (p + 8, out->tflags);
  if (!hs->no_zeroes)
    memset (p + 10, 0, 124);
  /* A metadata context counts only for the export it was chosen for. */
  meta_keep_for (hs, e->name);
  out->next = NBD_HS_GO;
  out->export = i;
}

static void
opt_info_go (struct nbd_hs *hs, const struct nbd_hs_env *env,
             uint32_t option, const uint8_t *data, uint32_t len,
             struct nbd_hs_out *out)
{
  uint32_t pos = 0, nlen;
  const uint8_t *name;
  size_t i;

  if (!get_string (data, len, &pos, &name, &nlen) || len - pos < 2) {
    reply_err (out, option, NBD_REP_ERR_INVALID,
               "malformed NBD_OPT_INFO/GO (or a name over 4096 bytes)");
    return;
  }
  uint16_t nreq = nbd_get16 (data + pos);
  pos += 2;
  if ((uint32_t) nreq * 2 != len - pos) {
    reply_err (out, option, NBD_REP_ERR_INVALID,
               "NBD_OPT_INFO/GO: the information request count does not "
               "match the option length");
    return;
  }
  bool want_name = false, want_desc = false;
  for (uint16_t k = 0; k < nreq; k++) {
    uint16_t r = nbd_get16 (data + pos + 2u * k);
    if (r == NBD_INFO_NAME)
      want_name = true;
    else if (r == NBD_INFO_DESCRIPTION)
      want_desc = true;
    /* NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE are always sent; the spec
     * says to ignore requests we do not understand. */
  }

  const struct nbd_hs_export *e = find_export (env, name, nlen, &i);
  if (!e) {
    reply_err_name (out, option, NBD_REP_ERR_UNKNOWN, "no export named ",
                    (const char *) name, nlen, "");
    return;
  }
  if (!admit (hs, env, e, option, out))
    return;

  uint16_t tflags = nbd_hs_tflags (hs, e);
  uint8_t *p = reply (out, option, NBD_REP_INFO, NULL, 12);
  if (!p)
    return;
  nbd_put16 (p, NBD_INFO_EXPORT);
  nbd_put64 (p + 2, e->size);
  nbd_put16 (p + 10, tflags);

  if (want_name || nlen == 0) {
    size_t n = strlen (e->name);
    p = reply (out, option, NBD_REP_INFO, NULL, 2 + n);
    if (!p)
      return;
    nbd_put16 (p, NBD_INFO_NAME);
    memcpy (p + 2, e->name, n);
  }
  if (want_desc) {
    size_t n = strlen (e->description);
    if (n > NBD_MAX_STRING)
      n = NBD_MAX_STRING;
    p = reply (out, option, NBD_REP_INFO, NULL, 2 + n);
    if (!p)
      return;
    nbd_put16 (p, NBD_INFO_DESCRIPTION);
    memcpy (p + 2, e->description, n);
  }
  /* Always sent: the unit does direct I/O, so the minimum is a real
   * constraint (requests not aligned to it get EINVAL). */
  p = reply (out, option, NBD_REP_INFO, NULL, 14);
  if (!p)
    return;
  nbd_put16 (p, NBD_INFO_BLOCK_SIZE);
  nbd_put32 (p + 2, nbd_min_block (e->block_size));
  nbd_put32 (p + 6, nbd_preferred_block (e->block_size));
  nbd_put32 (p + 10, NBD_MAX_BLOCK);

  if (!reply (out, option, NBD_REP_ACK, NULL, 0))
    return;
  if (option == NBD_OPT_GO) {
    meta_keep_for (hs, e->name);
    out->next = NBD_HS_GO;
    out->export = i;
    out->tflags = tflags;
  }
}

static void
opt_list (struct nbd_hs *hs, const struct nbd_hs_env *env, uint32_t len,
          struct nbd_hs_out *out)
{
  if (len != 0) {
    reply_err (out, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
               "NBD_OPT_LIST takes no data");
    return;
  }
  for (size_t i = 0; i < env->nexports; i++) {
    const struct nbd_hs_export *e = &env->exports[i];
    if (!e->admitted)
      continue;                 /* not shown to peers that cannot open it */
    size_t n = strlen (e->name), d = strlen (e->description);
    if (d > NBD_MAX_STRING)
      d = NBD_MAX_STRING;
    uint8_t *p = reply (out, NBD_OPT_LIST, NBD_REP_SERVER, NULL, 4 + n + d);
    if (!p)
      return;
    nbd_put32 (p, (uint32_t) n);
    memcpy (p + 4, e->name, n);
    memcpy (p + 4 + n, e->description, d);
  }
  reply (out, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

static void
reply_meta (struct nbd_hs_out *out, uint32_t option, uint32_t id,
            const char *name)
{
  size_t n = strlen (name);
  uint8_t *p = reply (out, option, NBD_REP_META_CONTEXT, NULL, 4 + n);
  if (!p)
    return;
  nbd_put32 (p, id);
  memcpy (p + 4, name, n);
}

uint32_t
nbd_hs_deadline_query (const uint8_t *q, uint32_t len)
{
  const size_t plen = strlen (NBD_META_ALTPATH_DEADLINE);
  uint32_t n = 0;

  if (len <= plen || memcmp (q, NBD_META_ALTPATH_DEADLINE, plen) != 0)
    return 0;
  /* Canonical decimal only (no sign, no leading zero, no blanks), so that
   * the name we echo is exactly the one the client asked for and can
   * match in nbd_can_meta_context().  Seven digits already exceed the
   * maximum. */
  if (len - plen > 7 || q[plen] == '0')
    return 0;
  for (uint32_t i = (uint32_t) plen; i < len; i++) {
    if (q[i] < '0' || q[i] > '9')
      return 0;
    n = n * 10 + (uint32_t) (q[i] - '0');
  }
  if (n < NBD_META_DEADLINE_MIN_MS || n > NBD_META_DEADLINE_MAX_MS)
    return 0;
  return n;
}

static void
opt_meta (struct nbd_hs *hs, const struct nbd_hs_env *env, uint32_t option,
          const uint8_t *data, uint32_t len, struct nbd_hs_out *out)
{
  bool set = option == NBD_OPT_SET_META_CONTEXT;
  uint32_t pos = 0, nlen, nq;
  const uint8_t *name;
  size_t i;

  /* SET replaces the selection even when it fails (spec). */
  if (set)
    meta_clear (hs);
  if (!hs->structured) {
    reply_err (out, option, NBD_REP_ERR_INVALID,
               "negotiate structured replies before metadata contexts");
    return;
  }
  if (!get_string (data, len, &pos, &name, &nlen) || len - pos < 4) {
    reply_err (out, option, NBD_REP_ERR_INVALID,
               "malformed metadata context option");
    return;
  }
  nq = nbd_get32 (data + pos);
  pos += 4;
  /* Check the whole request before answering any of it. */
  bool base_all = false, base_alloc = false, altpath_all = false;
  uint32_t deadline = 0;        /* the first valid deadline query */
  uint32_t q = 0, qpos = pos;
  for (; q < nq; q++) {
    const uint8_t *s;
    uint32_t slen, d;
    if (!get_string (data, len, &qpos, &s, &slen))
      break;
    if (slen == 5 && memcmp (s, "base:", 5) == 0)
      base_all = true;
    else if (slen == strlen (NBD_META_BASE_ALLOCATION)
             && memcmp (s, NBD_META_BASE_ALLOCATION, slen) == 0)
      base_alloc = true;
    else if (slen == strlen (NBD_META_ALTPATH_NS)
             && memcmp (s, NBD_META_ALTPATH_NS, slen) == 0)
      altpath_all = true;
    else if ((d = nbd_hs_deadline_query (s, slen)) != 0 && deadline == 0)
      deadline = d;
    /* Other namespaces, unknown leaves of base: and altpath:, a deadline
     * out of range, and deadlines after the first are ignored: two
     * deadlines on one connection would contradict each other. */
  }
  if (q != nq || qpos != len) {
    reply_err (out, option, NBD_REP_ERR_INVALID,
               "malformed metadata context query list");
    return;
  }

  const struct nbd_hs_export *e = find_export (env, name, nlen, &i);
  if (!e) {
    reply_err_name (out, option, NBD_REP_ERR_UNKNOWN, "no export named ",
                    (const char *) name, nlen, "");
    return;
  }
  if (!admit (hs, env, e, option, out))
    return;

  /* A deadline is promised only where it can be kept. */
  if (!hs->arrival_stamps) {
    deadline = 0;
    altpath_all = false;
  }
  char dname[sizeof NBD_META_ALTPATH_DEADLINE + 16];
  if (set) {
    /* "base:" alone selects nothing in SET (spec); nor does "altpath:". */
    if (base_alloc) {
      reply_meta (out, option, NBD_META_BASE_ALLOCATION_ID,
                  NBD_META_BASE_ALLOCATION);
      hs->meta_base = true;
    }
    if (deadline) {
      snprintf (dname, sizeof dname, "%s%u", NBD_META_ALTPATH_DEADLINE,
                deadline);
      reply_meta (out, option, NBD_META_ALTPATH_DEADLINE_ID, dname);
      hs->meta_deadline_ms = deadline;
    }
    if (hs->meta_base || hs->meta_deadline_ms)
      snprintf (hs->meta_export, sizeof hs->meta_export, "%s", e->name);
  }
  else {
    /* LIST: ids are reserved (0).  No query lists base:allocation only:
     * the deadline is a family of contexts, each meaningful only with the
     * N a client proposes; "altpath:" shows one with the default N. */
    if (nq == 0 || base_all || base_alloc)
      reply_meta (out, option, 0, NBD_META_BASE_ALLOCATION);
    if (altpath_all || deadline) {
      snprintf (dname, sizeof dname, "%s%u", NBD_META_ALTPATH_DEADLINE,
                deadline ? deadline : NBD_META_DEADLINE_LIST_MS);
      reply_meta (out, option, 0, dname);
    }
  }
  reply (out, option, NBD_REP_ACK, NULL, 0);
}

void
nbd_hs_option (struct nbd_hs *hs, const struct nbd_hs_env *env,
               uint32_t option, const uint8_t *data, uint32_t len,
               struct nbd_hs_out *out)
{
  out_reset (out);

  if (option == NBD_OPT_EXPORT_NAME) {
    opt_export_name (hs, env, data, len, out);
    return;
  }
  /* ABORT is acknowledged whatever the TLS mode (the spec; qemu-nbd 7.2
   * gets this wrong) and whether or not we are shutting down. */
  if (option == NBD_OPT_ABORT) {
    reply (out, option, NBD_REP_ACK, NULL, 0);
    out->next = NBD_HS_CLOSE;
    out->why = "client sent NBD_OPT_ABORT";
    return;
  }
  if (env->tls == TLS_REQUIRE && !hs->tls_active
      && option != NBD_OPT_STARTTLS) {
    reply_err (out, option, NBD_REP_ERR_TLS_REQD,
               "this listener requires TLS: send NBD_OPT_STARTTLS first");
    return;
  }
  if (env->shutting_down) {
    reply_err (out, option, NBD_REP_ERR_SHUTDOWN,
               "the server is shutting down");
    return;
  }

  switch (option) {
  case NBD_OPT_STARTTLS:
    if (len != 0)
      reply_err (out, option, NBD_REP_ERR_INVALID,
                 "NBD_OPT_STARTTLS takes no data");
    else if (env->tls == TLS_OFF)
      reply_err (out, option, NBD_REP_ERR_POLICY,
                 "TLS is not enabled on this listener");
    else if (hs->tls_active)
      reply_err (out, option, NBD_REP_ERR_INVALID,
                 "TLS is already active");
    else if (reply (out, option, NBD_REP_ACK, NULL, 0))
      out->next = NBD_HS_STARTTLS;
    return;

  case NBD_OPT_LIST:
    opt_list (hs, env, len, out);
    return;

  case NBD_OPT_INFO:
  case NBD_OPT_GO:
    opt_info_go (hs, env, option, data, len, out);
    return;

  case NBD_OPT_STRUCTURED_REPLY:
    if (len != 0) {
      reply_err (out, option, NBD_REP_ERR_INVALID,
                 "NBD_OPT_STRUCTURED_REPLY takes no data");
      return;
    }
    hs->structured = true;
    reply (out, option, NBD_REP_ACK, NULL, 0);
    return;

  case NBD_OPT_LIST_META_CONTEXT:
  case NBD_OPT_SET_META_CONTEXT:
    opt_meta (hs, env, option, data, len, out);
    return;

  default:
    reply_err (out, option, NBD_REP_ERR_UNSUP, "option not supported");
    return;
  }
}
