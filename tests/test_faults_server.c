/* Faults of the server itself under load: 32 threads connect, query and close in a loop on
 * a pool of 8 while the server restarts, its wait_timeout drops idle connections, or
 * another client takes every free connection slot. Every request's outcome is logged and
 * judged afterwards against the moments of the faults (tests/faults_common.c); the
 * server's own facts (Connections, PROCESSLIST) back every claim. Each test prints one
 * FIGURES line on stderr with its totals. Connections killed under load: test_faults_kill.c. */
#include <errmsg.h>
#include <mysqld_error.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faults_common.h"

/* A hang detector: a scenario takes 5-10 s, and its windows stretch on a slow machine (the
 * bursts around wait_timeout up to 20 s, a judged window up to 10 s more). */
TestSuite(faults, .timeout = 60);

static void finish(void);

/* ---- 1. the server restarts mid-run ---- */

Test(faults, server_restart_mid_run, .init = pool_of_eight, .fini = finish)
{
  long long c0 = begin();
  Lane lane = select_lane(0, pst_env("PS_TEST_DB"));
  start_workers(&lane, THREADS);
  sleep_ms(1500);

  long long c1 = pst_status("Connections");
  gint64 restart_begin = now_us();
  pst_admin_drop();
  pst_server_ctl("restart");
  gint64 restart_done = now_us();
  long long c2 = pst_status("Connections"); /* counted from the new server's start */
  run_on(0, 2500, 100);
  stop_and_join(15);
  long long c3 = pst_status("Connections");

  Tally before, during, after;
  tally(&before, 0, 0, restart_begin);
  tally(&during, 0, restart_begin, restart_done);
  tally(&after, 0, restart_done, G_MAXINT64);
  g_autofree char *extra = g_strdup_printf(
    "restart_ms=%" G_GINT64_FORMAT " ok/attempted: before=%d/%d during=%d/%d after=%d/%d; "
    "opened=%lld before the restart + %lld counted by the restarted server (%lld of them "
    "when the restart returned: its restart script's and the admin's own included)",
    (restart_done - restart_begin) / 1000, before.ok, before.attempted, during.ok,
    during.attempted, after.ok, after.attempted, c1 - c0, c3, c2);
  figures("restart", (c1 - c0) + c3, "0", extra);

  /* Requests in flight across the restart fail with the client's own errors (a connect
   * while it was down: 2002); every one that began once the server answered succeeds. */
  static const unsigned across[] = {CR_CONNECTION_ERROR,  CR_CONN_HOST_ERROR,
                                    CR_SERVER_GONE_ERROR, CR_SERVER_LOST,
                                    ER_SERVER_SHUTDOWN,   ER_CONNECTION_KILLED};
  assert_errors_within(0, 0, restart_done, across, G_N_ELEMENTS(across),
                       "requests begun before the restart finished");
  assert_all_ok(0, restart_done, G_MAXINT64, 100, "requests begun after the restart");
  /* Before the restart the pool opened at most its size; after it, one set again (the
   * margin is for the restart script's and the admin's connections). */
  cr_assert_leq(c1 - c0, POOL_SIZE, "the pool opened %lld connections before the restart",
                c1 - c0);
  cr_assert_leq(c3, 2 * POOL_SIZE + 4, "%lld connections since the server restarted", c3);
  check_burst("after the restart", NULL);
  tally_clear(&before);
  tally_clear(&during);
  tally_clear(&after);
}

/* ---- 2. the server's wait_timeout is shorter than the pool's idle time ---- */

