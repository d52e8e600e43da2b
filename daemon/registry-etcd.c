/* registry-etcd.c — the registry in etcd (3.4 or later), for a real
 * cluster, spoken through etcd's v3 JSON gateway (grpc-gateway) with
 * libcurl and json-c.  docs/registry.md describes it for operators.
 *
 * Keys (PREFIX defaults to "/altpath/"; values are registry.c's JSON):
 *   PREFIX nodes/ALPHA
 *   PREFIX ports/ALPHA/B
 *   PREFIX disks/ALPHA/$4$DKB100      (reg_escape)
 * Every key is put under this node's lease, so everything a dead node said
 * disappears with its lease, in one revision.
 *
 *   caller ── publish/withdraw/snapshot ──► re_call ──► POST /v3/kv/...
 *                                             │ endpoint failover, bounded:
 *                                             │ 1 s connect, 2 s a request,
 *                                             │ 2.5 s in all
 *   keepalive thread ── every TTL/3 ──► POST /v3/lease/keepalive
 *        │  lease gone (TTL <= 0, unknown): grant a new one, put everything
 *        │  again; a put or delete failed while etcd was away: resync
 *   watch thread ── POST /v3/watch (a stream that never ends), read by
 *        libcurl's multi interface; each event ──► reg_changed()
 *
 * Endpoints: a comma-separated list.  Every request starts at the endpoint
 * that last answered and moves to the next on a connection error, a
 * timeout or an "unavailable" answer (a member without a leader).  The
 * watch follows: it restarts on the endpoint the requests use.
 *
 * Losing etcd never blocks the caller for more than the budget above, and
 * never loses what this node published: records stay in the pub set and
 * are put again as soon as etcd answers (under a new lease if the old one
 * expired meanwhile).  registry_health says what is wrong meanwhile.
 *
 * Security ([registry] ca-file, cert-file, key-file; username,
 * password-file): https:// endpoints are verified against ca-file (else
 * the system's CAs), and cert-file is shown to members that require
 * client certificates.  With a username, every request carries a token
 * from POST /v3/auth/authenticate in its Authorization header.  etcd's
 * "simple" tokens belong to the member that issued them and lapse (after
 * 5 minutes idle, or when the member restarts), so a request told
 * "invalid auth token" (or sent to another member) authenticates again
 * and is sent once more; a wrong password ends the call at once.
 *
 * Shutdown: a pipe-to-self wakes the keepalive thread, curl_multi_wakeup
 * the watch thread, and libcurl's progress callback aborts a request in
 * flight on either thread.
 *
 * Lock order: re.mu, then re.hmu, then registry.mu (reg_changed).
 */
#define REGISTRY_BACKEND
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "clock.h"
#include "log.h"
#include "registry.h"

#define RE_DEFAULT_PREFIX "/altpath/"
#define RE_CONNECT_MS 1000         /* one connection attempt */
#define RE_REQUEST_MS 2000         /* one request to one endpoint */
#define RE_ATTEMPT_MS 1000         /* ... while other endpoints are left */
#define RE_BUDGET_MS 2500          /* one call, over every endpoint */
#define RE_MAX_BODY (16u << 20)    /* larger answers are refused */
#define RE_MAX_ENDPOINTS 16
/* The longest lease TTL taken, seconds: we ask for at most 600 s, and
 * etcd raises a TTL only to its minimum (1.5 election timeouts). */
#define RE_MAX_TTL 86400

/* gRPC status codes that etcd's gateway passes on. */
#define RE_GRPC_INVALID_ARGUMENT 3  /* with auth: a bad password, or no
                                       token ("user name is empty") */
#define RE_GRPC_NOT_FOUND 5
#define RE_GRPC_DEADLINE 4
#define RE_GRPC_PERMISSION_DENIED 7
#define RE_GRPC_UNAVAILABLE 14
#define RE_GRPC_UNAUTHENTICATED 16     /* the token lapsed, or is another
                                          member's */

struct re {
  struct registry *r;
  char node[REG_NAME_MAX];
  char prefix[256];             /* ends with '/' */
  char *eps[RE_MAX_ENDPOINTS];  /* "http://127.0.0.1:2379", no '/' at end */
  size_t neps;
  char eplist[1024];            /* the endpoints, for messages */
  char *ca_file, *cert_file, *key_file;  /* NULL: not given */
  char user[128];               /* "": etcd without authentication */
  char password[256];
  pthread_mutex_t tmu;          /* guards token (a leaf lock) */
  char token[512];              /* "": none yet, or it lapsed */
  int64_t ttl_req;              /* lease TTL asked for, seconds */
  atomic_uint cur;              /* the endpoint requests start at */
  atomic_bool stopping;         /* registry_close: threads, exit */
  atomic_bool running;          /* open succeeded: log health changes (not
                                   before: open's error says it) */
  int stop[2];                  /* pipe-to-self for the keepalive thread */
  CURLM *wmulti;                /* the watch thread's; woken on close */
  pthread_t ka_thread, watch_thread;

  pthread_mutex_t mu;           /* guards the lease, pub and dirty, and is
                                   held across every write, so that a
                                   resync cannot undo a withdraw */
  _Atomic int64_t lease;        /* 0: none (atomic: registry_health
                                   reads it without waiting for mu) */
  _Atomic int64_t ttl;          /* what etcd granted, seconds */
  bool ttl_told;                /* said once that etcd raised the TTL */
  struct reg_pubset pub;        /* what this node published */
  atomic_bool dirty;            /* a write failed: resync when etcd answers */

  pthread_mutex_t hmu;          /* guards the health fields */
  bool reachable;               /* the last call reached a member */
  char error[1536];             /* the last failure, for registry_health */
};

/* ------------------------------------------------------------- base64 */

static const char re_b64[] =
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *
re_b64_encode (const void *data, size_t len)
{
  const unsigned char *p = data;
  char *out = malloc ((len + 2) / 3 * 4 + 1), *o = out;
  if (!out)
    return NULL;
  for (size_t i = 0; i < len; i += 3) {
    unsigned v = (unsigned) p[i] << 16;
    if (i + 1 < len)
      v |= (unsigned) p[i + 1] << 8;
    if (i + 2 < len)
      v |= p[i + 2];
    *o++ = re_b64[(v >> 18) & 63];
    *o++ = re_b64[(v >> 12) & 63];
    *o++ = i + 1 < len ? re_b64[(v >> 6) & 63] : '=';
    *o++ = i + 2 < len ? re_b64[v & 63] : '=';
  }
  *o = '\0';
  return out;
}

/* NUL-terminated result (values are text); NULL if s is not base64. */
static char *
re_b64_decode (const char *s, size_t *lenp)
{
  size_t n = strlen (s);
  char *out = malloc (n / 4 * 3 + 4);
  size_t o = 0;
  unsigned v = 0, bits = 0;
  if (!out)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    const char *c = s[i] ? strchr (re_b64, s[i]) : NULL;
    if (s[i] == '=')
      break;
    if (!c) {
      free (out);
      return NULL;
    }
    v = (v << 6) | (unsigned) (c - re_b64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (char) ((v >> bits) & 0xff);
    }
  }
  out[o] = '\0';
  *lenp = o;
  return out;
}

/* A base64 field of an answer (a key, a value), decoded; NULL if it is
 * not a string (JSON null is a NULL object, whose string is NULL) or not
 * base64. */
