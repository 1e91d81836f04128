/* Fork: a prefork parent warms the pool, children use pools of their own concurrently,
 * and nothing a child does disturbs the parent's sessions. */
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

static void
pool_of_eight(void)
{
  setenv("POOLSHIM_POOL_SIZE", "8", 1);
}

TestSuite(fork, .timeout = 120, .init = pool_of_eight);

#define CHILDREN 4
#define THREADS 8       /* per process: 5 processes x 8 = 40 threads in all */
#define SECONDS 3
#define MIN_CYCLES 100  /* per process, whatever the machine's speed */
#define MAX_BAD 10      /* a thread whose connects all fail stops instead of spinning */

/* Each query's answer must be the one asked for: crossed sessions would mix them up. A thread
 * runs for SECONDS and at least `min` cycles: a slow machine (valgrind, three test chains on
 * two cores) takes longer instead of proving less, and no assertion depends on its speed. */
typedef struct {
  int salt, min;
  gint64 until_us;
  gint bad, done;
} Load;

static gpointer
load_thread(gpointer data)
{
  Load *l = data;
  for (int i = 0; (l->done < l->min || g_get_monotonic_time() < l->until_us) && l->bad < MAX_BAD;
       i++) {
    MYSQL *m = mysql_init(NULL);
    if (!mysql_real_connect(m, getenv("PS_TEST_HOST"), getenv("PS_TEST_USER"),
                            getenv("PS_TEST_PASSWORD"), getenv("PS_TEST_DB"), pst_port(), NULL,
                            0)) {
      g_atomic_int_inc(&l->bad);
      mysql_close(m);
      continue;
    }
    long long want = (long long)l->salt * 10000000 + i;
    char sql[64];
    g_snprintf(sql, sizeof sql, "SELECT %lld", want);
    if (mysql_query(m, sql)) {
      g_atomic_int_inc(&l->bad);
    } else {
      MYSQL_RES *r = mysql_store_result(m);
      MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
      if (!row || g_ascii_strtoll(row[0], NULL, 10) != want)
        g_atomic_int_inc(&l->bad);
      if (r)
        mysql_free_result(r);
    }
    g_atomic_int_inc(&l->done);
    mysql_close(m);
  }
  return NULL;
}

/* `threads` threads of connect/query/close for SECONDS and MIN_CYCLES; returns the wrong or
 * failed ones. */
static int
cycles(int salt, int threads)
{
  Load loads[THREADS];
  GThread *t[THREADS];
  gint64 until = g_get_monotonic_time() + SECONDS * G_USEC_PER_SEC;
  for (int i = 0; i < threads; i++)
    loads[i] = (Load){.salt = salt * 100 + i,
                      .min = (MIN_CYCLES + threads - 1) / threads,
                      .until_us = until};
  if (threads == 1) {
    /* In the calling thread: ThreadSanitizer cannot start threads after fork(). */
    load_thread(&loads[0]);
    return loads[0].bad;
  }
  for (int i = 0; i < threads; i++)
    t[i] = g_thread_new("load", load_thread, &loads[i]);
  int bad = 0;
  for (int i = 0; i < threads; i++) {
    g_thread_join(t[i]);
    bad += loads[i].bad;
  }
  return bad;
}

Test(fork, parent_and_children_use_the_pool_concurrently_without_interference)
{
  MYSQL *warm[3];
  long long ids[3];
  for (int i = 0; i < 3; i++) {
    warm[i] = pst_connect_app();
    ids[i] = pst_scalar(warm[i], "SELECT CONNECTION_ID()");
  }
  for (int i = 0; i < 3; i++)
    mysql_close(warm[i]);
  /* One handle stays lent across the fork: children must not touch it either. */
  MYSQL *held = pst_connect_app();
  long long held_id = pst_scalar(held, "SELECT CONNECTION_ID()");

  pid_t pids[CHILDREN];
  for (int c = 0; c < CHILDREN; c++) {
    pids[c] = fork();
    cr_assert_neq(pids[c], -1);
    if (pids[c] == 0) {
#ifdef __SANITIZE_THREAD__
      /* ThreadSanitizer cannot start threads in a child of a multi-threaded process: one
       * loop in the child's own thread there; 8 threads per process in the other passes. */
      int bad = cycles(c + 1, 1);
#else
      int bad = cycles(c + 1, THREADS);
#endif
      /* A child closing an inherited handle must not end the parent's session. */
      mysql_close(held);
      _exit(bad == 0 ? 0 : 1);
    }
  }
  int bad = cycles(99, THREADS);
  cr_assert_eq(bad, 0, "%d wrong answers or failed connects in the parent", bad);
  for (int c = 0; c < CHILDREN; c++) {
    int status = 0;
    cr_assert_eq(waitpid(pids[c], &status, 0), pids[c]);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d failed (status %d)", c,
              status);
  }
  /* The parent's held session survived the children. */
  cr_assert_eq(pst_scalar(held, "SELECT CONNECTION_ID()"), held_id);
  mysql_close(held);
  /* And the sessions it warmed before the fork were never ended by a child. */
  for (int i = 0; i < 3; i++)
    cr_assert_eq(pst_scalar(pst_admin(),
                            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %lld",
                            ids[i]),
                 1, "the parent's pooled session %lld is gone", ids[i]);
}

/* A child's counters are its own: before its first call they are all zero (not the
 * parent's, which its memory still holds), after one connect and close they count that
 * alone. Criterion's assertions do not work in the child: it exits with the number of the
 * first check that failed (no helper that asserts runs there). */
Test(fork, a_child_counts_only_its_own_connections)
{
  PstStatsFn stats = pst_stats_fn();
  for (int i = 0; i < 3; i++)
    mysql_close(pst_connect_app());
  MYSQL *held = pst_connect_app();
  poolshim_stats_t before;
  cr_assert_eq(stats(&before, sizeof before), 0);
  cr_assert_geq(before.borrowed, 4, "the parent's own counters: %llu borrowed", before.borrowed);
  pid_t pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    poolshim_stats_t s;
    if (stats(&s, sizeof s) != 0)
      _exit(10);
    if (s.borrowed || s.opened || s.open || s.lent || s.idle || s.resets || s.pools)
      _exit(11); /* the parent's counters showed through */
    MYSQL *m = mysql_init(NULL);
    if (!mysql_real_connect(m, getenv("PS_TEST_HOST"), getenv("PS_TEST_USER"),
                            getenv("PS_TEST_PASSWORD"), getenv("PS_TEST_DB"), pst_port(), NULL,
                            0) ||
        mysql_query(m, "SELECT 1"))
      _exit(12);
    mysql_free_result(mysql_store_result(m));
    mysql_close(m);
    if (stats(&s, sizeof s) != 0)
      _exit(13);
    if (s.borrowed != 1 || s.opened != 1 || s.open != 1 || s.idle != 1 || s.lent != 0)
      _exit(14);
    _exit(0);
  }
  int status = 0;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status), "the child died (status %d)", status);
  cr_assert_eq(WEXITSTATUS(status), 0,
               "the child's check %d failed (11: the parent's counters showed before its "
               "first call; 14: after one connect and close it did not count exactly that)",
               WEXITSTATUS(status));
  mysql_close(held);
}
