/* A pooled handle looks exactly like a fresh one: right after connect, everything the client
 * API returns (error, SQLSTATE, warnings, insert id, affected rows, field count, info,
 * character set, host/server/protocol info, autocommit, thread id) equals what an unpooled
 * connect of the same user and database shows, whatever the previous borrower did. */
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "helpers.h"

/* What the client API says about a handle, read with the API only. */
typedef struct {
  unsigned int err;
  char sqlstate[8];
  char error[512];
  unsigned int warnings;
  my_ulonglong insert_id, affected_rows;
  unsigned int field_count;
  char info[256]; /* "(null)" for NULL */
  char charset[64];
  char host_info[256];
  char server_info[128];
  unsigned int proto;
  gboolean autocommit;
} Face;

static void
face_of(MYSQL *m, Face *f)
{
  memset(f, 0, sizeof *f);
  f->err = mysql_errno(m);
  g_strlcpy(f->sqlstate, mysql_sqlstate(m), sizeof f->sqlstate);
  g_strlcpy(f->error, mysql_error(m), sizeof f->error);
  f->warnings = mysql_warning_count(m);
  f->insert_id = mysql_insert_id(m);
  f->affected_rows = mysql_affected_rows(m);
  f->field_count = mysql_field_count(m);
  g_strlcpy(f->info, mysql_info(m) ? mysql_info(m) : "(null)", sizeof f->info);
  g_strlcpy(f->charset, mysql_character_set_name(m), sizeof f->charset);
  g_strlcpy(f->host_info, mysql_get_host_info(m), sizeof f->host_info);
  g_strlcpy(f->server_info, mysql_get_server_info(m), sizeof f->server_info);
  f->proto = mysql_get_proto_info(m);
  unsigned int status = 0;
  mariadb_get_infov(m, MARIADB_CONNECTION_SERVER_STATUS, &status);
  f->autocommit = (status & SERVER_STATUS_AUTOCOMMIT) != 0;
}

static void
assert_same_face(const Face *got, const Face *fresh, const char *when)
{
  cr_expect_eq(got->err, fresh->err, "%s: mysql_errno %u, fresh %u", when, got->err, fresh->err);
  cr_expect_str_eq(got->sqlstate, fresh->sqlstate, "%s: mysql_sqlstate", when);
  cr_expect_str_eq(got->error, fresh->error, "%s: mysql_error", when);
  cr_expect_eq(got->warnings, fresh->warnings, "%s: mysql_warning_count %u, fresh %u", when,
               got->warnings, fresh->warnings);
  cr_expect_eq(got->insert_id, fresh->insert_id, "%s: mysql_insert_id %llu, fresh %llu", when,
               (unsigned long long)got->insert_id, (unsigned long long)fresh->insert_id);
  cr_expect_eq(got->affected_rows, fresh->affected_rows, "%s: mysql_affected_rows %llu, fresh %llu",
               when, (unsigned long long)got->affected_rows,
               (unsigned long long)fresh->affected_rows);
  cr_expect_eq(got->field_count, fresh->field_count, "%s: mysql_field_count %u, fresh %u", when,
               got->field_count, fresh->field_count);
  cr_expect_str_eq(got->info, fresh->info, "%s: mysql_info", when);
  cr_expect_str_eq(got->charset, fresh->charset, "%s: mysql_character_set_name", when);
  cr_expect_str_eq(got->host_info, fresh->host_info, "%s: mysql_get_host_info", when);
  cr_expect_str_eq(got->server_info, fresh->server_info, "%s: mysql_get_server_info", when);
  cr_expect_eq(got->proto, fresh->proto, "%s: mysql_get_proto_info", when);
  cr_expect_eq(got->autocommit, fresh->autocommit, "%s: autocommit status %d, fresh %d", when,
               got->autocommit, fresh->autocommit);
}

/* The thread id the client reports is the server's CONNECTION_ID(). Run after face_of:
 * the query changes what the API shows. */
static long long
assert_thread_id_is_the_servers(MYSQL *m, const char *when)
{
  unsigned long tid = mysql_thread_id(m);
  long long id = pst_scalar(m, "SELECT CONNECTION_ID()");
  cr_assert_eq((long long)tid, id, "%s: mysql_thread_id %lu, CONNECTION_ID() %lld", when, tid, id);
  return id;
}

/* ---- what the previous borrower leaves ---- */

