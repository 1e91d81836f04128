/* Environment: bad values give one clear line and the default; the host never aborts;
 * no credential reaches the log; POOLSHIM_DISABLE passes everything through. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <glib.h>
#include <string.h>

typedef struct {
  char *out, *err;
  int status;
} Run;

static Run
run_probe(const char *const *extra_env, const char *cycles, const char *password)
{
  const char *lib = getenv("PST_LIB"), *probe = getenv("PST_ENVPROBE");
  cr_assert(lib && probe, "PST_LIB/PST_ENVPROBE not set: run through meson test");
  char **env = g_get_environ();
  env = g_environ_setenv(env, "LD_PRELOAD", lib, TRUE);
  /* One connection at most (unless the value under test is one of these): a connect right
   * after a close must get the same session, not a new one opened rather than wait for
   * the returned one's reset. */
  env = g_environ_setenv(env, "POOLSHIM_POOL_SIZE", "1", TRUE);
  env = g_environ_setenv(env, "POOLSHIM_MAX_CONNECTIONS", "1", TRUE);
  for (const char *const *e = extra_env; e && *e; e += 2)
    env = g_environ_setenv(env, e[0], e[1], TRUE);
  const char *argv[] = {probe, cycles, password, NULL};
  Run r = {0};
  GError *error = NULL;
  gboolean ok = g_spawn_sync(NULL, (char **)argv, env, G_SPAWN_DEFAULT, NULL, NULL, &r.out,
                             &r.err, &r.status, &error);
  cr_assert(ok, "spawn: %s", error ? error->message : "?");
  g_strfreev(env);
  return r;
}

static void
run_clear(Run *r)
{
  g_clear_pointer(&r->out, g_free);
  g_clear_pointer(&r->err, g_free);
}

static guint
count_lines(const char *text)
{
  guint n = 0;
  for (const char *p = text; *p; p++)
    n += *p == '\n';
  return n;
}

typedef struct {
  char name[40];
  char value[40];
} BadValue;

static BadValue bad_values[] = {
  {"POOLSHIM_POOL_SIZE", "abc"},      {"POOLSHIM_POOL_SIZE", "-1"},
  {"POOLSHIM_POOL_SIZE", "99999999999999"}, {"POOLSHIM_POOL_SIZE", "10x"},
  {"POOLSHIM_POOL_SIZE", ""},         {"POOLSHIM_TIMEOUT", "abc"},
  {"POOLSHIM_TIMEOUT", "-1"},         {"POOLSHIM_TIMEOUT", "99999999999999"},
  {"POOLSHIM_TIMEOUT", "10x"},        {"POOLSHIM_TIMEOUT", ""},
  {"POOLSHIM_MAX_LIFETIME", "abc"},   {"POOLSHIM_IDLE_TIMEOUT", "10x"},
  {"POOLSHIM_RESET", "sometimes"},    {"POOLSHIM_LOG", "loud"},
  {"POOLSHIM_MAX_CONNECTIONS", "-1"}, {"POOLSHIM_DISABLE", "maybe"},
};

ParameterizedTestParameters(environment, a_bad_value_gives_one_line_and_the_default)
{
  return cr_make_param_array(BadValue, bad_values, G_N_ELEMENTS(bad_values));
}

TestSuite(environment, .timeout = 60);

ParameterizedTest(BadValue *bad, environment, a_bad_value_gives_one_line_and_the_default)
{
  const char *env[] = {bad->name, bad->value, NULL};
  Run r = run_probe(env, "3", NULL);
  cr_assert_eq(r.status, 0, "the host program failed: %s", r.err);
  cr_assert_eq(count_lines(r.err), 1, "stderr: %s", r.err);
  cr_assert(g_str_has_prefix(r.err, "poolshim: warning: "), "stderr: %s", r.err);
  g_autofree char *named = g_strdup_printf("%s=", bad->name);
  cr_assert(strstr(r.err, named), "the line does not name the variable: %s", r.err);
  cr_assert(strstr(r.err, "expected"), "the line does not say what is accepted: %s", r.err);
  cr_assert(strstr(r.err, "default"), "the line does not name the default: %s", r.err);
  /* Pooling (or, for POOLSHIM_DISABLE, the default: pooling on) still works. */
  char **ids = g_strsplit(g_strstrip(r.out), "\n", -1);
  cr_assert_eq(g_strv_length(ids), 3, "stdout: %s", r.out);
  cr_assert_str_eq(ids[0], ids[2], "the default pool did not reuse: %s", r.out);
  g_strfreev(ids);
  run_clear(&r);
}

