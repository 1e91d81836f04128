/* test_pool.c: the pool as a plain data structure, without a server: grants, limits, FIFO
 * waiters, expiry and counts. Connections are fake (distinct pointers), time is a fake
 * clock wherever expiry matters, and real time is only asserted with coarse bounds. */
#include <criterion/criterion.h>
#include <glib.h>
#include <string.h>

#include "pool.h"

TestSuite(pool, .timeout = 30);

#define SEC ((gint64)G_USEC_PER_SEC)
#define MS 1000

/* ---- helpers ---------------------------------------------------------------------- */

static PsPool *
new_pool(guint per_key, guint total, gint64 max_lifetime_us, gint64 idle_timeout_us)
{
  PsPoolLimits limits = {
    .per_key = per_key,
    .total = total,
    .max_lifetime_us = max_lifetime_us,
    .idle_timeout_us = idle_timeout_us,
  };
  PsPool *pool = ps_pool_new(&limits);
  cr_assert_not_null(pool);
  return pool;
}

static PsPoolKey *
key_n(PsPool *pool, guint8 n)
{
  guint8 digest[PS_KEY_DIGEST_LEN];
  for (guint i = 0; i < PS_KEY_DIGEST_LEN; i++)
    digest[i] = (guint8)(n * 31 + i);
  char label[32];
  g_snprintf(label, sizeof label, "user%u@host:3306/db", n);
  return ps_pool_key(pool, digest, label, NULL);
}

static gint64
in_ms(gint64 ms)
{
  return g_get_monotonic_time() + ms * MS;
}

static void
free_victims(GSList *victims)
{
  g_slist_free_full(victims, (GDestroyNotify)ps_pool_item_free);
}

/* A grant of a fresh slot, opened at once with `conn`. */
static PsItem *
open_one(PsPool *pool, PsPoolKey *key, gpointer conn)
{
  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(5000), &g);
  cr_assert_eq(g.kind, PS_GRANT_OPEN, "expected an OPEN grant, got kind %d", g.kind);
  cr_assert_null(g.item);
  cr_assert_null(g.victims);
  PsItem *item = ps_pool_opened(pool, key, conn);
  cr_assert_not_null(item);
  cr_assert_eq(item->conn, conn);
  cr_assert_eq(item->owner, key);
  return item;
}

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

/* Polls until `n` callers are blocked in ps_pool_acquire. The count is raised under the
 * pool lock that the waiter keeps until it sleeps on its condition, so once it is seen
 * the waiter really is waiting. */
static void
wait_until_waiting(PsPool *pool, guint n)
{
  gint64 give_up = g_get_monotonic_time() + 10 * SEC;
  PsPoolCounts c;
  for (;;) {
    ps_pool_counts(pool, &c);
    if (c.waiting >= n || g_get_monotonic_time() > give_up)
      break;
    g_usleep(1000);
  }
  cr_assert_eq(c.waiting, n, "expected %u waiters, saw %u", n, c.waiting);
}

/* The fake clock: only one test runs per process, so a plain static is enough. */
static gint64 fake_now_us = 1000 * SEC;

static gint64
fake_clock(void)
{
  return __atomic_load_n(&fake_now_us, __ATOMIC_RELAXED);
}

/* For tests whose waiters read the clock while the test moves it (a waiter that polls). */
static void
clock_set(gint64 us)
{
  __atomic_store_n(&fake_now_us, us, __ATOMIC_RELAXED);
}

static void
clock_add(gint64 us)
{
  __atomic_add_fetch(&fake_now_us, us, __ATOMIC_RELAXED);
}

/* A caller blocked in ps_pool_acquire in another thread. */
typedef struct {
  PsPool *pool;
  PsPoolKey *key;
  gint64 deadline_us;
  PsGrant grant;
} Waiter;

static gpointer
waiter_main(gpointer p)
{
  Waiter *w = p;
  ps_pool_acquire(w->pool, w->key, w->deadline_us, &w->grant);
  return NULL;
}

static GThread *
start_waiter(Waiter *w, PsPool *pool, PsPoolKey *key)
{
  *w = (Waiter){.pool = pool, .key = key, .deadline_us = in_ms(20000)};
  return g_thread_new("waiter", waiter_main, w);
}

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

Test(pool, a_ready_connection_is_lent_before_a_more_recent_busy_one)
{
  PsPool *pool = new_pool(3, 0, 0, 0);
  ps_pool_set_ready_check(pool, tag_ready, TRUE);
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
  PsPool *pool = new_pool(2, 0, 0, 0);
  ps_pool_set_ready_check(pool, tag_ready, TRUE);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *a;
  open_and_return(pool, key, &a, 1);
  busy_tags[0] = GINT_TO_POINTER(0xa);

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

Test(pool, without_room_the_longest_returned_busy_connection_is_lent)
{
  PsPool *pool = new_pool(3, 0, 0, 0);
  ps_pool_set_ready_check(pool, tag_ready, TRUE);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *it[3];
  open_and_return(pool, key, it, 3);
  PsItem *a = it[0];
  busy_tags[0] = GINT_TO_POINTER(0xa);
  busy_tags[1] = GINT_TO_POINTER(0xb);
  busy_tags[2] = GINT_TO_POINTER(0xc);

  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE, "a full key lends a busy connection, it never waits");
  cr_assert_eq(g.item, a, "the one returned longest ago has had the most time");
  ASSERT_GAUGES(pool, 3, 2, 1, 0);
  memset(busy_tags, 0, sizeof busy_tags);
  cr_assert(ps_pool_release(pool, g.item, TRUE));
  ps_pool_free(pool, NULL);
}

