/* helpers.h: what every integration test needs: the private server's coordinates (from
 * the environment scripts/test sets), connections, and server-side facts. A helper that
 * cannot reach the server fails the test; nothing here skips. */
#pragma once
#include <criterion/criterion.h>
#include <glib.h>
#include <mysql.h>

const char *pst_env(const char *name);
unsigned int pst_port(void);

/* Connects over TCP; NULL db = no database. Fails the test on error. */
MYSQL *pst_connect(const char *user, const char *password, const char *db);
/* The application user on the test database. */
MYSQL *pst_connect_app(void);
/* Connects a handle the test has set options on, as the application user on the test
 * database. Fails the test on error. */
MYSQL *pst_connect_app_on(MYSQL *m);
/* The application user on the test database, over TCP or (via_socket) the Unix socket
 * ($PS_TEST_SOCKET). unpooled: with an (empty) option file, which the shim never pools, so
 * the session is a fresh one of the server's. Fails the test on error. */
MYSQL *pst_connect_app_via(gboolean via_socket, gboolean unpooled);
/* Sets the options that make a connect require TLS with the test CA ($PS_TEST_TLS_CA),
 * verifying the server's certificate. */
void pst_require_tls(MYSQL *m);
/* Tries to connect; returns NULL on error and leaves the handle (closed) errno in *err. */
MYSQL *pst_try_connect(const char *user, const char *password, const char *db,
                       unsigned int *err, char *msg, size_t msglen);

/* One root connection per process, kept open, for server-side facts. */
MYSQL *pst_admin(void);

void pst_exec(MYSQL *m, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
long long pst_scalar(MYSQL *m, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* NULL for SQL NULL; caller frees. */
char *pst_scalar_str(MYSQL *m, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* SHOW GLOBAL STATUS value, read on the admin connection. */
long long pst_status(const char *name);
/* Server threads of one user right now (information_schema.PROCESSLIST). */
long long pst_user_threads(const char *user);
/* Runs scripts/server VERB on the test server (restart, ...); fails on error. */
void pst_server_ctl(const char *verb);
/* Forgets the admin connection (after a server restart killed it). */
void pst_admin_drop(void);
/* Waits (max 10 s) until the server no longer lists thread `id`. */
void pst_wait_thread_gone(unsigned long id);
/* Waits (max 10 s, then fails naming `what`) until the status counter `counter` has grown by
 * `n` since `since` and no session of the application user runs a command: the replies to
 * what the pool sent (a reset, a setup run ahead) are written. */
void pst_wait_answered(const char *counter, long long since, long long n, const char *what);
/* An application connection with MYSQL_OPT_RECONNECT whose server thread (*old) is KILLed and
 * that the client library then reconnected by itself (*now). */
MYSQL *pst_connect_and_force_reconnect(long long *old, long long *now);

/* ---- Faults, probes and the shim's counters (test_stall, test_leaks, test_lifecycle) ---- */
#include "../include/poolshim.h"

/* The shim's counters through dlsym (the test process must have it preloaded). */
void pst_stats(poolshim_stats_t *out);
/* poolshim_stats itself, looked up (and asserted) on the test's thread, for a thread of the
 * test or a forked child, where Criterion's assertions do not work. */
typedef int (*PstStatsFn)(poolshim_stats_t *out, size_t size);
PstStatsFn pst_stats_fn(void);
/* Until the counter at `offset` in poolshim_stats_t (an unsigned int: open, waiting) is at
 * least `n` (fails after 10 s, naming `what`): a fixed sleep would race with thread start-up
 * on a loaded machine. */
void pst_wait_stats_count(glong offset, unsigned n, const char *what);

/* Connects as the application user to host:port with the client's own timeouts (seconds,
 * 0 = the library's default). NULL on error, with *err and msg set; never fails the test. */
MYSQL *pst_try_connect_to(const char *host, unsigned int port, unsigned int connect_timeout,
                          unsigned int rw_timeout, unsigned int *err, char *msg, size_t msglen);

/* tests/faultproxy, started from $PST_FAULTPROXY in front of the test server. Commands
 * wait (max 10 s) for the proxy's answer, so the state holds when they return. The proxy
 * ends when the test process does (end of its stdin). */
typedef struct PstProxy PstProxy;
PstProxy *pst_proxy_start(void);
unsigned int pst_proxy_port(const PstProxy *p);
void pst_proxy_freeze(PstProxy *p);
void pst_proxy_thaw(PstProxy *p);
/* New connections get the server's greeting, then stall for good (pst_proxy_thaw ends the
 * mode for new ones). */
void pst_proxy_greeting_only(PstProxy *p);
/* Closes every proxied connection; returns how many there were. */
int pst_proxy_cut(PstProxy *p);
/* Proxied connections open right now. */
int pst_proxy_conns(PstProxy *p);
void pst_proxy_stop(PstProxy *p);
/* Connects as the application user through the proxy, with the client's own timeouts
 * (seconds). Fails the test on error. */
MYSQL *pst_connect_via(PstProxy *p, unsigned int connect_timeout, unsigned int rw_timeout);

/* Runs argv to completion with the test's environment changed by `env` (name, value
 * pairs, NULL-terminated; a NULL value unsets); stdout and stderr are captured. */
typedef struct {
  char *out, *err;
  int status; /* wait status */
} PstRun;
PstRun pst_run(const char *const *argv, const char *const *env);
void pst_run_clear(PstRun *r);
/* Lines of `text` that contain `needle`. */
guint pst_count_lines_with(const char *text, const char *needle);
/* The value of "NAME=value" on a line of its own in `text` (a probe's report), or NULL;
 * caller frees. */
char *pst_report_value(const char *text, const char *name);
