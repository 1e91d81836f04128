/* conn_reset.c: what a connection's session looked like when the pool opened it (the
 * profile), and putting it back: the return checks, the pipelined reset, the answers read
 * later, re-authentication. Part of the conn module (conn.h); no pool policy, no locking. */
#include "conn.h"

#include <errmsg.h>
#include <errno.h>
#include <mysqld_error.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "gil.h"
#include "mirror.h"
#include "session.h"
#include "watch.h"

static gboolean run_and_drain(MYSQL *m, const char *sql);

/* A command of a reset pipeline. */
typedef struct {
  enum enum_server_command cmd;
  const char *arg;
} PsCmd;

static gboolean send_pipeline(MYSQL *m, const PsCmd *cmds, int n, unsigned int timeout_s);

/* SET ROLE for the session's original role (a backquoted identifier). */
static char *
role_statement(const char *role)
{
  if (!role)
    return g_strdup("SET ROLE NONE");
  GString *sql = g_string_new("SET ROLE `");
  for (const char *c = role; *c; c++) {
    if (*c == '`')
      g_string_append_c(sql, '`');
    g_string_append_c(sql, *c);
  }
  g_string_append_c(sql, '`');
  return g_string_free(sql, FALSE);
}

/* CURRENT_ROLE() and @@wait_timeout of the session in m, read once per pool; the handle's
 * visible results are restored after. */
static char *
query_role(MYSQL *m, gboolean *track, unsigned long *wait_timeout_s, gboolean *init_connect,
           gboolean *ok)
{
  my_ulonglong affected = m->affected_rows, insert_id = m->insert_id;
  unsigned int warnings = m->warning_count, status = m->server_status;
  char *role = NULL;
  static const char sql[] =
    "SELECT CURRENT_ROLE(), @@session.wait_timeout, @@global.init_connect <> ''";
  *ok = FALSE;
  /* With tracking, both statements go in one write; the SET's reply is read first. A
   * server that refuses it (no session tracking: older than MariaDB 10.2) leaves the pool
   * without it: every return then gets the full reset. */
  const PsCmd cmds[] = {{COM_QUERY, PS_SESSION_TRACKING_SQL}, {COM_QUERY, sql}};
  gboolean sent;
  if (*track) {
    sent = send_pipeline(m, cmds, 2, m->options.write_timeout);
    if (sent && m->methods->db_read_query_result(m) != 0) {
      if (m->net.last_errno >= CR_MIN_ERROR)
        sent = FALSE; /* the connection, not the statement */
      else
        *track = FALSE;
    }
    sent = sent && m->methods->db_read_query_result(m) == 0;
  } else {
    sent = ps_real.real_query(m, sql, sizeof sql - 1) == 0;
  }
  if (sent) {
    MYSQL_RES *res = ps_real.store_result(m);
    if (res) {
      *ok = TRUE;
      MYSQL_ROW row = ps_real.fetch_row(res);
      if (row && row[0])
        role = g_strdup(row[0]);
      if (row && row[1])
        *wait_timeout_s = strtoul(row[1], NULL, 10);
      *init_connect = !row || !row[2] || strcmp(row[2], "0") != 0;
      ps_real.free_result(res);
    }
  }
  m->affected_rows = affected;
  m->insert_id = insert_id;
  m->warning_count = warnings;
  m->server_status = status;
  if (*ok) {
    m->net.last_errno = 0;
    m->net.last_error[0] = '\0';
    strcpy(m->net.sqlstate, "00000");
  }
  return role;
}

gboolean
ps_conn_track_session(MYSQL *m)
{
  my_ulonglong affected = m->affected_rows, insert_id = m->insert_id;
  unsigned int warnings = m->warning_count, status = m->server_status;
  gboolean ok = run_and_drain(m, PS_SESSION_TRACKING_SQL);
  m->affected_rows = affected;
  m->insert_id = insert_id;
  m->warning_count = warnings;
  m->server_status = status;
  if (ok) {
    m->net.last_errno = 0;
    m->net.last_error[0] = '\0';
    strcpy(m->net.sqlstate, "00000");
  }
  return ok;
}

