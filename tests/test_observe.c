/* What an operator sees of unmodified clients (tests/opsprobe) run with the shim: the stats
 * file (POOLSHIM_STATS_FILE) and poolshim-stat reading it, the key file (POOLSHIM_CONFIG) and
 * the log file (POOLSHIM_LOG_FILE). The numbers are checked against the server's own
 * counters, never against the shim's word alone. */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "opsrun.h"

TestSuite(observe, .timeout = 100);

/* Every POOLSHIM_* a scenario may set, unset unless it says otherwise. */
static const char *const all_vars[] = {
    "POOLSHIM_POOL_SIZE", "POOLSHIM_TIMEOUT", "POOLSHIM_STATS_FILE", "POOLSHIM_STATS_INTERVAL",
    "POOLSHIM_CONFIG",    "POOLSHIM_LOG",     "POOLSHIM_LOG_FILE",   NULL};

/* The probe run to completion with exactly the given POOLSHIM_* (name, value pairs). */
static PstRun
run_probe(const char *const *args, const char *const *env)
{
  GPtrArray *argv = g_ptr_array_new(), *e = g_ptr_array_new();
  g_ptr_array_add(argv, (gpointer)pst_env("PST_OPSPROBE"));
  for (const char *const *a = args; *a; a++)
    g_ptr_array_add(argv, (gpointer)*a);
  g_ptr_array_add(argv, NULL);
  for (const char *const *n = all_vars; *n; n++) {
    g_ptr_array_add(e, (gpointer)*n);
    g_ptr_array_add(e, NULL);
  }
  for (const char *const *x = env; x && *x; x += 2) {
    g_ptr_array_add(e, (gpointer)x[0]);
    g_ptr_array_add(e, (gpointer)x[1]);
  }
  g_ptr_array_add(e, NULL);
  PstRun r = pst_run((const char *const *)argv->pdata, (const char *const *)e->pdata);
  g_ptr_array_free(argv, TRUE);
  g_ptr_array_free(e, TRUE);
  cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0,
            "opsprobe failed (status %d)\nstdout:\n%s\nstderr:\n%s", r.status, r.out, r.err);
  return r;
}

static long long
report_int(const char *out, const char *name)
{
  g_autofree char *v = pst_report_value(out, name);
  cr_assert_not_null(v, "no %s in the probe's report:\n%s", name, out);
  return g_ascii_strtoll(v, NULL, 10);
}

static char *
pool_label(const char *db)
{
  return g_strdup_printf("%s@%s:%s/%s", pst_env("PS_TEST_USER"), pst_env("PS_TEST_HOST"),
                         pst_env("PS_TEST_PORT"), db ? db : pst_env("PS_TEST_DB"));
}

/* The value of the one sample `name{...}` whose labels include every `label` (NULL-ended
 * list of name="value" strings); fails unless there is exactly one. */
static double
metric_v(const char *text, const char *name, const char *const *labels)
{
  g_autofree char *prefix = g_strconcat(name, "{", NULL);
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  const char *found = NULL;
  double value = 0;
  for (char **l = lines; *l; l++) {
    if (!g_str_has_prefix(*l, prefix))
      continue;
    const char *end = strrchr(*l, '}');
    cr_assert_not_null(end, "not a sample: %s", *l);
    g_autofree char *set = g_strndup(*l + strlen(prefix), (gsize)(end - *l - strlen(prefix)));
    gboolean all = TRUE;
    for (const char *const *lb = labels; *lb && all; lb++)
      all = strstr(set, *lb) != NULL;
    if (!all)
      continue;
    cr_assert_null(found, "two samples match %s:\n%s\n%s", name, found, *l);
    found = *l;
    char *after = NULL;
    value = g_ascii_strtod(end + 1, &after);
    cr_assert(after != end + 1 && *after == '\0', "bad value: %s", *l);
  }
  cr_assert_not_null(found, "no sample %s with the labels asked for in:\n%s", name, text);
  return value;
}

/* A pool metric of the pool `label`, optionally with one more label (`extra`). */
static long long
pool_metric(const char *text, const char *name, const char *label, const char *extra)
{
  g_autofree char *pool = g_strdup_printf("pool=\"%s\"", label);
  const char *labels[] = {pool, extra, NULL};
  return (long long)metric_v(text, name, labels);
}

