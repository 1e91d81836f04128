/* The transaction grain (POOLSHIM_GRAIN=transaction, issue 13), proved with the server's own
 * facts: CONNECTION_ID(), Threads_connected of the application user, Connections. Runs with
 * the test library preloaded (tests/meson.build); each test sets its variables before its
 * first connect (each test is its own process). POOLSHIM_TEST_FORCE_TAKE=100 makes every
 * command that leaves a handle takeable give its connection back at once. */
#include <mysqld_error.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <sys/socket.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <glib/gstdio.h>

#include "helpers.h"

TestSuite(grain, .timeout = 120);

static void
grain_env(const char *pool_size, const char *force_take, const char *timeout)
{
  g_setenv("POOLSHIM_GRAIN", "transaction", TRUE);
  g_setenv("POOLSHIM_POOL_SIZE", pool_size, TRUE);
  g_setenv("POOLSHIM_TEST_FORCE_TAKE", force_take, TRUE);
  g_setenv("POOLSHIM_TIMEOUT", timeout, TRUE);
}

static long long
conn_id(MYSQL *m)
{
  return pst_scalar(m, "SELECT CONNECTION_ID()");
}

/* A new table `name` (id AUTO_INCREMENT, v), with `rows` ("(1), (2)") in it unless NULL,
 * made on a handle of its own that is then closed (DDL pins a session until its close). */
static void
fresh_table(const char *name, const char *rows)
{
  MYSQL *setup = pst_connect_app();
  pst_exec(setup, "DROP TABLE IF EXISTS %s", name);
  pst_exec(setup, "CREATE TABLE %s (id INT AUTO_INCREMENT PRIMARY KEY, v INT)", name);
  if (rows)
    pst_exec(setup, "INSERT INTO %s (v) VALUES %s", name, rows);
  mysql_close(setup);
}

/* ---- many handles, few connections ---- */

#define THREADS 16
static gint failures;
static gint answered; /* threads whose handle has answered once */

static void *
worker(void *arg)
{
  (void)arg;
  unsigned int err = 0;
  char msg[512] = "";
  MYSQL *m = pst_try_connect(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                             pst_env("PS_TEST_DB"), &err, msg, sizeof msg);
  if (!m) {
    g_atomic_int_inc(&failures);
    return NULL;
  }
  /* Every handle stays open until all sixteen have answered (at most 30 s): under the
   * connect grain the fifth connect waits for a close that never comes. */
  gint64 until = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
  for (int i = 0; i < 20 || (g_atomic_int_get(&answered) < THREADS &&
                             g_get_monotonic_time() < until); i++) {
    if (i == 1)
      g_atomic_int_inc(&answered);
    if (mysql_query(m, "SELECT CONNECTION_ID()") != 0) {
      g_atomic_int_inc(&failures);
      continue;
    }
    MYSQL_RES *r = mysql_store_result(m);
    if (!r || !mysql_fetch_row(r))
      g_atomic_int_inc(&failures);
    if (r)
      mysql_free_result(r);
    g_usleep(1000);
  }
  mysql_close(m);
  return NULL;
}

Test(grain, sixteen_handles_held_by_sixteen_threads_all_progress_on_a_pool_of_four)
{
  grain_env("4", "0", "10s");
  long long opened_before = pst_status("Connections");
  pthread_t tid[THREADS];
  for (int i = 0; i < THREADS; i++)
    pthread_create(&tid[i], NULL, worker, NULL);
  long long peak = 0;
  for (int i = 0; i < 200; i++) {
    peak = MAX(peak, pst_user_threads(pst_env("PS_TEST_USER")));
    g_usleep(5000);
  }
  for (int i = 0; i < THREADS; i++)
    pthread_join(tid[i], NULL);
  long long opened = pst_status("Connections") - opened_before;
  cr_assert_eq(g_atomic_int_get(&failures), 0, "%d connects or statements failed",
               g_atomic_int_get(&failures));
  cr_assert_eq(g_atomic_int_get(&answered), THREADS, "all handles were open at once");
  cr_assert_leq(peak, 4, "%lld server connections of the application user at once", peak);
  /* The admin connection's own reads are among them: at most one. */
  cr_assert_leq(opened, 5, "%lld connections opened for %d handles", opened, THREADS);
}

/* ---- a take and its restore ---- */

Test(grain, a_taken_handles_next_command_runs_on_another_connection_with_its_session)
{
  grain_env("2", "100", "10s");
  MYSQL *b = pst_connect_app();
  pst_exec(b, "START TRANSACTION"); /* pinned: one of the two connections */
  long long held = conn_id(b);
  MYSQL *a = pst_connect_app();
  pst_exec(a, "SET time_zone = '+03:00'");
  pst_exec(a, "SET NAMES latin1");
  pst_exec(a, "SET @grain_v = 7");
  cr_assert_eq(mysql_select_db(a, pst_env("PS_TEST_DB2")), 0, "%s", mysql_error(a));
  long long first = conn_id(a); /* then taken at once (POOLSHIM_TEST_FORCE_TAKE=100) */
  /* A third handle holds a's connection in a transaction; b's is given back. */
  MYSQL *d = pst_connect_app();
  pst_exec(d, "START TRANSACTION");
  cr_assert_eq(conn_id(d), first, "the waiting connect got the connection a gave back");
  pst_exec(b, "COMMIT");
  long long second = conn_id(a);
  cr_assert_neq(second, first, "the handle's command ran on the connection it had before");
  cr_assert_eq(second, held, "the handle's command runs on the one free connection");
  g_autofree char *db = pst_scalar_str(a, "SELECT DATABASE()");
  g_autofree char *tz = pst_scalar_str(a, "SELECT @@session.time_zone");
  g_autofree char *cs = pst_scalar_str(a, "SELECT @@character_set_client");
  g_autofree char *v = pst_scalar_str(a, "SELECT @grain_v");
  cr_assert_str_eq(db, pst_env("PS_TEST_DB2"));
  cr_assert_str_eq(tz, "+03:00");
  cr_assert_str_eq(cs, "latin1");
  cr_assert_str_eq(v, "7");
  cr_assert_str_eq(mysql_character_set_name(a), "latin1");
  cr_assert_eq((long long)mysql_thread_id(a), conn_id(a), "mysql_thread_id() names the "
               "connection the handle holds now");
  pst_exec(d, "COMMIT");
  mysql_close(d);
  mysql_close(b);
  mysql_close(a);
}

