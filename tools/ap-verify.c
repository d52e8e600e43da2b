/* ap-verify.c — the integrity verifier: tagged I/O through one unit while
 * faults are injected under it, with the invariants of DESIGN.md checked
 * from outside the unit's own logic.
 *
 *   main ── builds the setup: an image file, N direct paths on it, each
 *           under a fault wrapper, one unit; runs, stops, checks, reports
 *
 *   workers (--threads) ── each owns a disjoint set of chunks of blocks,
 *           keeps --depth requests in flight, and a model of what each of
 *           its blocks may hold (struct apv_block)
 *   faulter ── a seeded schedule of faults (error, hang, delay, drop,
 *           both paths down, slow fencing), switches, unpins and disables
 *   trace hooks, on library threads ── the witnesses:
 *           unit level (the paths the unit sees: the fault wrappers) and
 *           disk level (the direct paths under them): no user request is
 *           sent on one path while another has one in flight (invariant
 *           1); at the disk level also the order in which writes land:
 *           an older generation landing after a newer one is a stale
 *           write caught live (invariant 3)
 *   done callbacks ── exactly-once accounting (invariant 2), then the slot
 *           goes back to its worker, which checks reads and updates the
 *           model
 *   final check ── every block read back (from the image with plain
 *           pread, bypassing the unit, or through the unit) and compared
 *           with the model: stale blocks (invariant 3), lost writes
 *           (invariant 4), corrupt blocks
 *
 * The core (tagging, the model, the workers, the witness, the faulter, the
 * final check) works on a `struct ap_unit *` and the paths given to it, so
 * that it can later run against a unit inside altpathd; only main() knows
 * about image files and fault wrappers.
 *
 * Block format (a "tag block" is the unit's block size, or 4 KiB when the
 * block size divides 4 KiB):
 *
 *   magic "APVERIF1" | run id | block number | generation | writer |
 *   tag size | FNV-1a 64 of the block (this field taken as 0) |
 *   pseudo-random payload from (run id, block, generation)
 *
 * An all-zero block reads as "zeroes" (generation 0).  Generations count
 * per block, from 1; every write, write-zeroes and trim of a block takes
 * the next one.
 *
 * The model of a block (struct apv_expect) is what it may hold now: the
 * content of the last acknowledged write or write-zeroes ("base"), plus
 * the generations of writes that failed since (an error to the caller
 * leaves the block "old or new", and honestly so), plus zeroes if a trim
 * was acknowledged (a trim MAY discard) or a trim or write-zeroes failed
 * since.  A read with no mutation of the block in flight must find one of
 * those, and what it finds becomes the model (a failed write that did
 * land stays landed: nothing may take it back).  A read that overlapped a
 * mutation may also see anything issued meanwhile.
 *
 * Only one mutating request per block is in flight at a time (the worker
 * that owns the block waits), so generation order is issue order, and a
 * generation landing after a newer one can only be a request the unit let
 * loose after it had completed it: a stale write.
 *
 * The seed picks the operations, ranges and fault schedule; thread timing
 * is not reproducible, so a seed replays the same kind of run, not the
 * same interleaving.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "altpath.h"
#include "atomic-max.h"
#include "clock.h"

#define APV_MAGIC UINT64_C (0x3146495245565041) /* "APVERIF1", little end */
#define APV_MAX_IO_BLOCKS 8     /* longest request, in tag blocks */
#define APV_MAX_TP (2 * AP_MAX_PATHS)
#define APV_MAX_ERRNOS 16
#define APV_NOTE 320            /* length of one recorded example */

/* ------------------------------------------------------------ utilities */