/* Names in dir, sorted, joined by spaces (dot files too). */
static char *
dir_listing(const char *dir)
{
  GDir *d = g_dir_open(dir, 0, NULL);
  cr_assert_not_null(d, "%s", dir);
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  for (const char *n; (n = g_dir_read_name(d));)
    g_ptr_array_add(names, g_strdup(n));
  g_dir_close(d);
  g_ptr_array_sort(names, (GCompareFunc)g_strcmp0);
  g_ptr_array_add(names, NULL);
  char *s = g_strjoinv(" ", (char **)names->pdata);
  g_ptr_array_free(names, TRUE);
  return s;
}

/* ---- the stats file ---- */

Test(observe, the_stats_file_written_at_exit_matches_the_server_counters)
{
  g_autofree char *tmp = ops_tmp_dir("pst-observe"), *label = pool_label(NULL);
  g_autofree char *pattern = g_strdup_printf("%s/%%n-%%p.prom", tmp);
  pst_admin();
  long long before = pst_status("Connections");
  const char *args[] = {"work", "4", "50", "5", NULL};
  const char *env[] = {"POOLSHIM_POOL_SIZE", "2", "POOLSHIM_STATS_FILE", pattern, NULL};
  PstRun r = run_probe(args, env);
  long long server_opened = pst_status("Connections") - before;
  cr_assert_eq(report_int(r.out, "OK"), 200, "%s\n%s", r.out, r.err);
  cr_assert_eq(report_int(r.out, "ERRORS"), 0, "%s", r.out);
  long long pid = report_int(r.out, "PID");

  g_autofree char *name = g_strdup_printf("opsprobe-%lld.prom", pid);
  g_autofree char *listing = dir_listing(tmp);
  cr_assert_str_eq(listing, name, "the directory holds other files (temporaries?): %s", listing);
  g_autofree char *path = g_build_filename(tmp, name, NULL);
  g_autofree char *t = ops_read_file(path);

  g_autofree char *pid_label = g_strdup_printf("pid=\"%lld\"", pid);
  const char *info[] = {pid_label, "program=\"opsprobe\"", "version=\"", NULL};
  cr_assert_eq(metric_v(t, "poolshim_info", info), 1.0);
  const char *just_pid[] = {pid_label, NULL};
  cr_assert_eq(metric_v(t, "poolshim_unpooled_total", just_pid), 0.0);
  cr_assert_gt(metric_v(t, "poolshim_written_time_seconds", just_pid),
               metric_v(t, "poolshim_process_start_time_seconds", just_pid) - 1.0);
  /* Every sample names this process. */
  g_auto(GStrv) lines = g_strsplit(t, "\n", -1);
  for (char **l = lines; *l; l++)
    if (**l && **l != '#')
      cr_assert(strstr(*l, pid_label), "a sample without the pid: %s", *l);

  long long borrowed = pool_metric(t, "poolshim_borrowed_total", label, NULL);
  long long opened = pool_metric(t, "poolshim_opened_total", label, NULL);
  cr_assert_eq(borrowed, 200);
  cr_assert_eq(opened, server_opened, "the file says %lld opened, the server saw %lld", opened,
               server_opened);
  cr_assert(opened >= 1 && opened <= 2, "opened %lld with a pool of 2", opened);
  cr_assert_eq(pool_metric(t, "poolshim_served_idle_total", label, NULL), borrowed - opened);
  cr_assert_eq(pool_metric(t, "poolshim_closed_total", label, "reason=\"shutdown\""), opened);
  static const char *const others[] = {"lifetime",     "idle_timeout", "dead", "error",
                                       "reset_failed", "over_limit",   NULL};
  for (const char *const *o = others; *o; o++) {
    g_autofree char *reason = g_strdup_printf("reason=\"%s\"", *o);
    cr_assert_eq(pool_metric(t, "poolshim_closed_total", label, reason), 0, "%s", reason);
  }
  cr_assert_eq(pool_metric(t, "poolshim_pool_size", label, NULL), 2);
  long long waits = pool_metric(t, "poolshim_waits_total", label, NULL);
  cr_assert(waits > 0 && waits < 200, "waits %lld: 4 threads share 2 connections", waits);
  cr_assert_eq(pool_metric(t, "poolshim_wait_timeouts_total", label, NULL), 0);
  cr_assert_eq(pool_metric(t, "poolshim_wait_seconds_count", label, NULL), 200);
  cr_assert_eq(pool_metric(t, "poolshim_wait_seconds_bucket", label, "le=\"+Inf\""), 200);
  cr_assert_eq(pool_metric(t, "poolshim_waiting", label, NULL), 0);
  for (int s = 0; s < 3; s++) {
    static const char *const states[] = {"idle", "lent", "opening"};
    g_autofree char *state = g_strdup_printf("state=\"%s\"", states[s]);
    cr_assert_eq(pool_metric(t, "poolshim_connections", label, state), 0,
                 "%s after the shutdown closes", state);
  }
  pst_run_clear(&r);
  ops_rm_tree(tmp);
}

