/* altpath.h — the one public header of libaltpath.
 *
 * libaltpath gives a program one safe logical disk (a *unit*) over several
 * ways to reach it (*paths*).  The unit sends I/O down exactly one path at a
 * time; when that path fails it holds new I/O, drains and fences the failed
 * path, picks the next path and resubmits, so the caller sees no error
 * (DESIGN.md: the seed's "switching driver" and "mount verification").
 *
 *   caller ── ap_unit_submit() ──► unit ──► active path  (direct | served)
 *                                     └──── standby paths (probed, hidden)
 *
 * Conventions (as in libnbd): functions returning int give 0 on success and
 * -1 on failure; functions returning a pointer give NULL on failure.  After
 * a failure ap_get_error() holds a message naming the thing and what to do,
 * and ap_get_errno() the errno.  Both are per thread.
 *
 * Threads: every function may be called from any thread.  Completion
 * callbacks run on a library thread and must not block for long; they may
 * submit new requests.
 */
#ifndef ALTPATH_H
#define ALTPATH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AP_API_VERSION 1

/* Longest name of a unit or path, including the terminating NUL. */
#define AP_NAME_MAX 128
/* Most paths one unit may have. */
#define AP_MAX_PATHS 16
/* Buckets of the latency histogram: bucket i counts latencies below 2^i µs
 * (the last bucket takes everything longer). */
#define AP_LAT_BUCKETS 32

/* ---------------------------------------------------------------- errors */

/* The last error of the calling thread: a message and its errno. */
const char *ap_get_error (void);
int ap_get_errno (void);

/* Whether an I/O error means "this path is broken" (fail the path and
 * carry on elsewhere) rather than "this request is wrong or the disk said
 * no" (fail the request only).  ENOSPC, EINVAL, EPERM, EROFS, EOPNOTSUPP,
 * a medium error (ENODATA, EILSEQ, EREMOTEIO) and the like are not path
 * faults (after dm-mpath's blk_path_error()). */
bool ap_error_is_path_fault (int err);

/* -------------------------------------------------------------- requests */

enum ap_op {
  AP_OP_READ,
  AP_OP_WRITE,
  AP_OP_FLUSH,          /* everything acknowledged before is on the disk */
  AP_OP_TRIM,           /* the range may be discarded */
  AP_OP_WRITE_ZEROES,   /* the range reads back as zeroes */
};

#define AP_IO_FUA     (1u << 0) /* write: on the disk before completion */
#define AP_IO_NO_HOLE (1u << 1) /* write-zeroes: keep the range allocated */

struct ap_io;
/* Called exactly once per accepted request, with err = 0 or a negative
 * errno.  May be called on a library thread before ap_unit_submit
 * returns. */
typedef void ap_io_done_fn (struct ap_io *io, int err);

struct ap_path;
struct ap_unit;

/* Completion runs.  A direct path's completion thread takes the
 * completions that are ready together, calls done() for each, and then,
 * before it waits for more, calls the hook set here.  Inside done(),
 * ap_in_completion_run() says whether that call will follow on the
 * calling thread: work a caller may put off until then (the NBD server
 * sends the replies of a run in one system call) can wait for it.  The
 * hook runs on a library thread and must not block.  NULL: no hook (the
 * default), and ap_in_completion_run() is then always false. */
typedef void ap_completion_hook_fn (void);
void ap_set_completion_hook (ap_completion_hook_fn *hook);
bool ap_in_completion_run (void);

/* A request.  The caller owns the memory and fills the first block of
 * fields; the library owns the rest between ap_unit_submit() and the call
 * of done(), and the caller must neither touch nor free it then.  No
 * memory is allocated per request. */
struct ap_io {
  enum ap_op op;
  uint32_t flags;               /* AP_IO_* */
  void *buf;                    /* read/write: aligned to the unit's
                                   logical block size (O_DIRECT) */
  uint64_t offset;              /* bytes; a multiple of the block size */
  uint64_t length;              /* bytes; a multiple of the block size;
                                   0 for FLUSH */
  ap_io_done_fn *done;
  void *opaque;                 /* for the caller */
  uint64_t deadline_ns;         /* CLOCK_MONOTONIC; if set, the unit never
                                   sends the request to a path after it
                                   and completes it with -ETIMEDOUT
                                   instead (the NBD server's side of
                                   invariant 3); 0: none */

