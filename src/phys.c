/* phys.c: one physical connection's life (phys.h): the table of allowed moves, the one
 * transition function, the handle table and the one close-then-free sequence. Makes no
 * decision (broker.c does) and knows no MYSQL internals (the PsPhysOps given to it).
 * The handle table is split in PHYS_SHARDS shards by handle address, each under its own
 * lock: every connect and close attaches or detaches a handle, and one lock for all of them
 * was the most contended lock of 8 threads on 8 connections after the pool's own (a
 * thread preempted while holding it stalls every other). A shard's lock comes after
 * broker.c's B.lock and before the pool's lock in the lock order; all shards are taken
 * together only in index order (a walk over every handle, fork); no I/O is done and no
 * lock but log.c's leaf lock is taken under one. */
#include "phys.h"

#include "log.h"

static const char *const state_names[PS_PHYS_STATES] = {
    [PS_PHYS_OPENING] = "opening",
    [PS_PHYS_IDLE] = "idle",
    [PS_PHYS_RESET_SENT] = "reset sent",
    [PS_PHYS_CLAIMED] = "claimed",
    [PS_PHYS_LENT] = "lent",
    [PS_PHYS_TAKEABLE] = "takeable",
    [PS_PHYS_PINNED] = "pinned",
    [PS_PHYS_DOOMED] = "doomed",
    [PS_PHYS_RETURNING] = "returning",
    [PS_PHYS_ORPHANED] = "orphaned",
    [PS_PHYS_CLOSED] = "closed",
};

#define O PS_PHYS_OPENING
#define I PS_PHYS_IDLE
#define S PS_PHYS_RESET_SENT
#define C PS_PHYS_CLAIMED
#define L PS_PHYS_LENT
#define T PS_PHYS_TAKEABLE
#define P PS_PHYS_PINNED
#define D PS_PHYS_DOOMED
#define R_ PS_PHYS_RETURNING
#define F PS_PHYS_ORPHANED
#define X PS_PHYS_CLOSED
/* from -> the states it may enter. RETURNING -> CLAIMED: the transaction grain hands a
 * connection taken from an idle handle straight to a re-borrowing one (handle.c). */
static const gboolean allowed[PS_PHYS_STATES][PS_PHYS_STATES] = {
    [O] = {[I] = TRUE, [L] = TRUE, [X] = TRUE},
    [I] = {[C] = TRUE, [F] = TRUE, [X] = TRUE},
    [S] = {[C] = TRUE, [F] = TRUE, [X] = TRUE},
    [C] = {[L] = TRUE, [I] = TRUE, [X] = TRUE},
    [L] = {[T] = TRUE, [P] = TRUE, [D] = TRUE, [R_] = TRUE, [F] = TRUE, [X] = TRUE},
    [T] = {[L] = TRUE, [P] = TRUE, [D] = TRUE, [R_] = TRUE, [F] = TRUE, [X] = TRUE},
    [P] = {[L] = TRUE, [D] = TRUE, [R_] = TRUE, [F] = TRUE, [X] = TRUE},
    [D] = {[D] = TRUE, [F] = TRUE, [X] = TRUE}, /* a second reason replaces the first */
    [R_] = {[I] = TRUE, [S] = TRUE, [C] = TRUE, [X] = TRUE},
    [F] = {[X] = TRUE},
    [X] = {0},
};
#undef O
#undef I
#undef S
#undef C
#undef L
#undef T
#undef P
#undef D
#undef R_
#undef F
#undef X

#define PHYS_SHARD_BITS 4
#define PHYS_SHARDS (1u << PHYS_SHARD_BITS)

/* One shard of the handle table, on a cache line of its own. */
typedef struct {
  GMutex lock;          /* guards the rest */
  GHashTable *attached; /* MYSQL* handle -> PsPhys*, but for the one in one_m */
  MYSQL *one_m;         /* one attached handle kept beside the table: a program that holds */
  PsPhys *one_p;        /* one connection at a time attaches and detaches it without a hash
                           table operation (about 250 instructions) */
} __attribute__((aligned(64))) PhysShard;

static struct {
  PsPhysOps ops;
  int slot_wait_ms;
  guint count[PS_PHYS_STATES]; /* atomic */
  guint refused;               /* atomic */
  guint nattached;             /* atomic: how many handles are attached, in every shard */
  PhysShard shard[PHYS_SHARDS];
} R;

/* A handle's shard: the top bits of its address times a 64-bit odd constant (Fibonacci
 * hashing), so every bit counts. Handles that threads malloc'ed differ in their high bits
 * only (glibc gives each thread its own 64 MiB-aligned arena, so the same offset in each):
 * the low bits put 8 threads' handles in one shard. */
