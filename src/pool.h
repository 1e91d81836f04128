/* pool.h: the pool as a plain data structure: keys, idle lists, open/lent counts, waiters
 * (FIFO with bounded barging) and limits. No MySQL calls and no I/O: a connection is an
 * opaque pointer, and everything the caller must close is handed back to it to close
 * outside the lock. */
#pragma once
#include <glib.h>

#include "config.h"

#define PS_KEY_DIGEST_LEN 16

/* Bounded barging (pool.c's top comment). A thread whose last acquire came within the
 * grace of its return before is looping: its returns are held back for it for the grace
 * instead of going to the oldest waiter, for at most one quantum from the acquire that
 * began its run (an acquire that did not re-take a held return); then its return goes to
 * the oldest waiter and it queues like everybody. A held return nobody re-takes goes to
 * the oldest waiter at the first pool operation after the grace, or at the latest a poll
 * period later. */
#define PS_POOL_BARGE_GRACE_US ((gint64)100)
#define PS_POOL_QUANTUM_US ((gint64)5000)
/* How long a return held back for its own thread's next acquire (ps_pool_hold_next_release)
 * waits for it before the oldest waiter gets it. */
#define PS_POOL_SELF_HOLD_US ((gint64)5000)
#define PS_POOL_POLL_US ((gint64)1000)

typedef struct PsPool PsPool;
typedef struct PsPoolKey PsPoolKey;

/* Why a physical connection left the pool: reaches the debug log and the counters. */
typedef enum {
  PS_CLOSE_LIFETIME,      /* reached POOLSHIM_MAX_LIFETIME */
  PS_CLOSE_IDLE_TIMEOUT,  /* idle longer than POOLSHIM_IDLE_TIMEOUT */
  PS_CLOSE_DEAD,          /* the server closed it or it failed a liveness check */
  PS_CLOSE_UNCLEAN,       /* "error": returned with an error, pending results or unknown state */
  PS_CLOSE_RESET_FAILED,  /* the session reset failed */
  PS_CLOSE_OVER_LIMIT,    /* evicted to make room under POOLSHIM_MAX_CONNECTIONS */
  PS_CLOSE_SHUTDOWN,      /* process exit or mysql_server_end */
  PS_CLOSE_REVOKED,       /* the server refused the key's credentials (POOLSHIM_REVALIDATE) */
  PS_CLOSE_REASONS
} PsCloseReason;

const char *ps_close_reason_name(PsCloseReason reason);

/* One physical connection, from its open to its close. */
typedef struct PsItem {
  gpointer conn;         /* caller's object (a pool-owned MYSQL shell) */
  PsPoolKey *owner;
  gint64 created_us;
  gint64 expires_us;     /* G_MAXINT64 when there is no lifetime */
  gint64 idle_since_us;
  gint64 held_until_us;  /* held back for the looping thread that returned it, until then */
  PsCloseReason close_reason; /* set when the pool hands it back as a victim */
  GList link;            /* in the owner's idle queue while idle */
} PsItem;

typedef enum {
  PS_GRANT_IDLE,    /* grant.item is an idle connection, now lent to the caller */
  PS_GRANT_OPEN,    /* a slot is reserved: open a connection, then ps_pool_opened/open_failed */
  PS_GRANT_TIMEOUT, /* the pool stayed full until the deadline */
} PsGrantKind;

typedef struct {
  PsGrantKind kind;
  PsItem *item;
  GSList *victims; /* PsItem*s no longer counted: the caller closes them, then frees them */
  gint64 waited_us;
  gint64 now_us;       /* the pool's clock when the grant was made */
  gboolean first_wait; /* this key's first wait ever: worth one info line */
  guint busy_idle;     /* PS_GRANT_OPEN: idle connections passed over as not ready */
  gboolean turn;       /* PS_GRANT_TIMEOUT of ps_pool_acquire_grain: the poller's turn to
                          look for a takeable handle, not the deadline */
} PsGrant;

typedef struct {
  guint per_key;           /* >= 1 */
  guint total;             /* 0 = unlimited */
  gint64 max_lifetime_us;  /* 0 = unlimited */
  gint64 idle_timeout_us;  /* 0 = never */
} PsPoolLimits;

typedef struct {
  guint64 borrowed, served_idle, opened, closed, waits, wait_timeouts;
  guint64 closed_by[PS_CLOSE_REASONS];
  guint open, idle, lent, waiting, keys;
} PsPoolCounts;

