/* pool.c: idle queues, counts, limits and waiters under one mutex (the keys and the read-only
 * views are pool_key.c's; taking idle connections out and filling, pool_idle.c's; how a
 * waiter sleeps and is woken, pool_wait.c's). No MySQL call, no I/O and no blocking other
 * than a waiter's sleep on its futex word.
 *
 * Waiting is FIFO with bounded barging. Waiters of a key are served in arrival order, and
 * a newcomer never overtakes them, with one exception: a thread that returns a connection
 * and came straight back for the previous one (within PS_POOL_BARGE_GRACE_US of its last
 * return) is a looping thread; its return is held back for it (the connection stays idle,
 * marked held) and its next acquire within the grace re-takes it without a context switch,
 * as HikariCP's ConcurrentBag, Linux's mutexes and Go's sync.Mutex let a running thread
 * re-take what it just gave back. Handing a connection to a sleeping waiter costs a
 * wake-up, and the releaser, coming straight back, a sleep: one thread switch per cycle,
 * most of a cycle's cost when hundreds of threads share a small pool. The bounds:
 * - Starvation: a thread re-takes its returns for at most PS_POOL_QUANTUM_US from the
 *   acquire that began its run (one that re-took nothing: it waited, or nobody waited);
 *   then its return goes to the oldest waiter and it queues behind the others, like a
 *   scheduler's time slice. Each connection thus serves one run of at most a quantum (plus
 *   its last loan and a grace) per turn, so a waiter with P waiters ahead of it on a key
 *   of N connections waits at most about ceil((P + 1) / N) such runs, however the others
 *   loop. A global bound on the oldest waiter's age would not do: when hundreds of threads
 *   arrive at once, every waiter soon passes any fixed age, and the pool would hand over
 *   at every return (strict FIFO) from then on.
 * - Stranding: a held connection is re-taken by its thread within the grace, or it goes to
 *   the oldest waiter at the first pool operation after the grace; when nothing else
 *   happens, the key's poller (one of its waiters, woken every PS_POOL_POLL_US while
 *   holds happen) hands it over. A thread that does other work between close and
 *   connect (a web request, Django's ORM) is not looping, and its returns go straight to
 *   the oldest waiter, as with strict FIFO.
 * Waiters of other keys are unaffected, and POOLSHIM_TIMEOUT bounds every wait as before. */
#include "pool-state.h"

#include <string.h>

#include "gil.h"

static inline __attribute__((always_inline)) void
acquire_grain(PsPool *pool, PsPoolKey *key, gint64 now_us, gint64 deadline_us,
              gboolean may_grow, gconstpointer token, gint64 poll_us, gint64 *arrived,
              PsGrant *grant);

/* What the calling thread last did with the pool: whether it is looping (came straight
 * back after its last return) and whether its last return was held back for it. The
 * pointers are only compared, never followed: a freed and reused key costs at most one
 * return held back for a grace. */
typedef struct {
  PsPool *pool;
  PsPoolKey *key;
  gint64 released_us; /* when this thread last returned a connection of `key` */
  gboolean held;      /* that return was held back for this thread */
  PsPool *acq_pool;
  PsPoolKey *acq_key;
  gboolean looping;   /* its last acquire (of acq_key) came within the grace of a return */
  gint64 run_since_us; /* the acquire that began its run: it re-takes for a quantum from it */
  gboolean hold_next;  /* its next return is held back for it (ps_pool_hold_next_release) */
  gboolean self_held;  /* its last return was so held: re-taken whatever the time */
} PsThreadHistory;

/* initial-exec: the library is preloaded, so its TLS is in the static block, and a
 * general-dynamic access (__tls_get_addr) on every acquire and release costs ~40
 * instructions per connect+close. */
static _Thread_local PsThreadHistory history __attribute__((tls_model("initial-exec")));

