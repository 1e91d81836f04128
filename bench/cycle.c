/* cycle: the connect-per-request loop of a legacy C daemon, for benchmarks.
 * Each of --threads threads runs its share of --cycles cycles of connect, SELECT 1, close
 * (or, with --kept, keeps one connection per thread open: the limit any pool can reach;
 * or, with --unconnected, only mysql_init and mysql_close of a handle never connected: the
 * part of a cycle that is the application's own handle, for bench/shimcost.py).
 * Server coordinates come from PS_TEST_* (scripts/server). Prints one line of results.
 *
 *   --socket        connect over the unix socket (PS_TEST_SOCKET) instead of TCP
 *   --tls CA_FILE   require TLS: MYSQL_OPT_SSL_CA=CA_FILE, MYSQL_OPT_SSL_ENFORCE=1 and
 *                   MYSQL_OPT_SSL_VERIFY_SERVER_CERT=1 (the server's certificate must be
 *                   signed by CA_FILE and name PS_TEST_HOST); a connect without TLS fails
 *   --latency       record how long every mysql_real_connect took and print the median,
 *                   99th percentile and maximum in microseconds (connect_p50_us=...), and
 *                   the lowest and highest per-thread mean (thread_mean_min_us=...): with
 *                   fair (FIFO) service of waiters for a full pool the two are close
 *   --shared N      no connect per cycle: N connections opened up front are shared by all
 *                   threads from a stack (a mutex and a condition variable; a cycle takes
 *                   one, waiting while none is free, runs SELECT 1 and puts it back): the
 *                   program's own pool of N, the bound of any pool of that size for this
 *                   many threads (--latency then times the take)
 *
 * After the timed part one more connection (same options; under poolshim it comes from
 * the pool) runs SHOW STATUS LIKE 'Ssl_cipher' and the line ends with cipher=NAME, or
 * cipher=none when the session is not encrypted: proof of what the timed part used.
 * Exit status 1 if any cycle failed (errors=N counts them). */
#include <mysql.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ownpool.h"

static int cycles = 5000, threads = 1, kept = 0, unconnected = 0, use_socket = 0, latency = 0;
static const char *tls_ca;
/* The server coordinates, read from the environment once (main): a getenv per cycle would
 * be a cost of this program that bench/shimcost.py would count as the pool's. */
static const char *host, *sock, *user, *password, *db;
static unsigned port;
static int errors;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* --shared: the program's own pool of `shared` connections. */
static int shared;
static OwnPool own = OWN_POOL_INIT;

/* Per-thread connect durations (--latency), merged after the join. */
typedef struct {
  long n;         /* cycles this thread runs */
  uint32_t *us;   /* connect durations, microseconds */
  long used;
  int bad;
} Work;

