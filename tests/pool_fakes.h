/* pool_fakes.h: what the pool's unit tests (test_pool, test_pool_keys, test_pool_wait) share:
 * pools, keys, fake connections (distinct pointers), a fake clock, waiter threads. No server
 * and no client library here (the integration tests' helpers are tests/helpers.h). */
#pragma once
#include <criterion/criterion.h>
#include <glib.h>

#include "pool.h"

#define SEC ((gint64)G_USEC_PER_SEC)
#define MS 1000

/* A pool with these limits (0: unlimited, or no expiry), on the real clock. */
PsPool *new_pool(guint per_key, guint total, gint64 max_lifetime_us, gint64 idle_timeout_us);
/* The same on the fake clock (fake_clock below). */
PsPool *new_pool_on_fake_clock(guint per_key, guint total, gint64 max_lifetime_us,
                               gint64 idle_timeout_us);
/* Key number n: its own digest, labelled "user<n>@host:3306/db", the pool's settings. */
PsPoolKey *key_n(PsPool *pool, guint8 n);
/* A deadline `ms` from now, on the real clock (waiters sleep in real time). */
gint64 in_ms(gint64 ms);
void free_victims(GSList *victims);
/* A grant of a fresh slot, opened at once with `conn`. */
PsItem *open_one(PsPool *pool, PsPoolKey *key, gpointer conn);

#define ASSERT_GAUGES(pool, o, i, l, w)                                                     \
  do {                                                                                      \
    PsPoolCounts c_;                                                                        \
    ps_pool_counts((pool), &c_);                                                            \
    cr_assert_eq(c_.open, (guint)(o), "open is %u, expected %u", c_.open, (guint)(o));      \
    cr_assert_eq(c_.idle, (guint)(i), "idle is %u, expected %u", c_.idle, (guint)(i));      \
    cr_assert_eq(c_.lent, (guint)(l), "lent is %u, expected %u", c_.lent, (guint)(l));      \
    cr_assert_eq(c_.waiting, (guint)(w), "waiting is %u, expected %u", c_.waiting,          \
                 (guint)(w));                                                               \
  } while (0)

/* Polls until `n` callers are blocked in ps_pool_acquire (fails the test after 10 s). */
void wait_until_waiting(PsPool *pool, guint n);

/* The fake clock, for ps_pool_set_clock: it starts at 1000 s and moves only when a test
 * moves it (atomically: a waiter that polls reads it while the test moves it). */
gint64 fake_clock(void);
void clock_set(gint64 us);
void clock_add(gint64 us);

/* A caller blocked in ps_pool_acquire in another thread. */
typedef struct {
  PsPool *pool;
  PsPoolKey *key;
  gint64 deadline_us;
  PsGrant grant;
} Waiter;

/* Starts a thread that acquires `key` (deadline 20 s), its grant in w->grant once joined. */
GThread *start_waiter(Waiter *w, PsPool *pool, PsPoolKey *key);