Test(grain, a_take_sends_no_query_and_the_next_command_restores_the_session_in_one_write)
{
  grain_env("2", "100", "10s");
  MYSQL *a = pst_connect_app();
  pst_exec(a, "SET time_zone = '+03:00'"); /* taken after every command from here on */
  /* What reading the counters costs (the admin's own statements), measured once warm. */
  pst_status("Com_select");
  long long s0 = pst_status("Com_select");
  long long s1 = pst_status("Com_select");
  long long dbs = pst_status("Com_change_db");
  for (int i = 0; i < 10; i++)
    pst_exec(a, "DO %d", i);
  long long s2 = pst_status("Com_select");
  /* Each DO re-borrowed (its restore selects the database: COM_INIT_DB) after a take. */
  cr_assert_geq(pst_status("Com_change_db") - dbs, 10, "the handle was not taken");
  cr_assert_eq(s2 - s1, s1 - s0, "takes and restores ran %lld SELECTs",
               (s2 - s1) - (s1 - s0));
  g_autofree char *tz = pst_scalar_str(a, "SELECT @@session.time_zone");
  cr_assert_str_eq(tz, "+03:00");
  mysql_close(a);
}

Test(grain, a_take_after_the_handle_read_its_own_last_insert_id_reads_nothing_and_keeps_it)
{
  grain_env("1", "0", "5s");
  fresh_table("grain_l", NULL);
  MYSQL *a = pst_connect_app();
  pst_exec(a, "INSERT INTO grain_l (v) VALUES (1), (2)"); /* LAST_INSERT_ID() is 1 */
  /* An id given, not generated: the OK packet says 10, LAST_INSERT_ID() stays 1. */
  pst_exec(a, "INSERT INTO grain_l (id, v) VALUES (10, 3)");
  cr_assert_eq(mysql_insert_id(a), 10);
  long long only = conn_id(a);
  cr_assert_eq(pst_scalar(a, "SELECT LAST_INSERT_ID()"), 1); /* what the take needs */
  pst_status("Com_select");
  long long s0 = pst_status("Com_select");
  long long s1 = pst_status("Com_select");
  MYSQL *b = pst_connect_app(); /* the pool's one connection, taken from a */
  long long s2 = pst_status("Com_select");
  cr_assert_eq(s2 - s1, s1 - s0, "the take ran %lld SELECTs", (s2 - s1) - (s1 - s0));
  cr_assert_eq(conn_id(b), only, "b did not get a's connection");
  pst_exec(b, "INSERT INTO grain_l (v) VALUES (4)"); /* b's is 11 */
  cr_assert_eq(pst_scalar(a, "SELECT LAST_INSERT_ID()"), 1, "a's LAST_INSERT_ID() changed");
  cr_assert_eq(pst_scalar(b, "SELECT LAST_INSERT_ID()"), 11);
  mysql_close(b);
  mysql_close(a);
}

Test(grain, after_insert_returning_the_handle_is_takeable_and_keeps_its_last_insert_id)
{
  grain_env("2", "100", "5s");
  fresh_table("grain_r", "(1), (2)");
  MYSQL *a = pst_connect_app();
  /* What Django sends for Model.objects.create() on MariaDB (a quoted table name too). */
  long long id = pst_scalar(a, "INSERT INTO `grain_r` (`v`) VALUES (7) RETURNING `grain_r`.`id`");
  cr_assert_eq(id, 3);
  /* The pool's two connections: b's in a transaction, and c's, which only a take of a's
   * gives it (POOLSHIM_TIMEOUT=5s: a pinned handle would make c's connect fail). */
  MYSQL *b = pst_connect_app();
  pst_exec(b, "START TRANSACTION");
  unsigned int err = 0;
  char msg[512] = "";
  MYSQL *c = pst_try_connect(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                             pst_env("PS_TEST_DB"), &err, msg, sizeof msg);
  cr_assert_not_null(c, "the handle after INSERT ... RETURNING was pinned: %u %s", err, msg);
  pst_exec(c, "START TRANSACTION");
  pst_exec(b, "COMMIT");
  cr_assert_eq(pst_scalar(a, "SELECT LAST_INSERT_ID()"), 3, "LAST_INSERT_ID() after the take");
  pst_exec(c, "COMMIT");
  mysql_close(c);
  mysql_close(b);
  mysql_close(a);
}

Test(grain, a_reborrow_gets_an_idle_handles_connection_without_a_reset_and_keeps_its_own_last_insert_id)
{
  grain_env("1", "0", "5s");
  fresh_table("grain_h", NULL);
  MYSQL *a = pst_connect_app();
  pst_exec(a, "INSERT INTO grain_h (v) VALUES (1)"); /* a's LAST_INSERT_ID() is 1 */
  long long only = conn_id(a);
  MYSQL *b = pst_connect_app(); /* the pool's one connection, taken from a */
  pst_exec(b, "INSERT INTO grain_h (v) VALUES (2), (3)"); /* b's is 2 */
  cr_assert_eq(conn_id(b), only);
  g_usleep(5000); /* b has been takeable a while */
  long long dbs = pst_status("Com_change_db"), dos = pst_status("Com_do");
  /* a's command: the pool has nothing; b's connection comes to a as it is, with a's
   * LAST_INSERT_ID() set: no reset, no COM_INIT_DB (the same database). */
  cr_assert_eq(pst_scalar(a, "SELECT LAST_INSERT_ID()"), 1);
  /* (The restore after a reset selects the database.) */
  cr_assert_eq(pst_status("Com_change_db") - dbs, 0, "a's session was restored from a reset");
  /* b's LAST_INSERT_ID() (unknown after its INSERT) was read and a's set by one SELECT:
   * no DO LAST_INSERT_ID() ahead of a's command. */
  cr_assert_eq(pst_status("Com_do") - dos, 0, "a's LAST_INSERT_ID() was set apart from the read");
  cr_assert_eq(conn_id(a), only);
  cr_assert_eq(pst_scalar(b, "SELECT LAST_INSERT_ID()"), 2);
  mysql_close(b);
  mysql_close(a);
}

