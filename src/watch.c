/* watch.c: looks at each command a pooled connection sends, through a per-connection copy of
 * the library's public command table, and remembers whether the session's database or role
 * may have changed (see watch.h); the statement text is read by watch_scan.c. Holds the
 * per-connection state; must never change what is sent or what the caller gets back. */
#include "watch.h"

#include <stddef.h>
#include <string.h>

#include "session.h"

/* What the last command sent was, to judge the state-change flag of its final reply. */
typedef enum {
  PS_LAST_NONE,    /* nothing since the lend, or the pool's own commands */
  PS_LAST_QUIET,   /* CLEAN or TXN (session.h): a state change flag is unexplained */
  PS_LAST_PRELUDE, /* a leading session setup statement: it sets what the tracker reports */
} PsLast;

/* What the server answered to a session setup statement, to answer it again (kept mode). */
typedef struct {
  unsigned int server_status, warning_count;
  const struct ma_charset_info_st *charset;
} PsReply;

struct PsWatch {
  struct st_mariadb_methods methods; /* first: m->methods points here */
  const struct st_mariadb_methods *orig;
  /* The 4-byte fields pair up so that the struct has no padding (its size is part of the
   * heap layout the per-pair instruction count is measured in: bench/shimcost.py). */
  guint dirty;
  /* Answering ahead (watch.h). */
  gboolean learning;                   /* lent: the leading preludes are being noted */
  guint nlearnt;
  gboolean uv_last;                    /* the last command only read or set user variables,
                                          or changed only what a re-borrow restores (a
                                          prelude; LAST_INSERT_ID() by INSERT ... RETURNING,
                                          noted by returning_bits) */
  char *learnt[PS_PRELUDE_MAX];        /* this borrow's leading preludes */
  guint nahead, next;
  char *ahead[PS_PRELUDE_MAX];         /* run ahead by the reset; replies next.. unread */
  gboolean bypass;                     /* the watch's own commands: not looked at */
  gboolean uv_used;                    /* ... and some command since the lend did */
  PsWatchRestore restore;
  gpointer restore_data;
  /* POOLSHIM_RESET=auto (ps_watch_set_auto): session tracking is on in this session. */
  gboolean auto_mode;
  PsLast last;
  int learnt_pending;                  /* learnt[] whose reply the library reads next; -1 */
  gboolean pinned;                     /* POOLSHIM_GRAIN=transaction: since the lend, the
                                          session holds what only a full reset undoes (not a
                                          database change, not a restorable variable) */
  PsReply learnt_reply[PS_PRELUDE_MAX];
  gboolean kept;                       /* ahead[] are applied already, no reply is owed */
  guint restore_vars;                  /* PsVar: set after the leading setup */
  PsReply ahead_reply[PS_PRELUDE_MAX];
  const PsReply *fake;                 /* kept mode: the answer to the command just taken */
  gboolean maybe_in_trans;             /* an error reply with autocommit off: the failed
                                          statement may have begun a transaction, and an
                                          error packet carries no status flags to say so */
  gboolean unread;                     /* a query was sent (mysql_send_query) and its reply
                                          not read yet: the connection is out of step for
                                          anyone else (ps_watch_reply_unread) */
};
G_STATIC_ASSERT(sizeof(struct PsWatch) == 648);

static void clear_learnt(PsWatch *w);
static void clear_ahead(PsWatch *w);

static guint
classify_command(enum enum_server_command command, const char *arg, size_t length)
{
  switch (command) {
  case COM_QUERY:
  case COM_STMT_PREPARE:
    /* The library sends strlen(arg) bytes when the length is 0 (mthd_my_send_cmd). */
    return arg ? ps_watch_classify_sql(arg, length ? length : strlen(arg)) : PS_DIRTY_ALL;
  /* Commands that touch neither the database nor the role. */
  case COM_QUIT:
  case COM_PING:
  case COM_STATISTICS:
  case COM_RESET_CONNECTION:
  case COM_STMT_EXECUTE: /* of a statement prepared, and scanned, in this session */
  case COM_STMT_SEND_LONG_DATA:
  case COM_STMT_CLOSE:
  case COM_STMT_RESET:
  case COM_STMT_FETCH:
  case COM_STMT_BULK_EXECUTE:
  case COM_FIELD_LIST:
  case COM_PROCESS_INFO:
    return 0;
  case COM_INIT_DB:
    return PS_DIRTY_DB;
  case COM_SET_OPTION: /* survives COM_RESET_CONNECTION */
    return PS_DIRTY_ALL;
  default: /* COM_CHANGE_USER and anything this file does not know */
    return PS_DIRTY_ALL;
  }
}

