/* broker.h: the pooling policy behind the interposed calls: one connection's life from
 * connect to lent, returned, reset, idle, reused or closed. interpose.c calls only this. */
#pragma once
#include <glib.h>
#include <mysql.h>

#include "poolshim.h"

/* FALSE when pooling is off (POOLSHIM_DISABLE, unsupported library): pass through. */
gboolean ps_broker_active(void);

MYSQL *ps_broker_connect(MYSQL *m, const char *host, const char *user, const char *passwd,
                         const char *db, unsigned int port, const char *unix_socket,
                         unsigned long client_flag);
void ps_broker_close(MYSQL *m);
/* A lent handle changed its identity (mysql_change_user, also through the non-blocking
 * API) or became a replication stream: its connection will not be pooled again. */
void ps_broker_mark_unpoolable(MYSQL *m, const char *reason);
/* mysql_close called by the client library itself. */
void ps_broker_close_from_library(MYSQL *m);
/* Closes every idle connection politely (mysql_server_end, exit). */
void ps_broker_drain(void);
void ps_broker_stats(poolshim_stats_t *out);
