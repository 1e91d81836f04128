/* ownpool.h: the program's own pool, for the benchmarks' reference rows (cycle --shared,
 * holders --shared): connections opened before the clock starts, kept on a stack that a
 * mutex guards; a thread takes one (waiting on a condition variable while none is free)
 * and gives it back. No connect, no close, no reset: the bound of any pool of that size. */
#ifndef POOLSHIM_BENCH_OWNPOOL_H
#define POOLSHIM_BENCH_OWNPOOL_H

#include <mysql.h>
#include <pthread.h>
#include <stdlib.h>

typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  MYSQL **free;
  int n;
} OwnPool;

#define OWN_POOL_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0}

/* Room for `size` connections; the program opens them and puts each in with
 * own_pool_give() before its threads start. */
static inline void
own_pool_alloc(OwnPool *p, int size)
{
  p->free = calloc((size_t)size, sizeof *p->free);
}

static inline MYSQL *
own_pool_take(OwnPool *p)
{
  pthread_mutex_lock(&p->lock);
  while (p->n == 0)
    pthread_cond_wait(&p->cond, &p->lock);
  MYSQL *m = p->free[--p->n];
  pthread_mutex_unlock(&p->lock);
  return m;
}

static inline void
own_pool_give(OwnPool *p, MYSQL *m)
{
  pthread_mutex_lock(&p->lock);
  p->free[p->n++] = m;
  pthread_cond_signal(&p->cond);
  pthread_mutex_unlock(&p->lock);
}

/* Closes every connection on the stack (all of them once the threads are joined). */
static inline void
own_pool_close(OwnPool *p)
{
  while (p->n > 0)
    mysql_close(p->free[--p->n]);
  free(p->free);
  p->free = NULL;
}

#endif
