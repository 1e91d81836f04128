/* Fork: a prefork parent warms the pool, children use pools of their own concurrently,
 * and nothing a child does disturbs the parent's sessions. */
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

TestSuite(fork, .timeout = 120);

#define CHILDREN 4
#define CYCLES 200

/* Each query's answer must be the one asked for: crossed sessions would mix them up. */
static int
cycles(int salt)
{
  int bad = 0;
  for (int i = 0; i < CYCLES; i++) {
    MYSQL *m = mysql_init(NULL);
    if (!mysql_real_connect(m, getenv("PS_TEST_HOST"), getenv("PS_TEST_USER"),
                            getenv("PS_TEST_PASSWORD"), getenv("PS_TEST_DB"), pst_port(), NULL,
                            0)) {
      bad++;
      mysql_close(m);
      continue;
    }
    long long want = (long long)salt * 100000 + i;
    char sql[64];
    g_snprintf(sql, sizeof sql, "SELECT %lld", want);
    if (mysql_query(m, sql)) {
      bad++;
    } else {
      MYSQL_RES *r = mysql_store_result(m);
      MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
      if (!row || g_ascii_strtoll(row[0], NULL, 10) != want)
        bad++;
      if (r)
        mysql_free_result(r);
    }
    mysql_close(m);
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
      int bad = cycles(c + 1);
      /* A child closing an inherited handle must not end the parent's session. */
      mysql_close(held);
      _exit(bad == 0 ? 0 : 1);
    }
  }
  int bad = cycles(99);
  for (int c = 0; c < CHILDREN; c++) {
    int status = 0;
    cr_assert_eq(waitpid(pids[c], &status, 0), pids[c]);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d failed (status %d)", c,
              status);
  }
  cr_assert_eq(bad, 0, "%d wrong answers in the parent", bad);
  /* The parent's held session survived the children. */
  cr_assert_eq(pst_scalar(held, "SELECT CONNECTION_ID()"), held_id);
  mysql_close(held);
  /* And its pooled sessions are still the ones it warmed. */
  MYSQL *again = pst_connect_app();
  long long id = pst_scalar(again, "SELECT CONNECTION_ID()");
  cr_assert(id == ids[0] || id == ids[1] || id == ids[2] || id == held_id,
            "got a connection the parent never opened: %lld", id);
  mysql_close(again);
}
