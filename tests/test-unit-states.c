/* test-unit-states.c — one test per transition of the unit's state
 * machine (lib/unit-state.c), driven through the fault wrapper, with the
 * AP_EVENT_UNIT_STATE events checked against each transition:
 *
 *   ONLINE ─ path error ─► VERIFY ─ other path ok ─► ONLINE
 *   VERIFY ─ no path within verify_timeout ─► OFFLINE (I/O fails: EIO)
 *   OFFLINE ─ a path recovers (checker) ─► ONLINE
 *   OFFLINE with queue_if_no_path: I/O held, completed when a path returns
 *   ONLINE ─ ap_unit_switch ─► SWITCH ─► ONLINE (pinned, switches_manual)
 *   failback to the preferred path after failback_ms; not while pinned;
 *   ap_unit_unpin, then failback
 *   request timeout (hang, drop) ─► VERIFY; the request completes once,
 *   on the other path, and the held copy never runs
 *   any state ─ close ─► CLOSED
 * and the whole sequence of events of one unit's life, from creation
 * (ap_unit_options.events) to close.
 */
#include "unit-helpers.h"

/* ONLINE → VERIFY (EIO on the active path) → ONLINE on the other one; the
 * caller sees no error. */
static void
test_online_verify_online (void **state)
{
  struct tu *t = *state;
  char act[AP_NAME_MAX];
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_string_equal (tu_active (t, act), "A");
  struct ap_unit_status st;
  tu_status (t, &st);
  uint64_t sw = st.switches_auto;

  assert_int_equal (ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0),
                    0);
  assert_int_equal (tu_write (t, 0, 0x11), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  assert_true (file_holds (t, 0, TU_BS, 0x11));
  assert_true (ev_wait_seq (&t->ev, "online>verify verify>online", 1000));
  tu_status (t, &st);
  assert_int_equal (st.switches_auto, sw + 1);
  assert_int_equal (find_ps (&st, "A")->state, AP_PATH_FAILED);
  assert_int_equal (find_ps (&st, "A")->last_errno, EIO);
  assert_true (ev_wait_has (&t->ev, AP_EVENT_SWITCH, "B", -1, 500));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_PATH_STATE, "A", AP_PATH_FAILED,
                            500));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  /* The event that took it to VERIFY names the error. */
  pthread_mutex_lock (&t->ev.lock);
  for (unsigned i = 0; i < t->ev.n; i++)
    if (t->ev.ev[i].type == AP_EVENT_UNIT_STATE
        && t->ev.ev[i].new_state == AP_UNIT_VERIFY) {
      assert_int_equal (t->ev.ev[i].err, -EIO);
      assert_true (t->ev.ev[i].reason[0] != '\0');
    }
  pthread_mutex_unlock (&t->ev.lock);
}

/* Both paths fail: VERIFY → OFFLINE after verify_timeout; the held write
 * fails with EIO, and new I/O is refused at once with EIO. */
static void
test_verify_offline (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_int_equal (ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0),
                    0);
  assert_int_equal (ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0),
                    0);
  uint64_t t0 = now_ms ();
  assert_int_equal (tu_write (t, 0, 0x22), -1);
  uint64_t took = now_ms () - t0;
  assert_int_equal (ap_get_errno (), EIO);
  /* Failed by the verification timeout: not before it, not much after. */
  assert_true (took >= TU_VT_MS * 9 / 10);
  assert_true (took <= TU_VT_MS + 1000);
  assert_true (tu_wait_state (t, AP_UNIT_OFFLINE, 100));
  assert_true (ev_wait_seq (&t->ev, "online>verify verify>offline", 1000));

  /* Offline, not queueing: refused at once, done never called. */
  struct req *r = req_new (AP_OP_WRITE, 0, TU_BS, 0x23, 0);
  errno = 0;
  assert_int_equal (ap_unit_submit (t->u, &r->io), -1);
  assert_int_equal (ap_get_errno (), EIO);
  assert_true (strlen (ap_get_error ()) > 0);
  sleep_ms (50);
  assert_int_equal (atomic_load (&r->ndone), 0);
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_int_equal (find_ps (&st, "A")->state, AP_PATH_FAILED);
  assert_int_equal (find_ps (&st, "B")->state, AP_PATH_FAILED);
  req_free (r);
}

/* OFFLINE → ONLINE once the checker finds a path working again. */
static void
test_offline_online (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x31), -1);
  assert_true (tu_wait_state (t, AP_UNIT_OFFLINE, 100));

  uint64_t t0 = now_ms ();
  assert_int_equal (ap_fault_set (tu_fault (t, "B"), AP_FAULT_NONE, 0, 0), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  /* Within a few checker periods. */
  assert_true (now_ms () - t0 < 10 * TU_CK_MS + 200);
  assert_true (ev_wait_seq (&t->ev,
                            "online>verify verify>offline offline>online",
                            1000));
  assert_int_equal (tu_write (t, 0, 0x32), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x32));
  assert_int_equal (tu_path_state (t, "A"), AP_PATH_FAILED);
}

