/* test_config_files.c: the key file (POOLSHIM_CONFIG) seen through ps_config_parse:
 * its [default] and [pool ...] groups against the environment, bad entries and unreadable
 * files, a privileged process, and key files of 100,000 keys. The variables: test_config.c. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <glib.h>
#include <string.h>
#include <unistd.h>

#include "config_common.h"

TestSuite(config, .timeout = 30);

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
 * 4,000 keys took over a second, 100,000 would take minutes). Now a 100,000-key file takes
 * well under a second in a plain build and about 30 s in the ASan pass (every allocation
 * unwinds its whole stack), and a loaded CI machine ran that pass three times slower. No
 * wall-clock bound here (a timing assertion on a shared machine fails on load, not on the
 * code): the suite's timeout is the liveness bound, which the quadratic parser would blow
 * in every build (about ten minutes plain). The time is printed for a reader. */
static void
report_parse_time(const char *what, gint64 took_us)
{
  fprintf(stderr, "config_large: %s parsed in %" G_GINT64_FORMAT " ms\n", what, took_us / 1000);
}

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
  report_parse_time("100,000 unknown keys", g_get_monotonic_time() - start);
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
  report_parse_time("50,000 [pool] groups", g_get_monotonic_time() - start);
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
