/* test_stats.c: the statistics file as node_exporter and poolshim-stat read it: the
 * Prometheus text format of a snapshot, the file name pattern, the atomic write. */
#include <criterion/criterion.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pool.h"
#include "stats.h"

TestSuite(stats, .timeout = 30);

static GArray *
two_pools(void)
{
  GArray *keys = g_array_new(FALSE, TRUE, sizeof(PsKeySnapshot));
  PsKeySnapshot a = {.label = (char *)"app@db1:3306/shop", .open = 5, .idle = 2, .lent = 2};
  a.settings.pool_size = 8;
  a.counts.borrowed = 100;
  a.counts.served_idle = 95;
  a.counts.opened = 5;
  a.counts.closed_by[PS_CLOSE_LIFETIME] = 2;
  a.counts.closed_by[PS_CLOSE_UNCLEAN] = 1;
  a.counts.wait_buckets[0] = 90;
  a.counts.wait_buckets[2] = 9;
  a.counts.wait_buckets[PS_WAIT_BUCKETS - 1] = 1;
  a.counts.wait_count = 100;
  a.counts.wait_sum_us = 12500000;
  PsKeySnapshot b = {.label = (char *)"odd\"na\\me\nx@h:1/d"};
  b.settings.pool_size = 1;
  g_array_append_val(keys, a);
  g_array_append_val(keys, b);
  return keys;
}

static gboolean
has_line(const char *text, const char *line)
{
  g_autofree char *needle = g_strconcat("\n", line, "\n", NULL);
  return strstr(text, needle) != NULL;
}

