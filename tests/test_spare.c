/* A returned connection owes the replies of its reset for a while: a connect that finds
 * every idle connection still busy opens one more while the pool has room (and lends the
 * busy one when it has none, or when opening fails). Made deterministic with an init
 * command that makes the server take a second over every reset: `DO SLEEP(1)` runs at
 * the connect and again at every return (the pool replays init commands). Proven with
 * CONNECTION_ID() and the server's Connections counter. */
#include <dlfcn.h>
#include <mysqld_error.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

TestSuite(spare, .timeout = 60);

#define SLOW_INIT "DO SLEEP(1)"

static void
pool_of(const char *size)
{
  setenv("POOLSHIM_POOL_SIZE", size, 1);
}

static void
pool_of_two(void)
{
  pool_of("2");
}

/* A connection of the test user whose every reset takes the server a second (over TLS
 * when asked). */
static MYSQL *
connect_slow_reset_tls(gboolean tls)
{
  MYSQL *m = mysql_init(NULL);
  cr_assert_not_null(m);
  cr_assert_eq(mysql_options(m, MYSQL_INIT_COMMAND, SLOW_INIT), 0);
  if (tls)
    pst_require_tls(m);
  return pst_connect_app_on(m);
}

static MYSQL *
connect_slow_reset(void)
{
  return connect_slow_reset_tls(FALSE);
}

/* Connects, leaves a trace in the session, reads its id, closes. */
static long long
borrow_and_return(void)
{
  MYSQL *m = connect_slow_reset();
  cr_assert_eq(pst_scalar(m, "SELECT @left_behind IS NULL"), 1,
               "a borrower saw the previous borrower's variable");
  pst_exec(m, "SET @left_behind = 'secret'");
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  mysql_close(m);
  return id;
}

Test(spare, a_connect_right_after_a_close_opens_another_rather_than_wait, .init = pool_of_two)
{
  pst_admin();
  long long dos0 = pst_status("Com_do");
  long long a = borrow_and_return();
  long long before = pst_status("Connections");
  /* A's reset (with its one-second init command) has only just been sent. */
  long long b = borrow_and_return();
  cr_assert_neq(b, a, "the connect waited for the returned connection's reset");
  cr_assert_eq(pst_status("Connections") - before, 1, "one more connection, not more");

  /* Both resets are answered after a second (each connect and each reset ran the slow init
   * command: four); then the most recently returned is lent. */
  pst_wait_answered("Com_do", dos0, 4, "the resets and their slow init command");
  before = pst_status("Connections");
  cr_assert_eq(borrow_and_return(), b, "the warm end of the pool was not used");
  cr_assert_eq(pst_status("Connections") - before, 0, "a ready connection was passed over");
  cr_assert_leq(pst_user_threads(pst_env("PS_TEST_USER")), 2);
}

Test(spare, a_full_pool_lends_the_connection_returned_longest_ago, .init = pool_of_two)
{
  pst_admin();
  MYSQL *m1 = connect_slow_reset(), *m2 = connect_slow_reset();
  long long a = pst_scalar(m1, "SELECT CONNECTION_ID()");
  pst_exec(m1, "SET @left_behind = 'secret'");
  mysql_close(m1);
  mysql_close(m2);
  long long before = pst_status("Connections");
  /* Both are busy with their reset and the pool is full: the one closed first is lent,
   * after its reset (the borrower waits for it, and sees none of its past). */
  MYSQL *n = connect_slow_reset();
  cr_assert_eq(pst_scalar(n, "SELECT CONNECTION_ID()"), a);
  cr_assert_eq(pst_scalar(n, "SELECT @left_behind IS NULL"), 1);
  mysql_close(n);
  cr_assert_eq(pst_status("Connections") - before, 0, "the full pool opened a connection");
}

static MYSQL *holders[16];

static void
restore_max_connections(void)
{
  for (guint i = 0; i < G_N_ELEMENTS(holders); i++)
    if (holders[i])
      mysql_close(holders[i]);
  pst_exec(pst_admin(), "SET GLOBAL max_connections = DEFAULT");
}

/* The server refuses every new connection (max_connections, error 1040): the connect that
 * tried to open one is lent the busy connection instead, never the server's error.
 * (MAX_USER_CONNECTIONS would not do: MariaDB stops counting a session against it after
 * COM_RESET_CONNECTION.) */
