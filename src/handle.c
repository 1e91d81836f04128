/* handle.c: POOLSHIM_GRAIN=transaction, the per-handle record (handle.h): its owner's side
 * (attach, settle, re-borrow, the command hooks, close); the taker's side is handle_take.c.
 *
 * A record's state (atomic) is the handshake between its owner (the thread that calls the
 * library with the handle) and a taker:
 *   BUSY -> TAKEABLE        owner: after a command's final reply, nothing pins the session
 *   TAKEABLE -> BUSY        owner: at its next command or close (compare-and-swap)
 *   TAKEABLE -> TAKING      taker: compare-and-swap under the registry's lock
 *   TAKING -> TAKEN         taker: the session moved out, what it differs by recorded
 *   TAKING -> BUSY          taker: it could not be moved out (the owner keeps it)
 *   TAKING -> TAKEN, lost   fork(), in the child: a take the parent's thread had under way
 *   TAKEN -> BUSY           owner: at its next command, after borrowing and restoring
 * The owner waits out TAKING asleep (wait_out_taking). A taker does no I/O in it but one
 * query on the taken connection when the handle's LAST_INSERT_ID() or user variables may
 * have changed since they were last known (what the watch cannot name), and, handing the
 * connection straight to a re-borrowing handle (take_for), the one write that sets the
 * other's database and LAST_INSERT_ID(). A taker is a connect or re-borrow that found no
 * connection (or the owner, POOLSHIM_TEST_FORCE_TAKE). Only the owner writes the handle's
 * struct; a taker reads it while it holds TAKING. Lock order: the registry's lock is a
 * leaf (no other lock is taken under it, no I/O is done), and so is the lock owners sleep
 * with (park_lock), but for fork(), whose handler takes it under the registry's. Each
 * round trip a take or a re-borrow's restore makes waits at most POOLSHIM_RESET_TIMEOUT
 * (ps_conn_io_bound), whatever socket timeouts the application left. */
#include "handle-state.h"

#include <errmsg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "conn.h"
#include "gil.h"
#include "log.h"

PsHandleRegistry ps_handles;

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
  ps_handles.ops = *ops;
  g_mutex_lock(&ps_handles.lock);
  if (!ps_handles.all)
    ps_handles.all = g_ptr_array_new();
  g_mutex_unlock(&ps_handles.lock);
#ifdef PS_TEST_HOOKS
  const char *force = g_getenv("POOLSHIM_TEST_FORCE_TAKE");
  guint64 pct = 0;
  if (force && (!ps_config_parse_uint(force, &pct) || pct > 100)) {
    ps_warn("POOLSHIM_TEST_FORCE_TAKE=\"%.20s\" is not valid (expected 0 to 100); using 0",
            force);
    pct = 0;
  }
  ps_handles.force_take = (guint)pct;
  const char *pause = g_getenv("POOLSHIM_TEST_TAKE_PAUSE_MS");
  if (pause && (!ps_config_parse_uint(pause, &pct) || pct > 60000)) {
    ps_warn("POOLSHIM_TEST_TAKE_PAUSE_MS=\"%.20s\" is not valid (expected 0 to 60000); "
            "using 0", pause);
    pct = 0;
  }
  ps_handles.take_pause_ms = pause ? (guint)pct : 0;
  g_free(ps_handles.take_pause_file);
  ps_handles.take_pause_file = g_strdup(g_getenv("POOLSHIM_TEST_TAKE_PAUSE_FILE"));
#endif
}

static inline PsHandle *
handle_of(MYSQL *m)
{
  return (PsHandle *)((char *)m->methods - offsetof(PsHandle, methods));
}

#ifdef PS_TEST_HOOKS
void
ps_handle_test_pause(const char *file, guint ms)
{
  if (!file) {
    g_usleep((gulong)ms * 1000);
    return;
  }
  if (!g_file_set_contents(file, "", 0, NULL))
    return;
  gint64 until = g_get_monotonic_time() + (gint64)ms * 1000;
  while (g_get_monotonic_time() < until && g_file_test(file, G_FILE_TEST_EXISTS))
    g_usleep(5 * 1000);
  unlink(file);
}
#endif

void
ps_handle_lock_for_fork(void)
{
  g_mutex_lock(&ps_handles.lock);
  g_mutex_lock(&ps_handles.park_lock);
}

void
ps_handle_unlock_after_fork(gboolean child)
{
  if (child) {
    ps_handles.generation++;
    ps_handles.sleepers = 0; /* the parent's other threads */
    /* A take under way in another of the parent's threads: that thread is not in the
     * child, which would wait for it for good. The handle's session was being moved out
     * of the parent's connection, and what it held is not known here: the child's next
     * command on it fails as lost (2006), as with a connection whose server went away. */
    for (guint i = 0; ps_handles.all && i < ps_handles.all->len; i++) {
      PsHandle *h = ps_handles.all->pdata[i];
      if (h->state != H_TAKING)
        continue;
      /* The take may have been writing the connection's struct (ps_conn_copy_out): in the
       * child it is left as it is, never freed (the child closes the connection without
       * a word: ps_phys_close, orphaned). */
      if (h->p)
        h->p->shell = NULL;
      h->p = NULL;
      h->lost = TRUE;
      h->state = H_TAKEN;
    }
  }
  g_mutex_unlock(&ps_handles.park_lock);
  g_mutex_unlock(&ps_handles.lock);
}

