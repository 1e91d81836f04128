/* leakprobe: an unmodified client that misuses its connections on purpose, for tests that
 * run it with and without the shim and read what it reports (stdout: NAME=value lines) and
 * what the shim says (stderr). Usage: leakprobe SCENARIO; the server comes from PS_TEST_*.
 *
 *   threads      threads that exit holding a connection (the application's leak), others
 *                that keep working, and borrows held too long on purpose
 *   stack        a mysql_init(&local) handle connected and left without mysql_close, then
 *                a handle at the same address connects
 *   double-close a caller-owned handle closed twice (connected, never connected, failed)
 *   passthrough  threads connecting and closing, to compare server threads
 *   sanitizer    prints how the probe was built (a sanitized one cannot run under Valgrind)
 *
 * The functions that borrow are external and exported (the build links with -rdynamic):
 * the shim's leak warning names them in its backtrace. */
#include <dlfcn.h>
#include <mysql.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../include/poolshim.h"
#include "probe.h"

#define EXPORTED __attribute__((visibility("default"), noinline))

EXPORTED long long leakprobe_leak_connection(void);
EXPORTED MYSQL *leakprobe_hold_connection(unsigned int *err);
EXPORTED long long leakprobe_slow_borrow(int hold_ms);
EXPORTED int leakprobe_short_borrow(void);
EXPORTED void leakprobe_stack_handle(int close_it, const char *label);

static MYSQL *
open_on(MYSQL *m, unsigned int *err)
{
  if (mysql_real_connect(m, getenv("PS_TEST_HOST"), getenv("PS_TEST_USER"),
                         getenv("PS_TEST_PASSWORD"), getenv("PS_TEST_DB"),
                         (unsigned int)atoi(getenv("PS_TEST_PORT")), NULL, 0))
    return m;
  if (err)
    *err = mysql_errno(m);
  return NULL;
}

/* The first column of the first row of `sql`, or -1 on any error. */
static long long
scalar(MYSQL *m, const char *sql)
{
  if (mysql_query(m, sql))
    return -1;
  MYSQL_RES *r = mysql_store_result(m);
  MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
  long long v = row && row[0] ? atoll(row[0]) : -1;
  if (r)
    mysql_free_result(r);
  return v;
}

/* The shim's counters, when it is loaded. */
static void
report_stats(const char *when)
{
  int (*stats)(poolshim_stats_t *, size_t) =
    (int (*)(poolshim_stats_t *, size_t))dlsym(RTLD_DEFAULT, "poolshim_stats");
  if (!stats) {
    report(when, "none");
    return;
  }
  poolshim_stats_t s;
  stats(&s, sizeof s);
  report(when, "open %u idle %u lent %u waiting %u pools %u borrowed %llu wait_timeouts %llu",
         s.open, s.idle, s.lent, s.waiting, s.pools, s.borrowed, s.wait_timeouts);
}

/* ---- threads ---- */

/* Where the leaked handles stay reachable, so that Valgrind and LeakSanitizer (when the
 * probe is built with them) see no lost memory: the shim never looks here, and for it the
 * handles are as forgotten as in the application's bug. */
extern MYSQL *leakprobe_graveyard[4];
extern MYSQL leakprobe_stack_graveyard;
MYSQL *leakprobe_graveyard[4]; /* external: the compiler keeps every store */
MYSQL leakprobe_stack_graveyard;

/* Borrows a connection and forgets it: the caller's thread then ends. */
long long
leakprobe_leak_connection(void)
{
  static int n;
  MYSQL *m = mysql_init(NULL);
  leakprobe_graveyard[__atomic_fetch_add(&n, 1, __ATOMIC_RELAXED) % 4] = m;
  if (!open_on(m, NULL))
    return -1;
  return scalar(m, "SELECT CONNECTION_ID()");
}

static void *
leaker_main(void *arg)
{
  long long *id = arg;
  *id = leakprobe_leak_connection();
  return NULL; /* the thread ends holding the connection */
}

MYSQL *
leakprobe_hold_connection(unsigned int *err)
{
  MYSQL *m = mysql_init(NULL);
  if (open_on(m, err))
    return m;
  mysql_close(m);
  return NULL;
}

