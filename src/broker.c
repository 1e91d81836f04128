/* broker.c: the pool policy. Owns the process-wide pool and decides each physical
 * connection's moves (phys.c carries them out: its states, handle table and close). The
 * transaction grain's side is in broker_grain.c, fork() and the child's own pool in
 * broker_fork.c. Knows nothing of MYSQL internals (conn*.c) and finds no symbols
 * (interpose.c). No lock is held across I/O.
 *
 * Lock order (a thread that holds one may take only those after it; ps_broker_before_fork in
 * broker_fork.c takes them all in this order; ThreadSanitizer's deadlock detector checks it
 * in the tsan pass):
 *   0. B.init_lock       (the first call, init_once), then interpose.c's resolve lock and
 *                        gil.c's lock (each a leaf otherwise)
 *   1. B.house_lock      (house_busy only)
 *   2. B.stats_lock      (one statistics writer; held while the file is written)
 *   3. B.lock            (B.pool, B.forked, B.host_slots)
 *   4. phys.c's shard locks (the table of attached handles; all of them in index order)
 *   5. PsPool.lock       (pool.c; its ready/match callbacks take no lock)
 *   6. hostslots.c's registry_lock
 *   7. handle.c's registry lock (a leaf otherwise)
 *   8. handle.c's park_lock (owners waiting out a take; a leaf otherwise)
 * log.c's lock is a leaf: messages may be written under any of them. */
#include "broker.h"

#include <execinfo.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <errmsg.h>
#include <mysqld_error.h>

#include "broker-state.h"
#include "config.h"
#include "conn.h"
#include "gil.h"
#include "handle.h"
#include "hostslots.h"
#include "house.h"
#include "log.h"
#include "phys.h"
#include "pool.h"
#include "stats.h"

G_STATIC_ASSERT(PS_PLAN_COUNT == PS_STATS_PLANS);
static const char *const reset_names[] = {"always", "change_user", "rollback", "none", "auto"};

PsBrokerState ps_broker_state;


/* Closes victims the pool handed back (expired, evicted, dead), outside every lock. */
void
ps_broker_close_victims(GSList *victims, gboolean inherited)
{
  if (victims) /* rarely: not on every connect */
    ps_phys_close_items(victims, inherited);
}

/* An idle connection can be lent at once when the replies of the reset sent at its return
 * have arrived (called under the pool's lock; a peek, no wait). */
static gboolean
phys_ready(PsItem *item)
{
  PsPhys *p = item->conn;
  return p->state != PS_PHYS_RESET_SENT || ps_conn_replies_arrived(p->shell, p->pending);
}

PsPool *
ps_broker_new_pool(void)
{
  PsPoolLimits limits = {
    .per_key = B.config.pool_size,
    .total = B.config.max_connections,
    .max_lifetime_us = B.config.max_lifetime_us,
    .idle_timeout_us = B.config.idle_timeout_us,
  };
  PsPool *pool = ps_pool_new(&limits);
  /* Rather than wait for a reset, open one more connection while the pool has room, so a
   * returned connection finishes its reset while another one serves. Not under
   * POOLSHIM_HOST_MAX: there a new connection takes a slot other processes may need. */
  ps_pool_set_ready_check(pool, phys_ready, B.config.host_max == 0);
  return pool;
}

/* Starts watching the connection just opened in m. POOLSHIM_RESET=auto needs session
 * tracking on in it: turned on here unless the profile's first query already did
 * (`tracking`); a connection where that fails gets the full reset at every return. */
static void
watch_opened(PsPhys *p, MYSQL *m, gboolean tracking)
{
  gboolean track = p->profile && p->profile->track;
  if (track && !tracking)
    tracking = ps_conn_track_session(m);
  p->watch = ps_watch_new(m);
  if (track && tracking)
    ps_watch_set_auto(p->watch);
}

/* A connection (OPENING) just opened on a pool-owned handle (the key's template): watched
 * and close-on-exec until it is filled or lent. */
void
ps_broker_on_pool_handle(PsPhys *p, MYSQL *h)
{
  p->shell = h;
  watch_opened(p, h, FALSE);
  ps_conn_set_cloexec(h);
  p->cloexec_done = TRUE;
}

