/* broker-state.h: the broker's process-wide state, shared by broker.c (the decisions),
 * broker_grain.c (the transaction grain), broker_fork.c (fork) and house.c (its background
 * threads) and by nothing else. Lock order: top of broker.c. */
#pragma once
#include <glib.h>
#include <mysql.h>

#include "config.h"
#include "conn.h"
#include "handle.h"
#include "hostslots.h"
#include "phys.h"
#include "pool.h"

typedef struct {
  GMutex init_lock;      /* the process's first call (init_once); first in the lock order */
  gboolean inited;       /* atomic: init_once is done */
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

/* broker.c, for broker_grain.c and broker_fork.c. */
void ps_broker_close_victims(GSList *victims, gboolean inherited);
PsPool *ps_broker_new_pool(void);
/* POOLSHIM_RESET_TIMEOUT in whole seconds, at least 1. */
unsigned int ps_broker_reset_timeout_s(void);
/* Claims the idle connection p the pool granted; FALSE when it was closed instead. */
gboolean ps_broker_claim_idle(PsPhys *p, unsigned int reset_s, gboolean *reset_failed);
/* m gets error 1040: POOLSHIM_TIMEOUT passed while waiting for a connection of pk. */
void ps_broker_pool_full(MYSQL *m, PsPoolKey *pk, const PsPoolSettings *settings, gint64 started);
/* Where one connect's time went (broker_wait.c). */
typedef struct {
  gint64 waited_us; /* in the pool's queue, all acquires */
  gint64 lost_us;   /* reading the reset replies of idle connections that then failed */
  guint lost;       /* idle connections found dead or failing their reset */
} PsConnectTrace;
/* The info line of a connect that took a second or more or found idle connections dead,
 * ending in `outcome`; nothing otherwise. */
void ps_broker_trace_note(PsPoolKey *pk, gint64 started, const PsConnectTrace *t,
                          const char *outcome);

/* broker_fork.c: the pthread_atfork handlers, and the child's pool of its own (a no-op
 * unless this process forked since the last call). */
void ps_broker_before_fork(void);
/* broker_init.c: the first call's set-up, once (B.inited, under B.init_lock). */
void ps_broker_init_first(void) __attribute__((noinline, cold));
void ps_broker_after_fork_parent(void);
void ps_broker_after_fork_child(void);
void ps_broker_adopt_fork(void);

/* broker_grain.c: POOLSHIM_GRAIN=transaction. */
/* One connect's or re-borrow's place in the grain's waiting (ps_broker_grain_acquire). */
typedef struct {
  gboolean wanting;
  gint64 next_us; /* when a takeable handle has been takeable long enough (0: none) */
  gint64 arrived; /* the pool's clock at the first wait: its place in the queue */
} PsGrainWait;
/* Gives the just-lent p's handle m a handle record when the grain and its pool allow. */
void ps_broker_grain_attach(PsPhys *p, MYSQL *m, PsPool *pool, PsPoolKey *pk);
void ps_broker_grain_acquire(PsPool *pool, PsPoolKey *pk, PsGrainWait *g, gint64 now_us,
                             gboolean may_grow, gint64 deadline, PsGrant *grant);
/* TRUE when the caller acquires again. */
gboolean ps_broker_grain_waits(PsPool *pool, PsPoolKey *pk, PsGrant *grant, PsGrainWait *g);
/* What the broker does for handle.c's records (ps_handle_setup). */
extern const PsHandleOps ps_broker_grain_ops;
