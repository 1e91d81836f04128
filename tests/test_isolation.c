/* Isolation: whatever a borrower leaves in its session, the next borrower of the same
 * server thread (same CONNECTION_ID()) sees a fresh session. One row per kind of state. */
#include <errmsg.h>
#include <mysqld_error.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "helpers.h"

typedef struct {
  char name[40];
  void (*dirty)(MYSQL *m);
  void (*check)(MYSQL *m);
} Kind;

static long long marker;

static void
dirty_user_variable(MYSQL *m)
{
  pst_exec(m, "SET @leftover = 42");
}
static void
check_user_variable(MYSQL *m)
{
  cr_assert_eq(pst_scalar(m, "SELECT @leftover IS NULL"), 1);
}

static void
dirty_temporary_table(MYSQL *m)
{
  pst_exec(m, "CREATE TEMPORARY TABLE leftover_tmp (a INT)");
}
static void
check_temporary_table(MYSQL *m)
{
  cr_assert_neq(mysql_query(m, "SELECT * FROM leftover_tmp"), 0);
  cr_assert_eq(mysql_errno(m), ER_NO_SUCH_TABLE);
}

static void
dirty_sql_mode(MYSQL *m)
{
  pst_exec(m, "SET SESSION sql_mode = 'ANSI_QUOTES'");
}
static void
check_sql_mode(MYSQL *m)
{
  cr_assert_eq(pst_scalar(m, "SELECT @@session.sql_mode = @@global.sql_mode"), 1);
}

static void
dirty_time_zone(MYSQL *m)
{
  pst_exec(m, "SET time_zone = '+05:00'");
}
static void
check_time_zone(MYSQL *m)
{
  cr_assert_eq(pst_scalar(m, "SELECT @@session.time_zone = @@global.time_zone"), 1);
}

static void
check_charset(MYSQL *m)
{
  g_autofree char *server = pst_scalar_str(m, "SELECT @@character_set_client");
  g_autofree char *results = pst_scalar_str(m, "SELECT @@character_set_results");
  cr_assert_str_neq(server, "latin1");
  cr_assert_str_eq(results, server);
  /* The client side agrees with the server (mysql_character_set_name is client state). */
  cr_assert_str_eq(mysql_character_set_name(m), server);
}

static void
dirty_set_names(MYSQL *m)
{
  pst_exec(m, "SET NAMES latin1");
  cr_assert_str_eq(mysql_character_set_name(m), "latin1");
}

static void
dirty_set_character_set(MYSQL *m)
{
  cr_assert_eq(mysql_set_character_set(m, "latin1"), 0);
}

static void
dirty_autocommit(MYSQL *m)
{
  pst_exec(m, "SET autocommit = 0");
}
static void
check_autocommit(MYSQL *m)
{
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 1);
}

static void
dirty_uncommitted_insert(MYSQL *m)
{
  pst_exec(m, "START TRANSACTION");
  pst_exec(m, "INSERT INTO t (v) VALUES (%lld)", marker);
}
static void
check_uncommitted_insert(MYSQL *m)
{
  cr_assert_eq(pst_scalar(m, "SELECT @@in_transaction"), 0);
  cr_assert_eq(pst_scalar(m, "SELECT COUNT(*) FROM t WHERE v = %lld", marker), 0);
  /* Rolled back, not committed: an independent connection agrees. */
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT COUNT(*) FROM %s.t WHERE v = %lld",
                          pst_env("PS_TEST_DB"), marker),
               0);
}

static void
dirty_autocommit_off_insert(MYSQL *m)
{
  pst_exec(m, "SET autocommit = 0");
  pst_exec(m, "INSERT INTO t (v) VALUES (%lld)", marker);
}

static void
dirty_isolation_level(MYSQL *m)
{
  pst_exec(m, "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE");
}
static void
check_isolation_level(MYSQL *m)
{
  cr_assert_eq(pst_scalar(m, "SELECT @@session.tx_isolation = @@global.tx_isolation"), 1);
}

