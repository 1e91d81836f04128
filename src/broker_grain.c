/* broker_grain.c: the broker's side of POOLSHIM_GRAIN=transaction: a lent connection's
 * handle record, the grain's waiting, and the PsHandleOps that handle.c calls. Decides no
 * plain connect or close (broker.c) and knows no MYSQL internals (conn*.c, handle.c). */
#include "broker-state.h"

#include <errmsg.h>

#include "conn.h"
#include "handle.h"
#include "phys.h"
#include "pool.h"
#include "watch.h"

/* POOLSHIM_GRAIN=transaction: m's commands go through a handle record (handle.c), in a
 * pool whose reset is auto. */
void
ps_broker_grain_attach(PsPhys *p, MYSQL *m, PsPool *pool, PsPoolKey *pk)
{
  if (B.config.grain != PS_GRAIN_TRANSACTION || B.config.host_max || !ps_watch_auto(p->watch) ||
      ps_pool_key_settings(pk)->reset != PS_RESET_AUTO || p->state != PS_PHYS_LENT)
    return;
  ps_pool_key_hold(pool, pk); /* the record's own */
  if (!ps_handle_attach(m, p, pool, pk))
    ps_pool_key_release(pool, pk, FALSE);
}

/* The transaction grain's waiting: a connect or re-borrow first only tries the pool; when
 * that finds nothing it counts itself as wanting, takes the connection of the handle that
 * has been takeable longest (at least handle.c's delay: one between two statements of a
 * task comes back at once), and waits in the pool's queue. Only one waiter of the key,
 * the poller, looks again: when that delay ends for the handle takeable longest, or when
 * a handle becomes takeable while it sleeps without one (settle pokes it); the others
 * sleep until a connection comes to them (a take gives it to the oldest waiter). */
void
ps_broker_grain_acquire(PsPool *pool, PsPoolKey *pk, PsGrainWait *g, gint64 now_us,
                        gboolean may_grow, gint64 deadline, PsGrant *grant)
{
  if (g->wanting)
    ps_pool_acquire_grain(pool, pk, now_us, may_grow, g, g->next_us, deadline, &g->arrived,
                          grant);
  else if (may_grow)
    ps_pool_acquire_at(pool, pk, now_us, 0, grant); /* a try */
  else
    ps_pool_acquire_no_grow(pool, pk, 0, grant);
}

/* The poller `token` stops: the next one sleeps on, poked now if a handle is takeable
 * already (ps_pool_grain_done). */
static void
grain_hand_off(PsPool *pool, PsPoolKey *pk, gconstpointer token)
{
  if (ps_pool_grain_done(pool, pk, token) && ps_handle_any_takeable(pk))
    ps_pool_key_poke(pool, pk);
}

static void
grain_stop(PsPool *pool, PsPoolKey *pk, PsGrainWait *g)
{
  if (!g->wanting)
    return;
  grain_hand_off(pool, pk, g);
  ps_pool_key_want(pk, FALSE);
  g->wanting = FALSE;
}

/* After ps_broker_grain_acquire: TRUE when the caller acquires again (its try failed, or the
 * poller's turn: it looked for a takeable handle). */
gboolean
ps_broker_grain_waits(PsPool *pool, PsPoolKey *pk, PsGrant *grant, PsGrainWait *g)
{
  if (grant->kind == PS_GRANT_TIMEOUT && (!g->wanting || grant->turn)) {
    ps_broker_close_victims(grant->victims, FALSE);
    if (!g->wanting) {
      ps_pool_key_want(pk, TRUE);
      g->wanting = TRUE;
    }
    /* A connect that arrived before every queued waiter keeps what it takes (reset in the
     * pool): given to the oldest queued one instead, a re-borrow that found nothing to
     * take, it had to be restored from that reset, and the connect took again. */
    gboolean eldest = ps_pool_key_oldest_wait_us(pool, pk, g->arrived) == 0;
    ps_pool_hold_next_release(eldest);
    ps_handle_take(pk, &g->next_us, g);
    ps_pool_hold_next_release(FALSE);
    return TRUE;
  }
  grain_stop(pool, pk, g);
  return FALSE;
}

/* ---- the transaction grain's pool side (handle.c calls these) ---- */

/* A connection of pk for a detached handle's command: waits like a connect (its first try
 * and, as the key's poller, its turns take from takeable handles: handle.c's `direct`),
 * the same error 1040 after POOLSHIM_TIMEOUT. */
