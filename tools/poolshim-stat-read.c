/* poolshim-stat-read.c: poolshim-stat's input: finds the files a FILE, DIR or PID argument
 * names (a PID through /proc/PID/environ) and parses their Prometheus text. Reads files and /proc
 * only and prints nothing itself: a bad file or line is one ps_stat_warn, never an abort. */
#include "poolshim-stat.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Stands for %n (the sanitized program name) in an expanded pattern: a byte no path holds. */
#define PS_STAT_ANY '\001'

/* One per bucket_le[] (poolshim-stat.h), the `le` labels as numbers. */
static const double bucket_bound[] = {1e-4, 1e-3, 1e-2, 0.1, 1, 10, INFINITY};
G_STATIC_ASSERT(G_N_ELEMENTS(bucket_bound) == PS_N_BUCKETS);

static const char *const states[] = {"lent", "idle", "opening"}; /* from PS_LENT on */
/* The other metrics we read, by how they are filed (ps_stat_apply). */
static const char *const other_metrics[] = {"unpooled_total", "connections", "closed_total",
                                            "wait_seconds_bucket", "wait_seconds_sum",
                                            "returns_total", "grain_takes_total",
                                            "grain_reborrows_total", "grain_pins_total"};
enum { PS_M_UNPOOLED, PS_M_CONN, PS_M_CLOSED, PS_M_BUCKET, PS_M_SUM, PS_M_RETURNS,
       PS_M_TAKES, PS_M_REBORROWS, PS_M_PINS };

/* One sample line: labels as name, value, name, value... (unescaped). */
typedef struct {
  char *name;
  GPtrArray *labels;
  double value;
  guint64 count;
  gboolean count_ok; /* the value is a non-negative integer: fit for a counter or gauge */
} PsSample;

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
GPtrArray *
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
