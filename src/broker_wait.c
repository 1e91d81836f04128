/* broker_wait.c: what a connect says about its wait for a connection, off the fast path:
 * the error when POOLSHIM_TIMEOUT passes, and the info line of a slow connect. */
#include "broker-state.h"

#include <mysqld_error.h>

#include "conn.h"
#include "log.h"
#include "pool.h"

/* POOLSHIM_TIMEOUT passed while waiting for a connection of pk: m gets error 1040, the
 * server's own "Too many connections" code, with the pool's words. */
void
ps_broker_pool_full(MYSQL *m, PsPoolKey *pk, const PsPoolSettings *settings, gint64 started)
{
  char msg[MYSQL_ERRMSG_SIZE];
  g_snprintf(msg, sizeof msg,
             "poolshim: pool %s is full (size %u): waited %" G_GINT64_FORMAT
             " ms for a free connection (POOLSHIM_TIMEOUT)",
             ps_pool_key_label(pk), settings->pool_size,
             (g_get_monotonic_time() - started) / 1000);
  ps_conn_set_error(m, ER_CON_COUNT_ERROR, "08004", msg);
  ps_info("%s", msg);
}

/* Where a slow connect's time went (info level: a connect of a second or more, or one that
 * found idle connections dead), so that a wait for a free connection can be told from
 * idle connections that failed one after another. Read only off the fast path. */
void
ps_broker_trace_note(PsPoolKey *pk, gint64 started, const PsConnectTrace *t, const char *outcome)
{
  if (!ps_log_enabled(PS_LOG_INFO))
    return;
  gint64 took = g_get_monotonic_time() - started;
  if (took < G_USEC_PER_SEC && !t->lost)
    return;
  ps_info("pool %s: a connect took %" G_GINT64_FORMAT " ms (%s): %" G_GINT64_FORMAT
          " ms waiting for a free connection, %u idle connection(s) found closed or failing "
          "their reset (%" G_GINT64_FORMAT " ms), the rest opening or claiming",
          ps_pool_key_label(pk), took / 1000, outcome, t->waited_us / 1000, t->lost,
          t->lost_us / 1000);
}
