/* config.c: one table of POOLSHIM_* variables (name, default, range, help), parsed once from
 * the environment and the optional key file (read by keyfile.c). Bad values never abort the
 * host: one warning line naming the variable (and the file and line), then the default. */
#include "config.h"

#include <string.h>
#include <sys/auxv.h>

#include "keyfile.h"

extern char **environ;

typedef enum { PS_T_BOOL, PS_T_UINT, PS_T_DURATION, PS_T_ENUM, PS_T_STRING } PsVarType;

/* Where a variable may be set besides the environment. */
typedef enum {
  PS_WHERE_FILE = 1,     /* the [default] group of the key file */
  PS_WHERE_POOL = 2,     /* a [pool PATTERN] group */
} PsWhere;

typedef struct {
  const char *name;
  PsVarType type;
  const char *def;   /* default, as text: parsed through the same code as user input */
  guint64 min, max;  /* uint: count; duration: microseconds */
  const char *const *choices; /* enum: NULL-terminated, index = value */
  gsize offset;      /* into PsConfig */
  guint where;       /* PsWhere bits */
  const char *help;
} PsVar;

/* Index = PsResetMode; "reset", the old name of "always", is read as it. */
static const char *const reset_choices[] = {"always", "change_user", "rollback", "none",
                                            "auto",   "reset",       NULL};
#define PS_RESET_OLD_NAME 5
/* Index = PsGrain. */
static const char *const grain_choices[] = {"connect", "transaction", NULL};
static const char *const python_lock_choices[] = {"keep", "release", NULL};
static const char *const log_choices[] = {"error", "warn", "info", "debug", NULL};

#define US(s) ((guint64)(s) * G_USEC_PER_SEC)
#define FILE_ONLY PS_WHERE_FILE
#define FILE_POOL (PS_WHERE_FILE | PS_WHERE_POOL)
#define ENV_ONLY 0

