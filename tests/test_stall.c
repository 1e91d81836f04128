/* Stall: a server that stops answering (tests/faultproxy frozen in front of it) or whose
 * connections are cut. A connect that opens a connection fails with the client library's
 * own error after the client's own connect timeout; a connect that waits for a full pool
 * fails with 1040 after POOLSHIM_TIMEOUT; mysql_close returns promptly; after a thaw or a
 * cut new requests succeed and no thread stays stuck. Time bounds are coarse on purpose. */
#include <errmsg.h>
#include <mysqld_error.h>

#include "helpers.h"

#include <criterion/parameterized.h>

#define CONNECT_TIMEOUT_S 2 /* the client's own MYSQL_OPT_CONNECT_TIMEOUT */
#define RW_TIMEOUT_S 2      /* and its read/write timeouts */

static void
setup(void)
{
  setenv("POOLSHIM_POOL_SIZE", "2", 1);
  setenv("POOLSHIM_TIMEOUT", "1s", 1);
  setenv("POOLSHIM_RESET_TIMEOUT", "1s", 1);
}

TestSuite(stall, .init = setup, .timeout = 60);

static gint64
now_ms(void)
{
  return g_get_monotonic_time() / 1000;
}

static MYSQL *
connect_via(PstProxy *p)
{
  return pst_connect_via(p, CONNECT_TIMEOUT_S, RW_TIMEOUT_S);
}

static long long
conn_id(MYSQL *m)
{
  return pst_scalar(m, "SELECT CONNECTION_ID()");
}

/* One connect in a thread of its own: no assertion runs off the test's thread. */
typedef struct {
  unsigned int port;
  unsigned int err; /* of the connect */
  char msg[512];
  unsigned int query_err; /* of SELECT CONNECTION_ID() after a successful connect */
  long long id;
  gint64 took_ms;
  gint done;
  GThread *thread;
} Attempt;

static gpointer
attempt_main(gpointer data)
{
  Attempt *a = data;
  gint64 t0 = now_ms();
  MYSQL *m = mysql_init(NULL);
  unsigned int ct = CONNECT_TIMEOUT_S, rw = RW_TIMEOUT_S;
  mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
  mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &rw);
  mysql_options(m, MYSQL_OPT_WRITE_TIMEOUT, &rw);
  if (!mysql_real_connect(m, "127.0.0.1", getenv("PS_TEST_USER"), getenv("PS_TEST_PASSWORD"),
                          getenv("PS_TEST_DB"), a->port, NULL, 0)) {
    a->err = mysql_errno(m);
    g_strlcpy(a->msg, mysql_error(m), sizeof a->msg);
    a->took_ms = now_ms() - t0;
    mysql_close(m);
  } else {
    a->took_ms = now_ms() - t0;
    if (mysql_query(m, "SELECT CONNECTION_ID()") == 0) {
      MYSQL_RES *r = mysql_store_result(m);
      MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
      a->id = row ? g_ascii_strtoll(row[0], NULL, 10) : 0;
      if (r)
        mysql_free_result(r);
    } else {
      a->query_err = mysql_errno(m);
    }
    mysql_close(m);
  }
  g_atomic_int_set(&a->done, 1);
  return NULL;
}

static void
attempt_start(Attempt *a, PstProxy *p)
{
  a->port = pst_proxy_port(p);
  a->thread = g_thread_new("attempt", attempt_main, a);
}

/* Joins every attempt; fails (rather than hangs) when one is still running after `ms`. */
static void
join_all(Attempt *a, int n, int ms)
{
  gint64 deadline = now_ms() + ms;
  for (int i = 0; i < n; i++) {
    while (!g_atomic_int_get(&a[i].done)) {
      cr_assert_lt(now_ms(), deadline, "connect %d still stuck after %d ms", i, ms);
      g_usleep(10 * 1000);
    }
    g_thread_join(a[i].thread);
  }
}

static poolshim_stats_t
stats(void)
{
  poolshim_stats_t s;
  pst_stats(&s);
  return s;
}