/* queue_if_no_path: offline, I/O waits (old and new), and completes once
 * a path returns. */
static void
test_queue_if_no_path (void **state)
{
  struct tu *t = *state;
  struct ap_unit_options o;
  tu_opts (&o);
  o.queue_if_no_path = true;
  o.verify_timeout_ms = 300;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, &o);
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);

  struct req *r1 = req_new (AP_OP_WRITE, 0, TU_BS, 0x41, 0);
  assert_int_equal (ap_unit_submit (t->u, &r1->io), 0);
  assert_true (tu_wait_state (t, AP_UNIT_OFFLINE, 1500));
  /* Offline and queueing: accepted, held. */
  struct req *r2 = req_new (AP_OP_WRITE, TU_BS, TU_BS, 0x42, AP_IO_FUA);
  assert_int_equal (ap_unit_submit (t->u, &r2->io), 0);
  sleep_ms (300);
  assert_int_equal (atomic_load (&r1->ndone), 0);
  assert_int_equal (atomic_load (&r2->ndone), 0);
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_true (st.queue_if_no_path);
  assert_int_equal (st.state, AP_UNIT_OFFLINE);
  assert_true (st.held >= 2);

  assert_int_equal (ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0), 0);
  assert_true (req_wait (r1, 2000));
  assert_true (req_wait (r2, 2000));
  assert_int_equal (atomic_load (&r1->err), 0);
  assert_int_equal (atomic_load (&r2->err), 0);
  assert_true (tu_wait_active (t, "A", 1000));
  sleep_ms (100);
  assert_int_equal (atomic_load (&r1->ndone), 1);
  assert_int_equal (atomic_load (&r2->ndone), 1);
  assert_true (file_holds (t, 0, TU_BS, 0x41));
  assert_true (file_holds (t, TU_BS, TU_BS, 0x42));
  assert_true (ev_wait_seq (&t->ev,
                            "online>verify verify>offline offline>online",
                            1000));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  req_free (r1);
  req_free (r2);
}

/* ONLINE → SWITCH → ONLINE on ap_unit_switch, with I/O running: the path
 * is pinned, switches_manual counts it, never two paths at once. */
static void
test_switch (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  struct ap_unit_status st;
  tu_status (t, &st);
  uint64_t man = st.switches_manual, aut = st.switches_auto;

  struct load l;
  load_start (&l, t, 3);
  assert_true (load_progress (&l, 20, 2000));
  assert_int_equal (ap_unit_switch (t->u, "B"), 0);
  /* Switch waits until done. */
  char act[AP_NAME_MAX];
  assert_string_equal (tu_active (t, act), "B");
  assert_true (load_progress (&l, 20, 2000));
  load_stop (&l);

  tu_status (t, &st);
  assert_int_equal (st.state, AP_UNIT_ONLINE);
  assert_int_equal (st.switches_manual, man + 1);
  assert_int_equal (st.switches_auto, aut);
  assert_true (find_ps (&st, "B")->pinned);
  assert_false (find_ps (&st, "A")->pinned);
  assert_int_equal (find_ps (&st, "A")->state, AP_PATH_STANDBY);
  assert_true (ev_wait_seq (&t->ev, "online>switch switch>online", 1000));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_SWITCH, "B", -1, 500));
  assert_int_equal (l.errors, 0);
  assert_int_equal (l.mismatches, 0);
  assert_int_equal (atomic_load (&t->w.overlaps), 0);

  /* Switching to the path already active changes nothing. */
  assert_int_equal (ap_unit_switch (t->u, "B"), 0);
  tu_status (t, &st);
  assert_int_equal (st.switches_manual, man + 1);
  /* A path that does not exist: ENOENT. */
  assert_int_equal (ap_unit_switch (t->u, "nosuch"), -1);
  assert_int_equal (ap_get_errno (), ENOENT);
  assert_non_null (strstr (ap_get_error (), "nosuch"));
}

/* A unit over B with A joining at a higher priority: A is preferred. */
static void
preferred_a (struct tu *t)
{
  tu_path (t, "B");
  tu_unit (t, NULL);
  struct ap_path *a = tu_path (t, "A");
  assert_int_equal (ap_unit_add_path (t->u, a, 10), 0);
  assert_true (tu_wait_active (t, "A", 2000));
  sleep_ms (2 * TU_CK_MS);
  ev_reset (&t->ev);
}

/* Failback: the preferred path fails, the unit leaves it, and goes back
 * once it has been healthy for failback_ms. */