/* A borrow held longer than POOLSHIM_LEAK_WARN, then closed properly. */
long long
leakprobe_slow_borrow(int hold_ms)
{
  MYSQL *m = mysql_init(NULL);
  if (!open_on(m, NULL)) {
    mysql_close(m);
    return -1;
  }
  long long id = scalar(m, "SELECT CONNECTION_ID()");
  sleep_ms(hold_ms);
  mysql_close(m);
  return id;
}

/* Connect, one query, close: far shorter than POOLSHIM_LEAK_WARN on any sane machine.
 * Returns 0 on success. */
int
leakprobe_short_borrow(void)
{
  MYSQL *m = mysql_init(NULL);
  int failed = !open_on(m, NULL) || scalar(m, "SELECT 1") != 1;
  mysql_close(m);
  return failed;
}

typedef struct {
  int cycles, failed;
} Cycler;

static void *
cycler_main(void *arg)
{
  Cycler *c = arg;
  for (int i = 0; i < c->cycles; i++)
    c->failed += leakprobe_short_borrow();
  return NULL;
}

/* Expects POOLSHIM_POOL_SIZE=4: two leaked connections leave two for everyone else. */
static int
scenario_threads(void)
{
  pthread_t t[2];
  long long ids[2] = {0, 0};
  for (int i = 0; i < 2; i++)
    pthread_create(&t[i], NULL, leaker_main, &ids[i]);
  for (int i = 0; i < 2; i++)
    pthread_join(t[i], NULL);
  report("leaked_ids", "%lld,%lld", ids[0], ids[1]);
  report_stats("stats_after_leak");

  /* Others keep working with what is left, concurrently. */
  Cycler c[2] = {{50, 0}, {50, 0}};
  for (int i = 0; i < 2; i++)
    pthread_create(&t[i], NULL, cycler_main, &c[i]);
  for (int i = 0; i < 2; i++)
    pthread_join(t[i], NULL);
  report("cycles_failed", "%d", c[0].failed + c[1].failed);

  /* Exactly two more fit at once: the leaked ones still count. */
  unsigned int err1 = 0, err2 = 0, err3 = 0;
  MYSQL *a = leakprobe_hold_connection(&err1), *b = leakprobe_hold_connection(&err2);
  MYSQL *c3 = leakprobe_hold_connection(&err3);
  report("held", "%d %d err %u", a != NULL, b != NULL, err1 ? err1 : err2);
  report("third", "%u", c3 ? 0 : err3);
  if (c3)
    mysql_close(c3);
  if (a)
    mysql_close(a);
  if (b)
    mysql_close(b);

  /* Two proper borrows held too long, one after the other: a warning for each borrow. */
  long long s1 = leakprobe_slow_borrow(700), s2 = leakprobe_slow_borrow(700);
  report("slow_ids", "%lld,%lld", s1, s2);

  /* Many watchdog periods: the leaked borrows must not be reported again. */
  sleep_ms(1200);
  report_stats("stats_end");
  return 0;
}

/* ---- stack ---- */

static long long first_stack_id = -1;

/* Connects a caller-owned handle on this function's stack; returns without mysql_close
 * unless close_it. Called twice from the same frame, the handle has the same address. */
void
leakprobe_stack_handle(int close_it, const char *label)
{
  MYSQL local;
  mysql_init(&local);
  char name[64];
  unsigned int err = 0;
  snprintf(name, sizeof name, "%s_addr", label);
  report(name, "%p", (void *)&local);
  snprintf(name, sizeof name, "%s_connect", label);
  if (!open_on(&local, &err)) {
    report(name, "error %u %s", err, mysql_error(&local));
    mysql_close(&local);
    return;
  }
  report(name, "ok");
  long long id = scalar(&local, "SELECT CONNECTION_ID()");
  snprintf(name, sizeof name, "%s_id", label);
  report(name, "%lld", id);
  snprintf(name, sizeof name, "%s_select", label);
  report(name, "%lld", scalar(&local, "SELECT 41 + 1"));
  if (!close_it) {
    first_stack_id = id;
    /* A copy keeps the library's allocations reachable (see leakprobe_graveyard); the handle
     * goes out of scope connected, and the next call's mysql_init overwrites it. */
    memcpy(&leakprobe_stack_graveyard, &local, sizeof local);
    return;
  }
  /* The first, leaked session still exists on the server, as without the shim. */
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %lld",
           first_stack_id);
  snprintf(name, sizeof name, "%s_sees_first", label);
  report(name, "%lld", scalar(&local, sql));
  mysql_close(&local);
}

