/* POOLSHIM_HOST_MAX against hostile neighbours and a stalled server, seen from outside:
 * unmodified clients (tests/opsprobe, killed by its own alarm if it hangs) with FIFOs, links,
 * directories and other users' files planted where slot files and directories go, and an
 * exit while the server behind tests/faultproxy is frozen. The server's own counters and
 * thread ids prove what happened. Runs as root (CI does): files are given to `nobody`. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "opsrun.h"

TestSuite(hostile, .timeout = 110);

#define NOBODY 65534
#define ALARM_S "20" /* the probe's own alarm: a hang ends as SIGALRM, never outlives us */

/* The probe's environment: the cap and its directory, a short POOLSHIM_TIMEOUT, and the
 * temporary directory (the per-user fallback is made there). */
static OpsProbe *
start(const char *const *args, const char *host_max, const char *dir, const char *tmpdir)
{
  /* The fork scenario's child starts the shim's threads again: ThreadSanitizer (the tsan
   * pass) refuses new threads after a multi-threaded fork unless told otherwise. */
  const char *tsan = g_getenv("TSAN_OPTIONS");
  g_autofree char *tsan_fork =
      tsan ? g_strconcat(tsan, ":die_after_fork=0", NULL) : g_strdup("die_after_fork=0");
  /* clang-format off */
  const char *env[] = {
    "POOLSHIM_HOST_MAX", host_max,
    "POOLSHIM_HOST_DIR", dir,
    "POOLSHIM_TIMEOUT", "1s",
    "POOLSHIM_POOL_SIZE", "4",
    "POOLSHIM_STATS_FILE", NULL,
    "POOLSHIM_CONFIG", NULL,
    "XDG_RUNTIME_DIR", NULL,
    "TMPDIR", tmpdir,
    "PST_ALARM", ALARM_S,
    "TSAN_OPTIONS", tsan_fork,
    NULL};
  /* clang-format on */
  return ops_start(args, env);
}

/* Runs a probe to its end (its alarm fires well before this bound). */
static OpsProbe *
run(const char *const *args, const char *host_max, const char *dir, const char *tmpdir)
{
  OpsProbe *p = start(args, host_max, dir, tmpdir);
  ops_finish(p, 40000);
  cr_assert(WIFEXITED(ops_status(p)) && WEXITSTATUS(ops_status(p)) == 0,
            "the probe did not finish (status %#x: %s)\n%s\n%s", ops_status(p),
            WIFSIGNALED(ops_status(p)) && WTERMSIG(ops_status(p)) == SIGALRM
                ? "hung until its alarm"
                : "failed",
            ops_out(p), ops_err(p));
  return p;
}

static guint
entries(const char *dir)
{
  GDir *d = g_dir_open(dir, 0, NULL);
  cr_assert_not_null(d, "%s", dir);
  guint n = 0;
  while (g_dir_read_name(d))
    n++;
  g_dir_close(d);
  return n;
}

/* The one slots-* directory under dir (made by a first probe run); caller frees. */
static char *
slots_dir(const char *dir)
{
  GDir *d = g_dir_open(dir, 0, NULL);
  cr_assert_not_null(d, "%s", dir);
  char *found = NULL;
  for (const char *name; (name = g_dir_read_name(d));)
    if (g_str_has_prefix(name, "slots-")) {
      cr_assert_null(found, "two slot directories under %s", dir);
      found = g_build_filename(dir, name, NULL);
    }
  g_dir_close(d);
  cr_assert_not_null(found, "no slot directory under %s", dir);
  return found;
}

/* Replaces (or creates) dir/name with a FIFO. */
static void
plant_fifo(const char *dir, const char *name)
{
  g_autofree char *path = g_build_filename(dir, name, NULL);
  unlink(path);
  cr_assert_eq(mkfifo(path, 0666), 0, "mkfifo %s: %s", path, g_strerror(errno));
}

