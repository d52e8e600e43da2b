/* control-request.h — parsing one request line of the control socket, as
 * a pure function (static: the fuzz target fuzzing/fuzz-control.c
 * includes this header and nothing else of the daemon; control.c and
 * tests/test-control.c use it the same way).
 *
 * A request is one JSON object on one line (docs/cli.md):
 *
 *   {"version":1,"cmd":"switch","device":"$4$DKB100","path":"served:BETA"}
 *
 *   bytes ── ctl_parse_request ──► struct ctl_request  (0)
 *                                  or code + message   (-1)
 *
 * The object is flat: its values are strings, numbers, true, false or
 * null.  Nested objects and arrays are refused: no request needs them, and
 * a parser without recursion cannot be driven deep by a hostile line.
 * Strings are decoded (escapes, surrogate pairs) into UTF-8 and checked
 * (raw UTF-8 must be valid; no NUL, no raw control characters).  Every
 * field is known and given once; the fields a command needs are there and
 * those it does not use are not.
 *
 * Error codes are errno names, as the reply carries them:
 *   EPROTO           not a JSON object of this protocol (the connection is
 *                    then closed: we cannot trust the rest of the stream)
 *   EPROTONOSUPPORT  a version other than CTL_VERSION (closed too)
 *   EINVAL           a valid object with a wrong field, command or value
 *                    (closed too: a client that sends it is broken)
 */
#ifndef ALTPATHD_CONTROL_REQUEST_H
#define ALTPATHD_CONTROL_REQUEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "altpath.h"

#define CTL_VERSION 1
/* Longest request line, newline included; longer is refused. */
#define CTL_LINE_MAX (64 * 1024)

enum ctl_cmd {
  CTL_PING,                     /* who answers: node, daemon version */
  CTL_LIST,                     /* every unit's status */
  CTL_SHOW,                     /* one unit's status: device */
  CTL_CLUSTER,                  /* the cluster as the node sees it */
  CTL_SWITCH,                   /* switch and pin: device, path */
  CTL_UNPIN,                    /* device */
  CTL_DISABLE_PATH,             /* device, path */
  CTL_ENABLE_PATH,              /* device, path */
  CTL_RESCAN,                   /* look for new disks on the ports */
  CTL_WATCH,                    /* then events, one per line */
  CTL_NCMDS
};

/* Which fields a command takes. */
#define CTL_NEEDS_DEVICE 1u
#define CTL_NEEDS_PATH   2u

static const struct {
  const char *name;
  unsigned needs;
} ctl_cmds[CTL_NCMDS] = {
  [CTL_PING] = { "ping", 0 },
  [CTL_LIST] = { "list", 0 },
  [CTL_SHOW] = { "show", CTL_NEEDS_DEVICE },
  [CTL_CLUSTER] = { "cluster", 0 },
  [CTL_SWITCH] = { "switch", CTL_NEEDS_DEVICE | CTL_NEEDS_PATH },
  [CTL_UNPIN] = { "unpin", CTL_NEEDS_DEVICE },
  [CTL_DISABLE_PATH] = { "disable-path", CTL_NEEDS_DEVICE | CTL_NEEDS_PATH },
  [CTL_ENABLE_PATH] = { "enable-path", CTL_NEEDS_DEVICE | CTL_NEEDS_PATH },
  [CTL_RESCAN] = { "rescan", 0 },
  [CTL_WATCH] = { "watch", 0 },
};

struct ctl_request {
  enum ctl_cmd cmd;
  unsigned version;
  char device[AP_NAME_MAX];     /* "" unless the command takes one */
  char path[AP_NAME_MAX];       /* "" unless the command takes one */
};

/* ------------------------------------------------------------ lexing */

struct ctl_lex {
  const unsigned char *s;
  size_t n, i;
  const char *code;             /* on error */
  char *err;
  size_t errlen;
};

static inline int __attribute__ ((format (printf, 3, 4)))
ctl_fail (struct ctl_lex *x, const char *code, const char *fmt, ...)
{
  va_list ap;
  x->code = code;
  if (x->errlen) {
    va_start (ap, fmt);
    vsnprintf (x->err, x->errlen, fmt, ap);
    va_end (ap);
  }
  return -1;
}

/* A syntax error at the current byte. */
#define CTL_SYNTAX(x, what)                                             \
  ctl_fail ((x), "EPROTO", "not a JSON object: %s at byte %zu; send one " \
            "JSON object per line, e.g. {\"version\":1,\"cmd\":\"list\"}", \
            (what), (x)->i + 1)