/* Once every handle is closed or has failed: nothing lent, nobody waiting, every open
 * connection idle in its pool. */
static void
assert_settled(const char *when)
{
  pst_admin_drop(); /* the admin connection is pooled too: back to its own pool */
  poolshim_stats_t s = stats();
  cr_assert_eq(s.lent, 0, "%s: %u lent", when, s.lent);
  cr_assert_eq(s.waiting, 0, "%s: %u waiting", when, s.waiting);
  cr_assert_eq(s.open, s.idle, "%s: %u open, %u idle", when, s.open, s.idle);
}

/* (a) and (b): with the server stalled, connects that open a connection end with the
 * client library's own error after the client's own connect timeout; a connect that
 * meanwhile finds the pool full gives up after POOLSHIM_TIMEOUT with 1040. */
Test(stall, connects_respect_the_connect_timeout_and_the_pool_timeout)
{
  PstProxy *p = pst_proxy_start();
  pst_proxy_freeze(p);
  unsigned base = stats().open;
  Attempt a[3] = {0};
  attempt_start(&a[0], p);
  attempt_start(&a[1], p);
  /* Both slots must be taken (being opened) before the third connect starts, or on a
   * loaded machine it may take a slot first and one of the two would wait instead. */
  pst_wait_stats_count(G_STRUCT_OFFSET(poolshim_stats_t, open), base + 2,
                 "slots taken by the two opening connects");
  attempt_start(&a[2], p);
  join_all(a, 3, 20000);
  for (int i = 0; i < 2; i++) {
    cr_assert_eq(a[i].err, CR_SERVER_LOST, "opening connect %d: %u %s", i, a[i].err,
                 a[i].msg);
    cr_assert(a[i].took_ms >= 1500 && a[i].took_ms < 8000,
              "opening connect %d failed after %" G_GINT64_FORMAT " ms (connect timeout %d s)",
              i, a[i].took_ms, CONNECT_TIMEOUT_S);
  }
  cr_assert_eq(a[2].err, ER_CON_COUNT_ERROR, "waiting connect: %u %s", a[2].err, a[2].msg);
  cr_assert(strstr(a[2].msg, "POOLSHIM_TIMEOUT"), "%s", a[2].msg);
  cr_assert(a[2].took_ms >= 700 && a[2].took_ms < 5000,
            "the waiting connect gave up after %" G_GINT64_FORMAT " ms (POOLSHIM_TIMEOUT 1 s)",
            a[2].took_ms);
  /* The failed opens gave their slots back. */
  poolshim_stats_t s = stats();
  cr_assert_eq(s.open, 0);
  cr_assert_eq(s.wait_timeouts, 1);
  assert_settled("after the failed connects");

  pst_proxy_thaw(p);
  MYSQL *m = connect_via(p);
  cr_assert_eq(pst_scalar(m, "SELECT 1"), 1);
  mysql_close(m);
  assert_settled("after the thaw");
  pst_proxy_stop(p);
}

/* (b) and (c): a full pool of lent connections, the server stalls. Waiters give up with
 * 1040; closing a lent handle returns at once (the reset is sent, not awaited), and a
 * handle closed inside a transaction, whose ROLLBACK must be read, returns within
 * POOLSHIM_RESET_TIMEOUT and is not pooled. After the thaw the pooled one serves. */
