/* test_config.c: the POOLSHIM_* table, seen through ps_config_parse with a fake
 * environment: defaults, valid and bad values, warnings and name suggestions. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <glib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

TestSuite(config, .timeout = 30);

#define SEC ((gint64)G_USEC_PER_SEC)

/* ---- helpers ---------------------------------------------------------------------- */

static const char *
table_lookup(const char *name, gpointer user_data)
{
  return g_hash_table_lookup(user_data, name);
}

/* Parses an environment given as NULL-terminated name/value pairs; every name set is
 * also reported present. `extra_names` (may be NULL) are present but unset. */
static void
parse_env(PsConfig *cfg, const char *const *pairs, const char *const *extra_names)
{
  GHashTable *env = g_hash_table_new(g_str_hash, g_str_equal);
  GPtrArray *names = g_ptr_array_new();
  for (gsize i = 0; pairs && pairs[i]; i += 2) {
    g_hash_table_insert(env, (gpointer)pairs[i], (gpointer)pairs[i + 1]);
    g_ptr_array_add(names, (gpointer)pairs[i]);
  }
  for (gsize i = 0; extra_names && extra_names[i]; i++)
    g_ptr_array_add(names, (gpointer)extra_names[i]);
  g_ptr_array_add(names, NULL);
  ps_config_parse(cfg, table_lookup, env, (const char *const *)names->pdata);
  g_ptr_array_unref(names);
  g_hash_table_unref(env);
}

/* fd 2 redirected to a temporary file around a call. */
typedef struct {
  int saved;
  FILE *file;
} Capture;

static void
capture_start(Capture *c)
{
  fflush(stderr);
  c->file = tmpfile();
  cr_assert_not_null(c->file);
  c->saved = dup(STDERR_FILENO);
  cr_assert_geq(c->saved, 0);
  cr_assert_geq(dup2(fileno(c->file), STDERR_FILENO), 0);
}

/* Restores fd 2 and returns what was written (caller frees). */
static char *
capture_end(Capture *c)
{
  fflush(stderr);
  cr_assert_geq(dup2(c->saved, STDERR_FILENO), 0);
  close(c->saved);
  GString *out = g_string_new(NULL);
  rewind(c->file);
  char buf[512];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, c->file)) > 0)
    g_string_append_len(out, buf, (gssize)n);
  fclose(c->file);
  return g_string_free(out, FALSE);
}

static guint
count_lines(const char *text)
{
  guint n = 0;
  for (const char *p = text; *p; p++)
    n += *p == '\n';
  return n;
}

static void
assert_defaults_except(const PsConfig *cfg, const char *except)
{
  if (g_strcmp0(except, "POOLSHIM_DISABLE") != 0)
    cr_assert_eq(cfg->disable, FALSE);
  if (g_strcmp0(except, "POOLSHIM_POOL_SIZE") != 0)
    cr_assert_eq(cfg->pool_size, 10, "pool_size %u", cfg->pool_size);
  if (g_strcmp0(except, "POOLSHIM_MAX_CONNECTIONS") != 0)
    cr_assert_eq(cfg->max_connections, 0);
  if (g_strcmp0(except, "POOLSHIM_TIMEOUT") != 0)
    cr_assert_eq(cfg->timeout_us, 30 * SEC, "timeout_us %" G_GINT64_FORMAT, cfg->timeout_us);
  if (g_strcmp0(except, "POOLSHIM_MAX_LIFETIME") != 0)
    cr_assert_eq(cfg->max_lifetime_us, 30 * 60 * SEC);
  if (g_strcmp0(except, "POOLSHIM_IDLE_TIMEOUT") != 0)
    cr_assert_eq(cfg->idle_timeout_us, 10 * 60 * SEC);
  if (g_strcmp0(except, "POOLSHIM_RESET") != 0)
    cr_assert_eq(cfg->reset, PS_RESET_AUTO);
  if (g_strcmp0(except, "POOLSHIM_GRAIN") != 0)
    cr_assert_eq(cfg->grain, PS_GRAIN_CONNECT);
  if (g_strcmp0(except, "POOLSHIM_RESET_TIMEOUT") != 0)
    cr_assert_eq(cfg->reset_timeout_us, 5 * SEC);
  if (g_strcmp0(except, "POOLSHIM_LEAK_WARN") != 0)
    cr_assert_eq(cfg->leak_warn_us, 0);
  if (g_strcmp0(except, "POOLSHIM_LOG") != 0)
    cr_assert_eq(cfg->log_level, PS_LOG_WARN);
}

/* ---- defaults and valid values ---------------------------------------------------- */

Test(config, an_empty_environment_gives_the_defaults_silently)
{
  PsConfig cfg;
  memset(&cfg, 0xa5, sizeof cfg);
  Capture cap;
  capture_start(&cap);
  parse_env(&cfg, NULL, NULL);
  g_autofree char *out = capture_end(&cap);

  cr_assert_eq(cfg.pool_size, 10);
  cr_assert_eq(cfg.max_connections, 0);
  cr_assert_eq(cfg.timeout_us, 30 * SEC);
  cr_assert_eq(cfg.max_lifetime_us, 30 * 60 * SEC);
  cr_assert_eq(cfg.idle_timeout_us, 10 * 60 * SEC);
  cr_assert_eq(cfg.reset, PS_RESET_AUTO);
  cr_assert_eq(cfg.log_level, PS_LOG_WARN);
  cr_assert_eq(cfg.disable, FALSE);
  cr_assert_str_empty(out, "unexpected output: %s", out);
  cr_assert(ps_log_enabled(PS_LOG_WARN));
  cr_assert_not(ps_log_enabled(PS_LOG_INFO));
}

