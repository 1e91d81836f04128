/* probe.h: what the probe programs (leakprobe, opsprobe) share: their NAME=value report lines
 * on stdout, one whole line per call whatever the thread, and an uninterruptible sleep. */
#pragma once
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

static void report(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
report(const char *name, const char *fmt, ...)
{
  static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;
  char value[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(value, sizeof value, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&report_lock);
  printf("%s=%s\n", name, value);
  fflush(stdout);
  pthread_mutex_unlock(&report_lock);
}

static void
sleep_ms(long ms)
{
  struct timespec t = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) != 0)
    ;
}
