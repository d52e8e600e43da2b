/* test-bufpool.c — the NBD server's daemon-wide buffer budget
 * (daemon/nbd-bufpool.c, compiled into this program below): buffers are
 * reused, the budget holds across connections, one connection cannot take
 * more than a quarter, a request with nothing held borrows beyond the
 * budget (one at a time), a connection that dies stops waiting, cached
 * buffers of other sizes are freed to make room, and the alignment covers
 * the disk's block size.
 *
 * Waits are observed through the pool's own wait counter, not by
 * sleeping: a helper thread's get has started waiting once `waits` grew.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <cmocka.h>

#include "../daemon/nbd-bufpool.c"

#define KiB (1024u)
#define MiB (1024u * 1024)

static int
setup (void **state)
{
  struct nbd_bufpool_stats st;

  nbd_bufpool_trim ();
  nbd_bufpool_stats (&st);
  assert_int_equal (st.allocated, 0);       /* every test gave all back */
  assert_int_equal (st.lent, 0);
  nbd_bufpool_set_budget (1 * MiB);
  return 0;
}

/* A get on another thread, to be seen waiting. */
struct getter {
  pthread_t t;
  struct nbd_bufuser *u;
  size_t len, cap;
  void *buf;
};

static void *
getter_run (void *arg)
{
  struct getter *g = arg;
  g->buf = nbd_bufpool_get (g->u, g->len, &g->cap);
  return NULL;
}

static unsigned long
waits_now (void)
{
  struct nbd_bufpool_stats st;
  nbd_bufpool_stats (&st);
  return st.waits;
}

/* Start a get on a thread and return once it waits (the test fails by
 * its own timeout if it never does). */
static void
start_waiting_get (struct getter *g)
{
  unsigned long w = waits_now ();
  assert_int_equal (pthread_create (&g->t, NULL, getter_run, g), 0);
  while (waits_now () == w)
    nanosleep (&(struct timespec) { 0, 1000000 }, NULL);
}

static void
test_reuse (void **state)
{
  struct nbd_bufuser u = { 0 };
  size_t cap;
  void *a = nbd_bufpool_get (&u, 5000, &cap);

  assert_non_null (a);
  assert_int_equal (cap, 8 * KiB);          /* a power-of-two class */
  assert_int_equal (u.held, 8 * KiB);
  nbd_bufpool_put (&u, a, cap);
  assert_int_equal (u.held, 0);
  void *b = nbd_bufpool_get (&u, 8 * KiB, &cap);
  assert_ptr_equal (a, b);                  /* the cached one, no malloc */
  nbd_bufpool_put (&u, b, cap);
}

static void
test_alignment (void **state)
{
  struct nbd_bufuser u = { 0 }, v = { 0 };
  size_t c1, c2;
  void *small = nbd_bufpool_get (&u, 512, &c1);
  void *big = nbd_bufpool_get (&v, 200 * KiB, &c2);

  assert_int_equal (c1, 4 * KiB);
  assert_int_equal (c2, 256 * KiB);
  assert_int_equal ((uintptr_t) small % (4 * KiB), 0);
  assert_int_equal ((uintptr_t) big % (64 * KiB), 0);
  nbd_bufpool_put (&u, small, c1);
  nbd_bufpool_put (&v, big, c2);
}

/* Four connections take the whole budget; a fifth borrows beyond it (it
 * holds nothing), a sixth must wait until a buffer comes back. */
static void
test_budget_across_connections (void **state)
{
  struct nbd_bufuser u[6] = { 0 };
  void *b[6];
  size_t cap[6];
  struct nbd_bufpool_stats st;

  for (int i = 0; i < 4; i++) {
    b[i] = nbd_bufpool_get (&u[i], 256 * KiB, &cap[i]);
    assert_non_null (b[i]);
  }
  nbd_bufpool_stats (&st);
  assert_int_equal (st.allocated, 1 * MiB);
  b[4] = nbd_bufpool_get (&u[4], 256 * KiB, &cap[4]);
  assert_non_null (b[4]);
  nbd_bufpool_stats (&st);
  assert_int_equal (st.overdraft, 256 * KiB);
  assert_int_equal (st.allocated, 1 * MiB);

  struct getter g = { .u = &u[5], .len = 256 * KiB };
  start_waiting_get (&g);
  assert_null (g.buf);
  nbd_bufpool_put (&u[0], b[0], cap[0]);
  pthread_join (g.t, NULL);
  assert_non_null (g.buf);
  nbd_bufpool_stats (&st);
  assert_true (st.allocated + st.overdraft <= 1 * MiB + 256 * KiB);

  nbd_bufpool_put (&u[5], g.buf, g.cap);
  for (int i = 1; i < 5; i++)
    nbd_bufpool_put (&u[i], b[i], cap[i]);
  nbd_bufpool_stats (&st);
  assert_int_equal (st.lent, 0);
  assert_int_equal (st.overdraft, 0);
  assert_true (st.allocated <= 1 * MiB);    /* the overdraft went away */
}

