/* log.c — see log.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include "log.h"

unsigned ap_log_debug_mask;
bool ap_log_quiet;

static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static void
read_env (void)
{
  const char *s = getenv ("ALTPATH_DEBUG");
  if (!s)
    return;
  if (strstr (s, "all"))
    ap_log_debug_mask = ~0u;
  if (strstr (s, "data"))
    ap_log_debug_mask |= AP_DEBUG_DATA;
  if (strstr (s, "control"))
    ap_log_debug_mask |= AP_DEBUG_CONTROL;
}

void
ap_log_init_from_env (void)
{
  pthread_once (&env_once, read_env);
}

void
ap_log_set_debug (unsigned mask)
{
  ap_log_debug_mask = mask;
}

void
ap_log (enum ap_log_level level, const char *fmt, ...)
{
  static const char *const tag[] = { "error", "warning", "info", "debug" };
  char line[1024];
  va_list ap;

  if (level == AP_LOG_INFO && ap_log_quiet)
    return;
  va_start (ap, fmt);
  vsnprintf (line, sizeof line, fmt, ap);
  va_end (ap);
  /* One write per line so that lines of several threads do not mix. */
  fprintf (stderr, "altpath: %s: %s\n", tag[level], line);
}
