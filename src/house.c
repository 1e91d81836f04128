/* house.c: the broker's background threads: the housekeeper (idle timeouts, idle
 * connections the server closed, POOLSHIM_MIN_IDLE, POOLSHIM_HOST_MAX hand-over), the
 * statistics writer (POOLSHIM_STATS_FILE) and the leak watchdog (POOLSHIM_LEAK_WARN). They
 * decide nothing the broker does not (they close what the pool hands back, open what it
 * reserves) and hold no lock across I/O. Lock order: top of broker.c. */
#include "house.h"

#include <dlfcn.h>
#include <string.h>
#include <unistd.h>

#include "broker-state.h"
#include "gil.h"
#include "log.h"
#include "ps-version.h"
#include "stats.h"
#include "watch.h"

/* The server part of a pool's name, user@SERVER/db[#n] (ps_conn_key_label): the key of
 * B.host_slots. */
static void
label_server(const char *label, char *buf, gsize len)
{
  const char *at = strrchr(label, '@');
  const char *slash = at ? strrchr(at, '/') : NULL;
  g_strlcpy(buf, at ? at + 1 : "", MIN(len, slash ? (gsize)(slash - at) : 1));
}

/* Whether a pool (by its label, user@SERVER/db[#n]) talks to `server`. */
static gboolean
label_has_server(const char *label, gpointer server)
{
  char of_label[512];
  label_server(label, of_label, sizeof of_label);
  return g_str_equal(of_label, server);
}

/* POOLSHIM_MIN_IDLE: opens idle connections in the background until each pool that can has
 * its minimum (replacing those the sweep just closed), one at a time, no lock held. */
static void
fill_pools(PsPool *pool)
{
  if (__atomic_load_n(&B.stopping, __ATOMIC_ACQUIRE))
    return;
  GPtrArray *keys = ps_pool_key_list(pool);
  for (guint i = 0; i < keys->len; i++) {
    PsPoolKey *key = keys->pdata[i];
    PsConnProfile *profile = ps_pool_key_data(key);
    if (!profile || !profile->opener || ps_pool_key_revoked(key))
      continue;
    while (!__atomic_load_n(&B.stopping, __ATOMIC_ACQUIRE) && ps_pool_reserve_fill(pool, key)) {
      int slot_fd = -1;
      PsHostSlots *slots = NULL;
      if (B.config.host_max) {
        /* Never wait for a host slot here: filling ahead must not take one from a process
         * that needs it now. */
        char server[512];
        label_server(ps_pool_key_label(key), server, sizeof server);
        g_mutex_lock(&B.lock);
        slots = g_hash_table_lookup(B.host_slots, server);
        g_mutex_unlock(&B.lock);
        if (slots && !ps_host_slots_contended(slots))
          slot_fd = ps_host_slot_try_acquire(slots);
        if (slot_fd < 0) {
          ps_pool_fill_failed(pool, key);
          break;
        }
      }
      char err[MYSQL_ERRMSG_SIZE];
      PsPhys *p = ps_phys_new(pool, profile, slot_fd, slots);
      MYSQL *h = ps_conn_template_open(profile->opener, 0, err, sizeof err);
      if (!h) {
        ps_phys_close(p, NULL, PS_CLOSE_DEAD, "opening failed"); /* gives the slot back */
        ps_pool_fill_failed(pool, key);
        ps_debug("pool %s: opening an idle connection in the background failed: %s",
                 ps_pool_key_label(key), err);
        break;
      }
      ps_pool_key_proved(key, g_get_monotonic_time());
      ps_broker_on_pool_handle(p, h);
      ps_phys_fill(p, key);
    }
  }
  ps_pool_key_list_free(pool, keys);
}

/* An idle connection the server has closed (KILL, restart, its own timeout): one poll
 * without waiting. */
static gboolean
idle_dead(PsItem *item, gpointer data)
{
  PsPhys *p = item->conn;
  return ps_conn_idle_closed(p->shell,
                             p->state == PS_PHYS_RESET_SENT || ps_watch_ahead(p->watch));
}

/* A pool that has had no connection, no waiter and no connect for this long is freed with
 * its label, counters and password (memory stays bounded when every connect brings other
 * credentials); a pool that never had a connection goes at once (ps_broker_connect). */
#define PS_POOL_FORGET_US (60 * G_USEC_PER_SEC)

void
ps_house_forget_pools(PsPool *pool)
{
  guint n = ps_pool_forget_unused(pool, PS_POOL_FORGET_US);
  if (n)
    ps_debug("freed %u pools unused for %d s", n, (int)(PS_POOL_FORGET_US / G_USEC_PER_SEC));
}

/* What every tick does: reap, then fill. */
static void
keep_pools(PsPool *pool)
{
  ps_house_forget_pools(pool);
  ps_phys_close_items(ps_pool_take_idle(pool, FALSE, PS_CLOSE_IDLE_TIMEOUT), FALSE);
  /* Nothing is said to a server that has gone (PS_CLOSE_DEAD). */
  ps_phys_close_items(ps_pool_take_idle_matching(pool, idle_dead, NULL, PS_CLOSE_DEAD), FALSE);
  fill_pools(pool);
}