/* POOLSHIM_RESET=auto: PS_DIRTY_FULL for a command whose effect on the session only a full
 * reset is known to undo. */
static inline __attribute__((always_inline)) guint
classify_auto(enum enum_server_command command, const char *arg, size_t n)
{
  switch (command) {
  case COM_QUERY:
    return arg && ps_session_classify_sql(arg, n) != PS_STMT_FULL ? 0 : PS_DIRTY_FULL;
  case COM_QUIT:
  case COM_PING:
  case COM_STATISTICS:
  case COM_FIELD_LIST:
  case COM_PROCESS_INFO:
    return 0;
  default: /* COM_INIT_DB, prepared statements, COM_RESET_CONNECTION (tracking off), ... */
    return PS_DIRTY_FULL;
  }
}

/* The final reply of the last command is in m (an OK packet, or the EOF that ended a result
 * set): the server flags any change of what session tracking covers. After a statement the
 * scan called CLEAN or TXN, nothing explains one. */
static void
note_reply(PsWatch *w, const MYSQL *m)
{
  if (w->auto_mode && w->last == PS_LAST_QUIET &&
      (m->server_status & SERVER_SESSION_STATE_CHANGED))
    w->dirty |= PS_DIRTY_FULL;
}

static void
clear_ahead(PsWatch *w)
{
  for (guint i = 0; i < w->nahead; i++)
    g_free(w->ahead[i]);
  w->nahead = w->next = 0;
  w->kept = FALSE;
  w->fake = NULL;
}

/* Reads the replies of the statements run ahead that nobody asked for. An error reply (a
 * prelude the server refused) is read like any other; FALSE only when the connection
 * failed. */
static gboolean
drain(MYSQL *mysql, PsWatch *w)
{
  for (; w->next < w->nahead; w->next++) {
    if (w->orig->db_read_query_result(mysql)) {
      unsigned int e = mysql->net.last_errno;
      if (e >= 2000 && e < 3000)
        return FALSE; /* CR_*: the connection, not the statement */
      mysql->net.last_errno = 0;
      mysql->net.last_error[0] = '\0';
      strcpy(mysql->net.sqlstate, "00000");
    }
  }
  return TRUE;
}

/* The borrower sent something else than the next statement run ahead: the session has run
 * statements it did not send. Read their replies, then make it the reset session again
 * plus the statements it did send (the watch's restore callback), before its command. */
static gboolean
catch_up(MYSQL *mysql, PsWatch *w)
{
  guint matched = w->next;
  /* The library follows the server's session tracking: a SET NAMES reply it reads switches
   * its client-side character set. The borrower's own commands made it what it is now. */
  const struct ma_charset_info_st *charset = mysql->charset;
  gboolean ok = w->kept || drain(mysql, w); /* kept: no reply is owed */
  if (ok) {
    w->bypass = TRUE;
    ok = w->restore && w->restore(mysql, w->restore_data, (const char *const *)w->ahead, matched);
    w->bypass = FALSE;
  }
  mysql->charset = charset;
  clear_ahead(w);
  w->last = PS_LAST_NONE;
  return ok;
}

/* Auto mode, a query the scan called FULL: INSERT or REPLACE ... RETURNING whose only FULL
 * word is RETURNING changes nothing but LAST_INSERT_ID() (which no OK packet shows then):
 * the return sets it back to 0 (PS_VAR_LAST_INSERT_ID) instead of a full reset. */
static guint
returning_bits(PsWatch *w, guint bits, const char *arg, size_t n)
{
  if (bits != PS_DIRTY_FULL || !ps_watch_returning_only(arg, n))
    return bits;
  w->restore_vars |= PS_VAR_LAST_INSERT_ID;
  w->uv_last = TRUE; /* for ps_watch_db_command: the transaction grain reads it at a take */
  return 0;
}

