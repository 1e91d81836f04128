/* The randomized interleaving test of the transaction grain (issue 13): many handles held
 * open in several threads, more handles than the pool has connections, random transactions
 * and autocommit statements on each handle's own row, per-handle session state (database,
 * time zone, user variable) on some, and takes forced at random points by the test hook
 * POOLSHIM_TEST_FORCE_TAKE (tests/meson.build runs this test with libpoolshim-test.so
 * preloaded, POOLSHIM_GRAIN=transaction and a pool of 4). Every answer is checked against a
 * model of what each handle wrote and set; at the end the server's rows against the model,
 * and the server's own counters say how many connections served the handles.
 *
 * The seed is printed (and named in every failure); PS_INTERLEAVE_SEED=N repeats the same
 * random program. The threads' interleaving and the hook's own coin are not seeded.
 *
 * Registered by default (-Dgrain_tests=false leaves it out; suite `grain`): without the
 * transaction grain it fails (the fifth handle's connect waits for POOLSHIM_TIMEOUT and gets
 * error 1040). */
#include <mysqld_error.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

#define THREADS 4
#define HANDLES_PER_THREAD 4
#define HANDLES (THREADS * HANDLES_PER_THREAD)
#define STEPS_PER_THREAD 400

TestSuite(interleave, .timeout = 280);

typedef struct {
  int id;          /* its row in interleave_rows */
  MYSQL *m;
  long long v;     /* committed value of its row */
  long long logged;
  const char *db;  /* DATABASE() */
  char tz[16];     /* @@session.time_zone */
  gboolean has_var;
  long long var;   /* @mine */
  gboolean varies; /* does this handle change its session state? */
  unsigned long last_conn;
  int conn_changes; /* times CONNECTION_ID() differed from the previous answer */
} Handle;

typedef struct {
  int no;
  guint32 seed;
  Handle *h;       /* HANDLES_PER_THREAD of them */
  GRand *rand;
  int failures;
  GString *first;  /* the first few failures */
} Worker;

static guint32 seed;
static Handle handles[HANDLES];
static gint done_threads;

static void G_GNUC_PRINTF(4, 5)
fail(Worker *w, Handle *h, int step, const char *fmt, ...)
{
  w->failures++;
  if (w->failures > 3)
    return;
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_string_append_printf(w->first, "  seed %u, thread %d, handle %d, step %d: %s\n", seed, w->no,
                         h ? h->id : -1, step, msg);
}

/* Runs sql; a failure is recorded. TRUE on success. */
static gboolean
run(Worker *w, Handle *h, int step, const char *sql)
{
  if (mysql_query(h->m, sql) == 0)
    return TRUE;
  fail(w, h, step, "%s: %u %s", sql, mysql_errno(h->m), mysql_error(h->m));
  return FALSE;
}

/* The first row of sql's result, `cols` columns as strings ("NULL" for SQL NULL) in out[]. */
static gboolean
row_of(Worker *w, Handle *h, int step, const char *sql, int cols, char out[][64])
{
  if (!run(w, h, step, sql))
    return FALSE;
  MYSQL_RES *r = mysql_store_result(h->m);
  MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
  gboolean ok = row && (int)mysql_num_fields(r) == cols;
  for (int i = 0; ok && i < cols; i++)
    g_strlcpy(out[i], row[i] ? row[i] : "NULL", 64);
  if (!ok)
    fail(w, h, step, "%s: no row of %d columns", sql, cols);
  if (r)
    mysql_free_result(r);
  return ok;
}

static long long
read_v(Worker *w, Handle *h, int step, gboolean *ok)
{
  char out[1][64];
  g_autofree char *sql =
      g_strdup_printf("SELECT v FROM %s.interleave_rows WHERE id = %d", pst_env("PS_TEST_DB"), h->id);
  *ok = row_of(w, h, step, sql, 1, out);
  return *ok ? atoll(out[0]) : 0;
}

