/* Reuse: connect/close cycles borrow the same physical connections, proven by the
 * server's own counters. */
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>

#include "poolshim.h"
#include "ps-version.h"

#include "helpers.h"

TestSuite(reuse, .timeout = 120);

Test(reuse, thousand_cycles_in_one_thread_use_one_physical_connection)
{
  pst_admin();
  long long before = pst_status("Connections");
  long long first_id = -1;
  for (int i = 0; i < 1000; i++) {
    MYSQL *m = pst_connect_app();
    long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
    if (first_id < 0)
      first_id = id;
    cr_assert_eq(id, first_id, "cycle %d got server thread %lld, not %lld", i, id, first_id);
    mysql_close(m);
  }
  cr_assert_eq(pst_status("Connections") - before, 1);
}

Test(reuse, caller_owned_handles_are_pooled_and_released)
{
  pst_admin();
  long long before = pst_status("Connections");
  for (int i = 0; i < 200; i++) {
    MYSQL local;
    mysql_init(&local);
    cr_assert_not_null(mysql_real_connect(&local, pst_env("PS_TEST_HOST"),
                                          pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                                          pst_env("PS_TEST_DB"), pst_port(), NULL, 0),
                       "%s", mysql_error(&local));
    cr_assert_eq(pst_scalar(&local, "SELECT 1"), 1);
    mysql_close(&local);
  }
  cr_assert_eq(pst_status("Connections") - before, 1);
}

static MYSQL *handed_over;

static gpointer
close_elsewhere(gpointer data)
{
  mysql_close(handed_over);
  return NULL;
}

Test(reuse, a_connection_closed_by_another_thread_returns_to_the_pool)
{
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  handed_over = m;
  g_thread_join(g_thread_new("closer", close_elsewhere, NULL));
  MYSQL *again = pst_connect_app();
  cr_assert_eq(pst_scalar(again, "SELECT CONNECTION_ID()"), id);
  mysql_close(again);
}

#define THREADS 64
#define CYCLES 40

static gint failures;
static gint done_threads;

static gpointer
worker(gpointer data)
{
  for (int i = 0; i < CYCLES; i++) {
    MYSQL *m = mysql_init(NULL);
    if (!mysql_real_connect(m, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER"),
                            pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"), pst_port(), NULL,
                            0) ||
        mysql_query(m, "SELECT 1")) {
      g_atomic_int_inc(&failures);
    } else {
      MYSQL_RES *r = mysql_store_result(m);
      MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
      if (!row || g_strcmp0(row[0], "1") != 0)
        g_atomic_int_inc(&failures);
      if (r)
        mysql_free_result(r);
    }
    mysql_close(m);
  }
  g_atomic_int_inc(&done_threads);
  return NULL;
}

static void
four_per_key(void)
{
  setenv("POOLSHIM_POOL_SIZE", "4", 1);
}

Test(reuse, sixty_four_threads_on_a_pool_of_four_never_exceed_four_server_threads,
     .init = four_per_key)
{
  pst_admin();
  long long before = pst_status("Connections");
  GThread *t[THREADS];
  for (int i = 0; i < THREADS; i++)
    t[i] = g_thread_new("worker", worker, NULL);
  long long peak = 0, samples = 0;
  while (g_atomic_int_get(&done_threads) < THREADS) {
    long long n = pst_user_threads(pst_env("PS_TEST_USER"));
    peak = MAX(peak, n);
    samples++;
  }
  for (int i = 0; i < THREADS; i++)
    g_thread_join(t[i]);
  cr_assert_eq(g_atomic_int_get(&failures), 0, "%d of %d queries failed", failures,
               THREADS * CYCLES);
  cr_assert(samples > 0);
  cr_assert(peak >= 1 && peak <= 4, "peak server threads for the app user: %lld", peak);
  cr_assert_leq(pst_status("Connections") - before, 4);
}

static void
two_per_key(void)
{
  setenv("POOLSHIM_POOL_SIZE", "2", 1);
}

