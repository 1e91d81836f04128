/* handle_take.c: POOLSHIM_GRAIN=transaction, the taker's side of a handle (handle.c has the
 * owner's, and the handshake both follow): finding the idle handle to take, moving its
 * session out and what it differs by, handing it straight to a re-borrowing handle. No lock
 * is held across I/O: the registry's lock only while a handle is claimed. */
#include "handle-state.h"

#include <errmsg.h>
#include <string.h>

#include "conn.h"
#include "log.h"

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
void
ps_handle_take_out(PsHandle *h)
{
  PsPhys *p = h->p;
  MYSQL *m = h->m;
  if (!p->shell && !(p->shell = ps_conn_shell_new(5))) {
    /* No struct to move it into: the owner keeps it. */
    ps_handle_end_taking(h, H_BUSY);
    return;
  }
  if (!ps_conn_copy_out(p->shell, m)) {
    ps_handle_end_taking(h, H_BUSY);
    return;
  }
  p->shell->methods = ps_watch_methods(p->watch);
  ps_phys_detach(m); /* RETURNING */
  /* Setup statements run ahead that the handle did not send: their replies are read
   * before any query (their effect goes with the full reset that follows). */
  gboolean ok = TRUE;
  if (h->lid_unknown || ps_watch_uservars_used(p->watch)) { /* the take reads */
    PsIoBound saved;
    ps_conn_io_bound(p->shell, ps_handles.ops.io_timeout_s(), &saved);
    if (ps_watch_unmatched(p->watch)) {
      ok = ps_watch_settle(p->shell, p->watch);
      ps_watch_mark_full(p->watch);
    }
    ok = ok && (!h->lid_unknown || read_lid(h, p->shell, p->watch)) &&
         (!ps_watch_uservars_used(p->watch) || read_uservars(h, p->shell, p->watch));
    ps_conn_io_unbound(p->shell, &saved);
  }
  h->lost = !ok;
  h->p = NULL;
  __atomic_fetch_add(&h->counts->takes, 1, __ATOMIC_RELAXED);
  ps_handle_end_taking(h, H_TAKEN);
  /* h is the owner's again: not touched from here on. */
  if (ok)
    ps_handles.ops.give_back(p);
  else
    ps_handles.ops.discard(p, "lost while being taken from an idle handle");
}


/* The owner came back before anyone took its connection: how soon (-1: not known), when
 * the clock was read for it (settle reads it only while someone wants a connection of the
 * key). */
