/* The client library's calls to itself pass straight through: auto-reconnect and the
 * non-blocking API work exactly as without the shim. */
#include <errmsg.h>
#include <poll.h>

#include "helpers.h"

TestSuite(internal, .timeout = 60);

Test(internal, auto_reconnect_replaces_a_killed_connection)
{
  long long id, now;
  MYSQL *m = pst_connect_and_force_reconnect(&id, &now);
  cr_assert_neq(now, id);
  mysql_close(m);
  /* The reconnected session was not watched (the library put its own command table back):
   * it is closed, not pooled, and the next borrower gets a working connection. */
  pst_wait_thread_gone((unsigned long)now);
  MYSQL *next = pst_connect_app();
  cr_assert_neq(pst_scalar(next, "SELECT CONNECTION_ID()"), now);
  mysql_close(next);
  /* The library's own connect inside mariadb_reconnect went straight through: the pool
   * lent nothing to it (only the admin connection is out). */
  poolshim_stats_t s;
  pst_stats(&s);
  cr_assert_eq(s.lent, 1, "%u connections lent, the admin's only expected", s.lent);
}

static void
wait_for(MYSQL *m, int status)
{
  struct pollfd p = {.fd = mysql_get_socket(m)};
  if (status & MYSQL_WAIT_READ)
    p.events |= POLLIN;
  if (status & MYSQL_WAIT_WRITE)
    p.events |= POLLOUT;
  if (status & MYSQL_WAIT_EXCEPT)
    p.events |= POLLPRI;
  int timeout = (status & MYSQL_WAIT_TIMEOUT) ? (int)mysql_get_timeout_value_ms(m) : 5000;
  poll(&p, 1, timeout);
}

Test(internal, the_non_blocking_api_works_and_is_not_pooled)
{
  pst_admin();
  long long before = pst_status("Connections");
  for (int round = 0; round < 3; round++) {
    MYSQL *m = mysql_init(NULL);
    mysql_options(m, MYSQL_OPT_NONBLOCK, 0);
    MYSQL *ret = NULL;
    int status = mysql_real_connect_start(&ret, m, pst_env("PS_TEST_HOST"),
                                          pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                                          pst_env("PS_TEST_DB"), pst_port(), NULL, 0);
    while (status) {
      wait_for(m, status);
      status = mysql_real_connect_cont(&ret, m, MYSQL_WAIT_READ | MYSQL_WAIT_WRITE);
    }
    cr_assert_not_null(ret, "%s", mysql_error(m));
    int err = 0;
    status = mysql_real_query_start(&err, m, "SELECT 1", 8);
    while (status) {
      wait_for(m, status);
      status = mysql_real_query_cont(&err, m, MYSQL_WAIT_READ | MYSQL_WAIT_WRITE);
    }
    cr_assert_eq(err, 0, "%s", mysql_error(m));
    MYSQL_RES *res = mysql_store_result(m);
    cr_assert_not_null(res);
    mysql_free_result(res);
    status = mysql_close_start(m);
    while (status) {
      wait_for(m, status);
      status = mysql_close_cont(m, MYSQL_WAIT_READ | MYSQL_WAIT_WRITE);
    }
  }
  /* Not pooled: each round opened its own physical connection. */
  cr_assert_eq(pst_status("Connections") - before, 3);
}

static void
pool_of_one(void)
{
  setenv("POOLSHIM_POOL_SIZE", "1", 1);
  setenv("POOLSHIM_TIMEOUT", "1s", 1);
}

/* mysql_close_start/_cont on a lent handle close it through the library's own mysql_close:
 * the pool must free the slot, or the next connect would wait for nothing. */
Test(internal, a_lent_handle_closed_with_the_non_blocking_api_frees_its_slot,
     .init = pool_of_one)
{
  for (int round = 0; round < 3; round++) {
    MYSQL *m = pst_connect_app();
    cr_assert_eq(pst_scalar(m, "SELECT 1"), 1);
    mysql_options(m, MYSQL_OPT_NONBLOCK, 0);
    int status = mysql_close_start(m);
    while (status) {
      wait_for(m, status);
      status = mysql_close_cont(m, MYSQL_WAIT_READ | MYSQL_WAIT_WRITE);
    }
  }
}

/* mysql_change_user_start calls mysql_change_user from inside the library: the pool must
 * still see the identity change and never give the connection to the old user. */
Test(internal, change_user_through_the_non_blocking_api_is_seen)
{
  MYSQL *m = pst_connect_app();
  mysql_options(m, MYSQL_OPT_NONBLOCK, 0);
  my_bool ret = 1;
  int status = mysql_change_user_start(&ret, m, pst_env("PS_TEST_USER2"),
                                       pst_env("PS_TEST_PASSWORD2"), pst_env("PS_TEST_DB"));
  while (status) {
    wait_for(m, status);
    status = mysql_change_user_cont(&ret, m, MYSQL_WAIT_READ | MYSQL_WAIT_WRITE);
  }
  cr_assert_eq(ret, 0, "%s", mysql_error(m));
  mysql_close(m);
  MYSQL *next = pst_connect_app();
  g_autofree char *who = pst_scalar_str(next, "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)");
  cr_assert_str_eq(who, pst_env("PS_TEST_USER"));
  mysql_close(next);
}