static inline PhysShard *
shard_of(const MYSQL *m)
{
  return &R.shard[((guint64)(guintptr)m * G_GUINT64_CONSTANT(0x9E3779B97F4A7C15)) >>
                  (64 - PHYS_SHARD_BITS)];
}

static void
lock_all(void)
{
  for (guint i = 0; i < PHYS_SHARDS; i++)
    g_mutex_lock(&R.shard[i].lock);
}

static void
unlock_all(void)
{
  for (guint i = PHYS_SHARDS; i-- > 0;)
    g_mutex_unlock(&R.shard[i].lock);
}

/* The handle table (under the shard's lock). */
static void
table_put(PhysShard *s, MYSQL *m, PsPhys *p)
{
  if (!s->one_m) {
    s->one_m = m;
    s->one_p = p;
  } else {
    g_hash_table_insert(s->attached, m, p);
  }
  __atomic_add_fetch(&R.nattached, 1, __ATOMIC_RELEASE);
}

static PsPhys *
table_find(PhysShard *s, MYSQL *m)
{
  if (m && m == s->one_m)
    return s->one_p;
  return s->attached ? g_hash_table_lookup(s->attached, m) : NULL;
}

static PsPhys *
table_take(PhysShard *s, MYSQL *m)
{
  PsPhys *p = NULL;
  if (m && m == s->one_m) {
    p = s->one_p;
    s->one_m = NULL;
    s->one_p = NULL;
  } else if (s->attached) {
    g_hash_table_steal_extended(s->attached, m, NULL, (gpointer *)&p); /* one lookup */
  }
  if (p)
    __atomic_sub_fetch(&R.nattached, 1, __ATOMIC_RELEASE);
  return p;
}

/* Calls fn on every attached connection (under every shard's lock: lock_all). */
static void
table_foreach(void (*fn)(PsPhys *p, gpointer data), gpointer data)
{
  for (guint i = 0; i < PHYS_SHARDS; i++) {
    PhysShard *s = &R.shard[i];
    if (s->one_p)
      fn(s->one_p, data);
    if (s->attached) {
      GHashTableIter it;
      gpointer value;
      g_hash_table_iter_init(&it, s->attached);
      while (g_hash_table_iter_next(&it, NULL, &value))
        fn(value, data);
    }
  }
}

void
ps_phys_setup(const PsPhysOps *ops, int slot_wait_ms)
{
  R.ops = *ops;
  R.slot_wait_ms = slot_wait_ms;
  for (guint i = 0; i < PHYS_SHARDS; i++) {
    PhysShard *s = &R.shard[i];
    g_mutex_lock(&s->lock);
    if (!s->attached)
      s->attached = g_hash_table_new(g_direct_hash, g_direct_equal);
    g_mutex_unlock(&s->lock);
  }
}

const char *
ps_phys_state_name(PsPhysState state)
{
  return state < PS_PHYS_STATES ? state_names[state] : "?";
}

gboolean
ps_phys_allowed(PsPhysState from, PsPhysState to)
{
  return from < PS_PHYS_STATES && to < PS_PHYS_STATES && allowed[from][to];
}

PsPhys *
ps_phys_new(PsPool *pool, PsConnProfile *profile, int slot_fd, PsHostSlots *slots)
{
  PsPhys *p = g_new0(PsPhys, 1);
  p->state = PS_PHYS_OPENING;
  p->pool = pool;
  p->profile = profile;
  p->slot_fd = slot_fd;
  p->slots = slots;
  __atomic_fetch_add(&R.count[PS_PHYS_OPENING], 1, __ATOMIC_RELAXED);
  return p;
}

static const char *
label_of(const PsPhys *p)
{
  return p->item ? ps_pool_key_label(p->item->owner) : "(not yet in a pool)";
}

/* The refusal and the debug lines, apart: the common move is a few instructions (every
 * connect and close makes four). FALSE when the move is refused. */
static G_GNUC_NO_INLINE gboolean
enter_slow(PsPhys *p, PsPhysState from, PsPhysState to, const char *reason)
{
  if (!ps_phys_allowed(from, to)) {
    __atomic_fetch_add(&R.refused, 1, __ATOMIC_RELAXED);
    ps_error("bug: a connection of %s may not go from %s to %s (%s); refused", label_of(p),
             ps_phys_state_name(from), ps_phys_state_name(to), reason ? reason : "no reason");
#if defined(PS_TEST_HOOKS) || defined(PS_PHYS_STRICT)
    g_critical("poolshim: refused transition %s -> %s", ps_phys_state_name(from),
               ps_phys_state_name(to));
#endif
    return FALSE;
  }
  /* The close keeps the line it always had (tests and readers look for it). */
  if (to == PS_PHYS_CLOSED)
    ps_debug("closing a connection of %s (%s -> closed): %s", label_of(p), state_names[from],
             reason ? reason : "no reason");
  else
    ps_debug("connection %p of %s: %s -> %s%s%s", (void *)p, label_of(p), state_names[from],
             state_names[to], reason ? ": " : "", reason ? reason : "");
  return TRUE;
}

