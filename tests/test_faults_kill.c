/* Connections killed under load: 32 threads connect, query and close in a loop on a pool
 * of 8 (in plain text and over TLS) while root KILLs pooled connections, idle and in use,
 * or commit rows through kills and a restart. Every request's outcome is logged
 * (tests/faults_common.c) and so is every KILL: a failed request is judged against the
 * KILLs of its own server thread; the server's own facts (Connections, PROCESSLIST, the
 * rows of t) back every claim. Each test prints one FIGURES line on stderr with its
 * totals. The server itself going away or filling up: test_faults_server.c. */
#include <errmsg.h>
#include <mysqld_error.h>
#include <stdio.h>
#include <string.h>

#include "faults_common.h"

/* A hang detector: a scenario takes 5-10 s, and its windows stretch on a slow machine (the
 * KILL phase up to 20 s, a judged window up to 10 s more). */
TestSuite(faults, .timeout = 60);

#define KILL_CAP 20000

/* ---- killer: KILLs the app's server threads, sampled from PROCESSLIST ---- */

typedef struct {
  guint32 id;
  gint64 start_us, end_us;
} Kill;

static struct {
  Kill log[KILL_CAP];
  gint n;
  gint stop;
  gint errors;
  char error[512];
  GThread *thread;
  gboolean joined;
} K;

static gpointer
killer(gpointer data)
{
  MYSQL *m = mysql_init(NULL);
  if (!mysql_real_connect(m, S.host, S.root_user, S.root_password, NULL, S.port, NULL, 0)) {
    g_strlcpy(K.error, mysql_error(m), sizeof K.error);
    g_atomic_int_inc(&K.errors);
    mysql_close(m);
    return NULL;
  }
  char sql[256];
  /* Never a connection still logging in: only sessions a pool holds or has lent. */
  g_snprintf(sql, sizeof sql,
             "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '%s' AND COMMAND NOT "
             "IN ('Connect', 'Killed')",
             app_user());
  guint32 rng = 0x2545f491u;
  while (!g_atomic_int_get(&K.stop) && g_atomic_int_get(&K.n) < KILL_CAP - 4) {
    if (mysql_query(m, sql)) {
      g_strlcpy(K.error, mysql_error(m), sizeof K.error);
      g_atomic_int_inc(&K.errors);
      break;
    }
    MYSQL_RES *res = mysql_store_result(m);
    guint32 ids[64];
    int n = 0;
    MYSQL_ROW row;
    while (res && (row = mysql_fetch_row(res)) && n < 64)
      ids[n++] = (guint32)g_ascii_strtoull(row[0], NULL, 10);
    if (res)
      mysql_free_result(res);
    for (int k = 0; k < 2 && n > 0; k++) {
      int pick = (int)(rnd(&rng) % (guint32)n);
      guint32 id = ids[pick];
      ids[pick] = ids[--n];
      char kill[64];
      g_snprintf(kill, sizeof kill, "KILL %u", id);
      gint64 t0 = now_us();
      if (mysql_query(m, kill)) {
        if (mysql_errno(m) != ER_NO_SUCH_THREAD) {
          g_strlcpy(K.error, mysql_error(m), sizeof K.error);
          g_atomic_int_inc(&K.errors);
        }
        continue;
      }
      int i = g_atomic_int_get(&K.n);
      K.log[i] = (Kill){.id = id, .start_us = t0, .end_us = now_us()};
      g_atomic_int_set(&K.n, i + 1);
    }
    g_usleep(10000 + rnd(&rng) % 20000);
  }
  mysql_close(m);
  return NULL;
}

static void
killer_start(void)
{
  K.thread = g_thread_new("killer", killer, NULL);
}

/* Whether the server process itself is gone (not one connection): fresh root connects,
 * bypassing the pool, are refused for 2 s. */
static gboolean
server_gone(void)
{
  for (int i = 0; i < 20; i++) {
    MYSQL *m = mysql_init(NULL);
    mysql_options(m, MYSQL_READ_DEFAULT_FILE, "/dev/null");
    gboolean up = mysql_real_connect(m, S.host, pst_env("PS_TEST_ROOT_USER"),
                                     pst_env("PS_TEST_ROOT_PASSWORD"), NULL, S.port, NULL, 0) != NULL;
    unsigned int e = mysql_errno(m);
    mysql_close(m);
    if (up || (e != CR_CONNECTION_ERROR && e != CR_CONN_HOST_ERROR))
      return FALSE;
    sleep_ms(100);
  }
  return TRUE;
}

