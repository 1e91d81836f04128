/* test_pool_keys.c: the pool's keys, without a server: one key per digest, labels, key
 * data, per-key settings, per-key counters and the snapshot, the proof interval, and freeing
 * the keys nothing refers to (bounded memory). */
#include <criterion/criterion.h>
#include <glib.h>
#include <string.h>

#include "pool_fakes.h"

TestSuite(pool, .timeout = 30);

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
  /* It waited at least its 20 ms: the 10-100 ms bucket or a later one (an upper bound would
   * be a timing assertion; a loaded machine once took over 100 ms to wake it). */
  guint64 late_waits = 0;
  for (guint i = 3; i < PS_WAIT_BUCKETS; i++)
    late_waits += s1->counts.wait_buckets[i];
  cr_assert_eq(late_waits, 1, "the timed-out wait is in the 10-100 ms bucket or above");
  cr_assert_eq(s1->counts.wait_buckets[1] + s1->counts.wait_buckets[2], 0,
               "no wait below 10 ms");
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
  PsPool *pool = new_pool_on_fake_clock(2, 0, 0, 0);
  keys_destroyed = 0;
  PsPoolKey *k = key_n(pool, 1);
  ps_pool_key_set_data(k, GINT_TO_POINTER(1), count_destroy);
  PsPoolKey *k2 = key_n(pool, 1);
  cr_assert_eq(k2, k);
  cr_assert_eq(ps_pool_forget_unused(pool, 0), 0, "held twice: kept");
  ps_pool_key_release(pool, k, FALSE);
  ps_pool_key_release(pool, k, FALSE);
  clock_add(59 * SEC);
  cr_assert_eq(ps_pool_forget_unused(pool, 60 * SEC), 0, "used 59 s ago: kept");
  clock_add(1 * SEC);
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
