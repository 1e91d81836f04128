/* House-keeping under hostile conditions (issue 14): credentials the server revokes while a
 * pool is warm stop working within POOLSHIM_REVALIDATE and the pool's connections close;
 * connects with ever new wrong passwords leave no pools behind; fork() returns at once
 * while the housekeeper is stuck connecting to a frozen server. Facts from the server
 * (PROCESSLIST by user, error codes), the proxy and /proc/self/status. */
#include <errmsg.h>
#include <glib/gstdio.h>
#include <mysqld_error.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define REV_USER "ps_revoked"

static void
setup(void)
{
  setenv("POOLSHIM_REVALIDATE", "1s", 1);
}

/* Room for one connection lent and one idle: the idle one is then lent again, even while
 * its reset is under way (a pool with room would rather open another). */
static void
setup_two(void)
{
  setup();
  setenv("POOLSHIM_POOL_SIZE", "2", 1);
}

TestSuite(house, .init = setup, .timeout = 120);

static gint64
now_ms(void)
{
  return g_get_monotonic_time() / 1000;
}

/* A user of its own for each test, with password `pw`, on both hosts the server knows. */
static void
create_user(const char *pw)
{
  MYSQL *a = pst_admin();
  pst_exec(a, "DROP USER IF EXISTS '" REV_USER "'@'%%', '" REV_USER "'@'localhost'");
  pst_exec(a, "CREATE USER '" REV_USER "'@'%%' IDENTIFIED BY '%s'", pw);
  pst_exec(a, "CREATE USER '" REV_USER "'@'localhost' IDENTIFIED BY '%s'", pw);
  pst_exec(a, "GRANT SELECT ON %s.* TO '" REV_USER "'@'%%', '" REV_USER "'@'localhost'",
           pst_env("PS_TEST_DB"));
}

/* Waits (max 5 s) until the server has at most `n` sessions of the user; returns how many
 * there are. */
static long long
wait_user_threads(long long n)
{
  gint64 deadline = now_ms() + 5000;
  long long now;
  while ((now = pst_user_threads(REV_USER)) > n && now_ms() < deadline)
    g_usleep(50 * 1000);
  return now;
}

static long long
wait_user_gone(void)
{
  return wait_user_threads(0);
}

/* A warm pool of the user: one connection idle, `lent` (if not NULL) one lent. */
static void
warm_pool(const char *pw, MYSQL **lent)
{
  MYSQL *m = pst_connect(REV_USER, pw, pst_env("PS_TEST_DB"));
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  if (lent)
    *lent = pst_connect(REV_USER, pw, pst_env("PS_TEST_DB"));
  mysql_close(m);
  m = pst_connect(REV_USER, pw, pst_env("PS_TEST_DB"));
  cr_assert_eq(pst_scalar(m, "SELECT CONNECTION_ID()"), id, "the pool is warm: reused");
  mysql_close(m);
  cr_assert_eq(pst_user_threads(REV_USER), lent ? 2 : 1);
}

/* Connects with `pw` until a connect fails (max `bound_ms` plus slack); returns its error
 * and how long after `since` it came, with its message in msg. */
static unsigned int
connect_until_refused(const char *pw, gint64 since, gint64 *after_ms, char *msg, size_t len)
{
  gint64 deadline = now_ms() + 1000 + 4000; /* POOLSHIM_REVALIDATE=1s, and slack */
  for (;;) {
    unsigned int err = 0;
    MYSQL *m = pst_try_connect(REV_USER, pw, pst_env("PS_TEST_DB"), &err, msg, len);
    if (!m) {
      *after_ms = now_ms() - since;
      return err;
    }
    mysql_close(m);
    cr_assert_lt(now_ms(), deadline, "the revoked credentials still work after %lld ms",
                 (long long)(now_ms() - since));
    g_usleep(100 * 1000);
  }
}