static void
killer_stop_thread(void)
{
  g_atomic_int_set(&K.stop, 1);
  g_thread_join(K.thread);
  K.joined = TRUE;
}

typedef struct {
  int idle, in_use;     /* kills of a connection no request was using / one in use */
  int failed_queries;   /* requests that failed after their connect */
  int unexplained;      /* ... on a connection no KILL touched after the request began */
  char first[256];
} KillReport;

/* A request that failed after its connect succeeded is explained only by a KILL of its
 * very server thread that ended after the request began: a KILL that ended before had
 * already closed the socket (the server shuts it down before answering the KILL), so the
 * pool had to see it dead and must not have lent it. */
static void
judge_kills(int lane, KillReport *rep)
{
  memset(rep, 0, sizeof *rep);
  GHashTable *last_kill = g_hash_table_new(g_direct_hash, g_direct_equal);
  GHashTable *uses = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL,
                                           (GDestroyNotify)g_array_unref);
  int nk = g_atomic_int_get(&K.n);
  for (int i = 0; i < nk; i++) {
    gpointer key = GUINT_TO_POINTER(K.log[i].id);
    gint64 end = K.log[i].end_us;
    gpointer old = g_hash_table_lookup(last_kill, key);
    if (!old || (gint64)GPOINTER_TO_SIZE(old) < end)
      g_hash_table_insert(last_kill, key, GSIZE_TO_POINTER((gsize)end));
  }
  int n = MIN(S.nlog, LOG_CAP);
  for (int i = 0; i < n; i++) {
    const Req *r = &S.log[i];
    if (r->lane != lane || !r->conn_id)
      continue;
    GArray *a = g_hash_table_lookup(uses, GUINT_TO_POINTER(r->conn_id));
    if (!a) {
      a = g_array_new(FALSE, FALSE, sizeof(guint));
      g_hash_table_insert(uses, GUINT_TO_POINTER(r->conn_id), a);
    }
    guint idx = (guint)i;
    g_array_append_val(a, idx);
    if (r->stage == STAGE_OK || r->stage == STAGE_CONNECT)
      continue;
    rep->failed_queries++;
    gpointer k = g_hash_table_lookup(last_kill, GUINT_TO_POINTER(r->conn_id));
    if (!k || (gint64)GPOINTER_TO_SIZE(k) < r->start_us) {
      if (!rep->unexplained++)
        g_snprintf(rep->first, sizeof rep->first,
                   "thread %u, error %u, request began %" G_GINT64_FORMAT
                   " us after the last KILL of it ended%s",
                   r->conn_id, r->err, k ? r->start_us - (gint64)GPOINTER_TO_SIZE(k) : 0,
                   k ? "" : " (never killed)");
    }
  }
  for (int i = 0; i < nk; i++) {
    GArray *a = g_hash_table_lookup(uses, GUINT_TO_POINTER(K.log[i].id));
    gboolean in_use = FALSE;
    for (guint j = 0; a && j < a->len && !in_use; j++) {
      const Req *r = &S.log[g_array_index(a, guint, j)];
      in_use = r->start_us <= K.log[i].end_us && r->end_us >= K.log[i].start_us;
    }
    if (in_use)
      rep->in_use++;
    else
      rep->idle++;
  }
  g_hash_table_destroy(last_kill);
  g_hash_table_destroy(uses);
}

/* ---- the app's sessions seen and killed by root ---- */

/* Waits (max 10 s) until PROCESSLIST shows no killed thread of the app still closing. */
static void
wait_killed_gone(void)
{
  for (int i = 0; i < 1000; i++) {
    if (pst_scalar(pst_admin(),
                   "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '%s' AND "
                   "COMMAND = 'Killed'",
                   app_user()) == 0)
      return;
    sleep_ms(10);
  }
  cr_assert_fail("killed threads still listed after 10 s");
}

/* KILLs every session of the application user that sits idle on the server (COMMAND
 * 'Sleep'), with the load stopped: the pool's idle connections. Returns how many. */
