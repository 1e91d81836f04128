/* handle-state.h: the per-handle record and the registry of handles, shared by handle.c (the
 * owner's side: attach, settle, re-borrow, close) and handle_take.c (the taker's side) and by
 * nothing else. The handshake and lock order: the top of handle.c. */
#pragma once
#include <glib.h>
#include <mysql.h>

#include "handle.h"
#include "watch.h"

enum { H_BUSY, H_TAKEABLE, H_TAKING, H_TAKEN };

/* More distinct setup statements than this: the session is pinned (PS_PIN_SESSION). */
#define H_MAX_SETS 16
/* How long a handle is takeable before a waiter takes it (connection sharing's delay, as
 * MySQL Router's connection_sharing_delay): between two statements of one task a handle
 * comes back within microseconds, and taking it then makes both wait. */
#define H_TAKE_DELAY_US 300
/* ... or, for a handle seen coming back sooner, H_COMEBACK_FACTOR times its usual gap
 * between two of its commands (measured while someone waits: comeback_us), but never less
 * than this: a C loop's statements follow each other within tens of microseconds, a
 * Python ORM's within hundreds. */
#define H_TAKE_DELAY_MIN_US 50
#define H_COMEBACK_FACTOR 4
/* No delay after a command that the H_SLOW_STREAK last times it made the handle takeable
 * (with someone waiting) was not followed by another within H_TAKE_DELAY_US: a task's last
 * statement, after which the program thinks. Up to H_SIGS such commands per handle. */
#define H_SLOW_STREAK 3
#define H_SIGS 8
/* A re-borrow gets an idle handle's connection directly (a hand-over, past the pool's
 * queue) only while no waiter in the queue has waited longer than this. */
#define H_HAND_OVER_BOUND_US 100000

typedef struct {
  struct st_mariadb_methods methods; /* first: the handle's m->methods points here */
  const struct st_mariadb_methods *lib; /* the library's own table */
  MYSQL_DATA *(*read_rows)(MYSQL *, MYSQL_FIELD *, unsigned int);
  MYSQL *m;
  PsPhys *p;       /* the connection held; NULL while detached */
  PsPool *pool;
  PsPoolKey *pk;   /* held */
  PsGrainCounts *counts; /* pk's: takes, re-borrows, pins (atomic adds) */
  guint generation; /* H.generation at attach: another one means inherited across fork */
  gint state;
  gint64 takeable_us; /* atomic: when it last became takeable */
  gint64 comeback_us; /* atomic: its usual gap (a moving average of those shorter than
                         H_TAKE_DELAY_US) from takeable to its next command; 0: none seen */
  gint64 settled_us;  /* the owner's: when settle made it takeable with the clock read (0:
                         not read; a waiter's later stamp of takeable_us is no sample) */
  /* The commands that ended its stretches (the owner's): a signature of each (its text
   * without digits) and how many times in a row nothing followed it within
   * H_TAKE_DELAY_US. cmd_sig: the command in flight (0: nobody waited, not computed);
   * settle_sig: the one that made it takeable. */
  guint32 cmd_sig, settle_sig;
  guint32 sigs[H_SIGS];
  guint8 streak[H_SIGS];
  gboolean at_once;   /* atomic: takeable without a delay (its last command ends stretches) */
  /* The handle's session as it differs from the pool's fresh one, known without asking the
   * server: the session setup statements that succeeded (ps_watch_prelude_var), in order,
   * the last one per variable; its LAST_INSERT_ID(); and, while detached, its database.
   * Anything else the watch cannot name pins the connection (ps_watch_pinned). */
  GPtrArray *sets;     /* of char*, at most H_MAX_SETS */
  char *pending_set;   /* the command in flight is one of them: kept if it succeeds */
  guint pending_var;
  guint64 lid;         /* LAST_INSERT_ID() when known */
  gboolean lid_unknown; /* an insert id may have been generated since: read at the take */
  char *uservars;      /* SET @`a`=..., read at the last take that followed their use */
  char *db;        /* the handle's database (NULL: none), kept by the owner: the library
                      writes m->db only after mysql_select_db's settle */
  gboolean lost;   /* detached: the session could not be read; commands fail as lost */
  gboolean handed; /* the re-borrow got a connection whose session is the handle's already */
  gboolean asked;  /* the last command was SHOW WARNINGS / ERRORS: its warnings were read */
  gboolean asks_lid; /* the command is SELECT LAST_INSERT_ID(): its row is the handle's */
  /* A re-borrowed session's LAST_INSERT_ID() is not the handle's: DO LAST_INSERT_ID(lid) is
   * sent at the re-borrow, its reply not awaited; the handle's command follows it on the
   * wire (one round trip for both), and its reply is read first (read_prefix). */
  gboolean lid_prefix;
  gboolean prefix_unread;
} PsHandle;

typedef struct {
  PsHandleOps ops;
  GMutex lock;       /* guards `all` */
  GPtrArray *all;    /* of PsHandle */
  guint force_take;  /* POOLSHIM_TEST_FORCE_TAKE (test library only), percent */
  guint take_pause_ms; /* POOLSHIM_TEST_TAKE_PAUSE_MS (test library only; atomic) */
  char *take_pause_file; /* POOLSHIM_TEST_TAKE_PAUSE_FILE */
  guint generation;  /* forks this process descends from (written in the child alone) */
  /* Owners that find their handle TAKING sleep on `park` until the taker ends it
   * (ps_handle_end_taking). One for every handle: such waits are few and short (at most a
   * take's one query), and a taker wakes nobody unless `sleepers` (atomic) says someone
   * sleeps. A leaf lock like `lock`; both are held across fork(). */
  GMutex park_lock;
  GCond park;
  gint sleepers;
} PsHandleRegistry;
extern PsHandleRegistry ps_handles; /* handle.c's; the library's own (poolshim.map) */

/* The taker's end of TAKING (to BUSY: the owner keeps its connection; or TAKEN): wakes
 * an owner waiting it out. h may be freed by its owner from here on. */
void ps_handle_end_taking(PsHandle *h, gint state);

/* handle_take.c, for the owner's side. */
void ps_handle_take_out(PsHandle *h);
gint64 ps_handle_note_comeback(PsHandle *h);
PsPhys *ps_handle_direct(gpointer data, gint64 arrived_us, gint64 *next_us, gpointer waiter);
