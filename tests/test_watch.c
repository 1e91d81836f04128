/* test_watch.c: the word scan that tells whether a statement may change the session's
 * database or role, or leave state no reset clears. A false "clean" would lend one
 * borrower's database or role to the next: every disguise the server accepts must be seen. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <string.h>

#include "watch.h"

TestSuite(watch, .timeout = 30);

typedef struct {
  char sql[80];
  guint bits;
} Case;

ParameterizedTestParameters(watch, each_statement_gets_the_bits_it_needs)
{
  static Case cases[] = {
    {"SELECT 1", 0},
    {"SELECT * FROM users WHERE username = 'x'", 0},
    {"INSERT INTO user_roles VALUES (1)", 0},
    {"SELECT role_id, used FROM t", 0},
    {"UPDATE t SET a = 1", 0},
    {"USE shop", PS_DIRTY_DB},
    {"use`shop`", PS_DIRTY_DB},
    {"/*comment*/Use shop", PS_DIRTY_DB},
    {"SELECT 1;\nUSE shop", PS_DIRTY_DB},
    {"/*!USE*/ shop", PS_DIRTY_DB},
    {"DROP DATABASE shop", PS_DIRTY_DB},
    {"drop schema if exists shop", PS_DIRTY_DB},
    {"DROP TABLE t", 0},
    {"SET ROLE r1", 0}, /* the role is restored at every return anyway */
    {"EXECUTE IMMEDIATE CONCAT('US','E x')", PS_DIRTY_DB},
    {"PREPARE s FROM @q", PS_DIRTY_DB},
    {"execute s", PS_DIRTY_DB},
    {"CALL p()", PS_DIRTY_DB},
    {"USE\xa0shop", PS_DIRTY_DB},          /* latin1 no-break space: whitespace to the server */
    {"\xe9USE shop", PS_DIRTY_DB},          /* an identifier for the server: a false "dirty" */
    {"SET profiling = 1", PS_DIRTY_UNPOOLABLE},
    {"SET @@profiling=1", PS_DIRTY_UNPOOLABLE},
    {"SELECT 'use' AS a", PS_DIRTY_DB},     /* in a string: a harmless false "dirty" */
    {"SELECT x\xc3\xa9role FROM t", 0},
  };
  return cr_make_param_array(Case, cases, G_N_ELEMENTS(cases));
}

ParameterizedTest(Case *c, watch, each_statement_gets_the_bits_it_needs)
{
  guint got = ps_watch_classify_sql(c->sql, strlen(c->sql));
  cr_assert_eq(got, c->bits, "\"%s\": got %#x, expected %#x", c->sql, got, c->bits);
}

Test(watch, the_scan_stops_at_the_given_length)
{
  const char *sql = "SELECT 1; USE shop";
  cr_assert_eq(ps_watch_classify_sql(sql, 9), 0);
  cr_assert_eq(ps_watch_classify_sql(sql, strlen(sql)), PS_DIRTY_DB);
  cr_assert_eq(ps_watch_classify_sql("USE", 2), 0, "\"US\" is not a keyword");
}

Test(watch, a_handle_without_a_watch_is_not_pooled_again)
{
  MYSQL fake;
  memset(&fake, 0, sizeof fake);
  cr_assert_eq(ps_watch_take(&fake, NULL), PS_DIRTY_ALL);
}

/* ---- statements that may be answered ahead ---- */

typedef struct {
  char sql[80]; /* inline: Criterion copies parameters into the test's process */
  gboolean prelude;
} PreludeCase;

