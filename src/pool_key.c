/* pool_key.c: the pool's keys (one per connect digest): creation and "#n" labels, the
 * per-thread cache of the last key found, holds and forgetting, per-key accessors and the
 * read-only views (key list, counts, snapshot). No MySQL call, no I/O (pool.c). */
#include "pool-state.h"

#include <string.h>

/* How many keys asked for one label (for "#n" suffixes), and how many of them live. */
typedef struct {
  guint seen;
  guint live;
} PsLabelUse;

static guint
digest_hash(gconstpointer p)
{
  guint h;
  memcpy(&h, p, sizeof h); /* already a cryptographic digest: any 4 bytes are uniform */
  return h;
}

static gboolean
digest_equal(gconstpointer a, gconstpointer b)
{
  return memcmp(a, b, PS_KEY_DIGEST_LEN) == 0;
}

/* The key's data (the profile, with its opener's copy of the password) wipes what is secret
 * in its destroy function. */
static void
key_free(gpointer p)
{
  PsPoolKey *key = p;
  if (key->data_destroy)
    key->data_destroy(key->data);
  g_free(key->label);
  g_free(key->base_label);
  g_free(key);
}

PsPoolKey *
ps_pool_key(PsPool *pool, const guint8 digest[PS_KEY_DIGEST_LEN], const char *label,
            const PsPoolSettings *settings)
{
  ps_pool_lock(pool);
  PsPoolKey *key = g_hash_table_lookup(pool->keys, digest);
  if (!key) {
    key = g_new0(PsPoolKey, 1);
    memcpy(key->digest, digest, PS_KEY_DIGEST_LEN);
    /* Same user, server and database with other options is another pool: its statistics
     * need a name of their own. */
    PsLabelUse *use = g_hash_table_lookup(pool->labels, label);
    if (!use) {
      use = g_new0(PsLabelUse, 1);
      g_hash_table_insert(pool->labels, g_strdup(label), use);
    }
    key->base_label = g_strdup(label);
    key->label = use->seen ? g_strdup_printf("%s#%u", label, use->seen + 1) : g_strdup(label);
    use->seen++;
    use->live++;
    key->serial = pool->next_serial++;
    if (settings) {
      key->settings = *settings;
    } else {
      key->settings.pool_size = pool->limits.per_key;
      key->settings.max_lifetime_us = pool->limits.max_lifetime_us;
      key->settings.idle_timeout_us = pool->limits.idle_timeout_us;
    }
    if (key->settings.pool_size == 0)
      key->settings.pool_size = 1;
    key->pool = pool;
    g_queue_init(&key->idle);
    g_hash_table_insert(pool->keys, key->digest, key);
  }
  key->holds++;
  key->last_used_us = pool->now();
  ps_pool_unlock(pool);
  return key;
}

/* The key this thread found last, for the next find of the same digest (a program connects
 * with the same credentials again and again). Valid while no key was unlinked and no pool
 * freed since (key_gen, under a pool's lock or at pool free): only then is the pointer
 * followed. */
typedef struct {
  PsPool *pool;
  PsPoolKey *key;
  guint64 gen;
} PsFoundKey;
static guint64 key_gen = 1; /* atomic; 0 = never valid */
static _Thread_local PsFoundKey found_key __attribute__((tls_model("initial-exec")));

PsPoolKey *
ps_pool_key_find(PsPool *pool, const guint8 digest[PS_KEY_DIGEST_LEN])
{
  PsFoundKey *f = &found_key;
  ps_pool_lock(pool);
  PsPoolKey *key = NULL;
  if (f->pool == pool && f->gen == __atomic_load_n(&key_gen, __ATOMIC_RELAXED) &&
      memcmp(f->key->digest, digest, PS_KEY_DIGEST_LEN) == 0) {
    key = f->key;
  } else {
    key = g_hash_table_lookup(pool->keys, digest);
    if (key) {
      f->pool = pool;
      f->key = key;
      f->gen = __atomic_load_n(&key_gen, __ATOMIC_RELAXED);
    }
  }
  if (key)
    key->holds++;
  ps_pool_unlock_quiet(pool);
  return key;
}

void
ps_pool_key_hold(PsPool *pool, PsPoolKey *key)
{
  ps_pool_lock(pool);
  key->holds++;
  ps_pool_unlock(pool);
}

/* Nothing refers to the key: no caller holds it, no connection of it exists or is being
 * opened, nobody waits for one. */