Test(config, valid_values_are_applied)
{
  static const char *const env[] = {
    "POOLSHIM_POOL_SIZE", "4",
    "POOLSHIM_TIMEOUT", "300ms",
    "POOLSHIM_RESET", "change_user",
    "POOLSHIM_LOG", "debug",
    "POOLSHIM_MAX_CONNECTIONS", "50",
    "POOLSHIM_MAX_LIFETIME", "1h",
    "POOLSHIM_IDLE_TIMEOUT", "0",
    "POOLSHIM_DISABLE", "1",
    NULL,
  };
  PsConfig cfg;
  Capture cap;
  capture_start(&cap);
  parse_env(&cfg, env, NULL);
  g_autofree char *out = capture_end(&cap);

  cr_assert_eq(cfg.pool_size, 4);
  cr_assert_eq(cfg.timeout_us, 300000);
  cr_assert_eq(cfg.reset, PS_RESET_CHANGE_USER);
  cr_assert_eq(cfg.log_level, PS_LOG_DEBUG);
  cr_assert_eq(cfg.max_connections, 50);
  cr_assert_eq(cfg.max_lifetime_us, 3600 * SEC);
  cr_assert_eq(cfg.idle_timeout_us, 0);
  cr_assert_eq(cfg.disable, TRUE);
  cr_assert(ps_log_enabled(PS_LOG_DEBUG), "the parsed level is put in force");
  cr_assert_str_empty(out, "unexpected output: %s", out);
  ps_log_set_level(PS_LOG_WARN);
  cr_assert_not(ps_log_enabled(PS_LOG_DEBUG));
}

Test(config, surrounding_spaces_are_trimmed)
{
  static const char *const env[] = {
    "POOLSHIM_POOL_SIZE", " 5 ",
    "POOLSHIM_TIMEOUT", "\t2s\n",
    "POOLSHIM_RESET", " rollback",
    NULL,
  };
  PsConfig cfg;
  Capture cap;
  capture_start(&cap);
  parse_env(&cfg, env, NULL);
  g_autofree char *out = capture_end(&cap);
  cr_assert_eq(cfg.pool_size, 5);
  cr_assert_eq(cfg.timeout_us, 2 * SEC);
  cr_assert_eq(cfg.reset, PS_RESET_ROLLBACK);
  cr_assert_str_empty(out, "unexpected output: %s", out);
}

Test(config, reset_always_and_its_old_name_reset_mean_the_same)
{
  static const char *const always[] = {"POOLSHIM_RESET", "always", NULL};
  static const char *const old[] = {"POOLSHIM_RESET", "Reset", NULL};
  static const char *const aut[] = {"POOLSHIM_RESET", "auto", NULL};
  PsConfig cfg;
  parse_env(&cfg, always, NULL);
  cr_assert_eq(cfg.reset, PS_RESET_ALWAYS);
  ps_config_clear(&cfg);
  parse_env(&cfg, old, NULL);
  cr_assert_eq(cfg.reset, PS_RESET_ALWAYS, "the old name of always still works");
  ps_config_clear(&cfg);
  parse_env(&cfg, aut, NULL);
  cr_assert_eq(cfg.reset, PS_RESET_AUTO);
  ps_config_clear(&cfg);
}

Test(config, the_grain_is_connect_unless_transaction_is_asked_for_with_the_auto_reset)
{
  static const char *const none[] = {NULL};
  static const char *const txn[] = {"POOLSHIM_GRAIN", "Transaction", NULL};
  PsConfig cfg;
  parse_env(&cfg, none, NULL);
  cr_assert_eq(cfg.grain, PS_GRAIN_CONNECT);
  ps_config_clear(&cfg);
  parse_env(&cfg, txn, NULL);
  cr_assert_eq(cfg.grain, PS_GRAIN_TRANSACTION, "the default reset is auto");
  ps_config_clear(&cfg);
}

Test(config, the_transaction_grain_with_another_reset_gets_one_warning_and_connect)
{
  static const char *const modes[] = {"always", "change_user", "rollback", "none"};
  for (gsize i = 0; i < G_N_ELEMENTS(modes); i++) {
    const char *const env[] = {"POOLSHIM_GRAIN", "transaction", "POOLSHIM_RESET", modes[i], NULL};
    PsConfig cfg;
    Capture cap;
    capture_start(&cap);
    parse_env(&cfg, env, NULL);
    g_autofree char *out = capture_end(&cap);
    cr_assert_eq(cfg.grain, PS_GRAIN_CONNECT, "POOLSHIM_RESET=%s: the grain falls back", modes[i]);
    cr_assert_eq(count_lines(out), 1, "POOLSHIM_RESET=%s: expected one line, got: %s", modes[i],
                 out);
    cr_assert(g_str_has_prefix(out, "poolshim: warning: POOLSHIM_GRAIN=transaction needs "
                                    "POOLSHIM_RESET=auto"), "got: %s", out);
    cr_assert_not_null(strstr(out, modes[i]), "the line names the reset mode: %s", out);
    cr_assert_not_null(strstr(out, "using POOLSHIM_GRAIN=connect"), "the fallback: %s", out);
    ps_config_clear(&cfg);
  }
}

