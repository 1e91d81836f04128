/* log.c: formats and writes every message the library prints. Owns the level; must
 * never allocate through GLib's g_log machinery (a host may have replaced its handlers). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static volatile gint current_level = PS_LOG_WARN;

static const char *const level_names[] = {"error", "warning", "info", "debug"};

void
ps_log_set_level(PsLogLevel level)
{
  g_atomic_int_set(&current_level, (gint)level);
}

gboolean
ps_log_enabled(PsLogLevel level)
{
  return (gint)level <= g_atomic_int_get(&current_level);
}

void
ps_log(PsLogLevel level, const char *fmt, ...)
{
  if (!ps_log_enabled(level))
    return;
  char line[1024];
  int n = snprintf(line, sizeof line, "poolshim: %s: ", level_names[level]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0 : MIN((size_t)m, sizeof line - (size_t)n - 2));
  line[len++] = '\n';
  int saved = errno; /* logging must not change what the host sees in errno */
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
  errno = saved;
}
