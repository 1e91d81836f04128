/* cycle: the connect-per-request loop of a legacy C daemon, for benchmarks.
 * Each of --threads threads runs its share of --cycles cycles of connect, SELECT 1, close
 * (or, with --kept, keeps one connection per thread open: the limit any pool can reach).
 * Server coordinates come from PS_TEST_* (scripts/server). Prints one line of results. */
#include <mysql.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int cycles = 5000, threads = 1, kept = 0, use_socket = 0;
static int errors;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static MYSQL *
open_one(void)
{
  MYSQL *m = mysql_init(NULL);
  const char *host = use_socket ? "localhost" : getenv("PS_TEST_HOST");
  const char *sock = use_socket ? getenv("PS_TEST_SOCKET") : NULL;
  if (!mysql_real_connect(m, host, getenv("PS_TEST_USER"), getenv("PS_TEST_PASSWORD"),
                          getenv("PS_TEST_DB"), (unsigned)atoi(getenv("PS_TEST_PORT")), sock, 0)) {
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
  int n = (int)(long)arg, bad = 0;
  MYSQL *k = kept ? open_one() : NULL;
  if (kept && !k)
    bad = n;
  for (int i = 0; i < n && (!kept || k); i++) {
    MYSQL *m = kept ? k : open_one();
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
  pthread_mutex_lock(&lock);
  errors += bad;
  pthread_mutex_unlock(&lock);
  return NULL;
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
    else if (!strcmp(argv[i], "--socket"))
      use_socket = 1;
    else {
      fprintf(stderr, "usage: cycle [--threads N] [--cycles N] [--kept] [--socket]\n");
      return 2;
    }
  }
  if (threads < 1 || cycles < threads) {
    fprintf(stderr, "cycle: need 1 <= threads <= cycles\n");
    return 2;
  }
  mysql_library_init(0, NULL, NULL);
  pthread_t *t = calloc((size_t)threads, sizeof *t);
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < threads; i++) {
    long share = cycles / threads + (i < cycles % threads ? 1 : 0);
    pthread_create(&t[i], NULL, worker, (void *)share);
  }
  for (int i = 0; i < threads; i++)
    pthread_join(t[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
  printf("seconds=%.4f cycles=%d errors=%d\n", s, cycles, errors);
  free(t);
  mysql_library_end();
  return errors ? 1 : 0;
}
