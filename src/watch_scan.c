/* watch_scan.c: the watch's reading of statement text (part of the watch module, watch.h):
 * pure functions of the text, no MYSQL, no PsWatch. Conservative: a false "dirty" costs one
 * more command at the next reset, a false "clean" would show one borrower another's state. */
#include "watch.h"

#include <string.h>

#include "session.h"

/* ---- preludes ---- */

static gboolean
eat_ws(const char **p, const char *end)
{
  const char *s = *p;
  while (*p < end && **p == ' ')
    (*p)++;
  return *p > s;
}

/* A keyword, case-insensitive, not followed by a word byte. */
static inline gboolean
eat_kw(const char **p, const char *end, const char *kw)
{
  size_t n = strlen(kw);
  if ((size_t)(end - *p) < n || !ps_session_word_is(*p, n, kw))
    return FALSE;
  const char *after = *p + n;
  if (after < end && (g_ascii_isalnum(*after) || *after == '_' || *after == '$'))
    return FALSE;
  *p = after;
  return TRUE;
}

/* A plain identifier (a character set or collation name) or a number. */
static gboolean
eat_word(const char **p, const char *end)
{
  const char *s = *p;
  while (*p < end && (g_ascii_isalnum(**p) || **p == '_'))
    (*p)++;
  return *p > s;
}

/* A literal: a word, a number, or a quoted string without quotes or backslashes inside. */
static gboolean
eat_literal(const char **p, const char *end)
{
  if (*p < end && (**p == '\'' || **p == '"')) {
    char q = **p;
    const char *s = *p + 1;
    while (s < end && *s != q && *s != '\\')
      s++;
    if (s >= end || *s != q)
      return FALSE;
    *p = s + 1;
    return TRUE;
  }
  return eat_word(p, end);
}

/* Session variables whose SET only changes the session (no function, no side effect), and
 * the PsVar bit that restores each (0: not restorable with `= DEFAULT`: the character set
 * variables come from the handshake, not from the global values). */
static const struct {
  const char *name;
  guint var;
} prelude_vars[] = {
  {"autocommit", PS_VAR_AUTOCOMMIT},
  {"sql_mode", PS_VAR_SQL_MODE},
  {"time_zone", PS_VAR_TIME_ZONE},
  {"character_set_client", 0},
  {"character_set_results", 0},
  {"character_set_connection", 0},
  {"collation_connection", 0},
  {"transaction_isolation", PS_VAR_TX_ISOLATION},
  {"tx_isolation", PS_VAR_TX_ISOLATION},
  {"transaction_read_only", PS_VAR_TX_READ_ONLY},
  {"tx_read_only", PS_VAR_TX_READ_ONLY},
  {"sql_auto_is_null", PS_VAR_SQL_AUTO_IS_NULL},
};

gboolean
ps_watch_is_prelude(const char *sql, size_t len)
{
  guint var;
  return ps_watch_prelude_var(sql, len, &var);
}

gboolean
ps_watch_prelude_var(const char *sql, size_t len, guint *var)
{
  *var = 0;
  if (!sql || len == 0 || len > PS_PRELUDE_LEN)
    return FALSE;
  if (len < 4 || ps_session_lower((unsigned char)sql[0]) != 's' ||
      ps_session_lower((unsigned char)sql[1]) != 'e' ||
      ps_session_lower((unsigned char)sql[2]) != 't')
    return FALSE; /* every statement of a connection is asked: most are not a SET */
  const char *p = sql, *end = sql + len;
  while (end > p && end[-1] == ' ')
    end--;
  if (!eat_kw(&p, end, "set") || !eat_ws(&p, end))
    return FALSE;
  if (eat_kw(&p, end, "names")) {
    /* SET NAMES cs [COLLATE coll]: what mysql_set_character_set sends. */
    if (!eat_ws(&p, end) || !eat_literal(&p, end))
      return FALSE;
    if (eat_ws(&p, end) && p < end &&
        (!eat_kw(&p, end, "collate") || !eat_ws(&p, end) || !eat_literal(&p, end)))
      return FALSE;
    return p == end;
  }
  gboolean session = eat_kw(&p, end, "session") && eat_ws(&p, end);
  if (session && eat_kw(&p, end, "transaction")) {
    /* SET SESSION TRANSACTION ISOLATION LEVEL x | READ ONLY | READ WRITE */
    static const char *const tails[][5] = {
      {"isolation", "level", "read", "committed"}, {"isolation", "level", "read", "uncommitted"},
      {"isolation", "level", "repeatable", "read"}, {"isolation", "level", "serializable"},
      {"read", "only"}, {"read", "write"}};
    if (!eat_ws(&p, end))
      return FALSE;
    for (guint i = 0; i < G_N_ELEMENTS(tails); i++) {
      const char *q = p;
      gboolean ok = TRUE;
      for (guint k = 0; tails[i][k] && ok; k++)
        ok = (k == 0 || eat_ws(&q, end)) && eat_kw(&q, end, tails[i][k]);
      if (ok && q == end) {
        *var = i < 4 ? PS_VAR_TX_ISOLATION : PS_VAR_TX_READ_ONLY;
        return TRUE;
      }
    }
    return FALSE;
  }
  /* SET [SESSION] var = literal, or SET @@[session.]var = literal */
  if (!session && end - p > 2 && p[0] == '@' && p[1] == '@') {
    p += 2;
    if (eat_kw(&p, end, "session")) {
      if (p >= end || *p != '.')
        return FALSE;
      p++;
    }
  }
  const char *name = p;
  if (!eat_word(&p, end))
    return FALSE;
  int known = -1;
  for (guint i = 0; i < G_N_ELEMENTS(prelude_vars) && known < 0; i++)
    if (ps_session_word_is(name, (size_t)(p - name), prelude_vars[i].name))
      known = (int)i;
  if (known < 0)
    return FALSE;
  *var = prelude_vars[known].var;
  eat_ws(&p, end);
  if (p >= end || *p != '=')
    return FALSE;
  p++;
  eat_ws(&p, end);
  return eat_literal(&p, end) && p == end;
}