/* The handle's session as the model says it is, and which connection answers. */
static void
check_session(Worker *w, Handle *h, int step)
{
  char out[4][64];
  if (!row_of(w, h, step, "SELECT DATABASE(), @@session.time_zone, @mine, CONNECTION_ID()", 4,
              out))
    return;
  g_autofree char *var = h->has_var ? g_strdup_printf("%lld", h->var) : g_strdup("NULL");
  if (strcmp(out[0], h->db) != 0)
    fail(w, h, step, "DATABASE() is %s, the handle chose %s", out[0], h->db);
  if (strcmp(out[1], h->tz) != 0)
    fail(w, h, step, "@@time_zone is %s, the handle set %s", out[1], h->tz);
  if (strcmp(out[2], var) != 0)
    fail(w, h, step, "@mine is %s, the handle set %s", out[2], var);
  unsigned long conn = strtoul(out[3], NULL, 10);
  if (h->last_conn && conn != h->last_conn)
    h->conn_changes++;
  h->last_conn = conn;
}

static void
op_transaction(Worker *w, Handle *h, int step)
{
  if (!run(w, h, step, "START TRANSACTION"))
    return;
  long long v = h->v;
  int updates = 1 + (int)g_rand_int_range(w->rand, 0, 3);
  gboolean ok = TRUE;
  for (int i = 0; i < updates && ok; i++) {
    int d = g_rand_int_range(w->rand, 1, 100);
    g_autofree char *sql = g_strdup_printf("UPDATE %s.interleave_rows SET v = v + %d WHERE id = %d",
                                           pst_env("PS_TEST_DB"), d, h->id);
    ok = run(w, h, step, sql);
    if (ok && mysql_affected_rows(h->m) != 1)
      fail(w, h, step, "UPDATE in a transaction: %llu affected rows",
           (unsigned long long)mysql_affected_rows(h->m));
    v += d;
    long long got = ok ? read_v(w, h, step, &ok) : 0;
    if (ok && got != v)
      fail(w, h, step, "read %lld inside the transaction, wrote %lld", got, v);
  }
  gboolean commit = ok && g_rand_boolean(w->rand);
  if (run(w, h, step, commit ? "COMMIT" : "ROLLBACK") && commit)
    h->v = v;
  long long got = read_v(w, h, step, &ok);
  if (ok && got != h->v)
    fail(w, h, step, "after %s the row holds %lld, the model %lld",
         commit ? "COMMIT" : "ROLLBACK", got, h->v);
}

static void
op_update(Worker *w, Handle *h, int step)
{
  int d = g_rand_int_range(w->rand, 1, 100);
  g_autofree char *sql = g_strdup_printf("UPDATE %s.interleave_rows SET v = v + %d WHERE id = %d",
                                         pst_env("PS_TEST_DB"), d, h->id);
  if (!run(w, h, step, sql))
    return;
  h->v += d;
  const char *info = mysql_info(h->m);
  if (mysql_affected_rows(h->m) != 1 || !info || !strstr(info, "Rows matched: 1") ||
      !strstr(info, "Changed: 1"))
    fail(w, h, step, "autocommit UPDATE: %llu affected rows, info \"%s\"",
         (unsigned long long)mysql_affected_rows(h->m), info ? info : "(null)");
}

static void
op_insert(Worker *w, Handle *h, int step)
{
  g_autofree char *sql = g_strdup_printf("INSERT INTO %s.interleave_log (h, step) VALUES (%d, %d)",
                                         pst_env("PS_TEST_DB"), h->id, step);
  if (!run(w, h, step, sql))
    return;
  h->logged++;
  unsigned long long id = mysql_insert_id(h->m);
  if (mysql_affected_rows(h->m) != 1 || id == 0)
    fail(w, h, step, "INSERT: %llu affected rows, insert id %llu",
         (unsigned long long)mysql_affected_rows(h->m), id);
  char out[2][64];
  if (row_of(w, h, step, "SELECT LAST_INSERT_ID(), @@session.time_zone", 2, out) &&
      (strtoull(out[0], NULL, 10) != id || strcmp(out[1], h->tz) != 0))
    fail(w, h, step, "right after the INSERT: LAST_INSERT_ID() %s (mysql_insert_id() %llu), "
         "time zone %s (set %s)", out[0], id, out[1], h->tz);
  g_autofree char *back = g_strdup_printf("SELECT h, step FROM %s.interleave_log WHERE id = %llu",
                                          pst_env("PS_TEST_DB"), id);
  if (row_of(w, h, step, back, 2, out) && (atoi(out[0]) != h->id || atoi(out[1]) != step))
    fail(w, h, step, "the row of insert id %llu is (%s, %s)", id, out[0], out[1]);
}

