/* test-unit-errors.c — what errors mean, and what reaches the paths:
 *
 *   not path faults (ENOSPC, EINVAL, EROFS, ENODATA): the request fails
 *     with that errno, the path stays active, no switch
 *   path faults (EIO, ETIMEDOUT, ENOLINK): the path fails, the request
 *     succeeds on another path
 *   bad requests: refused by ap_unit_submit (-1, errno), done never called
 *   closing a unit with I/O in flight: everything completes exactly once
 *   FLUSH after a failover reaches the new path; FUA reaches the path
 *     (the wrapper the unit sees, and the direct path under it)
 */
#include "unit-helpers.h"

/* Errors that blame the request or the disk, not the way to it. */
static void
test_not_path_faults (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  static const int errs[] = { ENOSPC, EINVAL, EROFS, ENODATA };
  /* Static: a failed assertion does not come back to free it. */
  static _Alignas (TU_BS) unsigned char buf[TU_BS];
  memset (buf, 0x5a, sizeof buf);

  for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
    int e = errs[i];
    fprintf (stderr, "-- %s\n", strerror (e));
    assert_false (ap_error_is_path_fault (-e));
    assert_false (ap_error_is_path_fault (e));
    struct ap_unit_status st;
    tu_status (t, &st);
    uint64_t sw = st.switches_auto + st.switches_manual;

    assert_int_equal (ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -e, 0),
                      0);
    assert_int_equal (ap_unit_pwrite (t->u, buf, TU_BS, 0, 0), -1);
    assert_int_equal (ap_get_errno (), e);
    assert_int_equal (ap_unit_pread (t->u, buf, TU_BS, 0), -1);
    assert_int_equal (ap_get_errno (), e);
    assert_int_equal (ap_unit_flush (t->u), -1);
    assert_int_equal (ap_get_errno (), e);
    /* Keep the fault a few checker periods: whatever the checker does
     * meanwhile must not blame the path either. */
    sleep_ms (5 * TU_CK_MS);
    tu_status (t, &st);
    assert_int_equal (st.state, AP_UNIT_ONLINE);
    assert_true (find_ps (&st, "A")->active);
    assert_int_equal (find_ps (&st, "A")->state, AP_PATH_ACTIVE);
    assert_int_equal (st.switches_auto + st.switches_manual, sw);
    assert_int_equal (ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0),
                      0);
    assert_int_equal (ap_unit_pwrite (t->u, buf, TU_BS, 0, 0), 0);
  }
  assert_int_equal (atomic_load (&tu_tp (t, "B")->submits), 0);
}

/* Errors that blame the path: the request is carried over to the other
 * path and succeeds there. */
static void
test_path_faults (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  static const int errs[] = { EIO, ETIMEDOUT, ENOLINK };

  for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
    int e = errs[i];
    fprintf (stderr, "-- %s\n", strerror (e));
    assert_true (ap_error_is_path_fault (-e));
    assert_true (ap_error_is_path_fault (e));
    char from[AP_NAME_MAX];
    tu_active (t, from);
    const char *to = strcmp (from, "A") == 0 ? "B" : "A";
    struct ap_unit_status st;
    tu_status (t, &st);
    uint64_t sw = st.switches_auto;

    ap_fault_set (tu_fault (t, from), AP_FAULT_ERROR, -e, 0);
    assert_int_equal (tu_write (t, (uint64_t) i * TU_BS, 0x60 + (int) i), 0);
    assert_true (tu_wait_active (t, to, 1000));
    assert_true (file_holds (t, (uint64_t) i * TU_BS, TU_BS, 0x60 + (int) i));
    tu_status (t, &st);
    assert_int_equal (find_ps (&st, from)->state, AP_PATH_FAILED);
    assert_int_equal (find_ps (&st, from)->last_errno, e);
    assert_int_equal (st.switches_auto, sw + 1);
    ap_fault_set (tu_fault (t, from), AP_FAULT_NONE, 0, 0);
    assert_true (tu_wait_path_state (t, from, AP_PATH_STANDBY, 1000));
  }
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
  /* And the classification itself, for a few more. */
  assert_true (ap_error_is_path_fault (-ECONNRESET));
  assert_true (ap_error_is_path_fault (-ECANCELED));
  assert_false (ap_error_is_path_fault (0));
  assert_false (ap_error_is_path_fault (-EOPNOTSUPP));
  assert_false (ap_error_is_path_fault (-EPERM));
  assert_false (ap_error_is_path_fault (-EILSEQ));
  assert_false (ap_error_is_path_fault (-EREMOTEIO));
}