static int
scenario_stack(void)
{
  leakprobe_stack_handle(0, "first");
  leakprobe_stack_handle(1, "second");
  MYSQL *m = mysql_init(NULL);
  unsigned int err = 0;
  if (open_on(m, &err)) {
    report("third_id", "%lld", scalar(m, "SELECT CONNECTION_ID()"));
  } else {
    report("third_id", "error %u", err);
  }
  mysql_close(m);
  report_stats("stats_end");
  return 0;
}

/* ---- double-close ---- */

static int
scenario_double_close(void)
{
  /* A connected caller-owned handle. */
  MYSQL local;
  mysql_init(&local);
  unsigned int err = 0;
  if (!open_on(&local, &err)) {
    report("connected", "error %u", err);
    return 1;
  }
  report("connected_select", "%lld", scalar(&local, "SELECT 1"));
  mysql_close(&local);
  mysql_close(&local);
  report("connected_closed_twice", "ok");

  /* Never connected. */
  MYSQL idle;
  mysql_init(&idle);
  mysql_close(&idle);
  mysql_close(&idle);
  report("unconnected_closed_twice", "ok");

  /* A failed connect. */
  MYSQL failed;
  mysql_init(&failed);
  if (mysql_real_connect(&failed, getenv("PS_TEST_HOST"), "no_such_user", "x", NULL,
                         (unsigned int)atoi(getenv("PS_TEST_PORT")), NULL, 0))
    return 1;
  report("failed_errno", "%u", mysql_errno(&failed));
  mysql_close(&failed);
  mysql_close(&failed);
  report("failed_closed_twice", "ok");

  /* The process still works, and a handle reusing the same struct works. */
  mysql_init(&local);
  if (!open_on(&local, &err)) {
    report("after", "error %u", err);
    return 1;
  }
  report("after", "%lld", scalar(&local, "SELECT 2"));
  mysql_close(&local);
  report_stats("stats_end");
  return 0;
}

/* ---- passthrough ---- */

typedef struct {
  long long ids[5];
  int failed;
} Passer;

static void *
passer_main(void *arg)
{
  Passer *p = arg;
  for (int i = 0; i < 5; i++) {
    MYSQL *m = mysql_init(NULL);
    if (open_on(m, NULL))
      p->ids[i] = scalar(m, "SELECT CONNECTION_ID()");
    else
      p->failed++;
    mysql_close(m);
  }
  return NULL;
}

static int
scenario_passthrough(void)
{
  Passer p[3] = {0};
  pthread_t t[3];
  for (int i = 0; i < 3; i++)
    pthread_create(&t[i], NULL, passer_main, &p[i]);
  for (int i = 0; i < 3; i++)
    pthread_join(t[i], NULL);
  /* One handle held for a while (a leak warning, if anything watched, would fire). */
  MYSQL *held = leakprobe_hold_connection(NULL);
  sleep_ms(600);
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 5; j++)
      report("id", "%lld", p[i].ids[j]);
  report("failed", "%d", p[0].failed + p[1].failed + p[2].failed);
  report("held_id", "%lld", held ? scalar(held, "SELECT CONNECTION_ID()") : -1);
  if (held)
    mysql_close(held);
  report_stats("stats_end");
  return 0;
}

/* How the probe was built: a sanitized probe cannot run under Valgrind. */
static int
scenario_sanitizer(void)
{
#if defined(__SANITIZE_ADDRESS__)
  report("sanitizer", "address");
#elif defined(__SANITIZE_THREAD__)
  report("sanitizer", "thread");
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                     \
  __has_feature(memory_sanitizer)
  report("sanitizer", "yes");
#else
  report("sanitizer", "none");
#endif
#else
  report("sanitizer", "none");
#endif
  return 0;
}

int
main(int argc, char **argv)
{
  const char *s = argc > 1 ? argv[1] : "";
  if (strcmp(s, "sanitizer") == 0)
    return scenario_sanitizer();
  if (strcmp(s, "threads") == 0)
    return scenario_threads();
  if (strcmp(s, "stack") == 0)
    return scenario_stack();
  if (strcmp(s, "double-close") == 0)
    return scenario_double_close();
  if (strcmp(s, "passthrough") == 0)
    return scenario_passthrough();
  fprintf(stderr, "usage: leakprobe threads|stack|double-close|passthrough|sanitizer\n");
  return 2;
}