Test(config, enum_values_ignore_case)
{
  static const char *const env[] = {"POOLSHIM_RESET", "NONE", "POOLSHIM_LOG", "Error", NULL};
  PsConfig cfg;
  parse_env(&cfg, env, NULL);
  cr_assert_eq(cfg.reset, PS_RESET_NONE);
  cr_assert_eq(cfg.log_level, PS_LOG_ERROR);
  ps_log_set_level(PS_LOG_WARN);
}

Test(config, log_error_silences_warnings_about_other_variables)
{
  static const char *const env[] = {"POOLSHIM_LOG", "error", "POOLSHIM_POOL_SIZE", "abc", NULL};
  PsConfig cfg;
  Capture cap;
  capture_start(&cap);
  parse_env(&cfg, env, NULL);
  g_autofree char *out = capture_end(&cap);
  cr_assert_eq(cfg.pool_size, 10, "the bad value still falls back to the default");
  cr_assert_str_empty(out, "warnings obey the level parsed first: %s", out);
  ps_log_set_level(PS_LOG_WARN);
}

/* ---- bad values ------------------------------------------------------------------- */

typedef struct {
  char name[40];
  char value[40];
} BadValue;

ParameterizedTestParameters(config, a_bad_value_keeps_the_default_with_one_warning)
{
  static BadValue params[] = {
    {"POOLSHIM_POOL_SIZE", "abc"},
    {"POOLSHIM_POOL_SIZE", "-1"},
    {"POOLSHIM_POOL_SIZE", "99999999999999"},
    {"POOLSHIM_POOL_SIZE", "10x"},
    {"POOLSHIM_POOL_SIZE", ""},
    {"POOLSHIM_POOL_SIZE", "0"},
    {"POOLSHIM_POOL_SIZE", "99999999999999999999999"},
    {"POOLSHIM_TIMEOUT", "abc"},
    {"POOLSHIM_TIMEOUT", "-1"},
    {"POOLSHIM_TIMEOUT", "99999999999999"},
    {"POOLSHIM_TIMEOUT", "10x"},
    {"POOLSHIM_TIMEOUT", ""},
    {"POOLSHIM_TIMEOUT", "1.5s"},
    {"POOLSHIM_TIMEOUT", "86401"},
    {"POOLSHIM_RESET", "sometimes"},
    {"POOLSHIM_GRAIN", "statement"},
    {"POOLSHIM_LOG", "verbose"},
    {"POOLSHIM_DISABLE", "2"},
    {"POOLSHIM_MAX_CONNECTIONS", "-5"},
    {"POOLSHIM_IDLE_TIMEOUT", "10 m"},
    {"POOLSHIM_RESET_TIMEOUT", "0"},
    {"POOLSHIM_RESET_TIMEOUT", "2h"},
    {"POOLSHIM_POOL_SIZE", "abc\npoolshim: error: forged line"},
  };
  return cr_make_param_array(BadValue, params, G_N_ELEMENTS(params));
}

ParameterizedTest(BadValue *p, config, a_bad_value_keeps_the_default_with_one_warning)
{
  const char *const env[] = {p->name, p->value, NULL};
  PsConfig cfg;
  Capture cap;
  capture_start(&cap);
  parse_env(&cfg, env, NULL);
  g_autofree char *out = capture_end(&cap);

  assert_defaults_except(&cfg, NULL);
  cr_assert_eq(count_lines(out), 1, "%s=\"%s\": expected one line, got: %s", p->name,
               p->value, out);
  cr_assert(g_str_has_suffix(out, "\n"));
  cr_assert(g_str_has_prefix(out, "poolshim: warning: "), "got: %s", out);
  g_autofree char *named = g_strdup_printf("%s=", p->name);
  cr_assert_not_null(strstr(out, named), "the line names the variable: %s", out);
  cr_assert_not_null(strstr(out, "expected"), "the line says what is accepted: %s", out);
  cr_assert_not_null(strstr(out, "default"), "the line says the default is used: %s", out);
}

/* ---- parsers ---------------------------------------------------------------------- */

typedef struct {
  char text[32];
  gint64 us;
} GoodDuration;

ParameterizedTestParameters(config, a_valid_duration_is_parsed)
{
  static GoodDuration params[] = {
    {"250ms", 250000},
    {"30s", 30 * SEC},
    {"10m", 600 * SEC},
    {"1h", 3600 * SEC},
    {"7", 7 * SEC},
    {"0", 0},
    {"0ms", 0},
    {"1ms", 1000},
    {"007s", 7 * SEC},
  };
  return cr_make_param_array(GoodDuration, params, G_N_ELEMENTS(params));
}

ParameterizedTest(GoodDuration *p, config, a_valid_duration_is_parsed)
{
  gint64 us = -42;
  cr_assert(ps_config_parse_duration(p->text, &us), "\"%s\" was rejected", p->text);
  cr_assert_eq(us, p->us, "\"%s\" gave %" G_GINT64_FORMAT " us, expected %" G_GINT64_FORMAT,
               p->text, us, p->us);
}

typedef struct {
  char text[32];
} BadDuration;

ParameterizedTestParameters(config, an_invalid_duration_is_rejected)
{
  static BadDuration params[] = {
    {"abc"}, {"-1"}, {"10x"}, {""}, {"1.5s"}, {"99999999999999h"},
    {" 5"},  /* ps_config_parse trims; the parser itself does not */
    {"5 "}, {"s"}, {"ms"}, {"+5"}, {"5S"}, {"5sec"}, {"99999999999999999999999"},
  };
  return cr_make_param_array(BadDuration, params, G_N_ELEMENTS(params));
}