static void
assert_mode(const char *path, mode_t type, mode_t mode, uid_t uid)
{
  struct stat st;
  cr_assert_eq(lstat(path, &st), 0, "%s: %s", path, g_strerror(errno));
  cr_assert_eq(st.st_mode & S_IFMT, type, "%s has the wrong type", path);
  cr_assert_eq(st.st_mode & 07777, mode, "%s has mode %04o, not %04o", path,
               (unsigned)(st.st_mode & 07777), (unsigned)mode);
  cr_assert_eq(st.st_uid, uid, "%s is owned by uid %u", path, (unsigned)st.st_uid);
}

Test(hostile, fifos_under_every_slot_name_and_waiting_hang_neither_connect_nor_close_fork_or_exit)
{
  cr_assert_eq(geteuid(), 0, "this test plants files as root");
  g_autofree char *dir = ops_tmp_dir("pst-hostile");
  const char *once[] = {"idle", "1", "0", NULL};
  ops_free(run(once, "2", dir, dir));
  g_autofree char *sd = slots_dir(dir);
  plant_fifo(sd, "0");
  plant_fifo(sd, "1");
  plant_fifo(sd, "waiting");

  /* Connect, close, connect (pooled), fork a child that connects and closes, exit. */
  long long before = pst_status("Connections");
  const char *args[] = {"fork", NULL};
  OpsProbe *p = run(args, "2", dir, dir);
  long long opened = pst_status("Connections") - before;
  ops_assert_value(p, "ERRORS", "0");
  ops_assert_value(p, "CHILD", "0");
  g_autofree char *ids = pst_report_value(ops_out(p), "IDS");
  g_auto(GStrv) id = g_strsplit(ids ? ids : "", ",", -1);
  cr_assert(g_strv_length(id) == 2 && atoll(id[0]) > 0 && g_str_equal(id[0], id[1]),
            "the second connect did not reuse the first one's server thread: IDS=%s", ids);
  /* The parent's one connection (reused) and the child's own. */
  cr_assert_eq(opened, 2, "the server counted %lld connections, not 2", opened);
  /* One warning per planted file, one that nothing is capped: not one per connect. */
  cr_assert_eq(pst_count_lines_with(ops_err(p), "is a FIFO: skipped"), 3, "%s", ops_err(p));
  cr_assert_eq(pst_count_lines_with(ops_err(p), "is usable"), 1, "%s", ops_err(p));
  fprintf(stderr,
          "hostile: FIFOs under 0, 1 and waiting: connect, reuse (%s), fork and exit "
          "finished; %lld server connections\n",
          ids, opened);
  ops_free(p);
  ops_rm_tree(dir);
}

Test(hostile, a_link_a_directory_and_another_users_file_are_skipped_and_the_other_slots_still_cap)
{
  cr_assert_eq(geteuid(), 0, "this test plants files as root");
  g_autofree char *dir = ops_tmp_dir("pst-hostile");
  const char *once[] = {"idle", "1", "0", NULL};
  ops_free(run(once, "4", dir, dir));
  g_autofree char *sd = slots_dir(dir);
  g_autofree char *target = g_build_filename(dir, "target", NULL);
  g_autofree char *s0 = g_build_filename(sd, "0", NULL);
  g_autofree char *s1 = g_build_filename(sd, "1", NULL);
  g_autofree char *s2 = g_build_filename(sd, "2", NULL);
  unlink(s0);
  cr_assert_eq(symlink(target, s0), 0);
  unlink(s1);
  cr_assert_eq(mkdir(s1, 0755), 0);
  cr_assert(g_file_set_contents(s2, "", 0, NULL));
  cr_assert_eq(chown(s2, NOBODY, NOBODY), 0, "%s", g_strerror(errno));

  /* Cap 4, three slots refused: the first connection takes slot 3, the second waits for it
   * (POOLSHIM_TIMEOUT=1s) and gets the pool's 1040. */
  const char *hold[] = {"hold", "2", "1", NULL};
  OpsProbe *p = run(hold, "4", dir, dir);
  ops_assert_value(p, "HELD", "1");
  ops_assert_value(p, "ERR1040", "1");
  g_autofree char *why = pst_report_value(ops_out(p), "FIRST_ERROR");
  cr_assert(why && strstr(why, "POOLSHIM_HOST_MAX"), "%s", why);
  cr_assert_eq(pst_count_lines_with(ops_err(p), ": skipped"), 3, "%s", ops_err(p));
  cr_assert_eq(pst_count_lines_with(ops_err(p), "is a symbolic link"), 1, "%s", ops_err(p));
  cr_assert_eq(pst_count_lines_with(ops_err(p), "is a directory"), 1, "%s", ops_err(p));
  cr_assert_eq(pst_count_lines_with(ops_err(p), "is owned by a user"), 1, "%s", ops_err(p));
  cr_assert(!g_file_test(target, G_FILE_TEST_EXISTS), "the link was followed");
  ops_free(p);
  ops_rm_tree(dir);
}

