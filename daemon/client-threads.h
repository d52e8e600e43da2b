/* client-threads.h — a capped set of per-connection threads, as the
 * control socket (control.c) and the metrics server (metrics.c) keep
 * them: start one for an accepted fd, reap the finished, stop: join all.
 * (static, like control-request.h: tests/test-control.c compiles
 * control.c into itself and links no other file of the daemon.)
 *
 * The set is guarded by its owner's lock (a leaf), under which the owner
 * may walk head.  A connection's struct begins with its struct ct_thread
 * (the set frees it with free()); its thread sets done under the lock
 * when it has finished with the connection.  No thread is ever cancelled:
 * the owner tells them to end (its stop pipe) before reaping them all.
 */
#ifndef ALTPATHD_CLIENT_THREADS_H
#define ALTPATHD_CLIENT_THREADS_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "clock.h"

struct ct_thread {
  struct ct_thread *next;       /* the set's list */
  pthread_t thread;
  bool done;                    /* under the lock: finished; join, free */
};

struct ct_set {
  pthread_mutex_t *lock;        /* the owner's */
  struct ct_thread *head;       /* under *lock */
  unsigned n, max;              /* under *lock; max: the cap */
};

#define CT_FULL  (-1)           /* ct_start: the set is at its cap */
#define CT_NOMEM (-2)           /* ct_start: t was NULL (and not full) */

/* Add t (NULL: the caller ran out of memory for it) and run fn (arg) on a
 * thread of its own.  0 when started; else the caller keeps t and the
 * connection, to refuse and free: CT_FULL, CT_NOMEM, or pthread_create's
 * error (positive). */
static inline int
ct_start (struct ct_set *s, struct ct_thread *t, void *(*fn) (void *),
          void *arg)
{
  pthread_mutex_lock (s->lock);
  bool full = s->n >= s->max;
  if (!full && t) {
    t->done = false;
    t->next = s->head;
    s->head = t;
    s->n++;
  }
  pthread_mutex_unlock (s->lock);
  if (full)
    return CT_FULL;
  if (!t)
    return CT_NOMEM;
  int r = pthread_create (&t->thread, NULL, fn, arg);
  if (r != 0) {
    pthread_mutex_lock (s->lock);
    for (struct ct_thread **pp = &s->head; *pp; pp = &(*pp)->next)
      if (*pp == t) {
        *pp = t->next;
        break;
      }
    s->n--;
    pthread_mutex_unlock (s->lock);
  }
  return r;
}

/* Join and free the threads that are done (all of them when all: the
 * owner has told them to stop). */
static inline void
ct_reap (struct ct_set *s, bool all)
{
  struct ct_thread *gone = NULL;
  pthread_mutex_lock (s->lock);
  for (struct ct_thread **pp = &s->head; *pp;) {
    struct ct_thread *t = *pp;
    if (all || t->done) {
      *pp = t->next;
      t->next = gone;
      gone = t;
      s->n--;
    }
    else
      pp = &t->next;
  }
  pthread_mutex_unlock (s->lock);
  while (gone) {
    struct ct_thread *t = gone;
    gone = t->next;
    pthread_join (t->thread, NULL);
    free (t);                   /* the connection's struct: t is first */
  }
}

/* Write all of buf to a client's non-blocking socket, waiting for room
 * until deadline_ns (CLOCK_MONOTONIC) at most, and giving up at once when
 * stop_fd becomes readable (the owner is stopping).  0, or -1: the client
 * does not read, is gone, or we stop. */
static inline int
ct_send_all (int fd, const char *buf, size_t len, uint64_t deadline_ns,
             int stop_fd)
{
  while (len) {
    ssize_t n = send (fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      buf += n;
      len -= (size_t) n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno != EAGAIN)
      return -1;
    uint64_t now = ap_now_ns ();
    if (now >= deadline_ns)
      return -1;                /* a client that does not read */
    struct pollfd pfd[2] = { { .fd = fd, .events = POLLOUT },
                             { .fd = stop_fd, .events = POLLIN } };
    int r = poll (pfd, 2, (int) ((deadline_ns - now) / 1000000u) + 1);
    if (r < 0 && errno != EINTR)
      return -1;
    if (r > 0 && pfd[1].revents)
      return -1;
  }
  return 0;
}

#endif