ParameterizedTest(BadDuration *p, config, an_invalid_duration_is_rejected)
{
  gint64 us = -42;
  cr_assert_not(ps_config_parse_duration(p->text, &us), "\"%s\" was accepted as %" G_GINT64_FORMAT,
                p->text, us);
}

Test(config, a_null_duration_is_rejected)
{
  gint64 us = -42;
  cr_assert_not(ps_config_parse_duration(NULL, &us));
}

Test(config, the_largest_durations_do_not_overflow)
{
  gint64 us;
  /* 2562047788h is the largest whole number of hours within G_MAXINT64 microseconds. */
  cr_assert(ps_config_parse_duration("2562047788h", &us));
  cr_assert_eq(us, (gint64)2562047788 * 3600 * SEC);
  cr_assert_not(ps_config_parse_duration("2562047789h", &us), "one hour more overflows");
}

Test(config, whole_numbers_are_parsed_strictly)
{
  guint64 v = 0;
  cr_assert(ps_config_parse_uint("0", &v));
  cr_assert_eq(v, 0);
  cr_assert(ps_config_parse_uint("18446744073709551615", &v));
  cr_assert_eq(v, G_MAXUINT64);
  cr_assert_not(ps_config_parse_uint("18446744073709551616", &v));
  cr_assert_not(ps_config_parse_uint("-1", &v));
  cr_assert_not(ps_config_parse_uint(" 1", &v));
  cr_assert_not(ps_config_parse_uint("1 ", &v));
  cr_assert_not(ps_config_parse_uint("0x10", &v));
  cr_assert_not(ps_config_parse_uint("", &v));
  cr_assert_not(ps_config_parse_uint(NULL, &v));
}

/* ---- names ------------------------------------------------------------------------ */

Test(config, an_unknown_name_gets_one_warning_with_a_suggestion)
{
  static const char *const extra[] = {"POOLSHIM_POOLSIZE", NULL};
  PsConfig cfg;
  Capture cap;
  capture_start(&cap);
  parse_env(&cfg, NULL, extra);
  g_autofree char *out = capture_end(&cap);

  assert_defaults_except(&cfg, NULL);
  cr_assert_eq(count_lines(out), 1, "got: %s", out);
  cr_assert(g_str_has_prefix(out, "poolshim: warning: "), "got: %s", out);
  cr_assert_not_null(strstr(out, "POOLSHIM_POOLSIZE"), "names the unknown variable: %s", out);
  cr_assert_not_null(strstr(out, "did you mean POOLSHIM_POOL_SIZE?"), "got: %s", out);
}

Test(config, a_far_off_unknown_name_is_reported_without_a_suggestion)
{
  static const char *const extra[] = {"POOLSHIM_COMPLETELY_UNRELATED_SETTING", NULL};
  PsConfig cfg;
  Capture cap;
  capture_start(&cap);
  parse_env(&cfg, NULL, extra);
  g_autofree char *out = capture_end(&cap);
  cr_assert_eq(count_lines(out), 1, "got: %s", out);
  cr_assert(g_str_has_prefix(out, "poolshim: warning: "), "got: %s", out);
  cr_assert_not_null(strstr(out, "POOLSHIM_COMPLETELY_UNRELATED_SETTING"), "got: %s", out);
  cr_assert_null(strstr(out, "did you mean"), "got: %s", out);
}

Test(config, known_and_reserved_names_are_not_reported)
{
  static const char *const env[] = {"POOLSHIM_POOL_SIZE", "3", NULL};
  static const char *const extra[] = {"POOLSHIM_TEST_ANYTHING", "POOLSHIM_LOG", NULL};
  PsConfig cfg;
  Capture cap;
  capture_start(&cap);
  parse_env(&cfg, env, extra);
  g_autofree char *out = capture_end(&cap);
  cr_assert_eq(cfg.pool_size, 3);
  cr_assert_str_empty(out, "unexpected output: %s", out);
}

Test(config, the_closest_name_is_suggested_only_when_close)
{
  cr_assert_str_eq(ps_config_closest_name("POOLSHIM_TIMEOUTS"), "POOLSHIM_TIMEOUT");
  cr_assert_str_eq(ps_config_closest_name("POOLSHIM_POOLSIZE"), "POOLSHIM_POOL_SIZE");
  cr_assert_str_eq(ps_config_closest_name("poolshim_idle_timeout"), "POOLSHIM_IDLE_TIMEOUT",
                   "case does not count as a difference");
  cr_assert_null(ps_config_closest_name("POOLSHIM_COMPLETELY_UNRELATED_SETTING"));
  cr_assert_null(ps_config_closest_name("LD_LIBRARY_PATH"));
}

