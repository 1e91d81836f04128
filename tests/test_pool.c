/* test_pool.c: the pool as a plain data structure, without a server: grants and reuse, idle
 * connections still reading their reset, the limits, lifetimes, idle timeouts and close
 * reasons (keys: test_pool_keys.c; waiters: test_pool_wait.c; the fakes: pool_fakes.c). */
#include <criterion/criterion.h>
#include <glib.h>
#include <string.h>

#include "pool_fakes.h"

TestSuite(pool, .timeout = 30);

/* ---- grants and reuse ------------------------------------------------------------- */

Test(pool, second_acquire_reuses_the_released_connection)
{
  PsPool *pool = new_pool(2, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  gpointer conn = GINT_TO_POINTER(0x1001);
  PsPoolCounts c;

  ps_pool_counts(pool, &c);
  cr_assert_eq(c.keys, 1);
  cr_assert_eq(c.opened, 0);
  cr_assert_eq(c.borrowed, 0);
  ASSERT_GAUGES(pool, 0, 0, 0, 0);

  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_OPEN);
  cr_assert_null(g.item);
  cr_assert_null(g.victims);
  cr_assert_eq(g.waited_us, 0);
  /* The slot is reserved (counted open) but nothing is lent until it is opened. */
  ASSERT_GAUGES(pool, 1, 0, 0, 0);
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.opened, 0);
  cr_assert_eq(c.borrowed, 0);

  PsItem *item = ps_pool_opened(pool, key, conn);
  cr_assert_eq(item->conn, conn);
  cr_assert_eq(item->owner, key);
  cr_assert_eq(item->expires_us, G_MAXINT64, "no lifetime limit means no expiry");
  ASSERT_GAUGES(pool, 1, 0, 1, 0);
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.opened, 1);
  cr_assert_eq(c.borrowed, 1);
  cr_assert_eq(c.served_idle, 0);

  cr_assert(ps_pool_release(pool, item, FALSE), "a connection without lifetime is kept");
  ASSERT_GAUGES(pool, 1, 1, 0, 0);

  PsGrant g2;
  ps_pool_acquire(pool, key, in_ms(1000), &g2);
  cr_assert_eq(g2.kind, PS_GRANT_IDLE);
  cr_assert_eq(g2.item, item, "the idle connection itself is lent again");
  cr_assert_eq(g2.item->conn, conn);
  cr_assert_null(g2.victims);
  ASSERT_GAUGES(pool, 1, 0, 1, 0);
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.opened, 1, "no second physical connection was opened");
  cr_assert_eq(c.borrowed, 2);
  cr_assert_eq(c.served_idle, 1);
  cr_assert_eq(c.closed, 0);
  cr_assert_eq(c.waits, 0);

  cr_assert(ps_pool_release(pool, g2.item, FALSE));
  GSList *victims = NULL;
  ps_pool_free(pool, &victims);
  cr_assert_eq(g_slist_length(victims), 1, "pool_free hands back the idle connection");
  cr_assert_eq(victims->data, item);
  cr_assert_eq(item->close_reason, PS_CLOSE_SHUTDOWN);
  free_victims(victims);
}

Test(pool, the_most_recently_returned_connection_is_lent_first)
{
  PsPool *pool = new_pool(2, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *a = open_one(pool, key, GINT_TO_POINTER(0xa));
  PsItem *b = open_one(pool, key, GINT_TO_POINTER(0xb));
  cr_assert(ps_pool_release(pool, a, FALSE));
  cr_assert(ps_pool_release(pool, b, FALSE));
  ASSERT_GAUGES(pool, 2, 2, 0, 0);

  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE);
  cr_assert_eq(g.item, b, "the warm end of the idle queue is used first");
  cr_assert(ps_pool_release(pool, g.item, FALSE));
  ps_pool_free(pool, NULL);
}

/* ---- readiness: a connection still reading its reset ------------------------------ */

/* The fake readiness: a connection (an int tag) is ready unless its tag is listed here. */
static gpointer busy_tags[4];
static guint ready_calls;

