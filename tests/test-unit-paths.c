/* test-unit-paths.c — the paths of a unit: their states (active, standby,
 * failed, disabled) and what the operator does with them: disable (the
 * active one: the unit switches; the last usable one: refused with EBUSY),
 * enable, add a better path while I/O runs (the unit drains and switches,
 * never using both: a trace witness watches), remove, refuse a path of
 * another size or block size with a clear message, and the order of
 * preference among direct paths (priority), and the operator's choices
 * kept by name while paths leave and join.
 */
#include <sys/stat.h>
#include <sys/wait.h>
#include "unit-helpers.h"

/* The new states of path name's AP_EVENT_PATH_STATE events, in order. */
static unsigned
path_events (struct tu *t, const char *name, int *out, unsigned max)
{
  unsigned k = 0;
  pthread_mutex_lock (&t->ev.lock);
  for (unsigned i = 0; i < t->ev.n && k < max; i++)
    if (t->ev.ev[i].type == AP_EVENT_PATH_STATE
        && strcmp (t->ev.ev[i].path, name) == 0)
      out[k++] = t->ev.ev[i].new_state;
  pthread_mutex_unlock (&t->ev.lock);
  return k;
}

/* Whether want[] occurs in order (not necessarily adjacent) in got[]. */
static bool
in_order (const int *got, unsigned ngot, const int *want, unsigned nwant)
{
  unsigned j = 0;
  for (unsigned i = 0; i < ngot && j < nwant; i++)
    if (got[i] == want[j])
      j++;
  return j == nwant;
}

/* active → failed → disabled → (enabled, probed) standby, each with its
 * event. */
static void
test_path_states (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_ACTIVE);
  assert_int_equal (tu_path_state (t, "B"), AP_PATH_STANDBY);

  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x11), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_FAILED);
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_int_equal (find_ps (&st, "A")->last_errno, EIO);
  assert_true (find_ps (&st, "A")->last_error[0] != '\0');
  assert_true (find_ps (&st, "A")->last_error_unix_ms > 0);

  assert_int_equal (ap_unit_disable_path (t->u, "A"), 0);
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_DISABLED);
  /* A disabled path stays disabled even once it works, and is not
   * probed. */
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  sleep_ms (TU_CK_MS * 3);
  unsigned probes = atomic_load (&tu_tp (t, "A")->probes);
  sleep_ms (TU_CK_MS * 5);
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_DISABLED);
  assert_int_equal (atomic_load (&tu_tp (t, "A")->probes), probes);
  /* Disabling it again is not an error. */
  assert_int_equal (ap_unit_disable_path (t->u, "A"), 0);

  assert_int_equal (ap_unit_enable_path (t->u, "A"), 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  tu_status (t, &st);
  assert_true (find_ps (&st, "A")->probes_ok > 0);
  /* Equal priority: no reason to go back. */
  assert_true (tu_wait_active (t, "B", 10));

  /* Events come on the unit thread, after the status changed. */
  assert_true (ev_wait_has (&t->ev, AP_EVENT_PATH_STATE, "A",
                            AP_PATH_STANDBY, 1000));
  int got[32];
  unsigned n = path_events (t, "A", got, 32);
  const int want[] = { AP_PATH_FAILED, AP_PATH_DISABLED, AP_PATH_STANDBY };
  assert_true (in_order (got, n, want, 3));
  n = path_events (t, "B", got, 32);
  const int wantb[] = { AP_PATH_ACTIVE };
  assert_true (in_order (got, n, wantb, 1));
}

/* Disable the active path while I/O runs: the unit switches (drain, then
 * flip), never two paths at once, no error to callers. */
