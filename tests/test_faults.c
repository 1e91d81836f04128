/* Faults under load: 32 threads connect, query and close in a loop on a pool of 8 while the
 * server restarts, root KILLs pooled connections, the server's wait_timeout drops idle
 * ones, another client takes every free connection slot, or rows are committed through
 * kills and a restart. Every request's outcome is logged and judged afterwards against the
 * moments of the faults; the server's own facts (Connections, PROCESSLIST, the rows of t)
 * back every claim. Each test prints one FIGURES line on stderr with its totals. */
#include <errmsg.h>
#include <errno.h>
#include <mysqld_error.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

/* A hang detector: a scenario takes 5-10 s, and its windows stretch on a slow machine (the
 * KILL phase up to 20 s, a judged window up to 10 s more). */
TestSuite(faults, .timeout = 60);

#define POOL_SIZE 8
#define THREADS 32
#define MAX_WORKERS 64
#define ERRNO_SLOTS 5000 /* server errors < 5000, client errors 2000-2999 */
#define LOG_CAP 400000   /* requests per test: a bound on count as well as on time */
#define KILL_CAP 20000

static gint64
now_us(void)
{
  return g_get_monotonic_time();
}

static void
sleep_ms(int ms)
{
  g_usleep((gulong)ms * 1000);
}

/* ---- one request: connect, query, close ---- */

typedef enum { STAGE_OK, STAGE_CONNECT, STAGE_QUERY, STAGE_COMMIT } Stage;

typedef struct {
  gint64 start_us, end_us;
  guint32 conn_id; /* the server thread the handle was lent (0: the connect failed) */
  guint16 err;     /* mysql_errno, 0 on success */
  guint8 stage;    /* where it failed */
  guint8 lane;
} Req;

typedef struct {
  int lane;
  const char *user, *password, *db;
  gboolean commit;   /* START TRANSACTION; INSERT; COMMIT instead of SELECT CONNECTION_ID() */
  int abandon_every; /* commit lanes: every n-th transaction is left open at close instead
                      * (logged as lane + 1): the pool must roll it back, never commit it */
  const char *tls_ca; /* TLS, verified against this CA */
  int think_us;      /* a random pause of 0..think_us after each request */
  int fail_pause_us; /* and this one after a failed request */
  /* bursts > 0: `bursts` bursts of `burst_len` requests with pauses between, then stop */
  int bursts, burst_len, pause_ms, pause_jitter_ms;
} Lane;

/* One per thread, updated with atomics; the FIGURES totals are their sums. */
typedef struct {
  gint attempted, succeeded, failed;
} Counters;

typedef struct {
  const Lane *lane;
  Counters c;
  guint32 rng;
  GThread *thread;
  gboolean joined;
} Worker;

static struct {
  /* read once in the main thread: nothing in the load's threads may fail the test */
  const char *host, *user, *password, *db, *root_user, *root_password;
  unsigned int port;
  gint stop;
  gint finished;
  Worker workers[MAX_WORKERS];
  int nworkers;
  Req *log;
  gint nlog;
  gint errs[ERRNO_SLOTS];
  gint id_mismatch;        /* SELECT CONNECTION_ID() differed from mysql_thread_id() */
  gint bad_1040;           /* a 1040 whose message is not the server's */
  gint bad_1040_taken;
  char bad_1040_msg[512];
  char insert_sql[128];
  char abandon_sql[128];
} S;