static char *
re_b64_string (json_object *v, size_t *lenp)
{
  if (!json_object_is_type (v, json_type_string))
    return NULL;
  return re_b64_decode (json_object_get_string (v), lenp);
}

/* -------------------------------------------------------------- health */

static void
re_reached (struct re *e, unsigned idx)
{
  pthread_mutex_lock (&e->hmu);
  if (!e->reachable && atomic_load (&e->running))
    ap_info ("registry: etcd answers again, at %s", e->eps[idx]);
  e->reachable = true;
  e->error[0] = '\0';
  pthread_mutex_unlock (&e->hmu);
}

static void
re_unreachable (struct re *e, const char *why)
{
  pthread_mutex_lock (&e->hmu);
  if (e->reachable && atomic_load (&e->running))
    ap_warn ("registry: %s; discovery stops until etcd answers, I/O "
             "carries on", why);
  e->reachable = false;
  snprintf (e->error, sizeof e->error, "%s", why);
  pthread_mutex_unlock (&e->hmu);
}

/* ---------------------------------------------------------------- HTTP */

struct re_buf {
  char *p;
  size_t n, cap;
};

static bool
re_buf_add (struct re_buf *b, const char *data, size_t len)
{
  if (b->n + len + 1 > RE_MAX_BODY)
    return false;
  if (b->n + len + 1 > b->cap) {
    size_t c = b->cap ? b->cap : 4096;
    while (c < b->n + len + 1)
      c *= 2;
    char *p = realloc (b->p, c);
    if (!p)
      return false;
    b->p = p;
    b->cap = c;
  }
  memcpy (b->p + b->n, data, len);
  b->n += len;
  b->p[b->n] = '\0';
  return true;
}

static size_t
re_body_cb (char *data, size_t size, size_t nmemb, void *opaque)
{
  return re_buf_add (opaque, data, size * nmemb) ? size * nmemb : 0;
}

/* A request made on one of our threads ends when registry_close asks. */
static int
re_progress_cb (void *opaque, curl_off_t dltotal, curl_off_t dlnow,
                curl_off_t ultotal, curl_off_t ulnow)
{
  return atomic_load ((atomic_bool *) opaque) ? 1 : 0;
}

static void
re_once_init (void)
{
  curl_global_init (CURL_GLOBAL_DEFAULT);
}

/* The headers of a request: JSON, and the token when there is one. */
static struct curl_slist *
re_headers (struct re *e, bool with_token)
{
  struct curl_slist *h = curl_slist_append (NULL,
                                            "Content-Type: application/json");
  char auth[sizeof e->token + 32] = "";
  if (with_token) {
    pthread_mutex_lock (&e->tmu);
    if (e->token[0])
      snprintf (auth, sizeof auth, "Authorization: %s", e->token);
    pthread_mutex_unlock (&e->tmu);
  }
  if (h && auth[0]) {
    struct curl_slist *t = curl_slist_append (h, auth);
    if (!t) {
      curl_slist_free_all (h);
      return NULL;
    }
    h = t;
  }
  return h;
}

static void
re_forget_token (struct re *e)
{
  pthread_mutex_lock (&e->tmu);
  e->token[0] = '\0';
  pthread_mutex_unlock (&e->tmu);
}

static bool
re_have_token (struct re *e)
{
  pthread_mutex_lock (&e->tmu);
  bool have = e->token[0] != '\0';
  pthread_mutex_unlock (&e->tmu);
  return have;
}