static const char *const reason_names[PS_CLOSE_REASONS] = {
  [PS_CLOSE_LIFETIME] = "lifetime",         [PS_CLOSE_IDLE_TIMEOUT] = "idle_timeout",
  [PS_CLOSE_DEAD] = "dead",                 [PS_CLOSE_UNCLEAN] = "error",
  [PS_CLOSE_RESET_FAILED] = "reset_failed", [PS_CLOSE_OVER_LIMIT] = "over_limit",
  [PS_CLOSE_SHUTDOWN] = "shutdown",         [PS_CLOSE_REVOKED] = "revoked",
};

const gint64 ps_wait_bucket_us[PS_WAIT_BUCKETS - 1] = {100, 1000, 10000, 100000, 1000000,
                                                       10000000};

/* Every close is counted twice: for the process and for its key. */
static void
count_closed(PsPool *pool, PsPoolKey *key, PsCloseReason reason)
{
  pool->counts.closed++;
  pool->counts.closed_by[reason]++;
  key->counts.closed++;
  key->counts.closed_by[reason]++;
}

static void
count_wait(PsPoolKey *key, gint64 waited_us)
{
  guint b = 0;
  while (b < PS_WAIT_BUCKETS - 1 && waited_us > ps_wait_bucket_us[b])
    b++;
  key->counts.wait_buckets[b]++;
  key->counts.wait_count++;
  key->counts.wait_sum_us += (guint64)MAX(waited_us, 0);
}

const char *
ps_close_reason_name(PsCloseReason reason)
{
  return reason < PS_CLOSE_REASONS ? reason_names[reason] : "unknown";
}

PsPool *
ps_pool_new(const PsPoolLimits *limits)
{
  PsPool *pool = g_new0(PsPool, 1);
  g_mutex_init(&pool->lock);
  pool->limits = *limits;
  if (pool->limits.per_key == 0)
    pool->limits.per_key = 1;
  ps_pool_keys_init(pool);
  g_queue_init(&pool->waiters);
  pool->now = g_get_monotonic_time;
  return pool;
}

void
ps_pool_set_ready_check(PsPool *pool, gboolean (*ready)(PsItem *item), gboolean grow)
{
  ps_pool_lock(pool);
  pool->ready = ready;
  pool->grow_past_busy = grow;
  ps_pool_unlock(pool);
}

gint64
ps_pool_seen_us(PsPool *pool)
{
  return __atomic_load_n(&pool->seen_us, __ATOMIC_RELAXED);
}

void
ps_pool_set_clock(PsPool *pool, gint64 (*now)(void))
{
  pool->now = now;
}

guint
ps_pool_size_of(const PsPool *pool)
{
  return pool->limits.per_key;
}

/* Removes an idle item from its queue and from every count: it becomes a victim. */
PsItem *
ps_pool_unlink_idle(PsPool *pool, PsItem *item, PsCloseReason reason)
{
  PsPoolKey *key = item->owner;
  g_queue_unlink(&key->idle, &item->link);
  key->open--;
  pool->total_open--;
  item->close_reason = reason;
  count_closed(pool, key, reason);
  return item;
}

static gboolean
expired(const PsPool *pool, const PsItem *item, gint64 now, PsCloseReason *why)
{
  if (now >= item->expires_us) {
    *why = PS_CLOSE_LIFETIME;
    return TRUE;
  }
  gint64 idle_limit = item->owner->settings.idle_timeout_us;
  /* The idle timeout trims a pool down to POOLSHIM_MIN_IDLE, not below (HikariCP's rule);
   * the cap below the server's wait_timeout applies to every connection. */
  if (item->owner->idle.length <= item->owner->settings.min_idle)
    idle_limit = 0;
  gint64 cap = item->owner->idle_cap_us;
  if (cap > 0 && (idle_limit <= 0 || cap < idle_limit))
    idle_limit = cap;
  if (idle_limit > 0 && now - item->idle_since_us >= idle_limit) {
    *why = PS_CLOSE_IDLE_TIMEOUT;
    return TRUE;
  }
  return FALSE;
}

