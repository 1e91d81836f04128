/* POOLSHIM_RESET=auto (the default): a return costs the server only what undoes the
 * borrower's changes. Proven with the server's own counters (Questions, Com_set_option, which
 * counts the SET ROLE of every full reset, Com_rollback, Connections) read on an admin
 * connection outside the pool, and with what the next borrower of the same server thread
 * (CONNECTION_ID()) sees. */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "helpers.h"

typedef struct {
  long long questions, set_option, rollback, connections;
} Counters;

/* One statement on the admin connection: it counts one Question itself. */
static Counters
snap(void)
{
  MYSQL *a = pst_admin();
  cr_assert_eq(mysql_query(a, "SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', "
                              "'Com_set_option', 'Com_rollback', 'Connections')"),
               0, "%s", mysql_error(a));
  MYSQL_RES *res = mysql_store_result(a);
  cr_assert_not_null(res);
  Counters c = {-1, -1, -1, -1};
  MYSQL_ROW row;
  while ((row = mysql_fetch_row(res))) {
    long long v = atoll(row[1]);
    if (strcmp(row[0], "Questions") == 0)
      c.questions = v;
    else if (strcmp(row[0], "Com_set_option") == 0)
      c.set_option = v;
    else if (strcmp(row[0], "Com_rollback") == 0)
      c.rollback = v;
    else if (strcmp(row[0], "Connections") == 0)
      c.connections = v;
  }
  mysql_free_result(res);
  cr_assert(c.questions >= 0 && c.set_option >= 0 && c.rollback >= 0 && c.connections >= 0);
  return c;
}

static void
setup_objects(void)
{
  MYSQL *a = pst_admin();
  pst_exec(a, "CREATE TABLE IF NOT EXISTS poolshim_test.auto_t (id INT PRIMARY KEY, v INT) "
              "ENGINE=InnoDB");
  pst_exec(a, "DELETE FROM poolshim_test.auto_t");
  pst_exec(a, "CREATE TABLE IF NOT EXISTS poolshim_test.auto_other (a INT) ENGINE=InnoDB");
  pst_exec(a, "CREATE TABLE IF NOT EXISTS poolshim_test.auto_ai (id INT AUTO_INCREMENT "
              "PRIMARY KEY, v INT) ENGINE=InnoDB");
  pst_exec(a, "CREATE TABLE IF NOT EXISTS poolshim_test.auto_trg (a INT) ENGINE=InnoDB");
  pst_exec(a, "CREATE OR REPLACE TRIGGER poolshim_test.auto_trg_bi BEFORE INSERT ON "
              "poolshim_test.auto_trg FOR EACH ROW SET @@session.sql_mode = 'ANSI_QUOTES'");
  pst_exec(a, "CREATE OR REPLACE PROCEDURE poolshim_test.auto_p() SET @u = 7");
  pst_exec(a, "CREATE OR REPLACE FUNCTION poolshim_test.auto_f() RETURNS INT "
              "BEGIN SET @u = 9; RETURN 1; END");
}

/* The shim reads its settings at the first connect, which setup_objects makes: each test
 * calls it first, after setting what it needs. */
TestSuite(auto_reset, .timeout = 120);

Test(auto_reset, a_borrower_that_changed_nothing_costs_the_server_no_command)
{
  setup_objects();
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  mysql_close(m);
  Counters before = snap();
  for (int i = 0; i < 50; i++) {
    m = pst_connect_app();
    cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id, "cycle %d: another session", i);
    mysql_close(m);
  }
  Counters after = snap();
  cr_assert_eq(after.questions - before.questions, 50 + 1,
               "50 borrows of one SELECT each (and this count) made %lld statements",
               after.questions - before.questions - 1);
  cr_assert_eq(after.set_option - before.set_option, 0, "a reset ran (SET ROLE)");
  cr_assert_eq(after.rollback - before.rollback, 0);
  cr_assert_eq(after.connections - before.connections, 0);
}

/* The word scan of watch_scan.c (USE, CALL, PREPARE, EXECUTE, DROP ... DATABASE) found these
 * words in names and in quoted text too, and every such borrower paid a full reset. In a
 * statement session.c calls CLEAN they cannot be what they name. */