/* B.active without init_once: poolshim_stats and the library's own closes read it
 * unlocked, so it is published with release (init_once) and read with acquire. */
static inline gboolean
is_active(void)
{
  return __atomic_load_n(&B.active, __ATOMIC_ACQUIRE);
}

/* The first call's set-up (broker_init.c): every connect and close checks `inited`, a
 * load and a branch. */
static inline void
init_once(void)
{
  if (G_UNLIKELY(!__atomic_load_n(&B.inited, __ATOMIC_ACQUIRE)))
    ps_broker_init_first();
}

gboolean
ps_broker_active(void)
{
  init_once();
  return is_active();
}

static void
maybe_sweep(void)
{
  /* The time the pool read a moment ago (the connect's acquire, the close's release): a
   * sweep a second apart needs nothing fresher. */
  gint64 now = ps_pool_seen_us(B.pool);
  gint64 last = __atomic_load_n(&B.last_sweep_us, __ATOMIC_RELAXED);
  if (now - last < G_USEC_PER_SEC ||
      !__atomic_compare_exchange_n(&B.last_sweep_us, &last, now, FALSE, __ATOMIC_RELAXED,
                                   __ATOMIC_RELAXED))
    return;
  ps_broker_close_victims(ps_pool_take_idle(B.pool, FALSE, PS_CLOSE_IDLE_TIMEOUT), FALSE);
  ps_house_forget_pools(B.pool);
}

unsigned int
ps_broker_reset_timeout_s(void)
{
  return (unsigned int)MAX(1, (B.config.reset_timeout_us + 999999) / 1000000);
}

/* Whole seconds (at least 1; rounded up), the unit of the client library's timeouts, left
 * until deadline_us (G_MAXINT64: none). */
static unsigned int
seconds_left(gint64 deadline_us)
{
  gint64 left = deadline_us - g_get_monotonic_time();
  if (left > (gint64)G_MAXUINT * G_USEC_PER_SEC)
    return G_MAXUINT;
  return (unsigned int)MAX(1, (left + G_USEC_PER_SEC - 1) / G_USEC_PER_SEC);
}

/* Attaches p (OPENING or CLAIMED) to the application's handle m. */
static void
lend(PsPhys *p, MYSQL *m)
{
  /* Whatever the reset or the pool's own query left, the application sees a fresh handle. */
  if (p->profile)
    ps_conn_present_fresh(m, p->profile);
  ps_watch_lent(p->watch);
  if (B.config.leak_warn_us) {
    p->lent_since_us = g_get_monotonic_time();
    p->leak_warned = FALSE;
    p->nframes = backtrace(p->frames, G_N_ELEMENTS(p->frames));
  }
  ps_phys_attach(p, m);
}

/* ---- revalidation (POOLSHIM_REVALIDATE) ----
 * A pool compares a connect's password with the one its connections authenticated with,
 * and COM_RESET_CONNECTION does not authenticate: without a new proof, credentials the
 * server no longer accepts (ALTER USER ... IDENTIFIED BY, ACCOUNT LOCK, DROP USER) would
 * keep working for as long as pooled connections live. So the first connect of a key
 * after the interval re-authenticates the connection it is lent, on its own handle (whose
 * options, attributes and auth settings are the key's), before it sees it; one connect
 * per interval pays the round trip, the others go on with the last proof. A refusal
 * revokes the key: its idle connections close, its lent ones close at return, and its
 * connects go straight to the real mysql_real_connect, which reports the server's own
 * error, until one of them succeeds. No lock is held: the connection is the caller's. */

static gboolean
item_of_key(PsItem *item, gpointer key)
{
  return item->owner == key;
}

static void
revoke_key(PsPool *pool, PsPoolKey *pk, unsigned int errnum)
{
  ps_pool_key_set_revoked(pk);
  GSList *idle = ps_pool_take_idle_matching(pool, item_of_key, pk, PS_CLOSE_REVOKED);
  ps_info("pool %s: the server refused its credentials (error %u): its %u idle connections "
          "are closed, lent ones close at return, connects go to the server until one "
          "succeeds", ps_pool_key_label(pk), errnum, g_slist_length(idle));
  ps_broker_close_victims(idle, FALSE);
}

