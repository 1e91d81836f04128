/* holders: threads that each hold one handle open for their whole life (a C daemon with a
 * connection per worker), for the transaction-grain benchmarks (issue 13). Every answer is
 * checked against what the thread itself wrote. Server coordinates from PS_TEST_*.
 *
 *   --threads N      threads, each with its own handle and its own row (default 64)
 *   --tasks T        tasks in all, split over the threads (default 6400)
 *   --think-us U     think time after every task, microseconds (default 3000)
 *   --per-task       connect and close around every task instead of holding the handle
 *                    (the program rewritten to open a connection per task)
 *   --shared N       the program rewritten around its own pool: N connections opened before
 *                    the clock starts, shared by all threads; a thread takes one for each
 *                    task and gives it back before it thinks (the best any pool of N can
 *                    do at task grain: no reset, no restore, one mutex)
 *   --mixed          every second thread sets its own session state right after connect
 *                    and checks it at every task: a time zone (+05:00), a user variable
 *                    (@holder), or a session variable (group_concat_max_len)
 *
 * A task is, alternately, a short transaction (START TRANSACTION; UPDATE the thread's row
 * v = v + 1; SELECT v back; COMMIT) and autocommit statements (INSERT into a log table,
 * mysql_insert_id() against SELECT LAST_INSERT_ID() and the row read back by that id,
 * SELECT v of the thread's row). At the end the main thread checks every row's v and the
 * log's row count against the tasks that succeeded (no lost or doubled write).
 *
 * Prints one line: seconds=S cycles=T errors=E wrong=W (errors: statements that failed,
 * connects included; wrong: answers that differ from the thread's own model). Exit 1 if
 * either is not 0. */
#include <mysql.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ownpool.h"

static int threads = 64, tasks = 6400, think_us = 3000, per_task = 0, mixed = 0, shared = 0;

/* --shared: the program's own pool. */
static OwnPool own = OWN_POOL_INIT;

typedef struct {
  int id;
  int tasks;
  long long v;        /* the model: what this thread's row holds */
  long long logged;   /* log rows this thread inserted */
  int errors, wrong;
  char first[256];    /* the first problem, for stderr */
} Worker;

/* Counts a problem; the first one of the thread is kept as "thread N: WHAT: DETAIL". */
static void
note(Worker *w, int *counter, const char *what, const char *detail)
{
  (*counter)++;
  if (!w->first[0])
    snprintf(w->first, sizeof w->first, "thread %d: %s: %s", w->id, what, detail);
}

static MYSQL *
open_one(void)
{
  MYSQL *m = mysql_init(NULL);
  if (!m)
    return NULL;
  if (!mysql_real_connect(m, getenv("PS_TEST_HOST"), getenv("PS_TEST_USER"),
                          getenv("PS_TEST_PASSWORD"), getenv("PS_TEST_DB"),
                          (unsigned)atoi(getenv("PS_TEST_PORT")), NULL, 0)) {
    fprintf(stderr, "holders: connect: %u %s\n", mysql_errno(m), mysql_error(m));
    mysql_close(m);
    return NULL;
  }
  return m;
}

/* Runs a statement; on error counts it. Returns 0 on success. */
static int
run(Worker *w, MYSQL *m, const char *sql)
{
  if (mysql_query(m, sql) == 0)
    return 0;
  note(w, &w->errors, "statement failed", mysql_error(m));
  return -1;
}

/* One row, one column, as a string (NULL for SQL NULL) into buf. Returns 0 on success. */
static int
scalar(Worker *w, MYSQL *m, const char *sql, char *buf, size_t len)
{
  if (run(w, m, sql))
    return -1;
  MYSQL_RES *r = mysql_store_result(m);
  MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
  if (!row) {
    note(w, &w->errors, "no row from", sql);
    if (r)
      mysql_free_result(r);
    return -1;
  }
  snprintf(buf, len, "%s", row[0] ? row[0] : "NULL");
  mysql_free_result(r);
  return 0;
}

/* The session state a --mixed thread sets, and the query and answer that check it. */
static const char *
own_state(int id, char *set, size_t setlen, char *check, size_t checklen, char *want,
          size_t wantlen)
{
  if (!mixed || id % 2 == 0)
    return NULL;
  switch ((id / 2) % 3) {
  case 0:
    snprintf(set, setlen, "SET time_zone = '+05:00'");
    snprintf(check, checklen, "SELECT @@session.time_zone");
    snprintf(want, wantlen, "+05:00");
    break;
  case 1:
    snprintf(set, setlen, "SET @holder = %d", 1000 + id);
    snprintf(check, checklen, "SELECT @holder");
    snprintf(want, wantlen, "%d", 1000 + id);
    break;
  default:
    snprintf(set, setlen, "SET SESSION group_concat_max_len = %d", 2000 + id);
    snprintf(check, checklen, "SELECT @@session.group_concat_max_len");
    snprintf(want, wantlen, "%d", 2000 + id);
  }
  return set;
}

