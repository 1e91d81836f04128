/* log.h: the one place that writes messages. Prefix "poolshim:" (in a log file with time and pid), silent below the
 * configured level, one write(2) per line so lines from threads never interleave. */
#pragma once
#include <glib.h>

typedef enum {
  PS_LOG_ERROR = 0,
  PS_LOG_WARN = 1,
  PS_LOG_INFO = 2,
  PS_LOG_DEBUG = 3,
} PsLogLevel;

void ps_log_set_level(PsLogLevel level);
/* Sends messages to `path` (appended, created 0644) instead of stderr; FALSE with errno. */
gboolean ps_log_open_file(const char *path);
/* Between hold and release, lines are kept and then written to the destination chosen
 * meanwhile: the configuration's own warnings reach POOLSHIM_LOG_FILE too. */
void ps_log_hold(void);
void ps_log_release(void);
/* The configured level (ps_log_set_level): read inline, every connect and close asks. */
extern gint ps_log_level_now;
static inline gboolean
ps_log_enabled(PsLogLevel level)
{
  return (gint)level <= __atomic_load_n(&ps_log_level_now, __ATOMIC_RELAXED);
}
/* Every message is escaped with this before it is written: bytes below 0x20, 0x7f and
 * non-ASCII bytes become \xNN and a backslash becomes two, so that nothing a program or
 * user supplies (a newline in a database name, a terminal escape) can forge a line.
 * Writes at most `cap` bytes with the NUL, never half an escape; returns the length. */
gsize ps_log_escape(char *out, gsize cap, const char *in, gsize len);
void ps_log(PsLogLevel level, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

#define ps_error(...) ps_log(PS_LOG_ERROR, __VA_ARGS__)
#define ps_warn(...) ps_log(PS_LOG_WARN, __VA_ARGS__)
#define ps_info(...) ps_log(PS_LOG_INFO, __VA_ARGS__)
#define ps_debug(...)                                                                              \
  do {                                                                                             \
    if (ps_log_enabled(PS_LOG_DEBUG))                                                              \
      ps_log(PS_LOG_DEBUG, __VA_ARGS__);                                                           \
  } while (0)