/* The connection p, just moved into (and adopted by) the application's handle m, is proved
 * again (each round trip within timeout_s) when the key's last proof is older than
 * POOLSHIM_REVALIDATE. Unless PS_PROOF_OK, the connection is back out of m (m is as before
 * the connect) and closed. */
static PsProof
prove_if_due(PsPhys *p, PsPoolKey *pk, MYSQL *m, gint64 now, unsigned int reset_s,
             gint64 net_deadline)
{
  if (!ps_pool_key_claim_proof(pk, now, B.config.revalidate_us))
    return PS_PROOF_OK;
  unsigned int timeout_s = MIN(reset_s, seconds_left(net_deadline));
  unsigned int errnum = 0;
  PsProof proof = ps_conn_reauthenticate(m, p->profile, p->watch, timeout_s, &errnum);
  ps_debug("pool %s: credentials proved again: %s (%u)", ps_pool_key_label(pk),
           proof == PS_PROOF_OK ? "accepted" : proof == PS_PROOF_REFUSED ? "refused" : "lost",
           errnum);
  if (proof == PS_PROOF_OK) {
    ps_conn_adopt(m); /* the handle's own timeouts on the socket again, a clean error state */
    return proof;
  }
  ps_conn_move(p->shell, m);
  PsPool *pool = p->pool;
  if (proof == PS_PROOF_LOST) {
    ps_pool_key_proved(pk, 0); /* the next connect proves it */
    ps_phys_close(p, NULL, PS_CLOSE_DEAD, "lost while re-authenticating");
  } else {
    ps_phys_close(p, NULL, PS_CLOSE_REVOKED, "the server refused the pool's credentials");
    revoke_key(pool, pk, errnum);
  }
  return proof;
}

/* A connect of a revoked key: the real one, unpooled, so the caller sees exactly what the
 * server says; a success proves the credentials again and pooling resumes. */
static MYSQL *
connect_revoked(MYSQL *m, PsPoolKey *pk, const char *host, const char *user,
                const char *passwd, const char *db, unsigned int port,
                const char *unix_socket, unsigned long client_flag)
{
  __atomic_fetch_add(&B.unpooled, 1, __ATOMIC_RELAXED);
  MYSQL *r = ps_real.real_connect(m, host, user, passwd, db, port, unix_socket, client_flag);
  if (r && ps_pool_key_revoked(pk)) {
    ps_pool_key_proved(pk, g_get_monotonic_time());
    ps_info("pool %s: the server accepts its credentials again", ps_pool_key_label(pk));
  }
  return r;
}

/* POOLSHIM_HOST_MAX: a slot for one more physical connection to this server, shared with
 * every poolshim process on the host, waited for until the connect's deadline. FALSE (with
 * error 1040 on m, as for a full pool) when none came free in time. A slot directory that
 * cannot be used lets the connect through: one warning, the cap is then not enforced. */
static gboolean
take_host_slot(const PsConnKey *key, PsPoolKey *pk, gint64 deadline, gint64 started, MYSQL *m,
               int *fd_out, PsHostSlots **slots_out)
{
  char server[512];
  ps_conn_key_server(key, server, sizeof server);
  g_autoptr(GError) error = NULL;
  gpointer found = NULL;
  g_mutex_lock(&B.lock);
  gboolean known = g_hash_table_lookup_extended(B.host_slots, server, NULL, &found);
  g_mutex_unlock(&B.lock);
  if (!known) {
    /* Directories are made and checked without B.lock; a thread that raced us keeps its own
     * (NULL remembers a failure, already warned about). */
    PsHostSlots *mine = ps_host_slots_open(B.host_root, server, B.config.host_max);
    g_mutex_lock(&B.lock);
    if (g_hash_table_lookup_extended(B.host_slots, server, NULL, &found))
      ps_host_slots_free(mine);
    else
      g_hash_table_insert(B.host_slots, g_strdup(server), found = mine);
    g_mutex_unlock(&B.lock);
  }
  PsHostSlots *slots = found;
  if (!slots)
    return TRUE;
  int fd = ps_host_slot_acquire(slots, deadline, &error);
  if (fd >= 0) {
    *fd_out = fd;
    *slots_out = slots; /* lives as long as B.host_slots: never removed */
    return TRUE;
  }
  if (g_error_matches(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_TIMED_OUT)) {
    char msg[MYSQL_ERRMSG_SIZE];
    g_snprintf(msg, sizeof msg,
               "poolshim: all %u connections to %s allowed on this host are in use "
               "(POOLSHIM_HOST_MAX): waited %" G_GINT64_FORMAT " ms for one (pool %s)",
               B.config.host_max, server, (g_get_monotonic_time() - started) / 1000,
               ps_pool_key_label(pk));
    ps_conn_set_error(m, ER_CON_COUNT_ERROR, "08004", msg);
    ps_info("%s", msg);
    return FALSE;
  }
  if (g_error_matches(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_UNUSABLE))
    ps_debug("POOLSHIM_HOST_MAX: %s; this connection to %s is not capped", error->message,
             server); /* warned once already */
  else
    ps_warn("POOLSHIM_HOST_MAX: %s; this connection to %s is not capped",
            error ? error->message : "no slot", server);
  return TRUE;
}

