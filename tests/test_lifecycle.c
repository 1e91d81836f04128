/* Lifecycle misuse that must behave exactly as without the shim: a caller-owned handle
 * that goes out of scope connected, a caller-owned handle closed twice, an open
 * transaction whose connection cannot be reset, and a client library the shim does not
 * support. The probe (tests/leakprobe) runs with and without the shim where the real
 * library's behaviour is the reference. */
#include <errmsg.h>
#include <mysqld_error.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

static void
setup(void)
{
  setenv("POOLSHIM_RESET_TIMEOUT", "1s", 1);
  setenv("POOLSHIM_POOL_SIZE", "2", 1);
  setenv("POOLSHIM_TIMEOUT", "1s", 1);
}

TestSuite(lifecycle, .init = setup, .timeout = 60);

static PstRun
probe(const char *scenario, gboolean shim, const char *const *extra)
{
  const char *argv[] = {pst_env("PST_LEAKPROBE"), scenario, NULL};
  GPtrArray *env = g_ptr_array_new();
  /* A test hook (POOLSHIM_TEST_*) is only in the test build of the library. */
  gboolean hook = FALSE;
  for (const char *const *e = extra; e && *e; e += 2)
    hook |= g_str_has_prefix(*e, "POOLSHIM_TEST_");
  g_ptr_array_add(env, "LD_PRELOAD");
  g_ptr_array_add(env, shim ? (gpointer)pst_env(hook ? "PST_LIB_TEST" : "PST_LIB") : NULL);
  /* Only what the scenario asks for: not the test process's own settings. */
  static const char *const ours[] = {"POOLSHIM_RESET_TIMEOUT", "POOLSHIM_POOL_SIZE",
                                     "POOLSHIM_TIMEOUT", NULL};
  for (const char *const *n = ours; *n; n++) {
    g_ptr_array_add(env, (gpointer)*n);
    g_ptr_array_add(env, NULL);
  }
  for (const char *const *e = extra; e && *e; e++)
    g_ptr_array_add(env, (gpointer)*e);
  g_ptr_array_add(env, NULL);
  PstRun r = pst_run(argv, (const char *const *)env->pdata);
  g_ptr_array_free(env, TRUE);
  return r;
}

static void
assert_exited_ok(const PstRun *r, const char *what)
{
  cr_assert(WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0,
            "%s: the probe failed (status %d)\nstdout:\n%s\nstderr:\n%s", what, r->status,
            r->out, r->err);
}

static guint
count_lines(const char *text)
{
  guint n = 0;
  for (const char *c = text; c && *c; c++)
    n += *c == '\n';
  return n;
}

static char *
value(const PstRun *r, const char *name)
{
  char *v = pst_report_value(r->out, name);
  cr_assert_not_null(v, "no %s in the probe's report:\n%s", name, r->out);
  return v;
}

/* ---- a mysql_init(&local) handle that goes out of scope without mysql_close ---- */

Test(lifecycle, a_stack_handle_left_connected_then_reused_at_the_same_address)
{
  /* A pool of one: the second connect can only succeed if the leaked lease is let go. */
  const char *env[] = {"POOLSHIM_POOL_SIZE", "1", "POOLSHIM_TIMEOUT", "1s", NULL};
  PstRun real = probe("stack", FALSE, env), shim = probe("stack", TRUE, env);
  assert_exited_ok(&real, "without the shim");
  assert_exited_ok(&shim, "with the shim");
  const PstRun *runs[] = {&real, &shim};
  for (int i = 0; i < 2; i++) {
    const PstRun *r = runs[i];
    const char *who = i ? "with the shim" : "without the shim";
    g_autofree char *a1 = value(r, "first_addr"), *a2 = value(r, "second_addr");
    cr_assert_str_eq(a1, a2, "%s: the two handles are not at one address", who);
    g_autofree char *c1 = value(r, "first_connect"), *c2 = value(r, "second_connect");
    cr_assert_str_eq(c1, "ok", "%s: %s", who, c1);
    cr_assert_str_eq(c2, "ok", "%s: %s", who, c2);
    g_autofree char *s1 = value(r, "first_select"), *s2 = value(r, "second_select");
    cr_assert_str_eq(s1, "42");
    cr_assert_str_eq(s2, "42");
    g_autofree char *id1 = value(r, "first_id"), *id2 = value(r, "second_id");
    cr_assert_str_neq(id1, id2, "%s: the leaked connection was lent again", who);
    /* The leaked session lives on (its socket is simply lost), as without the shim. */
    g_autofree char *sees = value(r, "second_sees_first");
    cr_assert_str_eq(sees, "1", "%s: the first session is gone", who);
    g_autofree char *third = value(r, "third_id");
    cr_assert(g_ascii_strtoll(third, NULL, 10) > 0, "%s: the next connect failed: %s", who,
              third);
  }
  cr_assert_str_eq(real.err, "", "the real library says: %s", real.err);
  /* The shim: one warning naming the pool, the second handle's connection pooled. */
  g_autofree char *label = g_strdup_printf("%s@%s:%s/%s", pst_env("PS_TEST_USER"),
                                           pst_env("PS_TEST_HOST"), pst_env("PS_TEST_PORT"),
                                           pst_env("PS_TEST_DB"));
  cr_assert_eq(pst_count_lines_with(shim.err, "poolshim: "), 1, "stderr:\n%s", shim.err);
  cr_assert_eq(pst_count_lines_with(shim.err, "reused without mysql_close"), 1, "%s",
               shim.err);
  cr_assert(strstr(shim.err, label), "the warning does not name the pool: %s", shim.err);
  g_autofree char *id2 = value(&shim, "second_id"), *id3 = value(&shim, "third_id");
  cr_assert_str_eq(id2, id3, "the properly closed connection was not pooled");
  g_autofree char *st = value(&shim, "stats_end");
  cr_assert(g_str_has_prefix(st, "open 1 idle 1 lent 0 waiting 0 pools 1 "), "%s", st);
  pst_run_clear(&real);
  pst_run_clear(&shim);
}