/* splitmix64: one state per user (worker, faulter), never shared. */
static uint64_t
apv_rand (uint64_t *s)
{
  uint64_t z = (*s += UINT64_C (0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C (0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C (0x94D049BB133111EB);
  return z ^ (z >> 31);
}

/* Uniform in [lo, hi]. */
static uint64_t
apv_range (uint64_t *s, uint64_t lo, uint64_t hi)
{
  return hi <= lo ? lo : lo + apv_rand (s) % (hi - lo + 1);
}

/* Atomically raise *a to v; returns the value before. */
static uint64_t
apv_fetch_max (_Atomic uint64_t *a, uint64_t v)
{
  uint64_t cur = atomic_load (a);
  while (v > cur && !atomic_compare_exchange_weak (a, &cur, v))
    ;
  return cur;
}

static const char *
apv_errname (int err)
{
  if (err < 0)
    err = -err;
  const char *n = strerrorname_np (err);
  return n ? n : "E?";
}

static const char *const apv_op_name[] = {
  [AP_OP_READ] = "read", [AP_OP_WRITE] = "write", [AP_OP_FLUSH] = "flush",
  [AP_OP_TRIM] = "trim", [AP_OP_WRITE_ZEROES] = "write-zeroes",
};
#define APV_NOPS 5

static const char *
apv_opname (enum ap_op op)
{
  return (unsigned) op < APV_NOPS ? apv_op_name[op] : "unknown-op";
}

static void
apv_cond_init (pthread_cond_t *c)
{
  pthread_condattr_t ca;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (c, &ca);
  pthread_condattr_destroy (&ca);
}

/* Wait on c (m held) until signalled or ms have passed. */
static void
apv_cond_wait_ms (pthread_cond_t *c, pthread_mutex_t *m, uint64_t ms)
{
  struct timespec ts = ap_ns_to_timespec (ap_now_ns () + AP_MS (ms));
  pthread_cond_timedwait (c, m, &ts);
}

/* ----------------------------------------------------------------- tags */

struct apv_tag {
  uint64_t magic;               /* APV_MAGIC */
  uint64_t run_id;              /* blocks of another run are foreign */
  uint64_t block;               /* tag block number: offset / tag size */
  uint64_t gen;                 /* generation, from 1 */
  uint32_t writer;              /* worker id (0xffffffff: the selftest) */
  uint32_t size;                /* tag block size */
  uint64_t sum;                 /* FNV-1a 64 of the block, this field 0 */
};

static uint64_t
apv_fnv (uint64_t h, const unsigned char *p, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= UINT64_C (0x100000001b3);
  }
  return h;
}

static uint64_t
apv_sum (const unsigned char *blk, uint32_t size)
{
  struct apv_tag t;
  memcpy (&t, blk, sizeof t);
  t.sum = 0;
  uint64_t h = apv_fnv (UINT64_C (0xcbf29ce484222325),
                        (const unsigned char *) &t, sizeof t);
  return apv_fnv (h, blk + sizeof t, size - sizeof t);
}

static void
apv_fill (uint64_t run_id, uint32_t size, uint64_t block, uint64_t gen,
          uint32_t writer, unsigned char *p)
{
  struct apv_tag t = {
    .magic = APV_MAGIC, .run_id = run_id, .block = block, .gen = gen,
    .writer = writer, .size = size, .sum = 0,
  };
  uint64_t s = run_id ^ (block * UINT64_C (0xD6E8FEB86659FD93))
    ^ (gen * UINT64_C (0xA0761D6478BD642F));
  for (size_t i = sizeof t; i + 8 <= size; i += 8) {
    uint64_t x = apv_rand (&s);
    memcpy (p + i, &x, 8);
  }
  memcpy (p, &t, sizeof t);
  t.sum = apv_sum (p, size);
  memcpy (p, &t, sizeof t);
}

static bool
apv_is_zero (const unsigned char *p, uint32_t size)
{
  uint64_t acc = 0;
  for (uint32_t i = 0; i < size; i += 8) {
    uint64_t x;
    memcpy (&x, p + i, 8);
    acc |= x;
  }
  return acc == 0;
}

/* What one tag block holds. */
enum apv_kind { APV_ZERO, APV_GEN, APV_BAD };
struct apv_token {
  enum apv_kind kind;
  uint64_t gen;                 /* APV_GEN; 0 for APV_ZERO */
  uint32_t writer;
  const char *why;              /* APV_BAD */
};

static void
apv_decode (uint64_t run_id, uint32_t size, uint64_t block,
            const unsigned char *p, bool check_sum, struct apv_token *t)
{
  struct apv_tag tag;
  memset (t, 0, sizeof *t);
  if (apv_is_zero (p, size)) {
    t->kind = APV_ZERO;
    return;
  }
  memcpy (&tag, p, sizeof tag);
  t->kind = APV_BAD;
  if (tag.magic != APV_MAGIC)
    t->why = "no tag: foreign data";
  else if (tag.run_id != run_id)
    t->why = "the tag of another run";
  else if (tag.size != size)
    t->why = "a tag of another block size";
  else if (tag.block != block)
    t->why = "the tag of another block (misdirected write)";
  else if (tag.gen == 0)
    t->why = "generation 0";
  else if (check_sum && apv_sum (p, size) != tag.sum)
    t->why = "checksum mismatch (torn or corrupted block)";
  else {
    t->kind = APV_GEN;
    t->gen = tag.gen;
    t->writer = tag.writer;
  }
}

static void
apv_token_str (const struct apv_token *t, char *buf, size_t n)
{
  switch (t->kind) {
  case APV_ZERO: snprintf (buf, n, "zeroes"); break;
  case APV_GEN: snprintf (buf, n, "generation %" PRIu64, t->gen); break;
  case APV_BAD: snprintf (buf, n, "garbage (%s)", t->why); break;
  }
}

/* ---------------------------------------------------------------- model */

/* What a block may hold now. */
struct apv_expect {
  uint64_t base;                /* content after the last acknowledged
                                   write/write-zeroes (or last strict
                                   read): a generation, 0 = zeroes */
  uint64_t fail_lo, fail_hi;    /* generations of writes that failed
                                   since: any may have landed; 0 = none */
  bool zero_ok;                 /* zeroes too (a trim, a failed
                                   trim/write-zeroes since) */
};

static bool
apv_expect_ok (const struct apv_expect *e, const struct apv_token *t)
{
  if (t->kind == APV_ZERO)
    return e->base == 0 || e->zero_ok;
  if (t->kind != APV_GEN)
    return false;
  return t->gen == e->base
    || (e->fail_lo && t->gen >= e->fail_lo && t->gen <= e->fail_hi);
}

static void
apv_expect_str (const struct apv_expect *e, char *buf, size_t n)
{
  int k = e->base ? snprintf (buf, n, "generation %" PRIu64, e->base)
    : snprintf (buf, n, "zeroes");
  if (k < 0 || (size_t) k >= n)
    return;
  if (e->zero_ok && e->base)
    k += snprintf (buf + k, n - (size_t) k, " or zeroes");
  if (e->fail_lo && (size_t) k < n)
    snprintf (buf + k, n - (size_t) k,
              " or a failed write's generation %" PRIu64 "..%" PRIu64,
              e->fail_lo, e->fail_hi);
}

/* One tag block.  Everything but `landed` belongs to the worker that owns
 * the block (and to main once the workers have stopped). */
struct apv_block {
  struct apv_expect exp;
  uint64_t gen;                 /* last generation given out */
  uint64_t acked_op;            /* generation of the last acknowledged
                                   write/write-zeroes (or landed write
                                   seen by a strict read) */
  uint64_t last_zero;           /* generation of the last trim/zero issued */
  uint32_t epoch;               /* ++ at every mutating submission */
  bool busy;                    /* a mutating request is in flight */
  _Atomic uint64_t landed;      /* highest generation done on a disk-level
                                   path (trace); ~0: no landing witness */
};

/* --------------------------------------------------------------- config */

struct apv_config {
  unsigned threads;             /* workers */
  unsigned depth;               /* requests in flight per worker */
  unsigned chunk_blocks;        /* chunks of this many blocks are dealt to
                                   the workers round robin */
  unsigned max_io_blocks;       /* longest read/write/zero, in tag blocks */
  uint32_t tag_size;            /* bytes per tag block */
  uint64_t nblocks;             /* tag blocks on the unit */
  uint64_t seed;
  /* The mix, in percent; writes take what is left. */
  unsigned pct_read, pct_flush, pct_trim, pct_zero;
  unsigned pct_fua;             /* of writes */
  unsigned pct_overlap;         /* reads allowed onto a block being written */
  bool can_trim, can_zero;
  bool verbose;
};

/* ---------------------------------------------------------------- slots */

enum { SLOT_IDLE, SLOT_INFLIGHT, SLOT_DONE };

struct apv_worker;

/* One request slot: the request, its buffer and what it was about. */
struct apv_slot {
  struct ap_io io;
  struct apv_worker *w;
  _Atomic uint32_t state;       /* SLOT_* */
  int err;                      /* from the done callback */
  uint64_t submit_ns, done_ns;
  uint64_t blk0;                /* first tag block */
  unsigned nblk;
  uint64_t gens[APV_MAX_IO_BLOCKS];      /* mutating: each block's gen */
  uint32_t epoch[APV_MAX_IO_BLOCKS];     /* read: epoch at submission */
  bool strict[APV_MAX_IO_BLOCKS];        /* read: nothing mutating then */
  struct apv_expect snap[APV_MAX_IO_BLOCKS]; /* read: model then */
  uint64_t snap_gen[APV_MAX_IO_BLOCKS];  /* read: last gen given then */
  uint64_t submissions;         /* accepted by ap_unit_submit */
  _Atomic uint64_t completions; /* done callbacks */
  unsigned char *buf;
  struct apv_slot *next;        /* done list or free list */
};

struct apv_run;

struct apv_worker {
  struct apv_run *run;
  unsigned id;
  pthread_t th;
  bool started;
  pthread_mutex_t lock;         /* guards done_head/done_tail only */
  pthread_cond_t cond;
  struct apv_slot *done_head, *done_tail;
  struct apv_slot *free;        /* worker only */
  unsigned inflight;            /* worker only: slots not back yet */
  uint64_t rng;
  uint64_t nchunks;             /* chunks this worker owns */
};

/* ------------------------------------------------------------- witness */

enum { APV_LEVEL_UNIT, APV_LEVEL_DISK };
static const char *const apv_level_name[] = { "unit", "disk" };

/* One traced path. */
struct apv_tp {
  struct apv_run *run;
  char name[AP_NAME_MAX];
  int level;                    /* APV_LEVEL_*: overlaps are looked for
                                   among paths of one level */
  bool landing;                 /* record the landing order of writes */
  _Atomic int64_t inflight;     /* user requests in flight */
  _Atomic uint64_t submits, probes, flushes, fua_writes, errors;
};

/* ---------------------------------------------------------------- run */

struct apv_stats {
  _Atomic uint64_t submitted[APV_NOPS], completed, refused, fua;
  _Atomic uint64_t dup_completions;     /* inv. 2 */
  _Atomic uint64_t done_on_refused;     /* inv. 2 */
  _Atomic uint64_t overlaps[2];         /* inv. 1, per level */
  _Atomic uint64_t stale_landings;      /* inv. 3, live */
  _Atomic uint64_t trace_anomalies;     /* a path completed more than it
                                           was given */
  _Atomic uint64_t landings;
  _Atomic uint64_t read_mismatches;
  _Atomic uint64_t read_overlapped;     /* reads checked loosely */
  _Atomic uint64_t last_done_ns, max_gap_ns, max_lat_ns;
  _Atomic uint64_t gap_from_ns;         /* where the longest gap began */
  /* Set once the workers have stopped. */
  uint64_t never_completed;
  /* Final check. */
  uint64_t blocks_verified, stale_blocks, lost_writes, corrupt_blocks;
  uint64_t uncertain_blocks;            /* held a failed write's data */
};

struct apv_run {
  struct apv_config cfg;
  uint64_t run_id;
  struct ap_unit *unit;
  struct apv_block *blocks;
  struct apv_worker *workers;
  struct apv_slot *slots;       /* threads * depth, one array */
  size_t nslots;
  struct apv_tp tps[APV_MAX_TP];
  unsigned ntps;
  bool have_landing;            /* some disk-level path records landings */

  _Atomic bool stopping;
  uint64_t drain_deadline_ns;
  _Atomic bool no_trim, no_zero; /* the unit said EOPNOTSUPP */
  uint64_t gap_start_ns;        /* measuring gaps from here */

  struct apv_stats st;

  pthread_mutex_t note_lock;    /* guards the examples and the errno table */
  char ex_overlap[APV_NOTE], ex_dup[APV_NOTE], ex_landing[APV_NOTE];
  char ex_read[APV_NOTE], ex_stale[APV_NOTE], ex_lost[APV_NOTE];
  char ex_corrupt[APV_NOTE], ex_never[APV_NOTE], ex_trace[APV_NOTE];
  int err_no[APV_MAX_ERRNOS];   /* errors returned to callers, by errno */
  uint64_t err_count[APV_MAX_ERRNOS];
  uint64_t err_other;
  int ref_no[APV_MAX_ERRNOS];   /* submissions refused, by errno */
  uint64_t ref_count[APV_MAX_ERRNOS];
};

/* Record the first example of a kind of violation. */
static void
apv_note (struct apv_run *r, char *slot, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));
static void
apv_note (struct apv_run *r, char *slot, const char *fmt, ...)
{
  pthread_mutex_lock (&r->note_lock);
  if (slot[0] == '\0') {
    va_list ap;
    va_start (ap, fmt);
    vsnprintf (slot, APV_NOTE, fmt, ap);
    va_end (ap);
  }
  pthread_mutex_unlock (&r->note_lock);
}

static void
apv_count_errno (struct apv_run *r, int *nos, uint64_t *counts, int err)
{
  pthread_mutex_lock (&r->note_lock);
  unsigned i;
  for (i = 0; i < APV_MAX_ERRNOS && counts[i]; i++)
    if (nos[i] == err)
      break;
  if (i < APV_MAX_ERRNOS) {
    nos[i] = err;
    counts[i]++;
  }
  else
    r->err_other++;
  pthread_mutex_unlock (&r->note_lock);
}

/* The run's slot that opaque is, or NULL (a request that is not ours). */
static struct apv_slot *
apv_slot_of (struct apv_run *r, const void *opaque)
{
  uintptr_t p = (uintptr_t) opaque, a = (uintptr_t) r->slots;
  if (p < a || p >= a + r->nslots * sizeof *r->slots
      || (p - a) % sizeof *r->slots != 0)
    return NULL;
  return (struct apv_slot *) opaque;
}

static struct apv_run *
apv_run_new (const struct apv_config *cfg)
{
  struct apv_run *r = calloc (1, sizeof *r);
  if (!r)
    return NULL;
  r->cfg = *cfg;
  uint64_t s = cfg->seed ^ UINT64_C (0x5EED5EED5EED5EED);
  r->run_id = apv_rand (&s);
  pthread_mutex_init (&r->note_lock, NULL);

  uint64_t nchunks = (cfg->nblocks + cfg->chunk_blocks - 1)
    / cfg->chunk_blocks;
  if (cfg->threads == 0 || cfg->depth == 0 || nchunks < cfg->threads
      || cfg->max_io_blocks == 0 || cfg->max_io_blocks > APV_MAX_IO_BLOCKS
      || cfg->tag_size < sizeof (struct apv_tag) || cfg->tag_size % 8) {
    fprintf (stderr, "ap-verify: the unit is too small for %u threads "
             "(%" PRIu64 " chunks of %u blocks of %" PRIu32 " bytes), or a "
             "bad setting\n", cfg->threads, nchunks, cfg->chunk_blocks,
             cfg->tag_size);
    free (r);
    return NULL;
  }
  r->blocks = calloc (cfg->nblocks, sizeof *r->blocks);
  r->workers = calloc (cfg->threads, sizeof *r->workers);
  r->nslots = (size_t) cfg->threads * cfg->depth;
  r->slots = calloc (r->nslots, sizeof *r->slots);
  if (!r->blocks || !r->workers || !r->slots)
    goto nomem;
  for (uint64_t b = 0; b < cfg->nblocks; b++)
    atomic_init (&r->blocks[b].landed, UINT64_MAX); /* no witness yet */

  for (unsigned i = 0; i < cfg->threads; i++) {
    struct apv_worker *w = &r->workers[i];
    w->run = r;
    w->id = i;
    w->rng = cfg->seed * 1000003 + i + 1;
    w->nchunks = (nchunks - i + cfg->threads - 1) / cfg->threads;
    pthread_mutex_init (&w->lock, NULL);
    apv_cond_init (&w->cond);
  }
  for (size_t i = 0; i < r->nslots; i++) {
    struct apv_slot *sl = &r->slots[i];
    struct apv_worker *w = &r->workers[i / cfg->depth];
    void *buf;
    if (posix_memalign (&buf, 4096,
                        (size_t) cfg->max_io_blocks * cfg->tag_size) != 0)
      goto nomem;
    sl->buf = buf;
    sl->w = w;
    sl->next = w->free;
    w->free = sl;
  }
  return r;

 nomem:
  fprintf (stderr, "ap-verify: out of memory\n");
  if (r->slots)
    for (size_t i = 0; i < r->nslots; i++)
      free (r->slots[i].buf);
  free (r->slots);
  free (r->workers);
  free (r->blocks);
  free (r);
  return NULL;
}

/* Only once nothing can call back into the run any more (the unit is
 * closed), and only if no request is left in flight: the library might
 * still hold a slot. */
static void
apv_run_free (struct apv_run *r)
{
  if (!r)
    return;
  for (size_t i = 0; i < r->nslots; i++)
    free (r->slots[i].buf);
  free (r->slots);
  free (r->workers);
  free (r->blocks);
  free (r);
}

/* ----------------------------------------------------- witness (traces) */

static void apv_landing (struct apv_run *r, struct apv_tp *tp,
                         const struct ap_io *io);

static void
apv_trace (void *opaque, struct ap_path *path, enum ap_trace_point point,
           const struct ap_io *io, bool probe, int err)
{
  struct apv_tp *tp = opaque;
  struct apv_run *r = tp->run;
  (void) path;

  if (probe) {
    if (point == AP_TRACE_SUBMIT)
      atomic_fetch_add_explicit (&tp->probes, 1, memory_order_relaxed);
    return;
  }
  if (point == AP_TRACE_SUBMIT) {
    /* Count ourselves in first, then look at the others: of two
     * submissions racing on two paths at least one sees the other. */
    atomic_fetch_add (&tp->inflight, 1);
    atomic_fetch_add_explicit (&tp->submits, 1, memory_order_relaxed);
    if (io->op == AP_OP_FLUSH)
      atomic_fetch_add_explicit (&tp->flushes, 1, memory_order_relaxed);
    if (io->op == AP_OP_WRITE && (io->flags & AP_IO_FUA))
      atomic_fetch_add_explicit (&tp->fua_writes, 1, memory_order_relaxed);
    for (unsigned i = 0; i < r->ntps; i++) {
      struct apv_tp *o = &r->tps[i];
      if (o == tp || o->level != tp->level)
        continue;
      int64_t n = atomic_load (&o->inflight);
      if (n > 0) {
        atomic_fetch_add (&r->st.overlaps[tp->level], 1);
        apv_note (r, r->ex_overlap,
                  "%s level: %s of %" PRIu64 " bytes at %" PRIu64
                  " sent on path %s while path %s had %" PRId64
                  " user request(s) in flight",
                  apv_level_name[tp->level], apv_opname (io->op),
                  io->length, io->offset, tp->name, o->name, n);
        break;
      }
    }
  }
  else {
    int64_t before = atomic_fetch_sub (&tp->inflight, 1);
    if (before <= 0) {
      atomic_fetch_add (&tp->inflight, 1);
      atomic_fetch_add (&r->st.trace_anomalies, 1);
      apv_note (r, r->ex_trace, "path %s completed a %s at %" PRIu64
                " it had no user request in flight for", tp->name,
                apv_opname (io->op), io->offset);
    }
    if (err)
      atomic_fetch_add_explicit (&tp->errors, 1, memory_order_relaxed);
    else if (tp->landing)
      apv_landing (r, tp, io);
  }
}

/* Generation gen of block b is done on a disk-level path. */
static void
apv_landed (struct apv_run *r, struct apv_tp *tp, uint64_t b, uint64_t gen)
{
  uint64_t before = apv_fetch_max (&r->blocks[b].landed, gen);
  atomic_fetch_add_explicit (&r->st.landings, 1, memory_order_relaxed);
  if (before > gen) {
    atomic_fetch_add (&r->st.stale_landings, 1);
    apv_note (r, r->ex_landing, "block %" PRIu64 ": generation %" PRIu64
              " reached the disk on path %s after generation %" PRIu64
              " had", b, gen, tp->name, before);
  }
}

/* A successful user request on a disk-level path: note what landed.
 * Writes are read from the buffer itself (whatever the unit did with the
 * request on the way); trims and zeroes come from our slot. */
static void
apv_landing (struct apv_run *r, struct apv_tp *tp, const struct ap_io *io)
{
  uint32_t ts = r->cfg.tag_size;
  if (io->op == AP_OP_WRITE && io->buf) {
    for (uint64_t k = 0; k < io->length / ts; k++) {
      uint64_t b = io->offset / ts + k;
      struct apv_token t;
      if (b >= r->cfg.nblocks)
        break;
      /* The checksum is the final check's business. */
      apv_decode (r->run_id, ts, b, (const unsigned char *) io->buf + k * ts,
                  false, &t);
      if (t.kind == APV_GEN)
        apv_landed (r, tp, b, t.gen);
    }
  }
  else if (io->op == AP_OP_TRIM || io->op == AP_OP_WRITE_ZEROES) {
    struct apv_slot *s = apv_slot_of (r, io->opaque);
    if (!s || s->io.op != io->op || s->io.offset != io->offset)
      return;
    for (unsigned k = 0; k < s->nblk; k++)
      apv_landed (r, tp, s->blk0 + k, s->gens[k]);
  }
}

/* Watch a path: level APV_LEVEL_UNIT for the paths given to the unit,
 * APV_LEVEL_DISK for paths under them (where requests really run); only
 * disk-level paths record landings.  Before the path carries I/O. */
static int
apv_watch_path (struct apv_run *r, struct ap_path *p, int level)
{
  if (r->ntps >= APV_MAX_TP) {
    fprintf (stderr, "ap-verify: too many traced paths\n");
    return -1;
  }
  struct apv_tp *tp = &r->tps[r->ntps];
  tp->run = r;
  tp->level = level;
  tp->landing = level == APV_LEVEL_DISK;
  snprintf (tp->name, sizeof tp->name, "%s", ap_path_name (p));
  if (tp->landing && !r->have_landing) {
    r->have_landing = true;
    for (uint64_t b = 0; b < r->cfg.nblocks; b++)
      atomic_store (&r->blocks[b].landed, 0);
  }
  r->ntps++;
  ap_path_set_trace (p, apv_trace, tp);
  return 0;
}

/* ------------------------------------------------------------- workers */

static void
apv_done (struct ap_io *io, int err)
{
  struct apv_slot *s = io->opaque;
  struct apv_worker *w = s->w;
  struct apv_run *r = w->run;
  uint64_t now = ap_now_ns ();

  atomic_fetch_add (&s->completions, 1);
  uint32_t prev = SLOT_INFLIGHT;
  if (!atomic_compare_exchange_strong (&s->state, &prev, SLOT_DONE)) {
    /* Not in flight: a second completion of one submission. */
    atomic_fetch_add (&r->st.dup_completions, 1);
    apv_note (r, r->ex_dup, "%s of %" PRIu64 " bytes at %" PRIu64
              " completed again (err %s) after its slot had %s",
              apv_opname (io->op), io->length, io->offset,
              err ? apv_errname (err) : "0",
              prev == SLOT_IDLE ? "been retired" : "already completed");
    return;
  }
  s->err = err;
  s->done_ns = now;
  atomic_fetch_add_explicit (&r->st.completed, 1, memory_order_relaxed);
  ap_atomic_max (&r->st.max_lat_ns, now - s->submit_ns);
  if (!atomic_load_explicit (&r->stopping, memory_order_relaxed)) {
    uint64_t last = atomic_exchange (&r->st.last_done_ns, now);
    if (now > last && now - last > atomic_load (&r->st.max_gap_ns)) {
      ap_atomic_max (&r->st.max_gap_ns, now - last);
      atomic_store (&r->st.gap_from_ns, last);
    }
  }

  pthread_mutex_lock (&w->lock);
  s->next = NULL;
  if (w->done_tail)
    w->done_tail->next = s;
  else
    w->done_head = s;
  w->done_tail = s;
  pthread_cond_signal (&w->cond);
  pthread_mutex_unlock (&w->lock);
}

/* Check what a read found in one block against the model. */
static void
apv_check_read_block (struct apv_worker *w, struct apv_slot *s, unsigned k)
{
  struct apv_run *r = w->run;
  uint64_t b = s->blk0 + k;
  struct apv_block *blk = &r->blocks[b];
  struct apv_token t;
  char got[96], want[160];

  apv_decode (r->run_id, r->cfg.tag_size, b,
              s->buf + (size_t) k * r->cfg.tag_size, true, &t);
  bool strict = s->strict[k] && blk->epoch == s->epoch[k];
  bool ok;
  if (strict)
    ok = apv_expect_ok (&blk->exp, &t);
  else {
    atomic_fetch_add_explicit (&r->st.read_overlapped, 1,
                               memory_order_relaxed);
    /* Before, after, or anything issued since the read was sent —
     * including the mutation in flight then, whose generation is
     * snap_gen. */
    ok = apv_expect_ok (&s->snap[k], &t) || apv_expect_ok (&blk->exp, &t)
      || (t.kind == APV_GEN && t.gen >= s->snap_gen[k] && t.gen <= blk->gen)
      || (t.kind == APV_ZERO && blk->last_zero >= s->snap_gen[k]);
  }
  if (!ok) {
    atomic_fetch_add (&r->st.read_mismatches, 1);
    apv_token_str (&t, got, sizeof got);
    apv_expect_str (strict ? &blk->exp : &s->snap[k], want, sizeof want);
    apv_note (r, r->ex_read, "read of block %" PRIu64 " (offset %" PRIu64
              ") found %s, expected %s%s", b,
              b * r->cfg.tag_size, got, want,
              strict ? "" : " (a write overlapped the read)");
    return;
  }
  if (strict) {
    /* What a read saw is settled: nothing may take it back. */
    if (t.kind == APV_GEN && t.gen != blk->exp.base)
      blk->acked_op = t.gen;
    blk->exp = (struct apv_expect) { .base = t.gen };
  }
}

/* A completion, on the worker (or on main once the workers are gone). */
static void
apv_complete (struct apv_worker *w, struct apv_slot *s)
{
  struct apv_run *r = w->run;
  int err = s->err;

  if (err) {
    apv_count_errno (r, r->err_no, r->err_count, -err);
    if (err == -EOPNOTSUPP && s->io.op == AP_OP_TRIM)
      atomic_store (&r->no_trim, true);
    if (err == -EOPNOTSUPP && s->io.op == AP_OP_WRITE_ZEROES)
      atomic_store (&r->no_zero, true);
  }
  switch (s->io.op) {
  case AP_OP_READ:
    if (!err)
      for (unsigned k = 0; k < s->nblk; k++)
        apv_check_read_block (w, s, k);
    break;
  case AP_OP_WRITE:
    for (unsigned k = 0; k < s->nblk; k++) {
      struct apv_block *b = &r->blocks[s->blk0 + k];
      uint64_t g = s->gens[k];
      b->busy = false;
      if (!err) {
        b->exp = (struct apv_expect) { .base = g };
        b->acked_op = g;
      }
      else {
        if (!b->exp.fail_lo)
          b->exp.fail_lo = g;
        b->exp.fail_hi = g;
      }
    }
    break;
  case AP_OP_WRITE_ZEROES:
    for (unsigned k = 0; k < s->nblk; k++) {
      struct apv_block *b = &r->blocks[s->blk0 + k];
      b->busy = false;
      if (!err) {
        b->exp = (struct apv_expect) { .base = 0 };
        b->acked_op = s->gens[k];
      }
      else
        b->exp.zero_ok = true;
    }
    break;
  case AP_OP_TRIM:
    /* Acknowledged or not, a trimmed block holds zeroes or what it held. */
    for (unsigned k = 0; k < s->nblk; k++) {
      struct apv_block *b = &r->blocks[s->blk0 + k];
      b->busy = false;
      b->exp.zero_ok = true;
    }
    break;
  case AP_OP_FLUSH:
    break;
  }
  atomic_store (&s->state, SLOT_IDLE);
  s->next = w->free;
  w->free = s;
  w->inflight--;
}

/* Issue one request from a free slot.  1: sent; 0: nothing eligible now;
 * -1: the unit refused it (back off). */
static int
apv_issue (struct apv_worker *w)
{
  struct apv_run *r = w->run;
  const struct apv_config *c = &r->cfg;
  struct apv_slot *s = w->free;
  uint32_t ts = c->tag_size;
  enum ap_op op;
  uint32_t flags = 0;

  unsigned pick = (unsigned) (apv_rand (&w->rng) % 100);
  bool trim_ok = c->can_trim && !atomic_load (&r->no_trim);
  bool zero_ok = c->can_zero && !atomic_load (&r->no_zero);
  if (pick < c->pct_flush)
    op = AP_OP_FLUSH;
  else if ((pick -= c->pct_flush) < c->pct_trim)
    op = trim_ok ? AP_OP_TRIM : AP_OP_WRITE;
  else if ((pick -= c->pct_trim) < c->pct_zero)
    op = zero_ok ? AP_OP_WRITE_ZEROES : AP_OP_WRITE;
  else if ((pick -= c->pct_zero) < c->pct_read)
    op = AP_OP_READ;
  else
    op = AP_OP_WRITE;
  if (op == AP_OP_WRITE && apv_rand (&w->rng) % 100 < c->pct_fua)
    flags |= AP_IO_FUA;

  uint64_t blk0 = 0;
  unsigned n = 0;
  if (op != AP_OP_FLUSH) {
    int tries;
    for (tries = 0; tries < 4; tries++) {
      uint64_t chunk = w->id + (apv_rand (&w->rng) % w->nchunks) * c->threads;
      uint64_t first = chunk * c->chunk_blocks;
      uint64_t end = first + c->chunk_blocks;
      if (end > c->nblocks)
        end = c->nblocks;
      blk0 = apv_range (&w->rng, first, end - 1);
      n = (unsigned) apv_range (&w->rng, 1, c->max_io_blocks);
      if (blk0 + n > end)
        n = (unsigned) (end - blk0);
      bool any_busy = false;
      for (unsigned k = 0; k < n; k++)
        any_busy |= r->blocks[blk0 + k].busy;
      if (!any_busy)
        break;
      /* Reads may overlap a write now and then (checked loosely);
       * mutations never overlap each other. */
      if (op == AP_OP_READ && apv_rand (&w->rng) % 100 < c->pct_overlap)
        break;
    }
    if (tries == 4)
      return 0;
  }

  memset (&s->io, 0, sizeof s->io);
  s->io.op = op;
  s->io.flags = flags;
  s->io.done = apv_done;
  s->io.opaque = s;
  s->blk0 = blk0;
  s->nblk = n;
  s->err = 0;
  if (op != AP_OP_FLUSH) {
    s->io.offset = blk0 * ts;
    s->io.length = (uint64_t) n * ts;
  }
  if (op == AP_OP_READ || op == AP_OP_WRITE)
    s->io.buf = s->buf;

  for (unsigned k = 0; k < n; k++) {
    struct apv_block *b = &r->blocks[blk0 + k];
    if (op == AP_OP_READ) {
      s->strict[k] = !b->busy;
      s->epoch[k] = b->epoch;
      s->snap[k] = b->exp;
      s->snap_gen[k] = b->gen;
    }
    else {
      s->gens[k] = ++b->gen;
      b->busy = true;
      b->epoch++;
      if (op == AP_OP_WRITE)
        apv_fill (r->run_id, ts, blk0 + k, s->gens[k], w->id,
                  s->buf + (size_t) k * ts);
      else
        b->last_zero = s->gens[k];
    }
  }
  if (op == AP_OP_READ)
    memset (s->buf, 0xA5, (size_t) n * ts); /* no leftovers pass a check */

  w->free = s->next;
  w->inflight++;
  s->submit_ns = ap_now_ns ();
  atomic_store (&s->state, SLOT_INFLIGHT);
  if (ap_unit_submit (r->unit, &s->io) == 0) {
    s->submissions++;
    atomic_fetch_add_explicit (&r->st.submitted[op], 1,
                               memory_order_relaxed);
    if (flags & AP_IO_FUA)
      atomic_fetch_add_explicit (&r->st.fua, 1, memory_order_relaxed);
    return 1;
  }

  /* Refused at once: done must not be called, the request never existed. */
  int e = ap_get_errno ();
  atomic_fetch_add (&r->st.refused, 1);
  apv_count_errno (r, r->ref_no, r->ref_count, e ? e : EIO);
  uint32_t prev = SLOT_INFLIGHT;
  if (!atomic_compare_exchange_strong (&s->state, &prev, SLOT_IDLE)) {
    /* done ran although the submission was refused: it is on the done
     * list and will be retired from there. */
    atomic_fetch_add (&r->st.done_on_refused, 1);
    apv_note (r, r->ex_dup, "%s at %" PRIu64 " was refused (%s) and its "
              "done callback was called anyway", apv_opname (op),
              s->io.offset, apv_errname (e));
    return -1;
  }
  for (unsigned k = 0; k < n; k++)
    if (op != AP_OP_READ)
      r->blocks[blk0 + k].busy = false;
  s->next = w->free;
  w->free = s;
  w->inflight--;
  return -1;
}

static struct apv_slot *
apv_take_done (struct apv_worker *w)
{
  pthread_mutex_lock (&w->lock);
  struct apv_slot *l = w->done_head;
  w->done_head = w->done_tail = NULL;
  pthread_mutex_unlock (&w->lock);
  return l;
}

static void *
apv_worker_main (void *arg)
{
  struct apv_worker *w = arg;
  struct apv_run *r = w->run;

  for (;;) {
    bool backoff = false;
    for (struct apv_slot *s = apv_take_done (w), *next; s; s = next) {
      next = s->next;
      apv_complete (w, s);
    }
    if (atomic_load (&r->stopping)) {
      if (w->inflight == 0 || ap_now_ns () >= r->drain_deadline_ns)
        break;
    }
    else {
      /* Never call the unit with our lock held: done may run inside
       * ap_unit_submit, on this thread. */
      while (w->free) {
        int k = apv_issue (w);
        if (k < 0)
          backoff = true;
        if (k <= 0)
          break;
      }
    }
    pthread_mutex_lock (&w->lock);
    if (!w->done_head)
      apv_cond_wait_ms (&w->cond, &w->lock, backoff ? 5 : 50);
    pthread_mutex_unlock (&w->lock);
  }
  return NULL;
}

static int
apv_run_start (struct apv_run *r, struct ap_unit *unit)
{
  r->unit = unit;
  r->gap_start_ns = ap_now_ns ();
  atomic_store (&r->st.last_done_ns, r->gap_start_ns);
  for (unsigned i = 0; i < r->cfg.threads; i++) {
    struct apv_worker *w = &r->workers[i];
    int e = pthread_create (&w->th, NULL, apv_worker_main, w);
    if (e) {
      fprintf (stderr, "ap-verify: pthread_create: %s\n", strerror (e));
      return -1;
    }
    w->started = true;
  }
  return 0;
}

/* Stop issuing, wait up to timeout_ms for what is in flight, join the
 * workers.  Returns how many requests are still in flight. */
static uint64_t
apv_run_stop (struct apv_run *r, uint64_t timeout_ms)
{
  r->drain_deadline_ns = ap_now_ns () + AP_MS (timeout_ms);
  atomic_store (&r->stopping, true);
  for (unsigned i = 0; i < r->cfg.threads; i++) {
    struct apv_worker *w = &r->workers[i];
    pthread_mutex_lock (&w->lock);
    pthread_cond_signal (&w->cond);
    pthread_mutex_unlock (&w->lock);
  }
  uint64_t left = 0;
  for (unsigned i = 0; i < r->cfg.threads; i++) {
    struct apv_worker *w = &r->workers[i];
    if (w->started)
      pthread_join (w->th, NULL);
    w->started = false;
    left += w->inflight;
  }
  return left;
}

/* Retire completions that came after the workers left (main thread). */
static void
apv_run_collect (struct apv_run *r)
{
  for (unsigned i = 0; i < r->cfg.threads; i++) {
    struct apv_worker *w = &r->workers[i];
    for (struct apv_slot *s = apv_take_done (w), *next; s; s = next) {
      next = s->next;
      apv_complete (w, s);
    }
  }
}

/* Requests in flight (workers stopped); notes the first as an example. */
static uint64_t
apv_run_inflight (struct apv_run *r, bool note)
{
  uint64_t n = 0;
  uint64_t now = ap_now_ns ();
  for (size_t i = 0; i < r->nslots; i++) {
    struct apv_slot *s = &r->slots[i];
    if (atomic_load (&s->state) == SLOT_INFLIGHT) {
      if (note && n == 0)
        apv_note (r, r->ex_never, "%s of %" PRIu64 " bytes at %" PRIu64
                  " submitted %.1f s ago never completed",
                  apv_opname (s->io.op), s->io.length, s->io.offset,
                  (double) (now - s->submit_ns) / 1e9);
      n++;
    }
  }
  return n;
}

/* ----------------------------------------------------------- final check */

/* Reads len bytes at off of the unit's content into buf (aligned). */
typedef int apv_read_fn (void *opaque, void *buf, uint64_t len, uint64_t off);

static int
apv_read_unit (void *opaque, void *buf, uint64_t len, uint64_t off)
{
  return ap_unit_pread (opaque, buf, len, off);
}

static int
apv_read_fd (void *opaque, void *buf, uint64_t len, uint64_t off)
{
  int fd = *(int *) opaque;
  uint64_t done = 0;
  while (done < len) {
    ssize_t k = pread (fd, (char *) buf + done, len - done,
                       (off_t) (off + done));
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0) {
      if (k == 0)
        errno = EIO;
      return -1;
    }
    done += (uint64_t) k;
  }
  return 0;
}

