/* choices.c — the operator's choices (pinned and disabled paths) kept in
 * a file across altpathd's restarts ([cluster] state-file).
 *
 * Why: `altpath path disable` is how an operator keeps a path out of use
 * while its hardware is worked on.  A restart of altpathd in the middle of
 * that (an upgrade, a crash systemd restarts, a reboot) must not put the
 * path back in use, nor drop a pin.  The library keeps the choices by
 * path name while paths leave and join (struct ap_unit_choices); this
 * file keeps them while the daemon stops and starts.
 *
 * The file is JSON, written whole after every change: a temporary file
 * beside it, fsync, rename over, fsync of the directory; a crash leaves
 * the old file or the new one, never half of either.
 *
 *   {"version": 1, "node": "ALPHA", "note": "...",
 *    "units": {"$4$DKB100": {"pinned": "served:BETA",
 *                            "disabled": ["direct"]}}}
 *
 * Only units with a choice are listed.  A unit that is not there now
 * (its disk gone) keeps its entry, so that it gets its choices back when
 * it returns.
 *
 * A file that cannot be read as such stops the daemon's start with a
 * message naming it: silently starting with every path enabled could put
 * a path under repair back into use.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <json-c/json.h>

#include "daemon.h"

#define CHOICES_VERSION   1
#define CHOICES_MAX_BYTES (4u << 20)    /* far more than 1000s of units */

/* What to do about a bad file, at the end of every message about one. */
#define FIX_HINT "; correct it, or remove it to start with every path " \
  "enabled and unpinned"

struct unit_choices {
  char unit[AP_NAME_MAX];
  struct ap_unit_choices ch;
};

struct choices {
  pthread_mutex_t lock;         /* the list; and one writer at a time */
  char file[4096];
  char node[64];
  struct unit_choices *v;       /* as in the file (the last written) */
  size_t n;
};

static bool
empty (const struct ap_unit_choices *ch)
{
  return !ch->pinned[0] && ch->ndisabled == 0;
}

static bool
same (const struct ap_unit_choices *a, const struct ap_unit_choices *b)
{
  if (strcmp (a->pinned, b->pinned) || a->ndisabled != b->ndisabled)
    return false;
  for (unsigned i = 0; i < a->ndisabled; i++)
    if (strcmp (a->disabled[i], b->disabled[i]))
      return false;
  return true;
}

static struct unit_choices *
find (const struct choices *cs, const char *unit)
{
  for (size_t i = 0; i < cs->n; i++)
    if (strcmp (cs->v[i].unit, unit) == 0)
      return &cs->v[i];
  return NULL;
}

/* ------------------------------------------------------------- reading */

/* A path name from the file: a non-empty string that fits. */
static bool
path_name (json_object *o, char out[AP_NAME_MAX])
{
  if (!json_object_is_type (o, json_type_string))
    return false;
  const char *s = json_object_get_string (o);
  size_t len = strlen (s);
  if (len == 0 || len >= AP_NAME_MAX)
    return false;
  memcpy (out, s, len + 1);
  return true;
}

/* One unit's entry into *uc.  0, or -1 with a message. */
static int
parse_unit (const char *file, const char *unit, json_object *o,
            struct unit_choices *uc, char *err, size_t errlen)
{
  json_object *pinned = NULL, *disabled = NULL;