Test(house, a_changed_password_stops_working_within_the_interval_and_its_pool_closes,
     .init = setup_two)
{
  create_user("old-pw");
  MYSQL *lent = NULL;
  warm_pool("old-pw", &lent);
  gint64 t0 = now_ms();
  /* IDENTIFIED BY belongs to one user of a list: one statement per host. */
  pst_exec(pst_admin(), "ALTER USER '" REV_USER "'@'%%' IDENTIFIED BY 'new-pw'");
  pst_exec(pst_admin(), "ALTER USER '" REV_USER "'@'localhost' IDENTIFIED BY 'new-pw'");
  char msg[512];
  gint64 after;
  unsigned int err = connect_until_refused("old-pw", t0, &after, msg, sizeof msg);
  cr_assert_eq(err, ER_ACCESS_DENIED_ERROR, "the server's own error, got %u: %s", err, msg);
  cr_assert(strstr(msg, "Access denied for user '" REV_USER "'"), "its message: %s", msg);
  cr_assert_leq(after, 1000 + 4000);
  /* The idle connection is closed; the lent one closes when it comes back. */
  cr_assert_eq(wait_user_threads(1), 1, "only the lent connection is left");
  mysql_close(lent);
  cr_assert_eq(wait_user_gone(), 0, "the pool of the revoked password kept a connection");
  /* The new password works. */
  MYSQL *m = pst_connect(REV_USER, "new-pw", pst_env("PS_TEST_DB"));
  cr_assert_eq(pst_scalar(m, "SELECT 1"), 1);
  mysql_close(m);
}

Test(house, a_locked_account_gets_the_servers_error_and_works_again_once_unlocked)
{
  create_user("pw");
  warm_pool("pw", NULL);
  gint64 t0 = now_ms();
  pst_exec(pst_admin(), "ALTER USER '" REV_USER "'@'%%', '" REV_USER "'@'localhost' "
                        "ACCOUNT LOCK");
  char msg[512];
  gint64 after;
  unsigned int err = connect_until_refused("pw", t0, &after, msg, sizeof msg);
  cr_assert_eq(err, 4151 /* ER_ACCOUNT_LOCKED */, "got %u: %s", err, msg);
  cr_assert_eq(wait_user_gone(), 0, "the locked account's pool kept a connection");
  /* While revoked, every connect asks the server: the same error, no pool. */
  unsigned int again = 0;
  cr_assert_null(pst_try_connect(REV_USER, "pw", pst_env("PS_TEST_DB"), &again, msg, sizeof msg));
  cr_assert_eq(again, 4151);
  pst_exec(pst_admin(), "ALTER USER '" REV_USER "'@'%%', '" REV_USER "'@'localhost' "
                        "ACCOUNT UNLOCK");
  MYSQL *m = pst_connect(REV_USER, "pw", pst_env("PS_TEST_DB"));
  cr_assert_eq(pst_scalar(m, "SELECT 1"), 1);
  mysql_close(m);
}

Test(house, a_dropped_user_gets_access_denied_and_its_pool_closes)
{
  create_user("pw");
  warm_pool("pw", NULL);
  gint64 t0 = now_ms();
  pst_exec(pst_admin(), "DROP USER '" REV_USER "'@'%%', '" REV_USER "'@'localhost'");
  char msg[512];
  gint64 after;
  unsigned int err = connect_until_refused("pw", t0, &after, msg, sizeof msg);
  cr_assert_eq(err, ER_ACCESS_DENIED_ERROR, "got %u: %s", err, msg);
  cr_assert_eq(wait_user_gone(), 0, "the dropped user's pool kept a connection");
}

/* ---- bounded memory ---- */

#ifdef __SANITIZE_ADDRESS__
/* AddressSanitizer keeps freed memory in quarantine (256 MiB) and pads every allocation:
 * resident memory says nothing there; the bytes its allocator has in use do. */
size_t __sanitizer_get_current_allocated_bytes(void);