static void
dirty_lock_tables(MYSQL *m)
{
  pst_exec(m, "LOCK TABLES t WRITE");
}
static void
check_lock_tables(MYSQL *m)
{
  /* Another session can take the lock at once. */
  MYSQL *other = pst_connect(pst_env("PS_TEST_ROOT_USER"), pst_env("PS_TEST_ROOT_PASSWORD"),
                             pst_env("PS_TEST_DB"));
  pst_exec(other, "SET SESSION lock_wait_timeout = 2");
  pst_exec(other, "LOCK TABLES t WRITE");
  pst_exec(other, "UNLOCK TABLES");
  mysql_close(other);
}

static void
dirty_named_lock(MYSQL *m)
{
  cr_assert_eq(pst_scalar(m, "SELECT GET_LOCK('poolshim_leftover', 0)"), 1);
}
static void
check_named_lock(MYSQL *m)
{
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT IS_FREE_LOCK('poolshim_leftover')"), 1);
}

static void
dirty_sql_prepare(MYSQL *m)
{
  pst_exec(m, "PREPARE leftover_stmt FROM 'SELECT 1'");
}
static void
check_sql_prepare(MYSQL *m)
{
  cr_assert_neq(mysql_query(m, "EXECUTE leftover_stmt"), 0);
  cr_assert_eq(mysql_errno(m), ER_UNKNOWN_STMT_HANDLER);
}

static void
dirty_use(MYSQL *m)
{
  pst_exec(m, "USE %s", pst_env("PS_TEST_DB2"));
}
static void
dirty_select_db(MYSQL *m)
{
  cr_assert_eq(mysql_select_db(m, pst_env("PS_TEST_DB2")), 0);
}
static void
check_database(MYSQL *m)
{
  g_autofree char *db = pst_scalar_str(m, "SELECT DATABASE()");
  cr_assert_str_eq(db, pst_env("PS_TEST_DB"));
}

static void
dirty_last_insert_id(MYSQL *m)
{
  pst_exec(m, "INSERT INTO t (v) VALUES (0)");
  cr_assert_gt(pst_scalar(m, "SELECT LAST_INSERT_ID()"), 0);
}
static void
check_last_insert_id(MYSQL *m)
{
  cr_assert_eq(pst_scalar(m, "SELECT LAST_INSERT_ID()"), 0);
  cr_assert_eq(mysql_insert_id(m), 0);
}

static void
dirty_wait_timeout(MYSQL *m)
{
  pst_exec(m, "SET SESSION wait_timeout = 7");
}
static void
check_wait_timeout(MYSQL *m)
{
  cr_assert_eq(pst_scalar(m, "SELECT @@session.wait_timeout = @@global.wait_timeout"), 1);
}

static void
dirty_handler(MYSQL *m)
{
  pst_exec(m, "HANDLER t OPEN");
}
static void
check_handler(MYSQL *m)
{
  cr_assert_neq(mysql_query(m, "HANDLER t READ FIRST"), 0);
  cr_assert_eq(mysql_errno(m), ER_UNKNOWN_TABLE);
}

static void
dirty_xa(MYSQL *m)
{
  pst_exec(m, "XA START 'poolshim_leftover'");
  pst_exec(m, "INSERT INTO t (v) VALUES (%lld)", marker);
}
static void
check_xa(MYSQL *m)
{
  /* A session still inside the XA transaction could not start another one. */
  pst_exec(m, "XA START 'poolshim_next'");
  pst_exec(m, "XA END 'poolshim_next'");
  pst_exec(m, "XA ROLLBACK 'poolshim_next'");
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT COUNT(*) FROM %s.t WHERE v = %lld",
                          pst_env("PS_TEST_DB"), marker),
               0);
}

static MYSQL_STMT *left_stmt;
static long long prepared_before;

