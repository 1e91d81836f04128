/* Answering ahead (watch.h): after a borrower that began with session setup statements
 * (SET NAMES, SET autocommit, the isolation level: what MySQLdb and Django send at every
 * connect), the reset runs the same statements for the next borrower, whose identical
 * statements are then not sent again. Proven with the server's Com_set_option counter,
 * a server frozen behind a proxy that the setup does not need, and every other first
 * command seeing the reset session plus only what it sent. Pool of one (meson's
 * environment): every borrow gets the same session. */
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

TestSuite(ahead, .timeout = 60);

/* One borrow: mysql_autocommit(flag) first, then the session's autocommit and id. */
static long long
borrow_autocommit(my_bool flag, long long *id)
{
  MYSQL *m = pst_connect_app();
  cr_assert_eq(mysql_autocommit(m, flag), 0, "mysql_autocommit: %s", mysql_error(m));
  cr_assert_eq(mysql_affected_rows(m), 0);
  cr_assert_eq(mysql_warning_count(m), 0);
  cr_assert_eq(mysql_field_count(m), 0);
  cr_assert_eq(!!(m->server_status & SERVER_STATUS_AUTOCOMMIT), !!flag,
               "the reply's status does not show autocommit=%d", flag);
  long long ac = pst_scalar(m, "SELECT @@autocommit");
  if (id)
    *id = pst_scalar(m, "SELECT CONNECTION_ID()");
  mysql_close(m);
  return ac;
}

/* A borrow whose SET autocommit=0 is answered ahead; returns with it still lent. The
 * prelude's reply is read by then, so the server has run everything sent before. */
static MYSQL *
borrow_synced(void)
{
  MYSQL *m = pst_connect_app();
  cr_assert_eq(mysql_autocommit(m, 0), 0, "%s", mysql_error(m));
  return m;
}

Test(ahead, a_repeated_first_set_autocommit_is_answered_by_the_statement_run_ahead)
{
  pst_admin();
  long long id0 = 0, id = 0;
  cr_assert_eq(borrow_autocommit(0, &id0), 0); /* learns the prelude */
  MYSQL *m = borrow_synced();
  long long before = pst_status("Com_set_option");
  mysql_close(m);
  for (int i = 0; i < 20; i++) {
    cr_assert_eq(borrow_autocommit(0, &id), 0);
    cr_assert_eq(id, id0, "not the pool's one session");
  }
  m = borrow_synced();
  long long sets = pst_status("Com_set_option") - before;
  mysql_close(m);
  /* 21 returns, each SET ROLE (counted as Com_set_option) and the SET autocommit run
   * ahead; the 21 borrowers' own SET autocommit were never sent (else 63). */
  cr_assert_eq(sets, 2 * 21, "SET statements for 21 returns: %lld", sets);
}

Test(ahead, any_other_first_command_sees_the_reset_session)
{
  pst_admin();
  borrow_autocommit(0, NULL);
  borrow_autocommit(0, NULL); /* the next reset runs SET autocommit=0 ahead */
  MYSQL *m = pst_connect_app();
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 1, "the prelude was not undone");
  cr_assert_eq(pst_scalar(m, "SELECT @@in_transaction"), 0);
  mysql_close(m);

  /* The other value first: the prelude is undone, then the borrower's own statement. */
  borrow_autocommit(0, NULL);
  cr_assert_eq(borrow_autocommit(1, NULL), 1);
  cr_assert_eq(borrow_autocommit(0, NULL), 0);
  cr_assert_eq(borrow_autocommit(0, NULL), 0);
}

Test(ahead, a_borrower_that_sends_nothing_leaves_nothing_behind)
{
  pst_admin();
  borrow_autocommit(0, NULL);
  borrow_autocommit(0, NULL);
  mysql_close(pst_connect_app()); /* its prelude reply is read at the return */
  MYSQL *m = pst_connect_app();
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 1);
  mysql_close(m);
  /* A prepared statement first (not a COM_QUERY): the same. */
  borrow_autocommit(0, NULL);
  borrow_autocommit(0, NULL);
  m = pst_connect_app();
  MYSQL_STMT *st = mysql_stmt_init(m);
  const char *q = "SELECT @@autocommit";
  cr_assert_eq(mysql_stmt_prepare(st, q, strlen(q)), 0, "%s", mysql_stmt_error(st));
  cr_assert_eq(mysql_stmt_execute(st), 0, "%s", mysql_stmt_error(st));
  long long v = -1;
  MYSQL_BIND b = {.buffer_type = MYSQL_TYPE_LONGLONG, .buffer = &v};
  cr_assert_eq(mysql_stmt_bind_result(st, &b), 0);
  cr_assert_eq(mysql_stmt_fetch(st), 0);
  cr_assert_eq(v, 1, "a prepared statement first saw autocommit %lld", v);
  mysql_stmt_close(st);
  mysql_close(m);
}

