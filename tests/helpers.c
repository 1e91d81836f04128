/* helpers.c: connections and server-side facts for the integration tests. */
#include "helpers.h"

#include <stdarg.h>
#include <stdlib.h>

const char *
pst_env(const char *name)
{
  const char *v = getenv(name);
  cr_assert(v && *v, "%s is not set: run the tests through scripts/test", name);
  return v;
}

unsigned int
pst_port(void)
{
  return (unsigned int)atoi(pst_env("PS_TEST_PORT"));
}

/* Connects m, or records its error, closes it and returns NULL. */
static MYSQL *
connect_or_report(MYSQL *m, const char *host, unsigned int port, const char *user,
                  const char *password, const char *db, unsigned int *err, char *msg,
                  size_t msglen)
{
  if (mysql_real_connect(m, host, user, password, db, port, NULL, 0))
    return m;
  if (err)
    *err = mysql_errno(m);
  if (msg)
    g_strlcpy(msg, mysql_error(m), msglen);
  mysql_close(m);
  return NULL;
}

MYSQL *
pst_try_connect(const char *user, const char *password, const char *db, unsigned int *err,
                char *msg, size_t msglen)
{
  MYSQL *m = mysql_init(NULL);
  cr_assert_not_null(m);
  return connect_or_report(m, pst_env("PS_TEST_HOST"), pst_port(), user, password, db, err,
                           msg, msglen);
}

MYSQL *
pst_connect(const char *user, const char *password, const char *db)
{
  unsigned int err = 0;
  char msg[512] = "";
  MYSQL *m = pst_try_connect(user, password, db, &err, msg, sizeof msg);
  cr_assert_not_null(m, "connect as %s failed: %u %s", user, err, msg);
  return m;
}

MYSQL *
pst_connect_app(void)
{
  return pst_connect(pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                     pst_env("PS_TEST_DB"));
}

MYSQL *
pst_connect_app_on(MYSQL *m)
{
  cr_assert_not_null(mysql_real_connect(m, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER"),
                                        pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"),
                                        pst_port(), NULL, 0),
                     "connect as %s failed: %u %s", pst_env("PS_TEST_USER"), mysql_errno(m),
                     mysql_error(m));
  return m;
}

MYSQL *
pst_connect_app_via(gboolean via_socket, gboolean unpooled)
{
  MYSQL *m = mysql_init(NULL);
  cr_assert_not_null(m);
  if (unpooled)
    mysql_options(m, MYSQL_READ_DEFAULT_FILE, "/dev/null");
  const char *host = via_socket ? "localhost" : pst_env("PS_TEST_HOST");
  const char *sock = via_socket ? pst_env("PS_TEST_SOCKET") : NULL;
  cr_assert_not_null(mysql_real_connect(m, host, pst_env("PS_TEST_USER"),
                                        pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"),
                                        via_socket ? 0 : pst_port(), sock, 0),
                     "connect as %s (%s%s) failed: %u %s", pst_env("PS_TEST_USER"),
                     via_socket ? "socket" : "TCP", unpooled ? ", unpooled" : "",
                     mysql_errno(m), mysql_error(m));
  return m;
}

void
pst_require_tls(MYSQL *m)
{
  my_bool on = 1;
  mysql_options(m, MYSQL_OPT_SSL_CA, pst_env("PS_TEST_TLS_CA"));
  mysql_options(m, MYSQL_OPT_SSL_ENFORCE, &on);
  mysql_options(m, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &on);
}

static MYSQL *admin;

void
pst_admin_drop(void)
{
  if (admin)
    mysql_close(admin);
  admin = NULL;
}

MYSQL *
pst_admin(void)
{
  if (!admin)
    admin = pst_connect(pst_env("PS_TEST_ROOT_USER"), pst_env("PS_TEST_ROOT_PASSWORD"), NULL);
  return admin;
}

static char *
vformat(const char *fmt, va_list ap)
{
  return g_strdup_vprintf(fmt, ap);
}

