/* poolshim-stat.c: the operator's SHOW POOLS, read from the Prometheus text files the library
 * writes (POOLSHIM_STATS_FILE). Reads files and /proc only, never talks to a pooled process or a
 * server; a bad file or line is one warning on stderr, never an abort. */
#include "ps-version.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <locale.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PS_STAT_ENV "POOLSHIM_STATS_FILE"
#define PS_STAT_DEFAULT_DIR "/run/poolshim"
#define PS_STAT_HINT PS_STAT_ENV "=/run/poolshim/%n-%p.prom"
/* Stands for %n (the sanitized program name) in an expanded pattern: a byte no path holds. */
#define PS_STAT_ANY '\001'

static const char *const reasons[] = {"lifetime",     "idle_timeout", "dead",    "error",
                                      "reset_failed", "over_limit",   "shutdown", "revoked"};
#define PS_N_REASONS G_N_ELEMENTS(reasons)
static const char *const bucket_le[] = {"0.0001", "0.001", "0.01", "0.1", "1", "10", "+Inf"};
static const double bucket_bound[] = {1e-4, 1e-3, 1e-2, 0.1, 1, 10, INFINITY};
static const char *const bucket_label[] = {"<=100us", "<=1ms", "<=10ms", "<=100ms",
                                           "<=1s",    "<=10s", ">10s"};
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
static const char *const states[] = {"lent", "idle", "opening"}; /* from PS_LENT on */
/* The other metrics we read, by how they are filed (ps_stat_apply). */
static const char *const other_metrics[] = {"unpooled_total", "connections", "closed_total",
                                            "wait_seconds_bucket", "wait_seconds_sum",
                                            "returns_total", "grain_takes_total",
                                            "grain_reborrows_total", "grain_pins_total"};
enum { PS_M_UNPOOLED, PS_M_CONN, PS_M_CLOSED, PS_M_BUCKET, PS_M_SUM, PS_M_RETURNS,
       PS_M_TAKES, PS_M_REBORROWS, PS_M_PINS };
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

/* One sample line: labels as name, value, name, value... (unescaped). */
typedef struct {
  char *name;
  GPtrArray *labels;
  double value;
  guint64 count;
  gboolean count_ok; /* the value is a non-negative integer: fit for a counter or gauge */
} PsSample;

static gboolean opt_json;
static gboolean opt_version;
static double opt_watch; /* seconds between screens; 0: print once */

static guint warnings; /* lines on stderr: after a specific one, the generic one is noise */