PsConnProfile *
ps_conn_profile_new(MYSQL *m, const char *requested_db, gboolean track)
{
  /* Read before the pool's own query below overwrites them. */
  PsConnFresh fresh = {
      .affected_rows = m->affected_rows,
      .insert_id = m->insert_id,
      .field_count = m->field_count,
      .warning_count = m->warning_count,
      .has_info = m->info != NULL,
  };
  unsigned long wait_timeout_s = 0;
  gboolean ok;
  unsigned int server_status = m->server_status;
  gboolean init_connect = TRUE;
  char *role = query_role(m, &track, &wait_timeout_s, &init_connect, &ok);
  if (!ok) {
    /* The connection failed under us: nothing learnt can be trusted for the whole pool. */
    g_free(role);
    return NULL;
  }
  PsConnProfile *p = g_new0(PsConnProfile, 1);
  p->db = g_strdup(requested_db);
  p->user = g_strdup(m->user);
  p->role = role;
  p->wait_timeout_s = wait_timeout_s;
  p->role_sql = role_statement(p->role);
  p->charset = m->charset;
  p->init_commands = ps_conn_init_commands(m);
  p->fresh = fresh;
  p->track = track;
  p->server_status = server_status;
  p->init_connect = init_connect;
  return p;
}

void
ps_conn_profile_free(gpointer profile)
{
  PsConnProfile *p = profile;
  if (!p)
    return;
  g_free(p->db);
  g_free(p->user);
  g_free(p->role);
  g_free(p->role_sql);
  g_strfreev(p->init_commands);
  ps_conn_template_free(p->opener);
  g_free(p);
}

/* ---- return and reset ---- */

gboolean
ps_conn_returnable(MYSQL *m, const char **why)
{
  if (!m->net.pvio || !m->net.buff) {
    *why = "connection lost";
    return FALSE;
  }
  if (m->status != MYSQL_STATUS_READY) {
    *why = "unread result set";
    return FALSE;
  }
  if (m->server_status & SERVER_MORE_RESULTS_EXIST) {
    *why = "more results pending";
    return FALSE;
  }
  unsigned int e = m->net.last_errno;
  if ((e >= CR_MIN_ERROR && e <= CR_MAX_ERROR) || e >= CER_MIN_ERROR) {
    *why = "client-side error on the connection";
    return FALSE;
  }
  return TRUE;
}

static gboolean
run_and_drain(MYSQL *m, const char *sql)
{
  if (ps_real.real_query(m, sql, (unsigned long)strlen(sql)))
    return FALSE;
  int more;
  do {
    MYSQL_RES *res = ps_real.store_result(m);
    if (res)
      ps_real.free_result(res);
    else if (m->net.last_errno)
      return FALSE;
    more = ps_real.next_result(m);
    if (more > 0)
      return FALSE;
  } while (more == 0);
  return TRUE;
}

static gboolean
change_user(MYSQL *m, const PsConnProfile *profile)
{
  /* mysql_change_user strdup()s its arguments before freeing the struct's own copies. On
   * the application's handle it sends the key's charset, auth options and attributes. */
  if (ps_real.change_user(m, m->user, m->passwd, profile->db))
    return FALSE;
  if (profile->charset && m->charset != profile->charset &&
      ps_real.set_character_set(m, profile->charset->csname))
    return FALSE;
  return TRUE;
}

/* Ends an open transaction without committing it. An XA transaction that is only started
 * or ended can be dropped by a session reset; a prepared one belongs to its transaction
 * manager and must survive: the caller then closes the connection, as mysql_close would. */
