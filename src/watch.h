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
  PS_DIRTY_FULL = 1 << 2,       /* POOLSHIM_RESET=auto: something only a full reset undoes
                                   (session.h), a state change the server flagged that no
                                   statement explains, a generated insert id */
  PS_DIRTY_ALL = PS_DIRTY_DB | PS_DIRTY_UNPOOLABLE | PS_DIRTY_FULL,
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
/* Auto mode, the common return: TRUE when the borrow changed nothing the watch knows of (no
 * dirty bit, no variable to set back, no possible transaction, no setup statement noted or
 * kept), leaving the watch as ps_watch_take then ps_watch_keep would; FALSE (and nothing
 * taken) otherwise. */
gboolean ps_watch_take_untouched(MYSQL *m, PsWatch *w);

/* Answering ahead. A borrower's leading session setup (up to PS_PRELUDE_MAX statements of
 * the forms ps_watch_is_prelude accepts: what MySQLdb and Django send at every connect,
 * `SET NAMES utf8mb3`, `SET autocommit=0`, `SET SESSION TRANSACTION ISOLATION LEVEL ...`)
 * is noted; the next reset sends the same statements after its own commands and leaves
 * their replies unread. While the next borrower sends those statements in that order, they
 * are not sent again: the library reads the replies the server already wrote, in the same
 * session state (their round trips were paid at the return, off the critical path). At the
 * first other command, the remaining replies are read and the restore callback makes the
 * session the reset one plus the statements the borrower did send, before its command.
 * Nothing of this reaches the server's view of the session that the borrower's own
 * statements would not have made. */
#define PS_PRELUDE_MAX 8
#define PS_PRELUDE_LEN 256

/* Makes the session in m the reset session again, then runs replay[0..n) (the restore
 * runs its commands with the watch out of the way). FALSE with the error set on m. */
typedef gboolean (*PsWatchRestore)(MYSQL *m, gpointer data, const char *const *replay, guint n);

/* A statement whose only effect is setting the session's character set, autocommit,
 * transaction characteristics or one of a few session variables to a literal. */
gboolean ps_watch_is_prelude(const char *sql, size_t len);

/* Session variables whose fresh value is the global one, so that `SET SESSION v = DEFAULT`
 * restores them (POOLSHIM_RESET=auto). */
typedef enum {
  PS_VAR_AUTOCOMMIT = 1 << 0,
  PS_VAR_SQL_MODE = 1 << 1,
  PS_VAR_TIME_ZONE = 1 << 2,
  PS_VAR_TX_ISOLATION = 1 << 3,
  PS_VAR_TX_READ_ONLY = 1 << 4,
  PS_VAR_SQL_AUTO_IS_NULL = 1 << 5,
  PS_VAR_LAST_INSERT_ID = 1 << 6, /* an OK packet with a generated id: set back to 0 */
  PS_VAR_COUNT = 7
} PsVar;
/* ps_watch_is_prelude, and the PsVar bit of the variable it sets in *var (0 when `= DEFAULT`
 * does not restore it: SET NAMES, the character set variables). */
gboolean ps_watch_prelude_var(const char *sql, size_t len, guint *var);
/* The PsVar bits of the variables this borrow set after its leading setup, when nothing
 * else needs a full reset; and those the leading setup sets (kept, or run ahead): a
 * variable in both cannot be restored alone. */
guint ps_watch_restore_vars(const PsWatch *w);
guint ps_watch_setup_vars(const PsWatch *w);
/* The connection is lent: its leading preludes are noted from now on. */
void ps_watch_lent(PsWatch *w);
/* The preludes this borrow began with (owned by w, valid until the next call below). */
guint ps_watch_learnt(PsWatch *w, const char *const **stmts);
/* The reset sent them after its own commands, replies unread; restore undoes a mismatch. */
void ps_watch_sent_ahead(PsWatch *w, PsWatchRestore restore, gpointer data);
/* A query was sent without its reply being read (mysql_send_query, then no
 * mysql_read_query_result): the next reply on the wire is not the next command's. */