/* One bad request: refused with want, the message names the unit, and
 * done is never called. */
static void
expect_refused (struct tu *t, struct req *r, int want, const char *what)
{
  fprintf (stderr, "-- %s\n", what);
  errno = 0;
  int rc = ap_unit_submit (t->u, &r->io);
  int e = ap_get_errno ();
  if (rc == 0)
    req_wait (r, 1000);
  else
    fprintf (stderr, "   %s\n", ap_get_error ());
  assert_int_equal (rc, -1);
  assert_int_equal (e, want);
  assert_non_null (strstr (ap_get_error (), "test-unit"));
  req_free (r);
}

static void
test_bad_input (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  uint64_t size = ap_unit_size (t->u);
  uint32_t bs = ap_unit_block_size (t->u);
  assert_int_equal (size, TU_SIZE);
  assert_true (bs >= 512 && TU_BS % bs == 0);
  struct req *keep[16];
  unsigned nkeep = 0;
  struct req *r;

  r = req_new (AP_OP_WRITE, 0, TU_BS, 1, 0);
  void *aligned = r->io.buf;
  r->io.buf = (char *) aligned + 1;
  fprintf (stderr, "-- misaligned buffer\n");
  assert_int_equal (ap_unit_submit (t->u, &r->io), -1);
  assert_int_equal (ap_get_errno (), EINVAL);
  r->io.buf = aligned;
  keep[nkeep++] = r;

  r = req_new (AP_OP_READ, 0, TU_BS, 1, 0);
  aligned = r->io.buf;
  r->io.buf = (char *) aligned + bs / 2;
  fprintf (stderr, "-- misaligned read buffer\n");
  assert_int_equal (ap_unit_submit (t->u, &r->io), -1);
  assert_int_equal (ap_get_errno (), EINVAL);
  r->io.buf = aligned;
  keep[nkeep++] = r;

  r = req_new (AP_OP_WRITE, 0, TU_BS, 1, 0);
  free (r->io.buf);
  r->io.buf = NULL;
  expect_refused (t, r, EINVAL, "write without a buffer");
  expect_refused (t, req_new (AP_OP_READ, bs / 2, TU_BS, 1, 0), EINVAL,
                  "misaligned offset");
  expect_refused (t, req_new (AP_OP_WRITE, 0, TU_BS + bs / 2, 1, 0), EINVAL,
                  "misaligned length");
  expect_refused (t, req_new (AP_OP_TRIM, bs / 2, bs, 0, 0), EINVAL,
                  "misaligned trim");
  expect_refused (t, req_new (AP_OP_READ, size, TU_BS, 1, 0), EINVAL,
                  "read at the end");
  expect_refused (t, req_new (AP_OP_READ, size - TU_BS, 2 * TU_BS, 1, 0),
                  EINVAL, "read across the end");
  expect_refused (t, req_new (AP_OP_READ, UINT64_MAX - bs + 1, TU_BS, 1, 0),
                  EINVAL, "read at an offset that wraps");
  /* Past the end a write is ENOSPC, as NBD asks of servers. */
  expect_refused (t, req_new (AP_OP_WRITE, size - TU_BS, 2 * TU_BS, 1, 0),
                  ENOSPC, "write across the end");
  expect_refused (t, req_new (AP_OP_WRITE_ZEROES, size, TU_BS, 0, 0),
                  ENOSPC, "write-zeroes past the end");
  r = req_new (AP_OP_READ, 0, TU_BS, 1, 0);
  r->io.length = 0;
  expect_refused (t, r, EINVAL, "zero-length read");
  r = req_new (AP_OP_WRITE, 0, TU_BS, 1, 0);
  r->io.length = 0;
  expect_refused (t, r, EINVAL, "zero-length write");
  expect_refused (t, req_new (AP_OP_TRIM, 0, 0, 0, 0), EINVAL,
                  "zero-length trim");
  r = req_new (AP_OP_READ, 0, TU_BS, 1, 0);
  r->io.op = (enum ap_op) 99;
  expect_refused (t, r, EINVAL, "unknown operation");
  expect_refused (t, req_new (AP_OP_READ, 0, TU_BS, 1, AP_IO_FUA), EINVAL,
                  "FUA on a read");
  expect_refused (t, req_new (AP_OP_WRITE, 0, TU_BS, 1, 1u << 7), EINVAL,
                  "unknown flag");
  r = req_new (AP_OP_WRITE, 0, TU_BS, 1, 0);
  r->io.done = NULL;
  expect_refused (t, r, EINVAL, "no done callback");

  /* Nothing refused was called back, or sent anywhere. */
  sleep_ms (50);
  for (unsigned i = 0; i < nkeep; i++) {
    assert_int_equal (atomic_load (&keep[i]->ndone), 0);
    req_free (keep[i]);
  }
  assert_int_equal (atomic_load (&tu_tp (t, "A")->submits), 0);
  assert_int_equal (atomic_load (&tu_tp (t, "B")->submits), 0);
  /* The unit is fine after all that. */
  assert_int_equal (tu_write (t, 0, 0x77), 0);
  assert_true (file_holds (t, 0, TU_BS, 0x77));
  /* A good request at the very end. */
  assert_int_equal (tu_write (t, size - TU_BS, 0x78), 0);
  assert_true (file_holds (t, size - TU_BS, TU_BS, 0x78));
}

