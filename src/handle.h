/* handle.h: POOLSHIM_GRAIN=transaction (issue 13). One record per application handle that
 * holds a pooled connection under the transaction grain: attached (its connection inside
 * the handle's struct, busy or takeable) or detached (taken: what its session differs by
 * from a fresh one waits for the handle's next command, which borrows a connection again
 * and restores it in one write: database, setup statements, user variables,
 * LAST_INSERT_ID()).
 *
 * The handle's struct gets its own command table (the watch's, with the entry points
 * below): a command first makes the handle busy (one compare-and-swap), and re-borrows when
 * the connection was taken. A taker (a connect or a re-borrow that found no connection, in
 * another thread, or the owner after a command while one of those waits) claims a takeable handle with a compare-and-swap and then only reads the handle's
 * struct: the session moves into the pool's struct (ps_conn_copy_out); the handle keeps
 * everything it shows and an alias of the socket, which its owner drops at its next call.
 * Between the owner's marking a handle takeable and its next command, the library writes
 * none of the fields a taker reads (they change only inside a command). */
#pragma once
#include <glib.h>
#include <mysql.h>

#include "phys.h"
#include "pool.h"

/* Why a handle's connection may not be taken (counted per reason and pool: pool.h's
 * PsGrainCounts, in this order; the statistics file names them, stats.c). */
typedef enum {
  PS_PIN_TRANSACTION,  /* open transaction, XA, a failed statement with autocommit off */
  PS_PIN_AUTOCOMMIT,   /* autocommit off: the next statement opens a transaction */
  PS_PIN_SESSION,      /* temporary table, lock, PREPARE, HANDLER, another
                          variable: what only a full reset undoes (the statement watch) */
  PS_PIN_STATEMENT,    /* a server-side prepared statement (COM_STMT_PREPARE) is open */
  PS_PIN_RESULT,       /* an unread or streamed result, more results */
  PS_PIN_WARNINGS,     /* warnings SHOW WARNINGS may still ask for (until the next command) */
  PS_PIN_OTHER,        /* compression, a client-side error, a lost connection */
  PS_PIN_REASONS
} PsPinReason;

const char *ps_handle_pin_name(PsPinReason reason);

/* What the broker does for the handles (broker_grain.c). */
typedef struct {
  /* A connection of pk for a detached handle's command, waiting like a connect: in
   * p->shell, CLAIMED or OPENING. When the pool has none, direct(data) is asked for one
   * taken from an idle handle (NULL: none yet; *next_us: when to ask again, 0: a slice;
   * arrived_us: when the re-borrow first waited, on the pool's clock, 0: not yet). NULL
   * with m's error set (the connect's error 1040 after POOLSHIM_TIMEOUT). */
  PsPhys *(*reborrow)(PsPoolKey *pk, MYSQL *m,
                      PsPhys *(*direct)(gpointer data, gint64 arrived_us, gint64 *next_us,
                                        gpointer waiter),
                      gpointer data);
  /* A take by `waiter` (ps_handle_take's, direct's) claimed a handle and may read from its
   * connection now: when it is the key's poller, another waiter polls meanwhile. */
  void (*claimed)(PsPoolKey *pk, gpointer waiter);
  /* A taken connection (RETURNING, in p->shell): reset and back to the pool. */
  void (*give_back)(PsPhys *p);
  /* A connection that failed while being taken or restored: closed. */
  void (*discard)(PsPhys *p, const char *why);
  /* In a forked child: the child's own key (held, in *pool) for a key of the parent's pool
   * (a handle taken before fork), with the same digest, settings and connection profile. */
  PsPoolKey *(*adopt)(PsPoolKey *inherited, PsPool **pool);
  /* Seconds that bound each read and write of the pool's own round trips in a take (its
   * query, a hand-over's restore) and a re-borrow's restore: POOLSHIM_RESET_TIMEOUT, as
   * for a reset. */
  unsigned int (*io_timeout_s)(void);
} PsHandleOps;

void ps_handle_setup(const PsHandleOps *ops);

#ifdef PS_TEST_HOOKS
/* A test hook's pause (test library only; here with the grain's own hooks, also for
 * broker_init.c's): makes `file` and waits until the test removes it or `ms` pass, then
 * removes it; without a file, sleeps `ms`. */
void ps_handle_test_pause(const char *file, guint ms);
#endif

/* p was just lent into m (LENT, its watch in auto mode): m's commands go through a handle
 * record from now on; pk is a hold the record keeps until the handle closes. FALSE (no
 * record, pk not kept) when the connection is not watched. */
gboolean ps_handle_attach(MYSQL *m, PsPhys *p, PsPool *pool, PsPoolKey *pk);

/* mysql_close of m: waits out a take under way; a detached handle is left without a
 * connection (the real close sends nothing); an attached one gets the watch's table back
 * (the normal return follows). TRUE when m had a record. */
gboolean ps_handle_closing(MYSQL *m);

/* fork(): the registry's lock is held across it (taken last, broker.c's lock order); in
 * the child, the records from then on are the parent's handles: never takeable, and a taken
 * one re-borrows from the child's own pool (PsHandleOps.adopt). */
void ps_handle_lock_for_fork(void);
void ps_handle_unlock_after_fork(gboolean child);

/* A connect or re-borrow of pk that found no connection: takes the connection of one
 * takeable handle of pk and gives it back to the pool (to its oldest waiter). TRUE when
 * one was given back. (A handle that becomes takeable while ps_pool_key_wanted wakes the
 * key's poller: ps_pool_key_poke.) waiter: the caller's, for PsHandleOps.claimed. */
gboolean ps_handle_take(PsPoolKey *pk, gint64 *next_us, gpointer waiter);
/* Whether a handle of pk is takeable now (delay or not). Read after the pool asked for a
 * poke (ps_pool_grain_done): its seq_cst loads pair with settle's store. */
gboolean ps_handle_any_takeable(PsPoolKey *pk);