Test(auto_reset, a_plain_select_naming_use_call_or_drop_database_costs_no_reset)
{
  setup_objects();
  static const char *const stmts[] = {
    "SELECT 1 AS `use`", "SELECT 2 AS `call`", "SELECT 'drop database x' AS `execute`",
    "SELECT COUNT(*) AS `prepare` FROM poolshim_test.auto_t",
  };
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  mysql_close(m);
  Counters before = snap();
  for (guint i = 0; i < G_N_ELEMENTS(stmts); i++) {
    m = pst_connect_app();
    cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id, "borrow %u: another session", i);
    cr_assert_eq(mysql_query(m, stmts[i]), 0, "%s: %s", stmts[i], mysql_error(m));
    MYSQL_RES *r = mysql_store_result(m);
    cr_assert_not_null(r);
    mysql_free_result(r);
    mysql_close(m);
  }
  m = pst_connect_app();
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id);
  mysql_close(m);
  Counters after = snap();
  cr_assert_eq(after.set_option - before.set_option, 0,
               "%lld full resets (SET ROLE) after statements that change nothing",
               after.set_option - before.set_option);
  cr_assert_eq(after.questions - before.questions, 2 * G_N_ELEMENTS(stmts) + 1 + 1,
               "%lld statements: more than the borrowers' own",
               after.questions - before.questions - 1);
  cr_assert_eq(after.connections - before.connections, 0);
}

Test(auto_reset, one_thread_connecting_and_closing_in_a_loop_uses_one_server_connection)
{
  /* With room to grow, a return that still owed a reset's replies made the next connect
   * open another connection: the loop alternated between two or three. */
  setenv("POOLSHIM_POOL_SIZE", "8", 1);
  setup_objects();
  Counters before = snap();
  long long first = -1;
  for (int i = 0; i < 200; i++) {
    MYSQL *m = pst_connect_app();
    long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
    if (first < 0)
      first = id;
    cr_assert_eq(id, first, "cycle %d got server thread %lld, not %lld", i, id, first);
    mysql_close(m);
  }
  cr_assert_eq(snap().connections - before.connections, 1);
}

Test(auto_reset, an_open_transaction_is_ended_by_a_rollback_alone)
{
  setup_objects();
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  mysql_close(m);
  Counters before = snap();
  m = pst_connect_app();
  pst_exec(m, "BEGIN");
  pst_exec(m, "INSERT INTO auto_t VALUES (1, 1)");
  mysql_close(m);
  m = pst_connect_app();
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id);
  cr_assert_eq(pst_scalar(m, "SELECT @@in_transaction"), 0);
  cr_assert_eq(pst_scalar(m, "SELECT COUNT(*) FROM auto_t"), 0, "the row was committed");
  mysql_close(m);
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT COUNT(*) FROM poolshim_test.auto_t"), 0);
  Counters after = snap();
  cr_assert_eq(after.rollback - before.rollback, 1, "ROLLBACK ran %lld times",
               after.rollback - before.rollback);
  cr_assert_eq(after.set_option - before.set_option, 0, "a full reset ran (SET ROLE)");
}

/* Session state only a full reset undoes: set by `setup`, `probe` must then answer `fresh`
 * to the next borrower of the same session (NULL: the probe must fail). */
typedef struct {
  const char *setup, *probe, *fresh;
} FullCase;

static const FullCase full_cases[] = {
  {"SET @u = 5", "SELECT COALESCE(@u, -1)", "-1"},
  {"SELECT @u := 5", "SELECT COALESCE(@u, -1)", "-1"},
  {"SELECT 5 INTO @u", "SELECT COALESCE(@u, -1)", "-1"},
  {"SELECT GET_LOCK('auto_lock', 0)", "SELECT IS_USED_LOCK('auto_lock') IS NULL", "1"},
  {"CREATE TEMPORARY TABLE auto_tmp (a INT)", "SELECT COUNT(*) FROM auto_tmp", NULL},
  {"PREPARE auto_s FROM 'SELECT 1'", "EXECUTE auto_s", NULL},
  {"HANDLER auto_t OPEN", "HANDLER auto_t READ FIRST", NULL},
  {"LOCK TABLES auto_t READ", "SELECT COUNT(*) FROM auto_other", "0"},
  {"XA START 'auto_xa'", "SELECT @@in_transaction", "0"},
  {"CALL auto_p()", "SELECT COALESCE(@u, -1)", "-1"},
  {"SELECT auto_f()", "SELECT COALESCE(@u, -1)", "-1"},
  {"SELECT LAST_INSERT_ID(5)", "SELECT LAST_INSERT_ID()", "0"},
  {"INSERT INTO auto_trg VALUES (1)", "SELECT @@sql_mode = @@global.sql_mode", "1"},
  {"SET session_track_state_change = OFF", "SELECT @@session_track_state_change", "1"},
  {"USE poolshim_other", "SELECT DATABASE()", "poolshim_test"},
  {"SET NAMES latin1", "SELECT @@character_set_client <> 'latin1'", "1"},
  {"SET STATEMENT max_statement_time = 100 FOR SELECT 1", "SELECT 1", "1"},
  {"DO RELEASE_ALL_LOCKS()", "SELECT 1", "1"},
};

