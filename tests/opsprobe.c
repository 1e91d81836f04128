/* opsprobe: an unmodified client (libmariadb only) for the operations tests: stats files, the
 * key file, the log file and the host-wide cap, seen from outside. Reports NAME=value lines on
 * stdout, PID first; the server comes from PS_TEST_*. Usage: opsprobe SCENARIO ARGS
 *
 *   work THREADS CYCLES SLEEP_MS  each thread: connect, SELECT SLEEP (or SELECT 1), close
 *   hold N SECONDS                N connections open at once for SECONDS (0: until stdin ends)
 *   idle N SECONDS                N connections opened and closed, then SECONDS of no call
 *   fork                          connect, close, connect again (IDS: both server ids), then
 *                                 a fork()ed child connects and closes (CHILD: its status)
 *
 * PST_ALARM=SECONDS: the probe is killed by SIGALRM after that long, so a hang inside the
 * client library or the shim ends it (the test sees the signal) instead of outliving it. */
#include <mysql.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "probe.h"

#define ER_CON_COUNT 1040

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* Errors of every scenario, counted under `lock`; the first message kept. */
static int errors, err1040;
static char first_error[512];

static void
count_error(MYSQL *m)
{
  pthread_mutex_lock(&lock);
  errors++;
  err1040 += mysql_errno(m) == ER_CON_COUNT;
  if (!first_error[0])
    snprintf(first_error, sizeof first_error, "%u %s", mysql_errno(m), mysql_error(m));
  pthread_mutex_unlock(&lock);
}

static void
report_errors(void)
{
  report("ERRORS", "%d", errors);
  report("ERR1040", "%d", err1040);
  if (first_error[0])
    report("FIRST_ERROR", "%s", first_error);
}

/* A connected handle, or NULL (error counted, handle closed). */
static MYSQL *
open_one(void)
{
  MYSQL *m = mysql_init(NULL);
  if (!m)
    return NULL;
  if (mysql_real_connect(m, getenv("PS_TEST_HOST"), getenv("PS_TEST_USER"),
                         getenv("PS_TEST_PASSWORD"), getenv("PS_TEST_DB"),
                         (unsigned int)atoi(getenv("PS_TEST_PORT")), NULL, 0))
    return m;
  count_error(m);
  mysql_close(m);
  return NULL;
}

/* Runs sql and reads its one value; 0 on success (error counted otherwise). */
static int
query(MYSQL *m, const char *sql, long long *value)
{
  if (mysql_query(m, sql)) {
    count_error(m);
    return -1;
  }
  MYSQL_RES *r = mysql_store_result(m);
  MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
  if (!row) {
    if (r)
      mysql_free_result(r);
    count_error(m);
    return -1;
  }
  if (value)
    *value = row[0] ? atoll(row[0]) : -1;
  mysql_free_result(r);
  return 0;
}

/* ---- work ---- */

typedef struct {
  int cycles, sleep_ms, ok;
} Worker;

static void *
worker_main(void *arg)
{
  Worker *w = arg;
  char sql[64];
  if (w->sleep_ms > 0)
    snprintf(sql, sizeof sql, "SELECT SLEEP(%d.%03d)", w->sleep_ms / 1000, w->sleep_ms % 1000);
  else
    snprintf(sql, sizeof sql, "SELECT 1");
  for (int i = 0; i < w->cycles; i++) {
    MYSQL *m = open_one();
    if (!m)
      continue;
    if (query(m, sql, NULL) == 0)
      w->ok++;
    mysql_close(m);
  }
  return NULL;
}

static int
scenario_work(int threads, int cycles, int sleep_ms)
{
  Worker *w = calloc((size_t)threads, sizeof *w);
  pthread_t *t = calloc((size_t)threads, sizeof *t);
  for (int i = 0; i < threads; i++) {
    w[i] = (Worker){.cycles = cycles, .sleep_ms = sleep_ms};
    pthread_create(&t[i], NULL, worker_main, &w[i]);
  }
  int ok = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(t[i], NULL);
    ok += w[i].ok;
  }
  report("OK", "%d", ok);
  report_errors();
  free(w);
  free(t);
  return 0;
}

/* ---- hold and idle ---- */

/* Opens n handles at once; reports the server's thread ids (0 for a failed one). */
static int
open_many(MYSQL **m, int n)
{
  int held = 0;
  char ids[1024] = "";
  for (int i = 0; i < n; i++) {
    long long id = 0;
    m[i] = open_one();
    if (m[i] && query(m[i], "SELECT CONNECTION_ID()", &id) == 0)
      held++;
    size_t len = strlen(ids);
    snprintf(ids + len, sizeof ids - len, "%s%lld", i ? "," : "", id);
  }
  report("IDS", "%s", ids);
  return held;
}

static void
close_many(MYSQL **m, int n)
{
  for (int i = 0; i < n; i++)
    if (m[i])
      mysql_close(m[i]);
}

static int
scenario_hold(int n, int seconds)
{
  MYSQL **m = calloc((size_t)n, sizeof *m);
  int held = open_many(m, n);
  report("HELD", "%d", held);
  report_errors();
  if (seconds > 0) {
    sleep_ms(seconds * 1000L);
  } else {
    char buf[256];
    while (fread(buf, 1, sizeof buf, stdin) > 0)
      ;
  }
  close_many(m, n);
  free(m);
  report("CLOSED", "%d", held);
  return 0;
}

static int
scenario_idle(int n, int seconds)
{
  MYSQL **m = calloc((size_t)n, sizeof *m);
  int held = open_many(m, n);
  close_many(m, n);
  free(m);
  report("IDLE", "%d", held);
  report_errors();
  sleep_ms(seconds * 1000L);
  report("DONE", "1");
  return 0;
}

/* ---- fork ---- */

/* One connect, its server id, one close; 0 when the connect or the query failed. */
static long long
connect_once(void)
{
  long long id = 0;
  MYSQL *m = open_one();
  if (m && query(m, "SELECT CONNECTION_ID()", &id) != 0)
    id = 0;
  if (m)
    mysql_close(m);
  return id;
}

static int
scenario_fork(void)
{
  long long first = connect_once(), second = connect_once();
  report("IDS", "%lld,%lld", first, second);
  pid_t pid = fork();
  if (pid == 0)
    _exit(connect_once() > 0 ? 0 : 1);
  int status = -1;
  if (pid > 0)
    while (waitpid(pid, &status, 0) < 0)
      ;
  report("CHILD", "%d", status);
  report_errors();
  return 0;
}

int
main(int argc, char **argv)
{
  if (getenv("PST_ALARM"))
    alarm((unsigned)atoi(getenv("PST_ALARM")));
  report("PID", "%d", (int)getpid());
  const char *s = argc > 1 ? argv[1] : "";
  if (strcmp(s, "work") == 0 && argc == 5)
    return scenario_work(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
  if (strcmp(s, "hold") == 0 && argc == 4)
    return scenario_hold(atoi(argv[2]), atoi(argv[3]));
  if (strcmp(s, "idle") == 0 && argc == 4)
    return scenario_idle(atoi(argv[2]), atoi(argv[3]));
  if (strcmp(s, "fork") == 0 && argc == 2)
    return scenario_fork();
  fprintf(stderr, "usage: opsprobe work THREADS CYCLES SLEEP_MS | hold N SECONDS | "
                  "idle N SECONDS | fork\n");
  return 2;
}