static const PsVar vars[] = {
  {"POOLSHIM_DISABLE", PS_T_BOOL, "0", 0, 1, NULL, G_STRUCT_OFFSET(PsConfig, disable), FILE_ONLY,
   "1 turns pooling off: every call goes straight to the client library."},
  {"POOLSHIM_POOL_SIZE", PS_T_UINT, "10", 1, 100000, NULL, G_STRUCT_OFFSET(PsConfig, pool_size), FILE_POOL,
   "Physical connections per pool (one pool per user, password, server, database and option set)."},
  {"POOLSHIM_MIN_IDLE", PS_T_UINT, "0", 0, 100000, NULL, G_STRUCT_OFFSET(PsConfig, min_idle),
   FILE_POOL,
   "Idle connections each pool keeps open ahead of demand (at most its size), opened in the "
   "background after the pool's first connect; expired ones are replaced in the background "
   "too, and the idle timeout does not trim a pool below this."},
  {"POOLSHIM_MAX_CONNECTIONS", PS_T_UINT, "0", 0, 1000000, NULL,
   G_STRUCT_OFFSET(PsConfig, max_connections), FILE_ONLY,
   "Physical connections for the whole process, all pools together; 0 means unlimited. When "
   "full, an idle connection of another pool is closed to make room."},
  {"POOLSHIM_TIMEOUT", PS_T_DURATION, "30s", 0, US(86400), NULL,
   G_STRUCT_OFFSET(PsConfig, timeout_us), FILE_POOL,
   "How long a connect waits for a free connection when the pool is full (waiters are served "
   "in arrival order); then it fails with error 1040 (SQLSTATE 08004) naming the pool, its "
   "size and the wait."},
  {"POOLSHIM_MAX_LIFETIME", PS_T_DURATION, "30m", 0, US(30 * 86400), NULL,
   G_STRUCT_OFFSET(PsConfig, max_lifetime_us), FILE_POOL,
   "A physical connection is closed at its first return after this age (minus up to 2.5% "
   "jitter); 0 means no limit."},
  {"POOLSHIM_IDLE_TIMEOUT", PS_T_DURATION, "10m", 0, US(30 * 86400), NULL,
   G_STRUCT_OFFSET(PsConfig, idle_timeout_us), FILE_POOL,
   "An idle connection unused for this long is closed; 0 means never."},
  {"POOLSHIM_RESET", PS_T_ENUM, "auto", 0, 0, reset_choices, G_STRUCT_OFFSET(PsConfig, reset), FILE_POOL,
   "How a returned session is cleaned: auto (undoes what the borrower changed: nothing when "
   "it changed nothing, ROLLBACK alone for an open transaction, its leading session setup "
   "kept for the next borrower, else a full reset; see the contract in the README), always "
   "(a full reset at every return: COM_RESET_CONNECTION, sent without waiting, its reply read "
   "before the next lend; \"reset\" is accepted for it), change_user (full "
   "re-authentication), rollback (keeps session variables) or none (trusts the application)."},
  {"POOLSHIM_GRAIN", PS_T_ENUM, "connect", 0, 0, grain_choices, G_STRUCT_OFFSET(PsConfig, grain),
   FILE_ONLY,
   "How long a handle holds its physical connection: connect (from mysql_real_connect to "
   "mysql_close) or transaction (issue 13: between transactions, a handle's connection may "
   "be taken by a connect or another handle's command that finds none free, and its next "
   "command borrows one again and restores its session; only with POOLSHIM_RESET=auto, else "
   "one warning and connect; see \"Transaction grain\" in the README)."},
  {"POOLSHIM_PYTHON_LOCK", PS_T_ENUM, "keep", 0, 0, python_lock_choices,
   G_STRUCT_OFFSET(PsConfig, python_lock), FILE_ONLY,
   "What a call of Python's MySQLdb does with the interpreter's lock, which the driver lets "
   "go around every call into the client library: keep (the lock is let go only where the "
   "call may wait: a round trip to the server, a new connection, a wait for a free one; a "
   "pooled connect, a close or a setup statement answered ahead keeps it, and no other "
   "thread has to hand it back) or release (around every call, as the driver asks). Other "
   "programs are not affected."},
  {"POOLSHIM_RESET_TIMEOUT", PS_T_DURATION, "5s", 1000 * 1000, US(3600), NULL,
   G_STRUCT_OFFSET(PsConfig, reset_timeout_us), FILE_ONLY,
   "Bound on each server round trip of a reset: mysql_close never hangs on a stalled server; "
   "a reset that times out closes the connection. Also bounds each read and write of a "
   "transaction-grain take's query and restore."},
  {"POOLSHIM_REVALIDATE", PS_T_DURATION, "60s", 0, US(86400), NULL,
   G_STRUCT_OFFSET(PsConfig, revalidate_us), FILE_ONLY,
   "The longest a pool lends connections on credentials the server has not accepted again: "
   "the first connect after this interval re-authenticates (COM_CHANGE_USER) the connection "
   "it gets; if the server refuses (password changed, account locked or dropped), that "
   "connect fails with the server's own error and the pool's idle connections are closed; "
   "0 turns it off."},
  {"POOLSHIM_LEAK_WARN", PS_T_DURATION, "0", 0, US(30 * 86400), NULL,
   G_STRUCT_OFFSET(PsConfig, leak_warn_us), FILE_ONLY,
   "Warn once per borrow about a connection the application has held longer than this, "
   "naming the pool, the time held and a backtrace of where it was borrowed (like HikariCP's "
   "leak detection); 0 turns it off."},
  {"POOLSHIM_LOG", PS_T_ENUM, "warn", 0, 0, log_choices, G_STRUCT_OFFSET(PsConfig, log_level), FILE_ONLY,
   "Messages at or above this level, prefixed poolshim: (no level ever prints a password): "
   "error, warn, info (also one line per new pool, per pool's first wait and per connect "
   "that took a second or more or found idle connections dead) or debug (also one line per "
   "closed connection with its reason)."},
  {"POOLSHIM_LOG_FILE", PS_T_STRING, "", 0, 0, NULL, G_STRUCT_OFFSET(PsConfig, log_file),
   FILE_ONLY,
   "Append messages to this file instead of stderr (some daemons close stderr); empty means "
   "stderr."},
  {"POOLSHIM_STATS_FILE", PS_T_STRING, "", 0, 0, NULL, G_STRUCT_OFFSET(PsConfig, stats_file),
   FILE_ONLY,
   "Write the counters in the Prometheus text format to this file (%p = pid, %n = program "
   "name, %% = %), atomically, every POOLSHIM_STATS_INTERVAL and at exit; empty means none."},
  {"POOLSHIM_STATS_INTERVAL", PS_T_DURATION, "10s", 1000 * 1000, US(3600), NULL,
   G_STRUCT_OFFSET(PsConfig, stats_interval_us), FILE_ONLY,
   "How often POOLSHIM_STATS_FILE is rewritten."},
  {"POOLSHIM_HOST_MAX", PS_T_UINT, "0", 0, 100000, NULL, G_STRUCT_OFFSET(PsConfig, host_max),
   FILE_ONLY,
   "Physical connections all poolshim processes on this host may hold to one server "
   "together (flock slots, freed by the kernel when a process dies); 0 means no cap."},
  {"POOLSHIM_HOST_DIR", PS_T_STRING, "", 0, 0, NULL, G_STRUCT_OFFSET(PsConfig, host_dir),
   FILE_ONLY,
   "Directory of the POOLSHIM_HOST_MAX slot files; empty means /run/poolshim when writable, "
   "else $XDG_RUNTIME_DIR/poolshim, else $TMPDIR/poolshim-UID (/tmp without TMPDIR)."},
  {"POOLSHIM_CONFIG", PS_T_STRING, "", 0, 0, NULL, G_STRUCT_OFFSET(PsConfig, config_file),
   ENV_ONLY,
   "A key file with a [default] group and [pool user@host:port/db] groups (glob patterns); "
   "the environment wins over it."},
};