static PsPhys *
grain_reborrow(PsPoolKey *pk, MYSQL *m,
               PsPhys *(*direct)(gpointer data, gint64 arrived_us, gint64 *next_us,
                                 gpointer waiter),
               gpointer data)
{
  PsPool *pool = B.pool;
  const PsPoolSettings *settings = ps_pool_key_settings(pk);
  gint64 started = g_get_monotonic_time();
  gint64 deadline = started + settings->timeout_us;
  unsigned int reset_s = ps_broker_reset_timeout_s();
  PsGrainWait gw = {0};
  for (;;) {
    PsGrant grant;
    ps_broker_grain_acquire(pool, pk, &gw, 0, TRUE, deadline, &grant);
    if (grant.kind == PS_GRANT_TIMEOUT && (!gw.wanting || grant.turn)) {
      /* Nothing in the pool: one straight from an idle handle of the key. */
      ps_broker_close_victims(grant.victims, FALSE);
      if (!gw.wanting) {
        ps_pool_key_want(pk, TRUE);
        gw.wanting = TRUE;
      }
      PsPhys *p = direct(data, gw.arrived, &gw.next_us, &gw);
      if (!p)
        continue;
      grain_stop(pool, pk, &gw);
      return p;
    }
    grain_stop(pool, pk, &gw);
    ps_broker_close_victims(grant.victims, FALSE);
    if (grant.kind == PS_GRANT_TIMEOUT) {
      ps_broker_pool_full(m, pk, settings, started);
      return NULL;
    }
    if (grant.kind == PS_GRANT_IDLE) {
      PsPhys *p = grant.item->conn;
      gboolean reset_failed;
      if (!ps_broker_claim_idle(p, reset_s, &reset_failed))
        continue;
      return p;
    }
    /* A slot (or every idle one busy with its reset): one more from the key's template. */
    PsConnProfile *profile = ps_pool_key_data(pk);
    char err[MYSQL_ERRMSG_SIZE] = "no template to open a connection with";
    PsPhys *p = ps_phys_new(pool, profile, -1, NULL);
    MYSQL *h = profile && profile->opener
                 ? ps_conn_template_open(profile->opener, reset_s, err, sizeof err)
                 : NULL;
    if (!h) {
      ps_phys_close(p, NULL, PS_CLOSE_DEAD, "opening failed");
      ps_pool_open_failed(pool, pk);
      char msg[MYSQL_ERRMSG_SIZE];
      g_snprintf(msg, sizeof msg, "Lost connection to server (poolshim: %s)", err);
      ps_conn_set_error(m, CR_SERVER_LOST, "HY000", msg);
      return NULL;
    }
    ps_pool_key_proved(pk, g_get_monotonic_time());
    ps_broker_on_pool_handle(p, h);
    ps_phys_opened(p, pk);
    return p;
  }
}

/* A connection taken from an idle handle (RETURNING, in its shell): reset, then idle. */
static void
grain_give_back(PsPhys *p)
{
  const char *why = NULL;
  if (!p->cloexec_done) {
    ps_conn_set_cloexec(p->shell);
    p->cloexec_done = TRUE;
  }
  if (ps_pool_key_revoked(p->item->owner)) {
    ps_phys_close(p, NULL, PS_CLOSE_REVOKED, "the server refused the pool's credentials");
    return;
  }
  p->pending = ps_conn_reset_begin(p->shell, ps_pool_key_settings(p->item->owner)->reset,
                                   p->profile, p->watch, ps_broker_reset_timeout_s(), &p->plan,
                                   &why);
  if (p->pending < 0) {
    ps_phys_close(p, NULL, PS_CLOSE_RESET_FAILED, why);
    return;
  }
  __atomic_fetch_add(&B.resets, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&B.plans[p->plan], 1, __ATOMIC_RELAXED);
  ps_phys_release(p, TRUE, "taken from an idle handle");
}

static void
grain_discard(PsPhys *p, const char *why)
{
  ps_phys_close(p, NULL, PS_CLOSE_DEAD, why);
}

/* A handle taken before fork(), in the child: the child's key of the same digest (made with
 * the parent's settings and connection profile, which the parent's pool keeps allocated in
 * the child: see ps_broker_adopt_fork). */
static PsPoolKey *
grain_adopt(PsPoolKey *inherited, PsPool **pool)
{
  ps_broker_adopt_fork();
  *pool = B.pool;
  PsPoolKey *pk = ps_pool_key_find(B.pool, ps_pool_key_digest(inherited));
  if (!pk)
    pk = ps_pool_key(B.pool, ps_pool_key_digest(inherited), ps_pool_key_label(inherited),
                     ps_pool_key_settings(inherited));
  PsConnProfile *profile = ps_pool_key_data(inherited);
  if (profile && !ps_pool_key_data(pk))
    ps_pool_key_set_data(pk, profile, NULL); /* the inherited key owns it */
  return pk;
}

/* A take may read from the taken connection (its LAST_INSERT_ID(), user variables): the
 * key's poller, if it is the taker, lets another waiter poll meanwhile, so that takes
 * that read run side by side. */
static void
grain_claimed(PsPoolKey *pk, gpointer waiter)
{
  grain_hand_off(B.pool, pk, waiter);
}

const PsHandleOps ps_broker_grain_ops = {
  .reborrow = grain_reborrow,
  .claimed = grain_claimed,
  .give_back = grain_give_back,
  .discard = grain_discard,
  .adopt = grain_adopt,
  .io_timeout_s = ps_broker_reset_timeout_s,
};