/* The public counters agree with the server's own count. */
Test(reuse, public_stats_match_the_server_counters, .init = two_per_key)
{
  const char *(*version)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "poolshim_version");
  int (*stats)(poolshim_stats_t *, size_t) =
    (int (*)(poolshim_stats_t *, size_t))dlsym(RTLD_DEFAULT, "poolshim_stats");
  cr_assert(version && stats, "the preloaded library does not export its API");
  cr_assert_str_eq(version(), POOLSHIM_VERSION);
  pst_admin();
  long long before = pst_status("Connections");
  MYSQL *held = pst_connect_app();
  for (int i = 0; i < 50; i++)
    mysql_close(pst_connect_app());
  poolshim_stats_t s;
  cr_assert_eq(stats(&s, sizeof s), 0);
  cr_assert_eq(stats(&s, sizeof s - 1), -1);
  /* A program built against 0.1's header (the struct ended at `pools`) gets its fields. */
  poolshim_stats_t old;
  memset(&old, 0xa5, sizeof old);
  cr_assert_eq(stats(&old, offsetof(poolshim_stats_t, python_lock_kept)), 0);
  cr_assert_eq(old.borrowed, s.borrowed);
  cr_assert_eq(old.python_lock_kept, 0xa5a5a5a5a5a5a5a5ULL, "written past the 0.1 struct");
  long long opened_by_server = pst_status("Connections") - before;
  /* The admin connection was opened before `before`, through the pool as well. */
  cr_assert_eq((long long)s.opened - 1, opened_by_server);
  cr_assert_eq(opened_by_server, 2);
  cr_assert_eq(s.lent, 2); /* admin + held */
  cr_assert_eq(s.idle, 1);
  cr_assert_eq(s.borrowed, 52);
  cr_assert_eq(s.served_idle, 49);
  cr_assert_eq(s.resets, 50);
  mysql_close(held);
}

/* Reading the counters must be safe while another thread's first connect is starting the
 * pool: poolshim_stats reads the broker's active flag without initialising anything. The
 * flag was written plainly, so the tsan pass reported this as a data race (found by the
 * stall test polling the counters during its first connects). Here a reader thread polls
 * from before the first connect until it has seen the connection lent. */
typedef struct {
  PstStatsFn stats;
  gint stop;
  gint saw_lent;   /* a snapshot showed the connect's connection lent */
  gint bad;        /* a snapshot had lent or idle above open */
} StatsReader;

static gpointer
stats_reader(gpointer data)
{
  StatsReader *r = data;
  while (!g_atomic_int_get(&r->stop)) {
    poolshim_stats_t s;
    if (r->stats(&s, sizeof s) != 0) {
      g_atomic_int_set(&r->bad, 1);
      continue;
    }
    if (s.lent + s.idle > s.open)
      g_atomic_int_set(&r->bad, 1);
    if (s.lent >= 1)
      g_atomic_int_set(&r->saw_lent, 1);
  }
  return NULL;
}

Test(reuse, the_counters_can_be_read_while_the_first_connect_starts_the_pool)
{
  StatsReader r = {.stats = pst_stats_fn()};
  GThread *t = g_thread_new("stats-reader", stats_reader, &r);
  g_usleep(2 * 1000); /* the reader is polling an uninitialised library */
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  while (!g_atomic_int_get(&r.saw_lent) && g_get_monotonic_time() < deadline)
    g_usleep(1000);
  g_atomic_int_set(&r.stop, 1);
  g_thread_join(t);
  cr_assert(g_atomic_int_get(&r.saw_lent), "the reader never saw the connection lent");
  cr_assert_not(g_atomic_int_get(&r.bad),
                "a read failed or a snapshot counted more lent + idle than open");
  mysql_close(m);
  MYSQL *again = pst_connect_app();
  cr_assert_eq(pst_scalar(again, "SELECT CONNECTION_ID()"), id, "the connection was not pooled");
  mysql_close(again);
}