/* A re-borrow's LAST_INSERT_ID() restore (DO LAST_INSERT_ID(n), Com_do) is sent ahead of
 * the command without waiting for its reply; whatever the next command is, its reply is
 * read in order: a query (mysql_real_query, mysql_send_query + mysql_read_query_result),
 * commands that read their reply themselves (mysql_select_db, mysql_ping), a prepared
 * statement, and a query sent and never read before mysql_close. */
Test(grain, a_reborrowed_handles_last_insert_id_goes_ahead_of_whatever_command_comes_next)
{
  grain_env("2", "100", "10s"); /* taken after every command */
  fresh_table("grain_lid", "(0), (0), (0)");
  MYSQL *a = pst_connect_app();
  pst_exec(a, "INSERT INTO grain_lid (v) VALUES (1)");
  long long want = (long long)mysql_insert_id(a);
  cr_assert_eq(want, 4);
  long long dos = pst_status("Com_do");
  cr_assert_eq(pst_scalar(a, "SELECT LAST_INSERT_ID()"), want);
  cr_assert_eq(mysql_select_db(a, pst_env("PS_TEST_DB")), 0, "%s", mysql_error(a));
  cr_assert_eq(pst_scalar(a, "SELECT LAST_INSERT_ID()"), want);
  cr_assert_eq(mysql_ping(a), 0, "%s", mysql_error(a));
  static const char q[] = "SELECT LAST_INSERT_ID()";
  cr_assert_eq(mysql_send_query(a, q, sizeof q - 1), 0, "%s", mysql_error(a));
  cr_assert_eq(mysql_read_query_result(a), 0, "%s", mysql_error(a));
  MYSQL_RES *r = mysql_store_result(a);
  MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
  cr_assert(row && row[0] && atoll(row[0]) == want, "send + read: %s", row ? row[0] : "no row");
  mysql_free_result(r);
  cr_assert_eq(mysql_insert_id(a), (my_ulonglong)want, "mysql_insert_id() changed");
  /* A prepared statement after a take. */
  MYSQL_STMT *st = mysql_stmt_init(a);
  cr_assert_eq(mysql_stmt_prepare(st, q, sizeof q - 1), 0, "%s", mysql_stmt_error(st));
  cr_assert_eq(mysql_stmt_execute(st), 0, "%s", mysql_stmt_error(st));
  unsigned long long got = 0;
  MYSQL_BIND b = {.buffer_type = MYSQL_TYPE_LONGLONG, .buffer = &got, .is_unsigned = 1};
  cr_assert_eq(mysql_stmt_bind_result(st, &b), 0);
  cr_assert_eq(mysql_stmt_fetch(st), 0);
  cr_assert_eq(got, (unsigned long long)want);
  mysql_stmt_close(st);
  /* Every one of those commands re-borrowed: a DO each (at least: other tests may run
   * DO on the same server). */
  cr_assert_geq(pst_status("Com_do") - dos, 5, "only %lld restores", pst_status("Com_do") - dos);
  /* Sent right after a re-borrow (the prefix ahead of it), never read, closed: the
   * connection is closed, not handed on with replies unread. */
  conn_id(a); /* a query: taken after it (the statement before pinned until closed) */
  cr_assert_eq(mysql_send_query(a, q, sizeof q - 1), 0, "%s", mysql_error(a));
  unsigned long sent_on = mysql_thread_id(a);
  mysql_close(a);
  pst_wait_thread_gone(sent_on);
  MYSQL *c = pst_connect_app();
  cr_assert_eq(pst_scalar(c, "SELECT 7"), 7);
  cr_assert_eq(pst_scalar(c, "SELECT LAST_INSERT_ID()"), 0, "another handle's id leaked");
  mysql_close(c);
}

/* A re-borrow's restore is read with the command's reply in one wait (handle.c raises the
 * socket's low-water mark above the restore's 11-byte OK while it reads it): the mark is
 * back at 1 afterwards, so the next command's reply, an OK as short as DO 1's, is read at
 * once, not after the read timeout. Two handles on one connection, each re-borrowing it
 * from the other with its own LAST_INSERT_ID() (1 and 0) to restore. */
Test(grain, after_a_reborrows_restore_the_next_short_reply_is_read_at_once)
{
  grain_env("1", "0", "10s");
  fresh_table("grain_low", NULL);
  MYSQL *a = pst_connect_app();
  pst_exec(a, "INSERT INTO grain_low (v) VALUES (1)"); /* a's LAST_INSERT_ID() is 1 */
  MYSQL *b = pst_connect_app(); /* takes a's connection: a re-borrows at its next command */
  cr_assert_eq(pst_scalar(b, "SELECT 1"), 1); /* b's first command: b takeable from here */
  long long dos = pst_status("Com_do");
  MYSQL *each[] = {a, b};
  for (int round = 0; round < 3; round++) {
    for (int k = 0; k < 2; k++) {
      MYSQL *m = each[k];
      /* The re-borrow: DO LAST_INSERT_ID(n) ahead of this DO 1, both replies read. */
      cr_assert_eq(mysql_query(m, "DO 1"), 0, "%s: %s", k ? "b" : "a", mysql_error(m));
      int fd = (int)mysql_get_socket(m), mark = 0;
      socklen_t len = sizeof mark;
      cr_assert_eq(getsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &mark, &len), 0);
      cr_assert_eq(mark, 1, "the low-water mark stayed at %d", mark);
      /* The same connection, nobody waiting: the 11-byte OK alone. */
      cr_assert_eq(mysql_query(m, "DO 1"), 0, "%s: %s", k ? "b" : "a", mysql_error(m));
      cr_assert_eq(pst_scalar(m, "SELECT LAST_INSERT_ID()"), k ? 0 : 1);
    }
  }
  /* Twelve DO 1 and a restore at each of the six re-borrows (other tests may add DOs). */
  cr_assert_geq(pst_status("Com_do") - dos, 18, "%lld DOs", pst_status("Com_do") - dos);
  mysql_close(b);
  mysql_close(a);
}