gboolean
ps_config_parse_uint(const char *text, guint64 *out)
{
  /* By hand: g_ascii_string_to_unsigned reads errno, which GLib's lazy locale setup can
   * leave at EAGAIN when many threads make their first connect at once. */
  if (!text || !g_ascii_isdigit(text[0]))
    return FALSE;
  guint64 v = 0;
  for (const char *p = text; *p; p++) {
    if (!g_ascii_isdigit(*p))
      return FALSE;
    guint digit = (guint)(*p - '0');
    if (v > (G_MAXUINT64 - digit) / 10)
      return FALSE;
    v = v * 10 + digit;
  }
  *out = v;
  return TRUE;
}

gboolean
ps_config_parse_duration(const char *text, gint64 *out_us)
{
  if (!text || !g_ascii_isdigit(text[0]))
    return FALSE;
  const char *p = text;
  while (g_ascii_isdigit(*p))
    p++;
  g_autofree char *digits = g_strndup(text, (gsize)(p - text));
  guint64 n;
  if (!ps_config_parse_uint(digits, &n))
    return FALSE;
  guint64 unit;
  if (*p == '\0' || g_str_equal(p, "s"))
    unit = G_USEC_PER_SEC;
  else if (g_str_equal(p, "ms"))
    unit = 1000;
  else if (g_str_equal(p, "m"))
    unit = 60 * (guint64)G_USEC_PER_SEC;
  else if (g_str_equal(p, "h"))
    unit = 3600 * (guint64)G_USEC_PER_SEC;
  else
    return FALSE;
  if (n > (guint64)G_MAXINT64 / unit)
    return FALSE;
  *out_us = (gint64)(n * unit);
  return TRUE;
}

static gboolean
parse_value(const PsVar *v, const char *text, guint64 *out)
{
  gint64 d;
  switch (v->type) {
  case PS_T_BOOL:
    if (g_str_equal(text, "1") || g_str_equal(text, "true") || g_str_equal(text, "yes") ||
        g_str_equal(text, "on")) {
      *out = 1;
      return TRUE;
    }
    if (g_str_equal(text, "0") || g_str_equal(text, "false") || g_str_equal(text, "no") ||
        g_str_equal(text, "off")) {
      *out = 0;
      return TRUE;
    }
    return FALSE;
  case PS_T_UINT:
    return ps_config_parse_uint(text, out) && *out >= v->min && *out <= v->max;
  case PS_T_DURATION:
    if (!ps_config_parse_duration(text, &d) || (guint64)d < v->min || (guint64)d > v->max)
      return FALSE;
    *out = (guint64)d;
    return TRUE;
  case PS_T_ENUM:
    for (guint i = 0; v->choices[i]; i++)
      if (g_ascii_strcasecmp(text, v->choices[i]) == 0) {
        *out = v->choices == reset_choices && i == PS_RESET_OLD_NAME ? PS_RESET_ALWAYS : i;
        return TRUE;
      }
    return FALSE;
  case PS_T_STRING:
    *out = 0;
    if (v->offset == G_STRUCT_OFFSET(PsConfig, stats_file)) {
      /* Only the escapes ps_stats_expand_path knows: a typo must not become a file name. */
      for (const char *c = strchr(text, '%'); c; c = strchr(c + 2, '%'))
        if (c[1] != 'p' && c[1] != 'n' && c[1] != '%')
          return FALSE;
    }
    return !strchr(text, '\n');
  }
  return FALSE;
}