/* Drops expired items from the cold end of a key's idle queue. */
void
ps_pool_sweep_key(PsPool *pool, PsPoolKey *key, gint64 now, GSList **victims)
{
  GList *l = key->idle.tail;
  while (l) {
    GList *prev = l->prev;
    PsItem *item = l->data;
    PsCloseReason why;
    if (expired(pool, item, now, &why))
      *victims = g_slist_prepend(*victims, ps_pool_unlink_idle(pool, item, why));
    l = prev;
  }
}

static PsItem *
oldest_idle_elsewhere(PsPool *pool, PsPoolKey *except)
{
  PsItem *oldest = NULL;
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, pool->keys);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    PsPoolKey *key = value;
    if (key == except || !key->idle.tail)
      continue;
    PsItem *cand = key->idle.tail->data;
    if (!oldest || cand->idle_since_us < oldest->idle_since_us)
      oldest = cand;
  }
  return oldest;
}

/* How many idle connections one request asks pool->ready about before it settles. */
#define PS_READY_SCAN 8

/* Takes `item` out of the idle queue and lends it. */
static void
serve_idle(PsPool *pool, PsPoolKey *key, PsItem *item, gint64 now, PsGrant *grant)
{
  g_queue_unlink(&key->idle, &item->link);
  item->held_until_us = 0;
  key->lent++;
  pool->counts.borrowed++;
  pool->counts.served_idle++;
  key->counts.borrowed++;
  key->counts.served_idle++;
  grant->kind = PS_GRANT_IDLE;
  grant->item = item;
}

/* Room for one more connection of `key` without closing another key's idle one. */
gboolean
ps_pool_room_to_grow(const PsPool *pool, const PsPoolKey *key)
{
  return key->open < key->settings.pool_size &&
         (!pool->limits.total || pool->total_open < pool->limits.total);
}

/* Whether an idle item may be lent now: an expired one becomes one of the grant's victims,
 * one held back for a looping thread (`skip_held`, within its grace) is passed over. */
static inline gboolean
lendable(PsPool *pool, PsItem *item, gint64 now, gboolean skip_held, PsGrant *grant)
{
  PsCloseReason why;
  if (expired(pool, item, now, &why)) {
    grant->victims = g_slist_prepend(grant->victims, ps_pool_unlink_idle(pool, item, why));
    return FALSE;
  }
  return !(skip_held && item->held_until_us > now);
}

/* Serves one request for `key` if the limits allow it now. The most recently returned idle
 * connection that is ready goes first (a small warm set stays in use, the rest can reach
 * the idle timeout). When none of them is ready (each still owes the replies of the reset
 * sent when it came back) and the key may grow, a new connection is opened: the pool then
 * settles at enough connections that a returned one has finished its reset by the time it
 * is lent again. Without room to grow (or when growing is off), the one returned longest
 * ago is lent. `skip_held`: connections held back for a looping thread (and still within
 * its grace) are not lent. */
static gboolean
try_serve(PsPool *pool, PsPoolKey *key, gint64 now, gboolean may_grow, gboolean skip_held,
          PsGrant *grant)
{
  guint asked = 0;
  GList *l = key->idle.head;
  while (l) {
    PsItem *item = l->data;
    l = l->next;
    if (!lendable(pool, item, now, skip_held, grant))
      continue;
    if (!pool->ready || pool->ready(item)) {
      serve_idle(pool, key, item, now, grant);
      return TRUE;
    }
    if (++asked == PS_READY_SCAN)
      break;
  }
  if (key->idle.head && (!may_grow || !pool->grow_past_busy || !ps_pool_room_to_grow(pool, key))) {
    /* Every idle one is busy with its reset and the key is full: the oldest return. */
    for (GList *t = key->idle.tail; t;) {
      PsItem *item = t->data;
      t = t->prev;
      if (!lendable(pool, item, now, skip_held, grant))
        continue;
      serve_idle(pool, key, item, now, grant);
      return TRUE;
    }
  }
  if (key->open >= key->settings.pool_size)
    return FALSE;
  if (pool->limits.total && pool->total_open >= pool->limits.total) {
    PsItem *victim = oldest_idle_elsewhere(pool, key);
    if (!victim)
      return FALSE;
    grant->victims =
      g_slist_prepend(grant->victims, ps_pool_unlink_idle(pool, victim, PS_CLOSE_OVER_LIMIT));
  }
  grant->busy_idle = key->idle.length;
  key->open++;
  pool->total_open++;
  grant->kind = PS_GRANT_OPEN;
  grant->item = NULL;
  return TRUE;
}