static inline void
ctl_skip_ws (struct ctl_lex *x)
{
  while (x->i < x->n && (x->s[x->i] == ' ' || x->s[x->i] == '\t'
                         || x->s[x->i] == '\n' || x->s[x->i] == '\r'))
    x->i++;
}

static inline int
ctl_hex4 (struct ctl_lex *x, unsigned *out)
{
  unsigned v = 0;
  if (x->n - x->i < 4)
    return CTL_SYNTAX (x, "a \\u escape cut short");
  for (int k = 0; k < 4; k++) {
    unsigned char c = x->s[x->i++];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= (unsigned) (c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= (unsigned) (c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      v |= (unsigned) (c - 'A' + 10);
    else
      return CTL_SYNTAX (x, "a \\u escape with a character that is not "
                         "hexadecimal");
  }
  *out = v;
  return 0;
}

/* Length of the valid UTF-8 sequence at s[0..avail), 0 if invalid
 * (overlong forms, surrogates and code points above U+10FFFF are). */
static inline size_t
ctl_utf8_len (const unsigned char *s, size_t avail)
{
  unsigned char c = s[0];
  size_t len;
  uint32_t cp;
  if (c < 0x80)
    return 1;
  if (c >= 0xC2 && c <= 0xDF)
    len = 2, cp = c & 0x1F;
  else if (c >= 0xE0 && c <= 0xEF)
    len = 3, cp = c & 0x0F;
  else if (c >= 0xF0 && c <= 0xF4)
    len = 4, cp = c & 0x07;
  else
    return 0;
  if (avail < len)
    return 0;
  for (size_t k = 1; k < len; k++) {
    if ((s[k] & 0xC0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[k] & 0x3F);
  }
  if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)))
      || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
    return 0;
  return len;
}

/* Append code point cp as UTF-8; *too_long once it does not fit. */
static inline void
ctl_put_cp (char *out, size_t size, size_t *len, uint32_t cp, bool *too_long)
{
  unsigned char b[4];
  size_t k;
  if (cp < 0x80)
    b[0] = (unsigned char) cp, k = 1;
  else if (cp < 0x800)
    b[0] = (unsigned char) (0xC0 | (cp >> 6)),
      b[1] = (unsigned char) (0x80 | (cp & 0x3F)), k = 2;
  else if (cp < 0x10000)
    b[0] = (unsigned char) (0xE0 | (cp >> 12)),
      b[1] = (unsigned char) (0x80 | ((cp >> 6) & 0x3F)),
      b[2] = (unsigned char) (0x80 | (cp & 0x3F)), k = 3;
  else
    b[0] = (unsigned char) (0xF0 | (cp >> 18)),
      b[1] = (unsigned char) (0x80 | ((cp >> 12) & 0x3F)),
      b[2] = (unsigned char) (0x80 | ((cp >> 6) & 0x3F)),
      b[3] = (unsigned char) (0x80 | (cp & 0x3F)), k = 4;
  if (*too_long || *len + k >= size) {
    *too_long = true;
    return;
  }
  memcpy (out + *len, b, k);
  *len += k;
  out[*len] = '\0';
}

/* The string starting at the opening quote, decoded into out[size].  A
 * string that does not fit is read to its end and *too_long set (the
 * caller decides what that means).  A NUL (\u0000) is refused: no name
 * holds one. */
static inline int
ctl_string (struct ctl_lex *x, char *out, size_t size, bool *too_long)
{
  size_t len = 0;
  *too_long = false;
  out[0] = '\0';
  x->i++;                       /* the quote */
  for (;;) {
    if (x->i >= x->n)
      return CTL_SYNTAX (x, "a string without its closing quote");
    unsigned char c = x->s[x->i];
    if (c == '"') {
      x->i++;
      return 0;
    }
    if (c < 0x20)
      return CTL_SYNTAX (x, "a control character inside a string (write "
                         "it as an escape)");
    if (c == '\\') {
      uint32_t cp;
      x->i++;
      if (x->i >= x->n)
        return CTL_SYNTAX (x, "a string without its closing quote");
      c = x->s[x->i++];
      switch (c) {
      case '"': cp = '"'; break;
      case '\\': cp = '\\'; break;
      case '/': cp = '/'; break;
      case 'b': cp = '\b'; break;
      case 'f': cp = '\f'; break;
      case 'n': cp = '\n'; break;
      case 'r': cp = '\r'; break;
      case 't': cp = '\t'; break;
      case 'u': {
        unsigned u = 0, lo = 0;
        if (ctl_hex4 (x, &u) < 0)
          return -1;
        if (u >= 0xDC00 && u <= 0xDFFF)
          return CTL_SYNTAX (x, "a lone low surrogate in a \\u escape");
        if (u >= 0xD800 && u <= 0xDBFF) {
          if (x->n - x->i < 2 || x->s[x->i] != '\\' || x->s[x->i + 1] != 'u')
            return CTL_SYNTAX (x, "a high surrogate not followed by a low "
                               "one");
          x->i += 2;
          if (ctl_hex4 (x, &lo) < 0)
            return -1;
          if (lo < 0xDC00 || lo > 0xDFFF)
            return CTL_SYNTAX (x, "a high surrogate not followed by a low "
                               "one");
          cp = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
        }
        else
          cp = u;
        if (cp == 0)
          return ctl_fail (x, "EINVAL", "a string holds a NUL character "
                           "(\\u0000); no device or path name has one");
        break;
      }
      default:
        x->i--;
        return CTL_SYNTAX (x, "an unknown escape in a string");
      }
      ctl_put_cp (out, size, &len, cp, too_long);
      continue;
    }
    size_t k = ctl_utf8_len (x->s + x->i, x->n - x->i);
    if (k == 0)
      return CTL_SYNTAX (x, "a string that is not valid UTF-8");
    if (!*too_long && len + k < size) {
      memcpy (out + len, x->s + x->i, k);
      len += k;
      out[len] = '\0';
    }
    else
      *too_long = true;
    x->i += k;
  }
}

