/* handle.c: POOLSHIM_GRAIN=transaction, the per-handle record (handle.h).
 *
 * A record's state (atomic) is the handshake between its owner (the thread that calls the
 * library with the handle) and a taker:
 *   BUSY -> TAKEABLE        owner: after a command's final reply, nothing pins the session
 *   TAKEABLE -> BUSY        owner: at its next command or close (compare-and-swap)
 *   TAKEABLE -> TAKING      taker: compare-and-swap under the registry's lock
 *   TAKING -> TAKEN         taker: the session moved out, what it differs by recorded (release)
 *   TAKEN -> BUSY           owner: at its next command, after borrowing and restoring
 * The owner waits out TAKING. A taker does no I/O in it but one query on the taken
 * connection when the handle's LAST_INSERT_ID() or user variables may have changed since
 * they were last known (what the watch cannot name), and, handing the connection straight
 * to a re-borrowing handle (take_for), the one write that sets the other's database and
 * LAST_INSERT_ID(). A taker is a connect or re-borrow that found no connection (or the
 * owner, POOLSHIM_TEST_FORCE_TAKE). Only the owner writes the handle's struct; a taker
 * reads it while it holds TAKING. Lock order: the registry's lock is a leaf (no other lock
 * is taken under it, no I/O is done). */
#include "handle.h"

#include <errmsg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "conn.h"
#include "log.h"
#include "watch.h"

enum { H_BUSY, H_TAKEABLE, H_TAKING, H_TAKEN };

/* More distinct setup statements than this: the session is pinned (PS_PIN_SESSION). */
#define H_MAX_SETS 16
/* How long a handle is takeable before a waiter takes it (connection sharing's delay, as
 * MySQL Router's connection_sharing_delay): between two statements of one task a handle
 * comes back within microseconds, and taking it then makes both wait. */
#define H_TAKE_DELAY_US 300
/* ... or, for a handle seen coming back sooner, H_COMEBACK_FACTOR times its usual gap
 * between two of its commands (measured while someone waits: comeback_us), but never less
 * than this: a C loop's statements follow each other within tens of microseconds, a
 * Python ORM's within hundreds. */
#define H_TAKE_DELAY_MIN_US 50
#define H_COMEBACK_FACTOR 4
/* A re-borrow gets an idle handle's connection directly (a hand-over, past the pool's
 * queue) only while no waiter in the queue has waited longer than this. */
#define H_HAND_OVER_BOUND_US 100000

typedef struct {
  struct st_mariadb_methods methods; /* first: the handle's m->methods points here */
  const struct st_mariadb_methods *lib; /* the library's own table */
  MYSQL_DATA *(*read_rows)(MYSQL *, MYSQL_FIELD *, unsigned int);
  MYSQL *m;
  PsPhys *p;       /* the connection held; NULL while detached */
  PsPool *pool;
  PsPoolKey *pk;   /* held */
  PsGrainCounts *counts; /* pk's: takes, re-borrows, pins (atomic adds) */
  guint generation; /* H.generation at attach: another one means inherited across fork */
  gint state;
  gint64 takeable_us; /* atomic: when it last became takeable */
  gint64 comeback_us; /* atomic: its usual gap (a moving average of those shorter than
                         H_TAKE_DELAY_US) from takeable to its next command; 0: none seen */
  gint64 settled_us;  /* the owner's: when settle made it takeable with the clock read (0:
                         not read; a waiter's later stamp of takeable_us is no sample) */
  /* The handle's session as it differs from the pool's fresh one, known without asking the
   * server: the session setup statements that succeeded (ps_watch_prelude_var), in order,
   * the last one per variable; its LAST_INSERT_ID(); and, while detached, its database.
   * Anything else the watch cannot name pins the connection (ps_watch_pinned). */
  GPtrArray *sets;     /* of char*, at most H_MAX_SETS */
  char *pending_set;   /* the command in flight is one of them: kept if it succeeds */
  guint pending_var;
  guint64 lid;         /* LAST_INSERT_ID() when known */
  gboolean lid_unknown; /* an insert id may have been generated since: read at the take */
  char *uservars;      /* SET @`a`=..., read at the last take that followed their use */
  char *db;        /* the handle's database (NULL: none), kept by the owner: the library
                      writes m->db only after mysql_select_db's settle */
  gboolean lost;   /* detached: the session could not be read; commands fail as lost */
  gboolean handed; /* the re-borrow got a connection whose session is the handle's already */
  gboolean asked;  /* the last command was SHOW WARNINGS / ERRORS: its warnings were read */
  gboolean asks_lid; /* the command is SELECT LAST_INSERT_ID(): its row is the handle's */
  /* A re-borrowed session's LAST_INSERT_ID() is not the handle's: DO LAST_INSERT_ID(lid) is
   * sent at the re-borrow, its reply not awaited; the handle's command follows it on the
   * wire (one round trip for both), and its reply is read first (read_prefix). */
  gboolean lid_prefix;
  gboolean prefix_unread;
} PsHandle;