static void
dirty_c_api_statement(MYSQL *m)
{
  prepared_before = pst_status("Prepared_stmt_count");
  left_stmt = mysql_stmt_init(m);
  cr_assert_not_null(left_stmt);
  cr_assert_eq(mysql_stmt_prepare(left_stmt, "SELECT 1", 8), 0, "%s",
               mysql_stmt_error(left_stmt));
  cr_assert_eq(pst_status("Prepared_stmt_count"), prepared_before + 1);
}
static void
check_c_api_statement(MYSQL *m)
{
  /* Invalidated as the real mysql_close does (CR_STMT_CLOSED, then execute reports the
   * lost connection, exactly as without the shim), and gone on the server. */
  cr_assert_eq(mysql_stmt_errno(left_stmt), CR_STMT_CLOSED);
  cr_assert_neq(mysql_stmt_execute(left_stmt), 0);
  cr_assert_eq(mysql_stmt_errno(left_stmt), CR_SERVER_LOST);
  mysql_stmt_close(left_stmt);
  cr_assert_eq(pst_status("Prepared_stmt_count"), prepared_before);
}

static void
dirty_role(MYSQL *m)
{
  MYSQL *a = pst_admin();
  pst_exec(a, "CREATE ROLE IF NOT EXISTS poolshim_role");
  pst_exec(a, "GRANT SELECT ON mysql.user TO poolshim_role");
  pst_exec(a, "GRANT poolshim_role TO '%s'@'%%', '%s'@'localhost'", pst_env("PS_TEST_USER"),
           pst_env("PS_TEST_USER"));
  pst_exec(m, "SET ROLE poolshim_role");
  g_autofree char *role = pst_scalar_str(m, "SELECT CURRENT_ROLE()");
  cr_assert_str_eq(role, "poolshim_role");
}
static void
check_role(MYSQL *m)
{
  g_autofree char *role = pst_scalar_str(m, "SELECT CURRENT_ROLE()");
  cr_assert_null(role, "the previous borrower's role is active: %s", role);
  cr_assert_neq(mysql_query(m, "SELECT COUNT(*) FROM mysql.user"), 0);
}

/* The pool re-selects the database and restores the role only when the borrower may have
 * changed them (src/watch.c): every way of changing them must be seen. */
static void
dirty_use_disguised(MYSQL *m)
{
  pst_exec(m, "/* comment */ use\n`%s`", pst_env("PS_TEST_DB2"));
}
static void
dirty_use_dynamic(MYSQL *m)
{
  pst_exec(m, "EXECUTE IMMEDIATE CONCAT('US', 'E %s')", pst_env("PS_TEST_DB2"));
}
static void
dirty_use_c_api_statement(MYSQL *m)
{
  MYSQL_STMT *st = mysql_stmt_init(m);
  g_autofree char *sql = g_strdup_printf("USE %s", pst_env("PS_TEST_DB2"));
  cr_assert_eq(mysql_stmt_prepare(st, sql, strlen(sql)), 0, "%s", mysql_stmt_error(st));
  cr_assert_eq(mysql_stmt_execute(st), 0, "%s", mysql_stmt_error(st));
  mysql_stmt_close(st);
  g_autofree char *db = pst_scalar_str(m, "SELECT DATABASE()");
  cr_assert_str_eq(db, pst_env("PS_TEST_DB2"));
}
static void
dirty_role_dynamic(MYSQL *m)
{
  dirty_role(m);
  pst_exec(m, "SET ROLE NONE");
  pst_exec(m, "EXECUTE IMMEDIATE CONCAT('SET RO', 'LE poolshim_role')");
  g_autofree char *role = pst_scalar_str(m, "SELECT CURRENT_ROLE()");
  cr_assert_str_eq(role, "poolshim_role");
}
static void
dirty_role_untracked(MYSQL *m)
{
  dirty_role(m);
  pst_exec(m, "SET ROLE NONE");
  pst_exec(m, "SET SESSION session_track_state_change = OFF");
  pst_exec(m, "SET SESSION session_track_schema = OFF");
  pst_exec(m, "set/**/role poolshim_role");
  g_autofree char *role = pst_scalar_str(m, "SELECT CURRENT_ROLE()");
  cr_assert_str_eq(role, "poolshim_role");
}