static gboolean
end_transaction(MYSQL *m, gboolean reset_follows, const char **why)
{
  /* Whatever completion_type the borrower set: CHAIN would open the next borrower's
   * transaction (its autocommitted writes then lost at its close), RELEASE would end the
   * session. */
  if (run_and_drain(m, "ROLLBACK AND NO CHAIN NO RELEASE"))
    return TRUE;
  if (m->net.last_errno == ER_XAER_RMFAIL && reset_follows &&
      (strstr(m->net.last_error, "ACTIVE") || strstr(m->net.last_error, "IDLE")))
    return TRUE;
  *why = m->net.last_errno == ER_XAER_RMFAIL ? "an XA transaction is prepared or open"
                                              : "ROLLBACK failed";
  return FALSE;
}

static gboolean
restore_role(MYSQL *m, const PsConnProfile *profile)
{
  /* Neither COM_RESET_CONNECTION nor COM_CHANGE_USER drops a SET ROLE (MariaDB 10.11). */
  return run_and_drain(m, profile->role_sql);
}


static void
bound_round_trips(MYSQL *m, unsigned int timeout_s)
{
  MARIADB_PVIO *pvio = m->net.pvio;
  if (pvio && pvio->methods && pvio->methods->set_timeout) {
    ps_mirror_set_socket_timeout(pvio, PVIO_READ_TIMEOUT, timeout_s);
    ps_mirror_set_socket_timeout(pvio, PVIO_WRITE_TIMEOUT, timeout_s);
  }
  /* TLS reads take their timeout from the options (ma_tls_read in secure/openssl.c). */
  m->options.read_timeout = timeout_s;
  m->options.write_timeout = timeout_s;
  /* A failed reset must fail, not reconnect behind the pool's back. */
  m->options.reconnect = 0;
}

/* Sends one command without reading its reply (mthd_my_send_cmd with skip_check, as
 * mysql_send_query does): replies are read in order later, the protocol allows it. */
static gboolean
send_only(MYSQL *m, enum enum_server_command cmd, const char *arg)
{
  return m->methods->db_command(m, cmd, arg, arg ? strlen(arg) : 0, 1, NULL) == 0;
}

gboolean
ps_conn_send_query(MYSQL *m, const char *query)
{
  return send_only(m, COM_QUERY, query);
}

/* Sends the commands back to back without reading a reply: on a plain socket in one
 * send() of the packets the library would write one by one (a syscall and a server wake-up
 * instead of several); over TLS, compression or a connection handler, through the library,
 * one command at a time. What mthd_my_send_cmd does around a send is done here too. */
static gboolean
send_pipeline(MYSQL *m, const PsCmd *cmds, int n, unsigned int timeout_s)
{
  MARIADB_PVIO *pvio = m->net.pvio;
  my_socket fd = pvio ? ps_real.get_socket(m) : INVALID_SOCKET;
  gsize total = 0;
  for (int i = 0; i < n; i++)
    total += 5 + strlen(cmds[i].arg);
  if (!pvio || pvio->ctls || m->net.compress || (EXT(m) && EXT(m)->conn_hdlr) ||
      fd == INVALID_SOCKET || total > 16384 || m->status != MYSQL_STATUS_READY ||
      (m->server_status & SERVER_MORE_RESULTS_EXIST)) {
    for (int i = 0; i < n; i++)
      if (!send_only(m, cmds[i].cmd, cmds[i].arg))
        return FALSE;
    return TRUE;
  }
  /* A reset is a few dozen bytes: no allocation on the way back to the pool. */
  unsigned char small[1024];
  g_autofree unsigned char *big = total > sizeof small ? g_malloc(total) : NULL;
  unsigned char *buf = big ? big : small;
  gsize at = 0;
  for (int i = 0; i < n; i++) {
    gsize len = 1 + strlen(cmds[i].arg); /* < 16384: one packet each, sequence number 0 */
    buf[at] = (unsigned char)(len & 0xff);
    buf[at + 1] = (unsigned char)((len >> 8) & 0xff);
    buf[at + 2] = (unsigned char)((len >> 16) & 0xff);
    buf[at + 3] = 0;
    buf[at + 4] = (unsigned char)cmds[i].cmd;
    memcpy(buf + at + 5, cmds[i].arg, len - 1);
    at += 4 + len;
  }
  m->net.last_errno = 0;
  m->net.last_error[0] = '\0';
  strcpy(m->net.sqlstate, "00000");
  m->info = NULL;
  m->affected_rows = ~(my_ulonglong)0;
  int saved = errno;
  gsize off = 0;
  while (off < total) {
    ssize_t w = send(fd, buf + off, total - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      off += (gsize)w;
      continue;
    }
    if (w < 0 && errno == EINTR)
      continue;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    gboolean full = w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    if (full)
      ps_gil_release(); /* the socket buffer is full: this waits for the server */
    if (full && poll(&p, 1, timeout_s ? (int)MIN(timeout_s, 3600) * 1000 : -1) == 1)
      continue;
    errno = saved;
    ps_conn_set_error(m, CR_SERVER_GONE_ERROR, "HY000", "MySQL server has gone away");
    return FALSE;
  }
  errno = saved;
  /* As after the library's own write of a one-packet command. */
  m->net.pkt_nr = 1;
  m->net.compress_pkt_nr = 1;
  return TRUE;
}

