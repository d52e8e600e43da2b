/* errors.c — the last error of each thread, and what counts as a path
 * fault.
 *
 * As in libnbd, a failing call records a message naming the thing and
 * what to do, plus the errno, in thread-local storage; the caller reads
 * them with ap_get_error() / ap_get_errno().
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char last_error[512];
static _Thread_local int last_errno;

int
ap_set_error (int errnum, const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (last_error, sizeof last_error, fmt, ap);
  va_end (ap);
  last_errno = errnum;
  errno = errnum;
  return -1;
}

const char *
ap_get_error (void)
{
  return last_error[0] ? last_error : "no error";
}

int
ap_get_errno (void)
{
  return last_errno;
}

/* Errors that say the request (or the data on the disk) is at fault, not
 * the way to the disk: another path would give the same answer, so failing
 * over would only hide it.  Everything else — EIO, timeouts, a lost
 * connection, a cancelled request — blames the path. */
bool
ap_error_is_path_fault (int err)
{
  if (err < 0)
    err = -err;
  switch (err) {
  case 0:
  case ENOSPC:       /* the disk (or thin pool) is full */
  case EDQUOT:
  case EFBIG:
  case EINVAL:       /* a bad request */
  case EPERM:
  case EACCES:
  case EROFS:        /* a read-only disk */
  case EOPNOTSUPP:   /* the target cannot do this operation */
  case ENODATA:      /* medium error (BLK_STS_MEDIUM) */
  case EILSEQ:       /* protection information mismatch */
  case EREMOTEIO:    /* the target reported an error (BLK_STS_TARGET) */
  case EOVERFLOW:
    return false;
  default:
    return true;
  }
}
