/* config.c — altpathd's configuration file: read it (inih), check every
 * value, name the disks (DESIGN.md "Naming"), expand the ports' globs.
 *
 * The format is documented for operators in docs/configuration.md, with a
 * commented example in examples/altpath.conf.  In short:
 *
 *   [node]      name = ALPHA            alloclass = 0
 *   [listen]    address = 127.0.0.1:10809 | [::1]:10809 | unix:/run/x.sock
 *               tls = off | on | require           (one section per listener)
 *   [tls]       psk-file = ...  cert-dir = ...  verify-peer = no  allow = a, b
 *               priority = NORMAL:...   (GnuTLS; replaces ours)
 *   [units]     request-timeout-ms = 2000  verify-timeout-ms = 2000
 *   [port B]    alloclass = 4  glob = /srv/shared/disk*.img  read-only = no
 *               allow = a b    100 = /srv/shared/disk100.img, read-only
 *   [control]   socket = /run/altpath/control.sock  group = altpath
 *   [metrics]   listen = 127.0.0.1:9469  allow-remote = no
 *
 * How a file is read:
 *
 *   file ──getline──► line_reader ──► inih ──► handler ──► struct config
 *                     │ counts lines,          │ one key at a time: checks
 *                     │ sees [section]         │ the value, stores it
 *                     │ headers (inih does not │
 *                     │ report them), refuses  ▼
 *                     │ over-long lines      finish(): what needs the whole
 *                     ▼                      file (defaults, TLS, names,
 *                  first error wins          duplicates)
 *
 * inih hands the handler neither the line number nor section starts, so
 * the reader does that bookkeeping: inih calls the handler for a line
 * before it asks the reader for the next one, so at handler time the
 * reader's line count is the handler's line.
 *
 * Every error names the file, the line and the key (or section) and says
 * what to do; only the first error is reported, and parsing stops there.
 * Relative paths in the file are taken relative to the directory of the
 * configuration file.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <grp.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <ini.h>

#include "daemon.h"

#define DEFAULT_NBD_PORT "10809"
#define DEFAULT_METRICS_HOST "127.0.0.1"
#define DEFAULT_METRICS_PORT "9469"   /* unclaimed in Prometheus's list of
                                         exporter ports */
/* Served disks fail fast: a client's own multipath (request timeout 5000
 * ms by default in libaltpath) should see an error and fail over rather
 * than wait for us.  request + verify stays below the client's timeout. */
#define DEFAULT_REQUEST_TIMEOUT_MS 2000
#define DEFAULT_VERIFY_TIMEOUT_MS  2000
#define TIMEOUT_MIN_MS 100
#define TIMEOUT_MAX_MS 3600000
#define NODE_NAME_MAX 15
#define NODE_ALLOCLASS_MAX 255
#define PORT_ALLOCLASS_MAX 32767
#define UNIT_MAX 9999
#define PEER_NAME_MAX 255
/* Longest line read; a path may be up to PATH_MAX. */
#define LINE_CHARS (PATH_MAX + 256)

enum section {
  SEC_NONE,                     /* before the first header */
  SEC_NODE,
  SEC_LISTEN,
  SEC_TLS,
  SEC_UNITS,
  SEC_REGISTRY,
  SEC_CLUSTER,
  SEC_CONTROL,
  SEC_METRICS,
  SEC_PORT,                     /* last: the ones above are singletons */
};

static const char *const section_names[] = {
  [SEC_NONE] = "", [SEC_NODE] = "node", [SEC_LISTEN] = "listen",
  [SEC_TLS] = "tls", [SEC_UNITS] = "units", [SEC_REGISTRY] = "registry",
  [SEC_CLUSTER] = "cluster", [SEC_CONTROL] = "control",
  [SEC_METRICS] = "metrics", [SEC_PORT] = "port",
};

/* A key seen in one section, to refuse it twice. */
struct seen_key {
  unsigned section_line;
  char key[64];
  unsigned line;
};

/* Lines of keys whose checks need the whole file. */
struct listen_lines {
  unsigned section, address, tls;
};
struct port_lines {
  unsigned alloclass, allow;
};
struct disk_extra {
  signed char read_only;        /* -1: not given, take the port's */
};

struct parser {
  struct config *cfg;
  const char *file;             /* as given, for messages */
  char dir[PATH_MAX];           /* for relative paths */
  FILE *fp;
  char *buf;                    /* getline's */
  size_t bufsize;
  unsigned lineno;              /* the line the reader returned last */
  bool bom_checked;

  /* The section the current line is in. */
  enum section sec;
  unsigned sec_line;            /* its header; 0 before any */
  size_t sec_index;             /* SEC_LISTEN, SEC_PORT: which one */
  unsigned singleton_line[SEC_PORT]; /* first header of node/tls/units */

  /* Line of each key checked in finish(). */
  unsigned node_name_line, node_alloclass_line;
  unsigned metrics_listen_line;
  unsigned psk_line, cert_line, verify_line, allow_line, priority_line;
  unsigned reg_ca_line, reg_cert_line, reg_key_line, reg_user_line,
    reg_password_line, reg_endpoints_line;
  struct listen_lines *ll;      /* parallel to cfg->listen */
  struct port_lines *pl;        /* parallel to cfg->ports */
  struct disk_extra *dx;        /* parallel to cfg->disks */
  size_t dx_alloc;

  struct seen_key *seen;
  size_t nseen;

  bool failed;
  char *err;
  size_t errlen;
};

/* ------------------------------------------------------------- helpers */

static void
strv_free (char **v, size_t n)
{
  for (size_t i = 0; i < n; i++)
    free (v[i]);
  free (v);
}

static int
strv_add (char ***v, size_t *n, const char *s)
{
  char **nv = realloc (*v, (*n + 1) * sizeof *nv);
  if (!nv)
    return -1;
  *v = nv;
  if (!(nv[*n] = strdup (s)))
    return -1;
  (*n)++;
  return 0;
}

static bool
strv_contains (char *const *v, size_t n, const char *s)
{
  for (size_t i = 0; i < n; i++)
    if (strcmp (v[i], s) == 0)
      return true;
  return false;
}

static int
strv_copy (char ***dst, size_t *ndst, char *const *src, size_t nsrc)
{
  *dst = NULL;
  *ndst = 0;
  for (size_t i = 0; i < nsrc; i++)
    if (strv_add (dst, ndst, src[i]) < 0) {
      strv_free (*dst, *ndst);
      *dst = NULL;
      *ndst = 0;
      return -1;
    }
  return 0;
}

/* Copy s into dst[size], refusing what does not fit. */
static bool
copy_str (char *dst, size_t size, const char *s)
{
  size_t n = strlen (s);
  if (n >= size)
    return false;
  memcpy (dst, s, n + 1);
  return true;
}

static char *
trim (char *s)
{
  while (isspace ((unsigned char) *s))
    s++;
  char *e = s + strlen (s);
  while (e > s && isspace ((unsigned char) e[-1]))
    *--e = '\0';
  return s;
}

/* A decimal number from min to max: digits only, no sign, no space. */
static bool
parse_uint (const char *s, unsigned min, unsigned max, unsigned *out)
{
  unsigned long v = 0;
  if (!*s)
    return false;
  for (const char *c = s; *c; c++) {
    if (!isdigit ((unsigned char) *c))
      return false;
    v = v * 10 + (unsigned) (*c - '0');
    if (v > max)
      return false;
  }
  if (v < min)
    return false;
  *out = (unsigned) v;
  return true;
}

static bool
parse_bool (const char *s, bool *out)
{
  static const char *const yes[] = { "yes", "true", "on", "1" };
  static const char *const no[] = { "no", "false", "off", "0" };
  for (size_t i = 0; i < 4; i++) {
    if (strcasecmp (s, yes[i]) == 0)
      return (*out = true), true;
    if (strcasecmp (s, no[i]) == 0)
      return (*out = false), true;
  }
  return false;
}

/* ------------------------------------------------------------- errors */

static void __attribute__ ((format (printf, 4, 5)))
fail_at (struct parser *p, unsigned line, const char *what,
         const char *fmt, ...)
{
  char msg[1024];
  va_list ap;

  if (p->failed)
    return;
  p->failed = true;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  if (line && what)
    snprintf (p->err, p->errlen, "%s line %u, %s: %s", p->file, line, what,
              msg);
  else if (line)
    snprintf (p->err, p->errlen, "%s line %u: %s", p->file, line, msg);
  else if (what)
    snprintf (p->err, p->errlen, "%s, %s: %s", p->file, what, msg);
  else
    snprintf (p->err, p->errlen, "%s: %s", p->file, msg);
}

/* An error about key K at line LINE. */
#define fail_key(p, line, k, ...)                                       \
  do {                                                                  \
    char what_[96];                                                     \
    snprintf (what_, sizeof what_, "key '%s'", (k));                    \
    fail_at ((p), (line), what_, __VA_ARGS__);                          \
  } while (0)

static void
fail_oom (struct parser *p)
{
  fail_at (p, p->lineno, NULL, "out of memory");
}

/* Warnings of a rescan: the daemon's stderr, as main.c's log lines. */
static void __attribute__ ((format (printf, 1, 2)))
warn (const char *fmt, ...)
{
  char msg[1024];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  fprintf (stderr, "altpathd: warning: %s\n", msg);
}

/* ------------------------------------------------------------- paths */

void
dir_of (const char *file, char *out, size_t size)
{
  snprintf (out, size, "%s", file);
  char *slash = strrchr (out, '/');
  if (slash == out)
    out[1] = '\0';
  else if (slash)
    *slash = '\0';
  else
    snprintf (out, size, ".");
}

/* PATH made absolute against the configuration file's directory. */
static bool
resolve_path (const struct parser *p, const char *path, char *out,
              size_t size)
{
  int n;
  if (path[0] == '/')
    n = snprintf (out, size, "%s", path);
  else
    n = snprintf (out, size, "%s/%s", p->dir, path);
  return n >= 0 && (size_t) n < size;
}