static gboolean
tag_ready(PsItem *item)
{
  ready_calls++;
  for (guint i = 0; i < G_N_ELEMENTS(busy_tags); i++)
    if (busy_tags[i] && busy_tags[i] == item->conn)
      return FALSE;
  return TRUE;
}

/* Opens n connections tagged 0xa, 0xb, ... and returns them in that order (the last is
 * the warm end of the idle queue). */
static void
open_and_return(PsPool *pool, PsPoolKey *key, PsItem **items, guint n)
{
  for (guint i = 0; i < n; i++)
    items[i] = open_one(pool, key, GINT_TO_POINTER(0xa + i));
  for (guint i = 0; i < n; i++)
    cr_assert(ps_pool_release(pool, items[i], TRUE));
}

/* open_and_return, all n of them still reading their reset. */
static void
open_and_return_busy(PsPool *pool, PsPoolKey *key, PsItem **items, guint n)
{
  cr_assert_leq(n, G_N_ELEMENTS(busy_tags));
  open_and_return(pool, key, items, n);
  for (guint i = 0; i < n; i++)
    busy_tags[i] = items[i]->conn;
}

/* A pool whose idle connections are ready unless busy_tags lists them; `grow`: a key with
 * room opens a new connection rather than lend a busy one. */
static PsPool *
new_ready_pool(guint per_key, gboolean grow)
{
  PsPool *pool = new_pool(per_key, 0, 0, 0);
  ps_pool_set_ready_check(pool, tag_ready, grow);
  return pool;
}

Test(pool, a_ready_connection_is_lent_before_a_more_recent_busy_one)
{
  PsPool *pool = new_ready_pool(3, TRUE);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *it[2];
  open_and_return(pool, key, it, 2);
  PsItem *a = it[0], *b = it[1];
  busy_tags[0] = GINT_TO_POINTER(0xb); /* b came back last and is still resetting */

  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE);
  cr_assert_eq(g.item, a, "the ready connection is lent, not the busy warmer one");
  ASSERT_GAUGES(pool, 2, 1, 1, 0);
  busy_tags[0] = NULL;
  PsGrant g2;
  ps_pool_acquire(pool, key, in_ms(1000), &g2);
  cr_assert_eq(g2.item, b, "once ready, the warm end is used first again");
  cr_assert(ps_pool_release(pool, g.item, TRUE));
  cr_assert(ps_pool_release(pool, g2.item, TRUE));
  ps_pool_free(pool, NULL);
}

Test(pool, a_key_with_room_opens_rather_than_wait_for_a_busy_connection)
{
  PsPool *pool = new_ready_pool(2, TRUE);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *a;
  open_and_return_busy(pool, key, &a, 1);

  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_OPEN, "room under the key's size: open one more");
  cr_assert_eq(g.busy_idle, 1, "the grant says one idle connection was passed over");
  PsItem *b = ps_pool_opened(pool, key, GINT_TO_POINTER(0xb));
  ASSERT_GAUGES(pool, 2, 1, 1, 0);

  /* The key is full now: the busy one is lent anyway (its borrower reads the replies). */
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE);
  cr_assert_eq(g.item, a);
  cr_assert(ps_pool_release(pool, a, TRUE));
  cr_assert(ps_pool_release(pool, b, TRUE));
  busy_tags[0] = NULL;
  ps_pool_free(pool, NULL);
}

/* A key of `per_key` connections with n idle ones, all busy, that may not open another
 * (`grow` off, or no room): a request is lent the busy one returned longest ago. */
static void
lends_the_longest_returned_busy_one(guint per_key, gboolean grow, guint n, const char *why)
{
  PsPool *pool = new_ready_pool(per_key, grow);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *it[G_N_ELEMENTS(busy_tags)];
  open_and_return_busy(pool, key, it, n);

  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE, "%s", why);
  cr_assert_eq(g.item, it[0], "the one returned longest ago has had the most time");
  ASSERT_GAUGES(pool, n, n - 1, 1, 0);
  memset(busy_tags, 0, sizeof busy_tags);
  cr_assert(ps_pool_release(pool, g.item, TRUE));
  ps_pool_free(pool, NULL);
}

Test(pool, without_room_the_longest_returned_busy_connection_is_lent)
{
  lends_the_longest_returned_busy_one(3, TRUE, 3,
                                      "a full key lends a busy connection, it never waits");
}