static gboolean
has_waiter_for(PsPool *pool, PsPoolKey *key)
{
  return key->waiting > 0;
}

/* Whether this thread's run may go on: it began less than a quantum ago. */
static inline gboolean
in_quantum(gint64 now)
{
  return now - history.run_since_us < PS_POOL_QUANTUM_US;
}

/* Whether an idle connection of the key is held back for a looping thread. */
static gboolean
has_held(const PsPoolKey *key)
{
  for (const GList *l = key->idle.head; l; l = l->next)
    if (((const PsItem *)l->data)->held_until_us)
      return TRUE;
  return FALSE;
}

/* While a connection of the key is held back, one of its waiters wakes every
 * PS_POOL_POLL_US to hand it to the oldest waiter once the grace is over, should nothing
 * else happen in the pool: so a thread that does not come back never strands it. The
 * newest waiter is picked: it waits longest for its own turn, so polling changes hands (a
 * wake-up) once in a while, not at every hand-over. */
static void
ensure_poller(PsPoolKey *key)
{
  if (key->poller || !key->waitq.tail || !has_held(key))
    return;
  key->poller = key->waitq.tail->data;
  ps_pool_wake_waiter(key->poller);
}

/* Under the lock: the end of w's wait (served or timed out) in its grant and the counts. */
static void
end_wait(PsPool *pool, PsWaiter *w, gint64 now)
{
  w->grant->now_us = now;
  w->grant->waited_us = now - w->since_us;
  count_wait(w->key, w->grant->waited_us);
  __atomic_store_n(&pool->seen_us, now, __ATOMIC_RELAXED);
}

static void
unlink_waiter(PsPool *pool, PsWaiter *w)
{
  PsPoolKey *key = w->key;
  g_queue_unlink(&pool->waiters, &w->link);
  g_queue_unlink(&key->waitq, &w->key_link);
  key->waiting--;
  if (key->grain_waiter == w) {
    key->grain_waiter = NULL;
    __atomic_store_n(&key->grain_need_poke, 0, __ATOMIC_RELAXED);
  }
  if (key->poller == w) {
    key->poller = NULL;
    ensure_poller(key);
  }
}

/* Serves waiters in arrival order after anything that may have freed capacity. A key that
 * cannot serve one waiter cannot serve its later ones either in this pass (serving never
 * adds capacity, and a later waiter is younger, so no more entitled to a held connection),
 * so they are skipped, and the pass ends once every waiter is accounted for: a release
 * with hundreds of waiters of one key costs one attempt, not hundreds. */
void
ps_pool_dispatch(PsPool *pool, gint64 now)
{
  guint pass = ++pool->dispatch_pass;
  guint undecided = pool->waiters.length;
  GList *l = pool->waiters.head;
  while (l && undecided > 0) {
    GList *next = l->next;
    PsWaiter *w = l->data;
    PsPoolKey *key = w->key;
    if (key->full_in_pass != pass) {
      PsGrant *grant = w->grant;
      if (try_serve(pool, key, now, w->may_grow, TRUE, grant)) {
        unlink_waiter(pool, w);
        undecided--;
        /* What the waiter did under the lock once awake, done here: it does not take the
         * lock again. */
        end_wait(pool, w, now);
        ps_pool_wake_waiter(w);
        __atomic_store_n(&w->served, TRUE, __ATOMIC_RELEASE); /* w is the waiter's now */
      } else {
        key->full_in_pass = pass;
        undecided -= MIN(undecided, key->waiting);
      }
    }
    l = next;
  }
}

