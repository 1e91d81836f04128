/* keyfile.c: reads the POOLSHIM_CONFIG key file without blocking or exhausting the host (a
 * regular file of bounded size) and names "PATH:LINE" in every message about it. Knows no
 * variable: config.c decides what the groups and keys mean. */
#include "keyfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

static void
index_lines(PsKeyFile *f)
{
  f->lines = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g_autofree char *group = NULL;
  guint number = 0;
  for (char *line = f->contents; line; ) {
    char *next = strchr(line, '\n');
    number++;
    g_autofree char *l = g_strstrip(next ? g_strndup(line, (gsize)(next - line)) : g_strdup(line));
    line = next ? next + 1 : NULL;
    char *key;
    if (l[0] == '[') {
      char *end = strrchr(l, ']');
      g_free(group);
      group = end ? g_strndup(l + 1, (gsize)(end - l - 1)) : NULL;
      key = group ? g_strdup(group) : NULL;
    } else {
      char *eq = strchr(l, '=');
      if (!group || !eq || l[0] == '#' || l[0] == ';')
        continue;
      *eq = '\0';
      key = g_strconcat(group, "\n", g_strstrip(l), NULL);
    }
    if (key && !g_hash_table_contains(f->lines, key))
      g_hash_table_insert(f->lines, key, GUINT_TO_POINTER(number));
    else
      g_free(key);
  }
}

/* The line of `key` in `group` (of the group's header when key is NULL), 0 if not found.
 * Messages name the file and line so that an operator can go straight there. */
static guint
line_of(const PsKeyFile *f, const char *group, const char *key)
{
  if (!f->lines)
    return 0;
  g_autofree char *k = key ? g_strconcat(group, "\n", key, NULL) : g_strdup(group);
  return GPOINTER_TO_UINT(g_hash_table_lookup(f->lines, k));
}

/* One message about the file, "PATH:LINE: ...", up to PS_KEY_FILE_WARNINGS of them. */
void
ps_key_file_warn(PsKeyFile *f, const char *group, const char *key, const char *fmt, ...)
{
  if (f->warnings++ >= PS_KEY_FILE_WARNINGS)
    return;
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *text = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  ps_warn("%s:%u: %s", f->path, line_of(f, group, key), text);
}

/* Reads POOLSHIM_CONFIG: a regular file of at most 16 MiB (never a FIFO or a device that
 * would block or never end the host's first connect). */
gboolean
ps_key_file_load(PsKeyFile *f, const char *path)
{
  f->path = g_strdup(path);
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  struct stat st;
  if (fd < 0) {
    ps_warn("POOLSHIM_CONFIG=%s cannot be opened (%s); using the environment and defaults",
            path, g_strerror(errno));
    return FALSE;
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > PS_KEY_FILE_MAX) {
    ps_warn("POOLSHIM_CONFIG=%s is not a regular file of at most 16 MiB; using the environment "
            "and defaults",
            path);
    close(fd);
    return FALSE;
  }
  GString *text = g_string_sized_new((gsize)st.st_size + 1);
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0 && text->len <= PS_KEY_FILE_MAX)
    g_string_append_len(text, buf, n);
  close(fd);
  f->contents = g_string_free(text, FALSE);
  f->kf = g_key_file_new();
  g_autoptr(GError) error = NULL;
  if (!g_key_file_load_from_data(f->kf, f->contents, (gsize)-1, G_KEY_FILE_NONE, &error)) {
    ps_warn("%s: not a valid key file (%s); using the environment and defaults", path,
            error->message);
    g_clear_pointer(&f->kf, g_key_file_free);
    return FALSE;
  }
  index_lines(f);
  return TRUE;
}

void
ps_key_file_clear(PsKeyFile *f)
{
  g_free(f->path);
  g_free(f->contents);
  g_clear_pointer(&f->kf, g_key_file_free);
  g_clear_pointer(&f->lines, g_hash_table_unref);
}

/* The value of `key` in `group`, trimmed, or NULL. */
char *
ps_key_file_value(const PsKeyFile *f, const char *group, const char *key)
{
  if (!f->kf)
    return NULL;
  char *value = g_key_file_get_value(f->kf, group, key, NULL);
  return value ? g_strstrip(value) : NULL;
}
