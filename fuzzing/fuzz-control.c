/* fuzz-control.c — libFuzzer target: the control socket's request parser
 * (daemon/control-request.h), which reads whatever a local client sends.
 *
 * Input:  one request line, as the daemon hands it to the parser (the
 *         bytes before the newline; any bytes at all, NULs included).
 *
 * Whatever the parser says must be safe to act on: a request it accepts
 * has a known command, version 1, and exactly the names that command
 * takes, each a NUL-terminated string that fits, is not empty and holds
 * no NUL before its end; a refusal carries one of the documented codes
 * and a message.  Parsing the same bytes twice gives the same answer (the
 * parser is pure).
 *
 * Build and run: fuzzing/run.sh fuzz-control.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "control-request.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static void
check_name (const char *s, bool wanted)
{
  size_t n = strnlen (s, AP_NAME_MAX);
  if (n == AP_NAME_MAX)         /* not terminated within the field */
    abort ();
  if (wanted != (n > 0))
    abort ();
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct ctl_request a, b;
  const char *ca, *cb;
  char ea[512], eb[512];

  if (size > CTL_LINE_MAX)
    return 0;
  /* A copy of exactly size bytes: ASan sees any read beyond it. */
  char *line = malloc (size ? size : 1);
  if (!line)
    return 0;
  memcpy (line, data, size);

  int ra = ctl_parse_request (line, size, &a, &ca, ea, sizeof ea);
  int rb = ctl_parse_request (line, size, &b, &cb, eb, sizeof eb);
  if (ra != rb || (ra == 0 && memcmp (&a, &b, sizeof a) != 0)
      || (ra < 0 && (strcmp (ca, cb) != 0 || strcmp (ea, eb) != 0)))
    abort ();

  if (ra == 0) {
    if (ca != NULL || (unsigned) a.cmd >= CTL_NCMDS
        || a.version != CTL_VERSION)
      abort ();
    check_name (a.device, ctl_cmds[a.cmd].needs & CTL_NEEDS_DEVICE);
    check_name (a.path, ctl_cmds[a.cmd].needs & CTL_NEEDS_PATH);
  }
  else {
    if (ra != -1 || !ca || !ea[0])
      abort ();
    if (strcmp (ca, "EPROTO") && strcmp (ca, "EPROTONOSUPPORT")
        && strcmp (ca, "EINVAL"))
      abort ();
    /* Refused means nothing to act on. */
    if (a.device[0] || a.path[0])
      abort ();
  }
  free (line);
  return 0;
}