void
ps_pool_acquire_grain(PsPool *pool, PsPoolKey *key, gint64 now_us, gboolean may_grow,
                      gconstpointer token, gint64 poll_us, gint64 deadline_us,
                      gint64 *arrived, PsGrant *grant)
{
  acquire_grain(pool, key, now_us, deadline_us, may_grow, token, poll_us, arrived, grant);
}

gboolean
ps_pool_grain_done(PsPool *pool, PsPoolKey *key, gconstpointer token)
{
  gboolean named = FALSE;
  ps_pool_lock(pool);
  if (key->grain_token == token) {
    key->grain_token = NULL;
    key->grain_poked = FALSE;
    /* The oldest grain waiter of the key polls from now on: what it takes is its own, so
     * takes serve the key's waiters in their order of arrival, like connections given
     * back to the pool. (The newest polled before: with every connection held in a
     * handle, the oldest then waited for the hand-over bound, 100 ms, and a full reset.)
     * It sleeps on until a handle becomes takeable (the caller's poke or a settle's):
     * waking it now to look, as before, cost a wake-up and a sleep per take when none
     * was. */
    for (GList *l = key->waitq.head; l; l = l->next) {
      PsWaiter *w = l->data;
      if (w->grain) {
        key->grain_token = w->grain;
        key->grain_waiter = w;
        __atomic_store_n(&key->grain_need_poke, 1, __ATOMIC_SEQ_CST);
        named = TRUE;
        break;
      }
    }
  }
  ps_pool_unlock(pool);
  return named;
}

void
ps_pool_key_poke(PsPool *pool, PsPoolKey *key)
{
  if (!__atomic_exchange_n(&key->grain_need_poke, 0, __ATOMIC_SEQ_CST))
    return;
  ps_pool_lock(pool);
  if (key->grain_token) {
    key->grain_poked = TRUE;
    if (key->grain_waiter)
      ps_pool_wake_waiter(key->grain_waiter);
  }
  ps_pool_unlock(pool);
}

void
ps_pool_lock_for_fork(PsPool *pool)
{
  ps_pool_lock(pool);
}

void
ps_pool_unlock_after_fork(PsPool *pool)
{
  ps_pool_unlock(pool);
}

static void
acquire(PsPool *pool, PsPoolKey *key, gint64 now_us, gint64 deadline_us, gboolean may_grow,
        PsGrant *grant)
{
  acquire_grain(pool, key, now_us, deadline_us, may_grow, NULL, 0, NULL, grant);
}

/* Queues w by its arrival (since_us): a grain waiter that looked for takeable handles
 * between its waits, or a connect that lost what it was served (ps_pool_acquire_again),
 * keeps its place, after every waiter that arrived at or before it. The queue is in
 * arrival order, give or take microseconds (a connect's first acquire may read the clock
 * just before the lock), and a waiter queued this way has waited longest or nearly so:
 * the walk starts at the head. From the tail it
 * crossed every later waiter, each a cache miss on another thread's stack, under the
 * pool's lock (64 handles on a pool of 8: 3% of the program's CPU time in this loop). */
static void
insert_by_arrival(GQueue *q, GList *link, gint64 since_us)
{
  GList *l = q->head;
  while (l && ((PsWaiter *)l->data)->since_us <= since_us)
    l = l->next;
  if (l)
    g_queue_insert_before_link(q, l, link);
  else
    g_queue_push_tail_link(q, link);
}

