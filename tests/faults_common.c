/* faults_common.c: the load of the fault tests (test_faults_server, test_faults_kill):
 * threads that connect, query and close in a loop through the pool, the log of every
 * request and its judging, the FIGURES line, the server's globals a test changes, and the
 * burst that proves the pool holds no dead connection. It makes no fault itself. */
#include <mysqld_error.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "faults_common.h"

FaultsState S;

guint32
rnd(guint32 *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

static void
fail(Req *r, Stage stage, MYSQL *m)
{
  r->stage = (guint8)stage;
  unsigned int e = mysql_errno(m);
  r->err = (guint16)MIN(e, ERRNO_SLOTS - 1);
  if (r->err == 0)
    r->err = ERRNO_SLOTS - 1; /* a failure without an error number is counted as such */
  if (stage == STAGE_CONNECT && g_atomic_int_compare_and_exchange(&S.connect_err_taken, 0, 1))
    g_snprintf(S.connect_err_msg, sizeof S.connect_err_msg, "%u %s (after %" G_GINT64_FORMAT
               " ms)", e, mysql_error(m), (now_us() - r->start_us) / 1000);
  g_atomic_int_inc(&S.errs[r->err]);
  if (e == ER_CON_COUNT_ERROR) {
    /* The server's own "Too many connections", never the pool's timeout message. */
    const char *msg = mysql_error(m);
    if (strstr(msg, "poolshim") || !strstr(msg, "Too many connections")) {
      g_atomic_int_inc(&S.bad_1040);
      if (g_atomic_int_compare_and_exchange(&S.bad_1040_taken, 0, 1))
        g_strlcpy(S.bad_1040_msg, msg, sizeof S.bad_1040_msg);
    }
  }
}

static void
one_request(const Lane *lane, Req *r, gboolean abandon)
{
  r->lane = (guint8)(lane->lane + abandon);
  r->start_us = now_us();
  MYSQL *m = mysql_init(NULL);
  unsigned int connect_timeout = 5;
  mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &connect_timeout);
  if (lane->tls_ca) {
    my_bool on = 1;
    mysql_options(m, MYSQL_OPT_SSL_CA, lane->tls_ca);
    mysql_options(m, MYSQL_OPT_SSL_ENFORCE, &on);
    mysql_options(m, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &on);
  }
  MYSQL *ok = mysql_real_connect(m, S.host, lane->user, lane->password, lane->db, S.port, NULL, 0);
  r->connected_us = now_us();
  if (!ok) {
    fail(r, STAGE_CONNECT, m);
  } else {
    r->conn_id = (guint32)mysql_thread_id(m);
    if (lane->commit) {
      if (mysql_query(m, "START TRANSACTION") ||
          mysql_query(m, abandon ? S.abandon_sql : S.insert_sql))
        fail(r, STAGE_QUERY, m);
      else if (!abandon && mysql_query(m, "COMMIT"))
        fail(r, STAGE_COMMIT, m); /* the commit's outcome is unknown */
    } else if (mysql_query(m, "SELECT CONNECTION_ID()")) {
      fail(r, STAGE_QUERY, m);
    } else {
      MYSQL_RES *res = mysql_store_result(m);
      MYSQL_ROW row = res ? mysql_fetch_row(res) : NULL;
      if (!row) {
        fail(r, STAGE_QUERY, m);
      } else if (g_ascii_strtoull(row[0], NULL, 10) != r->conn_id) {
        g_atomic_int_inc(&S.id_mismatch);
      }
      if (res)
        mysql_free_result(res);
    }
  }
  mysql_close(m);
  r->end_us = now_us();
}