static gboolean
key_unused(const PsPoolKey *key)
{
  return key->holds == 0 && key->items == 0 && key->open == 0 && key->waiting == 0 &&
         key->filling == 0;
}

/* Takes an unused key out of the pool (under the lock); the caller frees it outside. */
static void
unlink_key(PsPool *pool, PsPoolKey *key)
{
  __atomic_fetch_add(&key_gen, 1, __ATOMIC_RELAXED); /* every thread's found_key is stale */
  g_hash_table_steal(pool->keys, key->digest);
  PsLabelUse *use = g_hash_table_lookup(pool->labels, key->base_label);
  /* The numbering starts again only once no key of the label lives: names stay unique. */
  if (use && --use->live == 0)
    g_hash_table_remove(pool->labels, key->base_label);
}

void
ps_pool_key_release(PsPool *pool, PsPoolKey *key, gboolean forget_now)
{
  if (!key)
    return;
  ps_pool_lock(pool);
  if (key->holds > 0)
    key->holds--;
  /* The time the pool read a moment ago (the acquire of the same connect) is recent enough
   * to decide, minutes later, that nothing used the key: no second clock reading. */
  gint64 seen = __atomic_load_n(&pool->seen_us, __ATOMIC_RELAXED);
  key->last_used_us = seen > key->last_used_us ? seen : pool->now();
  gboolean forget = forget_now && key_unused(key);
  if (forget)
    unlink_key(pool, key);
  ps_pool_unlock_quiet(pool);
  if (forget)
    key_free(key);
}

guint
ps_pool_forget_unused(PsPool *pool, gint64 unused_us)
{
  GSList *gone = NULL;
  ps_pool_lock(pool);
  gint64 now = pool->now();
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, pool->keys);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    PsPoolKey *key = value;
    if (key_unused(key) && now - key->last_used_us >= unused_us)
      gone = g_slist_prepend(gone, key);
  }
  for (GSList *l = gone; l; l = l->next)
    unlink_key(pool, l->data);
  ps_pool_unlock(pool);
  guint n = g_slist_length(gone);
  g_slist_free_full(gone, key_free);
  return n;
}

void
ps_pool_keys_init(PsPool *pool)
{
  pool->keys = g_hash_table_new_full(digest_hash, digest_equal, NULL, key_free);
  pool->labels = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
}

void
ps_pool_keys_clear(PsPool *pool)
{
  __atomic_fetch_add(&key_gen, 1, __ATOMIC_RELAXED);
  g_hash_table_unref(pool->keys);
  g_hash_table_unref(pool->labels);
}

gboolean
ps_pool_key_claim_proof(PsPoolKey *key, gint64 now_us, gint64 interval_us)
{
  gint64 last = __atomic_load_n(&key->proved_us, __ATOMIC_ACQUIRE);
  if (interval_us <= 0 || now_us - last < interval_us)
    return FALSE;
  /* One connect proves it; the others that arrive meanwhile go on with the last proof. */
  return __atomic_compare_exchange_n(&key->proved_us, &last, now_us, FALSE, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE);
}

void
ps_pool_key_proved(PsPoolKey *key, gint64 when_us)
{
  __atomic_store_n(&key->proved_us, when_us, __ATOMIC_RELEASE);
  if (when_us)
    __atomic_store_n(&key->revoked, FALSE, __ATOMIC_RELEASE);
}

void
ps_pool_key_set_revoked(PsPoolKey *key)
{
  __atomic_store_n(&key->revoked, TRUE, __ATOMIC_RELEASE);
  __atomic_store_n(&key->proved_us, 0, __ATOMIC_RELEASE);
}

gboolean
ps_pool_key_revoked(const PsPoolKey *key)
{
  return __atomic_load_n(&key->revoked, __ATOMIC_ACQUIRE);
}

const char *
ps_pool_key_label(const PsPoolKey *key)
{
  return key->label;
}

const guint8 *
ps_pool_key_digest(const PsPoolKey *key)
{
  return key->digest;
}

PsGrainCounts *
ps_pool_key_grain_counts(PsPoolKey *key)
{
  return &key->grain;
}

const PsPoolSettings *
ps_pool_key_settings(const PsPoolKey *key)
{
  return &key->settings; /* immutable after creation */
}

gpointer
ps_pool_key_data(PsPoolKey *key)
{
  return g_atomic_pointer_get(&key->data);
}

