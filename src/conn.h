/* conn.h: everything that knows MariaDB Connector/C's internals: the pool key of a connect
 * (conn_key.c), moving a live connection between MYSQL structs, liveness and closing
 * (conn.c), the session profile and reset (conn_reset.c). Callers see MYSQL pointers and
 * these functions only; no pool policy lives here. */
#pragma once
#include <glib.h>
#include <mysql.h>

#include "config.h"
#include "watch.h"
#include "pool.h"

/* The real client-library entry points, resolved by interpose.c. */
typedef struct {
  MYSQL *(*real_connect)(MYSQL *, const char *, const char *, const char *, const char *,
                         unsigned int, const char *, unsigned long);
  void (*close)(MYSQL *);
  my_bool (*change_user)(MYSQL *, const char *, const char *, const char *);
  void (*server_end)(void);
  MYSQL *(*init)(MYSQL *);
  int (*optionsv)(MYSQL *, enum mysql_option, const void *, ...);
  int (*get_optionv)(MYSQL *, enum mysql_option, void *, ...);
  int (*reset_connection)(MYSQL *);
  int (*select_db)(MYSQL *, const char *);
  int (*real_query)(MYSQL *, const char *, unsigned long);
  MYSQL_RES *(*store_result)(MYSQL *);
  MYSQL_ROW (*fetch_row)(MYSQL_RES *);
  void (*free_result)(MYSQL_RES *);
  int (*next_result)(MYSQL *);
  int (*set_character_set)(MYSQL *, const char *);
  unsigned long (*get_client_version)(void);
  my_socket (*get_socket)(MYSQL *);
  int (*ssl_set_ex_data)(void *ssl, int idx, void *data); /* OpenSSL, may be NULL */
} PsClientApi;

extern PsClientApi ps_real;

/* Checks once that the loaded library is a version and layout this code was verified
 * with. On FALSE, *why says what differs and the caller must pass everything through. */
gboolean ps_conn_library_ok(const char **why);

/* What makes two connects interchangeable: a keyed 128-bit digest over every setting that
 * shapes the session (the password only enters the digest), and the resolved arguments,
 * which point into the caller's strings and options: valid during the connect only. */
typedef struct {
  guint8 digest[PS_KEY_DIGEST_LEN];
  const char *host, *user, *password, *db, *unix_socket;
  unsigned int port;
} PsConnKey;

/* Draws the per-process random key of the digest (ps_conn_library_ok calls it once). */
void ps_conn_key_seed(void);
/* Fills *key for a connect on m with these arguments, resolving defaults from m's options
 * as mysql_real_connect does. Returns FALSE (and *why) for handles that must not be pooled. */
gboolean ps_conn_key(MYSQL *m, const char *host, const char *user, const char *passwd,
                     const char *db, unsigned int port, const char *unix_socket,
                     unsigned long client_flag, PsConnKey *key, const char **why);
/* host:port (or localhost:socket): the server, as the client names it. */
void ps_conn_key_server(const PsConnKey *key, char *buf, gsize len);
/* user@host:port/db (or user@localhost:socket/db): names a pool, never with secrets. */
void ps_conn_key_label(const PsConnKey *key, char *buf, gsize len);
/* TRUE when the pooled connection authenticated as the key's user with its password. */
gboolean ps_conn_same_identity(MYSQL *pooled, const PsConnKey *key);

/* The application's connect attributes, without those the library adds by itself at every
 * connect (_client_name, ...): two NULL-terminated arrays of the library's own strings, or
 * NULL when there are none (g_free the arrays, not the strings). Returns their number. */
guint ps_conn_user_attributes(MYSQL *m, char ***keys, char ***values);
/* A copy of the handle's MYSQL_INIT_COMMAND statements, NULL-terminated (g_strfreev). */
char **ps_conn_init_commands(MYSQL *m);

/* A recipe to open more connections of one key without the application (POOLSHIM_MIN_IDLE,
 * background replacement): the connect arguments and every option the key covers, replayed
 * onto a fresh handle (template.c). */