gboolean
ps_phys_enter(PsPhys *p, PsPhysState to, const char *reason)
{
  PsPhysState from = p->state;
  if (G_UNLIKELY(!ps_phys_allowed(from, to) || ps_log_enabled(PS_LOG_DEBUG)) &&
      !enter_slow(p, from, to, reason))
    return FALSE;
  p->state = to;
  if (from != to) {
    __atomic_fetch_sub(&R.count[from], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&R.count[to], 1, __ATOMIC_RELAXED);
  }
  return TRUE;
}

void
ps_phys_opened(PsPhys *p, PsPoolKey *key)
{
  p->item = ps_pool_opened(p->pool, key, p);
}

void
ps_phys_fill(PsPhys *p, PsPoolKey *key)
{
  if (ps_phys_enter(p, PS_PHYS_IDLE, "opened ahead (POOLSHIM_MIN_IDLE)"))
    ps_pool_filled(p->pool, key, p, &p->item);
}

gboolean
ps_phys_release(PsPhys *p, gboolean reset, const char *reason)
{
  if (!ps_phys_enter(p, p->pending > 0 ? PS_PHYS_RESET_SENT : PS_PHYS_IDLE, reason))
    return FALSE; /* a bug, logged: it stays out of the idle queue, as it was */
  if (ps_pool_release(p->pool, p->item, reset))
    return TRUE;
  ps_phys_close(p, NULL, p->item->close_reason, "max lifetime reached");
  return FALSE;
}

gboolean
ps_phys_claim(PsPhys *p)
{
  gboolean owed = p->state == PS_PHYS_RESET_SENT;
  ps_phys_enter(p, PS_PHYS_CLAIMED, NULL);
  return owed;
}

gboolean
ps_phys_attach(PsPhys *p, MYSQL *m)
{
  if (!ps_phys_enter(p, PS_PHYS_LENT, NULL))
    return FALSE;
  p->handle = m;
  p->doom = NULL;
  PhysShard *s = shard_of(m);
  g_mutex_lock(&s->lock);
  table_put(s, m, p);
  g_mutex_unlock(&s->lock);
  return TRUE;
}

PsPhys *
ps_phys_detach(MYSQL *m)
{
  PsPhys *p = NULL;
  PhysShard *s = shard_of(m);
  g_mutex_lock(&s->lock);
  p = table_take(s, m);
  g_mutex_unlock(&s->lock);
  if (!p)
    return NULL;
  p->handle = NULL;
  if (p->state == PS_PHYS_LENT || p->state == PS_PHYS_TAKEABLE || p->state == PS_PHYS_PINNED)
    ps_phys_enter(p, PS_PHYS_RETURNING, NULL);
  return p;
}

void
ps_phys_doom(MYSQL *m, const char *reason)
{
  PhysShard *s = shard_of(m);
  g_mutex_lock(&s->lock);
  PsPhys *p = table_find(s, m);
  /* An orphan stays one: it is never pooled in this process anyway. */
  if (p && p->state != PS_PHYS_ORPHANED && ps_phys_enter(p, PS_PHYS_DOOMED, reason))
    p->doom = reason;
  g_mutex_unlock(&s->lock);
}

guint
ps_phys_attached(void)
{
  return __atomic_load_n(&R.nattached, __ATOMIC_ACQUIRE);
}

static void
orphan_one(PsPhys *p, gpointer data)
{
  (void)data;
  if (p->state != PS_PHYS_ORPHANED)
    ps_phys_enter(p, PS_PHYS_ORPHANED, "inherited across fork");
  p->slot_fd = -1; /* the parent's slot: our copy was closed at fork, never unlock it */
}

void
ps_phys_orphan_attached(void)
{
  lock_all();
  table_foreach(orphan_one, NULL);
  unlock_all();
  /* Being opened, checked or returned by a thread of the parent, which the child does not
   * have: never ours (no thread of the child has passed its first call yet). */
  __atomic_store_n(&R.count[PS_PHYS_OPENING], 0, __ATOMIC_RELAXED);
  __atomic_store_n(&R.count[PS_PHYS_CLAIMED], 0, __ATOMIC_RELAXED);
  __atomic_store_n(&R.count[PS_PHYS_RETURNING], 0, __ATOMIC_RELAXED);
}

