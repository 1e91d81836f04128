/* pool_idle.c: taking idle connections out of the pool (the housekeeper's sweeps of expired
 * and dead ones, shutdown, a fork's abandoned pool, a revoked key's, the oldest one over
 * POOLSHIM_HOST_MAX), filling a key up to POOLSHIM_MIN_IDLE in the background, and freeing
 * items and the pool. Under the pool's one lock, with the helpers pool.c shares through
 * pool-state.h. */
#include "pool-state.h"

GSList *
ps_pool_take_idle(PsPool *pool, gboolean all, PsCloseReason reason)
{
  GSList *victims = NULL;
  ps_pool_lock(pool);
  gint64 now = pool->now();
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, pool->keys);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    PsPoolKey *key = value;
    if (!all) {
      ps_pool_sweep_key(pool, key, now, &victims);
      continue;
    }
    while (key->idle.head)
      victims = g_slist_prepend(victims, ps_pool_unlink_idle(pool, key->idle.head->data, reason));
  }
  if (victims)
    ps_pool_dispatch(pool, now);
  ps_pool_unlock(pool);
  return victims;
}

gboolean
ps_pool_reserve_fill(PsPool *pool, PsPoolKey *key)
{
  ps_pool_lock(pool);
  gboolean ok = key->idle.length + key->filling < MIN(key->settings.min_idle,
                                                      key->settings.pool_size) &&
                ps_pool_room_to_grow(pool, key);
  if (ok) {
    key->open++;
    key->filling++;
    pool->total_open++;
  }
  ps_pool_unlock(pool);
  return ok;
}

void
ps_pool_fill_failed(PsPool *pool, PsPoolKey *key)
{
  ps_pool_lock(pool);
  key->filling--;
  ps_pool_unlock(pool);
  ps_pool_open_failed(pool, key);
}

PsItem *
ps_pool_filled(PsPool *pool, PsPoolKey *key, gpointer conn, PsItem **item_out)
{
  PsItem *item = g_new0(PsItem, 1);
  ps_pool_lock(pool);
  gint64 now = pool->now();
  ps_pool_new_item(pool, item, key, conn, now);
  key->filling--;
  *item_out = item;
  g_queue_push_head_link(&key->idle, &item->link);
  ps_pool_dispatch(pool, now);
  ps_pool_unlock(pool);
  return item;
}

GSList *
ps_pool_take_idle_matching(PsPool *pool, gboolean (*match)(PsItem *item, gpointer data),
                           gpointer data, PsCloseReason reason)
{
  GSList *victims = NULL;
  ps_pool_lock(pool);
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, pool->keys);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    PsPoolKey *key = value;
    for (GList *l = key->idle.head; l;) {
      GList *next = l->next;
      if (match(l->data, data))
        victims = g_slist_prepend(victims, ps_pool_unlink_idle(pool, l->data, reason));
      l = next;
    }
  }
  if (victims)
    ps_pool_dispatch(pool, pool->now());
  ps_pool_unlock(pool);
  return victims;
}

GSList *
ps_pool_take_oldest_idle(PsPool *pool, gboolean (*match)(const char *label, gpointer data),
                         gpointer data, PsCloseReason reason)
{
  ps_pool_lock(pool);
  PsItem *oldest = NULL;
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, pool->keys);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    PsPoolKey *key = value;
    if (!key->idle.tail || !match(key->label, data))
      continue;
    PsItem *cand = key->idle.tail->data;
    if (!oldest || cand->idle_since_us < oldest->idle_since_us)
      oldest = cand;
  }
  GSList *victims = NULL;
  if (oldest) {
    victims = g_slist_prepend(NULL, ps_pool_unlink_idle(pool, oldest, reason));
    ps_pool_dispatch(pool, pool->now());
  }
  ps_pool_unlock(pool);
  return victims;
}

void
ps_pool_item_free(PsItem *item)
{
  PsPoolKey *key = item ? item->owner : NULL;
  if (key) {
    PsPool *pool = key->pool;
    ps_pool_lock(pool);
    key->items--;
    key->last_used_us = pool->now();
    ps_pool_unlock(pool);
  }
  g_free(item);
}

void
ps_pool_free(PsPool *pool, GSList **victims)
{
  GSList *idle = ps_pool_take_idle(pool, TRUE, PS_CLOSE_SHUTDOWN);
  /* Every item, the victims included, may outlive the pool: none refers to its key now. */
  for (GSList *l = idle; l; l = l->next)
    ((PsItem *)l->data)->owner = NULL;
  if (victims)
    *victims = g_slist_concat(*victims, idle);
  else
    g_slist_free_full(idle, (GDestroyNotify)ps_pool_item_free);
  ps_pool_keys_clear(pool);
  g_mutex_clear(&pool->lock);
  g_free(pool);
}
