/* interpose.c: the exported mysql_* symbols. Finds the real functions (also when an
 * interpreter loaded the client library RTLD_LOCAL), passes the library's calls to itself
 * straight through, and hands the application's calls to broker.c. No pool policy here. */
#include <dlfcn.h>
#include <glib.h>
#include <link.h>
#include <mysql.h>
#include <mariadb_rpl.h>
#include <pthread.h>
#include <string.h>

#include "broker.h"
#include "conn.h"
#include "gil.h"
#include "log.h"
#include "ps-version.h"

#define PS_EXPORT __attribute__((visibility("default")))

static const char *const client_sonames[] = {"libmariadb.so.3", "libmysqlclient.so.18",
                                             "libmysqlclient.so.21", NULL};

/* The real library's own text range: calls from inside it (mariadb_reconnect, the
 * non-blocking API's coroutines) must reach the real functions untouched. */
static struct {
  GMutex lock;
  gboolean done; /* latched only once the library was found: a driver may load it later */
  void *base;    /* dli_fbase of the client library */
  guintptr text_lo[4], text_hi[4]; /* its executable segments, for called_by_library */
  guint ntext;
  int (*rpl_open)(MARIADB_RPL *);
} R;

/* fork() waits for a resolve under way in another thread: a child that inherited R.lock
 * held would wait for it for good at its first call. (A leaf: nothing else is taken under
 * it, so these handlers may run in any order with the broker's.) */
static void
lock_for_fork(void)
{
  g_mutex_lock(&R.lock);
}

static void
unlock_after_fork(void)
{
  g_mutex_unlock(&R.lock);
}

__attribute__((constructor)) static void
register_fork_handlers(void)
{
  pthread_atfork(lock_for_fork, unlock_after_fork, unlock_after_fork);
}

static void *
find_symbol(const char *name)
{
  /* Linked programs: the next definition after ours. */
  void *f = dlsym(RTLD_NEXT, name);
  if (f)
    return f;
  /* Python's MySQLdb and Perl's DBD::mysql dlopen the driver RTLD_LOCAL: ask the library. */
  for (const char *const *so = client_sonames; *so; so++) {
    void *h = dlopen(*so, RTLD_LAZY | RTLD_NOLOAD);
    if (h) {
      f = dlsym(h, name);
      dlclose(h);
      if (f)
        return f;
    }
  }
  return NULL;
}

/* dl_iterate_phdr callback: records the executable segments of the client library. */
static int
note_text(struct dl_phdr_info *info, size_t size, void *data)
{
  (void)size;
  (void)data;
  /* The library is the object whose first loaded byte is dli_fbase. */
  guintptr first = ~(guintptr)0;
  for (int i = 0; i < info->dlpi_phnum; i++)
    if (info->dlpi_phdr[i].p_type == PT_LOAD)
      first = MIN(first, info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
  if (first != (guintptr)R.base)
    return 0;
  for (int i = 0; i < info->dlpi_phnum && R.ntext < G_N_ELEMENTS(R.text_lo); i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
      R.text_lo[R.ntext] = info->dlpi_addr + ph->p_vaddr;
      R.text_hi[R.ntext] = R.text_lo[R.ntext] + ph->p_memsz;
      R.ntext++;
    }
  }
  return 1;
}

static void
resolve(void)
{
  if (__atomic_load_n(&R.done, __ATOMIC_ACQUIRE))
    return;
  g_mutex_lock(&R.lock);
  if (R.done || !find_symbol("mysql_real_connect")) {
    g_mutex_unlock(&R.lock);
    return;
  }
#define RESOLVE(field, sym) ps_real.field = (__typeof__(ps_real.field))find_symbol(sym)
  RESOLVE(real_connect, "mysql_real_connect");
  RESOLVE(close, "mysql_close");
  RESOLVE(change_user, "mysql_change_user");
  RESOLVE(server_end, "mysql_server_end");
  RESOLVE(init, "mysql_init");
  RESOLVE(optionsv, "mysql_optionsv");
  RESOLVE(get_optionv, "mysql_get_optionv");
  RESOLVE(reset_connection, "mysql_reset_connection");
  RESOLVE(select_db, "mysql_select_db");
  RESOLVE(real_query, "mysql_real_query");
  RESOLVE(store_result, "mysql_store_result");
  RESOLVE(fetch_row, "mysql_fetch_row");
  RESOLVE(free_result, "mysql_free_result");
  RESOLVE(next_result, "mysql_next_result");
  RESOLVE(set_character_set, "mysql_set_character_set");
  RESOLVE(get_client_version, "mysql_get_client_version");
  RESOLVE(get_socket, "mysql_get_socket");
#undef RESOLVE
  R.rpl_open = (__typeof__(R.rpl_open))find_symbol("mariadb_rpl_open");
  ps_real.ssl_set_ex_data = (__typeof__(ps_real.ssl_set_ex_data))dlsym(RTLD_DEFAULT, "SSL_set_ex_data");
  if (!ps_real.ssl_set_ex_data) {
    void *h = dlopen("libssl.so.3", RTLD_LAZY | RTLD_NOLOAD);
    if (h) {
      ps_real.ssl_set_ex_data = (__typeof__(ps_real.ssl_set_ex_data))dlsym(h, "SSL_set_ex_data");
      dlclose(h);
    }
  }
  Dl_info info;
  if (ps_real.real_connect && dladdr((void *)ps_real.real_connect, &info)) {
    R.base = info.dli_fbase;
    dl_iterate_phdr(note_text, NULL);
  }
  gboolean complete = ps_real.real_connect && ps_real.close && ps_real.change_user &&
                      ps_real.init && ps_real.optionsv && ps_real.get_optionv &&
                      ps_real.reset_connection && ps_real.select_db && ps_real.real_query &&
                      ps_real.store_result && ps_real.fetch_row && ps_real.free_result && ps_real.next_result &&
                      ps_real.set_character_set && ps_real.get_client_version &&
                      ps_real.get_socket && ps_real.server_end;
  if (!complete && ps_real.real_connect) {
    /* Keep the two calls we must forward; the broker will see an incomplete table. */
    ps_warn("the client library lacks functions poolshim needs; pooling is off");
    void *(*keep_connect) = (void *)ps_real.real_connect, *keep_close = (void *)ps_real.close;
    void *keep_cu = (void *)ps_real.change_user, *keep_end = (void *)ps_real.server_end;
    memset(&ps_real, 0, sizeof ps_real);
    ps_real.real_connect = (__typeof__(ps_real.real_connect))keep_connect;
    ps_real.close = (__typeof__(ps_real.close))keep_close;
    ps_real.change_user = (__typeof__(ps_real.change_user))keep_cu;
    ps_real.server_end = (__typeof__(ps_real.server_end))keep_end;
    ps_real.init = NULL; /* marks the table unusable for pooling */
  }
  __atomic_store_n(&R.done, TRUE, __ATOMIC_RELEASE);
  g_mutex_unlock(&R.lock);
}

