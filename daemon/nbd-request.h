/* nbd-request.h — decoding and checking one transmission request, as pure
 * functions (static inline: the fuzz target fuzzing/fuzz-nbd-request.c
 * includes this header and nothing else of the daemon).
 *
 *   28 header bytes ── nbd_req_decode ──► struct nbd_req
 *   struct nbd_req + what was negotiated (struct nbd_req_limits)
 *                   ── nbd_req_check ───► struct nbd_req_verdict:
 *       DO       submit it (after reading `payload` bytes into its buffer)
 *       ERROR    reply with `error` (after reading and dropping `payload`)
 *       DISC     the client said goodbye: stop reading
 *       HANGUP   protocol violation we cannot stay in sync after: close
 *
 * The order of the checks decides which error a bad request gets, so it
 * is fixed here: unknown command, flags not valid for it, write on a
 * read-only export (EPERM), too long (EINVAL), unaligned (EINVAL), out of
 * range (ENOSPC for writes, EINVAL otherwise), then FAST_ZERO (ENOTSUP:
 * we never know that zeroing is faster than writing).
 */
#ifndef ALTPATHD_NBD_REQUEST_H
#define ALTPATHD_NBD_REQUEST_H

#include <stdbool.h>
#include <stdint.h>

#include "nbd-proto.h"

/* A WRITE longer than the maximum block size is refused; its payload is
 * still read and dropped (to stay in sync) up to this, beyond which the
 * client is hung up on (the spec allows it above 32 MiB). */
#define NBD_REQ_DISCARD_MAX  (64u * 1024 * 1024)

struct nbd_req {
  uint16_t flags;               /* NBD_CMD_FLAG_* */
  uint16_t type;                /* NBD_CMD_* */
  uint64_t cookie;              /* the client's handle, echoed */
  uint64_t offset;
  uint32_t length;
};

/* What the handshake settled, and the export's shape. */
struct nbd_req_limits {
  uint64_t size;                /* export size in bytes */
  uint32_t min_block;           /* alignment of offset and length */
  uint32_t max_block;           /* longest READ/WRITE/CACHE/WRITE_ZEROES */
  uint16_t tflags;              /* transmission flags sent */
  bool structured;              /* structured replies negotiated */
  bool meta_base;               /* base:allocation selected */
};

enum nbd_req_action {
  NBD_REQ_DO,
  NBD_REQ_ERROR,
  NBD_REQ_DISC,
  NBD_REQ_HANGUP,
};

struct nbd_req_verdict {
  enum nbd_req_action action;
  uint32_t error;               /* ERROR: an NBD_E* value */
  uint32_t payload;             /* bytes following the header to read
                                   (DO) or to drop (ERROR) */
  const char *why;              /* ERROR/HANGUP: for the reply or the log */
};

/* -1 if the magic is wrong (hang up: we cannot resynchronise). */
static inline int
nbd_req_decode (const uint8_t in[NBD_REQUEST_LEN], struct nbd_req *r)
{
  if (nbd_get32 (in) != NBD_REQUEST_MAGIC)
    return -1;
  r->flags = nbd_get16 (in + 4);
  r->type = nbd_get16 (in + 6);
  r->cookie = nbd_get64 (in + 8);
  r->offset = nbd_get64 (in + 16);
  r->length = nbd_get32 (in + 24);
  return 0;
}

static inline void
nbd_req_refuse (struct nbd_req_verdict *v, uint32_t error, const char *why)
{
  v->action = NBD_REQ_ERROR;
  v->error = error;
  v->why = why;
}

static inline void
nbd_req_check (const struct nbd_req *r, const struct nbd_req_limits *l,
               struct nbd_req_verdict *v)
{
  uint32_t allowed;
  bool writes = false, data_sized = false;

  v->action = NBD_REQ_DO;
  v->error = 0;
  v->payload = 0;
  v->why = NULL;