Test(config, describe_enumerates_every_variable)
{
  static const char *const expected[] = {
    "POOLSHIM_DISABLE", "POOLSHIM_POOL_SIZE", "POOLSHIM_MIN_IDLE", "POOLSHIM_MAX_CONNECTIONS",
    "POOLSHIM_TIMEOUT",
    "POOLSHIM_MAX_LIFETIME", "POOLSHIM_IDLE_TIMEOUT", "POOLSHIM_RESET", "POOLSHIM_GRAIN", "POOLSHIM_RESET_TIMEOUT",
    "POOLSHIM_REVALIDATE", "POOLSHIM_LEAK_WARN", "POOLSHIM_LOG", "POOLSHIM_LOG_FILE", "POOLSHIM_STATS_FILE",
    "POOLSHIM_STATS_INTERVAL", "POOLSHIM_HOST_MAX", "POOLSHIM_HOST_DIR", "POOLSHIM_CONFIG",
  };
  /* Paths are the only variables whose default is "unset". */
  static const char *const empty_default[] = {"POOLSHIM_LOG_FILE", "POOLSHIM_STATS_FILE",
                                              "POOLSHIM_HOST_DIR", "POOLSHIM_CONFIG", NULL};
  GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
  guint n = 0;
  const char *name, *def, *range, *help;
  while (ps_config_describe(n, &name, &def, &range, &help)) {
    cr_assert_not_null(name);
    cr_assert(g_str_has_prefix(name, "POOLSHIM_"), "entry %u is named %s", n, name);
    cr_assert_not_null(def, "%s has no default", name);
    cr_assert_eq(strlen(def) == 0, g_strv_contains(empty_default, name),
                 "%s: default \"%s\"", name, def);
    cr_assert_not_null(range, "%s has no range", name);
    cr_assert_gt(strlen(range), 0, "%s has an empty range", name);
    cr_assert_not_null(help, "%s has no help", name);
    cr_assert_gt(strlen(help), 0, "%s has an empty help", name);
    cr_assert_not(g_hash_table_contains(seen, name), "%s is listed twice", name);
    g_hash_table_add(seen, (gpointer)name);
    cr_assert_str_eq(ps_config_closest_name(name), name);
    cr_assert_lt(++n, 100, "describe never returns FALSE");
  }
  cr_assert_eq(n, G_N_ELEMENTS(expected), "%u variables described", n);
  for (guint i = 0; i < G_N_ELEMENTS(expected); i++)
    cr_assert(g_hash_table_contains(seen, expected[i]), "%s is not described", expected[i]);
  cr_assert_not(ps_config_describe(n, &name, &def, &range, &help));
  cr_assert_not(ps_config_describe(n + 1000, &name, &def, &range, &help));
  g_hash_table_unref(seen);
}

/* ---- concurrency ---------------------------------------------------------------------- */

static gint parse_failures;

static gpointer
parse_in_thread(gpointer data)
{
  /* errno left over by anything else must never make a value invalid. */
  errno = EAGAIN;
  const char *const pairs[] = {"POOLSHIM_POOL_SIZE", "16", "POOLSHIM_TIMEOUT", "250ms", NULL};
  PsConfig cfg;
  parse_env(&cfg, pairs, NULL);
  if (cfg.pool_size != 16 || cfg.timeout_us != 250 * 1000 || cfg.max_lifetime_us != 30 * 60 * SEC)
    g_atomic_int_inc(&parse_failures);
  return NULL;
}

Test(config, parsing_from_many_threads_at_once_never_rejects_a_value)
{
  for (int round = 0; round < 20; round++) {
    GThread *t[32];
    for (int i = 0; i < 32; i++)
      t[i] = g_thread_new("parse", parse_in_thread, NULL);
    for (int i = 0; i < 32; i++)
      g_thread_join(t[i]);
  }
  cr_assert_eq(g_atomic_int_get(&parse_failures), 0);
}

/* ---- the key file (POOLSHIM_CONFIG) ----------------------------------------------- */

/* Writes `text` to a fresh temporary file; returns its path (caller frees and unlinks). */
static char *
write_key_file(const char *text)
{
  char *path = NULL;
  int fd = g_file_open_tmp("poolshim-conf-XXXXXX", &path, NULL);
  cr_assert_geq(fd, 0);
  close(fd);
  cr_assert(g_file_set_contents(path, text, -1, NULL));
  return path;
}

/* Parses with POOLSHIM_CONFIG=path plus `pairs`; returns the captured warnings. */
static char *
parse_with_file(PsConfig *cfg, const char *path, const char *const *pairs)
{
  GPtrArray *env = g_ptr_array_new();
  g_ptr_array_add(env, (gpointer) "POOLSHIM_CONFIG");
  g_ptr_array_add(env, (gpointer)path);
  for (gsize i = 0; pairs && pairs[i]; i++)
    g_ptr_array_add(env, (gpointer)pairs[i]);
  g_ptr_array_add(env, NULL);
  Capture cap;
  capture_start(&cap);
  parse_env(cfg, (const char *const *)env->pdata, NULL);
  char *out = capture_end(&cap);
  g_ptr_array_unref(env);
  return out;
}

Test(config, the_default_group_of_the_key_file_sets_variables_silently)
{
  g_autofree char *path = write_key_file("# comment\n[default]\npool_size = 7\ntimeout = 2s\n"
                                         "stats_file = /tmp/x-%p.prom\nhost_max = 12\n");
  PsConfig cfg;
  g_autofree char *out = parse_with_file(&cfg, path, NULL);
  cr_assert_str_empty(out, "unexpected output: %s", out);
  cr_assert_eq(cfg.pool_size, 7);
  cr_assert_eq(cfg.timeout_us, 2 * SEC);
  cr_assert_str_eq(cfg.stats_file, "/tmp/x-%p.prom");
  cr_assert_eq(cfg.host_max, 12);
  cr_assert_str_eq(cfg.config_file, path);
  cr_assert_eq(cfg.max_lifetime_us, 30 * 60 * SEC, "what the file does not set keeps its default");
  ps_config_clear(&cfg);
  unlink(path);
}