static void
describe_accepted(const PsVar *v, char *buf, gsize len)
{
  switch (v->type) {
  case PS_T_BOOL:
    g_strlcpy(buf, "0 or 1", len);
    break;
  case PS_T_UINT:
    g_snprintf(buf, len, "a whole number from %" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT,
               v->min, v->max);
    break;
  case PS_T_DURATION:
    g_snprintf(buf, len,
               "a duration such as 250ms, 30s, 10m or 1h (bare number = seconds), at most %" G_GUINT64_FORMAT "s",
               v->max / G_USEC_PER_SEC);
    break;
  case PS_T_ENUM: {
    g_autofree char *joined = g_strjoinv(", ", (char **)v->choices);
    g_snprintf(buf, len, "one of %s", joined);
    break;
  }
  case PS_T_STRING:
    g_strlcpy(buf,
              v->offset == G_STRUCT_OFFSET(PsConfig, stats_file)
                ? "a path; % only in %p, %n or %%"
                : "a path",
              len);
    break;
  }
}

static void
store(PsConfig *cfg, const PsVar *v, guint64 value, const char *text)
{
  char *field = (char *)cfg + v->offset;
  switch (v->type) {
  case PS_T_STRING:
    g_free(*(char **)field);
    *(char **)field = text && *text ? g_strdup(text) : NULL;
    break;
  case PS_T_BOOL:
    *(gboolean *)field = value != 0;
    break;
  case PS_T_UINT:
    *(guint *)field = (guint)value;
    break;
  case PS_T_DURATION:
    *(gint64 *)field = (gint64)value;
    break;
  case PS_T_ENUM:
    *(int *)field = (int)value; /* PsResetMode and PsLogLevel are plain enums */
    break;
  }
}

static guint
edit_distance(const char *a, const char *b)
{
  /* Levenshtein with one row: GLib has no string distance. */
  gsize lb = strlen(b);
  g_autofree guint *row = g_new(guint, lb + 1);
  for (gsize j = 0; j <= lb; j++)
    row[j] = (guint)j;
  for (gsize i = 1; a[i - 1]; i++) {
    guint diag = row[0];
    row[0] = (guint)i;
    for (gsize j = 1; j <= lb; j++) {
      guint up = row[j];
      guint cost = g_ascii_toupper(a[i - 1]) == g_ascii_toupper(b[j - 1]) ? 0 : 1;
      row[j] = MIN(MIN(row[j] + 1, row[j - 1] + 1), diag + cost);
      diag = up;
    }
  }
  return row[lb];
}

const char *
ps_config_closest_name(const char *name)
{
  const char *best = NULL;
  guint best_d = G_MAXUINT;
  for (gsize i = 0; i < G_N_ELEMENTS(vars); i++) {
    guint d = edit_distance(name, vars[i].name);
    if (d < best_d) {
      best_d = d;
      best = vars[i].name;
    }
  }
  return best_d <= 6 ? best : NULL;
}

/* The key file's name for a variable: POOLSHIM_POOL_SIZE -> pool_size. */
static char *
file_key_of(const PsVar *v)
{
  return g_ascii_strdown(v->name + strlen("POOLSHIM_"), -1);
}

/* Whether `key` is the key file's name of `v` (file_key_of), without allocating: called
 * for every key of the file. */
static gboolean
is_file_key_of(const PsVar *v, const char *key)
{
  const char *n = v->name + strlen("POOLSHIM_");
  for (; *n && *key; n++, key++)
    if (*key != g_ascii_tolower(*n))
      return FALSE;
  return !*n && !*key;
}

static const PsVar *
var_by_file_key(const char *key)
{
  for (gsize i = 0; i < G_N_ELEMENTS(vars); i++)
    if (vars[i].where && is_file_key_of(&vars[i], key))
      return &vars[i];
  return NULL;
}