Test(pool, without_growing_a_busy_connection_is_lent_not_a_new_one_opened)
{
  PsPool *pool = new_pool(4, 0, 0, 0);
  ps_pool_set_ready_check(pool, tag_ready, FALSE);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *it[2];
  open_and_return(pool, key, it, 2);
  PsItem *a = it[0];
  busy_tags[0] = GINT_TO_POINTER(0xa);
  busy_tags[1] = GINT_TO_POINTER(0xb);

  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE, "growing is off (POOLSHIM_HOST_MAX): no new connection");
  cr_assert_eq(g.item, a);
  ASSERT_GAUGES(pool, 2, 1, 1, 0);
  memset(busy_tags, 0, sizeof busy_tags);
  cr_assert(ps_pool_release(pool, g.item, TRUE));
  ps_pool_free(pool, NULL);
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

Test(pool, a_full_key_times_out_at_the_deadline)
{
  PsPool *pool = new_pool(2, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *a = open_one(pool, key, GINT_TO_POINTER(1));
  PsItem *b = open_one(pool, key, GINT_TO_POINTER(2));
  ASSERT_GAUGES(pool, 2, 0, 2, 0);

  PsGrant g;
  gint64 start = g_get_monotonic_time();
  ps_pool_acquire(pool, key, start + 200 * MS, &g);
  gint64 elapsed = g_get_monotonic_time() - start;

  cr_assert_eq(g.kind, PS_GRANT_TIMEOUT);
  cr_assert_null(g.item);
  cr_assert_null(g.victims);
  cr_assert_geq(elapsed, 150 * MS, "returned after %" G_GINT64_FORMAT " us", elapsed);
  cr_assert_lt(elapsed, 5 * SEC, "returned after %" G_GINT64_FORMAT " us", elapsed);
  cr_assert_geq(g.waited_us, 150 * MS, "waited_us %" G_GINT64_FORMAT, g.waited_us);
  cr_assert_lt(g.waited_us, 5 * SEC, "waited_us %" G_GINT64_FORMAT, g.waited_us);

  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.waits, 1);
  cr_assert_eq(c.wait_timeouts, 1);
  ASSERT_GAUGES(pool, 2, 0, 2, 0); /* the timed-out waiter left nothing behind */

  cr_assert(ps_pool_release(pool, a, FALSE));
  cr_assert(ps_pool_release(pool, b, FALSE));
  ps_pool_free(pool, NULL);
}

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

/* ---- waiters ---------------------------------------------------------------------- */

Test(pool, a_waiter_is_served_the_released_connection)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *item = open_one(pool, key, GINT_TO_POINTER(7));

  Waiter w;
  GThread *t = start_waiter(&w, pool, key);
  wait_until_waiting(pool, 1);
  ASSERT_GAUGES(pool, 1, 0, 1, 1);

  cr_assert(ps_pool_release(pool, item, FALSE));
  g_thread_join(t);

  cr_assert_eq(w.grant.kind, PS_GRANT_IDLE);
  cr_assert_eq(w.grant.item, item, "the waiter gets exactly the released connection");
  cr_assert_null(w.grant.victims);
  cr_assert_gt(w.grant.waited_us, 0);
  ASSERT_GAUGES(pool, 1, 0, 1, 0);
  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.waits, 1);
  cr_assert_eq(c.wait_timeouts, 0);
  cr_assert_eq(c.served_idle, 1);
  cr_assert_eq(c.borrowed, 2);

  cr_assert(ps_pool_release(pool, item, FALSE));
  ps_pool_free(pool, NULL);
}

Test(pool, a_waiter_is_granted_a_slot_when_a_holder_discards)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *item = open_one(pool, key, GINT_TO_POINTER(7));

  Waiter w;
  GThread *t = start_waiter(&w, pool, key);
  wait_until_waiting(pool, 1);

  ps_pool_discard(pool, item, PS_CLOSE_DEAD);
  cr_assert_eq(item->close_reason, PS_CLOSE_DEAD);
  ps_pool_item_free(item);
  g_thread_join(t);

  cr_assert_eq(w.grant.kind, PS_GRANT_OPEN);
  cr_assert_null(w.grant.item);
  cr_assert_null(w.grant.victims);
  /* The slot is reserved for the waiter: counted open, nothing lent, nothing idle. */
  ASSERT_GAUGES(pool, 1, 0, 0, 0);
  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.closed, 1);
  cr_assert_eq(c.closed_by[PS_CLOSE_DEAD], 1);

  PsItem *fresh = ps_pool_opened(pool, key, GINT_TO_POINTER(8));
  ASSERT_GAUGES(pool, 1, 0, 1, 0);
  cr_assert(ps_pool_release(pool, fresh, FALSE));
  ps_pool_free(pool, NULL);
}