Test(ahead, a_ping_first_and_a_transaction_after_the_answered_statement)
{
  pst_admin();
  pst_exec(pst_admin(), "CREATE TABLE IF NOT EXISTS %s.ahead_t (v INT) ENGINE=InnoDB",
           pst_env("PS_TEST_DB"));
  borrow_autocommit(0, NULL);
  borrow_autocommit(0, NULL);
  MYSQL *m = pst_connect_app();
  cr_assert_eq(mysql_ping(m), 0, "%s", mysql_error(m)); /* a command read inside db_command */
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 1);
  mysql_close(m);

  /* Answered ahead, the borrower's transaction behaves as with its own SET: rolled back
   * when it returns without COMMIT. */
  borrow_autocommit(0, NULL);
  m = pst_connect_app();
  cr_assert_eq(mysql_autocommit(m, 0), 0);
  pst_exec(m, "INSERT INTO ahead_t VALUES (42)");
  cr_assert_eq(pst_scalar(m, "SELECT @@in_transaction"), 1);
  mysql_close(m);
  m = pst_connect_app();
  cr_assert_eq(pst_scalar(m, "SELECT COUNT(*) FROM ahead_t WHERE v = 42"), 0,
               "a transaction begun after an answered SET outlived its borrower");
  mysql_close(m);
}

/* ---- session setup sequences (what Django and MySQLdb send at every connect) ---- */

/* Django's connect through MySQLdb: SET NAMES, SET autocommit=0, SET autocommit=1, the
 * isolation level. Each call must succeed; returns FALSE at the first that fails. */
static gboolean
setup_session(MYSQL *m)
{
  return mysql_set_character_set(m, "latin1") == 0 && mysql_autocommit(m, 0) == 0 &&
         mysql_autocommit(m, 1) == 0 &&
         mysql_query(m, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED") == 0;
}

static void
assert_setup_applied(MYSQL *m)
{
  cr_assert_str_eq(mysql_character_set_name(m), "latin1");
  g_autofree char *cs = pst_scalar_str(m, "SELECT @@character_set_client");
  cr_assert_str_eq(cs, "latin1");
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 1);
  g_autofree char *iso = pst_scalar_str(m, "SELECT @@tx_isolation");
  cr_assert_str_eq(iso, "READ-COMMITTED");
}

static MYSQL *
connect_via(PstProxy *p)
{
  return pst_connect_via(p, 5, 2);
}

/* The proof that the setup costs no round trip: with the server frozen behind a proxy,
 * the next borrower's whole setup still succeeds (its replies were on the wire before the
 * freeze), while its first real query does not get through. */
Test(ahead, a_whole_session_setup_is_answered_without_reaching_the_server)
{
  PstProxy *p = pst_proxy_start();
  pst_admin(); /* connected now: its own statements are not among those counted below */
  long long sets[2];
  for (int i = 0; i < 2; i++) { /* the first borrow teaches, the second is answered */
    MYSQL *m = connect_via(p);
    cr_assert(setup_session(m), "setup: %s", mysql_error(m));
    assert_setup_applied(m);
    sets[i] = pst_status("Com_set_option");
    mysql_close(m);
  }
  /* The reset's and the setup's replies arrive. The second return sent what the first did,
   * whose statements the server had all run by the second borrower's queries. */
  pst_wait_answered("Com_set_option", sets[1], sets[1] - sets[0], "the return's reset and setup");
  pst_proxy_freeze(p);
  MYSQL *m = connect_via(p);
  cr_assert(setup_session(m), "the setup needed the frozen server: %s", mysql_error(m));
  cr_assert_str_eq(mysql_character_set_name(m), "latin1");
  cr_assert(m->server_status & SERVER_STATUS_AUTOCOMMIT);
  cr_assert_neq(mysql_query(m, "SELECT 1"), 0, "the server was not frozen");
  pst_proxy_thaw(p);
  mysql_close(m); /* failed: really closed */
  m = connect_via(p);
  cr_assert(setup_session(m), "%s", mysql_error(m));
  assert_setup_applied(m);
  mysql_close(m);
  pst_proxy_stop(p);
}

