/* watch.c: looks at each command a pooled connection sends, through a per-connection copy of
 * the library's public command table, and remembers whether the session's database or role
 * may have changed (see watch.h). A conservative word scan: a false "dirty" costs one more
 * command at the next reset, a false "clean" would show one borrower another's state. Must
 * never change what is sent or what the caller gets back. */
#include "watch.h"

#include <stddef.h>
#include <string.h>

struct PsWatch {
  struct st_mariadb_methods methods; /* first: m->methods points here */
  const struct st_mariadb_methods *orig;
  guint dirty;
  gboolean first_due;      /* lent, and no command sent yet */
  const char *first_sent;  /* the borrower's first command when it is a prelude */
  const char *ahead;       /* a prelude the server ran ahead; its reply not yet read */
  gboolean fresh_autocommit; /* the reset session's autocommit, to undo a prelude */
};

/* Statements a borrower may be answered ahead: the exact texts of mysql_autocommit()
 * (libmariadb.c), which Python's MySQLdb and Django send at every connect. Their only
 * effect is the session's autocommit, which the reply's status flags report. */
static const char *const preludes[] = {"SET autocommit=0", "SET autocommit=1"};

static const char *
prelude_of(enum enum_server_command command, const char *arg, size_t length)
{
  if (command != COM_QUERY || !arg)
    return NULL;
  size_t n = length ? length : strlen(arg);
  for (guint i = 0; i < G_N_ELEMENTS(preludes); i++)
    if (n == strlen(preludes[i]) && memcmp(arg, preludes[i], n) == 0)
      return preludes[i];
  return NULL;
}

/* A word is a maximal run of ASCII letters, digits, _ and $. Every other byte separates,
 * also bytes >= 0x80: in latin1 0xA0 is whitespace to the server, and where such a byte is
 * part of an identifier for the server, splitting there only makes a false "dirty".
 * Keywords are ASCII in every client character set, so a keyword the server sees is always
 * such a run. */
static inline gboolean
ident_byte(unsigned char c)
{
  return g_ascii_isalnum(c) || c == '_' || c == '$';
}

static gboolean
word_is(const char *w, size_t len, const char *lower)
{
  return strlen(lower) == len && g_ascii_strncasecmp(w, lower, len) == 0;
}

guint
ps_watch_classify_sql(const char *sql, size_t len)
{
  guint bits = 0;
  gboolean drop = FALSE, database = FALSE;
  size_t i = 0;
  while (i < len) {
    if (!ident_byte((unsigned char)sql[i])) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < len && ident_byte((unsigned char)sql[j]))
      j++;
    const char *w = sql + i;
    size_t n = j - i;
    if (word_is(w, n, "use"))
      bits |= PS_DIRTY_DB;
    /* Dynamic SQL and routines: the text that runs is not this text. (Routines cannot USE,
     * but the scan does not rely on that.) */
    else if (word_is(w, n, "prepare") || word_is(w, n, "execute") || word_is(w, n, "call"))
      bits |= PS_DIRTY_DB;
    else if (word_is(w, n, "drop"))
      drop = TRUE;
    else if (word_is(w, n, "database") || word_is(w, n, "schema"))
      database = TRUE;
    /* SHOW PROFILES keeps the statements' text through COM_RESET_CONNECTION. */
    else if (word_is(w, n, "profiling"))
      bits |= PS_DIRTY_UNPOOLABLE;
    i = j;
  }
  if (drop && database) /* dropping the current database leaves the session without one */
    bits |= PS_DIRTY_DB;
  return bits;
}

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

/* Reads the reply of the prelude run ahead, and puts autocommit back to the reset
 * session's when the prelude changed it: the session is then exactly as if the prelude
 * had never been sent. */
