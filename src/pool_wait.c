/* pool_wait.c: how the pool's waiters sleep and are woken, and how its lock is taken when
 * another thread holds it (pool-state.h says why each is so). No pool state but the
 * waiter's own: pool.c decides who waits and who is woken. */
#include "pool-state.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Thread_local PsPoolWakes ps_pool_wakes __attribute__((tls_model("initial-exec")));

static void
futex_wake(gint *word)
{
  syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Drops one reference to `w`: the waiter's own, or one a wake-up owed held. */
void
ps_pool_waiter_unref(PsWaiter *w)
{
  if (__atomic_sub_fetch(&w->refs, 1, __ATOMIC_ACQ_REL) == 0)
    g_free(w);
}

void
ps_pool_flush_wakes(void)
{
  guint n = ps_pool_wakes.n;
  ps_pool_wakes.n = 0;
  for (guint i = 0; i < n; i++) {
    futex_wake(&ps_pool_wakes.waiter[i]->wake);
    ps_pool_waiter_unref(ps_pool_wakes.waiter[i]);
  }
}

/* How many more tries ps_pool_lock makes before it sleeps, a spin-wait hint apart: about
 * what glibc's adaptive mutexes spin (100), a few microseconds. */
#define LOCK_SPINS 100

void
ps_pool_lock_contended(PsPool *pool)
{
  for (guint i = 0; i < LOCK_SPINS; i++) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
    if (g_mutex_trylock(&pool->lock))
      return;
  }
  g_mutex_lock(&pool->lock);
}

/* Under the lock, before a served waiter's `served` is set: wakes `w` once the lock is let
 * go, holding a reference to it until then (the waiter may have left by that time, woken
 * for another reason). When this thread already owes PS_POOL_WAKES wake-ups (only a
 * dispatch of as many waiters does), at once: under the lock and before `served`, the
 * waiter cannot leave. */
void
ps_pool_wake_waiter(PsWaiter *w)
{
  __atomic_add_fetch(&w->wake, 1, __ATOMIC_RELAXED);
  if (ps_pool_wakes.n < PS_POOL_WAKES) {
    __atomic_add_fetch(&w->refs, 1, __ATOMIC_RELAXED);
    ps_pool_wakes.waiter[ps_pool_wakes.n++] = w;
  } else {
    futex_wake(&w->wake);
  }
}

/* Sleeps while *word is `seen`, at most until `until_us` on the monotonic clock
 * (g_get_monotonic_time's), G_MAXINT64 for no bound. Wakes early on a signal or for no
 * reason: callers look again. */
void
ps_pool_futex_wait_until(gint *word, gint seen, gint64 until_us)
{
  struct timespec at, *tp = NULL;
  if (until_us < G_MAXINT64) {
    at.tv_sec = until_us / G_USEC_PER_SEC;
    at.tv_nsec = (until_us % G_USEC_PER_SEC) * 1000;
    tp = &at;
  }
  syscall(SYS_futex, word, FUTEX_WAIT_BITSET_PRIVATE, seen, tp, NULL, FUTEX_BITSET_MATCH_ANY);
}