/* Reads the file while the probe holds its connection: the pid's file is rewritten every
 * interval, and poolshim-stat shows the held connection. */
Test(observe, the_stats_file_is_rewritten_while_the_process_runs)
{
  g_autofree char *tmp = ops_tmp_dir("pst-observe"), *label = pool_label(NULL);
  g_autofree char *pattern = g_strdup_printf("%s/%%n-%%p.prom", tmp);
  const char *args[] = {"hold", "1", "0", NULL};
  /* clang-format off */
  const char *env[] = {
    "POOLSHIM_STATS_FILE", pattern,
    "POOLSHIM_STATS_INTERVAL", "1s",
    "POOLSHIM_POOL_SIZE", NULL,
    "POOLSHIM_CONFIG", NULL,
    NULL};
  /* clang-format on */
  OpsProbe *p = ops_start(args, env);
  g_autofree char *held = ops_wait_value(p, "HELD", 10000);
  cr_assert_str_eq(held, "1", "%s", ops_err(p));
  g_autofree char *path = g_strdup_printf("%s/opsprobe-%d.prom", tmp, ops_pid(p));
  g_autofree char *pid_label = g_strdup_printf("pid=\"%d\"", ops_pid(p));
  const char *just_pid[] = {pid_label, NULL};

  /* Three different write times with the connection lent: two rewrites at least. */
  double seen[3];
  int n = 0;
  gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
  while (n < 3) {
    cr_assert_lt(g_get_monotonic_time(), deadline, "only %d distinct writes in 20 s", n);
    cr_assert(ops_running(p), "the probe exited:\n%s\n%s", ops_out(p), ops_err(p));
    g_autofree char *t = NULL;
    /* The first write, at the first connect, comes before the pool exists. */
    if (g_file_get_contents(path, &t, NULL, NULL) && (n > 0 || strstr(t, label))) {
      cr_assert_eq(pool_metric(t, "poolshim_connections", label, "state=\"lent\""), 1, "%s", t);
      double w = metric_v(t, "poolshim_written_time_seconds", just_pid);
      cr_assert(n == 0 || w >= seen[n - 1], "the write time went back: %f < %f", w, seen[n - 1]);
      if (n == 0 || w > seen[n - 1])
        seen[n++] = w;
    }
    g_usleep(100000);
  }

  /* poolshim-stat by pid: finds the file through the process's environment. */
  g_autofree char *pid_text = g_strdup_printf("%d", ops_pid(p));
  const char *stat_pid[] = {pst_env("PST_STAT"), pid_text, NULL};
  PstRun s = pst_run(stat_pid, NULL);
  cr_assert(WIFEXITED(s.status) && WEXITSTATUS(s.status) == 0, "poolshim-stat %s: %d\n%s\n%s",
            pid_text, s.status, s.out, s.err);
  gboolean row = FALSE;
  g_auto(GStrv) lines = g_strsplit(s.out, "\n", -1);
  for (char **l = lines; *l; l++) {
    g_auto(GStrv) f = g_strsplit_set(*l, " ", -1);
    GPtrArray *cols = g_ptr_array_new();
    for (char **c = f; *c; c++)
      if (**c)
        g_ptr_array_add(cols, *c);
    /* PID PROGRAM POOL SIZE LENT ... */
    if (cols->len > 4 && g_str_equal(cols->pdata[0], pid_text)) {
      cr_assert_str_eq(cols->pdata[1], "opsprobe", "%s", *l);
      cr_assert_str_eq(cols->pdata[2], label, "%s", *l);
      cr_assert_str_eq(cols->pdata[4], "1", "LENT: %s", *l);
      row = TRUE;
    }
    g_ptr_array_free(cols, TRUE);
  }
  cr_assert(row, "no row for pid %s:\n%s", pid_text, s.out);
  pst_run_clear(&s);

  /* --json on the file: checked by Python's own JSON parser. */
  const char *stat_json[] = {pst_env("PST_STAT"), "--json", path, NULL};
  PstRun j = pst_run(stat_json, NULL);
  cr_assert(WIFEXITED(j.status) && WEXITSTATUS(j.status) == 0, "%s", j.err);
  g_autofree char *json_path = g_build_filename(tmp, "stat.json", NULL);
  cr_assert(g_file_set_contents(json_path, j.out, -1, NULL));
  const char *py[] = {
      "/usr/bin/python3",
      "-c",
      "import json, sys\n"
      "d = json.load(open(sys.argv[1]))\n"
      "p = d['processes']\n"
      "assert len(p) == 1 and p[0]['pid'] == int(sys.argv[2]) and p[0]['alive'] is True, p\n"
      "assert p[0]['program'] == 'opsprobe', p\n"
      "q = p[0]['pools']\n"
      "assert len(q) == 1 and q[0]['pool'] == sys.argv[3], q\n"
      "assert (q[0]['lent'], q[0]['idle'], q[0]['borrowed'], q[0]['opened']) == (1, 0, 1, 1), q\n",
      json_path,
      pid_text,
      label,
      NULL};
  PstRun check = pst_run(py, NULL);
  cr_assert(WIFEXITED(check.status) && WEXITSTATUS(check.status) == 0, "%s\n%s", check.err, j.out);
  pst_run_clear(&check);
  pst_run_clear(&j);

  /* At exit: the connection closed (shutdown), the last write says so. */
  ops_finish(p, 15000);
  ops_assert_value(p, "CLOSED", "1");
  g_autofree char *last = ops_read_file(path);
  cr_assert_eq(pool_metric(last, "poolshim_connections", label, "state=\"lent\""), 0, "%s", last);
  cr_assert_eq(pool_metric(last, "poolshim_connections", label, "state=\"idle\""), 0, "%s", last);
  cr_assert_eq(pool_metric(last, "poolshim_closed_total", label, "reason=\"shutdown\""), 1);
  cr_assert_geq(metric_v(last, "poolshim_written_time_seconds", just_pid), seen[2]);
  ops_free(p);
  ops_rm_tree(tmp);
}