Test(pool, a_failed_open_frees_the_slot_for_a_waiter)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_OPEN);

  Waiter w;
  GThread *t = start_waiter(&w, pool, key);
  wait_until_waiting(pool, 1);
  ASSERT_GAUGES(pool, 1, 0, 0, 1);

  ps_pool_open_failed(pool, key);
  g_thread_join(t);

  cr_assert_eq(w.grant.kind, PS_GRANT_OPEN, "the freed slot goes to the waiter");
  cr_assert_null(w.grant.victims);
  ASSERT_GAUGES(pool, 1, 0, 0, 0);
  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.opened, 0);
  cr_assert_eq(c.closed, 0, "a connection that never opened is not counted as closed");

  ps_pool_open_failed(pool, key);
  ASSERT_GAUGES(pool, 0, 0, 0, 0);
  ps_pool_free(pool, NULL);
}

typedef struct {
  PsPool *pool;
  PsPoolKey *key;
  gint next;      /* atomic: next free slot of `order` */
  int order[16];  /* arrival indexes, in the order the waiters were served */
} FifoShared;

typedef struct {
  FifoShared *shared;
  int index;
  PsGrant grant;
  gboolean released_ok;
} FifoWaiter;

static gpointer
fifo_waiter_main(gpointer p)
{
  FifoWaiter *w = p;
  FifoShared *s = w->shared;
  ps_pool_acquire(s->pool, s->key, in_ms(20000), &w->grant);
  if (w->grant.kind == PS_GRANT_IDLE) {
    int pos = g_atomic_int_add(&s->next, 1);
    if (pos >= 0 && pos < (int)G_N_ELEMENTS(s->order))
      s->order[pos] = w->index;
    w->released_ok = ps_pool_release(s->pool, w->grant.item, FALSE);
  }
  return NULL;
}

Test(pool, waiters_are_served_in_arrival_order)
{
  enum { N = 5 };
  FifoShared shared = {.pool = new_pool(1, 0, 0, 0)};
  shared.key = key_n(shared.pool, 1);
  for (guint i = 0; i < G_N_ELEMENTS(shared.order); i++)
    shared.order[i] = -1;
  PsItem *item = open_one(shared.pool, shared.key, GINT_TO_POINTER(42));

  FifoWaiter w[N];
  GThread *t[N];
  for (int i = 0; i < N; i++) {
    w[i] = (FifoWaiter){.shared = &shared, .index = i};
    t[i] = g_thread_new("fifo", fifo_waiter_main, &w[i]);
    wait_until_waiting(shared.pool, (guint)i + 1);
  }

  /* One release starts the chain: each served waiter releases the connection again, and
   * every release hands it to the next waiter in line. */
  cr_assert(ps_pool_release(shared.pool, item, FALSE));
  for (int i = 0; i < N; i++)
    g_thread_join(t[i]);

  cr_assert_eq(g_atomic_int_get(&shared.next), N, "every waiter was served");
  for (int i = 0; i < N; i++) {
    cr_assert_eq(w[i].grant.kind, PS_GRANT_IDLE, "waiter %d got kind %d", i, w[i].grant.kind);
    cr_assert_eq(w[i].grant.item, item, "waiter %d got another item", i);
    cr_assert(w[i].released_ok);
    cr_assert_eq(shared.order[i], i, "service #%d went to waiter %d, not %d", i,
                 shared.order[i], i);
  }
  ASSERT_GAUGES(shared.pool, 1, 1, 0, 0);
  PsPoolCounts c;
  ps_pool_counts(shared.pool, &c);
  cr_assert_eq(c.waits, N);
  cr_assert_eq(c.wait_timeouts, 0);
  cr_assert_eq(c.served_idle, N);
  cr_assert_eq(c.opened, 1);
  ps_pool_free(shared.pool, NULL);
}

/* ---- bounded barging -------------------------------------------------------------- */

/* Polls until `waiting_after` callers are left waiting (or 10 s have passed). */
static gboolean
wait_until_served(PsPool *pool, guint waiting_after)
{
  gint64 give_up = g_get_monotonic_time() + 10 * SEC;
  PsPoolCounts c;
  do {
    ps_pool_counts(pool, &c);
    if (c.waiting == waiting_after)
      return TRUE;
    g_usleep(1000);
  } while (g_get_monotonic_time() < give_up);
  return FALSE;
}

/* The calling thread takes the key's only connection, returns it and takes it again at
 * once: from then on it is looping. Then a waiter arrives (at the fake clock's now). */