static void ps_stat_warn(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

static char *ps_stat_printable(const char *s);

/* Messages name files and processes others may have named: escaped like table cells. */
static void
ps_stat_warn(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *text = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_autofree char *shown = ps_stat_printable(text);
  fprintf(stderr, "poolshim-stat: %s\n", shown);
  warnings++;
}

static void
ps_stat_pool_free(gpointer data)
{
  PsStatPool *pool = data;
  g_free(pool->name);
  g_free(pool);
}

static void
ps_stat_proc_free(gpointer data)
{
  PsStatProc *proc = data;
  g_free(proc->file);
  g_free(proc->program);
  g_free(proc->version);
  g_hash_table_destroy(proc->by_name);
  g_ptr_array_free(proc->pools, TRUE);
  g_free(proc);
}

static const char *
ps_stat_skip_ws(const char *p)
{
  while (*p == ' ' || *p == '\t')
    p++;
  return p;
}

static gboolean
ps_stat_is_name_char(char c, gboolean first)
{
  return g_ascii_isalpha(c) || c == '_' || c == ':' || (!first && g_ascii_isdigit(c));
}

/* Parses `name{label="value",...} value [timestamp]` into *s. Returns NULL, or what is wrong. */
static const char *
ps_stat_parse_sample(const char *line, PsSample *s)
{
  const char *p = ps_stat_skip_ws(line), *start = p;
  if (!ps_stat_is_name_char(*p, TRUE))
    return "expected a metric name";
  while (ps_stat_is_name_char(*p, FALSE))
    p++;
  s->name = g_strndup(start, (gsize)(p - start));
  if (*p == '{') {
    p++;
    for (;;) {
      p = ps_stat_skip_ws(p);
      if (*p == '}') {
        p++;
        break;
      }
      start = p;
      if (!ps_stat_is_name_char(*p, TRUE) || *p == ':')
        return "expected a label name";
      while (ps_stat_is_name_char(*p, FALSE) && *p != ':')
        p++;
      g_ptr_array_add(s->labels, g_strndup(start, (gsize)(p - start)));
      p = ps_stat_skip_ws(p);
      if (*p != '=')
        return "expected '=' after a label name";
      p = ps_stat_skip_ws(p + 1);
      if (*p != '"')
        return "expected '\"' to open a label value";
      GString *value = g_string_new(NULL);
      for (p++; *p != '"'; p++) {
        if (*p == '\\' && (p[1] == '\\' || p[1] == '"' || p[1] == 'n')) {
          p++;
          g_string_append_c(value, *p == 'n' ? '\n' : *p);
        } else if (*p == '\\' || *p == '\0') {
          g_string_free(value, TRUE);
          return *p ? "bad escape in a label value" : "unterminated label value";
        } else {
          g_string_append_c(value, *p);
        }
      }
      g_ptr_array_add(s->labels, g_string_free(value, FALSE));
      p = ps_stat_skip_ws(p + 1);
      if (*p == ',')
        p++;
      else if (*p != '}')
        return "expected ',' or '}' after a label";
    }
  }
  if (*p != ' ' && *p != '\t')
    return *p ? "unexpected character after the metric name" : "missing value";
  p = ps_stat_skip_ws(p);
  start = p;
  while (*p && *p != ' ' && *p != '\t')
    p++;
  g_autofree char *text = g_strndup(start, (gsize)(p - start));
  char *end = NULL;
  s->value = g_ascii_strtod(text, &end);
  if (!*text || *end || !isfinite(s->value))
    return *text ? "value is not a finite number" : "missing value";
  s->count_ok = g_ascii_string_to_unsigned(text, 10, 0, G_MAXUINT64, &s->count, NULL);
  if (!s->count_ok && s->value >= 0 && s->value < 1e19 && s->value == (double)(guint64)s->value) {
    s->count = (guint64)s->value; /* "10.0" or "1e3" */
    s->count_ok = TRUE;
  }
  p = ps_stat_skip_ws(p);
  if (*p == '-') /* an optional timestamp in milliseconds, which we do not need */
    p++;
  while (g_ascii_isdigit(*p))
    p++;
  return *ps_stat_skip_ws(p) ? "unexpected text after the value" : NULL;
}

static const char *
ps_stat_label(const PsSample *s, const char *name)
{
  for (guint i = 0; i + 1 < s->labels->len; i += 2)
    if (strcmp(g_ptr_array_index(s->labels, i), name) == 0)
      return g_ptr_array_index(s->labels, i + 1);
  return NULL;
}

static PsStatPool *
ps_stat_pool_get(PsStatProc *proc, const char *name)
{
  PsStatPool *pool = g_hash_table_lookup(proc->by_name, name);
  if (!pool) {
    pool = g_new0(PsStatPool, 1);
    pool->name = g_strdup(name);
    g_ptr_array_add(proc->pools, pool);
    g_hash_table_insert(proc->by_name, pool->name, pool);
  }
  return pool;
}

static int
ps_stat_index(const char *const *names, gsize n, const char *name)
{
  for (gsize i = 0; name && i < n; i++)
    if (strcmp(names[i], name) == 0)
      return (int)i;
  return -1;
}

/* Files the sample into proc. Returns NULL, or what is wrong; unknown metrics are not wrong
 * (a newer library may write more), and unknown states, reasons and buckets are skipped. */
static const char *
ps_stat_apply(PsStatProc *proc, const PsSample *s)
{
  if (!g_str_has_prefix(s->name, "poolshim_"))
    return NULL;
  const char *name = s->name + strlen("poolshim_");
  if (strcmp(name, "info") == 0) {
    const char *pid = ps_stat_label(s, "pid");
    guint64 v;
    if (pid && !g_ascii_string_to_unsigned(pid, 10, 1, G_MAXINT32, &v, NULL))
      return "poolshim_info has a pid label that is not a process id";
    proc->pid = pid ? (gint64)v : 0;
    g_free(proc->program);
    proc->program = g_strdup(ps_stat_label(s, "program"));
    g_free(proc->version);
    proc->version = g_strdup(ps_stat_label(s, "version"));
    return NULL;
  }
  if (strcmp(name, "written_time_seconds") == 0) {
    proc->written = s->value;
    return NULL;
  }
  int slot = -1, kind = -1, i;
  for (i = 0; i < PS_CLOSED; i++)
    if (strcmp(name, nums[i].metric) == 0)
      slot = i;
  if (slot < 0 && (kind = ps_stat_index(other_metrics, G_N_ELEMENTS(other_metrics), name)) < 0)
    return NULL;
  if (kind != PS_M_SUM && !s->count_ok)
    return "value is not a non-negative integer";
  if (kind == PS_M_UNPOOLED) {
    proc->unpooled = s->count;
    return NULL;
  }
  if (kind == PS_M_RETURNS) {
    int plan = ps_stat_index(plans, PS_N_PLANS, ps_stat_label(s, "plan"));
    if (plan >= 0)
      proc->returns[plan] = s->count;
    return NULL;
  }
  const char *pool_name = ps_stat_label(s, "pool");
  if (!pool_name)
    return "pool metric without a pool label";
  PsStatPool *pool = ps_stat_pool_get(proc, pool_name);
  if (kind == PS_M_TAKES || kind == PS_M_REBORROWS || kind == PS_M_PINS) {
    int pin = kind == PS_M_PINS ? ps_stat_index(pins, PS_N_PINS, ps_stat_label(s, "reason")) : 0;
    pool->grain = TRUE;
    if (kind == PS_M_TAKES)
      pool->takes = s->count;
    else if (kind == PS_M_REBORROWS)
      pool->reborrows = s->count;
    else if (pin >= 0)
      pool->pinned[pin] = s->count;
    return NULL;
  }
  if (kind == PS_M_SUM)
    pool->wait_sum = s->value;
  else if (kind == PS_M_CONN &&
           (i = ps_stat_index(states, G_N_ELEMENTS(states), ps_stat_label(s, "state"))) >= 0)
    slot = PS_LENT + i;
  else if (kind == PS_M_CLOSED &&
           (i = ps_stat_index(reasons, PS_N_REASONS, ps_stat_label(s, "reason"))) >= 0)
    slot = PS_CLOSED + i;
  else if (kind == PS_M_BUCKET && ps_stat_label(s, "le")) {
    const char *le = ps_stat_label(s, "le");
    char *end = NULL;
    double bound = g_ascii_strtod(le, &end); /* "1", "1.0" and "1e0" are one bucket */
    for (gsize b = 0; *le && !*end && b < PS_N_BUCKETS; b++)
      if (bound == bucket_bound[b])
        slot = PS_BUCKET + (int)b;
  }
  if (slot >= 0)
    pool->n[slot] = s->count;
  return NULL;
}

/* Reads one file. Returns NULL (after saying why on stderr) when it holds no poolshim sample,
 * or when want_pid is set and the file belongs to another process. */
static PsStatProc *
ps_stat_read_file(const char *path, gint64 want_pid)
{
  /* Non-blocking, and only a regular file: a FIFO or a device (planted in a shared
   * directory, or given by mistake) must not hang the program or make it read forever. */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    ps_stat_warn("%s: %s", path, g_strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ps_stat_warn("%s: not a regular file, skipped", path);
    close(fd);
    return NULL;
  }
  FILE *f = fdopen(fd, "r");
  if (!f) {
    ps_stat_warn("%s: %s", path, g_strerror(errno));
    close(fd);
    return NULL;
  }
  PsStatProc *proc = g_new0(PsStatProc, 1);
  proc->file = g_strdup(path);
  proc->pools = g_ptr_array_new_with_free_func(ps_stat_pool_free);
  proc->by_name = g_hash_table_new(g_str_hash, g_str_equal);
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  guint lineno = 0, good = 0;
  while ((len = getline(&line, &cap, f)) >= 0) {
    lineno++;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
      line[--len] = '\0';
    const char *p = ps_stat_skip_ws(line);
    if (*p == '#' || (*p == '\0' && (size_t)len == strlen(line)))
      continue;
    PsSample s = {.labels = g_ptr_array_new_with_free_func(g_free)};
    const char *what = (size_t)len != strlen(line) ? "NUL byte in the line" : NULL;
    if (!what)
      what = ps_stat_parse_sample(line, &s);
    if (!what)
      what = ps_stat_apply(proc, &s);
    if (what)
      ps_stat_warn("%s: line %u: %s", path, lineno, what);
    else
      good++;
    g_free(s.name);
    g_ptr_array_free(s.labels, TRUE);
  }
  if (ferror(f))
    ps_stat_warn("%s: line %u: %s", path, lineno + 1, g_strerror(errno));
  free(line);
  fclose(f);
  if (good == 0 || (want_pid && proc->pid != want_pid)) {
    if (good == 0)
      ps_stat_warn("%s: no poolshim samples, skipped", path);
    ps_stat_proc_free(proc);
    return NULL;
  }
  return proc;
}

static gint
ps_stat_cmp_str(gconstpointer a, gconstpointer b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Does name match pat, where PS_STAT_ANY matches any run of characters? */
static gboolean
ps_stat_match(const char *pat, const char *name)
{
  if (*pat == PS_STAT_ANY) {
    for (;; name++) {
      if (ps_stat_match(pat + 1, name))
        return TRUE;
      if (!*name)
        return FALSE;
    }
  }
  return *pat == *name && (!*pat || ps_stat_match(pat + 1, name + 1));
}

/* Adds every file of dir whose name matches pat (or ends in .prom when pat is NULL), sorted.
 * Dot files are skipped: a writer's temporary file is not a process. Returns the number read. */
static guint
ps_stat_add_dir(GPtrArray *procs, const char *dir, const char *pat, gint64 want_pid, gboolean quiet)
{
  DIR *d = opendir(dir); /* not g_dir_open: its GError loses errno for our one-line message */
  if (!d) {
    if (!quiet)
      ps_stat_warn("%s: %s", dir, g_strerror(errno));
    return 0;
  }
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  const struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.' &&
        (pat ? ps_stat_match(pat, e->d_name) : g_str_has_suffix(e->d_name, ".prom")))
      g_ptr_array_add(names, g_build_filename(dir, e->d_name, NULL));
  closedir(d);
  g_ptr_array_sort(names, ps_stat_cmp_str);
  guint added = 0;
  for (guint i = 0; i < names->len; i++) {
    PsStatProc *proc = ps_stat_read_file(g_ptr_array_index(names, i), want_pid);
    if (proc) {
      g_ptr_array_add(procs, proc);
      added++;
    }
  }
  g_ptr_array_free(names, TRUE);
  return added;
}

/* The stats file of a running process, from the POOLSHIM_STATS_FILE in its environment. */
static void
ps_stat_add_pid(GPtrArray *procs, const char *pid)
{
  g_autofree char *env_path = g_strdup_printf("/proc/%s/environ", pid);
  g_autofree char *env = NULL;
  gsize len = 0;
  GError *err = NULL;
  if (!g_file_get_contents(env_path, &env, &len, &err)) {
    if (g_error_matches(err, G_FILE_ERROR, G_FILE_ERROR_NOENT))
      ps_stat_warn("%s: no such file, directory or process", pid);
    else
      ps_stat_warn("process %s: %s", pid, err->message);
    g_error_free(err);
    return;
  }
  const char *pattern = NULL;
  for (const char *p = env; p < env + len; p += strlen(p) + 1) /* NUL-separated */
    if (g_str_has_prefix(p, PS_STAT_ENV "="))
      pattern = p + strlen(PS_STAT_ENV "=");
  if (!pattern || !*pattern) {
    ps_stat_warn("process %s has no %s in its environment; start it with %s "
                 "to get its stats file",
                 pid, PS_STAT_ENV, PS_STAT_HINT);
    return;
  }
  /* The library's expansion: %p the pid, %n the program name, %% a percent sign. */
  GString *path = g_string_new(NULL);
  if (pattern[0] != '/') /* relative to the process's directory, not ours */
    g_string_printf(path, "/proc/%s/cwd/", pid);
  gboolean any = FALSE;
  for (const char *p = pattern; *p; p++) {
    if (*p == '%' && p[1] == 'p')
      g_string_append(path, pid);
    else if (*p == '%' && p[1] == 'n')
      g_string_append_c(path, PS_STAT_ANY);
    else if (*p == '%' && p[1] == '%')
      g_string_append_c(path, '%');
    else {
      g_string_append_c(path, *p);
      continue;
    }
    any |= p[1] == 'n';
    p++;
  }
  g_autofree char *dir = g_path_get_dirname(path->str);
  g_autofree char *base = g_path_get_basename(path->str);
  if (!any) {
    PsStatProc *proc = ps_stat_read_file(path->str, 0);
    if (proc)
      g_ptr_array_add(procs, proc);
  } else if (strchr(dir, PS_STAT_ANY)) {
    ps_stat_warn("process %s: %s=%s: %%n in a directory is not supported", pid, PS_STAT_ENV,
                 pattern);
  } else if (ps_stat_add_dir(procs, dir, base, g_ascii_strtoll(pid, NULL, 10), FALSE) == 0) {
    g_strdelimit(path->str, (char[]){PS_STAT_ANY, '\0'}, '*');
    ps_stat_warn("process %s: no stats file matches %s", pid, path->str);
  }
  g_string_free(path, TRUE);
}

/* Reads what the arguments name. *looked says where, for the "nothing found" line. */
static GPtrArray *
ps_stat_collect(char **args, char **looked)
{
  GPtrArray *procs = g_ptr_array_new_with_free_func(ps_stat_proc_free);
  if (!args || !args[0]) {
    const char *pattern = g_getenv(PS_STAT_ENV);
    char *dir = pattern && *pattern ? g_path_get_dirname(pattern) : g_strdup(PS_STAT_DEFAULT_DIR);
    ps_stat_add_dir(procs, dir, NULL, 0, TRUE);
    *looked = dir;
    return procs;
  }
  for (char **a = args; *a; a++) {
    if (g_file_test(*a, G_FILE_TEST_IS_DIR))
      ps_stat_add_dir(procs, *a, NULL, 0, FALSE);
    else if (g_file_test(*a, G_FILE_TEST_EXISTS) || (*a)[strspn(*a, "0123456789")] != '\0' ||
             !**a) {
      PsStatProc *proc = ps_stat_read_file(*a, 0);
      if (proc)
        g_ptr_array_add(procs, proc);
    } else
      ps_stat_add_pid(procs, *a);
  }
  *looked = g_strjoinv(", ", args);
  return procs;
}

static gboolean
ps_stat_alive(const PsStatProc *proc)
{
  g_autofree char *dir = g_strdup_printf("/proc/%" G_GINT64_FORMAT, proc->pid);
  return g_file_test(dir, G_FILE_TEST_EXISTS);
}

static void
ps_stat_pool_add(PsStatPool *sum, const PsStatPool *pool)
{
  for (gsize i = 0; i < PS_N_NUMS; i++)
    sum->n[i] += pool->n[i];
  sum->wait_sum += pool->wait_sum;
}

/* The upper bound of the first bucket holding 99% of the waits. */
static const char *
ps_stat_p99(const PsStatPool *pool)
{
  for (gsize i = 0; pool->n[PS_WAIT_COUNT] > 0 && i < PS_N_BUCKETS; i++)
    if (pool->n[PS_BUCKET + i] * 100 >= pool->n[PS_WAIT_COUNT] * 99) /* integers: no 0.99 */
      return bucket_label[i];
  return "-";
}

static char *
ps_stat_age(double written, double now)
{
  if (written <= 0)
    return g_strdup("-");
  gint64 age = now > written ? (gint64)(now - written) : 0;
  if (age < 60)
    return g_strdup_printf("%" G_GINT64_FORMAT "s", age);
  if (age < 3600)
    return g_strdup_printf("%" G_GINT64_FORMAT "m", age / 60);
  if (age < 86400)
    return g_strdup_printf("%" G_GINT64_FORMAT "h", age / 3600);
  return g_strdup_printf("%" G_GINT64_FORMAT "d", age / 86400);
}

/* Names are shown as they are (UTF-8 too), except control characters (C0, DEL and the C1
 * range U+0080..U+009F, which some terminals obey as escape sequences) and bytes that are
 * not UTF-8: they would break the columns and could drive the operator's terminal. */
static char *
ps_stat_printable(const char *s)
{
  GString *out = g_string_new(NULL);
  for (const char *p = s; *p;) {
    guchar c = (guchar)*p;
    if (c == '\n') {
      g_string_append(out, "\\n");
      p++;
    } else if (c < 0x20 || c == 0x7f) {
      g_string_append_printf(out, "\\x%02x", c);
      p++;
    } else if (c < 0x80) {
      g_string_append_c(out, (char)c);
      p++;
    } else {
      gunichar u = g_utf8_get_char_validated(p, -1);
      if (u == (gunichar)-1 || u == (gunichar)-2 || (u >= 0x80 && u <= 0x9f)) {
        g_string_append_printf(out, "\\x%02x", c); /* one byte at a time */
        p++;
      } else {
        const char *next = g_utf8_next_char(p);
        g_string_append_len(out, p, next - p);
        p = next;
      }
    }
  }
  return g_string_free(out, FALSE);
}

enum { PS_COL_POOL = 2, PS_COL_SIZE = 3, PS_N_COLS = 16 };
/* NULL-terminated for g_strdupv */
static const char *const headers[PS_N_COLS + 1] = {
    "PID",  "PROGRAM", "POOL",   "SIZE",  "LENT",     "IDLE",     "OPENING", "WAITING", "BORROWED",
    "HIT%", "OPENED",  "CLOSED", "WAITS", "TIMEOUTS", "WAIT_P99", "AGE",     NULL};

static char *
ps_stat_u64(guint64 v)
{
  return g_strdup_printf("%" G_GUINT64_FORMAT, v);
}

static char **
ps_stat_row(const PsStatProc *proc, const char *pool_name, const PsStatPool *pool, double now)
{
  char **row = g_new0(char *, PS_N_COLS + 1);
  if (!proc->pid)
    row[0] = g_strdup("-");
  else
    row[0] = g_strdup_printf("%" G_GINT64_FORMAT "%s", proc->pid,
                             ps_stat_alive(proc) ? "" : " (exited)");
  row[1] = ps_stat_printable(proc->program ? proc->program : "-");
  row[PS_COL_POOL] = ps_stat_printable(pool_name);
  if (!pool) {
    for (int i = PS_COL_SIZE; i < PS_N_COLS - 1; i++)
      row[i] = g_strdup("-");
  } else {
    const guint64 *n = pool->n;
    for (int i = 0; i <= PS_BORROWED; i++)
      row[PS_COL_SIZE + i] = ps_stat_u64(n[i]);
    row[9] =
        n[PS_BORROWED]
            ? g_strdup_printf("%.1f", 100.0 * (double)n[PS_SERVED_IDLE] / (double)n[PS_BORROWED])
            : g_strdup("-");
    guint64 closed = 0;
    for (gsize i = 0; i < PS_N_REASONS; i++)
      closed += n[PS_CLOSED + i];
    row[10] = ps_stat_u64(n[PS_OPENED]);
    row[11] = ps_stat_u64(closed);
    row[12] = ps_stat_u64(n[PS_WAITS]);
    row[13] = ps_stat_u64(n[PS_WAIT_TIMEOUTS]);
    row[14] = g_strdup(ps_stat_p99(pool));
  }
  row[15] = ps_stat_age(proc->written, now);
  return row;
}

static glong
ps_stat_width(const char *s)
{
  return g_utf8_validate(s, -1, NULL) ? g_utf8_strlen(s, -1) : (glong)strlen(s);
}

/* POOLSHIM_GRAIN=transaction: one line per pool under the table. */
static void
ps_stat_grain_line(GString *out, const PsStatProc *proc, const PsStatPool *pool)
{
  g_autofree char *program = ps_stat_printable(proc->program ? proc->program : "-");
  g_autofree char *name = ps_stat_printable(pool->name);
  g_string_append_printf(out,
                         "transaction grain, pid %" G_GINT64_FORMAT " (%s), pool %s: takes %"
                         G_GUINT64_FORMAT ", re-borrows %" G_GUINT64_FORMAT ", pins:",
                         proc->pid, program, name, pool->takes, pool->reborrows);
  for (guint i = 0; i < PS_N_PINS; i++)
    g_string_append_printf(out, "%s %s %" G_GUINT64_FORMAT, i ? "," : "", pins[i],
                           pool->pinned[i]);
  g_string_append_c(out, '\n');
}

static void
ps_stat_print_table(GPtrArray *procs, double now)
{
  GPtrArray *rows = g_ptr_array_new_with_free_func((GDestroyNotify)g_strfreev);
  g_ptr_array_add(rows, g_strdupv((char **)headers));
  GString *unpooled = g_string_new(NULL);
  GString *returns = g_string_new(NULL);
  GString *grain = g_string_new(NULL);
  for (guint p = 0; p < procs->len; p++) {
    const PsStatProc *proc = g_ptr_array_index(procs, p);
    guint64 any = 0;
    for (guint i = 0; i < PS_N_PLANS; i++)
      any += proc->returns[i];
    if (any) {
      g_string_append_printf(returns, "returns by cost, pid %" G_GINT64_FORMAT " (%s):",
                             proc->pid, proc->program ? proc->program : "-");
      for (guint i = 0; i < PS_N_PLANS; i++)
        g_string_append_printf(returns, "%s %s %" G_GUINT64_FORMAT, i ? "," : "", plans[i],
                               proc->returns[i]);
      g_string_append_c(returns, '\n');
    }
    PsStatPool total = {0};
    for (guint i = 0; i < proc->pools->len; i++) {
      const PsStatPool *pool = g_ptr_array_index(proc->pools, i);
      g_ptr_array_add(rows, ps_stat_row(proc, pool->name, pool, now));
      ps_stat_pool_add(&total, pool);
      if (pool->grain)
        ps_stat_grain_line(grain, proc, pool);
    }
    if (proc->pools->len == 0)
      g_ptr_array_add(rows, ps_stat_row(proc, "-", NULL, now));
    else if (proc->pools->len > 1)
      g_ptr_array_add(rows, ps_stat_row(proc, "(total)", &total, now));
    if (proc->unpooled) {
      g_autofree char *program = ps_stat_printable(proc->program ? proc->program : "-");
      g_string_append_printf(unpooled, "%s pid %" G_GINT64_FORMAT " (%s): %" G_GUINT64_FORMAT,
                             unpooled->len ? "," : "", proc->pid, program, proc->unpooled);
    }
  }
  glong width[PS_N_COLS] = {0};
  for (guint r = 0; r < rows->len; r++)
    for (int c = 0; c < PS_N_COLS; c++)
      width[c] = MAX(width[c], ps_stat_width(((char **)g_ptr_array_index(rows, r))[c]));
  for (guint r = 0; r < rows->len; r++) {
    char **row = g_ptr_array_index(rows, r);
    for (int c = 0; c < PS_N_COLS; c++) {
      int pad = (int)(width[c] - ps_stat_width(row[c]));
      if (c <= PS_COL_POOL) /* text left, numbers right: no trailing blanks */
        printf("%s%*s", row[c], pad + 2, "");
      else
        printf("%*s%s%s", pad, "", row[c], c == PS_N_COLS - 1 ? "\n" : "  ");
    }
  }
  if (unpooled->len)
    printf("unpooled connections (bypassed the pool):%s\n", unpooled->str);
  g_string_free(unpooled, TRUE);
  fputs(returns->str, stdout);
  g_string_free(returns, TRUE);
  fputs(grain->str, stdout);
  g_string_free(grain, TRUE);
  g_ptr_array_free(rows, TRUE);
}

static void
ps_stat_json_string(GString *out, const char *s)
{
  if (!s) {
    g_string_append(out, "null");
    return;
  }
  g_autofree char *valid = g_utf8_make_valid(s, -1); /* JSON text must be UTF-8 */
  g_string_append_c(out, '"');
  for (const guchar *p = (const guchar *)valid; *p; p++) {
    if (*p == '"' || *p == '\\')
      g_string_append_printf(out, "\\%c", *p);
    else if (*p < 0x20 || *p == 0x7f)
      g_string_append_printf(out, "\\u%04x", *p);
    else
      g_string_append_c(out, (char)*p);
  }
  g_string_append_c(out, '"');
}

static void
ps_stat_json_double(GString *out, double v)
{
  char buf[G_ASCII_DTOSTR_BUF_SIZE];
  g_string_append(out, g_ascii_dtostr(buf, sizeof buf, v));
}

static void
ps_stat_json_pool(GString *out, const PsStatPool *pool)
{
  g_string_append(out, "{\"pool\":");
  ps_stat_json_string(out, pool->name);
  for (int i = 0; i < PS_CLOSED; i++) {
    if (i == PS_RESETS) {
      g_string_append(out, ",\"closed\":{");
      for (gsize r = 0; r < PS_N_REASONS; r++)
        g_string_append_printf(out, "%s\"%s\":%" G_GUINT64_FORMAT, r ? "," : "", reasons[r],
                               pool->n[PS_CLOSED + r]);
      g_string_append_c(out, '}');
    }
    if (i != PS_WAIT_COUNT)
      g_string_append_printf(out, ",\"%s\":%" G_GUINT64_FORMAT, nums[i].key, pool->n[i]);
  }
  g_string_append(out, ",\"wait_seconds\":{\"buckets\":[");
  for (gsize i = 0; i < PS_N_BUCKETS; i++)
    g_string_append_printf(out, "%s{\"le\":\"%s\",\"count\":%" G_GUINT64_FORMAT "}", i ? "," : "",
                           bucket_le[i], pool->n[PS_BUCKET + i]);
  g_string_append(out, "],\"sum\":");
  ps_stat_json_double(out, pool->wait_sum);
  g_string_append_printf(out, ",\"count\":%" G_GUINT64_FORMAT "}", pool->n[PS_WAIT_COUNT]);
  if (pool->grain) {
    g_string_append_printf(out,
                           ",\"grain\":{\"takes\":%" G_GUINT64_FORMAT ",\"reborrows\":%"
                           G_GUINT64_FORMAT ",\"pins\":{",
                           pool->takes, pool->reborrows);
    for (guint i = 0; i < PS_N_PINS; i++)
      g_string_append_printf(out, "%s\"%s\":%" G_GUINT64_FORMAT, i ? "," : "", pins[i],
                             pool->pinned[i]);
    g_string_append(out, "}}");
  }
  g_string_append_c(out, '}');
}

static void
ps_stat_print_json(GPtrArray *procs, double now)
{
  GString *out = g_string_new("{\"processes\":[");
  for (guint p = 0; p < procs->len; p++) {
    const PsStatProc *proc = g_ptr_array_index(procs, p);
    g_string_append(out, p ? ",{\"file\":" : "{\"file\":");
    ps_stat_json_string(out, proc->file);
    if (proc->pid)
      g_string_append_printf(out, ",\"pid\":%" G_GINT64_FORMAT ",\"program\":", proc->pid);
    else
      g_string_append(out, ",\"pid\":null,\"program\":");
    ps_stat_json_string(out, proc->program);
    g_string_append(out, ",\"version\":");
    ps_stat_json_string(out, proc->version);
    g_string_append_printf(out, ",\"alive\":%s,\"written_age_seconds\":",
                           !proc->pid            ? "null"
                           : ps_stat_alive(proc) ? "true"
                                                 : "false");
    if (proc->written > 0)
      ps_stat_json_double(out, (double)(gint64)(MAX(now - proc->written, 0) * 1000 + 0.5) / 1000);
    else
      g_string_append(out, "null");
    g_string_append_printf(out, ",\"unpooled\":%" G_GUINT64_FORMAT ",\"returns\":{",
                           proc->unpooled);
    for (guint i = 0; i < PS_N_PLANS; i++)
      g_string_append_printf(out, "%s\"%s\":%" G_GUINT64_FORMAT, i ? "," : "", plans[i],
                             proc->returns[i]);
    g_string_append(out, "},\"pools\":[");
    for (guint i = 0; i < proc->pools->len; i++) {
      if (i)
        g_string_append_c(out, ',');
      ps_stat_json_pool(out, g_ptr_array_index(proc->pools, i));
    }
    g_string_append(out, "]}");
  }
  g_string_append(out, "]}\n");
  fwrite(out->str, 1, out->len, stdout);
  g_string_free(out, TRUE);
}

/* One screen: collect, print. Returns whether any file was read. */
static gboolean
ps_stat_show(char **args)
{
  if (opt_watch > 0 && isatty(STDOUT_FILENO)) { /* before the warnings, not over them */
    fputs("\033[H\033[2J", stdout);
    fflush(stdout);
  }
  char *looked = NULL;
  guint before = warnings;
  GPtrArray *procs = ps_stat_collect(args, &looked);
  double now = (double)g_get_real_time() / G_USEC_PER_SEC;
  if (opt_watch > 0 && !opt_json) {
    g_autoptr(GDateTime) t = g_date_time_new_now_local();
    g_autofree char *stamp = g_date_time_format(t, "%Y-%m-%d %H:%M:%S");
    printf("poolshim-stat %s  every %gs  (Ctrl-C to quit)\n\n", stamp, opt_watch);
  }
  gboolean found = procs->len > 0;
  if (found && opt_json)
    ps_stat_print_json(procs, now);
  else if (found)
    ps_stat_print_table(procs, now);
  else if (!args[0] || warnings == before) /* else the last warning said why */
    ps_stat_warn("no stats files (*.prom) found in %s; to enable them, run the "
                 "programs that use libpoolshim with %s",
                 looked, PS_STAT_HINT);
  fflush(stdout);
  g_free(looked);
  g_ptr_array_free(procs, TRUE);
  return found;
}

/* Plain sigaction, not g_unix_signal_add: no GMainLoop and no helper thread for a sleep loop. */
static volatile sig_atomic_t stop;

static void
ps_stat_on_signal(int sig G_GNUC_UNUSED)
{
  stop = 1;
}

static gboolean
ps_stat_parse_watch(const char *name G_GNUC_UNUSED, const char *value, gpointer data G_GNUC_UNUSED,
                    GError **error)
{
  char *end = NULL;
  double v = g_ascii_strtod(value ? value : "2", &end);
  if (end == value || *end || !(v >= 0.1 && v <= 86400)) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "--watch: expected seconds between 0.1 and 86400, not \"%s\"", value);
    return FALSE;
  }
  opt_watch = v;
  return TRUE;
}