static int
open_with_state(Worker *w, MYSQL **m, const char *set)
{
  *m = open_one();
  if (!*m) {
    note(w, &w->errors, "connect", "failed");
    return -1;
  }
  if (set && run(w, *m, set))
    return -1;
  return 0;
}

static void
task(Worker *w, MYSQL *m, int k, const char *check, const char *want)
{
  char sql[256], buf[64], want_buf[64];
  if (check) {
    if (scalar(w, m, check, buf, sizeof buf) == 0 && strcmp(buf, want) != 0)
      note(w, &w->wrong, "own session state changed: got", buf);
  }
  if (k % 2 == 0) {
    if (run(w, m, "START TRANSACTION"))
      return;
    snprintf(sql, sizeof sql, "UPDATE grain_holders SET v = v + 1 WHERE id = %d", w->id);
    if (run(w, m, sql)) {
      mysql_query(m, "ROLLBACK");
      return;
    }
    if (mysql_affected_rows(m) != 1)
      note(w, &w->wrong, "UPDATE of my row", "affected rows not 1");
    snprintf(sql, sizeof sql, "SELECT v FROM grain_holders WHERE id = %d", w->id);
    if (scalar(w, m, sql, buf, sizeof buf)) {
      mysql_query(m, "ROLLBACK");
      return;
    }
    snprintf(want_buf, sizeof want_buf, "%lld", w->v + 1);
    if (strcmp(buf, want_buf) != 0)
      note(w, &w->wrong, "v read back inside the transaction", buf);
    if (run(w, m, "COMMIT") == 0)
      w->v++;
    return;
  }
  snprintf(sql, sizeof sql, "INSERT INTO grain_log (holder, k) VALUES (%d, %d)", w->id, k);
  if (run(w, m, sql))
    return;
  w->logged++;
  unsigned long long id = mysql_insert_id(m);
  if (mysql_affected_rows(m) != 1 || id == 0)
    note(w, &w->wrong, "INSERT", "affected rows or insert id wrong");
  snprintf(want_buf, sizeof want_buf, "%llu", id);
  if (scalar(w, m, "SELECT LAST_INSERT_ID()", buf, sizeof buf) == 0 &&
      strcmp(buf, want_buf) != 0)
    note(w, &w->wrong, "LAST_INSERT_ID() differs from mysql_insert_id()", buf);
  snprintf(sql, sizeof sql, "SELECT CONCAT(holder, '/', k) FROM grain_log WHERE id = %llu", id);
  snprintf(want_buf, sizeof want_buf, "%d/%d", w->id, k);
  if (scalar(w, m, sql, buf, sizeof buf) == 0 && strcmp(buf, want_buf) != 0)
    note(w, &w->wrong, "the row of my insert id is", buf);
  snprintf(sql, sizeof sql, "SELECT v FROM grain_holders WHERE id = %d", w->id);
  snprintf(want_buf, sizeof want_buf, "%lld", w->v);
  if (scalar(w, m, sql, buf, sizeof buf) == 0 && strcmp(buf, want_buf) != 0)
    note(w, &w->wrong, "autocommit read of v", buf);
}

static void
think(void)
{
  if (think_us <= 0)
    return;
  struct timespec t = {think_us / 1000000, (long)(think_us % 1000000) * 1000};
  nanosleep(&t, NULL);
}

static void *
worker(void *arg)
{
  Worker *w = arg;
  if (shared) {
    for (int k = 0; k < w->tasks; k++) {
      MYSQL *m = own_pool_take(&own);
      task(w, m, k, NULL, NULL);
      own_pool_give(&own, m);
      think();
    }
    return NULL;
  }
  char set[128], check[128], want[64];
  const char *mine = own_state(w->id, set, sizeof set, check, sizeof check, want, sizeof want);
  MYSQL *m = NULL;
  if (!per_task && open_with_state(w, &m, mine))
    goto out;
  for (int k = 0; k < w->tasks; k++) {
    if (per_task && open_with_state(w, &m, mine)) {
      if (m)
        mysql_close(m);
      m = NULL;
      continue;
    }
    task(w, m, k, mine ? check : NULL, want);
    if (per_task) {
      mysql_close(m);
      m = NULL;
    }
    think();
  }
out:
  if (m)
    mysql_close(m);
  return NULL;
}