static void
test_failback (void **state)
{
  struct tu *t = *state;
  preferred_a (t);
  struct ap_unit_status st;
  tu_status (t, &st);
  uint64_t aut = st.switches_auto;

  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x51), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  sleep_ms (100);
  /* Still failed: no failback to a broken path. */
  assert_true (tu_wait_active (t, "B", 10));

  uint64_t t0 = now_ms ();
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  assert_true (tu_wait_active (t, "A", 2000));
  uint64_t took = now_ms () - t0;
  assert_true (took >= TU_FB_MS);
  assert_true (ev_wait_seq (&t->ev, "online>verify verify>online "
                            "online>switch switch>online", 1000));
  tu_status (t, &st);
  assert_int_equal (st.switches_auto, aut + 2);
  assert_int_equal (st.switches_manual, 0);
  assert_int_equal (tu_write (t, 0, 0x52), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x52));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
}

/* Failback waits failback_ms: with a long interval it has not happened
 * early. */
static void
test_failback_interval (void **state)
{
  struct tu *t = *state;
  struct ap_unit_options o;
  tu_opts (&o);
  o.failback_ms = 600;
  tu_path (t, "B");
  tu_unit (t, &o);
  struct ap_path *a = tu_path (t, "A");
  assert_int_equal (ap_unit_add_path (t->u, a, 10), 0);
  /* A better path that joins is taken at once, not after failback_ms. */
  assert_true (tu_wait_active (t, "A", 400));

  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x53), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  uint64_t healthy = now_ms ();
  sleep_ms (300);
  assert_true (tu_wait_active (t, "B", 10));
  assert_true (tu_wait_active (t, "A", 1500));
  assert_true (now_ms () - healthy >= 600 - 2 * TU_CK_MS);
}

/* no_failback: the unit stays where failover put it. */
static void
test_no_failback (void **state)
{
  struct tu *t = *state;
  struct ap_unit_options o;
  tu_opts (&o);
  o.no_failback = true;
  tu_path (t, "B");
  tu_unit (t, &o);
  struct ap_path *a = tu_path (t, "A");
  assert_int_equal (ap_unit_add_path (t->u, a, 10), 0);
  assert_true (tu_wait_active (t, "A", 2000));
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x54), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  sleep_ms (TU_FB_MS * 6);
  assert_true (tu_wait_active (t, "B", 10));
}

/* A pinned path is not undone by failback; unpin, and failback happens;
 * a pinned path that fails is left, and failback returns to it. */
static void
test_pinned_and_unpin (void **state)
{
  struct tu *t = *state;
  preferred_a (t);
  assert_int_equal (ap_unit_switch (t->u, "B"), 0);
  assert_true (tu_wait_active (t, "B", 100));
  sleep_ms (TU_FB_MS * 6);
  /* A is healthy and preferred by priority, but B is pinned. */
  assert_true (tu_wait_active (t, "B", 10));
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_true (find_ps (&st, "B")->pinned);
  assert_true (find_ps (&st, "B")->preferred);

  /* The pinned path fails: failover leaves it ... */
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 0x61), 0);
  assert_true (tu_wait_active (t, "A", 1000));
  /* ... and failback returns to it once it is back. */
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_active (t, "B", 2000));
  tu_status (t, &st);
  assert_true (find_ps (&st, "B")->pinned);

  ev_reset (&t->ev);
  assert_int_equal (ap_unit_unpin (t->u), 0);
  assert_true (tu_wait_active (t, "A", 2000));
  tu_status (t, &st);
  assert_false (find_ps (&st, "A")->pinned);
  assert_false (find_ps (&st, "B")->pinned);
  assert_true (find_ps (&st, "A")->preferred);
  assert_true (ev_wait_seq (&t->ev, "online>switch switch>online", 1000));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
}

/* A request that never comes back (hang or drop) times out: VERIFY, the
 * path is fenced, the request completes once, on the other path, and the
 * held copy never runs (restoring the path afterwards releases nothing). */
static void
timeout_case (struct tu *t, enum ap_fault_mode mode)
{
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_int_equal (tu_write (t, 0, 0x70), 0);
  struct tpath *tb = tu_tp (t, "B");
  unsigned b_writes = atomic_load (&tb->writes);

  assert_int_equal (ap_fault_set (tu_fault (t, "A"), mode, 0, 0), 0);
  struct req *r = req_new (AP_OP_WRITE, 0, TU_BS, 0x71, 0);
  uint64_t t0 = now_ms ();
  assert_int_equal (ap_unit_submit (t->u, &r->io), 0);
  assert_true (req_wait (r, TU_RT_MS + TU_VT_MS + 1000));
  uint64_t took = now_ms () - t0;
  assert_int_equal (atomic_load (&r->err), 0);
  assert_true (took >= TU_RT_MS * 9 / 10);
  assert_true (took < TU_RT_MS + TU_VT_MS);
  assert_true (tu_wait_active (t, "B", 500));
  assert_true (atomic_load (&tb->writes) >= b_writes + 1);
  assert_true (file_holds (t, 0, TU_BS, 0x71));
  assert_true (ev_wait_seq (&t->ev, "online>verify verify>online", 1000));
  struct ap_unit_status st;
  tu_status (t, &st);
  assert_int_equal (find_ps (&st, "A")->last_errno, ETIMEDOUT);

  /* Overwrite on B, then end the fault on A: had A kept the old write,
   * it would run now and put 0x71 back over 0x72. */
  assert_int_equal (tu_write (t, 0, 0x72), 0);
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  sleep_ms (200);
  assert_true (file_holds (t, 0, TU_BS, 0x72));
  assert_int_equal (atomic_load (&r->ndone), 1);
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  req_free (r);
}

