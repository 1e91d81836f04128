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