enum ctl_value_type { CTL_V_STRING, CTL_V_NUMBER, CTL_V_BOOL, CTL_V_NULL };

static inline const char *
ctl_type_name (enum ctl_value_type t)
{
  return t == CTL_V_STRING ? "a string" : t == CTL_V_NUMBER ? "a number"
    : t == CTL_V_BOOL ? "true or false" : "null";
}

/* A number by JSON's grammar.  *is_uint and *value when it is a plain
 * non-negative integer that fits in 32 bits. */
static inline int
ctl_number (struct ctl_lex *x, bool *is_uint, uint32_t *value)
{
  uint64_t v = 0;
  bool big = false, frac = false;
  size_t start = x->i;

  *is_uint = false;
  if (x->s[x->i] == '-')
    x->i++;
  if (x->i >= x->n || x->s[x->i] < '0' || x->s[x->i] > '9')
    return CTL_SYNTAX (x, "a '-' without digits");
  if (x->s[x->i] == '0' && x->i + 1 < x->n && x->s[x->i + 1] >= '0'
      && x->s[x->i + 1] <= '9')
    return CTL_SYNTAX (x, "a number with a leading zero");
  while (x->i < x->n && x->s[x->i] >= '0' && x->s[x->i] <= '9') {
    v = v * 10 + (uint64_t) (x->s[x->i++] - '0');
    if (v > UINT32_MAX)
      big = true, v = UINT32_MAX;
  }
  if (x->i < x->n && x->s[x->i] == '.') {
    x->i++;
    frac = true;
    if (x->i >= x->n || x->s[x->i] < '0' || x->s[x->i] > '9')
      return CTL_SYNTAX (x, "a '.' without digits after it");
    while (x->i < x->n && x->s[x->i] >= '0' && x->s[x->i] <= '9')
      x->i++;
  }
  if (x->i < x->n && (x->s[x->i] == 'e' || x->s[x->i] == 'E')) {
    x->i++;
    frac = true;
    if (x->i < x->n && (x->s[x->i] == '+' || x->s[x->i] == '-'))
      x->i++;
    if (x->i >= x->n || x->s[x->i] < '0' || x->s[x->i] > '9')
      return CTL_SYNTAX (x, "an exponent without digits");
    while (x->i < x->n && x->s[x->i] >= '0' && x->s[x->i] <= '9')
      x->i++;
  }
  *is_uint = x->s[start] != '-' && !frac && !big;
  *value = (uint32_t) v;
  return 0;
}

static inline int
ctl_literal (struct ctl_lex *x, const char *word)
{
  size_t k = strlen (word);
  if (x->n - x->i < k || memcmp (x->s + x->i, word, k) != 0)
    return CTL_SYNTAX (x, "an unexpected character where a value belongs");
  x->i += k;
  return 0;
}

/* ------------------------------------------------------------ parsing */

/* The known fields, in the order error messages list them. */
enum { CTL_F_VERSION, CTL_F_CMD, CTL_F_DEVICE, CTL_F_PATH, CTL_NFIELDS };
static const char *const ctl_field_names[CTL_NFIELDS] = {
  "version", "cmd", "device", "path",
};

/* Parse the request line s[0..len) (without its newline).  0 and *req
 * filled; or -1, *code an errno name (static string) and err a message
 * naming the field or byte and what to send instead. */