static gpointer
worker(gpointer data)
{
  Worker *w = data;
  const Lane *lane = w->lane;
  int done = 0;
  for (;;) {
    if (lane->bursts > 0) {
      if (done == lane->bursts * lane->burst_len)
        break;
      if (done > 0 && done % lane->burst_len == 0)
        sleep_ms(lane->pause_ms + (int)(rnd(&w->rng) % (guint32)(2 * lane->pause_jitter_ms + 1)) -
                 lane->pause_jitter_ms);
    } else if (g_atomic_int_get(&S.stop)) {
      break;
    }
    gint idx = g_atomic_int_add(&S.nlog, 1);
    if (idx >= LOG_CAP)
      break;
    g_atomic_int_inc(&w->c.attempted);
    Req *r = &S.log[idx];
    one_request(lane, r, lane->abandon_every && done % lane->abandon_every == 0);
    done++;
    if (r->stage == STAGE_OK)
      g_atomic_int_inc(&w->c.succeeded);
    else
      g_atomic_int_inc(&w->c.failed);
    if (r->stage != STAGE_OK && lane->fail_pause_us)
      g_usleep((gulong)lane->fail_pause_us);
    if (lane->think_us)
      g_usleep(rnd(&w->rng) % (guint32)lane->think_us);
  }
  g_atomic_int_inc(&S.finished);
  return NULL;
}

static void
setup(void)
{
  S.host = pst_env("PS_TEST_HOST");
  S.user = pst_env("PS_TEST_USER");
  S.password = pst_env("PS_TEST_PASSWORD");
  S.db = pst_env("PS_TEST_DB");
  S.root_user = pst_env("PS_TEST_ROOT_USER");
  S.root_password = pst_env("PS_TEST_ROOT_PASSWORD");
  S.port = pst_port();
  S.log = g_new0(Req, LOG_CAP);
}

void
start_workers(const Lane *lane, int n)
{
  cr_assert_leq(S.nworkers + n, MAX_WORKERS);
  for (int i = 0; i < n; i++) {
    Worker *w = &S.workers[S.nworkers++];
    w->lane = lane;
    w->rng = 0x9e3779b9u ^ (guint32)(S.nworkers * 7919);
    w->thread = g_thread_new("load", worker, w);
  }
}

/* Stops the load and joins every thread; a thread still running `grace_s` later is hung. */
void
stop_and_join(int grace_s)
{
  g_atomic_int_set(&S.stop, 1);
  gint64 deadline = now_us() + grace_s * G_USEC_PER_SEC;
  while (g_atomic_int_get(&S.finished) < S.nworkers && now_us() < deadline)
    sleep_ms(5);
  int finished = g_atomic_int_get(&S.finished);
  cr_assert_eq(finished, S.nworkers, "%d of %d threads still inside a request %d s after the stop",
               S.nworkers - finished, S.nworkers, grace_s);
  for (int i = 0; i < S.nworkers; i++) {
    g_thread_join(S.workers[i].thread);
    S.workers[i].joined = TRUE;
  }
  cr_assert_lt(S.nlog, LOG_CAP, "the request log is full: the load outran its bound");
}

/* Requests begun so far by the workers of `lane` (-1: all); atomics only, so it may run
 * while they do. */
int
begun(int lane)
{
  int n = 0;
  for (int i = 0; i < S.nworkers; i++)
    if (lane < 0 || S.workers[i].lane->lane == lane)
      n += g_atomic_int_get(&S.workers[i].c.attempted);
  return n;
}

/* Keeps the load running for `min_ms`, then on until the workers of `lane` have begun
 * `at_least` requests since the call (at most 10 s more). A window that is judged by a
 * minimum count holds it whatever the machine's speed: under a sanitizer, with the other
 * test chains on the same two cores, 1.5 s once held 20 TLS requests. A request counted
 * here began after the call, so after the timestamp the caller took just before it. */
void
run_on(int lane, int min_ms, int at_least)
{
  int mark = begun(lane);
  sleep_ms(min_ms);
  for (int i = 0; i < 100 && begun(lane) - mark < at_least; i++)
    sleep_ms(100);
}