static gboolean
settle(MYSQL *mysql, PsWatch *w)
{
  const char *t = w->ahead;
  w->ahead = NULL;
  if (!t)
    return TRUE;
  if (w->orig->db_read_query_result(mysql))
    return FALSE;
  gboolean now = (mysql->server_status & SERVER_STATUS_AUTOCOMMIT) != 0;
  if (now == w->fresh_autocommit)
    return TRUE;
  const char *undo = w->fresh_autocommit ? preludes[1] : preludes[0];
  return w->orig->db_command(mysql, COM_QUERY, undo, strlen(undo), 1, NULL) == 0 &&
         w->orig->db_read_query_result(mysql) == 0;
}

static int
watched_db_command(MYSQL *mysql, enum enum_server_command command, const char *arg,
                   size_t length, my_bool skip_check, void *opt_arg)
{
  PsWatch *w = (PsWatch *)((char *)mysql->methods - offsetof(PsWatch, methods));
  const char *prelude = prelude_of(command, arg, length);
  if (w->first_due) {
    w->first_due = FALSE;
    w->first_sent = prelude;
  }
  if (w->ahead) {
    if (prelude == w->ahead && skip_check && mysql->status == MYSQL_STATUS_READY &&
        !(mysql->server_status & SERVER_MORE_RESULTS_EXIST)) {
      /* The server ran this very statement right after the reset, in the same session
       * state: its reply is the next packet on the wire, and the library reads it as
       * the reply to this command. What mthd_my_send_cmd does before and after sending,
       * minus the sending. */
      w->ahead = NULL;
      mysql->net.last_errno = 0;
      mysql->net.last_error[0] = '\0';
      strcpy(mysql->net.sqlstate, "00000");
      mysql->info = NULL;
      mysql->affected_rows = ~(my_ulonglong)0;
      mysql->net.pkt_nr = 1;
      mysql->net.compress_pkt_nr = 1;
      return 0;
    }
    if (!settle(mysql, w))
      return 1; /* the library's error is set on mysql, as a failed send would */
  }
  w->dirty |= classify_command(command, arg, length);
  return w->orig->db_command(mysql, command, arg, length, skip_check, opt_arg);
}

static void
hook(PsWatch *w, MYSQL *m)
{
  w->orig = m->methods;
  w->methods = *m->methods;
  w->methods.db_command = watched_db_command;
  m->methods = &w->methods;
}

PsWatch *
ps_watch_new(MYSQL *m)
{
  if (!m->methods || !m->methods->db_command)
    return NULL;
  PsWatch *w = g_new0(PsWatch, 1);
  hook(w, m);
  return w;
}

void
ps_watch_free(PsWatch *w)
{
  g_free(w);
}

void
ps_watch_lent(MYSQL *m, PsWatch *w)
{
  if (!w)
    return;
  w->first_due = TRUE;
  w->first_sent = NULL;
  w->fresh_autocommit = (m->server_status & SERVER_STATUS_AUTOCOMMIT) != 0;
}

const char *
ps_watch_first_prelude(PsWatch *w)
{
  return w ? w->first_sent : NULL;
}

void
ps_watch_set_ahead(PsWatch *w, const char *prelude)
{
  if (w)
    w->ahead = prelude;
}

gboolean
ps_watch_ahead(const PsWatch *w)
{
  return w && w->ahead;
}

gboolean
ps_watch_settle(MYSQL *m, PsWatch *w)
{
  if (!w || !w->ahead)
    return TRUE;
  if (m->methods != &w->methods) {
    w->ahead = NULL; /* reconnected: that session, and its reply, are gone */
    return TRUE;
  }
  return settle(m, w);
}

guint
ps_watch_take(MYSQL *m, PsWatch *w)
{
  /* The library reconnected the handle (MYSQL_OPT_RECONNECT), which brings its default
   * table back: what the new session went through is unknown. */
  if (!w || m->methods != &w->methods)
    return PS_DIRTY_ALL;
  guint bits = w->dirty;
  w->dirty = 0;
  return bits;
}