/* The value of `v` in `group`, trimmed, or NULL. */
static char *
key_file_value(const PsKeyFile *f, const char *group, const PsVar *v)
{
  g_autofree char *key = file_key_of(v);
  return ps_key_file_value(f, group, key);
}

static void
warn_bad_value(const PsVar *v, const char *text, PsKeyFile *f, const char *group,
               const char *fallback)
{
  char accepted[200];
  describe_accepted(v, accepted, sizeof accepted);
  /* ps_log escapes the line: a value with a newline cannot forge a second one. */
  const char *shown = text;
  if (f) {
    g_autofree char *key = file_key_of(v);
    ps_key_file_warn(f, group, key, "[%s] %s = \"%.60s\" is not valid (expected %s); using %s",
                     group, key, shown, accepted, fallback);
  } else {
    ps_warn("%s=\"%.60s\" is not valid (expected %s); using %s", v->name, shown, accepted,
            fallback);
  }
}

/* One [pool PATTERN] group: the values it sets, as a PsConfig with a mask of the table
 * indices it set. */
typedef struct {
  char *pattern;
  GPatternSpec *spec;
  guint64 set_mask;
  PsConfig values;
} PsPoolRule;

static void
pool_rule_free(gpointer data)
{
  PsPoolRule *r = data;
  g_free(r->pattern);
  g_pattern_spec_free(r->spec);
  g_free(r);
}

static gboolean
is_log_var(const PsVar *v)
{
  return v->offset == G_STRUCT_OFFSET(PsConfig, log_level);
}

/* The environment's value of name without surrounding white space (a copy), or NULL. */
static char *
env_trimmed(PsEnvLookup lookup, gpointer user_data, const char *name)
{
  const char *env = lookup(name, user_data);
  return env ? g_strstrip(g_strdup(env)) : NULL;
}

static void
parse_pool_group(PsConfig *out, PsKeyFile *f, const char *group, PsEnvLookup lookup,
                 gpointer user_data)
{
  /* "[pool]" alone has no pattern: never read past its end. */
  const char *pattern = group + (group[4] ? 5 : 4);
  while (*pattern == ' ')
    pattern++;
  if (!*pattern) {
    ps_key_file_warn(f, group, NULL,
                     "[%s] names no pool (expected [pool user@host:port/db], globs allowed); group "
                     "ignored",
                     group);
    return;
  }
  PsPoolRule *rule = g_new0(PsPoolRule, 1);
  rule->pattern = g_strdup(pattern);
  rule->spec = g_pattern_spec_new(pattern);
  g_auto(GStrv) keys = g_key_file_get_keys(f->kf, group, NULL, NULL);
  for (guint k = 0; keys && keys[k]; k++) {
    const PsVar *v = var_by_file_key(keys[k]);
    gsize index = v ? (gsize)(v - vars) : 0;
    if (!v || !(v->where & PS_WHERE_POOL)) {
      ps_key_file_warn(f, group, keys[k],
                       "[%s] %s cannot be set per pool (accepted: pool_size, min_idle, timeout, "
                       "max_lifetime, idle_timeout, reset); ignored",
                       group, keys[k]);
      continue;
    }
    g_autofree char *text = key_file_value(f, group, v);
    guint64 value;
    if (!text || !parse_value(v, text, &value)) {
      warn_bad_value(v, text ? text : "", f, group, "the process-wide value");
      continue;
    }
    /* Only a value the environment sets validly hides the group's: a bad one falls back
     * to the file (its own warning says so). */
    g_autofree char *env_text = env_trimmed(lookup, user_data, v->name);
    guint64 env_value;
    if (env_text && parse_value(v, env_text, &env_value)) {
      ps_key_file_warn(f, group, keys[k], "[%s] %s is overridden by %s from the environment",
                       group, keys[k], v->name);
      continue;
    }
    store(&rule->values, v, value, text);
    rule->set_mask |= G_GUINT64_CONSTANT(1) << index;
  }
  if (!out->pool_rules)
    out->pool_rules = g_ptr_array_new_with_free_func(pool_rule_free);
  g_ptr_array_add(out->pool_rules, rule);
}

