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

MYSQL *
pst_try_connect(const char *user, const char *password, const char *db, unsigned int *err,
                char *msg, size_t msglen)
{
  MYSQL *m = mysql_init(NULL);
  cr_assert_not_null(m);
  if (mysql_real_connect(m, pst_env("PS_TEST_HOST"), user, password, db, pst_port(), NULL,
                         0))
    return m;
  if (err)
    *err = mysql_errno(m);
  if (msg)
    g_strlcpy(msg, mysql_error(m), msglen);
  mysql_close(m);
  return NULL;
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