/* Reads one pending reply, consuming any result sets (init commands may SELECT). */
static gboolean
read_reply(MYSQL *m)
{
  if (m->methods->db_read_query_result(m))
    return FALSE;
  for (;;) {
    if (m->field_count) {
      MYSQL_RES *res = ps_real.store_result(m);
      if (!res)
        return FALSE;
      ps_real.free_result(res);
    }
    if (!(m->server_status & SERVER_MORE_RESULTS_EXIST))
      return TRUE;
    if (m->methods->db_read_query_result(m))
      return FALSE;
  }
}

/* How many commands reset_commands writes (at most). */
static guint
reset_commands_len(const PsConnProfile *profile, guint nextra)
{
  return 4 + (profile->init_commands ? g_strv_length(profile->init_commands) : 0) + nextra;
}

/* The fast reset's commands into cmds (reset_commands_len of them at most):
 * COM_RESET_CONNECTION, COM_INIT_DB of `db` (unless NULL), SET ROLE, the init commands,
 * session tracking on again (auto mode: the reset turned it off), then extra[0..nextra).
 * Returns how many. */
static int
reset_commands(PsCmd *cmds, const PsConnProfile *profile, const char *db,
               const char *const *extra, guint nextra)
{
  int k = 0;
  cmds[k++] = (PsCmd){COM_RESET_CONNECTION, ""};
  if (db)
    cmds[k++] = (PsCmd){COM_INIT_DB, db};
  cmds[k++] = (PsCmd){COM_QUERY, profile->role_sql};
  for (char **c = profile->init_commands; c && *c; c++)
    cmds[k++] = (PsCmd){COM_QUERY, *c};
  if (profile->track)
    cmds[k++] = (PsCmd){COM_QUERY, PS_SESSION_TRACKING_SQL};
  for (guint i = 0; i < nextra; i++)
    cmds[k++] = (PsCmd){COM_QUERY, extra[i]};
  return k;
}

/* PsWatchRestore: a borrower's first command was not the next statement run ahead for it.
 * COM_RESET_CONNECTION, the role, the init commands, then the statements the borrower did
 * send (answered ahead), in one write, every reply read: the session is then what the
 * borrower's own commands would have made of the reset one. Within the handle's own
 * timeouts: this runs inside one of its commands. */