/* One handle's statement in a thread of its own. */
typedef struct {
  MYSQL *m;
  const char *sql;
  unsigned int err;
} Stmt;

static void *
run_stmt(void *arg)
{
  Stmt *st = arg;
  st->err = mysql_query(st->m, st->sql) ? mysql_errno(st->m) : 0;
  if (!st->err && mysql_field_count(st->m))
    mysql_free_result(mysql_store_result(st->m));
  return NULL;
}

/* Waits until the server runs `sql` (at most 10 s). */
static void
wait_running(const char *sql)
{
  for (int i = 0; pst_scalar(pst_admin(), "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                                          "WHERE INFO = '%s'", sql) == 0; i++) {
    cr_assert_lt(i, 2000, "%s did not start within 10 s", sql);
    g_usleep(5 * 1000);
  }
}

/* The 100 ms hand-over bound sends a take through the pool's queue (a reset, then its
 * oldest waiter) only for a waiter that arrived before the re-borrow: one that arrived
 * first is the waiter the queue would serve first, and gets the idle handle's connection
 * as it is. b waits first, c after it, both well over 100 ms while a's SLEEP holds the one
 * connection: b's INSERT runs first, then c's, and no session is reset (before, b's turn
 * found c waiting for over 100 ms: a reset, then c's INSERT first). */
Test(grain, a_reborrow_that_waited_first_gets_the_connection_as_it_is_past_the_hand_over_bound)
{
  grain_env("1", "0", "20s");
  fresh_table("grain_order", NULL);
  MYSQL *h[3];
  for (int i = 0; i < 3; i++) {
    h[i] = pst_connect_app(); /* each takes the one connection from the one before */
    cr_assert_eq(pst_scalar(h[i], "SELECT 1"), 1); /* takeable from here */
  }
  poolshim_stats_t before;
  pst_stats(&before);
  Stmt st[3] = {{h[0], "SELECT SLEEP(0.6)", 0},
                {h[1], "INSERT INTO grain_order (v) VALUES (1)", 0},
                {h[2], "INSERT INTO grain_order (v) VALUES (2)", 0}};
  pthread_t t[3];
  pthread_create(&t[0], NULL, run_stmt, &st[0]);
  wait_running(st[0].sql); /* a holds the connection once its SLEEP runs on the server */
  pthread_create(&t[1], NULL, run_stmt, &st[1]);
  pst_wait_stats_count(G_STRUCT_OFFSET(poolshim_stats_t, waiting), 1, "b waiting");
  pthread_create(&t[2], NULL, run_stmt, &st[2]);
  pst_wait_stats_count(G_STRUCT_OFFSET(poolshim_stats_t, waiting), 2, "b and c waiting");
  for (int i = 0; i < 3; i++) {
    pthread_join(t[i], NULL);
    cr_assert_eq(st[i].err, 0, "%s: error %u", st[i].sql, st[i].err);
  }
  /* Server-side: the order of the two rows. */
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT v FROM %s.grain_order ORDER BY id LIMIT 1",
                          pst_env("PS_TEST_DB")),
               1,
               "c's INSERT ran before b's, which waited first");
  poolshim_stats_t after;
  pst_stats(&after);
  cr_assert_eq(after.resets - before.resets, 0, "%llu sessions reset",
               after.resets - before.resets);
  for (int i = 0; i < 3; i++)
    mysql_close(h[i]);
}

typedef struct {
  MYSQL *m;
  unsigned int err;
} Connect;

static void *
run_connect(void *arg)
{
  Connect *c = arg;
  char msg[512] = "";
  c->m = pst_try_connect(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                         pst_env("PS_TEST_DB"), &c->err, msg, sizeof msg);
  if (c->m && mysql_query(c->m, "INSERT INTO grain_self (v) VALUES (2)"))
    c->err = mysql_errno(c->m);
  return NULL;
}

/* A connect that waited first keeps the connection it takes from an idle handle (reset in
 * the pool for it): c's connect waits first, then a's re-borrow, while b's SLEEP holds
 * the one connection. Before, the reset connection went to the oldest waiter still queued,
 * a (which had to restore its session from the reset), and c took again: two resets. */
Test(grain, a_connect_that_waited_first_keeps_the_connection_it_takes)
{
  grain_env("1", "0", "20s");
  fresh_table("grain_self", NULL);
  MYSQL *a = pst_connect_app();
  cr_assert_eq(pst_scalar(a, "SELECT 1"), 1);
  MYSQL *b = pst_connect_app(); /* takes a's */
  cr_assert_eq(pst_scalar(b, "SELECT 1"), 1);
  poolshim_stats_t before;
  pst_stats(&before);
  Stmt sleep = {b, "SELECT SLEEP(0.6)", 0}, insert = {a, "INSERT INTO grain_self (v) VALUES (1)", 0};
  Connect c = {0};
  pthread_t tb, tc, ta;
  pthread_create(&tb, NULL, run_stmt, &sleep);
  wait_running(sleep.sql);
  pthread_create(&tc, NULL, run_connect, &c);
  pst_wait_stats_count(G_STRUCT_OFFSET(poolshim_stats_t, waiting), 1, "c's connect waiting");
  pthread_create(&ta, NULL, run_stmt, &insert);
  pst_wait_stats_count(G_STRUCT_OFFSET(poolshim_stats_t, waiting), 2, "c and a waiting");
  pthread_join(tb, NULL);
  pthread_join(tc, NULL);
  pthread_join(ta, NULL);
  cr_assert_eq(sleep.err, 0, "b's SLEEP: error %u", sleep.err);
  cr_assert_eq(c.err, 0, "c's connect or INSERT: error %u", c.err);
  cr_assert_eq(insert.err, 0, "a's INSERT: error %u", insert.err);
  cr_assert_eq(pst_scalar(pst_admin(), "SELECT COUNT(*) FROM %s.grain_self",
                          pst_env("PS_TEST_DB")),
               2);
  poolshim_stats_t after;
  pst_stats(&after);
  /* c's connect gets a reset session; a gets c's (or b's) as it is. */
  cr_assert_eq(after.resets - before.resets, 1, "%llu sessions reset",
               after.resets - before.resets);
  mysql_close(c.m);
  mysql_close(b);
  mysql_close(a);
}