static void
op_warning(Worker *w, Handle *h, int step)
{
  char out[1][64];
  if (!row_of(w, h, step, "SELECT CAST('12abc' AS SIGNED)", 1, out))
    return;
  if (strcmp(out[0], "12") != 0 || mysql_warning_count(h->m) != 1)
    fail(w, h, step, "CAST: %s with %u warnings", out[0], mysql_warning_count(h->m));
  char code[3][64];
  if (row_of(w, h, step, "SHOW WARNINGS", 3, code) && atoi(code[1]) != ER_TRUNCATED_WRONG_VALUE)
    fail(w, h, step, "SHOW WARNINGS right after the CAST: code %s (%s)", code[1], code[2]);
}

static void
op_session(Worker *w, Handle *h, int step)
{
  g_autofree char *sql = NULL;
  switch (g_rand_int_range(w->rand, 0, 3)) {
  case 0: {
    long long var = g_rand_int_range(w->rand, 0, 1000000);
    sql = g_strdup_printf("SET @mine = %lld", var);
    if (run(w, h, step, sql))
      h->has_var = TRUE, h->var = var;
    break;
  }
  case 1: {
    char tz[16];
    g_snprintf(tz, sizeof tz, "+%02d:00", g_rand_int_range(w->rand, 0, 13));
    sql = g_strdup_printf("SET time_zone = '%s'", tz);
    if (run(w, h, step, sql))
      g_strlcpy(h->tz, tz, sizeof h->tz);
    break;
  }
  default: {
    const char *db = pst_env(g_rand_boolean(w->rand) ? "PS_TEST_DB" : "PS_TEST_DB2");
    if (mysql_select_db(h->m, db) == 0)
      h->db = db;
    else
      fail(w, h, step, "mysql_select_db(%s): %s", db, mysql_error(h->m));
  }
  }
}

static void *
worker(void *arg)
{
  Worker *w = arg;
  for (int i = 0; i < HANDLES_PER_THREAD; i++) {
    Handle *h = &w->h[i];
    unsigned int err = 0;
    char msg[512] = "";
    h->m = pst_try_connect(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                           pst_env("PS_TEST_DB"), &err, msg, sizeof msg);
    if (!h->m) {
      fail(w, h, -1, "connect: %u %s", err, msg);
      goto out;
    }
    char out[1][64];
    if (row_of(w, h, -1, "SELECT @@session.time_zone", 1, out))
      g_strlcpy(h->tz, out[0], sizeof h->tz);
  }
  for (int step = 0; step < STEPS_PER_THREAD; step++) {
    Handle *h = &w->h[g_rand_int_range(w->rand, 0, HANDLES_PER_THREAD)];
    int op = g_rand_int_range(w->rand, 0, h->varies ? 7 : 6);
    switch (op) {
    case 0:
    case 1: op_transaction(w, h, step); break;
    case 2: op_update(w, h, step); break;
    case 3: op_insert(w, h, step); break;
    case 4: op_warning(w, h, step); break;
    case 5: check_session(w, h, step); break;
    default: op_session(w, h, step);
    }
  }
  for (int i = 0; i < HANDLES_PER_THREAD; i++)
    check_session(w, &w->h[i], STEPS_PER_THREAD);
out:
  for (int i = 0; i < HANDLES_PER_THREAD; i++)
    if (w->h[i].m)
      mysql_close(w->h[i].m);
  g_atomic_int_inc(&done_threads);
  return NULL;
}

