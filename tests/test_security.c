/* Security: a connection never crosses users, passwords, databases or option sets. */
#include <mysqld_error.h>

#include "helpers.h"

TestSuite(security, .timeout = 60);

static long long
pooled_id(const char *user, const char *password, const char *db)
{
  MYSQL *m = pst_connect(user, password, db);
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  mysql_close(m);
  return id;
}

Test(security, wrong_password_after_a_pooled_success_gets_1045)
{
  pooled_id(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"));
  unsigned int err = 0;
  char msg[512];
  MYSQL *m = pst_try_connect(pst_env("PS_TEST_USER"), "not-the-password", pst_env("PS_TEST_DB"),
                             &err, msg, sizeof msg);
  cr_assert_null(m, "a wrong password connected");
  cr_assert_eq(err, ER_ACCESS_DENIED_ERROR, "got %u %s", err, msg);
  /* And the right one still works from the pool. */
  pooled_id(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"));
}

Test(security, another_user_never_gets_the_connection)
{
  long long a = pooled_id(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                          pst_env("PS_TEST_DB"));
  MYSQL *m = pst_connect(pst_env("PS_TEST_USER2"), pst_env("PS_TEST_PASSWORD2"),
                         pst_env("PS_TEST_DB"));
  cr_assert_neq(pst_scalar(m, "SELECT CONNECTION_ID()"), a);
  g_autofree char *who = pst_scalar_str(m, "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)");
  cr_assert_str_eq(who, pst_env("PS_TEST_USER2"));
  mysql_close(m);
}

Test(security, another_database_never_gets_the_connection)
{
  long long a = pooled_id(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                          pst_env("PS_TEST_DB"));
  MYSQL *m = pst_connect(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                         pst_env("PS_TEST_DB2"));
  cr_assert_neq(pst_scalar(m, "SELECT CONNECTION_ID()"), a);
  g_autofree char *db = pst_scalar_str(m, "SELECT DATABASE()");
  cr_assert_str_eq(db, pst_env("PS_TEST_DB2"));
  mysql_close(m);
}

Test(security, another_charset_never_gets_the_connection)
{
  long long a = pooled_id(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                          pst_env("PS_TEST_DB"));
  for (int round = 0; round < 2; round++) {
    MYSQL *m = mysql_init(NULL);
    mysql_options(m, MYSQL_SET_CHARSET_NAME, "latin1");
    cr_assert_not_null(mysql_real_connect(m, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER"),
                                          pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"),
                                          pst_port(), NULL, 0));
    cr_assert_neq(pst_scalar(m, "SELECT CONNECTION_ID()"), a);
    g_autofree char *cs = pst_scalar_str(m, "SELECT @@character_set_client");
    cr_assert_str_eq(cs, "latin1");
    cr_assert_str_eq(mysql_character_set_name(m), "latin1");
    mysql_close(m);
  }
  /* The default-charset pool still has its own connection. */
  cr_assert_eq(pooled_id(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                         pst_env("PS_TEST_DB")),
               a);
}

Test(security, other_client_flags_never_get_the_connection)
{
  long long a = pooled_id(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                          pst_env("PS_TEST_DB"));
  MYSQL *m = mysql_init(NULL);
  cr_assert_not_null(mysql_real_connect(m, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER"),
                                        pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"),
                                        pst_port(), NULL, CLIENT_MULTI_STATEMENTS));
  cr_assert_neq(pst_scalar(m, "SELECT CONNECTION_ID()"), a);
  mysql_close(m);
}

#define THREADS 16
#define CYCLES 100

typedef struct {
  const char *user, *password, *db;
  gint mismatches;
} Identity;

static gpointer
identity_worker(gpointer data)
{
  Identity *id = data;
  for (int i = 0; i < CYCLES; i++) {
    MYSQL *m = mysql_init(NULL);
    if (!mysql_real_connect(m, pst_env("PS_TEST_HOST"), id->user, id->password, id->db,
                            pst_port(), NULL, 0) ||
        mysql_query(m, "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1), DATABASE()")) {
      g_atomic_int_inc(&id->mismatches);
    } else {
      MYSQL_RES *r = mysql_store_result(m);
      MYSQL_ROW row = mysql_fetch_row(r);
      if (!row || g_strcmp0(row[0], id->user) || g_strcmp0(row[1], id->db))
        g_atomic_int_inc(&id->mismatches);
      mysql_free_result(r);
    }
    mysql_close(m);
  }
  return NULL;
}

static void
small_pools(void)
{
  setenv("POOLSHIM_POOL_SIZE", "2", 1);
}

Test(security, identities_never_cross_under_concurrency, .init = small_pools)
{
  Identity ids[4] = {
    {pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB")},
    {pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB2")},
    {pst_env("PS_TEST_USER2"), pst_env("PS_TEST_PASSWORD2"), pst_env("PS_TEST_DB")},
    {pst_env("PS_TEST_USER2"), pst_env("PS_TEST_PASSWORD2"), pst_env("PS_TEST_DB2")},
  };
  GThread *t[THREADS];
  for (int i = 0; i < THREADS; i++)
    t[i] = g_thread_new("identity", identity_worker, &ids[i % 4]);
  for (int i = 0; i < THREADS; i++)
    g_thread_join(t[i]);
  for (int i = 0; i < 4; i++)
    cr_assert_eq(ids[i].mismatches, 0, "%s/%s: %d wrong or failed sessions", ids[i].user,
                 ids[i].db, ids[i].mismatches);
}

Test(security, other_connect_attributes_never_get_the_connection)
{
  long long ids[2];
  for (int i = 0; i < 2; i++) {
    MYSQL *m = mysql_init(NULL);
    mysql_optionsv(m, MYSQL_OPT_CONNECT_ATTR_ADD, "tenant", i == 0 ? "a" : "b");
    cr_assert_not_null(mysql_real_connect(m, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER"),
                                          pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"),
                                          pst_port(), NULL, 0));
    ids[i] = pst_scalar(m, "SELECT CONNECTION_ID()");
    mysql_close(m);
  }
  cr_assert_neq(ids[0], ids[1]);
}