static inline int
ctl_parse_request (const char *s, size_t len, struct ctl_request *req,
                   const char **code, char *err, size_t errlen)
{
  struct ctl_lex x = { .s = (const unsigned char *) s, .n = len,
                       .err = err, .errlen = errlen };
  bool seen[CTL_NFIELDS] = { false };
  char cmd[32] = "";
  bool have_version_uint = false;
  uint32_t version = 0;
  enum ctl_value_type vtype[CTL_NFIELDS] = { CTL_V_NULL };
  bool too_long[CTL_NFIELDS] = { false };
  int r = -1;

  memset (req, 0, sizeof *req);
  if (errlen)
    err[0] = '\0';
  *code = NULL;

  ctl_skip_ws (&x);
  if (x.i >= x.n) {
    r = ctl_fail (&x, "EPROTO", "an empty request; send one JSON object "
                  "per line, e.g. {\"version\":1,\"cmd\":\"list\"}");
    goto out;
  }
  if (x.s[x.i] != '{') {
    r = CTL_SYNTAX (&x, "it does not start with '{'");
    goto out;
  }
  x.i++;
  ctl_skip_ws (&x);
  if (x.i < x.n && x.s[x.i] == '}')
    x.i++;
  else
    for (;;) {
      char key[32];
      bool key_long;
      ctl_skip_ws (&x);
      if (x.i >= x.n) {
        r = CTL_SYNTAX (&x, "the object is not closed with '}'");
        goto out;
      }
      if (x.s[x.i] != '"') {
        r = CTL_SYNTAX (&x, "a field name that is not a string");
        goto out;
      }
      if (ctl_string (&x, key, sizeof key, &key_long) < 0)
        goto out;
      int f;
      for (f = 0; f < CTL_NFIELDS; f++)
        if (!key_long && strcmp (key, ctl_field_names[f]) == 0)
          break;
      if (f == CTL_NFIELDS) {
        /* Printable in the message: a name made of what a person would
         * type, cut short. */
        for (char *c = key; *c; c++)
          if ((unsigned char) *c < 0x20 || (unsigned char) *c >= 0x7F)
            *c = '?';
        r = ctl_fail (&x, "EINVAL", "unknown field '%s%s'; version %d "
                      "requests have the fields version, cmd, device and "
                      "path", key, key_long ? "..." : "", CTL_VERSION);
        goto out;
      }
      if (seen[f]) {
        r = ctl_fail (&x, "EINVAL", "field '%s' given twice; give it once",
                      ctl_field_names[f]);
        goto out;
      }
      seen[f] = true;
      ctl_skip_ws (&x);
      if (x.i >= x.n || x.s[x.i] != ':') {
        r = CTL_SYNTAX (&x, "a field name not followed by ':'");
        goto out;
      }
      x.i++;
      ctl_skip_ws (&x);
      if (x.i >= x.n) {
        r = CTL_SYNTAX (&x, "a field without a value");
        goto out;
      }
      unsigned char c = x.s[x.i];
      if (c == '"') {
        char scratch[AP_NAME_MAX];
        char *dst = f == CTL_F_CMD ? cmd : f == CTL_F_DEVICE ? req->device
          : f == CTL_F_PATH ? req->path : scratch;
        size_t dsize = f == CTL_F_CMD ? sizeof cmd : AP_NAME_MAX;
        if (ctl_string (&x, dst, dsize, &too_long[f]) < 0)
          goto out;
        vtype[f] = CTL_V_STRING;
      }
      else if (c == '-' || (c >= '0' && c <= '9')) {
        bool is_uint;
        uint32_t v;
        if (ctl_number (&x, &is_uint, &v) < 0)
          goto out;
        vtype[f] = CTL_V_NUMBER;
        if (f == CTL_F_VERSION)
          have_version_uint = is_uint, version = v;
      }
      else if (c == 't' || c == 'f') {
        if (ctl_literal (&x, c == 't' ? "true" : "false") < 0)
          goto out;
        vtype[f] = CTL_V_BOOL;
      }
      else if (c == 'n') {
        if (ctl_literal (&x, "null") < 0)
          goto out;
        vtype[f] = CTL_V_NULL;
      }
      else if (c == '{' || c == '[') {
        r = ctl_fail (&x, "EPROTO", "field '%s' holds %s; requests are flat "
                      "objects whose values are strings and numbers",
                      ctl_field_names[f], c == '{' ? "an object"
                      : "an array");
        goto out;
      }
      else {
        r = CTL_SYNTAX (&x, "an unexpected character where a value belongs");
        goto out;
      }
      ctl_skip_ws (&x);
      if (x.i < x.n && x.s[x.i] == ',') {
        x.i++;
        continue;
      }
      if (x.i < x.n && x.s[x.i] == '}') {
        x.i++;
        break;
      }
      r = CTL_SYNTAX (&x, x.i < x.n ? "a value followed by neither ',' "
                      "nor '}'" : "the object is not closed with '}'");
      goto out;
    }
  ctl_skip_ws (&x);
  if (x.i < x.n) {
    r = CTL_SYNTAX (&x, "more text after the object (one request per "
                    "line)");
    goto out;
  }

  /* The fields. */
  if (!seen[CTL_F_VERSION]) {
    r = ctl_fail (&x, "EPROTO", "no 'version' field; this altpathd speaks "
                  "version %d: send {\"version\":%d,\"cmd\":...}",
                  CTL_VERSION, CTL_VERSION);
    goto out;
  }
  if (vtype[CTL_F_VERSION] != CTL_V_NUMBER || !have_version_uint) {
    r = ctl_fail (&x, "EPROTO", "'version' must be a whole number (%d), "
                  "not %s", CTL_VERSION,
                  vtype[CTL_F_VERSION] == CTL_V_NUMBER ? "a fraction or "
                  "negative number" : ctl_type_name (vtype[CTL_F_VERSION]));
    goto out;
  }
  if (version != CTL_VERSION) {
    r = ctl_fail (&x, "EPROTONOSUPPORT", "protocol version %u is not "
                  "supported; this altpathd speaks version %d", version,
                  CTL_VERSION);
    goto out;
  }
  req->version = version;
  for (int f = CTL_F_CMD; f < CTL_NFIELDS; f++)
    if (seen[f] && vtype[f] != CTL_V_STRING) {
      r = ctl_fail (&x, "EINVAL", "'%s' must be a string, not %s",
                    ctl_field_names[f], ctl_type_name (vtype[f]));
      goto out;
    }
  if (!seen[CTL_F_CMD]) {
    r = ctl_fail (&x, "EINVAL", "no 'cmd' field; say what to do, e.g. "
                  "{\"version\":1,\"cmd\":\"list\"}");
    goto out;
  }
  int k;
  for (k = 0; k < CTL_NCMDS; k++)
    if (!too_long[CTL_F_CMD] && strcmp (cmd, ctl_cmds[k].name) == 0)
      break;
  if (k == CTL_NCMDS) {
    for (char *c = cmd; *c; c++)
      if ((unsigned char) *c < 0x20 || (unsigned char) *c >= 0x7F)
        *c = '?';
    r = ctl_fail (&x, "EINVAL", "unknown command '%s%s'; the commands are "
                  "ping, list, show, cluster, switch, unpin, disable-path, "
                  "enable-path, rescan and watch", cmd,
                  too_long[CTL_F_CMD] ? "..." : "");
    goto out;
  }
  req->cmd = (enum ctl_cmd) k;
  unsigned needs = ctl_cmds[k].needs;
  static const struct {
    int field;
    unsigned flag;
  } args[] = { { CTL_F_DEVICE, CTL_NEEDS_DEVICE },
               { CTL_F_PATH, CTL_NEEDS_PATH } };
  for (size_t a = 0; a < sizeof args / sizeof args[0]; a++) {
    int f = args[a].field;
    const char *val = f == CTL_F_DEVICE ? req->device : req->path;
    if ((needs & args[a].flag) && !seen[f]) {
      r = ctl_fail (&x, "EINVAL", "'%s' needs the field '%s'", cmd,
                    ctl_field_names[f]);
      goto out;
    }
    if (!(needs & args[a].flag) && seen[f]) {
      r = ctl_fail (&x, "EINVAL", "'%s' takes no field '%s'; remove it",
                    cmd, ctl_field_names[f]);
      goto out;
    }
    if (!seen[f])
      continue;
    if (too_long[f]) {
      r = ctl_fail (&x, "EINVAL", "'%s' is longer than %d bytes, so no %s "
                    "has that name", ctl_field_names[f], AP_NAME_MAX - 1,
                    f == CTL_F_DEVICE ? "device" : "path");
      goto out;
    }
    if (!val[0]) {
      r = ctl_fail (&x, "EINVAL", "'%s' is empty; give a %s name",
                    ctl_field_names[f], f == CTL_F_DEVICE ? "device"
                    : "path");
      goto out;
    }
  }
  r = 0;

 out:
  if (r < 0) {
    memset (req, 0, sizeof *req);
    if (!x.code)                /* not reached: every failure sets it */
      x.code = "EPROTO";
    *code = x.code;
  }
  return r;
}

#endif /* ALTPATHD_CONTROL_REQUEST_H */