/* Opens a connection on a pool-owned handle and lends it into `m`, within timeout_s; after
 * a PS_GRANT_OPEN, which the caller undoes when this fails. `m` is left untouched then. */
static gboolean
lend_new(PsPool *pool, PsPoolKey *pk, MYSQL *m, unsigned int timeout_s, guint busy)
{
  PsConnProfile *profile = ps_pool_key_data(pk);
  if (!profile || !profile->opener)
    return FALSE;
  char err[MYSQL_ERRMSG_SIZE];
  /* No host slot: never under POOLSHIM_HOST_MAX (ps_broker_new_pool). */
  PsPhys *p = ps_phys_new(pool, profile, -1, NULL);
  MYSQL *h = ps_conn_template_open(profile->opener, timeout_s, err, sizeof err);
  if (!h) {
    ps_phys_close(p, NULL, PS_CLOSE_DEAD, "opening failed");
    ps_debug("pool %s: opening one more connection failed (%s); waiting for an idle one's "
             "reset instead", ps_pool_key_label(pk), err);
    return FALSE;
  }
  ps_debug("pool %s: the %u idle connections were still busy with their reset: opened one "
           "more", ps_pool_key_label(pk), busy);
  ps_pool_key_proved(pk, g_get_monotonic_time());
  ps_broker_on_pool_handle(p, h);
  ps_phys_opened(p, pk);
  ps_conn_move(m, p->shell);
  ps_conn_adopt(m);
  lend(p, m);
  ps_broker_grain_attach(p, m, pool, pk);
  return TRUE;
}

/* An idle connection the pool granted: claimed, the reply of its pending reset read, and
 * checked alive (a reply the server sent ahead makes the socket readable: then only a
 * closed one counts as dead). FALSE when it was closed instead: its reset failed
 * (*reset_failed) or the server closed it while idle. */
gboolean
ps_broker_claim_idle(PsPhys *p, unsigned int reset_s, gboolean *reset_failed)
{
  const char *why = NULL;
  *reset_failed = FALSE;
  if (ps_phys_claim(p) &&
      !ps_conn_reset_end(p->shell, p->pending, p->plan, p->profile, reset_s, &why)) {
    ps_phys_close(p, NULL, PS_CLOSE_RESET_FAILED, why);
    *reset_failed = TRUE;
    return FALSE;
  }
  p->pending = 0;
  if (ps_watch_ahead(p->watch) ? ps_conn_idle_closed(p->shell, TRUE)
                               : !ps_conn_idle_alive(p->shell)) {
    ps_phys_close(p, NULL, PS_CLOSE_DEAD, "closed by the server while idle");
    return FALSE;
  }
  return TRUE;
}

static MYSQL *connect_on_key(MYSQL *m, PsPool *pool, PsPoolKey *pk, const PsConnKey *keyp,
                             const char *host, const char *user, const char *passwd,
                             const char *db, unsigned int port, const char *unix_socket,
                             unsigned long client_flag);

