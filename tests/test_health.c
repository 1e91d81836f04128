/* Health: a connection the server closed while idle is never handed out, and age limits
 * replace connections; the application sees no error. */
#include "helpers.h"

TestSuite(health, .timeout = 90);

static long long
cycle_id(void)
{
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  cr_assert_eq(pst_scalar(m, "SELECT 1"), 1);
  mysql_close(m);
  return id;
}

Test(health, an_idle_connection_killed_by_root_is_not_handed_out)
{
  long long id = cycle_id();
  pst_exec(pst_admin(), "KILL %lld", id);
  pst_wait_thread_gone((unsigned long)id);
  long long before = pst_status("Connections");
  long long next = cycle_id();
  cr_assert_neq(next, id);
  cr_assert_eq(pst_status("Connections") - before, 1);
  cr_assert_eq(cycle_id(), next, "the replacement is pooled in turn");
}

static void
two_per_key(void)
{
  setenv("POOLSHIM_POOL_SIZE", "2", 1);
}

Test(health, connections_dropped_by_a_server_restart_are_not_handed_out, .init = two_per_key)
{
  MYSQL *a = pst_connect_app(), *b = pst_connect_app();
  long long ida = pst_scalar(a, "SELECT CONNECTION_ID()");
  mysql_close(a);
  mysql_close(b);
  pst_admin_drop();
  pst_server_ctl("restart");
  pst_admin();
  long long before = pst_status("Connections");
  for (int i = 0; i < 5; i++) {
    MYSQL *m = pst_connect_app();
    cr_assert_eq(pst_scalar(m, "SELECT 1"), 1);
    mysql_close(m);
    /* Both dead idle connections were discarded unseen at the first connect, which
     * opened one new one; later ones may open a second rather than wait for a reset. */
    if (i == 0)
      cr_assert_eq(pst_status("Connections") - before, 1, "(id before restart: %lld)", ida);
  }
  cr_assert_leq(pst_status("Connections") - before, 2);
  cr_assert_leq(pst_user_threads(pst_env("PS_TEST_USER")), 2);
}

static void
short_lifetime(void)
{
  /* Long enough that the first two cycles fit in it under valgrind on a loaded machine
   * (the lifetime is judged at each return, less up to 2.5% of jitter). */
  setenv("POOLSHIM_MAX_LIFETIME", "3s", 1);
}

Test(health, a_connection_past_its_lifetime_is_replaced, .init = short_lifetime)
{
  long long id = cycle_id();
  cr_assert_eq(cycle_id(), id);
  g_usleep(3300 * 1000);
  long long next = cycle_id();
  cr_assert_neq(next, id);
  pst_wait_thread_gone((unsigned long)id);
}

static void
short_idle(void)
{
  setenv("POOLSHIM_IDLE_TIMEOUT", "1s", 1);
}

Test(health, a_connection_idle_too_long_is_closed, .init = short_idle)
{
  long long id = cycle_id();
  g_usleep(1300 * 1000);
  long long next = cycle_id();
  cr_assert_neq(next, id);
  pst_wait_thread_gone((unsigned long)id);
}

static void
short_reset_timeout(void)
{
  setenv("POOLSHIM_RESET_TIMEOUT", "1s", 1);
}

static char *
server_pid(void)
{
  g_autofree char *cmd = g_strdup_printf("'%s' status '%s'", pst_env("PS_TEST_SERVER_CTL"),
                                         pst_env("PS_TEST_SERVER_DIR"));
  char *out = NULL;
  int status = 0;
  cr_assert(g_spawn_command_line_sync(cmd, &out, NULL, &status, NULL) && status == 0);
  return g_strstrip(out);
}

static MYSQL *closing;

static gpointer
close_it(gpointer data)
{
  mysql_close(closing);
  return NULL;
}

/* The real mysql_close never waits for the server: a stalled server must not hang it. */
Test(health, close_returns_while_the_server_is_stalled, .init = short_reset_timeout,
     .timeout = 60)
{
  closing = pst_connect_app();
  g_autofree char *pid = server_pid();
  g_autofree char *stop = g_strdup_printf("kill -STOP %s", pid);
  g_autofree char *cont = g_strdup_printf("kill -CONT %s", pid);
  cr_assert_eq(system(stop), 0);
  gint64 t0 = g_get_monotonic_time();
  GThread *t = g_thread_new("closer", close_it, NULL);
  g_thread_join(t);
  gint64 took_ms = (g_get_monotonic_time() - t0) / 1000;
  cr_assert_eq(system(cont), 0);
  /* One bounded read (1 s) and a write; never the infinite default. */
  cr_assert_lt(took_ms, 10000, "mysql_close took %" G_GINT64_FORMAT " ms", took_ms);
  MYSQL *m = pst_connect_app();
  cr_assert_eq(pst_scalar(m, "SELECT 1"), 1);
  mysql_close(m);
}

static void
restore_wait_timeout(void)
{
  pst_exec(pst_admin(), "SET GLOBAL wait_timeout = DEFAULT");
}

/* The pool closes an idle connection itself before the server's wait_timeout would: the
 * server never has to drop a connection the pool still trusts. */
Test(health, idle_connections_are_closed_before_the_server_wait_timeout,
     .fini = restore_wait_timeout)
{
  MYSQL *a = pst_admin();
  pst_exec(a, "SET GLOBAL wait_timeout = 3");
  long long aborted = pst_status("Aborted_clients");
  long long id = cycle_id();
  g_usleep(2500 * 1000); /* past the pool's cap (2 s), before the server's 3 s: the middle */
  long long next = cycle_id();
  cr_assert_neq(next, id, "the idle connection outlived the pool's wait_timeout cap");
  pst_wait_thread_gone((unsigned long)id);
  cr_assert_eq(pst_status("Aborted_clients"), aborted,
               "the server, not the pool, closed an idle connection");
}