static int
kill_idle_sessions(void)
{
  MYSQL *admin = pst_admin();
  g_autofree char *sql = g_strdup_printf(
    "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '%s' AND COMMAND = 'Sleep'",
    app_user());
  cr_assert_eq(mysql_query(admin, sql), 0, "%s", mysql_error(admin));
  /* Stored whole on the client: the KILLs may go out while its rows are read. */
  MYSQL_RES *res = mysql_store_result(admin);
  cr_assert_not_null(res, "%s", mysql_error(admin));
  int killed = 0;
  MYSQL_ROW row;
  while ((row = mysql_fetch_row(res))) {
    g_autofree char *kill = g_strdup_printf("KILL %s", row[0]);
    if (mysql_query(admin, kill) == 0)
      killed++;
    else
      cr_assert_eq(mysql_errno(admin), ER_NO_SUCH_THREAD, "%s", mysql_error(admin));
  }
  mysql_free_result(res);
  return killed;
}

/* A root connection that bypasses the pool (an option file is never pooled): fresh. */
static MYSQL *
fresh_root(void)
{
  MYSQL *m = mysql_init(NULL);
  mysql_options(m, MYSQL_READ_DEFAULT_FILE, "/dev/null");
  cr_assert_not_null(mysql_real_connect(m, S.host, pst_env("PS_TEST_ROOT_USER"),
                                        pst_env("PS_TEST_ROOT_PASSWORD"), NULL, S.port, NULL, 0),
                     "fresh root connection: %s", mysql_error(m));
  return m;
}

/* Every test ends here, also one that failed half-way: the killer and the load's threads
 * are stopped and joined before the process exits under them, and the server's variables
 * are put back. */
static void
finish(void)
{
  g_atomic_int_set(&K.stop, 1);
  finish_load();
  if (K.thread && !K.joined) {
    g_thread_join(K.thread);
    K.joined = TRUE;
  }
  restore_globals();
}

/* ---- 1. root KILLs idle and in-use pooled connections ---- */

/* The server died under the KILLs: its log's last lines go to the test's output, it is
 * started again, and the load's and the killer's state is cleared for a second run. The
 * MariaDB 10.11.19 server died this way a few times on these machines (never the client:
 * the test process survives and reports it). The cause found: the other private server of
 * scripts/test, restarting, deleted this one's internal temporary tables from the /tmp both
 * shared (a starting mariadbd deletes every #sql* file in its tmpdir), and this one died in
 * ha_maria::drop_table; each server now has its own tmpdir (scripts/server). A server crash
 * is not what this test judges, so the scenario still runs once more on the restarted
 * server, and a second crash fails the test. */
static void
restart_after_server_crash(const char *scenario)
{
  g_autofree char *path = g_build_filename(pst_env("PS_TEST_SERVER_DIR"), "error.log", NULL);
  g_autofree char *text = NULL;
  g_file_get_contents(path, &text, NULL, NULL);
  const char *tail = text ? text + strlen(text) : "";
  for (int lines = 0; text && tail > text && lines < 40; tail--)
    lines += tail[-1] == '\n';
  fprintf(stderr, "poolshim test: the server died during the %s scenario (the killer: %s); "
          "the end of its log:\n%s\npoolshim test: restarting it and running the scenario "
          "once more\n", scenario, K.error, tail);
  g_atomic_int_set(&S.stop, 1);
  for (int i = 0; i < 3000 && g_atomic_int_get(&S.finished) < S.nworkers; i++)
    sleep_ms(10);
  cr_assert_eq(g_atomic_int_get(&S.finished), S.nworkers, "the load did not stop");
  for (int i = 0; i < S.nworkers; i++)
    g_thread_join(S.workers[i].thread);
  pst_server_ctl("restart");
  pst_admin_drop();
  memset(&K, 0, sizeof K);
  g_free(S.log);
  S.log = NULL;
  S.stop = S.finished = S.nworkers = S.nlog = 0;
  memset(S.workers, 0, sizeof S.workers);
  memset(S.errs, 0, sizeof S.errs);
  S.id_mismatch = S.bad_1040 = S.bad_1040_taken = S.connect_err_taken = 0;
}