/* What another user can put where this user's private directory goes. */
typedef enum { PLANT_DIR, PLANT_STICKY_DIR, PLANT_LINK } Plant;

static void
plant_private(const char *path, const char *elsewhere, Plant how)
{
  if (how == PLANT_LINK) {
    cr_assert_eq(mkdir(elsewhere, 0700), 0);
    cr_assert_eq(chown(elsewhere, NOBODY, NOBODY), 0);
    cr_assert_eq(symlink(elsewhere, path), 0);
    return;
  }
  cr_assert_eq(mkdir(path, 0700), 0);
  cr_assert_eq(chmod(path, how == PLANT_STICKY_DIR ? 01777 : 0700), 0);
  cr_assert_eq(chown(path, NOBODY, NOBODY), 0);
}

Test(hostile, a_private_directory_another_user_made_first_is_refused_and_never_used)
{
  cr_assert_eq(geteuid(), 0, "this test plants files as root");
  static const char *const kinds[] = {"a directory", "a sticky 01777 directory", "a link"};
  for (Plant how = PLANT_DIR; how <= PLANT_LINK; how++) {
    g_autofree char *tmp = ops_tmp_dir("pst-hostile");
    /* The configured directory is refused (writable by all, no sticky bit): the fallback is
     * the per-user one, which another user made first. */
    g_autofree char *loose = g_build_filename(tmp, "loose", NULL);
    cr_assert_eq(mkdir(loose, 0777), 0);
    cr_assert_eq(chmod(loose, 0777), 0);
    g_autofree char *leaf = g_strdup_printf("poolshim-%u", (unsigned)geteuid());
    g_autofree char *own = g_build_filename(tmp, leaf, NULL);
    g_autofree char *elsewhere = g_build_filename(tmp, "elsewhere", NULL);
    plant_private(own, elsewhere, how);

    /* Cap 1, not enforced: both connections open (no 1040), and nothing is created. */
    const char *hold[] = {"hold", "2", "1", NULL};
    OpsProbe *p = run(hold, "1", loose, tmp);
    ops_assert_value(p, "HELD", "2");
    ops_assert_value(p, "ERRORS", "0");
    g_autofree char *refused_loose = g_strdup_printf("refusing %s:", loose);
    g_autofree char *refused_own = g_strdup_printf("refusing %s:", own);
    cr_assert_eq(pst_count_lines_with(ops_err(p), refused_loose), 1, "%s: %s", kinds[how],
                 ops_err(p));
    cr_assert_eq(pst_count_lines_with(ops_err(p), refused_own), 1, "%s: %s", kinds[how],
                 ops_err(p));
    cr_assert_eq(pst_count_lines_with(ops_err(p), "not capped"), 1, "%s", ops_err(p));
    cr_assert_eq(entries(loose), 0, "something was created in the refused %s", loose);
    if (how == PLANT_LINK)
      cr_assert_eq(entries(elsewhere), 0, "the link was followed");
    else
      cr_assert_eq(entries(own), 0, "%s: something was created in it", kinds[how]);
    struct stat st;
    cr_assert_eq(lstat(how == PLANT_LINK ? elsewhere : own, &st), 0);
    cr_assert_eq(st.st_uid, NOBODY, "the planted %s changed owner", kinds[how]);
    if (how == PLANT_STICKY_DIR)
      cr_assert_eq(st.st_mode & 07777, 01777, "the planted directory's mode was changed");
    ops_free(p);
    ops_rm_tree(tmp);
  }
}