Test(config, the_environment_wins_over_the_key_file)
{
  g_autofree char *path = write_key_file("[default]\npool_size = 7\nreset = rollback\n");
  static const char *const env[] = {"POOLSHIM_POOL_SIZE", "3", NULL};
  PsConfig cfg;
  g_autofree char *out = parse_with_file(&cfg, path, env);
  cr_assert_str_empty(out, "unexpected output: %s", out);
  cr_assert_eq(cfg.pool_size, 3);
  cr_assert_eq(cfg.reset, PS_RESET_ROLLBACK);
  ps_config_clear(&cfg);
  unlink(path);
}

Test(config, the_first_matching_pool_group_sets_that_pool_alone)
{
  g_autofree char *path = write_key_file("[default]\npool_size = 6\n"
                                         "[pool report@db1:3306/*]\npool_size = 2\n"
                                         "reset = change_user\nmax_lifetime = 5m\n"
                                         "[pool report@*]\npool_size = 4\n"
                                         "[pool app@db?:3306/shop]\ntimeout = 250ms\n");
  PsConfig cfg;
  g_autofree char *out = parse_with_file(&cfg, path, NULL);
  cr_assert_str_empty(out, "unexpected output: %s", out);
  PsPoolSettings s;
  ps_config_pool_settings(&cfg, "report@db1:3306/sales", &s);
  cr_assert_eq(s.pool_size, 2, "the first matching group wins");
  cr_assert_eq(s.reset, PS_RESET_CHANGE_USER);
  cr_assert_eq(s.max_lifetime_us, 5 * 60 * SEC);
  cr_assert_eq(s.timeout_us, 30 * SEC, "a key the group does not set comes from above");
  ps_config_pool_settings(&cfg, "report@db2:3306/sales", &s);
  cr_assert_eq(s.pool_size, 4);
  cr_assert_eq(s.reset, PS_RESET_AUTO);
  ps_config_pool_settings(&cfg, "app@db7:3306/shop", &s);
  cr_assert_eq(s.pool_size, 6, "[default] applies where the group is silent");
  cr_assert_eq(s.timeout_us, 250000);
  ps_config_pool_settings(&cfg, "app@db7:3306/shop2", &s);
  cr_assert_eq(s.timeout_us, 30 * SEC, "a glob matches the whole name");
  cr_assert_eq(s.min_idle, 0);
  ps_config_clear(&cfg);
  unlink(path);
}

Test(config, an_environment_variable_shadowing_a_pool_key_is_reported)
{
  g_autofree char *path = write_key_file("[pool *]\n\npool_size = 2\n");
  static const char *const env[] = {"POOLSHIM_POOL_SIZE", "9", NULL};
  PsConfig cfg;
  g_autofree char *out = parse_with_file(&cfg, path, env);
  g_autofree char *where = g_strdup_printf("%s:3: [pool *] pool_size", path);
  cr_assert(strstr(out, where) && strstr(out, "POOLSHIM_POOL_SIZE"), "got: %s", out);
  cr_assert_eq(count_lines(out), 1, "got: %s", out);
  PsPoolSettings s;
  ps_config_pool_settings(&cfg, "a@b:1/c", &s);
  cr_assert_eq(s.pool_size, 9);
  ps_config_clear(&cfg);
  unlink(path);
}

typedef struct {
  /* Arrays, not pointers: Criterion copies parameters into its own arena. */
  char text[96];
  char expect[128]; /* in the one warning line, after "FILE:" */
} BadFile;

ParameterizedTestParameters(config, a_bad_file_entry_is_named_with_its_line)
{
  static BadFile cases[] = {
    {"[default]\npool_size = 7\ntimeout = soon\n", ":3: [default] timeout = \"soon\" is not valid"},
    {"[default]\n\n\npool_sise = 7\n", ":4: [default] unknown key pool_sise ignored; did you mean pool_size?"},
    {"[pool a@*]\nlog = debug\n", ":2: [pool a@*] log cannot be set per pool"},
    {"[pool a@*]\nreset = sometimes\n", ":2: [pool a@*] reset = \"sometimes\" is not valid (expected one of always"},
    {"[defaults]\npool_size = 7\n", ":1: unknown group [defaults] ignored"},
    {"[pool ]\npool_size = 7\n", ":1: [pool ] names no pool"},
    {"[default]\nconfig = /etc/other\n", ":2: [default] config can only be set in the environment (POOLSHIM_CONFIG); ignored"},
    {"[default]\nstats_file = /tmp/%d.prom\n", ":2: [default] stats_file = \"/tmp/%d.prom\" is not valid (expected a path; % only in %p, %n or %%)"},
  };
  return cr_make_param_array(BadFile, cases, G_N_ELEMENTS(cases));
}

ParameterizedTest(BadFile *p, config, a_bad_file_entry_is_named_with_its_line)
{
  g_autofree char *path = write_key_file(p->text);
  PsConfig cfg;
  g_autofree char *out = parse_with_file(&cfg, path, NULL);
  g_autofree char *want = g_strconcat(path, p->expect, NULL);
  cr_assert(strstr(out, want), "want: %s\ngot: %s", want, out);
  cr_assert_eq(count_lines(out), 1, "got: %s", out);
  cr_assert_eq(cfg.timeout_us, 30 * SEC);
  cr_assert_null(cfg.stats_file);
  ps_config_clear(&cfg);
  unlink(path);
}