/* Compare every block with the model (workers stopped).  -1 if the
 * content could not be read. */
static int
apv_check_all (struct apv_run *r, apv_read_fn *rd, void *opaque)
{
  const uint32_t ts = r->cfg.tag_size;
  const uint64_t per = (1024 * 1024) / ts ? (1024 * 1024) / ts : 1;
  unsigned char *buf;
  char got[96], want[160];

  if (posix_memalign ((void **) &buf, 4096, per * ts) != 0)
    return -1;
  for (uint64_t b0 = 0; b0 < r->cfg.nblocks; b0 += per) {
    uint64_t n = r->cfg.nblocks - b0 < per ? r->cfg.nblocks - b0 : per;
    if (rd (opaque, buf, n * ts, b0 * ts) == -1) {
      fprintf (stderr, "ap-verify: final check: reading %" PRIu64
               " bytes at %" PRIu64 ": %s\n", n * ts, b0 * ts,
               strerror (errno));
      free (buf);
      return -1;
    }
    for (uint64_t k = 0; k < n; k++) {
      uint64_t b = b0 + k;
      struct apv_block *blk = &r->blocks[b];
      struct apv_token t;
      apv_decode (r->run_id, ts, b, buf + k * ts, true, &t);
      r->st.blocks_verified++;
      if (apv_expect_ok (&blk->exp, &t)) {
        if (t.kind == APV_GEN && t.gen != blk->exp.base)
          r->st.uncertain_blocks++;
        continue;
      }
      apv_token_str (&t, got, sizeof got);
      apv_expect_str (&blk->exp, want, sizeof want);
      if (t.kind == APV_BAD || (t.kind == APV_GEN && t.gen > blk->gen)) {
        r->st.corrupt_blocks++;
        apv_note (r, r->ex_corrupt, "block %" PRIu64 " (offset %" PRIu64
                  ") holds %s%s, expected %s", b, b * ts, got,
                  t.kind == APV_GEN ? ", never written" : "", want);
        continue;
      }
      /* Older content than the model allows.  If the acknowledged write
       * did reach the disk (the landing witness saw it), something older
       * came after it: a stale write.  If it never arrived, it was lost.
       * Without a landing witness, call it stale. */
      uint64_t landed = atomic_load (&blk->landed);
      if (landed == UINT64_MAX || landed >= blk->acked_op) {
        r->st.stale_blocks++;
        apv_note (r, r->ex_stale, "block %" PRIu64 " (offset %" PRIu64
                  ") holds %s, expected %s; generation %" PRIu64
                  " had reached the disk", b, b * ts, got, want,
                  landed == UINT64_MAX ? blk->acked_op : landed);
      }
      else {
        r->st.lost_writes++;
        apv_note (r, r->ex_lost, "block %" PRIu64 " (offset %" PRIu64
                  ") holds %s, expected %s: the acknowledged generation "
                  "%" PRIu64 " never reached the disk (last landed: %"
                  PRIu64 ")", b, b * ts, got, want, blk->acked_op, landed);
      }
    }
  }
  free (buf);
  return 0;
}

