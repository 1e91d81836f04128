/* broker-state.h: the broker's process-wide state, shared by broker.c (the decisions) and
 * house.c (its background threads) and by nothing else. Lock order: top of broker.c. */
#pragma once
#include <glib.h>
#include <mysql.h>

#include "config.h"
#include "conn.h"
#include "hostslots.h"
#include "phys.h"
#include "pool.h"

typedef struct {
  GMutex lock;           /* guards `pool`, `forked` and `host_slots` */
  PsConfig config;
  gboolean active;
  PsPool *pool;
  gboolean forked;       /* set in a child: the pool is the parent's */
  gint64 last_sweep_us;
  guint64 resets, unpooled;
  guint64 plans[PS_PLAN_COUNT]; /* returns by what they cost (PsPlan) */
  GThread *watchdog;     /* POOLSHIM_LEAK_WARN only */
  GSList *inherited;     /* pools of the parent, kept for its lent handles' bookkeeping */
  GHashTable *host_slots; /* server ("host:port") -> PsHostSlots*, POOLSHIM_HOST_MAX only */
  char *host_root;
  /* POOLSHIM_STATS_FILE: the writer thread of this process and what the file says. */
  GMutex stats_lock;     /* one writer at a time: the thread, and exit */
  int stats_pid;         /* the process whose thread writes (0 = none; a child starts its own) */
  gboolean stats_warned;
  char *program;
  gint64 start_time_us;
  gboolean stopping;     /* drained (exit, mysql_library_end): nothing is opened ahead any more */
  GMutex house_lock;     /* guards house_busy; held briefly, never across I/O */
  GCond house_idle;      /* signalled when house_busy becomes FALSE */
  gboolean house_busy;   /* the housekeeper is in a tick (maybe inside the client library) */
} PsBrokerState;

extern PsBrokerState ps_broker_state;
/* Short, as the code has always called it. */
#define B ps_broker_state

/* A connection (OPENING) just opened on a pool-owned handle (the key's template): watched
 * and close-on-exec until it is filled or lent (broker.c). */
void ps_broker_on_pool_handle(PsPhys *p, MYSQL *h);