static gboolean hand_over_slots(PsPool *pool);

/* The housekeeper: twice a second, idle connections past their timeouts or closed by the
 * server are closed and pools below POOLSHIM_MIN_IDLE are filled. With POOLSHIM_HOST_MAX, a
 * quiet process must not sit on idle slots while another process waits: ten times a second
 * (a hundred while it is handing slots over), an idle connection of each server someone
 * waits for is closed. */
/* One tick of the housekeeper, FALSE once the process is draining. */
static gboolean
house_tick(gboolean *handed_over)
{
  /* No lock across the tick (it connects and closes): fork() never waits for the network;
   * only the drain waits for house_busy to end (ps_house_stop). */
  g_mutex_lock(&B.house_lock);
  gboolean stopping = __atomic_load_n(&B.stopping, __ATOMIC_ACQUIRE);
  B.house_busy = !stopping;
  g_mutex_unlock(&B.house_lock);
  if (stopping)
    return FALSE;
  if (B.config.host_max)
    *handed_over = hand_over_slots(B.pool);
  keep_pools(B.pool);
  g_mutex_lock(&B.house_lock);
  B.house_busy = FALSE;
  g_cond_broadcast(&B.house_idle);
  g_mutex_unlock(&B.house_lock);
  return TRUE;
}

static gpointer
housekeeper(gpointer data)
{
  gboolean handed_over = FALSE;
  do {
    /* Right after a hand-over, look again soon: a burst of waiters gets one slot per tick. */
    g_usleep(handed_over ? 10 * 1000 : B.config.host_max ? 100 * 1000 : 500 * 1000);
    handed_over = FALSE;
  } while (house_tick(&handed_over));
  return NULL;
}

/* POOLSHIM_HOST_MAX: for each server someone waits for, the longest-idle connection of this
 * process closes and frees its slot. TRUE when one did. */
static gboolean
hand_over_slots(PsPool *pool)
{
  gboolean handed_over = FALSE;
  g_mutex_lock(&B.lock);
  GList *servers = g_hash_table_get_keys(B.host_slots);
  GList *sets = g_hash_table_get_values(B.host_slots);
  g_mutex_unlock(&B.lock);
  for (GList *s = servers, *v = sets; s && v; s = s->next, v = v->next) {
    if (!v->data || !ps_host_slots_contended(v->data))
      continue;
    GSList *victim =
      ps_pool_take_oldest_idle(pool, label_has_server, s->data, PS_CLOSE_OVER_LIMIT);
    handed_over |= victim != NULL;
    ps_phys_close_items(victim, FALSE);
  }
  g_list_free(servers);
  g_list_free(sets);
  return handed_over;
}

/* Only where it has work: POOLSHIM_MIN_IDLE (anywhere) or POOLSHIM_HOST_MAX. */
static void
start_housekeeper(void)
{
  if (B.config.host_max || ps_config_any_min_idle(&B.config))
    g_thread_unref(g_thread_new("poolshim-house", housekeeper, NULL));
}

/* POOLSHIM_STATS_FILE: one snapshot of every pool, formatted and renamed into place. */
void
ps_house_write_stats(void)
{
  PsStatsReport r = {
    .version = POOLSHIM_VERSION,
    .pid = (int)getpid(),
    .program = B.program,
    .start_time_us = B.start_time_us,
    .written_time_us = g_get_real_time(),
    .unpooled = __atomic_load_n(&B.unpooled, __ATOMIC_RELAXED),
    .returns = {__atomic_load_n(&B.plans[PS_PLAN_NOTHING], __ATOMIC_RELAXED),
                __atomic_load_n(&B.plans[PS_PLAN_KEEP], __ATOMIC_RELAXED),
                __atomic_load_n(&B.plans[PS_PLAN_ROLLBACK], __ATOMIC_RELAXED),
                __atomic_load_n(&B.plans[PS_PLAN_RESTORE], __ATOMIC_RELAXED),
                __atomic_load_n(&B.plans[PS_PLAN_FULL], __ATOMIC_RELAXED),
                __atomic_load_n(&B.plans[PS_PLAN_MODE], __ATOMIC_RELAXED)},
    .grain = B.config.grain == PS_GRAIN_TRANSACTION,
  };
  ps_gil_counts(&r.python_lock_kept, &r.python_lock_released);
  g_mutex_lock(&B.stats_lock);
  r.keys = ps_pool_snapshot(B.pool);
  g_autofree char *text = ps_stats_format(&r);
  g_autofree char *path = ps_stats_expand_path(B.config.stats_file, r.pid, B.program);
  g_autoptr(GError) error = NULL;
  if (!ps_stats_write_file(path, text, &error) && !B.stats_warned) {
    B.stats_warned = TRUE;
    ps_warn("POOLSHIM_STATS_FILE: %s (further failures are not reported)", error->message);
  }
  g_array_unref(r.keys);
  g_mutex_unlock(&B.stats_lock);
}

