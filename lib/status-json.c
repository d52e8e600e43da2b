/* status-json.c — a unit's status as JSON (json-c), for the control socket
 * and `altpath show ... --json`.  Field names are stable: tools parse
 * them. */
#include <stdlib.h>
#include <string.h>
#include <json-c/json.h>

#include "internal.h"

static json_object *
counters_json (const struct ap_counters *c, uint64_t p50, uint64_t p99)
{
  json_object *o = json_object_new_object ();
  json_object_object_add (o, "reads", json_object_new_uint64 (c->reads));
  json_object_object_add (o, "writes", json_object_new_uint64 (c->writes));
  json_object_object_add (o, "flushes", json_object_new_uint64 (c->flushes));
  json_object_object_add (o, "trims", json_object_new_uint64 (c->trims));
  json_object_object_add (o, "zeroes", json_object_new_uint64 (c->zeroes));
  json_object_object_add (o, "bytes_read",
                          json_object_new_uint64 (c->bytes_read));
  json_object_object_add (o, "bytes_written",
                          json_object_new_uint64 (c->bytes_written));
  json_object_object_add (o, "errors", json_object_new_uint64 (c->errors));
  json_object_object_add (o, "latency_p50_us", json_object_new_uint64 (p50));
  json_object_object_add (o, "latency_p99_us", json_object_new_uint64 (p99));
  json_object *h = json_object_new_array ();
  for (unsigned b = 0; b < AP_LAT_BUCKETS; b++)
    json_object_array_add (h, json_object_new_uint64 (c->latency[b]));
  json_object_object_add (o, "latency_log2_us_histogram", h);
  return o;
}

char *
ap_unit_status_json (struct ap_unit *u)
{
  struct ap_unit_status *st = malloc (sizeof *st);
  if (!st) {
    ap_set_error (ENOMEM, "out of memory");
    return NULL;
  }
  ap_unit_get_status (u, st);
  json_object *o = json_object_new_object ();
  json_object_object_add (o, "version", json_object_new_int (AP_API_VERSION));
  json_object_object_add (o, "name", json_object_new_string (st->name));
  json_object_object_add (o, "state",
                          json_object_new_string (ap_unit_state_name (st->state)));
  json_object_object_add (o, "size", json_object_new_uint64 (st->size));
  json_object_object_add (o, "block_size",
                          json_object_new_int ((int) st->block_size));
  json_object_object_add (o, "inflight", json_object_new_uint64 (st->inflight));
  json_object_object_add (o, "held", json_object_new_uint64 (st->held));
  json_object_object_add (o, "queue_if_no_path",
                          json_object_new_boolean (st->queue_if_no_path));
  json_object_object_add (o, "switches_auto",
                          json_object_new_uint64 (st->switches_auto));
  json_object_object_add (o, "switches_manual",
                          json_object_new_uint64 (st->switches_manual));
  json_object_object_add (o, "last_switch_unix_ms",
                          json_object_new_int64 (st->last_switch_unix_ms));
  json_object_object_add (o, "longest_verify_us",
                          json_object_new_uint64 (st->longest_verify_us));
  json_object_object_add (o, "counters",
                          counters_json (&st->counters, st->p50_us,
                                         st->p99_us));
  json_object *paths = json_object_new_array ();
  for (unsigned i = 0; i < st->npaths; i++) {
    const struct ap_path_status *ps = &st->paths[i];
    json_object *p = json_object_new_object ();
    json_object_object_add (p, "name", json_object_new_string (ps->name));
    json_object_object_add (p, "kind",
                            json_object_new_string (ap_path_kind_name (ps->kind)));
    json_object_object_add (p, "state",
                            json_object_new_string (ap_path_state_name (ps->state)));
    json_object_object_add (p, "active", json_object_new_boolean (ps->active));
    json_object_object_add (p, "preferred",
                            json_object_new_boolean (ps->preferred));
    json_object_object_add (p, "pinned", json_object_new_boolean (ps->pinned));
    json_object_object_add (p, "priority", json_object_new_int (ps->priority));
    json_object_object_add (p, "inflight", json_object_new_uint64 (ps->inflight));
    json_object_object_add (p, "counters",
                            counters_json (&ps->counters, ps->p50_us,
                                           ps->p99_us));
    json_object_object_add (p, "last_errno", json_object_new_int (ps->last_errno));
    json_object_object_add (p, "last_error",
                            json_object_new_string (ps->last_error));
    json_object_object_add (p, "last_error_unix_ms",
                            json_object_new_int64 (ps->last_error_unix_ms));
    json_object_object_add (p, "probes_ok", json_object_new_uint64 (ps->probes_ok));
    json_object_object_add (p, "probes_failed",
                            json_object_new_uint64 (ps->probes_failed));
    json_object_array_add (paths, p);
  }
  json_object_object_add (o, "paths", paths);
  /* The operator's choices by name, with those of paths not there now. */
  json_object *ch = json_object_new_object ();
  json_object_object_add (ch, "pinned", st->choices.pinned[0]
                          ? json_object_new_string (st->choices.pinned)
                          : NULL);
  json_object *dis = json_object_new_array ();
  for (unsigned i = 0; i < st->choices.ndisabled; i++)
    json_object_array_add (dis,
                           json_object_new_string (st->choices.disabled[i]));
  json_object_object_add (ch, "disabled", dis);
  json_object_object_add (o, "choices", ch);
  free (st);
  char *s = strdup (json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN));
  json_object_put (o);
  if (!s)
    ap_set_error (ENOMEM, "out of memory");
  return s;
}