static guint32
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
  if (!mysql_real_connect(m, S.host, lane->user, lane->password, lane->db, S.port, NULL, 0)) {
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

static void
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
static void
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
static int
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
static void
run_on(int lane, int min_ms, int at_least)
{
  int mark = begun(lane);
  sleep_ms(min_ms);
  for (int i = 0; i < 100 && begun(lane) - mark < at_least; i++)
    sleep_ms(100);
}

/* ---- judging the log ---- */

typedef struct {
  int attempted, ok, failed, connect_failed, commit_failed;
  gint *hist; /* errno -> count */
} Tally;

static char *
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
static void
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

static void
tally(Tally *t, int lane, gint64 from, gint64 to)
{
  tally_between(t, lane, from, to, FALSE);
}

static void
tally_clear(Tally *t)
{
  g_free(t->hist);
  t->hist = NULL;
}

/* Fails the test unless every request of the window succeeded (and there were some). */
static void
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
static void
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
static void
figures(const char *scenario, long long opened, const char *lost, const char *extra)
{
  int attempted = 0, succeeded = 0, failed = 0;
  for (int i = 0; i < S.nworkers; i++) {
    attempted += g_atomic_int_get(&S.workers[i].c.attempted);
    succeeded += g_atomic_int_get(&S.workers[i].c.succeeded);
    failed += g_atomic_int_get(&S.workers[i].c.failed);
  }
  g_autofree char *errs = errs_text(S.errs);
  fprintf(stderr, "FIGURES %s: attempted=%d succeeded=%d failed=%d (%s) opened=%lld lost=%s%s%s\n",
          scenario, attempted, succeeded, failed, errs, opened, lost, extra ? " " : "",
          extra ? extra : "");
  fflush(stderr);
  cr_assert_eq(attempted, succeeded + failed, "counts do not add up");
  cr_assert_eq(attempted, MIN(S.nlog, LOG_CAP), "a request was counted but not logged");
  cr_assert_eq(g_atomic_int_get(&S.id_mismatch), 0,
               "%d queries ran on another server thread than the handle's", S.id_mismatch);
}

/* ---- server-side facts and restoring what a test changes ---- */

static const char *
app_user(void)
{
  return S.user;
}

static long long
app_threads_on(const char *db)
{
  return pst_scalar(pst_admin(),
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '%s' AND "
                    "DB = '%s'",
                    app_user(), db);
}

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

/* Global variables a test changes are written down first (in the server's directory), so
 * that the next test puts them back even if this one was killed before its .fini. */
static char *
saved_path(void)
{
  return g_build_filename(pst_env("PS_TEST_SERVER_DIR"), "test_faults.saved-globals", NULL);
}

static void
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

static void
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

static void
pool_of_eight(void)
{
  setenv("POOLSHIM_POOL_SIZE", "8", 1);
  setenv("POOLSHIM_TIMEOUT", "10s", 1); /* a wait never outlasts the test */
}

static void finish(void);

/* Every test starts here: the environment is set, the admin connects (through the pool, a
 * key of its own) and whatever a killed earlier test left changed is put back. */
static long long
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
static void
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

static Lane
select_lane(int lane, const char *db)
{
  return (Lane){.lane = lane, .user = S.user, .password = S.password, .db = db,
                .think_us = 3000};
}

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

/* ---- 2. root KILLs idle and in-use pooled connections ---- */

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
  S.id_mismatch = S.bad_1040 = S.bad_1040_taken = 0;
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
  cr_assert_eq(all.connect_failed, 0, "%d connects failed", all.connect_failed);
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

/* ---- 3. the server's wait_timeout is shorter than the pool's idle time ---- */

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

/* ---- 4. another client takes every free connection slot ---- */

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
  g_atomic_int_set(&S.stop, 1);
  g_atomic_int_set(&K.stop, 1);
  for (int i = 0; i < 1500 && g_atomic_int_get(&S.finished) < S.nworkers; i++)
    sleep_ms(10);
  if (g_atomic_int_get(&S.finished) == S.nworkers)
    for (int i = 0; i < S.nworkers; i++)
      if (!S.workers[i].joined) {
        g_thread_join(S.workers[i].thread);
        S.workers[i].joined = TRUE;
      }
  if (K.thread && !K.joined) {
    g_thread_join(K.thread);
    K.joined = TRUE;
  }
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

/* ---- 5. committed work is never lost ---- */

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
