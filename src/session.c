/* session.c: the statement scan of the auto reset mode (session.h). It must never call a
 * statement CLEAN that can change session state the server does not flag: user variables,
 * named locks, LAST_INSERT_ID(expr), sequences, stored functions, temporary tables, HANDLER,
 * LOCK TABLES, XA, one-shot SET TRANSACTION, multi-statements, comments it cannot see into. */
#include "session.h"

#include <string.h>

static inline gboolean
ident_byte(unsigned char c)
{
  return ps_session_bytes[c] != 0; /* PS_BYTE_WORD or PS_BYTE_HIGH */
}

static gboolean
word_in(const char *w, size_t n, const char *const *list, gsize len)
{
  unsigned char c0 = ps_session_lower((unsigned char)w[0]);
  for (gsize i = 0; i < len; i++) {
    const char *k = list[i];
    if ((unsigned char)k[0] != c0)
      continue; /* most entries differ in their first byte: no strlen for them */
    size_t j = 1;
    while (j < n && k[j] && ps_session_lower((unsigned char)w[j]) == (unsigned char)k[j])
      j++;
    if (j == n && k[j] == '\0')
      return TRUE;
  }
  return FALSE;
}

#define WORD_IN(w, n, list) word_in((w), (n), (list), G_N_ELEMENTS(list))

#define word_is ps_session_word_is

/* Built-in functions that read or compute and change nothing in the session. A stored
 * function cannot take these names unqualified, and a qualified call (db.f()) is FULL. */
static const char *const pure_functions[] = {
  "count", "sum", "min", "max", "avg", "group_concat", "std", "stddev", "variance",
  "concat", "concat_ws", "coalesce", "ifnull", "nullif", "if", "isnull", "now",
  "current_timestamp", "curdate", "curtime", "current_date", "current_time", "sysdate",
  "utc_timestamp", "utc_date", "unix_timestamp", "from_unixtime", "date", "time", "timestamp",
  "date_format", "date_add", "date_sub", "adddate", "subdate", "datediff", "timestampdiff",
  "timestampadd", "extract", "year", "month", "day", "hour", "minute", "second", "week",
  "dayofweek", "dayofmonth", "dayofyear", "weekday", "last_day", "str_to_date", "length",
  "char_length", "character_length", "octet_length", "lower", "upper", "lcase", "ucase",
  "substring", "substr", "mid", "trim", "ltrim", "rtrim", "replace", "left", "right", "lpad",
  "rpad", "repeat", "reverse", "locate", "instr", "position", "field", "find_in_set", "abs",
  "round", "truncate", "floor", "ceil", "ceiling", "mod", "pow", "power", "sqrt", "exp", "ln",
  "log", "log2", "log10", "sign", "greatest", "least", "cast", "convert", "hex", "unhex",
  "md5", "sha1", "sha2", "crc32", "to_base64", "from_base64", "json_extract", "json_object",
  "json_array", "json_value", "json_unquote", "json_contains", "json_length", "connection_id",
  "version", "database", "schema", "user", "current_user", "session_user", "system_user",
  "found_rows", "row_count", "char", "ascii", "ord", "bin", "oct", "format", "rand", "uuid",
  "sleep", "binary", "decimal", "signed", "unsigned", "integer", "datetime", "row", "convert_tz",
};

/* Keywords after which a parenthesis opens a list or a subquery, not a call. */
static const char *const paren_keywords[] = {
  "in", "values", "value", "and", "or", "not", "xor", "exists", "any", "all", "some", "select",
  "from", "join", "on", "where", "as", "by", "having", "using", "over", "when", "then", "else",
  "case", "with", "union", "is", "like", "between", "set", "distinct", "limit", "div",
  "interval", "except", "intersect", "straight_join", "regexp", "rlike", "escape",
};

/* The first words of statements that are CLEAN unless something below says otherwise:
 * select, insert, update, delete, replace, show, describe, desc, explain, with, values, do. */
static gboolean
clean_first(const char *w, size_t n)
{
  switch (n) {
  case 2:
    return word_is(w, n, "do");
  case 4:
    return word_is(w, n, "show") || word_is(w, n, "desc") || word_is(w, n, "with");
  case 6:
    return word_is(w, n, "select") || word_is(w, n, "insert") || word_is(w, n, "update") ||
           word_is(w, n, "delete") || word_is(w, n, "values");
  case 7:
    return word_is(w, n, "replace") || word_is(w, n, "explain");
  case 8:
    return word_is(w, n, "describe");
  default:
    return FALSE;
  }
}

typedef enum { TOK_NONE, TOK_WORD, TOK_QUOTED, TOK_DOT, TOK_PUNCT } TokKind;