/* Criterion copies parameters into a fresh process image: indexes, not pointers. */
static int full_indexes[G_N_ELEMENTS(full_cases)];

ParameterizedTestParameters(auto_reset, state_no_tracker_undoes_gets_the_full_reset)
{
  for (gsize i = 0; i < G_N_ELEMENTS(full_cases); i++)
    full_indexes[i] = (int)i;
  return cr_make_param_array(int, full_indexes, G_N_ELEMENTS(full_indexes));
}

ParameterizedTest(int *index, auto_reset, state_no_tracker_undoes_gets_the_full_reset)
{
  const FullCase *c = &full_cases[*index];
  setup_objects();
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  mysql_close(m);
  /* A borrower that changes nothing costs nothing... */
  Counters before = snap();
  m = pst_connect_app();
  pst_exec(m, "SELECT 1 FROM auto_t LIMIT 1");
  mysql_close(m);
  Counters mid = snap();
  cr_assert_eq(mid.set_option - before.set_option, 0, "a clean borrow paid a reset");
  /* ... and one that changed such state pays the full reset. */
  m = pst_connect_app();
  pst_exec(m, "SELECT 1"); /* not leading: never kept as session setup */
  if (mysql_query(m, c->setup) == 0) {
    MYSQL_RES *res = mysql_store_result(m);
    mysql_free_result(res);
  } else {
    cr_assert_fail("%s: %s", c->setup, mysql_error(m));
  }
  /* Counted after the borrower's own statement (SET @u, SET NAMES ... count as set_option
   * themselves): what follows is the pool's. */
  Counters used = snap();
  mysql_close(m);
  m = pst_connect_app();
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id, "%s: another session", c->setup);
  cr_assert_geq(snap().set_option - used.set_option, 1, "%s: no full reset", c->setup);
  if (c->fresh) {
    g_autofree char *got = pst_scalar_str(m, "%s", c->probe);
    cr_assert_str_eq(got ? got : "NULL", c->fresh, "after %s: %s gave %s", c->setup, c->probe,
                     got ? got : "NULL");
  } else {
    cr_assert_neq(mysql_query(m, c->probe), 0, "after %s: %s worked", c->setup, c->probe);
  }
  mysql_close(m);
}

/* What MySQLdb (mysql_set_character_set, mysql_autocommit(0)) and Django (isolation level,
 * autocommit on) send at every connect. */