/* --------------------------------------------------------------- faulter */

/* Faults on one path (error ... fence) come first: they need wrappers. */
enum apv_action {
  ACT_ERROR, ACT_HANG, ACT_DELAY, ACT_DROP, ACT_BOTH, ACT_FENCE,
  ACT_OFFLINE, ACT_SWITCH, ACT_UNPIN, ACT_DISABLE, ACT_COUNT
};
static const char *const apv_action_name[ACT_COUNT] = {
  "error", "hang", "delay", "drop", "both", "fence", "offline",
  "switch", "unpin", "disable",
};
/* How often each is drawn.  "offline" (every path down for longer than
 * the verification timeout, so callers get errors) only on request. */
static const unsigned apv_action_weight[ACT_COUNT] = {
  3, 3, 2, 2, 1, 1, 0, 4, 1, 2,
};

struct apv_faulter {
  struct ap_unit *unit;
  unsigned n;                   /* fault wrappers (may be 0) */
  struct ap_path *fault[AP_MAX_PATHS];
  char names[AP_MAX_PATHS][AP_NAME_MAX];   /* all the unit's paths */
  unsigned npaths;
  uint32_t request_timeout_ms, verify_timeout_ms;
  unsigned weight[ACT_COUNT];
  uint64_t rng;
  bool verbose;