static void
test_disable_active (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  struct load l;
  load_start (&l, t, 3);
  assert_true (load_progress (&l, 20, 2000));
  assert_int_equal (ap_unit_disable_path (t->u, "A"), 0);
  /* disable returns once the unit has left the path. */
  char act[AP_NAME_MAX];
  assert_string_equal (tu_active (t, act), "B");
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_DISABLED);
  assert_true (load_progress (&l, 20, 2000));
  load_stop (&l);
  assert_int_equal (l.errors, 0);
  assert_int_equal (l.mismatches, 0);
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  assert_true (ev_wait_seq (&t->ev, "online>switch switch>online", 1000));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_SWITCH, "B", -1, 500));

  /* Nothing goes to a disabled path. */
  unsigned a_sub = atomic_load (&tu_tp (t, "A")->submits);
  assert_int_equal (tu_write (t, 0, 0x21), 0);
  assert_int_equal (atomic_load (&tu_tp (t, "A")->submits), a_sub);
  /* Switching to it is refused until enabled. */
  assert_int_equal (ap_unit_switch (t->u, "A"), -1);
  assert_int_equal (ap_unit_enable_path (t->u, "A"), 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  assert_int_equal (ap_unit_switch (t->u, "A"), 0);
  assert_true (tu_wait_active (t, "A", 100));
}

/* The last usable path cannot be disabled (or removed): EBUSY, and the
 * unit carries on. */
static void
test_disable_last_refused (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_int_equal (ap_unit_disable_path (t->u, "B"), 0);
  assert_int_equal (ap_unit_disable_path (t->u, "A"), -1);
  assert_int_equal (ap_get_errno (), EBUSY);
  assert_non_null (strstr (ap_get_error (), "A"));
  assert_true (tu_wait_active (t, "A", 10));
  assert_int_equal (tu_write (t, 0, 0x31), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x31));

  /* The same when the other path is enabled but failed. */
  assert_int_equal (ap_unit_enable_path (t->u, "B"), 0);
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);
  assert_true (tu_wait_path_state (t, "B", AP_PATH_FAILED, 1000));
  sleep_ms (2 * TU_CK_MS);
  assert_int_equal (ap_unit_disable_path (t->u, "A"), -1);
  assert_int_equal (ap_get_errno (), EBUSY);
  assert_int_equal (ap_unit_remove_path (t->u, "A"), -1);
  assert_int_equal (ap_get_errno (), EBUSY);
  assert_true (tu_wait_active (t, "A", 10));
  assert_int_equal (tu_write (t, 0, 0x32), 0);

  /* Unknown paths: ENOENT, named. */
  assert_int_equal (ap_unit_disable_path (t->u, "nosuch"), -1);
  assert_int_equal (ap_get_errno (), ENOENT);
  assert_non_null (strstr (ap_get_error (), "nosuch"));
  assert_int_equal (ap_unit_enable_path (t->u, "nosuch"), -1);
  assert_int_equal (ap_get_errno (), ENOENT);
}

/* A better path joins while I/O runs: the unit drains the old path and
 * switches to the new one, never sending on both at once. */
static void
test_add_better_path_while_io (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_unit (t, NULL);
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_int_equal (st.npaths, 1);
  uint64_t aut = st.switches_auto;

  struct load l;
  load_start (&l, t, 4);
  assert_true (load_progress (&l, 20, 2000));
  struct ap_path *b = tu_path (t, "B");
  assert_int_equal (ap_unit_add_path (t->u, b, 5), 0);
  assert_true (tu_wait_active (t, "B", 2000));
  unsigned a_sub = atomic_load (&tu_tp (t, "A")->submits);
  assert_true (load_progress (&l, 20, 2000));
  load_stop (&l);

  assert_int_equal (l.errors, 0);
  assert_int_equal (l.mismatches, 0);
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  /* Everything after the switch went to B. */
  assert_int_equal (atomic_load (&tu_tp (t, "A")->submits), a_sub);
  assert_true (atomic_load (&tu_tp (t, "B")->submits) > 0);
  tu_status (t, &st);
  assert_int_equal (st.npaths, 2);
  assert_int_equal (st.switches_auto, aut + 1);
  assert_int_equal (find_ps (&st, "A")->state, AP_PATH_STANDBY);
  assert_int_equal (find_ps (&st, "B")->priority, 5);
  assert_true (ev_wait_has (&t->ev, AP_EVENT_PATH_ADDED, "B", -1, 500));
  assert_true (ev_wait_seq (&t->ev, "online>switch switch>online", 1000));
}

