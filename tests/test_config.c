/* test_config.c: the POOLSHIM_* table, seen through ps_config_parse with a fake
 * environment: defaults, valid and bad values, the duration and number parsers, warnings
 * and name suggestions, parsing from many threads. The key file: test_config_files.c. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <glib.h>
#include <string.h>

#include "config_common.h"

TestSuite(config, .timeout = 30);

/* ---- helpers ---------------------------------------------------------------------- */

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
  if (g_strcmp0(except, "POOLSHIM_PYTHON_LOCK") != 0)
    cr_assert_eq(cfg->python_lock, PS_PYTHON_LOCK_KEEP);
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

Test(config, the_python_lock_is_kept_unless_release_is_asked_for)
{
  static const char *const none[] = {NULL};
  static const char *const rel[] = {"POOLSHIM_PYTHON_LOCK", "Release", NULL};
  PsConfig cfg;
  parse_env(&cfg, none, NULL);
  cr_assert_eq(cfg.python_lock, PS_PYTHON_LOCK_KEEP);
  ps_config_clear(&cfg);
  parse_env(&cfg, rel, NULL);
  cr_assert_eq(cfg.python_lock, PS_PYTHON_LOCK_RELEASE);
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
    {"POOLSHIM_PYTHON_LOCK", "drop"},
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
    "POOLSHIM_MAX_LIFETIME", "POOLSHIM_IDLE_TIMEOUT", "POOLSHIM_RESET", "POOLSHIM_GRAIN", "POOLSHIM_PYTHON_LOCK", "POOLSHIM_RESET_TIMEOUT",
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