static long long
session_change_dbs(MYSQL *m)
{
  /* The session's own counter: no other test's statements in it. A re-borrow restored
   * after a reset selects the database (COM_INIT_DB); a hand-over does not. */
  return pst_scalar(m, "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
                       "WHERE VARIABLE_NAME = 'COM_CHANGE_DB'");
}

/* On a pool of one connection (grain_env("1", ...)): a runs a_sets, then b connects (the
 * connection taken from a) and runs b_sets; both on the one connection, whose id this
 * returns, and b takeable a while when it returns. */
static long long
two_handles_on_one(MYSQL **a, const char *const *a_sets, MYSQL **b, const char *const *b_sets)
{
  *a = pst_connect_app();
  for (guint i = 0; a_sets[i]; i++)
    pst_exec(*a, "%s", a_sets[i]);
  long long only = conn_id(*a);
  *b = pst_connect_app();
  for (guint i = 0; b_sets[i]; i++)
    pst_exec(*b, "%s", b_sets[i]);
  cr_assert_eq(conn_id(*b), only);
  g_usleep(5000);
  return only;
}

/* Django's handles run the same setup statements, but set autocommit again at different
 * moments: the same session, in another order. A re-borrow gets such a handle's connection
 * as it is, without the restore that follows a return to the pool (its COM_INIT_DB). */
Test(grain, handles_whose_setups_ran_in_another_order_hand_over_without_a_reset)
{
  grain_env("1", "0", "5s");
  MYSQL *a, *b;
  long long only = two_handles_on_one(
      &a, (const char *const[]){"SET time_zone = '+01:00'", "SET autocommit = 1", NULL}, &b,
      (const char *const[]){"SET autocommit = 1", "SET time_zone = '+01:00'", NULL});
  long long dbs = session_change_dbs(a);
  cr_assert_eq(dbs, 0, "a's session was restored (%lld COM_INIT_DB in it)", dbs);
  g_autofree char *tz = pst_scalar_str(a, "SELECT @@session.time_zone");
  cr_assert_str_eq(tz, "+01:00");
  cr_assert_eq(conn_id(a), only);
  mysql_close(b);
  mysql_close(a);
}

/* Handles whose setups set different session variables: a re-borrow gets the other's
 * connection as it is, its own statements run and the other's variables set back to
 * their fresh values (the global ones) in the same write, without a reset. A character
 * set of its own is not such a difference (character set statements override each other):
 * a reset and the restore. */
Test(grain, handles_whose_setups_set_different_variables_hand_over_with_the_difference_set)
{
  grain_env("1", "0", "5s");
  MYSQL *a, *b;
  long long only = two_handles_on_one(
      &a, (const char *const[]){"SET time_zone = '+01:00'", "SET sql_mode = 'ANSI_QUOTES'", NULL},
      &b, (const char *const[]){"SET time_zone = '+02:00'", "SET sql_auto_is_null = 1", NULL});
  g_autofree char *a_tz = pst_scalar_str(a, "SELECT @@session.time_zone");
  cr_assert_eq(conn_id(a), only);
  cr_assert_eq(session_change_dbs(a), 0, "a's session was restored from a reset");
  cr_assert_str_eq(a_tz, "+01:00");
  g_autofree char *a_mode = pst_scalar_str(a, "SELECT @@session.sql_mode");
  cr_assert_str_eq(a_mode, "ANSI_QUOTES");
  cr_assert_eq(pst_scalar(a, "SELECT @@session.sql_auto_is_null"), 0, "b's variable leaked");
  g_usleep(5000); /* a has been takeable a while */
  g_autofree char *b_tz = pst_scalar_str(b, "SELECT @@session.time_zone");
  cr_assert_eq(conn_id(b), only);
  cr_assert_str_eq(b_tz, "+02:00");
  cr_assert_eq(pst_scalar(b, "SELECT @@session.sql_auto_is_null"), 1);
  cr_assert_eq(pst_scalar(b, "SELECT @@session.sql_mode = @@global.sql_mode"), 1,
               "a's sql_mode leaked");
  cr_assert_eq(session_change_dbs(b), 0, "b's session was restored from a reset");
  /* A character set of a's own: reset and restored. */
  cr_assert_eq(mysql_set_character_set(a, "latin1"), 0, "%s", mysql_error(a));
  pst_exec(b, "SET NAMES utf8mb4");
  for (int i = 0; i < 5; i++)
    pst_exec(b, "DO 1");
  g_usleep(5000);
  g_autofree char *cs = pst_scalar_str(a, "SELECT @@character_set_client");
  cr_assert_str_eq(cs, "latin1");
  /* A reset clears the session's counters: b's five DO are not in a's. */
  long long dos = pst_scalar(a, "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
                                "WHERE VARIABLE_NAME = 'COM_DO'");
  cr_assert_lt(dos, 5, "b's session was handed to a with another character set");
  g_autofree char *a_tz2 = pst_scalar_str(a, "SELECT @@session.time_zone");
  cr_assert_str_eq(a_tz2, "+01:00");
  mysql_close(b);
  mysql_close(a);
}

/* A query of system variables only (Django's and SQLAlchemy's first queries read
 * @@sql_mode, @@sql_auto_is_null) uses no user variable: the handle's connection is
 * handed over as it is, not read for user variables, reset and restored. */
Test(grain, a_handle_that_read_system_variables_hands_over_without_a_reset)
{
  grain_env("1", "0", "5s");
  MYSQL *a = pst_connect_app();
  long long only = conn_id(a);
  MYSQL *b = pst_connect_app(); /* the pool's one connection, taken from a */
  g_autofree char *mode = pst_scalar_str(b, "SELECT @@SQL_AUTO_IS_NULL, @@session.sql_mode");
  cr_assert_not_null(mode);
  cr_assert_eq(conn_id(b), only);
  g_usleep(5000); /* b has been takeable a while */
  long long dbs = pst_scalar(a, "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
                                "WHERE VARIABLE_NAME = 'COM_CHANGE_DB'");
  cr_assert_eq(dbs, 0, "a's session was restored (%lld COM_INIT_DB in it)", dbs);
  cr_assert_eq(conn_id(a), only);
  mysql_close(b);
  mysql_close(a);
}

