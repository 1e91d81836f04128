/* The other reset modes: what `rollback` and `none` keep, and what they never keep. */
#include "helpers.h"

TestSuite(modes, .timeout = 60);

static void
rollback_mode(void)
{
  setenv("POOLSHIM_RESET", "rollback", 1);
}

static void
none_mode(void)
{
  setenv("POOLSHIM_RESET", "none", 1);
}

Test(modes, rollback_mode_rolls_back_and_releases_locks, .init = rollback_mode)
{
  long long v = 3000000 + g_random_int_range(0, 1000000);
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  pst_exec(m, "SET @kept = 1");
  pst_exec(m, "START TRANSACTION");
  pst_exec(m, "INSERT INTO t (v) VALUES (%lld)", v);
  cr_assert_eq(pst_scalar(m, "SELECT GET_LOCK('poolshim_mode_lock', 0)"), 1);
  mysql_close(m);
  MYSQL *next = pst_connect_app();
  cr_assert_eq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  cr_assert_eq(pst_scalar(next, "SELECT @kept"), 1, "rollback mode keeps session variables");
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT IS_FREE_LOCK('poolshim_mode_lock')"), 1);
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT COUNT(*) FROM %s.t WHERE v = %lld",
                          pst_env("PS_TEST_DB"), v),
               0);
  mysql_close(next);
}

Test(modes, rollback_mode_releases_table_locks, .init = rollback_mode)
{
  MYSQL *m = pst_connect_app();
  pst_exec(m, "LOCK TABLES t WRITE");
  mysql_close(m);
  MYSQL *other = pst_connect(pst_env("PS_TEST_ROOT_USER"), pst_env("PS_TEST_ROOT_PASSWORD"),
                             pst_env("PS_TEST_DB"));
  pst_exec(other, "SET SESSION lock_wait_timeout = 2");
  pst_exec(other, "LOCK TABLES t WRITE");
  pst_exec(other, "UNLOCK TABLES");
  mysql_close(other);
}

Test(modes, a_mode_that_keeps_sessions_never_pools_open_statements, .init = rollback_mode)
{
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  MYSQL_STMT *st = mysql_stmt_init(m);
  cr_assert_eq(mysql_stmt_prepare(st, "SELECT 1", 8), 0);
  mysql_close(m);
  mysql_stmt_close(st);
  pst_wait_thread_gone((unsigned long)id);
  MYSQL *next = pst_connect_app();
  cr_assert_neq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  mysql_close(next);
}

Test(modes, none_mode_still_never_carries_a_transaction_over, .init = none_mode)
{
  long long v = 4000000 + g_random_int_range(0, 1000000);
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  pst_exec(m, "SET @kept = 2");
  pst_exec(m, "START TRANSACTION");
  pst_exec(m, "INSERT INTO t (v) VALUES (%lld)", v);
  mysql_close(m);
  MYSQL *next = pst_connect_app();
  cr_assert_eq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  cr_assert_eq(pst_scalar(next, "SELECT @kept"), 2, "none mode keeps the session");
  cr_assert_eq(pst_scalar(next, "SELECT @@in_transaction"), 0);
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT COUNT(*) FROM %s.t WHERE v = %lld",
                          pst_env("PS_TEST_DB"), v),
               0, "an open transaction was committed");
  mysql_close(next);
}

/* The pool's ROLLBACK must not open the next borrower's transaction: a kept
 * completion_type=CHAIN would make it chain one, and the next borrower, believing itself in
 * autocommit, would lose its writes at its close. */
static void
check_no_chained_transaction(void)
{
  long long v = 5000000 + g_random_int_range(0, 1000000);
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  pst_exec(m, "SET SESSION completion_type = 'CHAIN'");
  pst_exec(m, "START TRANSACTION");
  pst_exec(m, "INSERT INTO t (v) VALUES (%lld)", v);
  mysql_close(m);
  MYSQL *next = pst_connect_app();
  cr_assert_eq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  cr_assert_eq(pst_scalar(next, "SELECT @@in_transaction"), 0,
               "the pool's rollback chained a transaction into the next borrower");
  pst_exec(next, "INSERT INTO t (v) VALUES (%lld)", v + 1);
  mysql_close(next);
  /* The next borrower's autocommitted row is there; the first borrower's is not. */
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT COUNT(*) FROM %s.t WHERE v = %lld",
                          pst_env("PS_TEST_DB"), v + 1),
               1);
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT COUNT(*) FROM %s.t WHERE v = %lld",
                          pst_env("PS_TEST_DB"), v),
               0);
}

Test(modes, rollback_mode_never_chains_a_transaction_into_the_next_borrower,
     .init = rollback_mode)
{
  check_no_chained_transaction();
}

Test(modes, none_mode_never_chains_a_transaction_into_the_next_borrower, .init = none_mode)
{
  check_no_chained_transaction();
}