Test(stall, waiters_give_up_and_closes_return_promptly)
{
  PstProxy *p = pst_proxy_start();
  MYSQL *plain = connect_via(p), *in_trans = connect_via(p);
  long long plain_id = conn_id(plain), trans_id = conn_id(in_trans);
  pst_exec(in_trans, "START TRANSACTION");
  pst_proxy_freeze(p);

  Attempt w[3] = {0};
  for (int i = 0; i < 3; i++)
    attempt_start(&w[i], p);
  join_all(w, 3, 20000);
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(w[i].err, ER_CON_COUNT_ERROR, "waiter %d: %u %s", i, w[i].err, w[i].msg);
    cr_assert(w[i].took_ms >= 700 && w[i].took_ms < 5000,
              "waiter %d gave up after %" G_GINT64_FORMAT " ms", i, w[i].took_ms);
  }
  poolshim_stats_t s = stats();
  cr_assert_eq(s.wait_timeouts, 3);
  cr_assert_eq(s.waiting, 0);
  cr_assert_eq(s.lent, 2);

  gint64 t0 = now_ms();
  mysql_close(plain);
  gint64 plain_ms = now_ms() - t0;
  cr_assert_lt(plain_ms, 1000, "closing a lent handle took %" G_GINT64_FORMAT " ms", plain_ms);
  s = stats();
  cr_assert_eq(s.idle, 1, "the plain connection went back to the pool");

  t0 = now_ms();
  mysql_close(in_trans);
  gint64 trans_ms = now_ms() - t0;
  cr_assert_lt(trans_ms, 5000, "closing inside a transaction took %" G_GINT64_FORMAT " ms",
               trans_ms);
  cr_log_info("closes during the stall: %" G_GINT64_FORMAT " ms, inside a transaction %"
              G_GINT64_FORMAT " ms", plain_ms, trans_ms);
  s = stats();
  cr_assert_eq(s.open, 1, "the connection whose ROLLBACK timed out was kept");
  cr_assert_eq(s.idle, 1);
  assert_settled("after the closes");

  pst_proxy_thaw(p);
  /* The pooled connection's reset replies arrive now; it is lent again. */
  MYSQL *m = connect_via(p), *n = connect_via(p);
  long long m_id = conn_id(m), n_id = conn_id(n);
  cr_assert(m_id == plain_id || n_id == plain_id, "the pooled connection was not reused");
  cr_assert(m_id != trans_id && n_id != trans_id, "the failed one came back");
  cr_assert_eq(pst_scalar(m, "SELECT @@in_transaction"), 0);
  mysql_close(m);
  mysql_close(n);
  pst_wait_thread_gone((unsigned long)trans_id);
  assert_settled("after the thaw");
  pst_proxy_stop(p);
}

/* (c) in every reset mode: the modes that need a round trip at close wait at most
 * POOLSHIM_RESET_TIMEOUT and then close the connection; after the thaw all is well. */
typedef struct {
  char mode[16];
  gboolean round_trip; /* the close must read a reply */
} ResetMode;

static ResetMode modes[] = {
  {"reset", FALSE}, {"change_user", TRUE}, {"rollback", TRUE}, {"none", FALSE}};

ParameterizedTestParameters(stall, a_close_during_the_stall_is_bounded_in_every_reset_mode)
{
  return cr_make_param_array(ResetMode, modes, G_N_ELEMENTS(modes));
}

ParameterizedTest(ResetMode *mode, stall, a_close_during_the_stall_is_bounded_in_every_reset_mode)
{
  setenv("POOLSHIM_RESET", mode->mode, 1); /* read at the first connect, just below */
  /* One connection: right after the thaw, a pool with room would open a new connection
   * rather than wait for the stalled one's reset replies. */
  setenv("POOLSHIM_POOL_SIZE", "1", 1);
  PstProxy *p = pst_proxy_start();
  MYSQL *m = connect_via(p);
  long long id = conn_id(m);
  pst_proxy_freeze(p);
  gint64 t0 = now_ms();
  mysql_close(m);
  gint64 took_ms = now_ms() - t0;
  cr_log_info("POOLSHIM_RESET=%s: mysql_close during the stall took %" G_GINT64_FORMAT " ms",
              mode->mode, took_ms);
  cr_assert_lt(took_ms, mode->round_trip ? 5000 : 1000, "%s: mysql_close took %" G_GINT64_FORMAT
               " ms", mode->mode, took_ms);
  poolshim_stats_t s = stats();
  cr_assert_eq(s.idle, mode->round_trip ? 0 : 1, "%s: %u idle", mode->mode, s.idle);
  pst_proxy_thaw(p);
  MYSQL *n = connect_via(p);
  cr_assert_eq(pst_scalar(n, "SELECT 1"), 1);
  if (mode->round_trip)
    cr_assert_neq(conn_id(n), id, "%s: the connection whose reset timed out came back",
                  mode->mode);
  else
    cr_assert_eq(conn_id(n), id, "%s: the pooled connection was not reused", mode->mode);
  mysql_close(n);
  assert_settled(mode->mode);
  pst_proxy_stop(p);
}

