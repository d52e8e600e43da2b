/* path.c — what every path kind shares: initialisation, the trace hook,
 * and the single doorway every submission and completion passes through.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

void
ap_path_init (struct ap_path *p, const struct ap_path_ops *ops,
              enum ap_path_kind kind, const char *name)
{
  memset (&p->info, 0, sizeof p->info);
  p->ops = ops;
  p->info.kind = kind;
  snprintf (p->info.name, sizeof p->info.name, "%s", name ? name : "");
  p->owner_done = NULL;
  p->owner = NULL;
  p->trace = NULL;
  p->trace_opaque = NULL;
}

int
ap_path_submit (struct ap_path *p, struct ap_io *io)
{
  if (p->trace)
    p->trace (p->trace_opaque, p, AP_TRACE_SUBMIT, io,
              io->internal.kind == AP_IO_KIND_PROBE, 0);
  int r = p->ops->submit (p, io);
  if (r < 0 && p->trace)
    /* Refused at once: tell the tracer it is no longer in flight. */
    p->trace (p->trace_opaque, p, AP_TRACE_DONE, io,
              io->internal.kind == AP_IO_KIND_PROBE, r);
  return r;
}

void
ap_path_done (struct ap_path *p, struct ap_io *io, int err)
{
  if (p->trace)
    p->trace (p->trace_opaque, p, AP_TRACE_DONE, io,
              io->internal.kind == AP_IO_KIND_PROBE, err);
  p->owner_done (p->owner, p, io, err);
}

static _Atomic (ap_completion_hook_fn *) completion_hook;
static _Thread_local bool in_run;

void
ap_set_completion_hook (ap_completion_hook_fn *hook)
{
  atomic_store (&completion_hook, hook);
}

bool
ap_in_completion_run (void)
{
  return in_run;
}

void
ap_completion_run_begin (void)
{
  in_run = atomic_load (&completion_hook) != NULL;
}

void
ap_completion_run_end (void)
{
  if (!in_run)
    return;
  in_run = false;
  ap_completion_hook_fn *hook = atomic_load (&completion_hook);
  if (hook)
    hook ();
}

void
ap_path_set_trace (struct ap_path *p, ap_trace_fn *fn, void *opaque)
{
  p->trace_opaque = opaque;
  p->trace = fn;
}

void
ap_path_get_info (const struct ap_path *p, struct ap_path_info *info)
{
  *info = p->info;
}

const char *
ap_path_name (const struct ap_path *p)
{
  return p->info.name;
}

void
ap_path_close (struct ap_path *p)
{
  if (p)
    p->ops->close (p);
}

const char *
ap_path_kind_name (enum ap_path_kind k)
{
  switch (k) {
  case AP_PATH_DIRECT: return "direct";
  case AP_PATH_SERVED: return "served";
  }
  return "?";
}

const char *
ap_path_state_name (enum ap_path_state s)
{
  switch (s) {
  case AP_PATH_ACTIVE: return "active";
  case AP_PATH_STANDBY: return "standby";
  case AP_PATH_FAILED: return "failed";
  case AP_PATH_DISABLED: return "disabled";
  }
  return "?";
}
