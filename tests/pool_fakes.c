/* pool_fakes.c: pools, keys, fake connections, the fake clock and waiter threads for the
 * pool's unit tests (pool_fakes.h). Nothing here talks to a server. */
#include "pool_fakes.h"

PsPool *
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

PsPool *
new_pool_on_fake_clock(guint per_key, guint total, gint64 max_lifetime_us, gint64 idle_timeout_us)
{
  PsPool *pool = new_pool(per_key, total, max_lifetime_us, idle_timeout_us);
  ps_pool_set_clock(pool, fake_clock);
  return pool;
}

PsPoolKey *
key_n(PsPool *pool, guint8 n)
{
  guint8 digest[PS_KEY_DIGEST_LEN];
  for (guint i = 0; i < PS_KEY_DIGEST_LEN; i++)
    digest[i] = (guint8)(n * 31 + i);
  char label[32];
  g_snprintf(label, sizeof label, "user%u@host:3306/db", n);
  return ps_pool_key(pool, digest, label, NULL);
}

gint64
in_ms(gint64 ms)
{
  return g_get_monotonic_time() + ms * MS;
}

void
free_victims(GSList *victims)
{
  g_slist_free_full(victims, (GDestroyNotify)ps_pool_item_free);
}

PsItem *
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

/* The count is raised under the pool lock that the waiter keeps until it sleeps on its
 * condition, so once it is seen the waiter really is waiting. */
void
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

/* Only one test runs per process, so one clock per process is enough. */
static gint64 fake_now_us = 1000 * SEC;

gint64
fake_clock(void)
{
  return __atomic_load_n(&fake_now_us, __ATOMIC_RELAXED);
}

void
clock_set(gint64 us)
{
  __atomic_store_n(&fake_now_us, us, __ATOMIC_RELAXED);
}

void
clock_add(gint64 us)
{
  __atomic_add_fetch(&fake_now_us, us, __ATOMIC_RELAXED);
}

static gpointer
waiter_main(gpointer p)
{
  Waiter *w = p;
  ps_pool_acquire(w->pool, w->key, w->deadline_us, &w->grant);
  return NULL;
}

GThread *
start_waiter(Waiter *w, PsPool *pool, PsPoolKey *key)
{
  *w = (Waiter){.pool = pool, .key = key, .deadline_us = in_ms(20000)};
  return g_thread_new("waiter", waiter_main, w);
}
