/* accept-trouble.h — what the daemon's listeners (NBD, control, metrics)
 * do when accept4() fails, defined in accept-trouble.c.
 *
 * Transient failures (the client gave up, a signal) are not worth a word.
 * Running out of descriptors or memory is: it is said once, then once a
 * minute with the number of failed accepts while it lasts, and "accepting
 * again" when it ends.  Meanwhile the listener must not spin: its socket
 * stays readable with the backlog waiting, so the caller waits
 * ACCEPT_TROUBLE_WAIT_MS before its next accept.  (One warning per failed
 * accept, ten a second, is what this replaces.)
 */
#ifndef ALTPATHD_ACCEPT_TROUBLE_H
#define ALTPATHD_ACCEPT_TROUBLE_H

#include <stdbool.h>
#include <stdint.h>

#define ACCEPT_TROUBLE_WAIT_MS 100

struct accept_trouble {
  bool failing;                 /* out of a resource, and said so */
  unsigned long failed;         /* accepts failed since the last word */
  uint64_t said_ns;             /* when we last said so */
};

/* accept4() failed with err on the listener named by what ("the NBD
 * listener on 0.0.0.0:10809").  Returns true when the caller should wait
 * ACCEPT_TROUBLE_WAIT_MS before trying again (out of a resource), false
 * when it may go on at once (a transient failure). */
bool accept_trouble_failed (struct accept_trouble *t, const char *what,
                            int err);
/* An accept succeeded: if it had been failing, say that it recovered. */
void accept_trouble_ok (struct accept_trouble *t, const char *what);

#endif /* ALTPATHD_ACCEPT_TROUBLE_H */