static struct {
  PsHandleOps ops;
  GMutex lock;       /* guards `all` */
  GPtrArray *all;    /* of PsHandle */
  guint force_take;  /* POOLSHIM_TEST_FORCE_TAKE (test library only), percent */
  guint generation;  /* forks this process descends from (written in the child alone) */
} H;

G_STATIC_ASSERT(PS_PIN_REASONS == PS_GRAIN_PIN_REASONS);

static const char *const pin_names[PS_PIN_REASONS] = {
  [PS_PIN_TRANSACTION] = "transaction", [PS_PIN_AUTOCOMMIT] = "autocommit off",
  [PS_PIN_SESSION] = "session state", [PS_PIN_STATEMENT] = "prepared statement",
  [PS_PIN_RESULT] = "unread result", [PS_PIN_WARNINGS] = "warnings",
  [PS_PIN_OTHER] = "other",
};

const char *
ps_handle_pin_name(PsPinReason reason)
{
  return reason < PS_PIN_REASONS ? pin_names[reason] : "?";
}

void
ps_handle_setup(const PsHandleOps *ops)
{
  H.ops = *ops;
  g_mutex_lock(&H.lock);
  if (!H.all)
    H.all = g_ptr_array_new();
  g_mutex_unlock(&H.lock);
#ifdef PS_TEST_HOOKS
  const char *force = g_getenv("POOLSHIM_TEST_FORCE_TAKE");
  guint64 pct = 0;
  if (force && (!ps_config_parse_uint(force, &pct) || pct > 100)) {
    ps_warn("POOLSHIM_TEST_FORCE_TAKE=\"%.20s\" is not valid (expected 0 to 100); using 0",
            force);
    pct = 0;
  }
  H.force_take = (guint)pct;
#endif
}

static inline PsHandle *
handle_of(MYSQL *m)
{
  return (PsHandle *)((char *)m->methods - offsetof(PsHandle, methods));
}

/* ---- the taker's side ---- */

static void
append_value(GString *sql, const char *v)
{
  if (!v) {
    g_string_append(sql, "NULL");
    return;
  }
  gboolean number = *v != '\0';
  for (const char *c = v; *c && number; c++)
    number = g_ascii_isdigit(*c);
  if (number) {
    g_string_append(sql, v);
    return;
  }
  g_string_append_c(sql, '\'');
  for (const char *c = v; *c; c++) {
    if (*c == '\'' || *c == '\\')
      g_string_append_c(sql, '\\');
    g_string_append_c(sql, *c);
  }
  g_string_append_c(sql, '\'');
}

/* The session's user variables (it used some since it was restored), as one SET into
 * h->uservars (NULL: none), read from the server: what a take reads that the watch cannot
 * know. Without the server's list (the user_variables plugin off), user variables pin
 * sessions from now on; FALSE then (this session used some) or when the query failed. */
static gboolean
read_uservars(PsHandle *h, MYSQL *s, PsWatch *w)
{
  GString *sql = g_string_new("SET @`");
  static const char q[] = "SELECT VARIABLE_NAME, VARIABLE_VALUE, VARIABLE_TYPE FROM "
                          "information_schema.USER_VARIABLES";
  ps_watch_set_bypass(w, TRUE);
  MYSQL_RES *res = ps_real.real_query(s, q, strlen(q)) == 0 ? ps_real.store_result(s) : NULL;
  ps_watch_set_bypass(w, FALSE);
  if (!res) {
    unsigned int e = s->net.last_errno;
    g_string_free(sql, TRUE);
    if (e >= CR_MIN_ERROR && e <= CR_MAX_ERROR)
      return FALSE;
    ps_watch_set_uservars_restorable(FALSE);
    ps_info("the server does not list user variables (information_schema.USER_VARIABLES): "
            "they pin a handle's connection from now on");
    return FALSE;
  }
  MYSQL_ROW row;
  while ((row = ps_real.fetch_row(res))) {
    if (!row[0])
      continue;
    if (sql->len > 6)
      g_string_append(sql, ", @`");
    for (const char *c = row[0]; *c; c++) {
      if (*c == '`')
        g_string_append_c(sql, '`');
      g_string_append_c(sql, *c);
    }
    g_string_append(sql, "`=");
    const char *type = row[2] ? row[2] : "";
    if (row[1] && (g_str_equal(type, "INT") || g_str_equal(type, "DECIMAL") ||
                   g_str_equal(type, "DOUBLE") || g_str_equal(type, "REAL")))
      g_string_append(sql, row[1]);
    else
      append_value(sql, row[1]);
  }
  ps_real.free_result(res);
  g_free(h->uservars);
  h->uservars = sql->len > 6 ? g_string_free(sql, FALSE) : NULL;
  if (!h->uservars)
    g_string_free(sql, TRUE);
  return TRUE;
}

/* LAST_INSERT_ID() of the session in s (the taker's now), when an insert id may have been
 * generated since it was last known: the one query a take may make (an OK packet's insert
 * id is not it when the id was given, and INSERT ... RETURNING sends none). */