static void
kill_scenario(const char *scenario, const char *tls_ca)
{
  long long c0 = 0;
  Lane lane;
  gint64 kills_begin = 0;
  for (int attempt = 0;; attempt++) {
    c0 = begin();
    lane = select_lane(0, pst_env("PS_TEST_DB"));
    lane.tls_ca = tls_ca;
    start_workers(&lane, THREADS);
    sleep_ms(500); /* the pool is created and full before the first KILL */
    kills_begin = now_us();
    killer_start();
    /* At least 4 s, and on until 20 KILLs (a sanitized TLS build on a loaded machine lends
     * fewer connections a second), at most 20 s. */
    sleep_ms(4000);
    for (int i = 0; i < 64 && g_atomic_int_get(&K.n) < 20; i++)
      sleep_ms(250);
    killer_stop_thread();
    if (!K.errors || attempt > 0 || !server_gone())
      break;
    restart_after_server_crash(scenario);
  }
  cr_assert_eq(K.errors, 0, "the killer failed: %s", K.error);
  gint64 kills_end = now_us();
  wait_killed_gone();
  gint64 final_begin = now_us();
  run_on(0, 1500, 100);
  stop_and_join(15);
  long long c1 = pst_status("Connections");

  Tally all, final;
  tally(&all, 0, 0, G_MAXINT64);
  tally(&final, 0, final_begin, G_MAXINT64);
  KillReport rep;
  judge_kills(0, &rep);
  int nk = g_atomic_int_get(&K.n);
  g_autofree char *extra = g_strdup_printf(
    "kills=%d (of idle connections %d, in use %d) over %" G_GINT64_FORMAT " ms; "
    "connect_failures=%d query_failures=%d unexplained=%d; after the killer: %d/%d ok",
    nk, rep.idle, rep.in_use, (kills_end - kills_begin) / 1000, all.connect_failed,
    rep.failed_queries, rep.unexplained, final.ok, final.attempted);
  figures(scenario, c1 - c0, "0", extra);

  cr_assert_geq(nk, 20, "only %d KILLs were made", nk);
  /* No connect ever fails, whatever the KILLs hit. */
  cr_assert_eq(all.connect_failed, 0, "%d connects failed; the first: %s", all.connect_failed,
               S.connect_err_msg);
  /* In use, a killed session fails as it would without the pool (over TLS the library
   * reports the cut as a TLS error, 2026). */
  static const unsigned killed[] = {CR_SERVER_GONE_ERROR, CR_SERVER_LOST, ER_CONNECTION_KILLED,
                                    CR_SSL_CONNECTION_ERROR};
  int nkilled = G_N_ELEMENTS(killed) - (tls_ca ? 0 : 1); /* 2026 only over TLS */
  assert_errors_within(0, 0, G_MAXINT64, killed, nkilled, "queries under KILL");
  /* Nothing dead is lent: a query fails only on a connection killed after it began. */
  cr_assert_eq(rep.unexplained, 0,
               "%d of %d failed queries ran on a connection killed before they began: %s",
               rep.unexplained, rep.failed_queries, rep.first);
  /* Once the killer stopped and its victims were gone: not one failure. */
  assert_all_ok(0, final_begin, G_MAXINT64, 100, "requests after the killer stopped");
  /* A killed idle connection is replaced unseen. Under the load the pool's 8 connections
   * serve 32 threads and are seldom idle, so the KILLs above may all have hit lent ones (on
   * a slow machine all 20 did): here the load has stopped and every session killed is one
   * the pool holds idle. The next 8 concurrent borrowers must all be served, on live
   * sessions. */
  int idle_killed = kill_idle_sessions();
  cr_assert_geq(idle_killed, 1, "the pool held no idle session to kill");
  wait_killed_gone();
  check_burst("after the idle sessions were killed", tls_ca);
  tally_clear(&all);
  tally_clear(&final);
}

Test(faults, pooled_connections_killed_by_root, .init = pool_of_eight, .fini = finish)
{
  kill_scenario("kill", NULL);
}

/* The same over TLS: a pooled TLS session moves between handles, and its errors with it. */
Test(faults, pooled_tls_connections_killed_by_root, .init = pool_of_eight, .fini = finish)
{
  kill_scenario("kill-tls", pst_env("PS_TEST_TLS_CA"));
}

/* ---- 2. committed work is never lost ---- */

