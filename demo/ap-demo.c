/* ap-demo.c — the main job until the daemon exists: one unit over two
 * paths to a disk image, with I/O running, while the preferred path fails
 * (an error, then a hang) and comes back.  It prints what the unit does —
 * the failure, the verification, the switch, the failback — and at the end
 * checks that every block holds what was last acknowledged.
 *
 *   writers ──► unit $4$DKB100 ──► path DKA100 (direct, preferred)
 *                              └─► path DKB100 (direct, standby)
 *                                        both reach one disk image
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "altpath.h"

#define BLOCK 4096
#define WRITERS 4
#define BLOCKS_PER_WRITER 256

static uint64_t t0;
static atomic_bool stop;
static atomic_uint_fast64_t completions, last_done_ns, longest_gap_ns;
static atomic_uint_fast64_t errors;

static uint64_t
now_ns (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static double
secs (uint64_t ns)
{
  return (double) (ns - t0) / 1e9;
}

static void
say (const char *fmt, ...)
{
  va_list ap;
  printf ("[%7.3f] ", secs (now_ns ()));
  va_start (ap, fmt);
  vprintf (fmt, ap);
  va_end (ap);
  putchar ('\n');
  fflush (stdout);
}

static void
on_event (void *opaque, const struct ap_event *e)
{
  switch (e->type) {
  case AP_EVENT_UNIT_STATE:
    say ("  unit %s: %s -> %s  (%s)", e->unit,
         ap_unit_state_name (e->old_state), ap_unit_state_name (e->new_state),
         e->reason);
    break;
  case AP_EVENT_PATH_STATE:
    say ("  path %s: %s -> %s  (%s)", e->path,
         ap_path_state_name (e->old_state), ap_path_state_name (e->new_state),
         e->reason);
    break;
  case AP_EVENT_SWITCH:
    say ("  SWITCH: I/O now goes to %s%s%s  (%s)", e->path,
         e->from_path[0] ? ", was " : "", e->from_path, e->reason);
    break;
  default:
    break;
  }
}

/* One completion: note the gap since the previous one (the stall an
 * application would feel). */
static void
note_completion (void)
{
  uint64_t now = now_ns ();
  uint64_t last = atomic_exchange (&last_done_ns, now);
  /* Another thread may have stored a later time between our clock read
   * and the exchange: only a forward gap counts. */
  uint64_t longest = atomic_load (&longest_gap_ns);
  while (last && now > last && now - last > longest
         && !atomic_compare_exchange_weak (&longest_gap_ns, &longest,
                                           now - last))
    ;
  atomic_fetch_add (&completions, 1);
}

struct writer {
  struct ap_unit *unit;
  int id;
  uint64_t gen[BLOCKS_PER_WRITER];   /* last acknowledged generation */
  pthread_t thread;
};

static void
fill (unsigned char *b, uint64_t block, uint64_t gen)
{
  memcpy (b, &block, 8);
  memcpy (b + 8, &gen, 8);
  for (unsigned i = 16; i < BLOCK; i++)
    b[i] = (unsigned char) (block * 31 + gen * 7 + i);
}

/* Each writer owns its blocks: write a new generation, read it back,
 * compare.  Any error or mismatch is counted; the unit should hide every
 * path failure from us. */
static void *
writer_main (void *arg)
{
  struct writer *w = arg;
  unsigned char *wb, *rb;
  if (posix_memalign ((void **) &wb, BLOCK, BLOCK)
      || posix_memalign ((void **) &rb, BLOCK, BLOCK))
    abort ();
  unsigned i = 0;
  while (!atomic_load (&stop)) {
    uint64_t block = (uint64_t) w->id * BLOCKS_PER_WRITER + i;
    uint64_t gen = w->gen[i] + 1;
    fill (wb, block, gen);
    if (ap_unit_pwrite (w->unit, wb, BLOCK, block * BLOCK,
                        gen % 8 == 0 ? AP_IO_FUA : 0) < 0) {
      atomic_fetch_add (&errors, 1);
      say ("writer %d: %s", w->id, ap_get_error ());
    }
    else
      w->gen[i] = gen;
    note_completion ();
    if (ap_unit_pread (w->unit, rb, BLOCK, block * BLOCK) < 0) {
      atomic_fetch_add (&errors, 1);
      say ("writer %d: %s", w->id, ap_get_error ());
    }
    else if (memcmp (rb, wb, BLOCK) != 0) {
      atomic_fetch_add (&errors, 1);
      say ("writer %d: block %" PRIu64 " read back wrong", w->id, block);
    }
    note_completion ();
    i = (i + 1) % BLOCKS_PER_WRITER;
  }
  free (wb);
  free (rb);
  return NULL;
}