/* A waiter is served by a close made during the stall: it gets that connection as soon
 * as the server answers again, without waiting for its own timeout. */
Test(stall, a_close_during_the_stall_serves_a_waiter)
{
  PstProxy *p = pst_proxy_start();
  MYSQL *a = connect_via(p), *b = connect_via(p);
  long long a_id = conn_id(a);
  pst_proxy_freeze(p);
  Attempt w = {0};
  attempt_start(&w, p);
  pst_wait_stats_count(G_STRUCT_OFFSET(poolshim_stats_t, waiting), 1, "connects waiting");
  gint64 t0 = now_ms();
  mysql_close(a);
  cr_assert_lt(now_ms() - t0, 1000);
  pst_proxy_thaw(p);
  join_all(&w, 1, 20000);
  cr_assert_eq(w.err, 0, "the waiter failed: %u %s", w.err, w.msg);
  cr_assert_eq(w.query_err, 0, "the waiter's query failed: %u", w.query_err);
  cr_assert_eq(w.id, a_id, "the waiter did not get the returned connection");
  poolshim_stats_t s = stats();
  cr_assert_eq(s.wait_timeouts, 0);
  cr_assert_eq(s.waits, 1);
  mysql_close(b);
  assert_settled("at the end");
  pst_proxy_stop(p);
}

/* A waiter served during the stall, with the stall going on: it reads the pending reset
 * (bounded by POOLSHIM_RESET_TIMEOUT), drops that connection, tries to open one and fails
 * with the library's error after the connect timeout. Nothing stays lent or waiting. */
Test(stall, a_waiter_served_during_a_stall_that_goes_on_fails_cleanly)
{
  PstProxy *p = pst_proxy_start();
  MYSQL *a = connect_via(p), *b = connect_via(p);
  long long a_id = conn_id(a);
  pst_proxy_freeze(p);
  Attempt w = {0};
  attempt_start(&w, p);
  pst_wait_stats_count(G_STRUCT_OFFSET(poolshim_stats_t, waiting), 1, "connects waiting");
  mysql_close(a);
  join_all(&w, 1, 20000);
  cr_assert_eq(w.err, CR_SERVER_LOST, "the waiter: %u %s", w.err, w.msg);
  cr_assert_lt(w.took_ms, 10000, "the waiter took %" G_GINT64_FORMAT " ms", w.took_ms);
  poolshim_stats_t s = stats();
  cr_assert_eq(s.wait_timeouts, 0, "the waiter was served, not timed out");
  cr_assert_eq(s.lent, 1);
  cr_assert_eq(s.open, 1);
  pst_proxy_thaw(p);
  cr_assert_eq(pst_scalar(b, "SELECT 1"), 1, "the held connection survives the stall");
  mysql_close(b);
  pst_wait_thread_gone((unsigned long)a_id);
  MYSQL *m = connect_via(p);
  cr_assert_neq(conn_id(m), a_id);
  mysql_close(m);
  assert_settled("at the end");
  pst_proxy_stop(p);
}

/* A cut closes every connection under the pool: a lent handle sees the library's error
 * and its close is prompt; the idle one is discarded unseen; new requests succeed. */