Test(faults, server_drops_idle_connections_at_its_wait_timeout, .init = pool_of_eight,
     .fini = finish)
{
  long long c0 = begin(); /* the admin's own session keeps the default wait_timeout */
  long long aborted0 = pst_status("Aborted_clients");
  save_global("wait_timeout");
  pst_exec(pst_admin(), "SET GLOBAL wait_timeout = 2");
  Lane lane = select_lane(0, pst_env("PS_TEST_DB"));
  lane.bursts = 4;
  lane.burst_len = 12;
  lane.pause_ms = 2500;
  lane.pause_jitter_ms = 400;
  start_workers(&lane, THREADS);
  long long peak = 0;
  gint64 deadline = now_us() + 20 * G_USEC_PER_SEC;
  while (g_atomic_int_get(&S.finished) < S.nworkers && now_us() < deadline) {
    peak = MAX(peak, pst_user_threads(app_user()));
    sleep_ms(100);
  }
  stop_and_join(5);
  long long c1 = pst_status("Connections");
  long long aborted = pst_status("Aborted_clients") - aborted0;
  restore_globals();

  g_autofree char *extra = g_strdup_printf(
    "bursts=%d of %d per thread, pauses %d+-%d ms, wait_timeout=2s: the server dropped %lld "
    "idle connections itself (Aborted_clients); peak app threads %lld",
    lane.bursts, lane.burst_len, lane.pause_ms, lane.pause_jitter_ms, aborted, peak);
  figures("wait_timeout", c1 - c0, "0", extra);

  /* No borrower ever got a connection the server had closed. */
  assert_all_ok(0, 0, G_MAXINT64, THREADS * lane.bursts * lane.burst_len,
                "requests around the server's wait_timeout");
  /* The first burst opens the pool's connections; every one of them is idle for longer
   * than the 2 s wait_timeout before the second burst (each thread pauses 2.1 s or more),
   * so at least one burst after a pause opened new ones. */
  cr_assert_gt(c1 - c0, POOL_SIZE, "only %lld connections opened in %d bursts (pool of %d)",
               c1 - c0, lane.bursts, POOL_SIZE);
  check_burst("after the pauses", NULL);
}

/* ---- 3. another client takes every free connection slot ---- */

/* Connects as app2 until the server refuses, says so, holds them until its stdin ends. */
static const char filler_py[] =
  "import sys, MySQLdb\n"
  "host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]\n"
  "held = []\n"
  "while len(held) < 1000:\n"
  "    try:\n"
  "        held.append(MySQLdb.connect(host=host, port=port, user=user, passwd=pw,\n"
  "                                    connect_timeout=5))\n"
  "    except MySQLdb.OperationalError as e:\n"
  "        print('FILLED %d %d %s' % (len(held), e.args[0], e.args[1]), flush=True)\n"
  "        break\n"
  "sys.stdin.read()\n"
  "for c in held:\n"
  "    c.close()\n";

static struct {
  GPid pid;
  int in, out;
  gboolean running;
} F;

static char *
filler_line(int timeout_ms)
{
  GString *line = g_string_new(NULL);
  gint64 deadline = now_us() + (gint64)timeout_ms * 1000;
  for (;;) {
    int left = (int)((deadline - now_us()) / 1000);
    cr_assert_gt(left, 0, "the filler said nothing within %d ms (so far: %s)", timeout_ms,
                 line->str);
    struct pollfd p = {.fd = F.out, .events = POLLIN};
    int r = poll(&p, 1, left);
    if (r <= 0)
      continue;
    char c;
    ssize_t n = read(F.out, &c, 1);
    cr_assert_eq(n, 1, "the filler exited early (so far: %s)", line->str);
    if (c == '\n')
      return g_string_free(line, FALSE);
    g_string_append_c(line, c);
  }
}

/* A client of its own: another process, without the shim, as another user. */
static void
filler_start(void)
{
  char **env = g_environ_unsetenv(g_get_environ(), "LD_PRELOAD");
  const char *argv[] = {"/usr/bin/python3", "-c",  filler_py, S.host, pst_env("PS_TEST_PORT"),
                        pst_env("PS_TEST_USER2"), pst_env("PS_TEST_PASSWORD2"), NULL};
  GError *error = NULL;
  gboolean ok = g_spawn_async_with_pipes(NULL, (char **)argv, env, G_SPAWN_DO_NOT_REAP_CHILD,
                                         NULL, NULL, &F.pid, &F.in, &F.out, NULL, &error);
  g_strfreev(env);
  cr_assert(ok, "spawning the filler: %s", error ? error->message : "?");
  F.running = TRUE;
}

