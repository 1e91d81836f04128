/* keyfile.h: the POOLSHIM_CONFIG key file as read by keyfile.c (its text, GKeyFile and the
 * line of every group and key), for config.c. */
#pragma once
#include <glib.h>

/* At most this many messages about one key file; then one line counts the rest (a file of
 * 100,000 bad keys must not become 100,000 lines inside the host's first connect). */
#define PS_KEY_FILE_WARNINGS 50
#define PS_KEY_FILE_MAX (16 * 1024 * 1024)

typedef struct {
  char *path;
  char *contents;
  GKeyFile *kf;
  /* GKeyFile keeps no line numbers: "group" and "group\nkey" -> the line of their first
   * occurrence, indexed in one pass over the text (a search per message was quadratic). */
  GHashTable *lines;
  guint warnings;
} PsKeyFile;

/* FALSE (with one warning line) when the file cannot be used: the caller goes on with the
 * environment and defaults. */
gboolean ps_key_file_load(PsKeyFile *f, const char *path);
void ps_key_file_clear(PsKeyFile *f);
/* One message about the file, "PATH:LINE: ...", up to PS_KEY_FILE_WARNINGS of them; every
 * call is counted in f->warnings. `key` NULL: the line of the group's header. */
void ps_key_file_warn(PsKeyFile *f, const char *group, const char *key, const char *fmt, ...)
  G_GNUC_PRINTF(4, 5);
char *ps_key_file_value(const PsKeyFile *f, const char *group, const char *key);