/* ---- a caller-owned handle closed twice ---- */

/* The real library (Connector/C 3.3 as Debian ships it) tolerates a second mysql_close of
 * a mysql_init(&local) handle: the first close leaves the struct zeroed, and valgrind
 * finds no invalid access. (A second close of a mysql_init(NULL) handle is a use after
 * free in the real library: not tested.) The shim must be exactly as tolerant. */
Test(lifecycle, a_caller_owned_handle_closed_twice_as_without_the_shim)
{
  /* Under Valgrind, unless the probe is built with a sanitizer (scripts/test's sanitizer
   * passes): Valgrind cannot run those, and AddressSanitizer's own free() then catches a
   * double free instead. */
  const char *q[] = {pst_env("PST_LEAKPROBE"), "sanitizer", NULL};
  PstRun how = pst_run(q, NULL);
  g_autofree char *sanitizer = pst_report_value(how.out, "sanitizer");
  cr_assert_not_null(sanitizer, "%s %s", how.out, how.err);
  pst_run_clear(&how);
  gboolean under_valgrind = g_str_equal(sanitizer, "none");
  g_autofree char *valgrind = NULL;
  if (under_valgrind) {
    valgrind = g_find_program_in_path("valgrind");
    cr_assert_not_null(valgrind, "valgrind is not installed (scripts/test installs it)");
  } else {
    cr_log_info("the probe is built with a sanitizer (%s): not run under valgrind", sanitizer);
  }
  const char *vg_argv[] = {valgrind, "-q", "--error-exitcode=99", "--leak-check=no",
                           pst_env("PST_LEAKPROBE"), "double-close", NULL};
  const char *const *argv = under_valgrind ? vg_argv : vg_argv + 4;
  for (int shim = 0; shim < 2; shim++) {
    const char *env[] = {"LD_PRELOAD", shim ? pst_env("PST_LIB") : NULL,
                         "POOLSHIM_RESET_TIMEOUT", NULL, "POOLSHIM_POOL_SIZE", NULL,
                         "POOLSHIM_TIMEOUT", NULL, NULL};
    PstRun r = pst_run(argv, env);
    const char *who = shim ? "with the shim" : "without the shim";
    cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0,
              "%s: status %d (99: valgrind found errors)\n%s\n%s", who, r.status, r.out, r.err);
    cr_assert_eq(pst_count_lines_with(r.err, "=="), 0, "%s: valgrind:\n%s", who, r.err);
    cr_assert_eq(pst_count_lines_with(r.err, "poolshim: "), 0, "%s: %s", who, r.err);
    g_autofree char *c = pst_report_value(r.out, "connected_closed_twice");
    g_autofree char *u = pst_report_value(r.out, "unconnected_closed_twice");
    g_autofree char *f = pst_report_value(r.out, "failed_closed_twice");
    g_autofree char *fe = pst_report_value(r.out, "failed_errno");
    g_autofree char *after = pst_report_value(r.out, "after");
    cr_assert_str_eq(c, "ok", "%s:\n%s", who, r.out);
    cr_assert_str_eq(u, "ok", "%s:\n%s", who, r.out);
    cr_assert_str_eq(f, "ok", "%s:\n%s", who, r.out);
    cr_assert_str_eq(fe, "1045", "%s:\n%s", who, r.out);
    cr_assert_str_eq(after, "2", "%s: the process no longer works:\n%s", who, r.out);
    if (shim) {
      /* The connection closed first went back to the pool and served the last connect. */
      g_autofree char *st = pst_report_value(r.out, "stats_end");
      cr_assert(g_str_has_prefix(st, "open 1 idle 1 lent 0 waiting 0 "), "%s", st);
    }
    pst_run_clear(&r);
  }
}