/* ---- judging the log ---- */

char *
errs_text(const gint *hist)
{
  GString *s = g_string_new(NULL);
  for (int e = 0; e < ERRNO_SLOTS; e++) {
    int n = g_atomic_int_get(&hist[e]);
    if (n)
      g_string_append_printf(s, "%s%d:%d", s->len ? "," : "", e, n);
  }
  return g_string_free(s, FALSE);
}

/* Requests of `lane` (-1: any) that started in [from, to) and, with `ended`, also ended
 * before `to`. */
void
tally_between(Tally *t, int lane, gint64 from, gint64 to, gboolean ended)
{
  memset(t, 0, sizeof *t);
  t->hist = g_new0(gint, ERRNO_SLOTS);
  int n = MIN(S.nlog, LOG_CAP);
  for (int i = 0; i < n; i++) {
    const Req *r = &S.log[i];
    if ((lane >= 0 && r->lane != lane) || r->start_us < from || r->start_us >= to ||
        (ended && r->end_us >= to))
      continue;
    t->attempted++;
    if (r->stage == STAGE_OK) {
      t->ok++;
      continue;
    }
    t->failed++;
    t->hist[r->err]++;
    t->connect_failed += r->stage == STAGE_CONNECT;
    t->commit_failed += r->stage == STAGE_COMMIT;
  }
}

void
tally(Tally *t, int lane, gint64 from, gint64 to)
{
  tally_between(t, lane, from, to, FALSE);
}

void
tally_clear(Tally *t)
{
  g_free(t->hist);
  t->hist = NULL;
}

/* Fails the test unless every request of the window succeeded (and there were some). */
void
assert_all_ok(int lane, gint64 from, gint64 to, int at_least, const char *what)
{
  Tally t;
  tally(&t, lane, from, to);
  g_autofree char *errs = errs_text(t.hist);
  cr_assert_eq(t.failed, 0, "%s: %d of %d requests failed (%s)", what, t.failed, t.attempted,
               errs);
  cr_assert_geq(t.attempted, at_least, "%s: only %d requests", what, t.attempted);
  tally_clear(&t);
}

/* Only these error numbers in the window. */
void
assert_errors_within(int lane, gint64 from, gint64 to, const unsigned *allowed, int nallowed,
                     const char *what)
{
  Tally t;
  tally(&t, lane, from, to);
  for (int e = 0; e < ERRNO_SLOTS; e++) {
    if (!t.hist[e])
      continue;
    gboolean ok = FALSE;
    for (int i = 0; i < nallowed; i++)
      ok = ok || allowed[i] == (unsigned)e;
    g_autofree char *errs = errs_text(t.hist);
    cr_assert(ok, "%s: error %d is not one a fault of this kind explains (%s)", what, e, errs);
  }
  tally_clear(&t);
}

/* The FIGURES line, from the per-thread counters; the totals must add up. */
void
figures(const char *scenario, long long opened, const char *lost, const char *extra)
{
  int attempted = 0, succeeded = 0, failed = 0;
  for (int i = 0; i < S.nworkers; i++) {
    attempted += g_atomic_int_get(&S.workers[i].c.attempted);
    succeeded += g_atomic_int_get(&S.workers[i].c.succeeded);
    failed += g_atomic_int_get(&S.workers[i].c.failed);
  }
  g_autofree char *errs = errs_text(S.errs);
  /* The slowest request (connect, statements, close): a connect that waited long for one of
   * the pool's connections shows here before it shows as a POOLSHIM_TIMEOUT. */
  gint64 slowest_us = 0, connect_us = 0;
  for (int i = 0; i < MIN(S.nlog, LOG_CAP); i++) {
    slowest_us = MAX(slowest_us, S.log[i].end_us - S.log[i].start_us);
    if (S.log[i].connected_us)
      connect_us = MAX(connect_us, S.log[i].connected_us - S.log[i].start_us);
  }
  fprintf(stderr,
          "FIGURES %s: attempted=%d succeeded=%d failed=%d (%s) opened=%lld lost=%s "
          "slowest=%" G_GINT64_FORMAT "ms (connect %" G_GINT64_FORMAT "ms)%s%s\n",
          scenario, attempted, succeeded, failed, errs, opened, lost, slowest_us / 1000,
          connect_us / 1000, extra ? " " : "", extra ? extra : "");
  fflush(stderr);
  cr_assert_eq(attempted, succeeded + failed, "counts do not add up");
  cr_assert_eq(attempted, MIN(S.nlog, LOG_CAP), "a request was counted but not logged");
  cr_assert_eq(g_atomic_int_get(&S.id_mismatch), 0,
               "%d queries ran on another server thread than the handle's", S.id_mismatch);
}

