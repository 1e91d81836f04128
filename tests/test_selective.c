/* Selective reset: COM_RESET_CONNECTION keeps the database, so the pool sends COM_INIT_DB
 * only after a borrower that may have changed it; it restores the role at every return (a
 * stored function can change it unseen), and never lends again a session whose state no
 * reset clears. Proven with the server's own counters (Com_change_db counts COM_INIT_DB,
 * Com_set_option counts SET ROLE) and CONNECTION_ID(). */
#include <mysqld_error.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

TestSuite(selective, .timeout = 60);

typedef struct {
  long long change_db, set_option;
} Counters;

static Counters
counters(void)
{
  return (Counters){pst_status("Com_change_db"), pst_status("Com_set_option")};
}

/* Borrows the pooled connection `id`. */
static MYSQL *
hold(long long id)
{
  MYSQL *m = pst_connect_app();
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id, "the pool lent another thread");
  return m;
}

/* One borrow of the pooled connection `id`: runs `sql` (if any), then returns it. */
static void
borrow(long long id, const char *sql)
{
  MYSQL *m = hold(id);
  if (sql)
    pst_exec(m, "%s", sql);
  mysql_close(m);
}

/* The counters once every earlier return of `id` has been answered: a return's reset is
 * sent at mysql_close() and its replies are read at the next lend, so the counters are read
 * while that lend holds the connection. Counting from here includes this borrow's return,
 * made after the reading. */
static Counters
settled_counters(long long id)
{
  MYSQL *m = hold(id);
  Counters c = counters();
  mysql_close(m);
  return c;
}

Test(selective, a_borrower_that_only_reads_costs_no_database_command)
{
  pst_admin();
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  mysql_close(m);
  borrow(id, NULL); /* the first return after the connect may restore what the profile read */

  Counters before = settled_counters(id); /* its return: 1 */
  for (int i = 0; i < 50; i++)
    borrow(id, "SELECT * FROM information_schema.USER_PRIVILEGES LIMIT 1");
  Counters after = settled_counters(id); /* has read the 51st return's replies */
  cr_assert_eq(after.change_db - before.change_db, 0, "COM_INIT_DB was sent %lld times",
               after.change_db - before.change_db);
  cr_assert_eq(after.set_option - before.set_option, 51, "SET ROLE ran %lld times for 51 returns",
               after.set_option - before.set_option);
}

Test(selective, a_use_costs_one_database_command_at_the_next_return)
{
  pst_admin();
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  mysql_close(m);
  borrow(id, NULL);

  g_autofree char *use = g_strdup_printf("USE %s", pst_env("PS_TEST_DB2"));
  Counters before = settled_counters(id); /* its return: no COM_INIT_DB */
  borrow(id, use);   /* the borrower's USE: 1, and the pool's COM_INIT_DB at return: 1 */
  borrow(id, NULL);  /* nothing: 0 */
  Counters after = settled_counters(id);
  cr_assert_eq(after.change_db - before.change_db, 2, "Com_change_db moved by %lld",
               after.change_db - before.change_db);
  cr_assert_eq(after.set_option - before.set_option, 3, "one SET ROLE per return, 3 returns: %lld",
               after.set_option - before.set_option);
  MYSQL *check = pst_connect_app();
  g_autofree char *db = pst_scalar_str(check, "SELECT DATABASE()");
  cr_assert_str_eq(db, pst_env("PS_TEST_DB"));
  mysql_close(check);
}

/* A stored function can SET ROLE for good, and its call shows nothing of it. */
Test(selective, a_role_set_inside_a_stored_function_is_undone)
{
  MYSQL *a = pst_admin();
  pst_exec(a, "CREATE ROLE IF NOT EXISTS poolshim_role");
  pst_exec(a, "GRANT poolshim_role TO '%s'@'%%', '%s'@'localhost'", pst_env("PS_TEST_USER"),
           pst_env("PS_TEST_USER"));
  pst_exec(a, "DROP FUNCTION IF EXISTS %s.poolshim_f", pst_env("PS_TEST_DB"));
  pst_exec(a,
           "CREATE FUNCTION %s.poolshim_f() RETURNS INT SQL SECURITY INVOKER "
           "BEGIN SET ROLE poolshim_role; RETURN 1; END",
           pst_env("PS_TEST_DB"));
  pst_exec(a, "GRANT EXECUTE ON FUNCTION %s.poolshim_f TO '%s'@'%%', '%s'@'localhost'",
           pst_env("PS_TEST_DB"), pst_env("PS_TEST_USER"), pst_env("PS_TEST_USER"));
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  cr_assert_eq(pst_scalar(m, "SELECT poolshim_f()"), 1);
  g_autofree char *set = pst_scalar_str(m, "SELECT CURRENT_ROLE()");
  cr_assert_str_eq(set, "poolshim_role", "the function did not change the role");
  mysql_close(m);
  MYSQL *next = pst_connect_app();
  cr_assert_eq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  g_autofree char *role = pst_scalar_str(next, "SELECT CURRENT_ROLE()");
  cr_assert_null(role, "the previous borrower's role is active: %s", role);
  mysql_close(next);
}