/* The owner finds its handle TAKING: sleeps until the taker ends it (ps_handle_end_taking)
 * or for 100 ms, then looks again. The test library has no bound: a wake-up missed hangs
 * a test instead of hiding behind it. */
static void
wait_out_taking(PsHandle *h)
{
  gint64 until = g_get_monotonic_time() + 100 * G_TIME_SPAN_MILLISECOND;
  g_mutex_lock(&ps_handles.park_lock);
  __atomic_add_fetch(&ps_handles.sleepers, 1, __ATOMIC_SEQ_CST);
  while (__atomic_load_n(&h->state, __ATOMIC_SEQ_CST) == H_TAKING) {
#ifdef PS_TEST_HOOKS
    (void)until;
    g_cond_wait(&ps_handles.park, &ps_handles.park_lock);
#else
    if (!g_cond_wait_until(&ps_handles.park, &ps_handles.park_lock, until))
      break;
#endif
  }
  __atomic_sub_fetch(&ps_handles.sleepers, 1, __ATOMIC_SEQ_CST);
  g_mutex_unlock(&ps_handles.park_lock);
}

void
ps_handle_end_taking(PsHandle *h, gint state)
{
  /* Sequentially consistent with wait_out_taking's count and look: either the owner sees
   * the new state, or this sees it counted and wakes it under the lock it sleeps with. */
  __atomic_store_n(&h->state, state, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&ps_handles.sleepers, __ATOMIC_SEQ_CST)) {
    g_mutex_lock(&ps_handles.park_lock);
    g_cond_broadcast(&ps_handles.park);
    g_mutex_unlock(&ps_handles.park_lock);
  }
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

/* A command's signature: its kind and text with the digits left out (a task's statements
 * differ from run to run by their numbers), at most 128 bytes of it. Never 0. */
static guint32
command_sig(enum enum_server_command command, const char *arg, size_t n)
{
  guint32 hash = 2166136261u ^ (guint32)command;
  for (size_t i = 0; i < MIN(n, (size_t)128); i++)
    if (!g_ascii_isdigit(arg[i]))
      hash = (hash ^ (guchar)arg[i]) * 16777619u;
  return hash | 1;
}

static guint
streak_of(const PsHandle *h, guint32 sig)
{
  for (guint i = 0; i < H_SIGS; i++)
    if (h->sigs[i] == sig)
      return h->streak[i];
  return 0;
}

/* What followed the command that made the handle takeable: another command within
 * H_TAKE_DELAY_US (quick), or not. Only commands that ended a stretch are kept (the one
 * with the shortest streak makes room): a quick one is forgotten. */
static void
note_follow(PsHandle *h, gboolean quick)
{
  guint32 sig = h->settle_sig;
  if (!sig)
    return;
  guint room = 0;
  for (guint i = 0; i < H_SIGS; i++) {
    if (h->sigs[i] == sig) {
      h->streak[i] = quick ? 0 : (guint8)MIN(h->streak[i] + 1, 255);
      return;
    }
    if (h->streak[i] < h->streak[room])
      room = i;
  }
  if (!quick) {
    h->sigs[room] = sig;
    h->streak[room] = 1;
  }
}