Test(config, an_unreadable_key_file_gives_one_warning_and_the_defaults)
{
  static const char *const cases[] = {"/nonexistent/poolshim.conf", "/dev/zero", "/tmp"};
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    PsConfig cfg;
    g_autofree char *out = parse_with_file(&cfg, cases[i], NULL);
    cr_assert_eq(count_lines(out), 1, "%s: %s", cases[i], out);
    cr_assert(strstr(out, cases[i]), "%s: %s", cases[i], out);
    cr_assert_eq(cfg.pool_size, 10);
    cr_assert_null(cfg.config_file);
    ps_config_clear(&cfg);
  }
  g_autofree char *path = write_key_file("pool_size = 3\n[default\n");
  PsConfig cfg;
  g_autofree char *out = parse_with_file(&cfg, path, NULL);
  cr_assert(strstr(out, "not a valid key file"), "got: %s", out);
  cr_assert_eq(cfg.pool_size, 10);
  ps_config_clear(&cfg);
  unlink(path);
}

Test(config, the_key_files_log_level_governs_its_own_warnings)
{
  g_autofree char *path = write_key_file("[default]\nlog = error\ntimeout = soon\n");
  PsConfig cfg;
  g_autofree char *out = parse_with_file(&cfg, path, NULL);
  cr_assert_str_empty(out, "got: %s", out);
  cr_assert_eq(cfg.log_level, PS_LOG_ERROR);
  ps_config_clear(&cfg);
  ps_log_set_level(PS_LOG_WARN);
  unlink(path);
}

Test(config, parsing_the_same_file_twice_gives_equal_configurations)
{
  g_autofree char *path = write_key_file("[default]\nlog_file = /tmp/l\n[pool x*]\nreset = none\n");
  PsConfig a, b;
  g_autofree char *out1 = parse_with_file(&a, path, NULL);
  g_autofree char *out2 = parse_with_file(&b, path, NULL);
  cr_assert(ps_config_equal(&a, &b));
  cr_assert_str_eq(a.log_file, "/tmp/l");
  b.pool_size++;
  cr_assert_not(ps_config_equal(&a, &b));
  ps_config_clear(&a);
  ps_config_clear(&b);
  unlink(path);
}

/* A bad value in the environment falls back to the file's, per pool too: it does not hide
 * a [pool ...] group's value the way a valid one does. */
Test(config, a_bad_environment_value_does_not_hide_a_pool_group)
{
  g_autofree char *path = write_key_file("[default]\npool_size = 6\n[pool big@*]\npool_size = 20\n");
  const char *bad[] = {"POOLSHIM_POOL_SIZE", "banana", NULL};
  PsConfig cfg;
  g_autofree char *out = parse_with_file(&cfg, path, bad);
  cr_assert(strstr(out, "POOLSHIM_POOL_SIZE"), "no warning about the bad value: %s", out);
  cr_assert_null(strstr(out, "overridden"), "a bad value hid the group: %s", out);
  PsPoolSettings s;
  ps_config_pool_settings(&cfg, "big@h:1/d", &s);
  cr_assert_eq(s.pool_size, 20, "the group's value");
  ps_config_pool_settings(&cfg, "other@h:1/d", &s);
  cr_assert_eq(s.pool_size, 6, "the file's [default]");
  ps_config_clear(&cfg);
  const char *good[] = {"POOLSHIM_POOL_SIZE", "5", NULL};
  g_autofree char *out2 = parse_with_file(&cfg, path, good);
  cr_assert(strstr(out2, "overridden"), "no word that the environment wins: %s", out2);
  ps_config_pool_settings(&cfg, "big@h:1/d", &s);
  cr_assert_eq(s.pool_size, 5, "the environment's value");
  ps_config_clear(&cfg);
  unlink(path);
}

Test(config, min_idle_is_set_per_pool_and_never_above_the_pool_size)
{
  g_autofree char *path = write_key_file("[default]\nmin_idle = 2\n[pool small@*]\npool_size = 1\n"
                                         "[pool big@*]\nmin_idle = 8\npool_size = 20\n");
  PsConfig cfg;
  g_autofree char *out = parse_with_file(&cfg, path, NULL);
  cr_assert_str_empty(out, "got: %s", out);
  PsPoolSettings s;
  ps_config_pool_settings(&cfg, "small@h:1/d", &s);
  cr_assert_eq(s.min_idle, 1, "clamped to the pool size");
  ps_config_pool_settings(&cfg, "big@h:1/d", &s);
  cr_assert_eq(s.min_idle, 8);
  ps_config_pool_settings(&cfg, "other@h:1/d", &s);
  cr_assert_eq(s.min_idle, 2);
  ps_config_clear(&cfg);
  unlink(path);
}

/* ---- privileged processes ---------------------------------------------------------- */