/* A borrower that begins with part of the setup, then something else, gets the reset
 * session plus what it sent itself: the rest of the setup run ahead is undone. */
Test(ahead, a_borrower_that_stops_half_way_gets_only_its_own_setup)
{
  pst_admin();
  MYSQL *m = pst_connect_app();
  g_autofree char *fresh_cs = pst_scalar_str(m, "SELECT @@character_set_client");
  g_autofree char *fresh_iso = pst_scalar_str(m, "SELECT @@tx_isolation");
  mysql_close(m);
  cr_assert_str_neq(fresh_cs, "latin1");
  cr_assert_str_neq(fresh_iso, "READ-COMMITTED");
  for (int i = 0; i < 2; i++) {
    m = pst_connect_app();
    cr_assert(setup_session(m), "%s", mysql_error(m));
    mysql_close(m);
  }
  m = pst_connect_app();
  cr_assert_eq(mysql_set_character_set(m, "latin1"), 0, "%s", mysql_error(m));
  g_autofree char *cs = pst_scalar_str(m, "SELECT @@character_set_client");
  g_autofree char *iso = pst_scalar_str(m, "SELECT @@tx_isolation");
  cr_assert_str_eq(cs, "latin1", "its own SET NAMES was lost");
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 1);
  cr_assert_str_eq(iso, fresh_iso, "the isolation level run ahead leaked to it");
  mysql_close(m);

  /* Nothing of the setup: exactly the reset session. */
  for (int i = 0; i < 2; i++) {
    m = pst_connect_app();
    cr_assert(setup_session(m), "%s", mysql_error(m));
    mysql_close(m);
  }
  m = pst_connect_app();
  g_autofree char *cs2 = pst_scalar_str(m, "SELECT @@character_set_client");
  g_autofree char *iso2 = pst_scalar_str(m, "SELECT @@tx_isolation");
  cr_assert_str_eq(cs2, fresh_cs);
  cr_assert_str_eq(iso2, fresh_iso);
  cr_assert_eq(pst_scalar(m, "SELECT @@autocommit"), 1);
  cr_assert_str_eq(mysql_character_set_name(m), fresh_cs);
  mysql_close(m);
}

/* A setup statement the server refuses is answered with the server's own error, as when
 * sent; the session goes on. */
Test(ahead, a_refused_setup_statement_gets_the_server_error)
{
  const char *bad = "SET time_zone = 'Nowhere/Atlantis'";
  for (int i = 0; i < 3; i++) {
    MYSQL *m = pst_connect_app();
    cr_assert_neq(mysql_query(m, bad), 0);
    cr_assert_eq(mysql_errno(m), 1298, "borrow %d: %u %s", i, mysql_errno(m), mysql_error(m));
    cr_assert_eq(pst_scalar(m, "SELECT 41 + 1"), 42);
    mysql_close(m);
  }
}

/* Over TLS the statements run ahead are sent by the library (not in one raw write) and
 * their replies read through TLS: the setup is still answered and applied. */
static MYSQL *
connect_tls(void)
{
  MYSQL *m = mysql_init(NULL);
  pst_require_tls(m);
  return pst_connect_app_on(m);
}

Test(ahead, a_session_setup_over_tls_is_answered_and_applied)
{
  pst_admin();
  long long before = 0;
  for (int i = 0; i < 4; i++) {
    MYSQL *m = connect_tls();
    cr_assert_not_null(mysql_get_ssl_cipher(m));
    cr_assert(setup_session(m), "borrow %d: %s", i, mysql_error(m));
    if (i == 2)
      before = pst_status("Com_set_option");
    assert_setup_applied(m);
    mysql_close(m);
  }
  MYSQL *m = connect_tls();
  cr_assert(setup_session(m), "%s", mysql_error(m)); /* reads the replies run ahead */
  long long sets = pst_status("Com_set_option") - before;
  /* Borrows 3 and 4 returned: each return SET ROLE plus the 4 setup statements run ahead
   * (the borrowers' own were answered: sent, they would add 4 more each, or an undo). */
  cr_assert_eq(sets, 2 * 5, "SET statements for 2 returns: %lld", sets);
  assert_setup_applied(m);
  mysql_close(m);
}
