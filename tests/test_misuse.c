/* Misuse the real library tolerates is tolerated the same way with the shim. */
#include <errmsg.h>
#include <fcntl.h>

#include "helpers.h"

TestSuite(misuse, .timeout = 60);

Test(misuse, closing_null_and_never_connected_handles_is_harmless)
{
  mysql_close(NULL);
  MYSQL *m = mysql_init(NULL);
  mysql_close(m);
  MYSQL local;
  mysql_init(&local);
  mysql_close(&local);
  MYSQL *ok = pst_connect_app();
  cr_assert_eq(pst_scalar(ok, "SELECT 1"), 1);
  mysql_close(ok);
}

Test(misuse, a_failed_connect_then_close_behaves_as_without_the_shim)
{
  unsigned int err = 0;
  MYSQL *m = mysql_init(NULL);
  cr_assert_null(mysql_real_connect(m, pst_env("PS_TEST_HOST"), "no_such_user", "x", NULL,
                                    pst_port(), NULL, 0));
  err = mysql_errno(m);
  cr_assert_eq(err, 1045, "got %u %s", err, mysql_error(m));
  mysql_close(m);
}

Test(misuse, connecting_an_already_connected_handle_fails_as_the_library_does)
{
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  cr_assert_null(mysql_real_connect(m, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER"),
                                    pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"),
                                    pst_port(), NULL, 0));
  cr_assert_eq(mysql_errno(m), CR_ALREADY_CONNECTED);
  /* The handle keeps its session and still returns to the pool. */
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id);
  mysql_close(m);
  MYSQL *next = pst_connect_app();
  cr_assert_eq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  mysql_close(next);
}

Test(misuse, change_user_on_a_lent_handle_keeps_it_out_of_the_pool)
{
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  cr_assert_eq(mysql_change_user(m, pst_env("PS_TEST_USER2"), pst_env("PS_TEST_PASSWORD2"),
                                 pst_env("PS_TEST_DB")),
               0, "%s", mysql_error(m));
  g_autofree char *who = pst_scalar_str(m, "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)");
  cr_assert_str_eq(who, pst_env("PS_TEST_USER2"));
  mysql_close(m);
  pst_wait_thread_gone((unsigned long)id);
  MYSQL *next = pst_connect_app();
  g_autofree char *who2 = pst_scalar_str(next, "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)");
  cr_assert_str_eq(who2, pst_env("PS_TEST_USER"));
  cr_assert_neq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  mysql_close(next);
}

Test(misuse, a_handle_closed_with_an_unread_result_is_not_pooled)
{
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  cr_assert_eq(mysql_query(m, "SELECT 1 UNION SELECT 2"), 0);
  mysql_close(m); /* result never fetched: the rows are still on the wire */
  pst_wait_thread_gone((unsigned long)id);
  MYSQL *next = pst_connect_app();
  cr_assert_neq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  mysql_close(next);
}

/* mysql_send_query without mysql_read_query_result, then mysql_close: the reply is still on
 * the wire (or on its way). Handed on, the next borrower's first query read it, or a
 * reset's reply, as its own (it did: SELECT 7 returned no result set). */
Test(misuse, a_handle_closed_with_a_query_sent_and_its_reply_never_read_is_not_pooled)
{
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  static const char q[] = "SELECT 12345";
  cr_assert_eq(mysql_send_query(m, q, sizeof q - 1), 0, "%s", mysql_error(m));
  mysql_close(m);
  pst_wait_thread_gone((unsigned long)id);
  MYSQL *next = pst_connect_app();
  cr_assert_eq(pst_scalar(next, "SELECT 7"), 7);
  cr_assert_neq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  mysql_close(next);
}

/* A connection the application closed must not live on in a program it execs. */
Test(misuse, pooled_sockets_are_close_on_exec)
{
  MYSQL *m = pst_connect_app();
  int fd = mysql_get_socket(m);
  cr_assert_geq(fd, 0);
  int before = fcntl(fd, F_GETFD);
  cr_assert_eq(before & FD_CLOEXEC, 0, "a lent socket keeps the library's flags");
  mysql_close(m); /* pooled: the socket stays open */
  int after = fcntl(fd, F_GETFD);
  cr_assert_geq(after, 0, "the pooled socket was closed");
  cr_assert(after & FD_CLOEXEC);
}