static void
queue_waiter(PsPool *pool, PsPoolKey *key, PsWaiter *w)
{
  insert_by_arrival(&pool->waiters, &w->link, w->since_us);
  insert_by_arrival(&key->waitq, &w->key_link, w->since_us);
}

/* The grain poller's wake-up while no handle is known to be in its delay: a settle that
 * found it asleep pokes it, this only bounds a poke missed in a race. */
#define GRAIN_SLICE_US ((gint64)5000)

/* Inlined into acquire() with token NULL: the connect grain's acquire pays nothing for the
 * transaction grain's poller. */
static inline __attribute__((always_inline)) void
acquire_grain(PsPool *pool, PsPoolKey *key, gint64 now_us, gint64 deadline_us,
              gboolean may_grow, gconstpointer token, gint64 poll_us, gint64 *arrived,
              PsGrant *grant)
{
  memset(grant, 0, sizeof *grant);
  ps_pool_lock(pool);
  gint64 now = now_us ? now_us : pool->now();
  __atomic_store_n(&pool->seen_us, now, __ATOMIC_RELAXED);
  grant->now_us = now;
  ps_pool_sweep_key(pool, key, now, &grant->victims);
  /* Nobody overtakes a waiter of the same key, except a looping thread re-taking what was
   * held back for it, within its quantum (see the top). */
  gboolean quick = history.pool == pool && history.key == key &&
                   now - history.released_us <= PS_POOL_BARGE_GRACE_US;
  gboolean barge = (quick && history.held && in_quantum(now)) ||
                   (history.self_held && history.pool == pool && history.key == key &&
                    now - history.released_us <= PS_POOL_SELF_HOLD_US);
  history.held = history.self_held = FALSE;
  history.acq_pool = pool;
  history.acq_key = key;
  history.looping = quick;
  /* A waiter that comes back (arrived: its first wait) and arrived before every queued one
   * is served first, as if it had stayed in the queue. */
  gboolean eldest = arrived && *arrived && *arrived < ps_pool_oldest_since(key);
  if ((!has_waiter_for(pool, key) || barge || eldest) &&
      try_serve(pool, key, now, may_grow, FALSE, grant)) {
    if (!barge)
      history.run_since_us = now; /* re-took nothing: a run begins */
    count_wait(key, 0);
    ps_pool_unlock_quiet(pool);
    return;
  }
  /* The deadline is on the monotonic clock, as the wait below (pool->now is a test's own
   * clock in some tests: against it, a deadline on a machine up for less than its start
   * was already past). */
  if (deadline_us <= g_get_monotonic_time()) {
    /* Only a try (the transaction grain takes from an idle handle before it waits). */
    grant->kind = PS_GRANT_TIMEOUT;
    ps_pool_unlock(pool);
    return;
  }
  if (token && !key->grain_token)
    key->grain_token = token; /* the key's grain poller from now on (ps_pool_grain_done) */
  if (token && key->grain_token == token && key->grain_poked) {
    key->grain_poked = FALSE; /* a handle became takeable while it looked: look again */
    grant->kind = PS_GRANT_TIMEOUT;
    grant->turn = TRUE;
    ps_pool_unlock(pool);
    return;
  }
  gint64 since = arrived && *arrived ? MIN(*arrived, now) : now;
  if (arrived)
    *arrived = since;
  /* On the heap, not the stack: a wake-up owed may reach it after the wait ended (refs). */
  PsWaiter *w = g_new(PsWaiter, 1);
  *w = (PsWaiter){.key = key, .grant = grant, .may_grow = may_grow, .since_us = since,
                  .grain = token, .refs = 1};
  w->link.data = w;
  w->key_link.data = w;
  if (since < now) {
    queue_waiter(pool, key, w);
  } else {
    g_queue_push_tail_link(&pool->waiters, &w->link);
    g_queue_push_tail_link(&key->waitq, &w->key_link);
  }
  key->waiting++;
  ensure_poller(key);
  if (since == now) { /* a grain poller's later acquires are the same wait */
    grant->first_wait = key->counts.waits == 0;
    pool->counts.waits++;
    key->counts.waits++;
  }
  gint64 grain_wake = 0; /* as the grain poller: when it looks for takeable handles */
  for (;;) {
    gint64 wake = deadline_us;
    if (key->poller == w)
      wake = MIN(wake, g_get_monotonic_time() + PS_POOL_POLL_US);
    gboolean polling = token && key->grain_token == token;
    if (polling) {
      if (!grain_wake)
        grain_wake = poll_us ? poll_us : g_get_monotonic_time() + GRAIN_SLICE_US;
      wake = MIN(wake, grain_wake);
      key->grain_waiter = w;
      __atomic_store_n(&key->grain_need_poke, !poll_us, __ATOMIC_SEQ_CST);
    }
    gint seen = w->wake;
    ps_gil_release();
    ps_pool_unlock(pool);
    ps_pool_futex_wait_until(&w->wake, seen, wake);
    if (__atomic_load_n(&w->served, __ATOMIC_ACQUIRE))
      break; /* the dispatcher wrote the grant and unlinked w */
    ps_pool_lock(pool);
    if (key->grain_waiter == w) {
      key->grain_waiter = NULL;
      __atomic_store_n(&key->grain_need_poke, 0, __ATOMIC_RELAXED);
    }
    if (__atomic_load_n(&w->served, __ATOMIC_ACQUIRE)) {
      ps_pool_unlock(pool);
      break;
    }
    gint64 mono = g_get_monotonic_time();
    if (mono >= deadline_us) {
      unlink_waiter(pool, w);
      grant->kind = PS_GRANT_TIMEOUT;
      pool->counts.wait_timeouts++;
      key->counts.wait_timeouts++;
      end_wait(pool, w, pool->now());
      ps_pool_unlock(pool);
      break;
    }
    if (token && key->grain_token == token &&
        (key->grain_poked || (grain_wake && mono >= grain_wake))) {
      /* The poller's turn to look (not a timeout: the caller acquires again, its wait
       * goes on). */
      key->grain_poked = FALSE;
      unlink_waiter(pool, w);
      grant->kind = PS_GRANT_TIMEOUT;
      grant->turn = TRUE;
      ps_pool_unlock(pool);
      ps_pool_waiter_unref(w);
      return;
    }
    if (key->poller == w) {
      /* Hands over what is held past its grace (to the oldest waiter, maybe this one). */
      gint64 t = pool->now();
      ps_pool_dispatch(pool, t);
      if (w->served) {
        ps_pool_unlock(pool);
        break;
      }
      if (!has_held(key) && t - key->last_hold_us >= PS_POOL_POLL_US)
        key->poller = NULL; /* no more holds: the next one elects a poller again */
    }
  }
  ps_pool_waiter_unref(w);
  history.run_since_us = grant->now_us; /* served after waiting: a run begins */
}