static gpointer
stats_writer(gpointer data)
{
  for (;;) {
    g_usleep((gulong)B.config.stats_interval_us);
    ps_house_write_stats();
  }
  return NULL;
}

/* In the process that parsed the configuration, and again in each forked child that uses
 * the pool (threads do not survive fork; the file name's %p changes). */
static void
start_stats_writer(void)
{
  if (!B.config.stats_file)
    return;
  B.stats_pid = (int)getpid();
  ps_house_write_stats(); /* the file exists from the first connect on */
  g_thread_unref(g_thread_new("poolshim-stats", stats_writer, NULL));
}

/* One line per frame of where a connection was borrowed, as "object(symbol+offset)". */
static char *
describe_frames(void *const *frames, int n)
{
  GString *out = g_string_new(NULL);
  Dl_info self;
  gboolean know_self = dladdr((void *)describe_frames, &self) != 0;
  for (int i = 0; i < n; i++) {
    Dl_info info;
    /* The shim's own frames say nothing about who borrowed: start at the caller. */
    if (know_self && dladdr(frames[i], &info) && info.dli_fbase == self.dli_fbase)
      continue;
    if (dladdr(frames[i], &info) && info.dli_fname) {
      const char *obj = strrchr(info.dli_fname, '/');
      g_string_append_printf(out, " <- %s(%s+0x%lx)", obj ? obj + 1 : info.dli_fname,
                             info.dli_sname ? info.dli_sname : "?",
                             (unsigned long)((char *)frames[i] -
                                             (char *)(info.dli_saddr ? info.dli_saddr
                                                                     : info.dli_fbase)));
    } else {
      g_string_append_printf(out, " <- %p", frames[i]);
    }
  }
  return g_string_free(out, FALSE);
}

typedef struct {
  char *label;
  gint64 held_ms;
  int nframes;
  void *frames[16];
} PsLeak;

typedef struct {
  gint64 now;
  GSList *leaks;
} PsLeakScan;

/* Under the handle table's locks (all its shards'): no I/O, no other lock. */
static void
note_leak(PsPhys *p, gpointer data)
{
  PsLeakScan *scan = data;
  if (p->leak_warned || p->state == PS_PHYS_ORPHANED ||
      scan->now - p->lent_since_us < B.config.leak_warn_us)
    return;
  p->leak_warned = TRUE;
  PsLeak *leak = g_new0(PsLeak, 1);
  leak->label = g_strdup(ps_pool_key_label(p->item->owner));
  leak->held_ms = (scan->now - p->lent_since_us) / 1000;
  leak->nframes = p->nframes;
  memcpy(leak->frames, p->frames, sizeof leak->frames);
  scan->leaks = g_slist_prepend(scan->leaks, leak);
}

/* Warns once per borrow about connections held longer than POOLSHIM_LEAK_WARN (HikariCP's
 * leakDetectionThreshold). The scan holds the handle table's locks briefly; the writing
 * happens after it. */
static gpointer
watchdog(gpointer data)
{
  gint64 period = MAX(MIN(B.config.leak_warn_us / 2, G_USEC_PER_SEC), 10000);
  for (;;) {
    g_usleep((gulong)period);
    PsLeakScan scan = {.now = g_get_monotonic_time()};
    ps_phys_foreach_attached(note_leak, &scan);
    GSList *leaks = scan.leaks;
    for (GSList *l = leaks; l; l = l->next) {
      PsLeak *leak = l->data;
      g_autofree char *where = describe_frames(leak->frames, leak->nframes);
      ps_warn("possible leak: a connection of pool %s has been held for %" G_GINT64_FORMAT
              " ms (POOLSHIM_LEAK_WARN); borrowed at%s",
              leak->label, leak->held_ms, where);
      g_free(leak->label);
      g_free(leak);
    }
    g_slist_free(leaks);
  }
  return NULL;
}

static void
start_watchdog(void)
{
  if (B.config.leak_warn_us > 0)
    B.watchdog = g_thread_new("poolshim-leaks", watchdog, NULL);
}

void
ps_house_start(void)
{
  start_watchdog();
  start_stats_writer();
  start_housekeeper();
}

void
ps_house_stop(void)
{
  /* The housekeeper finishes its tick and stops: nothing calls the client library behind
   * the application's back while it shuts down. */
  __atomic_store_n(&B.stopping, TRUE, __ATOMIC_RELEASE);
  g_mutex_lock(&B.house_lock);
  while (B.house_busy) /* at most the connect it is in: bounded by the connect timeout */
    g_cond_wait(&B.house_idle, &B.house_lock);
  g_mutex_unlock(&B.house_lock);
}
