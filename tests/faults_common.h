/* faults_common.h: what the fault tests (test_faults_server, test_faults_kill) share: the
 * load (threads that connect, query and close in a loop on a pool of 8), the log of every
 * request and its judging against the moments of a fault, the FIGURES line, the server's
 * globals a test changes, and the burst that proves the pool holds no dead connection.
 * The faults themselves (restarts, KILLs, a full server) are the test files'. */
#pragma once
#include "helpers.h"

#define POOL_SIZE 8
#define THREADS 32
#define MAX_WORKERS 64
#define ERRNO_SLOTS 5000 /* server errors < 5000, client errors 2000-2999 */
#define LOG_CAP 400000   /* requests per test: a bound on count as well as on time */

static inline gint64
now_us(void)
{
  return g_get_monotonic_time();
}

static inline void
sleep_ms(int ms)
{
  g_usleep((gulong)ms * 1000);
}

/* ---- one request: connect, query, close ---- */

typedef enum { STAGE_OK, STAGE_CONNECT, STAGE_QUERY, STAGE_COMMIT } Stage;

typedef struct {
  gint64 start_us, end_us;
  gint64 connected_us; /* when mysql_real_connect returned */
  guint32 conn_id; /* the server thread the handle was lent (0: the connect failed) */
  guint16 err;     /* mysql_errno, 0 on success */
  guint8 stage;    /* where it failed */
  guint8 lane;
} Req;

typedef struct {
  int lane;
  const char *user, *password, *db;
  gboolean commit;   /* START TRANSACTION; INSERT; COMMIT instead of SELECT CONNECTION_ID() */
  int abandon_every; /* commit lanes: every n-th transaction is left open at close instead
                      * (logged as lane + 1): the pool must roll it back, never commit it */
  const char *tls_ca; /* TLS, verified against this CA */
  int think_us;      /* a random pause of 0..think_us after each request */
  int fail_pause_us; /* and this one after a failed request */
  /* bursts > 0: `bursts` bursts of `burst_len` requests with pauses between, then stop */
  int bursts, burst_len, pause_ms, pause_jitter_ms;
} Lane;

/* One per thread, updated with atomics; the FIGURES totals are their sums. */
typedef struct {
  gint attempted, succeeded, failed;
} Counters;

typedef struct {
  const Lane *lane;
  Counters c;
  guint32 rng;
  GThread *thread;
  gboolean joined;
} Worker;

typedef struct {
  /* read once in the main thread: nothing in the load's threads may fail the test */
  const char *host, *user, *password, *db, *root_user, *root_password;
  unsigned int port;
  gint stop;
  gint finished;
  Worker workers[MAX_WORKERS];
  int nworkers;
  Req *log;
  gint nlog;
  gint errs[ERRNO_SLOTS];
  gint id_mismatch;        /* SELECT CONNECTION_ID() differed from mysql_thread_id() */
  gint bad_1040;           /* a 1040 whose message is not the server's */
  gint bad_1040_taken;
  char bad_1040_msg[512];
  gint connect_err_taken;  /* the first failed connect's error, for the failure message */
  char connect_err_msg[600];
  char insert_sql[128];
  char abandon_sql[128];
} FaultsState;
/* The load's state and the server's coordinates (faults_common.c). */
extern FaultsState S;

/* xorshift32: the workers' pauses, the killer's picks. */
guint32 rnd(guint32 *s);

/* ---- the load (faults_common.c says more of each) ---- */

void start_workers(const Lane *lane, int n);
void stop_and_join(int grace_s);
int begun(int lane);
void run_on(int lane, int min_ms, int at_least);
/* Lane `lane` on database `db` as the application user, SELECT CONNECTION_ID() each time. */
Lane select_lane(int lane, const char *db);
/* A test's .init: a pool of 8 whose waits end within the test. */
void pool_of_eight(void);
/* The first step of every test: the server's coordinates, the admin, the globals put back;
 * returns the server's Connections. */
long long begin(void);
void finish_load(void);

/* ---- judging the log ---- */

typedef struct {
  int attempted, ok, failed, connect_failed, commit_failed;
  gint *hist; /* errno -> count */
} Tally;

/* "errno:count,..." of a histogram; caller frees. */
char *errs_text(const gint *hist);
void tally_between(Tally *t, int lane, gint64 from, gint64 to, gboolean ended);
/* tally_between without `ended`: every request that started in [from, to). */
void tally(Tally *t, int lane, gint64 from, gint64 to);
void tally_clear(Tally *t);
void assert_all_ok(int lane, gint64 from, gint64 to, int at_least, const char *what);
void assert_errors_within(int lane, gint64 from, gint64 to, const unsigned *allowed, int nallowed,
                          const char *what);
void figures(const char *scenario, long long opened, const char *lost, const char *extra);

/* ---- server-side facts and what a test changes ---- */

const char *app_user(void);
/* The application user's server threads on `db` (PROCESSLIST). */
long long app_threads_on(const char *db);
/* Writes down a global's value before a test changes it; restore_globals puts back every
 * one written down (also those a test killed before its .fini left). */
void save_global(const char *name);
void restore_globals(void);
void check_burst(const char *when, const char *tls_ca);