/* Inlined into both of its callers: the default path (watched_db_command) pays no call. */
static inline __attribute__((always_inline)) int
watch_command(PsWatch *w, MYSQL *mysql, enum enum_server_command command, const char *arg,
              size_t length, my_bool skip_check, void *opt_arg)
{
  /* COM_QUIT ends the session: nothing kept for it needs restoring first. */
  if (w->bypass || command == COM_QUIT)
    return w->orig->db_command(mysql, command, arg, length, skip_check, opt_arg);
  note_reply(w, mysql); /* the previous command's final reply */
  w->learnt_pending = -1;
  w->fake = NULL;
  /* Auto mode, the common statement: a query that is not a SET, with no statement run ahead
   * or kept waiting to be matched. What the general path below does for it, in short: it
   * ends the noting of a setup, and is classified. */
  if (w->auto_mode && command == COM_QUERY && arg && w->next >= w->nahead) {
    size_t len = length ? length : strlen(arg);
    if (!(len >= 4 && ps_session_lower((unsigned char)arg[0]) == 's' &&
          ps_session_lower((unsigned char)arg[1]) == 'e' &&
          ps_session_lower((unsigned char)arg[2]) == 't')) {
      w->learning = FALSE;
      w->unread |= skip_check;
      guint bits = classify_auto(command, arg, len);
      if (G_UNLIKELY(bits))
        bits = returning_bits(w, bits, arg, len);
      if (bits) /* not CLEAN or TXN: the database word scan too */
        w->dirty |= bits | classify_command(command, arg, length);
      w->last = PS_LAST_QUIET;
      return w->orig->db_command(mysql, command, arg, length, skip_check, opt_arg);
    }
  }
  /* Kept until a reply is read: a command sent after it (ping, statement close) does not
   * read the query's reply for it. */
  w->unread |= command == COM_QUERY && skip_check;
  /* Statements are matched only while a borrow's setup is being noted or answered. */
  gboolean looking = w->learning || w->next < w->nahead;
  size_t n = arg && (looking || w->auto_mode) ? (length ? length : strlen(arg)) : 0;
  /* Only what the library sends without reading the reply itself (mysql_send_query, as
   * mysql_real_query does): the reply is then read through watched_read_query_result. */
  guint var = 0; /* the PsVar a prelude sets: the statement is scanned once */
  gboolean set_stmt = (looking || w->auto_mode) && command == COM_QUERY && skip_check &&
                      n >= 4 && ps_session_lower((unsigned char)arg[0]) == 's' &&
                      ps_session_lower((unsigned char)arg[1]) == 'e' &&
                      ps_session_lower((unsigned char)arg[2]) == 't' &&
                      ps_watch_prelude_var(arg, n, &var);
  gboolean prelude = looking && set_stmt;
  int learnt = -1;
  if (w->learning) {
    if (prelude && w->nlearnt < PS_PRELUDE_MAX) {
      learnt = (int)w->nlearnt;
      w->learnt[w->nlearnt++] = g_strndup(arg, n);
    } else {
      w->learning = FALSE;
    }
  }
  if (w->next < w->nahead) {
    const char *t = w->ahead[w->next];
    if (prelude && skip_check && strlen(t) == n && memcmp(arg, t, n) == 0 &&
        mysql->status == MYSQL_STATUS_READY &&
        !(mysql->server_status & SERVER_MORE_RESULTS_EXIST)) {
      /* On the wire: the server ran this very statement after the reset, in the session
       * state the borrower has now: its reply is the next packet on the wire, and the
       * library reads it as the reply to this command. Kept: the session already holds it,
       * and the reply the server gave it then is given again (watched_read_query_result).
       * What mthd_my_send_cmd does around a send. */
      if (w->kept)
        w->fake = &w->ahead_reply[w->next];
      w->next++;
      w->learnt_pending = learnt;
      w->last = PS_LAST_PRELUDE;
      mysql->net.last_errno = 0;
      mysql->net.last_error[0] = '\0';
      strcpy(mysql->net.sqlstate, "00000");
      mysql->info = NULL;
      mysql->affected_rows = ~(my_ulonglong)0;
      mysql->net.pkt_nr = 1;
      mysql->net.compress_pkt_nr = 1;
      return 0;
    }
    if (!catch_up(mysql, w))
      return 1; /* the library's error is set on mysql, as a failed send would */
  }
  /* A later SET of a variable whose fresh value is the global one: restored alone. */
  gboolean restorable = w->auto_mode && learnt < 0 && set_stmt && var;
  guint auto_bits = w->auto_mode && learnt < 0 && !restorable
                      ? classify_auto(command, arg, n)
                      : PS_DIRTY_FULL; /* not judged */
  if (w->auto_mode && learnt < 0 && !restorable && command == COM_QUERY && arg && auto_bits)
    auto_bits = returning_bits(w, auto_bits, arg, n);
  /* A statement session.c calls CLEAN or TXN is one plain statement (no USE, no dynamic
   * SQL, no routine call, no DROP DATABASE: those are FULL there): the words this file
   * looks for can only be names or text in it, never a change of the database or the
   * profiling history (PROFILING makes it FULL). So its word scan is not needed. */
  if (!(command == COM_QUERY && auto_bits == 0))
    w->dirty |= classify_command(command, arg, length);
  if (restorable)
    w->restore_vars |= var;
  else if (w->auto_mode && learnt < 0)
    w->dirty |= auto_bits;
  w->learnt_pending = learnt;
  w->last = learnt >= 0 || restorable ? PS_LAST_PRELUDE : PS_LAST_QUIET;
  return w->orig->db_command(mysql, command, arg, length, skip_check, opt_arg);
}

