/* stats.h: the counters as operators read them: the Prometheus text exposition format, written
 * atomically to POOLSHIM_STATS_FILE. Pure formatting and file writing: no pool logic, no
 * locks (the broker hands over a snapshot). */
#pragma once
#include <glib.h>

#include "pool.h"

/* POOLSHIM_RESET: what a return sent, in the order of PsPlan (conn.h). */
#define PS_STATS_PLANS 6
extern const char *const ps_stats_plan_names[PS_STATS_PLANS];

/* POOLSHIM_GRAIN=transaction: the `reason` label of poolshim_grain_pins_total, in the order
 * of handle.h's PsPinReason. */
extern const char *const ps_stats_pin_names[PS_GRAIN_PIN_REASONS];

typedef struct {
  const char *version;
  int pid;
  const char *program;
  gint64 start_time_us;   /* wall clock (g_get_real_time) */
  gint64 written_time_us;
  guint64 unpooled;
  guint64 returns[PS_STATS_PLANS]; /* returns by what they cost (ps_stats_plan_names) */
  guint64 python_lock_kept, python_lock_released; /* POOLSHIM_PYTHON_LOCK (gil.c) */
  gboolean grain;         /* POOLSHIM_GRAIN=transaction: the keys' grain counts are written */
  GArray *keys;           /* of PsKeySnapshot, may be NULL */
} PsStatsReport;

/* The file lists at most this many pools (the busiest); the rest are summed into one
 * pool="(other N pools)" series per metric. */
#define PS_STATS_MAX_POOLS 100

/* The whole file, in the Prometheus text exposition format 0.0.4. */
char *ps_stats_format(const PsStatsReport *report);

/* `pattern` with %p = pid, %n = program, %% = %. Anything else after % is kept as is (the
 * configuration rejects such patterns). */
char *ps_stats_expand_path(const char *pattern, int pid, const char *program);

/* basename(argv[0]) reduced to [A-Za-z0-9._-] (others become '_'): safe in a file name and
 * the same rule poolshim-stat relies on. */
char *ps_stats_program_name(const char *argv0);

/* Writes `text` to a temporary file beside `path` (O_EXCL, a random name, mode 0644), then
 * renames it over `path`: a reader (node_exporter, poolshim-stat) never sees half a file. */
gboolean ps_stats_write_file(const char *path, const char *text, GError **error);