static gboolean
restore_session(MYSQL *m, gpointer data, const char *const *replay, guint nreplay)
{
  const PsConnProfile *profile = data;
  PsCmd *cmds = g_newa(PsCmd, reset_commands_len(profile, nreplay));
  int n = reset_commands(cmds, profile, NULL, replay, nreplay);
  if (!send_pipeline(m, cmds, n, m->options.write_timeout))
    return FALSE;
  for (int i = 0; i < n; i++)
    if (!read_reply(m))
      return FALSE;
  return TRUE;
}
gboolean
ps_conn_run_pipeline(MYSQL *m, const char *query, char **value, const char *db,
                     const char *const *stmts, guint n)
{
  PsCmd *cmds = g_newa(PsCmd, n + 2);
  int k = 0;
  if (query)
    cmds[k++] = (PsCmd){COM_QUERY, query};
  if (db)
    cmds[k++] = (PsCmd){COM_INIT_DB, db};
  for (guint i = 0; i < n; i++)
    cmds[k++] = (PsCmd){COM_QUERY, stmts[i]};
  if (k && !send_pipeline(m, cmds, k, m->options.write_timeout))
    return FALSE;
  int i = 0;
  if (query) {
    i = 1;
    if (m->methods->db_read_query_result(m) || !m->field_count)
      return FALSE;
    MYSQL_RES *res = ps_real.store_result(m);
    MYSQL_ROW row = res ? ps_real.fetch_row(res) : NULL;
    gboolean ok = row && row[0];
    if (ok)
      *value = g_strdup(row[0]);
    if (res)
      ps_real.free_result(res);
    if (!ok)
      return FALSE;
  }
  for (; i < k; i++)
    if (!read_reply(m))
      return FALSE;
  return TRUE;
}

static void present_returned(MYSQL *m, const PsConnProfile *profile);
static int reset_begin(MYSQL *m, PsResetMode mode, PsConnProfile *profile, PsWatch *watch,
                       guint dirty, unsigned int timeout_s, PsPlan *plan, const char **why);

int
ps_conn_reset_begin(MYSQL *m, PsResetMode mode, PsConnProfile *profile, PsWatch *watch,
                    unsigned int timeout_s, PsPlan *plan, const char **why)
{
  /* Auto, the common return: the borrower changed nothing, kept nothing, left no
   * transaction. What reset_begin and reset_light conclude then, without their steps. */
  if (mode == PS_RESET_AUTO && !m->stmts && !(m->server_status & SERVER_STATUS_IN_TRANS) &&
      !__atomic_load_n(&profile->no_reset_command, __ATOMIC_RELAXED) &&
      ps_watch_take_untouched(m, watch)) {
    present_returned(m, profile);
    *plan = PS_PLAN_NOTHING;
    return 0;
  }
  guint dirty = ps_watch_take(m, watch);
  *plan = mode == PS_RESET_ALWAYS || mode == PS_RESET_AUTO ? PS_PLAN_FULL : PS_PLAN_MODE;
  int pending = reset_begin(m, mode, profile, watch, dirty, timeout_s, plan, why);
  /* The reset's own commands are not the next borrower's doing (none were sent when auto
   * found nothing to undo: the take above left nothing to clear). */
  if (*plan != PS_PLAN_NOTHING && *plan != PS_PLAN_KEEP)
    ps_watch_take(m, watch);
  return pending;
}

/* What a return without a reset leaves on the handle for the next borrower (auto). */
static void
present_returned(MYSQL *m, const PsConnProfile *profile)
{
  /* The next borrower's client side starts at the handshake charset; a kept SET NAMES
   * switches it again when that borrower sends it (the kept reply carries the charset). */
  m->charset = profile->charset;
  /* Drivers read autocommit from the status flags (MySQLdb's get_autocommit decides whether
   * to send SET autocommit): the next borrower must see a fresh session's, not the last
   * reply's (a kept SET autocommit=0 is answered with its own status when sent again). */
  m->server_status = profile->server_status;
  m->status = MYSQL_STATUS_READY;
  m->affected_rows = ~(my_ulonglong)0;
  m->insert_id = 0;
  m->warning_count = 0;
  m->info = NULL;
}

const char *
ps_conn_var_default(guint var)
{
  static const char *const var_sets[PS_VAR_COUNT] = {
    "autocommit=DEFAULT",   "sql_mode=DEFAULT",         "time_zone=DEFAULT",
    "tx_isolation=DEFAULT", "tx_read_only=DEFAULT",     "sql_auto_is_null=DEFAULT",
    "last_insert_id=0"};
  for (guint i = 0; i < PS_VAR_COUNT; i++)
    if (var == 1u << i)
      return var_sets[i];
  return NULL;
}

