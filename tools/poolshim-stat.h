/* poolshim-stat.h: what poolshim-stat-read.c (finding and parsing the stats files) and
 * poolshim-stat.c (command line, table, JSON) share, and nothing else includes: the names the
 * files use, the parsed process and pool, two functions. No I/O here. */
#pragma once
#include <glib.h>

#define PS_STAT_ENV "POOLSHIM_STATS_FILE"
#define PS_STAT_DEFAULT_DIR "/run/poolshim"
#define PS_STAT_HINT PS_STAT_ENV "=/run/poolshim/%n-%p.prom"

static const char *const reasons[] = {"lifetime",     "idle_timeout", "dead",    "error",
                                      "reset_failed", "over_limit",   "shutdown", "revoked"};
#define PS_N_REASONS G_N_ELEMENTS(reasons)
static const char *const bucket_le[] = {"0.0001", "0.001", "0.01", "0.1", "1", "10", "+Inf"};
#define PS_N_BUCKETS G_N_ELEMENTS(bucket_le)

/* Every count of a pool, in one array so that totals and JSON are loops: the plain numbers
 * (JSON key, metric name without "poolshim_"), then closes by reason, then wait buckets. */
enum { PS_SIZE, PS_LENT, PS_IDLE, PS_OPENING, PS_WAITING, PS_BORROWED, PS_SERVED_IDLE, PS_OPENED };
enum { PS_RESETS = PS_OPENED + 1, PS_WAITS, PS_WAIT_TIMEOUTS, PS_WAIT_COUNT, PS_CLOSED };
enum { PS_BUCKET = PS_CLOSED + PS_N_REASONS, PS_N_NUMS = PS_BUCKET + PS_N_BUCKETS };
/* "-": from poolshim_connections by state (no metric name holds a '-'). */
static const struct {
  const char *key, *metric;
} nums[PS_CLOSED] = {{"size", "pool_size"},
                     {"lent", "-"},
                     {"idle", "-"},
                     {"opening", "-"},
                     {"waiting", "waiting"},
                     {"borrowed", "borrowed_total"},
                     {"served_idle", "served_idle_total"},
                     {"opened", "opened_total"},
                     {"resets", "resets_total"},
                     {"waits", "waits_total"},
                     {"wait_timeouts", "wait_timeouts_total"},
                     {"count", "wait_seconds_count"}};
/* poolshim_grain_pins_total{reason=...} (POOLSHIM_GRAIN=transaction): why a handle's session
 * could not be taken after a command, as the library names them (src/stats.c). */
static const char *const pins[] = {"transaction",   "autocommit", "session", "prepared_statement",
                                   "unread_result", "warnings",   "other"};
#define PS_N_PINS G_N_ELEMENTS(pins)
/* poolshim_returns_total{plan=...}: what returns cost the server (POOLSHIM_RESET). */
static const char *const plans[] = {"nothing", "kept", "rollback", "restore", "full", "mode"};
#define PS_N_PLANS G_N_ELEMENTS(plans)

typedef struct {
  char *name;
  guint64 n[PS_N_NUMS]; /* buckets cumulative, as written */
  double wait_sum;
  /* POOLSHIM_GRAIN=transaction: takes, re-borrows, pins by reason (pins[]); shown only when
   * the file has them (`grain`). */
  gboolean grain;
  guint64 takes, reborrows, pinned[PS_N_PINS];
} PsStatPool;

typedef struct {
  char *file;
  gint64 pid; /* 0 when the file did not say */
  char *program, *version;
  double written; /* epoch seconds; 0 when the file did not say */
  guint64 unpooled;
  guint64 returns[6];  /* by plans[] */
  GPtrArray *pools;    /* PsStatPool *, in file order */
  GHashTable *by_name; /* pool name -> PsStatPool *, keys owned by the pools */
} PsStatProc;

/* poolshim-stat.c: the one place that writes a warning (escaped, counted). */
void ps_stat_warn(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* poolshim-stat-read.c: the processes whose files the arguments name, in order. */
GPtrArray *ps_stat_collect(char **args, char **looked);
