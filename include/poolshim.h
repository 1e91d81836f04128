/* poolshim.h: the public introspection API of libpoolshim.so. A program that links it
 * (or looks the symbols up with dlsym) can read the version and the pool's counters. */
#ifndef POOLSHIM_H
#define POOLSHIM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Counters since the process (or, after fork, the child) started, over all pools. */
typedef struct {
  unsigned long long borrowed;      /* connects served by the pool */
  unsigned long long served_idle;   /* ... of which reused an idle connection */
  unsigned long long opened;        /* physical connections opened */
  unsigned long long closed;        /* physical connections closed, any reason */
  unsigned long long waits;         /* connects that had to wait for a free connection */
  unsigned long long wait_timeouts; /* waits that ended in error 1040 */
  unsigned long long resets;        /* sessions reset on return */
  unsigned long long unpooled;      /* connects passed straight through */
  unsigned int open;                /* physical connections now open */
  unsigned int idle;                /* ... of which idle in the pool */
  unsigned int lent;                /* ... of which lent to the application */
  unsigned int waiting;             /* connects now waiting */
  unsigned int pools;               /* distinct keys seen */
  /* Since 0.2 (a caller built against the older header passes the smaller size): Python
   * MySQLdb calls that kept the interpreter's lock throughout (POOLSHIM_PYTHON_LOCK=keep),
   * and those that let it go where they had to wait. */
  unsigned long long python_lock_kept;
  unsigned long long python_lock_released;
} poolshim_stats_t;

/* The library version, "MAJOR.MINOR.PATCH". */
const char *poolshim_version(void);

/* Fills *out (size = sizeof *out, for forward compatibility; the size of the 0.1 struct,
 * which ended at `pools`, gets the fields it has). Returns 0, or -1 for any other size
 * smaller than sizeof *out. */
int poolshim_stats(poolshim_stats_t *out, size_t size);

#ifdef __cplusplus
}
#endif
#endif