  pthread_t th;
  bool started;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool stop;                    /* guarded by lock */

  uint64_t count[ACT_COUNT];    /* carried out */
  uint64_t refused[ACT_COUNT];  /* the unit said no */
  char ex_refused[APV_NOTE];
};

/* Sleep ms unless told to stop; false if stopping. */
static bool
apv_fsleep (struct apv_faulter *f, uint64_t ms)
{
  uint64_t until = ap_now_ns () + AP_MS (ms);
  struct timespec ts = ap_ns_to_timespec (until);
  pthread_mutex_lock (&f->lock);
  while (!f->stop && ap_now_ns () < until)
    pthread_cond_timedwait (&f->cond, &f->lock, &ts);
  bool go = !f->stop;
  pthread_mutex_unlock (&f->lock);
  return go;
}

/* Which wrapper is active, or -1 (none, or not one of ours). */
static int
apv_active_fault (struct apv_faulter *f, struct ap_unit_status *st)
{
  if (ap_unit_get_status (f->unit, st) == -1)
    return -1;
  for (unsigned i = 0; i < st->npaths; i++)
    if (st->paths[i].active)
      for (unsigned j = 0; j < f->n; j++)
        if (strcmp (st->paths[i].name, ap_path_name (f->fault[j])) == 0)
          return (int) j;
  return -1;
}

static void
apv_fault_set (struct apv_faulter *f, unsigned i, enum ap_fault_mode m,
               int err, uint64_t delay_us)
{
  if (ap_fault_set (f->fault[i], m, err, delay_us) == -1)
    fprintf (stderr, "ap-verify: ap_fault_set on %s: %s\n",
             ap_path_name (f->fault[i]), ap_get_error ());
}

static void
apv_refused (struct apv_faulter *f, enum apv_action a, const char *what)
{
  f->refused[a]++;
  if (!f->ex_refused[0])
    snprintf (f->ex_refused, sizeof f->ex_refused, "%s: %s (%s)", what,
              ap_get_error (), apv_errname (ap_get_errno ()));
  if (f->verbose)
    fprintf (stderr, "ap-verify: %s refused: %s\n", what, ap_get_error ());
}

static void
apv_do_action (struct apv_faulter *f, enum apv_action a)
{
  struct ap_unit_status *st = malloc (sizeof *st);
  if (!st)
    return;
  int act = apv_active_fault (f, st);
  /* Mostly the active path; now and then a standby one. */
  unsigned tgt = act >= 0 && apv_rand (&f->rng) % 5 != 0
    ? (unsigned) act : (unsigned) (apv_rand (&f->rng) % (f->n ? f->n : 1));
  static const int path_errs[] = { -EIO, -ETIMEDOUT, -ENOLINK };
  const uint64_t rt = f->request_timeout_ms;

  bool on_path = a <= ACT_FENCE && a != ACT_BOTH && f->n;
  uint64_t t0 = ap_now_ns ();
  if (f->verbose)
    fprintf (stderr, "ap-verify: fault: %s%s%s\n", apv_action_name[a],
             on_path ? " on " : "",
             on_path ? ap_path_name (f->fault[tgt]) : "");
  switch (a) {
  case ACT_ERROR:
    apv_fault_set (f, tgt, AP_FAULT_ERROR,
                   path_errs[apv_rand (&f->rng) % 3], 0);
    apv_fsleep (f, apv_range (&f->rng, 10, 150));
    apv_fault_set (f, tgt, AP_FAULT_NONE, 0, 0);
    break;
  case ACT_HANG:
    /* Often longer than the request timeout: the unit must time the
     * requests out, fence, and carry on elsewhere.  Restoring releases
     * what was held: late, and harmless only if the unit fenced. */
    apv_fault_set (f, tgt, AP_FAULT_HANG, 0, 0);
    apv_fsleep (f, apv_range (&f->rng, rt / 4, rt * 2));
    apv_fault_set (f, tgt, AP_FAULT_NONE, 0, 0);
    break;
  case ACT_DELAY:
    apv_fault_set (f, tgt, AP_FAULT_DELAY, 0,
                   1000 * apv_range (&f->rng, 1, rt * 3 / 2));
    apv_fsleep (f, apv_range (&f->rng, 50, 400));
    apv_fault_set (f, tgt, AP_FAULT_NONE, 0, 0);
    break;
  case ACT_DROP:
    apv_fault_set (f, tgt, AP_FAULT_DROP, 0, 0);
    apv_fsleep (f, apv_range (&f->rng, rt / 4, rt * 2));
    apv_fault_set (f, tgt, AP_FAULT_NONE, 0, 0);
    break;
  case ACT_BOTH:
    /* Every path down, for less than the verification timeout: the unit
     * holds the I/O and must carry on once a path is back. */
    for (unsigned i = 0; i < f->n; i++)
      apv_fault_set (f, i, AP_FAULT_ERROR, -EIO, 0);
    apv_fsleep (f, apv_range (&f->rng, 20, f->verify_timeout_ms / 5));
    for (unsigned i = 0; i < f->n; i++)
      apv_fault_set (f, i, AP_FAULT_NONE, 0, 0);
    break;
  case ACT_OFFLINE: {
    /* Every path down past the verification timeout: the unit goes
     * offline, fails what it holds and refuses new I/O until a path is
     * back.  Hung or erroring, at random. */
    enum ap_fault_mode m = apv_rand (&f->rng) % 2 ? AP_FAULT_HANG
      : AP_FAULT_ERROR;
    for (unsigned i = 0; i < f->n; i++)
      apv_fault_set (f, i, m, -EIO, 0);
    apv_fsleep (f, f->verify_timeout_ms + rt
                + apv_range (&f->rng, 100, 500));
    for (unsigned i = 0; i < f->n; i++)
      apv_fault_set (f, i, AP_FAULT_NONE, 0, 0);
    break;
  }
  case ACT_FENCE: {
    uint64_t d = apv_rand (&f->rng) % 2 ? 0 : 1000 * apv_range (&f->rng, 1,
                                                                 rt / 2);
    if (ap_fault_set_fence_delay (f->fault[tgt], d) == -1)
      apv_refused (f, a, "ap_fault_set_fence_delay");
    break;
  }
  case ACT_SWITCH: {
    /* To a healthy path other than the active one, if there is one. */
    unsigned cand[AP_MAX_PATHS], nc = 0;
    for (unsigned i = 0; i < st->npaths; i++)
      if (!st->paths[i].active && st->paths[i].state == AP_PATH_STANDBY)
        cand[nc++] = i;
    if (nc == 0)
      for (unsigned i = 0; i < st->npaths; i++)
        if (!st->paths[i].active)
          cand[nc++] = i;
    if (nc == 0)
      break;
    const char *to = st->paths[cand[apv_rand (&f->rng) % nc]].name;
    if (f->verbose)
      fprintf (stderr, "ap-verify: switch to %s\n", to);
    if (ap_unit_switch (f->unit, to) == -1)
      apv_refused (f, a, "ap_unit_switch");
    break;
  }
  case ACT_UNPIN:
    if (ap_unit_unpin (f->unit) == -1)
      apv_refused (f, a, "ap_unit_unpin");
    break;
  case ACT_DISABLE: {
    const char *p = f->names[apv_rand (&f->rng) % f->npaths];
    if (ap_unit_disable_path (f->unit, p) == -1) {
      /* EBUSY: the last usable path; that is the unit being right. */
      apv_refused (f, a, "ap_unit_disable_path");
      break;
    }
    apv_fsleep (f, apv_range (&f->rng, 20, 300));
    if (ap_unit_enable_path (f->unit, p) == -1)
      apv_refused (f, a, "ap_unit_enable_path");
    break;
  }
  case ACT_COUNT:
    break;
  }
  f->count[a]++;
  if (f->verbose)
    fprintf (stderr, "ap-verify: fault: %s done in %.1f ms\n",
             apv_action_name[a], (double) (ap_now_ns () - t0) / 1e6);
  free (st);
}

