/* Limits: a full pool makes connects wait in order, then fail with 1040 naming the pool. */
#include <mysqld_error.h>

#include "helpers.h"

static void
two_and_300ms(void)
{
  setenv("POOLSHIM_POOL_SIZE", "2", 1);
  setenv("POOLSHIM_TIMEOUT", "300ms", 1);
}

TestSuite(limits, .timeout = 60);

Test(limits, third_connect_on_a_full_pool_fails_with_1040_after_the_timeout,
     .init = two_and_300ms)
{
  MYSQL *a = pst_connect_app(), *b = pst_connect_app();
  pst_admin();
  long long before = pst_status("Connections");
  MYSQL *m = mysql_init(NULL);
  gint64 t0 = g_get_monotonic_time();
  MYSQL *r = mysql_real_connect(m, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER"),
                                pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"), pst_port(),
                                NULL, 0);
  gint64 waited_ms = (g_get_monotonic_time() - t0) / 1000;
  cr_assert_null(r);
  cr_assert_eq(mysql_errno(m), ER_CON_COUNT_ERROR);
  cr_assert_str_eq(mysql_sqlstate(m), "08004");
  const char *msg = mysql_error(m);
  g_autofree char *label = g_strdup_printf("%s@%s:%s/%s", pst_env("PS_TEST_USER"),
                                           pst_env("PS_TEST_HOST"), pst_env("PS_TEST_PORT"),
                                           pst_env("PS_TEST_DB"));
  cr_assert(strstr(msg, label), "message does not name the pool: %s", msg);
  cr_assert(strstr(msg, "size 2"), "message does not give the size: %s", msg);
  cr_assert(strstr(msg, "waited"), "message does not say it waited: %s", msg);
  cr_assert(waited_ms >= 250 && waited_ms < 5000, "waited %" G_GINT64_FORMAT " ms", waited_ms);
  mysql_close(m); /* the failed handle is still valid */
  cr_assert_eq(pst_status("Connections"), before, "the failed connect opened a connection");
  mysql_close(a);
  mysql_close(b);
}

static MYSQL *holder;
static gint saw_waiter;
static PstStatsFn stats_fn; /* looked up on the test's thread */

/* Closes the holder once a connect waits for a connection (at most 5 s, well inside the
 * connect's POOLSHIM_TIMEOUT of 10 s): a fixed sleep raced with the connect's start on a
 * loaded machine, which then found the connection returned and never waited. No assertion
 * runs here, off the test's thread. */
static gpointer
release_later(gpointer data)
{
  gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  poolshim_stats_t s = {0};
  while ((stats_fn(&s, sizeof s) != 0 || s.waiting < 1) && g_get_monotonic_time() < deadline)
    g_usleep(5 * 1000);
  g_atomic_int_set(&saw_waiter, s.waiting >= 1);
  mysql_close(holder);
  return NULL;
}

static void
two_and_10s(void)
{
  setenv("POOLSHIM_POOL_SIZE", "2", 1);
  setenv("POOLSHIM_TIMEOUT", "10s", 1);
}

Test(limits, a_waiting_connect_gets_the_connection_a_holder_returns, .init = two_and_10s)
{
  MYSQL *a = pst_connect_app();
  holder = pst_connect_app();
  long long held = pst_scalar(holder, "SELECT CONNECTION_ID()");
  stats_fn = pst_stats_fn();
  GThread *t = g_thread_new("releaser", release_later, NULL);
  MYSQL *m = pst_connect_app();
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), held);
  g_thread_join(t);
  cr_assert(g_atomic_int_get(&saw_waiter), "the connect was not seen waiting within 5 s");
  mysql_close(m);
  mysql_close(a);
}

static void
one_connection_in_all(void)
{
  /* Two in all: the test's own admin connection holds one of them. */
  setenv("POOLSHIM_MAX_CONNECTIONS", "2", 1);
  setenv("POOLSHIM_TIMEOUT", "2s", 1);
}

Test(limits, the_process_limit_evicts_an_idle_connection_of_another_pool,
     .init = one_connection_in_all)
{
  pst_admin();
  MYSQL *m = pst_connect_app();
  long long first = pst_scalar(m, "SELECT CONNECTION_ID()");
  mysql_close(m);
  MYSQL *other = pst_connect(pst_env("PS_TEST_USER2"), pst_env("PS_TEST_PASSWORD2"),
                             pst_env("PS_TEST_DB"));
  pst_wait_thread_gone((unsigned long)first);
  cr_assert_eq(pst_user_threads(pst_env("PS_TEST_USER")), 0);
  cr_assert_eq(pst_user_threads(pst_env("PS_TEST_USER2")), 1);
  mysql_close(other);
}