  /* Private to libaltpath. */
  struct {
    struct ap_io *next, *prev;  /* the unit's held or in-flight list */
    struct ap_io *pnext, *pprev;/* a path's own list (fault wrapper) */
    struct ap_unit *unit;
    void *upath;                /* the unit's slot of the path it is on */
    uint64_t seq;               /* submission order within the unit */
    uint64_t submit_ns;         /* when the caller submitted it */
    uint64_t path_ns;           /* when it was sent to its current path */
    uint64_t cookie;            /* for the path implementation */
    uint64_t due_ns;            /* for the path implementation */
    int err;                    /* for the path implementation */
    uint32_t state;             /* where in its life it is */
    uint32_t kind;              /* user request or probe */
    uint32_t attempts;          /* paths it has been sent to */
  } internal;
};

/* ----------------------------------------------------------------- paths */

enum ap_path_kind {
  AP_PATH_DIRECT,               /* this node is attached to the disk */
  AP_PATH_SERVED,               /* a peer does the I/O for us */
};

enum ap_path_state {
  AP_PATH_ACTIVE,               /* carries the unit's I/O */
  AP_PATH_STANDBY,              /* healthy, hidden, ready to take over */
  AP_PATH_FAILED,               /* an error, a timeout or a failed probe */
  AP_PATH_DISABLED,             /* taken out of use by the operator */
};

/* What a path can do, read from its target when it is opened. */
#define AP_CAN_FLUSH  (1u << 0)
#define AP_CAN_FUA    (1u << 1)
#define AP_CAN_TRIM   (1u << 2)
#define AP_CAN_ZERO   (1u << 3)

struct ap_path_info {
  char name[AP_NAME_MAX];
  char identity[AP_NAME_MAX];   /* WWID or serial; "" where unknown */
  char target[256];             /* file, device or URI it reaches */
  enum ap_path_kind kind;
  uint64_t size;                /* bytes */
  uint32_t block_size;          /* logical block size, bytes */
  uint32_t caps;                /* AP_CAN_* */
  bool read_only;
  bool o_direct;                /* opened with O_DIRECT (invariant 4) */
  uint32_t max_inflight;        /* requests it takes at once; 0: no limit */
};

struct ap_direct_options {
  const char *name;             /* path name; NULL: "direct:FILE" */
  const char *identity;         /* NULL: read from the device if it has one */
  bool read_only;
  unsigned queue_depth;         /* io_uring entries; 0: 128 */
};

/* Open a file or block device for direct I/O (O_DIRECT, io_uring). */
struct ap_path *ap_path_open_direct (const char *file,
                                     const struct ap_direct_options *opt);

/* A served path: a peer's altpathd (or any NBD server) does the I/O, over
 * NBD through libnbd.  Connects before returning (bounded by
 * connect_timeout_ms); reconnects with bounded backoff when the connection
 * is lost.
 *
 * Fencing (invariant 3): when the unit fences a served path, its
 * connections are closed at once (abortively).  Reads in flight then end
 * at once.  Writes (and flushes, trims, zeroes) end only when the server
 * can no longer execute them: with a server that agreed to the request
 * deadline (the meta context "altpath:deadline-ms=N", offered by altpathd)
 * after N ms and a margin; with a plain NBD server after fence_wait_ms,
 * which is a guess about the peer, not a guarantee (docs/served.md). */
struct ap_served_options {
  const char *name;             /* path name; NULL: "served:URI" */
  const char *uri;              /* NBD URI with the export name, e.g.
                                   nbd://127.0.0.1:10809/%244%24DKB100 or
                                   nbd+unix:///NAME?socket=/run/x.sock */
  const char *tls_psk_file;     /* user:hexkey file; NULL: none */
  const char *tls_username;     /* PSK identity; NULL: libnbd's default */
  const char *tls_cert_dir;     /* X.509 client credentials; NULL: none */
  unsigned connections;         /* multi-conn, used only when the server
                                   offers it; 0: 2 */
  unsigned connect_timeout_ms;  /* 0: 5000 */
  unsigned deadline_ms;         /* the request deadline to propose; 0:
                                   2000 */
  unsigned fence_wait_ms;       /* plain peers: wait this long after the
                                   close before writes count as fenced;
                                   0: 10000 */
  const char *identity;         /* the disk's identity as published; NULL
                                   or "": unknown */
};
struct ap_path *ap_path_open_served (const struct ap_served_options *opt);

/* The fault-injecting wrapper, for tests and demos.  It takes ownership of
 * inner and passes I/O through until told otherwise. */
enum ap_fault_mode {
  AP_FAULT_NONE,                /* pass through */
  AP_FAULT_ERROR,               /* complete every request with an error */
  AP_FAULT_HANG,                /* hold requests; released (executed late)
                                   when the mode changes, cancelled unrun
                                   when the path is fenced */
  AP_FAULT_DELAY,               /* add latency to every completion */
  AP_FAULT_DROP,                /* lose requests silently: never run, never
                                   completed until the path is fenced */
};
struct ap_path *ap_path_fault_wrap (struct ap_path *inner, const char *name);
/* err: the negative errno for AP_FAULT_ERROR (0: -EIO).  delay_us: for
 * AP_FAULT_DELAY.  Takes effect for requests submitted from now on. */