/* A path no better than the active one joins as a standby. */
static void
test_add_equal_path (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_unit (t, NULL);
  struct ap_path *b = tu_path (t, "B");
  assert_int_equal (ap_unit_add_path (t->u, b, 0), 0);
  assert_true (tu_wait_path_state (t, "B", AP_PATH_STANDBY, 1000));
  sleep_ms (TU_FB_MS * 4);
  assert_true (tu_wait_active (t, "A", 10));
  /* A second path of the same name is refused. */
  struct ap_path *b2 = tu_path (t, "B");
  t->n--;                       /* consumed by add_path, even on failure */
  assert_int_equal (ap_unit_add_path (t->u, b2, 0), -1);
  assert_int_equal (ap_get_errno (), EEXIST);
}

/* Remove: a standby, then the active one (the unit switches first), and
 * never the last. */
static void
test_remove_path (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_path (t, "C");
  tu_unit (t, NULL);
  struct ap_unit_status st;

  assert_int_equal (ap_unit_remove_path (t->u, "C"), 0);
  tu_status (t, &st);
  assert_int_equal (st.npaths, 2);
  assert_null (find_ps (&st, "C"));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_PATH_REMOVED, "C", -1, 500));

  struct load l;
  load_start (&l, t, 3);
  assert_true (load_progress (&l, 20, 2000));
  assert_int_equal (ap_unit_remove_path (t->u, "A"), 0);
  tu_status (t, &st);
  assert_int_equal (st.npaths, 1);
  assert_true (find_ps (&st, "B")->active);
  assert_true (load_progress (&l, 20, 2000));
  load_stop (&l);
  assert_int_equal (l.errors, 0);
  assert_int_equal (l.mismatches, 0);
  assert_int_equal (atomic_load (&t->w.overlaps), 0);

  assert_int_equal (ap_unit_remove_path (t->u, "B"), -1);
  assert_int_equal (ap_get_errno (), EBUSY);
  assert_int_equal (ap_unit_remove_path (t->u, "A"), -1);
  assert_int_equal (ap_get_errno (), ENOENT);
  assert_int_equal (tu_write (t, 0, 0x41), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x41));
}

/* Another size: refused, and the message gives both sizes. */
static void
test_wrong_size (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_unit (t, NULL);

  char other[64];
  snprintf (other, sizeof other, "/dev/shm/test-unit-big-XXXXXX");
  int fd = mkstemp (other);
  assert_true (fd >= 0);
  assert_int_equal (ftruncate (fd, 2 * TU_SIZE), 0);
  close (fd);
  struct ap_path *big = tu_path_on (t, other, "BIG");
  t->n--;                       /* add_path owns it, also on failure */
  int r = ap_unit_add_path (t->u, big, 0);
  int e = ap_get_errno ();
  char msg[512];
  snprintf (msg, sizeof msg, "%s", ap_get_error ());
  char small_s[32], big_s[32];
  snprintf (small_s, sizeof small_s, "%u", TU_SIZE);
  snprintf (big_s, sizeof big_s, "%u", 2 * TU_SIZE);
  fprintf (stderr, "refused: %s\n", msg);
  assert_int_equal (r, -1);
  assert_int_equal (e, EINVAL);
  assert_non_null (strstr (msg, small_s));
  assert_non_null (strstr (msg, big_s));
  assert_non_null (strstr (msg, "BIG"));
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_int_equal (st.npaths, 1);

  /* The same at creation: no unit, both sizes named. */
  struct ap_direct_options d1 = { .name = "X" }, d2 = { .name = "Y" };
  struct ap_path *ps[2] = { ap_path_open_direct (t->image, &d1),
                            ap_path_open_direct (other, &d2) };
  assert_non_null (ps[0]);
  assert_non_null (ps[1]);
  struct ap_unit_options o;
  tu_opts (&o);
  o.name = "test-mismatch";
  struct ap_unit *u = ap_unit_create (&o, ps, 2);
  snprintf (msg, sizeof msg, "%s", ap_get_error ());
  unlink (other);
  if (u)
    ap_unit_close (u);
  assert_null (u);
  assert_non_null (strstr (msg, small_s));
  assert_non_null (strstr (msg, big_s));
}

/* Another logical block size (a loop device with 4096-byte sectors over
 * a file of the same size): refused, both block sizes named.  Needs root
 * and losetup; skipped otherwise. */