/* Wait-time histogram buckets (upper bounds), as Prometheus' `le`; the last is +Inf. */
#define PS_WAIT_BUCKETS 7
extern const gint64 ps_wait_bucket_us[PS_WAIT_BUCKETS - 1];

/* One key's counters since it was created. */
typedef struct {
  guint64 borrowed, served_idle, opened, closed, waits, wait_timeouts, resets;
  guint64 closed_by[PS_CLOSE_REASONS];
  guint64 wait_buckets[PS_WAIT_BUCKETS]; /* per bucket, not cumulative */
  guint64 wait_count, wait_sum_us;       /* every acquire, also those that did not wait */
} PsKeyCounts;

/* POOLSHIM_GRAIN=transaction: what the key's handles did (handle.c), counted with relaxed
 * atomic adds outside the pool's lock and read with atomic loads (ps_pool_snapshot): takes
 * (a connection taken from an idle handle), re-borrows (a taken handle's command borrowed
 * one again) and pins by reason (commands after which the session could not be taken, by
 * handle.h's PsPinReason, in its order). */
#define PS_GRAIN_PIN_REASONS 7
typedef struct {
  guint64 takes, reborrows;
  guint64 pins[PS_GRAIN_PIN_REASONS];
} PsGrainCounts;

/* A consistent copy of one key, taken under the pool's lock. */
typedef struct {
  char *label;
  guint serial; /* creation order */
  PsPoolSettings settings;
  PsKeyCounts counts;
  PsGrainCounts grain; /* each count atomic on its own, not consistent with the others */
  guint open, idle, lent, waiting; /* open - idle - lent = being opened */
} PsKeySnapshot;

PsPool *ps_pool_new(const PsPoolLimits *limits);
/* Frees the structure; idle connections are handed back in *victims. */
void ps_pool_free(PsPool *pool, GSList **victims);

/* Finds or creates the sub-pool of a key. `label` (user@host:port/db, no secrets) names it
 * in messages and statistics; a second key with the same label (other options) gets "#2"
 * appended. `settings` (size, lifetime, idle timeout; NULL = the pool's limits) apply to
 * this key alone. The caller holds the returned key (it is not freed) until it calls
 * ps_pool_key_release; connections of the key, waiters and items hold it too. */
PsPoolKey *ps_pool_key(PsPool *pool, const guint8 digest[PS_KEY_DIGEST_LEN], const char *label,
                       const PsPoolSettings *settings);
/* Ends a hold. `forget_now`: a key that nothing else uses is freed at once (a connect that
 * failed leaves no pool behind); else it stays until ps_pool_forget_unused. */
void ps_pool_key_release(PsPool *pool, PsPoolKey *key, gboolean forget_now);
/* Frees every key that has had no connection, waiter or holder for `unused_us` (its label,
 * counters and data, whose destroy function wipes what is secret). Returns how many. */
guint ps_pool_forget_unused(PsPool *pool, gint64 unused_us);

/* When the server last accepted the key's credentials (revalidation, POOLSHIM_REVALIDATE).
 * claim_proof: TRUE for the one caller that should prove them again now (the last proof is
 * `interval_us` old; interval 0 = never); it is recorded as proved at `now_us` so that
 * others go on meanwhile. proved(0) makes the next caller prove them. set_revoked: the
 * server refused them; revoked until proved(non-zero). */
gboolean ps_pool_key_claim_proof(PsPoolKey *key, gint64 now_us, gint64 interval_us);
void ps_pool_key_proved(PsPoolKey *key, gint64 when_us);
void ps_pool_key_set_revoked(PsPoolKey *key);
gboolean ps_pool_key_revoked(const PsPoolKey *key);
const char *ps_pool_key_label(const PsPoolKey *key);
/* The key's transaction-grain counters (PsGrainCounts): add to them with relaxed atomics; the
 * pointer is valid while the caller holds the key. */