Test(interleave, many_handles_with_forced_takes_see_only_their_own_writes_and_session_state)
{
  const char *s = getenv("PS_INTERLEAVE_SEED");
  seed = s && *s ? (guint32)strtoul(s, NULL, 10) : g_random_int();
  const char *pool_env = getenv("POOLSHIM_POOL_SIZE");
  long long pool = pool_env ? atoll(pool_env) : 0;
  cr_assert(pool > 0 && pool < HANDLES, "POOLSHIM_POOL_SIZE must be set below %d", HANDLES);
  cr_log_info("interleave: seed %u (PS_INTERLEAVE_SEED=%u repeats it), %d threads, %d handles, "
              "pool of %lld, POOLSHIM_GRAIN=%s, POOLSHIM_TEST_FORCE_TAKE=%s", seed, seed, THREADS,
              HANDLES, pool, getenv("POOLSHIM_GRAIN"), getenv("POOLSHIM_TEST_FORCE_TAKE"));

  MYSQL *adm = pst_admin();
  long long opened_before = pst_status("Connections");
  MYSQL *m = pst_connect_app();
  pst_exec(m, "DROP TABLE IF EXISTS interleave_rows, interleave_log");
  pst_exec(m, "CREATE TABLE interleave_rows (id INT PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB");
  pst_exec(m, "CREATE TABLE interleave_log (id BIGINT AUTO_INCREMENT PRIMARY KEY, h INT NOT NULL,"
              " step INT NOT NULL) ENGINE=InnoDB");
  for (int i = 0; i < HANDLES; i++)
    pst_exec(m, "INSERT INTO interleave_rows VALUES (%d, 0)", i);
  mysql_close(m);

  GRand *master = g_rand_new_with_seed(seed);
  Worker ws[THREADS];
  pthread_t tid[THREADS];
  memset(handles, 0, sizeof handles);
  for (int i = 0; i < HANDLES; i++) {
    handles[i].id = i;
    handles[i].db = pst_env("PS_TEST_DB");
    handles[i].varies = g_rand_int_range(master, 0, 3) != 0; /* two in three */
  }
  for (int t = 0; t < THREADS; t++) {
    ws[t] = (Worker){.no = t, .h = &handles[t * HANDLES_PER_THREAD],
                     .rand = g_rand_new_with_seed(g_rand_int(master)), .first = g_string_new("")};
    pthread_create(&tid[t], NULL, worker, &ws[t]);
  }
  /* Server-side: the application user's connections, sampled while the threads run. */
  long long peak = 0;
  while (g_atomic_int_get(&done_threads) < THREADS) {
    long long n = pst_user_threads(pst_env("PS_TEST_USER"));
    peak = MAX(peak, n);
    g_usleep(2000);
  }
  int failures = 0;
  g_autoptr(GString) report = g_string_new("");
  for (int t = 0; t < THREADS; t++) {
    pthread_join(tid[t], NULL);
    failures += ws[t].failures;
    g_string_append(report, ws[t].first->str);
    g_string_free(ws[t].first, TRUE);
    g_rand_free(ws[t].rand);
  }
  g_rand_free(master);
  long long opened = pst_status("Connections") - opened_before;
  cr_assert_eq(failures, 0, "%d wrong answers or failed statements (seed %u); the first:\n%s",
               failures, seed, report->str);

  /* The server's rows against the model: no lost, doubled or foreign write. */
  long long logged = 0;
  int moved = 0;
  for (int i = 0; i < HANDLES; i++) {
    long long v = pst_scalar(adm, "SELECT v FROM %s.interleave_rows WHERE id = %d",
                             pst_env("PS_TEST_DB"), i);
    cr_expect_eq(v, handles[i].v, "seed %u: handle %d's row holds %lld, it committed %lld", seed,
                 i, v, handles[i].v);
    logged += handles[i].logged;
    moved += handles[i].conn_changes > 0;
  }
  long long rows = pst_scalar(adm, "SELECT COUNT(*) FROM %s.interleave_log", pst_env("PS_TEST_DB"));
  cr_expect_eq(rows, logged, "seed %u: %lld log rows, the handles inserted %lld", seed, rows,
               logged);
  cr_expect_leq(peak, pool, "seed %u: %lld server connections of the application user at once, "
                "pool of %lld", seed, peak, pool);
  cr_expect_leq(opened, pool, "seed %u: %lld connections opened for %d handles, pool of %lld",
                seed, opened, HANDLES, pool);
  /* The takes happened: handles were served by more than one server connection. */
  cr_expect_gt(moved, 0, "seed %u: no handle ever answered CONNECTION_ID() from a second "
               "connection: no take happened", seed);
  cr_log_info("interleave: seed %u: %lld connections opened, peak %lld, %d of %d handles moved "
              "between connections", seed, opened, peak, moved, HANDLES);
}