void
ps_pool_acquire(PsPool *pool, PsPoolKey *key, gint64 deadline_us, PsGrant *grant)
{
  acquire(pool, key, 0, deadline_us, TRUE, grant);
}

void
ps_pool_acquire_at(PsPool *pool, PsPoolKey *key, gint64 now_us, gint64 deadline_us,
                   PsGrant *grant)
{
  acquire(pool, key, now_us, deadline_us, TRUE, grant);
}

void
ps_pool_acquire_no_grow(PsPool *pool, PsPoolKey *key, gint64 deadline_us, PsGrant *grant)
{
  acquire(pool, key, 0, deadline_us, FALSE, grant);
}

void
ps_pool_acquire_again(PsPool *pool, PsPoolKey *key, gboolean may_grow, gint64 arrived_us,
                      gint64 deadline_us, PsGrant *grant)
{
  gint64 arrived = arrived_us;
  acquire_grain(pool, key, 0, deadline_us, may_grow, NULL, 0, &arrived, grant);
}

/* Records a new physical connection of `key` (item allocated by the caller, outside the
 * lock) and counts it as opened; under the pool's lock. */
void
ps_pool_new_item(PsPool *pool, PsItem *item, PsPoolKey *key, gpointer conn, gint64 now)
{
  item->conn = conn;
  item->owner = key;
  key->items++;
  item->link.data = item;
  item->created_us = now;
  item->idle_since_us = now;
  gint64 lifetime = key->settings.max_lifetime_us;
  if (lifetime > 0) {
    /* Up to 2.5% earlier, so connections opened together do not all expire together:
     * spread by a Fibonacci hash of the count opened, not g_random (its global lock, held
     * by another thread at fork(), would stop a child's first connect for good). */
    guint spread = (guint)(pool->counts.opened * 2654435761u) % 1000;
    gint64 jitter = spread * (lifetime / 40000);
    item->expires_us = now + lifetime - jitter;
  } else {
    item->expires_us = G_MAXINT64;
  }
  pool->counts.opened++;
  key->counts.opened++;
}

