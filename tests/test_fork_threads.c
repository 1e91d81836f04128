/* fork() while another thread of the host is inside something a child needs: the shim's
 * first call, or GLib's random-number lock, which the pool once took. The child has only
 * the forking thread, so a lock that other thread held would stay held in it for good.
 * Each child runs under an alarm: a child that hangs fails the test instead of stopping it.
 * Runs with the test library preloaded (its POOLSHIM_TEST_INIT_PAUSE_FILE), each test in a
 * process of its own that calls the client library first in the test. */
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

TestSuite(fork_threads, .timeout = 120);

/* A connect, a query and a close, all on this thread: 0 when all worked. */
static int
one_cycle(void)
{
  MYSQL *m = mysql_init(NULL);
  int bad = !m || !mysql_real_connect(m, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER"),
                                      pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"),
                                      pst_port(), NULL, 0) ||
            mysql_query(m, "SELECT 1") != 0;
  if (!bad) {
    MYSQL_RES *r = mysql_store_result(m);
    bad = !r || !mysql_fetch_row(r);
    if (r)
      mysql_free_result(r);
  }
  mysql_close(m);
  return bad;
}

/* Forks a child that runs one cycle within 10 s; asserts it exited with 0. */
static void
child_cycles(const char *when)
{
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    alarm(10);
    _exit(one_cycle());
  }
  int status = 0;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
            "the child forked %s %s", when,
            WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM ? "hung (killed by its alarm)"
                                                               : "failed its cycle");
}

static void *
first_call(void *arg)
{
  *(int *)arg = one_cycle();
  return NULL;
}

static char *pause_file;

static void
remove_pause_file(void)
{
  if (pause_file)
    unlink(pause_file);
}

/* The test library's first call stays in the shim's set-up until the pause file goes (2 s
 * at most). fork() waits for it: the child finds the set-up done and connects. */
Test(fork_threads, a_child_forked_during_another_threads_first_call_connects,
     .fini = remove_pause_file)
{
  pause_file = g_strdup_printf("%s/fork-init-%d", g_get_tmp_dir(), (int)getpid());
  unlink(pause_file);
  setenv("POOLSHIM_TEST_INIT_PAUSE_FILE", pause_file, 1);
  int bad = -1;
  pthread_t t;
  pthread_create(&t, NULL, first_call, &bad);
  for (int i = 0; i < 400 && !g_file_test(pause_file, G_FILE_TEST_EXISTS); i++)
    g_usleep(25 * 1000);
  cr_assert(g_file_test(pause_file, G_FILE_TEST_EXISTS), "the first call did not start");
  child_cycles("during another thread's first call");
  pthread_join(t, NULL);
  cr_assert_eq(bad, 0, "the first call's own cycle failed");
  cr_assert_eq(one_cycle(), 0, "the parent's next cycle failed");
}

static gint spinning;

static void *
draw_random_numbers(void *arg)
{
  (void)arg;
  while (g_atomic_int_get(&spinning))
    (void)g_random_int();
  return NULL;
}

/* A host thread draws from GLib's global generator without pause, so its lock is held at
 * many of the forks: each child opens a connection of its own pool (the connection's
 * lifetime jitter once came from that generator, under the pool's lock). */
Test(fork_threads, children_forked_while_another_thread_draws_glib_random_numbers_connect)
{
  cr_assert_eq(one_cycle(), 0, "the parent's first cycle failed");
  g_atomic_int_set(&spinning, 1);
  pthread_t t;
  pthread_create(&t, NULL, draw_random_numbers, NULL);
  for (int i = 0; i < 20; i++)
    child_cycles("while another thread drew random numbers");
  g_atomic_int_set(&spinning, 0);
  pthread_join(t, NULL);
}