PsGrainCounts *ps_pool_key_grain_counts(PsPoolKey *key);
/* The key's digest (PS_KEY_DIGEST_LEN bytes), immutable. */
const guint8 *ps_pool_key_digest(const PsPoolKey *key);
const PsPoolSettings *ps_pool_key_settings(const PsPoolKey *key);
/* The sub-pool of a digest (held, as ps_pool_key), or NULL when none exists yet. */
PsPoolKey *ps_pool_key_find(PsPool *pool, const guint8 digest[PS_KEY_DIGEST_LEN]);
/* One more hold on a key the caller holds already (ended by ps_pool_key_release). */
void ps_pool_key_hold(PsPool *pool, PsPoolKey *key);
/* One caller-owned pointer per key, set once (the first caller wins; a later one is
 * destroyed with `destroy`). Returns the pointer in place. */
gpointer ps_pool_key_data(PsPoolKey *key);
gpointer ps_pool_key_set_data(PsPoolKey *key, gpointer data, GDestroyNotify destroy);

/* Waits until the key can lend or open a connection, or until deadline_us
 * (g_get_monotonic_time clock). Waiters are served in arrival order; only a looping thread
 * re-taking its held return overtakes them, and only while the oldest has waited less than
 * the starvation bound (above). */
void ps_pool_acquire(PsPool *pool, PsPoolKey *key, gint64 deadline_us, PsGrant *grant);
/* The same, with the pool's clock as the caller read it a moment ago (now_us, 0: read it). */
void ps_pool_acquire_at(PsPool *pool, PsPoolKey *key, gint64 now_us, gint64 deadline_us,
                        PsGrant *grant);
/* The same, but an idle connection still busy with its reset is lent rather than a new one
 * opened (after opening one failed: an idle connection is never passed over for an error). */
void ps_pool_acquire_no_grow(PsPool *pool, PsPoolKey *key, gint64 deadline_us, PsGrant *grant);
/* The same for a request that was served and lost what it got (an idle connection the
 * server had closed, a failed open): it keeps its place, queued after only those that
 * arrived before arrived_us (its first acquire, in the pool's clock), and is served at once
 * when nobody did. */
void ps_pool_acquire_again(PsPool *pool, PsPoolKey *key, gboolean may_grow, gint64 arrived_us,
                           gint64 deadline_us, PsGrant *grant);

/* After PS_GRANT_OPEN: the connection is open and lent. */
PsItem *ps_pool_opened(PsPool *pool, PsPoolKey *key, gpointer conn);
/* After PS_GRANT_OPEN: opening failed; the slot is freed. */
void ps_pool_open_failed(PsPool *pool, PsPoolKey *key);

/* Gives a lent connection back (`reset`: its session was reset, for the counters). Returns
 * FALSE when it has expired instead: it is then no longer counted (reason in
 * item->close_reason) and the caller closes and frees it. */
gboolean ps_pool_release(PsPool *pool, PsItem *item, gboolean reset);
/* A lent connection is being closed by the caller; frees its slot. */
void ps_pool_discard(PsPool *pool, PsItem *item, PsCloseReason reason);

/* Takes out every idle connection (reason in close_reason), or only those past their
 * idle timeout or lifetime when `all` is FALSE. */
GSList *ps_pool_take_idle(PsPool *pool, gboolean all, PsCloseReason reason);

/* POOLSHIM_MIN_IDLE: reserves a slot to open one more idle connection in the background when
 * the key has fewer idle (and being filled) than its min_idle and room under its limits. Then
 * either ps_pool_filled (the connection joins the idle queue; a waiter may take it at once,
 * so *item_out is written under the lock, before that can happen) or ps_pool_fill_failed. */
gboolean ps_pool_reserve_fill(PsPool *pool, PsPoolKey *key);
PsItem *ps_pool_filled(PsPool *pool, PsPoolKey *key, gpointer conn, PsItem **item_out);
void ps_pool_fill_failed(PsPool *pool, PsPoolKey *key);
/* Takes out the idle connections `match` picks (called under the pool's lock: it may look,
 * without blocking, never wait). */
GSList *ps_pool_take_idle_matching(PsPool *pool, gboolean (*match)(PsItem *item, gpointer data),
                                   gpointer data, PsCloseReason reason);
/* Every key now, each held; free with ps_pool_key_list_free. */
GPtrArray *ps_pool_key_list(PsPool *pool);
void ps_pool_key_list_free(PsPool *pool, GPtrArray *keys);

/* Takes out the longest-idle connection among the keys whose label `match` accepts (called
 * under the pool's lock: no I/O in it), as a list of zero or one victim. */
GSList *ps_pool_take_oldest_idle(PsPool *pool, gboolean (*match)(const char *label, gpointer data),
                                 gpointer data, PsCloseReason reason);