static gboolean
read_lid(PsHandle *h, MYSQL *s, PsWatch *w)
{
  static const char q[] = "SELECT LAST_INSERT_ID()";
  ps_watch_set_bypass(w, TRUE);
  MYSQL_RES *res = ps_real.real_query(s, q, sizeof q - 1) == 0 ? ps_real.store_result(s) : NULL;
  MYSQL_ROW row = res ? ps_real.fetch_row(res) : NULL;
  ps_watch_set_bypass(w, FALSE);
  gboolean ok = row && row[0];
  if (ok) {
    h->lid = g_ascii_strtoull(row[0], NULL, 10);
    h->lid_unknown = FALSE;
  }
  if (res)
    ps_real.free_result(res);
  return ok;
}

/* Holding TAKING on h: moves its session out, records what it differs by from a fresh one
 * (no I/O but read_lid), publishes TAKEN, gives the connection back to the pool. */
static void
take(PsHandle *h)
{
  PsPhys *p = h->p;
  MYSQL *m = h->m;
  if (!p->shell && !(p->shell = ps_conn_shell_new(5))) {
    /* No struct to move it into: the owner keeps it. */
    __atomic_store_n(&h->state, H_BUSY, __ATOMIC_RELEASE);
    return;
  }
  if (!ps_conn_copy_out(p->shell, m)) {
    __atomic_store_n(&h->state, H_BUSY, __ATOMIC_RELEASE);
    return;
  }
  p->shell->methods = ps_watch_methods(p->watch);
  ps_phys_detach(m); /* RETURNING */
  /* Setup statements run ahead that the handle did not send: their replies are read
   * before any query (their effect goes with the full reset that follows). */
  gboolean ok = TRUE;
  if (ps_watch_unmatched(p->watch) && (h->lid_unknown || ps_watch_uservars_used(p->watch))) {
    ok = ps_watch_settle(p->shell, p->watch);
    ps_watch_mark_full(p->watch);
  }
  ok = ok && (!h->lid_unknown || read_lid(h, p->shell, p->watch)) &&
                (!ps_watch_uservars_used(p->watch) || read_uservars(h, p->shell, p->watch));
  h->lost = !ok;
  h->p = NULL;
  __atomic_fetch_add(&h->counts->takes, 1, __ATOMIC_RELAXED);
  __atomic_store_n(&h->state, H_TAKEN, __ATOMIC_RELEASE);
  /* h is the owner's again: not touched from here on. */
  if (ok)
    H.ops.give_back(p);
  else
    H.ops.discard(p, "lost while being taken from an idle handle");
}

void
ps_handle_lock_for_fork(void)
{
  g_mutex_lock(&H.lock);
}

void
ps_handle_unlock_after_fork(gboolean child)
{
  if (child)
    H.generation++;
  g_mutex_unlock(&H.lock);
}

/* The owner came back before anyone took its connection: how soon, when the clock was
 * read for it (settle reads it only while someone wants a connection of the key). */
static void
note_comeback(PsHandle *h)
{
  gint64 since = h->settled_us;
  if (!since)
    return;
  gint64 gap = g_get_monotonic_time() - since;
  if (gap < 0 || gap >= H_TAKE_DELAY_US)
    return;
  gint64 avg = __atomic_load_n(&h->comeback_us, __ATOMIC_RELAXED);
  __atomic_store_n(&h->comeback_us, avg ? (7 * avg + gap) / 8 + 1 : gap + 1, __ATOMIC_RELAXED);
}

/* How long h stays takeable before a waiter takes it. */
static gint64
take_delay_us(const PsHandle *h)
{
  gint64 avg = __atomic_load_n(&h->comeback_us, __ATOMIC_RELAXED);
  return avg ? CLAMP(H_COMEBACK_FACTOR * avg, H_TAKE_DELAY_MIN_US, H_TAKE_DELAY_US)
             : H_TAKE_DELAY_US;
}

/* Claims (TAKING) the handle of pk that has been takeable longest, at least
 * its delay (take_delay_us); NULL, and in *next_us when one will have been (0: none
 * takeable). */