Test(faults, committed_work_survives_kills_and_a_restart, .init = pool_of_eight,
     .fini = finish)
{
  long long c0 = 0, marker = 0;
  Lane lane; /* the workers read it until stop_and_join: outside the loop's scope */
  /* As in kill_scenario: a server that dies under the KILLs is restarted and the
   * scenario runs once more (restart_after_server_crash). */
  for (int attempt = 0;; attempt++) {
    c0 = begin();
    marker = 1000000 + g_random_int_range(0, 1000000000);
    g_snprintf(S.insert_sql, sizeof S.insert_sql, "INSERT INTO t (v) VALUES (%lld)", marker);
    g_snprintf(S.abandon_sql, sizeof S.abandon_sql, "INSERT INTO t (v) VALUES (%lld)",
               marker + 1);
    lane = select_lane(0, pst_env("PS_TEST_DB"));
    lane.commit = TRUE;
    lane.abandon_every = 8;
    int mark = begun(0);
    start_workers(&lane, THREADS);
    sleep_ms(1000);
    killer_start();
    /* At least 2 s, and on until 10 KILLs and 150 transactions begun (a sanitized build on
     * a loaded machine runs fewer a second), at most 16 s more. */
    sleep_ms(2000);
    for (int i = 0; i < 64 && (g_atomic_int_get(&K.n) < 10 || begun(0) - mark < 150); i++)
      sleep_ms(250);
    killer_stop_thread();
    if (!K.errors || attempt > 0 || !server_gone())
      break;
    restart_after_server_crash("committed work");
  }
  cr_assert_eq(K.errors, 0, "the killer failed: %s", K.error);

  long long c1 = pst_status("Connections");
  pst_admin_drop();
  pst_server_ctl("restart");
  gint64 restart_done = now_us();
  run_on(-1, 2000, 50);
  stop_and_join(15);
  long long c2 = pst_status("Connections");

  /* Counted on a connection of its own, opened now, outside every pool. */
  MYSQL *fresh = fresh_root();
  long long rows = pst_scalar(fresh, "SELECT COUNT(*) FROM %s.t WHERE v = %lld",
                              pst_env("PS_TEST_DB"), marker);
  long long phantoms = pst_scalar(fresh, "SELECT COUNT(*) FROM %s.t WHERE v = %lld",
                                  pst_env("PS_TEST_DB"), marker + 1);
  pst_exec(fresh, "DELETE FROM %s.t WHERE v IN (%lld, %lld)", pst_env("PS_TEST_DB"), marker,
           marker + 1);
  mysql_close(fresh);

  Tally all, abandoned;
  tally(&all, 0, 0, G_MAXINT64);
  tally(&abandoned, 1, 0, G_MAXINT64);
  long long ok = all.ok, unknown = all.commit_failed;
  long long lost = ok > rows ? ok - rows : 0;
  g_autofree char *lost_text = g_strdup_printf("%lld", lost);
  g_autofree char *extra = g_strdup_printf(
    "commits acknowledged=%lld unknown=%lld (COMMIT cut by a KILL or the restart) rows=%lld; "
    "transactions left open at close %d, rows of them %lld; kills=%d; opened=%lld before "
    "the restart + %lld counted by the restarted server (its restart script's and the "
    "admin's own included)",
    ok, unknown, rows, abandoned.ok, phantoms, g_atomic_int_get(&K.n), c1 - c0, c2);
  figures("commits", (c1 - c0) + c2, lost_text, extra);

  cr_assert_eq(lost, 0, "%lld acknowledged COMMITs are not in the table (%lld rows)", lost,
               rows);
  cr_assert_leq(rows, ok + unknown, "%lld rows, but only %lld COMMITs succeeded or were cut",
                rows, ok + unknown);
  cr_assert_eq(phantoms, 0, "%lld rows of transactions never committed (of %d left open)",
               phantoms, abandoned.ok);
  cr_assert_geq(ok, 100, "only %lld commits", ok);
  cr_assert_geq(abandoned.ok, 10, "only %d transactions left open", abandoned.ok);
  cr_assert_geq(g_atomic_int_get(&K.n), 10, "only %d KILLs were made", K.n);
  assert_all_ok(-1, restart_done, G_MAXINT64, 50, "transactions begun after the restart");
  check_burst("after the kills and the restart", NULL);
  tally_clear(&all);
  tally_clear(&abandoned);
}