MYSQL *
ps_broker_connect(MYSQL *m, const char *host, const char *user, const char *passwd,
                  const char *db, unsigned int port, const char *unix_socket,
                  unsigned long client_flag)
{
  ps_broker_adopt_fork();
  if (m->net.pvio) {
    /* Already connected: the real library refuses (CR_ALREADY_CONNECTED); a lease stays. */
    __atomic_fetch_add(&B.unpooled, 1, __ATOMIC_RELAXED);
    return ps_real.real_connect(m, host, user, passwd, db, port, unix_socket, client_flag);
  }
  /* A handle the application freed without mysql_close (mysql_init(&local) out of scope)
   * may come back at the same address: its old lease is a leak, not a live connection. */
  /* Nothing lent (a single-threaded loop's every connect): no lease to look for. */
  PsPhys *stale = ps_phys_attached() ? ps_phys_detach(m) : NULL;
  if (stale) {
    ps_warn("a handle of %s was reused without mysql_close; its connection is leaked",
            ps_pool_key_label(stale->item->owner));
    ps_phys_close(stale, NULL, PS_CLOSE_UNCLEAN, "leaked by the application");
  }

  PsConnKey key;
  const char *why = NULL;
  if (!ps_conn_key(m, host, user, passwd, db, port, unix_socket, client_flag, &key, &why)) {
    ps_debug("not pooled: %s", why);
    __atomic_fetch_add(&B.unpooled, 1, __ATOMIC_RELAXED);
    return ps_real.real_connect(m, host, user, passwd, db, port, unix_socket, client_flag);
  }

  PsPool *pool = B.pool;
  PsPoolKey *pk = ps_pool_key_find(pool, key.digest); /* held until the connect ends */
  if (!pk) {
    char label[256];
    ps_conn_key_label(&key, label, sizeof label);
    PsPoolSettings settings;
    ps_config_pool_settings(&B.config, label, &settings);
    pk = ps_pool_key(pool, key.digest, label, &settings);
  }
  MYSQL *r = ps_pool_key_revoked(pk)
               ? connect_revoked(m, pk, host, user, passwd, db, port, unix_socket, client_flag)
               : connect_on_key(m, pool, pk, &key, host, user, passwd, db, port, unix_socket,
                                client_flag);
  /* A key that never had a connection (a wrong password) leaves nothing behind. */
  ps_pool_key_release(pool, pk, !r && !ps_pool_key_data(pk));
  maybe_sweep();
  return r;
}

