/* test_stats.c: the statistics file as node_exporter and poolshim-stat read it: the
 * Prometheus text format of a snapshot, the file name pattern, the atomic write. */
#include <criterion/criterion.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <string.h>
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
                     .unpooled = 3, .returns = {70, 10, 8, 4, 2, 0}, .keys = keys};
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
  /* 4 + 6 returns process lines; per pool 3 + 8 single + 7 closed + 7 buckets + sum + count
   * = 27. */
  cr_assert_eq(samples, 10 + 2 * 27, "%u samples", samples);
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
