/* fuzz_config.c: libFuzzer target for the configuration parser (clang
 * -fsanitize=fuzzer,address,undefined; built by tests/meson.build only when the compiler
 * can link it, run by scripts/test for a bounded time).
 *
 * Input: records separated by NUL bytes, so a value can hold any byte a real environment
 * string can (newlines, quotes, escapes, UTF-8, nothing but NUL). The first byte of a
 * record picks its form:
 *   0x00-0xbe  a real variable, (byte % number of variables) of ps_config_describe's
 *              table, and the rest of the record is its value;
 *   0xbf       the contents of a key file, which POOLSHIM_CONFIG then names;
 *   0xc0-0xff  the rest is "NAME=VALUE" with an arbitrary NAME, used as POOLSHIM_NAME
 *              (unknown names, typos, the suggestion search); without '=' the name is
 *              present but unset, as environ can have it.
 * The last record of a name wins; unknown names also reach ps_config_closest_name through
 * the unknown-name warning. Every value also goes through ps_config_parse_uint and
 * ps_config_parse_duration, each checked against a reference implementation here, and the
 * parsed PsConfig is checked against the ranges the table documents. Any difference
 * aborts (a crash for libFuzzer). */
#include <glib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_VARS 64
#define MAX_RECORDS 256

typedef enum { KIND_OTHER, KIND_BOOL, KIND_UINT, KIND_DURATION, KIND_ENUM } Kind;

typedef struct {
  const char *name;
  Kind kind;
  guint64 lo, hi;  /* documented range: uint count, duration in microseconds */
  guint choices;   /* enum */
  gssize offset;   /* into PsConfig, -1 when this file does not know the variable */
} Var;

static Var vars[MAX_VARS];
static guint n_vars;
static int report_fd = 2; /* the real stderr, see LLVMFuzzerInitialize */

#define FAIL(...)                                                                                  \
  do {                                                                                             \
    char msg_[512];                                                                                \
    int len_ = snprintf(msg_, sizeof msg_, __VA_ARGS__);                                           \
    /* fd 2 is /dev/null (see LLVMFuzzerInitialize): write to the saved copy. */                   \
    (void)!write(report_fd, msg_, len_ > 0 ? MIN((size_t)len_, sizeof msg_ - 1) : 0);              \
    (void)!write(report_fd, "\n", 1);                                                              \
    abort();                                                                                       \
  } while (0)

/* ---- reference parsers ---------------------------------------------------------------- */

static gboolean
ref_uint(const char *s, guint64 *out)
{
  if (!*s)
    return FALSE;
  guint64 v = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9')
      return FALSE;
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, (guint64)(*s - '0'), &v))
      return FALSE;
  }
  *out = v;
  return TRUE;
}

static gboolean
ref_duration(const char *s, gint64 *out)
{
  size_t digits = strspn(s, "0123456789");
  if (digits == 0)
    return FALSE;
  const char *unit = s + digits;
  guint64 mult;
  if (!strcmp(unit, "") || !strcmp(unit, "s"))
    mult = G_USEC_PER_SEC;
  else if (!strcmp(unit, "ms"))
    mult = 1000;
  else if (!strcmp(unit, "m"))
    mult = 60 * (guint64)G_USEC_PER_SEC;
  else if (!strcmp(unit, "h"))
    mult = 3600 * (guint64)G_USEC_PER_SEC;
  else
    return FALSE;
  char *num = g_strndup(s, digits);
  guint64 n;
  gboolean ok = ref_uint(num, &n);
  g_free(num);
  guint64 us;
  if (!ok || __builtin_mul_overflow(n, mult, &us) || us > (guint64)G_MAXINT64)
    return FALSE;
  *out = (gint64)us;
  return TRUE;
}

static void
check_value_parsers(const char *s)
{
  guint64 u = 0xdeadbeef, ru = 0;
  gboolean ok = ps_config_parse_uint(s, &u), rok = ref_uint(s, &ru);
  if (ok != rok || (ok && u != ru))
    FAIL("ps_config_parse_uint(\"%.80s\") = %d/%" G_GUINT64_FORMAT ", expected %d/%" G_GUINT64_FORMAT,
         s, ok, u, rok, ru);
  if (!ok && u != 0xdeadbeef)
    FAIL("ps_config_parse_uint(\"%.80s\") failed but wrote its output", s);
  gint64 d = -42, rd = 0;
  ok = ps_config_parse_duration(s, &d);
  rok = ref_duration(s, &rd);
  if (ok != rok || (ok && d != rd))
    FAIL("ps_config_parse_duration(\"%.80s\") = %d/%" G_GINT64_FORMAT ", expected %d/%" G_GINT64_FORMAT,
         s, ok, d, rok, rd);
  if (!ok && d != -42)
    FAIL("ps_config_parse_duration(\"%.80s\") failed but wrote its output", s);
}