static void
django_setup(MYSQL *m)
{
  cr_assert_eq(mysql_set_character_set(m, "utf8mb3"), 0, "%s", mysql_error(m));
  cr_assert_eq(mysql_autocommit(m, 0), 0, "%s", mysql_error(m));
  cr_assert_eq(mysql_query(m, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"), 0,
               "%s", mysql_error(m));
  cr_assert_eq(mysql_autocommit(m, 1), 0, "%s", mysql_error(m));
}

Test(auto_reset, a_repeated_session_setup_is_answered_with_no_command_and_divergence_is_exact)
{
  setup_objects();
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  g_autofree char *fresh_cs = pst_scalar_str(m, "SELECT @@character_set_client");
  g_autofree char *fresh_client_cs = g_strdup(mysql_character_set_name(m));
  g_autofree char *fresh_iso = pst_scalar_str(m, "SELECT @@tx_isolation");
  mysql_close(m);
  cr_assert_str_neq(fresh_iso, "READ-COMMITTED", "the setup's level must differ from a fresh one");

  m = pst_connect_app();
  django_setup(m);
  pst_exec(m, "SELECT 1");
  Counters before = snap();
  mysql_close(m);
  m = pst_connect_app();
  django_setup(m);
  Counters after = snap();
  cr_assert_eq(after.set_option - before.set_option, 0, "%lld SET statements reached the server",
               after.set_option - before.set_option);
  cr_assert_eq(after.questions - before.questions, 1, "%lld statements reached the server",
               after.questions - before.questions - 1);
  cr_assert_str_eq(mysql_character_set_name(m), "utf8mb3");
  cr_assert_eq(mysql_errno(m), 0);
  cr_assert_eq(mysql_field_count(m), 0);
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id);
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 1);
  g_autofree char *iso = pst_scalar_str(m, "SELECT @@tx_isolation");
  cr_assert_str_eq(iso, "READ-COMMITTED");
  g_autofree char *cs = pst_scalar_str(m, "SELECT @@character_set_client");
  cr_assert_str_eq(cs, "utf8mb3");
  mysql_close(m);

  /* Only the first statement of the setup, then something else: exactly its own state. */
  m = pst_connect_app();
  cr_assert_eq(mysql_set_character_set(m, "utf8mb3"), 0, "%s", mysql_error(m));
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id);
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 1);
  g_autofree char *iso2 = pst_scalar_str(m, "SELECT @@tx_isolation");
  cr_assert_str_eq(iso2, fresh_iso);
  g_autofree char *cs2 = pst_scalar_str(m, "SELECT @@character_set_client");
  cr_assert_str_eq(cs2, "utf8mb3");
  cr_assert_str_eq(mysql_character_set_name(m), "utf8mb3");
  mysql_close(m);

  /* A borrower with no setup at all sees a fresh session, server and client side. */
  m = pst_connect_app();
  django_setup(m);
  mysql_close(m);
  m = pst_connect_app();
  cr_assert_str_eq(mysql_character_set_name(m), fresh_client_cs);
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id);
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 1);
  g_autofree char *iso3 = pst_scalar_str(m, "SELECT @@tx_isolation");
  cr_assert_str_eq(iso3, fresh_iso);
  g_autofree char *cs3 = pst_scalar_str(m, "SELECT @@character_set_client");
  cr_assert_str_eq(cs3, fresh_cs);
  mysql_close(m);
}

Test(auto_reset, a_mysqldb_borrower_without_autocommit_costs_one_rollback)
{
  setup_objects();
  MYSQL *m = pst_connect_app();
  cr_assert_eq(mysql_set_character_set(m, "utf8mb3"), 0);
  cr_assert_eq(mysql_autocommit(m, 0), 0);
  pst_exec(m, "SELECT COUNT(*) FROM auto_t");
  mysql_close(m);
  /* Counted inside the next borrow, which sends nothing: its lend has read the reply to
   * the ROLLBACK that return sent (pipelined, it may otherwise run after the count). */
  m = pst_connect_app();
  Counters before = snap();
  mysql_close(m);
  for (int i = 0; i < 10; i++) {
    m = pst_connect_app();
    cr_assert_eq(mysql_set_character_set(m, "utf8mb3"), 0);
    cr_assert_eq(mysql_autocommit(m, 0), 0);
    pst_exec(m, "INSERT INTO auto_t VALUES (100, 1)"); /* never committed */
    mysql_close(m);
  }
  m = pst_connect_app();
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 1);
  cr_assert_eq(pst_scalar(m, "SELECT COUNT(*) FROM auto_t"), 0);
  mysql_close(m);
  Counters after = snap();
  cr_assert_eq(after.rollback - before.rollback, 10, "ROLLBACK ran %lld times for 10 returns",
               after.rollback - before.rollback);
  /* The first borrow after the loop, which sent no setup, paid the restore. */
  cr_assert_leq(after.set_option - before.set_option, 4, "%lld SET statements",
                after.set_option - before.set_option);
}

Test(auto_reset, always_pays_the_full_reset_at_every_return)
{
  setenv("POOLSHIM_RESET", "always", 1);
  setup_objects();
  MYSQL *m = pst_connect_app();
  mysql_close(m);
  /* The count starts after a lend: that lend has read the first return's reset replies, so
   * its SET ROLE has run before the count, never after (it is sent without waiting). */
  m = pst_connect_app();
  Counters before = snap();
  mysql_close(m);
  for (int i = 0; i < 19; i++) {
    m = pst_connect_app();
    pst_exec(m, "SELECT 1");
    mysql_close(m);
  }
  /* The last reset was sent without waiting: the next lend reads its replies, so the server
   * has run it before the count. */
  m = pst_connect_app();
  long long sets = snap().set_option - before.set_option;
  cr_assert_eq(sets, 20, "SET ROLE at every return: %lld", sets);
  mysql_close(m);
}