Test(spare, a_refused_extra_connection_falls_back_to_the_busy_one, .init = pool_of_two,
     .fini = restore_max_connections)
{
  /* The client library's own connect, past the shim: the holders are no pool's. */
  void *lib = dlopen("libmariadb.so.3", RTLD_NOW | RTLD_NOLOAD);
  cr_assert_not_null(lib);
  MYSQL *(*real_connect)(MYSQL *, const char *, const char *, const char *, const char *,
                         unsigned int, const char *, unsigned long) =
    (MYSQL * (*)(MYSQL *, const char *, const char *, const char *, const char *, unsigned int,
                 const char *, unsigned long)) dlsym(lib, "mysql_real_connect");
  cr_assert_not_null(real_connect);

  MYSQL *admin = pst_admin();
  long long a = borrow_and_return();
  pst_exec(admin, "SET GLOBAL max_connections = 10"); /* MariaDB's minimum */
  /* Other sessions take what is left: the server is full. */
  unsigned int refused = 0;
  for (guint i = 0; i < G_N_ELEMENTS(holders) && !refused; i++) {
    MYSQL *h = mysql_init(NULL);
    if (real_connect(h, pst_env("PS_TEST_HOST"), pst_env("PS_TEST_USER2"),
                     pst_env("PS_TEST_PASSWORD2"), NULL, pst_port(), NULL, 0)) {
      holders[i] = h;
    } else {
      refused = mysql_errno(h);
      mysql_close(h);
    }
  }
  cr_assert_eq(refused, ER_CON_COUNT_ERROR, "the server did not fill up");
  dlclose(lib);

  long long again = borrow_and_return();
  cr_assert_eq(again, a, "the connect did not fall back to the pool's own connection");
  cr_assert_eq(pst_user_threads(pst_env("PS_TEST_USER")), 1);
}

static char *slot_dir;

static void
host_max_dir(void)
{
  pool_of_two();
  slot_dir = g_dir_make_tmp("pst-spare-XXXXXX", NULL);
  cr_assert_not_null(slot_dir);
  setenv("POOLSHIM_HOST_DIR", slot_dir, 1);
  setenv("POOLSHIM_HOST_MAX", "4", 1);
}

static void
remove_slot_dir(void)
{
  if (!slot_dir)
    return;
  g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", slot_dir);
  g_spawn_command_line_sync(cmd, NULL, NULL, NULL, NULL);
}

/* Under POOLSHIM_HOST_MAX a new connection takes a host-wide slot other processes may
 * need: the pool waits for the busy connection's reset instead. */
Test(spare, under_host_max_the_busy_connection_is_lent, .init = host_max_dir,
     .fini = remove_slot_dir)
{
  pst_admin();
  long long a = borrow_and_return();
  long long before = pst_status("Connections");
  cr_assert_eq(borrow_and_return(), a);
  cr_assert_eq(pst_status("Connections") - before, 0);
}

/* The extra connection is opened on the pool's own handle from the application's options:
 * over TLS it is encrypted and verified as the application asked, and it works once moved
 * into the application's handle. */
Test(spare, an_extra_tls_connection_is_encrypted_as_the_application_asked, .init = pool_of_two)
{
  pst_admin();
  MYSQL *m = connect_slow_reset_tls(TRUE);
  long long a = pst_scalar(m, "SELECT CONNECTION_ID()");
  mysql_close(m);
  m = connect_slow_reset_tls(TRUE); /* right after the close: the extra connection */
  long long b = pst_scalar(m, "SELECT CONNECTION_ID()");
  cr_assert_neq(b, a, "the connect waited for the returned connection's reset");
  g_autofree char *cipher = pst_scalar_str(m, "SELECT VARIABLE_VALUE FROM "
                                              "information_schema.SESSION_STATUS WHERE "
                                              "VARIABLE_NAME = 'Ssl_cipher'");
  cr_assert(cipher && *cipher, "the extra connection is not encrypted");
  cr_assert_not_null(mysql_get_ssl_cipher(m), "the client does not see TLS on it");
  pst_exec(m, "SET @x = REPEAT('y', 100000)"); /* a query larger than one TLS record */
  cr_assert_eq(pst_scalar(m, "SELECT LENGTH(@x)"), 100000);
  mysql_close(m);
}