  memset (uc, 0, sizeof *uc);
  if (strlen (unit) == 0 || strlen (unit) >= AP_NAME_MAX) {
    snprintf (err, errlen, "state file %s: a unit name is empty or longer "
              "than %d bytes" FIX_HINT, file, AP_NAME_MAX - 1);
    return -1;
  }
  snprintf (uc->unit, sizeof uc->unit, "%s", unit);
  if (!json_object_is_type (o, json_type_object)) {
    snprintf (err, errlen, "state file %s: unit '%s' is not an object "
              "({\"pinned\": ..., \"disabled\": [...]})" FIX_HINT, file,
              unit);
    return -1;
  }
  if (json_object_object_get_ex (o, "pinned", &pinned) && pinned
      && !path_name (pinned, uc->ch.pinned)) {
    snprintf (err, errlen, "state file %s: unit '%s': 'pinned' is not a "
              "path name (a string of 1 to %d bytes, or null)" FIX_HINT,
              file, unit, AP_NAME_MAX - 1);
    return -1;
  }
  if (!json_object_object_get_ex (o, "disabled", &disabled) || !disabled)
    return 0;
  if (!json_object_is_type (disabled, json_type_array)) {
    snprintf (err, errlen, "state file %s: unit '%s': 'disabled' is not a "
              "list of path names" FIX_HINT, file, unit);
    return -1;
  }
  size_t n = json_object_array_length (disabled);
  if (n > AP_MAX_PATHS) {
    snprintf (err, errlen, "state file %s: unit '%s': 'disabled' names %zu "
              "paths, more than a unit keeps (%d)" FIX_HINT, file, unit, n,
              AP_MAX_PATHS);
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    char name[AP_NAME_MAX];
    if (!path_name (json_object_array_get_idx (disabled, i), name)) {
      snprintf (err, errlen, "state file %s: unit '%s': 'disabled' item %zu "
                "is not a path name (a string of 1 to %d bytes)" FIX_HINT,
                file, unit, i + 1, AP_NAME_MAX - 1);
      return -1;
    }
    bool dup = false;
    for (unsigned k = 0; k < uc->ch.ndisabled; k++)
      dup = dup || strcmp (uc->ch.disabled[k], name) == 0;
    if (!dup)
      memcpy (uc->ch.disabled[uc->ch.ndisabled++], name, sizeof name);
  }
  return 0;
}

/* The file's text into cs->v.  0, or -1 with a message. */
static int
parse (struct choices *cs, const char *text, size_t len, char *err,
       size_t errlen)
{
  const char *file = cs->file;
  json_tokener *tok = json_tokener_new ();
  if (!tok) {
    snprintf (err, errlen, "out of memory reading %s", file);
    return -1;
  }
  json_object *root = json_tokener_parse_ex (tok, text, (int) len);
  enum json_tokener_error jerr = json_tokener_get_error (tok);
  size_t used = json_tokener_get_parse_end (tok);
  json_tokener_free (tok);
  if (!root || jerr != json_tokener_success) {
    if (strspn (text, " \t\r\n") == len)
      snprintf (err, errlen, "state file %s is empty" FIX_HINT, file);
    else
      snprintf (err, errlen, "state file %s is not valid JSON (%s, at byte "
                "%zu)" FIX_HINT, file, jerr == json_tokener_continue
                ? "it ends in the middle" : json_tokener_error_desc (jerr),
                used);
    json_object_put (root);
    return -1;
  }
  while (used < len && strchr (" \t\r\n", text[used]))
    used++;
  int r = -1;
  json_object *v, *units;
  if (used < len)
    snprintf (err, errlen, "state file %s has more after its JSON object "
              "(byte %zu)" FIX_HINT, file, used);
  else if (!json_object_is_type (root, json_type_object))
    snprintf (err, errlen, "state file %s is not a JSON object" FIX_HINT,
              file);
  else if (!json_object_object_get_ex (root, "version", &v)
           || !json_object_is_type (v, json_type_int))
    snprintf (err, errlen, "state file %s has no 'version'" FIX_HINT, file);
  else if (json_object_get_int64 (v) != CHOICES_VERSION)
    snprintf (err, errlen, "state file %s is version %lld; this altpathd "
              "reads version %d (was it written by a newer altpathd?)"
              FIX_HINT, file, (long long) json_object_get_int64 (v),
              CHOICES_VERSION);
  else if (!json_object_object_get_ex (root, "node", &v)
           || !json_object_is_type (v, json_type_string))
    snprintf (err, errlen, "state file %s has no 'node'" FIX_HINT, file);
  else if (strcmp (json_object_get_string (v), cs->node) != 0)
    snprintf (err, errlen, "state file %s belongs to node %s, and this is "
              "node %s: each node needs its own ([cluster] state-file)",
              file, json_object_get_string (v), cs->node);
  else if (!json_object_object_get_ex (root, "units", &units)
           || !json_object_is_type (units, json_type_object))
    snprintf (err, errlen, "state file %s has no 'units' object" FIX_HINT,
              file);
  else
    r = 0;
  if (r == 0) {
    size_t n = (size_t) json_object_object_length (units);
    cs->v = calloc (n ? n : 1, sizeof *cs->v);
    if (!cs->v) {
      snprintf (err, errlen, "out of memory reading %s", file);
      r = -1;
    }
    json_object_object_foreach (units, key, val) {
      if (r < 0)
        break;
      struct unit_choices *uc = &cs->v[cs->n];
      if (parse_unit (file, key, val, uc, err, errlen) < 0)
        r = -1;
      else if (!empty (&uc->ch))
        cs->n++;
    }
  }
  json_object_put (root);
  return r;
}

