/* unit-state.h — the unit's state machine as data: which event moves a
 * unit from which state to which.  unit.c decides when an event happened;
 * this table alone decides what it leads to. */
#ifndef ALTPATH_UNIT_STATE_H
#define ALTPATH_UNIT_STATE_H

#include "altpath.h"

enum ap_unit_event {
  AP_UE_PATH_FOUND,      /* a usable path was chosen and the held I/O
                            resubmitted on it */
  AP_UE_PATH_FAULT,      /* the active path failed (error, timeout, probe) */
  AP_UE_SWITCH_REQUEST,  /* operator switch, failback, a better path joined,
                            the active path disabled or removed */
  AP_UE_SWITCH_DONE,     /* drained and flipped (or the switch given up
                            because its target failed meanwhile) */
  AP_UE_VERIFY_TIMEOUT,  /* no usable path within the verification timeout */
  AP_UE_CLOSE,           /* the unit is closed */
  AP_UE_COUNT
};

/* The state that event ev leads to from state s, or -1 if ev cannot happen
 * in s (a bug: unit.c logs it and stays). */
int ap_unit_next_state (enum ap_unit_state s, enum ap_unit_event ev);
const char *ap_unit_event_name (enum ap_unit_event ev);

#endif