Test(auto_reset, a_kept_autocommit_off_is_not_what_the_next_borrower_is_told)
{
  /* MySQLdb sends SET autocommit=0 only when the status flags say autocommit is on: a
   * borrower told the kept session's flags would skip it and run with autocommit on. */
  setup_objects();
  MYSQL *m = pst_connect_app();
  cr_assert_eq(mysql_autocommit(m, 0), 0);
  pst_exec(m, "SELECT 1");
  mysql_close(m);
  m = pst_connect_app();
  cr_assert(m->server_status & SERVER_STATUS_AUTOCOMMIT, "status 0x%x", m->server_status);
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 1);
  mysql_close(m);
  m = pst_connect_app();
  cr_assert(m->server_status & SERVER_STATUS_AUTOCOMMIT, "status 0x%x", m->server_status);
  cr_assert_eq(mysql_autocommit(m, 0), 0);
  cr_assert_not(m->server_status & SERVER_STATUS_AUTOCOMMIT, "status 0x%x", m->server_status);
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 0);
  mysql_close(m);
}

Test(auto_reset, a_failed_statement_with_autocommit_off_leaves_no_transaction_behind)
{
  /* The error packet carries no status flags: the transaction the failed INSERT began is
   * invisible in the client's status, and must still be rolled back. */
  setup_objects();
  pst_exec(pst_admin(), "INSERT INTO poolshim_test.auto_t VALUES (5, 5)");
  MYSQL *m = pst_connect_app();
  long long id = (long long)mysql_thread_id(m); /* no statement: the setup leads */
  cr_assert_eq(mysql_autocommit(m, 0), 0);
  pst_exec(m, "SELECT 1"); /* its status flags: no transaction, no state change */
  cr_assert_neq(mysql_query(m, "INSERT INTO auto_t VALUES (5, 0)"), 0, "no duplicate key");
  mysql_close(m);
  m = pst_connect_app();
  cr_assert_eq(mysql_autocommit(m, 0), 0); /* the same setup: answered, nothing restored */
  cr_assert_eq(pst_scalar(m, "SELECT @@in_transaction"), 0);
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id);
  mysql_close(m);
  pst_exec(pst_admin(), "DELETE FROM poolshim_test.auto_t");
}

/* Session variables whose fresh value is the global one, set after the leading setup: set
 * back with one SET, no full reset. */
static const FullCase restore_cases[] = {
  {"SET time_zone = '+05:00'", "SELECT @@time_zone = @@global.time_zone", "1"},
  {"SET sql_mode = 'ANSI_QUOTES'", "SELECT @@sql_mode = @@global.sql_mode", "1"},
  {"SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
   "SELECT @@tx_isolation = @@global.tx_isolation", "1"},
  {"SET SESSION TRANSACTION READ ONLY", "SELECT @@tx_read_only", "0"},
  {"SET @@session.sql_auto_is_null = 1", "SELECT @@sql_auto_is_null", "0"},
  {"SET autocommit = 0", "SELECT @@autocommit", "1"},
  {"INSERT INTO auto_ai (v) VALUES (1)", "SELECT LAST_INSERT_ID()", "0"},
  /* Django's Model.objects.create() on MariaDB: no OK packet shows the new
   * LAST_INSERT_ID(), set back to 0 all the same (it took a full reset before). */
  {"INSERT INTO auto_ai (v) VALUES (1) RETURNING id", "SELECT LAST_INSERT_ID()", "0"},
  {"REPLACE INTO auto_ai (v) VALUES (2) RETURNING id, v", "SELECT LAST_INSERT_ID()", "0"},
};

static int restore_indexes[G_N_ELEMENTS(restore_cases)];

ParameterizedTestParameters(auto_reset, a_later_session_variable_is_set_back_alone)
{
  for (gsize i = 0; i < G_N_ELEMENTS(restore_cases); i++)
    restore_indexes[i] = (int)i;
  return cr_make_param_array(int, restore_indexes, G_N_ELEMENTS(restore_indexes));
}