/* POOLSHIM_RESET=auto: the session is the fresh one, plus the borrow's leading session setup
 * (kept for the next borrower), plus at most an open transaction. Nothing is sent, or
 * ROLLBACK alone, its reply read at the next lend like a reset's. -1 when it cannot be sent. */
static int
reset_light(MYSQL *m, PsConnProfile *profile, PsWatch *watch, unsigned int timeout_s,
            PsPlan *plan, const char **why)
{
  /* Session variables set after the leading setup go back to their fresh values, the global
   * ones (`= DEFAULT`), in one statement. autocommit back on would commit an open
   * transaction: ROLLBACK first whenever it is restored. */
  guint vars = ps_watch_restore_vars(watch);
  gboolean in_trans = (m->server_status & SERVER_STATUS_IN_TRANS) != 0 ||
                      ps_watch_maybe_in_trans(watch) || (vars & PS_VAR_AUTOCOMMIT);
  char set[256];
  if (vars)
    g_strlcpy(set, "SET SESSION ", sizeof set); /* not 256 bytes zeroed at every return */
  for (guint i = 0; vars && i < PS_VAR_COUNT; i++) {
    if (vars & (1u << i)) {
      if (set[strlen(set) - 1] != ' ')
        g_strlcat(set, ", ", sizeof set);
      g_strlcat(set, ps_conn_var_default(1u << i), sizeof set);
    }
  }
  PsCmd cmds[2];
  int n = 0;
  if (in_trans)
    cmds[n++] = (PsCmd){COM_QUERY, "ROLLBACK"};
  if (vars)
    cmds[n++] = (PsCmd){COM_QUERY, set};
  /* Sent before the watch keeps anything: over TLS the send goes through its command hook,
   * which must not take them for the next borrower's divergent first command. */
  /* Nothing to send, nothing to bound: the socket keeps the borrower's timeouts, which the
   * next lend sets anyway (ps_conn_adopt). */
  if (n)
    bound_round_trips(m, timeout_s);
  if (n && !send_pipeline(m, cmds, n, timeout_s)) {
    *why = "sending ROLLBACK or restoring session variables failed";
    return -1;
  }
  ps_watch_keep(watch, restore_session, profile);
  present_returned(m, profile);
  *plan = vars       ? PS_PLAN_RESTORE
          : in_trans ? PS_PLAN_ROLLBACK
          : ps_watch_kept(watch) ? PS_PLAN_KEEP
                                 : PS_PLAN_NOTHING;
  return n;
}

