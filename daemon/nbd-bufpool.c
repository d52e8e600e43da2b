/* nbd-bufpool.c — one budget for the request buffers of every NBD
 * connection in the daemon (the rules and their reasons: nbd-bufpool.h).
 *
 * State, all under one mutex (taken twice per READ or WRITE; never held
 * across a system call other than posix_memalign and free of a cached
 * buffer):
 *
 *   cache[k]    free buffers of 4 KiB << k bytes, a list through their
 *               first bytes
 *   allocated   bytes of cached + lent buffers  (≤ budget)
 *   lent        bytes in connections' hands
 *   overdraft   bytes of the one buffer lent beyond the budget (0: none)
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "nbd-bufpool.h"
#include "nbd-proto.h"

#define MIN_SHIFT     12u                      /* 4 KiB */
#define NCLASSES      14u                      /* 4 KiB .. 32 MiB */
#define MAX_ALIGN     (64u * 1024)

_Static_assert ((1u << (MIN_SHIFT + NCLASSES - 1)) >= NBD_MAX_BLOCK,
                "the largest class must hold the largest request");

struct free_buf {
  struct free_buf *next;
};

static struct {
  pthread_mutex_t lock;
  pthread_cond_t returned;      /* a buffer came back, or a cancel */
  struct free_buf *cache[NCLASSES];
  size_t budget;
  size_t allocated;
  size_t lent;
  size_t overdraft;
  unsigned waiters;
  unsigned long waits;
} pool = {
  .lock = PTHREAD_MUTEX_INITIALIZER,
  .returned = PTHREAD_COND_INITIALIZER,
  .budget = NBD_BUFPOOL_DEFAULT_BUDGET,
};

void
nbd_bufpool_set_budget (size_t bytes)
{
  pthread_mutex_lock (&pool.lock);
  pool.budget = bytes;
  pthread_mutex_unlock (&pool.lock);
}

static unsigned
class_of (size_t len)
{
  unsigned k = 0;
  while (((size_t) 1 << (MIN_SHIFT + k)) < len)
    k++;
  return k;
}

static size_t
class_size (unsigned k)
{
  return (size_t) 1 << (MIN_SHIFT + k);
}

/* Free one cached buffer, the largest, to make room (lock held).  false
 * if the cache is empty. */
static bool
evict_one (void)
{
  for (unsigned k = NCLASSES; k-- > 0;) {
    struct free_buf *b = pool.cache[k];
    if (b) {
      pool.cache[k] = b->next;
      pool.allocated -= class_size (k);
      free (b);
      return true;
    }
  }
  return false;
}

void *
nbd_bufpool_get (struct nbd_bufuser *u, size_t len, size_t *cap)
{
  unsigned k = class_of (len ? len : 1);
  size_t sz = class_size (k);
  bool over = false;
  bool waited = false;
  void *buf = NULL;

  pthread_mutex_lock (&pool.lock);
  for (;;) {
    if (u->cancelled)
      goto out;
    /* A quarter of the budget per connection, but always one buffer. */
    bool conn_ok = u->held == 0 || u->held + sz <= pool.budget / 4;
    if (conn_ok && pool.cache[k]) {
      struct free_buf *b = pool.cache[k];
      pool.cache[k] = b->next;
      buf = b;
      break;
    }
    if (conn_ok && pool.allocated + sz <= pool.budget)
      break;                    /* allocate below */
    if (conn_ok && evict_one ())
      continue;
    if (u->held == 0 && pool.overdraft == 0) {
      /* Nothing cached is left to free and this connection holds
       * nothing: borrow beyond the budget rather than wait for room the
       * budget may never have (a request larger than what others keep
       * lent). */
      over = true;
      break;
    }
    if (!waited) {
      pool.waits++;
      waited = true;
    }
    pool.waiters++;
    pthread_cond_wait (&pool.returned, &pool.lock);
    pool.waiters--;
  }
  /* Account before allocating, so that no other thread counts on the
   * same room while the lock is dropped. */
  if (over)
    pool.overdraft = sz;
  else if (!buf)
    pool.allocated += sz;
  pool.lent += sz;
  u->held += sz;
  pthread_mutex_unlock (&pool.lock);

  if (!buf) {
    size_t align = sz < MAX_ALIGN ? sz : MAX_ALIGN;
    if (posix_memalign (&buf, align, sz) != 0) {
      buf = NULL;
      pthread_mutex_lock (&pool.lock);
      if (over)
        pool.overdraft = 0;
      else
        pool.allocated -= sz;
      pool.lent -= sz;
      u->held -= sz;
      if (pool.waiters)
        pthread_cond_broadcast (&pool.returned);
      pthread_mutex_unlock (&pool.lock);
      errno = ENOMEM;
      return NULL;
    }
  }
  *cap = sz;
  return buf;

 out:
  pthread_mutex_unlock (&pool.lock);
  return NULL;
}

void
nbd_bufpool_put (struct nbd_bufuser *u, void *buf, size_t cap)
{
  if (!buf)
    return;
  unsigned k = class_of (cap);

  pthread_mutex_lock (&pool.lock);
  pool.lent -= cap;
  u->held -= cap;
  if (pool.overdraft == cap && pool.allocated + cap > pool.budget) {
    /* The overdraft (or a buffer of its size; either way one of that
     * size leaves): memory goes back under the budget. */
    pool.overdraft = 0;
    pthread_mutex_unlock (&pool.lock);
    free (buf);
    pthread_mutex_lock (&pool.lock);
  }
  else {
    if (pool.overdraft == cap) {
      /* Room came back inside the budget: the overdraft becomes an
       * ordinary buffer. */
      pool.overdraft = 0;
      pool.allocated += cap;
    }
    struct free_buf *b = buf;
    b->next = pool.cache[k];
    pool.cache[k] = b;
  }
  if (pool.waiters)
    pthread_cond_broadcast (&pool.returned);
  pthread_mutex_unlock (&pool.lock);
}

void
nbd_bufpool_cancel (struct nbd_bufuser *u)
{
  pthread_mutex_lock (&pool.lock);
  u->cancelled = true;
  if (pool.waiters)
    pthread_cond_broadcast (&pool.returned);
  pthread_mutex_unlock (&pool.lock);
}

void
nbd_bufpool_trim (void)
{
  pthread_mutex_lock (&pool.lock);
  while (evict_one ())
    ;
  pthread_mutex_unlock (&pool.lock);
}

void
nbd_bufpool_stats (struct nbd_bufpool_stats *st)
{
  pthread_mutex_lock (&pool.lock);
  *st = (struct nbd_bufpool_stats) {
    .budget = pool.budget,
    .allocated = pool.allocated,
    .lent = pool.lent,
    .overdraft = pool.overdraft,
    .waits = pool.waits,
  };
  pthread_mutex_unlock (&pool.lock);
}