/* Reads the reply of a command, or gives the kept one. In auto mode an OK packet is looked
 * at: a generated insert id (LAST_INSERT_ID() would show it) and the state change flag. */
static inline __attribute__((always_inline)) int
watch_read_query_result(PsWatch *w, MYSQL *mysql)
{
  if (w->bypass)
    return w->orig->db_read_query_result(mysql);
  w->unread = FALSE;
  int rc = 0;
  if (w->fake) {
    /* What ma_read_ok_packet leaves for a SET: the session already is in this state. */
    const PsReply *r = w->fake;
    w->fake = NULL;
    mysql->field_count = 0;
    mysql->affected_rows = 0;
    mysql->insert_id = 0;
    mysql->server_status = r->server_status;
    mysql->warning_count = r->warning_count;
    mysql->info = NULL;
    mysql->charset = r->charset;
    mysql->status = MYSQL_STATUS_READY;
  } else {
    rc = w->orig->db_read_query_result(mysql);
  }
  if (rc && w->auto_mode && !(mysql->server_status & SERVER_STATUS_AUTOCOMMIT))
    w->maybe_in_trans = TRUE;
  if (w->learnt_pending >= 0) {
    if (rc)
      w->dirty |= w->auto_mode ? PS_DIRTY_FULL : 0; /* refused: the session is not as noted */
    else
      w->learnt_reply[w->learnt_pending] =
        (PsReply){mysql->server_status, mysql->warning_count, mysql->charset};
    w->learnt_pending = -1;
  }
  if (!rc && w->auto_mode && mysql->field_count == 0) {
    if (mysql->insert_id)
      w->restore_vars |= PS_VAR_LAST_INSERT_ID; /* LAST_INSERT_ID() would show it */
    note_reply(w, mysql);
  }
  return rc;
}

/* The transaction grain: user variables are restorable while the server lists them
 * (information_schema.USER_VARIABLES, read at a take; handle.c turns this off when it does
 * not, and they pin from then on). */
static gint uservars_restorable = 1;

void
ps_watch_set_uservars_restorable(gboolean on)
{
  __atomic_store_n(&uservars_restorable, on, __ATOMIC_RELAXED);
}

/* The FULL or UNPOOLABLE bits a command added pin the session (the transaction grain), but
 * for a change of the database or of user variables, which a re-borrow restores. */
static inline void
note_pin(PsWatch *w, guint before, enum enum_server_command command)
{
  if (!w->bypass && (w->dirty & (PS_DIRTY_FULL | PS_DIRTY_UNPOOLABLE)) &&
      command != COM_INIT_DB && !w->uv_last)
    w->pinned = TRUE;
  w->dirty |= before;
}