PsItem *
ps_pool_opened(PsPool *pool, PsPoolKey *key, gpointer conn)
{
  PsItem *item = g_new0(PsItem, 1);
  ps_pool_lock(pool);
  ps_pool_new_item(pool, item, key, conn, pool->now());
  key->lent++;
  pool->counts.borrowed++;
  key->counts.borrowed++;
  ps_pool_unlock(pool);
  return item;
}

void
ps_pool_hold_next_release(gboolean on)
{
  history.hold_next = on;
}

void
ps_pool_open_failed(PsPool *pool, PsPoolKey *key)
{
  ps_pool_lock(pool);
  key->open--;
  pool->total_open--;
  ps_pool_dispatch(pool, pool->now());
  ps_pool_unlock(pool);
}

gboolean
ps_pool_release(PsPool *pool, PsItem *item, gboolean reset)
{
  PsPoolKey *key = item->owner;
  ps_pool_lock(pool);
  gint64 now = pool->now();
  __atomic_store_n(&pool->seen_us, now, __ATOMIC_RELAXED);
  key->lent--;
  if (reset)
    key->counts.resets++;
  gboolean kept = now < item->expires_us;
  /* A looping thread's return stays here for it, within its quantum. */
  gboolean self = kept && history.hold_next;
  gboolean hold = self || (kept && history.looping && history.acq_pool == pool &&
                           history.acq_key == key && has_waiter_for(pool, key) &&
                           in_quantum(now));
  history.hold_next = FALSE;
  history.pool = pool;
  history.key = key;
  history.released_us = now;
  history.held = hold;
  history.self_held = self;
  if (kept) {
    item->idle_since_us = now;
    gint64 grace = self ? PS_POOL_SELF_HOLD_US : PS_POOL_BARGE_GRACE_US;
    item->held_until_us = hold ? now + grace : 0;
    g_queue_push_head_link(&key->idle, &item->link);
    if (hold) {
      key->last_hold_us = now;
      ensure_poller(key);
    }
  } else {
    key->open--;
    pool->total_open--;
    item->close_reason = PS_CLOSE_LIFETIME;
    count_closed(pool, key, PS_CLOSE_LIFETIME);
  }
  if (pool->waiters.head) /* nobody waits: most returns (and no call for it) */
    ps_pool_dispatch(pool, now);
  ps_pool_unlock(pool);
  return kept;
}

void
ps_pool_discard(PsPool *pool, PsItem *item, PsCloseReason reason)
{
  PsPoolKey *key = item->owner;
  ps_pool_lock(pool);
  key->lent--;
  key->open--;
  pool->total_open--;
  item->close_reason = reason;
  count_closed(pool, key, reason);
  ps_pool_dispatch(pool, pool->now());
  ps_pool_unlock(pool);
}