Test(hostile, a_refused_directory_falls_back_to_a_private_one_that_still_caps)
{
  g_autofree char *tmp = ops_tmp_dir("pst-hostile");
  g_autofree char *loose = g_build_filename(tmp, "loose", NULL);
  cr_assert_eq(mkdir(loose, 0777), 0);
  cr_assert_eq(chmod(loose, 0777), 0);
  const char *hold[] = {"hold", "2", "1", NULL};
  OpsProbe *p = run(hold, "1", loose, tmp);
  ops_assert_value(p, "HELD", "1");
  ops_assert_value(p, "ERR1040", "1");
  cr_assert_eq(entries(loose), 0, "something was created in the refused %s", loose);
  g_autofree char *leaf = g_strdup_printf("poolshim-%u", (unsigned)geteuid());
  g_autofree char *own = g_build_filename(tmp, leaf, NULL);
  assert_mode(own, S_IFDIR, 0700, geteuid());
  g_autofree char *sd = slots_dir(own);
  assert_mode(sd, S_IFDIR, 0700, geteuid());
  g_autofree char *slot = g_build_filename(sd, "0", NULL);
  assert_mode(slot, S_IFREG, 0600, geteuid());
  g_autofree char *refused = g_strdup_printf("refusing %s:", loose);
  cr_assert_eq(pst_count_lines_with(ops_err(p), refused), 1, "%s", ops_err(p));
  ops_free(p);
  ops_rm_tree(tmp);
}

Test(hostile, the_exit_drain_closes_idle_connections_together_while_the_server_is_frozen)
{
  PstProxy *proxy = pst_proxy_start();
  g_autofree char *dir = ops_tmp_dir("pst-hostile");
  g_autofree char *port = g_strdup_printf("%u", pst_proxy_port(proxy));
  /* clang-format off */
  const char *env[] = {
    "POOLSHIM_HOST_MAX", "16",
    "POOLSHIM_HOST_DIR", dir,
    "POOLSHIM_POOL_SIZE", "8",
    "POOLSHIM_STATS_FILE", NULL,
    "POOLSHIM_CONFIG", NULL,
    "PS_TEST_HOST", "127.0.0.1",
    "PS_TEST_PORT", port,
    "PST_ALARM", "100",
    NULL};
  /* clang-format on */
  /* Eight connections opened and returned to the pool, then 3 s without a call. */
  const char *args[] = {"idle", "8", "3", NULL};
  OpsProbe *p = ops_start(args, env);
  g_autofree char *idle = ops_wait_value(p, "IDLE", 15000);
  cr_assert_str_eq(idle, "8", "%s\n%s", ops_out(p), ops_err(p));
  g_autofree char *ids = ops_wait_value(p, "IDS", 1000);
  g_usleep(300 * 1000); /* the replies of the resets sent at close arrive */
  pst_proxy_freeze(proxy);
  g_autofree char *done = ops_wait_value(p, "DONE", 15000);
  gint64 t0 = g_get_monotonic_time();
  ops_finish(p, 90000);
  gint64 took_ms = (g_get_monotonic_time() - t0) / 1000;
  cr_assert(WIFEXITED(ops_status(p)) && WEXITSTATUS(ops_status(p)) == 0, "status %#x\n%s",
            ops_status(p), ops_err(p));
  fprintf(stderr,
          "hostile: exit with 8 idle connections behind a frozen server: %" G_GINT64_FORMAT " ms\n",
          took_ms);
  /* A liveness bound, not a speed figure: one wait of at most 1 s for all, where a wait per
   * connection (5 s each) took 40 s. */
  cr_assert_lt(took_ms, 4000, "the exit took %" G_GINT64_FORMAT " ms", took_ms);
  /* Thawed, the server sees the COM_QUITs and ends all eight sessions. */
  pst_proxy_thaw(proxy);
  g_auto(GStrv) each = g_strsplit(ids, ",", -1);
  cr_assert_eq(g_strv_length(each), 8, "IDS=%s", ids);
  for (char **i = each; *i; i++) {
    cr_assert_gt(atol(*i), 0, "IDS=%s", ids);
    pst_wait_thread_gone(strtoul(*i, NULL, 10));
  }
  ops_free(p);
  pst_proxy_stop(proxy);
  ops_rm_tree(dir);
}