Test(stats, a_snapshot_is_formatted_as_prometheus_text)
{
  g_autoptr(GArray) keys = two_pools();
  PsStatsReport r = {.version = "1.2.3", .pid = 42, .program = "gunicorn",
                     .start_time_us = 1700000000500000, .written_time_us = 1700000100000000,
                     .unpooled = 3, .returns = {70, 10, 8, 4, 2, 0},
                     .python_lock_kept = 1400, .python_lock_released = 100, .keys = keys};
  g_autofree char *text = ps_stats_format(&r);
  static const char *const lines[] = {
    "poolshim_info{version=\"1.2.3\",pid=\"42\",program=\"gunicorn\"} 1",
    "poolshim_process_start_time_seconds{pid=\"42\"} 1700000000.500000",
    "poolshim_written_time_seconds{pid=\"42\"} 1700000100.000000",
    "poolshim_unpooled_total{pid=\"42\"} 3",
    "poolshim_returns_total{pid=\"42\",plan=\"nothing\"} 70",
    "poolshim_returns_total{pid=\"42\",plan=\"kept\"} 10",
    "poolshim_returns_total{pid=\"42\",plan=\"rollback\"} 8",
    "poolshim_returns_total{pid=\"42\",plan=\"restore\"} 4",
    "poolshim_returns_total{pid=\"42\",plan=\"full\"} 2",
    "poolshim_returns_total{pid=\"42\",plan=\"mode\"} 0",
    "poolshim_python_lock_calls_total{pid=\"42\",lock=\"kept\"} 1400",
    "poolshim_python_lock_calls_total{pid=\"42\",lock=\"released\"} 100",
    "poolshim_pool_size{pid=\"42\",pool=\"app@db1:3306/shop\"} 8",
    "poolshim_connections{pid=\"42\",pool=\"app@db1:3306/shop\",state=\"idle\"} 2",
    "poolshim_connections{pid=\"42\",pool=\"app@db1:3306/shop\",state=\"lent\"} 2",
    "poolshim_connections{pid=\"42\",pool=\"app@db1:3306/shop\",state=\"opening\"} 1",
    "poolshim_borrowed_total{pid=\"42\",pool=\"app@db1:3306/shop\"} 100",
    "poolshim_served_idle_total{pid=\"42\",pool=\"app@db1:3306/shop\"} 95",
    "poolshim_opened_total{pid=\"42\",pool=\"app@db1:3306/shop\"} 5",
    "poolshim_closed_total{pid=\"42\",pool=\"app@db1:3306/shop\",reason=\"lifetime\"} 2",
    "poolshim_closed_total{pid=\"42\",pool=\"app@db1:3306/shop\",reason=\"error\"} 1",
    "poolshim_closed_total{pid=\"42\",pool=\"app@db1:3306/shop\",reason=\"shutdown\"} 0",
    "poolshim_wait_seconds_bucket{pid=\"42\",pool=\"app@db1:3306/shop\",le=\"0.0001\"} 90",
    "poolshim_wait_seconds_bucket{pid=\"42\",pool=\"app@db1:3306/shop\",le=\"0.001\"} 90",
    "poolshim_wait_seconds_bucket{pid=\"42\",pool=\"app@db1:3306/shop\",le=\"0.01\"} 99",
    "poolshim_wait_seconds_bucket{pid=\"42\",pool=\"app@db1:3306/shop\",le=\"10\"} 99",
    "poolshim_wait_seconds_bucket{pid=\"42\",pool=\"app@db1:3306/shop\",le=\"+Inf\"} 100",
    "poolshim_wait_seconds_sum{pid=\"42\",pool=\"app@db1:3306/shop\"} 12.500000",
    "poolshim_wait_seconds_count{pid=\"42\",pool=\"app@db1:3306/shop\"} 100",
    "poolshim_pool_size{pid=\"42\",pool=\"odd\\\"na\\\\me\\nx@h:1/d\"} 1",
    "# TYPE poolshim_wait_seconds histogram",
    "# TYPE poolshim_borrowed_total counter",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(lines); i++)
    cr_assert(has_line(text, lines[i]), "missing line: %s\nin:\n%s", lines[i], text);
  /* Every sample line is NAME{...} VALUE or NAME VALUE: nothing a parser could trip on. */
  g_auto(GStrv) all = g_strsplit(text, "\n", -1);
  guint samples = 0;
  for (guint i = 0; all[i]; i++) {
    if (!all[i][0] || all[i][0] == '#')
      continue;
    samples++;
    cr_assert(g_str_has_prefix(all[i], "poolshim_"), "line %u: %s", i, all[i]);
    cr_assert(g_regex_match_simple("^[a-z_]+(\\{.*\\})? [0-9.]+$", all[i], 0, 0), "line: %s",
              all[i]);
  }
  /* 4 + 6 returns + 2 Python lock process lines; per pool 3 + 8 single + 8 closed + 7
   * buckets + sum + count = 28. */
  cr_assert_eq(samples, 12 + 2 * 28, "%u samples", samples);
}

Test(stats, the_transaction_grain_counts_are_written_per_pool_only_under_that_grain)
{
  g_autoptr(GArray) keys = two_pools();
  PsKeySnapshot *a = &g_array_index(keys, PsKeySnapshot, 0);
  a->grain.takes = 12;
  a->grain.reborrows = 11;
  a->grain.pins[0] = 5; /* PS_PIN_TRANSACTION */
  a->grain.pins[5] = 2; /* PS_PIN_WARNINGS */
  PsStatsReport r = {.version = "1", .pid = 42, .program = "p", .keys = keys};
  g_autofree char *connect = ps_stats_format(&r);
  cr_assert_null(strstr(connect, "poolshim_grain_"), "under the connect grain:\n%s", connect);
  r.grain = TRUE;
  g_autofree char *text = ps_stats_format(&r);
  static const char *const lines[] = {
    "# TYPE poolshim_grain_takes_total counter",
    "poolshim_grain_takes_total{pid=\"42\",pool=\"app@db1:3306/shop\"} 12",
    "poolshim_grain_reborrows_total{pid=\"42\",pool=\"app@db1:3306/shop\"} 11",
    "poolshim_grain_pins_total{pid=\"42\",pool=\"app@db1:3306/shop\",reason=\"transaction\"} 5",
    "poolshim_grain_pins_total{pid=\"42\",pool=\"app@db1:3306/shop\",reason=\"autocommit\"} 0",
    "poolshim_grain_pins_total{pid=\"42\",pool=\"app@db1:3306/shop\",reason=\"session\"} 0",
    "poolshim_grain_pins_total{pid=\"42\",pool=\"app@db1:3306/shop\",reason=\"prepared_statement\"} 0",
    "poolshim_grain_pins_total{pid=\"42\",pool=\"app@db1:3306/shop\",reason=\"unread_result\"} 0",
    "poolshim_grain_pins_total{pid=\"42\",pool=\"app@db1:3306/shop\",reason=\"warnings\"} 2",
    "poolshim_grain_pins_total{pid=\"42\",pool=\"app@db1:3306/shop\",reason=\"other\"} 0",
    "poolshim_grain_takes_total{pid=\"42\",pool=\"odd\\\"na\\\\me\\nx@h:1/d\"} 0",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(lines); i++)
    cr_assert(has_line(text, lines[i]), "missing line: %s\nin:\n%s", lines[i], text);
  /* Two pools: 2 + 7 grain samples each. */
  g_auto(GStrv) all = g_strsplit(text, "\n", -1);
  guint extra = 0;
  for (guint i = 0; all[i]; i++)
    extra += g_str_has_prefix(all[i], "poolshim_grain_");
  cr_assert_eq(extra, 2 * 9, "%u grain samples", extra);
}