Test(stall, after_a_cut_new_requests_succeed)
{
  PstProxy *p = pst_proxy_start();
  MYSQL *lent = connect_via(p), *idle = connect_via(p);
  long long lent_id = conn_id(lent), idle_id = conn_id(idle);
  mysql_close(idle);
  cr_assert_eq(pst_proxy_cut(p), 2);
  cr_assert_eq(pst_proxy_conns(p), 0);
  cr_assert_neq(mysql_query(lent, "SELECT 1"), 0, "a query on a cut connection succeeded");
  unsigned int e = mysql_errno(lent);
  cr_assert(e == CR_SERVER_LOST || e == CR_SERVER_GONE_ERROR, "%u %s", e, mysql_error(lent));
  gint64 t0 = now_ms();
  mysql_close(lent);
  cr_assert_lt(now_ms() - t0, 1000);
  MYSQL *m = connect_via(p), *n = connect_via(p);
  long long m_id = conn_id(m), n_id = conn_id(n);
  cr_assert(m_id != lent_id && m_id != idle_id && n_id != lent_id && n_id != idle_id,
            "a cut connection came back");
  cr_assert_eq(pst_scalar(m, "SELECT 1"), 1);
  mysql_close(m);
  mysql_close(n);
  assert_settled("after the cut");
  pst_proxy_stop(p);
}

/* Idle connections whose reset replies are still pending when the server stalls: a
 * connect reads each reply for at most POOLSHIM_RESET_TIMEOUT, drops the connection, and
 * ends with the library's error; it does not hang. */
Test(stall, a_connect_finding_unanswered_resets_is_bounded)
{
  PstProxy *p = pst_proxy_start();
  MYSQL *a = connect_via(p), *b = connect_via(p);
  pst_proxy_freeze(p);
  gint64 t0 = now_ms();
  mysql_close(a);
  mysql_close(b);
  cr_assert_lt(now_ms() - t0, 1000, "the closes waited for the server");
  Attempt w = {0};
  attempt_start(&w, p);
  join_all(&w, 1, 30000);
  cr_assert_eq(w.err, CR_SERVER_LOST, "%u %s", w.err, w.msg);
  /* Two unanswered resets (POOLSHIM_RESET_TIMEOUT each), then the connect timeout. */
  cr_assert_lt(w.took_ms, 10000, "the connect took %" G_GINT64_FORMAT " ms", w.took_ms);
  cr_log_info("a connect over 2 unanswered resets failed after %" G_GINT64_FORMAT " ms "
              "(client connect timeout %d s)", w.took_ms, CONNECT_TIMEOUT_S);
  poolshim_stats_t s = stats();
  cr_assert_eq(s.open, 0);
  pst_proxy_thaw(p);
  MYSQL *m = connect_via(p);
  cr_assert_eq(pst_scalar(m, "SELECT 1"), 1);
  mysql_close(m);
  assert_settled("after the thaw");
  pst_proxy_stop(p);
}

/* The client's own connect timeout bounds the whole connect, also when idle connections'
 * reset replies must be read first (each read could otherwise take POOLSHIM_RESET_TIMEOUT,
 * one after the other, before the real connect even starts). */
Test(stall, a_connect_over_unanswered_resets_keeps_the_connect_timeout)
{
  PstProxy *p = pst_proxy_start();
  MYSQL *a = connect_via(p), *b = connect_via(p);
  pst_proxy_freeze(p);
  mysql_close(a);
  mysql_close(b);
  Attempt w = {0};
  attempt_start(&w, p);
  join_all(&w, 1, 30000);
  cr_assert_neq(w.err, 0, "connected through a frozen proxy");
  cr_assert_lt(w.took_ms, CONNECT_TIMEOUT_S * 1000 + 1500,
               "the connect took %" G_GINT64_FORMAT " ms; the client's connect timeout is %d s",
               w.took_ms, CONNECT_TIMEOUT_S);
  pst_proxy_thaw(p);
  pst_proxy_stop(p);
}

/* The same over TLS, whose reads take their timeouts from the handle: closes during the
 * stall return promptly, a connect over unanswered resets is bounded, and afterwards the
 * pooled connections are still encrypted. */
static MYSQL *
try_tls_via(PstProxy *p, unsigned int *err, char *msg, size_t msglen)
{
  MYSQL *m = mysql_init(NULL);
  unsigned int ct = CONNECT_TIMEOUT_S, rw = RW_TIMEOUT_S;
  mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
  mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &rw);
  mysql_options(m, MYSQL_OPT_WRITE_TIMEOUT, &rw);
  pst_require_tls(m);
  if (mysql_real_connect(m, "127.0.0.1", pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                         pst_env("PS_TEST_DB"), pst_proxy_port(p), NULL, 0))
    return m;
  *err = mysql_errno(m);
  g_strlcpy(msg, mysql_error(m), msglen);
  mysql_close(m);
  return NULL;
}