static Kind kinds[] = {
  {"SET ROLE", dirty_role, check_role},
  {"user variable", dirty_user_variable, check_user_variable},
  {"temporary table", dirty_temporary_table, check_temporary_table},
  {"sql_mode", dirty_sql_mode, check_sql_mode},
  {"time_zone", dirty_time_zone, check_time_zone},
  {"SET NAMES latin1", dirty_set_names, check_charset},
  {"mysql_set_character_set", dirty_set_character_set, check_charset},
  {"autocommit=0", dirty_autocommit, check_autocommit},
  {"uncommitted insert", dirty_uncommitted_insert, check_uncommitted_insert},
  {"insert with autocommit=0", dirty_autocommit_off_insert, check_uncommitted_insert},
  {"isolation level", dirty_isolation_level, check_isolation_level},
  {"LOCK TABLES", dirty_lock_tables, check_lock_tables},
  {"GET_LOCK", dirty_named_lock, check_named_lock},
  {"SQL PREPARE", dirty_sql_prepare, check_sql_prepare},
  {"USE other_db", dirty_use, check_database},
  {"mysql_select_db", dirty_select_db, check_database},
  {"LAST_INSERT_ID", dirty_last_insert_id, check_last_insert_id},
  {"session wait_timeout", dirty_wait_timeout, check_wait_timeout},
  {"HANDLER OPEN", dirty_handler, check_handler},
  {"XA START left open", dirty_xa, check_xa},
  {"C API prepared statement", dirty_c_api_statement, check_c_api_statement},
  {"use after a comment", dirty_use_disguised, check_database},
  {"USE by EXECUTE IMMEDIATE", dirty_use_dynamic, check_database},
  {"USE as a C API statement", dirty_use_c_api_statement, check_database},
  {"SET ROLE by EXECUTE IMMEDIATE", dirty_role_dynamic, check_role},
  {"SET ROLE, tracking off", dirty_role_untracked, check_role},
};

/* Criterion copies parameters into a fresh process image: pass indexes, not pointers. */
static int kind_indexes[G_N_ELEMENTS(kinds)];

ParameterizedTestParameters(isolation, next_borrower_sees_a_fresh_session)
{
  for (gsize i = 0; i < G_N_ELEMENTS(kinds); i++)
    kind_indexes[i] = (int)i;
  return cr_make_param_array(int, kind_indexes, G_N_ELEMENTS(kind_indexes));
}

TestSuite(isolation, .timeout = 60);

ParameterizedTest(int *index, isolation, next_borrower_sees_a_fresh_session)
{
  const Kind *kind = &kinds[*index];
  marker = 1000000 + g_random_int_range(0, 1000000);
  pst_admin();
  MYSQL *first = pst_connect_app();
  long long id = pst_scalar(first, "SELECT CONNECTION_ID()");
  kind->dirty(first);
  mysql_close(first);

  MYSQL *next = pst_connect_app();
  cr_assert_eq(pst_scalar(next, "SELECT CONNECTION_ID()"), id,
               "[%s] the next borrower did not get the same server thread", kind->name);
  kind->check(next);
  mysql_close(next);
}