Test(stats, no_pool_yet_gives_a_valid_file)
{
  PsStatsReport r = {.version = "1", .pid = 1, .program = "x"};
  g_autofree char *text = ps_stats_format(&r);
  cr_assert(has_line(text, "poolshim_unpooled_total{pid=\"1\"} 0"), "%s", text);
  cr_assert_null(strstr(text, "pool=\""), "%s", text);
}

Test(stats, the_file_name_pattern_expands_pid_and_program)
{
  g_autofree char *a = ps_stats_expand_path("/run/poolshim/%n-%p.prom", 123, "gunicorn");
  cr_assert_str_eq(a, "/run/poolshim/gunicorn-123.prom");
  g_autofree char *b = ps_stats_expand_path("/x/100%%-%p%", 7, "p");
  cr_assert_str_eq(b, "/x/100%-7%");
}

Test(stats, the_program_name_is_safe_in_a_file_name)
{
  g_autofree char *a = ps_stats_program_name("/usr/bin/python3.11");
  cr_assert_str_eq(a, "python3.11");
  g_autofree char *b = ps_stats_program_name("gunicorn: worker [app]");
  cr_assert_str_eq(b, "gunicorn__worker__app_");
  g_autofree char *c = ps_stats_program_name("");
  cr_assert_str_eq(c, "unknown");
  g_autofree char *d = ps_stats_program_name("..");
  cr_assert_str_eq(d, "unknown");
}

Test(stats, the_file_is_replaced_atomically_and_nothing_is_left_behind)
{
  g_autofree char *dir = g_dir_make_tmp("poolshim-stats-XXXXXX", NULL);
  cr_assert_not_null(dir);
  g_autofree char *path = g_build_filename(dir, "p.prom", NULL);
  cr_assert(ps_stats_write_file(path, "first\n", NULL));
  cr_assert(ps_stats_write_file(path, "second\n", NULL));
  g_autofree char *contents = NULL;
  cr_assert(g_file_get_contents(path, &contents, NULL, NULL));
  cr_assert_str_eq(contents, "second\n");
  GDir *d = g_dir_open(dir, 0, NULL);
  guint n = 0;
  while (g_dir_read_name(d))
    n++;
  g_dir_close(d);
  cr_assert_eq(n, 1, "only the file itself remains");
  g_autoptr(GError) error = NULL;
  g_autofree char *bad = g_build_filename(dir, "missing", "p.prom", NULL);
  cr_assert_not(ps_stats_write_file(bad, "x", &error));
  cr_assert(strstr(error->message, "missing"), "the error names the path: %s", error->message);
  g_unlink(path);
  g_rmdir(dir);
}

/* The temporary name the writer used before: pid and thread address, both known to anyone. */
static char *
old_predictable_tmp(const char *dir, const char *base)
{
  return g_strdup_printf("%s/.%s.%d.%p.tmp", dir, base, (int)getpid(), (void *)g_thread_self());
}