typedef struct PsConnTemplate PsConnTemplate;
/* From a handle that has just connected with these arguments. NULL (and *why) when a
 * replayed handle would not give the same pool key: such a pool is never filled ahead. */
PsConnTemplate *ps_conn_template_new(MYSQL *m, const char *host, const char *user,
                                     const char *passwd, const char *db, unsigned int port,
                                     const char *unix_socket, unsigned long client_flag,
                                     const guint8 digest[PS_KEY_DIGEST_LEN], const char **why);
void ps_conn_template_free(PsConnTemplate *t);
/* Opens one connection on a new pool-owned handle (blocking: call it with no lock held),
 * within timeout_s seconds (0: the application's connect timeout, at most 10 s). NULL on
 * failure, with the client library's message in err. */
MYSQL *ps_conn_template_open(const PsConnTemplate *t, unsigned int timeout_s, char *err,
                             gsize errlen);

/* What the client API shows right after mysql_real_connect returns (mysql_affected_rows,
 * mysql_insert_id, ...): the auth OK packet's, or the last init command's. */
typedef struct {
  my_ulonglong affected_rows, insert_id;
  unsigned int field_count, warning_count;
  gboolean has_info; /* mysql_info() was not NULL (an init command's message) */
} PsConnFresh;

/* What a fresh connection of one key looks like; shared by all its connections. */
typedef struct {
  char *db;                               /* NULL: no default database */
  char *user;                             /* the authenticated user, to catch a changed one */
  char *role;                             /* CURRENT_ROLE() of a fresh session; NULL = none */
  char *role_sql;                         /* the SET ROLE statement that restores it */
  gboolean no_reset_command;              /* the server answered COM_RESET_CONNECTION 1047 */
  const struct ma_charset_info_st *charset; /* the handshake charset */
  char **init_commands;                   /* NULL-terminated */
  unsigned long wait_timeout_s;           /* the server's idle limit for this session; 0 unknown */
  unsigned int server_status;             /* what the connect left in server_status: the
                                           * client's view of autocommit in a fresh session */
  gboolean init_connect;                  /* the server's init_connect is set: it may give a
                                           * fresh session other values than the global ones */
  gboolean track;                         /* POOLSHIM_RESET=auto: session tracking is turned on
                                           * in every connection and after every reset */
  PsConnTemplate *opener;                 /* opens more of this key without the application
                                           * (MIN_IDLE, growing past busy ones); or NULL */
  PsConnFresh fresh;                      /* what the API showed after the first connect */
} PsConnProfile;

/* Captures the profile from a handle that has just really connected (one query for the
 * role and wait_timeout, in one write with the statement that turns session tracking on
 * when `track`; what the connect left visible is recorded first, for
 * ps_conn_present_fresh).
 * NULL when that query failed: the connection is then broken, and nothing is learnt. */
PsConnProfile *ps_conn_profile_new(MYSQL *m, const char *requested_db, gboolean track);
/* Turns session tracking on in a connection just opened (PS_SESSION_TRACKING_SQL, one round
 * trip; the handle's visible state is left as the connect left it). FALSE: it failed. */
gboolean ps_conn_track_session(MYSQL *m);
void ps_conn_profile_free(gpointer profile);

/* A pool-owned MYSQL that holds a connection while it is idle. Its timeouts bound the
 * reads of a pending reset's replies (TLS reads take them from the struct's options). */
MYSQL *ps_conn_shell_new(unsigned int timeout_s);

/* The transplant: the live connection in `from` moves to `to`, and `to`'s (empty) state
 * moves to `from`. Each struct keeps its own options, statements and allocation flag; the
 * text of the last error stays too, emptied on both (mysql_error() is "" until the next).
 * Every back-pointer is repaired; this mirrors mariadb_reconnect's `*mysql = tmp_mysql`. */
void ps_conn_move(MYSQL *to, MYSQL *from);
/* POOLSHIM_GRAIN=transaction. copy_out: the session in the handle `from` is given to the
 * pool's struct `to` (its own read buffer, copies of the strings) without writing `from`,
 * which keeps everything it shows and an alias of the socket (ps_conn_forget drops it, in
 * the owner's thread). copy_in: the session in the pool's struct `from` moves into the
 * handle `to`, which keeps what it shows (the database and character set included). */