/* A name that identifies one file, to find a disk configured twice: its
 * real path when it exists, else the path as written. */
static void
canonical (const char *file, char out[PATH_MAX])
{
  if (!realpath (file, out))
    snprintf (out, PATH_MAX, "%s", file);
}

/* -------------------------------------------------------------- names */

/* The device name of unit UNIT on PORT (DESIGN.md "Naming", and OpenVMS:
 * a port allocation class wins over the node allocation class, which
 * wins over the node name). */
static void
device_name (const struct config *cfg, const struct config_port *port,
             unsigned unit, char *out, size_t size)
{
  if (port->alloclass)
    snprintf (out, size, "$%u$DK%c%u", port->alloclass, port->letter, unit);
  else if (cfg->node_alloclass)
    snprintf (out, size, "$%u$DK%c%u", cfg->node_alloclass, port->letter,
              unit);
  else
    snprintf (out, size, "%s$DK%c%u", cfg->node, port->letter, unit);
}

static struct config_port *
find_port (struct config *cfg, char letter)
{
  for (size_t i = 0; i < cfg->nports; i++)
    if (cfg->ports[i].letter == letter)
      return &cfg->ports[i];
  return NULL;
}

/* A peer name in an allow list: a PSK identity or a certificate's common
 * name, printable, no space, no comma. */
static bool
valid_peer (const char *s)
{
  size_t n = strlen (s);
  if (n == 0 || n > PEER_NAME_MAX)
    return false;
  for (const char *c = s; *c; c++)
    if (!isgraph ((unsigned char) *c) || *c == ',' || *c == ';'
        || *c == '=' || *c == '"')
      return false;
  return true;
}

/* Split a list of peers separated by commas and/or white space. */
static int
parse_peers (struct parser *p, unsigned line, const char *key,
             const char *value, char ***out, size_t *nout)
{
  char *copy = strdup (value);
  char *save = NULL;
  if (!copy) {
    fail_oom (p);
    return -1;
  }
  for (char *t = strtok_r (copy, ", \t", &save); t;
       t = strtok_r (NULL, ", \t", &save)) {
    if (!valid_peer (t)) {
      fail_key (p, line, key, "'%s' is not a peer name; give PSK "
                "identities or certificate common names (up to %d printable "
                "characters, no space, comma, '=' or quote), separated by "
                "commas", t, PEER_NAME_MAX);
      goto err;
    }
    if (strv_contains (*out, *nout, t))
      continue;
    if (strv_add (out, nout, t) < 0) {
      fail_oom (p);
      goto err;
    }
  }
  free (copy);
  if (*nout == 0) {
    fail_key (p, line, key, "the list is empty; name at least one peer, "
              "or remove the key to admit every peer");
    return -1;
  }
  return 0;
 err:
  free (copy);
  return -1;
}

/* ---------------------------------------------------------- sections */

/* Which section a header's text names; for [port X] the letter.  On an
 * unknown name fills why. */
static enum section
parse_section (const char *raw, char *letter, char *why, size_t whylen)
{
  char text[256];
  snprintf (text, sizeof text, "%s", raw);
  char *s = trim (text);

  for (enum section k = SEC_NODE; k < SEC_PORT; k++)
    if (strcasecmp (s, section_names[k]) == 0)
      return k;
  if (strncasecmp (s, "port", 4) == 0
      && (s[4] == '\0' || isspace ((unsigned char) s[4]))) {
    char *l = trim (s + 4);
    if (l[0] && !l[1] && isalpha ((unsigned char) l[0])
        && isascii ((unsigned char) l[0])) {
      *letter = (char) toupper ((unsigned char) l[0]);
      return SEC_PORT;
    }
    snprintf (why, whylen, "a port section names one port letter from A "
              "to Z, e.g. [port B]");
    return SEC_NONE;
  }
  snprintf (why, whylen, "unknown section; the sections are [node], "
            "[listen], [tls], [units], [registry], [cluster], [control], "
            "[metrics] and [port A] to [port Z]");
  return SEC_NONE;
}

/* A [section] header line, seen by the reader.  Mirrors inih: the line
 * starts with '[' (after white space), the name ends at ']' or at an
 * inline comment (';' after white space). */
static void
section_header (struct parser *p, const char *line)
{
  const char *start = line + 1, *e = start;
  char raw[256], why[256], letter = 0;

  while (*e && *e != ']' && !(*e == ';' && e > start
                              && isspace ((unsigned char) e[-1])))
    e++;
  if (*e != ']') {
    fail_at (p, p->lineno, NULL, "a section header without its ']'; write "
             "e.g. [port B]");
    return;
  }
  snprintf (raw, sizeof raw, "%.*s", (int) (e - start), start);
  enum section k = parse_section (raw, &letter, why, sizeof why);
  if (k == SEC_NONE) {
    char what[300];
    snprintf (what, sizeof what, "section [%s]", trim (raw));
    fail_at (p, p->lineno, what, "%s", why);
    return;
  }

  struct config *cfg = p->cfg;
  p->sec = k;
  p->sec_line = p->lineno;
  switch (k) {
  case SEC_LISTEN: {
    /* Each [listen] section is one listener. */
    struct config_listen *nl = realloc (cfg->listen,
                                        (cfg->nlisten + 1) * sizeof *nl);
    if (!nl)
      return fail_oom (p);
    cfg->listen = nl;
    struct listen_lines *nll = realloc (p->ll, (cfg->nlisten + 1)
                                        * sizeof *nll);
    if (!nll)
      return fail_oom (p);
    p->ll = nll;
    memset (&nl[cfg->nlisten], 0, sizeof *nl);
    memset (&nll[cfg->nlisten], 0, sizeof *nll);
    nll[cfg->nlisten].section = p->lineno;
    p->sec_index = cfg->nlisten++;
    break;
  }
  case SEC_PORT: {
    struct config_port *old = find_port (cfg, letter);
    if (old) {
      char what[32];
      snprintf (what, sizeof what, "section [port %c]", letter);
      fail_at (p, p->lineno, what, "port %c is already described at line "
               "%u; keep one [port %c] section", letter, old->line, letter);
      return;
    }
    struct config_port *np = realloc (cfg->ports,
                                      (cfg->nports + 1) * sizeof *np);
    if (!np)
      return fail_oom (p);
    cfg->ports = np;
    struct port_lines *npl = realloc (p->pl, (cfg->nports + 1) * sizeof *npl);
    if (!npl)
      return fail_oom (p);
    p->pl = npl;
    memset (&np[cfg->nports], 0, sizeof *np);
    memset (&npl[cfg->nports], 0, sizeof *npl);
    np[cfg->nports].letter = letter;
    np[cfg->nports].line = p->lineno;
    p->sec_index = cfg->nports++;
    break;
  }
  default:
    if (p->singleton_line[k]) {
      char what[32];
      snprintf (what, sizeof what, "section [%s]", section_names[k]);
      fail_at (p, p->lineno, what, "[%s] already appears at line %u; keep "
               "one [%s] section", section_names[k], p->singleton_line[k],
               section_names[k]);
      return;
    }
    p->singleton_line[k] = p->lineno;
    break;
  }
}

/* ------------------------------------------------------------- reader */

/* inih's fgets-style reader: one line per call, counted; section headers
 * noted; a line too long for inih's buffer refused (inih would cut it
 * silently). */
static char *
line_reader (char *str, int num, void *stream)
{
  struct parser *p = stream;
  ssize_t n;

  if (p->failed)
    return NULL;                /* stop at the first error */
  n = getline (&p->buf, &p->bufsize, p->fp);
  if (n < 0) {
    if (ferror (p->fp))
      fail_at (p, p->lineno, NULL, "cannot read the file: %s",
               strerror (errno));
    return NULL;
  }
  p->lineno++;
  if (memchr (p->buf, '\0', (size_t) n)) {
    fail_at (p, p->lineno, NULL, "the line holds a NUL byte; is this a "
             "text file?");
    return NULL;
  }
  if (n >= num) {
    fail_at (p, p->lineno, NULL, "the line is longer than %d characters; "
             "shorten it", num - 2);
    return NULL;
  }
  memcpy (str, p->buf, (size_t) n + 1);

  const char *s = p->buf;
  if (!p->bom_checked) {
    p->bom_checked = true;
    if (memcmp (s, "\xEF\xBB\xBF", 3) == 0)
      s += 3;
  }
  while (isspace ((unsigned char) *s))
    s++;
  if (*s == '[')
    section_header (p, s);
  else if (*s && *s != ';' && *s != '#' && !strpbrk (s, "=:"))
    fail_at (p, p->lineno, NULL, "'%.*s' is neither 'key = value' nor a "
             "[section] header", (int) strcspn (s, "\r\n"), s);
  return p->failed ? NULL : str;
}

/* ----------------------------------------------------------- handlers */

static int
parse_listen_address (struct parser *p, const char *key, const char *v,
                      struct config_listen *l)
{
  unsigned line = p->lineno;

  if (strncasecmp (v, "unix:", 5) == 0) {
    char path[PATH_MAX];
    const char *sp = v + 5;
    if (!*sp) {
      fail_key (p, line, key, "'unix:' needs a socket path, e.g. "
                "unix:/run/altpath/nbd.sock");
      return -1;
    }
    if (!resolve_path (p, sp, path, sizeof path)
        || !copy_str (l->path, sizeof l->path, path)) {
      fail_key (p, line, key, "the socket path '%s' is longer than %zu "
                "characters, the most a Unix socket address holds; choose "
                "a shorter path", sp, sizeof l->path - 1);
      return -1;
    }
    l->is_unix = true;
    return 0;
  }