static PsItem *
loop_once_then_start_waiter(PsPool *pool, PsPoolKey *key, Waiter *w, GThread **t)
{
  ps_pool_set_clock(pool, fake_clock);
  PsItem *item = open_one(pool, key, GINT_TO_POINTER(7));
  cr_assert(ps_pool_release(pool, item, FALSE));
  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE);
  cr_assert_eq(g.item, item);
  *t = start_waiter(w, pool, key);
  wait_until_waiting(pool, 1);
  return item;
}

Test(pool, a_looping_releaser_retakes_its_connection_while_the_oldest_waiter_is_young)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  Waiter w;
  GThread *t;
  PsItem *item = loop_once_then_start_waiter(pool, key, &w, &t);
  gint64 arrived = fake_clock();

  /* Twenty cycles within the bound: each return is held back, each connect re-takes it
   * without waiting, and the waiter (no grace passes on the fake clock) keeps waiting. */
  for (int i = 0; i < 20; i++) {
    clock_add(10); /* well inside the grace and the bound */
    cr_assert(ps_pool_release(pool, item, FALSE));
    ASSERT_GAUGES(pool, 1, 1, 0, 1); /* held: idle, and the waiter still waits */
    clock_add(10);
    PsGrant g;
    ps_pool_acquire(pool, key, in_ms(300), &g);
    cr_assert_eq(g.kind, PS_GRANT_IDLE, "cycle %d: the looping thread got kind %d, not its "
                                        "own connection back", i, g.kind);
    cr_assert_eq(g.item, item);
    cr_assert_eq(g.waited_us, 0);
  }
  cr_assert_lt(fake_clock() - arrived, PS_POOL_QUANTUM_US);
  ASSERT_GAUGES(pool, 1, 0, 1, 1);

  /* A thread that does not come back: the waiter gets the connection after the grace. */
  cr_assert(ps_pool_release(pool, item, FALSE));
  clock_add(PS_POOL_BARGE_GRACE_US);
  g_thread_join(t);
  cr_assert_eq(w.grant.kind, PS_GRANT_IDLE);
  cr_assert_eq(w.grant.item, item);
  cr_assert(ps_pool_release(pool, item, FALSE));
  ps_pool_free(pool, NULL);
}

Test(pool, a_looping_thread_hands_over_once_its_quantum_is_spent)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  Waiter w;
  GThread *t;
  PsItem *item = loop_once_then_start_waiter(pool, key, &w, &t);
  gint64 arrived = fake_clock();

  /* The looping thread cycles, 30 us a loan, until its quantum (begun by its acquire just
   * before the waiter arrived) is nearly spent. */
  int cycles = 0;
  while (fake_clock() + 60 - arrived < PS_POOL_QUANTUM_US) {
    clock_add(30);
    cr_assert(ps_pool_release(pool, item, FALSE));
    clock_add(30);
    PsGrant g;
    ps_pool_acquire(pool, key, in_ms(300), &g);
    cr_assert_eq(g.kind, PS_GRANT_IDLE, "cycle %d: kind %d", cycles, g.kind);
    cycles++;
  }
  cr_assert_gt(cycles, 20, "the looping thread cycled %d times without a handoff", cycles);
  ASSERT_GAUGES(pool, 1, 0, 1, 1);

  /* The quantum is spent: the next return is the waiter's, at once (no grace). */
  clock_set(arrived + PS_POOL_QUANTUM_US);
  cr_assert(ps_pool_release(pool, item, FALSE));
  g_thread_join(t);
  cr_assert_eq(w.grant.kind, PS_GRANT_IDLE);
  cr_assert_eq(w.grant.item, item);
  cr_assert_eq(w.grant.waited_us, PS_POOL_QUANTUM_US, "served %" G_GINT64_FORMAT " us after "
               "arrival, the quantum is %" G_GINT64_FORMAT, w.grant.waited_us,
               PS_POOL_QUANTUM_US);

  /* And the looping thread, coming straight back, waits its turn now. */
  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(50), &g);
  cr_assert_eq(g.kind, PS_GRANT_TIMEOUT);
  cr_assert(ps_pool_release(pool, item, FALSE));
  ps_pool_free(pool, NULL);
}

/* Long loans do not stretch a run: it ends at the first return after its quantum, and the
 * waiter, served then, begins a run of its own. */