/* ---- an open transaction when the reset fails ---- */

#define TABLE "pst_lifecycle_rows"

static void
make_table(void)
{
  pst_exec(pst_admin(),
           "CREATE TABLE IF NOT EXISTS %s." TABLE
           " (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(64) NOT NULL) ENGINE=InnoDB",
           pst_env("PS_TEST_DB"));
}

/* Rows with `tag`, seen by an independent connection that reads even uncommitted rows. */
static long long
rows_seen(const char *tag)
{
  MYSQL *o = pst_connect(pst_env("PS_TEST_ROOT_USER"), pst_env("PS_TEST_ROOT_PASSWORD"),
                         pst_env("PS_TEST_DB"));
  pst_exec(o, "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED");
  long long n = pst_scalar(o, "SELECT COUNT(*) FROM " TABLE " WHERE tag = '%s'", tag);
  mysql_close(o);
  return n;
}

static MYSQL *
connect_via(PstProxy *p)
{
  return pst_connect_via(p, 2, 2);
}

static char *
open_transaction(MYSQL *m, const char *variant)
{
  char *tag = g_strdup_printf("%s-%d-%" G_GINT64_FORMAT, variant, (int)getpid(),
                              g_get_real_time());
  pst_exec(m, "START TRANSACTION");
  pst_exec(m, "INSERT INTO " TABLE " (tag) VALUES ('%s')", tag);
  cr_assert_eq(rows_seen(tag), 1, "the uncommitted row is not visible to the observer");
  return tag;
}

/* POOLSHIM_RESET=always: the server stalls before the close: the ROLLBACK the close must
 * read times out, the connection is closed, not pooled, and the server rolls back when the
 * session ends. */
Test(lifecycle, an_open_transaction_is_rolled_back_when_its_rollback_times_out)
{
  setenv("POOLSHIM_RESET", "always", 1); /* read at the first connect, just below */
  make_table();
  PstProxy *p = pst_proxy_start();
  MYSQL *m = connect_via(p);
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  g_autofree char *tag = open_transaction(m, "stalled");
  poolshim_stats_t before;
  pst_stats(&before);
  pst_proxy_freeze(p);
  gint64 t0 = g_get_monotonic_time();
  mysql_close(m);
  gint64 took_ms = (g_get_monotonic_time() - t0) / 1000;
  cr_assert_lt(took_ms, 5000, "mysql_close took %" G_GINT64_FORMAT " ms", took_ms);
  poolshim_stats_t after;
  pst_stats(&after);
  cr_assert_eq(after.closed, before.closed + 1, "the connection was not closed");
  cr_assert_eq(after.idle, before.idle, "the connection went back to the pool");
  cr_assert_eq(after.lent, before.lent - 1);
  pst_proxy_thaw(p);
  pst_wait_thread_gone((unsigned long)id);
  cr_assert_eq(rows_seen(tag), 0, "the transaction was committed");
  MYSQL *n = connect_via(p);
  cr_assert_neq(pst_scalar(n, "SELECT CONNECTION_ID()"), id);
  cr_assert_eq(pst_scalar(n, "SELECT @@in_transaction"), 0);
  mysql_close(n);
  pst_proxy_stop(p);
}

/* POOLSHIM_RESET=auto: a transaction left open costs a ROLLBACK sent at the close without
 * waiting; the server stalls then: the close still returns at once, and the next borrower
 * of the session, after the thaw, finds the transaction rolled back, never committed. */
