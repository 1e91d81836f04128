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