ParameterizedTest(int *index, auto_reset, a_later_session_variable_is_set_back_alone)
{
  const FullCase *c = &restore_cases[*index];
  setup_objects();
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  mysql_close(m);
  Counters before = snap();
  m = pst_connect_app();
  pst_exec(m, "SELECT 1"); /* not leading: never kept as session setup */
  pst_exec(m, "%s", c->setup);
  /* With autocommit off: never committed, not even by the restored autocommit=1. */
  gboolean insert = strstr(c->setup, "autocommit") != NULL;
  if (insert)
    pst_exec(m, "INSERT INTO auto_t VALUES (7, 7)");
  mysql_close(m);
  m = pst_connect_app();
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id, "%s: another session", c->setup);
  Counters after = snap();
  /* SELECT 1, the SET, the INSERT if any, CONNECTION_ID(), this count; the restoring SET,
   * and the ROLLBACK when a transaction may be open. A full reset would add SET ROLE and
   * turn tracking on again. */
  long long extra = after.questions - before.questions - 4 - insert;
  long long rollbacks = after.rollback - before.rollback;
  cr_assert_eq(extra, 1 + rollbacks, "%s: %lld statements for the return (%lld ROLLBACK)",
               c->setup, extra, rollbacks);
  long long sets = g_str_has_prefix(c->setup, "SET") ? 2 : 1; /* its own and the restore */
  cr_assert_eq(after.set_option - before.set_option, sets, "%s: %lld SET statements", c->setup,
               after.set_option - before.set_option);
  g_autofree char *got = pst_scalar_str(m, "%s", c->probe);
  cr_assert_str_eq(got ? got : "NULL", c->fresh, "after %s: %s gave %s", c->setup, c->probe,
                   got ? got : "NULL");
  mysql_close(m);
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT COUNT(*) FROM poolshim_test.auto_t"), 0,
               "%s: the borrower's INSERT was committed", c->setup);
}

Test(auto_reset, over_tls_a_kept_setup_is_answered_and_a_transaction_rolled_back)
{
  setup_objects();
  Counters before = {0};
  for (int i = 0; i < 3; i++) {
    MYSQL *m = mysql_init(NULL);
    pst_require_tls(m);
    pst_connect_app_on(m);
    cr_assert_not_null(mysql_get_ssl_cipher(m));
    django_setup(m);
    /* From before the previous return to after this setup: the return's ROLLBACK only. */
    Counters after = snap();
    if (i > 0)
      cr_assert_eq(after.set_option - before.set_option, 0, "borrow %d: %lld SET", i,
                   after.set_option - before.set_option);
    g_autofree char *iso = pst_scalar_str(m, "SELECT @@tx_isolation");
    cr_assert_str_eq(iso, "READ-COMMITTED");
    pst_exec(m, "BEGIN");
    pst_exec(m, "INSERT INTO auto_t VALUES (9, 9)");
    before = snap();
    mysql_close(m);
  }
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT COUNT(*) FROM poolshim_test.auto_t"), 0);
}

Test(auto_reset, a_generated_insert_id_is_set_back_and_the_setup_still_kept)
{
  /* Django's ORM: the connect's setup, then an INSERT that generates an id. */
  setup_objects();
  MYSQL *m = pst_connect_app();
  long long id = (long long)mysql_thread_id(m);
  django_setup(m);
  pst_exec(m, "INSERT INTO auto_ai (v) VALUES (1)");
  cr_assert_neq(mysql_insert_id(m), 0);
  Counters before = snap();
  mysql_close(m);
  m = pst_connect_app();
  django_setup(m);
  cr_assert_eq(pst_scalar(m, "SELECT LAST_INSERT_ID()"), 0);
  Counters after = snap();
  /* The return's SET last_insert_id, the LAST_INSERT_ID() query, this count: the setup was
   * answered, nothing else reached the server. */
  cr_assert_eq(after.questions - before.questions, 3, "%lld statements",
               after.questions - before.questions);
  cr_assert_eq(after.set_option - before.set_option, 1);
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id);
  g_autofree char *iso = pst_scalar_str(m, "SELECT @@tx_isolation");
  cr_assert_str_eq(iso, "READ-COMMITTED");
  mysql_close(m);
}
