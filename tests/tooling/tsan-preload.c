/* tsan-preload.c: LD_PRELOADed (first) into every test process of the ThreadSanitizer pass
 * of scripts/test; never part of the shim. Two fixes, both for tools we do not build:
 *
 * 1. GLib's GMutex, GCond and g_once on Linux are futex-based code inside libglib, which is
 *    not instrumented: TSan sees neither the lock nor the futex, so every access our code
 *    protects with a GMutex would be reported as a race (and no real race on them could be
 *    told apart). These wrappers tell TSan what the GLib call does (lock, unlock, the unlock
 *    and relock inside a condition wait, the release/acquire of g_once) and then call the
 *    real function. TSan then checks our locking exactly as it checks pthread mutexes,
 *    including lock-order inversions and unlocking a mutex that is not held. Calls inside
 *    libglib itself are bound directly (-Bsymbolic-functions) and never reach these.
 *
 * 2. Criterion (BoxFort) places its shared "inheritable arena" at a random fixed address
 *    between 0x2000'0000'0000 and 0x7f00'0000'0000 and gives up after 10 tries. TSan maps
 *    nearly all of that range for its shadow, so Criterion aborts ("Could not initialize
 *    inheritable arena: Resource temporarily unavailable", Criterion issue #274). For
 *    rand_r() calls made from inside libcriterion (only BoxFort's arena placement uses it)
 *    we return numbers that put the arena in the top of TSan's "mid" application range
 *    [0x5500'0000'0000, 0x5680'0000'0000), above where the kernel loads PIE executables
 *    (at most 0x5655'5555'4000 with 28 bits of mmap randomisation), so the test child that
 *    maps the arena at the same address finds it free too. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <glib.h>
#include <sanitizer/tsan_interface.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PS_EXPORT __attribute__((visibility("default")))

static struct {
  void (*mutex_init)(GMutex *);
  void (*mutex_clear)(GMutex *);
  void (*mutex_lock)(GMutex *);
  gboolean (*mutex_trylock)(GMutex *);
  void (*mutex_unlock)(GMutex *);
  void (*cond_wait)(GCond *, GMutex *);
  gboolean (*cond_wait_until)(GCond *, GMutex *, gint64);
  gboolean (*once_init_enter)(volatile void *);
  void (*once_init_leave)(volatile void *, gsize);
  int (*rand_r)(unsigned *);
} real;

/* Resolved at the first call: the shell scripts the tests run inherit LD_PRELOAD and never
 * load libglib, and this file is not instrumented, so the lazy store is invisible to TSan. */
static void *
next_symbol(void **slot, const char *name)
{
  void *f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
  if (!f) {
    f = dlsym(RTLD_NEXT, name);
    if (!f) {
      static const char msg[] = "tsan-preload: a wrapped function has no definition\n";
      (void)!write(2, msg, sizeof msg - 1);
      abort();
    }
    __atomic_store_n(slot, f, __ATOMIC_RELEASE);
  }
  return f;
}

#define REAL(field, sym) ((__typeof__(real.field))next_symbol((void **)&real.field, sym))

PS_EXPORT void
g_mutex_init(GMutex *m)
{
  REAL(mutex_init, "g_mutex_init")(m);
  __tsan_mutex_create(m, 0);
}

PS_EXPORT void
g_mutex_clear(GMutex *m)
{
  __tsan_mutex_destroy(m, 0);
  REAL(mutex_clear, "g_mutex_clear")(m);
}

/* A zero-filled static GMutex needs no g_mutex_init: TSan creates its state at first use. */
PS_EXPORT void
g_mutex_lock(GMutex *m)
{
  __tsan_mutex_pre_lock(m, 0);
  REAL(mutex_lock, "g_mutex_lock")(m);
  __tsan_mutex_post_lock(m, 0, 0);
}

PS_EXPORT gboolean
g_mutex_trylock(GMutex *m)
{
  __tsan_mutex_pre_lock(m, __tsan_mutex_try_lock);
  gboolean ok = REAL(mutex_trylock, "g_mutex_trylock")(m);
  __tsan_mutex_post_lock(m, __tsan_mutex_try_lock | (ok ? 0 : __tsan_mutex_try_lock_failed),
                         0);
  return ok;
}

PS_EXPORT void
g_mutex_unlock(GMutex *m)
{
  __tsan_mutex_pre_unlock(m, 0);
  REAL(mutex_unlock, "g_mutex_unlock")(m);
  __tsan_mutex_post_unlock(m, 0);
}

/* The real wait unlocks and relocks `m` inside libglib, where the wrappers above do not
 * see it: say so around the call, as TSan's own pthread_cond_wait interceptor does. */
PS_EXPORT void
g_cond_wait(GCond *c, GMutex *m)
{
  __tsan_mutex_pre_unlock(m, 0);
  __tsan_mutex_post_unlock(m, 0);
  REAL(cond_wait, "g_cond_wait")(c, m);
  __tsan_mutex_pre_lock(m, 0);
  __tsan_mutex_post_lock(m, 0, 0);
}

PS_EXPORT gboolean
g_cond_wait_until(GCond *c, GMutex *m, gint64 end_time)
{
  __tsan_mutex_pre_unlock(m, 0);
  __tsan_mutex_post_unlock(m, 0);
  gboolean signalled = REAL(cond_wait_until, "g_cond_wait_until")(c, m, end_time);
  __tsan_mutex_pre_lock(m, 0);
  __tsan_mutex_post_lock(m, 0, 0);
  return signalled;
}

/* g_once_init_enter's fast path is an inline (instrumented) atomic load of *location in the
 * caller; the store that publishes the value is made inside libglib. Release on that
 * address before the store and acquire after the slow path, so both paths see the
 * initialiser's writes. */
/* In parentheses: glib.h also defines both names as macros. */
PS_EXPORT gboolean
(g_once_init_enter)(volatile void *location)
{
  gboolean first = REAL(once_init_enter, "g_once_init_enter")(location);
  if (!first)
    __tsan_acquire((void *)location);
  return first;
}

PS_EXPORT void
(g_once_init_leave)(volatile void *location, gsize result)
{
  __tsan_release((void *)location);
  REAL(once_init_leave, "g_once_init_leave")(location, result);
}

/* BoxFort: base = 0x2000'0000'0000 + (rand_r() & 0x3fffff) * 16 MiB. 0x366000 .. 0x367eff
 * gives 0x5660'0000'0000 .. 0x567e'ff00'0000: inside TSan's mid application range, above
 * any PIE load address, with room for the arena to grow. */
PS_EXPORT int
rand_r(unsigned *seed)
{
  int r = REAL(rand_r, "rand_r")(seed);
  Dl_info caller;
  if (dladdr(__builtin_return_address(0), &caller) && caller.dli_fname &&
      strstr(caller.dli_fname, "libcriterion"))
    r = 0x366000 + (r % 0x1f00);
  return r;
}