static void
test_wrong_block_size (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_unit (t, NULL);
  uint32_t ubs = ap_unit_block_size (t->u);
  unsigned lbs = ubs == 4096 ? 512 : 4096;

  char img[64], cmd[256], dev[64] = "";
  snprintf (img, sizeof img, "/dev/shm/test-unit-loop-XXXXXX");
  int fd = mkstemp (img);
  assert_true (fd >= 0);
  assert_int_equal (ftruncate (fd, TU_SIZE), 0);
  close (fd);
  snprintf (cmd, sizeof cmd, "losetup -f --show --sector-size %u %s "
            "2>/dev/null", lbs, img);
  FILE *p = geteuid () == 0 ? popen (cmd, "r") : NULL;
  if (p) {
    if (!fgets (dev, sizeof dev, p))
      dev[0] = '\0';
    pclose (p);
    dev[strcspn (dev, "\n")] = '\0';
  }
  if (!dev[0]) {
    unlink (img);
    fprintf (stderr, "no loop device (needs root and losetup): skipped\n");
    skip ();
  }
  struct ap_direct_options d = { .name = "LOOP" };
  struct ap_path *lp = ap_path_open_direct (dev, &d);
  int r = -2, e = 0;
  char msg[512] = "";
  struct ap_path_info info = { 0 };
  if (lp) {
    ap_path_get_info (lp, &info);
    r = ap_unit_add_path (t->u, lp, 0);
    e = ap_get_errno ();
    snprintf (msg, sizeof msg, "%s", ap_get_error ());
  }
  else
    snprintf (msg, sizeof msg, "open: %s", ap_get_error ());
  /* Clean up before asserting: a failed assertion does not come back. */
  snprintf (cmd, sizeof cmd, "losetup -d %s", dev);
  if (r == 0) {
    ap_unit_close (t->u);       /* let go of the device */
    t->u = NULL;
  }
  if (system (cmd) != 0)
    fprintf (stderr, "%s failed\n", cmd);
  unlink (img);
  fprintf (stderr, "refused: %s\n", msg);
  assert_non_null (lp);
  assert_int_equal (info.block_size, lbs);
  assert_int_equal (info.size, TU_SIZE);
  assert_int_equal (r, -1);
  assert_int_equal (e, EINVAL);
  char a[16], b[16];
  snprintf (a, sizeof a, "%u", ubs);
  snprintf (b, sizeof b, "%u", lbs);
  assert_non_null (strstr (msg, a));
  assert_non_null (strstr (msg, b));
  assert_non_null (strstr (msg, "LOOP"));
}

/* Among direct paths, higher priority is preferred: the unit goes to the
 * best healthy one, fails over to the next best, and fails back. */
static void
test_priority_order (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_unit (t, NULL);
  assert_int_equal (ap_unit_add_path (t->u, tu_path (t, "B"), 5), 0);
  assert_true (tu_wait_active (t, "B", 2000));
  assert_int_equal (ap_unit_add_path (t->u, tu_path (t, "C"), 10), 0);
  assert_true (tu_wait_active (t, "C", 2000));
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_int_equal (find_ps (&st, "A")->priority, 0);
  assert_int_equal (find_ps (&st, "B")->priority, 5);
  assert_int_equal (find_ps (&st, "C")->priority, 10);
  assert_true (find_ps (&st, "C")->preferred);
  assert_false (find_ps (&st, "A")->preferred);
  assert_int_equal (find_ps (&st, "A")->kind, AP_PATH_DIRECT);

  /* C fails: B (5) before A (0). */
  ap_fault_set (tu_fault (t, "C"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x51), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  /* B fails too: A. */
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x52), 0);
  assert_true (tu_wait_active (t, "A", 1000));
  /* B back: failback to B; C back: to C. */
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_active (t, "B", 2000));
  ap_fault_set (tu_fault (t, "C"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_active (t, "C", 2000));
  assert_int_equal (tu_write (t, 0, 0x53), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x53));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
}

/* The operator's choices are kept by name (struct ap_unit_choices): given
 * at creation, a disabled path joins disabled and is never probed nor
 * used; a pinned path that leaves and joins again is pinned again; a
 * disabled name outlives its path until enabled. */