Test(pool, without_growing_a_busy_connection_is_lent_not_a_new_one_opened)
{
  lends_the_longest_returned_busy_one(4, FALSE, 2,
                                      "growing is off (POOLSHIM_HOST_MAX): no new connection");
}

static gboolean
never_ready(PsItem *item)
{
  (void)item;
  ready_calls++;
  return FALSE;
}

Test(pool, a_request_asks_about_a_bounded_number_of_idle_connections)
{
  PsPool *pool = new_pool(40, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *items[30];
  open_and_return(pool, key, items, G_N_ELEMENTS(items));
  ps_pool_set_ready_check(pool, never_ready, TRUE);
  ready_calls = 0;
  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_OPEN);
  /* Each call is a system call under the pool's lock: a busy pool of 30 costs 8, not 30. */
  cr_assert_eq(ready_calls, 8, "asked about %u idle connections", ready_calls);
  ps_pool_open_failed(pool, key);

  /* Without a check every idle connection is ready, and the warm end is lent. */
  ps_pool_set_ready_check(pool, NULL, TRUE);
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE);
  cr_assert_eq(g.item, items[29]);
  cr_assert(ps_pool_release(pool, g.item, TRUE));
  ps_pool_free(pool, NULL);
}

/* ---- per-key limit ---------------------------------------------------------------- */

Test(pool, a_full_key_does_not_block_another_key)
{
  PsPool *pool = new_pool(2, 0, 0, 0);
  PsPoolKey *k1 = key_n(pool, 1);
  PsPoolKey *k2 = key_n(pool, 2);
  cr_assert_neq(k1, k2);
  PsItem *a = open_one(pool, k1, GINT_TO_POINTER(1));
  PsItem *b = open_one(pool, k1, GINT_TO_POINTER(2));

  PsGrant full;
  ps_pool_acquire(pool, k1, in_ms(50), &full);
  cr_assert_eq(full.kind, PS_GRANT_TIMEOUT, "the first key is full");

  PsGrant g;
  ps_pool_acquire(pool, k2, in_ms(50), &g);
  cr_assert_eq(g.kind, PS_GRANT_OPEN, "another digest has its own limit");
  cr_assert_null(g.victims);
  ASSERT_GAUGES(pool, 3, 0, 2, 0);

  ps_pool_open_failed(pool, k2);
  cr_assert(ps_pool_release(pool, a, FALSE));
  cr_assert(ps_pool_release(pool, b, FALSE));
  ps_pool_free(pool, NULL);
}

Test(pool, per_key_zero_is_treated_as_one)
{
  PsPool *pool = new_pool(0, 0, 0, 0);
  cr_assert_eq(ps_pool_size_of(pool), 1);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *a = open_one(pool, key, GINT_TO_POINTER(1));
  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(20), &g);
  cr_assert_eq(g.kind, PS_GRANT_TIMEOUT);
  cr_assert(ps_pool_release(pool, a, FALSE));
  ps_pool_free(pool, NULL);
}

/* ---- global limit ----------------------------------------------------------------- */

/* A pool of two connections in all (two a key), both opened by key A (connections 0xa1 and
 * 0xa2, lent), and a key B that has none. */
static PsPool *
key_a_holds_the_global_limit(PsPoolKey **ka, PsPoolKey **kb, PsItem **a1, PsItem **a2)
{
  PsPool *pool = new_pool(2, 2, 0, 0);
  *ka = key_n(pool, 1);
  *kb = key_n(pool, 2);
  *a1 = open_one(pool, *ka, GINT_TO_POINTER(0xa1));
  *a2 = open_one(pool, *ka, GINT_TO_POINTER(0xa2));
  return pool;
}