/* LOAD DATA LOCAL INFILE as the first command after a re-borrow whose LAST_INSERT_ID() goes
 * ahead of it: the library accepts the server's file request only while the reply it reads
 * is the statement's own (auto_local_infile), so the prefix's reply is read before it. */
Test(grain, load_data_local_infile_right_after_a_reborrow_loads_its_rows)
{
  grain_env("2", "100", "10s"); /* taken after every command */
  g_autofree char *path = g_build_filename(g_get_tmp_dir(), "poolshim-grain-load.txt", NULL);
  cr_assert(g_file_set_contents(path, "7\n8\n9\n", -1, NULL));
  fresh_table("grain_load", NULL);
  MYSQL *a = mysql_init(NULL);
  unsigned int on = 1;
  mysql_options(a, MYSQL_OPT_LOCAL_INFILE, &on);
  pst_connect_app_on(a);
  pst_exec(a, "INSERT INTO grain_load (v) VALUES (1)"); /* LAST_INSERT_ID() 1: restored */
  g_autofree char *sql =
    g_strdup_printf("LOAD DATA LOCAL INFILE '%s' INTO TABLE grain_load (v)", path);
  cr_assert_eq(mysql_query(a, sql), 0, "%u %s", mysql_errno(a), mysql_error(a));
  cr_assert_eq(mysql_affected_rows(a), 3);
  cr_assert_eq(pst_scalar(a, "SELECT COUNT(*) FROM grain_load"), 4);
  mysql_close(a);
  g_unlink(path);
}

Test(grain, the_pools_own_restore_inside_a_command_does_not_make_the_handle_takeable)
{
  grain_env("2", "100", "5s"); /* every settled handle is taken at once */
  MYSQL *x = pst_connect_app();
  pst_exec(x, "SET autocommit=1"); /* its setup, noted; taken: the pool keeps it applied */
  MYSQL *y = pst_connect_app();    /* gets that connection, the setup kept for it */
  /* Not the kept statement: inside this command the pool restores the session (its
   * replies read through y's own table) before sending it; y is not takeable then. */
  cr_assert_eq(pst_scalar(y, "SELECT 5"), 5);
  cr_assert_eq(pst_scalar(x, "SELECT 6"), 6);
  cr_assert_eq(pst_scalar(y, "SELECT 7"), 7);
  mysql_close(y);
  mysql_close(x);
}

Test(grain, insert_id_affected_rows_info_and_warnings_are_unchanged_across_a_take)
{
  grain_env("2", "100", "10s");
  fresh_table("grain_t", NULL);
  MYSQL *b = pst_connect_app();
  pst_exec(b, "START TRANSACTION");
  MYSQL *a = pst_connect_app();
  pst_exec(a, "INSERT INTO grain_t (v) VALUES (1), (2), (3)");
  long long first = conn_id(a);
  MYSQL *d = pst_connect_app();
  pst_exec(d, "START TRANSACTION"); /* holds a's connection */
  pst_exec(b, "COMMIT");            /* b's is given back: a runs on it from now on */
  cr_assert_eq(mysql_query(a, "UPDATE grain_t SET v = v + 1 WHERE id <= 2"), 0, "%s",
               mysql_error(a));
  /* Taken at once after its reply: what the handle shows stays. */
  cr_assert_eq(mysql_affected_rows(a), 2);
  cr_assert_str_eq(mysql_info(a), "Rows matched: 2  Changed: 2  Warnings: 0");
  cr_assert_eq(mysql_query(a, "INSERT INTO grain_t (v) VALUES (9)"), 0, "%s", mysql_error(a));
  unsigned long long id = mysql_insert_id(a);
  cr_assert_eq(id, 4);
  cr_assert_eq(mysql_insert_id(a), 4);
  cr_assert_eq(mysql_affected_rows(a), 1);
  /* LAST_INSERT_ID() is restored on the next connection. */
  cr_assert_eq(pst_scalar(a, "SELECT LAST_INSERT_ID()"), 4);
  cr_assert_neq(conn_id(a), first, "a's commands ran on another connection");
  pst_exec(d, "COMMIT");
  mysql_close(d);
  mysql_close(b);
  mysql_close(a);
}

Test(grain, show_warnings_right_after_a_statement_sees_its_warnings)
{
  grain_env("1", "100", "10s");
  MYSQL *a = pst_connect_app();
  cr_assert_eq(mysql_query(a, "SELECT CAST('12abc' AS SIGNED)"), 0);
  mysql_free_result(mysql_store_result(a));
  cr_assert_eq(mysql_warning_count(a), 1);
  /* Not given back while its warnings may be asked for (else SHOW WARNINGS would run in a
   * restored session, which has none). */
  cr_assert_eq(mysql_query(a, "SHOW WARNINGS"), 0, "%s", mysql_error(a));
  MYSQL_RES *r = mysql_store_result(a);
  MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
  cr_assert_not_null(row, "SHOW WARNINGS right after the CAST lists its warning");
  cr_assert_eq(atoi(row[1]), ER_TRUNCATED_WRONG_VALUE);
  mysql_free_result(r);
  mysql_close(a);
}

/* ---- pins ---- */

typedef struct {
  char name[24];
  char setup[160];
  char check[160]; /* still holds after the other handle's connect: answers 1, or */
  int check_errno; /* fails with this error (it would succeed without the state), or -1:
                      runs (it would fail without the state) */
  char undo[120];
} Pin;