int ap_fault_set (struct ap_path *fault, enum ap_fault_mode mode,
                  int err, uint64_t delay_us);
/* Make fencing this path take this long (a slow server, a long deadline). */
int ap_fault_set_fence_delay (struct ap_path *fault, uint64_t delay_us);

/* Observe every request that crosses into or out of a path: a hook for
 * tracing and for the invariant checks of the tests.  Called on submit
 * (err unused) and on completion, on the thread doing it, before the
 * request moves on; it must not block.  Probes carry probe = true. */
enum ap_trace_point { AP_TRACE_SUBMIT, AP_TRACE_DONE };
typedef void ap_trace_fn (void *opaque, struct ap_path *path,
                          enum ap_trace_point point, const struct ap_io *io,
                          bool probe, int err);
void ap_path_set_trace (struct ap_path *path, ap_trace_fn *fn, void *opaque);

void ap_path_get_info (const struct ap_path *path, struct ap_path_info *info);
const char *ap_path_name (const struct ap_path *path);
/* Close a path that belongs to no unit.  NULL is a no-op. */
void ap_path_close (struct ap_path *path);

/* ----------------------------------------------------------------- units */

struct ap_event;

enum ap_unit_state {
  AP_UNIT_ONLINE,               /* I/O flows on the active path */
  AP_UNIT_VERIFY,               /* a path failed: hold, drain, fence, pick
                                   the next path, resubmit */
  AP_UNIT_SWITCH,               /* a planned change of path: hold, drain,
                                   flip */
  AP_UNIT_OFFLINE,              /* no usable path: fail new I/O, or queue */
  AP_UNIT_CLOSED,               /* closed; accepts nothing */
};

/* The operator's choices for a unit, by path name: the pinned path
 * (ap_unit_switch) and the disabled ones (ap_unit_disable_path).  The
 * unit keeps them while no path of that name is there: a path that joins
 * under a disabled name joins disabled (it is never probed nor used), one
 * that joins under the pinned name is pinned again.  They change only by
 * the calls above and ap_unit_enable_path / ap_unit_unpin.  A program
 * that keeps them across its restarts (altpathd's state file) reads them
 * from ap_unit_get_status and gives them back at creation. */
struct ap_unit_choices {
  char pinned[AP_NAME_MAX];     /* "" for none */
  unsigned ndisabled;
  char disabled[AP_MAX_PATHS][AP_NAME_MAX];
};

struct ap_unit_options {
  const char *name;             /* e.g. "$4$DKB100" */
  uint32_t request_timeout_ms;  /* a request older than this fails its
                                   path (default 5000) */
  uint32_t verify_timeout_ms;   /* how long to look for a usable path
                                   before going offline (default 30000) */
  uint32_t checker_interval_ms; /* probe period of the paths (default 2000) */
  uint32_t failback_ms;         /* a recovered preferred path must stay
                                   healthy this long before the unit goes
                                   back to it (default 5000) */
  bool no_failback;             /* never go back automatically */
  bool queue_if_no_path;        /* offline: queue I/O instead of failing */
  const struct ap_unit_choices *choices; /* the operator's, restored (copied
                                   at creation); NULL for none */
  struct ap_event_cb_opt {      /* events from creation on (see below) */
    void (*fn) (void *opaque, const struct ap_event *ev);
    void *opaque;
  } events;
};
void ap_unit_options_init (struct ap_unit_options *opt);

/* Create a unit over paths (at least one).  It takes ownership of the
 * paths, also on failure.  Paths must agree on size, block size and
 * identity. */
struct ap_unit *ap_unit_create (const struct ap_unit_options *opt,
                                struct ap_path *const *paths, size_t npaths);
/* Close: refuse new I/O, finish what is outstanding (bounded by the
 * verification timeout), stop the threads, close the paths.  NULL is a
 * no-op.  Returns -1 if requests had to be failed to close. */
int ap_unit_close (struct ap_unit *unit);

const char *ap_unit_name (const struct ap_unit *unit);
uint64_t ap_unit_size (const struct ap_unit *unit);
uint32_t ap_unit_block_size (const struct ap_unit *unit);

/* Asynchronous I/O.  0: accepted, io->done will be called exactly once.
 * -1: refused at once (bad request, unit closed or offline), done is not
 * called. */
int ap_unit_submit (struct ap_unit *unit, struct ap_io *io);