Test(pool, the_global_limit_evicts_one_idle_connection_of_another_key)
{
  PsPoolKey *ka, *kb;
  PsItem *a1, *a2;
  PsPool *pool = key_a_holds_the_global_limit(&ka, &kb, &a1, &a2);
  cr_assert(ps_pool_release(pool, a1, FALSE));
  cr_assert(ps_pool_release(pool, a2, FALSE));
  ASSERT_GAUGES(pool, 2, 2, 0, 0);

  PsGrant g;
  ps_pool_acquire(pool, kb, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_OPEN);
  cr_assert_eq(g_slist_length(g.victims), 1, "exactly one connection makes room");
  PsItem *victim = g.victims->data;
  cr_assert(victim == a1 || victim == a2);
  cr_assert_eq(victim->owner, ka);
  cr_assert(victim->conn == GINT_TO_POINTER(0xa1) || victim->conn == GINT_TO_POINTER(0xa2));
  cr_assert_eq(victim->close_reason, PS_CLOSE_OVER_LIMIT);

  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  cr_assert_leq(c.open, 2);
  cr_assert_eq(c.open, 2, "one left on key A plus the slot reserved for key B");
  cr_assert_eq(c.idle, 1);
  cr_assert_eq(c.closed_by[PS_CLOSE_OVER_LIMIT], 1);

  PsItem *keep = victim == a1 ? a2 : a1;
  free_victims(g.victims);
  PsItem *b = ps_pool_opened(pool, kb, GINT_TO_POINTER(0xb1));
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.open, 2);
  cr_assert_eq(c.lent, 1);

  /* The remaining idle connection of key A is still lendable to key A. */
  PsGrant ga;
  ps_pool_acquire(pool, ka, in_ms(1000), &ga);
  cr_assert_eq(ga.kind, PS_GRANT_IDLE);
  cr_assert_eq(ga.item, keep);
  cr_assert(ps_pool_release(pool, ga.item, FALSE));
  cr_assert(ps_pool_release(pool, b, FALSE));
  ps_pool_free(pool, NULL);
}

Test(pool, the_global_limit_makes_a_new_key_wait_when_nothing_is_idle)
{
  PsPoolKey *ka, *kb;
  PsItem *a1, *a2;
  PsPool *pool = key_a_holds_the_global_limit(&ka, &kb, &a1, &a2);

  PsGrant g;
  ps_pool_acquire(pool, kb, in_ms(100), &g);
  cr_assert_eq(g.kind, PS_GRANT_TIMEOUT, "both connections are lent: nothing to evict");
  cr_assert_null(g.victims);

  /* A release on key A lets a waiter on key B evict the connection just returned. */
  Waiter w;
  GThread *t = start_waiter(&w, pool, kb);
  wait_until_waiting(pool, 1);
  cr_assert(ps_pool_release(pool, a1, FALSE));
  g_thread_join(t);
  cr_assert_eq(w.grant.kind, PS_GRANT_OPEN);
  cr_assert_eq(g_slist_length(w.grant.victims), 1);
  cr_assert_eq(w.grant.victims->data, a1);
  cr_assert_eq(a1->close_reason, PS_CLOSE_OVER_LIMIT);
  free_victims(w.grant.victims);
  ASSERT_GAUGES(pool, 2, 0, 1, 0);

  ps_pool_open_failed(pool, kb);
  cr_assert(ps_pool_release(pool, a2, FALSE));
  ps_pool_free(pool, NULL);
}

/* ---- lifetime and idle timeout ---------------------------------------------------- */

/* A connection with a 1000 s lifetime, opened (and lent) at the fake clock's *t0. */
static PsItem *
open_with_a_lifetime(PsPool **pool, gint64 *t0)
{
  *pool = new_pool_on_fake_clock(2, 0, 1000 * SEC, 0);
  *t0 = fake_clock();
  return open_one(*pool, key_n(*pool, 1), GINT_TO_POINTER(1));
}

Test(pool, release_after_the_lifetime_closes_the_connection)
{
  PsPool *pool;
  gint64 t0;
  PsItem *item = open_with_a_lifetime(&pool, &t0);
  PsPoolKey *key = item->owner;
  cr_assert_eq(item->created_us, t0);
  /* Up to 2.5% jitter, never later than the limit. */
  cr_assert_leq(item->expires_us, t0 + 1000 * SEC);
  cr_assert_geq(item->expires_us, t0 + 975 * SEC);

  clock_set(t0 + 500 * SEC);
  cr_assert(ps_pool_release(pool, item, FALSE), "half-way through its life it is kept");
  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE);
  cr_assert_eq(g.item, item);

  clock_set(t0 + 1001 * SEC);
  cr_assert_not(ps_pool_release(pool, item, FALSE), "past its lifetime it is handed back");
  cr_assert_eq(item->close_reason, PS_CLOSE_LIFETIME);
  ASSERT_GAUGES(pool, 0, 0, 0, 0);
  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.closed, 1);
  cr_assert_eq(c.closed_by[PS_CLOSE_LIFETIME], 1);
  ps_pool_item_free(item);
  ps_pool_free(pool, NULL);
}