/* ---- server-side facts and restoring what a test changes ---- */

const char *
app_user(void)
{
  return S.user;
}

long long
app_threads_on(const char *db)
{
  return pst_scalar(pst_admin(),
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '%s' AND "
                    "DB = '%s'",
                    app_user(), db);
}

/* Global variables a test changes are written down first (in the server's directory), so
 * that the next test puts them back even if this one was killed before its .fini. */
static char *
saved_path(void)
{
  return g_build_filename(pst_env("PS_TEST_SERVER_DIR"), "test_faults.saved-globals", NULL);
}

void
save_global(const char *name)
{
  g_autofree char *path = saved_path();
  g_autofree char *old = NULL;
  g_file_get_contents(path, &old, NULL, NULL);
  g_autofree char *needle = g_strdup_printf("%s ", name);
  g_autofree char *inner = g_strdup_printf("\n%s ", name);
  if (old && (g_str_has_prefix(old, needle) || strstr(old, inner)))
    return; /* the original value is already written down */
  g_autofree char *value = pst_scalar_str(pst_admin(), "SELECT @@GLOBAL.%s", name);
  cr_assert_not_null(value);
  g_autofree char *all = g_strdup_printf("%s%s %s\n", old ? old : "", name, value);
  cr_assert(g_file_set_contents(path, all, -1, NULL), "cannot write %s", path);
}

void
restore_globals(void)
{
  g_autofree char *path = saved_path();
  g_autofree char *text = NULL;
  if (!g_file_get_contents(path, &text, NULL, NULL))
    return;
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  for (char **l = lines; *l; l++) {
    g_auto(GStrv) kv = g_strsplit(*l, " ", 2);
    if (kv[0] && kv[1] && *kv[0])
      pst_exec(pst_admin(), "SET GLOBAL %s = %s", kv[0], kv[1]);
  }
  unlink(path);
}

void
pool_of_eight(void)
{
  setenv("POOLSHIM_POOL_SIZE", "8", 1);
  setenv("POOLSHIM_TIMEOUT", "10s", 1); /* a wait never outlasts the test */
}

/* Every test starts here: the environment is set, the admin connects (through the pool, a
 * key of its own) and whatever a killed earlier test left changed is put back. */
long long
begin(void)
{
  setup();
  pst_admin();
  restore_globals();
  return pst_status("Connections");
}

/* ---- after the load: POOL_SIZE concurrent borrowers, all served by live connections ---- */

static struct {
  const char *tls_ca; /* the key of the load's pool: the same options */
  gint holding, failed, release;
  guint32 ids[POOL_SIZE];
  gint errs[POOL_SIZE];
} B;

