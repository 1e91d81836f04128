/* pool-state.h: the pool's structures, shared by pool.c (connections, limits, waiters),
 * pool_key.c (keys and read-only views), pool_idle.c (taking idle connections out,
 * filling to the minimum) and pool_wait.c (a waiter's sleep and wake-up, the lock's spin)
 * and by nothing else. Every field is under
 * PsPool.lock unless its comment says atomic. */
#pragma once
#include <glib.h>

#include "pool.h"

typedef struct PsWaiter PsWaiter;

struct PsPoolKey {
  guint8 digest[PS_KEY_DIGEST_LEN];
  char *label;
  char *base_label; /* as asked for, without the "#n" */
  PsPool *pool;
  PsPoolSettings settings;
  PsKeyCounts counts;
  PsGrainCounts grain; /* atomic, outside the lock (pool.h) */
  guint serial;  /* creation order, for stable statistics output */
  GQueue idle;   /* of PsItem.link; head = most recently returned */
  guint open;    /* idle + lent + slots being opened */
  guint lent;
  guint waiting;
  gint wanted;     /* atomic: transaction-grain waiters (ps_pool_key_want) */
  /* The transaction grain's one poller (ps_pool_acquire_grain): the token of the waiter
   * that looks for takeable handles, its waiter while it waits, a poke it has not seen
   * yet, and whether it sleeps without a delay timer (atomic: a settle pokes it then). */
  gconstpointer grain_token;
  PsWaiter *grain_waiter;
  gboolean grain_poked;
  gint grain_need_poke;
  guint filling;   /* slots reserved to open idle connections in the background */
  gpointer data;
  GDestroyNotify data_destroy;
  gint64 idle_cap_us; /* 0 = none; below the server's wait_timeout */
  guint full_in_pass; /* dispatch pass in which this key could serve no more waiters */
  GQueue waitq;       /* of PsWaiter.key_link: this key's waiters, in arrival order */
  PsWaiter *poller;   /* the waiter that wakes every PS_POOL_POLL_US while holds happen */
  gint64 last_hold_us; /* the last return held back for a looping thread */
  /* What keeps the key alive (ps_pool_forget_unused frees it only when all are zero):
   * callers between ps_pool_key/key_find/key_list and the matching release, and PsItems
   * (counted from their creation to ps_pool_item_free, also while closed as victims). */
  guint holds;
  guint items;
  gint64 last_used_us; /* the last hold released or item freed */
  gint64 proved_us;    /* atomic: the last time the server accepted the key's credentials */
  gint revoked;        /* atomic: the server refused them since (ps_pool_key_set_revoked) */
};

/* A waiter sleeps on its own futex word, `wake`, not on the pool's lock: whoever wakes it
 * bumps the word under the lock and makes the system call after letting the lock go
 * (ps_pool_unlock), and a waiter that was served reads its grant without taking the lock
 * again. A condition variable signalled under the lock woke the waiter into a lock still
 * held: a second sleep and a second wake-up per hand-over, the most frequent sleep of 256
 * threads on a pool of 8. The waiter is on the heap, with a reference for each wake-up
 * owed: the call may come after the waiter left (served, it woke on its own and returned),
 * and must not reach memory that is gone or reused. */
struct PsWaiter {
  PsPoolKey *key;
  gint refs;       /* atomic: the waiter's own, and one per wake-up owed (pool.c) */
  gint wake;       /* futex word: bumped at every wake-up */
  gboolean served; /* atomic: set (release) after the grant is written */
  gboolean may_grow;
  gint64 since_us; /* pool clock at arrival: the key's oldest waiter bounds barging */
  gconstpointer grain; /* the transaction grain's waiter: its token (else NULL) */
  PsGrant *grant;
  GList link;     /* in pool->waiters */
  GList key_link; /* in key->waitq */
};

struct PsPool {
  /* Taken with ps_pool_lock, which spins a little before it sleeps. */
  GMutex lock;
  PsPoolLimits limits;
  GHashTable *keys; /* digest -> PsPoolKey* */
  GHashTable *labels; /* label -> PsLabelUse* */
  guint next_serial;  /* creation order of keys, never reused */
  GQueue waiters;   /* of PsWaiter.link, in arrival order */
  guint total_open;
  gint64 (*now)(void);
  gint64 seen_us; /* the last reading of `now` by acquire/release (atomic, relaxed) */
  gboolean (*ready)(PsItem *item); /* NULL: every idle connection is ready */
  gboolean grow_past_busy;          /* open rather than wait for a reset to finish */
  guint dispatch_pass;
  PsPoolCounts counts; /* the cumulative part; gauges are computed on demand */
};