void
ps_phys_foreach_attached(void (*fn)(PsPhys *p, gpointer data), gpointer data)
{
  lock_all();
  table_foreach(fn, data);
  unlock_all();
}

void
ps_phys_lock_for_fork(void)
{
  lock_all();
}

void
ps_phys_unlock_after_fork(void)
{
  unlock_all();
}

/* Whether the pool counts a connection in this state as lent (not idle, not handed back):
 * closing it must tell the pool. */
static gboolean
pool_counts_lent(PsPhysState s)
{
  return s == PS_PHYS_CLAIMED || s == PS_PHYS_LENT || s == PS_PHYS_TAKEABLE ||
         s == PS_PHYS_PINNED || s == PS_PHYS_DOOMED || s == PS_PHYS_RETURNING;
}

/* The bookkeeping of a closed connection: only now is its host-wide slot given back, so
 * the server never sees more than POOLSHIM_HOST_MAX; the watch only now, as the library
 * called through it until the close. */
static void
phys_free(PsPhys *p)
{
  ps_host_slot_release(p->slot_fd); /* ignores -1 */
  if (p->watch)
    R.ops.watch_free(p->watch);
  if (p->item)
    ps_pool_item_free(p->item);
  __atomic_fetch_sub(&R.count[PS_PHYS_CLOSED], 1, __ATOMIC_RELAXED);
  g_free(p);
}

void
ps_phys_close(PsPhys *p, MYSQL *m, PsCloseReason reason, const char *why)
{
  PsPhysState from = p->state;
  if (!ps_phys_enter(p, PS_PHYS_CLOSED, why ? why : ps_close_reason_name(reason)))
    return; /* closed twice: a bug, logged; never freed twice */
  gboolean orphan = from == PS_PHYS_ORPHANED;
  if (orphan)
    p->slot_fd = -1; /* the parent's: closed at fork, never unlocked here */
  if (p->item && pool_counts_lent(from))
    ps_pool_discard(p->pool, p->item, reason);
  /* A server that has closed the session gets no word (a TLS write could raise SIGPIPE),
   * nor does the parent's session in a forked child. */
  gboolean silent = orphan || reason == PS_CLOSE_DEAD;
  if (m && orphan)
    R.ops.abandon(m);
  else if (m && p->slot_fd >= 0 && !silent)
    R.ops.close_and_wait(m, R.slot_wait_ms);
  else if (m)
    R.ops.close_handle(m);
  if (p->shell && silent)
    R.ops.abandon(p->shell);
  else if (p->shell && p->slot_fd >= 0)
    R.ops.close_and_wait(p->shell, R.slot_wait_ms);
  else if (p->shell)
    R.ops.close(p->shell);
  phys_free(p);
}

void
ps_phys_close_items(GSList *items, gboolean orphaned)
{
  for (GSList *l = items; l; l = l->next) {
    PsItem *item = l->data;
    PsPhys *p = item->conn;
    if (orphaned)
      ps_phys_enter(p, PS_PHYS_ORPHANED, "inherited across fork");
    ps_phys_close(p, NULL, item->close_reason, NULL);
  }
  g_slist_free(items);
}

void
ps_phys_close_items_at_exit(GSList *items, gint64 wait_us)
{
  GArray *socks = g_array_new(FALSE, FALSE, sizeof(int));
  for (GSList *l = items; l; l = l->next) {
    PsItem *item = l->data;
    PsPhys *p = item->conn;
    if (!ps_phys_enter(p, PS_PHYS_CLOSED, ps_close_reason_name(item->close_reason))) {
      l->data = NULL; /* not ours to close */
      continue;
    }
    if (p->slot_fd < 0) {
      R.ops.close(p->shell);
      continue;
    }
    int fd = R.ops.close_keep_socket(p->shell);
    g_array_append_val(socks, fd);
  }
  R.ops.wait_sockets_closed((int *)socks->data, socks->len, g_get_monotonic_time() + wait_us);
  g_array_free(socks, TRUE);
  for (GSList *l = items; l; l = l->next)
    if (l->data)
      phys_free(((PsItem *)l->data)->conn); /* the slots, now that the sessions ended */
  g_slist_free(items);
}

guint
ps_phys_count(PsPhysState state)
{
  return state < PS_PHYS_STATES ? __atomic_load_n(&R.count[state], __ATOMIC_RELAXED) : 0;
}

guint
ps_phys_refused(void)
{
  return __atomic_load_n(&R.refused, __ATOMIC_RELAXED);
}