/* The final reply of a command is in: takeable, or pinned with a reason. */
static void
settle(PsHandle *h)
{
  PsPhys *p = h->p;
  /* A handle inherited across fork holds the parent's session: never lent to another. */
  if (!p || p->state == PS_PHYS_DOOMED || p->state == PS_PHYS_ORPHANED ||
      h->generation != ps_handles.generation)
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
  h->settle_sig = wanted ? h->cmd_sig : 0;
  /* A task's last statement (the program thinks after it, as the last times): no delay. */
  __atomic_store_n(&h->at_once, h->settle_sig && streak_of(h, h->settle_sig) >= H_SLOW_STREAK,
                   __ATOMIC_RELAXED);
  __atomic_store_n(&h->takeable_us, h->settled_us, __ATOMIC_RELAXED);
  __atomic_store_n(&h->state, H_TAKEABLE, __ATOMIC_SEQ_CST);
  /* The key's poller sleeps without a delay timer: it looks now (ps_pool_key_poke). */
  if (wanted)
    ps_pool_key_poke(h->pool, h->pk);
#ifdef PS_TEST_HOOKS
  /* POOLSHIM_TEST_FORCE_TAKE: taken at once, on the owner's thread. */
  gint expect = H_TAKEABLE;
  if (ps_handles.force_take && (guint)g_random_int_range(0, 100) < ps_handles.force_take &&
      __atomic_compare_exchange_n(&h->state, &expect, H_TAKING, FALSE, __ATOMIC_ACQUIRE,
                                  __ATOMIC_RELAXED))
    ps_handle_take_out(h);
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
  if (h->generation != ps_handles.generation) {
    /* Taken before fork(): its session was read then; the parent's pool and its
     * connections are the parent's. The child borrows from its own pool. */
    PsPool *pool = NULL;
    PsPoolKey *pk = ps_handles.ops.adopt(h->pk, &pool);
    ps_pool_key_release(h->pool, h->pk, FALSE);
    h->pool = pool;
    h->pk = pk;
    h->counts = ps_pool_key_grain_counts(pk);
    h->generation = ps_handles.generation;
  }
  for (int attempt = 0; attempt < 3; attempt++) {
    h->handed = FALSE;
    h->lid_prefix = FALSE;
    PsPhys *q = ps_handles.ops.reborrow(h->pk, m, ps_handle_direct, h);
    if (!q) {
      /* Opening one failed (not the pool's timeout, 1040): nothing of the command was sent
       * either: another try. */
      unsigned int e = m->net.last_errno;
      if (e >= CR_MIN_ERROR && e <= CR_MAX_ERROR && attempt < 2)
        continue;
      return FALSE; /* the last try's own error */
    }
    MYSQL *s = q->shell;
    /* The restore's round trips are the pool's: bounded like a take's, whatever timeouts
     * the connection's last borrower left on its socket (a return with nothing to reset
     * leaves them). */
    PsIoBound saved; /* a restore, or DO LAST_INSERT_ID: round trips to bound */
    ps_conn_io_bound(s, !h->handed || h->lid_prefix ? ps_handles.ops.io_timeout_s() : 0,
                     &saved);
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
    ps_conn_io_unbound(s, &saved);
    if (!ok) {
      unsigned int e = s->net.last_errno;
      gboolean conn_error = e >= CR_MIN_ERROR && e <= CR_MAX_ERROR;
      if (!conn_error) /* the server refused the restore: the handle sees why */
        ps_conn_set_error(m, e, s->net.sqlstate, s->net.last_error);
      ps_handles.ops.discard(q, conn_error ? "lost while restoring a handle's session"
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
        gint64 gap = ps_handle_note_comeback(h);
        if (gap >= 0)
          note_follow(h, gap < H_TAKE_DELAY_US);
        return TRUE;
      }
      continue;
    }
    if (s == H_TAKING) {
      ps_gil_release();
      wait_out_taking(h);
      continue;
    }
    /* TAKEN: the owner's alone again. */
    if (h->settled_us)
      note_follow(h, g_get_monotonic_time() - h->settled_us < H_TAKE_DELAY_US);
    h->settled_us = 0;
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
  /* What follows a command matters only while someone waits for a connection. */
  h->cmd_sig = ps_pool_key_wanted(h->pk) ? command_sig(command, arg, n) : 0;
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

/* The re-borrow's DO LAST_INSERT_ID() is answered by an OK packet of 11 bytes, which the
 * server sends as soon as it has run it, and the command's reply follows: a thread that
 * waits for the first wakes up for the OK alone and goes back to sleep for the rest. With
 * both sent, at least one byte of the command's reply arrives after the OK, so a wait for
 * PREFIX_LOWAT bytes wakes once for both (a longer reply, an ERR or the server closing
 * the connection ends it too). */
#define PREFIX_LOWAT 12

static int
grain_read_query_result(MYSQL *m)
{
  PsHandle *h = handle_of(m);
  int rc = 0;
  if (G_UNLIKELY(h->prefix_unread) && !ps_watch_bypassed(h->p->watch)) {
    gboolean low = ps_conn_set_rcvlowat(m, PREFIX_LOWAT);
    rc = read_prefix(h, m);
    if (low)
      ps_conn_set_rcvlowat(m, 1);
  }
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
  h->generation = ps_handles.generation;
  /* A connection lent from the pool leaves m->db unset: the session is in the key's. */
  h->db = g_strdup(m->db ? m->db : p->profile ? p->profile->db : NULL);
  h->state = H_BUSY;
  m->methods = &h->methods;
  g_mutex_lock(&ps_handles.lock);
  g_ptr_array_add(ps_handles.all, h);
  g_mutex_unlock(&ps_handles.lock);
  return TRUE;
}

gboolean
ps_handle_closing(MYSQL *m)
{
  if (!ps_handles.all)
    return FALSE;
  PsHandle *h = NULL;
  g_mutex_lock(&ps_handles.lock);
  for (guint i = 0; i < ps_handles.all->len && !h; i++)
    if (((PsHandle *)ps_handles.all->pdata[i])->m == m)
      h = ps_handles.all->pdata[i];
  g_mutex_unlock(&ps_handles.lock);
  if (!h)
    return FALSE;
  /* Busy from here on: no taker claims it, one under way has finished. */
  gboolean attached = enter(h, FALSE);
  g_mutex_lock(&ps_handles.lock);
  g_ptr_array_remove_fast(ps_handles.all, h);
  g_mutex_unlock(&ps_handles.lock);
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