struct choices *
choices_open (const char *file, const char *node, char *err, size_t errlen)
{
  struct choices *cs = calloc (1, sizeof *cs);
  if (!cs) {
    snprintf (err, errlen, "out of memory");
    return NULL;
  }
  pthread_mutex_init (&cs->lock, NULL);
  snprintf (cs->file, sizeof cs->file, "%s", file);
  snprintf (cs->node, sizeof cs->node, "%s", node);

  FILE *f = fopen (file, "re");
  if (!f) {
    if (errno == ENOENT)
      return cs;                /* nothing chosen yet */
    snprintf (err, errlen, "cannot read the state file %s: %s; altpathd "
              "keeps the operator's pins and disabled paths there (check "
              "its permissions, or set [cluster] state-file)", file,
              strerror (errno));
    choices_close (cs);
    return NULL;
  }
  char *text = malloc (CHOICES_MAX_BYTES + 1);
  size_t len = text ? fread (text, 1, CHOICES_MAX_BYTES + 1, f) : 0;
  int rerr = ferror (f);
  if (text && len <= CHOICES_MAX_BYTES)
    text[len] = '\0';
  fclose (f);
  int r = -1;
  if (!text)
    snprintf (err, errlen, "out of memory reading %s", file);
  else if (rerr)
    snprintf (err, errlen, "cannot read the state file %s (an I/O error)",
              file);
  else if (len > CHOICES_MAX_BYTES)
    snprintf (err, errlen, "state file %s is larger than %u MiB: it is not "
              "one altpathd wrote" FIX_HINT, file, CHOICES_MAX_BYTES >> 20);
  else
    r = parse (cs, text, len, err, errlen);
  free (text);
  if (r < 0) {
    choices_close (cs);
    return NULL;
  }
  return cs;
}

size_t
choices_count (struct choices *cs)
{
  pthread_mutex_lock (&cs->lock);
  size_t n = cs->n;
  pthread_mutex_unlock (&cs->lock);
  return n;
}

bool
choices_get (struct choices *cs, const char *unit, struct ap_unit_choices *out)
{
  pthread_mutex_lock (&cs->lock);
  struct unit_choices *uc = find (cs, unit);
  if (uc)
    *out = uc->ch;
  pthread_mutex_unlock (&cs->lock);
  return uc != NULL;
}

/* ------------------------------------------------------------- writing */