ParameterizedTestParameters(watch, only_pure_session_setup_is_answered_ahead)
{
  static PreludeCase cases[] = {
    /* What the drivers send (libmariadb's mysql_autocommit / mysql_set_character_set,
     * Django's isolation level). */
    {"SET autocommit=0", TRUE},
    {"SET autocommit=1", TRUE},
    {"SET NAMES utf8mb3", TRUE},
    {"SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci", TRUE},
    {"SET NAMES 'latin1'", TRUE},
    {"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", TRUE},
    {"set session transaction isolation level serializable", TRUE},
    {"SET SESSION TRANSACTION READ ONLY", TRUE},
    {"SET sql_mode='STRICT_TRANS_TABLES,NO_ZERO_DATE'", TRUE},
    {"SET SESSION time_zone = '+00:00'", TRUE},
    {"SET @@session.sql_auto_is_null = 0", TRUE},
    {"SET @@autocommit=1  ", TRUE},
    /* Anything that could do more, or that the matcher does not fully understand. */
    {"SET autocommit=0; DROP TABLE t", FALSE},
    {"SET NAMES utf8mb3; SELECT 1", FALSE},
    {"SET sql_mode=(SELECT f())", FALSE},
    {"SET sql_mode=CONCAT(@@sql_mode, ',X')", FALSE},
    {"SET time_zone=@tz", FALSE},
    {"SET @x = 1", FALSE},
    {"SET profiling=1", FALSE},
    {"SET ROLE admin", FALSE},
    {"SET GLOBAL sql_mode=''", FALSE},
    {"SET TRANSACTION ISOLATION LEVEL READ COMMITTED", FALSE}, /* next transaction only */
    {"SET sql_mode='it''s'", FALSE},
    {"SET sql_mode='a\\'b'", FALSE},
    {"SET NAMES utf8mb3 COLLATE", FALSE},
    {"SET autocommit=0 /* comment */", FALSE},
    {"SET autocommitx=0", FALSE},
    {"SELECT 1", FALSE},
    {"", FALSE},
  };
  return cr_make_param_array(PreludeCase, cases, G_N_ELEMENTS(cases));
}

ParameterizedTest(PreludeCase *c, watch, only_pure_session_setup_is_answered_ahead)
{
  cr_assert_eq(ps_watch_is_prelude(c->sql, strlen(c->sql)), c->prelude, "\"%s\"", c->sql);
}

Test(watch, a_prelude_is_judged_on_the_given_length_only)
{
  const char *sql = "SET autocommit=0; DROP TABLE t";
  cr_assert(ps_watch_is_prelude(sql, 16));
  cr_assert_not(ps_watch_is_prelude(sql, strlen(sql)));
  char big[PS_PRELUDE_LEN + 40];
  memset(big, 'a', sizeof big);
  memcpy(big, "SET sql_mode='", 14);
  big[sizeof big - 1] = '\'';
  cr_assert_not(ps_watch_is_prelude(big, sizeof big), "longer than PS_PRELUDE_LEN");
}

/* ---- session.c: the auto mode's statement scan ---- */
#include "session.h"

typedef struct {
  const char *sql;
  PsStmtKind kind;
} StmtCase;