static void
re_common_opts (struct re *e, CURL *c, struct curl_slist *hdrs,
                long connect_ms)
{
  curl_easy_setopt (c, CURLOPT_NOSIGNAL, 1L);
  if (e->ca_file)
    curl_easy_setopt (c, CURLOPT_CAINFO, e->ca_file);
  if (e->cert_file) {
    curl_easy_setopt (c, CURLOPT_SSLCERT, e->cert_file);
    curl_easy_setopt (c, CURLOPT_SSLKEY, e->key_file);
  }
  curl_easy_setopt (c, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt (c, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
  curl_easy_setopt (c, CURLOPT_PROTOCOLS_STR, "http,https");
  /* A member that vanishes without a reset (a real network) is noticed. */
  curl_easy_setopt (c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt (c, CURLOPT_TCP_KEEPIDLE, 5L);
  curl_easy_setopt (c, CURLOPT_TCP_KEEPINTVL, 2L);
}

/* One POST to one endpoint.  -1: no answer (msg says why; *timed_out if
 * the member took too long rather than refused); 0: an answer, *status
 * its HTTP status, out its body. */
static int
re_post (struct re *e, unsigned idx, const char *path, const char *body,
         bool with_token, long timeout_ms, atomic_bool *cancel,
         struct re_buf *out, long *status, bool *timed_out, char *msg,
         size_t msglen)
{
  char url[REG_URI_MAX + 64], cerr[CURL_ERROR_SIZE] = "";
  CURL *c = curl_easy_init ();
  struct curl_slist *hdrs = re_headers (e, with_token);
  int rc = -1;

  if (!c || !hdrs) {
    snprintf (msg, msglen, "%s: out of memory", e->eps[idx]);
    goto out;
  }
  snprintf (url, sizeof url, "%s%s", e->eps[idx], path);
  re_common_opts (e, c, hdrs,
                  timeout_ms < RE_CONNECT_MS ? timeout_ms : RE_CONNECT_MS);
  curl_easy_setopt (c, CURLOPT_URL, url);
  curl_easy_setopt (c, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt (c, CURLOPT_POSTFIELDSIZE, (long) strlen (body));
  curl_easy_setopt (c, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt (c, CURLOPT_WRITEFUNCTION, re_body_cb);
  curl_easy_setopt (c, CURLOPT_WRITEDATA, out);
  curl_easy_setopt (c, CURLOPT_ERRORBUFFER, cerr);
  if (cancel) {
    curl_easy_setopt (c, CURLOPT_XFERINFOFUNCTION, re_progress_cb);
    curl_easy_setopt (c, CURLOPT_XFERINFODATA, cancel);
    curl_easy_setopt (c, CURLOPT_NOPROGRESS, 0L);
  }
  CURLcode cc = curl_easy_perform (c);
  *timed_out = cc == CURLE_OPERATION_TIMEDOUT;
  if (cc != CURLE_OK) {
    /* Short: a health message lists one of these per endpoint; TLS
     * failures say which certificate and why (curl's buffer), and what to
     * set. */
    const char *hint = "";
    bool https = strncmp (e->eps[idx], "https://", 8) == 0;
    /* A member that wants a client certificate ends the TLS session after
     * the handshake (TLS 1.3): curl then fails to send or to receive. */
    bool cut = cc == CURLE_SEND_ERROR || cc == CURLE_RECV_ERROR
      || cc == CURLE_SSL_CONNECT_ERROR;
    bool cert_trouble = strstr (cerr, "certificate") != NULL;
    if (cc == CURLE_PEER_FAILED_VERIFICATION)
      hint = "; check [registry] ca-file: the CA that signed the members' "
        "certificates";
    else if (https && (cert_trouble || cut) && !e->cert_file)
      hint = "; if the member requires client certificates (etcd "
        "--client-cert-auth), set cert-file and key-file in [registry]";
    else if (https && (cert_trouble || cut))
      hint = "; did the member refuse cert-file? It must be signed by a CA "
        "the member trusts (etcd --trusted-ca-file)";
    bool tls = https && (cc == CURLE_PEER_FAILED_VERIFICATION
                         || cert_trouble || cut
                         || cc == CURLE_SSL_CERTPROBLEM
                         || cc == CURLE_SSL_CACERT_BADFILE);
    snprintf (msg, msglen, "%.300s: %s%s%.300s%s%s", e->eps[idx],
              curl_easy_strerror (cc), tls && cerr[0] ? " (" : "",
              tls && cerr[0] ? cerr : "", tls && cerr[0] ? ")" : "", hint);
    ap_debug (AP_DEBUG_CONTROL, "registry: %s: %s", url,
              cerr[0] ? cerr : curl_easy_strerror (cc));
    goto out;
  }
  curl_easy_getinfo (c, CURLINFO_RESPONSE_CODE, status);
  rc = 0;
 out:
  curl_slist_free_all (hdrs);
  if (c)
    curl_easy_cleanup (c);
  return rc;
}

/* Parse the first JSON value of text (a stream's first message). */
static json_object *
re_parse (const char *text, size_t len)
{
  json_tokener *tok = json_tokener_new ();
  if (!tok)
    return NULL;
  json_object *o = json_tokener_parse_ex (tok, text, (int) len);
  json_tokener_free (tok);
  if (o && !json_object_is_type (o, json_type_object)) {
    json_object_put (o);
    o = NULL;
  }
  return o;
}

/* The gateway's error, unary ({"error":"...","code":5}) or from a stream
 * ({"error":{"grpc_code":5,"message":"..."}}); false if there is none. */
static bool
re_error_of (json_object *o, int *code, char *msg, size_t msglen)
{
  json_object *err, *v;
  if (!o || !json_object_object_get_ex (o, "error", &err))
    return false;
  *code = 0;
  if (json_object_is_type (err, json_type_object)) {
    if (json_object_object_get_ex (err, "grpc_code", &v))
      *code = json_object_get_int (v);
    const char *m = json_object_object_get_ex (err, "message", &v)
      ? json_object_get_string (v) : NULL;
    snprintf (msg, msglen, "%s", m ? m : "error");
    return true;
  }
  if (json_object_object_get_ex (o, "code", &v))
    *code = json_object_get_int (v);
  /* "error":null has no string (a NULL object). */
  const char *m = json_object_get_string (err);
  snprintf (msg, msglen, "%s", m ? m : "error");
  return true;
}

static int64_t
re_int64 (json_object *o, const char *key)
{
  json_object *v;
  if (!o || !json_object_object_get_ex (o, key, &v))
    return 0;
  if (json_object_is_type (v, json_type_string))
    return strtoll (json_object_get_string (v), NULL, 10);
  return json_object_get_int64 (v);
}

/* Add one failure to the list of a round ("A: why; B: why"). */
static void
re_tried (char *tried, size_t size, const char *what)
{
  size_t n = strlen (tried);
  if (n + 3 < size)
    snprintf (tried + n, size - n, "%s%s", n ? "; " : "", what);
}

/* The token of a /v3/auth/authenticate answer into out (NUL-terminated);
 * false if it has none that fits.  Pure (fuzzed). */
static bool
re_token_of (json_object *o, char *out, size_t outlen)
{
  json_object *v;
  if (!o || !json_object_object_get_ex (o, "token", &v)
      || !json_object_is_type (v, json_type_string))
    return false;
  const char *t = json_object_get_string (v);
  size_t n = strlen (t);
  /* A token goes into an HTTP header: no line breaks in it. */
  if (n == 0 || n >= outlen || strpbrk (t, "\r\n"))
    return false;
  memcpy (out, t, n + 1);
  return true;
}

/* Log in at member idx: a new token.  0; -1 if it did not answer (msg,
 * *timed_out); -2 if it refused the user (msg says what to do). */
static int
re_authenticate (struct re *e, unsigned idx, long timeout_ms,
                 atomic_bool *cancel, bool *timed_out, char *msg,
                 size_t msglen)
{
  json_object *req = json_object_new_object ();
  json_object_object_add (req, "name", json_object_new_string (e->user));
  json_object_object_add (req, "password",
                          json_object_new_string (e->password));
  char *body = strdup (json_object_to_json_string_ext (req,
                                                       JSON_C_TO_STRING_PLAIN));
  json_object_put (req);
  if (!body) {
    snprintf (msg, msglen, "%s: out of memory", e->eps[idx]);
    return -1;
  }
  struct re_buf out = { 0 };
  long status = 0;
  int rc = re_post (e, idx, "/v3/auth/authenticate", body, false, timeout_ms,
                    cancel, &out, &status, timed_out, msg, msglen);
  explicit_bzero (body, strlen (body));
  free (body);
  if (rc < 0) {
    free (out.p);
    return -1;
  }
  json_object *o = out.p ? re_parse (out.p, out.n) : NULL;
  char emsg[400];
  int code = 0;
  bool is_err = re_error_of (o, &code, emsg, sizeof emsg);
  char token[sizeof e->token];
  if (status == 200 && !is_err && re_token_of (o, token, sizeof token)) {
    pthread_mutex_lock (&e->tmu);
    memcpy (e->token, token, sizeof token);
    pthread_mutex_unlock (&e->tmu);
    explicit_bzero (token, sizeof token);
    rc = 0;
  }
  else if (status >= 500 || code == RE_GRPC_UNAVAILABLE
           || code == RE_GRPC_DEADLINE) {
    snprintf (msg, msglen, "%.200s: logging in as '%.100s': %.150s",
              e->eps[idx], e->user, is_err ? emsg : "HTTP error");
    rc = -1;
  }
  else {
    snprintf (msg, msglen, "etcd %.200s refused the login of user '%.100s' "
              "(%.150s); "
              "check [registry] username and password-file, and that "
              "authentication is enabled in etcd (etcdctl auth enable)",
              e->eps[idx], e->user,
              is_err ? emsg : out.p ? out.p : "no answer");
    rc = -2;
  }
  json_object_put (o);
  free (out.p);
  return rc;
}

/* POST req (consumed) to the cluster; the answer's JSON on success.  On
 * failure NULL, with msg and errno: EHOSTUNREACH when no member answered
 * in time (health turns false), or, when etcd answered with an error,
 * ENOENT (*code = 5: not found) or EPROTO.  cancel: abort when it turns
 * true (our threads). */
static json_object *
re_call (struct re *e, const char *path, json_object *req, atomic_bool *cancel,
         int *code, char *msg, size_t msglen)
{
  char last[600] = "no endpoint tried";
  char tried[1024] = "";        /* "URL: error; " for each, this round */
  const char *body = json_object_to_json_string_ext (req,
                                                     JSON_C_TO_STRING_PLAIN);
  uint64_t deadline = ap_now_ns () + AP_MS (RE_BUDGET_MS);
  json_object *res = NULL;
  int dummy;
  bool relogged = false;        /* a lapsed token was renewed this call */

  if (!code)
    code = &dummy;
  *code = 0;
  for (;;) {
    unsigned start = atomic_load (&e->cur) % e->neps;
    bool retry = false;         /* a member is there but could not */
    for (size_t i = 0; i < e->neps; i++) {
      unsigned idx = (start + (unsigned) i) % e->neps;
      uint64_t now = ap_now_ns ();
      if (now + AP_MS (50) >= deadline || (cancel && atomic_load (cancel)))
        goto unreachable;
      long left = (long) ((deadline - now) / 1000000);
      /* While other members are left to try, do not wait long for one:
       * a write sent to a follower while the leader is being replaced is
       * dropped by raft and only ends at etcd's own timeout (~6 s). */
      long limit = i + 1 < e->neps ? RE_ATTEMPT_MS : RE_REQUEST_MS;
      struct re_buf out = { 0 };
      long status = 0;
      bool timed_out = false;
      if (e->user[0] && !re_have_token (e)) {
        int a = re_authenticate (e, idx, left < limit ? left : limit, cancel,
                                 &timed_out, last, sizeof last);
        if (a == -2) {
          /* Refused is as bad as away for discovery: health says so. */
          if (!(cancel && atomic_load (cancel)))
            re_unreachable (e, last);
          snprintf (msg, msglen, "%s", last);
          errno = EACCES;         /* after the log line, which may set it */
          goto done;
        }
        if (a == -1) {
          re_tried (tried, sizeof tried, last);
          retry |= timed_out;
          continue;
        }
      }
      if (re_post (e, idx, path, body, true, left < limit ? left : limit,
                   cancel, &out, &status, &timed_out, last,
                   sizeof last) == -1) {
        free (out.p);
        re_tried (tried, sizeof tried, last);
        retry |= timed_out;
        continue;
      }
      json_object *o = out.p ? re_parse (out.p, out.n) : NULL;
      char emsg[400];
      int ecode = 0;
      bool is_err = re_error_of (o, &ecode, emsg, sizeof emsg);
      if (status == 200 && o && !is_err) {
        free (out.p);
        if (atomic_exchange (&e->cur, idx) != idx)
          ap_info ("registry: etcd requests now go to %s", e->eps[idx]);
        re_reached (e, idx);
        res = o;
        goto done;
      }
      if (!is_err)
        snprintf (emsg, sizeof emsg, "HTTP %ld: %.200s", status,
                  out.p ? out.p : "");
      free (out.p);
      json_object_put (o);
      if (status >= 500 || ecode == RE_GRPC_UNAVAILABLE
          || ecode == RE_GRPC_DEADLINE) {
        /* Alive but unable (no leader, an election): try another. */
        snprintf (last, sizeof last, "%s: %s", e->eps[idx], emsg);
        re_tried (tried, sizeof tried, last);
        retry = true;
        continue;
      }
      bool no_token = ecode == RE_GRPC_INVALID_ARGUMENT
        && strstr (emsg, "user name is empty");
      if (e->user[0] && !relogged
          && (ecode == RE_GRPC_UNAUTHENTICATED || no_token)) {
        /* The token lapsed, or is another member's: log in again and
         * send the request once more, to the same member. */
        re_forget_token (e);
        relogged = true;
        i--;
        continue;
      }
      /* etcd answered, and said no. */
      *code = ecode;
      if (no_token && !e->user[0])
        snprintf (msg, msglen, "etcd %s requires authentication; set "
                  "'username' and 'password-file' in [registry] (an etcd "
                  "user whose role may read and write %s)", e->eps[idx],
                  e->prefix);
      else if (ecode == RE_GRPC_PERMISSION_DENIED)
        snprintf (msg, msglen, "etcd %s%s: permission denied to user '%s'; "
                  "grant its role read and write on the prefix (etcdctl "
                  "role grant-permission ROLE --prefix=true readwrite %s)",
                  e->eps[idx], path, e->user, e->prefix);
      else
        snprintf (msg, msglen, "etcd %s%s: %s", e->eps[idx], path, emsg);
      int en = ecode == RE_GRPC_NOT_FOUND ? ENOENT
        : no_token || ecode == RE_GRPC_PERMISSION_DENIED
        || ecode == RE_GRPC_UNAUTHENTICATED ? EACCES : EPROTO;
      /* A refusal of who we are (not of one request) stops discovery as
       * surely as no answer: health says so. */
      if (en == EACCES && !(cancel && atomic_load (cancel)))
        re_unreachable (e, msg);
      else
        re_reached (e, idx);
      errno = en;
      goto done;
    }
    /* Connection errors everywhere: no point in a second round.  A member
     * that answered "unavailable" may have a leader in a moment. */
    if (!retry)
      break;
    uint64_t now = ap_now_ns ();
    if (now + AP_MS (150) >= deadline)
      break;
    usleep (100 * 1000);
    tried[0] = '\0';
  }
 unreachable:
  snprintf (msg, msglen, "etcd unreachable (endpoints %.300s): %.1000s",
            e->eplist, tried[0] ? tried : last);
  if (!(cancel && atomic_load (cancel)))
    re_unreachable (e, msg);
  errno = EHOSTUNREACH;
 done:
  json_object_put (req);
  return res;
}

/* ---------------------------------------------------------------- keys */

static bool
re_key (const struct re *e, enum reg_kind kind, const char *id, char *out,
        size_t outlen)
{
  char esc[3 * AP_NAME_MAX + 1];
  if (kind == REG_KIND_NODE)
    return (size_t) snprintf (out, outlen, "%snodes/%s", e->prefix, e->node)
      < outlen;
  if (!reg_escape (id, esc, sizeof esc))
    return false;
  return (size_t) snprintf (out, outlen, "%s%s/%s/%s", e->prefix,
                            reg_kind_dir (kind), e->node, esc) < outlen;
}

/* The end of the range of keys starting with p: p with its last byte
 * incremented (etcd's prefix convention). */
static void
re_range_end (const char *p, char *out, size_t outlen)
{
  snprintf (out, outlen, "%s", p);
  size_t n = strlen (out);
  while (n > 0 && (unsigned char) out[n - 1] == 0xff)
    out[--n] = '\0';
  if (n > 0)
    out[n - 1]++;
}

static void
re_add_b64 (json_object *o, const char *field, const char *s)
{
  char *b = re_b64_encode (s, strlen (s));
  json_object_object_add (o, field, json_object_new_string (b ? b : ""));
  free (b);
}

static void
re_add_id (json_object *o, const char *field, int64_t id)
{
  char s[32];
  snprintf (s, sizeof s, "%" PRId64, id);
  json_object_object_add (o, field, json_object_new_string (s));
}

/* -------------------------------------------------------------- writes
 * Everything below that ends in _locked runs with e->mu held. */

static int
re_put_raw (struct re *e, const char *key, const char *json,
            atomic_bool *cancel, int *code, char *msg, size_t msglen)
{
  json_object *req = json_object_new_object ();
  re_add_b64 (req, "key", key);
  re_add_b64 (req, "value", json);
  re_add_id (req, "lease", e->lease);
  json_object *res = re_call (e, "/v3/kv/put", req, cancel, code, msg, msglen);
  if (!res)
    return -1;
  json_object_put (res);
  return 0;
}

static int
re_delete_raw (struct re *e, const char *key, const char *range_end,
               atomic_bool *cancel, char *msg, size_t msglen)
{
  json_object *req = json_object_new_object ();
  re_add_b64 (req, "key", key);
  if (range_end)
    re_add_b64 (req, "range_end", range_end);
  json_object *res = re_call (e, "/v3/kv/deleterange", req, cancel, NULL,
                              msg, msglen);
  if (!res)
    return -1;
  json_object_put (res);
  return 0;
}

static bool
re_lease_gone (int code, const char *msg)
{
  return code == RE_GRPC_NOT_FOUND && strstr (msg, "lease not found");
}

/* Put every record of the pub set under the current lease. */
static int
re_put_all_locked (struct re *e, atomic_bool *cancel, char *msg,
                   size_t msglen)
{
  for (size_t i = 0; i < e->pub.n; i++) {
    const struct reg_record *rec = &e->pub.v[i];
    char key[1024];
    int code;
    if (!re_key (e, rec->kind, rec->id, key, sizeof key))
      continue;                 /* refused when published */
    if (re_put_raw (e, key, rec->json, cancel, &code, msg, msglen) == -1) {
      e->dirty = true;
      return -1;
    }
  }
  return 0;
}

/* The lease a grant answer ({"ID":"7587...","TTL":"3"}) gives: 0 and
 * *id, *ttl; or -1 with msg.  Pure (fuzzed: fuzzing/fuzz-registry.c). */
static int
re_grant_answer (json_object *res, int64_t *id, int64_t *ttl, char *msg,
                 size_t msglen)
{
  *id = re_int64 (res, "ID");
  *ttl = re_int64 (res, "TTL");
  json_object *v;
  if (json_object_object_get_ex (res, "error", &v)
      && json_object_get_string_len (v) > 0) {
    snprintf (msg, msglen, "etcd: cannot grant a lease: %s",
              json_object_get_string (v));
    return -1;
  }
  if (*id == 0 || *ttl <= 0) {
    snprintf (msg, msglen, "etcd: granting a lease gave no lease");
    return -1;
  }
  /* The keepalive period is TTL*1000/3 ms, an int: a TTL no etcd would
   * grant us must not overflow it. */
  if (*ttl > RE_MAX_TTL) {
    snprintf (msg, msglen, "etcd: granting a lease gave a TTL of %" PRId64
              " s, more than the %d s a lease may have here", *ttl,
              RE_MAX_TTL);
    return -1;
  }
  return 0;
}

/* Grant a lease and put everything under it. */
static int
re_grant_locked (struct re *e, atomic_bool *cancel, char *msg, size_t msglen)
{
  json_object *req = json_object_new_object ();
  json_object_object_add (req, "TTL", json_object_new_int64 (e->ttl_req));
  json_object *res = re_call (e, "/v3/lease/grant", req, cancel, NULL, msg,
                              msglen);
  if (!res)
    return -1;
  int64_t id, ttl;
  int rc = re_grant_answer (res, &id, &ttl, msg, msglen);
  json_object_put (res);
  if (rc < 0) {
    errno = EPROTO;
    return -1;
  }
  if (ttl > e->ttl_req && !e->ttl_told) {
    ap_info ("registry: etcd raised the lease TTL from %" PRId64 " s to %"
             PRId64 " s (its minimum is 1.5 election timeouts)", e->ttl_req,
             ttl);
    e->ttl_told = true;
  }
  e->lease = id;
  e->ttl = ttl;
  e->dirty = false;
  return re_put_all_locked (e, cancel, msg, msglen);
}

/* Publish one record of the pub set; a lease found gone is replaced. */
static int
re_publish_locked (struct re *e, const struct reg_record *rec,
                   atomic_bool *cancel, char *msg, size_t msglen)
{
  char key[1024];
  int code;

  if (!re_key (e, rec->kind, rec->id, key, sizeof key)) {
    snprintf (msg, msglen, "etcd: the key of %s is too long", rec->id);
    errno = ENAMETOOLONG;
    return -1;
  }
  if (e->lease == 0)
    return re_grant_locked (e, cancel, msg, msglen);
  if (re_put_raw (e, key, rec->json, cancel, &code, msg, msglen) == 0)
    return 0;
  if (re_lease_gone (code, msg)) {
    ap_warn ("registry: etcd lease %" PRIx64 " of node %s expired; granting "
             "a new one and publishing again", (uint64_t) e->lease, e->node);
    e->lease = 0;
    msg[0] = '\0';
    return re_grant_locked (e, cancel, msg, msglen);
  }
  e->dirty = true;
  return -1;
}

/* After failed writes: delete the keys of ours that are not in the pub
 * set (a withdraw that did not get through), put everything again. */
static int
re_resync_locked (struct re *e, atomic_bool *cancel, char *msg, size_t msglen)
{
  for (int k = REG_KIND_NODE; k <= REG_KIND_DISK; k++) {
    char key[512], end[512];
    if (k == REG_KIND_NODE)
      snprintf (key, sizeof key, "%snodes/%s", e->prefix, e->node);
    else
      snprintf (key, sizeof key, "%s%s/%s/", e->prefix,
                reg_kind_dir ((enum reg_kind) k), e->node);
    json_object *req = json_object_new_object ();
    re_add_b64 (req, "key", key);
    if (k != REG_KIND_NODE) {
      re_range_end (key, end, sizeof end);
      re_add_b64 (req, "range_end", end);
    }
    json_object_object_add (req, "keys_only", json_object_new_boolean (1));
    json_object *res = re_call (e, "/v3/kv/range", req, cancel, NULL, msg,
                                msglen);
    if (!res)
      return -1;
    json_object *kvs;
    if (json_object_object_get_ex (res, "kvs", &kvs)
        && json_object_is_type (kvs, json_type_array)) {
      for (size_t i = 0; i < json_object_array_length (kvs); i++) {
        json_object *kv = json_object_array_get_idx (kvs, i), *kb;
        size_t len;
        if (!json_object_object_get_ex (kv, "key", &kb))
          continue;
        char *have = re_b64_string (kb, &len);
        if (!have)
          continue;
        bool wanted = false;
        for (size_t j = 0; j < e->pub.n && !wanted; j++) {
          char want[1024];
          wanted = re_key (e, e->pub.v[j].kind, e->pub.v[j].id, want,
                           sizeof want) && strcmp (want, have) == 0;
        }
        int rc = wanted ? 0 : re_delete_raw (e, have, NULL, cancel, msg,
                                             msglen);
        free (have);
        if (rc == -1) {
          json_object_put (res);
          return -1;
        }
      }
    }
    json_object_put (res);
  }
  e->dirty = false;
  if (e->lease == 0)
    return re_grant_locked (e, cancel, msg, msglen);
  for (size_t i = 0; i < e->pub.n; i++)
    if (re_publish_locked (e, &e->pub.v[i], cancel, msg, msglen) == -1)
      return -1;
  return 0;
}

/* ----------------------------------------------------------- keepalive */

/* The TTL a keepalive answer ({"result":{"ID":"..","TTL":"3"}}) gives
 * the lease (> 0), or 0: the lease is gone.  Pure (fuzzed). */
static int64_t
re_keepalive_ttl (json_object *res)
{
  json_object *result;
  int64_t ttl = 0;
  /* Unknown lease: a result without TTL (TTL 0 is left out). */
  if (json_object_object_get_ex (res, "result", &result))
    ttl = re_int64 (result, "TTL");
  return ttl > 0 ? ttl : 0;
}

/* Renew; the TTL left (> 0), 0 if the lease is gone, -1 if no answer
 * (or an error). */
static int64_t
re_keepalive (struct re *e, int64_t lease, char *msg, size_t msglen)
{
  json_object *req = json_object_new_object ();
  re_add_id (req, "ID", lease);
  json_object *res = re_call (e, "/v3/lease/keepalive", req, &e->stopping,
                              NULL, msg, msglen);
  /* Only an answer that names no TTL says the lease is gone; an error
   * (a leader changing, say) says nothing about it. */
  if (!res) {
    if (errno != EHOSTUNREACH)
      ap_debug (AP_DEBUG_CONTROL, "registry: keepalive: %s", msg);
    return -1;
  }
  int64_t ttl = re_keepalive_ttl (res);
  json_object_put (res);
  return ttl;
}

static void *
re_ka_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "etcd-keepalive");
  struct re *e = arg;
  char msg[1536];

  while (!atomic_load (&e->stopping)) {
    pthread_mutex_lock (&e->mu);
    int64_t lease = e->lease, ttl = e->ttl ? e->ttl : e->ttl_req;
    pthread_mutex_unlock (&e->mu);
    pthread_mutex_lock (&e->hmu);
    bool reachable = e->reachable;
    pthread_mutex_unlock (&e->hmu);

    /* TTL/3 as etcd's own clients; every 0.5 s at most while etcd is
     * away or we hold no lease, to be back soon after it is. */
    int period = (int) (ttl * 1000 / 3);
    if ((!reachable || lease == 0) && period > 500)
      period = 500;
    struct pollfd pfd = { .fd = e->stop[0], .events = POLLIN };
    if (poll (&pfd, 1, period) != 0 || atomic_load (&e->stopping))
      break;

    msg[0] = '\0';
    if (lease == 0) {
      pthread_mutex_lock (&e->mu);
      if (e->lease == 0 && re_grant_locked (e, &e->stopping, msg,
                                            sizeof msg) == 0)
        ap_info ("registry: node %s holds etcd lease %" PRIx64 " again",
                 e->node, (uint64_t) e->lease);
      pthread_mutex_unlock (&e->mu);
      continue;
    }
    int64_t left = re_keepalive (e, lease, msg, sizeof msg);
    if (left < 0)
      continue;                 /* unreachable: health says so */
    pthread_mutex_lock (&e->mu);
    if (left == 0 && e->lease == lease) {
      ap_warn ("registry: etcd lease %" PRIx64 " of node %s expired (etcd "
               "was away for longer than its TTL of %" PRId64 " s?); "
               "granting a new one and publishing again", (uint64_t) lease,
               e->node, e->ttl);
      e->lease = 0;
      msg[0] = '\0';
      re_grant_locked (e, &e->stopping, msg, sizeof msg);
    }
    else if (e->dirty)
      re_resync_locked (e, &e->stopping, msg, sizeof msg);
    pthread_mutex_unlock (&e->mu);
  }
  return NULL;
}

/* --------------------------------------------------------------- watch */

struct re_wstate {
  struct re *e;
  struct re_buf buf;            /* what is not yet a whole line */
  bool created;                 /* etcd confirmed the watch */
  bool restart;                 /* canceled, an error: start again */
  bool token_lapsed;            /* canceled for the token: log in again */
};

static void
re_watch_line (struct re_wstate *w, const char *line, size_t len)
{
  json_object *o = re_parse (line, len), *result, *v;
  int code;
  char emsg[300];

  if (!o)
    return;
  if (re_error_of (o, &code, emsg, sizeof emsg)) {
    ap_debug (AP_DEBUG_CONTROL, "registry: etcd watch: %s", emsg);
    w->restart = true;
  }
  else if (json_object_object_get_ex (o, "result", &result)) {
    if (json_object_object_get_ex (result, "created", &v)
        && json_object_get_boolean (v))
      w->created = true;
    if (json_object_object_get_ex (result, "canceled", &v)
        && json_object_get_boolean (v)) {
      w->restart = true;
      const char *why = json_object_object_get_ex (result, "cancel_reason",
                                                   &v)
        ? json_object_get_string (v) : NULL;
      if (why && (strstr (why, "auth token") || strstr (why, "user name")))
        w->token_lapsed = true;
      ap_debug (AP_DEBUG_CONTROL, "registry: etcd ended the watch: %s",
                why ? why : "no reason given");
    }
    if (json_object_object_get_ex (result, "events", &v)
        && json_object_is_type (v, json_type_array)
        && json_object_array_length (v) > 0)
      reg_changed (w->e->r);
  }
  json_object_put (o);
}

/* The watch stream: JSON messages, one a line, split anywhere by TCP. */
static size_t
re_watch_cb (char *data, size_t size, size_t nmemb, void *opaque)
{
  struct re_wstate *w = opaque;
  size_t len = size * nmemb;
  if (!re_buf_add (&w->buf, data, len))
    return 0;                   /* abort: a line this long is not etcd */
  size_t start = 0;
  for (size_t i = 0; i < w->buf.n; i++)
    if (w->buf.p[i] == '\n') {
      re_watch_line (w, w->buf.p + start, i - start);
      start = i + 1;
    }
  memmove (w->buf.p, w->buf.p + start, w->buf.n - start);
  w->buf.n -= start;
  w->buf.p[w->buf.n] = '\0';
  return len;
}

static void *
re_watch_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "etcd-watch");
  struct re *e = arg;
  char key[512], end[512], url[REG_URI_MAX + 16];
  bool first = true;

  snprintf (key, sizeof key, "%s", e->prefix);
  re_range_end (key, end, sizeof end);
  json_object *req = json_object_new_object (), *cr = json_object_new_object ();
  re_add_b64 (cr, "key", key);
  re_add_b64 (cr, "range_end", end);
  json_object_object_add (req, "create_request", cr);
  char *body = strdup (json_object_to_json_string_ext (req,
                                                      JSON_C_TO_STRING_PLAIN));
  json_object_put (req);
  if (!body)
    return NULL;

  while (!atomic_load (&e->stopping)) {
    unsigned idx = atomic_load (&e->cur) % e->neps;
    struct re_wstate w = { .e = e };
    char msg[600];
    bool timed_out;
    if (e->user[0] && !re_have_token (e)
        && re_authenticate (e, idx, RE_REQUEST_MS, &e->stopping, &timed_out,
                            msg, sizeof msg) < 0) {
      ap_debug (AP_DEBUG_CONTROL, "registry: etcd watch: %s", msg);
      goto next;                /* as a member that would not watch */
    }
    CURL *c = curl_easy_init ();
    struct curl_slist *hdrs = re_headers (e, true), *h2 = NULL;
    /* Have the member end the watch when it loses its leader, rather than
     * keep a stream that will never carry an event. */
    if (hdrs && !(h2 = curl_slist_append (hdrs, "Grpc-Metadata-hasleader: "
                                          "true")))
      curl_slist_free_all (hdrs);
    hdrs = h2;
    if (!c || !hdrs) {
      if (c)
        curl_easy_cleanup (c);
      curl_slist_free_all (hdrs);
      break;
    }
    snprintf (url, sizeof url, "%s/v3/watch", e->eps[idx]);
    re_common_opts (e, c, hdrs, RE_CONNECT_MS);
    curl_easy_setopt (c, CURLOPT_URL, url);
    curl_easy_setopt (c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt (c, CURLOPT_POSTFIELDSIZE, (long) strlen (body));
    curl_easy_setopt (c, CURLOPT_WRITEFUNCTION, re_watch_cb);
    curl_easy_setopt (c, CURLOPT_WRITEDATA, &w);
    curl_multi_add_handle (e->wmulti, c);

    int running = 1;
    bool told = false;
    while (running && !w.restart && !atomic_load (&e->stopping)) {
      if (curl_multi_perform (e->wmulti, &running) != CURLM_OK)
        break;
      if (w.created && !told) {
        told = true;
        /* Events may have been missed while no watch was open. */
        if (!first)
          reg_changed (e->r);
        first = false;
        ap_debug (AP_DEBUG_CONTROL, "registry: watching %s%s", e->eps[idx],
                  e->prefix);
      }
      if (!running)
        break;
      /* Requests moved to another member: follow them. */
      if (atomic_load (&e->cur) % e->neps != idx)
        break;
      curl_multi_poll (e->wmulti, NULL, 0, 500, NULL);
    }
    curl_multi_remove_handle (e->wmulti, c);
    curl_easy_cleanup (c);
    curl_slist_free_all (hdrs);
    free (w.buf.p);
    if (w.token_lapsed)
      re_forget_token (e);
    if (atomic_load (&e->stopping))
      break;
  next:
    if (!w.created) {
      /* This member would not watch: the next one. */
      unsigned expect = idx;
      atomic_compare_exchange_strong (&e->cur, &expect,
                                      (idx + 1) % (unsigned) e->neps);
    }
    else
      reg_changed (e->r);
    struct pollfd pfd = { .fd = e->stop[0], .events = POLLIN };
    poll (&pfd, 1, w.created ? 20 : 200);
  }
  free (body);
  return NULL;
}

/* ---------------------------------------------------------------- ops */

static void re_free (struct re *e);

static int
re_parse_endpoints (struct re *e, const char *list, char *err, size_t errlen)
{
  const char *p = list;
  snprintf (e->eplist, sizeof e->eplist, "%s", list);
  while (*p) {
    p += strspn (p, ", \t");
    size_t n = strcspn (p, ", \t");
    if (n == 0)
      break;
    while (n > 0 && p[n - 1] == '/')
      n--;
    if (e->neps == RE_MAX_ENDPOINTS || n >= REG_URI_MAX) {
      snprintf (err, errlen, "registry etcd: too many endpoints or one too "
                "long in '%s' (at most %d, each under %d characters)", list,
                RE_MAX_ENDPOINTS, REG_URI_MAX);
      return -1;
    }
    if (strncmp (p, "http://", 7) != 0 && strncmp (p, "https://", 8) != 0) {
      snprintf (err, errlen, "registry etcd: endpoint '%.*s' is not an "
                "http:// or https:// URL (e.g. http://127.0.0.1:2379)",
                (int) n, p);
      return -1;
    }
    e->eps[e->neps] = strndup (p, n);
    if (!e->eps[e->neps]) {
      snprintf (err, errlen, "registry etcd: out of memory");
      return -1;
    }
    e->neps++;
    p += n;
    p += strcspn (p, ", \t");
  }
  if (e->neps == 0) {
    snprintf (err, errlen, "registry etcd: no endpoints given (e.g. "
              "endpoints = http://127.0.0.1:2379)");
    return -1;
  }
  return 0;
}

static void *
re_open (struct registry *r, const struct registry_options *opt,
         const char *node, unsigned lease_ms, char *err, size_t errlen)
{
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  char msg[1536] = "";

  pthread_once (&once, re_once_init);
  struct re *e = calloc (1, sizeof *e);
  if (!e) {
    snprintf (err, errlen, "registry etcd: out of memory");
    return NULL;
  }
  e->r = r;
  e->stop[0] = e->stop[1] = -1;
  pthread_mutex_init (&e->mu, NULL);
  pthread_mutex_init (&e->hmu, NULL);
  pthread_mutex_init (&e->tmu, NULL);
  e->reachable = true;
  snprintf (e->node, sizeof e->node, "%s", node);
  e->ttl_req = (lease_ms + 999) / 1000;

  if (re_parse_endpoints (e, opt->endpoints ? opt->endpoints : "", err,
                          errlen) == -1)
    goto fail_inval;
  const char *prefix = opt->prefix && *opt->prefix ? opt->prefix
    : RE_DEFAULT_PREFIX;
  size_t pl = strlen (prefix);
  if (pl + 2 > sizeof e->prefix) {
    snprintf (err, errlen, "registry etcd: prefix '%s' is too long", prefix);
    goto fail_inval;
  }
  snprintf (e->prefix, sizeof e->prefix, "%s%s", prefix,
            prefix[pl - 1] == '/' ? "" : "/");
  if ((opt->ca_file && *opt->ca_file && !(e->ca_file = strdup (opt->ca_file)))
      || (opt->cert_file && *opt->cert_file
          && !(e->cert_file = strdup (opt->cert_file)))
      || (opt->key_file && *opt->key_file
          && !(e->key_file = strdup (opt->key_file)))) {
    snprintf (err, errlen, "registry etcd: out of memory");
    goto fail;
  }
  if (!e->cert_file != !e->key_file) {
    snprintf (err, errlen, "registry etcd: a client certificate needs both "
              "a certificate and a key file");
    goto fail_inval;
  }
  if (opt->username && *opt->username) {
    if (strlen (opt->username) >= sizeof e->user || !opt->password
        || !*opt->password || strlen (opt->password) >= sizeof e->password) {
      snprintf (err, errlen, "registry etcd: user '%s' needs a password of "
                "1 to %zu bytes", opt->username, sizeof e->password - 1);
      goto fail_inval;
    }
    snprintf (e->user, sizeof e->user, "%s", opt->username);
    snprintf (e->password, sizeof e->password, "%s", opt->password);
  }

  if (pipe2 (e->stop, O_CLOEXEC) == -1 || !(e->wmulti = curl_multi_init ())) {
    snprintf (err, errlen, "registry etcd: %s", strerror (errno));
    goto fail;
  }

  /* What a previous incarnation of this node left under a lease that has
   * not expired yet is not ours to keep: the caller publishes afresh. */
  pthread_mutex_lock (&e->mu);
  int rc = 0;
  for (int k = REG_KIND_NODE; k <= REG_KIND_DISK && rc == 0; k++) {
    char key[512], end[512];
    if (k == REG_KIND_NODE)
      snprintf (key, sizeof key, "%snodes/%s", e->prefix, e->node);
    else {
      snprintf (key, sizeof key, "%s%s/%s/", e->prefix,
                reg_kind_dir ((enum reg_kind) k), e->node);
      re_range_end (key, end, sizeof end);
    }
    rc = re_delete_raw (e, key, k == REG_KIND_NODE ? NULL : end, NULL, msg,
                        sizeof msg);
  }
  if (rc == 0)
    rc = re_grant_locked (e, NULL, msg, sizeof msg);
  pthread_mutex_unlock (&e->mu);
  if (rc == -1) {
    snprintf (err, errlen, "registry etcd (node %s): %s", e->node, msg);
    errno = EHOSTUNREACH;
    goto fail;
  }

  int t = pthread_create (&e->ka_thread, NULL, re_ka_thread, e);
  if (t == 0) {
    t = pthread_create (&e->watch_thread, NULL, re_watch_thread, e);
    if (t) {
      atomic_store (&e->stopping, true);
      if (write (e->stop[1], "q", 1) < 0)
        abort ();
      pthread_join (e->ka_thread, NULL);
    }
  }
  if (t) {
    snprintf (err, errlen, "registry etcd: cannot start a thread: %s",
              strerror (t));
    errno = t;
    goto fail;
  }
  atomic_store (&e->running, true);
  return e;

 fail_inval:
  errno = EINVAL;
 fail:;
  int saved = errno;
  re_free (e);
  errno = saved;
  return NULL;
}

static int
re_put (void *be, enum reg_kind kind, const char *id, const char *json)
{
  struct re *e = be;
  char key[1024], msg[1536] = "";

  if (!re_key (e, kind, id, key, sizeof key)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  pthread_mutex_lock (&e->mu);
  /* Kept even if etcd is away: put as soon as it answers. */
  int rc = reg_pubset_put (&e->pub, kind, id, json);
  if (rc == 0)
    rc = re_publish_locked (e, reg_pubset_find (&e->pub, kind, id), NULL,
                            msg, sizeof msg);
  int err = errno;
  pthread_mutex_unlock (&e->mu);
  if (rc == -1)
    ap_debug (AP_DEBUG_CONTROL, "registry: cannot publish %s: %s", key, msg);
  errno = err;
  return rc;
}

static int
re_del (void *be, enum reg_kind kind, const char *id)
{
  struct re *e = be;
  char key[1024], msg[1536] = "";

  if (!re_key (e, kind, id, key, sizeof key)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  pthread_mutex_lock (&e->mu);
  reg_pubset_del (&e->pub, kind, id);
  int rc = re_delete_raw (e, key, NULL, NULL, msg, sizeof msg);
  if (rc == -1)
    e->dirty = true;            /* the resync deletes it */
  int err = errno;
  pthread_mutex_unlock (&e->mu);
  errno = err;
  return rc;
}

/* The records of a range answer (etcd's JSON: {"kvs":[{"key":B64,
 * "value":B64},...]}) under prefix, each given to fn with the node its
 * key names; keys of any other shape are passed over.  Pure (fuzzed:
 * fuzzing/fuzz-registry.c). */
static int
re_list_answer (const char *prefix, json_object *res, reg_list_fn *fn,
                void *opaque)
{
  json_object *kvs;
  int rc = 0;
  size_t pl = strlen (prefix);
  if (json_object_object_get_ex (res, "kvs", &kvs)
      && json_object_is_type (kvs, json_type_array)) {
    for (size_t i = 0; i < json_object_array_length (kvs) && rc == 0; i++) {
      json_object *kv = json_object_array_get_idx (kvs, i), *kb, *vb;
      size_t klen, vlen;
      if (!json_object_object_get_ex (kv, "key", &kb)
          || !json_object_object_get_ex (kv, "value", &vb))
        continue;
      char *key = re_b64_string (kb, &klen);
      char *val = re_b64_string (vb, &vlen);
      if (key && val && klen > pl) {
        /* nodes/NODE, ports/NODE/ID, disks/NODE/ID */
        const char *rest = key + pl;
        char node[REG_NAME_MAX];
        for (int k = REG_KIND_NODE; k <= REG_KIND_DISK; k++) {
          const char *dir = reg_kind_dir ((enum reg_kind) k);
          size_t dl = strlen (dir);
          if (strncmp (rest, dir, dl) != 0 || rest[dl] != '/')
            continue;
          const char *np = rest + dl + 1;
          size_t nl = strcspn (np, "/");
          bool bare = np[nl] == '\0';
          if (nl == 0 || nl >= sizeof node || bare != (k == REG_KIND_NODE))
            break;
          memcpy (node, np, nl);
          node[nl] = '\0';
          rc = fn (opaque, (enum reg_kind) k, node, val, vlen);
          break;
        }
      }
      free (key);
      free (val);
    }
  }
  return rc;
}

static int
re_list (void *be, reg_list_fn *fn, void *opaque)
{
  struct re *e = be;
  char end[512], msg[1536];
  json_object *req = json_object_new_object ();

  re_range_end (e->prefix, end, sizeof end);
  re_add_b64 (req, "key", e->prefix);
  re_add_b64 (req, "range_end", end);
  json_object *res = re_call (e, "/v3/kv/range", req, NULL, NULL, msg,
                              sizeof msg);
  if (!res) {
    ap_debug (AP_DEBUG_CONTROL, "registry: snapshot: %s", msg);
    return -1;
  }
  int rc = re_list_answer (e->prefix, res, fn, opaque);
  json_object_put (res);
  return rc ? -1 : 0;
}

/* Never waits for mu (held across writes): health answers at once. */
static bool
re_health (void *be, char *msg, size_t msglen)
{
  struct re *e = be;
  int64_t lease = atomic_load (&e->lease), ttl = atomic_load (&e->ttl);
  bool dirty = atomic_load (&e->dirty);
  pthread_mutex_lock (&e->hmu);
  bool ok = e->reachable && lease != 0;
  if (!e->reachable)
    snprintf (msg, msglen, "%s", e->error);
  else if (lease == 0)
    snprintf (msg, msglen, "etcd (endpoints %s) answers, but node %s holds "
              "no lease yet: %s", e->eplist, e->node,
              e->error[0] ? e->error : "granting one");
  else
    snprintf (msg, msglen, "etcd at %s: node %s holds lease %" PRIx64
              " (TTL %" PRId64 " s, renewed every %" PRId64 " ms)%s",
              e->eps[atomic_load (&e->cur) % e->neps], e->node,
              (uint64_t) lease, ttl, ttl * 1000 / 3,
              dirty ? "; some records are waiting to be published" : "");
  pthread_mutex_unlock (&e->hmu);
  return ok;
}

static void
re_free (struct re *e)
{
  if (e->wmulti)
    curl_multi_cleanup (e->wmulti);
  if (e->stop[0] >= 0) {
    close (e->stop[0]);
    close (e->stop[1]);
  }
  for (size_t i = 0; i < e->neps; i++)
    free (e->eps[i]);
  free (e->ca_file);
  free (e->cert_file);
  free (e->key_file);
  explicit_bzero (e->password, sizeof e->password);
  explicit_bzero (e->token, sizeof e->token);
  reg_pubset_free (&e->pub);
  pthread_mutex_destroy (&e->tmu);
  pthread_mutex_destroy (&e->hmu);
  pthread_mutex_destroy (&e->mu);
  free (e);
}

static void
re_close (void *be)
{
  struct re *e = be;
  char msg[1536];

  atomic_store (&e->stopping, true);
  if (write (e->stop[1], "q", 1) < 0)
    ap_warn ("registry: cannot stop the etcd threads: %s", strerror (errno));
  curl_multi_wakeup (e->wmulti);
  pthread_join (e->ka_thread, NULL);
  pthread_join (e->watch_thread, NULL);

  /* Revoking the lease deletes every key of ours in one revision.  If etcd
   * is away, they go when the lease expires. */
  if (e->lease) {
    json_object *req = json_object_new_object ();
    re_add_id (req, "ID", e->lease);
    json_object *res = re_call (e, "/v3/lease/revoke", req, NULL, NULL, msg,
                                sizeof msg);
    if (res)
      json_object_put (res);
    else
      ap_warn ("registry: cannot revoke the etcd lease of node %s (its "
               "records go when it expires, within %" PRId64 " s): %s",
               e->node, e->ttl, msg);
  }
  re_free (e);
}

const struct reg_backend_ops reg_etcd_ops = {
  .name = "etcd",
  .open = re_open,
  .put = re_put,
  .del = re_del,
  .list = re_list,
  .health = re_health,
  .close = re_close,
};