static MYSQL *
tls_via(PstProxy *p)
{
  unsigned int err = 0;
  char msg[512] = "";
  MYSQL *m = try_tls_via(p, &err, msg, sizeof msg);
  cr_assert_not_null(m, "TLS connect through the proxy failed: %u %s", err, msg);
  g_autofree char *cipher = pst_scalar_str(m, "SELECT VARIABLE_VALUE FROM "
                                              "information_schema.SESSION_STATUS WHERE "
                                              "VARIABLE_NAME = 'Ssl_cipher'");
  cr_assert(cipher && *cipher, "not encrypted");
  return m;
}

Test(stall, tls_connections_through_a_stall)
{
  PstProxy *p = pst_proxy_start();
  MYSQL *a = tls_via(p), *b = tls_via(p);
  long long a_id = conn_id(a), b_id = conn_id(b);
  pst_exec(b, "START TRANSACTION");
  pst_proxy_freeze(p);
  gint64 t0 = now_ms();
  mysql_close(a);
  gint64 plain_ms = now_ms() - t0;
  t0 = now_ms();
  mysql_close(b);
  gint64 trans_ms = now_ms() - t0;
  cr_assert_lt(plain_ms, 1000, "closing a lent TLS handle took %" G_GINT64_FORMAT " ms",
               plain_ms);
  cr_assert_lt(trans_ms, 5000, "closing inside a transaction took %" G_GINT64_FORMAT " ms",
               trans_ms);
  unsigned int err = 0;
  char msg[512] = "";
  t0 = now_ms();
  MYSQL *m = try_tls_via(p, &err, msg, sizeof msg);
  gint64 connect_ms = now_ms() - t0;
  cr_assert_null(m, "a connect succeeded through a frozen proxy");
  cr_assert_eq(err, CR_SERVER_LOST, "%u %s", err, msg);
  cr_assert_lt(connect_ms, 10000, "the connect took %" G_GINT64_FORMAT " ms", connect_ms);
  cr_log_info("TLS: closes %" G_GINT64_FORMAT " ms and %" G_GINT64_FORMAT
              " ms (in a transaction), connect %" G_GINT64_FORMAT " ms",
              plain_ms, trans_ms, connect_ms);
  assert_settled("during the stall");
  pst_proxy_thaw(p);
  MYSQL *n = tls_via(p);
  long long n_id = conn_id(n);
  cr_assert(n_id != a_id && n_id != b_id, "a connection from before the stall came back");
  mysql_close(n);
  assert_settled("after the thaw");
  pst_proxy_stop(p);
}

/* (d) Threads keep connecting, querying and closing while the server stalls, recovers and
 * has its connections cut. Failures during the faults are the library's or the pool's
 * errors only; every thread finishes; afterwards every request succeeds. */
#define WORKERS 6

typedef struct {
  unsigned int port;
  gint *stop;
  gint ok;
  guint failed, unexpected;
  unsigned int last_unexpected;
  char unexpected_msg[256];
  gint done;
} Worker;

static gpointer
worker_main(gpointer data)
{
  Worker *w = data;
  while (!g_atomic_int_get(w->stop)) {
    MYSQL *m = mysql_init(NULL);
    unsigned int ct = CONNECT_TIMEOUT_S, rw = RW_TIMEOUT_S;
    mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
    mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &rw);
    mysql_options(m, MYSQL_OPT_WRITE_TIMEOUT, &rw);
    unsigned int err = 0;
    if (mysql_real_connect(m, "127.0.0.1", getenv("PS_TEST_USER"), getenv("PS_TEST_PASSWORD"),
                           getenv("PS_TEST_DB"), w->port, NULL, 0)) {
      if (mysql_query(m, "SELECT 1") == 0) {
        MYSQL_RES *r = mysql_store_result(m);
        if (r) {
          mysql_free_result(r);
          g_atomic_int_inc(&w->ok);
        } else {
          err = mysql_errno(m);
        }
      } else {
        err = mysql_errno(m);
      }
    } else {
      err = mysql_errno(m);
    }
    if (err) {
      w->failed++;
      if (err != ER_CON_COUNT_ERROR && err != CR_SERVER_LOST && err != CR_SERVER_GONE_ERROR &&
          err != CR_CONNECTION_ERROR && err != CR_CONN_HOST_ERROR) {
        w->unexpected++;
        w->last_unexpected = err;
        g_strlcpy(w->unexpected_msg, mysql_error(m), sizeof w->unexpected_msg);
      }
    }
    mysql_close(m);
  }
  g_atomic_int_set(&w->done, 1);
  return NULL;
}