static const StmtCase stmt_cases[] = {
  {"SELECT 1", PS_STMT_CLEAN},
  {"select connection_id()", PS_STMT_CLEAN},
  {"SELECT COUNT(*) FROM t WHERE a IN (1, 2) AND b = 'x(y'", PS_STMT_CLEAN},
  {"INSERT INTO t (a, b) VALUES (1, 'it''s')", PS_STMT_CLEAN},
  {"UPDATE t SET a = a + 1 WHERE id = (SELECT MAX(id) FROM u)", PS_STMT_CLEAN},
  {"SELECT @@session.autocommit, @@tx_isolation", PS_STMT_CLEAN},
  {"SELECT LAST_INSERT_ID( )", PS_STMT_CLEAN},
  {"SELECT 1;", PS_STMT_CLEAN},
  {"SHOW WARNINGS", PS_STMT_CLEAN},
  {"BEGIN", PS_STMT_TXN},
  {"START TRANSACTION READ ONLY", PS_STMT_TXN},
  {"commit", PS_STMT_TXN},
  {"ROLLBACK TO SAVEPOINT s1", PS_STMT_TXN},
  {"RELEASE SAVEPOINT s1", PS_STMT_TXN},
  {"SAVEPOINT s1", PS_STMT_TXN},
  {"COMMIT RELEASE", PS_STMT_FULL},
  {"BEGIN NOT ATOMIC SELECT 1; END", PS_STMT_FULL},
  {"SET @a = 1", PS_STMT_FULL},
  {"SELECT @a := 1", PS_STMT_FULL},
  {"SELECT @`a`", PS_STMT_FULL},
  {"SELECT 1 INTO @a", PS_STMT_FULL},
  {"SELECT 1 INTO OUTFILE '/tmp/x'", PS_STMT_FULL},
  {"SELECT GET_LOCK('x', 0)", PS_STMT_FULL},
  {"SELECT get_lock /* */ ('x', 0)", PS_STMT_FULL},
  {"SELECT LAST_INSERT_ID(5)", PS_STMT_FULL},
  {"SELECT NEXTVAL(s)", PS_STMT_FULL},
  {"SELECT NEXT VALUE FOR s", PS_STMT_FULL},
  {"SELECT f(1)", PS_STMT_FULL},
  {"SELECT db.count(1)", PS_STMT_FULL},
  {"SELECT `count`(1)", PS_STMT_FULL},
  {"SELECT \"f\"(1)", PS_STMT_FULL},
  {"SELECT 'a\\'', GET_LOCK('x', 0), ''", PS_STMT_FULL},
  {"SELECT `it's`, GET_LOCK('x', 0), 'y'", PS_STMT_FULL},
  {"SELECT 1 -- x", PS_STMT_FULL},
  {"SELECT 1 # x", PS_STMT_FULL},
  {"/*!SET @a=1*/ SELECT 1", PS_STMT_FULL},
  {"SELECT 1; SET @a = 1", PS_STMT_FULL},
  {"SELECT SQL_CALC_FOUND_ROWS * FROM t", PS_STMT_FULL},
  {"CREATE TEMPORARY TABLE t (a INT)", PS_STMT_FULL},
  {"HANDLER t OPEN", PS_STMT_FULL},
  {"LOCK TABLES t READ", PS_STMT_FULL},
  {"XA START 'x'", PS_STMT_FULL},
  {"CALL p()", PS_STMT_FULL},
  {"PREPARE s FROM 'SELECT 1'", PS_STMT_FULL},
  {"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", PS_STMT_FULL},
  {"SET NAMES utf8mb4", PS_STMT_FULL},
  {"SET session_track_state_change = OFF", PS_STMT_FULL},
  {"USE db", PS_STMT_FULL},
  {"DO RELEASE_ALL_LOCKS()", PS_STMT_FULL},
  {"SELECT\xa0GET_LOCK('x', 0)", PS_STMT_FULL},
  {"SELECT 'unterminated", PS_STMT_FULL},
  {"", PS_STMT_FULL},
};

static int stmt_indexes[G_N_ELEMENTS(stmt_cases)];

ParameterizedTestParameters(session, statements_are_classified_conservatively)
{
  for (gsize i = 0; i < G_N_ELEMENTS(stmt_cases); i++)
    stmt_indexes[i] = (int)i;
  return cr_make_param_array(int, stmt_indexes, G_N_ELEMENTS(stmt_indexes));
}

ParameterizedTest(int *index, session, statements_are_classified_conservatively)
{
  const StmtCase *c = &stmt_cases[*index];
  cr_assert_eq(ps_session_classify_sql(c->sql, strlen(c->sql)), c->kind, "\"%s\"", c->sql);
}

Test(session, insert_returning_is_full_its_insert_id_is_not_in_an_ok_packet)
{
  const char *sql = "INSERT INTO t (v) VALUES (1) RETURNING id";
  cr_assert_eq(ps_session_classify_sql(sql, strlen(sql)), PS_STMT_FULL);
}