gboolean ps_watch_reply_unread(const PsWatch *w);
/* Replies of statements run ahead are still on the wire (not kept ones: they owe none). */
gboolean ps_watch_ahead(const PsWatch *w);
/* POOLSHIM_RESET=auto: session tracking is on in m's session (session.h); every command is
 * classified, and the replies looked at (PS_DIRTY_FULL). */
void ps_watch_set_auto(PsWatch *w);
gboolean ps_watch_auto(const PsWatch *w);
/* A command of this borrow failed while autocommit was off: a transaction may be open
 * although the status flags (not carried by error packets) do not say so. */
gboolean ps_watch_maybe_in_trans(const PsWatch *w);
/* Auto mode, a return with nothing to reset: the session keeps this borrow's leading
 * setup statements (or still holds all those kept before, when the borrower sent only the
 * first of them). The next borrower's identical statements are answered with the replies
 * the server gave them, without sending anything; at its first other command, restore
 * makes the session the reset one plus what it did send. */
void ps_watch_keep(PsWatch *w, PsWatchRestore restore, gpointer data);
/* Statements run ahead or kept that the borrower has not sent (yet): the session holds
 * more than its commands made, and (not kept) their replies are still on the wire. */
gboolean ps_watch_unmatched(const PsWatch *w);
/* How many statements the session holds for the next borrower (kept mode). */
guint ps_watch_kept(const PsWatch *w);
/* Reads those replies (no restore: a reset follows); FALSE when the connection failed. */
gboolean ps_watch_settle(MYSQL *m, PsWatch *w);

/* The bits one statement text sets (for unit tests). */
guint ps_watch_classify_sql(const char *sql, size_t len);
/* For the transaction grain (ps_watch_db_command): a statement the auto scan calls FULL
 * only for the user variables it reads or sets, or (INSERT or REPLACE ... RETURNING) only
 * for its RETURNING word. */
gboolean ps_watch_uservar_only(const char *sql, size_t len);
gboolean ps_watch_returning_only(const char *sql, size_t len);

/* POOLSHIM_GRAIN=transaction (handle.c): the application's handle has its own command table
 * that calls these with the watch of the connection it holds now. *returning: the command
 * is an INSERT or REPLACE ... RETURNING that does not pin (its LAST_INSERT_ID() comes
 * without an OK packet). */
int ps_watch_db_command(PsWatch *w, MYSQL *mysql, enum enum_server_command command,
                        const char *arg, size_t length, my_bool skip_check, void *opt_arg,
                        gboolean *returning);
int ps_watch_read_query_result(PsWatch *w, MYSQL *mysql);
/* The watched table (what a connection's holder points its methods at). */
const struct st_mariadb_methods *ps_watch_methods(PsWatch *w);
/* The library's own table, which the watched one wraps. */
const struct st_mariadb_methods *ps_watch_orig(PsWatch *w);
/* Since the lend the session holds what only a full reset undoes, other than a database
 * change or a variable the auto reset restores alone (or nothing is known: no auto mode). */
gboolean ps_watch_pinned(const PsWatch *w);
/* Commands since the lend read or set user variables (not pinned for that while the
 * server lists them: set_uservars_restorable, process-wide, on at start). */
gboolean ps_watch_uservars_used(const PsWatch *w);
void ps_watch_set_uservars_restorable(gboolean on);
/* The pool's own commands (a re-borrow's restore): not looked at. */
void ps_watch_set_bypass(PsWatch *w, gboolean on);
/* ... on now: a reply being read is the pool's (a restore inside the borrower's command,
 * read through the borrower's own table), not the end of the borrower's command. */
gboolean ps_watch_bypassed(const PsWatch *w);
/* The session was changed behind the watch's back: the next return resets it fully. */
void ps_watch_mark_full(PsWatch *w);