static void
check_file_groups(PsConfig *out, PsKeyFile *f, PsEnvLookup lookup, gpointer user_data)
{
  g_auto(GStrv) groups = g_key_file_get_groups(f->kf, NULL);
  for (guint g = 0; groups && groups[g]; g++) {
    if (g_str_has_prefix(groups[g], "pool ") || g_str_equal(groups[g], "pool")) {
      parse_pool_group(out, f, groups[g], lookup, user_data);
      continue;
    }
    if (!g_str_equal(groups[g], "default")) {
      ps_key_file_warn(f, groups[g], NULL,
                       "unknown group [%s] ignored (expected [default] or [pool PATTERN])",
                       groups[g]);
      continue;
    }
    g_auto(GStrv) keys = g_key_file_get_keys(f->kf, groups[g], NULL, NULL);
    for (guint k = 0; keys && keys[k]; k++) {
      if (var_by_file_key(keys[k]))
        continue;
      if (g_str_equal(keys[k], "config")) {
        ps_key_file_warn(f, "default", keys[k],
                         "[default] config can only be set in the environment (POOLSHIM_CONFIG); "
                         "ignored");
        continue;
      }
      if (f->warnings >= PS_KEY_FILE_WARNINGS) {
        f->warnings++; /* counted, not shown: no name suggestion to compute */
        continue;
      }
      g_autofree char *upper = g_ascii_strup(keys[k], -1);
      g_autofree char *as_var = g_strconcat("POOLSHIM_", upper, NULL);
      const char *closest = ps_config_closest_name(as_var);
      g_autofree char *suggest =
        closest ? g_ascii_strdown(closest + strlen("POOLSHIM_"), -1) : NULL;
      ps_key_file_warn(f, "default", keys[k], "[default] unknown key %s ignored%s%s%s", keys[k],
                       suggest ? "; did you mean " : "", suggest ? suggest : "",
                       suggest ? "?" : "");
    }
  }
}

void
ps_config_parse(PsConfig *out, PsEnvLookup lookup, gpointer user_data,
                const char *const *present_names)
{
  memset(out, 0, sizeof *out);
  PsKeyFile file = {0};
  g_autofree char *config_trimmed = env_trimmed(lookup, user_data, "POOLSHIM_CONFIG");
  /* The level first, so that the other warnings (also the file's) obey it: the
   * environment's alone while the file is read, then the file's under it. */
  ps_log_set_level(PS_LOG_WARN);
  for (gsize i = 0; i < G_N_ELEMENTS(vars); i++) {
    guint64 level;
    g_autofree char *trimmed = env_trimmed(lookup, user_data, vars[i].name);
    if (is_log_var(&vars[i]) && trimmed && parse_value(&vars[i], trimmed, &level))
      ps_log_set_level((PsLogLevel)level);
  }
  if (config_trimmed && *config_trimmed)
    ps_key_file_load(&file, config_trimmed);
  for (gsize pass = 0; pass < 2; pass++) {
    for (gsize i = 0; i < G_N_ELEMENTS(vars); i++) {
      const PsVar *v = &vars[i];
      if ((pass == 0) != is_log_var(v))
        continue;
      /* Defaults parse through the same code (a unit test checks every one); never abort
       * the host over them. Then the file's [default], then the environment. */
      guint64 value = 0;
      const char *text = v->def;
      (void)parse_value(v, v->def, &value);
      g_autofree char *from_file = (v->where & PS_WHERE_FILE)
                                     ? key_file_value(&file, "default", v)
                                     : NULL;
      guint64 parsed;
      if (from_file && parse_value(v, from_file, &parsed)) {
        value = parsed;
        text = from_file;
      } else if (from_file) {
        g_autofree char *fallback = g_strdup_printf("the default %s", v->def);
        warn_bad_value(v, from_file, &file, "default", *v->def ? fallback : "none");
      }
      const char *env = lookup(v->name, user_data);
      g_autofree char *trimmed = env ? g_strstrip(g_strdup(env)) : NULL;
      if (trimmed && parse_value(v, trimmed, &parsed)) {
        value = parsed;
        text = trimmed;
      } else if (trimmed) {
        g_autofree char *fallback =
          g_strdup_printf(text == v->def ? "the default %s" : "%s from the file", text);
        warn_bad_value(v, env, NULL, NULL, *text ? fallback : "none");
      }
      store(out, v, value, text);
      if (is_log_var(v))
        ps_log_set_level(out->log_level);
    }
  }
  if (file.kf)
    check_file_groups(out, &file, lookup, user_data);
  /* The transaction grain moves sessions between handles: only the auto reset knows what a
   * session holds (session tracking and the statement watch). */
  if (out->grain == PS_GRAIN_TRANSACTION && out->reset != PS_RESET_AUTO) {
    ps_warn("POOLSHIM_GRAIN=transaction needs POOLSHIM_RESET=auto (POOLSHIM_RESET is %s); "
            "using POOLSHIM_GRAIN=connect", reset_choices[out->reset]);
    out->grain = PS_GRAIN_CONNECT;
  }
  if (file.warnings > PS_KEY_FILE_WARNINGS)
    ps_warn("%s: %u more problems not shown", file.path,
            file.warnings - PS_KEY_FILE_WARNINGS);
  if (!file.kf)
    g_clear_pointer(&out->config_file, g_free);
  ps_key_file_clear(&file);
  for (gsize i = 0; present_names && present_names[i]; i++) {
    const char *name = present_names[i];
    gboolean known = FALSE;
    for (gsize j = 0; j < G_N_ELEMENTS(vars) && !known; j++)
      known = g_str_equal(name, vars[j].name);
    /* Names the launcher and later features reserve are not typos. */
    if (known || g_str_has_prefix(name, "POOLSHIM_TEST_"))
      continue;
    const char *closest = ps_config_closest_name(name);
    if (closest)
      ps_warn("unknown variable %s ignored; did you mean %s?", name, closest);
    else
      ps_warn("unknown variable %s ignored", name);
  }
}

