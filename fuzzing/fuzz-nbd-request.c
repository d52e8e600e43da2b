/* fuzz-nbd-request.c — libFuzzer target: decoding and checking NBD
 * transmission requests (daemon/nbd-request.h).
 *
 * Input:  8 bytes  export size
 *         1 byte   minimum block size: 1 << (b % 17)
 *         2 bytes  transmission flags
 *         1 byte   bit 0 structured replies, bit 1 base:allocation
 *         then     28-byte request headers (a WRITE's payload is skipped
 *                  as the server would read it, if the input holds it)
 *
 * Whatever the parser says must be safe to act on: a request it lets
 * through lies within the export, is aligned, is not over the maximum
 * block size when it carries data, writes only to writable exports, and
 * its payload is exactly its length; an error it returns is one of the
 * spec's values.
 *
 * Build and run: fuzzing/run.sh.
 */
#include <stdint.h>
#include <stdlib.h>

#include "nbd-request.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static bool
is_nbd_error (uint32_t e)
{
  switch (e) {
  case NBD_EPERM: case NBD_EIO: case NBD_ENOMEM: case NBD_EINVAL:
  case NBD_ENOSPC: case NBD_EOVERFLOW: case NBD_ENOTSUP: case NBD_ESHUTDOWN:
    return true;
  default:
    return false;
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct nbd_req_limits l;
  size_t pos = 12;

  if (size < pos)
    return 0;
  l.size = nbd_get64 (data);
  l.min_block = 1u << (data[8] % 17);
  l.max_block = NBD_MAX_BLOCK;
  l.tflags = nbd_get16 (data + 9) | NBD_FLAG_HAS_FLAGS;
  l.structured = data[11] & 1;
  l.meta_base = (data[11] & 2) && l.structured;

  while (size - pos >= NBD_REQUEST_LEN) {
    struct nbd_req r;
    struct nbd_req_verdict v;

    if (nbd_req_decode (data + pos, &r) < 0)
      break;
    pos += NBD_REQUEST_LEN;
    nbd_req_check (&r, &l, &v);

    switch (v.action) {
    case NBD_REQ_DISC:
      return 0;
    case NBD_REQ_HANGUP:
      if (r.type != NBD_CMD_WRITE || r.length <= NBD_REQ_DISCARD_MAX)
        abort ();
      return 0;
    case NBD_REQ_ERROR:
      if (!is_nbd_error (v.error) || !v.why)
        abort ();
      if (v.payload != (r.type == NBD_CMD_WRITE ? r.length : 0))
        abort ();
      break;
    case NBD_REQ_DO:
      if (v.payload != (r.type == NBD_CMD_WRITE ? r.length : 0))
        abort ();
      switch (r.type) {
      case NBD_CMD_FLUSH:
        if (r.offset || r.length)
          abort ();
        break;
      case NBD_CMD_READ: case NBD_CMD_WRITE: case NBD_CMD_CACHE:
      case NBD_CMD_WRITE_ZEROES:
        if (r.length > l.max_block)
          abort ();
        /* fallthrough */
      case NBD_CMD_TRIM: case NBD_CMD_BLOCK_STATUS:
        if (r.offset > l.size || r.length > l.size - r.offset)
          abort ();
        if (r.offset % l.min_block || r.length % l.min_block)
          abort ();
        if ((r.type == NBD_CMD_WRITE || r.type == NBD_CMD_TRIM
             || r.type == NBD_CMD_WRITE_ZEROES)
            && (l.tflags & NBD_FLAG_READ_ONLY))
          abort ();
        if (r.type == NBD_CMD_BLOCK_STATUS && (!l.meta_base || !r.length))
          abort ();
        if (r.type == NBD_CMD_WRITE_ZEROES
            && (r.flags & NBD_CMD_FLAG_FAST_ZERO))
          abort ();
        break;
      default:
        abort ();               /* an unknown command let through */
      }
      break;
    }
    /* Skip the payload the server would read (or drop). */
    if (v.payload > size - pos)
      break;
    pos += v.payload;
  }
  return 0;
}