/* Frees an item (closed or abandoned): only then does its key stop counting it. */
void ps_pool_item_free(PsItem *item);
void ps_pool_counts(PsPool *pool, PsPoolCounts *out);
/* Every key, in creation order (GArray of PsKeySnapshot; freeing it frees the labels). */
GArray *ps_pool_snapshot(PsPool *pool);
guint ps_pool_size_of(const PsPool *pool);

/* Closes this key's idle connections sooner than the pool's idle timeout: used to stay
 * below the server's wait_timeout, so the server never closes one the pool still trusts. */
void ps_pool_key_cap_idle(PsPoolKey *key, gint64 cap_us);
/* The transaction grain: a connect or re-borrow of key that found no connection counts
 * itself (on) until it is served or gives up (off); how many do (how often each looks for
 * takeable handles). A try (deadline already past) returns PS_GRANT_TIMEOUT without
 * waiting. */
void ps_pool_key_want(PsPoolKey *key, gboolean on);
guint ps_pool_key_wanted(PsPoolKey *key);
/* The transaction grain's waiting: ps_pool_acquire for a connect or re-borrow that
 * found no connection and looks for takeable handles. One such waiter per key, the poller
 * (the first to ask; `token` names it across its acquires until ps_pool_grain_done), also
 * comes back with PS_GRANT_TIMEOUT and grant->turn set at poll_us (a handle's take delay
 * ends; 0: none known, then when poked or after a bounded slice) or when poked; the
 * others wait until served or the deadline, or until they become the poller (turn).
 * *arrived (0 at first): the pool's clock at its first wait, which keeps its place in
 * the queue across its acquires. */
void ps_pool_acquire_grain(PsPool *pool, PsPoolKey *key, gint64 now_us, gboolean may_grow,
                           gconstpointer token, gint64 poll_us, gint64 deadline_us,
                           gint64 *arrived, PsGrant *grant);
/* The calling thread's next ps_pool_release (on: TRUE) is held back for its next acquire
 * of that key, which takes it past every waiter: for a waiter that gives back what it took
 * for itself (a connect's take from an idle handle, which the pool resets) while it is
 * the oldest. Not held when the connection expired; given to the oldest waiter after
 * PS_POOL_SELF_HOLD_US. */
void ps_pool_hold_next_release(gboolean on);
/* The waiter with `token` stopped waiting: when it was the poller, the oldest grain
 * waiter of the key becomes it, asleep until poked (TRUE). The caller then pokes the key
 * if a handle is takeable already: a settle either saw the new poller wanting a poke or
 * made its handle takeable before the caller looked (both sides order their write before
 * their read), so no takeable handle is left unseen, and a poller that would find none
 * is not woken for nothing. */
gboolean ps_pool_grain_done(PsPool *pool, PsPoolKey *key, gconstpointer token);
/* A handle of key became takeable while someone wants a connection: wakes the poller when
 * it sleeps without a delay timer (else nothing: one atomic exchange). */
void ps_pool_key_poke(PsPool *pool, PsPoolKey *key);
/* How long the key's oldest waiter that arrived before `arrived_us` (0: any) has waited
 * (0: none), in the pool's clock. */
gint64 ps_pool_key_oldest_wait_us(PsPool *pool, PsPoolKey *key, gint64 arrived_us);

/* Held across fork() so that the child never inherits a lock taken by another thread. */
void ps_pool_lock_for_fork(PsPool *pool);
void ps_pool_unlock_after_fork(PsPool *pool);

/* Whether an idle connection can be lent without waiting (its reset's replies have
 * arrived). Called under the pool's lock, for a few idle items per request: it may look
 * without blocking, never wait. Without one, every idle connection is ready. A request
 * takes the most recent ready one; when none is, `grow` lets it open a new connection if
 * the key has room, else (or without room) it takes the one returned longest ago. */
void ps_pool_set_ready_check(PsPool *pool, gboolean (*ready)(PsItem *item), gboolean grow);

/* For unit tests: replaces g_get_monotonic_time. */
void ps_pool_set_clock(PsPool *pool, gint64 (*now)(void));
/* The pool's clock as the last acquire or release read it (0 before any): for what needs
 * no fresher time than that, without a clock read of its own. */
gint64 ps_pool_seen_us(PsPool *pool);