/* One connection: a quarter of the budget, then it waits for its own. */
static void
test_connection_cap (void **state)
{
  struct nbd_bufuser u = { 0 };
  size_t cap;
  void *a = nbd_bufpool_get (&u, 128 * KiB, &cap);
  void *b = nbd_bufpool_get (&u, 128 * KiB, &cap);

  assert_non_null (a);
  assert_non_null (b);
  assert_int_equal (u.held, 256 * KiB);
  struct getter g = { .u = &u, .len = 4 * KiB };
  start_waiting_get (&g);
  nbd_bufpool_put (&u, a, cap);
  pthread_join (g.t, NULL);
  assert_non_null (g.buf);
  nbd_bufpool_put (&u, g.buf, g.cap);
  nbd_bufpool_put (&u, b, cap);
}

/* A waiting connection whose socket dies stops waiting, and later gets
 * return NULL at once. */
static void
test_cancel (void **state)
{
  struct nbd_bufuser hog = { 0 }, u = { 0 };
  size_t cap;
  void *a = nbd_bufpool_get (&hog, 256 * KiB, &cap);
  void *b = nbd_bufpool_get (&u, 256 * KiB, &cap);

  struct getter g = { .u = &u, .len = 256 * KiB };
  start_waiting_get (&g);                   /* over its quarter */
  nbd_bufpool_cancel (&u);
  pthread_join (g.t, NULL);
  assert_null (g.buf);
  size_t c2;
  assert_null (nbd_bufpool_get (&u, 4 * KiB, &c2));
  nbd_bufpool_put (&u, b, cap);
  nbd_bufpool_put (&hog, a, cap);
}

/* Cached small buffers give their room to a large request. */
static void
test_evicts_other_sizes (void **state)
{
  struct nbd_bufuser u[4] = { 0 };
  void *b[4];
  size_t cap[4];
  struct nbd_bufpool_stats st;

  for (int i = 0; i < 4; i++)
    b[i] = nbd_bufpool_get (&u[i], 256 * KiB, &cap[i]);
  for (int i = 0; i < 4; i++)
    nbd_bufpool_put (&u[i], b[i], cap[i]);
  nbd_bufpool_stats (&st);
  assert_int_equal (st.allocated, 1 * MiB); /* all cached */

  struct nbd_bufuser v = { 0 };
  size_t c;
  void *big = nbd_bufpool_get (&v, 1 * MiB, &c);
  assert_non_null (big);
  nbd_bufpool_stats (&st);
  assert_int_equal (st.allocated, 1 * MiB); /* freed 4 × 256 KiB for it */
  assert_int_equal (st.overdraft, 0);
  nbd_bufpool_put (&v, big, c);
}

/* A maximal request (32 MiB) with a 1 MiB budget: it borrows, and only
 * one such loan exists at a time. */
static void
test_maximal_request (void **state)
{
  struct nbd_bufuser u = { 0 }, v = { 0 };
  size_t c1;
  struct nbd_bufpool_stats st;
  void *a = nbd_bufpool_get (&u, 32 * MiB, &c1);

  assert_non_null (a);
  assert_int_equal (c1, 32 * MiB);
  struct getter g = { .u = &v, .len = 32 * MiB };
  start_waiting_get (&g);
  nbd_bufpool_put (&u, a, c1);
  pthread_join (g.t, NULL);
  assert_non_null (g.buf);
  nbd_bufpool_put (&v, g.buf, g.cap);
  nbd_bufpool_stats (&st);
  assert_int_equal (st.overdraft, 0);
  assert_true (st.allocated <= 1 * MiB);
}

int
main (void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup (test_reuse, setup),
    cmocka_unit_test_setup (test_alignment, setup),
    cmocka_unit_test_setup (test_budget_across_connections, setup),
    cmocka_unit_test_setup (test_connection_cap, setup),
    cmocka_unit_test_setup (test_cancel, setup),
    cmocka_unit_test_setup (test_evicts_other_sizes, setup),
    cmocka_unit_test_setup (test_maximal_request, setup),
  };
  return cmocka_run_group_tests (tests, NULL, NULL);
}