gint64
ps_handle_note_comeback(PsHandle *h)
{
  gint64 since = h->settled_us;
  if (!since)
    return -1;
  gint64 gap = g_get_monotonic_time() - since;
  if (gap < 0)
    return -1;
  if (gap >= H_TAKE_DELAY_US)
    return gap;
  gint64 avg = __atomic_load_n(&h->comeback_us, __ATOMIC_RELAXED);
  __atomic_store_n(&h->comeback_us, avg ? (7 * avg + gap) / 8 + 1 : gap + 1, __ATOMIC_RELAXED);
  return gap;
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
  g_mutex_lock(&ps_handles.lock);
  /* A handle between two statements of one task comes back within microseconds, one that
   * thinks does not. */
  for (guint i = 0; ps_handles.all && i < ps_handles.all->len; i++) {
    PsHandle *h = ps_handles.all->pdata[i];
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
    /* the one whose delay ends first; none for a task's last statement (settle) */
    gint64 at = since + (__atomic_load_n(&h->at_once, __ATOMIC_RELAXED) ? 0 : take_delay_us(h));
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
  g_mutex_unlock(&ps_handles.lock);
  return found;
}

gboolean
ps_handle_any_takeable(PsPoolKey *pk)
{
  gboolean any = FALSE;
  g_mutex_lock(&ps_handles.lock);
  for (guint i = 0; !any && ps_handles.all && i < ps_handles.all->len; i++) {
    PsHandle *h = ps_handles.all->pdata[i];
    any = h->pk == pk && __atomic_load_n(&h->state, __ATOMIC_SEQ_CST) == H_TAKEABLE;
  }
  g_mutex_unlock(&ps_handles.lock);
  return any;
}

#ifdef PS_TEST_HOOKS
/* POOLSHIM_TEST_TAKE_PAUSE_MS: the process's first take stays in TAKING, once it has
 * claimed the handle, for that long or until the test removes POOLSHIM_TEST_TAKE_PAUSE_FILE,
 * which it makes then (and removes when the time is up): a test acts meanwhile. */
static void
test_pause(void)
{
  guint ms = __atomic_exchange_n(&ps_handles.take_pause_ms, 0, __ATOMIC_RELAXED);
  if (ms)
    ps_handle_test_pause(ps_handles.take_pause_file, ms);
}
#else
#define test_pause() ((void)0)
#endif

gboolean
ps_handle_take(PsPoolKey *pk, gint64 *next_us, gpointer waiter)
{
  PsHandle *found = claim(pk, NULL, next_us);
  if (!found)
    return FALSE;
  ps_handles.ops.claimed(pk, waiter);
  test_pause();
  ps_handle_take_out(found);
  return TRUE;
}

/* Each setup statement's variable (its PsVar bit; 0 for a character set statement), read
 * once per list: the comparisons below look each one up many times. */
static guint *
vars_of(const GPtrArray *sets, guint *vars)
{
  for (guint i = 0; sets && i < sets->len; i++)
    ps_watch_prelude_var(sets->pdata[i], strlen(sets->pdata[i]), &vars[i]);
  return vars;
}

/* The character set statements of a setup list (no PsVar), in their order: each may
 * override another, so two lists agree only on the same ones in the same order. */
static gboolean
same_charsets(const GPtrArray *a, const guint *av, const GPtrArray *b, const guint *bv)
{
  guint i = 0, j = 0, na = a ? a->len : 0, nb = b ? b->len : 0;
  for (;;) {
    while (i < na && av[i])
      i++;
    while (j < nb && bv[j])
      j++;
    if (i == na || j == nb)
      return i == na && j == nb;
    if (strcmp(a->pdata[i++], b->pdata[j++]) != 0)
      return FALSE;
  }
}

static const char *
set_of_var(const GPtrArray *sets, const guint *vars, guint var)
{
  for (guint i = 0; sets && i < sets->len; i++)
    if (vars[i] == var)
      return sets->pdata[i];
  return NULL;
}

/* What turns h's session into t's, both a fresh session plus their setup statements (one
 * per variable, record_set), when h's connection is handed to t as it is: t's statements
 * that h did not run, into send (pointers into t->sets), and each variable h set that t
 * did not, back to its fresh value, the global one, in one SET into *defaults (NULL:
 * none). FALSE when they differ by more: by a character set statement (those override
 * each other: only the same ones in the same order), or by a variable whose fresh value
 * may not be the global one (an init command or the server's init_connect set it). The
 * order of Django's setup statements differs from handle to handle: not a difference. */
static gboolean
sets_delta(const GPtrArray *hs, const GPtrArray *ts, const PsConnProfile *profile,
           GPtrArray *send, char **defaults)
{
  *defaults = NULL;
  guint nh = hs ? hs->len : 0, nt = ts ? ts->len : 0;
  /* A takeable handle has at most H_MAX_SETS (more pin it), and so had a re-borrowing one
   * when it was taken: the reset otherwise. */
  if (nh > H_MAX_SETS || nt > H_MAX_SETS)
    return FALSE;
  guint hbuf[H_MAX_SETS], tbuf[H_MAX_SETS];
  const guint *hv = vars_of(hs, hbuf), *tv = vars_of(ts, tbuf);
  if (!same_charsets(hs, hv, ts, tv))
    return FALSE;
  for (guint i = 0; i < nt; i++) {
    const char *mine = tv[i] ? set_of_var(hs, hv, tv[i]) : NULL;
    if (tv[i] && (!mine || strcmp(mine, ts->pdata[i]) != 0))
      g_ptr_array_add(send, ts->pdata[i]);
  }
  guint unset = 0;
  for (guint i = 0; i < nh; i++)
    if (hv[i] && !set_of_var(ts, tv, hv[i]))
      unset |= hv[i];
  if (!unset)
    return TRUE;
  if ((profile->init_commands && profile->init_commands[0]) || profile->init_connect)
    return FALSE;
  GString *sql = g_string_new("SET SESSION ");
  for (guint v = 1; v && v < (1u << PS_VAR_COUNT); v <<= 1) {
    if (!(unset & v))
      continue;
    const char *d = ps_conn_var_default(v);
    if (!d) { /* no way back to its fresh value: the reset */
      g_string_free(sql, TRUE);
      return FALSE;
    }
    if (sql->len > 12)
      g_string_append(sql, ", ");
    g_string_append(sql, d);
  }
  *defaults = g_string_free(sql, FALSE);
  return TRUE;
}

/* Holding TAKING on h: hands its connection to t's re-borrow as it is, without a reset,
 * when the two sessions differ at most by the database, LAST_INSERT_ID() and session
 * variables of their setups (sets_delta; no user variables, no warnings left, no setup
 * statement run ahead for h that h did not send): those are set in one write (h's
 * LAST_INSERT_ID(), when unknown, read and t's set in one statement; else t's goes ahead
 * of t's command, with it). CLAIMED, in its shell; NULL when the sessions differ by more
 * (then given back to the pool like any take) or it failed. */
static PsPhys *
take_for(PsHandle *h, PsHandle *t)
{
  PsPhys *p = h->p;
  MYSQL *m = h->m;
  GPtrArray *send = g_ptr_array_sized_new(4);
  char *defaults = NULL;
  if (h->uservars || t->uservars || ps_watch_uservars_used(p->watch) ||
      ps_watch_unmatched(p->watch) || m->warning_count || (h->db && !t->db) ||
      !sets_delta(h->sets, t->sets, p->profile, send, &defaults)) {
    g_ptr_array_free(send, TRUE);
    ps_handle_take_out(h);
    return NULL;
  }
  if (defaults)
    g_ptr_array_add(send, defaults);
  if ((!p->shell && !(p->shell = ps_conn_shell_new(5))) || !ps_conn_copy_out(p->shell, m)) {
    g_ptr_array_free(send, TRUE);
    g_free(defaults);
    ps_handle_end_taking(h, H_BUSY);
    return NULL;
  }
  MYSQL *s = p->shell;
  s->methods = ps_watch_methods(p->watch);
  ps_phys_detach(m); /* RETURNING */
  char *value = NULL;
  /* h's LAST_INSERT_ID(), when unknown, is read and t's set in one statement: the server
   * evaluates a select list from left to right (tested: the read sees h's value). */
  gboolean swap = h->lid_unknown;
  char lid[80];
  g_snprintf(lid, sizeof lid, "SELECT LAST_INSERT_ID(), LAST_INSERT_ID(%" G_GUINT64_FORMAT ")",
             t->lid);
  ps_watch_set_bypass(p->watch, TRUE);
  const char *db = g_strcmp0(h->db, t->db) != 0 ? t->db : NULL;
  PsIoBound saved; /* round trips to bound when the restore sends anything */
  ps_conn_io_bound(s, swap || db || send->len ? ps_handles.ops.io_timeout_s() : 0, &saved);
  /* Closed by the server while idle in h (KILL, restart, wait_timeout): not t's to fail
   * on; one poll, since t's command may be the first thing written to it. */
  gboolean ok = !ps_conn_idle_closed(s, FALSE) &&
                ps_conn_run_pipeline(s, swap ? lid : NULL, &value, db,
                                     (const char *const *)send->pdata, send->len);
  ps_conn_io_unbound(s, &saved);
  g_ptr_array_free(send, TRUE);
  g_free(defaults);
  ps_watch_set_bypass(p->watch, FALSE);
  ps_watch_mark_full(p->watch); /* its return resets what both handles did */
  if (value) {
    h->lid = g_ascii_strtoull(value, NULL, 10);
    h->lid_unknown = FALSE;
    g_free(value);
  }
  h->lost = h->lid_unknown;
  /* The session holds t's LAST_INSERT_ID() when it was swapped in, else h's: then t's
   * goes ahead of t's command. */
  t->lid_prefix = !swap && h->lid != t->lid;
  h->p = NULL;
  __atomic_fetch_add(&h->counts->takes, 1, __ATOMIC_RELAXED);
  ps_handle_end_taking(h, H_TAKEN);
  /* h is the owner's again: not touched from here on. */
  if (!ok) {
    ps_handles.ops.discard(p, "lost while being handed from an idle handle to another");
    return NULL;
  }
  ps_phys_enter(p, PS_PHYS_CLAIMED, "handed from an idle handle to another");
  return p;
}

/* PsHandleOps.reborrow's `direct`: a connection for t at once from the handle of its key
 * takeable longest (t->handed: its session is t's already) while no one else waits, or
 * NULL (maybe one was given back to the pool instead). */
PsPhys *
ps_handle_direct(gpointer data, gint64 arrived_us, gint64 *next_us, gpointer waiter)
{
  PsHandle *t = data;
  t->handed = FALSE;
  if (ps_pool_key_oldest_wait_us(t->pool, t->pk, arrived_us) > H_HAND_OVER_BOUND_US) {
    /* Someone who arrived before t waits in the pool's queue for long: a take goes to
     * the oldest waiter, as any take (hand-overs pass the queue, and a connect is served
     * only from it). When t arrived first (the key's poller is its oldest re-borrow), t
     * is that waiter: handed the connection as it is, not reset in the pool and restored
     * (a take given back to the pool goes to the oldest waiter still queued, younger
     * than t). */
    ps_handle_take(t->pk, next_us, waiter);
    return NULL;
  }
  PsHandle *h = claim(t->pk, t, next_us);
  if (h) {
    ps_handles.ops.claimed(t->pk, waiter);
    test_pause();
  }
  PsPhys *p = h ? take_for(h, t) : NULL;
  t->handed = p != NULL;
  return p;
}