Test(pool, an_idle_connection_past_its_lifetime_is_a_victim_not_a_loan)
{
  PsPool *pool;
  gint64 t0;
  PsItem *item = open_with_a_lifetime(&pool, &t0);
  PsPoolKey *key = item->owner;
  clock_set(t0 + 10 * SEC);
  cr_assert(ps_pool_release(pool, item, FALSE));

  clock_set(t0 + 1001 * SEC);
  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_OPEN, "an expired connection is not lent");
  cr_assert_null(g.item);
  cr_assert_eq(g_slist_length(g.victims), 1);
  cr_assert_eq(g.victims->data, item);
  cr_assert_eq(item->close_reason, PS_CLOSE_LIFETIME);
  free_victims(g.victims);

  ASSERT_GAUGES(pool, 1, 0, 0, 0); /* only the new slot */
  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.served_idle, 0);
  cr_assert_eq(c.closed_by[PS_CLOSE_LIFETIME], 1);
  ps_pool_open_failed(pool, key);
  ps_pool_free(pool, NULL);
}

Test(pool, take_idle_returns_only_connections_past_the_idle_timeout)
{
  PsPool *pool = new_pool_on_fake_clock(2, 0, 0, 10 * SEC);
  PsPoolKey *key = key_n(pool, 1);
  gint64 t0 = fake_clock();
  PsItem *old = open_one(pool, key, GINT_TO_POINTER(1));
  PsItem *young = open_one(pool, key, GINT_TO_POINTER(2));
  cr_assert(ps_pool_release(pool, old, FALSE));
  clock_set(t0 + 8 * SEC);
  cr_assert(ps_pool_release(pool, young, FALSE));
  clock_set(t0 + 12 * SEC); /* old: idle 12 s; young: idle 4 s */

  GSList *taken = ps_pool_take_idle(pool, FALSE, PS_CLOSE_IDLE_TIMEOUT);
  cr_assert_eq(g_slist_length(taken), 1);
  cr_assert_eq(taken->data, old);
  cr_assert_eq(old->close_reason, PS_CLOSE_IDLE_TIMEOUT);
  free_victims(taken);
  ASSERT_GAUGES(pool, 1, 1, 0, 0);

  taken = ps_pool_take_idle(pool, FALSE, PS_CLOSE_IDLE_TIMEOUT);
  cr_assert_null(taken, "the young connection is not yet due");

  taken = ps_pool_take_idle(pool, TRUE, PS_CLOSE_SHUTDOWN);
  cr_assert_eq(g_slist_length(taken), 1);
  cr_assert_eq(taken->data, young);
  cr_assert_eq(young->close_reason, PS_CLOSE_SHUTDOWN);
  free_victims(taken);
  ASSERT_GAUGES(pool, 0, 0, 0, 0);

  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.closed, 2);
  cr_assert_eq(c.closed_by[PS_CLOSE_IDLE_TIMEOUT], 1);
  cr_assert_eq(c.closed_by[PS_CLOSE_SHUTDOWN], 1);
  ps_pool_free(pool, NULL);
}