static MYSQL *
connect_on_key(MYSQL *m, PsPool *pool, PsPoolKey *pk, const PsConnKey *keyp, const char *host,
               const char *user, const char *passwd, const char *db, unsigned int port,
               const char *unix_socket, unsigned long client_flag)
{
  const PsConnKey *key = keyp; /* the caller's, alive until the connect returns */
  const PsPoolSettings *settings = ps_pool_key_settings(pk);
  gint64 started = g_get_monotonic_time();
  gint64 deadline = started + settings->timeout_us;
  /* The client's own connect timeout bounds everything a connect does on the network,
   * also reading the replies of resets that idle connections still owe. */
  unsigned int reset_s = ps_broker_reset_timeout_s();
  gint64 net_deadline = m->options.connect_timeout
                          ? started + (gint64)m->options.connect_timeout * G_USEC_PER_SEC
                          : G_MAXINT64;
  gboolean may_grow = TRUE;
  gint64 read_at = started; /* the first acquire reads no clock of its own */
  gboolean grain = B.config.grain == PS_GRAIN_TRANSACTION;
  PsGrainWait gw = {0};
  PsConnectTrace trace = {0};
  for (;;) {
    PsGrant grant;
    if (grain)
      ps_broker_grain_acquire(pool, pk, &gw, read_at, may_grow, deadline, &grant);
    else if (read_at)
      ps_pool_acquire_at(pool, pk, read_at, deadline, &grant);
    else /* what it was served failed: it keeps its place among the waiters */
      ps_pool_acquire_again(pool, pk, may_grow, started, deadline, &grant);
    read_at = 0;
    if (grain && ps_broker_grain_waits(pool, pk, &grant, &gw))
      continue;
    ps_broker_close_victims(grant.victims, FALSE);
    trace.waited_us = MAX(trace.waited_us, grant.waited_us); /* each from the first wait */
    if (grant.first_wait)
      ps_info("pool %s is full (size %u): connects now wait for a free connection (first "
              "wait: %" G_GINT64_FORMAT " ms)",
              ps_pool_key_label(pk), settings->pool_size, grant.waited_us / 1000);
    if (grant.kind == PS_GRANT_TIMEOUT) {
      ps_broker_pool_full(m, pk, settings, started);
      ps_broker_trace_note(pk, started, &trace, "error 1040");
      return NULL;
    }
    if (grant.kind == PS_GRANT_IDLE) {
      PsPhys *p = grant.item->conn;
      gboolean reset_failed;
      gint64 claim_at = g_get_monotonic_time();
      unsigned int claim_s = MIN(reset_s, seconds_left(net_deadline));
      if (!ps_broker_claim_idle(p, claim_s, &reset_failed)) {
        gint64 now = g_get_monotonic_time();
        trace.lost++;
        trace.lost_us += now - claim_at;
        /* Out of time only when the reset's replies did not come in what was left: a
         * connection the server closed while idle (KILL) fails at once, also after a long
         * wait for a free connection, and the next one is tried like any other. */
        if (reset_failed && now >= net_deadline &&
            now - claim_at >= (gint64)claim_s * G_USEC_PER_SEC * 9 / 10) {
          /* What the real connect reports when the server does not answer in time. */
          ps_conn_set_error(m, CR_SERVER_LOST, "HY000",
                            "Lost connection to server at 'handshake': the server did not "
                            "answer within the connect timeout (poolshim)");
          ps_broker_trace_note(pk, started, &trace, "error 2013");
          return NULL;
        }
        continue; /* killed, timed out or restarted while idle: the caller sees nothing */
      }
      if (!ps_conn_same_identity(p->shell, key)) {
        /* Two keys with one digest: never lend across identities, connect unpooled. */
        ps_warn("pool %s: digest collision; connecting without the pool",
                ps_pool_key_label(pk));
        ps_phys_release(p, FALSE, "digest collision");
        __atomic_fetch_add(&B.unpooled, 1, __ATOMIC_RELAXED);
        return ps_real.real_connect(m, host, user, passwd, db, port, unix_socket, client_flag);
      }
      ps_conn_move(m, p->shell);
      ps_conn_adopt(m);
      /* The pool's clock at the grant: no second reading on the way to the lend. */
      PsProof proof = prove_if_due(p, pk, m, grant.now_us, reset_s, net_deadline);
      if (proof == PS_PROOF_LOST)
        continue;
      if (proof == PS_PROOF_REFUSED)
        return connect_revoked(m, pk, host, user, passwd, db, port, unix_socket, client_flag);
      lend(p, m);
      ps_broker_grain_attach(p, m, pool, pk);
      ps_broker_trace_note(pk, started, &trace, "an idle connection");
      return m;
    }
    if (grant.busy_idle) {
      /* Every idle connection still owes its reset's replies and the pool has room. */
      unsigned int open_s = MIN(reset_s, seconds_left(net_deadline));
      if (lend_new(pool, pk, m, open_s, grant.busy_idle))
        return m;
      /* Opening failed (the server's max_connections, a stall): the busy one, after all. */
      ps_pool_open_failed(pool, pk);
      may_grow = FALSE;
      continue;
    }
    /* PS_GRANT_OPEN: a slot is ours; open it with the application's own handle, so its
     * every option applies exactly as without the pool, with what is left of its connect
     * timeout if stale idle connections already used some of it. */
    int slot_fd = -1;
    PsHostSlots *slots = NULL;
    if (B.config.host_max &&
        !take_host_slot(key, pk, deadline, started, m, &slot_fd, &slots)) {
      ps_pool_open_failed(pool, pk);
      return NULL;
    }
    PsPhys *p = ps_phys_new(pool, NULL, slot_fd, slots);
    unsigned int own_timeout = m->options.connect_timeout;
    if (net_deadline != G_MAXINT64)
      m->options.connect_timeout = seconds_left(net_deadline);
    MYSQL *r = ps_real.real_connect(m, host, user, passwd, db, port, unix_socket, client_flag);
    m->options.connect_timeout = own_timeout;
    if (!r) {
      ps_phys_close(p, NULL, PS_CLOSE_DEAD, "opening failed"); /* gives the slot back */
      ps_pool_open_failed(pool, pk);
      ps_broker_trace_note(pk, started, &trace, "opening failed");
      return NULL;
    }
    ps_broker_trace_note(pk, started, &trace, "a new connection");
    ps_pool_key_proved(pk, g_get_monotonic_time());
    PsConnProfile *profile = ps_pool_key_data(pk);
    gboolean tracking = FALSE; /* the profile's first query turned session tracking on */
    if (!profile) {
      PsConnProfile *mine = ps_conn_profile_new(m, key->db, settings->reset == PS_RESET_AUTO);
      if (mine) {
        /* Opens connections on the pool's own handles: kept idle (POOLSHIM_MIN_IDLE) or
         * lent when every idle one is still busy with its reset. Without one, the pool
         * never fills ahead and a borrower waits for a reset rather than grow the pool. */
        const char *no_opener = NULL;
        mine->opener = ps_conn_template_new(m, host, user, passwd, db, port, unix_socket,
                                            client_flag, key->digest, &no_opener);
        if (!mine->opener && settings->min_idle)
          ps_warn("pool %s: POOLSHIM_MIN_IDLE is not kept: %s", ps_pool_key_label(pk),
                  no_opener);
        else if (!mine->opener)
          ps_debug("pool %s: no connection is opened without the application: %s",
                   ps_pool_key_label(pk), no_opener);
      }
      if (mine) {
        tracking = mine->track;
        profile = ps_pool_key_set_data(pk, mine, ps_conn_profile_free);
      }
      if (mine && profile == mine) {
        ps_info("new pool %s (size %u, timeout %" G_GINT64_FORMAT " ms, max lifetime %" G_GINT64_FORMAT
                " s, reset %s)",
                ps_pool_key_label(pk), settings->pool_size, settings->timeout_us / 1000,
                settings->max_lifetime_us / G_USEC_PER_SEC, reset_names[settings->reset]);
        /* Idle connections are closed before the server's wait_timeout would close them
         * (90%, at least a second earlier): the pool never trusts one the server dropped. */
        if (profile->wait_timeout_s > 0) {
          gint64 wt = (gint64)profile->wait_timeout_s * G_USEC_PER_SEC;
          ps_pool_key_cap_idle(pk, MAX(wt / 2, MIN(wt * 9 / 10, wt - G_USEC_PER_SEC)));
        }
      }
    }
    p->profile = profile;
    ps_phys_opened(p, pk);
    watch_opened(p, m, tracking);
    lend(p, m);
    if (!profile)
      ps_phys_doom(m, "the connection failed while the pool learnt its session");
    else
      ps_broker_grain_attach(p, m, pool, pk);
    return r;
  }
}