Test(stats, a_link_planted_at_a_predictable_temp_name_is_not_followed)
{
  g_autofree char *dir = g_dir_make_tmp("poolshim-stats-XXXXXX", NULL);
  g_autofree char *victim = g_build_filename(dir, "victim", NULL);
  g_autofree char *decoy = g_build_filename(dir, "decoy", NULL);
  cr_assert(g_file_set_contents(victim, "precious\n", -1, NULL));
  g_autofree char *path = g_build_filename(dir, "p.prom", NULL);
  g_autofree char *planted = old_predictable_tmp(dir, "p.prom");
  cr_assert_eq(symlink(victim, planted), 0);
  /* Watch every name created in the directory while the file is written. */
  int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  cr_assert_geq(in, 0);
  cr_assert_geq(inotify_add_watch(in, dir, IN_CREATE | IN_MOVED_FROM), 0);
  g_autoptr(GError) error = NULL;
  cr_assert(ps_stats_write_file(path, "counters\n", &error), "the write failed: %s",
            error ? error->message : "");
  char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
  ssize_t got = read(in, buf, sizeof buf);
  close(in);
  cr_assert_gt(got, 0, "no file was created in the directory");
  g_autofree char *pid = g_strdup_printf(".%d.", (int)getpid());
  /* The old name's thread address, as it printed it (a random name may contain "0x"). */
  g_autofree char *addr = g_strdup_printf("%p", (void *)g_thread_self());
  guint temps = 0;
  for (char *p = buf; p < buf + got;) {
    struct inotify_event *ev = (struct inotify_event *)p;
    if (ev->len && (ev->mask & IN_CREATE) && g_str_has_prefix(ev->name, ".p.prom.")) {
      temps++;
      cr_assert_null(strstr(ev->name, pid), "the temp name holds the pid: %s", ev->name);
      cr_assert_null(strstr(ev->name, addr), "the temp name holds the thread's address: %s",
                     ev->name);
    }
    p += sizeof *ev + ev->len;
  }
  cr_assert_eq(temps, 1, "one temporary file per write");
  g_autofree char *kept = NULL, *written = NULL;
  cr_assert(g_file_get_contents(victim, &kept, NULL, NULL));
  cr_assert_str_eq(kept, "precious\n", "the file behind the link was written");
  cr_assert(g_file_get_contents(path, &written, NULL, NULL));
  cr_assert_str_eq(written, "counters\n");
  struct stat st;
  cr_assert_eq(lstat(path, &st), 0);
  cr_assert(S_ISREG(st.st_mode));
  cr_assert_eq(st.st_mode & 07777, 0644, "mode %o", st.st_mode & 07777);
  /* A plain file planted under the old name is not truncated or reused either. */
  g_unlink(planted);
  cr_assert(g_file_set_contents(planted, "theirs\n", -1, NULL));
  cr_assert(ps_stats_write_file(path, "again\n", NULL));
  g_autofree char *theirs = NULL;
  cr_assert(g_file_get_contents(planted, &theirs, NULL, NULL));
  cr_assert_str_eq(theirs, "theirs\n");
  g_unlink(planted);
  g_unlink(path);
  g_unlink(victim);
  g_unlink(decoy);
  g_rmdir(dir);
}

static guint
count_pool_labels(const char *text, const char *metric)
{
  GHashTable *seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g_autofree char *prefix = g_strconcat(metric, "{", NULL);
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  for (char **l = lines; *l; l++) {
    if (!g_str_has_prefix(*l, prefix))
      continue;
    const char *pool = strstr(*l, "pool=\"");
    cr_assert_not_null(pool, "%s", *l);
    const char *end = strchr(pool + 6, '"');
    g_hash_table_add(seen, g_strndup(pool + 6, (gsize)(end - pool - 6)));
  }
  guint n = g_hash_table_size(seen);
  g_hash_table_unref(seen);
  return n;
}