static uint64_t
now_ns(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* --latency: one connect's (or take's) duration since t0, in microseconds. */
static void
record_us(Work *w, uint64_t t0)
{
  uint64_t d = (now_ns() - t0) / 1000u;
  w->us[w->used++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

static MYSQL *
open_one(Work *w)
{
  MYSQL *m = mysql_init(NULL);
  if (!m)
    return NULL;
  if (tls_ca) {
    my_bool on = 1;
    mysql_optionsv(m, MYSQL_OPT_SSL_CA, tls_ca);
    mysql_optionsv(m, MYSQL_OPT_SSL_ENFORCE, &on);
    mysql_optionsv(m, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &on);
  }
  uint64_t t0 = w && latency ? now_ns() : 0;
  MYSQL *ok = mysql_real_connect(m, host, user, password, db, port, sock, 0);
  if (w && latency)
    record_us(w, t0);
  if (!ok) {
    fprintf(stderr, "connect: %s\n", mysql_error(m));
    mysql_close(m);
    return NULL;
  }
  return m;
}

static int
select_one(MYSQL *m)
{
  if (mysql_query(m, "SELECT 1"))
    return 1;
  MYSQL_RES *r = mysql_store_result(m);
  if (!r)
    return 1;
  MYSQL_ROW row = mysql_fetch_row(r);
  int bad = !row || strcmp(row[0], "1") != 0;
  mysql_free_result(r);
  return bad;
}

static void *
worker(void *arg)
{
  Work *w = arg;
  long n = w->n;
  int bad = 0;
  MYSQL *k = kept ? open_one(w) : NULL;
  if (kept && !k)
    bad = (int)n;
  for (long i = 0; i < n && (!kept || k); i++) {
    if (unconnected) {
      MYSQL *u = mysql_init(NULL);
      if (!u)
        bad++;
      mysql_close(u);
      continue;
    }
    if (shared) { /* the take is timed like a connect */
      uint64_t t0 = latency ? now_ns() : 0;
      MYSQL *s = own_pool_take(&own);
      if (latency)
        record_us(w, t0);
      bad += select_one(s);
      own_pool_give(&own, s);
      continue;
    }
    MYSQL *m = kept ? k : open_one(w);
    if (!m) {
      bad++;
      continue;
    }
    bad += select_one(m);
    if (!kept)
      mysql_close(m);
  }
  if (k)
    mysql_close(k);
  w->bad = bad;
  pthread_mutex_lock(&lock);
  errors += bad;
  pthread_mutex_unlock(&lock);
  return NULL;
}

static int
cmp_u32(const void *a, const void *b)
{
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static uint32_t
pct(const uint32_t *v, long n, double p)
{
  long r = (long)(p / 100.0 * (double)n + 0.999999);
  if (r < 1)
    r = 1;
  if (r > n)
    r = n;
  return v[r - 1];
}

/* The session's Ssl_cipher ("none" when not encrypted, "error" when it cannot tell). */
static void
cipher(char *out, size_t size)
{
  snprintf(out, size, "error");
  MYSQL *m = open_one(NULL);
  if (!m)
    return;
  if (!mysql_query(m, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")) {
    MYSQL_RES *r = mysql_store_result(m);
    MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
    if (row)
      snprintf(out, size, "%s", row[1] && row[1][0] ? row[1] : "none");
    if (r)
      mysql_free_result(r);
  }
  mysql_close(m);
}

int
main(int argc, char **argv)
{
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--cycles") && i + 1 < argc)
      cycles = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--kept"))
      kept = 1;
    else if (!strcmp(argv[i], "--unconnected"))
      unconnected = 1;
    else if (!strcmp(argv[i], "--socket"))
      use_socket = 1;
    else if (!strcmp(argv[i], "--tls") && i + 1 < argc)
      tls_ca = argv[++i];
    else if (!strcmp(argv[i], "--latency"))
      latency = 1;
    else if (!strcmp(argv[i], "--shared") && i + 1 < argc)
      shared = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: cycle [--threads N] [--cycles N] [--kept] [--unconnected] "
                      "[--socket] [--tls CA_FILE] [--latency] [--shared N]\n");
      return 2;
    }
  }
  if (threads < 1 || cycles < threads || shared < 0 || (shared && (kept || unconnected))) {
    fprintf(stderr, "cycle: need 1 <= threads <= cycles, and --shared N (N >= 1) without "
                    "--kept or --unconnected\n");
    return 2;
  }
  host = use_socket ? "localhost" : getenv("PS_TEST_HOST");
  sock = use_socket ? getenv("PS_TEST_SOCKET") : NULL;
  user = getenv("PS_TEST_USER");
  password = getenv("PS_TEST_PASSWORD");
  db = getenv("PS_TEST_DB");
  port = getenv("PS_TEST_PORT") ? (unsigned)atoi(getenv("PS_TEST_PORT")) : 0;
  mysql_library_init(0, NULL, NULL);
  if (shared) {
    own_pool_alloc(&own, shared);
    for (int i = 0; i < shared; i++) {
      MYSQL *m = open_one(NULL);
      if (!m) {
        fprintf(stderr, "cycle: could not open the %d shared connections\n", shared);
        return 1;
      }
      own_pool_give(&own, m);
    }
  }
  pthread_t *t = calloc((size_t)threads, sizeof *t);
  Work *w = calloc((size_t)threads, sizeof *w);
  for (int i = 0; i < threads; i++) {
    w[i].n = cycles / threads + (i < cycles % threads ? 1 : 0);
    if (latency)
      w[i].us = calloc((size_t)w[i].n + 1, sizeof *w[i].us);
  }
  uint64_t a = now_ns();
  for (int i = 0; i < threads; i++)
    pthread_create(&t[i], NULL, worker, &w[i]);
  for (int i = 0; i < threads; i++)
    pthread_join(t[i], NULL);
  double s = (double)(now_ns() - a) / 1e9;

  char lat[256] = "";
  if (latency) {
    long n = 0;
    double tmin = 0, tmax = 0;
    for (int i = 0; i < threads; i++) {
      n += w[i].used;
      double sum = 0;
      for (long j = 0; j < w[i].used; j++)
        sum += w[i].us[j];
      double mean = w[i].used ? sum / (double)w[i].used : 0;
      if (i == 0 || mean < tmin)
        tmin = mean;
      if (i == 0 || mean > tmax)
        tmax = mean;
    }
    uint32_t *all = calloc((size_t)n + 1, sizeof *all);
    long k = 0;
    for (int i = 0; i < threads; i++) {
      memcpy(all + k, w[i].us, (size_t)w[i].used * sizeof *all);
      k += w[i].used;
      free(w[i].us);
    }
    qsort(all, (size_t)n, sizeof *all, cmp_u32);
    if (n)
      snprintf(lat, sizeof lat,
               " connects=%ld connect_p50_us=%u connect_p99_us=%u connect_max_us=%u"
               " thread_mean_min_us=%.0f thread_mean_max_us=%.0f",
               n, pct(all, n, 50), pct(all, n, 99), all[n - 1], tmin, tmax);
    free(all);
  }
  own_pool_close(&own);
  char c[96];
  cipher(c, sizeof c);
  printf("seconds=%.4f cycles=%d errors=%d%s cipher=%s\n", s, cycles, errors, lat, c);
  free(t);
  free(w);
  mysql_library_end();
  return errors ? 1 : 0;
}
