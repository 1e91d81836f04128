/* gil.h: POOLSHIM_PYTHON_LOCK=keep: a Python driver's call that the pool answers without
 * waiting keeps the interpreter's lock (gil.c). Every place that may block calls
 * ps_gil_release() first: then the lock is let go as the driver asked. */
#pragma once
#include <glib.h>

typedef struct {
  void *tstate;      /* the Python thread state whose lock release was put off; NULL: none */
  gboolean released; /* ... and since let go, at a place that may block */
} PsGilDefer;

/* initial-exec: read on every place that may block; the library is preloaded. */
extern _Thread_local PsGilDefer ps_gil_defer __attribute__((tls_model("initial-exec")));

void ps_gil_release_slow(void);

/* Lets go of the interpreter's lock if this thread's driver call kept it: call before
 * anything that may wait (a condition variable, a sleep, a poll with a timeout). */
static inline void
ps_gil_release(void)
{
  if (G_UNLIKELY(ps_gil_defer.tstate != NULL && !ps_gil_defer.released))
    ps_gil_release_slow();
}

/* Once, from the broker's configuration: FALSE keeps the driver's own behaviour. */
void ps_gil_configure(gboolean keep);

/* From mysql_real_connect with its caller's address and an address inside the client
 * library: the first time a caller is a Python MySQLdb module (`_mysql.*`), its calls to
 * release and take the interpreter's lock, and the client library's calls that may wait
 * (poll, recv, send, connect, getaddrinfo, usleep), are redirected here. One pointer
 * comparison for a caller already seen. */
void ps_gil_adopt(const void *caller, const void *client_lib);

/* Driver calls that kept the lock to the end, and those that let it go on the way. */
void ps_gil_counts(guint64 *kept, guint64 *released);
/* A forked child's counters are its own (ps_broker_adopt_fork). */
void ps_gil_counts_clear(void);

/* Held across fork() (ps_broker_before_fork): the lock under which a new caller is adopted. */
void ps_gil_lock_for_fork(void);
void ps_gil_unlock_after_fork(void);