/* Close with requests in flight, no faults: each completes once, with
 * success, and the data is on the disk. */
static void
test_close_inflight (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  enum { N = 64 };
  struct req *r[N];
  for (int i = 0; i < N; i++) {
    r[i] = req_new (i % 4 == 3 ? AP_OP_FLUSH : AP_OP_WRITE,
                    i % 4 == 3 ? 0 : (uint64_t) i * TU_BS,
                    i % 4 == 3 ? 0 : TU_BS, i + 1, i % 8 == 1 ? AP_IO_FUA : 0);
    assert_int_equal (ap_unit_submit (t->u, &r[i]->io), 0);
  }
  assert_int_equal (ap_unit_close (t->u), 0);
  t->u = NULL;
  for (int i = 0; i < N; i++) {
    assert_int_equal (atomic_load (&r[i]->ndone), 1);
    assert_int_equal (atomic_load (&r[i]->err), 0);
  }
  sleep_ms (50);
  for (int i = 0; i < N; i++) {
    assert_int_equal (atomic_load (&r[i]->ndone), 1);
    if (i % 4 != 3)
      assert_true (file_holds (t, (uint64_t) i * TU_BS, TU_BS, i + 1));
    req_free (r[i]);
  }
}

/* Close while the active path hangs: the requests time out, fail over,
 * and complete once, on the other path, before close returns. */
static void
test_close_hung_path (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  enum { N = 16 };
  struct req *r[N];
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_HANG, 0, 0);
  for (int i = 0; i < N; i++) {
    r[i] = req_new (AP_OP_WRITE, (uint64_t) i * TU_BS, TU_BS, 0x80 + i, 0);
    assert_int_equal (ap_unit_submit (t->u, &r[i]->io), 0);
  }
  uint64_t t0 = now_ms ();
  assert_int_equal (ap_unit_close (t->u), 0);
  t->u = NULL;
  uint64_t took = now_ms () - t0;
  assert_true (took >= TU_RT_MS * 9 / 10);
  assert_true (took < TU_VT_MS + 2 * TU_RT_MS + 500);
  for (int i = 0; i < N; i++) {
    assert_int_equal (atomic_load (&r[i]->ndone), 1);
    assert_int_equal (atomic_load (&r[i]->err), 0);
    assert_true (file_holds (t, (uint64_t) i * TU_BS, TU_BS, 0x80 + i));
    req_free (r[i]);
  }
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
}