void
pst_exec(MYSQL *m, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *sql = vformat(fmt, ap);
  va_end(ap);
  cr_assert_eq(mysql_query(m, sql), 0, "%s: %s", sql, mysql_error(m));
  do {
    MYSQL_RES *r = mysql_store_result(m);
    if (r)
      mysql_free_result(r);
  } while (mysql_next_result(m) == 0);
}

static char *
scalar(MYSQL *m, const char *sql, gboolean *is_null)
{
  cr_assert_eq(mysql_query(m, sql), 0, "%s: %s", sql, mysql_error(m));
  MYSQL_RES *r = mysql_store_result(m);
  cr_assert_not_null(r, "%s returned no result set: %s", sql, mysql_error(m));
  MYSQL_ROW row = mysql_fetch_row(r);
  cr_assert_not_null(row, "%s returned no row", sql);
  *is_null = row[0] == NULL;
  char *v = g_strdup(row[0]);
  mysql_free_result(r);
  while (mysql_next_result(m) == 0) {
    MYSQL_RES *more = mysql_store_result(m);
    if (more)
      mysql_free_result(more);
  }
  return v;
}

long long
pst_scalar(MYSQL *m, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *sql = vformat(fmt, ap);
  va_end(ap);
  gboolean is_null;
  g_autofree char *v = scalar(m, sql, &is_null);
  cr_assert(!is_null, "%s returned NULL", sql);
  return g_ascii_strtoll(v, NULL, 10);
}

char *
pst_scalar_str(MYSQL *m, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *sql = vformat(fmt, ap);
  va_end(ap);
  gboolean is_null;
  char *v = scalar(m, sql, &is_null);
  return v;
}

long long
pst_status(const char *name)
{
  MYSQL *a = pst_admin();
  g_autofree char *sql = g_strdup_printf("SHOW GLOBAL STATUS LIKE '%s'", name);
  cr_assert_eq(mysql_query(a, sql), 0, "%s: %s", sql, mysql_error(a));
  MYSQL_RES *r = mysql_store_result(a);
  MYSQL_ROW row = mysql_fetch_row(r);
  cr_assert_not_null(row, "no status variable %s", name);
  long long v = g_ascii_strtoll(row[1], NULL, 10);
  mysql_free_result(r);
  return v;
}

long long
pst_user_threads(const char *user)
{
  return pst_scalar(pst_admin(),
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '%s'",
                    user);
}

void
pst_server_ctl(const char *verb)
{
  g_autofree char *cmd = g_strdup_printf("'%s' %s '%s'", pst_env("PS_TEST_SERVER_CTL"), verb,
                                         pst_env("PS_TEST_SERVER_DIR"));
  int rc = system(cmd);
  cr_assert_eq(rc, 0, "%s failed (%d)", cmd, rc);
}

void
pst_wait_thread_gone(unsigned long id)
{
  for (int i = 0; i < 1000; i++) {
    if (pst_scalar(pst_admin(), "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %lu",
                   id) == 0)
      return;
    g_usleep(10000);
  }
  cr_assert_fail("server thread %lu still exists after 10 s", id);
}

void
pst_wait_answered(const char *counter, long long since, long long n, const char *what)
{
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  long long grew;
  while ((grew = pst_status(counter) - since) < n ||
         pst_scalar(pst_admin(),
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '%s' "
                    "AND COMMAND <> 'Sleep'",
                    pst_env("PS_TEST_USER")) > 0) {
    cr_assert_lt(g_get_monotonic_time(), deadline,
                 "%s (%lld %s, %lld begun) were not answered within 10 s", what, n, counter,
                 grew);
    g_usleep(20 * 1000);
  }
}

MYSQL *
pst_connect_and_force_reconnect(long long *old, long long *now)
{
  MYSQL *m = mysql_init(NULL);
  my_bool on = 1;
  mysql_options(m, MYSQL_OPT_RECONNECT, &on);
  cr_assert_not_null(mysql_real_connect(m, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER"),
                                        pst_env("PS_TEST_PASSWORD"), pst_env("PS_TEST_DB"),
                                        pst_port(), NULL, 0),
                     "%s", mysql_error(m));
  *old = pst_scalar(m, "SELECT CONNECTION_ID()");
  pst_exec(pst_admin(), "KILL %lld", *old);
  pst_wait_thread_gone((unsigned long)*old);
  /* The library reconnects on the next command (the first may report the loss). */
  int ok = 0;
  for (int i = 0; i < 3 && !ok; i++)
    ok = mysql_query(m, "DO 1") == 0;
  cr_assert(ok, "no reconnect: %s", mysql_error(m));
  *now = pst_scalar(m, "SELECT CONNECTION_ID()");
  return m;
}

