/* demo/daemon.c -- owns the "legacy C daemon" client of scripts/demo.
 *
 * A fixed pool of worker threads takes "requests" from a shared counter; each request
 * connects with mysql_real_connect, runs one SELECT, reads the row and calls mysql_close,
 * the way many old daemons were written.  Nothing in here knows about poolshim.
 *
 * Usage: daemon --requests N [--workers N]   (server from PS_TEST_* of scripts/server)
 * Prints one line: "tasks=N seconds=S errors=E"; exit 1 if any request failed. */
#include <mysql.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int requests = 2000, workers = 16;
static int next_request, errors;
static const char *host, *user, *password, *db;
static unsigned port;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static const char *
need_env(const char *name)
{
  const char *v = getenv(name);
  if (!v || !*v) {
    fprintf(stderr, "daemon: %s is not set (source the env file of scripts/server)\n", name);
    exit(2);
  }
  return v;
}

/* Take the next request number, or -1 when the work is done. */
static int
take_request(void)
{
  pthread_mutex_lock(&lock);
  int r = next_request < requests ? next_request++ : -1;
  pthread_mutex_unlock(&lock);
  return r;
}

/* One request: connect, look a value up, close.  0 on success. */
static int
handle_request(int id)
{
  MYSQL *m = mysql_init(NULL);
  if (!m)
    return 1;
  if (!mysql_real_connect(m, host, user, password, db, port, NULL, 0)) {
    fprintf(stderr, "daemon: request %d: connect: %s\n", id, mysql_error(m));
    mysql_close(m);
    return 1;
  }
  char sql[64];
  snprintf(sql, sizeof sql, "SELECT %d + 1", id);
  int bad = 1;
  if (mysql_query(m, sql) == 0) {
    MYSQL_RES *res = mysql_store_result(m);
    if (res) {
      MYSQL_ROW row = mysql_fetch_row(res);
      bad = !row || !row[0] || atoi(row[0]) != id + 1;
      mysql_free_result(res);
    }
  }
  if (bad)
    fprintf(stderr, "daemon: request %d: query: %s\n", id, mysql_error(m));
  mysql_close(m);
  return bad;
}

static void *
worker(void *arg)
{
  (void)arg;
  int bad = 0, id;
  mysql_thread_init();
  while ((id = take_request()) >= 0)
    bad += handle_request(id);
  mysql_thread_end();
  pthread_mutex_lock(&lock);
  errors += bad;
  pthread_mutex_unlock(&lock);
  return NULL;
}

int
main(int argc, char **argv)
{
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--requests") && i + 1 < argc)
      requests = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--workers") && i + 1 < argc)
      workers = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: daemon [--requests N] [--workers N]\n");
      return 2;
    }
  }
  if (requests < 1 || workers < 1) {
    fprintf(stderr, "daemon: --requests and --workers must be >= 1\n");
    return 2;
  }
  host = need_env("PS_TEST_HOST");
  user = need_env("PS_TEST_USER");
  password = need_env("PS_TEST_PASSWORD");
  db = need_env("PS_TEST_DB");
  port = (unsigned)atoi(need_env("PS_TEST_PORT"));

  if (mysql_library_init(0, NULL, NULL)) {
    fprintf(stderr, "daemon: mysql_library_init failed\n");
    return 1;
  }
  pthread_t *tids = calloc((size_t)workers, sizeof *tids);
  if (!tids)
    return 1;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  int started = 0;
  for (; started < workers; started++)
    if (pthread_create(&tids[started], NULL, worker, NULL) != 0)
      break;
  if (started == 0) {
    fprintf(stderr, "daemon: could not start any worker thread\n");
    return 1;
  }
  for (int i = 0; i < started; i++)
    pthread_join(tids[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
  printf("tasks=%d seconds=%.4f errors=%d\n", requests, s, errors);
  free(tids);
  mysql_library_end();
  return errors ? 1 : 0;
}