/* Borrower A switches schema tracking off (so the client's idea of the database stays
 * stale), changes the database with `use_db2`, and returns the connection: the next
 * borrower of the same server thread is back in the pool's database. */
static void
assert_use_undone(void (*use_db2)(MYSQL *m))
{
  pst_admin();
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  pst_exec(m, "SET SESSION session_track_schema = OFF");
  use_db2(m);
  g_autofree char *db = pst_scalar_str(m, "SELECT DATABASE()");
  cr_assert_str_eq(db, pst_env("PS_TEST_DB2"));
  mysql_close(m);
  MYSQL *next = pst_connect_app();
  cr_assert_eq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  g_autofree char *now = pst_scalar_str(next, "SELECT DATABASE()");
  cr_assert_str_eq(now, pst_env("PS_TEST_DB"));
  mysql_close(next);
}

/* The library sends strlen(query) bytes when the length is 0: the scan must too. */
static void
use_with_length_zero(MYSQL *m)
{
  g_autofree char *use = g_strdup_printf("USE %s", pst_env("PS_TEST_DB2"));
  cr_assert_eq(mysql_real_query(m, use, 0), 0, "%s", mysql_error(m));
}

Test(selective, a_use_sent_with_length_zero_is_undone)
{
  assert_use_undone(use_with_length_zero);
}

/* In latin1, byte 0xA0 is whitespace to the server. */
static void
use_after_a_no_break_space(MYSQL *m)
{
  pst_exec(m, "SET NAMES latin1");
  pst_exec(m, "USE\xa0%s", pst_env("PS_TEST_DB2"));
}

Test(selective, a_use_separated_by_a_latin1_no_break_space_is_undone)
{
  assert_use_undone(use_after_a_no_break_space);
}

/* SHOW PROFILES keeps the previous statements' text through COM_RESET_CONNECTION. */
Test(selective, a_session_with_profiling_is_never_lent_again)
{
  pst_admin();
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  pst_exec(m, "SET profiling = 1");
  pst_exec(m, "SELECT 'secret of the first borrower'");
  mysql_close(m);
  pst_wait_thread_gone((unsigned long)id);

  MYSQL *next = pst_connect_app();
  cr_assert_neq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  cr_assert_eq(mysql_query(next, "SHOW PROFILES"), 0, "%s", mysql_error(next));
  MYSQL_RES *res = mysql_store_result(next);
  cr_assert_not_null(res);
  cr_assert_eq(mysql_num_rows(res), 0, "the next borrower sees %llu profiled statements",
               (unsigned long long)mysql_num_rows(res));
  mysql_free_result(res);
  mysql_close(next);
}

/* COM_SET_OPTION (multi-statements on or off) also survives COM_RESET_CONNECTION. */
Test(selective, a_session_with_a_server_option_set_is_never_lent_again)
{
  pst_admin();
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  cr_assert_eq(mysql_set_server_option(m, MYSQL_OPTION_MULTI_STATEMENTS_ON), 0, "%s",
               mysql_error(m));
  mysql_close(m);
  pst_wait_thread_gone((unsigned long)id);

  MYSQL *next = pst_connect_app();
  cr_assert_neq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  cr_assert_neq(mysql_query(next, "SELECT 1; SELECT 2"), 0,
                "multi-statements are on for the next borrower");
  cr_assert_eq(mysql_errno(next), ER_PARSE_ERROR, "%s", mysql_error(next));
  mysql_close(next);
}

/* MYSQL_OPT_RECONNECT brings the library's default command table back with the new
 * session: nothing was watched, so that session is closed at its return, not pooled. */
Test(selective, a_session_the_library_reconnected_is_not_pooled)
{
  pst_admin();
  long long old, id;
  MYSQL *m = pst_connect_and_force_reconnect(&old, &id);
  cr_assert_neq(id, old);
  /* Unseen by the pool: multi-statements switched on in the new session. */
  cr_assert_eq(mysql_set_server_option(m, MYSQL_OPTION_MULTI_STATEMENTS_ON), 0);
  mysql_close(m);
  pst_wait_thread_gone((unsigned long)id);
  MYSQL *next = pst_connect_app();
  cr_assert_neq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  cr_assert_neq(mysql_query(next, "SELECT 1; SELECT 2"), 0, "multi-statements leaked");
  mysql_close(next);
}