int
ps_watch_db_command(PsWatch *w, MYSQL *mysql, enum enum_server_command command,
                    const char *arg, size_t length, my_bool skip_check, void *opt_arg,
                    gboolean *returning)
{
  guint before = w->dirty; /* this command's own bits: the session may be FULL already */
  w->dirty = 0;
  if (!w->bypass && command != COM_QUIT) {
    /* The previous command's final reply, judged with what that command was. */
    note_reply(w, mysql);
    w->last = PS_LAST_NONE;
    if ((w->dirty & PS_DIRTY_FULL) && !w->uv_last)
      w->pinned = TRUE;
    before |= w->dirty;
    w->dirty = 0;
  }
  size_t n = command == COM_QUERY && arg ? (length ? length : strlen(arg)) : 0;
  gboolean uv = !w->bypass && n && __atomic_load_n(&uservars_restorable, __ATOMIC_RELAXED) &&
                ps_watch_uservar_only(arg, n);
  w->uv_used |= uv;
  /* A session setup statement (ps_watch_is_prelude) sets what the re-borrow restores, and
   * INSERT ... RETURNING only LAST_INSERT_ID(), which the take reads: neither pins. The
   * scan of watch_command finds the RETURNING (returning_bits sets uv_last). */
  gboolean noted = uv || (!w->bypass && n && ps_watch_is_prelude(arg, n));
  w->uv_last = FALSE;
  int rc = watch_command(w, mysql, command, arg, length, skip_check, opt_arg);
  *returning = !w->bypass && !noted && w->uv_last;
  w->uv_last |= noted;
  note_pin(w, before, command);
  return rc;
}

int
ps_watch_read_query_result(PsWatch *w, MYSQL *mysql)
{
  guint before = w->dirty;
  w->dirty = 0;
  int rc = watch_read_query_result(w, mysql);
  note_pin(w, before, COM_QUERY);
  return rc;
}

static int
watched_db_command(MYSQL *mysql, enum enum_server_command command, const char *arg,
                   size_t length, my_bool skip_check, void *opt_arg)
{
  PsWatch *w = (PsWatch *)((char *)mysql->methods - offsetof(PsWatch, methods));
  return watch_command(w, mysql, command, arg, length, skip_check, opt_arg);
}

static int
watched_read_query_result(MYSQL *mysql)
{
  PsWatch *w = (PsWatch *)((char *)mysql->methods - offsetof(PsWatch, methods));
  return watch_read_query_result(w, mysql);
}

gboolean
ps_watch_uservars_used(const PsWatch *w)
{
  return w && w->uv_used;
}

gboolean
ps_watch_pinned(const PsWatch *w)
{
  return !w || w->pinned || !w->auto_mode;
}

gboolean
ps_watch_reply_unread(const PsWatch *w)
{
  return w && w->unread;
}

gboolean
ps_watch_bypassed(const PsWatch *w)
{
  return w && w->bypass;
}

void
ps_watch_set_bypass(PsWatch *w, gboolean on)
{
  w->bypass = on;
}

void
ps_watch_mark_full(PsWatch *w)
{
  w->dirty |= PS_DIRTY_FULL;
  w->last = PS_LAST_NONE;
}

const struct st_mariadb_methods *
ps_watch_orig(PsWatch *w)
{
  return w->orig;
}

const struct st_mariadb_methods *
ps_watch_methods(PsWatch *w)
{
  return &w->methods;
}

static void
hook(PsWatch *w, MYSQL *m)
{
  w->orig = m->methods;
  w->methods = *m->methods;
  w->methods.db_command = watched_db_command;
  w->methods.db_read_query_result = watched_read_query_result;
  m->methods = &w->methods;
}

PsWatch *
ps_watch_new(MYSQL *m)
{
  if (!m->methods || !m->methods->db_command)
    return NULL;
  PsWatch *w = g_new0(PsWatch, 1);
  w->learnt_pending = -1;
  hook(w, m);
  return w;
}

void
ps_watch_free(PsWatch *w)
{
  if (!w)
    return;
  clear_learnt(w);
  clear_ahead(w);
  g_free(w);
}

static void
clear_learnt(PsWatch *w)
{
  for (guint i = 0; i < w->nlearnt; i++)
    g_free(w->learnt[i]);
  w->nlearnt = 0;
}

void
ps_watch_lent(PsWatch *w)
{
  if (!w)
    return;
  clear_learnt(w);
  w->learning = TRUE;
  w->dirty = 0; /* the pool's own commands since the return are nobody's doing */
  w->maybe_in_trans = FALSE;
  w->restore_vars = 0;
  w->last = PS_LAST_NONE;
  w->learnt_pending = -1;
}

