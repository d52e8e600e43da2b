/* nbd-bufpool.h — the NBD server's request buffers, one budget for the
 * whole daemon.
 *
 * Every READ and WRITE needs a buffer as long as its payload from the
 * moment its header is read until its reply is sent.  Without a shared
 * budget, memory grows with clients × queue depth × request size: 16
 * clients keeping 64 requests of 256 KiB in flight need 256 MiB.  Here
 * the buffers of every connection of every server in the daemon come out
 * of one budget; a reader that finds it spent waits, and so stops reading
 * its socket — TCP flow control then pushes back on the client.  The
 * disks stay busy: a few MiB in flight saturate them.
 *
 * Rules (each with its reason):
 *  - Buffers are kept for reuse in power-of-two size classes (4 KiB to
 *    NBD_MAX_BLOCK), so the steady state allocates nothing; cached and
 *    lent buffers together never exceed the budget.  A request that
 *    needs a class with nothing cached, when the budget is spent, frees
 *    cached buffers of other classes first.
 *  - One connection may hold at most a quarter of the budget (or one
 *    buffer, whatever its size), so a client that stops reading its
 *    replies — its buffers then stay lent — cannot starve the others.
 *  - A request larger than what is left when its connection holds nothing
 *    may borrow beyond the budget, one such request at a time in the
 *    daemon: a maximal request (32 MiB) then never waits for a budget it
 *    could not fit in.  The bound on memory is budget + NBD_MAX_BLOCK.
 *  - A wait ends when buffers come back, or when the connection is
 *    cancelled (its socket died, or shutdown forced it).
 */
#ifndef ALTPATHD_NBD_BUFPOOL_H
#define ALTPATHD_NBD_BUFPOOL_H

#include <stdbool.h>
#include <stddef.h>

/* The budget in bytes (default NBD_BUFPOOL_DEFAULT_BUDGET); applies to
 * buffers allocated from now on.  Set once at start-up. */
#define NBD_BUFPOOL_DEFAULT_BUDGET (32u * 1024 * 1024)
void nbd_bufpool_set_budget (size_t bytes);

/* One connection's account with the pool (zero-initialise it). */
struct nbd_bufuser {
  size_t held;                  /* bytes lent to this connection */
  bool cancelled;               /* waits return NULL at once */
};

/* A buffer of at least len bytes (len ≥ 1), aligned to min(its size,
 * 64 KiB), which covers every logical block size up to 64 KiB.  Waits
 * while the budget is spent.  NULL if u was cancelled, or if memory ran
 * out (errno ENOMEM).  *cap gets the size to give back. */
void *nbd_bufpool_get (struct nbd_bufuser *u, size_t len, size_t *cap);
/* Give back a buffer from nbd_bufpool_get (buf may be NULL). */
void nbd_bufpool_put (struct nbd_bufuser *u, void *buf, size_t cap);
/* Make u's waits, now and later, return NULL. */
void nbd_bufpool_cancel (struct nbd_bufuser *u);

/* Free every cached buffer (the lent ones stay lent). */
void nbd_bufpool_trim (void);

/* Figures for logs and tests. */
struct nbd_bufpool_stats {
  size_t budget;
  size_t allocated;             /* lent + cached, within the budget */
  size_t lent;
  size_t overdraft;             /* the one request beyond the budget */
  unsigned long waits;          /* gets that had to wait */
};
void nbd_bufpool_stats (struct nbd_bufpool_stats *st);

#endif /* ALTPATHD_NBD_BUFPOOL_H */