static void
test_timeout_hang (void **state)
{
  timeout_case (*state, AP_FAULT_HANG);
}

static void
test_timeout_drop (void **state)
{
  timeout_case (*state, AP_FAULT_DROP);
}

/* A slow fence (a slow server): the unit waits for it before using the
 * other path; still exactly once, still no overlap. */
static void
test_timeout_slow_fence (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_int_equal (ap_fault_set_fence_delay (tu_fault (t, "A"), 300000), 0);
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_HANG, 0, 0);
  struct req *r = req_new (AP_OP_WRITE, 0, TU_BS, 0x75, 0);
  uint64_t t0 = now_ms ();
  assert_int_equal (ap_unit_submit (t->u, &r->io), 0);
  assert_true (req_wait (r, TU_RT_MS + TU_VT_MS + 1000));
  assert_int_equal (atomic_load (&r->err), 0);
  assert_true (now_ms () - t0 >= TU_RT_MS + 300 - 20);
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  sleep_ms (100);
  assert_int_equal (atomic_load (&r->ndone), 1);
  assert_true (file_holds (t, 0, TU_BS, 0x75));
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  req_free (r);
}

/* The whole life in one event log: every unit-state event, in order,
 * with increasing times, naming the unit; close ends in CLOSED. */
static void
test_event_sequence (void **state)
{
  struct tu *t = *state;
  struct ap_unit_options o;
  tu_opts (&o);
  o.verify_timeout_ms = 300;
  /* Events from creation on: the first is the unit coming online. */
  o.events.fn = ev_cb;
  o.events.opaque = &t->ev;
  tu_path (t, "A");
  tu_path (t, "B");
  t->u = ap_unit_create (&o, t->f, t->n);
  assert_non_null (t->u);
  assert_true (tu_wait_active (t, "A", 1000));
  assert_true (ev_wait_seq (&t->ev, "offline>online", 1000));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_PATH_STATE, "A", AP_PATH_ACTIVE,
                            500));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_PATH_STATE, "B",
                            AP_PATH_STANDBY, 500));
  assert_true (ev_wait_has (&t->ev, AP_EVENT_SWITCH, "A", -1, 500));

  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 1), 0);               /* failover */
  assert_true (tu_wait_active (t, "B", 1000));
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  assert_int_equal (ap_unit_switch (t->u, "A"), 0);       /* switch */
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, 0, 2), -1);              /* offline */
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_active (t, "B", 1000));            /* back */
  const char *want = "offline>online online>verify verify>online "
    "online>switch switch>online online>verify verify>offline "
    "offline>online";
  assert_true (ev_wait_seq (&t->ev, want, 1000));

  assert_int_equal (ap_unit_close (t->u), 0);
  t->u = NULL;
  char seq[512];
  ev_unit_seq (&t->ev, seq, sizeof seq);
  char want2[512];
  snprintf (want2, sizeof want2, "%s online>closed", want);
  assert_string_equal (seq, want2);
  assert_false (t->ev.bad_order);
  pthread_mutex_lock (&t->ev.lock);
  /* Consecutive unit-state events chain: each starts where the last
   * ended. */
  int last = -1;
  for (unsigned i = 0; i < t->ev.n; i++) {
    if (t->ev.ev[i].type != AP_EVENT_UNIT_STATE)
      continue;
    if (last >= 0)
      assert_int_equal (t->ev.ev[i].old_state, last);
    last = t->ev.ev[i].new_state;
  }
  pthread_mutex_unlock (&t->ev.lock);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown (f, tu_setup, tu_teardown)
    T (test_online_verify_online),
    T (test_verify_offline),
    T (test_offline_online),
    T (test_queue_if_no_path),
    T (test_switch),
    T (test_failback),
    T (test_failback_interval),
    T (test_no_failback),
    T (test_pinned_and_unpin),
    T (test_timeout_hang),
    T (test_timeout_drop),
    T (test_timeout_slow_fence),
    T (test_event_sequence),
#undef T
  };
  return cmocka_run_group_tests (tests, NULL, NULL);
}