/* ---- the key file ---- */

/* `work 4 20 5` with the key file (and extra environment): what the server and the stats
 * file saw. */
static void
run_with_config(const char *conf, const char *size_env, const char *db, long long *server,
                long long *opened, long long *size, char **err)
{
  g_autofree char *tmp = ops_tmp_dir("pst-observe"), *label = pool_label(db);
  g_autofree char *stats = g_strdup_printf("%s/s.prom", tmp);
  const char *args[] = {"work", "4", "20", "5", NULL};
  /* clang-format off */
  const char *env[] = {
    "POOLSHIM_CONFIG", conf,
    "POOLSHIM_STATS_FILE", stats,
    "POOLSHIM_POOL_SIZE", size_env,
    "PS_TEST_DB", db ? db : pst_env("PS_TEST_DB"),
    NULL};
  /* clang-format on */
  pst_admin();
  long long before = pst_status("Connections");
  PstRun r = run_probe(args, env);
  *server = pst_status("Connections") - before;
  cr_assert_eq(report_int(r.out, "OK"), 80, "%s\n%s", r.out, r.err);
  g_autofree char *t = ops_read_file(stats);
  *opened = pool_metric(t, "poolshim_opened_total", label, NULL);
  *size = pool_metric(t, "poolshim_pool_size", label, NULL);
  *err = g_steal_pointer(&r.err);
  pst_run_clear(&r);
  ops_rm_tree(tmp);
}