Test(stats, twenty_thousand_pools_give_the_busiest_and_one_line_for_the_rest)
{
  GArray *keys = g_array_new(FALSE, TRUE, sizeof(PsKeySnapshot));
  GPtrArray *labels = g_ptr_array_new_with_free_func(g_free);
  guint64 borrowed_sum = 0, listed_sum = 0;
  for (guint i = 0; i < 20000; i++) {
    char *label = g_strdup_printf("u%u@h:1/db", i);
    g_ptr_array_add(labels, label);
    PsKeySnapshot k = {.label = label, .open = 1, .idle = 1};
    k.settings.pool_size = 2;
    /* Pools 19900.. are the busiest: served the most connects. */
    k.counts.borrowed = i >= 19900 ? 1000 + i : 1;
    k.counts.closed_by[PS_CLOSE_LIFETIME] = 1;
    k.counts.wait_buckets[0] = 1;
    k.counts.wait_count = 1;
    borrowed_sum += k.counts.borrowed;
    if (i >= 19900)
      listed_sum += k.counts.borrowed;
    g_array_append_val(keys, k);
  }
  PsStatsReport r = {.version = "1", .pid = 7, .program = "p", .keys = keys};
  g_autofree char *text = ps_stats_format(&r);
  cr_assert_eq(count_pool_labels(text, "poolshim_borrowed_total"), PS_STATS_MAX_POOLS + 1);
  cr_assert_eq(count_pool_labels(text, "poolshim_connections"), PS_STATS_MAX_POOLS + 1);
  cr_assert_eq(count_pool_labels(text, "poolshim_wait_seconds_bucket"), PS_STATS_MAX_POOLS + 1);
  cr_assert(has_line(text, "poolshim_borrowed_total{pid=\"7\",pool=\"u19999@h:1/db\"} 20999"),
            "the busiest pool is listed");
  cr_assert_null(strstr(text, "pool=\"u0@h:1/db\""), "an idle pool is listed");
  g_autofree char *other = g_strdup_printf(
    "poolshim_borrowed_total{pid=\"7\",pool=\"(other 19900 pools)\"} %" G_GUINT64_FORMAT,
    borrowed_sum - listed_sum);
  cr_assert(has_line(text, other), "no sum line %s", other);
  cr_assert(has_line(text, "poolshim_connections{pid=\"7\",pool=\"(other 19900 pools)\","
                           "state=\"idle\"} 19900"));
  cr_assert(has_line(text, "poolshim_closed_total{pid=\"7\",pool=\"(other 19900 pools)\","
                           "reason=\"lifetime\"} 19900"));
  cr_assert(has_line(text, "poolshim_pool_size{pid=\"7\",pool=\"(other 19900 pools)\"} 39800"));
  /* Bounded: about 30 lines per listed pool, whatever the number of pools. */
  guint nlines = 0;
  for (const char *c = text; *c; c++)
    nlines += *c == '\n';
  cr_assert_lt(nlines, 40 * (PS_STATS_MAX_POOLS + 1), "%u lines", nlines);
  g_array_unref(keys);
  g_ptr_array_unref(labels);
}

Test(stats, up_to_the_bound_every_pool_is_listed_and_no_sum_line)
{
  GArray *keys = g_array_new(FALSE, TRUE, sizeof(PsKeySnapshot));
  GPtrArray *labels = g_ptr_array_new_with_free_func(g_free);
  for (guint i = 0; i < PS_STATS_MAX_POOLS; i++) {
    char *label = g_strdup_printf("u%u@h:1/db", i);
    g_ptr_array_add(labels, label);
    PsKeySnapshot k = {.label = label};
    g_array_append_val(keys, k);
  }
  PsStatsReport r = {.version = "1", .pid = 7, .program = "p", .keys = keys};
  g_autofree char *text = ps_stats_format(&r);
  cr_assert_eq(count_pool_labels(text, "poolshim_borrowed_total"), PS_STATS_MAX_POOLS);
  cr_assert_null(strstr(text, "(other"));
  g_array_unref(keys);
  g_ptr_array_unref(labels);
}