/* Close while every path hangs: bounded, and every request still
 * completes exactly once (with an error). */
static void
test_close_all_hung (void **state)
{
  struct tu *t = *state;
  struct ap_unit_options o;
  tu_opts (&o);
  o.verify_timeout_ms = 400;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, &o);
  enum { N = 8 };
  struct req *r[N];
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_HANG, 0, 0);
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_HANG, 0, 0);
  for (int i = 0; i < N; i++) {
    r[i] = req_new (AP_OP_WRITE, (uint64_t) i * TU_BS, TU_BS, 0x90 + i, 0);
    assert_int_equal (ap_unit_submit (t->u, &r[i]->io), 0);
  }
  uint64_t t0 = now_ms ();
  int rc = ap_unit_close (t->u);
  t->u = NULL;
  uint64_t took = now_ms () - t0;
  fprintf (stderr, "close took %" PRIu64 " ms, returned %d\n", took, rc);
  assert_true (took < 400 + 4 * TU_RT_MS + 1000);
  sleep_ms (50);
  for (int i = 0; i < N; i++) {
    assert_int_equal (atomic_load (&r[i]->ndone), 1);
    assert_true (atomic_load (&r[i]->err) < 0);
    req_free (r[i]);
  }
}

/* After a failover, FLUSH goes to the new path (and not to the old). */
static void
test_flush_after_failover (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_int_equal (tu_write (t, 0, 0xa1), 0);
  assert_int_equal (ap_unit_flush (t->u), 0);
  struct tpath *ta = tu_tp (t, "A"), *tb = tu_tp (t, "B");
  assert_true (atomic_load (&ta->flushes) >= 1);
  assert_int_equal (atomic_load (&tb->flushes), 0);

  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (tu_write (t, TU_BS, 0xa2), 0);
  assert_true (tu_wait_active (t, "B", 1000));
  unsigned a_fl = atomic_load (&ta->flushes);
  unsigned b_fl = atomic_load (&tb->flushes);
  assert_int_equal (ap_unit_flush (t->u), 0);
  assert_true (atomic_load (&tb->flushes) >= b_fl + 1);
  assert_int_equal (atomic_load (&ta->flushes), a_fl);
  assert_true (file_holds (t, 0, TU_BS, 0xa1));
  assert_true (file_holds (t, TU_BS, TU_BS, 0xa2));

  /* A flush that fails on the path fails over too. */
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_NONE, 0, 0);
  assert_true (tu_wait_path_state (t, "A", AP_PATH_STANDBY, 1000));
  a_fl = atomic_load (&ta->flushes);
  ap_fault_set (tu_fault (t, "B"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (ap_unit_flush (t->u), 0);
  assert_true (tu_wait_active (t, "A", 1000));
  assert_true (atomic_load (&ta->flushes) >= a_fl + 1);
  assert_int_equal (atomic_load (&t->w.overlaps), 0);
}

/* FUA on a write reaches the path the unit sees and the direct path
 * under it; a write without FUA arrives without it. */
struct fua_trace {
  _Atomic unsigned writes, fua;
};

static void
fua_cb (void *opaque, struct ap_path *path, enum ap_trace_point point,
        const struct ap_io *io, bool probe, int err)
{
  struct fua_trace *f = opaque;
  (void) path;
  (void) err;
  if (probe || point != AP_TRACE_SUBMIT || io->op != AP_OP_WRITE)
    return;
  atomic_fetch_add (&f->writes, 1);
  if (io->flags & AP_IO_FUA)
    atomic_fetch_add (&f->fua, 1);
}

static void
test_fua_reaches_path (void **state)
{
  struct tu *t = *state;
  struct fua_trace inner[2] = { 0 };
  static const char *const names[] = { "A", "B" };
  for (int i = 0; i < 2; i++) {
    struct ap_direct_options d = { .name = names[i] };
    struct ap_path *in = ap_path_open_direct (t->image, &d);
    assert_non_null (in);
    struct ap_path_info info;
    ap_path_get_info (in, &info);
    assert_true (info.caps & AP_CAN_FUA);
    assert_true (info.caps & AP_CAN_FLUSH);
    assert_true (info.o_direct);
    ap_path_set_trace (in, fua_cb, &inner[i]);
    struct ap_path *f = ap_path_fault_wrap (in, names[i]);
    assert_non_null (f);
    struct tpath *tp = &t->w.p[t->w.n++];
    tp->w = &t->w;
    snprintf (tp->name, sizeof tp->name, "%s", names[i]);
    ap_path_set_trace (f, w_trace, tp);
    t->f[t->n++] = f;
  }
  tu_unit (t, NULL);
  struct tpath *ta = tu_tp (t, "A"), *tb = tu_tp (t, "B");
  void *buf = tu_buf (TU_BS, 0xb1);

  assert_int_equal (ap_unit_pwrite (t->u, buf, TU_BS, 0, AP_IO_FUA), 0);
  assert_int_equal (atomic_load (&ta->fua_writes), 1);
  assert_int_equal (atomic_load (&inner[0].fua), 1);
  assert_int_equal (ap_unit_pwrite (t->u, buf, TU_BS, TU_BS, 0), 0);
  assert_int_equal (atomic_load (&ta->fua_writes), 1);
  assert_int_equal (atomic_load (&ta->writes), 2);
  assert_int_equal (atomic_load (&inner[0].fua), 1);
  assert_int_equal (atomic_load (&inner[0].writes), 2);

  /* After a failover, on the new path; a FUA write that fails over keeps
   * its FUA. */
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_ERROR, -EIO, 0);
  assert_int_equal (ap_unit_pwrite (t->u, buf, TU_BS, 2 * TU_BS, AP_IO_FUA),
                    0);
  assert_true (tu_wait_active (t, "B", 1000));
  assert_int_equal (atomic_load (&tb->fua_writes), 1);
  assert_int_equal (atomic_load (&inner[1].fua), 1);
  /* Write-zeroes with FUA is accepted too. */
  assert_int_equal (ap_unit_write_zeroes (t->u, TU_BS, 3 * TU_BS, AP_IO_FUA),
                    0);
  assert_true (file_holds (t, 3 * TU_BS, TU_BS, 0));
  free (buf);
}