/* Synchronous I/O, built on ap_unit_submit. */
int ap_unit_pread (struct ap_unit *unit, void *buf, uint64_t len,
                   uint64_t off);
int ap_unit_pwrite (struct ap_unit *unit, const void *buf, uint64_t len,
                    uint64_t off, uint32_t flags);
int ap_unit_flush (struct ap_unit *unit);
int ap_unit_trim (struct ap_unit *unit, uint64_t len, uint64_t off);
int ap_unit_write_zeroes (struct ap_unit *unit, uint64_t len, uint64_t off,
                          uint32_t flags);

/* Paths joining and leaving a unit in use.  add_path takes ownership of
 * the path (also on failure).  A better path than the active one is
 * switched to (drain, then flip) once it probes healthy.  priority: among
 * paths of one kind, higher is preferred. */
int ap_unit_add_path (struct ap_unit *unit, struct ap_path *path,
                      int priority);
int ap_unit_remove_path (struct ap_unit *unit, const char *path);
/* Disabling keeps the name disabled (struct ap_unit_choices) until it is
 * enabled: enabling a name that is disabled but has no path now only
 * forgets it.  At most AP_MAX_PATHS names are kept (ENOSPC). */
int ap_unit_enable_path (struct ap_unit *unit, const char *path);
int ap_unit_disable_path (struct ap_unit *unit, const char *path);
/* Manual switch: drain, flip, and pin the path so that automatic failback
 * does not undo it (failover still leaves it if it fails, and failback
 * returns to it).  Waits until done, at most the request timeout. */
int ap_unit_switch (struct ap_unit *unit, const char *path);
int ap_unit_unpin (struct ap_unit *unit);

/* ------------------------------------------------------- counters, status */

struct ap_counters {
  uint64_t reads, writes, flushes, trims, zeroes;
  uint64_t bytes_read, bytes_written;
  uint64_t errors;              /* requests this path or unit failed */
  uint64_t latency[AP_LAT_BUCKETS];
};

struct ap_path_status {
  char name[AP_NAME_MAX];
  enum ap_path_kind kind;
  enum ap_path_state state;
  bool active;
  bool preferred;               /* where the unit wants to be */
  bool pinned;
  int priority;
  uint64_t inflight;
  struct ap_counters counters;
  uint64_t p50_us, p99_us;
  int last_errno;               /* 0 if none */
  char last_error[160];
  int64_t last_error_unix_ms;   /* wall-clock time; 0 if none */
  uint64_t probes_ok, probes_failed;
};

struct ap_unit_status {
  char name[AP_NAME_MAX];
  enum ap_unit_state state;
  uint64_t size;
  uint32_t block_size;
  uint64_t inflight;            /* on the active path */
  uint64_t held;                /* waiting for verification or a switch */
  struct ap_counters counters;
  uint64_t p50_us, p99_us;
  uint64_t switches_auto, switches_manual;
  int64_t last_switch_unix_ms;  /* 0 if never */
  uint64_t longest_verify_us;   /* longest time spent in VERIFY */
  bool queue_if_no_path;
  unsigned npaths;
  struct ap_path_status paths[AP_MAX_PATHS];
  struct ap_unit_choices choices; /* also names with no path now */
};

int ap_unit_get_status (struct ap_unit *unit, struct ap_unit_status *st);
/* The same as JSON text; free() it. */
char *ap_unit_status_json (struct ap_unit *unit);

const char *ap_unit_state_name (enum ap_unit_state s);
const char *ap_path_state_name (enum ap_path_state s);
const char *ap_path_kind_name (enum ap_path_kind k);

/* ----------------------------------------------------------------- events */

enum ap_event_type {
  AP_EVENT_UNIT_STATE,          /* the unit changed state */
  AP_EVENT_PATH_STATE,          /* a path changed state */
  AP_EVENT_SWITCH,              /* the active path changed */
  AP_EVENT_PATH_ADDED,
  AP_EVENT_PATH_REMOVED,
};

struct ap_event {
  enum ap_event_type type;
  const char *unit;
  const char *path;             /* the path concerned; for SWITCH the new
                                   one */
  const char *from_path;        /* SWITCH: the old one ("" if none) */
  int old_state, new_state;     /* enum ap_unit_state or ap_path_state */
  const char *reason;           /* human-readable cause */
  int err;                      /* the error behind it, or 0 */
  uint64_t mono_ns;             /* CLOCK_MONOTONIC */
};

/* Called on a unit thread, in order, never with a library lock held. */
typedef void ap_event_fn (void *opaque, const struct ap_event *ev);
void ap_unit_set_event_cb (struct ap_unit *unit, ap_event_fn *fn,
                           void *opaque);

#ifdef __cplusplus
}
#endif
#endif /* ALTPATH_H */
