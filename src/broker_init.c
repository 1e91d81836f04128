/* broker_init.c: the process's first call into the pool: reads the configuration, makes
 * the pool, registers the exit drain and starts the background threads, once, under
 * B.init_lock (which fork() takes first: broker_fork.c). No pooling decision (broker.c). */
#include "broker-state.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "broker.h"
#include "gil.h"
#include "house.h"
#include "log.h"
#include "stats.h"
#include "watch.h"

static void
exit_drain(void)
{
  ps_broker_drain();
  /* The last word, with the shutdown closes counted; only where a writer ran (a child that
   * never used the pool writes nothing). */
  if (B.config.stats_file && B.stats_pid == (int)getpid())
    ps_house_write_stats();
}

/* Closing, as phys.c asks for it: the client library's ways (conn.c) and the real close. */
static void
close_handle(MYSQL *m)
{
  ps_real.close(m);
}

static const PsPhysOps phys_ops = {
  .close = ps_conn_close,
  .close_and_wait = ps_conn_close_and_wait,
  .close_keep_socket = ps_conn_close_keep_socket,
  .wait_sockets_closed = ps_conn_wait_sockets_closed,
  .abandon = ps_conn_abandon,
  .close_handle = close_handle,
  .watch_free = ps_watch_free,
};

static void
init(void)
{
#ifdef PS_TEST_HOOKS
  /* POOLSHIM_TEST_INIT_PAUSE_FILE: the first call makes the file and stays here until the
   * test removes it, 2 s at most: the test forks meanwhile. */
  const char *pause = g_getenv("POOLSHIM_TEST_INIT_PAUSE_FILE");
  if (pause)
    ps_handle_test_pause(pause, 2000);
#endif
  /* Warnings about the configuration go where it says messages go. */
  ps_log_hold();
  ps_config_from_environ(&B.config);
  if (B.config.log_file && !ps_log_open_file(B.config.log_file))
    ps_warn("POOLSHIM_LOG_FILE=%s cannot be opened (%s); messages go to stderr",
            B.config.log_file, g_strerror(errno));
  ps_log_release();
  B.program = ps_stats_program_name(program_invocation_name);
  B.start_time_us = g_get_real_time();
  const char *why = NULL;
  if (B.config.disable) {
    ps_info("POOLSHIM_DISABLE is set: pooling is off");
  } else if (!ps_real.real_connect || !ps_real.close) {
    ps_warn("the client library's functions were not found; pooling is off");
  } else if (!ps_conn_library_ok(&why)) {
    ps_warn("%s; pooling is off, every call passes through", why);
  } else {
    ps_phys_setup(&phys_ops, (int)MIN(B.config.reset_timeout_us / 1000, 5000));
    B.pool = ps_broker_new_pool();
    /* Registered after the client library initialised itself (and its TLS library), so it
     * runs before their exit handlers tear them down. */
    atexit(exit_drain);
    if (B.config.host_max) {
      B.host_slots = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                           (GDestroyNotify)ps_host_slots_free);
      B.host_root = B.config.host_dir ? g_strdup(B.config.host_dir)
                                      : ps_host_slots_default_root();
      ps_info("POOLSHIM_HOST_MAX=%u: slot files under %s", B.config.host_max, B.host_root);
    }
    if (B.config.grain == PS_GRAIN_TRANSACTION)
      ps_handle_setup(&ps_broker_grain_ops);
    ps_gil_configure(B.config.python_lock == PS_PYTHON_LOCK_KEEP);
    __atomic_store_n(&B.active, TRUE, __ATOMIC_RELEASE); /* read by broker.c's is_active() */
    ps_house_start();
  }
}

/* Not g_once: a child forked while another thread was inside it would wait for that thread
 * for good. fork() takes init_lock first (ps_broker_before_fork), so a child finds the
 * first call done or not begun. Out of line (noinline, cold in broker-state.h): inlined
 * into the callers' check, the set-up made each check save registers first (30
 * instructions a pair). */
void
ps_broker_init_first(void)
{
  g_mutex_lock(&B.init_lock);
  if (!B.inited) {
    init();
    __atomic_store_n(&B.inited, TRUE, __ATOMIC_RELEASE);
  }
  g_mutex_unlock(&B.init_lock);
}

