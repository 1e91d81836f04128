/* test_python.c: Python's MySQLdb under the shim and what its calls do with the interpreter's
 * lock (POOLSHIM_PYTHON_LOCK, src/gil.c): kept through calls that do not wait, let go where
 * they do (a round trip, a wait for a free connection), so threads never stall each other.
 * Each case runs tests/python_lock.py in a child with the shim preloaded. */
#include <criterion/criterion.h>
#include <glib.h>
#include <stdlib.h>

#include "helpers.h"

typedef struct {
  PstRun run;
  long long ids, errors, waits, kept, released;
} PyLoop;

static PstRun
run_script(const char *scenario, const char *lock, const char *pool_size)
{
  const char *lib = getenv("PST_LIB"), *script = getenv("PST_PYTHON_LOCK_SCRIPT");
  cr_assert(lib && script, "PST_LIB or PST_PYTHON_LOCK_SCRIPT not set: run through meson test");
  const char *argv[] = {"/usr/bin/python3", script, scenario, NULL};
  const char *env[] = {"LD_PRELOAD",          lib,       "POOLSHIM_PYTHON_LOCK", lock,
                       "POOLSHIM_POOL_SIZE",  pool_size, "POOLSHIM_TIMEOUT",     "10s",
                       NULL};
  PstRun r = pst_run(argv, env);
  cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0, "python_lock.py %s failed: %s%s",
            scenario, r.out, r.err);
  return r;
}

static long long
value(const PstRun *r, const char *name)
{
  g_autofree char *v = pst_report_value(r->out, name);
  cr_assert(v, "no %s= in: %s%s", name, r->out, r->err);
  return g_ascii_strtoll(v, NULL, 10);
}

static PyLoop
run_loop(const char *lock)
{
  long long before = pst_status("Connections");
  PyLoop l = {.run = run_script("loop", lock, "4")};
  l.ids = value(&l.run, "ids");
  l.errors = value(&l.run, "errors");
  l.waits = value(&l.run, "waits");
  l.kept = value(&l.run, "kept");
  l.released = value(&l.run, "released");
  /* 640 connects of 16 threads used the pool's 4 server connections, no more. */
  cr_assert_eq(l.errors, 0, "errors; first: %s", l.run.out);
  cr_assert(l.ids >= 1 && l.ids <= 4, "%lld server connections for a pool of 4", l.ids);
  long long opened = pst_status("Connections") - before; /* pst_status's is kept open */
  cr_assert(opened <= 4, "the server saw %lld connections for a pool of 4", opened);
  cr_assert_gt(l.waits, 0, "16 threads on 4 connections never waited: the case tests nothing");
  return l;
}

/* The default: a pooled connect, a close, the setup statements answered ahead keep the lock;
 * the round trips and the waits for a free connection (16 threads, 4 connections) let it go,
 * or the threads holding connections could never run to close them. */
Test(python, mysqldb_calls_that_do_not_wait_keep_the_interpreters_lock, .timeout = 120)
{
  PyLoop l = run_loop("keep");
  cr_assert_gt(l.kept, 640, "only %lld calls kept the lock for 640 connects and closes", l.kept);
  cr_assert_gt(l.released, 0, "no call let the lock go, yet %lld connects waited", l.waits);
  pst_run_clear(&l.run);
}

Test(python, with_release_every_call_lets_the_lock_go_as_the_driver_asks, .timeout = 120)
{
  PyLoop l = run_loop("release");
  cr_assert_eq(l.kept, 0, "%lld calls kept the lock under POOLSHIM_PYTHON_LOCK=release", l.kept);
  cr_assert_eq(l.released, 0);
  pst_run_clear(&l.run);
}

/* A query that waits for the server lets the lock go: another thread keeps running Python
 * (a 10 ms ticker) for the whole second of SELECT SLEEP(1). */
Test(python, a_query_that_waits_for_the_server_lets_other_threads_run, .timeout = 60)
{
  PstRun r = run_script("sleep", "keep", "4");
  cr_assert_eq(value(&r, "value"), 0, "SELECT SLEEP(1) answered %s", r.out);
  long long ticks = value(&r, "ticks_during");
  /* 80 ticks fit in the 0.8 s measured; a lock kept across the wait allows none. */
  cr_assert_gt(ticks, 20, "the other thread ticked %lld times during the query", ticks);
  pst_run_clear(&r);
}

/* Pool of 1: B's connect waits for A's connection, and A (Python code: it watches the
 * pool's counters, sleeps, then closes) runs meanwhile; B gets A's server connection. */
Test(python, a_connect_waiting_for_a_free_connection_lets_its_holder_run, .timeout = 60)
{
  PstRun r = run_script("handover", "keep", "1");
  cr_assert_eq(value(&r, "waiting"), 1, "B was never seen waiting: %s", r.out);
  cr_assert_eq(value(&r, "same"), 1, "B did not get A's server connection: %s", r.out);
  long long waited = value(&r, "waited_ms");
  cr_assert(waited >= 150 && waited < 5000, "B waited %lld ms for a 200 ms hold", waited);
  pst_run_clear(&r);
}