Test(lifecycle, an_open_transaction_is_rolled_back_by_a_rollback_sent_through_a_stall)
{
  make_table();
  PstProxy *p = pst_proxy_start();
  MYSQL *m = connect_via(p);
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  g_autofree char *tag = open_transaction(m, "stalled-auto");
  poolshim_stats_t before;
  pst_stats(&before);
  pst_proxy_freeze(p);
  gint64 t0 = g_get_monotonic_time();
  mysql_close(m);
  gint64 took_ms = (g_get_monotonic_time() - t0) / 1000;
  cr_assert_lt(took_ms, 1000, "mysql_close took %" G_GINT64_FORMAT " ms", took_ms);
  poolshim_stats_t after;
  pst_stats(&after);
  cr_assert_eq(after.idle, before.idle + 1, "the session did not go back to the pool");
  cr_assert_eq(after.closed, before.closed);
  pst_proxy_thaw(p);
  /* The ROLLBACK reaches the server with the thaw (bounded wait: liveness, not speed). */
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  while (rows_seen(tag) != 0 && g_get_monotonic_time() < deadline)
    g_usleep(20000);
  cr_assert_eq(rows_seen(tag), 0, "the transaction is still open");
  MYSQL *n = connect_via(p);
  cr_assert_eq(pst_scalar(n, "SELECT @@in_transaction"), 0);
  mysql_close(n);
  pst_proxy_stop(p);
  MYSQL *a = pst_admin();
  cr_assert_eq(pst_scalar(a, "SELECT COUNT(*) FROM poolshim_test." TABLE " WHERE tag = '%s'", tag),
               0, "the transaction was committed (session %lld)", id);
}

/* The same, but the server's connections are cut instead of the server recovering: it
 * never receives the ROLLBACK, and still nothing is committed. */
Test(lifecycle, an_open_transaction_is_rolled_back_when_the_connection_is_cut)
{
  make_table();
  PstProxy *p = pst_proxy_start();
  MYSQL *m = connect_via(p);
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  g_autofree char *tag = open_transaction(m, "cut");
  pst_proxy_freeze(p);
  mysql_close(m);
  cr_assert_geq(pst_proxy_cut(p), 1);
  pst_proxy_thaw(p);
  pst_wait_thread_gone((unsigned long)id);
  cr_assert_eq(rows_seen(tag), 0, "the transaction was committed");
  MYSQL *n = connect_via(p);
  cr_assert_neq(pst_scalar(n, "SELECT CONNECTION_ID()"), id);
  mysql_close(n);
  pst_proxy_stop(p);
}

/* The session is killed between the application's close and the next lend: the pending
 * reset cannot be read (or the connection is found dead), the borrower gets a fresh
 * connection without an error, and the transaction was rolled back, never committed. */
Test(lifecycle, an_open_transaction_is_rolled_back_when_the_session_is_killed_after_close)
{
  make_table();
  MYSQL *m = pst_connect_app();
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  g_autofree char *tag = open_transaction(m, "killed");
  mysql_close(m);
  pst_exec(pst_admin(), "KILL %lld", id);
  pst_wait_thread_gone((unsigned long)id);
  cr_assert_eq(rows_seen(tag), 0, "the transaction was committed");
  poolshim_stats_t before;
  pst_stats(&before);
  MYSQL *n = pst_connect_app();
  cr_assert_neq(pst_scalar(n, "SELECT CONNECTION_ID()"), id,
                "the killed connection was lent again");
  cr_assert_eq(pst_scalar(n, "SELECT COUNT(*) FROM " TABLE " WHERE tag = '%s'", tag), 0);
  cr_assert_eq(pst_scalar(n, "SELECT @@in_transaction"), 0);
  poolshim_stats_t after;
  pst_stats(&after);
  cr_assert_eq(after.closed, before.closed + 1, "the dead connection was not discarded");
  mysql_close(n);
}

/* The server stalls right after the close. Under auto the close sends ROLLBACK without
 * waiting for its reply (the next lend reads it), so the stall may hold the ROLLBACK in
 * the proxy: the row can still be seen uncommitted for a while. Whatever got through, the
 * next connect either reuses a clean session (the reply arrived) or ends with the
 * library's own error, the connection is then closed, and the row is never committed. */