/* Ends its stdin: it closes its connections and exits (killed after 10 s). Returns its wait
 * status, or -1 when it was not running. Never fails: .fini calls it too. */
static int
filler_stop(void)
{
  if (!F.running)
    return -1;
  F.running = FALSE;
  close(F.in);
  int status = 0;
  pid_t r = 0;
  for (int i = 0; i < 1000 && (r = waitpid(F.pid, &status, WNOHANG)) == 0; i++)
    sleep_ms(10);
  if (r == 0) {
    kill(F.pid, SIGKILL);
    waitpid(F.pid, &status, 0);
  }
  close(F.out);
  g_spawn_close_pid(F.pid);
  return status;
}

/* Every test ends here, also one that failed half-way: the load's threads are stopped and
 * joined before the process exits under them, the other client ends and the server's
 * variables are put back. */
static void
finish(void)
{
  finish_load();
  filler_stop();
  restore_globals();
}

Test(faults, max_connections_reached_by_another_client, .init = pool_of_eight,
     .fini = finish)
{
  long long c0 = begin();
  const char *db = pst_env("PS_TEST_DB"), *db2 = pst_env("PS_TEST_DB2");
  /* Lane 0: a pool that is full and warm. Lane 1: a pool of another key, first used once
   * the server is full, so that it needs new physical connections. */
  Lane a = select_lane(0, db);
  Lane b = select_lane(1, db2);
  b.fail_pause_us = 20000;
  start_workers(&a, THREADS - 4);
  /* The warm pool's server threads, by ID (a session inside COM_CHANGE_USER may briefly
   * show no user or database: retried until all are seen). */
  g_autofree char *warm_ids = NULL;
  long long warm = 0;
  for (int i = 0; i < 500; i++) {
    g_free(warm_ids);
    warm_ids = pst_scalar_str(pst_admin(),
                              "SELECT GROUP_CONCAT(ID ORDER BY ID) FROM "
                              "information_schema.PROCESSLIST WHERE USER = '%s' AND DB = '%s'",
                              app_user(), db);
    g_auto(GStrv) ids = g_strsplit(warm_ids ? warm_ids : "", ",", -1);
    if ((warm = warm_ids ? g_strv_length(ids) : 0) == POOL_SIZE)
      break;
    sleep_ms(10);
  }
  cr_assert_eq(warm, POOL_SIZE, "the pool did not fill: server threads %s", warm_ids);
  gint64 warm_at = now_us();

  /* Room for one more pool's worth, then the other client takes all of it. */
  save_global("max_connections");
  long long in_use = pst_status("Threads_connected");
  long long limit = in_use + POOL_SIZE;
  pst_exec(pst_admin(), "SET GLOBAL max_connections = %lld", limit);
  filler_start();
  g_autofree char *said = filler_line(10000);
  int held = 0, err = 0;
  cr_assert_eq(sscanf(said, "FILLED %d %d", &held, &err), 2, "the filler said: %s", said);
  cr_assert_eq(err, ER_CON_COUNT_ERROR, "the filler stopped on: %s", said);
  cr_assert_gt(held, 0, "the filler got no connection: %s", said);
  gint64 full_begin = now_us();

  int b_mark = begun(1);
  start_workers(&b, 4);
  long long max_b = 0;
  /* At least 2 s, and on until 10 connects have been tried (at most 10 s more). */
  for (int i = 0; i < 20 || (i < 120 && begun(1) - b_mark < 10); i++) {
    sleep_ms(100);
    max_b = MAX(max_b, app_threads_on(db2));
  }
  long long warm_alive =
    pst_scalar(pst_admin(),
               "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID IN (%s)", warm_ids);

  gint64 release_begin = now_us();
  int filler_status = filler_stop();
  for (int i = 0; i < 1000 && pst_user_threads(pst_env("PS_TEST_USER2")) > 0; i++)
    sleep_ms(10);
  long long left_by_other = pst_user_threads(pst_env("PS_TEST_USER2"));
  gint64 release_done = now_us();
  run_on(1, 2000, 20);
  stop_and_join(15);
  long long c1 = pst_status("Connections");
  long long after_b = app_threads_on(db2);
  restore_globals();

  /* Every request of the warm pool ran on one of its eight server threads. */
  g_auto(GStrv) warm_list = g_strsplit(warm_ids, ",", -1);
  int warm_used = 0, warm_other = 0;
  for (int i = 0; i < MIN(S.nlog, LOG_CAP); i++) {
    const Req *r = &S.log[i];
    if (r->lane != 0 || r->start_us < warm_at || !r->conn_id)
      continue;
    gboolean known = FALSE;
    for (char **w = warm_list; *w && !known; w++)
      known = g_ascii_strtoull(*w, NULL, 10) == r->conn_id;
    warm_used++;
    warm_other += !known;
  }
  Tally full, b_all;
  tally_between(&full, 1, full_begin, release_begin, TRUE); /* all of it while full */
  tally(&b_all, 1, 0, G_MAXINT64);
  g_autofree char *full_errs = errs_text(full.hist);
  g_autofree char *extra = g_strdup_printf(
    "max_connections=%lld, the other client held %d; the warm pool's %lld server threads: "
    "%lld alive after the server was full, its %d requests since ran on them (%d elsewhere); "
    "the new pool while full: %lld threads, connects refused with the server's 1040 %d of %d; "
    "afterwards %d/%d ok, %lld threads (opened counts refused attempts too)",
    limit, held, warm, warm_alive, warm_used, warm_other, max_b, full.hist[ER_CON_COUNT_ERROR],
    full.attempted, b_all.ok, b_all.attempted, after_b);
  figures("max_connections", c1 - c0, "0", extra);

  cr_assert(WIFEXITED(filler_status) && WEXITSTATUS(filler_status) == 0,
            "the other client did not end cleanly (status %d)", filler_status);
  cr_assert_eq(left_by_other, 0, "the other client's sessions outlived it");
  /* The warm pool never noticed: no failure, no new connection. */
  assert_all_ok(0, 0, G_MAXINT64, 200, "requests of the warm pool");
  cr_assert_eq(warm_alive, POOL_SIZE, "of the warm pool's server threads (%s) %lld are left",
               warm_ids, warm_alive);
  cr_assert_eq(warm_other, 0, "%d of %d requests of the warm pool ran on a new connection",
               warm_other, warm_used);
  /* New physical connections get the server's own refusal, passed through. */
  cr_assert_eq(max_b, 0, "the new pool got a connection on a full server: %lld", max_b);
  cr_assert_geq(full.attempted, 10, "only %d connects tried while the server was full",
                full.attempted);
  cr_assert_eq(full.hist[ER_CON_COUNT_ERROR], full.attempted,
               "while full: %d of %d requests failed with 1040 (%s)",
               full.hist[ER_CON_COUNT_ERROR], full.attempted, full_errs);
  cr_assert_eq(full.connect_failed, full.attempted);
  cr_assert_eq(S.bad_1040, 0, "%d refusals did not carry the server's message: %s", S.bad_1040,
               S.bad_1040_msg);
  /* Once the other client let go, the new pool recovered. */
  assert_all_ok(1, release_done, G_MAXINT64, 20, "requests after the other client let go");
  cr_assert(after_b >= 1 && after_b <= POOL_SIZE, "the new pool holds %lld", after_b);
  check_burst("after the server was full", NULL);
  tally_clear(&full);
  tally_clear(&b_all);
}
