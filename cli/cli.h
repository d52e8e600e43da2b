/* cli.h — what the files of altpath (the command line) share.
 *
 *   altpath.c ── options, commands, output (tables, --json)
 *   client.c ── the control socket: connect, one request, one reply, and
 *               the event lines of "watch"; every wait bounded
 *
 * altpath talks to altpathd only through the control socket (docs/cli.md)
 * and to libaltpath only through altpath.h.
 */
#ifndef ALTPATH_CLI_H
#define ALTPATH_CLI_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

/* Exit status (docs/cli.md). */
enum {
  EXIT_OK = 0,
  EXIT_REFUSED = 1,             /* altpathd refused or failed the command */
  EXIT_USAGE = 2,               /* a bad command line */
  EXIT_UNREACHABLE = 3,         /* no altpathd on the socket, or it broke
                                   the protocol */
  EXIT_PERMISSION = 4,          /* not allowed on the socket */
  EXIT_TIMEOUT = 5,             /* no answer within --timeout */
};

/* A client failure: the exit status, an errno name for --json and a
 * message naming the socket and what to do. */
struct cli_error {
  int status;
  const char *code;
  char msg[1024];
};

struct conn {
  int fd;
  const char *socket;           /* for messages */
  double timeout_s;             /* --timeout */
  uint64_t deadline_ns;         /* CLOCK_MONOTONIC: connect + reply */
  char *buf;                    /* bytes read, not yet a whole line */
  size_t len, cap;
};

/* Connect within timeout_s.  0, or -1 and *e filled. */
int conn_open (struct conn *c, const char *socket, double timeout_s,
               struct cli_error *e);
/* Send req (consumed) and read one reply line by the deadline set at
 * conn_open.  0 and *reply (json_object_put it), or -1 and *e.  A reply
 * with "ok": false is a reply, not a failure here. */
int conn_call (struct conn *c, json_object *req, json_object **reply,
               struct cli_error *e);
/* The next line (an event of "watch"), waiting without a deadline until
 * one arrives or a signal in `stop` is delivered (then 1 and *msg NULL).
 * 0 and *msg, or -1 and *e (the daemon went away). */
int conn_next (struct conn *c, const sigset_t *wait_mask,
               volatile sig_atomic_t *stopped, json_object **msg,
               struct cli_error *e);
void conn_close (struct conn *c);

uint64_t cli_now_ns (void);

#endif /* ALTPATH_CLI_H */