ParameterizedTestParameters(grain, each_pin_reason_keeps_the_connection)
{
  static Pin pins[] = {
    {"transaction", "START TRANSACTION", "SELECT @@in_transaction = 1", 0, "COMMIT"},
    {"temporary table", "CREATE TEMPORARY TABLE grain_tmp (a INT)",
     "SELECT COUNT(*) + 1 FROM grain_tmp", 0, "DROP TEMPORARY TABLE grain_tmp"},
    {"prepared statement", "PREPARE grain_s FROM 'SELECT 1'", "EXECUTE grain_s", 0,
     "DEALLOCATE PREPARE grain_s"},
    {"named lock", "SELECT GET_LOCK('grain_lock', 0)", "SELECT IS_USED_LOCK('grain_lock') = "
     "CONNECTION_ID()", 0, "SELECT RELEASE_LOCK('grain_lock')"},
    /* Under LOCK TABLES a table not locked cannot be read (ER_TABLE_NOT_LOCKED). */
    {"lock tables", "LOCK TABLES grain_p READ", "SELECT COUNT(*) FROM grain_q", 1100,
     "UNLOCK TABLES"},
    /* Without the open handler this is ER_UNKNOWN_TABLE (1109). */
    {"handler", "HANDLER grain_p OPEN", "HANDLER grain_p READ FIRST", -1,
     "HANDLER grain_p CLOSE"},
    {"other variable", "SET SESSION max_join_size = 1000000", "SELECT @@max_join_size = 1000000",
     0, "SET SESSION max_join_size = DEFAULT"},

  };
  return cr_make_param_array(Pin, pins, G_N_ELEMENTS(pins));
}

ParameterizedTest(Pin *pin, grain, each_pin_reason_keeps_the_connection)
{
  grain_env("2", "100", "2s");
  MYSQL *a = pst_connect_app();
  pst_exec(a, "CREATE TABLE IF NOT EXISTS grain_p (a INT)");
  pst_exec(a, "CREATE TABLE IF NOT EXISTS grain_q (a INT)");
  pst_exec(a, "%s", pin->setup);
  long long first = conn_id(a);
  /* Another handle's connect and command: it would take a's connection if it were free. */
  MYSQL *b = pst_connect_app();
  pst_exec(b, "START TRANSACTION");
  long long held = conn_id(b);
  cr_assert_neq(held, first, "%s: the other handle got the pinned connection", pin->name);
  /* A third connect finds the pool full and nothing takeable (POOLSHIM_TIMEOUT=2s). */
  unsigned int err = 0;
  char msg[512] = "";
  MYSQL *c = pst_try_connect(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                             pst_env("PS_TEST_DB"), &err, msg, sizeof msg);
  cr_assert_null(c, "%s: a third connect took the pinned handle's connection", pin->name);
  cr_assert_eq(err, 1040, "%s: %u %s", pin->name, err, msg);
  cr_assert_eq(conn_id(a), first, "%s: the pinned handle moved", pin->name);
  if (pin->check_errno == 0) {
    cr_assert_eq(pst_scalar(a, "%s", pin->check), 1, "%s: the session's state is gone",
                 pin->name);
  } else {
    int rc = mysql_query(a, pin->check);
    mysql_free_result(mysql_store_result(a));
    if (pin->check_errno < 0)
      cr_assert_eq(rc, 0, "%s: the session's state is gone: %s: %s", pin->name, pin->check,
                   mysql_error(a));
    else
      cr_assert_eq(mysql_errno(a), (unsigned int)pin->check_errno,
                   "%s: the session's state is gone: %s gave %u %s", pin->name, pin->check,
                   mysql_errno(a), mysql_error(a));
  }
  pst_exec(a, "%s", pin->undo);
  /* Unpinned now: a's command gives it back and the next one runs elsewhere (b holds the
   * other connection, the pool has two: a's own, taken and given back, comes back to it;
   * what matters is that both still answer). */
  pst_exec(b, "COMMIT");
  conn_id(a);
  mysql_close(b);
  mysql_close(a);
}

Test(grain, an_unpinned_handle_lends_its_connection_to_a_waiting_connect)
{
  grain_env("1", "0", "2s");
  MYSQL *a = pst_connect_app();
  long long first = conn_id(a); /* takeable, kept: nobody waits */
  MYSQL *b = pst_connect_app(); /* would wait: takes a's */
  cr_assert_eq(conn_id(b), first, "b runs on the one connection, taken from a");
  pst_exec(b, "START TRANSACTION"); /* pinned */
  /* a's next command waits for the pinned connection: the connect's error after the wait. */
  cr_assert_neq(mysql_query(a, "SELECT 1"), 0);
  cr_assert_eq(mysql_errno(a), ER_CON_COUNT_ERROR, "%u %s", mysql_errno(a), mysql_error(a));
  pst_exec(b, "COMMIT");
  /* b is takeable again: a's next command takes it back. */
  cr_assert_eq(conn_id(a), first);
  mysql_close(b);
  mysql_close(a);
  cr_assert_leq(pst_user_threads(pst_env("PS_TEST_USER")), 1);
}

/* ---- never retry what may have run ---- */

Test(grain, a_killed_connection_given_back_by_a_handle_is_replaced_at_its_next_command)
{
  grain_env("2", "100", "10s");
  MYSQL *a = pst_connect_app();
  pst_exec(a, "SET time_zone = '+04:00'");
  long long id = conn_id(a); /* then given back at once */
  pst_exec(pst_admin(), "KILL %lld", id);
  pst_wait_thread_gone((unsigned long)id);
  /* The handle's next command runs on a live connection, in its session. */
  g_autofree char *tz = pst_scalar_str(a, "SELECT @@session.time_zone");
  cr_assert_str_eq(tz, "+04:00");
  cr_assert_neq(conn_id(a), id);
  mysql_close(a);
}

Test(grain, a_killed_connection_still_in_its_handle_gives_the_library_error)
{
  grain_env("2", "0", "10s");
  MYSQL *a = pst_connect_app();
  long long id = conn_id(a); /* takeable, kept: nobody waits */
  pst_exec(pst_admin(), "KILL %lld", id);
  pst_wait_thread_gone((unsigned long)id);
  /* As without the pool: the statement fails with the lost connection's error. */
  cr_assert_neq(mysql_query(a, "SELECT 1"), 0);
  unsigned int e = mysql_errno(a);
  cr_assert(e == 2006 || e == 2013 || e == 4031, "error %u %s", e, mysql_error(a));
  mysql_close(a);
}

/* A connection that dies while idle in a takeable handle is checked before it is handed to
 * another handle's command (one poll): that command runs on a new connection, once, instead
 * of failing on a socket the server closed. */