Test(observe, the_key_file_sets_pool_sizes_and_the_environment_wins)
{
  g_autofree char *tmp = ops_tmp_dir("pst-observe");
  g_autofree char *conf = g_build_filename(tmp, "poolshim.conf", NULL);
  g_autofree char *text = g_strdup_printf("# sizes for the test\n"
                                          "[default]\n"
                                          "pool_size = 5\n"
                                          "\n"
                                          "[pool *@*/%s]\n"
                                          "pool_size = 2\n",
                                          pst_env("PS_TEST_DB"));
  cr_assert(g_file_set_contents(conf, text, -1, NULL));
  long long server, opened, size;
  g_autofree char *err1 = NULL, *err2 = NULL, *err3 = NULL;

  /* The pool group matches the test database: 2. */
  run_with_config(conf, NULL, NULL, &server, &opened, &size, &err1);
  cr_assert_eq(size, 2);
  cr_assert_eq(opened, 2, "4 threads on a pool of 2 opened %lld", opened);
  cr_assert_eq(server, 2, "the server saw %lld connections", server);
  cr_assert_eq(pst_count_lines_with(err1, "poolshim"), 0, "%s", err1);

  /* Another database: only [default] applies. */
  run_with_config(conf, NULL, pst_env("PS_TEST_DB2"), &server, &opened, &size, &err2);
  cr_assert_eq(size, 5);
  cr_assert(opened >= 1 && opened <= 5, "opened %lld", opened); /* 4 threads may grow it to 5 */
  cr_assert_eq(server, opened);
  cr_assert_eq(pst_count_lines_with(err2, "poolshim"), 0, "%s", err2);

  /* POOLSHIM_POOL_SIZE wins over the group, with a warning naming the file's line. */
  run_with_config(conf, "3", NULL, &server, &opened, &size, &err3);
  cr_assert_eq(size, 3);
  cr_assert_eq(opened, 3, "4 threads on a pool of 3 opened %lld", opened);
  cr_assert_eq(server, 3, "the server saw %lld connections", server);
  g_autofree char *where =
      g_strdup_printf("%s:6: [pool *@*/%s] pool_size", conf, pst_env("PS_TEST_DB"));
  cr_assert_eq(pst_count_lines_with(err3, "poolshim: warning: "), 1, "%s", err3);
  cr_assert_eq(pst_count_lines_with(err3, where), 1, "no '%s' in:\n%s", where, err3);
  cr_assert_eq(pst_count_lines_with(err3, "POOLSHIM_POOL_SIZE"), 1, "%s", err3);
  ops_rm_tree(tmp);
}

/* ---- the log file ---- */

Test(observe, messages_go_to_the_log_file_with_time_and_pid)
{
  g_autofree char *tmp = ops_tmp_dir("pst-observe"), *label = pool_label(NULL);
  g_autofree char *log = g_build_filename(tmp, "log", NULL);
  const char *args[] = {"work", "2", "10", "5", NULL};
  const char *env[] = {
      "POOLSHIM_LOG", "debug", "POOLSHIM_LOG_FILE", log, "POOLSHIM_POOL_SIZE", "1", NULL};
  PstRun r = run_probe(args, env);
  cr_assert_eq(report_int(r.out, "OK"), 20, "%s\n%s", r.out, r.err);
  cr_assert_eq(pst_count_lines_with(r.err, "poolshim"), 0, "stderr:\n%s", r.err);
  long long pid = report_int(r.out, "PID");
  g_autofree char *t = ops_read_file(log);
  g_autofree char *re = g_strdup_printf("^20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:"
                                        "[0-6][0-9]\\.[0-9]{3}Z poolshim\\[%lld\\]: "
                                        "(error|warning|info|debug): ",
                                        pid);
  GRegex *line_re = g_regex_new(re, 0, 0, NULL);
  g_auto(GStrv) lines = g_strsplit(t, "\n", -1);
  guint n = 0;
  for (char **l = lines; *l; l++)
    if (**l) {
      cr_assert(g_regex_match(line_re, *l, 0, NULL), "not a log line: '%s'", *l);
      n++;
    }
  g_regex_unref(line_re);
  g_autofree char *new_pool = g_strdup_printf("info: new pool %s (size 1,", label);
  g_autofree char *full =
      g_strdup_printf("info: pool %s is full (size 1): connects now wait", label);
  g_autofree char *closing = g_strdup_printf("debug: closing a connection of %s (", label);
  cr_assert_eq(pst_count_lines_with(t, new_pool), 1, "%s", t);
  cr_assert_eq(pst_count_lines_with(t, full), 1, "%s", t);
  /* One connection (a pool of 1), closed at exit. */
  cr_assert_eq(pst_count_lines_with(t, closing), 1, "%s", t);
  cr_assert_eq(pst_count_lines_with(t, "shutdown"), 1, "%s", t);
  cr_assert(n >= 3);
  pst_run_clear(&r);

  /* A path that cannot be opened: one warning on stderr, and stderr stays the destination. */
  const char *bad[] = {"POOLSHIM_LOG",
                       "info",
                       "POOLSHIM_LOG_FILE",
                       "/nonexistent/dir/log",
                       "POOLSHIM_POOL_SIZE",
                       "1",
                       NULL};
  PstRun b = run_probe(args, bad);
  cr_assert_eq(report_int(b.out, "OK"), 20, "%s\n%s", b.out, b.err);
  cr_assert_eq(pst_count_lines_with(b.err, "POOLSHIM_LOG_FILE"), 1, "%s", b.err);
  cr_assert_eq(pst_count_lines_with(b.err, "poolshim: warning: POOLSHIM_LOG_FILE=/nonexistent"), 1,
               "%s", b.err);
  g_autofree char *on_stderr = g_strdup_printf("poolshim: %s", new_pool);
  cr_assert_eq(pst_count_lines_with(b.err, on_stderr), 1, "%s", b.err);
  cr_assert_eq(pst_count_lines_with(b.err, full), 1, "%s", b.err);
  cr_assert(!g_file_test("/nonexistent/dir/log", G_FILE_TEST_EXISTS));
  pst_run_clear(&b);
  ops_rm_tree(tmp);
}

