/* TLS: pooled TLS connections stay encrypted, and after a move into another handle the TLS
 * layer's pointer back to its MYSQL is repaired: an error on the TLS channel is reported on
 * the handle that uses it, exactly as without the pool. */
#include <errmsg.h>

#include "helpers.h"

TestSuite(tls, .timeout = 60);

static MYSQL *
connect_tls_on(MYSQL *m)
{
  pst_require_tls(m);
  return pst_connect_app_on(m);
}

static MYSQL *
connect_tls(void)
{
  return connect_tls_on(mysql_init(NULL));
}

static char *
cipher(MYSQL *m)
{
  cr_assert_eq(mysql_query(m, "SHOW SESSION STATUS LIKE 'Ssl_cipher'"), 0);
  MYSQL_RES *r = mysql_store_result(m);
  MYSQL_ROW row = mysql_fetch_row(r);
  char *c = g_strdup(row ? row[1] : "");
  mysql_free_result(r);
  return c;
}

Test(tls, tls_connections_are_pooled_and_stay_encrypted)
{
  MYSQL *m = connect_tls();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  g_autofree char *c1 = cipher(m);
  cr_assert_gt(strlen(c1), 0, "not encrypted");
  mysql_close(m);
  for (int i = 0; i < 20; i++) {
    m = connect_tls();
    cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id);
    g_autofree char *c = cipher(m);
    cr_assert_str_eq(c, c1);
    mysql_close(m);
  }
}

/* What the application sees when its TLS session is killed mid-use. */
static void
killed_while_lent(MYSQL *m, unsigned int *err, char *msg, gsize len)
{
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  pst_exec(pst_admin(), "KILL %lld", id);
  pst_wait_thread_gone((unsigned long)id);
  cr_assert_neq(mysql_query(m, "SELECT 1"), 0, "a killed session answered");
  *err = mysql_errno(m);
  g_strlcpy(msg, mysql_error(m), len);
}

Test(tls, an_error_on_a_moved_tls_connection_reaches_its_new_handle)
{
  pst_admin();
  /* Reference: a connection this handle opened itself. */
  unsigned int direct_err = 0, moved_err = 0;
  char direct_msg[512], moved_msg[512];
  MYSQL *direct = connect_tls();
  killed_while_lent(direct, &direct_err, direct_msg, sizeof direct_msg);
  mysql_close(direct);

  /* A pooled connection opened by a caller-owned handle, now lent to another struct. The
   * opener's memory outlives its close, so a TLS layer still pointing at it would write
   * the error there (into freed memory, with a heap handle). */
  static MYSQL opener;
  mysql_init(&opener);
  connect_tls_on(&opener);
  long long id = pst_scalar(&opener, "SELECT CONNECTION_ID()");
  mysql_close(&opener);
  cr_assert_eq(mysql_errno(&opener), 0);
  void *spacer = g_malloc(4096);
  MYSQL *borrower = connect_tls();
  cr_assert_eq(pst_scalar(borrower, "SELECT CONNECTION_ID()"), id);
  killed_while_lent(borrower, &moved_err, moved_msg, sizeof moved_msg);
  cr_assert_eq(moved_err, direct_err, "moved: %u %s / direct: %u %s", moved_err, moved_msg,
               direct_err, direct_msg);
  cr_assert_str_eq(moved_msg, direct_msg);
  cr_assert_eq(mysql_errno(&opener), 0, "the TLS layer reported to the old handle: %s",
               mysql_error(&opener));
  mysql_close(borrower);
  g_free(spacer);
  MYSQL *next = connect_tls();
  cr_assert_eq(pst_scalar(next, "SELECT 1"), 1);
  mysql_close(next);
}