  /* The payload of a WRITE follows whatever we think of the request. */
  if (r->type == NBD_CMD_WRITE) {
    if (r->length > NBD_REQ_DISCARD_MAX) {
      v->action = NBD_REQ_HANGUP;
      v->why = "NBD_CMD_WRITE payload over 64 MiB";
      return;
    }
    v->payload = r->length;
  }

  switch (r->type) {
  case NBD_CMD_DISC:
    v->action = NBD_REQ_DISC;
    return;
  case NBD_CMD_READ:
    allowed = NBD_CMD_FLAG_FUA | (l->structured ? NBD_CMD_FLAG_DF : 0);
    data_sized = true;
    break;
  case NBD_CMD_WRITE:
    allowed = NBD_CMD_FLAG_FUA;
    writes = data_sized = true;
    break;
  case NBD_CMD_FLUSH:
    allowed = NBD_CMD_FLAG_FUA;
    break;
  case NBD_CMD_TRIM:
    allowed = NBD_CMD_FLAG_FUA;
    writes = true;
    break;
  case NBD_CMD_CACHE:
    allowed = NBD_CMD_FLAG_FUA;
    data_sized = true;
    break;
  case NBD_CMD_WRITE_ZEROES:
    allowed = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE
      | ((l->tflags & NBD_FLAG_SEND_FAST_ZERO) ? NBD_CMD_FLAG_FAST_ZERO : 0);
    writes = true;
    break;
  case NBD_CMD_BLOCK_STATUS:
    allowed = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
    break;
  default:
    nbd_req_refuse (v, NBD_EINVAL, "unknown command");
    return;
  }
  if (r->flags & ~allowed) {
    nbd_req_refuse (v, NBD_EINVAL, "command flags not valid for this command");
    return;
  }

  if (r->type == NBD_CMD_FLUSH) {
    if (r->offset != 0 || r->length != 0)
      nbd_req_refuse (v, NBD_EINVAL, "NBD_CMD_FLUSH with offset or length");
    return;
  }
  if (r->type == NBD_CMD_BLOCK_STATUS && !(l->structured && l->meta_base)) {
    nbd_req_refuse (v, NBD_EINVAL,
                    "NBD_CMD_BLOCK_STATUS without a metadata context");
    return;
  }
  if (writes && (l->tflags & NBD_FLAG_READ_ONLY)) {
    nbd_req_refuse (v, NBD_EPERM, "the export is read-only");
    return;
  }
  if (r->length > l->max_block
      && (data_sized || r->type == NBD_CMD_WRITE_ZEROES)
      && !(r->type == NBD_CMD_WRITE_ZEROES
           && (r->flags & NBD_CMD_FLAG_FAST_ZERO))) {
    /* The spec asks EINVAL here; EOVERFLOW is only for DF reads, and ours
     * never fragment. */
    nbd_req_refuse (v, NBD_EINVAL, "request longer than the maximum block "
                    "size (32 MiB)");
    return;
  }
  if (l->min_block > 1
      && (r->offset % l->min_block || r->length % l->min_block)) {
    nbd_req_refuse (v, NBD_EINVAL, "offset or length not a multiple of the "
                    "minimum block size");
    return;
  }
  if (r->offset > l->size || r->length > l->size - r->offset) {
    nbd_req_refuse (v, writes && r->type != NBD_CMD_TRIM
                    ? NBD_ENOSPC : NBD_EINVAL,
                    "request beyond the end of the export");
    return;
  }
  if (r->type == NBD_CMD_BLOCK_STATUS && r->length == 0) {
    nbd_req_refuse (v, NBD_EINVAL, "NBD_CMD_BLOCK_STATUS of length 0");
    return;
  }
  if (r->type == NBD_CMD_WRITE_ZEROES && (r->flags & NBD_CMD_FLAG_FAST_ZERO)) {
    nbd_req_refuse (v, NBD_ENOTSUP, "zeroing is not known to be faster than "
                    "writing");
    return;
  }
}

#endif /* ALTPATHD_NBD_REQUEST_H */