static void *
apv_faulter_main (void *arg)
{
  struct apv_faulter *f = arg;
  unsigned total = 0;
  for (unsigned a = 0; a < ACT_COUNT; a++)
    total += f->weight[a];
  while (total && apv_fsleep (f, apv_range (&f->rng, 0, 30))) {
    unsigned pick = (unsigned) (apv_rand (&f->rng) % total);
    unsigned a = 0;
    while (pick >= f->weight[a])
      pick -= f->weight[a++];
    apv_do_action (f, (enum apv_action) a);
  }
  return NULL;
}

/* The unit's paths are read from its status; faults go to wrappers[]. */
static int
apv_faulter_start (struct apv_faulter *f)
{
  struct ap_unit_status *st = malloc (sizeof *st);
  if (!st || ap_unit_get_status (f->unit, st) == -1) {
    fprintf (stderr, "ap-verify: %s\n", st ? ap_get_error () : "no memory");
    free (st);
    return -1;
  }
  f->npaths = st->npaths;
  for (unsigned i = 0; i < st->npaths; i++)
    snprintf (f->names[i], AP_NAME_MAX, "%s", st->paths[i].name);
  free (st);
  if (f->n == 0)
    for (unsigned a = 0; a <= ACT_OFFLINE; a++)
      f->weight[a] = 0;
  pthread_mutex_init (&f->lock, NULL);
  apv_cond_init (&f->cond);
  if (pthread_create (&f->th, NULL, apv_faulter_main, f) != 0)
    return -1;
  f->started = true;
  return 0;
}

/* Stop the schedule and restore every path: no fault, no fence delay,
 * enabled. */
static void
apv_faulter_stop (struct apv_faulter *f)
{
  if (f->started) {
    pthread_mutex_lock (&f->lock);
    f->stop = true;
    pthread_cond_broadcast (&f->cond);
    pthread_mutex_unlock (&f->lock);
    pthread_join (f->th, NULL);
    f->started = false;
  }
  for (unsigned i = 0; i < f->n; i++) {
    apv_fault_set (f, i, AP_FAULT_NONE, 0, 0);
    ap_fault_set_fence_delay (f->fault[i], 0);
  }
  for (unsigned i = 0; i < f->npaths; i++)
    ap_unit_enable_path (f->unit, f->names[i]);
}

static uint64_t
apv_faults_total (const struct apv_faulter *f)
{
  uint64_t n = 0;
  for (unsigned a = 0; a < ACT_COUNT; a++)
    n += f->count[a];
  return n;
}

/* ---------------------------------------------------------------- events */

struct apv_events {
  bool verbose;
  _Atomic uint64_t unit_changes, path_changes, switches;
};

static void
apv_event (void *opaque, const struct ap_event *ev)
{
  struct apv_events *e = opaque;
  switch (ev->type) {
  case AP_EVENT_UNIT_STATE:
    atomic_fetch_add (&e->unit_changes, 1);
    if (e->verbose)
      fprintf (stderr, "ap-verify: event: unit %s %s -> %s (%s)\n", ev->unit,
               ap_unit_state_name (ev->old_state),
               ap_unit_state_name (ev->new_state),
               ev->reason ? ev->reason : "");
    break;
  case AP_EVENT_PATH_STATE:
    atomic_fetch_add (&e->path_changes, 1);
    if (e->verbose)
      fprintf (stderr, "ap-verify: event: path %s %s -> %s (%s)\n",
               ev->path, ap_path_state_name (ev->old_state),
               ap_path_state_name (ev->new_state),
               ev->reason ? ev->reason : "");
    break;
  case AP_EVENT_SWITCH:
    atomic_fetch_add (&e->switches, 1);
    if (e->verbose)
      fprintf (stderr, "ap-verify: event: switch %s -> %s (%s)\n",
               ev->from_path ? ev->from_path : "", ev->path,
               ev->reason ? ev->reason : "");
    break;
  default:
    break;
  }
}

/* ---------------------------------------------------------------- report */

/* Sum of violations; prints the summary. */
static uint64_t
apv_report (struct apv_run *r, const struct apv_faulter *f,
            const struct ap_unit_status *st, double secs)
{
  struct apv_stats *s = &r->st;
  uint64_t sub = 0;
  for (unsigned op = 0; op < APV_NOPS; op++)
    sub += atomic_load (&s->submitted[op]);

  printf ("requests: %" PRIu64 " submitted (reads %" PRIu64 ", writes %"
          PRIu64 " of which FUA %" PRIu64 ", flushes %" PRIu64 ", trims %"
          PRIu64 ", write-zeroes %" PRIu64 "), %" PRIu64 " completed, %"
          PRIu64 " refused at submission", sub,
          atomic_load (&s->submitted[AP_OP_READ]),
          atomic_load (&s->submitted[AP_OP_WRITE]), atomic_load (&s->fua),
          atomic_load (&s->submitted[AP_OP_FLUSH]),
          atomic_load (&s->submitted[AP_OP_TRIM]),
          atomic_load (&s->submitted[AP_OP_WRITE_ZEROES]),
          atomic_load (&s->completed), atomic_load (&s->refused));
  for (unsigned i = 0; i < APV_MAX_ERRNOS && r->ref_count[i]; i++)
    printf ("%s %s x%" PRIu64, i ? "," : " [", apv_errname (r->ref_no[i]),
            r->ref_count[i]);
  printf ("%s\n", r->ref_count[0] ? "]" : "");
  printf ("throughput: %.0f requests/s over %.1f s\n",
          secs > 0 ? (double) atomic_load (&s->completed) / secs : 0, secs);

  uint64_t errs = r->err_other;
  for (unsigned i = 0; i < APV_MAX_ERRNOS; i++)
    errs += r->err_count[i];
  printf ("errors returned to callers: %" PRIu64, errs);
  for (unsigned i = 0; i < APV_MAX_ERRNOS && r->err_count[i]; i++)
    printf ("%s %s x%" PRIu64, i ? "," : " [", apv_errname (r->err_no[i]),
            r->err_count[i]);
  printf ("%s\n", r->err_count[0] ? "]" : "");

  if (st)
    printf ("switches: %" PRIu64 " (auto %" PRIu64 ", manual %" PRIu64
            "); longest verify %.1f ms; unit state at the end: %s\n",
            st->switches_auto + st->switches_manual, st->switches_auto,
            st->switches_manual, (double) st->longest_verify_us / 1000.0,
            ap_unit_state_name (st->state));
  if (f) {
    printf ("faults injected: %" PRIu64 " (", apv_faults_total (f));
    for (unsigned a = 0; a < ACT_COUNT; a++)
      printf ("%s%s %" PRIu64, a ? ", " : "", apv_action_name[a],
              f->count[a]);
    printf (")\n");
    uint64_t nref = 0;
    for (unsigned a = 0; a < ACT_COUNT; a++)
      nref += f->refused[a];
    if (nref)
      printf ("operator actions the unit refused: %" PRIu64
              " (first: %s)\n", nref, f->ex_refused);
  }
  for (unsigned i = 0; i < r->ntps; i++) {
    const struct apv_tp *tp = &r->tps[i];
    printf ("path %s (%s level): %" PRIu64 " user requests (flushes %"
            PRIu64 ", FUA writes %" PRIu64 ", errors %" PRIu64 "), %"
            PRIu64 " probes\n", tp->name, apv_level_name[tp->level],
            atomic_load (&tp->submits), atomic_load (&tp->flushes),
            atomic_load (&tp->fua_writes), atomic_load (&tp->errors),
            atomic_load (&tp->probes));
  }
  printf ("longest gap between completions: %.1f ms (at %.2f s); longest "
          "request: %.1f ms\n",
          (double) atomic_load (&s->max_gap_ns) / 1e6,
          atomic_load (&s->max_gap_ns)
          ? (double) (atomic_load (&s->gap_from_ns) - r->gap_start_ns) / 1e9
          : 0, (double) atomic_load (&s->max_lat_ns) / 1e6);
  printf ("blocks verified: %" PRIu64 " of %" PRIu64 " (%" PRIu64
          " hold a write that failed but landed; %" PRIu64 " reads checked "
          "loosely because a write overlapped)\n",
          s->blocks_verified, r->cfg.nblocks, s->uncertain_blocks,
          atomic_load (&s->read_overlapped));

  struct { const char *what; uint64_t n; const char *ex; } v[] = {
    { "two-path overlaps, unit level (invariant 1)",
      atomic_load (&s->overlaps[APV_LEVEL_UNIT]), r->ex_overlap },
    { "two-path overlaps, disk level (invariant 1)",
      atomic_load (&s->overlaps[APV_LEVEL_DISK]), r->ex_overlap },
    { "duplicate completions (invariant 2)",
      atomic_load (&s->dup_completions) + atomic_load (&s->done_on_refused),
      r->ex_dup },
    { "never-completed requests (invariant 2)", s->never_completed,
      r->ex_never },
    { "path completions without a submission", 
      atomic_load (&s->trace_anomalies), r->ex_trace },
    { "stale writes landed (invariant 3, live)",
      atomic_load (&s->stale_landings), r->ex_landing },
    { "stale blocks (invariant 3)", s->stale_blocks, r->ex_stale },
    { "lost writes (invariant 4)", s->lost_writes, r->ex_lost },
    { "corrupt blocks", s->corrupt_blocks, r->ex_corrupt },
    { "read mismatches", atomic_load (&s->read_mismatches), r->ex_read },
  };
  uint64_t total = 0;
  printf ("violations:\n");
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    printf ("  %-44s %" PRIu64 "\n", v[i].what, v[i].n);
    if (v[i].n && v[i].ex[0])
      printf ("    first: %s\n", v[i].ex);
    total += v[i].n;
  }
  return total;
}

/* ------------------------------------------------------------------ main */

struct apv_opts {
  const char *image;
  bool keep;
  uint64_t size_mib;
  unsigned threads, depth, npaths;
  double seconds;
  bool seconds_set;
  uint64_t switches;
  uint64_t seed;
  bool seed_set;
  const char *schedule;
  uint32_t request_timeout_ms, verify_timeout_ms, checker_ms, failback_ms;
  bool no_trim, no_zero;
  unsigned max_io_blocks;
  bool verbose;
  bool selftest_stale;
  bool check_via_unit;
  const char *uri;              /* verify through an NBD export instead */
};