/* ---- Faults, probes and the shim's counters ---- */

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

PstStatsFn
pst_stats_fn(void)
{
  PstStatsFn stats = (PstStatsFn)dlsym(RTLD_DEFAULT, "poolshim_stats");
  cr_assert_not_null(stats, "poolshim_stats not found: is the shim preloaded?");
  return stats;
}

void
pst_stats(poolshim_stats_t *out)
{
  cr_assert_eq(pst_stats_fn()(out, sizeof *out), 0);
}

void
pst_wait_stats_count(glong offset, unsigned n, const char *what)
{
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  poolshim_stats_t s;
  for (pst_stats(&s); G_STRUCT_MEMBER(unsigned, &s, offset) < n; pst_stats(&s)) {
    cr_assert_lt(g_get_monotonic_time(), deadline, "%s: %u expected within 10 s, %u seen", what,
                 n, G_STRUCT_MEMBER(unsigned, &s, offset));
    g_usleep(5 * 1000);
  }
}

MYSQL *
pst_try_connect_to(const char *host, unsigned int port, unsigned int connect_timeout,
                   unsigned int rw_timeout, unsigned int *err, char *msg, size_t msglen)
{
  MYSQL *m = mysql_init(NULL);
  cr_assert_not_null(m);
  if (connect_timeout)
    mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &connect_timeout);
  if (rw_timeout) {
    mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &rw_timeout);
    mysql_options(m, MYSQL_OPT_WRITE_TIMEOUT, &rw_timeout);
  }
  return connect_or_report(m, host, port, pst_env("PS_TEST_USER"), pst_env("PS_TEST_PASSWORD"),
                           pst_env("PS_TEST_DB"), err, msg, msglen);
}

MYSQL *
pst_connect_via(PstProxy *p, unsigned int connect_timeout, unsigned int rw_timeout)
{
  unsigned int err = 0;
  char msg[512] = "";
  MYSQL *m = pst_try_connect_to("127.0.0.1", pst_proxy_port(p), connect_timeout, rw_timeout,
                                &err, msg, sizeof msg);
  cr_assert_not_null(m, "connect through the proxy failed: %u %s", err, msg);
  return m;
}

struct PstProxy {
  GPid pid;
  int in, out;       /* its stdin (commands) and stdout (answers) */
  char buf[512];
  size_t len;
  unsigned int port;
};

/* One line of the proxy's stdout, waiting at most 10 s; caller frees. */
static char *
proxy_line(PstProxy *p)
{
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  for (;;) {
    char *nl = memchr(p->buf, '\n', p->len);
    if (nl) {
      char *line = g_strndup(p->buf, (gsize)(nl - p->buf));
      p->len -= (size_t)(nl + 1 - p->buf);
      memmove(p->buf, nl + 1, p->len);
      return line;
    }
    cr_assert_lt(p->len, sizeof p->buf, "faultproxy: line too long");
    gint64 left_ms = (deadline - g_get_monotonic_time()) / 1000;
    cr_assert_gt(left_ms, 0, "faultproxy did not answer within 10 s");
    struct pollfd pfd = {.fd = p->out, .events = POLLIN};
    int r = poll(&pfd, 1, (int)left_ms);
    if (r < 0 && errno == EINTR)
      continue;
    cr_assert_geq(r, 0, "poll: %s", g_strerror(errno));
    if (r == 0)
      continue;
    ssize_t n = read(p->out, p->buf + p->len, sizeof p->buf - p->len);
    if (n < 0 && errno == EINTR)
      continue;
    cr_assert_gt(n, 0, "faultproxy exited");
    p->len += (size_t)n;
  }
}

static char *
proxy_cmd(PstProxy *p, char cmd)
{
  char line[2] = {cmd, '\n'};
  cr_assert_eq(write(p->in, line, 2), 2, "faultproxy: %s", g_strerror(errno));
  return proxy_line(p);
}