gpointer
ps_pool_key_set_data(PsPoolKey *key, gpointer data, GDestroyNotify destroy)
{
  PsPool *pool = key->pool;
  ps_pool_lock(pool);
  if (key->data) {
    ps_pool_unlock(pool);
    if (destroy)
      destroy(data);
    return key->data;
  }
  key->data_destroy = destroy;
  g_atomic_pointer_set(&key->data, data);
  ps_pool_unlock(pool);
  return data;
}

void
ps_pool_key_want(PsPoolKey *key, gboolean on)
{
  __atomic_fetch_add(&key->wanted, on ? 1 : -1, __ATOMIC_RELAXED);
}

guint
ps_pool_key_wanted(PsPoolKey *key)
{
  return (guint)MAX(0, __atomic_load_n(&key->wanted, __ATOMIC_RELAXED));
}

void
ps_pool_key_cap_idle(PsPoolKey *key, gint64 cap_us)
{
  ps_pool_lock(key->pool);
  key->idle_cap_us = cap_us;
  ps_pool_unlock(key->pool);
}

GPtrArray *
ps_pool_key_list(PsPool *pool)
{
  ps_pool_lock(pool);
  GPtrArray *keys = g_ptr_array_sized_new(g_hash_table_size(pool->keys));
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, pool->keys);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    ((PsPoolKey *)value)->holds++;
    g_ptr_array_add(keys, value);
  }
  ps_pool_unlock(pool);
  return keys;
}

void
ps_pool_key_list_free(PsPool *pool, GPtrArray *keys)
{
  for (guint i = 0; i < keys->len; i++)
    ps_pool_key_release(pool, keys->pdata[i], FALSE);
  g_ptr_array_unref(keys);
}

void
ps_pool_counts(PsPool *pool, PsPoolCounts *out)
{
  ps_pool_lock(pool);
  *out = pool->counts;
  out->open = pool->total_open;
  out->keys = g_hash_table_size(pool->keys);
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, pool->keys);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    PsPoolKey *key = value;
    out->idle += key->idle.length;
    out->lent += key->lent;
    out->waiting += key->waiting;
  }
  ps_pool_unlock(pool);
}

static gint
by_serial(gconstpointer a, gconstpointer b)
{
  guint sa = ((const PsKeySnapshot *)a)->serial, sb = ((const PsKeySnapshot *)b)->serial;
  return sa < sb ? -1 : sa > sb;
}

static void
snapshot_clear(gpointer data)
{
  g_free(((PsKeySnapshot *)data)->label);
}

GArray *
ps_pool_snapshot(PsPool *pool)
{
  ps_pool_lock(pool);
  guint n = g_hash_table_size(pool->keys);
  GArray *out = g_array_sized_new(FALSE, TRUE, sizeof(PsKeySnapshot), n);
  g_array_set_clear_func(out, snapshot_clear);
  g_array_set_size(out, n);
  GHashTableIter it;
  gpointer value;
  guint i = 0;
  g_hash_table_iter_init(&it, pool->keys);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    PsPoolKey *key = value;
    PsKeySnapshot *s = &g_array_index(out, PsKeySnapshot, i++);
    s->serial = key->serial;
    s->label = g_strdup(key->label);
    s->settings = key->settings;
    s->counts = key->counts;
    s->grain.takes = __atomic_load_n(&key->grain.takes, __ATOMIC_RELAXED);
    s->grain.reborrows = __atomic_load_n(&key->grain.reborrows, __ATOMIC_RELAXED);
    for (guint r = 0; r < PS_GRAIN_PIN_REASONS; r++)
      s->grain.pins[r] = __atomic_load_n(&key->grain.pins[r], __ATOMIC_RELAXED);
    s->open = key->open;
    s->idle = key->idle.length;
    s->lent = key->lent;
    s->waiting = key->waiting;
  }
  ps_pool_unlock(pool);
  g_array_sort(out, by_serial); /* creation order: keys come and go */
  return out;
}

gint64
ps_pool_key_oldest_wait_us(PsPool *pool, PsPoolKey *key, gint64 arrived_us)
{
  ps_pool_lock(pool);
  gint64 since = ps_pool_oldest_since(key); /* the queue is in order of arrival */
  gint64 age = key->waitq.head && (!arrived_us || since < arrived_us) ? pool->now() - since : 0;
  ps_pool_unlock(pool);
  return age;
}
