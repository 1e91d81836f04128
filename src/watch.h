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

/* The bits one statement text sets (for unit tests). */
guint ps_watch_classify_sql(const char *sql, size_t len);