Test(grain, a_killed_connection_in_a_takeable_handle_is_not_handed_to_another_handles_command)
{
  grain_env("1", "0", "10s");
  MYSQL *a = pst_connect_app();
  conn_id(a); /* takeable from here on */
  MYSQL *b = pst_connect_app(); /* the one connection, taken from a (takeable, nobody else) */
  long long first = conn_id(b);
  g_usleep(5000); /* b takeable for longer than the take delay */
  cr_assert_eq(conn_id(a), first, "a did not get the connection back from b");
  g_usleep(5000);
  pst_exec(pst_admin(), "KILL %lld", first); /* dies in a, takeable */
  pst_wait_thread_gone((unsigned long)first);
  long long before = pst_status("Connections");
  /* b's command: the pool has nothing, a's connection is the only takeable one. */
  long long now = conn_id(b);
  cr_assert_neq(now, first);
  cr_assert_geq(pst_status("Connections") - before, 1, "no new connection was opened");
  mysql_close(b);
  /* a's next command re-borrows too: its session was not lost with the connection. */
  cr_assert_eq(pst_scalar(a, "SELECT 5"), 5);
  mysql_close(a);
}

/* ---- statistics ---- */

/* The stats file's value of one sample line that starts with `prefix`, or -1 when absent. */
static long long
stats_value(const char *text, const char *prefix)
{
  g_auto(GStrv) lines = g_strsplit(text ? text : "", "\n", -1);
  for (char **l = lines; *l; l++)
    if (g_str_has_prefix(*l, prefix) && (*l)[strlen(prefix)] == ' ')
      return g_ascii_strtoll(*l + strlen(prefix) + 1, NULL, 10);
  return -1;
}

/* Waits (at most 10 s: the file is rewritten every second) until the file shows `want` for
 * `metric`; returns the file's text. */
static char *
stats_wait(const char *path, const char *metric, long long want)
{
  char *text = NULL;
  for (int i = 0; i < 100; i++) {
    g_free(text);
    text = NULL;
    g_file_get_contents(path, &text, NULL, NULL);
    if (stats_value(text, metric) == want)
      break;
    g_usleep(100 * 1000);
  }
  return text;
}

static char *stats_dir, *stats_path;

/* After the library's own exit handler (registered at its first call, so run before this
 * one), which writes the file a last time. */
static void
stats_cleanup(void)
{
  g_unlink(stats_path);
  g_rmdir(stats_dir);
}

Test(grain, the_stats_file_counts_takes_reborrows_and_pins_by_reason_per_pool)
{
  grain_env("2", "100", "10s");
  stats_dir = g_dir_make_tmp("pst-grain-XXXXXX", NULL);
  cr_assert_not_null(stats_dir);
  const char *path = stats_path = g_build_filename(stats_dir, "grain.prom", NULL);
  atexit(stats_cleanup);
  g_setenv("POOLSHIM_STATS_FILE", path, TRUE);
  g_setenv("POOLSHIM_STATS_INTERVAL", "1s", TRUE);
  MYSQL *a = pst_connect_app();
  /* Each command that leaves the session takeable gives the connection back at once: the
   * next command borrows one again. Proved by the server: the session variable survives
   * only because it was read and restored. */
  pst_exec(a, "SET time_zone = '+05:00'");       /* take 1 */
  long long first = conn_id(a);                  /* re-borrow 1, take 2 */
  pst_exec(pst_admin(), "KILL %lld", first);     /* the idle connection dies in the pool */
  pst_wait_thread_gone((unsigned long)first);
  pst_exec(a, "START TRANSACTION");              /* re-borrow 2 (another connection), pin 1 */
  long long second = conn_id(a);                 /* pin 2 */
  cr_assert_neq(second, first, "the command after a take ran on the connection it had");
  g_autofree char *tz = pst_scalar_str(a, "SELECT @@session.time_zone"); /* pin 3 */
  cr_assert_str_eq(tz, "+05:00");
  cr_assert_eq(pst_scalar(a, "SELECT @@in_transaction"), 1); /* pin 4 */
  pst_exec(a, "COMMIT");                         /* take 3 */
  /* The pool's label (user@host:port/db) as the file writes it: read off the file. */
  g_autofree char *want = g_strdup_printf("poolshim_grain_takes_total{pid=\"%d\",pool=\"%s@",
                                          (int)getpid(), pst_env("PS_TEST_USER"));
  g_autofree char *text = NULL;
  const char *at = NULL;
  for (int i = 0; i < 100 && !at; i++) {
    g_free(text);
    text = NULL;
    g_file_get_contents(path, &text, NULL, NULL);
    at = text ? strstr(text, want) : NULL;
    if (!at)
      g_usleep(100 * 1000);
  }
  cr_assert_not_null(at, "no grain counts of the application's pool in:\n%s", text);
  g_autofree char *takes_prefix = g_strndup(at, (gsize)(strchr(at, '}') + 1 - at));
  g_free(text);
  text = stats_wait(path, takes_prefix, 3);
  cr_assert_eq(stats_value(text, takes_prefix), 3, "%s", text);
  const char *labels = strchr(takes_prefix, '{'); /* {pid="...",pool="..."} */
  g_autofree char *pool = g_strndup(labels, strlen(labels) - 1);
  g_autofree char *reborrows = g_strdup_printf("poolshim_grain_reborrows_total%s}", pool);
  cr_assert_eq(stats_value(text, reborrows), 2, "%s", text);
  static const struct {
    const char *reason;
    long long n;
  } pins[] = {{"transaction", 4}, {"autocommit", 0}, {"session", 0},
              {"prepared_statement", 0}, {"unread_result", 0}, {"warnings", 0}, {"other", 0}};
  for (gsize i = 0; i < G_N_ELEMENTS(pins); i++) {
    g_autofree char *line =
      g_strdup_printf("poolshim_grain_pins_total%s,reason=\"%s\"}", pool, pins[i].reason);
    cr_assert_eq(stats_value(text, line), pins[i].n, "%s in:\n%s", line, text);
  }
  /* The dead connection was found at the re-borrow and closed as dead. */
  g_autofree char *dead = g_strdup_printf("poolshim_closed_total%s,reason=\"dead\"}", pool);
  cr_assert_eq(stats_value(text, dead), 1, "%s", text);
  mysql_close(a);
}
