/* log.h — logging for the library, the daemon and the tools.
 *
 * Errors and warnings always go out.  Debug messages are per subsystem
 * (data path, control path) and the level is tested before the arguments
 * are evaluated, so a disabled debug line costs one branch (after nbdkit's
 * debug()).  The data path logs nothing per request unless asked.
 *
 * ALTPATH_DEBUG=data,control (or "all") in the environment switches debug
 * on; ap_log_set_debug() does the same from code.
 */
#ifndef ALTPATH_LOG_H
#define ALTPATH_LOG_H

#include <stdbool.h>

enum ap_log_level { AP_LOG_ERROR, AP_LOG_WARN, AP_LOG_INFO, AP_LOG_DEBUG };

#define AP_DEBUG_DATA    (1u << 0) /* per-request events */
#define AP_DEBUG_CONTROL (1u << 1) /* state changes, probes, switches */

extern unsigned ap_log_debug_mask;
extern bool ap_log_quiet;        /* suppress info (tests) */

void ap_log_init_from_env (void);
void ap_log_set_debug (unsigned mask);
void ap_log (enum ap_log_level level, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

#define ap_error(...) ap_log (AP_LOG_ERROR, __VA_ARGS__)
#define ap_warn(...)  ap_log (AP_LOG_WARN, __VA_ARGS__)
#define ap_info(...)  ap_log (AP_LOG_INFO, __VA_ARGS__)
#define ap_debug(sub, ...)                                      \
  do {                                                          \
    if (__builtin_expect ((ap_log_debug_mask & (sub)) != 0, 0)) \
      ap_log (AP_LOG_DEBUG, __VA_ARGS__);                       \
  } while (0)

#endif /* ALTPATH_LOG_H */