void
ps_broker_mark_unpoolable(MYSQL *m, const char *reason)
{
  if (is_active())
    ps_phys_doom(m, reason);
}

void
ps_broker_close_from_library(MYSQL *m)
{
  /* mariadb_reconnect closes the old connection of a handle after zeroing its options: the
   * handle lives on with a new connection and keeps its lease. Any other close the library
   * makes of a lent handle (mysql_close_start/_cont) ends it. */
  PsPhys *p = NULL;
  if (is_active() && m && m->options.extension) {
    ps_broker_adopt_fork();
    p = ps_phys_detach(m);
  }
  if (p && p->state != PS_PHYS_ORPHANED) {
    ps_phys_close(p, m, PS_CLOSE_UNCLEAN, "closed through the non-blocking API");
    return;
  }
  if (p) /* the parent's: only our bookkeeping goes; the library closes the handle */
    ps_phys_close(p, NULL, PS_CLOSE_SHUTDOWN, "closed through the non-blocking API");
  ps_real.close(m);
}

void
ps_broker_close(MYSQL *m)
{
  ps_broker_adopt_fork();
  if (B.config.grain == PS_GRAIN_TRANSACTION)
    ps_handle_closing(m);
  PsPhys *p = ps_phys_attached() ? ps_phys_detach(m) : NULL;
  if (!p) {
    ps_real.close(m);
    return;
  }
  if (p->state == PS_PHYS_ORPHANED) {
    /* Lent by the parent before fork(): its session is the parent's. The handle is freed
     * as mysql_close would, without COM_QUIT, with the child's copy of the bookkeeping. */
    ps_phys_close(p, m, PS_CLOSE_SHUTDOWN, "inherited across fork");
    return;
  }
  const char *why = p->state == PS_PHYS_DOOMED ? p->doom : NULL;
  if (!why && ps_watch_reply_unread(p->watch))
    why = "a query's reply was never read";
  if (!why && ps_conn_returnable(m, &why) && p->profile->user &&
      g_strcmp0(m->user, p->profile->user) != 0)
    why = "the session's user changed";
  if (why) {
    ps_phys_close(p, m, PS_CLOSE_UNCLEAN, why);
    return;
  }
  if (ps_pool_key_revoked(p->item->owner)) {
    ps_phys_close(p, m, PS_CLOSE_REVOKED, "the server refused the pool's credentials");
    return;
  }
  if (p->slot_fd >= 0 && ps_host_slots_contended(p->slots)) {
    /* Kept idle, it would hold a slot another process is waiting for. */
    ps_phys_close(p, m, PS_CLOSE_OVER_LIMIT, "another connect waits for a POOLSHIM_HOST_MAX slot");
    return;
  }
  /* RETURNING: the reset runs on the application's handle, whose options are the key's. */
  unsigned int timeout_s = ps_broker_reset_timeout_s();
  p->pending = ps_conn_reset_begin(m, ps_pool_key_settings(p->item->owner)->reset, p->profile,
                                   p->watch, timeout_s, &p->plan, &why);
  if (p->pending < 0) {
    ps_phys_close(p, m, PS_CLOSE_RESET_FAILED, why);
    return;
  }
  __atomic_fetch_add(&B.resets, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&B.plans[p->plan], 1, __ATOMIC_RELAXED);
  if (!p->shell && !(p->shell = ps_conn_shell_new(timeout_s))) {
    ps_phys_close(p, m, PS_CLOSE_UNCLEAN, "out of memory for a shell");
    return;
  }
  ps_conn_move(p->shell, m);
  if (!p->cloexec_done) {
    ps_conn_set_cloexec(p->shell);
    p->cloexec_done = TRUE;
  }
  /* The emptied handle is freed exactly as the real close frees it: its options, its
   * statements (invalidated), and the struct itself when mysql_init allocated it. */
  ps_real.close(m);
  ps_phys_release(p, TRUE, NULL);
  maybe_sweep();
}

