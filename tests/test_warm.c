/* Warm and steady (POOLSHIM_MIN_IDLE): a pool keeps idle connections open ahead of demand,
 * opened in the background after its first connect, and replaces the ones that die or
 * expire without a borrower's help. Seen from the server: its threads of the test user
 * while an unmodified probe makes no call at all. */
#include <string.h>

#include <criterion/criterion.h>

#include "opsrun.h"

TestSuite(warm, .timeout = 90);

/* The server threads of the test user, waited for (max timeout_ms) until == want. */
static long long
wait_threads(long long want, int timeout_ms)
{
  const char *user = pst_env("PS_TEST_USER");
  gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
  long long n;
  while ((n = pst_user_threads(user)) != want && g_get_monotonic_time() < end)
    g_usleep(20 * 1000);
  return n;
}

/* The ids of the test user's server threads, sorted, as text. */
static char *
thread_ids(void)
{
  return pst_scalar_str(pst_admin(),
                        "SELECT GROUP_CONCAT(ID ORDER BY ID) FROM information_schema.PROCESSLIST "
                        "WHERE USER = '%s'",
                        pst_env("PS_TEST_USER"));
}

/* A probe that opens and closes one connection, then makes no call for 30 s, with `env`. */
static OpsProbe *
start_quiet_probe(const char *const *env)
{
  pst_admin();
  cr_assert_eq(wait_threads(0, 10000), 0, "threads of the test user left by another test");
  const char *args[] = {"idle", "1", "30", NULL};
  OpsProbe *p = ops_start(args, env);
  g_autofree char *idle = ops_wait_value(p, "IDLE", 15000);
  cr_assert_str_eq(idle, "1");
  return p;
}

Test(warm, a_pool_fills_up_to_min_idle_in_the_background_and_replaces_a_killed_connection)
{
  const char *env[] = {"POOLSHIM_MIN_IDLE", "3", "POOLSHIM_POOL_SIZE", "5", NULL};
  OpsProbe *p = start_quiet_probe(env);
  /* One connect and close by the probe; the other two come from the pool alone. */
  cr_assert_eq(wait_threads(3, 10000), 3, "the pool did not fill up to 3 idle connections");
  g_usleep(1200 * 1000);
  cr_assert_eq(pst_user_threads(pst_env("PS_TEST_USER")), 3, "the pool opened more than 3");

  g_autofree char *before = thread_ids();
  long long victim = g_ascii_strtoll(before, NULL, 10);
  pst_exec(pst_admin(), "KILL %lld", victim);
  pst_wait_thread_gone((unsigned long)victim);
  /* The housekeeper sees the closed socket and opens a replacement: 3 again, no borrower. */
  cr_assert_eq(wait_threads(3, 10000), 3, "the killed connection was not replaced");
  g_autofree char *after = thread_ids();
  g_autofree char *victim_text = g_strdup_printf("%lld", victim);
  g_auto(GStrv) ids = g_strsplit(after, ",", -1);
  cr_assert_not(g_strv_contains((const char *const *)ids, victim_text), "%s", after);
  cr_assert(ops_running(p), "the probe exited early:\n%s\n%s", ops_out(p), ops_err(p));
  ops_kill(p, SIGTERM);
  ops_finish(p, 10000);
  ops_free(p);
  cr_assert_eq(wait_threads(0, 10000), 0, "connections outlived the process");
}

Test(warm, expired_idle_connections_are_replaced_without_a_borrower)
{
  const char *env[] = {"POOLSHIM_MIN_IDLE", "2", "POOLSHIM_MAX_LIFETIME", "1s",
                       "POOLSHIM_POOL_SIZE", "4", NULL};
  OpsProbe *p = start_quiet_probe(env);
  cr_assert_eq(wait_threads(2, 10000), 2, "the pool did not fill up to 2");
  g_autofree char *first = thread_ids();
  /* Lifetime 1 s (minus jitter): within a few seconds both are closed and replaced, while
   * the probe makes no call at all. */
  g_autofree char *later = NULL;
  gint64 end = g_get_monotonic_time() + 8 * G_USEC_PER_SEC;
  gboolean disjoint = FALSE;
  while (!disjoint && g_get_monotonic_time() < end) {
    g_usleep(200 * 1000);
    g_free(later);
    later = thread_ids();
    if (!later)
      continue;
    g_auto(GStrv) a = g_strsplit(first, ",", -1);
    g_auto(GStrv) b = g_strsplit(later, ",", -1);
    disjoint = g_strv_length(b) == 2;
    for (guint i = 0; disjoint && a[i]; i++)
      disjoint = !g_strv_contains((const char *const *)b, a[i]);
  }
  cr_assert(disjoint, "the idle connections were not replaced: first %s, then %s", first, later);
  cr_assert(ops_running(p));
  ops_kill(p, SIGTERM);
  ops_finish(p, 10000);
  ops_free(p);
}
