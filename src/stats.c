/* stats.c: formats the pool's counters in the Prometheus text exposition format and writes
 * them atomically. Knows the metric names (poolshim-stat and the documentation rely on them);
 * knows nothing of locks, threads or MySQL. */
#include "stats.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A label value as the format wants it: backslash, double quote and newline escaped. */
static void
append_label_value(GString *out, const char *value)
{
  for (const char *c = value; *c; c++) {
    if (*c == '\\')
      g_string_append(out, "\\\\");
    else if (*c == '"')
      g_string_append(out, "\\\"");
    else if (*c == '\n')
      g_string_append(out, "\\n");
    else
      g_string_append_c(out, *c);
  }
}

static void
header(GString *out, const char *name, const char *type, const char *help)
{
  g_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{pid="...",pool="...",extra} value. Every sample carries the pid: node_exporter's
 * textfile collector merges the files of all processes, and two series with the same labels
 * would be dropped as duplicates. */
static void
sample(GString *out, int pid, const char *name, const char *pool, const char *extra,
       guint64 value)
{
  g_string_append_printf(out, "%s{pid=\"%d\",pool=\"", name, pid);
  append_label_value(out, pool);
  g_string_append_printf(out, "\"%s%s} %" G_GUINT64_FORMAT "\n", extra ? "," : "",
                         extra ? extra : "", value);
}

static void
seconds(GString *out, gint64 us)
{
  char buf[G_ASCII_DTOSTR_BUF_SIZE];
  g_string_append(out, g_ascii_formatd(buf, sizeof buf, "%.6f", (double)us / 1e6));
}

const char *const ps_stats_plan_names[PS_STATS_PLANS] = {"nothing", "kept",  "rollback",
                                                          "restore", "full", "mode"};

const char *const ps_stats_pin_names[PS_GRAIN_PIN_REASONS] = {
  "transaction", "autocommit", "session", "prepared_statement", "unread_result", "warnings",
  "other"};

typedef guint64 (*PsField)(const PsKeySnapshot *k);

#define FIELD(fn, expr)                                                                          \
  static guint64 fn(const PsKeySnapshot *k) { return (expr); }
FIELD(f_size, k->settings.pool_size)
FIELD(f_waiting, k->waiting)
FIELD(f_borrowed, k->counts.borrowed)
FIELD(f_served_idle, k->counts.served_idle)
FIELD(f_opened, k->counts.opened)
FIELD(f_resets, k->counts.resets)
FIELD(f_waits, k->counts.waits)
FIELD(f_wait_timeouts, k->counts.wait_timeouts)
#undef FIELD

static const struct {
  const char *name, *type, *help;
  PsField field;
} per_pool[] = {
  {"poolshim_pool_size", "gauge", "Configured maximum of physical connections of the pool.",
   f_size},
  {"poolshim_waiting", "gauge", "Connects now waiting for a free connection.", f_waiting},
  {"poolshim_borrowed_total", "counter", "Connects served by the pool.", f_borrowed},
  {"poolshim_served_idle_total", "counter", "Connects that reused an idle connection.",
   f_served_idle},
  {"poolshim_opened_total", "counter", "Physical connections opened.", f_opened},
  {"poolshim_resets_total", "counter", "Sessions reset when the application closed them.",
   f_resets},
  {"poolshim_waits_total", "counter", "Connects that had to wait for a free connection.",
   f_waits},
  {"poolshim_wait_timeouts_total", "counter",
   "Waits that ended in error 1040 (POOLSHIM_TIMEOUT).", f_wait_timeouts},
};

/* Busier first: connections in use and connects waiting now, then connects served, then
 * connections open; ties keep creation order (the sort is on indices). */
static gint
busier_first(gconstpointer a, gconstpointer b, gpointer data)
{
  const GArray *keys = data;
  const PsKeySnapshot *x = &g_array_index(keys, PsKeySnapshot, *(const guint *)a);
  const PsKeySnapshot *y = &g_array_index(keys, PsKeySnapshot, *(const guint *)b);
  guint64 bx = (guint64)x->lent + x->waiting, by = (guint64)y->lent + y->waiting;
  if (bx != by)
    return bx > by ? -1 : 1;
  if (x->counts.borrowed != y->counts.borrowed)
    return x->counts.borrowed > y->counts.borrowed ? -1 : 1;
  if (x->open != y->open)
    return x->open > y->open ? -1 : 1;
  return *(const guint *)a < *(const guint *)b ? -1 : 1;
}

static void
add_into(PsKeySnapshot *sum, const PsKeySnapshot *k)
{
  sum->settings.pool_size += k->settings.pool_size;
  sum->open += k->open;
  sum->idle += k->idle;
  sum->lent += k->lent;
  sum->waiting += k->waiting;
  PsKeyCounts *c = &sum->counts;
  const PsKeyCounts *d = &k->counts;
  c->borrowed += d->borrowed;
  c->served_idle += d->served_idle;
  c->opened += d->opened;
  c->closed += d->closed;
  c->waits += d->waits;
  c->wait_timeouts += d->wait_timeouts;
  c->resets += d->resets;
  for (guint i = 0; i < PS_CLOSE_REASONS; i++)
    c->closed_by[i] += d->closed_by[i];
  for (guint i = 0; i < PS_WAIT_BUCKETS; i++)
    c->wait_buckets[i] += d->wait_buckets[i];
  c->wait_count += d->wait_count;
  c->wait_sum_us += d->wait_sum_us;
  sum->grain.takes += k->grain.takes;
  sum->grain.reborrows += k->grain.reborrows;
  for (guint i = 0; i < PS_GRAIN_PIN_REASONS; i++)
    sum->grain.pins[i] += k->grain.pins[i];
}

/* The keys the file lists: all of them up to PS_STATS_MAX_POOLS; beyond that the busiest
 * PS_STATS_MAX_POOLS (in creation order) and one "(other N pools)" entry summing the rest,
 * so that the file stays bounded whatever the program connects with. Shallow copies: the
 * labels stay the caller's, but for the sum's (freed by the caller via *other_label). */
static GArray *
bounded_keys(const GArray *keys, char **other_label)
{
  guint n = keys ? keys->len : 0;
  GArray *shown = g_array_new(FALSE, TRUE, sizeof(PsKeySnapshot));
  *other_label = NULL;
  if (n <= PS_STATS_MAX_POOLS) {
    if (n)
      g_array_append_vals(shown, keys->data, n);
    return shown;
  }
  g_autofree guint *order = g_new(guint, n);
  for (guint i = 0; i < n; i++)
    order[i] = i;
  g_qsort_with_data(order, (gint)n, sizeof *order, busier_first, (gpointer)keys);
  g_autofree gboolean *listed = g_new0(gboolean, n);
  for (guint i = 0; i < PS_STATS_MAX_POOLS; i++)
    listed[order[i]] = TRUE;
  PsKeySnapshot other = {0};
  for (guint i = 0; i < n; i++) {
    const PsKeySnapshot *k = &g_array_index(keys, PsKeySnapshot, i);
    if (listed[i])
      g_array_append_vals(shown, k, 1);
    else
      add_into(&other, k);
  }
  *other_label = g_strdup_printf("(other %u pools)", n - PS_STATS_MAX_POOLS);
  other.label = *other_label;
  g_array_append_val(shown, other);
  return shown;
}

#define KEY(i) (&g_array_index(r->keys, PsKeySnapshot, (i)))

/* POOLSHIM_GRAIN=transaction only: under the connect grain these would always be 0. */
static void
format_grain(GString *out, const PsStatsReport *r)
{
  guint n = r->keys ? r->keys->len : 0;
  header(out, "poolshim_grain_takes_total", "counter",
         "Connections taken from idle handles by a connect or command that would wait "
         "(POOLSHIM_GRAIN=transaction).");
  for (guint i = 0; i < n; i++)
    sample(out, r->pid, "poolshim_grain_takes_total", KEY(i)->label, NULL, KEY(i)->grain.takes);
  header(out, "poolshim_grain_reborrows_total", "counter",
         "Commands of handles whose connection was taken that borrowed one again and "
         "restored the session (POOLSHIM_GRAIN=transaction).");
  for (guint i = 0; i < n; i++)
    sample(out, r->pid, "poolshim_grain_reborrows_total", KEY(i)->label, NULL,
           KEY(i)->grain.reborrows);
  header(out, "poolshim_grain_pins_total", "counter",
         "Commands after which a handle's session could not be taken, by reason "
         "(POOLSHIM_GRAIN=transaction).");
  for (guint i = 0; i < n; i++)
    for (guint reason = 0; reason < PS_GRAIN_PIN_REASONS; reason++) {
      char extra[64];
      g_snprintf(extra, sizeof extra, "reason=\"%s\"", ps_stats_pin_names[reason]);
      sample(out, r->pid, "poolshim_grain_pins_total", KEY(i)->label, extra,
             KEY(i)->grain.pins[reason]);
    }
}

char *
ps_stats_format(const PsStatsReport *report)
{
  g_autofree char *other_label = NULL;
  g_autoptr(GArray) shown = bounded_keys(report->keys, &other_label);
  PsStatsReport bounded = *report;
  bounded.keys = shown;
  const PsStatsReport *r = &bounded;
  GString *out = g_string_new(NULL);
  g_autofree char *pid = g_strdup_printf("{pid=\"%d\"}", r->pid);
  header(out, "poolshim_info", "gauge", "The library version and the process it runs in.");
  g_string_append_printf(out, "poolshim_info{version=\"");
  append_label_value(out, r->version);
  g_string_append_printf(out, "\",pid=\"%d\",program=\"", r->pid);
  append_label_value(out, r->program);
  g_string_append(out, "\"} 1\n");
  header(out, "poolshim_process_start_time_seconds", "gauge",
         "When the library started in this process (Unix time).");
  g_string_append_printf(out, "poolshim_process_start_time_seconds%s ", pid);
  seconds(out, r->start_time_us);
  g_string_append_c(out, '\n');
  header(out, "poolshim_written_time_seconds", "gauge", "When this file was written (Unix time).");
  g_string_append_printf(out, "poolshim_written_time_seconds%s ", pid);
  seconds(out, r->written_time_us);
  g_string_append_c(out, '\n');
  header(out, "poolshim_unpooled_total", "counter",
         "Connects passed straight to the client library (options the pool cannot key).");
  g_string_append_printf(out, "poolshim_unpooled_total%s %" G_GUINT64_FORMAT "\n", pid,
                         r->unpooled);
  header(out, "poolshim_returns_total", "counter",
         "Connections returned, by what their session cost the server (POOLSHIM_RESET): "
         "nothing, kept (the session setup kept for the next borrower), rollback, restore "
         "(session variables set back), full (a full reset), mode (change_user, rollback or "
         "none).");
  for (guint i = 0; i < PS_STATS_PLANS; i++)
    g_string_append_printf(out, "poolshim_returns_total{pid=\"%d\",plan=\"%s\"} %" G_GUINT64_FORMAT
                           "\n", r->pid, ps_stats_plan_names[i], r->returns[i]);
  header(out, "poolshim_python_lock_calls_total", "counter",
         "Python MySQLdb calls (POOLSHIM_PYTHON_LOCK=keep), by what they did with the "
         "interpreter's lock: kept (the call never waited) or released (it let the lock go "
         "where it waited). Zero in other programs.");
  for (guint i = 0; i < 2; i++)
    g_string_append_printf(out, "poolshim_python_lock_calls_total{pid=\"%d\",lock=\"%s\"} %" G_GUINT64_FORMAT "\n",
                           r->pid, i ? "released" : "kept",
                           i ? r->python_lock_released : r->python_lock_kept);

  guint n = r->keys ? r->keys->len : 0;
  header(out, "poolshim_connections", "gauge",
         "Physical connections of the pool by state: idle, lent, opening.");
  for (guint i = 0; i < n; i++) {
    const PsKeySnapshot *k = KEY(i);
    sample(out, r->pid, "poolshim_connections", k->label, "state=\"idle\"", k->idle);
    sample(out, r->pid, "poolshim_connections", k->label, "state=\"lent\"", k->lent);
    sample(out, r->pid, "poolshim_connections", k->label, "state=\"opening\"",
           k->open - MIN(k->open, k->idle + k->lent));
  }
  for (gsize m = 0; m < G_N_ELEMENTS(per_pool); m++) {
    header(out, per_pool[m].name, per_pool[m].type, per_pool[m].help);
    for (guint i = 0; i < n; i++)
      sample(out, r->pid, per_pool[m].name, KEY(i)->label, NULL, per_pool[m].field(KEY(i)));
  }
  header(out, "poolshim_closed_total", "counter", "Physical connections closed, by reason.");
  for (guint i = 0; i < n; i++)
    for (guint reason = 0; reason < PS_CLOSE_REASONS; reason++) {
      char extra[64];
      g_snprintf(extra, sizeof extra, "reason=\"%s\"", ps_close_reason_name(reason));
      sample(out, r->pid, "poolshim_closed_total", KEY(i)->label, extra,
             KEY(i)->counts.closed_by[reason]);
    }
  header(out, "poolshim_wait_seconds", "histogram",
         "Time a connect waited for a free connection (0 when it did not wait).");
  for (guint i = 0; i < n; i++) {
    const PsKeySnapshot *k = KEY(i);
    guint64 cumulative = 0;
    for (guint b = 0; b < PS_WAIT_BUCKETS; b++) {
      cumulative += k->counts.wait_buckets[b];
      char extra[64], le[G_ASCII_DTOSTR_BUF_SIZE];
      if (b < PS_WAIT_BUCKETS - 1)
        g_ascii_formatd(le, sizeof le, "%g", (double)ps_wait_bucket_us[b] / 1e6);
      else
        g_strlcpy(le, "+Inf", sizeof le);
      g_snprintf(extra, sizeof extra, "le=\"%s\"", le);
      sample(out, r->pid, "poolshim_wait_seconds_bucket", k->label, extra, cumulative);
    }
    g_string_append_printf(out, "poolshim_wait_seconds_sum{pid=\"%d\",pool=\"", r->pid);
    append_label_value(out, k->label);
    g_string_append(out, "\"} ");
    seconds(out, (gint64)k->counts.wait_sum_us);
    g_string_append_c(out, '\n');
    sample(out, r->pid, "poolshim_wait_seconds_count", k->label, NULL, k->counts.wait_count);
  }
  if (r->grain)
    format_grain(out, r);
#undef KEY
  return g_string_free(out, FALSE);
}

char *
ps_stats_expand_path(const char *pattern, int pid, const char *program)
{
  GString *out = g_string_new(NULL);
  for (const char *c = pattern; *c; c++) {
    if (c[0] == '%' && c[1] == 'p') {
      g_string_append_printf(out, "%d", pid);
      c++;
    } else if (c[0] == '%' && c[1] == 'n') {
      g_string_append(out, program);
      c++;
    } else if (c[0] == '%' && c[1] == '%') {
      g_string_append_c(out, '%');
      c++;
    } else {
      g_string_append_c(out, *c);
    }
  }
  return g_string_free(out, FALSE);
}

char *
ps_stats_program_name(const char *argv0)
{
  g_autofree char *base = g_path_get_basename(argv0 && *argv0 ? argv0 : "unknown");
  for (char *c = base; *c; c++)
    if (!g_ascii_isalnum(*c) && *c != '.' && *c != '_' && *c != '-')
      *c = '_';
  if (g_str_equal(base, ".") || g_str_equal(base, "..") || g_str_equal(base, "/"))
    return g_strdup("unknown");
  return g_steal_pointer(&base);
}

gboolean
ps_stats_write_file(const char *path, const char *text, GError **error)
{
  /* A hidden name in the same directory (node_exporter reads only *.prom; rename(2) is
   * atomic within one file system), created with O_EXCL under a random suffix (mkostemps):
   * in a directory others may write (the recommended /run/poolshim is 01777) nobody can
   * predict the name to plant a link or a file there first. */
  g_autofree char *dir = g_path_get_dirname(path);
  g_autofree char *base = g_path_get_basename(path);
  g_autofree char *tmp = g_strdup_printf("%s/.%s.XXXXXX.tmp", dir, base);
  int fd = mkostemps(tmp, 4, O_CLOEXEC);
  /* mkostemps creates 0600; the file is for node_exporter and poolshim-stat, which may run
   * as other users (the counters and pool names are not secrets of the process). */
  if (fd >= 0 && fchmod(fd, 0644) != 0) {
    int e = errno;
    close(fd);
    unlink(tmp);
    errno = e;
    fd = -1;
  }
  if (fd < 0) {
    int e = errno;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e), "cannot create a file in %s: %s",
                dir, g_strerror(e));
    return FALSE;
  }
  gsize len = strlen(text), done = 0;
  while (done < len) {
    ssize_t w = write(fd, text + done, len - done);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      int e = w < 0 ? errno : ENOSPC;
      close(fd);
      unlink(tmp);
      g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e), "cannot write %s: %s", tmp,
                  g_strerror(e));
      return FALSE;
    }
    done += (gsize)w;
  }
  /* rename(2) replaces a link at `path` itself, never the file it points to; it fails on a
   * directory. */
  if (close(fd) != 0 || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e), "cannot replace %s: %s", path,
                g_strerror(e));
    return FALSE;
  }
  return TRUE;
}