static const GOptionEntry entries[] = {
    {"json", 'j', 0, G_OPTION_ARG_NONE, &opt_json, "Print JSON instead of a table", NULL},
    {"watch", 'w', G_OPTION_FLAG_OPTIONAL_ARG, G_OPTION_ARG_CALLBACK, (gpointer)ps_stat_parse_watch,
     "Redraw every SECONDS (default 2) until interrupted", "SECONDS"},
    {"version", 'V', 0, G_OPTION_ARG_NONE, &opt_version, "Print the version and exit", NULL},
    G_OPTION_ENTRY_NULL};

int
main(int argc, char **argv)
{
  setlocale(LC_ALL, ""); /* for --help; numbers stay "99.8" whatever the locale says */
  setlocale(LC_NUMERIC, "C");
  GOptionContext *ctx = g_option_context_new("[FILE|DIR|PID]...");
  g_option_context_set_summary(
      ctx, "Show the pools of running poolshim processes, like pgbouncer's SHOW POOLS.");
  g_option_context_set_description(
      ctx, "Each process with libpoolshim and " PS_STAT_ENV " set writes a Prometheus text file.\n"
           "FILE is one such file, DIR every *.prom file in it, PID the file of that running\n"
           "process (found through " PS_STAT_ENV " in /proc/PID/environ). With no argument: the\n"
           "directory of $" PS_STAT_ENV ", else " PS_STAT_DEFAULT_DIR ".\n\n"
           "HIT% is the share of borrows served by an idle connection, CLOSED sums all reasons,\n"
           "WAIT_P99 the histogram bucket holding 99% of the waits for a connection, AGE the time\n"
           "since the file was written. \"(exited)\": no such process any more (killed, its file\n"
           "left behind). Under POOLSHIM_GRAIN=transaction one line per pool under the table\n"
           "gives its takes, re-borrows and pins by reason. Exit status: 0 when a file was read,\n"
           "1 when none, 2 for a usage error.");
  g_option_context_add_main_entries(ctx, entries, NULL);
  /* GLib would give an optional argument the next word ("--watch 1234" would read a pid as the
   * interval): a bare --watch is made explicit first. */
  for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
    if (strcmp(argv[i], "--watch") == 0 || strcmp(argv[i], "-w") == 0)
      argv[i] = (char *)"--watch=2";
  GError *err = NULL;
  if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
    ps_stat_warn("%s (try --help)", err->message);
    g_error_free(err);
    g_option_context_free(ctx);
    return 2;
  }
  g_option_context_free(ctx);
  if (opt_version) {
    printf("poolshim-stat %s\n", POOLSHIM_VERSION);
    return 0;
  }
  char **args = argc > 1 && strcmp(argv[1], "--") == 0 ? argv + 2 : argv + 1;
  if (opt_watch <= 0)
    return ps_stat_show(args) ? 0 : 1;

  struct sigaction sa = {.sa_handler = ps_stat_on_signal}; /* no SA_RESTART: end the sleep */
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  while (!stop) {
    ps_stat_show(args);
    struct timespec left = {(time_t)opt_watch, (long)((opt_watch - (time_t)opt_watch) * 1e9)};
    while (!stop && nanosleep(&left, &left) != 0 && errno == EINTR)
      ;
  }
  return 0;
}