/* A word is a maximal run of ASCII letters, digits, _ and $. Every other byte separates,
 * also bytes >= 0x80: in latin1 0xA0 is whitespace to the server, and where such a byte is
 * part of an identifier for the server, splitting there only makes a false "dirty".
 * Keywords are ASCII in every client character set, so a keyword the server sees is always
 * such a run. */
#define ident_byte ps_session_word_byte

#define word_is ps_session_word_is

guint
ps_watch_classify_sql(const char *sql, size_t len)
{
  guint bits = 0;
  gboolean drop = FALSE, database = FALSE;
  const unsigned char *p = (const unsigned char *)sql, *end = p + len;
  while (p < end) {
    if (!ident_byte(*p)) {
      p++;
      continue;
    }
    const char *w = (const char *)p;
    while (++p < end && ident_byte(*p))
      ;
    size_t n = (size_t)(p - (const unsigned char *)w);
    /* By length first: most words are none of these (every statement is scanned). */
    switch (n) {
    case 3:
      if (word_is(w, n, "use"))
        bits |= PS_DIRTY_DB;
      break;
    /* Dynamic SQL and routines: the text that runs is not this text. (Routines cannot USE,
     * but the scan does not rely on that.) */
    case 4:
      if (word_is(w, n, "call"))
        bits |= PS_DIRTY_DB;
      else if (word_is(w, n, "drop"))
        drop = TRUE;
      break;
    case 7:
      if (word_is(w, n, "prepare") || word_is(w, n, "execute"))
        bits |= PS_DIRTY_DB;
      break;
    case 6:
    case 8:
      if (word_is(w, n, "database") || word_is(w, n, "schema"))
        database = TRUE;
      break;
    /* SHOW PROFILES keeps the statements' text through COM_RESET_CONNECTION. */
    case 9:
      if (word_is(w, n, "profiling"))
        bits |= PS_DIRTY_UNPOOLABLE;
      break;
    default:
      break;
    }
  }
  if (drop && database) /* dropping the current database leaves the session without one */
    bits |= PS_DIRTY_DB;
  return bits;
}

/* SET @name = literal (or :=): one user variable, nothing else. */
static gboolean
uservar_set(const char *sql, size_t len)
{
  const char *p = sql, *end = sql + len;
  eat_ws(&p, end);
  if (!eat_kw(&p, end, "set"))
    return FALSE;
  eat_ws(&p, end);
  if (p >= end || *p != '@')
    return FALSE;
  p++;
  if (!eat_word(&p, end))
    return FALSE;
  eat_ws(&p, end);
  if (p < end && *p == ':')
    p++;
  if (p >= end || *p != '=')
    return FALSE;
  p++;
  eat_ws(&p, end);
  if (p < end && *p == '-')
    p++;
  if (!eat_literal(&p, end))
    return FALSE;
  eat_ws(&p, end);
  return p == end;
}

/* A statement the scan calls FULL only for the user variables it reads or assigns (the
 * same scan with every single @ blanked out calls it CLEAN or TXN), or uservar_set. */
gboolean
ps_watch_uservar_only(const char *sql, size_t len)
{
  if (len > 65536 || !memchr(sql, '@', len))
    return FALSE;
  if (uservar_set(sql, len))
    return TRUE;
  char *copy = g_strndup(sql, len);
  gboolean blanked = FALSE;
  for (size_t i = 0; i < len; i++) {
    if (copy[i] != '@')
      continue;
    if (i + 1 < len && copy[i + 1] == '@') {
      i++;
    } else {
      copy[i] = ' ';
      blanked = TRUE;
    }
  }
  /* Only system variables (@@sql_mode: Django's and SQLAlchemy's first queries): no user
   * variable used. */
  gboolean clean = blanked && ps_session_classify_sql(copy, len) != PS_STMT_FULL;
  g_free(copy);
  return clean;
}

/* INSERT|REPLACE ... RETURNING, which the scan calls FULL only for the RETURNING word (its
 * LAST_INSERT_ID() comes without an OK packet): the transaction grain reads that value at
 * a take instead of pinning the session. (DELETE ... RETURNING stays FULL.) */
gboolean
ps_watch_returning_only(const char *sql, size_t len)
{
  if (len > 65536 || len < 9 || ((sql[0] | 0x20) != 'i' && (sql[0] | 0x20) != 'r'))
    return FALSE; /* INSERT or REPLACE, first (a comment or a space before it: FULL) */
  char *copy = NULL;
  for (size_t i = 0; i + 9 <= len; i++) {
    if ((sql[i] | 0x20) != 'r' || g_ascii_strncasecmp(sql + i, "returning", 9) != 0)
      continue;
    if ((i > 0 && (g_ascii_isalnum(sql[i - 1]) || sql[i - 1] == '_')) ||
        (i + 9 < len && (g_ascii_isalnum(sql[i + 9]) || sql[i + 9] == '_')))
      continue;
    if (!copy)
      copy = g_strndup(sql, len);
    memset(copy + i, ' ', 9);
  }
  gboolean clean = copy && ps_session_classify_sql(copy, len) != PS_STMT_FULL;
  g_free(copy);
  return clean;
}
