/* exports.c — the disks this node serves: one unit over one direct path
 * per configured disk, refcounted.
 *
 *   config_disk ──export_open──► export (refs = 1, the opener's)
 *                                  │ export_get: main's list, the server's
 *                                  │ list, each connection that opened it
 *                                  ▼
 *                     last export_put: ap_unit_close (drains what is still
 *                     in flight), free
 *
 * A served disk is always reached directly (invariant 5: never re-serve a
 * served path), with O_DIRECT (invariant 4: nothing acknowledged sits in
 * this node's page cache).  Its unit fails fast (config.c's defaults): a
 * client's own multipath should see an error and fail over to another
 * path rather than wait for us.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"

static void
free_export (struct export *e)
{
  for (size_t i = 0; i < e->nallow; i++)
    free (e->allow[i]);
  free (e->allow);
  free (e);
}

struct export *
export_open (const struct config *cfg, const struct config_disk *d,
             char *err, size_t errlen)
{
  struct export *e = calloc (1, sizeof *e);
  struct ap_direct_options dopt = { 0 };
  struct ap_unit_options uopt;
  struct ap_path_info info;
  struct ap_path *path;
  char pname[AP_NAME_MAX];

  if (!e) {
    snprintf (err, errlen, "%s (%s): out of memory", d->device, d->file);
    return NULL;
  }
  snprintf (e->name, sizeof e->name, "%s", d->device);
  e->read_only = d->read_only;
  atomic_init (&e->refs, 1);
  if (d->nallow) {
    if (!(e->allow = calloc (d->nallow, sizeof *e->allow)))
      goto oom;
    for (e->nallow = 0; e->nallow < d->nallow; e->nallow++)
      if (!(e->allow[e->nallow] = strdup (d->allow[e->nallow])))
        goto oom;
  }

  /* A long file name keeps its end, the part that tells disks apart. */
  size_t flen = strlen (d->file);
  if (flen + sizeof "direct:" <= sizeof pname)
    snprintf (pname, sizeof pname, "direct:%.*s", (int) flen, d->file);
  else
    snprintf (pname, sizeof pname, "direct:...%s",
              d->file + flen - (sizeof pname - sizeof "direct:..."));
  dopt.name = pname;
  dopt.identity = d->identity[0] ? d->identity : NULL;
  dopt.read_only = d->read_only;
  path = ap_path_open_direct (d->file, &dopt);
  if (!path) {
    snprintf (err, errlen, "%s: cannot serve %s: %s", d->device, d->file,
              ap_get_error ());
    free_export (e);
    return NULL;
  }
  ap_path_get_info (path, &info);
  if (!info.o_direct) {
    /* Invariant 4: a write we acknowledge must be on the disk. */
    snprintf (err, errlen, "%s: cannot serve %s: it could not be opened "
              "with O_DIRECT, and serving it through the page cache could "
              "lose acknowledged writes; put it on a filesystem or device "
              "that supports O_DIRECT", d->device, d->file);
    ap_path_close (path);
    free_export (e);
    return NULL;
  }

  ap_unit_options_init (&uopt);
  uopt.name = d->device;
  uopt.request_timeout_ms = cfg->request_timeout_ms;
  uopt.verify_timeout_ms = cfg->verify_timeout_ms;
  uopt.queue_if_no_path = false;        /* fail fast: see the top */
  e->unit = ap_unit_create (&uopt, &path, 1);  /* owns path, also on error */
  if (!e->unit) {
    snprintf (err, errlen, "%s: cannot serve %s: %s", d->device, d->file,
              ap_get_error ());
    free_export (e);
    return NULL;
  }

  /* No file name: where the disk lives on this node is no client's
   * business. */
  snprintf (e->description, sizeof e->description,
            "altpath disk %.*s: node %.*s, port %c, unit %u%s",
            AP_NAME_MAX - 1, d->device, 63, cfg->node, d->port_letter,
            d->unit_number, d->read_only ? ", read-only" : "");
  return e;

 oom:
  snprintf (err, errlen, "%s (%s): out of memory", d->device, d->file);
  free_export (e);
  return NULL;
}

struct export *
export_get (struct export *e)
{
  if (e)
    atomic_fetch_add_explicit (&e->refs, 1, memory_order_relaxed);
  return e;
}

void
export_put (struct export *e)
{
  if (!e)
    return;
  /* acq_rel: everything done through other references happens before
   * the close below. */
  if (atomic_fetch_sub_explicit (&e->refs, 1, memory_order_acq_rel) != 1)
    return;
  ap_unit_close (e->unit);
  free_export (e);
}

void
device_alias (const char *device, char *out, size_t len)
{
  size_t k = 0;
  const char *s = device[0] == '$' ? device + 1 : device;
  for (; *s && k + 1 < len; s++)
    out[k++] = *s == '$' ? '-' : *s;
  out[k] = '\0';
}

struct export *
export_wrap (const char *name, const char *description, struct ap_unit *u)
{
  struct export *e = calloc (1, sizeof *e);
  if (!e)
    return NULL;
  snprintf (e->name, sizeof e->name, "%s", name);
  snprintf (e->description, sizeof e->description, "%s", description);
  e->unit = u;
  atomic_init (&e->refs, 1);
  return e;
}