/* ---- the table, as ps_config_describe documents it --------------------------------------- */

static gssize
field_offset(const char *name)
{
  static const struct {
    const char *name;
    gsize offset;
  } known[] = {
    {"POOLSHIM_DISABLE", G_STRUCT_OFFSET(PsConfig, disable)},
    {"POOLSHIM_POOL_SIZE", G_STRUCT_OFFSET(PsConfig, pool_size)},
    {"POOLSHIM_MAX_CONNECTIONS", G_STRUCT_OFFSET(PsConfig, max_connections)},
    {"POOLSHIM_TIMEOUT", G_STRUCT_OFFSET(PsConfig, timeout_us)},
    {"POOLSHIM_MAX_LIFETIME", G_STRUCT_OFFSET(PsConfig, max_lifetime_us)},
    {"POOLSHIM_IDLE_TIMEOUT", G_STRUCT_OFFSET(PsConfig, idle_timeout_us)},
    {"POOLSHIM_RESET", G_STRUCT_OFFSET(PsConfig, reset)},
    {"POOLSHIM_RESET_TIMEOUT", G_STRUCT_OFFSET(PsConfig, reset_timeout_us)},
    {"POOLSHIM_LEAK_WARN", G_STRUCT_OFFSET(PsConfig, leak_warn_us)},
    {"POOLSHIM_LOG", G_STRUCT_OFFSET(PsConfig, log_level)},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(known); i++)
    if (!strcmp(name, known[i].name))
      return (gssize)known[i].offset;
  return -1;
}

/* Reads the kind and range back from the "accepted" text (config.c: describe_accepted).
 * A text this does not recognise leaves the variable unchecked, never fails. */
static void
learn(Var *v, const char *name, const char *def, const char *range)
{
  v->name = name;
  v->offset = field_offset(name);
  guint64 a, b;
  if (!strcmp(range, "0 or 1")) {
    v->kind = KIND_BOOL;
  } else if (sscanf(range, "a whole number from %" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT, &a,
                    &b) == 2) {
    v->kind = KIND_UINT;
    v->lo = a;
    v->hi = b;
  } else if (g_str_has_prefix(range, "a duration") && strstr(range, "at most ") &&
             sscanf(strstr(range, "at most ") + 8, "%" G_GUINT64_FORMAT "s", &b) == 1) {
    v->kind = KIND_DURATION;
    /* The text gives no minimum; the default is at least the minimum. */
    gint64 d;
    v->lo = 0;
    v->hi = b * G_USEC_PER_SEC;
    if (!ps_config_parse_duration(def, &d) || (guint64)d > v->hi)
      FAIL("%s: the default %s is not a duration within %s", name, def, range);
  } else if (g_str_has_prefix(range, "one of ")) {
    v->kind = KIND_ENUM;
    v->choices = 1;
    for (const char *p = range; *p; p++)
      v->choices += *p == ',';
  } else {
    v->kind = KIND_OTHER;
  }
}

static void
check_config(const PsConfig *cfg)
{
  for (guint i = 0; i < n_vars; i++) {
    const Var *v = &vars[i];
    if (v->offset < 0)
      continue;
    const char *field = (const char *)cfg + v->offset;
    switch (v->kind) {
    case KIND_BOOL: {
      gboolean b;
      memcpy(&b, field, sizeof b);
      if (b != 0 && b != 1)
        FAIL("%s parsed to %d", v->name, b);
      break;
    }
    case KIND_UINT: {
      guint u;
      memcpy(&u, field, sizeof u);
      if (u < v->lo || u > v->hi)
        FAIL("%s parsed to %u, outside %" G_GUINT64_FORMAT "..%" G_GUINT64_FORMAT, v->name, u,
             v->lo, v->hi);
      break;
    }
    case KIND_DURATION: {
      gint64 d;
      memcpy(&d, field, sizeof d);
      if (d < 0 || (guint64)d > v->hi)
        FAIL("%s parsed to %" G_GINT64_FORMAT " us, outside 0..%" G_GUINT64_FORMAT, v->name, d,
             v->hi);
      break;
    }
    case KIND_ENUM: {
      int e;
      memcpy(&e, field, sizeof e);
      if (e < 0 || (guint)e >= v->choices)
        FAIL("%s parsed to %d of %u choices", v->name, e, v->choices);
      break;
    }
    case KIND_OTHER:
      break;
    }
  }
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  /* ps_config_parse warns on stderr for every bad value, whatever POOLSHIM_LOG says (the
   * level is parsed from the input too): fd 2 must go to /dev/null. libFuzzer does that
   * itself with -close_fd_mask=2, after keeping a copy of stderr for its own output and
   * the sanitizers' reports (a plain dup2 here would silence those too), so add that flag
   * unless the command line has one; libFuzzer parses its flags after this function. This
   * file's own check failures go to a copy of stderr taken now. */
  report_fd = dup(STDERR_FILENO);
  gboolean has_mask = FALSE;
  for (int i = 1; i < *argc; i++)
    has_mask |= g_str_has_prefix((*argv)[i], "-close_fd_mask=");
  if (!has_mask) {
    char **args = g_new0(char *, (gsize)*argc + 2);
    args[0] = (*argv)[0];
    args[1] = (char *)"-close_fd_mask=2";
    memcpy(args + 2, *argv + 1, sizeof *args * (gsize)(*argc - 1));
    *argv = args; /* kept for the life of the process */
    (*argc)++;
  }
  const char *name, *def, *range, *help;
  while (n_vars < MAX_VARS && ps_config_describe(n_vars, &name, &def, &range, &help)) {
    learn(&vars[n_vars], name, def, range);
    n_vars++;
  }
  if (n_vars == 0)
    FAIL("ps_config_describe lists no variable");
  return 0;
}

