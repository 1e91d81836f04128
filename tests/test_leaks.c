/* Leaks: threads that end while holding a connection (the application's bug). With
 * POOLSHIM_LEAK_WARN the shim says so once per borrow, naming the pool, how long it has
 * been held and where it was borrowed; the pool's counts stay right and the rest of the
 * pool keeps serving. The scenario runs in tests/leakprobe, whose stderr is read here. */
#include <mysqld_error.h>
#include <stdio.h>
#include <sys/wait.h>

#include "helpers.h"

TestSuite(leaks, .timeout = 60);

#define WARNING "possible leak: "

static PstRun
run_threads_probe(void)
{
  const char *argv[] = {pst_env("PST_LEAKPROBE"), "threads", NULL};
  const char *env[] = {"LD_PRELOAD",         pst_env("PST_LIB"),
                       "POOLSHIM_POOL_SIZE", "4",
                       "POOLSHIM_LEAK_WARN", "300ms",
                       "POOLSHIM_TIMEOUT",   "200ms",
                       "POOLSHIM_LOG",       NULL,
                       NULL};
  return pst_run(argv, env);
}

/* "held for N ms" in a warning line; -1 when absent. */
static long long
held_ms(const char *line)
{
  const char *p = strstr(line, "held for ");
  return p ? g_ascii_strtoll(p + strlen("held for "), NULL, 10) : -1;
}

Test(leaks, a_thread_that_ends_holding_a_connection_is_reported_once)
{
  PstRun r = run_threads_probe();
  cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0, "probe failed (%d): %s\n%s",
            r.status, r.out, r.err);
  g_autofree char *label = g_strdup_printf("%s@%s:%s/%s", pst_env("PS_TEST_USER"),
                                           pst_env("PS_TEST_HOST"), pst_env("PS_TEST_PORT"),
                                           pst_env("PS_TEST_DB"));

  /* Every line on stderr is a leak warning; one per leaked borrow, each leaked in its own
   * thread by leakprobe_leak_connection. */
  g_auto(GStrv) lines = g_strsplit(g_strstrip(r.err), "\n", -1);
  guint leaked = 0, slow = 0, held = 0, brief = 0;
  for (char **l = lines; *l && **l; l++) {
    cr_assert(g_str_has_prefix(*l, "poolshim: warning: " WARNING), "unexpected line: %s\n%s",
              *l, r.err);
    cr_assert(strstr(*l, "pool "), "%s", *l);
    cr_assert(strstr(*l, label), "the warning does not name the pool %s: %s", label, *l);
    cr_assert(strstr(*l, "POOLSHIM_LEAK_WARN"), "%s", *l);
    long long ms = held_ms(*l);
    cr_assert_geq(ms, 300, "held for %lld ms in: %s", ms, *l);
    cr_assert_lt(ms, 30000, "held for %lld ms in: %s", ms, *l);
    cr_assert(strstr(*l, "borrowed at"), "%s", *l);
    cr_assert_null(strstr(*l, "libpoolshim"), "the shim's own frames are shown: %s", *l);
    if (strstr(*l, "leakprobe_leak_connection"))
      leaked++;
    else if (strstr(*l, "leakprobe_slow_borrow"))
      slow++;
    else if (strstr(*l, "leakprobe_hold_connection"))
      held++; /* only on a very slow machine: those are held about 200 ms */
    else if (strstr(*l, "leakprobe_short_borrow"))
      brief++; /* the same, for borrows of a few milliseconds */
    else
      cr_assert_fail("no borrower named in: %s", *l);
    cr_assert(strstr(*l, "leakprobe("), "the frame does not name the program: %s", *l);
  }
  cr_assert_eq(leaked, 2, "%u warnings for 2 leaked borrows:\n%s", leaked, r.err);
  cr_assert_eq(slow, 2, "%u warnings for 2 borrows held 700 ms:\n%s", slow, r.err);
  cr_assert_leq(held, 2, "more than one warning per borrow:\n%s", r.err);
  if (held || brief)
    cr_log_warn("a slow machine: %u short borrows took longer than 300 ms", held + brief);

  /* The counts: the two leaked connections stay lent, and only they. */
  g_autofree char *after = pst_report_value(r.out, "stats_after_leak");
  g_autofree char *end = pst_report_value(r.out, "stats_end");
  cr_assert_not_null(after, "%s", r.out);
  cr_assert_not_null(end, "%s", r.out);
  cr_assert(g_str_has_prefix(after, "open 2 idle 0 lent 2 waiting 0 pools 1"), "%s", after);
  cr_assert(g_str_has_prefix(end, "open 4 idle 2 lent 2 waiting 0 pools 1 "), "%s", end);

  /* The rest of the pool kept serving: concurrent cycles on the two remaining
   * connections never failed; exactly two more fit at once, a third waited and got 1040. */
  g_autofree char *failed = pst_report_value(r.out, "cycles_failed");
  cr_assert_str_eq(failed, "0", "%s", r.out);
  g_autofree char *hold = pst_report_value(r.out, "held");
  cr_assert(g_str_has_prefix(hold, "1 1 "), "%s", r.out);
  g_autofree char *third = pst_report_value(r.out, "third");
  cr_assert_eq(atoi(third), ER_CON_COUNT_ERROR, "%s", r.out);
  pst_run_clear(&r);
}

