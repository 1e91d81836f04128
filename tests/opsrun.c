/* opsrun.c: tests/opsprobe run asynchronously, its stdout and stderr collected while it runs
 * (so that a chatty probe never blocks on a full pipe). */
#include "opsrun.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct OpsProbe {
  GPid pid;
  int in, fd[2]; /* stdin's write end; stdout and stderr (-1 once at EOF) */
  GString *text[2];
  gboolean exited;
  int status;
};

OpsProbe *
ops_start(const char *const *args, const char *const *env)
{
  GPtrArray *argv = g_ptr_array_new();
  g_ptr_array_add(argv, (gpointer)pst_env("PST_OPSPROBE"));
  for (const char *const *a = args; *a; a++)
    g_ptr_array_add(argv, (gpointer)*a);
  g_ptr_array_add(argv, NULL);
  char **envp = g_get_environ();
  for (const char *const *e = env; e && *e; e += 2)
    envp = e[1] ? g_environ_setenv(envp, e[0], e[1], TRUE) : g_environ_unsetenv(envp, e[0]);
  OpsProbe *p = g_new0(OpsProbe, 1);
  GError *error = NULL;
  gboolean ok =
      g_spawn_async_with_pipes(NULL, (char **)argv->pdata, envp, G_SPAWN_DO_NOT_REAP_CHILD, NULL,
                               NULL, &p->pid, &p->in, &p->fd[0], &p->fd[1], &error);
  g_strfreev(envp);
  cr_assert(ok, "spawning opsprobe: %s", error ? error->message : "?");
  g_ptr_array_free(argv, TRUE);
  signal(SIGPIPE, SIG_IGN);
  p->text[0] = g_string_new(NULL);
  p->text[1] = g_string_new(NULL);
  return p;
}

/* Reads what is there, waiting at most timeout_ms for something to arrive. */
static void
pump(OpsProbe *p, int timeout_ms)
{
  struct pollfd pfd[2];
  nfds_t n = 0;
  int which[2];
  for (int i = 0; i < 2; i++)
    if (p->fd[i] >= 0) {
      pfd[n] = (struct pollfd){.fd = p->fd[i], .events = POLLIN};
      which[n++] = i;
    }
  if (n == 0) {
    if (timeout_ms > 0)
      g_usleep((gulong)timeout_ms * 1000);
    return;
  }
  int r = poll(pfd, n, timeout_ms);
  if (r <= 0)
    return;
  for (nfds_t k = 0; k < n; k++) {
    if (!(pfd[k].revents & (POLLIN | POLLHUP | POLLERR)))
      continue;
    int i = which[k];
    char buf[4096];
    ssize_t got = read(p->fd[i], buf, sizeof buf);
    if (got > 0) {
      g_string_append_len(p->text[i], buf, got);
    } else if (got == 0 || errno != EINTR) {
      close(p->fd[i]);
      p->fd[i] = -1;
    }
  }
}

char *
ops_wait_value(OpsProbe *p, const char *name, int timeout_ms)
{
  gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
  for (;;) {
    char *v = pst_report_value(p->text[0]->str, name);
    if (v)
      return v;
    cr_assert(p->fd[0] >= 0 || !p->exited, "opsprobe exited without reporting %s:\n%s\n%s", name,
              p->text[0]->str, p->text[1]->str);
    gint64 left_ms = (deadline - g_get_monotonic_time()) / 1000;
    cr_assert_gt(left_ms, 0, "opsprobe did not report %s within %d ms:\n%s\n%s", name, timeout_ms,
                 p->text[0]->str, p->text[1]->str);
    if (p->fd[0] < 0)
      ops_running(p); /* stdout ended: reap it, then the check above fails */
    pump(p, (int)MIN(left_ms, 50));
  }
}

gboolean
ops_running(OpsProbe *p)
{
  pump(p, 0);
  if (p->exited)
    return FALSE;
  pid_t r;
  do
    r = waitpid(p->pid, &p->status, WNOHANG);
  while (r < 0 && errno == EINTR);
  cr_assert_geq(r, 0, "waitpid: %s", g_strerror(errno));
  if (r == 0)
    return TRUE;
  p->exited = TRUE;
  /* Its pipes end now (opsprobe starts nothing that could keep them open). */
  while (p->fd[0] >= 0 || p->fd[1] >= 0)
    pump(p, 1000);
  return FALSE;
}

void
ops_finish(OpsProbe *p, int timeout_ms)
{
  if (p->in >= 0) {
    close(p->in);
    p->in = -1;
  }
  gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
  while (ops_running(p)) {
    cr_assert_lt(g_get_monotonic_time(), deadline, "opsprobe %d still runs after %d ms:\n%s\n%s",
                 (int)p->pid, timeout_ms, p->text[0]->str, p->text[1]->str);
    pump(p, 20);
  }
}

const char *
ops_out(const OpsProbe *p)
{
  return p->text[0]->str;
}

const char *
ops_err(const OpsProbe *p)
{
  return p->text[1]->str;
}

int
ops_status(const OpsProbe *p)
{
  return p->status;
}

int
ops_pid(const OpsProbe *p)
{
  return (int)p->pid;
}

void
ops_kill(OpsProbe *p, int sig)
{
  cr_assert(!p->exited, "opsprobe %d already exited", (int)p->pid);
  cr_assert_eq(kill(p->pid, sig), 0, "kill: %s", g_strerror(errno));
}

void
ops_free(OpsProbe *p)
{
  if (!p)
    return;
  if (!p->exited) {
    kill(p->pid, SIGKILL);
    ops_finish(p, 10000);
  }
  if (p->in >= 0)
    close(p->in);
  g_spawn_close_pid(p->pid);
  g_string_free(p->text[0], TRUE);
  g_string_free(p->text[1], TRUE);
  g_free(p);
}

void
ops_assert_value(const OpsProbe *p, const char *name, const char *want)
{
  cr_assert(p->exited && WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0,
            "opsprobe %d: status %d\n%s\n%s", (int)p->pid, p->status, p->text[0]->str,
            p->text[1]->str);
  g_autofree char *v = pst_report_value(p->text[0]->str, name);
  cr_assert(v && g_str_equal(v, want), "opsprobe %d: %s=%s, want %s\n%s\n%s", (int)p->pid, name,
            v ? v : "(none)", want, p->text[0]->str, p->text[1]->str);
}

char *
ops_tmp_dir(const char *prefix)
{
  g_autofree char *tmpl = g_strconcat(prefix, "-XXXXXX", NULL);
  GError *error = NULL;
  char *dir = g_dir_make_tmp(tmpl, &error);
  cr_assert_not_null(dir, "%s", error ? error->message : "?");
  return dir;
}

void
ops_rm_tree(const char *dir)
{
  GDir *d = g_dir_open(dir, 0, NULL);
  cr_assert_not_null(d, "%s", dir);
  for (const char *name; (name = g_dir_read_name(d));) {
    g_autofree char *path = g_build_filename(dir, name, NULL);
    if (g_file_test(path, G_FILE_TEST_IS_DIR) && !g_file_test(path, G_FILE_TEST_IS_SYMLINK))
      ops_rm_tree(path);
    else
      cr_assert_eq(unlink(path), 0, "%s: %s", path, g_strerror(errno));
  }
  g_dir_close(d);
  cr_assert_eq(rmdir(dir), 0, "%s: %s", dir, g_strerror(errno));
}

char *
ops_read_file(const char *path)
{
  char *text = NULL;
  GError *error = NULL;
  cr_assert(g_file_get_contents(path, &text, NULL, &error), "%s: %s", path,
            error ? error->message : "?");
  return text;
}