Test(pool, a_run_of_long_loans_also_ends_with_its_quantum)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  Waiter w;
  GThread *t;
  PsItem *item = loop_once_then_start_waiter(pool, key, &w, &t);
  gint64 arrived = fake_clock();

  /* 1 ms per loan, 10 us between a return and the next connect. */
  int cycles = 0;
  while (fake_clock() + 1010 - arrived < PS_POOL_QUANTUM_US) {
    clock_add(1000);
    cr_assert(ps_pool_release(pool, item, FALSE));
    clock_add(10);
    PsGrant g;
    ps_pool_acquire(pool, key, in_ms(300), &g);
    cr_assert_eq(g.kind, PS_GRANT_IDLE, "after %" G_GINT64_FORMAT " us (cycle %d) the "
                 "looping thread had to wait", fake_clock() - arrived, cycles);
    cycles++;
  }
  cr_assert_geq(cycles, 3);
  ASSERT_GAUGES(pool, 1, 0, 1, 1);

  /* A loan that ends past the quantum: its return is the waiter's. */
  clock_set(arrived + PS_POOL_QUANTUM_US + 500);
  cr_assert(ps_pool_release(pool, item, FALSE));
  g_thread_join(t);
  cr_assert_eq(w.grant.item, item);
  cr_assert_eq(w.grant.waited_us, PS_POOL_QUANTUM_US + 500);
  cr_assert(ps_pool_release(pool, item, FALSE));
  ps_pool_free(pool, NULL);
}

Test(pool, a_held_return_goes_to_the_waiter_after_the_grace_with_nothing_else_happening)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  Waiter w;
  GThread *t;
  PsItem *item = loop_once_then_start_waiter(pool, key, &w, &t);

  /* The looping thread returns the connection and goes away: it is held for the grace. */
  clock_add(10);
  gint64 returned = fake_clock();
  cr_assert(ps_pool_release(pool, item, FALSE));
  g_usleep(20 * MS); /* several poll periods of real time, none of fake time */
  ASSERT_GAUGES(pool, 1, 1, 0, 1);

  /* The grace passes: no pool operation follows, the waiter's own poll hands it over. */
  clock_set(returned + PS_POOL_BARGE_GRACE_US);
  cr_assert(wait_until_served(pool, 0), "the held connection was stranded");
  g_thread_join(t);
  cr_assert_eq(w.grant.kind, PS_GRANT_IDLE);
  cr_assert_eq(w.grant.item, item);
  ASSERT_GAUGES(pool, 1, 0, 1, 0);
  cr_assert(ps_pool_release(pool, item, FALSE));
  ps_pool_free(pool, NULL);
}

Test(pool, a_thread_that_comes_back_after_the_grace_hands_its_return_to_the_waiter)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  ps_pool_set_clock(pool, fake_clock);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *item = open_one(pool, key, GINT_TO_POINTER(7));
  cr_assert(ps_pool_release(pool, item, FALSE));
  /* Work between the close and the next connect (a request, Django's ORM): not looping. */
  clock_add(PS_POOL_BARGE_GRACE_US + 1);
  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE);
  Waiter w;
  GThread *t = start_waiter(&w, pool, key);
  wait_until_waiting(pool, 1);

  cr_assert(ps_pool_release(pool, item, FALSE));
  ASSERT_GAUGES(pool, 1, 0, 1, 0); /* handed over at once, not held */
  g_thread_join(t);
  cr_assert_eq(w.grant.item, item);
  cr_assert(ps_pool_release(pool, item, FALSE));
  ps_pool_free(pool, NULL);
}

/* ---- global limit ----------------------------------------------------------------- */