static guint
total_ok(Worker *w)
{
  guint n = 0;
  for (int i = 0; i < WORKERS; i++)
    n += (guint)g_atomic_int_get(&w[i].ok);
  return n;
}

/* Waits until more than `mark` requests have succeeded, at most 10 s (three of these and the
 * workers' 20 s to stop stay within the suite's 60 s); the count then. */
static guint
run_on_until_more(Worker *w, guint mark)
{
  for (int i = 0; i < 100 && total_ok(w) <= mark; i++)
    g_usleep(100 * 1000);
  return total_ok(w);
}

Test(stall, busy_threads_survive_stalls_and_cuts)
{
  PstProxy *p = pst_proxy_start();
  gint stop = 0;
  Worker w[WORKERS] = {0};
  GThread *t[WORKERS];
  for (int i = 0; i < WORKERS; i++) {
    w[i].port = pst_proxy_port(p);
    w[i].stop = &stop;
    t[i] = g_thread_new("worker", worker_main, &w[i]);
  }
  /* Each phase runs for its length, then on until a request has succeeded in it (at most
   * 10 s more): on a loaded machine a window of fixed length may hold none. */
  g_usleep(500 * 1000);
  guint before_freeze = run_on_until_more(w, 0);
  cr_assert_gt(before_freeze, 0, "no request succeeded before the stall");
  pst_proxy_freeze(p);
  g_usleep(3000 * 1000); /* longer than every timeout involved */
  guint at_thaw = total_ok(w); /* nothing gets through the frozen proxy */
  pst_proxy_thaw(p);
  g_usleep(1500 * 1000);
  guint after_thaw = run_on_until_more(w, at_thaw);
  pst_proxy_cut(p);
  g_usleep(1000 * 1000);
  pst_proxy_cut(p);
  guint at_cut = total_ok(w);
  g_usleep(1500 * 1000);
  guint after_cut = run_on_until_more(w, at_cut);
  g_atomic_int_set(&stop, 1);
  gint64 deadline = now_ms() + 20000;
  for (int i = 0; i < WORKERS; i++) {
    while (!g_atomic_int_get(&w[i].done)) {
      cr_assert_lt(now_ms(), deadline, "worker %d is stuck", i);
      g_usleep(10 * 1000);
    }
    g_thread_join(t[i]);
  }
  guint ok = 0, failed = 0;
  for (int i = 0; i < WORKERS; i++) {
    cr_assert_eq(w[i].unexpected, 0, "worker %d got error %u: %s", i, w[i].last_unexpected,
                 w[i].unexpected_msg);
    ok += (guint)w[i].ok;
    failed += w[i].failed;
  }
  cr_log_info("%u requests succeeded, %u failed during the faults", ok, failed);
  cr_assert_gt(after_thaw, at_thaw, "no request succeeded after the thaw");
  cr_assert_gt(after_cut, at_cut, "no request succeeded after the cuts");
  assert_settled("after the workers");
  /* And now every request succeeds, up to the pool's size at once. */
  MYSQL *m = connect_via(p), *n = connect_via(p);
  cr_assert_eq(pst_scalar(m, "SELECT 1"), 1);
  cr_assert_eq(pst_scalar(n, "SELECT 1"), 1);
  mysql_close(m);
  mysql_close(n);
  assert_settled("at the end");
  pst_proxy_stop(p);
}