static double
now_s(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Setup and the final check run on handles opened and closed in the main thread. */
static int
setup(void)
{
  MYSQL *m = open_one();
  if (!m)
    return -1;
  char sql[128];
  int bad = mysql_query(m, "DROP TABLE IF EXISTS grain_holders, grain_log") ||
            mysql_query(m, "CREATE TABLE grain_holders (id INT PRIMARY KEY, v BIGINT NOT NULL)"
                           " ENGINE=InnoDB") ||
            mysql_query(m, "CREATE TABLE grain_log (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
                           " holder INT NOT NULL, k INT NOT NULL) ENGINE=InnoDB");
  for (int i = 0; i < threads && !bad; i++) {
    snprintf(sql, sizeof sql, "INSERT INTO grain_holders VALUES (%d, 0)", i);
    bad = mysql_query(m, sql);
  }
  if (bad)
    fprintf(stderr, "holders: setup: %s\n", mysql_error(m));
  mysql_close(m);
  return bad ? -1 : 0;
}

static int
final_check(Worker *ws)
{
  MYSQL *m = open_one();
  if (!m)
    return 1;
  int wrong = 0;
  long long logged = 0;
  for (int i = 0; i < threads; i++)
    logged += ws[i].logged;
  char sql[128];
  for (int i = 0; i < threads; i++) {
    snprintf(sql, sizeof sql, "SELECT v FROM grain_holders WHERE id = %d", i);
    MYSQL_RES *r = mysql_query(m, sql) ? NULL : mysql_store_result(m);
    MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
    if (!row || atoll(row[0]) != ws[i].v) {
      fprintf(stderr, "holders: final: row %d has v=%s, its thread committed %lld\n", i,
              row ? row[0] : "?", ws[i].v);
      wrong++;
    }
    if (r)
      mysql_free_result(r);
  }
  MYSQL_RES *r = mysql_query(m, "SELECT COUNT(*) FROM grain_log") ? NULL : mysql_store_result(m);
  MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
  if (!row || atoll(row[0]) != logged) {
    fprintf(stderr, "holders: final: %s log rows, the threads inserted %lld\n",
            row ? row[0] : "?", logged);
    wrong++;
  }
  if (r)
    mysql_free_result(r);
  mysql_close(m);
  return wrong;
}

int
main(int argc, char **argv)
{
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--tasks") && i + 1 < argc)
      tasks = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--think-us") && i + 1 < argc)
      think_us = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--per-task"))
      per_task = 1;
    else if (!strcmp(argv[i], "--shared") && i + 1 < argc)
      shared = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--mixed"))
      mixed = 1;
    else {
      fprintf(stderr, "usage: holders [--threads N] [--tasks T] [--think-us U] [--per-task]"
                      " [--shared N] [--mixed]\n");
      return 2;
    }
  }
  static const char *const need[] = {"PS_TEST_HOST", "PS_TEST_PORT", "PS_TEST_USER",
                                      "PS_TEST_PASSWORD", "PS_TEST_DB"};
  for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
    if (!getenv(need[i])) {
      fprintf(stderr, "holders: %s is not set (the server's coordinates: PS_TEST_HOST, "
                      "PS_TEST_PORT, PS_TEST_USER, PS_TEST_PASSWORD, PS_TEST_DB)\n", need[i]);
      return 2;
    }
  if (shared < 0 || (shared && (per_task || mixed))) {
    fprintf(stderr, "holders: --shared N needs N >= 1 and neither --per-task nor --mixed\n");
    return 2;
  }
  if (threads < 1 || tasks < threads) {
    fprintf(stderr, "holders: need --threads >= 1 and --tasks >= --threads\n");
    return 2;
  }
  if (setup())
    return 1;
  Worker *ws = calloc((size_t)threads, sizeof *ws);
  pthread_t *tid = calloc((size_t)threads, sizeof *tid);
  for (int i = 0; i < threads; i++) {
    ws[i].id = i;
    ws[i].tasks = tasks / threads + (i < tasks % threads);
  }
  if (shared) {
    own_pool_alloc(&own, shared);
    for (int i = 0; i < shared; i++) {
      MYSQL *m = open_one();
      if (!m)
        return 1;
      own_pool_give(&own, m);
    }
  }
  double t0 = now_s();
  for (int i = 0; i < threads; i++)
    pthread_create(&tid[i], NULL, worker, &ws[i]);
  for (int i = 0; i < threads; i++)
    pthread_join(tid[i], NULL);
  double secs = now_s() - t0;
  own_pool_close(&own); /* closed first: the final check's connection is not a ninth */
  int errors = 0, wrong = final_check(ws), shown = 0;
  for (int i = 0; i < threads; i++) {
    errors += ws[i].errors;
    wrong += ws[i].wrong;
    if (ws[i].first[0] && shown++ < 3)
      fprintf(stderr, "holders: %s\n", ws[i].first);
  }
  printf("seconds=%.4f cycles=%d errors=%d wrong=%d\n", secs, tasks, errors, wrong);
  free(ws);
  free(tid);
  return errors || wrong ? 1 : 0;
}
