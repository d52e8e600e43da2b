/* accept-trouble.c — failed accepts said once, not once per try (see
 * accept-trouble.h). */
#include <errno.h>
#include <string.h>

#include "accept-trouble.h"
#include "clock.h"
#include "log.h"

#define REPEAT_NS (60ull * 1000000000u)   /* still failing: once a minute */

static const char *
hint (int err)
{
  if (err == EMFILE)
    return "the process's open-file limit is reached (raise LimitNOFILE= in "
      "the unit file, or ulimit -n)";
  if (err == ENFILE)
    return "the system's open-file table is full (fs.file-max)";
  return "memory is short";
}

bool
accept_trouble_failed (struct accept_trouble *t, const char *what, int err)
{
  if (err != EMFILE && err != ENFILE && err != ENOMEM && err != ENOBUFS)
    return false;               /* EAGAIN, EINTR, ECONNABORTED, EPROTO... */
  uint64_t now = ap_now_ns ();
  t->failed++;
  if (!t->failing) {
    t->failing = true;
    t->said_ns = now;
    t->failed = 0;
    ap_warn ("%s cannot accept new clients: %s; %s.  Clients wait in the "
             "backlog; retrying every %d ms", what, strerror (err),
             hint (err), ACCEPT_TROUBLE_WAIT_MS);
  }
  else if (now - t->said_ns >= REPEAT_NS) {
    ap_warn ("%s still cannot accept new clients (%s): %lu tries failed in "
             "the last minute", what, strerror (err), t->failed);
    t->said_ns = now;
    t->failed = 0;
  }
  return true;
}

void
accept_trouble_ok (struct accept_trouble *t, const char *what)
{
  if (!t->failing)
    return;
  ap_info ("%s accepts new clients again", what);
  t->failing = false;
  t->failed = 0;
}