guint
ps_watch_learnt(PsWatch *w, const char *const **stmts)
{
  if (!w) {
    *stmts = NULL;
    return 0;
  }
  w->learning = FALSE;
  *stmts = (const char *const *)w->learnt;
  return w->nlearnt;
}

void
ps_watch_sent_ahead(PsWatch *w, PsWatchRestore restore, gpointer data)
{
  if (!w)
    return;
  clear_ahead(w);
  for (guint i = 0; i < w->nlearnt; i++)
    w->ahead[i] = w->learnt[i];
  w->nahead = w->nlearnt;
  w->nlearnt = 0;
  w->kept = FALSE;
  w->restore = restore;
  w->restore_data = data;
}

gboolean
ps_watch_ahead(const PsWatch *w)
{
  return w && !w->kept && w->next < w->nahead;
}

guint
ps_watch_restore_vars(const PsWatch *w)
{
  return w ? w->restore_vars : 0;
}

guint
ps_watch_setup_vars(const PsWatch *w)
{
  if (!w)
    return 0;
  guint vars = 0, var;
  for (guint i = 0; i < w->nlearnt; i++)
    if (ps_watch_prelude_var(w->learnt[i], strlen(w->learnt[i]), &var))
      vars |= var;
  for (guint i = 0; i < w->nahead; i++)
    if (ps_watch_prelude_var(w->ahead[i], strlen(w->ahead[i]), &var))
      vars |= var;
  return vars;
}

gboolean
ps_watch_maybe_in_trans(const PsWatch *w)
{
  return w && w->maybe_in_trans;
}

gboolean
ps_watch_auto(const PsWatch *w)
{
  return w && w->auto_mode;
}

void
ps_watch_set_auto(PsWatch *w)
{
  if (w)
    w->auto_mode = TRUE;
}

void
ps_watch_keep(PsWatch *w, PsWatchRestore restore, gpointer data)
{
  if (!w)
    return;
  w->learning = FALSE;
  if (w->kept && w->next < w->nahead) {
    /* The borrower sent only the first ones of the kept statements, each answered: the
     * session still holds them all. */
    w->next = 0;
    clear_learnt(w);
    return;
  }
  clear_ahead(w);
  for (guint i = 0; i < w->nlearnt; i++) {
    w->ahead[i] = w->learnt[i];
    w->ahead_reply[i] = w->learnt_reply[i];
  }
  w->nahead = w->nlearnt;
  w->nlearnt = 0;
  w->kept = w->nahead > 0;
  w->restore = restore;
  w->restore_data = data;
}

gboolean
ps_watch_unmatched(const PsWatch *w)
{
  return w && w->next < w->nahead;
}

guint
ps_watch_kept(const PsWatch *w)
{
  return w && w->kept ? w->nahead : 0;
}

gboolean
ps_watch_settle(MYSQL *m, PsWatch *w)
{
  if (!w || w->next >= w->nahead) {
    if (w)
      clear_ahead(w); /* kept ones go with the reset that follows */
    return TRUE;
  }
  gboolean ok = w->kept || m->methods != &w->methods || drain(m, w); /* reconnected: gone */
  clear_ahead(w);
  return ok;
}

gboolean
ps_watch_take_untouched(MYSQL *m, PsWatch *w)
{
  if (!w || m->methods != &w->methods || !w->auto_mode)
    return FALSE;
  note_reply(w, m); /* the last command's final reply */
  if (w->dirty || w->restore_vars || w->maybe_in_trans || w->nlearnt || w->nahead)
    return FALSE;
  /* What ps_watch_take and then ps_watch_keep leave when there is nothing to take or keep. */
  w->last = PS_LAST_NONE;
  w->pinned = w->uv_used = w->uv_last = FALSE;
  w->learning = FALSE;
  return TRUE;
}

guint
ps_watch_take(MYSQL *m, PsWatch *w)
{
  /* The library reconnected the handle (MYSQL_OPT_RECONNECT), which brings its default
   * table back: what the new session went through is unknown. */
  if (!w || m->methods != &w->methods)
    return PS_DIRTY_ALL;
  note_reply(w, m); /* the last command's final reply */
  w->last = PS_LAST_NONE;
  w->pinned = w->uv_used = w->uv_last = FALSE;
  guint bits = w->dirty;
  w->dirty = 0;
  return bits;
}