/* A pool without a default database: COM_RESET_CONNECTION would keep a USE. */
Test(isolation, use_is_undone_for_a_pool_without_database)
{
  MYSQL *first = pst_connect(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"), NULL);
  long long id = pst_scalar(first, "SELECT CONNECTION_ID()");
  pst_exec(first, "USE %s", pst_env("PS_TEST_DB2"));
  mysql_close(first);
  MYSQL *next = pst_connect(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"), NULL);
  cr_assert_eq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  g_autofree char *db = pst_scalar_str(next, "SELECT DATABASE()");
  cr_assert_null(db, "DATABASE() is %s", db);
  mysql_close(next);
}

/* Session tracking off: the client cannot see the USE, the pool still undoes it. */
Test(isolation, use_with_schema_tracking_off_is_undone)
{
  MYSQL *first = pst_connect_app();
  long long id = pst_scalar(first, "SELECT CONNECTION_ID()");
  pst_exec(first, "SET SESSION session_track_schema = OFF");
  pst_exec(first, "USE %s", pst_env("PS_TEST_DB2"));
  mysql_close(first);
  MYSQL *next = pst_connect_app();
  cr_assert_eq(pst_scalar(next, "SELECT CONNECTION_ID()"), id);
  check_database(next);
  mysql_close(next);
}

/* Init commands run again for each borrower: their effect is part of a fresh session. */
Test(isolation, init_commands_run_again_for_the_next_borrower)
{
  MYSQL *m = mysql_init(NULL);
  mysql_options(m, MYSQL_INIT_COMMAND, "SET @from_init = 7");
  cr_assert_not_null(mysql_real_connect(m, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER"),
                                        pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"),
                                        pst_port(), NULL, 0));
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  pst_exec(m, "SET @from_init = 99");
  mysql_close(m);
  m = mysql_init(NULL);
  mysql_options(m, MYSQL_INIT_COMMAND, "SET @from_init = 7");
  cr_assert_not_null(mysql_real_connect(m, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER"),
                                        pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"),
                                        pst_port(), NULL, 0));
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id);
  cr_assert_eq(pst_scalar(m, "SELECT @from_init"), 7);
  mysql_close(m);
}

static MYSQL *
connect_with_read_timeout(unsigned int seconds)
{
  MYSQL *m = mysql_init(NULL);
  if (seconds)
    mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &seconds);
  cr_assert_not_null(mysql_real_connect(m, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER"),
                                        pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"),
                                        pst_port(), NULL, 0));
  return m;
}

/* Timeouts are the handle's, not the pooled connection's: each borrower gets its own. */
Test(isolation, each_borrower_gets_its_own_read_timeout)
{
  MYSQL *patient = connect_with_read_timeout(0);
  long long id = pst_scalar(patient, "SELECT CONNECTION_ID()");
  mysql_close(patient);

  MYSQL *hasty = connect_with_read_timeout(1);
  cr_assert_eq(pst_scalar(hasty, "SELECT CONNECTION_ID()"), id);
  gint64 t0 = g_get_monotonic_time();
  cr_assert_neq(mysql_query(hasty, "SELECT SLEEP(4)"), 0, "the 1 s read timeout did not apply");
  cr_assert_eq(mysql_errno(hasty), CR_SERVER_LOST, "%s", mysql_error(hasty));
  cr_assert_lt(g_get_monotonic_time() - t0, 3500 * 1000);
  mysql_close(hasty); /* lost: not returned */

  /* A borrower with a 2 s timeout leaves; the next one, without, may wait longer. */
  MYSQL *brief = connect_with_read_timeout(2);
  long long second = pst_scalar(brief, "SELECT CONNECTION_ID()");
  mysql_close(brief);
  MYSQL *patient2 = connect_with_read_timeout(0);
  cr_assert_eq(pst_scalar(patient2, "SELECT CONNECTION_ID()"), second);
  cr_assert_eq(pst_scalar(patient2, "SELECT SLEEP(3)"), 0, "the previous borrower's timeout applied");
  mysql_close(patient2);
}

/* A prepared XA transaction belongs to its transaction manager: the pool must neither roll
 * it back nor keep it attached to a pooled session. Closed as mysql_close would. */
Test(isolation, a_prepared_xa_transaction_survives_for_its_transaction_manager)
{
  long long v = 2000000 + g_random_int_range(0, 1000000);
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  pst_exec(m, "XA START 'poolshim_tm'");
  pst_exec(m, "INSERT INTO t (v) VALUES (%lld)", v);
  pst_exec(m, "XA END 'poolshim_tm'");
  pst_exec(m, "XA PREPARE 'poolshim_tm'");
  mysql_close(m);
  pst_wait_thread_gone((unsigned long)id);
  MYSQL *a = pst_admin();
  pst_exec(a, "XA COMMIT 'poolshim_tm'");
  cr_assert_eq(pst_scalar(a, "SELECT COUNT(*) FROM %s.t WHERE v = %lld", pst_env("PS_TEST_DB"), v),
               1, "the prepared transaction's work was lost");
  MYSQL *next = pst_connect_app();
  cr_assert_eq(pst_scalar(next, "SELECT 1"), 1);
  mysql_close(next);
}
