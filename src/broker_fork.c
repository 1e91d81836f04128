/* broker_fork.c: fork() and the broker: the pthread_atfork handlers (every lock taken in the
 * lock order at the top of broker.c, released on both sides) and the child's first call,
 * which gives it a pool of its own. No I/O inside fork(); no other pool policy (broker.c). */
#include "broker-state.h"

#include <pthread.h>
#include <string.h>

#include "gil.h"
#include "handle.h"
#include "hostslots.h"
#include "house.h"
#include "log.h"
#include "phys.h"
#include "pool.h"

/* Every pool: the process's own and those it inherited from its parents (a grandchild
 * closes handles of those too). Under B.lock: the list changes only under it. */
static void
pools_for_fork(void (*fn)(PsPool *pool))
{
  if (B.pool)
    fn(B.pool);
  for (GSList *l = B.inherited; l; l = l->next)
    fn(l->data);
}

/* fork() takes every lock in the lock order (top of broker.c), so that a child never
 * inherits one held by another thread. None is held across network I/O, so fork() waits
 * for memory work only, whatever the server does (the housekeeper's connects hold none). */
void
ps_broker_before_fork(void)
{
  g_mutex_lock(&B.init_lock);
  ps_gil_lock_for_fork();
  g_mutex_lock(&B.house_lock);
  g_mutex_lock(&B.stats_lock);
  g_mutex_lock(&B.lock);
  ps_phys_lock_for_fork();
  pools_for_fork(ps_pool_lock_for_fork);
  ps_host_slots_before_fork();
  ps_handle_lock_for_fork();
}

void
ps_broker_after_fork_parent(void)
{
  ps_handle_unlock_after_fork(FALSE);
  ps_host_slots_after_fork(FALSE);
  pools_for_fork(ps_pool_unlock_after_fork);
  ps_phys_unlock_after_fork();
  g_mutex_unlock(&B.lock);
  g_mutex_unlock(&B.stats_lock);
  g_mutex_unlock(&B.house_lock);
  ps_gil_unlock_after_fork();
  g_mutex_unlock(&B.init_lock);
}

void
ps_broker_after_fork_child(void)
{
  ps_handle_unlock_after_fork(TRUE);
  /* The parent's host-wide slots are the parent's: the child's copies of their descriptors
   * are closed (never unlocked) so that they die with the parent. */
  ps_host_slots_after_fork(TRUE);
  pools_for_fork(ps_pool_unlock_after_fork);
  ps_phys_unlock_after_fork();
  /* The real work waits for the child's first call: no I/O in here. A parent that never
   * made its first call has no pool: the child makes its own at its first call. */
  if (B.pool)
    B.forked = TRUE;
  g_mutex_unlock(&B.lock);
  g_mutex_unlock(&B.stats_lock);
  /* The parent's housekeeper may be inside a connect: no thread of the child is. The
   * connection it is opening is the parent's, in no pool yet: the child never sees it
   * (its memory and socket are left alone). The child's own housekeeper starts with its
   * first call (ps_broker_adopt_fork). */
  B.house_busy = FALSE;
  g_mutex_unlock(&B.house_lock);
  ps_gil_unlock_after_fork();
  g_mutex_unlock(&B.init_lock);
}

/* Registered when the library is loaded, not at the first call: a fork() during another
 * thread's first call must wait for it (init_lock). They cost a process that never pools
 * a few uncontended locks per fork(). */
__attribute__((constructor)) static void
register_fork_handlers(void)
{
  pthread_atfork(ps_broker_before_fork, ps_broker_after_fork_parent, ps_broker_after_fork_child);
}

/* In a forked child: the inherited connections carry the parent's sessions. Close ours
 * without a word to the server and start an empty pool of the child's own. */
void
ps_broker_adopt_fork(void)
{
  /* Acquire, paired with the release below: a thread that sees FALSE without the lock
   * also sees the child's B.pool (the first call may come from two threads at once). */
  if (!__atomic_load_n(&B.forked, __ATOMIC_ACQUIRE))
    return;
  PsPool *old = NULL;
  g_mutex_lock(&B.lock);
  if (B.forked) {
    old = B.pool;
    B.inherited = g_slist_prepend(B.inherited, old);
    B.pool = ps_broker_new_pool();
    __atomic_store_n(&B.forked, FALSE, __ATOMIC_RELEASE);
    /* The child's counters are its own, like its new pool's (read atomically, unlocked). */
    __atomic_store_n(&B.resets, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&B.unpooled, 0, __ATOMIC_RELAXED);
    ps_gil_counts_clear();
    memset(B.plans, 0, sizeof B.plans);
    /* The parent's lent connections: their slot descriptors were closed at fork. */
    ps_phys_orphan_attached();
  }
  g_mutex_unlock(&B.lock);
  if (old && !__atomic_load_n(&B.stopping, __ATOMIC_ACQUIRE)) {
    /* Threads do not survive fork(). Started after B.lock is released: the stats writer
     * takes stats_lock, which comes before B.lock in the lock order. Not when the child's
     * first call is its drain (exit, mysql_library_end). */
    ps_house_start();
  }
  if (old) {
    ps_debug("fork detected: abandoning the parent's idle connections");
    ps_broker_close_victims(ps_pool_take_idle(old, TRUE, PS_CLOSE_SHUTDOWN), TRUE);
    /* `old` itself stays allocated: the parent's lent handles still point into it. */
  }
}