static int
reset_begin(MYSQL *m, PsResetMode mode, PsConnProfile *profile, PsWatch *watch, guint dirty,
            unsigned int timeout_s, PsPlan *plan, const char **why)
{
  if ((dirty & PS_DIRTY_UNPOOLABLE) && mode != PS_RESET_NONE) {
    *why = "the session holds state no reset clears (SET profiling, a server option set with "
           "mysql_set_server_option) or went unwatched (an automatic reconnect)";
    return -1;
  }
  /* Auto: every command was classified and every reply looked at (watch.c, session.c). Not
   * when replies of statements run ahead are still unread (the borrower sent fewer: the
   * session holds statements it did not send), nor with statement handles, whose server
   * side only a reset or their close ends. */
  /* Variables set after the leading setup are restored to the global values only where
   * those are a fresh session's: no init command or init_connect sets them, and the
   * leading setup (kept for the next borrower) does not set the same ones. */
  guint vars = ps_watch_restore_vars(watch);
  gboolean vars_ok = !vars || (!(profile->init_commands && profile->init_commands[0]) &&
                               !profile->init_connect &&
                               !(vars & ps_watch_setup_vars(watch)));
  if (mode == PS_RESET_AUTO && ps_watch_auto(watch) && !(dirty & (PS_DIRTY_FULL | PS_DIRTY_DB)) &&
      vars_ok && !ps_watch_ahead(watch) && !m->stmts &&
      !__atomic_load_n(&profile->no_reset_command, __ATOMIC_RELAXED))
    return reset_light(m, profile, watch, timeout_s, plan, why);
  /* `none` with no transaction and nothing run ahead sends nothing: no bounds to set. */
  if (mode != PS_RESET_NONE || ps_watch_ahead(watch) || (m->server_status & SERVER_STATUS_IN_TRANS))
    bound_round_trips(m, timeout_s);
  /* A borrower that sent fewer commands leaves replies of statements run ahead for it. */
  const char *const *learnt = NULL;
  guint nlearnt = ps_watch_learnt(watch, &learnt);
  if (!ps_watch_settle(m, watch)) {
    *why = "reading the reply of a statement run ahead failed";
    return -1;
  }
  gboolean in_trans = (m->server_status & SERVER_STATUS_IN_TRANS) != 0;
  if (mode == PS_RESET_NONE || mode == PS_RESET_ROLLBACK) {
    /* These modes keep the session: server-side statements would outlive their handles. */
    if (m->stmts) {
      *why = "prepared statements are open and the reset mode keeps them";
      return -1;
    }
    if ((in_trans || mode == PS_RESET_ROLLBACK) && !end_transaction(m, FALSE, why))
      return -1;
    if (mode == PS_RESET_NONE)
      return 0;
    if (!run_and_drain(m, "UNLOCK TABLES") || !run_and_drain(m, "DO RELEASE_ALL_LOCKS()")) {
      *why = "releasing locks failed";
      return -1;
    }
    if (profile->db && (!m->db || strcmp(m->db, profile->db) != 0) &&
        ps_real.select_db(m, profile->db)) {
      *why = "re-selecting the database failed";
      return -1;
    }
    if (!restore_role(m, profile)) {
      *why = "restoring the role failed";
      return -1;
    }
    return 0;
  }
  /* Rare: only a connection returned inside a transaction pays this round trip, to learn
   * whether a prepared XA transaction must be left to its transaction manager. */
  if (in_trans && !end_transaction(m, TRUE, why))
    return -1;
  /* Statement handles are invalidated exactly as mysql_close invalidates them. */
  if (m->methods && m->methods->invalidate_stmts)
    m->methods->invalidate_stmts(m, "mysql_close()");
  if ((mode == PS_RESET_ALWAYS || mode == PS_RESET_AUTO) && profile->db &&
      !__atomic_load_n(&profile->no_reset_command, __ATOMIC_RELAXED)) {
    /* The fast path: COM_RESET_CONNECTION, SET ROLE and the init commands go out
     * together now; their replies are read when the connection is next lent, by which time
     * they have usually arrived. mysql_close() does not wait for the server. The reset
     * keeps the current database: COM_INIT_DB goes too when the borrower may have changed
     * it (watch.c), a command the server would otherwise run for nothing on every return.
     * The role too survives the reset, and a stored function can change it unseen: it is
     * always restored. */
    const char *db = (dirty & PS_DIRTY_DB) || g_strcmp0(m->db, profile->db) != 0
                       ? profile->db : NULL;
    /* The borrower began with session setup (SET NAMES, SET autocommit, ...): run it
     * ahead for the next one, whose identical statements then cost no round trip
     * (watch.h). Not with compression or a connection handler plugin, whose sending the
     * watch cannot stand in for. */
    gboolean ahead = nlearnt && !m->net.compress && !(EXT(m) && EXT(m)->conn_hdlr);
    guint nahead = ahead ? nlearnt : 0;
    PsCmd *cmds = g_newa(PsCmd, reset_commands_len(profile, nahead));
    int n = reset_commands(cmds, profile, db, learnt, nahead);
    int pending = n - (int)nahead;
    if (!send_pipeline(m, cmds, n, timeout_s)) {
      *why = "sending the session reset failed";
      return -1;
    }
    if (ahead)
      ps_watch_sent_ahead(watch, restore_session, profile);
    return pending;
  }
  /* COM_RESET_CONNECTION keeps the current database, so a pool without a default database
   * cannot undo a USE with it: COM_CHANGE_USER resets that too (and serves servers older
   * than MariaDB 10.2.4, which lack COM_RESET_CONNECTION). */
  if (!change_user(m, profile)) {
    *why = "COM_CHANGE_USER failed";
    return -1;
  }
  if (!restore_role(m, profile)) {
    *why = "restoring the role failed";
    return -1;
  }
  for (char **c = profile->init_commands; c && *c; c++) {
    if (!run_and_drain(m, *c)) {
      *why = "re-running an init command failed";
      return -1;
    }
  }
  if (profile->track && !run_and_drain(m, PS_SESSION_TRACKING_SQL)) {
    *why = "turning session tracking on failed";
    return -1;
  }
  return 0;
}

