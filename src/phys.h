/* phys.h: one physical connection's life: its one state enum, the table of allowed moves,
 * the one transition function every module goes through, the table of attached handles and
 * the one close-then-free sequence. No policy (broker.c decides), no MYSQL internals: the
 * client-library operations it needs are given to it (PsPhysOps), fakes in unit tests. */
#pragma once
#include <glib.h>
#include <mysql.h>

#include "conn.h"
#include "hostslots.h"
#include "pool.h"
#include "watch.h"

/* A connection's states. A state change is the only way its lists and counts change:
 * the pool's idle queue holds exactly IDLE and RESET_SENT, the handle table exactly the
 * attached ones (ps_phys_attach to ps_phys_detach), ps_phys_count() follows every move.
 *
 *   OPENING -> LENT (opened on the application's handle or lent at once) | IDLE (filled)
 *   LENT -> RETURNING (mysql_close) -> IDLE | RESET_SENT (its reset's replies still owed)
 *   IDLE | RESET_SENT -> CLAIMED (granted to a connect: replies read, checked) -> LENT
 *   LENT -> DOOMED (change_user, replication: closes at return)
 *   any live state -> ORPHANED (a forked child's copy of the parent's) -> CLOSED
 *   any live state -> CLOSED (with a reason, then freed)
 * POOLSHIM_GRAIN=transaction (handle.c): LENT <-> TAKEABLE | PINNED while attached;
 *   a take detaches (RETURNING), then the pool gets it back, or a re-borrowing handle of
 *   the same key gets it at once: RETURNING -> CLAIMED -> LENT. */
typedef enum {
  PS_PHYS_OPENING,    /* being opened; counted by the pool as opening (open - idle - lent) */
  PS_PHYS_IDLE,       /* clean, in the idle queue */
  PS_PHYS_RESET_SENT, /* in the idle queue; the replies of its reset (`pending`) are owed */
  PS_PHYS_CLAIMED,    /* granted to a connect: replies read, liveness and proof checked */
  PS_PHYS_LENT,       /* attached to an application handle */
  PS_PHYS_TAKEABLE,   /* attached, between transactions, another handle may take it */
  PS_PHYS_PINNED,     /* attached, holds session state no other handle may see */
  PS_PHYS_DOOMED,     /* attached or detached: never pooled again, closes at its return */
  PS_PHYS_RETURNING,  /* detached from its handle: checks and its reset under way */
  PS_PHYS_ORPHANED,   /* inherited across fork: the parent's session, freed without a word */
  PS_PHYS_CLOSED,     /* closed with a reason; freed in the same sequence */
  PS_PHYS_STATES
} PsPhysState;

typedef struct PsPhys {
  PsPhysState state; /* only ps_phys_enter writes it */
  PsItem *item;      /* the pool's record: slot, age, idle time */
  PsPool *pool;      /* the generation it belongs to (a forked child has a new one) */
  MYSQL *shell;      /* pool-owned struct that holds it while not lent; kept for reuse */
  MYSQL *handle;     /* the application's struct while in the handle table */
  PsConnProfile *profile;
  int pending;      /* RESET_SENT (and CLAIMED until read): the reset's replies owed */
  PsPlan plan;      /* what the last return sent (POOLSHIM_RESET=auto chooses) */
  const char *doom; /* DOOMED: why it is never pooled again */
  gint64 lent_since_us;
  gboolean leak_warned;
  int nframes; /* the borrower's backtrace, kept only with POOLSHIM_LEAK_WARN */
  void *frames[16];
  gboolean cloexec_done;
  int slot_fd;        /* POOLSHIM_HOST_MAX slot this connection holds; -1 = none */
  PsHostSlots *slots; /* ... and the server's slot set it came from */
  PsWatch *watch;     /* what borrowers did to the session that a reset keeps */
} PsPhys;

/* What closing needs from the client library (conn.c, watch.c in the library). */
typedef struct {
  void (*close)(MYSQL *m);                          /* politely (COM_QUIT), frees m */
  void (*close_and_wait)(MYSQL *m, int timeout_ms); /* ... and waits for the server's close */
  int (*close_keep_socket)(MYSQL *m);               /* ... keeping a socket to wait on */
  void (*wait_sockets_closed)(const int *fds, guint n, gint64 deadline_us);
  void (*abandon)(MYSQL *m);      /* without a word (fork, dead server) */
  void (*close_handle)(MYSQL *m); /* the application's handle: mysql_close */
  void (*watch_free)(PsWatch *w);
} PsPhysOps;