Test(pool, take_idle_all_takes_every_idle_connection_of_every_key)
{
  PsPool *pool = new_pool_on_fake_clock(3, 0, 0, 10 * SEC);
  PsPoolKey *k1 = key_n(pool, 1);
  PsPoolKey *k2 = key_n(pool, 2);
  PsItem *items[5] = {
    open_one(pool, k1, GINT_TO_POINTER(1)), open_one(pool, k1, GINT_TO_POINTER(2)),
    open_one(pool, k1, GINT_TO_POINTER(3)), open_one(pool, k2, GINT_TO_POINTER(4)),
    open_one(pool, k2, GINT_TO_POINTER(5)),
  };
  PsItem *lent = open_one(pool, k2, GINT_TO_POINTER(6));
  for (guint i = 0; i < G_N_ELEMENTS(items); i++)
    cr_assert(ps_pool_release(pool, items[i], FALSE));
  ASSERT_GAUGES(pool, 6, 5, 1, 0);

  GSList *taken = ps_pool_take_idle(pool, TRUE, PS_CLOSE_SHUTDOWN);
  cr_assert_eq(g_slist_length(taken), 5, "every idle one, however young");
  for (guint i = 0; i < G_N_ELEMENTS(items); i++) {
    cr_assert_not_null(g_slist_find(taken, items[i]), "item %u was not taken", i);
    cr_assert_eq(items[i]->close_reason, PS_CLOSE_SHUTDOWN);
  }
  cr_assert_null(g_slist_find(taken, lent), "a lent connection is not idle");
  free_victims(taken);
  ASSERT_GAUGES(pool, 1, 0, 1, 0);

  cr_assert(ps_pool_release(pool, lent, FALSE));
  ps_pool_free(pool, NULL);
}

/* ---- names ------------------------------------------------------------------------ */

Test(pool, every_close_reason_has_a_distinct_name)
{
  for (int r = 0; r < PS_CLOSE_REASONS; r++) {
    const char *name = ps_close_reason_name((PsCloseReason)r);
    cr_assert_not_null(name, "reason %d has no name", r);
    cr_assert_gt(strlen(name), 0, "reason %d has an empty name", r);
    for (int s = 0; s < r; s++)
      cr_assert_str_neq(name, ps_close_reason_name((PsCloseReason)s),
                        "reasons %d and %d are both \"%s\"", s, r, name);
  }
  cr_assert_str_eq(ps_close_reason_name(PS_CLOSE_OVER_LIMIT), "over_limit");
  cr_assert_not_null(ps_close_reason_name(PS_CLOSE_REASONS), "out of range is not NULL");
}

/* ---- stress ----------------------------------------------------------------------- */

enum { STRESS_THREADS = 16, STRESS_CYCLES = 2000, STRESS_KEYS = 3 };
enum { STRESS_PER_KEY = 3, STRESS_TOTAL = 5 };

typedef struct {
  PsPool *pool;
  PsPoolKey *keys[STRESS_KEYS];
  gint lent_now[STRESS_KEYS];  /* atomics: connections of a key held by threads right now */
  gint lent_max[STRESS_KEYS];
  gint errors;                 /* atomic: anything a worker thread saw go wrong */
  gint timeouts;
  gint double_lent;
  gint done;
  gint next_conn;
} Stress;

/* A fake connection is a malloc'd flag: 1 while some thread holds it. */
static void
stress_close(GSList *victims, Stress *s)
{
  for (GSList *l = victims; l; l = l->next) {
    PsItem *item = l->data;
    gint *conn = item->conn;
    if (!conn || g_atomic_int_get(conn) != 0)
      g_atomic_int_inc(&s->errors); /* a victim must have been idle */
    g_free(conn);
    ps_pool_item_free(item);
  }
  g_slist_free(victims);
}

static void
atomic_max(gint *max, gint v)
{
  gint cur = g_atomic_int_get(max);
  while (v > cur && !g_atomic_int_compare_and_exchange(max, cur, v))
    cur = g_atomic_int_get(max);
}