/* Wake-ups owed by the thread holding PsPool.lock, made once it lets the lock go. */
#define PS_POOL_WAKES 16
typedef struct {
  guint n;
  PsWaiter *waiter[PS_POOL_WAKES]; /* each with a reference held for the wake-up */
} PsPoolWakes;
extern _Thread_local PsPoolWakes ps_pool_wakes __attribute__((tls_model("initial-exec")));
void ps_pool_flush_wakes(void);
/* pool_wait.c, under the lock: wakes w once the lock is let go (see there). */
void ps_pool_wake_waiter(PsWaiter *w);
/* Drops one reference to w: the waiter's own, or one a wake-up owed held. */
void ps_pool_waiter_unref(PsWaiter *w);
/* Sleeps while *word is `seen`, at most until `until_us` (monotonic; G_MAXINT64: no
 * bound). May wake early: callers look again. */
void ps_pool_futex_wait_until(gint *word, gint seen, gint64 until_us);

/* Every unlock of PsPool.lock in pool.c, pool_idle.c and pool_key.c: a waiter woken by
 * what happened under the lock finds the lock free. ps_pool_unlock_quiet: only on the
 * connect's own path, where nothing under the lock can wake a waiter (no dispatch, no
 * poller chosen, no waiter unlinked): its first wake-up owed would be made at this
 * thread's next ps_pool_unlock, so a misplaced one stalls a waiter; it saves the check. */
/* Every lock of PsPool.lock. It is held for a few hundred nanoseconds at a time, and on
 * two cores the other core's thread often holds it just then: g_mutex_lock sleeps at once
 * (a futex wait, a context switch and a wake-up from the holder's unlock), 1,875 times in
 * 40,000 cycles of 8 threads on 8 connections. A few tries first, as glibc's adaptive
 * mutexes do; an uncontended lock costs what g_mutex_lock does (glibc's adaptive mutex
 * added about 230 instructions per connect+close pair). */
void ps_pool_lock_contended(PsPool *pool);
static inline void
ps_pool_lock(PsPool *pool)
{
  if (G_UNLIKELY(!g_mutex_trylock(&pool->lock)))
    ps_pool_lock_contended(pool);
}

static inline void
ps_pool_unlock(PsPool *pool)
{
  g_mutex_unlock(&pool->lock);
  if (G_UNLIKELY(ps_pool_wakes.n))
    ps_pool_flush_wakes();
}

static inline void
ps_pool_unlock_quiet(PsPool *pool)
{
  g_mutex_unlock(&pool->lock);
}

/* When the key's oldest waiter arrived (G_MAXINT64: none waits). */
static inline gint64
ps_pool_oldest_since(const PsPoolKey *key)
{
  return key->waitq.head ? ((const PsWaiter *)key->waitq.head->data)->since_us : G_MAXINT64;
}

/* pool_key.c: the key table and the label counts of a new pool, and their end (every
 * thread's cached key is stale from then on). */
void ps_pool_keys_init(PsPool *pool);
void ps_pool_keys_clear(PsPool *pool);

/* pool.c's helpers that pool_idle.c uses too; all under PsPool.lock. */
/* Removes an idle item from its queue and from every count: it becomes a victim. */
PsItem *ps_pool_unlink_idle(PsPool *pool, PsItem *item, PsCloseReason reason);
/* Drops expired items from the cold end of a key's idle queue into *victims. */
void ps_pool_sweep_key(PsPool *pool, PsPoolKey *key, gint64 now, GSList **victims);
/* Serves the waiters that the pool's state now allows, oldest first. */
void ps_pool_dispatch(PsPool *pool, gint64 now);
/* Room for one more connection of `key` without closing another key's idle one. */
gboolean ps_pool_room_to_grow(const PsPool *pool, const PsPoolKey *key);
/* Records a new physical connection of `key` and counts it as opened. */
void ps_pool_new_item(PsPool *pool, PsItem *item, PsPoolKey *key, gpointer conn, gint64 now);