/* Once, before any connection: the operations and how long a close that gives back a
 * POOLSHIM_HOST_MAX slot waits for the server (ms). */
void ps_phys_setup(const PsPhysOps *ops, int slot_wait_ms);

const char *ps_phys_state_name(PsPhysState state);
gboolean ps_phys_allowed(PsPhysState from, PsPhysState to);

/* A new connection in OPENING, of `pool`, holding a host slot (or -1). */
PsPhys *ps_phys_new(PsPool *pool, PsConnProfile *profile, int slot_fd, PsHostSlots *slots);

/* The one transition. A move the table does not allow is a bug: it is refused (FALSE, the
 * state is unchanged), logged as an error, and a g_critical in test builds. Every move is
 * logged at debug level with `reason` (may be NULL) and counted. */
gboolean ps_phys_enter(PsPhys *p, PsPhysState to, const char *reason);

/* The moves that are also moves between the pool's lists (pool.c, under its lock): the
 * idle queue holds exactly the IDLE and RESET_SENT ones.
 * opened: after the pool granted a slot (PS_GRANT_OPEN), p (OPENING) gets its item.
 * fill: OPENING -> IDLE into the idle queue (POOLSHIM_MIN_IDLE); a waiter may take it at
 *   once, so p->item is written under the pool's lock first.
 * release: RETURNING or CLAIMED -> RESET_SENT (`pending` > 0) or IDLE, into the idle
 *   queue; or closed when the pool says it has expired (FALSE). `reset`: for the counters.
 * claim: one the pool granted from its idle queue -> CLAIMED; TRUE when the replies of its
 *   reset are still owed (`pending`). */
void ps_phys_opened(PsPhys *p, PsPoolKey *key);
void ps_phys_fill(PsPhys *p, PsPoolKey *key);
gboolean ps_phys_release(PsPhys *p, gboolean reset, const char *reason);
gboolean ps_phys_claim(PsPhys *p);

/* Handle table. attach: OPENING or CLAIMED -> LENT inside `m`. detach: takes m's
 * connection out of the table (NULL: none); LENT, TAKEABLE and PINNED enter RETURNING,
 * DOOMED and ORPHANED stay as they are (the caller closes them). One lookup, no I/O. */
gboolean ps_phys_attach(PsPhys *p, MYSQL *m);
PsPhys *ps_phys_detach(MYSQL *m);
/* LENT -> DOOMED for the connection attached to m, if any. */
void ps_phys_doom(MYSQL *m, const char *reason);
/* How many are attached, read without a lock (0: no lookup is worth making). */
guint ps_phys_attached(void);
/* In a forked child, before anything else: every attached connection enters ORPHANED (its
 * host slot is the parent's). The parent's connections that were opening are not ours. */
void ps_phys_orphan_attached(void);
/* Calls fn for each attached connection under the table's lock (no I/O in fn). */
void ps_phys_foreach_attached(void (*fn)(PsPhys *p, gpointer data), gpointer data);
void ps_phys_lock_for_fork(void);
void ps_phys_unlock_after_fork(void);

/* The one close-then-free sequence: enters CLOSED with `why` (NULL: the reason's name),
 * tells the pool when it still counted it (`reason` reaches the counters), closes the
 * application's handle `m` if any and the shell, gives back the host slot after the
 * server let the session go, and frees. ORPHANED or PS_CLOSE_DEAD: without a word. */
void ps_phys_close(PsPhys *p, MYSQL *m, PsCloseReason reason, const char *why);
/* Idle connections the pool handed back (close_reason set): each closed as above; with
 * `orphaned`, entering ORPHANED first (a forked child's copy of the parent's). */
void ps_phys_close_items(GSList *items, gboolean orphaned);
/* At exit: the same for every item, the waits for the servers' closes all at once, at
 * most wait_us in total. */
void ps_phys_close_items_at_exit(GSList *items, gint64 wait_us);

/* Live connections in a state (CLOSED: being closed now). */
guint ps_phys_count(PsPhysState state);
/* Moves refused since the start (each one a bug). */
guint ps_phys_refused(void);