Test(pool, the_global_limit_evicts_one_idle_connection_of_another_key)
{
  PsPool *pool = new_pool(2, 2, 0, 0);
  PsPoolKey *ka = key_n(pool, 1);
  PsPoolKey *kb = key_n(pool, 2);
  gpointer ca = GINT_TO_POINTER(0xa1), cb = GINT_TO_POINTER(0xa2);
  PsItem *a1 = open_one(pool, ka, ca);
  PsItem *a2 = open_one(pool, ka, cb);
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
  cr_assert(victim->conn == ca || victim->conn == cb);
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
  PsPool *pool = new_pool(2, 2, 0, 0);
  PsPoolKey *ka = key_n(pool, 1);
  PsPoolKey *kb = key_n(pool, 2);
  PsItem *a1 = open_one(pool, ka, GINT_TO_POINTER(1));
  PsItem *a2 = open_one(pool, ka, GINT_TO_POINTER(2));

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

Test(pool, release_after_the_lifetime_closes_the_connection)
{
  PsPool *pool = new_pool(2, 0, 1000 * SEC, 0);
  ps_pool_set_clock(pool, fake_clock);
  PsPoolKey *key = key_n(pool, 1);
  gint64 t0 = fake_now_us;
  PsItem *item = open_one(pool, key, GINT_TO_POINTER(1));
  cr_assert_eq(item->created_us, t0);
  /* Up to 2.5% jitter, never later than the limit. */
  cr_assert_leq(item->expires_us, t0 + 1000 * SEC);
  cr_assert_geq(item->expires_us, t0 + 975 * SEC);

  fake_now_us = t0 + 500 * SEC;
  cr_assert(ps_pool_release(pool, item, FALSE), "half-way through its life it is kept");
  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE);
  cr_assert_eq(g.item, item);

  fake_now_us = t0 + 1001 * SEC;
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
  PsPool *pool = new_pool(2, 0, 1000 * SEC, 0);
  ps_pool_set_clock(pool, fake_clock);
  PsPoolKey *key = key_n(pool, 1);
  gint64 t0 = fake_now_us;
  PsItem *item = open_one(pool, key, GINT_TO_POINTER(1));
  fake_now_us = t0 + 10 * SEC;
  cr_assert(ps_pool_release(pool, item, FALSE));

  fake_now_us = t0 + 1001 * SEC;
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
  PsPool *pool = new_pool(2, 0, 0, 10 * SEC);
  ps_pool_set_clock(pool, fake_clock);
  PsPoolKey *key = key_n(pool, 1);
  gint64 t0 = fake_now_us;
  PsItem *old = open_one(pool, key, GINT_TO_POINTER(1));
  PsItem *young = open_one(pool, key, GINT_TO_POINTER(2));
  cr_assert(ps_pool_release(pool, old, FALSE));
  fake_now_us = t0 + 8 * SEC;
  cr_assert(ps_pool_release(pool, young, FALSE));
  fake_now_us = t0 + 12 * SEC; /* old: idle 12 s; young: idle 4 s */

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
  PsPool *pool = new_pool(3, 0, 0, 10 * SEC);
  ps_pool_set_clock(pool, fake_clock);
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

/* ---- keys ------------------------------------------------------------------------- */

Test(pool, the_same_digest_gives_the_same_key)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *a = key_n(pool, 1);
  PsPoolKey *again = key_n(pool, 1);
  PsPoolKey *other = key_n(pool, 2);
  cr_assert_not_null(a);
  cr_assert_eq(a, again);
  cr_assert_neq(a, other);
  cr_assert_str_eq(ps_pool_key_label(a), "user1@host:3306/db");
  cr_assert_str_eq(ps_pool_key_label(other), "user2@host:3306/db");

  /* Digests differing only in their last byte are different keys. */
  guint8 d1[PS_KEY_DIGEST_LEN] = {0}, d2[PS_KEY_DIGEST_LEN] = {0};
  d2[PS_KEY_DIGEST_LEN - 1] = 1;
  PsPoolKey *z1 = ps_pool_key(pool, d1, "z1", NULL);
  PsPoolKey *z2 = ps_pool_key(pool, d2, "z2", NULL);
  cr_assert_neq(z1, z2);
  cr_assert_eq(ps_pool_key(pool, d1, "ignored", NULL), z1);
  cr_assert_str_eq(ps_pool_key_label(z1), "z1", "the first label names the key");

  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.keys, 4);
  ps_pool_free(pool, NULL);
}

static int destroyed[4];

static void
record_destroy(gpointer p)
{
  destroyed[GPOINTER_TO_INT(p)]++;
}

Test(pool, key_data_keeps_the_first_value_and_destroys_later_ones)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  cr_assert_null(ps_pool_key_data(key));

  gpointer first = GINT_TO_POINTER(1), second = GINT_TO_POINTER(2);
  cr_assert_eq(ps_pool_key_set_data(key, first, record_destroy), first);
  cr_assert_eq(ps_pool_key_data(key), first);
  cr_assert_eq(destroyed[1], 0);

  cr_assert_eq(ps_pool_key_set_data(key, second, record_destroy), first,
               "the first caller wins");
  cr_assert_eq(ps_pool_key_data(key), first);
  cr_assert_eq(destroyed[2], 1, "the losing value is destroyed");
  cr_assert_eq(destroyed[1], 0, "the winning value is not");

  ps_pool_free(pool, NULL);
  cr_assert_eq(destroyed[1], 1, "the pool destroys the kept value when it is freed");
  cr_assert_eq(destroyed[2], 1);
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

/* ---- per-key settings and counters -------------------------------------------------- */

Test(pool, a_key_with_its_own_settings_uses_its_own_size_and_lifetime)
{
  PsPool *pool = new_pool(4, 0, 0, 0);
  guint8 d[PS_KEY_DIGEST_LEN] = {7};
  PsPoolSettings small = {.pool_size = 1, .max_lifetime_us = 10 * MS};
  PsPoolKey *k = ps_pool_key(pool, d, "small@h:1/db", &small);
  cr_assert_eq(ps_pool_key_settings(k)->pool_size, 1);
  PsItem *a = open_one(pool, k, GINT_TO_POINTER(1));
  PsGrant g;
  ps_pool_acquire(pool, k, in_ms(30), &g);
  cr_assert_eq(g.kind, PS_GRANT_TIMEOUT, "the key's size of 1 applies, not the pool's 4");
  cr_assert(g.first_wait, "the key's first wait is flagged");
  ps_pool_acquire(pool, k, in_ms(1), &g);
  cr_assert_not(g.first_wait, "only the first");
  g_usleep(20 * MS);
  cr_assert_not(ps_pool_release(pool, a, TRUE), "the key's lifetime applies");
  ps_pool_item_free(a);
  PsPoolKey *other = key_n(pool, 1);
  cr_assert_eq(ps_pool_key_settings(other)->pool_size, 4, "NULL settings: the pool's limits");
  ps_pool_free(pool, NULL);
}