/* ---- one input --------------------------------------------------------------------------- */

static char *key_file_path; /* one per fuzzing process, rewritten by each input that has one */

typedef struct {
  char *names[MAX_RECORDS];
  char *values[MAX_RECORDS]; /* NULL: present but unset */
  guint n;
} Env;

static const char *
env_lookup(const char *name, gpointer user_data)
{
  const Env *env = user_data;
  for (guint i = env->n; i-- > 0;)
    if (!strcmp(env->names[i], name))
      return env->values[i];
  return NULL;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  Env env = {0};
  const char *present[MAX_RECORDS + 1];
  guint n_present = 0;
  size_t pos = 0;
  while (pos < size && env.n < MAX_RECORDS) {
    const uint8_t *end = memchr(data + pos, 0, size - pos);
    size_t len = end ? (size_t)(end - (data + pos)) : size - pos;
    if (len > 0) {
      guint8 sel = data[pos];
      const char *rest = (const char *)data + pos + 1;
      size_t rest_len = len - 1;
      if (sel == 0xbf) {
        /* A key file: the rest of the record is its contents, POOLSHIM_CONFIG names it. */
        if (!key_file_path) {
          int fd = g_file_open_tmp("fuzz-config-XXXXXX", &key_file_path, NULL);
          if (fd < 0)
            FAIL("cannot create a temporary key file");
          close(fd);
        }
        if (!g_file_set_contents(key_file_path, rest, (gssize)rest_len, NULL))
          FAIL("cannot write %s", key_file_path);
        env.names[env.n] = g_strdup("POOLSHIM_CONFIG");
        env.values[env.n] = g_strdup(key_file_path);
      } else if (sel < 0xc0) {
        env.names[env.n] = g_strdup(vars[sel % n_vars].name);
        env.values[env.n] = g_strndup(rest, rest_len);
      } else {
        const char *eq = memchr(rest, '=', rest_len);
        size_t name_len = eq ? (size_t)(eq - rest) : rest_len;
        g_autofree char *bare = g_strndup(rest, name_len);
        env.names[env.n] = g_strconcat("POOLSHIM_", bare, NULL);
        env.values[env.n] = eq ? g_strndup(eq + 1, rest_len - name_len - 1) : NULL;
      }
      if (env.values[env.n])
        check_value_parsers(env.values[env.n]);
      /* ps_config_from_environ passes each POOLSHIM_* name present, once per entry. */
      present[n_present++] = env.names[env.n];
      env.n++;
    }
    pos += len + 1;
  }
  present[n_present] = NULL;

  /* With the names present (the unknown-name warnings and their suggestions), then
   * without: the values are a function of the variables alone, and parsing twice gives
   * the same result (ps_config_equal compares every variable and every [pool] rule). */
  PsConfig a, b;
  ps_config_parse(&a, env_lookup, &env, present);
  check_config(&a);
  ps_config_parse(&b, env_lookup, &env, NULL);
  if (!ps_config_equal(&a, &b))
    FAIL("parsing the same variables twice gave different values");
  ps_config_clear(&a);
  ps_config_clear(&b);

  for (guint i = 0; i < env.n; i++) {
    g_free(env.names[i]);
    g_free(env.values[i]);
  }
  return 0;
}