PsStmtKind
ps_session_classify_sql(const char *sql, size_t len)
{
  if (!sql)
    return PS_STMT_FULL;
  const char *first = NULL, *second = NULL;
  size_t nfirst = 0, nsecond = 0;
  guint nwords = 0;
  TokKind last = TOK_NONE;
  gboolean last_after_dot = FALSE;  /* the last word followed a dot: a qualified name */
  const char *lastw = NULL, *prevw = NULL, *pprevw = NULL; /* the last three words */
  size_t nlastw = 0, nprevw = 0, npprevw = 0;
  gboolean into = FALSE, atomic = FALSE, release = FALSE, banned = FALSE;
  gboolean quoted_table = FALSE; /* the last quoted token is `t` or `db`.`t` right after INTO */
  size_t i = 0;
  while (i < len) {
    unsigned char c = (unsigned char)sql[i];
    if (c <= ' ') {
      i++;
      continue;
    }
    /* Words first: most bytes of a statement are in one (the branches below are disjoint). */
    if (ident_byte(c)) {
      size_t j = i;
      while (j < len && ident_byte((unsigned char)sql[j]))
        j++;
      const char *w = sql + i;
      size_t n = j - i;
      quoted_table = FALSE;
      if (nwords == 0) {
        first = w;
        nfirst = n;
      } else if (nwords == 1) {
        second = w;
        nsecond = n;
      }
      nwords++;
      last_after_dot = last == TOK_DOT;
      pprevw = prevw;
      npprevw = nprevw;
      prevw = lastw;
      nprevw = nlastw;
      lastw = w;
      nlastw = n;
      /* temporary tables, NEXT VALUE FOR a sequence, FOUND_ROWS() kept for later, profiling
       * history: state no tracker reports; RETURNING: a result set instead of the OK packet
       * whose insert id shows what LAST_INSERT_ID() became. By length first: most words are
       * none of these. */
      switch (n) {
      case 4:
        if (word_is(w, n, "into"))
          into = TRUE;
        else if (word_is(w, n, "next"))
          banned = TRUE;
        break;
      case 6:
        if (word_is(w, n, "atomic"))
          atomic = TRUE;
        break;
      case 7:
        if (word_is(w, n, "release") && nwords > 1)
          release = TRUE;
        break;
      case 9:
        if (word_is(w, n, "temporary") || word_is(w, n, "profiling") ||
            word_is(w, n, "returning"))
          banned = TRUE;
        break;
      case 19:
        if (word_is(w, n, "sql_calc_found_rows"))
          banned = TRUE;
        break;
      default:
        break;
      }
      last = TOK_WORD;
      i = j;
      continue;
    }
    if (c == '\'' || c == '"' || c == '`') {
      /* Skipped whole only when nothing in it could end it elsewhere for the server: no
       * backslash (NO_BACKSLASH_ESCAPES decides what it means). A doubled quote closes and
       * reopens, as for the server. */
      size_t j = i + 1;
      while (j < len && (unsigned char)sql[j] != c) {
        if (sql[j] == '\\')
          return PS_STMT_FULL;
        j++;
      }
      if (j >= len)
        return PS_STMT_FULL;
      i = j + 1;
      quoted_table = c == '`' && ((last == TOK_WORD && lastw && word_is(lastw, nlastw, "into")) ||
                                  (last == TOK_DOT && quoted_table));
      last = TOK_QUOTED;
      continue;
    }
    /* Comments hide what is between their markers from this scan, and an executable comment
     * runs it: in doubt. */
    if (c == '#' || (c == '/' && i + 1 < len && sql[i + 1] == '*') ||
        (c == '-' && i + 1 < len && sql[i + 1] == '-'))
      return PS_STMT_FULL;
    if (c == '@') {
      if (i + 1 < len && sql[i + 1] == '@') { /* reading a system variable */
        i += 2;
        last = TOK_PUNCT;
        continue;
      }
      return PS_STMT_FULL; /* a user variable, read or assigned */
    }
    if (c == ';') {
      for (size_t j = i + 1; j < len; j++)
        if ((unsigned char)sql[j] > ' ')
          return PS_STMT_FULL; /* multi-statement */
      break;
    }
    if (c == '(') {
      if (last == TOK_QUOTED && !quoted_table)
        return PS_STMT_FULL; /* `f`(...) or "f"(...): a call, but not INTO `t` (columns) */
      if (last == TOK_WORD) {
        if (last_after_dot && !(pprevw && word_is(pprevw, npprevw, "into")))
          return PS_STMT_FULL; /* db.f(...), but INTO db.t (columns) */
        if (word_is(lastw, nlastw, "last_insert_id")) {
          size_t j = i + 1;
          while (j < len && (unsigned char)sql[j] <= ' ')
            j++;
          if (j >= len || sql[j] != ')')
            return PS_STMT_FULL; /* LAST_INSERT_ID(expr) sets it */
        } else if (!WORD_IN(lastw, nlastw, pure_functions) &&
                   !WORD_IN(lastw, nlastw, paren_keywords) &&
                   !(prevw && word_is(prevw, nprevw, "into")) &&
                   !(last_after_dot && pprevw && word_is(pprevw, npprevw, "into"))) {
          return PS_STMT_FULL; /* any other call may be a stored function */
        }
      }
      last = TOK_PUNCT;
      i++;
      continue;
    }
    last = c == '.' ? TOK_DOT : TOK_PUNCT;
    i++;
  }
  if (!first || banned)
    return PS_STMT_FULL;
  if (clean_first(first, nfirst)) {
    gboolean inserts = word_is(first, nfirst, "insert") || word_is(first, nfirst, "replace");
    if (into && !inserts)
      return PS_STMT_FULL; /* SELECT ... INTO @v / OUTFILE */
    return PS_STMT_CLEAN;
  }
  if (atomic)
    return PS_STMT_FULL; /* BEGIN NOT ATOMIC: a compound statement */
  if (word_is(first, nfirst, "begin"))
    return nwords == 1 || (nwords == 2 && word_is(second, nsecond, "work")) ? PS_STMT_TXN
                                                                           : PS_STMT_FULL;
  if (word_is(first, nfirst, "start"))
    return second && word_is(second, nsecond, "transaction") ? PS_STMT_TXN : PS_STMT_FULL;
  if (word_is(first, nfirst, "commit") || word_is(first, nfirst, "rollback"))
    return release ? PS_STMT_FULL : PS_STMT_TXN; /* ... RELEASE ends the session */
  if (word_is(first, nfirst, "savepoint"))
    return PS_STMT_TXN;
  if (word_is(first, nfirst, "release"))
    return second && word_is(second, nsecond, "savepoint") ? PS_STMT_TXN : PS_STMT_FULL;
  return PS_STMT_FULL;
}