/* TRUE when the call comes from inside the client library itself: a return address in
 * one of its executable segments (found once; dladdr at every call cost more than the
 * rest of a pooled connect). */
static gboolean
called_by_library(void *caller)
{
  guintptr a = (guintptr)caller;
  for (guint i = 0; i < R.ntext; i++)
    if (a >= R.text_lo[i] && a < R.text_hi[i])
      return TRUE;
  return FALSE;
}

static gboolean
pooling(void *caller)
{
  return ps_real.init && !called_by_library(caller) && ps_broker_active();
}

PS_EXPORT MYSQL *
mysql_real_connect(MYSQL *m, const char *host, const char *user, const char *passwd,
                   const char *db, unsigned int port, const char *unix_socket,
                   unsigned long client_flag)
{
  resolve();
  if (!ps_real.real_connect)
    return NULL; /* no client library in this process: nothing could have worked */
  if (!m || !pooling(__builtin_return_address(0)))
    return ps_real.real_connect(m, host, user, passwd, db, port, unix_socket, client_flag);
  ps_gil_adopt(__builtin_return_address(0), (const void *)ps_real.real_connect);
  return ps_broker_connect(m, host, user, passwd, db, port, unix_socket, client_flag);
}

PS_EXPORT void
mysql_close(MYSQL *m)
{
  resolve();
  if (!ps_real.close)
    return;
  if (!m || !ps_real.init || !ps_broker_active()) {
    ps_real.close(m);
    return;
  }
  if (called_by_library(__builtin_return_address(0)))
    ps_broker_close_from_library(m);
  else
    ps_broker_close(m);
}

PS_EXPORT my_bool
mysql_change_user(MYSQL *m, const char *user, const char *passwd, const char *db)
{
  resolve();
  if (!ps_real.change_user)
    return 1;
  /* Also from inside the library: mysql_change_user_start calls this. */
  if (m && ps_real.init && ps_broker_active())
    ps_broker_mark_unpoolable(m, "mysql_change_user changed its identity");
  return ps_real.change_user(m, user, passwd, db);
}

PS_EXPORT int
mariadb_rpl_open(MARIADB_RPL *rpl)
{
  resolve();
  if (!R.rpl_open)
    return 1;
  /* A binlog stream never returns to a command-ready session. */
  if (rpl && rpl->mysql && ps_real.init && ps_broker_active())
    ps_broker_mark_unpoolable(rpl->mysql, "replication stream opened");
  return R.rpl_open(rpl);
}

PS_EXPORT void
mysql_server_end(void)
{
  resolve();
  /* The library tears down its plugins and TLS: no pooled connection may outlive that. */
  if (ps_real.init && !called_by_library(__builtin_return_address(0)) && ps_broker_active())
    ps_broker_drain();
  if (ps_real.server_end)
    ps_real.server_end();
}

PS_EXPORT const char *
poolshim_version(void)
{
  return POOLSHIM_VERSION;
}

PS_EXPORT int
poolshim_stats(poolshim_stats_t *out, size_t size)
{
  /* The 0.1 struct ended at `pools`: a program built against it passes that size. */
  const size_t v01 = offsetof(poolshim_stats_t, python_lock_kept);
  if (!out || (size != v01 && size < sizeof *out))
    return -1;
  /* Reading counters must not initialise anything: the pool may not exist yet. */
  poolshim_stats_t all;
  ps_broker_stats(&all);
  memcpy(out, &all, MIN(size, sizeof all));
  return 0;
}
