/* config_common.c: ps_config_parse over a fake environment, fd 2 captured around a call
 * and a line count, for the configuration parser's unit tests (config_common.h). */
#include <criterion/criterion.h>
#include <unistd.h>

#include "config_common.h"

static const char *
table_lookup(const char *name, gpointer user_data)
{
  return g_hash_table_lookup(user_data, name);
}

void
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

void
capture_start(Capture *c)
{
  fflush(stderr);
  c->file = tmpfile();
  cr_assert_not_null(c->file);
  c->saved = dup(STDERR_FILENO);
  cr_assert_geq(c->saved, 0);
  cr_assert_geq(dup2(fileno(c->file), STDERR_FILENO), 0);
}

char *
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

guint
count_lines(const char *text)
{
  guint n = 0;
  for (const char *p = text; *p; p++)
    n += *p == '\n';
  return n;
}