gboolean ps_conn_copy_out(MYSQL *to, const MYSQL *from);
void ps_conn_forget(MYSQL *m);
/* The transaction grain's restore, in one write: `query` (unless NULL; the first column of
 * its first row into *value, g_free), COM_INIT_DB of db (unless NULL), then each
 * statement; every reply read. FALSE with m's error set at the first failure (the
 * connection is then out of step: closed by the caller). */
gboolean ps_conn_run_pipeline(MYSQL *m, const char *query, char **value, const char *db,
                              const char *const *stmts, guint n);
void ps_conn_copy_in(MYSQL *to, MYSQL *from);
/* "name=DEFAULT" for one PsVar bit (what gives a session variable back its fresh value
 * where that is the global one), or NULL. */
const char *ps_conn_var_default(guint var);
/* Sends one query without reading its reply (as mysql_send_query does): the caller reads
 * it, in order, before the reply of any command sent after it. FALSE with m's error set. */
gboolean ps_conn_send_query(MYSQL *m, const char *query);

/* The receive low-water mark of m's socket (SO_RCVLOWAT): a wait for its replies ends only
 * once `bytes` have arrived (or the server closed it). Only plain TCP, where bytes are the
 * replies' own (not TLS records, not compressed packets); TRUE when it was set. Set above
 * 1 only while replies of at least that many bytes are owed, and back to 1 before a wait
 * for fewer: a mark above what is owed makes the wait last until the read timeout. */
gboolean ps_conn_set_rcvlowat(MYSQL *m, int bytes);

/* Whether the connection in m may go back to a pool; *why names what prevents it. */
gboolean ps_conn_returnable(MYSQL *m, const char **why);

/* Makes the session in m look exactly like a fresh connection of `profile`, in two steps.
 * ps_conn_reset_begin runs on the application's handle before the move, so that
 * COM_CHANGE_USER uses the key's own auth options and connect attributes; it either
 * finishes the reset (returns 0), sends it without waiting (returns the number of replies
 * that ps_conn_reset_end must read before the connection is lent again), or fails (-1,
 * *why set: close the connection). Every round trip is bounded by `timeout_s` seconds:
 * the real mysql_close never waits for the server, so neither may this. */
/* What a return cost the server (POOLSHIM_RESET=auto chooses; the other modes have one). */
typedef enum {
  PS_PLAN_NOTHING,  /* auto: nothing changed, no command */
  PS_PLAN_KEEP,     /* auto: only the leading session setup changed: kept for the next one */
  PS_PLAN_ROLLBACK, /* auto: an open transaction, and nothing else: ROLLBACK alone */
  PS_PLAN_RESTORE,  /* auto: session variables set later: SET SESSION v = DEFAULT, ... */
  PS_PLAN_FULL,     /* auto or always: the full reset */
  PS_PLAN_MODE,     /* change_user, rollback or none: what the mode does */
  PS_PLAN_COUNT
} PsPlan;

int ps_conn_reset_begin(MYSQL *m, PsResetMode mode, PsConnProfile *profile, PsWatch *watch,
                        unsigned int timeout_s, PsPlan *plan, const char **why);
gboolean ps_conn_reset_end(MYSQL *m, int pending, PsPlan plan, PsConnProfile *profile,
                           unsigned int timeout_s, const char **why);

/* What ps_conn_reauthenticate found. */
typedef enum {
  PS_PROOF_OK,      /* the server accepted the credentials again */
  PS_PROOF_REFUSED, /* the server answered with an error (1045, 4151 locked, ...) */
  PS_PROOF_LOST,    /* the connection failed (a client-side error): says nothing */
} PsProof;