static long
vm_rss_kib(void)
{
  return (long)(__sanitizer_get_current_allocated_bytes() / 1024);
}
#else
static long
vm_rss_kib(void)
{
  g_autofree char *status = NULL;
  cr_assert(g_file_get_contents("/proc/self/status", &status, NULL, NULL));
  const char *line = strstr(status, "VmRSS:");
  cr_assert_not_null(line);
  return strtol(line + 6, NULL, 10);
}
#endif

static void
wrong_passwords(int from, int to)
{
  for (int i = from; i < to; i++) {
    char pw[32], msg[256];
    g_snprintf(pw, sizeof pw, "wrong-%d", i);
    unsigned int err = 0;
    MYSQL *m = pst_try_connect(pst_env("PS_TEST_USER"), pw, pst_env("PS_TEST_DB"), &err, msg,
                               sizeof msg);
    cr_assert_null(m, "a wrong password was accepted");
    cr_assert_eq(err, ER_ACCESS_DENIED_ERROR, "got %u: %s", err, msg);
  }
}

static char stats_dir[64];

static void
setup_stats_file(void)
{
  setup();
  g_strlcpy(stats_dir, "/tmp/pst-house.XXXXXX", sizeof stats_dir);
  cr_assert_not_null(g_mkdtemp(stats_dir));
  g_autofree char *path = g_build_filename(stats_dir, "house.prom", NULL);
  setenv("POOLSHIM_STATS_FILE", path, 1);
  setenv("POOLSHIM_STATS_INTERVAL", "1s", 1);
}

static void
remove_stats_file(void)
{
  g_autofree char *path = g_build_filename(stats_dir, "house.prom", NULL);
  g_unlink(path);
  g_rmdir(stats_dir);
}

/* The pools the statistics file lists, once it has been rewritten after `since_us` (real
 * time; waits at most 5 s). */
static guint
pools_in_stats_file(gint64 since_us)
{
  g_autofree char *path = g_build_filename(stats_dir, "house.prom", NULL);
  gint64 deadline = now_ms() + 5000;
  for (;;) {
    GStatBuf st;
    if (g_stat(path, &st) == 0 && (gint64)st.st_mtime * G_USEC_PER_SEC > since_us)
      break;
    cr_assert_lt(now_ms(), deadline, "the statistics file was not rewritten");
    g_usleep(100 * 1000);
  }
  g_autofree char *text = NULL;
  cr_assert(g_file_get_contents(path, &text, NULL, NULL));
  return pst_count_lines_with(text, "poolshim_borrowed_total{");
}

Test(house, connects_with_ever_new_wrong_passwords_leave_no_pools_and_no_memory_behind,
     .init = setup_stats_file, .fini = remove_stats_file, .timeout = 280)
{
  mysql_close(pst_connect_app()); /* one real pool, to show it stays */
  wrong_passwords(0, 2000);
  poolshim_stats_t s1;
  pst_stats(&s1);
  long rss1 = vm_rss_kib();
  guint file1 = pools_in_stats_file(g_get_real_time() + G_USEC_PER_SEC);
  wrong_passwords(2000, 20000);
  poolshim_stats_t s2;
  pst_stats(&s2);
  long rss2 = vm_rss_kib();
  guint file2 = pools_in_stats_file(g_get_real_time() + G_USEC_PER_SEC);
  cr_assert_geq(file1, 1, "the application's own pool is listed");
  cr_assert_eq(file2, file1, "the statistics file lists %u pools, it listed %u", file2, file1);
  cr_log_info("pools %u -> %u, VmRSS %ld -> %ld KiB (2,000 -> 20,000 wrong passwords)",
              s1.pools, s2.pools, rss1, rss2);
  cr_assert_leq(s1.pools, 2, "after 2,000 wrong passwords: %u pools", s1.pools);
  cr_assert_eq(s2.pools, s1.pools, "pools grew from %u to %u", s1.pools, s2.pools);
  cr_assert_lt(rss2 - rss1, 4 * 1024, "resident memory grew by %ld KiB from 2,000 to 20,000",
               rss2 - rss1);
}

/* ---- fork while the housekeeper connects to a frozen server ---- */