static char *
render (const struct choices *cs, const struct unit_choices *v, size_t n)
{
  json_object *root = json_object_new_object ();
  json_object_object_add (root, "version",
                          json_object_new_int (CHOICES_VERSION));
  json_object_object_add (root, "node", json_object_new_string (cs->node));
  json_object_object_add (root, "note", json_object_new_string (
    "altpathd keeps the operator's pinned and disabled paths here across "
    "restarts; change them with altpath switch, unpin and path "
    "enable/disable"));
  json_object *units = json_object_new_object ();
  for (size_t i = 0; i < n; i++) {
    json_object *u = json_object_new_object ();
    json_object_object_add (u, "pinned", v[i].ch.pinned[0]
                            ? json_object_new_string (v[i].ch.pinned) : NULL);
    json_object *d = json_object_new_array ();
    for (unsigned k = 0; k < v[i].ch.ndisabled; k++)
      json_object_array_add (d, json_object_new_string (v[i].ch.disabled[k]));
    json_object_object_add (u, "disabled", d);
    json_object_object_add (units, v[i].unit, u);
  }
  json_object_object_add (root, "units", units);
  const char *s = json_object_to_json_string_ext (root,
                                                  JSON_C_TO_STRING_PRETTY
                                                  | JSON_C_TO_STRING_NOSLASHESCAPE);
  char *text = s ? malloc (strlen (s) + 2) : NULL;
  if (text)
    sprintf (text, "%s\n", s);
  json_object_put (root);
  return text;
}

/* text into the file, whole or not at all.  0, or -1 with a message. */
static int
replace_file (const char *file, const char *text, char *err, size_t errlen)
{
  char tmp[sizeof ((struct choices *) 0)->file + 8];
  char dir[sizeof tmp];
  snprintf (tmp, sizeof tmp, "%s.new", file);
  dir_of (file, dir, sizeof dir);

  int fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 && errno == ENOENT && mkdir (dir, 0755) == 0)
    fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    snprintf (err, errlen, "cannot write %s: %s", tmp, strerror (errno));
    return -1;
  }
  size_t len = strlen (text), done = 0;
  errno = 0;
  while (done < len) {
    ssize_t w = write (fd, text + done, len - done);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      break;
    done += (size_t) w;
  }
  int e = done < len ? (errno ? errno : EIO) : 0;
  if (!e && fsync (fd) < 0)
    e = errno;
  if (close (fd) < 0 && !e)
    e = errno;
  if (!e && rename (tmp, file) < 0)
    e = errno;
  if (e) {
    unlink (tmp);
    snprintf (err, errlen, "cannot write %s: %s", file, strerror (e));
    return -1;
  }
  /* The rename is durable once the directory is. */
  int dfd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync (dfd);
    close (dfd);
  }
  return 0;
}

int
choices_keep (struct choices *cs, const char *unit,
              const struct ap_unit_choices *now, char *err, size_t errlen)
{
  pthread_mutex_lock (&cs->lock);
  struct unit_choices *old = find (cs, unit);
  if ((old && same (&old->ch, now)) || (!old && empty (now))) {
    pthread_mutex_unlock (&cs->lock);
    return 0;
  }
  /* The list as it is to be, written first, taken only once written: a
   * failed write leaves memory as the file is, so the next change (or the
   * same command again) writes it again. */
  struct unit_choices *v = calloc (cs->n + 1, sizeof *v);
  size_t n = 0;
  if (!v) {
    pthread_mutex_unlock (&cs->lock);
    snprintf (err, errlen, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < cs->n; i++)
    if (&cs->v[i] != old)
      v[n++] = cs->v[i];
  if (!empty (now)) {
    snprintf (v[n].unit, sizeof v[n].unit, "%s", unit);
    v[n++].ch = *now;
  }
  char *text = render (cs, v, n);
  int r = -1;
  if (!text)
    snprintf (err, errlen, "out of memory");
  else
    r = replace_file (cs->file, text, err, errlen);
  free (text);
  if (r == 0) {
    free (cs->v);
    cs->v = v;
    cs->n = n;
  }
  else
    free (v);
  pthread_mutex_unlock (&cs->lock);
  return r;
}

void
choices_close (struct choices *cs)
{
  if (!cs)
    return;
  pthread_mutex_destroy (&cs->lock);
  free (cs->v);
  free (cs);
}