static void
usage (FILE *f)
{
  fprintf (f,
"usage: ap-verify [OPTION]...\n"
"Drive tagged I/O through one altpath unit while injecting faults under it,\n"
"and check the invariants: one active path (a trace witness on every path),\n"
"exactly-once completion, no stale write, nothing acknowledged lost.\n"
"\n"
"Setup: an image file opened as N direct paths (A, B[, C]), each under a\n"
"fault wrapper of the same name, in one unit.\n"
"  --image FILE        the image; it is created, or truncated and reused\n"
"                      (default: a temporary file in /tmp, removed after)\n"
"  --keep              keep the temporary image\n"
"  --size MIB          image size in MiB (default 64)\n"
"  --paths N           2 or 3 paths (default 2)\n"
"Load:\n"
"  --threads N         worker threads (default 4)\n"
"  --depth N           requests in flight per thread (default 8)\n"
"  --max-blocks N      longest request in 4 KiB tag blocks, 1-8 (default 4)\n"
"  --no-trim           issue no trims\n"
"  --no-zero           issue no write-zeroes\n"
"Run length (whichever comes first):\n"
"  --seconds S         run time (default 10; with --switches alone: none)\n"
"  --switches N        stop after N switches (auto + manual)\n"
"Faults:\n"
"  --seed N            seed of the schedule and of the load (default:\n"
"                      random; always printed)\n"
"  --schedule LIST     comma-separated actions to draw from (default: all\n"
"                      but offline): error hang delay drop (on one path),\n"
"                      both (every path, shorter than the verification\n"
"                      timeout), fence (slow fencing), offline (every path,\n"
"                      longer: callers get errors), switch unpin disable;\n"
"                      \"none\" for no faults\n"
"Unit timeouts (ms):\n"
"  --request-timeout MS (default 200)   --verify-timeout MS (default 5000)\n"
"  --checker MS         (default 20)    --failback MS       (default 50)\n"
"Other:\n"
"  --check-via-unit    read the blocks back through the unit for the final\n"
"                      check (default: from the image with plain pread,\n"
"                      after closing the unit)\n"
"  --selftest-stale    after the run, plant a stale block in the image\n"
"                      behind the unit's back; the check must catch it\n"
"                      (exit 1)\n"
"  --uri URI           no image and no faults of our own: one served path\n"
"                      to this NBD export (e.g. a node's unit on its local\n"
"                      socket: nbd+unix:///%%244%%24DKB100?socket=S) while\n"
"                      faults are injected elsewhere; checks through it\n"
"  -v, --verbose       log faults and unit events\n"
"  -h, --help          this text\n"
"\n"
"Exit status: 0 no violation; 1 a violation; 2 setup or usage error.\n");
}

static int
parse_u64 (const char *opt, const char *s, uint64_t *out)
{
  char *end;
  errno = 0;
  unsigned long long v = strtoull (s, &end, 0);
  if (errno || end == s || *end || s[0] == '-') {
    fprintf (stderr, "ap-verify: bad --%s %s\n", opt, s);
    return -1;
  }
  *out = v;
  return 0;
}

static int
parse_schedule (const char *list, unsigned *weight)
{
  for (unsigned a = 0; a < ACT_COUNT; a++)
    weight[a] = list ? 0 : apv_action_weight[a];
  if (!list || strcmp (list, "none") == 0)
    return 0;
  char *copy = strdup (list), *save = NULL;
  if (!copy)
    return -1;
  for (char *t = strtok_r (copy, ",", &save); t;
       t = strtok_r (NULL, ",", &save)) {
    unsigned a;
    for (a = 0; a < ACT_COUNT; a++)
      if (strcmp (t, apv_action_name[a]) == 0)
        break;
    if (a == ACT_COUNT) {
      fprintf (stderr, "ap-verify: unknown action \"%s\" in --schedule "
               "(error hang delay drop both fence offline switch unpin "
               "disable none)\n", t);
      free (copy);
      return -1;
    }
    weight[a] = apv_action_weight[a] ? apv_action_weight[a] : 1;
  }
  free (copy);
  return 0;
}