static void
setup_min_idle(void)
{
  setup();
  setenv("POOLSHIM_POOL_SIZE", "3", 1);
  setenv("POOLSHIM_MIN_IDLE", "1", 1);
}

/* With setup_min_idle, through proxy p (the program's timeouts given): a connection lent,
 * the idle one the housekeeper opens for POOLSHIM_MIN_IDLE lent too, and the housekeeper
 * inside the connect of the next one, which `stall` (pst_proxy_freeze: nothing at all;
 * pst_proxy_greeting_only: the greeting, then nothing) leaves unanswered. */
static void
housekeeper_stalled(PstProxy *p, unsigned int connect_timeout, unsigned int rw_timeout,
                    void (*stall)(PstProxy *p), MYSQL **lent, MYSQL **second)
{
  *lent = pst_connect_via(p, connect_timeout, rw_timeout);
  gint64 deadline = now_ms() + 5000;
  poolshim_stats_t s;
  for (pst_stats(&s); s.idle < 1 && now_ms() < deadline; pst_stats(&s))
    g_usleep(20 * 1000);
  cr_assert_eq(s.idle, 1, "the housekeeper filled the pool");
  cr_assert_eq(pst_proxy_conns(p), 2);
  stall(p);
  /* Taking the idle one makes the housekeeper open another, into the stalled server. */
  *second = pst_connect_via(p, connect_timeout, rw_timeout);
  deadline = now_ms() + 5000;
  while (pst_proxy_conns(p) < 3 && now_ms() < deadline)
    g_usleep(20 * 1000);
  cr_assert_eq(pst_proxy_conns(p), 3, "the housekeeper is connecting");
}

/* The housekeeper's connect gets the server's greeting, then the server stalls: the
 * program, which bounds none of its reads, exits (mysql_library_end: the drain waits for the
 * housekeeper's tick). A background open's whole handshake is bounded by its connect
 * timeout (the program's 3 s here; 10 s at most, also when the program sets none), which
 * the client library applies to the authentication's reads too: the drain ends. */
Test(house, the_exit_drain_ends_while_a_server_stalls_in_the_housekeepers_handshake,
     .init = setup_min_idle)
{
  PstProxy *p = pst_proxy_start();
  MYSQL *lent, *second;
  /* No read or write timeout of the program's. */
  housekeeper_stalled(p, 3, 0, pst_proxy_greeting_only, &lent, &second);
  mysql_close(second);
  mysql_close(lent);
  gint64 t = now_ms();
  mysql_library_end(); /* a hang here ends the test at its timeout */
  cr_log_info("the drain took %lld ms", (long long)(now_ms() - t));
  pst_proxy_stop(p);
}

Test(house, fork_returns_at_once_while_the_housekeeper_waits_for_a_frozen_server,
     .init = setup_min_idle)
{
  PstProxy *p = pst_proxy_start();
  MYSQL *lent, *second;
  housekeeper_stalled(p, 10, 10, pst_proxy_freeze, &lent, &second);
  g_usleep(200 * 1000);
  for (int i = 0; i < 5; i++) {
    gint64 t = now_ms();
    pid_t pid = fork();
    if (pid == 0) {
      /* The child's drain must not wait for the parent's housekeeper. _exit: the child's
       * copy of what the parent's threads were doing is unreachable, not leaked. */
      mysql_library_end();
      _exit(0);
    }
    gint64 took = now_ms() - t;
    cr_assert_gt(pid, 0);
    cr_assert_lt(took, 1000, "fork() %d took %lld ms", i, (long long)took);
    int status = 0;
    pid_t done = 0;
    gint64 until = now_ms() + 5000;
    while ((done = waitpid(pid, &status, WNOHANG)) == 0 && now_ms() < until)
      g_usleep(10 * 1000);
    cr_assert_eq(done, pid, "child %d did not exit within 5 s", i);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d failed", i);
  }
  pst_proxy_thaw(p);
  mysql_close(second);
  mysql_close(lent);
  pst_proxy_stop(p);
}