static void
show (struct ap_unit *u)
{
  struct ap_unit_status st;
  ap_unit_get_status (u, &st);
  printf ("\n    %-10s %-8s %-8s %-7s %-6s %10s %10s %7s  %s\n", "PATH", "KIND",
          "STATE", "ACTIVE", "PREF", "READS", "WRITES", "ERRORS",
          "LAST ERROR");
  for (unsigned i = 0; i < st.npaths; i++) {
    const struct ap_path_status *p = &st.paths[i];
    printf ("    %-10s %-8s %-8s %-7s %-6s %10" PRIu64 " %10" PRIu64
            " %7" PRIu64 "  %s\n", p->name, ap_path_kind_name (p->kind),
            ap_path_state_name (p->state), p->active ? "*" : "",
            p->preferred ? "*" : "", p->counters.reads, p->counters.writes,
            p->counters.errors, p->last_error);
  }
  printf ("    unit %s: %s; switches %" PRIu64 " automatic, %" PRIu64
          " manual; p50 %" PRIu64 " us, p99 %" PRIu64 " us\n\n", st.name,
          ap_unit_state_name (st.state), st.switches_auto,
          st.switches_manual, st.p50_us, st.p99_us);
  fflush (stdout);
}

/* Wait (bounded) until the unit is online on the named path. */
static bool
wait_on_path (struct ap_unit *u, const char *name, int seconds)
{
  for (int i = 0; i < seconds * 100; i++) {
    struct ap_unit_status st;
    ap_unit_get_status (u, &st);
    for (unsigned k = 0; k < st.npaths; k++)
      if (st.state == AP_UNIT_ONLINE && st.paths[k].active
          && strcmp (st.paths[k].name, name) == 0)
        return true;
    usleep (10000);
  }
  return false;
}