static void
failed_statement(MYSQL *m)
{
  cr_assert_neq(mysql_query(m, "SELECT no_such_column FROM t"), 0);
  cr_assert_neq(mysql_errno(m), 0);
}

static void
warnings(MYSQL *m)
{
  cr_assert_eq(mysql_query(m, "SELECT CAST('poolshim' AS SIGNED)"), 0, "%s", mysql_error(m));
  mysql_free_result(mysql_store_result(m));
  cr_assert_gt(mysql_warning_count(m), 0, "the statement left no warning");
}

static void
inserted_row(MYSQL *m)
{
  g_autofree char *sql =
      g_strdup_printf("INSERT INTO t (v) VALUES (%d)", 4000000 + g_random_int_range(0, 1000000));
  cr_assert_eq(mysql_query(m, sql), 0, "%s", mysql_error(m));
  cr_assert_gt(mysql_insert_id(m), 0);
  cr_assert_eq(mysql_affected_rows(m), 1);
}

static void
changed_charset(MYSQL *m)
{
  cr_assert_eq(mysql_set_character_set(m, "latin1"), 0, "%s", mysql_error(m));
  cr_assert_str_eq(mysql_character_set_name(m), "latin1");
}

static void
updated_with_info(MYSQL *m)
{
  cr_assert_eq(mysql_query(m, "UPDATE t SET v = v WHERE id < 0"), 0, "%s", mysql_error(m));
  cr_assert_not_null(mysql_info(m), "UPDATE left no info message");
}

static void
result_set_read(MYSQL *m)
{
  cr_assert_eq(mysql_query(m, "SELECT 1, 2, 3"), 0, "%s", mysql_error(m));
  mysql_free_result(mysql_store_result(m));
  cr_assert_eq(mysql_field_count(m), 3);
}

static void
autocommit_off(MYSQL *m)
{
  cr_assert_eq(mysql_autocommit(m, 0), 0, "%s", mysql_error(m));
}

typedef struct {
  char name[32];
  void (*leave)(MYSQL *m);
  gboolean via_socket;
} Borrower;

static Borrower borrowers[] = {
    {"failed statement", failed_statement, FALSE}, {"warnings", warnings, FALSE},
    {"inserted row", inserted_row, FALSE},         {"changed charset", changed_charset, FALSE},
    {"update info", updated_with_info, FALSE},     {"result set", result_set_read, FALSE},
    {"autocommit off", autocommit_off, FALSE},     {"failed statement", failed_statement, TRUE},
    {"inserted row", inserted_row, TRUE},
};

ParameterizedTestParameters(fresh, a_pooled_handle_shows_what_a_fresh_connect_shows)
{
  static int idx[G_N_ELEMENTS(borrowers)];
  for (guint i = 0; i < G_N_ELEMENTS(borrowers); i++)
    idx[i] = (int)i;
  return cr_make_param_array(int, idx, G_N_ELEMENTS(idx));
}

TestSuite(fresh, .timeout = 60);

/* Each parameter runs in its own process: its first connect is the first of a new pool. */
ParameterizedTest(int *index, fresh, a_pooled_handle_shows_what_a_fresh_connect_shows)
{
  const Borrower *b = &borrowers[*index];
  char when[96];
  Face fresh, got;

  MYSQL *f = pst_connect_app_via(b->via_socket, TRUE);
  face_of(f, &fresh);
  long long fresh_id = assert_thread_id_is_the_servers(f, "fresh connect");

  MYSQL *m = pst_connect_app_via(b->via_socket, FALSE);
  face_of(m, &got);
  g_snprintf(when, sizeof when, "[%s] first connect of a pool", b->name);
  assert_same_face(&got, &fresh, when);
  long long id = assert_thread_id_is_the_servers(m, when);
  cr_assert_neq(id, fresh_id, "the unpooled connection was not a separate session");
  b->leave(m);
  mysql_close(m);

  /* Twice: the second borrower follows a borrower whose first command was the pool's
   * reset, not a statement of its own. */
  for (int round = 0; round < 2; round++) {
    m = pst_connect_app_via(b->via_socket, FALSE);
    face_of(m, &got);
    g_snprintf(when, sizeof when, "[%s] reused connection, borrow %d", b->name, round + 2);
    assert_same_face(&got, &fresh, when);
    cr_assert_eq(assert_thread_id_is_the_servers(m, when), id, "%s: not the same server connection",
                 when);
    if (round == 0)
      b->leave(m);
    mysql_close(m);
  }
  mysql_close(f);
}