Test(lifecycle, an_open_transaction_is_rolled_back_when_the_server_stalls_after_close)
{
  make_table();
  PstProxy *p = pst_proxy_start();
  MYSQL *m = connect_via(p);
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  g_autofree char *tag = open_transaction(m, "after-close");
  mysql_close(m);
  pst_proxy_freeze(p);
  unsigned int err = 0;
  char msg[512] = "";
  gint64 t0 = g_get_monotonic_time();
  MYSQL *n = pst_try_connect_to("127.0.0.1", pst_proxy_port(p), 2, 2, &err, msg, sizeof msg);
  gint64 took_ms = (g_get_monotonic_time() - t0) / 1000;
  cr_assert_lt(took_ms, 10000, "the connect took %" G_GINT64_FORMAT " ms", took_ms);
  if (n) {
    /* The reset's replies had arrived before the stall: a clean session, lent again. */
    cr_log_info("the reset was answered before the stall: the session was reused");
    /* mysql_thread_id: no round trip, the server is stalled. */
    cr_assert_eq((long long)mysql_thread_id(n), id, "not the pool's only idle connection");
    mysql_close(n);
  } else {
    cr_log_info("the reset went unanswered: the connect failed after %" G_GINT64_FORMAT " ms",
                took_ms);
    cr_assert_eq(err, CR_SERVER_LOST, "%u %s", err, msg);
  }
  pst_proxy_thaw(p);
  MYSQL *again = connect_via(p);
  if (!n)
    cr_assert_neq(pst_scalar(again, "SELECT CONNECTION_ID()"), id,
                  "the connection whose reset failed was pooled");
  cr_assert_eq(pst_scalar(again, "SELECT @@in_transaction"), 0);
  cr_assert_eq(pst_scalar(again, "SELECT COUNT(*) FROM " TABLE " WHERE tag = '%s'", tag), 0);
  mysql_close(again);
  if (!n)
    pst_wait_thread_gone((unsigned long)id); /* the server rolls back as the session ends */
  cr_assert_eq(rows_seen(tag), 0, "the transaction was committed");
  pst_proxy_stop(p);
}


/* ---- an unsupported client library ---- */

Test(lifecycle, an_unsupported_library_gets_one_warning_and_pure_pass_through)
{
  const char *env[] = {"POOLSHIM_TEST_CLIENT_VERSION", "99999", "POOLSHIM_LEAK_WARN", "300ms",
                       NULL};
  PstRun shim = probe("passthrough", TRUE, env);
  PstRun real = probe("passthrough", FALSE, env);
  assert_exited_ok(&shim, "with the shim");
  assert_exited_ok(&real, "without the shim");
  /* Exactly one line, even with POOLSHIM_LEAK_WARN set and a connection held long. */
  cr_assert_eq(count_lines(shim.err), 1, "stderr:\n%s", shim.err);
  cr_assert(g_str_has_prefix(shim.err, "poolshim: warning: "), "%s", shim.err);
  cr_assert(strstr(shim.err, "unsupported client library version"), "%s", shim.err);
  cr_assert(strstr(shim.err, "passes through"), "%s", shim.err);
  cr_assert_str_eq(real.err, "", "%s", real.err);
  const PstRun *runs[] = {&real, &shim};
  for (int i = 0; i < 2; i++) {
    const PstRun *r = runs[i];
    const char *who = i ? "with the shim" : "without the shim";
    g_autofree char *failed = value(r, "failed");
    cr_assert_str_eq(failed, "0", "%s:\n%s", who, r->out);
    /* Every connect was a server thread of its own. */
    GHashTable *ids = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    guint n = 0;
    g_auto(GStrv) lines = g_strsplit(r->out, "\n", -1);
    for (char **l = lines; *l; l++) {
      const char *v = g_str_has_prefix(*l, "id=")        ? *l + 3
                      : g_str_has_prefix(*l, "held_id=") ? *l + 8
                                                         : NULL;
      if (!v)
        continue;
      cr_assert(g_ascii_strtoll(v, NULL, 10) > 0, "%s: %s", who, *l);
      cr_assert(g_hash_table_add(ids, g_strdup(v)), "%s: connection %s served twice:\n%s",
                who, v, r->out);
      n++;
    }
    cr_assert_eq(n, 16, "%s:\n%s", who, r->out);
    g_hash_table_unref(ids);
  }
  /* The shim pooled nothing: its counters never moved. */
  g_autofree char *st = value(&shim, "stats_end");
  cr_assert(g_str_has_prefix(st, "open 0 idle 0 lent 0 waiting 0 pools 0 borrowed 0 "), "%s",
            st);
  pst_run_clear(&shim);
  pst_run_clear(&real);

  /* Control: the same probe on the supported library is pooled. */
  PstRun pooled = probe("passthrough", TRUE, NULL);
  assert_exited_ok(&pooled, "pooled");
  g_autofree char *pst = value(&pooled, "stats_end");
  cr_assert_null(strstr(pst, " pools 0 "), "%s", pst);
  pst_run_clear(&pooled);
}