Test(pool, two_keys_with_one_label_get_distinct_names)
{
  PsPool *pool = new_pool(2, 0, 0, 0);
  guint8 d1[PS_KEY_DIGEST_LEN] = {1}, d2[PS_KEY_DIGEST_LEN] = {2}, d3[PS_KEY_DIGEST_LEN] = {3};
  PsPoolKey *a = ps_pool_key(pool, d1, "u@h:1/db", NULL);
  PsPoolKey *b = ps_pool_key(pool, d2, "u@h:1/db", NULL);
  PsPoolKey *c = ps_pool_key(pool, d3, "u@h:1/db", NULL);
  cr_assert_str_eq(ps_pool_key_label(a), "u@h:1/db");
  cr_assert_str_eq(ps_pool_key_label(b), "u@h:1/db#2");
  cr_assert_str_eq(ps_pool_key_label(c), "u@h:1/db#3");
  cr_assert_eq(ps_pool_key(pool, d2, "u@h:1/db", NULL), b, "finding a key does not rename it");
  ps_pool_free(pool, NULL);
}

Test(pool, each_key_counts_its_own_borrows_closes_resets_and_waits)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *k1 = key_n(pool, 1), *k2 = key_n(pool, 2);
  PsItem *a = open_one(pool, k1, GINT_TO_POINTER(1));
  cr_assert(ps_pool_release(pool, a, TRUE));
  PsGrant g;
  ps_pool_acquire(pool, k1, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE);
  PsGrant late;
  ps_pool_acquire(pool, k1, in_ms(20), &late); /* waits ~20 ms, then times out */
  cr_assert_eq(late.kind, PS_GRANT_TIMEOUT);
  ps_pool_discard(pool, g.item, PS_CLOSE_RESET_FAILED);
  ps_pool_item_free(g.item);
  PsItem *b = open_one(pool, k2, GINT_TO_POINTER(2));
  cr_assert(ps_pool_release(pool, b, FALSE));

  g_autoptr(GArray) snap = ps_pool_snapshot(pool);
  cr_assert_eq(snap->len, 2);
  PsKeySnapshot *s1 = &g_array_index(snap, PsKeySnapshot, 0);
  PsKeySnapshot *s2 = &g_array_index(snap, PsKeySnapshot, 1);
  cr_assert_str_eq(s1->label, "user1@host:3306/db", "creation order");
  cr_assert_eq(s1->counts.borrowed, 2);
  cr_assert_eq(s1->counts.served_idle, 1);
  cr_assert_eq(s1->counts.opened, 1);
  cr_assert_eq(s1->counts.resets, 1);
  cr_assert_eq(s1->counts.closed, 1);
  cr_assert_eq(s1->counts.closed_by[PS_CLOSE_RESET_FAILED], 1);
  cr_assert_eq(s1->counts.waits, 1);
  cr_assert_eq(s1->counts.wait_timeouts, 1);
  cr_assert_eq(s1->counts.wait_count, 3, "every acquire is observed");
  cr_assert_eq(s1->counts.wait_buckets[0], 2, "two did not wait");
  cr_assert_eq(s1->counts.wait_buckets[3], 1, "the timed-out wait is in the 10-100 ms bucket");
  cr_assert_geq(s1->counts.wait_sum_us, 20 * MS);
  cr_assert_eq(s1->open, 0);
  cr_assert_eq(s2->counts.borrowed, 1);
  cr_assert_eq(s2->counts.resets, 0);
  cr_assert_eq(s2->idle, 1);
  cr_assert_eq(ps_close_reason_name(PS_CLOSE_UNCLEAN)[0], 'e', "named \"error\" in statistics");
  ps_pool_free(pool, NULL);
}

/* ---- freeing unused keys (bounded memory) ------------------------------------------- */

static guint keys_destroyed;

static void
count_destroy(gpointer data)
{
  keys_destroyed++;
}

static guint
pools_now(PsPool *pool)
{
  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  return c.keys;
}

Test(pool, a_key_nothing_refers_to_is_freed_with_its_data_and_its_label)
{
  PsPool *pool = new_pool(2, 0, 0, 0);
  ps_pool_set_clock(pool, fake_clock);
  keys_destroyed = 0;
  PsPoolKey *k = key_n(pool, 1);
  ps_pool_key_set_data(k, GINT_TO_POINTER(1), count_destroy);
  PsPoolKey *k2 = key_n(pool, 1);
  cr_assert_eq(k2, k);
  cr_assert_eq(ps_pool_forget_unused(pool, 0), 0, "held twice: kept");
  ps_pool_key_release(pool, k, FALSE);
  ps_pool_key_release(pool, k, FALSE);
  fake_now_us += 59 * SEC;
  cr_assert_eq(ps_pool_forget_unused(pool, 60 * SEC), 0, "used 59 s ago: kept");
  fake_now_us += 1 * SEC;
  cr_assert_eq(ps_pool_forget_unused(pool, 60 * SEC), 1, "unused for 60 s: freed");
  cr_assert_eq(keys_destroyed, 1, "its data is destroyed (the profile wipes the password)");
  cr_assert_eq(pools_now(pool), 0);
  /* A key with the same label later is named as if the old one never existed. */
  guint8 d[PS_KEY_DIGEST_LEN] = {9};
  PsPoolKey *again = ps_pool_key(pool, d, "user1@host:3306/db", NULL);
  cr_assert_str_eq(ps_pool_key_label(again), "user1@host:3306/db");
  ps_pool_free(pool, NULL);
}