Test(environment, an_unknown_variable_suggests_the_closest_name)
{
  const char *env[] = {"POOLSHIM_POOLSIZE", "4", NULL};
  Run r = run_probe(env, "1", NULL);
  cr_assert_eq(count_lines(r.err), 1, "stderr: %s", r.err);
  cr_assert(strstr(r.err, "POOLSHIM_POOLSIZE") && strstr(r.err, "POOLSHIM_POOL_SIZE"), "%s",
            r.err);
  run_clear(&r);
}

Test(environment, disable_passes_everything_through)
{
  const char *env[] = {"POOLSHIM_DISABLE", "1", NULL};
  Run r = run_probe(env, "3", NULL);
  char **ids = g_strsplit(g_strstrip(r.out), "\n", -1);
  cr_assert_eq(g_strv_length(ids), 3, "stdout: %s", r.out);
  cr_assert_str_neq(ids[0], ids[1]);
  cr_assert_str_neq(ids[1], ids[2]);
  g_strfreev(ids);
  cr_assert_eq(count_lines(r.err), 0, "stderr: %s", r.err);
  run_clear(&r);
}

Test(environment, debug_output_never_contains_a_password)
{
  const char *env[] = {"POOLSHIM_LOG", "debug", "POOLSHIM_MAX_LIFETIME", "1ms", NULL};
  const char *password = getenv("PS_TEST_PASSWORD");
  Run good = run_probe(env, "5", password);
  Run wrong = run_probe(env, "2", "wrong-secret-pw");
  cr_assert(strstr(good.err, "poolshim: "), "no debug output at all: %s", good.err);
  cr_assert_null(strstr(good.err, password), "password in the log: %s", good.err);
  cr_assert_null(strstr(wrong.err, "wrong-secret-pw"), "password in the log: %s", wrong.err);
  cr_assert(strstr(wrong.out, "error 1045"), "stdout: %s", wrong.out);
  run_clear(&good);
  run_clear(&wrong);
}

/* Python's MySQLdb loads the client library RTLD_LOCAL, after the program started (and
 * here after it already asked the shim for its counters): pooling still works. */
Test(environment, an_interpreter_that_loads_the_driver_late_is_pooled)
{
  const char *lib = getenv("PST_LIB");
  cr_assert(lib, "PST_LIB not set: run through meson test");
  const char *script =
    "import ctypes, os\n"
    "buf = ctypes.create_string_buffer(256)\n"
    "assert ctypes.CDLL(None).poolshim_stats(buf, 256) == 0\n"
    "import MySQLdb\n"
    "ids = set()\n"
    "for i in range(20):\n"
    "    c = MySQLdb.connect(host=os.environ['PS_TEST_HOST'], port=int(os.environ['PS_TEST_PORT']),\n"
    "                        user=os.environ['PS_TEST_USER'], passwd=os.environ['PS_TEST_PASSWORD'],\n"
    "                        db=os.environ['PS_TEST_DB'])\n"
    "    cur = c.cursor(); cur.execute('SELECT CONNECTION_ID()'); ids.add(cur.fetchone()[0])\n"
    "    c.close()\n"
    "print(len(ids))\n";
  char **env = g_environ_setenv(g_get_environ(), "LD_PRELOAD", lib, TRUE);
  env = g_environ_setenv(env, "POOLSHIM_POOL_SIZE", "1", TRUE); /* as in run_probe */
  const char *argv[] = {"/usr/bin/python3", "-c", script, NULL};
  char *out = NULL, *err = NULL;
  int status = 0;
  cr_assert(g_spawn_sync(NULL, (char **)argv, env, G_SPAWN_DEFAULT, NULL, NULL, &out, &err,
                         &status, NULL));
  g_strfreev(env);
  cr_assert_eq(status, 0, "python failed: %s", err);
  cr_assert_str_eq(g_strstrip(out), "1", "20 connects used %s server threads", out);
  g_free(out);
  g_free(err);
}
