/* log.c: formats and writes every message the library prints, to stderr or POOLSHIM_LOG_FILE.
 * Owns the level and the destination; must never go through GLib's g_log machinery (a host
 * may have replaced its handlers). */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

gint ps_log_level_now = PS_LOG_WARN; /* log.h reads it inline */
static volatile gint log_fd = STDERR_FILENO;

/* While the configuration is read, lines wait here: they must reach the file
 * POOLSHIM_LOG_FILE names, which is only known at the end. */
static GMutex held_lock;
static GString *held;

static const char *const level_names[] = {"error", "warning", "info", "debug"};

void
ps_log_set_level(PsLogLevel level)
{
  g_atomic_int_set(&ps_log_level_now, (gint)level);
}

gboolean
ps_log_open_file(const char *path)
{
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
  if (fd < 0)
    return FALSE;
  int old = g_atomic_int_get(&log_fd);
  g_atomic_int_set(&log_fd, fd);
  if (old != STDERR_FILENO)
    close(old);
  return TRUE;
}

void
ps_log_hold(void)
{
  g_mutex_lock(&held_lock);
  if (!held)
    g_atomic_pointer_set(&held, g_string_new(NULL));
  g_mutex_unlock(&held_lock);
}

/* In a file, shared by processes and read later, each line also says when and who:
 * "2026-11-25T16:10:00.123Z poolshim[1234]: warning: ..."; on stderr just "poolshim: ". */
static int
format_prefix(char *buf, size_t len, gboolean to_file)
{
  if (!to_file)
    return snprintf(buf, len, "poolshim: ");
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  char when[32];
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  return snprintf(buf, len, "%s.%03ldZ poolshim[%d]: ", when, ts.tv_nsec / 1000000L,
                  (int)getpid());
}

void
ps_log_release(void)
{
  g_mutex_lock(&held_lock);
  GString *lines = held;
  g_atomic_pointer_set(&held, NULL);
  g_mutex_unlock(&held_lock);
  if (!lines)
    return;
  int saved = errno;
  int fd = g_atomic_int_get(&log_fd);
  if (fd != STDERR_FILENO) {
    /* Held lines were formatted for stderr: give each the file's prefix. */
    GString *out = g_string_new(NULL);
    char prefix[96];
    g_auto(GStrv) each = g_strsplit(lines->str, "\n", -1);
    for (guint i = 0; each[i] && each[i][0]; i++) {
      format_prefix(prefix, sizeof prefix, TRUE);
      const char *body = g_str_has_prefix(each[i], "poolshim: ") ? each[i] + 10 : each[i];
      g_string_append_printf(out, "%s%s\n", prefix, body);
    }
    g_string_free(lines, TRUE);
    lines = out;
  }
  if (lines->len) {
    ssize_t w = write(fd, lines->str, lines->len);
    (void)w;
  }
  errno = saved;
  g_string_free(lines, TRUE);
}

gsize
ps_log_escape(char *out, gsize cap, const char *in, gsize len)
{
  static const char hex[] = "0123456789abcdef";
  gsize o = 0;
  if (!cap)
    return 0;
  for (gsize i = 0; i < len; i++) {
    guchar c = (guchar)in[i];
    char piece[4];
    gsize plen;
    if (c == '\\') {
      piece[0] = piece[1] = '\\';
      plen = 2;
    } else if (c < 0x20 || c >= 0x7f) {
      piece[0] = '\\';
      piece[1] = 'x';
      piece[2] = hex[c >> 4];
      piece[3] = hex[c & 15];
      plen = 4;
    } else {
      piece[0] = (char)c;
      plen = 1;
    }
    if (o + plen >= cap) /* never half an escape */
      break;
    memcpy(out + o, piece, plen);
    o += plen;
  }
  out[o] = '\0';
  return o;
}

void
ps_log(PsLogLevel level, const char *fmt, ...)
{
  if (!ps_log_enabled(level))
    return;
  int saved = errno; /* logging must not change what the host sees in errno */
  char line[1024], body[1024];
  int fd = g_atomic_int_get(&log_fd);
  int n = format_prefix(line, sizeof line, fd != STDERR_FILENO);
  n += snprintf(line + n, sizeof line - (size_t)n, "%s: ", level_names[level]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  /* Escaped here, once for every message: pool labels, paths and values come from the
   * program's connect arguments and the environment, and a newline or an escape sequence in
   * a database name must not forge a line or reach a terminal raw. */
  size_t len = (size_t)n + ps_log_escape(line + n, sizeof line - (size_t)n - 1, body,
                                         m < 0 ? 0 : MIN((size_t)m, sizeof body - 1));
  line[len++] = '\n';
  /* Only while the configuration is read does a line take the lock: a fork at any other
   * moment never leaves the child a held lock to block its first message on. */
  if (g_atomic_pointer_get(&held)) {
    g_mutex_lock(&held_lock);
    if (held) {
      g_string_append_len(held, line, (gssize)len);
      g_mutex_unlock(&held_lock);
      errno = saved;
      return;
    }
    g_mutex_unlock(&held_lock);
  }
  ssize_t w = write(fd, line, len);
  (void)w;
  errno = saved;
}
