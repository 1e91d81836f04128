/* config.c: one table of POOLSHIM_* variables (name, default, range, help), parsed once.
 * Bad values never abort the host: one warning line naming the variable, then the default. */
#include "config.h"

#include <string.h>

extern char **environ;

typedef enum { PS_T_BOOL, PS_T_UINT, PS_T_DURATION, PS_T_ENUM } PsVarType;

typedef struct {
  const char *name;
  PsVarType type;
  const char *def;   /* default, as text: parsed through the same code as user input */
  guint64 min, max;  /* uint: count; duration: microseconds */
  const char *const *choices; /* enum: NULL-terminated, index = value */
  gsize offset;      /* into PsConfig */
  const char *help;
} PsVar;

static const char *const reset_choices[] = {"reset", "change_user", "rollback", "none", NULL};
static const char *const log_choices[] = {"error", "warn", "info", "debug", NULL};

#define US(s) ((guint64)(s) * G_USEC_PER_SEC)

static const PsVar vars[] = {
  {"POOLSHIM_DISABLE", PS_T_BOOL, "0", 0, 1, NULL, G_STRUCT_OFFSET(PsConfig, disable),
   "1 turns pooling off: every call goes straight to the client library."},
  {"POOLSHIM_POOL_SIZE", PS_T_UINT, "10", 1, 100000, NULL, G_STRUCT_OFFSET(PsConfig, pool_size),
   "Physical connections per pool (one pool per user, password, server, database and option set)."},
  {"POOLSHIM_MAX_CONNECTIONS", PS_T_UINT, "0", 0, 1000000, NULL,
   G_STRUCT_OFFSET(PsConfig, max_connections),
   "Physical connections for the whole process, all pools together; 0 means unlimited."},
  {"POOLSHIM_TIMEOUT", PS_T_DURATION, "30s", 0, US(86400), NULL,
   G_STRUCT_OFFSET(PsConfig, timeout_us),
   "How long a connect waits for a free connection when the pool is full; then error 1040."},
  {"POOLSHIM_MAX_LIFETIME", PS_T_DURATION, "30m", 0, US(30 * 86400), NULL,
   G_STRUCT_OFFSET(PsConfig, max_lifetime_us),
   "A physical connection is closed at its first return after this age (minus up to 2.5% "
   "jitter); 0 means no limit."},
  {"POOLSHIM_IDLE_TIMEOUT", PS_T_DURATION, "10m", 0, US(30 * 86400), NULL,
   G_STRUCT_OFFSET(PsConfig, idle_timeout_us),
   "An idle connection unused for this long is closed; 0 means never."},
  {"POOLSHIM_RESET", PS_T_ENUM, "reset", 0, 0, reset_choices, G_STRUCT_OFFSET(PsConfig, reset),
   "How a returned session is cleaned: reset (COM_RESET_CONNECTION), change_user, rollback "
   "or none."},
  {"POOLSHIM_RESET_TIMEOUT", PS_T_DURATION, "5s", 1000 * 1000, US(3600), NULL,
   G_STRUCT_OFFSET(PsConfig, reset_timeout_us),
   "Bound on each server round trip of a reset (mysql_close never waits longer); a reset "
   "that times out closes the connection."},
  {"POOLSHIM_LEAK_WARN", PS_T_DURATION, "0", 0, US(30 * 86400), NULL,
   G_STRUCT_OFFSET(PsConfig, leak_warn_us),
   "Warn (once per borrow, with the pool, the time held and a backtrace of the borrower) "
   "about a connection the application has held longer than this; 0 turns it off."},
  {"POOLSHIM_LOG", PS_T_ENUM, "warn", 0, 0, log_choices, G_STRUCT_OFFSET(PsConfig, log_level),
   "Messages on stderr at or above this level: error, warn, info or debug."},
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
        *out = i;
        return TRUE;
      }
    return FALSE;
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
  }
}

static void
store(PsConfig *cfg, const PsVar *v, guint64 value)
{
  char *field = (char *)cfg + v->offset;
  switch (v->type) {
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

void
ps_config_parse(PsConfig *out, PsEnvLookup lookup, gpointer user_data,
                const char *const *present_names)
{
  memset(out, 0, sizeof *out);
  /* The level first, so that the other warnings obey it. */
  for (gsize pass = 0; pass < 2; pass++) {
    for (gsize i = 0; i < G_N_ELEMENTS(vars); i++) {
      const PsVar *v = &vars[i];
      gboolean is_log = v->offset == G_STRUCT_OFFSET(PsConfig, log_level);
      if ((pass == 0) != is_log)
        continue;
      guint64 value = 0;
      /* Defaults parse through the same code (a unit test checks every one); never abort
       * the host over them. */
      (void)parse_value(v, v->def, &value);
      const char *text = lookup(v->name, user_data);
      if (text) {
        g_autofree char *trimmed = g_strstrip(g_strdup(text));
        guint64 parsed;
        if (parse_value(v, trimmed, &parsed)) {
          value = parsed;
        } else {
          char accepted[200];
          describe_accepted(v, accepted, sizeof accepted);
          /* Escaped: a value with a newline must not forge a second message line. */
          g_autofree char *shown = g_strescape(text, NULL);
          ps_warn("%s=\"%.60s\" is not valid (expected %s); using the default %s", v->name,
                  shown, accepted, v->def);
        }
      }
      store(out, v, value);
      if (is_log)
        ps_log_set_level(out->log_level);
    }
  }
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

static const char *
environ_lookup(const char *name, gpointer user_data)
{
  return g_getenv(name);
}

void
ps_config_from_environ(PsConfig *out)
{
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  for (char **e = environ; e && *e; e++) {
    if (g_str_has_prefix(*e, "POOLSHIM_")) {
      const char *eq = strchr(*e, '=');
      g_ptr_array_add(names, eq ? g_strndup(*e, (gsize)(eq - *e)) : g_strdup(*e));
    }
  }
  g_ptr_array_add(names, NULL);
  ps_config_parse(out, environ_lookup, NULL, (const char *const *)names->pdata);
  g_ptr_array_unref(names);
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