Test(pool, a_key_is_kept_while_a_connection_a_waiter_or_a_victim_refers_to_it)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *k = key_n(pool, 1);
  PsItem *item = open_one(pool, k, GINT_TO_POINTER(1));
  ps_pool_key_release(pool, k, TRUE);
  cr_assert_eq(pools_now(pool), 1, "a lent connection keeps its key");
  cr_assert_eq(ps_pool_forget_unused(pool, 0), 0);
  cr_assert(ps_pool_release(pool, item, FALSE));
  cr_assert_eq(ps_pool_forget_unused(pool, 0), 0, "an idle connection keeps its key");
  GSList *victims = ps_pool_take_idle(pool, TRUE, PS_CLOSE_SHUTDOWN);
  cr_assert_eq(g_slist_length(victims), 1);
  cr_assert_eq(ps_pool_forget_unused(pool, 0), 0, "a victim being closed keeps its key");
  cr_assert_str_eq(ps_pool_key_label(item->owner), "user1@host:3306/db");
  free_victims(victims);
  cr_assert_eq(ps_pool_forget_unused(pool, 0), 1, "nothing refers to it any more");
  ps_pool_free(pool, NULL);
}

Test(pool, a_key_that_failed_its_first_open_is_freed_at_once)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  for (int i = 0; i < 1000; i++) {
    guint8 d[PS_KEY_DIGEST_LEN] = {0};
    memcpy(d, &i, sizeof i);
    PsPoolKey *k = ps_pool_key(pool, d, "u@h:1/db", NULL);
    PsGrant g;
    ps_pool_acquire(pool, k, in_ms(1000), &g);
    cr_assert_eq(g.kind, PS_GRANT_OPEN);
    ps_pool_open_failed(pool, k);
    ps_pool_key_release(pool, k, TRUE);
  }
  cr_assert_eq(pools_now(pool), 0, "no pool left behind by failed opens");
  /* A key that is still wanted is not freed by forget_now. */
  PsPoolKey *k = key_n(pool, 2);
  PsPoolKey *held = key_n(pool, 2);
  ps_pool_key_release(pool, k, TRUE);
  cr_assert_eq(pools_now(pool), 1, "another caller still holds it");
  ps_pool_key_release(pool, held, TRUE);
  cr_assert_eq(pools_now(pool), 0);
  ps_pool_free(pool, NULL);
}

Test(pool, statistics_keep_creation_order_when_keys_are_freed)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *a = key_n(pool, 1), *b = key_n(pool, 2), *c = key_n(pool, 3);
  ps_pool_key_release(pool, b, TRUE);
  PsPoolKey *d = key_n(pool, 4);
  g_autoptr(GArray) snap = ps_pool_snapshot(pool);
  cr_assert_eq(snap->len, 3);
  cr_assert_str_eq(g_array_index(snap, PsKeySnapshot, 0).label, ps_pool_key_label(a));
  cr_assert_str_eq(g_array_index(snap, PsKeySnapshot, 1).label, ps_pool_key_label(c));
  cr_assert_str_eq(g_array_index(snap, PsKeySnapshot, 2).label, ps_pool_key_label(d));
  ps_pool_free(pool, NULL);
}

Test(pool, one_caller_proves_a_key_per_interval_and_a_refusal_revokes_it)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *k = key_n(pool, 1);
  ps_pool_key_proved(k, 100 * SEC);
  cr_assert_not(ps_pool_key_claim_proof(k, 159 * SEC, 60 * SEC), "proved 59 s ago");
  cr_assert(ps_pool_key_claim_proof(k, 160 * SEC, 60 * SEC), "60 s: due");
  cr_assert_not(ps_pool_key_claim_proof(k, 160 * SEC, 60 * SEC), "claimed: only one caller");
  cr_assert_not(ps_pool_key_claim_proof(k, 999 * SEC, 0), "interval 0: never");
  ps_pool_key_set_revoked(k);
  cr_assert(ps_pool_key_revoked(k));
  cr_assert(ps_pool_key_claim_proof(k, 161 * SEC, 60 * SEC), "revoked: due at once");
  ps_pool_key_proved(k, 162 * SEC);
  cr_assert_not(ps_pool_key_revoked(k), "a new proof ends the revocation");
  ps_pool_free(pool, NULL);
}