gboolean
ps_conn_reset_end(MYSQL *m, int pending, PsPlan plan, PsConnProfile *profile,
                  unsigned int timeout_s, const char **why)
{
  if (pending) {
    /* The borrower's connect deadline may be shorter than the reset timeout. */
    MARIADB_PVIO *pvio = m->net.pvio;
    if (pvio && pvio->methods && pvio->methods->set_timeout)
      pvio->methods->set_timeout(pvio, PVIO_READ_TIMEOUT, (int)timeout_s);
    m->options.read_timeout = timeout_s;
  }
  for (int i = 0; i < pending; i++) {
    if (!read_reply(m)) {
      if (plan == PS_PLAN_ROLLBACK || plan == PS_PLAN_RESTORE) {
        *why = "ROLLBACK or restoring session variables failed";
        return FALSE;
      }
      if (i == 0 && m->net.last_errno == ER_UNKNOWN_COM_ERROR) {
        /* A server without COM_RESET_CONNECTION: COM_CHANGE_USER from now on. */
        __atomic_store_n(&profile->no_reset_command, TRUE, __ATOMIC_RELAXED);
      }
      *why = i == 0 ? "COM_RESET_CONNECTION failed" : "restoring the session failed";
      return FALSE;
    }
  }
  if (pending && plan != PS_PLAN_ROLLBACK && plan != PS_PLAN_RESTORE) {
    /* What mysql_reset_connection and mysql_select_db do after their replies. The server is
     * back at the handshake charset; the client side keeps whatever SET NAMES made it. */
    m->charset = profile->charset;
    if (g_strcmp0(m->db, profile->db) != 0) {
      free(m->db);
      m->db = strdup(profile->db);
    }
  }
  if (pending && profile->track)
    m->server_status = profile->server_status; /* not the tracking SET's state-change flag */
  m->status = MYSQL_STATUS_READY;
  m->affected_rows = ~(my_ulonglong)0;
  m->insert_id = 0;
  m->warning_count = 0;
  m->info = NULL;
  return TRUE;
}

PsProof
ps_conn_reauthenticate(MYSQL *m, PsConnProfile *profile, PsWatch *watch,
                       unsigned int timeout_s, unsigned int *errnum)
{
  /* The reset bounds its round trips on the handle's options: they are the application's. */
  unsigned int rt = m->options.read_timeout, wt = m->options.write_timeout;
  my_bool reconnect = m->options.reconnect;
  const char *why = NULL;
  PsPlan plan = PS_PLAN_MODE;
  int r = reset_begin(m, PS_RESET_CHANGE_USER, profile, watch, ps_watch_take(m, watch),
                      timeout_s, &plan, &why);
  ps_watch_take(m, watch); /* the proof's commands are not the borrower's doing */
  m->options.read_timeout = rt;
  m->options.write_timeout = wt;
  m->options.reconnect = reconnect;
  if (r == 0 && profile->track)
    m->server_status = profile->server_status; /* not the tracking SET's state-change flag */
  if (r == 0)
    return PS_PROOF_OK;
  *errnum = m->net.last_errno;
  return *errnum > 0 && *errnum < CR_MIN_ERROR ? PS_PROOF_REFUSED : PS_PROOF_LOST;
}