/* Proves that the server still accepts the credentials of the clean connection now in `m`
 * (just lent into the application's handle, whose options are the key's own):
 * COM_CHANGE_USER with the connection's own user and password and the key's database
 * re-runs authentication and the account checks. The session is left as a change_user
 * reset leaves it (a fresh one); the handle's own timeouts and reconnect flag are kept. On
 * PS_PROOF_REFUSED, *errnum names the server's error. */
PsProof ps_conn_reauthenticate(MYSQL *m, PsConnProfile *profile, PsWatch *watch,
                               unsigned int timeout_s, unsigned int *errnum);

/* Whether the replies of `pending` reset commands sent at return have arrived, so lending
 * the connection would not wait for the server. Looks without blocking (a peek at the
 * socket, counting packets, or TLS records); with compression any readable byte counts as
 * the replies. */
gboolean ps_conn_replies_arrived(MYSQL *m, int pending);

/* The pool's own round trips on a connection whose socket has an application's timeouts
 * (a take's query and restore, a re-borrow's restore): each read and write waits at most
 * timeout_s seconds, whatever those are (none by default); a shorter one of the
 * application's stays. Plain sockets need no system call: the socket layer reads and
 * writes with MSG_DONTWAIT and waits in poll() for pvio->timeout[] (ms;
 * plugins/pvio/pvio_socket.c). TLS does: OpenSSL reads the blocking socket itself, which
 * only the socket's own timeouts (setsockopt) end (secure/openssl.c), so those are set
 * and put back, through the pvio's set_timeout, which stores both. timeout_s 0 bounds
 * nothing. ps_conn_io_unbound puts back what `saved` holds (nothing when nothing was
 * changed); the socket's options match pvio->timeout[] again then. */
typedef struct {
  int read_ms, write_ms;
  gboolean kernel; /* set with setsockopt (TLS) */
} PsIoBound;
void ps_conn_io_bound(MYSQL *m, unsigned int timeout_s, PsIoBound *saved);
void ps_conn_io_unbound(MYSQL *m, const PsIoBound *saved);

/* Whether the server has closed an idle connection, without waiting or reading: with reset
 * replies still unread, only a closed socket counts. */
gboolean ps_conn_idle_closed(MYSQL *m, gboolean replies_pending);

/* Marks the socket close-on-exec: a pooled connection the application believes closed
 * must not live on in a program it execs. */
void ps_conn_set_cloexec(MYSQL *m);

/* Without a round trip: FALSE when the server has closed the idle connection or sent it
 * something unsolicited (an error before closing). */
gboolean ps_conn_idle_alive(MYSQL *m);

/* Makes a freshly lent handle behave as if it had connected itself: its own read/write
 * timeouts on the socket, the session-tracking callback, a clean error state. */
void ps_conn_adopt(MYSQL *m);

/* Makes what the client API returns about the last command (error, SQLSTATE, warning count,
 * insert id, affected rows, field count, info) exactly what mysql_real_connect left on the
 * pool's first connection: the pool's own queries and earlier borrowers never show. Called
 * on every handle the application gets, pooled or freshly connected. */
void ps_conn_present_fresh(MYSQL *m, const PsConnProfile *profile);

/* Sets the error a failed connect reports (mysql_errno/mysql_sqlstate/mysql_error). */
void ps_conn_set_error(MYSQL *m, unsigned int errnum, const char *sqlstate, const char *msg);

/* Closes politely (COM_QUIT) and frees a pool-owned shell. */
void ps_conn_close(MYSQL *m);
/* Closes politely and waits (up to timeout_ms) until the server has closed its side. */
void ps_conn_close_and_wait(MYSQL *m, int timeout_ms);
/* The two halves of ps_conn_close_and_wait, for closing many at once: closes politely and
 * returns a duplicate of the socket (-1 when there was none) that shows the server's close;
 * then waits for all of them (EOF) until deadline_us (monotonic) and closes them. */
int ps_conn_close_keep_socket(MYSQL *m);
void ps_conn_wait_sockets_closed(const int *fds, guint n, gint64 deadline_us);
/* Closes without sending anything: for connections inherited across fork(), whose
 * session belongs to the parent. The TLS state is abandoned, not shut down. */
void ps_conn_abandon(MYSQL *m);