int
main (int argc, char **argv)
{
  char dir[] = "/tmp/altpath-demo.XXXXXX";
  char image[64];
  int rc = 1;

  setvbuf (stdout, NULL, _IOLBF, 0);
  t0 = now_ns ();
  if (!mkdtemp (dir)) {
    perror ("mkdtemp");
    return 1;
  }
  snprintf (image, sizeof image, "%s/disk.img", dir);
  int fd = open (image, O_CREAT | O_RDWR | O_TRUNC, 0600);
  if (fd < 0 || ftruncate (fd, 64 << 20) < 0) {
    perror (image);
    return 1;
  }
  close (fd);

  say ("A disk image of 64 MiB stands for a shared disk: %s", image);
  say ("Two paths reach it: DKA100 (preferred) and DKB100 (standby).");
  say ("DKA100 is wrapped in altpath's fault injector so we can break it.");

  struct ap_direct_options da = { .name = "DKA100-raw" };
  struct ap_direct_options db = { .name = "DKB100" };
  struct ap_path *a = ap_path_fault_wrap (ap_path_open_direct (image, &da),
                                          "DKA100");
  struct ap_path *b = ap_path_open_direct (image, &db);
  if (!a || !b) {
    fprintf (stderr, "ap-demo: %s\n", ap_get_error ());
    return 1;
  }

  struct ap_unit_options opt;
  ap_unit_options_init (&opt);
  opt.name = "$4$DKB100";
  opt.request_timeout_ms = 500;
  opt.checker_interval_ms = 200;
  opt.failback_ms = 2000;
  opt.verify_timeout_ms = 10000;
  opt.events.fn = on_event;
  say ("Creating unit %s (request timeout %u ms, failback after %u ms "
       "healthy).", opt.name, opt.request_timeout_ms, opt.failback_ms);
  struct ap_unit *u = ap_unit_create (&opt, (struct ap_path *[]) { b }, 1);
  if (!u || ap_unit_add_path (u, a, 10) < 0) {
    fprintf (stderr, "ap-demo: %s\n", ap_get_error ());
    return 1;
  }
  say ("DKA100 joined with a higher priority: the unit drains and moves to "
       "it (the seed's race, done safely).");
  if (!wait_on_path (u, "DKA100", 5)) {
    fprintf (stderr, "ap-demo: the unit did not move to DKA100\n");
    goto out;
  }

  struct writer w[WRITERS];
  memset (w, 0, sizeof w);
  say ("Starting %d writers: each writes a block, reads it back, compares.",
       WRITERS);
  for (int i = 0; i < WRITERS; i++) {
    w[i].unit = u;
    w[i].id = i;
    pthread_create (&w[i].thread, NULL, writer_main, &w[i]);
  }
  sleep (1);
  show (u);

  atomic_store (&longest_gap_ns, 0);
  say ("FAULT 1: DKA100 now fails every request with EIO.");
  ap_fault_set (a, AP_FAULT_ERROR, -EIO, 0);
  sleep (1);
  say ("Longest stall the writers saw: %.1f ms (goal: under 50 ms).",
       (double) atomic_load (&longest_gap_ns) / 1e6);
  show (u);

  say ("REPAIR: DKA100 works again.  The checker notices; after %u ms of "
       "health the unit fails back.", opt.failback_ms);
  ap_fault_set (a, AP_FAULT_NONE, 0, 0);
  if (!wait_on_path (u, "DKA100", 10))
    say ("the unit did not fail back to DKA100 in time");
  show (u);

  atomic_store (&longest_gap_ns, 0);
  say ("FAULT 2: DKA100 hangs: requests are taken and never answered.");
  ap_fault_set (a, AP_FAULT_HANG, 0, 0);
  sleep (2);
  say ("Longest stall: %.1f ms (goal: under the %u ms request timeout + 50 "
       "ms).", (double) atomic_load (&longest_gap_ns) / 1e6,
       opt.request_timeout_ms);
  show (u);
  say ("REPAIR: the hang ends (the fenced requests were cancelled unrun, so "
       "nothing old lands late).");
  ap_fault_set (a, AP_FAULT_NONE, 0, 0);
  if (!wait_on_path (u, "DKA100", 10))
    say ("the unit did not fail back to DKA100 in time");

  say ("The operator pins DKB100 (altpath switch), then unpins.");
  if (ap_unit_switch (u, "DKB100") < 0)
    say ("switch: %s", ap_get_error ());
  sleep (1);
  ap_unit_unpin (u);
  wait_on_path (u, "DKA100", 10);

  atomic_store (&stop, true);
  for (int i = 0; i < WRITERS; i++)
    pthread_join (w[i].thread, NULL);
  show (u);

  /* Every block must hold its last acknowledged generation. */
  uint64_t bad = 0, checked = 0;
  unsigned char *rb, *want;
  if (posix_memalign ((void **) &rb, BLOCK, BLOCK)
      || posix_memalign ((void **) &want, BLOCK, BLOCK))
    abort ();
  for (int i = 0; i < WRITERS; i++)
    for (unsigned k = 0; k < BLOCKS_PER_WRITER; k++) {
      if (!w[i].gen[k])
        continue;
      uint64_t block = (uint64_t) i * BLOCKS_PER_WRITER + k;
      fill (want, block, w[i].gen[k]);
      checked++;
      if (ap_unit_pread (u, rb, BLOCK, block * BLOCK) < 0
          || memcmp (rb, want, BLOCK))
        bad++;
    }
  free (rb);
  free (want);
  say ("Verified %" PRIu64 " blocks: %" PRIu64 " wrong; %" PRIu64
       " requests done, %" PRIu64 " errors seen by the writers.", checked,
       bad, (uint64_t) atomic_load (&completions),
       (uint64_t) atomic_load (&errors));
  rc = bad || atomic_load (&errors) ? 1 : 0;
  say (rc == 0 ? "Result: no error reached the application; nothing lost."
       : "Result: FAILED");
out:
  ap_unit_close (u);
  unlink (image);
  rmdir (dir);
  return rc;
}