Test(config, in_a_privileged_process_no_path_is_taken_from_the_environment)
{
  g_autofree char *path = write_key_file("[default]\npool_size = 7\n");
  g_setenv("POOLSHIM_CONFIG", path, TRUE);
  g_setenv("POOLSHIM_LOG_FILE", "/tmp/pst-secure-log", TRUE);
  g_setenv("POOLSHIM_STATS_FILE", "/tmp/pst-secure-%p.prom", TRUE);
  g_setenv("POOLSHIM_HOST_DIR", "/tmp/pst-secure-slots", TRUE);
  g_setenv("POOLSHIM_TIMEOUT", "3s", TRUE);
  PsConfig cfg;
  Capture cap;
  capture_start(&cap);
  ps_config_from_environ_secure(&cfg, TRUE);
  g_autofree char *out = capture_end(&cap);
  cr_assert_null(cfg.config_file);
  cr_assert_null(cfg.log_file);
  cr_assert_null(cfg.stats_file);
  cr_assert_null(cfg.host_dir);
  cr_assert_eq(cfg.pool_size, 10, "the key file was read");
  cr_assert_eq(cfg.timeout_us, 3 * SEC, "a variable that names no file is kept");
  cr_assert_eq(count_lines(out), 1, "%s", out);
  cr_assert(strstr(out, "poolshim: warning: this process runs with elevated privileges"), "%s",
            out);
  cr_assert(strstr(out, "POOLSHIM_LOG_FILE, POOLSHIM_STATS_FILE, POOLSHIM_HOST_DIR, "
                        "POOLSHIM_CONFIG ignored"),
            "%s", out);
  ps_config_clear(&cfg);

  /* The same environment in an ordinary process: every one of them is used, silently. */
  capture_start(&cap);
  ps_config_from_environ_secure(&cfg, FALSE);
  g_autofree char *plain = capture_end(&cap);
  cr_assert_str_empty(plain, "%s", plain);
  cr_assert_str_eq(cfg.config_file, path);
  cr_assert_str_eq(cfg.log_file, "/tmp/pst-secure-log");
  cr_assert_str_eq(cfg.host_dir, "/tmp/pst-secure-slots");
  cr_assert_eq(cfg.pool_size, 7);
  ps_config_clear(&cfg);
  unlink(path);
}

/* ---- large key files ---------------------------------------------------------------- */

/* Liveness, not speed: parsing used to search the whole text for every message (quadratic:
 * 4,000 keys took over a second, 100,000 would take minutes); a 100,000-key file takes well
 * under a second in a plain build. The bound leaves room for the ASan pass, where every
 * allocation unwinds its whole stack (about 20 s for these files), on a loaded machine. */
#define LARGE_FILE_BOUND_US (90 * SEC)

/* Their own suite for the longer timeout (a per-test .timeout leaks inside Criterion). */
TestSuite(config_large, .timeout = 300);

Test(config_large, a_key_file_of_100000_unknown_keys_is_parsed_with_bounded_messages)
{
  GString *text = g_string_new("[default]\n");
  for (guint i = 0; i < 100000; i++)
    g_string_append_printf(text, "k%u=1\n", i);
  g_string_append(text, "pool_size = 7\n");
  g_autofree char *path = write_key_file(text->str);
  g_string_free(text, TRUE);
  PsConfig cfg;
  gint64 start = g_get_monotonic_time();
  g_autofree char *out = parse_with_file(&cfg, path, NULL);
  gint64 took = g_get_monotonic_time() - start;
  cr_assert_lt(took, LARGE_FILE_BOUND_US, "parsing took %" G_GINT64_FORMAT " ms", took / 1000);
  cr_assert_eq(cfg.pool_size, 7, "the one valid key was not applied");
  /* 50 messages with their lines, then one that counts the rest. */
  cr_assert_eq(count_lines(out), 51, "%s", out);
  g_autofree char *first = g_strdup_printf("poolshim: warning: %s:2: [default] unknown key k0 "
                                           "ignored",
                                           path);
  cr_assert(g_str_has_prefix(out, first), "%s", out);
  g_autofree char *fiftieth = g_strdup_printf("%s:51: [default] unknown key k49 ignored", path);
  cr_assert(strstr(out, fiftieth), "%s", out);
  g_autofree char *rest = g_strdup_printf("poolshim: warning: %s: 99950 more problems not shown\n",
                                          path);
  cr_assert(g_str_has_suffix(out, rest), "%s", out);
  ps_config_clear(&cfg);
  unlink(path);
}

Test(config_large, a_key_file_of_100000_pool_keys_is_parsed_and_applied)
{
  GString *text = g_string_new("[default]\npool_size = 3\n");
  for (guint i = 0; i < 50000; i++)
    g_string_append_printf(text, "[pool u%u@h:1/d]\npool_size = %u\nreset = %s\n", i, i % 50 + 1,
                           i % 2 ? "none" : "rollback");
  g_autofree char *path = write_key_file(text->str);
  g_string_free(text, TRUE);
  PsConfig cfg;
  gint64 start = g_get_monotonic_time();
  g_autofree char *out = parse_with_file(&cfg, path, NULL);
  gint64 took = g_get_monotonic_time() - start;
  cr_assert_lt(took, LARGE_FILE_BOUND_US, "parsing took %" G_GINT64_FORMAT " ms", took / 1000);
  cr_assert_str_empty(out, "%s", out);
  cr_assert_eq(cfg.pool_size, 3);
  cr_assert_not_null(cfg.pool_rules);
  cr_assert_eq(cfg.pool_rules->len, 50000);
  static const guint probes[] = {0, 1, 12345, 49998, 49999};
  for (gsize i = 0; i < G_N_ELEMENTS(probes); i++) {
    g_autofree char *name = g_strdup_printf("u%u@h:1/d", probes[i]);
    PsPoolSettings s;
    ps_config_pool_settings(&cfg, name, &s);
    cr_assert_eq(s.pool_size, probes[i] % 50 + 1, "%s: size %u", name, s.pool_size);
    cr_assert_eq(s.reset, probes[i] % 2 ? PS_RESET_NONE : PS_RESET_ROLLBACK, "%s", name);
  }
  PsPoolSettings other;
  ps_config_pool_settings(&cfg, "nobody@h:1/d", &other);
  cr_assert_eq(other.pool_size, 3, "a pool no group names keeps the process-wide size");
  ps_config_clear(&cfg);
  unlink(path);
}
