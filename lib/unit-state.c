/* unit-state.c — the unit's states and the transition table.
 *
 *             path fault (error, timeout)         path found
 *   ONLINE ─────────────────────────────► VERIFY ───────────────► ONLINE
 *    ▲  │ switch request                    │ ▲ path fault
 *    │  ▼ (drain, flush, flip)              │ └─ (the new path failed too)
 *   SWITCH ── path fault ──► VERIFY         │ verify timeout
 *                                           ▼
 *                  path found ◄──────── OFFLINE (fail new I/O, or queue)
 *                                      path fault: the path it came back
 *                                      on failed at once ──► VERIFY
 *
 *   any state ── close ──► CLOSED
 *
 * The states (enum ap_unit_state, altpath.h):
 *
 *   OFFLINE  No path carries I/O.  A unit starts here until its first
 *            path probes healthy, and returns here when verification finds
 *            no usable path in time.  New I/O fails with EIO at once, or
 *            waits in the held queue if the unit queues.  The checker keeps
 *            probing; a healthy path brings the unit ONLINE — but only once
 *            no path has I/O in flight (an unfenced path keeps it here).
 *   ONLINE   One active path; new I/O goes straight to it.
 *   VERIFY   The seed's mount verification.  The active path failed: new
 *            I/O is held, the failed path is fenced and drained (its
 *            requests come back done, failed or cancelled; the failed ones
 *            join the held queue in their original order), the next path
 *            is probed and chosen, and the held queue is resubmitted on it
 *            in order before new I/O flows again.
 *   SWITCH   A planned change of path: new I/O is held, the active path
 *            drains normally and is flushed, then the unit flips and
 *            resubmits.  Nothing is cancelled.
 *   CLOSED   The end; nothing is accepted.
 */
#include "unit-state.h"

#define NO (-1)

static const int next[AP_UNIT_CLOSED + 1][AP_UE_COUNT] = {
  /*                 FOUND           FAULT           SWITCH_REQ      SWITCH_DONE     VERIFY_TIMEOUT   CLOSE */
  [AP_UNIT_ONLINE]  = { NO,             AP_UNIT_VERIFY, AP_UNIT_SWITCH, NO,             NO,              AP_UNIT_CLOSED },
  [AP_UNIT_VERIFY]  = { AP_UNIT_ONLINE, AP_UNIT_VERIFY, NO,             NO,             AP_UNIT_OFFLINE, AP_UNIT_CLOSED },
  [AP_UNIT_SWITCH]  = { NO,             AP_UNIT_VERIFY, NO,             AP_UNIT_ONLINE, NO,              AP_UNIT_CLOSED },
  [AP_UNIT_OFFLINE] = { AP_UNIT_ONLINE, AP_UNIT_VERIFY, NO,             NO,             NO,              AP_UNIT_CLOSED },
  [AP_UNIT_CLOSED]  = { NO,             NO,             NO,             NO,             NO,              NO },
};

int
ap_unit_next_state (enum ap_unit_state s, enum ap_unit_event ev)
{
  if ((unsigned) s > AP_UNIT_CLOSED || (unsigned) ev >= AP_UE_COUNT)
    return NO;
  return next[s][ev];
}

const char *
ap_unit_event_name (enum ap_unit_event ev)
{
  switch (ev) {
  case AP_UE_PATH_FOUND: return "path found";
  case AP_UE_PATH_FAULT: return "path fault";
  case AP_UE_SWITCH_REQUEST: return "switch request";
  case AP_UE_SWITCH_DONE: return "switch done";
  case AP_UE_VERIFY_TIMEOUT: return "verify timeout";
  case AP_UE_CLOSE: return "close";
  case AP_UE_COUNT: break;
  }
  return "?";
}

const char *
ap_unit_state_name (enum ap_unit_state s)
{
  switch (s) {
  case AP_UNIT_ONLINE: return "online";
  case AP_UNIT_VERIFY: return "verify";
  case AP_UNIT_SWITCH: return "switch";
  case AP_UNIT_OFFLINE: return "offline";
  case AP_UNIT_CLOSED: return "closed";
  }
  return "?";
}