void
ps_config_clear(PsConfig *cfg)
{
  for (gsize i = 0; i < G_N_ELEMENTS(vars); i++)
    if (vars[i].type == PS_T_STRING)
      g_clear_pointer((char **)((char *)cfg + vars[i].offset), g_free);
  g_clear_pointer(&cfg->pool_rules, g_ptr_array_unref);
}

static gboolean
field_equal(const PsVar *v, const PsConfig *a, const PsConfig *b)
{
  const char *fa = (const char *)a + v->offset, *fb = (const char *)b + v->offset;
  switch (v->type) {
  case PS_T_STRING:
    return g_strcmp0(*(char *const *)fa, *(char *const *)fb) == 0;
  case PS_T_DURATION:
    return memcmp(fa, fb, sizeof(gint64)) == 0;
  default:
    return memcmp(fa, fb, sizeof(int)) == 0;
  }
}

gboolean
ps_config_equal(const PsConfig *a, const PsConfig *b)
{
  for (gsize i = 0; i < G_N_ELEMENTS(vars); i++)
    if (!field_equal(&vars[i], a, b))
      return FALSE;
  guint na = a->pool_rules ? a->pool_rules->len : 0, nb = b->pool_rules ? b->pool_rules->len : 0;
  if (na != nb)
    return FALSE;
  for (guint r = 0; r < na; r++) {
    const PsPoolRule *ra = a->pool_rules->pdata[r], *rb = b->pool_rules->pdata[r];
    if (g_strcmp0(ra->pattern, rb->pattern) || ra->set_mask != rb->set_mask)
      return FALSE;
    for (gsize i = 0; i < G_N_ELEMENTS(vars); i++)
      if ((ra->set_mask >> i & 1) && !field_equal(&vars[i], &ra->values, &rb->values))
        return FALSE;
  }
  return TRUE;
}

gboolean
ps_config_any_min_idle(const PsConfig *cfg)
{
  if (cfg->min_idle)
    return TRUE;
  for (guint r = 0; cfg->pool_rules && r < cfg->pool_rules->len; r++) {
    const PsPoolRule *rule = cfg->pool_rules->pdata[r];
    if (rule->values.min_idle)
      return TRUE;
  }
  return FALSE;
}

void
ps_config_pool_settings(const PsConfig *cfg, const char *pool_name, PsPoolSettings *out)
{
  PsConfig merged = *cfg; /* shallow: only scalar fields are read below */
  for (guint r = 0; cfg->pool_rules && r < cfg->pool_rules->len; r++) {
    const PsPoolRule *rule = cfg->pool_rules->pdata[r];
    if (!g_pattern_spec_match_string(rule->spec, pool_name))
      continue;
    for (gsize i = 0; i < G_N_ELEMENTS(vars); i++)
      if (rule->set_mask >> i & 1)
        memcpy((char *)&merged + vars[i].offset, (const char *)&rule->values + vars[i].offset,
               vars[i].type == PS_T_DURATION ? sizeof(gint64) : sizeof(int));
    break;
  }
  out->pool_size = merged.pool_size;
  out->min_idle = MIN(merged.min_idle, merged.pool_size);
  out->timeout_us = merged.timeout_us;
  out->max_lifetime_us = merged.max_lifetime_us;
  out->idle_timeout_us = merged.idle_timeout_us;
  out->reset = merged.reset;
}