static gpointer
burst_worker(gpointer data)
{
  int i = GPOINTER_TO_INT(data);
  MYSQL *m = mysql_init(NULL);
  if (B.tls_ca) {
    my_bool on = 1;
    mysql_options(m, MYSQL_OPT_SSL_CA, B.tls_ca);
    mysql_options(m, MYSQL_OPT_SSL_ENFORCE, &on);
    mysql_options(m, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &on);
  }
  if (!mysql_real_connect(m, S.host, S.user, S.password, S.db, S.port, NULL, 0) ||
      mysql_query(m, "SELECT CONNECTION_ID()")) {
    B.errs[i] = (gint)mysql_errno(m);
    g_atomic_int_inc(&B.failed);
    mysql_close(m);
    return NULL;
  }
  MYSQL_RES *res = mysql_store_result(m);
  MYSQL_ROW row = res ? mysql_fetch_row(res) : NULL;
  B.ids[i] = row ? (guint32)g_ascii_strtoull(row[0], NULL, 10) : 0;
  if (res)
    mysql_free_result(res);
  g_atomic_int_inc(&B.holding);
  for (int w = 0; w < 10000 && !g_atomic_int_get(&B.release); w++)
    sleep_ms(1);
  mysql_close(m);
  return NULL;
}

/* The pool holds no dead connection: POOL_SIZE borrowers at once all get a live one, each a
 * different server thread the server lists, and the app has no more than POOL_SIZE. */
void
check_burst(const char *when, const char *tls_ca)
{
  memset(&B, 0, sizeof B);
  B.tls_ca = tls_ca;
  GThread *t[POOL_SIZE];
  for (int i = 0; i < POOL_SIZE; i++)
    t[i] = g_thread_new("burst", burst_worker, GINT_TO_POINTER(i));
  for (int w = 0; w < 1000 && g_atomic_int_get(&B.holding) + g_atomic_int_get(&B.failed) <
                                   POOL_SIZE; w++)
    sleep_ms(10);
  int failed = g_atomic_int_get(&B.failed), holding = g_atomic_int_get(&B.holding);
  long long listed = -1, threads = -1;
  GString *ids = g_string_new(NULL);
  if (holding == POOL_SIZE) {
    for (int i = 0; i < POOL_SIZE; i++)
      g_string_append_printf(ids, "%s%u", i ? "," : "", B.ids[i]);
    listed = pst_scalar(pst_admin(),
                        "SELECT COUNT(DISTINCT ID) FROM information_schema.PROCESSLIST WHERE ID IN "
                        "(%s) AND USER = '%s'",
                        ids->str, app_user());
    threads = app_threads_on(S.db);
  }
  g_atomic_int_set(&B.release, 1);
  for (int i = 0; i < POOL_SIZE; i++)
    g_thread_join(t[i]);
  cr_assert_eq(failed, 0, "%s: %d of %d concurrent borrowers failed (first error %d)", when,
               failed, POOL_SIZE, B.errs[0] ? B.errs[0] : B.errs[POOL_SIZE - 1]);
  cr_assert_eq(holding, POOL_SIZE, "%s: only %d of %d borrowers were served within 10 s", when,
               holding, POOL_SIZE);
  cr_assert_eq(listed, POOL_SIZE, "%s: the borrowers' server threads (%s): %lld listed", when,
               ids->str, listed);
  cr_assert_leq(threads, POOL_SIZE, "%s: the app has %lld server threads", when, threads);
  g_string_free(ids, TRUE);
}

Lane
select_lane(int lane, const char *db)
{
  return (Lane){.lane = lane, .user = S.user, .password = S.password, .db = db,
                .think_us = 3000};
}

/* Stops the load's threads and joins them, so that the process never exits under them:
 * the first step of every test's .fini, also after a test failed half-way. Never fails. */
void
finish_load(void)
{
  g_atomic_int_set(&S.stop, 1);
  for (int i = 0; i < 1500 && g_atomic_int_get(&S.finished) < S.nworkers; i++)
    sleep_ms(10);
  if (g_atomic_int_get(&S.finished) == S.nworkers)
    for (int i = 0; i < S.nworkers; i++)
      if (!S.workers[i].joined) {
        g_thread_join(S.workers[i].thread);
        S.workers[i].joined = TRUE;
      }
}
