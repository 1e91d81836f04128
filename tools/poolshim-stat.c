/* poolshim-stat.c: the operator's SHOW POOLS: the command line, --watch, the table and the JSON
 * of the processes poolshim-stat-read.c found, and the one place that writes warnings. Never talks
 * to a pooled process or a server. */
#include "poolshim-stat.h"

#include <errno.h>
#include <locale.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ps-version.h"

/* One per bucket_le[] (poolshim-stat.h), as the WAIT_P99 column shows it. */
static const char *const bucket_label[] = {"<=100us", "<=1ms", "<=10ms", "<=100ms",
                                           "<=1s",    "<=10s", ">10s"};
G_STATIC_ASSERT(G_N_ELEMENTS(bucket_label) == PS_N_BUCKETS);

static gboolean opt_json;
static gboolean opt_version;
static double opt_watch; /* seconds between screens; 0: print once */

static guint warnings; /* lines on stderr: after a specific one, the generic one is noise */

static char *ps_stat_printable(const char *s);

/* Messages name files and processes others may have named: escaped like table cells. */
void
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