static const PsVar *
var_by_name(const char *name)
{
  for (gsize i = 0; i < G_N_ELEMENTS(vars); i++)
    if (g_str_equal(vars[i].name, name))
      return &vars[i];
  return NULL;
}

/* In a privileged process (setuid, setgid, file capabilities: AT_SECURE) the environment is
 * the caller's, and the string variables are all paths of files the process would create,
 * append to, rename over or read with its own privileges: like secure_getenv(3), they are
 * not taken from it. The others only tune pooling inside the process. */
typedef struct {
  gboolean secure;
  GPtrArray *ignored; /* names of path variables that were set; NULL when none yet */
} PsEnvFilter;

static const char *
environ_lookup(const char *name, gpointer user_data)
{
  PsEnvFilter *filter = user_data;
  const char *value = g_getenv(name);
  if (!value || !filter->secure)
    return value;
  const PsVar *v = var_by_name(name);
  if (!v || v->type != PS_T_STRING)
    return value;
  if (!filter->ignored)
    filter->ignored = g_ptr_array_new();
  gboolean seen = FALSE;
  for (guint i = 0; i < filter->ignored->len && !seen; i++)
    seen = filter->ignored->pdata[i] == (gpointer)v->name;
  if (!seen)
    g_ptr_array_add(filter->ignored, (gpointer)v->name);
  return NULL;
}

void
ps_config_from_environ(PsConfig *out)
{
  ps_config_from_environ_secure(out, getauxval(AT_SECURE) != 0);
}

void
ps_config_from_environ_secure(PsConfig *out, gboolean secure)
{
  PsEnvFilter filter = {.secure = secure};
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  for (char **e = environ; e && *e; e++) {
    if (g_str_has_prefix(*e, "POOLSHIM_")) {
      const char *eq = strchr(*e, '=');
      g_ptr_array_add(names, eq ? g_strndup(*e, (gsize)(eq - *e)) : g_strdup(*e));
    }
  }
  g_ptr_array_add(names, NULL);
  ps_config_parse(out, environ_lookup, &filter, (const char *const *)names->pdata);
  g_ptr_array_unref(names);
  if (filter.ignored) {
    /* In table order, whatever order the parser asked in. */
    GString *list = g_string_new(NULL);
    for (gsize i = 0; i < G_N_ELEMENTS(vars); i++)
      for (guint j = 0; j < filter.ignored->len; j++)
        if (filter.ignored->pdata[j] == (gpointer)vars[i].name)
          g_string_append_printf(list, "%s%s", list->len ? ", " : "", vars[i].name);
    ps_warn("this process runs with elevated privileges (setuid, setgid or capabilities): "
            "%s ignored from the environment (file settings are not taken from the "
            "caller's environment); using the defaults",
            list->str);
    g_string_free(list, TRUE);
    g_ptr_array_unref(filter.ignored);
  }
}

gboolean
ps_config_describe_file(guint index, const char **file_key, gboolean *per_pool)
{
  static char keys[G_N_ELEMENTS(vars)][64];
  if (index >= G_N_ELEMENTS(vars))
    return FALSE;
  g_autofree char *k = file_key_of(&vars[index]);
  g_strlcpy(keys[index], k, sizeof keys[index]);
  *file_key = vars[index].where ? keys[index] : NULL;
  *per_pool = (vars[index].where & PS_WHERE_POOL) != 0;
  return TRUE;
}

gboolean
ps_config_describe(guint index, const char **name, const char **def, const char **range,
                   const char **help)
{
  static char ranges[G_N_ELEMENTS(vars)][200];
  if (index >= G_N_ELEMENTS(vars))
    return FALSE;
  describe_accepted(&vars[index], ranges[index], sizeof ranges[index]);
  *name = vars[index].name;
  *def = vars[index].def;
  *range = ranges[index];
  *help = vars[index].help;
  return TRUE;
}