  char host[300], port[32] = DEFAULT_NBD_PORT;
  const char *colon;
  if (v[0] == '[') {
    const char *close = strchr (v, ']');
    if (!close) {
      fail_key (p, line, key, "'%s' opens '[' without ']'; write an IPv6 "
                "address as [::1]:10809", v);
      return -1;
    }
    snprintf (host, sizeof host, "%.*s", (int) (close - v - 1), v + 1);
    struct in6_addr a6;
    if (inet_pton (AF_INET6, host, &a6) != 1) {
      fail_key (p, line, key, "'%s' is not an IPv6 address; write e.g. "
                "[::1]:10809 or [::]:10809", host);
      return -1;
    }
    colon = close[1] == ':' ? close + 1 : NULL;
    if (close[1] && !colon) {
      fail_key (p, line, key, "'%s': after ']' comes ':PORT' or nothing; "
                "write e.g. [::1]:10809", v);
      return -1;
    }
  }
  else {
    colon = strchr (v, ':');
    if (colon && strchr (colon + 1, ':')) {
      fail_key (p, line, key, "'%s' has more than one ':'; put an IPv6 "
                "address in brackets, e.g. [::1]:10809", v);
      return -1;
    }
    snprintf (host, sizeof host, "%.*s",
              (int) (colon ? (size_t) (colon - v) : strlen (v)), v);
    if (!host[0]) {
      fail_key (p, line, key, "'%s' names no host; write e.g. "
                "127.0.0.1:10809, 0.0.0.0:10809 (every IPv4 address) or "
                "[::]:10809 (every address)", v);
      return -1;
    }
    struct in_addr a4;
    bool numeric = strspn (host, "0123456789.") == strlen (host);
    if (numeric && inet_pton (AF_INET, host, &a4) != 1) {
      fail_key (p, line, key, "'%s' is not an IPv4 address", host);
      return -1;
    }
    if (!numeric) {
      size_t n = strlen (host);
      if (n > 253 || strspn (host, "abcdefghijklmnopqrstuvwxyz"
                             "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != n
          || host[0] == '-' || host[0] == '.') {
        fail_key (p, line, key, "'%s' is not a host name or an address; "
                  "write HOST:PORT, [IPv6]:PORT or unix:PATH", host);
        return -1;
      }
    }
  }
  if (colon) {
    unsigned pn;
    if (!parse_uint (colon + 1, 1, 65535, &pn)) {
      fail_key (p, line, key, "'%s' is not a port number from 1 to 65535 "
                "(NBD's is 10809)", colon + 1);
      return -1;
    }
    snprintf (port, sizeof port, "%u", pn);
  }
  if (!copy_str (l->host, sizeof l->host, host)
      || !copy_str (l->port, sizeof l->port, port)) {
    fail_key (p, line, key, "the host name '%s' is too long", host);
    return -1;
  }
  l->is_unix = false;
  return 0;
}

static bool
is_loopback (const struct config_listen *l)
{
  struct in_addr a4;
  struct in6_addr a6;
  if (l->is_unix)
    return true;
  if (strcasecmp (l->host, "localhost") == 0)
    return true;
  if (inet_pton (AF_INET, l->host, &a4) == 1)
    return (ntohl (a4.s_addr) >> 24) == 127;
  if (inet_pton (AF_INET6, l->host, &a6) == 1)
    return IN6_IS_ADDR_LOOPBACK (&a6)
      || (IN6_IS_ADDR_V4MAPPED (&a6) && a6.s6_addr[12] == 127);
  return false;
}

static const char *
tls_mode_name (enum tls_mode m)
{
  return m == TLS_OFF ? "off" : m == TLS_ON ? "on" : "require";
}

static int
handle_node (struct parser *p, const char *key, const char *value)
{
  struct config *cfg = p->cfg;
  unsigned line = p->lineno;

  if (strcmp (key, "name") == 0) {
    size_t n = strlen (value);
    if (n == 0 || n > NODE_NAME_MAX
        || strspn (value, "abcdefghijklmnopqrstuvwxyz"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != n) {
      fail_key (p, line, key, "'%s' is not a node name; use 1 to %d "
                "letters, digits or '_' (it becomes part of device names "
                "such as ALPHA$DKA100)", value, NODE_NAME_MAX);
      return -1;
    }
    for (size_t i = 0; i <= n; i++)
      cfg->node[i] = (char) toupper ((unsigned char) value[i]);
    p->node_name_line = line;
    return 0;
  }
  if (strcmp (key, "alloclass") == 0) {
    if (!parse_uint (value, 0, NODE_ALLOCLASS_MAX, &cfg->node_alloclass)) {
      fail_key (p, line, key, "'%s' is not a node allocation class; give "
                "a number from 1 to %d, or 0 for none", value,
                NODE_ALLOCLASS_MAX);
      return -1;
    }
    p->node_alloclass_line = line;
    return 0;
  }
  if (strcmp (key, "nbd-buffer-mib") == 0) {
    /* At least 1 MiB, so a few 256 KiB requests fit; at most 64 GiB. */
    if (!parse_uint (value, 1, 65536, &cfg->nbd_buffer_mib)) {
      fail_key (p, line, key, "'%s' is not a buffer budget; give the MiB "
                "the NBD server may hold for requests in flight, 1 to "
                "65536 (default 32)", value);
      return -1;
    }
    return 0;
  }
  fail_key (p, line, key, "unknown key in [node]; [node] takes 'name', "
            "'alloclass' and 'nbd-buffer-mib'");
  return -1;
}

static int
handle_listen (struct parser *p, const char *key, const char *value)
{
  struct config_listen *l = &p->cfg->listen[p->sec_index];
  struct listen_lines *ll = &p->ll[p->sec_index];
  unsigned line = p->lineno;

  if (strcmp (key, "address") == 0) {
    if (parse_listen_address (p, key, value, l) < 0)
      return -1;
    ll->address = line;
    return 0;
  }
  if (strcmp (key, "tls") == 0) {
    if (strcasecmp (value, "off") == 0)
      l->tls = TLS_OFF;
    else if (strcasecmp (value, "on") == 0)
      l->tls = TLS_ON;
    else if (strcasecmp (value, "require") == 0)
      l->tls = TLS_REQUIRE;
    else {
      fail_key (p, line, key, "'%s' is not a TLS mode; write off, on "
                "(offered) or require", value);
      return -1;
    }
    l->tls_explicit = true;
    ll->tls = line;
    return 0;
  }
  fail_key (p, line, key, "unknown key in [listen]; [listen] takes "
            "'address' and 'tls'");
  return -1;
}

/* value, made absolute into out, must be a regular file we can read;
 * what names it in the message ("the PSK file"), hint says what to do. */
static int
readable_file (struct parser *p, unsigned line, const char *key,
               const char *value, char *out, size_t size, const char *what,
               const char *hint)
{
  struct stat st;
  if (!*value || !resolve_path (p, value, out, size)) {
    fail_key (p, line, key, "give the path of %s", what);
    return -1;
  }
  errno = 0;
  if (stat (out, &st) < 0 || !S_ISREG (st.st_mode) || access (out, R_OK) < 0) {
    fail_key (p, line, key, "cannot read %s %s: %s; %s", what, out,
              errno ? strerror (errno) : "not a regular file", hint);
    return -1;
  }
  return 0;
}

static int
handle_tls (struct parser *p, const char *key, const char *value)
{
  struct config *cfg = p->cfg;
  unsigned line = p->lineno;
  struct stat st;

  errno = 0;
  if (strcmp (key, "psk-file") == 0) {
    if (readable_file (p, line, key, value, cfg->tls_psk_file,
                       sizeof cfg->tls_psk_file, "the PSK file",
                       "create it with 'psktool -u NAME -p FILE'") < 0)
      return -1;
    p->psk_line = line;
    return 0;
  }
  if (strcmp (key, "cert-dir") == 0) {
    if (!*value || !resolve_path (p, value, cfg->tls_cert_dir,
                                  sizeof cfg->tls_cert_dir)) {
      fail_key (p, line, key, "give the directory that holds "
                "server-cert.pem, server-key.pem and ca-cert.pem");
      return -1;
    }
    errno = 0;
    if (stat (cfg->tls_cert_dir, &st) < 0 || !S_ISDIR (st.st_mode)) {
      fail_key (p, line, key, "%s is not a directory%s%s; give the "
                "directory that holds server-cert.pem, server-key.pem and "
                "ca-cert.pem", cfg->tls_cert_dir, errno ? ": " : "",
                errno ? strerror (errno) : "");
      return -1;
    }
    p->cert_line = line;
    return 0;
  }
  if (strcmp (key, "verify-peer") == 0) {
    bool b;
    if (!parse_bool (value, &b)) {
      fail_key (p, line, key, "'%s' is neither yes nor no", value);
      return -1;
    }
    cfg->tls_verify_peer = b;
    p->verify_line = line;
    return 0;
  }
  if (strcmp (key, "allow") == 0) {
    if (parse_peers (p, line, key, value, &cfg->allow, &cfg->nallow) < 0)
      return -1;
    p->allow_line = line;
    return 0;
  }
  if (strcmp (key, "priority") == 0) {
    /* Checked here, so that a typo is an error with a line number and
     * not a daemon that refuses every TLS client. */
    gnutls_priority_t prio;
    const char *errpos = NULL;
    size_t n = strlen (value);
    if (n == 0 || n >= sizeof cfg->tls_priority) {
      fail_key (p, line, key, "give a GnuTLS priority string of 1 to %zu "
                "characters, such as NORMAL:%%SERVER_PRECEDENCE",
                sizeof cfg->tls_priority - 1);
      return -1;
    }
    int r = gnutls_priority_init (&prio, value, &errpos);
    if (r < 0) {
      fail_key (p, line, key, "GnuTLS refuses '%s' at '%s' (%s); "
                "'gnutls-cli --priority STRING --list' shows what a string "
                "allows", value, errpos ? errpos : value, gnutls_strerror (r));
      return -1;
    }
    gnutls_priority_deinit (prio);
    memcpy (cfg->tls_priority, value, n + 1);
    p->priority_line = line;
    return 0;
  }
  fail_key (p, line, key, "unknown key in [tls]; [tls] takes 'psk-file', "
            "'cert-dir', 'verify-peer', 'allow' and 'priority'");
  return -1;
}

static int
handle_units (struct parser *p, const char *key, const char *value)
{
  struct config *cfg = p->cfg;
  unsigned *dst;

  if (strcmp (key, "request-timeout-ms") == 0)
    dst = &cfg->request_timeout_ms;
  else if (strcmp (key, "verify-timeout-ms") == 0)
    dst = &cfg->verify_timeout_ms;
  else {
    fail_key (p, p->lineno, key, "unknown key in [units]; [units] takes "
              "'request-timeout-ms' and 'verify-timeout-ms'");
    return -1;
  }
  if (!parse_uint (value, TIMEOUT_MIN_MS, TIMEOUT_MAX_MS, dst)) {
    fail_key (p, p->lineno, key, "'%s' is not a number of milliseconds "
              "from %d to %d", value, TIMEOUT_MIN_MS, TIMEOUT_MAX_MS);
    return -1;
  }
  return 0;
}

/* The first line of a password file (the newline is not part of it). */
static int
read_password (struct parser *p, unsigned line, const char *key,
               const char *file, char *out, size_t size)
{
  FILE *f = fopen (file, "re");
  char buf[1024];
  if (!f || !fgets (buf, sizeof buf, f)) {
    fail_key (p, line, key, "cannot read a password from %s: %s; write "
              "the etcd user's password on its first line", file,
              f ? "it is empty" : strerror (errno));
    if (f)
      fclose (f);
    return -1;
  }
  fclose (f);
  buf[strcspn (buf, "\r\n")] = '\0';
  if (!buf[0] || strlen (buf) >= size) {
    fail_key (p, line, key, "the first line of %s is %s; write the etcd "
              "user's password there (1 to %zu bytes)", file,
              buf[0] ? "too long" : "empty", size - 1);
    return -1;
  }
  memcpy (out, buf, strlen (buf) + 1);
  explicit_bzero (buf, sizeof buf);
  return 0;
}

/* The etcd keys that only make sense together, checked once the section
 * is read. */
static int
check_registry_security (struct parser *p)
{
  struct config *cfg = p->cfg;
  const struct { unsigned line; const char *key; } any[] = {
    { p->reg_ca_line, "ca-file" }, { p->reg_cert_line, "cert-file" },
    { p->reg_key_line, "key-file" }, { p->reg_user_line, "username" },
    { p->reg_password_line, "password-file" },
  };
  bool etcd = strcmp (cfg->registry_backend, "etcd") == 0;
  for (size_t i = 0; i < sizeof any / sizeof any[0]; i++) {
    char k[64];
    snprintf (k, sizeof k, "key '%s'", any[i].key);
    if (!any[i].line)
      continue;
    if (!etcd) {
      fail_at (p, any[i].line, k, "only the etcd backend takes it (this "
               "[registry] uses '%s')", cfg->registry_backend);
      return -1;
    }
    /* TLS files with a plain http:// endpoint would be silently unused. */
    if (i < 3 && strstr (cfg->registry_endpoints, "http://")) {
      fail_at (p, any[i].line, k, "the endpoints (line %u) include an "
               "http:// URL, which does not use TLS; give https:// "
               "endpoints", p->reg_endpoints_line);
      return -1;
    }
  }
  if (!p->reg_cert_line != !p->reg_key_line) {
    fail_at (p, p->reg_cert_line ? p->reg_cert_line : p->reg_key_line,
             p->reg_cert_line ? "key 'cert-file'" : "key 'key-file'",
             "a client certificate needs both 'cert-file' and 'key-file'");
    return -1;
  }
  if (!p->reg_user_line != !p->reg_password_line) {
    fail_at (p, p->reg_user_line ? p->reg_user_line : p->reg_password_line,
             p->reg_user_line ? "key 'username'" : "key 'password-file'",
             "etcd authentication needs both 'username' and "
             "'password-file'");
    return -1;
  }
  return 0;
}

/* [registry]: which backend, where. */
static int
handle_registry (struct parser *p, const char *key, const char *value)
{
  struct config *cfg = p->cfg;
  unsigned line = p->lineno;

  if (strcmp (key, "backend") == 0) {
    if (strcmp (value, "dir") && strcmp (value, "etcd")) {
      fail_key (p, line, key, "'%s' is not a registry backend; use 'dir' "
                "(nodes on one host) or 'etcd'", value);
      return -1;
    }
    snprintf (cfg->registry_backend, sizeof cfg->registry_backend, "%s",
              value);
    return 0;
  }
  if (strcmp (key, "dir") == 0) {
    if (!*value || !resolve_path (p, value, cfg->registry_dir,
                                  sizeof cfg->registry_dir)) {
      fail_key (p, line, key, "give a directory, e.g. "
                "/run/altpath/registry");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "endpoints") == 0) {
    if (strncmp (value, "http://", 7) && strncmp (value, "https://", 8)) {
      fail_key (p, line, key, "'%s' is not a list of etcd client URLs; "
                "give e.g. http://10.0.0.1:2379,http://10.0.0.2:2379",
                value);
      return -1;
    }
    if (strlen (value) >= sizeof cfg->registry_endpoints) {
      fail_key (p, line, key, "the list is too long");
      return -1;
    }
    snprintf (cfg->registry_endpoints, sizeof cfg->registry_endpoints, "%s",
              value);
    p->reg_endpoints_line = line;
    return 0;
  }
  const struct {
    const char *key;
    char *dst;
    size_t size;
    unsigned *line;
    const char *what, *hint;
  } files[] = {
    { "ca-file", cfg->registry_ca_file, sizeof cfg->registry_ca_file,
      &p->reg_ca_line, "the CA file", "give the PEM file of the CA that "
      "signed the etcd members' certificates" },
    { "cert-file", cfg->registry_cert_file, sizeof cfg->registry_cert_file,
      &p->reg_cert_line, "the client certificate",
      "give this node's PEM certificate for etcd" },
    { "key-file", cfg->registry_key_file, sizeof cfg->registry_key_file,
      &p->reg_key_line, "the client certificate's key",
      "give the PEM private key of cert-file" },
  };
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
    if (strcmp (key, files[i].key) == 0) {
      *files[i].line = line;
      return readable_file (p, line, key, value, files[i].dst, files[i].size,
                            files[i].what, files[i].hint);
    }
  if (strcmp (key, "username") == 0) {
    if (!*value || strlen (value) >= sizeof cfg->registry_username) {
      fail_key (p, line, key, "give the etcd user altpathd logs in as "
                "(1 to %zu bytes)", sizeof cfg->registry_username - 1);
      return -1;
    }
    snprintf (cfg->registry_username, sizeof cfg->registry_username, "%s",
              value);
    p->reg_user_line = line;
    return 0;
  }
  if (strcmp (key, "password-file") == 0) {
    char file[4096];
    p->reg_password_line = line;
    if (readable_file (p, line, key, value, file, sizeof file,
                       "the password file", "write the etcd user's "
                       "password on its first line, in a file only root "
                       "can read") < 0)
      return -1;
    return read_password (p, line, key, file, cfg->registry_password,
                          sizeof cfg->registry_password);
  }
  if (strcmp (key, "prefix") == 0) {
    if (value[0] != '/' || strlen (value) >= sizeof cfg->registry_prefix) {
      fail_key (p, line, key, "'%s' is not a key prefix; give e.g. "
                "/altpath/", value);
      return -1;
    }
    snprintf (cfg->registry_prefix, sizeof cfg->registry_prefix, "%s",
              value);
    return 0;
  }
  if (strcmp (key, "lease-ms") == 0) {
    if (!parse_uint (value, 500, 600000, &cfg->registry_lease_ms)) {
      fail_key (p, line, key, "'%s' is not a lease time; give "
                "milliseconds from 500 to 600000", value);
      return -1;
    }
    return 0;
  }
  fail_key (p, line, key, "unknown key in [registry]; [registry] takes "
            "'backend', 'dir', 'endpoints', 'prefix', 'lease-ms', "
            "'ca-file', 'cert-file', 'key-file', 'username' and "
            "'password-file'");
  return -1;
}

/* [cluster]: this node's own units and how it reaches its peers. */
static int
handle_cluster (struct parser *p, const char *key, const char *value)
{
  struct config *cfg = p->cfg;
  unsigned line = p->lineno;
  static const struct {
    const char *key;
    size_t off;
    unsigned min, max;
  } nums[] = {
    { "request-timeout-ms", offsetof (struct config, local_request_timeout_ms),
      TIMEOUT_MIN_MS, TIMEOUT_MAX_MS },
    { "verify-timeout-ms", offsetof (struct config, local_verify_timeout_ms),
      TIMEOUT_MIN_MS, TIMEOUT_MAX_MS },
    { "checker-interval-ms", offsetof (struct config, checker_interval_ms),
      10, TIMEOUT_MAX_MS },
    { "failback-ms", offsetof (struct config, failback_ms), 1,
      TIMEOUT_MAX_MS },
    { "direct-wait-ms", offsetof (struct config, direct_wait_ms), 1,
      60000 },
    { "connections", offsetof (struct config, client_connections), 1, 16 },
    { "deadline-ms", offsetof (struct config, deadline_ms), 100, 600000 },
    { "fence-wait-ms", offsetof (struct config, fence_wait_ms), 1,
      TIMEOUT_MAX_MS },
  };
  for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
    if (strcmp (key, nums[i].key) == 0) {
      unsigned *dst = (unsigned *) ((char *) cfg + nums[i].off);
      if (!parse_uint (value, nums[i].min, nums[i].max, dst)) {
        fail_key (p, line, key, "'%s' is not a number from %u to %u", value,
                  nums[i].min, nums[i].max);
        return -1;
      }
      return 0;
    }
  if (strcmp (key, "queue-if-no-path") == 0) {
    if (!parse_bool (value, &cfg->queue_if_no_path)) {
      fail_key (p, line, key, "'%s' is neither yes nor no", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "advertise") == 0) {
    if ((strncmp (value, "nbd://", 6) && strncmp (value, "nbds://", 7)
         && strncmp (value, "nbd+unix://", 11)
         && strncmp (value, "nbds+unix://", 12))
        || strlen (value) >= sizeof cfg->advertise) {
      fail_key (p, line, key, "'%s' is not an NBD URI without export name; "
                "give e.g. nbd://10.0.0.1:10809", value);
      return -1;
    }
    snprintf (cfg->advertise, sizeof cfg->advertise, "%s", value);
    return 0;
  }
  if (strcmp (key, "devices") == 0) {       /* device files (fuse.c) */
    if (strcmp (value, "none") == 0)
      snprintf (cfg->devices, sizeof cfg->devices, "none");
    else if (!*value || !resolve_path (p, value, cfg->devices,
                                       sizeof cfg->devices)) {
      fail_key (p, line, key, "give the directory for the device files "
                "(e.g. /run/altpath/dev), or 'none' for no device files");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "local-tcp") == 0) {
    struct config_listen *l = &cfg->local_tcp;
    if (parse_listen_address (p, key, value, l) < 0)
      return -1;
    if (l->is_unix || (strncmp (l->host, "127.", 4) && strcmp (l->host, "::1")
                       && strcmp (l->host, "localhost"))) {
      fail_key (p, line, key, "'%s' is not a loopback address; the units "
                "are this node's own and are exported on loopback only "
                "(e.g. 127.0.0.1:10810)", value);
      return -1;
    }
    l->tls = TLS_OFF;
    l->tls_explicit = true;
    return 0;
  }
  if (strcmp (key, "fault-dir") == 0) {
    if (!*value || !resolve_path (p, value, cfg->fault_dir,
                                  sizeof cfg->fault_dir)) {
      fail_key (p, line, key, "give a directory for fault trigger files");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "state-file") == 0) {
    if (!*value || !resolve_path (p, value, cfg->state_file,
                                  sizeof cfg->state_file)) {
      fail_key (p, line, key, "give a file for the operator's choices, "
                "e.g. /var/lib/altpath/%s.json", cfg->node[0] ? cfg->node
                : "NODE");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "local-socket") == 0) {
    if (!*value || !resolve_path (p, value, cfg->local_socket,
                                  sizeof cfg->local_socket)) {
      fail_key (p, line, key, "give a socket path of at most %zu bytes, "
                "e.g. /run/altpath/local.sock", sizeof cfg->local_socket - 1);
      return -1;
    }
    return 0;
  }
  char *dst = NULL;
  size_t len = 0;
  if (strcmp (key, "psk-file") == 0)
    dst = cfg->client_psk_file, len = sizeof cfg->client_psk_file;
  else if (strcmp (key, "cert-dir") == 0)
    dst = cfg->client_cert_dir, len = sizeof cfg->client_cert_dir;
  if (dst) {
    if (!*value || !resolve_path (p, value, dst, len)) {
      fail_key (p, line, key, "give a path");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "username") == 0) {
    if (!*value || strlen (value) >= sizeof cfg->client_username) {
      fail_key (p, line, key, "give the PSK identity this node uses");
      return -1;
    }
    snprintf (cfg->client_username, sizeof cfg->client_username, "%s", value);
    return 0;
  }
  fail_key (p, line, key, "unknown key in [cluster]; see "
            "docs/configuration.md for its keys");
  return -1;
}

/* [control]: the socket altpath talks to (control.c). */
static int
handle_control (struct parser *p, const char *key, const char *value)
{
  struct config *cfg = p->cfg;
  unsigned line = p->lineno;

  if (strcmp (key, "socket") == 0) {
    char path[PATH_MAX];
    if (!*value || !resolve_path (p, value, path, sizeof path)
        || !copy_str (cfg->control_socket, sizeof cfg->control_socket,
                      path)) {
      fail_key (p, line, key, "give a socket path of at most %zu bytes "
                "(the most a Unix socket address holds), e.g. "
                "/run/altpath/control.sock", sizeof cfg->control_socket - 1);
      return -1;
    }
    cfg->control_explicit = true;
    return 0;
  }
  if (strcmp (key, "group") == 0) {
    size_t n = strlen (value);
    if (n == 0 || n >= sizeof cfg->control_group || value[0] == '-'
        || strspn (value, "abcdefghijklmnopqrstuvwxyz"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != n) {
      fail_key (p, line, key, "'%s' is not a group name; give the group "
                "whose members may use altpath besides root, e.g. altpath",
                value);
      return -1;
    }
    struct group gr, *found = NULL;
    int e = ERANGE;
    for (size_t size = 16384; e == ERANGE && size <= (64u << 20);
         size *= 4) {
      char *buf = malloc (size);
      e = buf ? getgrnam_r (value, &gr, buf, size, &found) : ENOMEM;
      free (buf);               /* only whether it exists is kept */
    }
    if (!found) {
      if (e)
        fail_key (p, line, key, "cannot look up group '%s': %s", value,
                  strerror (e));
      else
        fail_key (p, line, key, "group '%s' does not exist; create it "
                  "('groupadd %s') or remove the key (then only root may "
                  "use altpath)", value, value);
      return -1;
    }
    snprintf (cfg->control_group, sizeof cfg->control_group, "%s", value);
    return 0;
  }
  fail_key (p, line, key, "unknown key in [control]; [control] takes "
            "'socket' and 'group'");
  return -1;
}

/* [metrics]: the Prometheus endpoint (metrics.c).  TCP only: that is
 * what Prometheus scrapes. */
static int
handle_metrics (struct parser *p, const char *key, const char *value)
{
  struct config *cfg = p->cfg;
  unsigned line = p->lineno;

  if (strcmp (key, "listen") == 0) {
    if (strncasecmp (value, "unix:", 5) == 0) {
      fail_key (p, line, key, "Prometheus scrapes over TCP; give HOST:PORT, "
                "e.g. 127.0.0.1:" DEFAULT_METRICS_PORT);
      return -1;
    }
    /* HOST[:PORT] or [IPv6][:PORT]; the port defaults to 9469, not to
     * NBD's, so it is checked here and the rest by the listeners'
     * parser.  A bare IPv6 address gets no port of its own and that
     * parser explains the brackets. */
    bool bracket = value[0] == '[';
    const char *end = bracket ? strchr (value, ']') : NULL;
    const char *colon = bracket ? (end && end[1] == ':' ? end + 1 : NULL)
      : strchr (value, ':');
    if (!bracket && colon && strchr (colon + 1, ':'))
      colon = NULL;
    unsigned pn;
    if (colon && !parse_uint (colon + 1, 1, 65535, &pn)) {
      fail_key (p, line, key, "'%s' is not a port number from 1 to 65535; "
                "give e.g. 127.0.0.1:" DEFAULT_METRICS_PORT, colon + 1);
      return -1;
    }
    char addr[300];
    int n = snprintf (addr, sizeof addr,
                      colon ? "%s" : "%s:" DEFAULT_METRICS_PORT, value);
    if (n < 0 || (size_t) n >= sizeof addr) {
      fail_key (p, line, key, "the address is too long");
      return -1;
    }
    struct config_listen l;
    memset (&l, 0, sizeof l);
    if (parse_listen_address (p, key, addr, &l) < 0)
      return -1;
    snprintf (cfg->metrics_host, sizeof cfg->metrics_host, "%s", l.host);
    snprintf (cfg->metrics_port, sizeof cfg->metrics_port, "%s", l.port);
    p->metrics_listen_line = line;
    return 0;
  }
  if (strcmp (key, "allow-remote") == 0) {
    if (!parse_bool (value, &cfg->metrics_allow_remote)) {
      fail_key (p, line, key, "'%s' is neither yes nor no", value);
      return -1;
    }
    return 0;
  }
  fail_key (p, line, key, "unknown key in [metrics]; [metrics] takes "
            "'listen' and 'allow-remote'");
  return -1;
}

static struct config_disk *
new_disk (struct parser *p)
{
  struct config *cfg = p->cfg;
  struct config_disk *nd = realloc (cfg->disks,
                                    (cfg->ndisks + 1) * sizeof *nd);
  if (!nd)
    return NULL;
  cfg->disks = nd;
  if (cfg->ndisks + 1 > p->dx_alloc) {
    struct disk_extra *nx = realloc (p->dx, (cfg->ndisks + 1) * sizeof *nx);
    if (!nx)
      return NULL;
    p->dx = nx;
    p->dx_alloc = cfg->ndisks + 1;
  }
  memset (&nd[cfg->ndisks], 0, sizeof *nd);
  p->dx[cfg->ndisks].read_only = -1;
  return &nd[cfg->ndisks++];
}

/* "UNIT = FILE[, option]...": options read-only (ro), read-write (rw),
 * identity=ID, allow=PEER PEER... */
static int
parse_disk (struct parser *p, const char *key, const char *value,
            struct config_port *port, unsigned unit)
{
  unsigned line = p->lineno;
  char *copy = strdup (value), *rest, *path;
  struct config_disk *d;
  struct disk_extra *dx;

  if (!copy || !(d = new_disk (p))) {
    free (copy);
    fail_oom (p);
    return -1;
  }
  dx = &p->dx[p->cfg->ndisks - 1];
  d->unit_number = unit;
  d->port_letter = port->letter;
  d->line = line;

  char *opts = NULL;             /* after the first ',' */
  if (copy[0] == '"') {
    char *close = strchr (copy + 1, '"');
    if (!close) {
      fail_key (p, line, key, "the file name opens '\"' without closing "
                "it");
      goto err;
    }
    *close = '\0';
    path = copy + 1;
    rest = trim (close + 1);
    if (*rest == ',')
      opts = rest + 1;
    else if (*rest) {
      fail_key (p, line, key, "after the quoted file name comes ',' and "
                "the options, or nothing");
      goto err;
    }
  }
  else {
    char *comma = strchr (copy, ',');
    if (comma) {
      *comma = '\0';
      opts = comma + 1;
    }
    path = trim (copy);
  }
  if (!*path) {
    fail_key (p, line, key, "no file given; write '%s = /path/to/image' "
              "(a disk image file or a block device)", key);
    goto err;
  }
  if (!resolve_path (p, path, d->file, sizeof d->file)) {
    fail_key (p, line, key, "the file name is too long");
    goto err;
  }

  bool saw_ro = false, saw_rw = false;
  for (char *opt = opts; opt;) {
    char *next = strchr (opt, ',');
    if (next)
      *next++ = '\0';
    char *o = trim (opt);
    opt = next;
    if (!*o) {
      fail_key (p, line, key, "an empty option (two commas, or a comma "
                "at the end); options are read-only, read-write, "
                "identity=ID and allow=PEER...");
      goto err;
    }
    if (strcasecmp (o, "read-only") == 0 || strcasecmp (o, "ro") == 0)
      saw_ro = true;
    else if (strcasecmp (o, "read-write") == 0 || strcasecmp (o, "rw") == 0)
      saw_rw = true;
    else if (strncasecmp (o, "identity=", 9) == 0) {
      char *id = trim (o + 9);
      if (!*id || strlen (id) >= sizeof d->identity
          || strcspn (id, " \t") != strlen (id)) {
        fail_key (p, line, key, "identity '%s' must be 1 to %zu characters "
                  "without spaces (a WWID or serial)", id,
                  sizeof d->identity - 1);
        goto err;
      }
      snprintf (d->identity, sizeof d->identity, "%s", id);
    }
    else if (strncasecmp (o, "allow=", 6) == 0) {
      if (parse_peers (p, line, key, o + 6, &d->allow, &d->nallow) < 0)
        goto err;
    }
    else {
      fail_key (p, line, key, "unknown option '%s'; options are "
                "read-only, read-write, identity=ID and allow=PEER "
                "PEER...", o);
      goto err;
    }
  }
  if (saw_ro && saw_rw) {
    fail_key (p, line, key, "both read-only and read-write; keep one");
    goto err;
  }
  if (saw_ro || saw_rw)
    dx->read_only = saw_ro;
  free (copy);
  return 0;
 err:
  free (copy);
  return -1;
}

static int
handle_port (struct parser *p, const char *key, const char *value)
{
  struct config_port *port = &p->cfg->ports[p->sec_index];
  struct port_lines *pl = &p->pl[p->sec_index];
  unsigned line = p->lineno;

  if (isdigit ((unsigned char) key[0])) {
    unsigned unit;
    if ((key[0] == '0' && key[1]) || !parse_uint (key, 0, UNIT_MAX, &unit)) {
      fail_key (p, line, key, "not a unit number; a disk is 'UNIT = FILE' "
                "with UNIT from 0 to %d, without leading zeros", UNIT_MAX);
      return -1;
    }
    return parse_disk (p, key, value, port, unit);
  }
  if (strcmp (key, "alloclass") == 0) {
    if (!parse_uint (value, 0, PORT_ALLOCLASS_MAX, &port->alloclass)) {
      fail_key (p, line, key, "'%s' is not a port allocation class; give a "
                "number from 1 to %d, or 0 for none (a node-local port)",
                value, PORT_ALLOCLASS_MAX);
      return -1;
    }
    pl->alloclass = line;
    return 0;
  }
  if (strcmp (key, "glob") == 0) {
    if (!*value || !resolve_path (p, value, port->glob, sizeof port->glob)) {
      fail_key (p, line, key, "give a file pattern, e.g. "
                "/srv/shared/disk*.img");
      return -1;
    }
    port->glob_line = line;
    return 0;
  }
  if (strcmp (key, "bus") == 0) {
    if (!*value || strlen (value) >= sizeof port->bus) {
      fail_key (p, line, key, "give the name of the storage this port is "
                "attached to, the same on every node that shares it");
      return -1;
    }
    snprintf (port->bus, sizeof port->bus, "%s", value);
    return 0;
  }
  if (strcmp (key, "read-only") == 0) {
    if (!parse_bool (value, &port->read_only)) {
      fail_key (p, line, key, "'%s' is neither yes nor no", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "allow") == 0) {
    if (parse_peers (p, line, key, value, &port->allow, &port->nallow) < 0)
      return -1;
    pl->allow = line;
    return 0;
  }
  fail_key (p, line, key, "unknown key in [port %c]; a port takes "
            "'alloclass', 'glob', 'bus', 'read-only', 'allow' and disks as "
            "'UNIT = FILE' (UNIT from 0 to %d)", port->letter, UNIT_MAX);
  return -1;
}

static int
handler (void *user, const char *section, const char *name,
         const char *value)
{
  struct parser *p = user;
  char key[64];
  size_t i;

  if (p->failed)
    return 0;
  /* Keys are case-insensitive, and '_' is taken for '-'. */
  for (i = 0; name[i] && i < sizeof key - 1; i++)
    key[i] = name[i] == '_' ? '-' : (char) tolower ((unsigned char) name[i]);
  key[i] = '\0';

  if (p->sec == SEC_NONE) {
    fail_key (p, p->lineno, key, "a key before any section; put it under "
              "[node], [listen], [tls], [units] or [port X]");
    return 0;
  }
  for (i = 0; i < p->nseen; i++)
    if (p->seen[i].section_line == p->sec_line
        && strcmp (p->seen[i].key, key) == 0) {
      fail_key (p, p->lineno, key, "given twice in this section (first at "
                "line %u); keep one", p->seen[i].line);
      return 0;
    }
  struct seen_key *ns = realloc (p->seen, (p->nseen + 1) * sizeof *ns);
  if (!ns) {
    fail_oom (p);
    return 0;
  }
  p->seen = ns;
  ns[p->nseen].section_line = p->sec_line;
  snprintf (ns[p->nseen].key, sizeof ns[p->nseen].key, "%s", key);
  ns[p->nseen++].line = p->lineno;

  int r;
  switch (p->sec) {
  case SEC_NODE: r = handle_node (p, key, value); break;
  case SEC_LISTEN: r = handle_listen (p, key, value); break;
  case SEC_TLS: r = handle_tls (p, key, value); break;
  case SEC_UNITS: r = handle_units (p, key, value); break;
  case SEC_PORT: r = handle_port (p, key, value); break;
  case SEC_REGISTRY: r = handle_registry (p, key, value); break;
  case SEC_CLUSTER: r = handle_cluster (p, key, value); break;
  case SEC_CONTROL: r = handle_control (p, key, value); break;
  case SEC_METRICS: r = handle_metrics (p, key, value); break;
  default: r = -1; break;
  }
  return r == 0;
}

/* ------------------------------------------------------------- finish */

/* Defaults of [registry] and [cluster], and what they need. */
static int
finish_cluster (struct parser *p)
{
  struct config *cfg = p->cfg;
  cfg->cluster = p->singleton_line[SEC_REGISTRY] != 0;
  if (!cfg->registry_backend[0])
    snprintf (cfg->registry_backend, sizeof cfg->registry_backend, "dir");
  if (!cfg->registry_dir[0])
    snprintf (cfg->registry_dir, sizeof cfg->registry_dir,
              "/run/altpath/registry");
  if (!cfg->registry_prefix[0])
    snprintf (cfg->registry_prefix, sizeof cfg->registry_prefix, "/altpath/");
  if (!cfg->registry_lease_ms)
    cfg->registry_lease_ms = 3000;
  if (strcmp (cfg->registry_backend, "etcd") == 0
      && !cfg->registry_endpoints[0]) {
    fail_at (p, p->singleton_line[SEC_REGISTRY], "section [registry]",
             "backend 'etcd' needs 'endpoints', e.g. "
             "endpoints = http://127.0.0.1:2379");
    return -1;
  }
  if (check_registry_security (p) < 0)
    return -1;
  if (!cfg->local_request_timeout_ms)
    cfg->local_request_timeout_ms = 1000;
  if (!cfg->local_verify_timeout_ms)
    cfg->local_verify_timeout_ms = 30000;
  if (!cfg->checker_interval_ms)
    cfg->checker_interval_ms = 500;
  if (!cfg->failback_ms)
    cfg->failback_ms = 5000;
  if (!cfg->direct_wait_ms)
    cfg->direct_wait_ms = 1000;
  if (!cfg->client_connections)
    cfg->client_connections = 2;
  if (!cfg->deadline_ms)
    cfg->deadline_ms = 2000;
  if (!cfg->fence_wait_ms)
    cfg->fence_wait_ms = 10000;
  /* Device files: on by default in a cluster; "none" (kept as such
   * while parsing, so that the default does not replace it) is "". */
  if (strcmp (cfg->devices, "none") == 0)
    cfg->devices[0] = '\0';
  else if (cfg->cluster && !cfg->devices[0])
    snprintf (cfg->devices, sizeof cfg->devices, "/run/altpath/dev");
  if (cfg->cluster && !cfg->state_file[0])
    snprintf (cfg->state_file, sizeof cfg->state_file,
              "/var/lib/altpath/%s.json", cfg->node);
  if (cfg->cluster && !cfg->local_socket[0])
    snprintf (cfg->local_socket, sizeof cfg->local_socket,
              "/run/altpath/%s.sock", cfg->node);
  if (cfg->cluster && !cfg->advertise[0]) {
    /* The first listener peers can use. */
    for (size_t i = 0; i < cfg->nlisten && !cfg->advertise[0]; i++) {
      const struct config_listen *l = &cfg->listen[i];
      const char *scheme = l->tls == TLS_REQUIRE ? "nbds" : "nbd";
      if (l->is_unix)
        snprintf (cfg->advertise, sizeof cfg->advertise,
                  "%s+unix://?socket=%s", scheme, l->path);
      else if (strcmp (l->host, "0.0.0.0") && strcmp (l->host, "::"))
        snprintf (cfg->advertise, sizeof cfg->advertise,
                  strchr (l->host, ':') ? "%s://[%s]:%s" : "%s://%s:%s",
                  scheme, l->host, l->port);
    }
    if (!cfg->advertise[0]) {
      fail_at (p, p->singleton_line[SEC_REGISTRY], "section [registry]",
               "no listener peers can reach (a wildcard address says "
               "nothing); add 'advertise = nbd://ADDRESS:PORT' to "
               "[cluster]");
      return -1;
    }
  }
  /* A shared port's bus: by default the directory its disks are in. */
  for (size_t i = 0; i < cfg->nports; i++) {
    struct config_port *port = &cfg->ports[i];
    if (port->bus[0] || !port->alloclass)
      continue;
    char dir[4096] = "";
    if (port->glob[0])
      snprintf (dir, sizeof dir, "%s", port->glob);
    else
      for (size_t k = 0; k < cfg->ndisks; k++)
        if (cfg->disks[k].port_letter == port->letter) {
          snprintf (dir, sizeof dir, "%s", cfg->disks[k].file);
          break;
        }
    char *slash = strrchr (dir, '/');
    if (slash)
      *slash = '\0';
    char real[PATH_MAX];
    snprintf (port->bus, sizeof port->bus, "%s",
              dir[0] && realpath (dir, real) ? real : dir);
  }
  return 0;
}

/* [metrics]: its default address, and loopback unless allowed. */
static int
finish_metrics (struct parser *p)
{
  struct config *cfg = p->cfg;
  cfg->metrics = p->singleton_line[SEC_METRICS] != 0;
  if (!cfg->metrics)
    return 0;
  if (!cfg->metrics_host[0]) {
    snprintf (cfg->metrics_host, sizeof cfg->metrics_host, "%s",
              DEFAULT_METRICS_HOST);
    snprintf (cfg->metrics_port, sizeof cfg->metrics_port, "%s",
              DEFAULT_METRICS_PORT);
  }
  struct config_listen l;
  memset (&l, 0, sizeof l);
  snprintf (l.host, sizeof l.host, "%s", cfg->metrics_host);
  if (!is_loopback (&l) && !cfg->metrics_allow_remote) {
    fail_key (p, p->metrics_listen_line, "listen", "%s is not a loopback "
              "address, and the metrics tell whoever connects this node's "
              "devices, paths and load (no TLS, no password); write "
              "'allow-remote = yes' in [metrics] to serve them on the "
              "network anyway (firewall the port to the Prometheus "
              "servers), or listen on 127.0.0.1", cfg->metrics_host);
    return -1;
  }
  return 0;
}

/* Checks that need the whole file, and defaults. */
static int
finish (struct parser *p)
{
  struct config *cfg = p->cfg;
  bool have_creds = cfg->tls_psk_file[0] || cfg->tls_cert_dir[0];

  if (!cfg->node[0]) {
    if (p->singleton_line[SEC_NODE])
      fail_at (p, p->singleton_line[SEC_NODE], "section [node]", "no "
               "'name'; add e.g. 'name = ALPHA' (the node's name, used in "
               "device names like ALPHA$DKA100)");
    else
      fail_at (p, 0, NULL, "no [node] section; add one with the node's "
               "name, e.g. '[node]' and 'name = ALPHA'");
    return -1;
  }
  if (!cfg->request_timeout_ms)
    cfg->request_timeout_ms = DEFAULT_REQUEST_TIMEOUT_MS;
  if (!cfg->verify_timeout_ms)
    cfg->verify_timeout_ms = DEFAULT_VERIFY_TIMEOUT_MS;
  if (finish_cluster (p) < 0)
    return -1;
  if (finish_metrics (p) < 0)
    return -1;
  if (!cfg->control_socket[0])
    snprintf (cfg->control_socket, sizeof cfg->control_socket,
              "/run/altpath/control.sock");

  /* TLS credentials. */
  if (cfg->tls_cert_dir[0]) {
    static const char *const need[] = { "server-cert.pem", "server-key.pem",
                                        "ca-cert.pem" };
    for (size_t i = 0; i < (cfg->tls_verify_peer ? 3u : 2u); i++) {
      char f[PATH_MAX + 32];
      snprintf (f, sizeof f, "%s/%s", cfg->tls_cert_dir, need[i]);
      if (access (f, R_OK) < 0) {
        fail_key (p, p->cert_line, "cert-dir", "cannot read %s: %s; the "
                  "directory needs server-cert.pem and server-key.pem, and "
                  "ca-cert.pem when verify-peer = yes (as qemu-nbd and "
                  "nbdkit)", f, strerror (errno));
        return -1;
      }
    }
  }
  if (cfg->tls_verify_peer && !cfg->tls_cert_dir[0]) {
    fail_key (p, p->verify_line, "verify-peer", "client certificates are "
              "checked against X.509 credentials, but [tls] has no "
              "cert-dir; set cert-dir, or verify-peer = no");
    return -1;
  }
  if (cfg->tls_priority[0] && !have_creds) {
    fail_key (p, p->priority_line, "priority", "a TLS priority string, but "
              "[tls] has neither psk-file nor cert-dir, so no TLS session "
              "could use it; set one of them");
    return -1;
  }
  if (cfg->nallow && !have_creds) {
    fail_key (p, p->allow_line, "allow", "peers are named by their TLS "
              "identity, but [tls] has neither psk-file nor cert-dir, so no "
              "peer could ever be admitted; set one of them");
    return -1;
  }

  /* Listeners. */
  if (cfg->nlisten == 0) {
    fail_at (p, 0, NULL, "no [listen] section, so nothing could connect; "
             "add one, e.g. '[listen]' and 'address = 127.0.0.1:10809'");
    return -1;
  }
  for (size_t i = 0; i < cfg->nlisten; i++) {
    struct config_listen *l = &cfg->listen[i];
    struct listen_lines *ll = &p->ll[i];
    if (!ll->address) {
      fail_at (p, ll->section, "section [listen]", "no 'address'; add e.g. "
               "'address = 127.0.0.1:10809' or 'address = "
               "unix:/run/altpath/nbd.sock'");
      return -1;
    }
    if (!l->tls_explicit)
      l->tls = is_loopback (l) ? TLS_OFF : TLS_REQUIRE;
    if (l->tls != TLS_OFF && !have_creds) {
      if (l->tls_explicit)
        fail_key (p, ll->tls, "tls", "'%s' needs TLS credentials, but [tls] "
                  "has neither psk-file nor cert-dir; set one of them, or "
                  "tls = off", tls_mode_name (l->tls));
      else
        fail_key (p, ll->address, "address", "%s is not a loopback "
                  "address, so TLS is required by default, but [tls] has "
                  "neither psk-file nor cert-dir; set one of them, or write "
                  "'tls = off' in this [listen] section to serve in "
                  "plaintext", l->host);
      return -1;
    }
    for (size_t j = 0; j < i; j++) {
      const struct config_listen *o = &cfg->listen[j];
      if (l->is_unix == o->is_unix
          && (l->is_unix ? strcmp (l->path, o->path) == 0
              : strcasecmp (l->host, o->host) == 0
              && strcmp (l->port, o->port) == 0)) {
        fail_key (p, ll->address, "address", "the same address as the "
                  "listener at line %u; keep one", p->ll[j].address);
        return -1;
      }
    }
  }

  /* Ports: allow lists within the node's. */
  for (size_t i = 0; i < cfg->nports; i++) {
    struct config_port *port = &cfg->ports[i];
    if (port->nallow && !have_creds) {
      fail_key (p, p->pl[i].allow, "allow", "peers are named by their TLS "
                "identity, but [tls] has neither psk-file nor cert-dir; set "
                "one of them");
      return -1;
    }
    for (size_t k = 0; cfg->nallow && k < port->nallow; k++)
      if (!strv_contains (cfg->allow, cfg->nallow, port->allow[k])) {
        fail_key (p, p->pl[i].allow, "allow", "peer '%s' is not in [tls] "
                  "allow, which admits peers to every disk; add it there, or "
                  "remove it here", port->allow[k]);
        return -1;
      }
  }

  /* Disks: defaults from their port, names, duplicates. */
  for (size_t i = 0; i < cfg->ndisks; i++) {
    struct config_disk *d = &cfg->disks[i];
    struct config_port *port = find_port (cfg, d->port_letter);
    char key[16];
    snprintf (key, sizeof key, "%u", d->unit_number);

    d->read_only = p->dx[i].read_only < 0 ? port->read_only
      : p->dx[i].read_only;
    if (d->nallow && !have_creds) {
      fail_key (p, d->line, key, "allow= names peers by their TLS identity, "
                "but [tls] has neither psk-file nor cert-dir; set one of "
                "them");
      return -1;
    }
    for (size_t k = 0; cfg->nallow && k < d->nallow; k++)
      if (!strv_contains (cfg->allow, cfg->nallow, d->allow[k])) {
        fail_key (p, d->line, key, "peer '%s' is not in [tls] allow, which "
                  "admits peers to every disk; add it there, or remove it "
                  "here", d->allow[k]);
        return -1;
      }
    if (!d->allow) {
      int r = port->allow
        ? strv_copy (&d->allow, &d->nallow, port->allow, port->nallow)
        : strv_copy (&d->allow, &d->nallow, cfg->allow, cfg->nallow);
      if (r < 0) {
        fail_oom (p);
        return -1;
      }
    }
    device_name (cfg, port, d->unit_number, d->device, sizeof d->device);

    char ci[PATH_MAX], cj[PATH_MAX];
    canonical (d->file, ci);
    for (size_t j = 0; j < i; j++) {
      const struct config_disk *o = &cfg->disks[j];
      if (strcmp (o->device, d->device) == 0) {
        fail_key (p, d->line, key, "the device name %s is already given to "
                  "the disk at line %u; change a unit number or an "
                  "allocation class", d->device, o->line);
        return -1;
      }
      canonical (o->file, cj);
      if (strcmp (ci, cj) == 0) {
        fail_key (p, d->line, key, "%s is already served as %s (line %u); "
                  "one disk must have one name", d->file, o->device,
                  o->line);
        return -1;
      }
    }
  }
  return 0;
}

/* ---------------------------------------------------------- public API */

void
config_free (struct config *cfg)
{
  if (!cfg)
    return;
  free (cfg->listen);
  for (size_t i = 0; i < cfg->nports; i++)
    strv_free (cfg->ports[i].allow, cfg->ports[i].nallow);
  free (cfg->ports);
  for (size_t i = 0; i < cfg->ndisks; i++)
    strv_free (cfg->disks[i].allow, cfg->disks[i].nallow);
  free (cfg->disks);
  strv_free (cfg->allow, cfg->nallow);
  memset (cfg, 0, sizeof *cfg);
}

int
config_load (const char *file, struct config *cfg, char *err, size_t errlen)
{
  struct parser p = { .cfg = cfg, .file = file, .err = err,
                      .errlen = errlen };
  char dir[PATH_MAX];
  int r;

  memset (cfg, 0, sizeof *cfg);
  if (errlen)
    err[0] = '\0';
  if (!copy_str (cfg->file, sizeof cfg->file, file)) {
    fail_at (&p, 0, NULL, "the file name is too long");
    return -1;
  }
  /* The directory relative paths start from, made absolute now so that
   * a later change of directory does not move them. */
  dir_of (file, dir, sizeof dir);
  if (!realpath (dir, p.dir)) {
    fail_at (&p, 0, NULL, "cannot find the directory of the file: %s",
             strerror (errno));
    return -1;
  }

  p.fp = fopen (file, "re");
  if (!p.fp) {
    fail_at (&p, 0, NULL, "cannot open the configuration file: %s; give "
             "its path with --config", strerror (errno));
    return -1;
  }
  /* This inih is built with run-time settings: keep indented lines as
   * lines of their own (no multi-line values, which would turn a stray
   * indent into a silently joined value), and take lines long enough for
   * a full path.  line_reader refuses what would still not fit. */
  ini_allow_multiline = false;
  ini_use_stack = false;
  ini_allow_realloc = false;
  ini_max_line = LINE_CHARS;
  ini_initial_alloc = LINE_CHARS;
  r = ini_parse_stream (line_reader, &p, handler, &p);
  fclose (p.fp);
  free (p.buf);
  if (!p.failed && r > 0)
    fail_at (&p, (unsigned) r, NULL, "cannot read this line as 'key = "
             "value' or a [section] header");
  else if (!p.failed && r < 0)
    fail_at (&p, 0, NULL, "cannot read the file (inih error %d)", r);
  if (!p.failed)
    finish (&p);

  free (p.ll);
  free (p.pl);
  free (p.dx);
  free (p.seen);
  if (p.failed) {
    config_free (cfg);
    return -1;
  }
  return 0;
}

/* The unit number in a file name: its last run of digits ("disk100.img"
 * is 100).  -1 if there is none or it is out of range. */
static long
unit_from_name (const char *path, bool *too_big)
{
  const char *base = strrchr (path, '/');
  const char *end = NULL, *start;
  base = base ? base + 1 : path;
  *too_big = false;
  for (const char *c = base; *c; c++)
    if (isdigit ((unsigned char) *c))
      end = c;
  if (!end)
    return -1;
  for (start = end; start > base && isdigit ((unsigned char) start[-1]);
       start--)
    ;
  long v = 0;
  for (const char *c = start; c <= end; c++) {
    v = v * 10 + (*c - '0');
    if (v > UNIT_MAX) {
      *too_big = true;
      return -1;
    }
  }
  return v;
}

static int
disk_order (const void *a, const void *b)
{
  const struct config_disk *x = a, *y = b;
  if (x->port_letter != y->port_letter)
    return x->port_letter < y->port_letter ? -1 : 1;
  return x->unit_number < y->unit_number ? -1
    : x->unit_number > y->unit_number;
}

/* The canonical names of the disks found so far, each computed once:
 * realpath() of every earlier disk for every match made a scan of 1000
 * disks (the start, every rescan, every hot-add) take tens of seconds
 * (bench/scale.sh). */
struct canon_list {
  char **v;
  size_t n, cap;
};

static int
canon_push (struct canon_list *c, const char *canonical_name)
{
  if (c->n == c->cap) {
    size_t nc = c->cap ? 2 * c->cap : 64;
    char **nv = realloc (c->v, nc * sizeof *nv);
    if (!nv)
      return -1;
    c->v = nv;
    c->cap = nc;
  }
  if (!(c->v[c->n] = strdup (canonical_name)))
    return -1;
  c->n++;
  return 0;
}

static void
canon_free (struct canon_list *c)
{
  for (size_t i = 0; i < c->n; i++)
    free (c->v[i]);
  free (c->v);
}

int
config_scan_ports (struct config *cfg, char *err, size_t errlen)
{
  size_t keep = 0;
  struct canon_list cl = { 0 };

  if (errlen)
    err[0] = '\0';
  /* Forget what the last scan found; listed disks stay. */
  for (size_t i = 0; i < cfg->ndisks; i++) {
    if (cfg->disks[i].from_glob)
      strv_free (cfg->disks[i].allow, cfg->disks[i].nallow);
    else
      cfg->disks[keep++] = cfg->disks[i];
  }
  cfg->ndisks = keep;
  for (size_t i = 0; i < cfg->ndisks; i++) {
    char c[PATH_MAX];
    canonical (cfg->disks[i].file, c);
    if (canon_push (&cl, c) < 0) {
      canon_free (&cl);
      snprintf (err, errlen, "%s: out of memory expanding the globs",
                cfg->file);
      return -1;
    }
  }

  for (size_t pi = 0; pi < cfg->nports; pi++) {
    struct config_port *port = &cfg->ports[pi];
    glob_t g;
    int r;

    if (!port->glob[0])
      continue;
    r = glob (port->glob, 0, NULL, &g);
    if (r == GLOB_NOMATCH)
      continue;
    if (r != 0) {
      snprintf (err, errlen, "%s line %u, key 'glob': cannot expand '%s': "
                "%s", cfg->file, port->glob_line, port->glob,
                r == GLOB_NOSPACE ? "out of memory" : "read error");
      if (r != GLOB_NOSPACE)
        globfree (&g);
      canon_free (&cl);
      return -1;
    }
    /* glob() sorts its matches. */
    for (size_t m = 0; m < g.gl_pathc; m++) {
      const char *f = g.gl_pathv[m];
      struct stat st;
      bool too_big;
      char where[64];
      snprintf (where, sizeof where, "line %u, [port %c] glob",
                port->glob_line, port->letter);

      if (stat (f, &st) < 0) {
        warn ("%s %s: cannot use %s: %s; skipped", cfg->file, where, f,
              strerror (errno));
        continue;
      }
      if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
        warn ("%s %s: %s is neither a regular file nor a block device; "
              "skipped", cfg->file, where, f);
        continue;
      }
      long unit = unit_from_name (f, &too_big);
      if (unit < 0) {
        warn ("%s %s: %s %s; skipped (name disks with their unit number, "
              "e.g. disk100.img)", cfg->file, where, f,
              too_big ? "has a unit number above 9999"
              : "has no unit number in its name");
        continue;
      }

      char cf[PATH_MAX], device[AP_NAME_MAX];
      bool skip = false;
      canonical (f, cf);
      device_name (cfg, port, (unsigned) unit, device, sizeof device);
      for (size_t i = 0; i < cfg->ndisks && !skip; i++) {
        const struct config_disk *o = &cfg->disks[i];
        bool same_file = strcmp (cf, cl.v[i]) == 0;
        if (o->port_letter == port->letter
            && o->unit_number == (unsigned) unit) {
          /* Listed as well as globbed: not worth a word. */
          if (!same_file)
            warn ("%s %s: %s would be unit %ld of port %c, which is "
                  "already %s (line %u%s); skipped", cfg->file, where, f,
                  unit, port->letter, o->file, o->line,
                  o->from_glob ? ", the same glob" : "");
          skip = true;
        }
        else if (same_file) {
          warn ("%s %s: %s is already served as %s (line %u); skipped",
                cfg->file, where, f, o->device, o->line);
          skip = true;
        }
        else if (strcmp (o->device, device) == 0) {
          warn ("%s %s: %s would be %s, a name the disk at line %u has; "
                "skipped", cfg->file, where, f, device, o->line);
          skip = true;
        }
      }
      if (skip)
        continue;

      struct config_disk *nd = realloc (cfg->disks,
                                        (cfg->ndisks + 1) * sizeof *nd);
      if (!nd)
        goto oom;
      cfg->disks = nd;
      struct config_disk *d = &nd[cfg->ndisks];
      memset (d, 0, sizeof *d);
      if (!copy_str (d->file, sizeof d->file, f)) {
        warn ("%s %s: %s: the name is too long; skipped", cfg->file, where,
              f);
        continue;
      }
      snprintf (d->device, sizeof d->device, "%s", device);
      d->unit_number = (unsigned) unit;
      d->port_letter = port->letter;
      d->read_only = port->read_only;
      d->line = port->glob_line;
      d->from_glob = true;
      if ((port->allow
           ? strv_copy (&d->allow, &d->nallow, port->allow, port->nallow)
           : strv_copy (&d->allow, &d->nallow, cfg->allow, cfg->nallow)) < 0)
        goto oom;
      if (canon_push (&cl, cf) < 0) {
        strv_free (d->allow, d->nallow);
        goto oom;
      }
      cfg->ndisks++;
      continue;
    oom:
      globfree (&g);
      canon_free (&cl);
      snprintf (err, errlen, "%s: out of memory expanding the glob of port "
                "%c", cfg->file, port->letter);
      return -1;
    }
    globfree (&g);
  }
  canon_free (&cl);
  if (cfg->ndisks > 1)
    qsort (cfg->disks, cfg->ndisks, sizeof *cfg->disks, disk_order);
  return 0;
}