/* Close while a probe of the active path hangs, nothing else in flight:
 * close cancels the probe, which must not count as the path failing (it
 * once sent the closing unit into a verification that could not probe,
 * spinning with the lock held: close never returned). */
static void
test_close_probe_hung (void **state)
{
  struct tu *t = *state;
  tu_path (t, "A");
  tu_path (t, "B");
  tu_unit (t, NULL);
  assert_true (tu_wait_active (t, "A", 10));
  unsigned probes = atomic_load (&tu_tp (t, "A")->probes);
  ap_fault_set (tu_fault (t, "A"), AP_FAULT_HANG, 0, 0);
  /* The checker probes the idle active path every TU_CK_MS: wait for one
   * to be sent (it hangs), well before the request timeout fails it. */
  uint64_t t0 = now_ms ();
  while (atomic_load (&tu_tp (t, "A")->probes) == probes
         && now_ms () - t0 < 1000)
    sleep_ms (1);
  assert_true (atomic_load (&tu_tp (t, "A")->probes) > probes);
  t0 = now_ms ();
  assert_int_equal (ap_unit_close (t->u), 0);
  t->u = NULL;
  assert_true (now_ms () - t0 < TU_RT_MS + 1000);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown (f, tu_setup, tu_teardown)
    T (test_not_path_faults),
    T (test_path_faults),
    T (test_bad_input),
    T (test_close_inflight),
    T (test_close_probe_hung),
    T (test_close_hung_path),
    T (test_close_all_hung),
    T (test_flush_after_failover),
    T (test_fua_reaches_path),
#undef T
  };
  return cmocka_run_group_tests (tests, NULL, NULL);
}