static PsHandle *
claim(PsPoolKey *pk, const PsHandle *self, gint64 *next_us)
{
  PsHandle *found = NULL;
  gint64 now = g_get_monotonic_time(), ready = G_MAXINT64;
  *next_us = 0;
  g_mutex_lock(&H.lock);
  /* A handle between two statements of one task comes back within microseconds, one that
   * thinks does not. */
  for (guint i = 0; H.all && i < H.all->len; i++) {
    PsHandle *h = H.all->pdata[i];
    if (h->pk != pk || h == self || __atomic_load_n(&h->state, __ATOMIC_ACQUIRE) != H_TAKEABLE)
      continue;
    gint64 since = __atomic_load_n(&h->takeable_us, __ATOMIC_RELAXED);
    if (!since) {
      /* Takeable since before anyone wanted: its delay starts now (settle). A racing
       * settle's own stamp wins, or is replaced by this later one: never too early. */
      gint64 zero = 0;
      since = __atomic_compare_exchange_n(&h->takeable_us, &zero, now, FALSE,
                                          __ATOMIC_RELAXED, __ATOMIC_RELAXED) ? now : zero;
    }
    gint64 at = since + take_delay_us(h); /* the one whose delay ends first */
    if (at < ready) {
      ready = at;
      found = h;
    }
  }
  if (found && now < ready) {
    *next_us = ready;
    found = NULL;
  }
  gint expect = H_TAKEABLE;
  if (found && !__atomic_compare_exchange_n(&found->state, &expect, H_TAKING, FALSE,
                                            __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
    found = NULL;
  g_mutex_unlock(&H.lock);
  return found;
}

gboolean
ps_handle_take(PsPoolKey *pk, gint64 *next_us, gpointer waiter)
{
  PsHandle *found = claim(pk, NULL, next_us);
  if (found)
    H.ops.claimed(pk, waiter);
  if (found)
    take(found);
  return found != NULL;
}

static gboolean
same_sets(const GPtrArray *a, const GPtrArray *b)
{
  guint n = a ? a->len : 0;
  if (n != (b ? b->len : 0))
    return FALSE;
  guint i = 0;
  while (i < n && strcmp(a->pdata[i], b->pdata[i]) == 0)
    i++;
  if (i == n)
    return TRUE;
  /* The same statements in another order (Django's handles set autocommit again after
   * their setup, at different moments): one session, provided each sets a variable of
   * its own. Each list holds one statement per variable (record_set), and those that
   * set a character set (no PsVar) may overlap each other: at most one of them. */
  guint charsets = 0;
  for (guint k = 0; k < n; k++) {
    const char *sa = a->pdata[k];
    guint var = 0;
    ps_watch_prelude_var(sa, strlen(sa), &var);
    if (!var && ++charsets > 1)
      return FALSE;
    gboolean found = FALSE;
    for (guint j = 0; j < n && !found; j++)
      found = strcmp(sa, b->pdata[j]) == 0;
    if (!found)
      return FALSE;
  }
  return TRUE;
}

/* Holding TAKING on h: hands its connection to t's re-borrow as it is, without a reset,
 * when the two sessions differ at most by the database and LAST_INSERT_ID() (the same
 * setup statements, no user variables, no warnings left, no setup statement run ahead
 * for h that h did not send): those are set in one write
 * (with h's LAST_INSERT_ID() read first when unknown). CLAIMED, in its shell; NULL when
 * the sessions differ by more (then given back to the pool like any take) or it failed. */
static PsPhys *
take_for(PsHandle *h, PsHandle *t)
{
  PsPhys *p = h->p;
  MYSQL *m = h->m;
  if (!same_sets(h->sets, t->sets) || h->uservars || t->uservars ||
      ps_watch_uservars_used(p->watch) || ps_watch_unmatched(p->watch) || m->warning_count ||
      (h->db && !t->db)) {
    take(h);
    return NULL;
  }
  if ((!p->shell && !(p->shell = ps_conn_shell_new(5))) || !ps_conn_copy_out(p->shell, m)) {
    __atomic_store_n(&h->state, H_BUSY, __ATOMIC_RELEASE);
    return NULL;
  }
  MYSQL *s = p->shell;
  s->methods = ps_watch_methods(p->watch);
  ps_phys_detach(m); /* RETURNING */
  char *value = NULL;
  ps_watch_set_bypass(p->watch, TRUE);
  /* Closed by the server while idle in h (KILL, restart, wait_timeout): not t's to fail
   * on; one poll, since t's command may be the first thing written to it. */
  gboolean ok = !ps_conn_idle_closed(s, FALSE) &&
                ps_conn_run_pipeline(s, h->lid_unknown ? "SELECT LAST_INSERT_ID()" : NULL,
                                     &value, g_strcmp0(h->db, t->db) != 0 ? t->db : NULL,
                                     NULL, 0);
  ps_watch_set_bypass(p->watch, FALSE);
  ps_watch_mark_full(p->watch); /* its return resets what both handles did */
  if (value) {
    h->lid = g_ascii_strtoull(value, NULL, 10);
    h->lid_unknown = FALSE;
    g_free(value);
  }
  h->lost = h->lid_unknown;
  /* The session holds h's LAST_INSERT_ID() now: t's goes ahead of t's command. */
  t->lid_prefix = h->lid_unknown || h->lid != t->lid;
  h->p = NULL;
  __atomic_fetch_add(&h->counts->takes, 1, __ATOMIC_RELAXED);
  __atomic_store_n(&h->state, H_TAKEN, __ATOMIC_RELEASE);
  /* h is the owner's again: not touched from here on. */
  if (!ok) {
    H.ops.discard(p, "lost while being handed from an idle handle to another");
    return NULL;
  }
  ps_phys_enter(p, PS_PHYS_CLAIMED, "handed from an idle handle to another");
  return p;
}

/* PsHandleOps.reborrow's `direct`: a connection for t at once from the handle of its key
 * takeable longest (t->handed: its session is t's already) while no one else waits, or
 * NULL (maybe one was given back to the pool instead). */
static PsPhys *
direct(gpointer data, gint64 *next_us, gpointer waiter)
{
  PsHandle *t = data;
  t->handed = FALSE;
  if (ps_pool_key_oldest_wait_us(t->pool, t->pk) > H_HAND_OVER_BOUND_US) {
    /* Someone waits in the pool's queue for long: a take goes to the oldest waiter, as
     * any take (hand-overs pass the queue, and a connect is served only from it). */
    ps_handle_take(t->pk, next_us, waiter);
    return NULL;
  }
  PsHandle *h = claim(t->pk, t, next_us);
  if (h)
    H.ops.claimed(t->pk, waiter);
  PsPhys *p = h ? take_for(h, t) : NULL;
  t->handed = p != NULL;
  return p;
}

/* ---- the owner's side ---- */

/* After a command's final reply: why the session may not be taken, or -1. */
static int
pin_reason(const MYSQL *m, const PsPhys *p, gboolean asked, gboolean h_sets_full)
{
  unsigned int e = m->net.last_errno;
  if (!m->net.pvio || m->net.compress || (e >= CR_MIN_ERROR && e <= CR_MAX_ERROR))
    return PS_PIN_OTHER;
  if (m->status != MYSQL_STATUS_READY || (m->server_status & SERVER_MORE_RESULTS_EXIST))
    return PS_PIN_RESULT;
  if ((m->server_status & SERVER_STATUS_IN_TRANS) || ps_watch_maybe_in_trans(p->watch))
    return PS_PIN_TRANSACTION;
  if (!(m->server_status & SERVER_STATUS_AUTOCOMMIT))
    return PS_PIN_AUTOCOMMIT;
  if (m->stmts)
    return PS_PIN_STATEMENT;
  if (h_sets_full)
    return PS_PIN_SESSION;
  if (m->warning_count && !asked)
    return PS_PIN_WARNINGS; /* until SHOW WARNINGS or the next command */
  if (ps_watch_pinned(p->watch))
    return PS_PIN_SESSION;
  return -1;
}

/* The handle's known session: a setup statement that succeeded replaces the one before it
 * that set the same variable (or the same text); too many pin the session. */
static void
record_set(PsHandle *h)
{
  char *sql = h->pending_set;
  h->pending_set = NULL;
  if (!h->sets)
    h->sets = g_ptr_array_new_with_free_func(g_free);
  for (guint i = 0; i < h->sets->len; i++) {
    const char *old = h->sets->pdata[i];
    guint var = 0;
    ps_watch_prelude_var(old, strlen(old), &var);
    if ((h->pending_var && var == h->pending_var) || g_ascii_strcasecmp(old, sql) == 0) {
      g_ptr_array_remove_index(h->sets, i);
      break;
    }
  }
  g_ptr_array_add(h->sets, sql);
}

/* The final reply of a command is in: takeable, or pinned with a reason. */
static void
settle(PsHandle *h)
{
  PsPhys *p = h->p;
  /* A handle inherited across fork holds the parent's session: never lent to another. */
  if (!p || p->state == PS_PHYS_DOOMED || p->state == PS_PHYS_ORPHANED ||
      h->generation != H.generation)
    return;
  int why = pin_reason(h->m, p, h->asked, h->sets && h->sets->len > H_MAX_SETS);
  if (why >= 0) {
    __atomic_fetch_add(&h->counts->pins[why], 1, __ATOMIC_RELAXED);
    if (p->state != PS_PHYS_PINNED)
      ps_phys_enter(p, PS_PHYS_PINNED, pin_names[why]);
    return;
  }
  /* Pinned by an earlier reply of this command (more results) and no longer. */
  if (p->state == PS_PHYS_PINNED)
    ps_phys_enter(p, PS_PHYS_LENT, "pin over");
  if (p->state != PS_PHYS_TAKEABLE && !ps_phys_enter(p, PS_PHYS_TAKEABLE, NULL))
    return;
  /* A waiter takes it once it has been takeable for its delay (claim). The clock is
   * read only while someone wants a connection of the key; else the first waiter that
   * sees the handle takeable starts its delay. */
  gboolean wanted = ps_pool_key_wanted(h->pk) != 0;
  h->settled_us = wanted ? g_get_monotonic_time() : 0;
  __atomic_store_n(&h->takeable_us, h->settled_us, __ATOMIC_RELAXED);
  __atomic_store_n(&h->state, H_TAKEABLE, __ATOMIC_SEQ_CST);
  /* The key's poller sleeps without a delay timer: it looks now (ps_pool_key_poke). */
  if (wanted)
    ps_pool_key_poke(h->pool, h->pk);
#ifdef PS_TEST_HOOKS
  /* POOLSHIM_TEST_FORCE_TAKE: taken at once, on the owner's thread. */
  gint expect = H_TAKEABLE;
  if (H.force_take && (guint)g_random_int_range(0, 100) < H.force_take &&
      __atomic_compare_exchange_n(&h->state, &expect, H_TAKING, FALSE, __ATOMIC_ACQUIRE,
                                  __ATOMIC_RELAXED))
    take(h);
#endif
}

/* The handle's connection was taken: borrow one and bring its session to the handle's
 * state, before the command. FALSE with m's error set. */
static gboolean
reattach(PsHandle *h)
{
  MYSQL *m = h->m;
  ps_conn_forget(m);
  if (h->lost) {
    ps_conn_set_error(m, CR_SERVER_GONE_ERROR, "HY000",
                      "MySQL server has gone away (poolshim: the session was lost while "
                      "its connection was idle)");
    return FALSE;
  }
  if (h->generation != H.generation) {
    /* Taken before fork(): its session was read then; the parent's pool and its
     * connections are the parent's. The child borrows from its own pool. */
    PsPool *pool = NULL;
    PsPoolKey *pk = H.ops.adopt(h->pk, &pool);
    ps_pool_key_release(h->pool, h->pk, FALSE);
    h->pool = pool;
    h->pk = pk;
    h->counts = ps_pool_key_grain_counts(pk);
    h->generation = H.generation;
  }
  for (int attempt = 0; attempt < 3; attempt++) {
    h->handed = FALSE;
    h->lid_prefix = FALSE;
    PsPhys *q = H.ops.reborrow(h->pk, m, direct, h);
    if (!q) {
      /* Opening one failed (not the pool's timeout, 1040): nothing of the command was sent
       * either: another try. */
      unsigned int e = m->net.last_errno;
      if (e >= CR_MIN_ERROR && e <= CR_MAX_ERROR && attempt < 2)
        continue;
      return FALSE; /* the last try's own error */
    }
    MYSQL *s = q->shell;
    gboolean ok = h->handed || ps_watch_settle(s, q->watch);
    if (ok && !h->handed) {
      /* The difference from a fresh session, in one write, its replies read: the database,
       * the setup statements, the user variables (each of which the server may refuse).
       * A fresh session's LAST_INSERT_ID() is 0. */
      guint n = h->sets ? h->sets->len : 0;
      const char **stmts = g_newa(const char *, n + 1);
      for (guint i = 0; i < n; i++)
        stmts[i] = h->sets->pdata[i];
      if (h->uservars)
        stmts[n++] = h->uservars;
      ps_watch_set_bypass(q->watch, TRUE);
      ok = ps_conn_run_pipeline(s, NULL, NULL, h->db, stmts, n);
      ps_watch_set_bypass(q->watch, FALSE);
      ps_watch_mark_full(q->watch); /* its return resets what the restore set */
      h->lid_prefix = h->lid != 0;
    }
    if (ok && h->lid_prefix) {
      /* LAST_INSERT_ID(), which the server cannot refuse: sent now, its reply read with the
       * command's (read_prefix). A connection lost here has sent nothing of the command. */
      char lid[64];
      g_snprintf(lid, sizeof lid, "DO LAST_INSERT_ID(%" G_GUINT64_FORMAT ")", h->lid);
      ps_watch_set_bypass(q->watch, TRUE);
      ok = ps_conn_send_query(s, lid);
      ps_watch_set_bypass(q->watch, FALSE);
      ps_watch_mark_full(q->watch);
    }
    if (!ok) {
      unsigned int e = s->net.last_errno;
      gboolean conn_error = e >= CR_MIN_ERROR && e <= CR_MAX_ERROR;
      if (!conn_error) /* the server refused the restore: the handle sees why */
        ps_conn_set_error(m, e, s->net.sqlstate, s->net.last_error);
      H.ops.discard(q, conn_error ? "lost while restoring a handle's session"
                                  : "a handle's session could not be restored");
      if (conn_error)
        continue; /* nothing of the command was sent: another connection */
      return FALSE;
    }
    ps_conn_copy_in(m, s);
    ps_phys_attach(q, m);
    h->p = q;
    h->prefix_unread = h->lid_prefix;
    __atomic_fetch_add(&h->counts->reborrows, 1, __ATOMIC_RELAXED);
    return TRUE;
  }
  ps_conn_set_error(m, CR_SERVER_LOST, "HY000",
                    "Lost connection to server (poolshim: three connections failed while "
                    "restoring the handle's session)");
  return FALSE;
}

/* Makes the handle busy for a command (or close): TRUE when it holds a connection. */
static gboolean
enter(PsHandle *h, gboolean reborrow)
{
  for (;;) {
    gint s = __atomic_load_n(&h->state, __ATOMIC_ACQUIRE);
    if (s == H_BUSY)
      return h->p != NULL;
    if (s == H_TAKEABLE) {
      if (__atomic_compare_exchange_n(&h->state, &s, H_BUSY, FALSE, __ATOMIC_ACQUIRE,
                                      __ATOMIC_RELAXED)) {
        if (h->p->state == PS_PHYS_TAKEABLE)
          ps_phys_enter(h->p, PS_PHYS_LENT, NULL);
        note_comeback(h);
        return TRUE;
      }
      continue;
    }
    if (s == H_TAKING) {
      g_usleep(50);
      continue;
    }
    /* TAKEN: the owner's alone again. */
    if (!reborrow) {
      ps_conn_forget(h->m);
      return FALSE;
    }
    if (!reattach(h))
      return FALSE; /* stays TAKEN: the next command tries again */
    __atomic_store_n(&h->state, H_BUSY, __ATOMIC_RELAXED);
    return TRUE;
  }
}

/* SHOW WARNINGS, SHOW ERRORS, SHOW COUNT(*) WARNINGS ... */
static gboolean
asks_warnings(const char *sql, size_t len)
{
  size_t i = 0;
  while (i < len && g_ascii_isspace(sql[i]))
    i++;
  if (len - i < 5 || g_ascii_strncasecmp(sql + i, "show", 4) != 0 ||
      !g_ascii_isspace(sql[i + 4]))
    return FALSE;
  i += 5;
  while (i < len && g_ascii_isspace(sql[i]))
    i++;
  return (len - i >= 8 && g_ascii_strncasecmp(sql + i, "warnings", 8) == 0) ||
         (len - i >= 6 && g_ascii_strncasecmp(sql + i, "errors", 6) == 0) ||
         (len - i >= 5 && g_ascii_strncasecmp(sql + i, "count", 5) == 0);
}

/* SELECT LAST_INSERT_ID() exactly (any case, spaces around): what a program often asks
 * right after its INSERT; its answer makes the take's own read needless. */
static gboolean
asks_lid(const char *sql, size_t len)
{
  static const char q[] = "select last_insert_id()";
  while (len > 0 && g_ascii_isspace(sql[len - 1]))
    len--;
  return len == sizeof q - 1 &&
         (memcmp(sql, "SELECT LAST_INSERT_ID()", len) == 0 || g_ascii_strncasecmp(sql, q, len) == 0);
}

/* Reads the reply of the re-borrow's DO LAST_INSERT_ID() (ahead of the command's on the
 * wire); what the handle shows of its last command stays. 0, or 1 with m's error (the
 * connection is lost: the command's reply cannot be read either). */
static int
read_prefix(PsHandle *h, MYSQL *m)
{
  h->prefix_unread = FALSE;
  my_ulonglong affected = m->affected_rows, id = m->insert_id;
  unsigned int status = m->server_status, warnings = m->warning_count;
  ps_watch_set_bypass(h->p->watch, TRUE);
  int rc = ps_watch_read_query_result(h->p->watch, m);
  ps_watch_set_bypass(h->p->watch, FALSE);
  unsigned int e = m->net.last_errno;
  if (rc && e >= CR_MIN_ERROR && e <= CR_MAX_ERROR)
    return 1;
  if (rc) /* not expected of DO with a literal (a KILL QUERY could): said, not hidden */
    ps_warn("a handle's LAST_INSERT_ID() was not restored (it shows another session's "
            "until its next INSERT): %u %s", e, m->net.last_error);
  m->affected_rows = affected;
  m->insert_id = id;
  m->server_status = status;
  m->warning_count = warnings;
  m->info = NULL; /* a command's send clears it (mthd_my_send_cmd), and it points into the
                     read buffer the prefix's reply overwrote */
  m->field_count = 0;
  m->net.last_errno = 0;
  m->net.last_error[0] = '\0';
  strcpy(m->net.sqlstate, "00000");
  return 0;
}

static int
grain_db_command(MYSQL *m, enum enum_server_command command, const char *arg, size_t length,
                 my_bool skip_check, void *opt_arg)
{
  PsHandle *h = handle_of(m);
  if (!enter(h, command != COM_QUIT))
    return command == COM_QUIT ? 0 : 1;
  PsPhys *p = h->p;
  if (p->state == PS_PHYS_PINNED)
    ps_phys_enter(p, PS_PHYS_LENT, NULL);
  /* Only a query whose reply the library reads through read_query_result follows the
   * re-borrow's prefix unread (mysql_real_query, mysql_send_query): anything else reads
   * its reply in its own way, the prefix's is read first. */
  if (G_UNLIKELY(h->prefix_unread) &&
      (command != COM_QUERY || !skip_check || !arg || ps_watch_unmatched(p->watch) ||
       /* LOAD DATA LOCAL: the library allows the file request only while the reply it
        * reads next is this statement's (auto_local_infile) */
       ((length ? length : strlen(arg)) >= 4 && g_ascii_strncasecmp(arg, "load", 4) == 0)) &&
      read_prefix(h, m))
    return 1;
  MARIADB_PVIO *sent_on = m->net.pvio;
  size_t n = command == COM_QUERY && arg ? (length ? length : strlen(arg)) : 0;
  /* Most statements start with neither SHOW nor SET: one byte decides. */
  gboolean s_word = n >= 4 && (arg[0] | 0x20) == 's';
  h->asked = s_word && (arg[1] | 0x20) == 'h' && asks_warnings(arg, n);
  h->asks_lid = s_word && h->lid_unknown && asks_lid(arg, n);
  if (G_UNLIKELY(h->pending_set)) {
    g_free(h->pending_set);
    h->pending_set = NULL;
  }
  if (s_word && ps_watch_prelude_var(arg, n, &h->pending_var))
    h->pending_set = g_strndup(arg, n);
  gboolean returning = FALSE;
  int rc = ps_watch_db_command(p->watch, m, command, arg, length, skip_check, opt_arg,
                               &returning);
  /* The send failed, or the library reconnected and sent it on a new socket (its struct
   * replaced, these hooks with it): no prefix reply will come on this one. */
  if (G_UNLIKELY(h->prefix_unread) && (rc || m->net.pvio != sent_on))
    h->prefix_unread = FALSE;
  if (returning)
    h->lid_unknown = TRUE; /* INSERT ... RETURNING: a result set, no insert id */
  if (command == COM_INIT_DB && rc == 0 && arg) {
    g_free(h->db);
    h->db = g_strndup(arg, length ? length : strlen(arg));
  }
  /* mysql_select_db and mysql_ping read their reply inside the command and no more from
   * the connection after it (the database they write next is not what a taker reads). */
  if (!skip_check && (command == COM_INIT_DB || command == COM_PING))
    settle(h);
  return rc;
}

static int
grain_read_query_result(MYSQL *m)
{
  PsHandle *h = handle_of(m);
  int rc = G_UNLIKELY(h->prefix_unread) && !ps_watch_bypassed(h->p->watch) ? read_prefix(h, m)
                                                                            : 0;
  if (!rc)
    rc = ps_watch_read_query_result(h->p->watch, m);
  /* The watch's own restore inside this command (catch_up) reads its replies through this
   * table: not the command's reply, the handle stays busy. */
  if (ps_watch_bypassed(h->p->watch))
    return rc;
  if (!rc && h->pending_set)
    record_set(h);
  if (!rc && m->field_count == 0 && m->insert_id)
    h->lid_unknown = TRUE;
  if (!rc && m->db && g_strcmp0(m->db, h->db) != 0) { /* USE, as the schema tracker said */
    g_free(h->db);
    h->db = g_strdup(m->db);
  }
  if (m->field_count == 0 || rc)
    settle(h);
  return rc;
}

static MYSQL_DATA *
grain_read_rows(MYSQL *m, MYSQL_FIELD *fields, unsigned int count)
{
  PsHandle *h = handle_of(m);
  MYSQL_DATA *data = h->read_rows(m, fields, count);
  /* Rows (not a result's column definitions: no fields given), all read; not those of
   * the watch's own restore. */
  if (fields && data && !ps_watch_bypassed(h->p->watch)) {
    if (h->asks_lid && count == 1 && data->rows == 1 && data->data && data->data->data &&
        data->data->data[0]) {
      h->lid = g_ascii_strtoull(data->data->data[0], NULL, 10);
      h->lid_unknown = FALSE;
    }
    h->asks_lid = FALSE;
    settle(h);
  }
  return data;
}

gboolean
ps_handle_attach(MYSQL *m, PsPhys *p, PsPool *pool, PsPoolKey *pk)
{
  if (!p->watch || m->methods != ps_watch_methods(p->watch))
    return FALSE;
  PsHandle *h = g_new0(PsHandle, 1);
  h->methods = *m->methods;
  h->lib = ps_watch_orig(p->watch);
  h->read_rows = h->methods.db_read_rows;
  h->methods.db_command = grain_db_command;
  h->methods.db_read_query_result = grain_read_query_result;
  h->methods.db_read_rows = grain_read_rows;
  h->m = m;
  h->p = p;
  h->pool = pool;
  h->pk = pk;
  h->counts = ps_pool_key_grain_counts(pk);
  h->generation = H.generation;
  /* A connection lent from the pool leaves m->db unset: the session is in the key's. */
  h->db = g_strdup(m->db ? m->db : p->profile ? p->profile->db : NULL);
  h->state = H_BUSY;
  m->methods = &h->methods;
  g_mutex_lock(&H.lock);
  g_ptr_array_add(H.all, h);
  g_mutex_unlock(&H.lock);
  return TRUE;
}

gboolean
ps_handle_closing(MYSQL *m)
{
  if (!H.all)
    return FALSE;
  PsHandle *h = NULL;
  g_mutex_lock(&H.lock);
  for (guint i = 0; i < H.all->len && !h; i++)
    if (((PsHandle *)H.all->pdata[i])->m == m)
      h = H.all->pdata[i];
  g_mutex_unlock(&H.lock);
  if (!h)
    return FALSE;
  /* Busy from here on: no taker claims it, one under way has finished. */
  gboolean attached = enter(h, FALSE);
  g_mutex_lock(&H.lock);
  g_ptr_array_remove_fast(H.all, h);
  g_mutex_unlock(&H.lock);
  if (attached) {
    /* A query sent and never read (its reply after the prefix's): the watch says so and
     * the connection is closed, not pooled; nothing is read from it here (in a forked
     * child the socket is the parent's too). */
    h->prefix_unread = FALSE;
    m->methods = ps_watch_methods(h->p->watch);
    if (h->p->state == PS_PHYS_PINNED || h->p->state == PS_PHYS_TAKEABLE)
      ps_phys_enter(h->p, PS_PHYS_LENT, "closing");
  } else {
    /* Its connection is another's now: the real close frees the handle, sends nothing. */
    ps_conn_forget(m);
    m->methods = h->lib;
  }
  ps_pool_key_release(h->pool, h->pk, FALSE);
  if (h->sets)
    g_ptr_array_free(h->sets, TRUE);
  g_free(h->pending_set);
  g_free(h->uservars);
  g_free(h->db);
  g_free(h);
  return TRUE;
}