static void
test_choices_kept (void **state)
{
  struct tu *t = *state;
  struct ap_unit_options o;
  struct ap_unit_choices ch = { .ndisabled = 1 };
  struct ap_unit_status st;
  snprintf (ch.disabled[0], AP_NAME_MAX, "A");
  snprintf (ch.pinned, AP_NAME_MAX, "A");       /* dropped: A is disabled */
  tu_opts (&o);
  o.choices = &ch;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, &o);
  sleep_ms (TU_CK_MS * 3);
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_DISABLED);
  assert_true (tu_wait_active (t, "B", 10));
  assert_int_equal (atomic_load (&tu_tp (t, "A")->submits), 0);
  assert_int_equal (atomic_load (&tu_tp (t, "A")->probes), 0);
  tu_status (t, &st);
  assert_int_equal (st.choices.ndisabled, 1);
  assert_string_equal (st.choices.disabled[0], "A");
  assert_string_equal (st.choices.pinned, "");

  /* Pin C, take it away, bring it back: pinned again, the unit returns. */
  assert_int_equal (ap_unit_add_path (t->u, tu_path (t, "C"), 0), 0);
  assert_true (tu_wait_path_state (t, "C", AP_PATH_STANDBY, 1000));
  assert_int_equal (ap_unit_switch (t->u, "C"), 0);
  assert_int_equal (ap_unit_remove_path (t->u, "C"), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  tu_status (t, &st);
  assert_string_equal (st.choices.pinned, "C");
  assert_int_equal (ap_unit_add_path (t->u, tu_path (t, "C"), 0), 0);
  assert_true (tu_wait_active (t, "C", 2000));
  tu_status (t, &st);
  assert_true (find_ps (&st, "C")->pinned);

  /* A leaves and joins again: still disabled, nothing sent to it. */
  assert_int_equal (ap_unit_remove_path (t->u, "A"), 0);
  tu_status (t, &st);
  assert_null (find_ps (&st, "A"));
  assert_int_equal (st.choices.ndisabled, 1);
  assert_int_equal (ap_unit_add_path (t->u, tu_path (t, "A"), 0), 0);
  sleep_ms (TU_CK_MS * 3);
  tu_status (t, &st);
  assert_int_equal (find_ps (&st, "A")->state, AP_PATH_DISABLED);
  assert_int_equal (find_ps (&st, "A")->probes_ok
                    + find_ps (&st, "A")->probes_failed, 0);
  assert_int_equal (find_ps (&st, "A")->counters.writes, 0);

  /* Enabling a disabled name with no path forgets it; the path then joins
   * enabled.  A name neither there nor disabled is ENOENT. */
  assert_int_equal (ap_unit_remove_path (t->u, "A"), 0);
  assert_int_equal (ap_unit_enable_path (t->u, "A"), 0);
  tu_status (t, &st);
  assert_int_equal (st.choices.ndisabled, 0);
  assert_int_equal (ap_unit_enable_path (t->u, "A"), -1);
  assert_int_equal (ap_get_errno (), ENOENT);
  assert_int_equal (ap_unit_add_path (t->u, tu_path (t, "A"), 0), 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));

  /* Disabling the pinned path unpins it, in the choices too. */
  assert_int_equal (ap_unit_disable_path (t->u, "C"), 0);
  tu_status (t, &st);
  assert_string_equal (st.choices.pinned, "");
  assert_int_equal (st.choices.ndisabled, 1);
  assert_string_equal (st.choices.disabled[0], "C");
  assert_int_equal (ap_unit_unpin (t->u), 0);
  assert_int_equal (tu_write (t, 0, 0x61), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x61));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown (f, tu_setup, tu_teardown)
    T (test_path_states),
    T (test_disable_active),
    T (test_disable_last_refused),
    T (test_add_better_path_while_io),
    T (test_add_equal_path),
    T (test_remove_path),
    T (test_wrong_size),
    T (test_wrong_block_size),
    T (test_priority_order),
    T (test_choices_kept),
#undef T
  };
  return cmocka_run_group_tests (tests, NULL, NULL);
}
