/* watch.h: what a borrower did to its session that a reset does not undo. Each pooled
 * connection gets its own copy of the client library's public command table
 * (MYSQL.methods, st_mariadb_methods in mysql.h) whose db_command looks at every command
 * before the library sends it. The table travels with the connection through ps_conn_move.
 * COM_RESET_CONNECTION keeps the current database, the role and COM_SET_OPTION: the pool
 * re-selects the database only when the borrower may have changed it, and never pools a
 * session whose state no reset clears. (The role is restored at every return: a stored
 * function or trigger can SET ROLE for good, and nothing in the statement text shows it.) */
#pragma once
#include <glib.h>
#include <mysql.h>

typedef enum {
  PS_DIRTY_DB = 1 << 0,         /* USE, COM_INIT_DB, DROP DATABASE, dynamic SQL, CALL */
  PS_DIRTY_UNPOOLABLE = 1 << 1, /* profiling history, COM_SET_OPTION, unknown commands, a
                                   reconnect: survive every reset or cannot be known */
  PS_DIRTY_ALL = PS_DIRTY_DB | PS_DIRTY_UNPOOLABLE,
} PsDirty;

typedef struct PsWatch PsWatch;

/* Starts watching the connection in m (just connected). Freed after the connection is
 * closed: the library calls through the table until then. */
PsWatch *ps_watch_new(MYSQL *m);
void ps_watch_free(PsWatch *w);

/* What the commands sent through m since the last take may have changed (PsDirty bits),
 * and starts over. PS_DIRTY_ALL when m no longer uses the watched table (the library
 * reconnected it, and the new session was not watched) or w is NULL: unknown means dirty. */
guint ps_watch_take(MYSQL *m, PsWatch *w);

/* Answering ahead. After a borrower whose first command was `SET autocommit=0|1` (the
 * text mysql_autocommit sends), the next reset sends that statement too, after the
 * reset's own commands, and leaves its reply unread: when the next borrower's first
 * command is the same text, it is not sent again, and the library reads the reply the
 * server already wrote (the round trip was paid at the return, off the critical path).
 * Any other first command first reads that reply and, when the prelude changed the
 * reset session's autocommit, puts it back (one round trip, only then).
 *
 * ps_watch_lent: the connection (in m, its reset replies read) is lent: the borrower's
 * first command is noted, and the session's autocommit kept for an undo. */
void ps_watch_lent(MYSQL *m, PsWatch *w);
/* The borrower's first command when it was a prelude (a static string), else NULL. */
const char *ps_watch_first_prelude(PsWatch *w);
/* The reset sent `prelude` after its own commands; its reply is still on the wire. */
void ps_watch_set_ahead(PsWatch *w, const char *prelude);
gboolean ps_watch_ahead(const PsWatch *w);
/* Reads a prelude reply nobody asked for (and undoes the prelude); FALSE on failure. */
gboolean ps_watch_settle(MYSQL *m, PsWatch *w);

/* The bits one statement text sets (for unit tests). */
guint ps_watch_classify_sql(const char *sql, size_t len);