/* A leaked connection is never lent again (the slow borrows, closed properly, get pooled
 * sessions that are not leaked ones), and the leaked sessions end with the program,
 * as without the shim. */
Test(leaks, leaked_connections_are_never_lent_again)
{
  PstRun r = run_threads_probe();
  cr_assert_eq(r.status, 0, "%s\n%s", r.out, r.err);
  g_autofree char *leaked = pst_report_value(r.out, "leaked_ids");
  g_autofree char *slow = pst_report_value(r.out, "slow_ids");
  cr_assert_not_null(leaked, "%s", r.out);
  cr_assert_not_null(slow, "%s", r.out);
  long long l1 = 0, l2 = 0, s1 = 0, s2 = 0;
  cr_assert_eq(sscanf(leaked, "%lld,%lld", &l1, &l2), 2, "%s", leaked);
  cr_assert_eq(sscanf(slow, "%lld,%lld", &s1, &s2), 2, "%s", slow);
  cr_assert(l1 > 0 && l2 > 0 && l1 != l2, "%s", leaked);
  cr_assert(s1 > 0 && s2 > 0, "%s", slow);
  cr_assert(s1 != l1 && s1 != l2 && s2 != l1 && s2 != l2,
            "a leaked connection was lent again: %s / %s", leaked, slow);
  /* The probe has exited: its sessions end (the leaked ones with its sockets). */
  pst_wait_thread_gone((unsigned long)l1);
  pst_wait_thread_gone((unsigned long)l2);
  pst_run_clear(&r);
}

/* Without POOLSHIM_LEAK_WARN nothing is watched and nothing is said. */
Test(leaks, no_warning_unless_asked)
{
  const char *argv[] = {pst_env("PST_LEAKPROBE"), "threads", NULL};
  const char *env[] = {"LD_PRELOAD",       pst_env("PST_LIB"), "POOLSHIM_POOL_SIZE", "4",
                       "POOLSHIM_TIMEOUT", "200ms",            "POOLSHIM_LEAK_WARN", NULL,
                       "POOLSHIM_LOG",     NULL,               NULL};
  PstRun r = pst_run(argv, env);
  cr_assert_eq(r.status, 0, "%s\n%s", r.out, r.err);
  cr_assert_str_eq(r.err, "", "stderr: %s", r.err);
  g_autofree char *end = pst_report_value(r.out, "stats_end");
  cr_assert(strstr(end, " lent 2 "), "%s", end);
  pst_run_clear(&r);
}