static int
parse_args (int argc, char **argv, struct apv_opts *o)
{
  static const struct option longopts[] = {
    { "image", required_argument, NULL, 'i' },
    { "keep", no_argument, NULL, 'K' },
    { "size", required_argument, NULL, 'S' },
    { "paths", required_argument, NULL, 'P' },
    { "threads", required_argument, NULL, 't' },
    { "depth", required_argument, NULL, 'd' },
    { "max-blocks", required_argument, NULL, 'm' },
    { "no-trim", no_argument, NULL, 'T' },
    { "no-zero", no_argument, NULL, 'Z' },
    { "seconds", required_argument, NULL, 's' },
    { "switches", required_argument, NULL, 'w' },
    { "seed", required_argument, NULL, 'e' },
    { "schedule", required_argument, NULL, 'c' },
    { "request-timeout", required_argument, NULL, 'R' },
    { "verify-timeout", required_argument, NULL, 'V' },
    { "checker", required_argument, NULL, 'C' },
    { "failback", required_argument, NULL, 'F' },
    { "selftest-stale", no_argument, NULL, 'X' },
    { "check-via-unit", no_argument, NULL, 'U' },
    { "uri", required_argument, NULL, 'u' },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  int c;
  uint64_t v;

  while ((c = getopt_long (argc, argv, "vh", longopts, NULL)) != -1) {
    switch (c) {
    case 'i': o->image = optarg; break;
    case 'K': o->keep = true; break;
    case 'T': o->no_trim = true; break;
    case 'Z': o->no_zero = true; break;
    case 'c': o->schedule = optarg; break;
    case 'X': o->selftest_stale = true; break;
    case 'U': o->check_via_unit = true; break;
    case 'u': o->uri = optarg; break;
    case 'v': o->verbose = true; break;
    case 'h': usage (stdout); exit (0);
    case 's': {
      char *end;
      o->seconds = strtod (optarg, &end);
      if (end == optarg || *end || o->seconds < 0) {
        fprintf (stderr, "ap-verify: bad --seconds %s\n", optarg);
        return -1;
      }
      o->seconds_set = true;
      break;
    }
    case 'S': case 'P': case 't': case 'd': case 'm': case 'w': case 'e':
    case 'R': case 'V': case 'C': case 'F':
      {
        const char *name = "option";
        for (const struct option *lo = longopts; lo->name; lo++)
          if (lo->val == c)
            name = lo->name;
        if (parse_u64 (name, optarg, &v) == -1)
          return -1;
      }
      switch (c) {
      case 'S': o->size_mib = v; break;
      case 'P': o->npaths = (unsigned) v; break;
      case 't': o->threads = (unsigned) v; break;
      case 'd': o->depth = (unsigned) v; break;
      case 'm': o->max_io_blocks = (unsigned) v; break;
      case 'w': o->switches = v; break;
      case 'e': o->seed = v; o->seed_set = true; break;
      case 'R': o->request_timeout_ms = (uint32_t) v; break;
      case 'V': o->verify_timeout_ms = (uint32_t) v; break;
      case 'C': o->checker_ms = (uint32_t) v; break;
      case 'F': o->failback_ms = (uint32_t) v; break;
      }
      break;
    default:
      usage (stderr);
      return -1;
    }
  }
  if (optind != argc) {
    fprintf (stderr, "ap-verify: unexpected argument %s\n", argv[optind]);
    return -1;
  }
  if (o->npaths < 2 || o->npaths > 3) {
    fprintf (stderr, "ap-verify: --paths must be 2 or 3\n");
    return -1;
  }
  if (o->threads == 0 || o->threads > 256 || o->depth == 0
      || o->depth > 1024 || o->size_mib == 0 || o->max_io_blocks == 0
      || o->max_io_blocks > APV_MAX_IO_BLOCKS || o->request_timeout_ms == 0
      || o->verify_timeout_ms == 0 || o->checker_ms == 0) {
    fprintf (stderr, "ap-verify: --threads 1-256, --depth 1-1024, "
             "--size > 0, --max-blocks 1-%d, timeouts > 0\n",
             APV_MAX_IO_BLOCKS);
    return -1;
  }
  if (!o->seconds_set)
    o->seconds = o->switches ? 0 : 10;
  return 0;
}

/* Make the image: a regular file of size bytes, all zeroes (sparse).  A
 * non-regular file is refused: its old content would not be zeroes. */
static int
prepare_image (const char *file, bool create_tmp, char *out, size_t outsz,
               uint64_t size)
{
  int fd;
  if (create_tmp) {
    snprintf (out, outsz, "/dev/shm/ap-verify-XXXXXX.img");
    fd = mkstemps (out, 4);
  }
  else {
    snprintf (out, outsz, "%s", file);
    fd = open (out, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  }
  if (fd == -1) {
    fprintf (stderr, "ap-verify: creating the image %s: %s\n", out,
             strerror (errno));
    return -1;
  }
  struct stat sb;
  if (fstat (fd, &sb) == -1 || !S_ISREG (sb.st_mode)) {
    fprintf (stderr, "ap-verify: the image %s is not a regular file; "
             "give --image a file it may overwrite\n", out);
    close (fd);
    return -1;
  }
  if (ftruncate (fd, 0) == -1 || ftruncate (fd, (off_t) size) == -1) {
    fprintf (stderr, "ap-verify: sizing the image %s to %" PRIu64
             " bytes: %s\n", out, size, strerror (errno));
    close (fd);
    return -1;
  }
  close (fd);
  return 0;
}

static int
wait_online (struct ap_unit *unit, uint64_t ms)
{
  struct ap_unit_status *st = malloc (sizeof *st);
  uint64_t until = ap_now_ns () + AP_MS (ms);
  int rc = -1;
  while (st && ap_now_ns () < until) {
    if (ap_unit_get_status (unit, st) == 0 && st->state == AP_UNIT_ONLINE) {
      rc = 0;
      break;
    }
    usleep (5000);
  }
  free (st);
  return rc;
}

/* Write three generations of one block through the unit, then put the
 * first back behind its back, as a write released late by an unfenced
 * path would.  The final check must call it stale. */
static int
selftest_stale (struct apv_run *r, struct ap_unit *unit, const char *image)
{
  const uint32_t ts = r->cfg.tag_size;
  const uint64_t b = 0;         /* worker 0 owns chunk 0 */
  struct apv_block *blk = &r->blocks[b];
  unsigned char *buf;
  uint64_t first = 0;

  if (posix_memalign ((void **) &buf, 4096, ts) != 0)
    return -1;
  for (int i = 0; i < 3; i++) {
    uint64_t g = ++blk->gen;
    apv_fill (r->run_id, ts, b, g, 0xffffffffu, buf);
    if (ap_unit_pwrite (unit, buf, ts, b * ts, 0) == -1) {
      fprintf (stderr, "ap-verify: selftest: writing block %" PRIu64
               " through the unit: %s\n", b, ap_get_error ());
      free (buf);
      return -1;
    }
    blk->exp = (struct apv_expect) { .base = g };
    blk->acked_op = g;
    if (i == 0)
      first = g;
  }
  apv_fill (r->run_id, ts, b, first, 0xffffffffu, buf);
  int fd = open (image, O_WRONLY | O_CLOEXEC);
  if (fd == -1 || pwrite (fd, buf, ts, (off_t) (b * ts)) != (ssize_t) ts
      || fsync (fd) == -1) {
    fprintf (stderr, "ap-verify: selftest: writing the image %s: %s\n",
             image, strerror (errno));
    if (fd >= 0)
      close (fd);
    free (buf);
    return -1;
  }
  close (fd);
  printf ("selftest-stale: block %" PRIu64 " acknowledged at generation %"
          PRIu64 "; generation %" PRIu64 " planted in the image behind the "
          "unit's back — the check below must report it\n", b, blk->gen,
          first);
  free (buf);
  return 0;
}

int
main (int argc, char **argv)
{
  struct apv_opts o = {
    .size_mib = 64, .threads = 4, .depth = 8, .npaths = 2,
    .max_io_blocks = 4, .request_timeout_ms = 200, .verify_timeout_ms = 5000,
    .checker_ms = 20, .failback_ms = 50,
  };
  unsigned weight[ACT_COUNT];
  static const char *const names[] = { "A", "B", "C" };
  char image[PATH_MAX];
  int rc = 2;

  if (parse_args (argc, argv, &o) == -1)
    return 2;
  if (o.uri) {
    /* Someone else breaks the paths; we only drive and check. */
    o.schedule = "none";
    o.npaths = 1;
    o.check_via_unit = true;
    o.keep = true;
    image[0] = '\0';
  }
  if (parse_schedule (o.schedule, weight) == -1)
    return 2;
  if (!o.seed_set)
    o.seed = ap_now_ns () ^ ((uint64_t) getpid () << 20);
  setvbuf (stdout, NULL, _IOLBF, 0);
  printf ("ap-verify: seed %" PRIu64 " (rerun with --seed %" PRIu64 ")\n",
          o.seed, o.seed);

  uint64_t size = o.size_mib * 1024 * 1024;
  if (!o.uri
      && prepare_image (o.image, !o.image, image, sizeof image, size) == -1)
    return 2;

  /* N direct paths on one file, each under a fault wrapper; witnesses on
   * both levels, before anything carries I/O. */
  struct ap_path *inner[3] = { NULL }, *outer[3] = { NULL };
  struct ap_path_info info;
  for (unsigned i = 0; i < o.npaths; i++) {
    struct ap_direct_options dopt = { .name = names[i] };
    struct ap_served_options sopt = { .name = names[i], .uri = o.uri };
    inner[i] = o.uri ? ap_path_open_served (&sopt)
      : ap_path_open_direct (image, &dopt);
    if (!inner[i]) {
      fprintf (stderr, "ap-verify: opening path %s on %s: %s\n", names[i],
               o.uri ? o.uri : image, ap_get_error ());
      goto out_paths;
    }
  }
  ap_path_get_info (inner[0], &info);
  uint32_t bs = info.block_size ? info.block_size : 512;
  struct apv_config cfg = {
    .threads = o.threads, .depth = o.depth, .chunk_blocks = 16,
    .max_io_blocks = o.max_io_blocks,
    .tag_size = bs <= 4096 && 4096 % bs == 0 ? 4096 : bs,
    .seed = o.seed,
    .pct_read = 35, .pct_flush = 5, .pct_trim = 3, .pct_zero = 3,
    .pct_fua = 20, .pct_overlap = 10,
    .can_trim = !o.no_trim && (info.caps & AP_CAN_TRIM),
    .can_zero = !o.no_zero && (info.caps & AP_CAN_ZERO),
    .verbose = o.verbose,
  };
  cfg.nblocks = info.size / cfg.tag_size;
  struct apv_run *r = apv_run_new (&cfg);
  if (!r)
    goto out_paths;
  for (unsigned i = 0; i < o.npaths; i++) {
    if (o.uri) {
      outer[i] = inner[i];
      inner[i] = NULL;
      if (apv_watch_path (r, outer[i], APV_LEVEL_UNIT) == -1)
        goto out_paths;
      continue;
    }
    if (apv_watch_path (r, inner[i], APV_LEVEL_DISK) == -1)
      goto out_paths;
    outer[i] = ap_path_fault_wrap (inner[i], names[i]);
    inner[i] = NULL;              /* the wrapper owns it, also on failure */
    if (!outer[i]) {
      fprintf (stderr, "ap-verify: wrapping path %s: %s\n", names[i],
               ap_get_error ());
      goto out_paths;
    }
    if (apv_watch_path (r, outer[i], APV_LEVEL_UNIT) == -1)
      goto out_paths;
  }

  struct ap_unit_options uopt;
  ap_unit_options_init (&uopt);
  uopt.name = "ap-verify";
  uopt.request_timeout_ms = o.request_timeout_ms;
  uopt.checker_interval_ms = o.checker_ms;
  uopt.failback_ms = o.failback_ms;
  uopt.verify_timeout_ms = o.verify_timeout_ms;
  struct apv_events ev = { .verbose = o.verbose };
  uopt.events.fn = apv_event;   /* from creation on */
  uopt.events.opaque = &ev;
  struct ap_unit *unit = ap_unit_create (&uopt, outer, o.npaths);
  if (!unit) {
    fprintf (stderr, "ap-verify: creating the unit: %s\n", ap_get_error ());
    goto out_image;             /* it owns the paths, also on failure */
  }
  printf ("setup: image %s, %" PRIu64 " MiB, %u paths, block size %" PRIu32
          ", tag blocks of %" PRIu32 " bytes: %" PRIu64 ", %u threads x %u "
          "in flight, trims %s, write-zeroes %s\n", image, o.size_mib,
          o.npaths, bs, cfg.tag_size, cfg.nblocks, o.threads, o.depth,
          cfg.can_trim ? "on" : "off", cfg.can_zero ? "on" : "off");
  if (wait_online (unit, o.verify_timeout_ms + 2000) == -1) {
    fprintf (stderr, "ap-verify: the unit did not come online within %"
             PRIu32 " ms\n", o.verify_timeout_ms + 2000);
    ap_unit_close (unit);
    goto out_image;
  }

  struct apv_faulter f = {
    .unit = unit, .n = o.npaths,
    .request_timeout_ms = o.request_timeout_ms,
    .verify_timeout_ms = o.verify_timeout_ms,
    .rng = o.seed ^ UINT64_C (0xFA17FA17FA17FA17), .verbose = o.verbose,
  };
  memcpy (f.weight, weight, sizeof weight);
  for (unsigned i = 0; i < o.npaths; i++)
    f.fault[i] = outer[i];

  uint64_t t0 = ap_now_ns ();
  if (apv_run_start (r, unit) == -1 || apv_faulter_start (&f) == -1) {
    apv_faulter_stop (&f);
    apv_run_stop (r, o.verify_timeout_ms + 5000);
    ap_unit_close (unit);
    goto out_image;
  }

  /* Run until enough switches or time. */
  struct ap_unit_status *st = malloc (sizeof *st);
  bool have_st = false;
  int checked = 1;              /* final check: 1 not yet, 0 done, -1 failed */
  const char *why = "time";
  uint64_t next_progress = t0 + AP_MS (2000);
  while (st) {
    usleep (20000);
    uint64_t now = ap_now_ns ();
    if (ap_unit_get_status (unit, st) == -1)
      continue;
    uint64_t sw = st->switches_auto + st->switches_manual;
    if (o.switches && sw >= o.switches) {
      why = "--switches";
      break;
    }
    if (o.seconds > 0 && now - t0 >= (uint64_t) (o.seconds * 1e9)) {
      why = "--seconds";
      break;
    }
    if (o.verbose && now >= next_progress) {
      fprintf (stderr, "ap-verify: %.1f s: %" PRIu64 " switches, %" PRIu64
               " completions, unit %s\n", (double) (now - t0) / 1e9, sw,
               atomic_load (&r->st.completed), ap_unit_state_name (st->state));
      next_progress = now + AP_MS (2000);
    }
  }
  double secs = (double) (ap_now_ns () - t0) / 1e9;

  /* Restore every path (restoring a hang releases what it held: late),
   * then let everything in flight finish, within a bound. */
  apv_faulter_stop (&f);
  uint64_t left = apv_run_stop (r, o.verify_timeout_ms + 10000);
  if (ap_unit_flush (unit) == -1)
    fprintf (stderr, "ap-verify: the final flush failed: %s\n",
             ap_get_error ());
  if (o.selftest_stale && selftest_stale (r, unit, image) == -1) {
    checked = -1;
    goto out_close;
  }
  usleep (100000);              /* room for anything released late */
  r->st.never_completed = apv_run_inflight (r, true);
  (void) left;
  have_st = st && ap_unit_get_status (unit, st) == 0;
  if (o.check_via_unit)
    checked = apv_check_all (r, apv_read_unit, unit);

 out_close:
  if (ap_unit_close (unit) == -1)
    fprintf (stderr, "ap-verify: closing the unit: %s\n", ap_get_error ());
  apv_run_collect (r);          /* completions that came with the close */

  printf ("run: %.1f s, stopped by %s\n", secs, why);
  if (checked == 1) {
    int fd = open (image, O_RDONLY | O_CLOEXEC);
    checked = fd == -1 ? -1 : apv_check_all (r, apv_read_fd, &fd);
    if (fd >= 0)
      close (fd);
  }
  if (checked == -1) {
    fprintf (stderr, "ap-verify: the final check could not read %s\n",
             o.check_via_unit ? "through the unit" : image);
    rc = 2;
  }
  else {
    uint64_t viol = apv_report (r, &f, have_st ? st : NULL, secs);
    printf ("ap-verify: seed %" PRIu64 ": %s (%" PRIu64 " violation%s)\n",
            o.seed, viol ? "FAIL" : "PASS", viol, viol == 1 ? "" : "s");
    rc = viol ? 1 : 0;
  }
  free (st);
  /* A request the library never gave back may still point into a slot. */
  if (apv_run_inflight (r, false) == 0)
    apv_run_free (r);
  if (!o.image && !o.keep)
    unlink (image);
  return rc;

 out_paths:
  for (unsigned i = 0; i < 3; i++) {
    ap_path_close (outer[i]);
    ap_path_close (inner[i]);
  }
 out_image:
  if (!o.image && !o.keep)
    unlink (image);
  return rc;
}