PstProxy *
pst_proxy_start(void)
{
  const char *exe = pst_env("PST_FAULTPROXY");
  PstProxy *p = g_new0(PstProxy, 1);
  const char *argv[] = {exe, NULL};
  GError *error = NULL;
  /* The write end of its stdin is close-on-exec here: the proxy sees EOF, and ends, as
   * soon as this process ends, however it ends. */
  gboolean ok = g_spawn_async_with_pipes(NULL, (char **)argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD,
                                         NULL, NULL, &p->pid, &p->in, &p->out, NULL, &error);
  cr_assert(ok, "spawning %s: %s", exe, error ? error->message : "?");
  signal(SIGPIPE, SIG_IGN); /* a dead proxy must fail the test, not kill it */
  g_autofree char *first = proxy_line(p);
  cr_assert(g_str_has_prefix(first, "port="), "faultproxy said: %s", first);
  p->port = (unsigned int)atoi(first + 5);
  cr_assert_gt(p->port, 0);
  return p;
}

unsigned int
pst_proxy_port(const PstProxy *p)
{
  return p->port;
}

void
pst_proxy_freeze(PstProxy *p)
{
  g_autofree char *a = proxy_cmd(p, 'f');
  cr_assert_str_eq(a, "frozen");
}

void
pst_proxy_greeting_only(PstProxy *p)
{
  g_autofree char *a = proxy_cmd(p, 'g');
  cr_assert_str_eq(a, "greeting only");
}

void
pst_proxy_thaw(PstProxy *p)
{
  g_autofree char *a = proxy_cmd(p, 't');
  cr_assert_str_eq(a, "thawed");
}

int
pst_proxy_cut(PstProxy *p)
{
  g_autofree char *a = proxy_cmd(p, 'c');
  cr_assert(g_str_has_prefix(a, "cut "), "faultproxy said: %s", a);
  return atoi(a + 4);
}

int
pst_proxy_conns(PstProxy *p)
{
  g_autofree char *a = proxy_cmd(p, 's');
  cr_assert(g_str_has_prefix(a, "conns "), "faultproxy said: %s", a);
  return atoi(a + 6);
}

void
pst_proxy_stop(PstProxy *p)
{
  if (!p)
    return;
  close(p->in); /* end of stdin: it closes everything and exits */
  int status = 0;
  pid_t r;
  do
    r = waitpid(p->pid, &status, 0);
  while (r < 0 && errno == EINTR);
  close(p->out);
  g_spawn_close_pid(p->pid);
  g_free(p);
}

PstRun
pst_run(const char *const *argv, const char *const *env)
{
  char **envp = g_get_environ();
  for (const char *const *e = env; e && *e; e += 2)
    envp = e[1] ? g_environ_setenv(envp, e[0], e[1], TRUE) : g_environ_unsetenv(envp, e[0]);
  PstRun r = {0};
  GError *error = NULL;
  gboolean ok = g_spawn_sync(NULL, (char **)argv, envp, G_SPAWN_DEFAULT, NULL, NULL, &r.out,
                             &r.err, &r.status, &error);
  g_strfreev(envp);
  cr_assert(ok, "spawning %s: %s", argv[0], error ? error->message : "?");
  return r;
}

void
pst_run_clear(PstRun *r)
{
  g_free(r->out);
  g_free(r->err);
  r->out = r->err = NULL;
}

guint
pst_count_lines_with(const char *text, const char *needle)
{
  guint n = 0;
  g_auto(GStrv) lines = g_strsplit(text ? text : "", "\n", -1);
  for (char **l = lines; *l; l++)
    n += strstr(*l, needle) != NULL;
  return n;
}

char *
pst_report_value(const char *text, const char *name)
{
  g_autofree char *prefix = g_strdup_printf("%s=", name);
  g_auto(GStrv) lines = g_strsplit(text ? text : "", "\n", -1);
  for (char **l = lines; *l; l++)
    if (g_str_has_prefix(*l, prefix))
      return g_strdup(*l + strlen(prefix));
  return NULL;
}