static gpointer
stress_main(gpointer p)
{
  Stress *s = p;
  guint seed = (guint)g_atomic_int_add(&s->next_conn, 0) + GPOINTER_TO_UINT(g_thread_self());
  GRand *rand = g_rand_new_with_seed(seed);
  for (int i = 0; i < STRESS_CYCLES; i++) {
    int k = g_rand_int_range(rand, 0, STRESS_KEYS);
    PsGrant g;
    ps_pool_acquire(s->pool, s->keys[k], in_ms(20000), &g);
    stress_close(g.victims, s);
    PsItem *item;
    if (g.kind == PS_GRANT_TIMEOUT) {
      g_atomic_int_inc(&s->timeouts);
      continue;
    } else if (g.kind == PS_GRANT_OPEN) {
      if (g.item)
        g_atomic_int_inc(&s->errors);
      item = ps_pool_opened(s->pool, s->keys[k], g_new0(gint, 1));
    } else {
      item = g.item;
    }
    if (!item || item->owner != s->keys[k]) {
      g_atomic_int_inc(&s->errors);
      continue;
    }
    if (!g_atomic_int_compare_and_exchange((gint *)item->conn, 0, 1))
      g_atomic_int_inc(&s->double_lent);
    atomic_max(&s->lent_max[k], g_atomic_int_add(&s->lent_now[k], 1) + 1);
    if (i % 7 == 0)
      g_thread_yield();
    g_atomic_int_add(&s->lent_now[k], -1);
    g_atomic_int_set((gint *)item->conn, 0);
    if (!ps_pool_release(s->pool, item, FALSE))
      g_atomic_int_inc(&s->errors); /* no lifetime: every release is kept */
  }
  g_rand_free(rand);
  g_atomic_int_inc(&s->done);
  return NULL;
}

Test(pool, many_threads_never_exceed_the_limits)
{
  Stress s = {.pool = new_pool(STRESS_PER_KEY, STRESS_TOTAL, 0, 0)};
  for (int k = 0; k < STRESS_KEYS; k++)
    s.keys[k] = key_n(s.pool, (guint8)(k + 1));

  GThread *threads[STRESS_THREADS];
  for (int t = 0; t < STRESS_THREADS; t++)
    threads[t] = g_thread_new("stress", stress_main, &s);

  /* Sample the gauges while the workers run. */
  guint max_open = 0, max_lent = 0, samples = 0;
  while (g_atomic_int_get(&s.done) < STRESS_THREADS) {
    PsPoolCounts c;
    ps_pool_counts(s.pool, &c);
    max_open = MAX(max_open, c.open);
    max_lent = MAX(max_lent, c.lent);
    samples++;
    g_usleep(200);
  }
  for (int t = 0; t < STRESS_THREADS; t++)
    g_thread_join(threads[t]);

  cr_assert_eq(g_atomic_int_get(&s.errors), 0);
  cr_assert_eq(g_atomic_int_get(&s.timeouts), 0);
  cr_assert_eq(g_atomic_int_get(&s.double_lent), 0, "a connection was lent twice at once");
  for (int k = 0; k < STRESS_KEYS; k++) {
    cr_assert_leq(s.lent_max[k], STRESS_PER_KEY, "key %d had %d lent at once", k,
                  s.lent_max[k]);
    cr_assert_gt(s.lent_max[k], 0, "key %d was never used", k);
    cr_assert_eq(s.lent_now[k], 0);
  }
  cr_assert_leq(max_open, STRESS_TOTAL, "saw %u open (%u samples)", max_open, samples);
  cr_assert_leq(max_lent, STRESS_TOTAL);

  PsPoolCounts c;
  ps_pool_counts(s.pool, &c);
  cr_assert_eq(c.lent, 0);
  cr_assert_eq(c.waiting, 0);
  cr_assert_eq(c.open, c.idle);
  cr_assert_leq(c.open, STRESS_TOTAL);
  cr_assert_eq(c.borrowed, (guint64)STRESS_THREADS * STRESS_CYCLES);
  cr_assert_eq(c.borrowed, c.opened + c.served_idle);
  cr_assert_eq(c.opened - c.closed, c.open, "opened %" G_GUINT64_FORMAT " closed %"
               G_GUINT64_FORMAT " open %u", c.opened, c.closed, c.open);
  cr_assert_eq(c.closed, c.closed_by[PS_CLOSE_OVER_LIMIT]);
  cr_assert_eq(c.wait_timeouts, 0);

  GSList *rest = ps_pool_take_idle(s.pool, TRUE, PS_CLOSE_SHUTDOWN);
  cr_assert_eq(g_slist_length(rest), c.idle);
  stress_close(rest, &s);
  cr_assert_eq(g_atomic_int_get(&s.errors), 0);
  ASSERT_GAUGES(s.pool, 0, 0, 0, 0);
  ps_pool_free(s.pool, NULL);
}