Test(observe, a_newline_and_a_quote_in_a_database_name_reach_the_log_and_the_stats_file_escaped)
{
  /* A database whose name would forge a log line if written raw. */
  static const char db[] = "pst_nl\npoolshim: error: forged \"q";
  MYSQL *admin = pst_admin();
  pst_exec(admin, "DROP DATABASE IF EXISTS `%s`", db);
  pst_exec(admin, "CREATE DATABASE `%s`", db);
  pst_exec(admin, "GRANT ALL ON `%s`.* TO '%s'@'%%', '%s'@'localhost'", db,
           pst_env("PS_TEST_USER"), pst_env("PS_TEST_USER"));
  g_autofree char *tmp = ops_tmp_dir("pst-observe"), *label = pool_label(db);
  g_autofree char *log = g_build_filename(tmp, "log", NULL);
  g_autofree char *stats = g_build_filename(tmp, "s.prom", NULL);
  const char *args[] = {"work", "1", "3", "0", NULL};
  const char *env[] = {"POOLSHIM_LOG", "info", "POOLSHIM_LOG_FILE", log, "POOLSHIM_STATS_FILE",
                       stats, "PS_TEST_DB", db, NULL};
  PstRun r = run_probe(args, env);
  cr_assert_eq(report_int(r.out, "OK"), 3, "%s\n%s", r.out, r.err);
  cr_assert_eq(report_int(r.out, "ERRORS"), 0, "%s\n%s", r.out, r.err);
  /* The server saw the database: the connects really used it. */
  cr_assert_eq(pst_scalar(admin, "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE "
                                 "SCHEMA_NAME = 'pst_nl\\npoolshim: error: forged \"q'"),
               1);
  g_autofree char *t = ops_read_file(log);
  g_autofree char *escaped = g_strdup_printf("%s@%s:%s/pst_nl\\x0apoolshim: error: forged \"q",
                                             pst_env("PS_TEST_USER"), pst_env("PS_TEST_HOST"),
                                             pst_env("PS_TEST_PORT"));
  g_autofree char *new_pool = g_strdup_printf("info: new pool %s (size", escaped);
  cr_assert_eq(pst_count_lines_with(t, new_pool), 1, "%s", t);
  g_auto(GStrv) lines = g_strsplit(t, "\n", -1);
  for (char **l = lines; *l; l++)
    cr_assert(!**l || g_regex_match_simple("^20[0-9-]{8}T[0-9:.]{12}Z poolshim\\[[0-9]+\\]: ", *l,
                                           0, 0),
              "a forged log line: '%s'\nlog:\n%s", *l, t);
  cr_assert_null(strstr(t, "\npoolshim: error: forged"), "%s", t);
  /* The stats file: the label as the Prometheus text format escapes it. */
  g_autofree char *s = ops_read_file(stats);
  g_autofree char *want = g_strdup_printf("poolshim_borrowed_total{pid=\"%lld\",pool=\"%s@%s:%s/"
                                          "pst_nl\\npoolshim: error: forged \\\"q\"} 3",
                                          report_int(r.out, "PID"), pst_env("PS_TEST_USER"),
                                          pst_env("PS_TEST_HOST"), pst_env("PS_TEST_PORT"));
  cr_assert_eq(pst_count_lines_with(s, want), 1, "no line %s in:\n%s", want, s);
  g_auto(GStrv) slines = g_strsplit(s, "\n", -1);
  for (char **l = slines; *l; l++)
    cr_assert(!**l || **l == '#' || g_str_has_prefix(*l, "poolshim_"), "a forged sample: '%s'",
              *l);
  pst_run_clear(&r);
  pst_exec(admin, "DROP DATABASE `%s`", db);
  ops_rm_tree(tmp);
}