/* At exit (or mysql_library_end): every idle connection is closed. Those holding a
 * POOLSHIM_HOST_MAX slot keep it until the server has closed their session, all waited for
 * at once, at most POOLSHIM_RESET_TIMEOUT or 1 s in total: a stalled server delays the exit
 * by that, not by that per connection. No lock is held. */
static void
close_all_idle(void)
{
  ps_phys_close_items_at_exit(ps_pool_take_idle(B.pool, TRUE, PS_CLOSE_SHUTDOWN),
                              MIN(B.config.reset_timeout_us, G_USEC_PER_SEC));
}

void
ps_broker_drain(void)
{
  if (!is_active())
    return;
  ps_house_stop();
  ps_broker_adopt_fork();
  close_all_idle();
}

void
ps_broker_stats(poolshim_stats_t *out)
{
  memset(out, 0, sizeof *out);
  if (!is_active())
    return;
  /* A forked child before its first call still has the parent's pool in B.pool, and its
   * first call replaces it under B.lock (ps_broker_adopt_fork): its own counters are all
   * zero until then. The pool read stays valid after the unlock (none is ever freed while
   * the process runs). */
  g_mutex_lock(&B.lock);
  PsPool *pool = B.forked ? NULL : B.pool;
  g_mutex_unlock(&B.lock);
  if (!pool)
    return;
  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  out->borrowed = c.borrowed;
  out->served_idle = c.served_idle;
  out->opened = c.opened;
  out->closed = c.closed;
  out->waits = c.waits;
  out->wait_timeouts = c.wait_timeouts;
  out->resets = __atomic_load_n(&B.resets, __ATOMIC_RELAXED);
  out->unpooled = __atomic_load_n(&B.unpooled, __ATOMIC_RELAXED);
  out->open = c.open;
  out->idle = c.idle;
  out->lent = c.lent;
  out->waiting = c.waiting;
  out->pools = c.keys;
  guint64 kept, released;
  ps_gil_counts(&kept, &released);
  out->python_lock_kept = kept;
  out->python_lock_released = released;
}
