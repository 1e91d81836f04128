/* test_phys.c: one connection's life (src/phys.c) without a server: the transition table
 * as state x move, refusals, the counts per state, the handle table and the one close
 * sequence. Connections are fake: the client-library operations are recorded, handles are
 * distinct pointers phys.c never reads, and the pool is the real plain data structure. */
#include <criterion/criterion.h>
#include <glib.h>
#include <string.h>

#include "phys.h"

/* ---- fake client-library operations ------------------------------------------------ */

typedef struct {
  guint close, close_and_wait, keep_socket, wait, abandon, close_handle, watch_free;
  GString *trace; /* "close(shell) abandon(handle) ..." in call order */
} Calls;

static Calls calls;
static char handles[16][1]; /* distinct addresses standing for MYSQL structs */
static char shells[16][1];
static guint criticals;

#define H(i) ((MYSQL *)(void *)handles[i])
#define SH(i) ((MYSQL *)(void *)shells[i])

static const char *
name_of(MYSQL *m)
{
  for (guint i = 0; i < G_N_ELEMENTS(handles); i++) {
    if (m == H(i))
      return "handle";
    if (m == SH(i))
      return "shell";
  }
  return "?";
}

static void
fake_close(MYSQL *m)
{
  calls.close++;
  g_string_append_printf(calls.trace, "close(%s) ", name_of(m));
}

static void
fake_close_and_wait(MYSQL *m, int timeout_ms)
{
  calls.close_and_wait++;
  g_string_append_printf(calls.trace, "close_and_wait(%s) ", name_of(m));
}

static int
fake_close_keep_socket(MYSQL *m)
{
  calls.keep_socket++;
  g_string_append_printf(calls.trace, "close_keep_socket(%s) ", name_of(m));
  return -1;
}

static void
fake_wait(const int *fds, guint n, gint64 deadline_us)
{
  calls.wait++;
  g_string_append_printf(calls.trace, "wait(%u) ", n);
}

static void
fake_abandon(MYSQL *m)
{
  calls.abandon++;
  g_string_append_printf(calls.trace, "abandon(%s) ", name_of(m));
}

static void
fake_close_handle(MYSQL *m)
{
  calls.close_handle++;
  g_string_append_printf(calls.trace, "close_handle(%s) ", name_of(m));
}

static void
fake_watch_free(PsWatch *w)
{
  calls.watch_free++;
}

static const PsPhysOps fake_ops = {
    .close = fake_close,
    .close_and_wait = fake_close_and_wait,
    .close_keep_socket = fake_close_keep_socket,
    .wait_sockets_closed = fake_wait,
    .abandon = fake_abandon,
    .close_handle = fake_close_handle,
    .watch_free = fake_watch_free,
};

static void
count_critical(const gchar *domain, GLogLevelFlags level, const gchar *message, gpointer data)
{
  criticals++;
}

static void
setup(void)
{
  memset(&calls, 0, sizeof calls);
  calls.trace = g_string_new(NULL);
  criticals = 0;
  g_log_set_handler("poolshim", G_LOG_LEVEL_CRITICAL, count_critical, NULL);
  ps_phys_setup(&fake_ops, 100);
}

static void
teardown(void)
{
  g_string_free(calls.trace, TRUE);
}

TestSuite(phys, .init = setup, .fini = teardown, .timeout = 30);

/* ---- the table, written out as the design says (phys.h) --------------------------- */

enum { O, I, S, C, L, T, P, D, R, F, X, N };
G_STATIC_ASSERT((int)N == (int)PS_PHYS_STATES && (int)O == (int)PS_PHYS_OPENING &&
                (int)X == (int)PS_PHYS_CLOSED);

/* Each state's allowed next states, as letters (O I S C L T P D R F X). */
static const char *const expected_moves[N] = {
    [O] = "ILX",   [I] = "CFX", [S] = "CFX", [C] = "LIX", [L] = "TPDRFX", [T] = "LPDRFX",
    [P] = "LDRFX", [D] = "DFX", [R] = "ISCX", [F] = "X",   [X] = "",
};
static const char letters[] = "OISCLTPDRFX";

static gboolean
expected(int from, int to)
{
  return strchr(expected_moves[from], letters[to]) != NULL;
}

/* A connection brought to `state` the way the broker brings it there, attached to H(0)
 * for the attached states, with a shell S(0) once it has been returned. */
static PsPhys *
phys_in(int state)
{
  PsPhys *p = ps_phys_new(NULL, NULL, -1, NULL);
  switch (state) {
  case O:
    break;
  case I:
    cr_assert(ps_phys_enter(p, PS_PHYS_IDLE, "filled"));
    break;
  case C:
    cr_assert(ps_phys_enter(p, PS_PHYS_IDLE, "filled"));
    cr_assert(ps_phys_enter(p, PS_PHYS_CLAIMED, "granted"));
    break;
  case S:
  case R:
    cr_assert(ps_phys_attach(p, H(0)));
    cr_assert_eq(ps_phys_detach(H(0)), p);
    cr_assert_eq(p->state, PS_PHYS_RETURNING);
    p->shell = SH(0);
    if (state == S) {
      p->pending = 2;
      cr_assert(ps_phys_enter(p, PS_PHYS_RESET_SENT, "reset sent"));
    }
    break;
  case L:
  case T:
  case P:
  case D:
  case F:
    cr_assert(ps_phys_attach(p, H(0)));
    if (state == T || state == P)
      cr_assert(ps_phys_enter(p, (PsPhysState)state, "reserved"));
    if (state == D)
      ps_phys_doom(H(0), "change_user");
    if (state == F)
      ps_phys_orphan_attached();
    break;
  default:
    cr_assert_fail("no path to %d", state);
  }
  cr_assert_eq(p->state, (PsPhysState)state, "reached %s, wanted %s", ps_phys_state_name(p->state),
               ps_phys_state_name((PsPhysState)state));
  return p;
}

/* Out of the handle table and closed, whatever its state. */
static void
finish(PsPhys *p)
{
  if (p->handle)
    cr_assert_eq(ps_phys_detach(p->handle), p);
  if (p->state == PS_PHYS_CLOSED) { /* entered by hand, not through ps_phys_close */
    g_free(p);
    return;
  }
  ps_phys_close(p, NULL, PS_CLOSE_SHUTDOWN, "test over");
}

Test(phys, every_move_the_table_allows_is_made_and_every_other_is_refused)
{
  guint refusals = 0;
  for (int from = 0; from < X; from++) {
    for (int to = 0; to < N; to++) {
      PsPhys *p = phys_in(from);
      guint before = ps_phys_count((PsPhysState)from);
      gboolean made = ps_phys_enter(p, (PsPhysState)to, "test");
      cr_assert_eq(made, expected(from, to), "%s -> %s: %s, the design says %s",
                   ps_phys_state_name((PsPhysState)from), ps_phys_state_name((PsPhysState)to),
                   made ? "made" : "refused", expected(from, to) ? "allowed" : "not allowed");
      cr_assert_eq(ps_phys_allowed((PsPhysState)from, (PsPhysState)to), made);
      cr_assert_eq(p->state, made ? (PsPhysState)to : (PsPhysState)from);
      if (made && from != to)
        cr_assert_eq(ps_phys_count((PsPhysState)from), before - 1);
      if (!made)
        refusals++;
      finish(p);
    }
  }
  /* A closed connection goes nowhere (a stack copy: the real ones are freed at close). */
  for (int to = 0; to < N; to++) {
    PsPhys closed = {.state = PS_PHYS_CLOSED};
    cr_assert_not(ps_phys_enter(&closed, (PsPhysState)to, "test"));
    cr_assert_eq(closed.state, PS_PHYS_CLOSED);
    refusals++;
  }
  cr_assert_eq(ps_phys_refused(), refusals);
  cr_assert_eq(criticals, refusals, "each refusal is a critical in test builds");
}

Test(phys, a_refused_move_changes_neither_the_state_nor_the_counts)
{
  PsPhys *p = phys_in(I);
  cr_assert_eq(ps_phys_count(PS_PHYS_IDLE), 1);
  /* Lent straight from the idle queue, without the checks of a claim: a bug. */
  cr_assert_not(ps_phys_attach(p, H(1)));
  cr_assert_eq(p->state, PS_PHYS_IDLE);
  cr_assert_null(p->handle);
  cr_assert_eq(ps_phys_attached(), 0, "a refused attach is not in the handle table");
  cr_assert_eq(ps_phys_count(PS_PHYS_IDLE), 1);
  cr_assert_eq(ps_phys_count(PS_PHYS_LENT), 0);
  cr_assert_eq(ps_phys_refused(), 1);
  cr_assert_eq(criticals, 1);
  ps_phys_close(p, NULL, PS_CLOSE_IDLE_TIMEOUT, NULL);
  /* Closing twice is refused too, and frees nothing twice (p is gone: a stack copy). */
  PsPhys closed = {.state = PS_PHYS_CLOSED};
  ps_phys_close(&closed, H(2), PS_CLOSE_UNCLEAN, "again");
  cr_assert_eq(calls.close_handle, 0, "a refused close touches no handle");
  cr_assert_eq(ps_phys_refused(), 2);
}

static void
assert_counts(PsPhys **ps, guint n)
{
  guint tally[N] = {0};
  for (guint i = 0; i < n; i++)
    if (ps[i])
      tally[ps[i]->state]++;
  for (int s = 0; s < N; s++)
    cr_assert_eq(ps_phys_count((PsPhysState)s), tally[s], "%s: counted %u, there are %u",
                 ps_phys_state_name((PsPhysState)s), ps_phys_count((PsPhysState)s), tally[s]);
}

Test(phys, the_counts_follow_the_states_through_a_life)
{
  PsPhys *ps[4] = {0};
  for (guint i = 0; i < 4; i++)
    ps[i] = ps_phys_new(NULL, NULL, -1, NULL);
  assert_counts(ps, 4);
  cr_assert(ps_phys_attach(ps[0], H(0)));              /* opened on the application's handle */
  cr_assert(ps_phys_enter(ps[1], PS_PHYS_IDLE, NULL)); /* filled ahead */
  cr_assert(ps_phys_enter(ps[2], PS_PHYS_IDLE, NULL));
  cr_assert(ps_phys_enter(ps[2], PS_PHYS_CLAIMED, NULL));
  cr_assert(ps_phys_attach(ps[2], H(2)));
  assert_counts(ps, 4);
  cr_assert_eq(ps_phys_attached(), 2);
  ps_phys_doom(H(2), "replication");
  assert_counts(ps, 4);
  cr_assert_eq(ps_phys_detach(H(0)), ps[0]);
  cr_assert_eq(ps[0]->state, PS_PHYS_RETURNING);
  ps[0]->pending = 1;
  cr_assert(ps_phys_enter(ps[0], PS_PHYS_RESET_SENT, NULL));
  assert_counts(ps, 4);
  cr_assert_eq(ps_phys_detach(H(2)), ps[2]);
  cr_assert_eq(ps[2]->state, PS_PHYS_DOOMED, "a doomed one stays doomed: it closes");
  cr_assert_eq(ps_phys_attached(), 0);
  ps_phys_close(ps[2], H(2), PS_CLOSE_UNCLEAN, ps[2]->doom);
  ps[2] = NULL;
  ps_phys_close(ps[3], NULL, PS_CLOSE_DEAD, "opening failed");
  ps[3] = NULL;
  assert_counts(ps, 4);
  cr_assert_eq(ps_phys_count(PS_PHYS_CLOSED), 0, "closed ones are freed in the same sequence");
  ps_phys_close(ps[0], NULL, PS_CLOSE_SHUTDOWN, NULL);
  ps_phys_close(ps[1], NULL, PS_CLOSE_SHUTDOWN, NULL);
  ps[0] = ps[1] = NULL;
  assert_counts(ps, 4);
  cr_assert_eq(ps_phys_refused(), 0);
}

Test(phys, a_fork_orphans_the_attached_ones_and_forgets_those_in_flight)
{
  PsPhys *lent = phys_in(L);
  PsPhys *doomed = ps_phys_new(NULL, NULL, -1, NULL);
  cr_assert(ps_phys_attach(doomed, H(1)));
  ps_phys_doom(H(1), "change_user");
  PsPhys *opening = ps_phys_new(NULL, NULL, -1, NULL); /* the parent's thread was opening it */
  PsPhys *idle = phys_in(I);
  ps_phys_orphan_attached();
  cr_assert_eq(lent->state, PS_PHYS_ORPHANED);
  cr_assert_eq(doomed->state, PS_PHYS_ORPHANED);
  cr_assert_eq(idle->state, PS_PHYS_IDLE, "the idle queue's are orphaned as victims");
  cr_assert_eq(ps_phys_count(PS_PHYS_ORPHANED), 2);
  cr_assert_eq(ps_phys_count(PS_PHYS_OPENING), 0, "the child has no thread opening it");
  /* A doomed orphan stays an orphan: nothing is ever pooled from it here. */
  ps_phys_doom(H(1), "again");
  cr_assert_eq(doomed->state, PS_PHYS_ORPHANED);
  cr_assert_eq(ps_phys_detach(H(0)), lent);
  cr_assert_eq(lent->state, PS_PHYS_ORPHANED, "detached, an orphan stays one until closed");
  g_free(opening); /* the child's copy of the parent's memory: never closed by the child */
  finish(lent);
  finish(doomed);
  finish(idle);
  cr_assert_eq(ps_phys_refused(), 0);
}

/* ---- the close ---------------------------------------------------------------------- */

typedef struct {
  PsPool *pool;
  PsPoolKey *key;
} Pool;

static Pool
new_pool(void)
{
  PsPoolLimits limits = {.per_key = 4};
  Pool pl = {.pool = ps_pool_new(&limits)};
  guint8 digest[PS_KEY_DIGEST_LEN] = {1, 2, 3};
  pl.key = ps_pool_key(pl.pool, digest, "u@h:3306/db", NULL);
  return pl;
}

/* A connection opened on the application's handle H(i), counted lent by the pool. */
static PsPhys *
opened_lent(Pool *pl, guint i, int slot_fd)
{
  PsGrant g;
  ps_pool_acquire(pl->pool, pl->key, g_get_monotonic_time() + 5 * G_USEC_PER_SEC, &g);
  cr_assert_eq(g.kind, PS_GRANT_OPEN);
  PsPhys *p = ps_phys_new(pl->pool, NULL, slot_fd, NULL);
  ps_phys_opened(p, pl->key);
  p->shell = SH(i);
  cr_assert(ps_phys_attach(p, H(i)));
  return p;
}

static void
free_pool(Pool *pl)
{
  ps_pool_key_release(pl->pool, pl->key, FALSE);
  ps_pool_free(pl->pool, NULL);
}

static PsPoolCounts
counts_of(Pool *pl)
{
  PsPoolCounts c;
  ps_pool_counts(pl->pool, &c);
  return c;
}

Test(phys, closing_tells_the_pool_once_with_the_reason)
{
  Pool pl = new_pool();
  PsPhys *a = opened_lent(&pl, 0, -1);
  PsPhys *b = opened_lent(&pl, 1, -1);
  cr_assert_eq(counts_of(&pl).lent, 2);
  /* a: returned with an error: closed from RETURNING, the pool counted it lent. */
  cr_assert_eq(ps_phys_detach(H(0)), a);
  ps_phys_close(a, H(0), PS_CLOSE_UNCLEAN, "returned with an error");
  PsPoolCounts c = counts_of(&pl);
  cr_assert_eq(c.lent, 1);
  cr_assert_eq(c.closed_by[PS_CLOSE_UNCLEAN], 1);
  /* b: returned clean, idle, then taken out at exit: the pool counted that close itself. */
  cr_assert_eq(ps_phys_detach(H(1)), b);
  cr_assert(ps_phys_release(b, TRUE, NULL));
  cr_assert_eq(b->state, PS_PHYS_IDLE);
  cr_assert_eq(counts_of(&pl).idle, 1);
  ps_phys_close_items(ps_pool_take_idle(pl.pool, TRUE, PS_CLOSE_SHUTDOWN), FALSE);
  c = counts_of(&pl);
  cr_assert_eq(c.open, 0);
  cr_assert_eq(c.closed_by[PS_CLOSE_SHUTDOWN], 1);
  cr_assert_eq(c.closed, 2, "every close counted once: %" G_GUINT64_FORMAT, c.closed);
  cr_assert_str_eq(calls.trace->str, "close_handle(handle) close(shell) close(shell) ");
  free_pool(&pl);
}

Test(phys, a_dead_or_orphaned_connection_is_closed_without_a_word)
{
  Pool pl = new_pool();
  PsPhys *dead = opened_lent(&pl, 0, -1);
  cr_assert_eq(ps_phys_detach(H(0)), dead);
  ps_phys_close(dead, NULL, PS_CLOSE_DEAD, "closed by the server while idle");
  cr_assert_str_eq(calls.trace->str, "abandon(shell) ");
  g_string_truncate(calls.trace, 0);
  PsPhys *orphan = opened_lent(&pl, 1, -1);
  ps_phys_orphan_attached();
  cr_assert_eq(ps_phys_detach(H(1)), orphan);
  ps_phys_close(orphan, H(1), PS_CLOSE_SHUTDOWN, "inherited across fork");
  cr_assert_str_eq(calls.trace->str, "abandon(handle) abandon(shell) ");
  cr_assert_eq(calls.close + calls.close_and_wait + calls.close_handle, 0);
  cr_assert_eq(calls.watch_free, 0, "no watch was made");
  cr_assert_eq(counts_of(&pl).closed_by[PS_CLOSE_DEAD], 1);
  free_pool(&pl);
}

Test(phys, orphaned_idle_connections_pass_through_orphaned_before_closed)
{
  Pool pl = new_pool();
  PsPhys *p = opened_lent(&pl, 0, -1);
  cr_assert_eq(ps_phys_detach(H(0)), p);
  p->pending = 1;
  cr_assert(ps_phys_release(p, TRUE, NULL));
  cr_assert_eq(p->state, PS_PHYS_RESET_SENT);
  ps_phys_close_items(ps_pool_take_idle(pl.pool, TRUE, PS_CLOSE_SHUTDOWN), TRUE);
  cr_assert_str_eq(calls.trace->str, "abandon(shell) ");
  cr_assert_eq(ps_phys_count(PS_PHYS_ORPHANED), 0);
  cr_assert_eq(ps_phys_count(PS_PHYS_RESET_SENT), 0);
  cr_assert_eq(ps_phys_refused(), 0);
  free_pool(&pl);
}

Test(phys, at_exit_every_idle_one_closes_and_the_waits_are_one)
{
  Pool pl = new_pool();
  PsPhys *ps[3];
  for (guint i = 0; i < 3; i++)
    ps[i] = opened_lent(&pl, i, -1);
  for (guint i = 0; i < 3; i++) {
    PsPhys *p = ps[i];
    cr_assert_eq(ps_phys_detach(H(i)), p);
    cr_assert(ps_phys_release(p, TRUE, NULL));
  }
  ps_phys_close_items_at_exit(ps_pool_take_idle(pl.pool, TRUE, PS_CLOSE_SHUTDOWN), 1000);
  cr_assert_eq(calls.close, 3);
  cr_assert_eq(calls.wait, 1);
  cr_assert_eq(ps_phys_count(PS_PHYS_IDLE), 0);
  cr_assert_eq(ps_phys_count(PS_PHYS_CLOSED), 0);
  cr_assert_eq(counts_of(&pl).open, 0);
  free_pool(&pl);
}

/* The pool's idle queue holds exactly the IDLE and RESET_SENT ones, its lent count the
 * claimed, lent and returning ones: after every move the two views agree. */
static void
assert_lists_agree(Pool *pl)
{
  PsPoolCounts c = counts_of(pl);
  guint idle = ps_phys_count(PS_PHYS_IDLE) + ps_phys_count(PS_PHYS_RESET_SENT);
  guint lent = ps_phys_count(PS_PHYS_CLAIMED) + ps_phys_count(PS_PHYS_LENT) +
               ps_phys_count(PS_PHYS_DOOMED) + ps_phys_count(PS_PHYS_RETURNING);
  cr_assert_eq(c.idle, idle, "the pool has %u idle, the states say %u", c.idle, idle);
  cr_assert_eq(c.lent, lent, "the pool has %u lent, the states say %u", c.lent, lent);
  cr_assert_eq(c.open, idle + lent + ps_phys_count(PS_PHYS_OPENING));
}

Test(phys, the_pool_lists_and_the_states_agree_after_every_move)
{
  Pool pl = new_pool();
  PsPhys *a = opened_lent(&pl, 0, -1);
  PsPhys *b = opened_lent(&pl, 1, -1);
  assert_lists_agree(&pl);
  cr_assert_eq(ps_phys_detach(H(0)), a);
  assert_lists_agree(&pl);
  a->pending = 2;
  cr_assert(ps_phys_release(a, TRUE, NULL));
  assert_lists_agree(&pl);
  /* The next connect gets it: claimed, its replies owed, then lent. */
  PsGrant g;
  ps_pool_acquire_no_grow(pl.pool, pl.key, g_get_monotonic_time() + G_USEC_PER_SEC, &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE);
  cr_assert_eq(g.item->conn, a);
  cr_assert(ps_phys_claim(a), "its reset's replies are owed");
  assert_lists_agree(&pl);
  a->pending = 0;
  cr_assert(ps_phys_attach(a, H(2)));
  assert_lists_agree(&pl);
  ps_phys_doom(H(1), "change_user");
  assert_lists_agree(&pl);
  cr_assert_eq(ps_phys_detach(H(1)), b);
  ps_phys_close(b, H(1), PS_CLOSE_UNCLEAN, b->doom);
  assert_lists_agree(&pl);
  cr_assert_eq(ps_phys_detach(H(2)), a);
  cr_assert(ps_phys_release(a, TRUE, NULL));
  cr_assert_eq(a->state, PS_PHYS_IDLE);
  assert_lists_agree(&pl);
  ps_pool_acquire_no_grow(pl.pool, pl.key, g_get_monotonic_time() + G_USEC_PER_SEC, &g);
  cr_assert_eq(g.item->conn, a);
  cr_assert_not(ps_phys_claim(a), "nothing owed after a reset with no replies");
  assert_lists_agree(&pl);
  ps_phys_close(a, NULL, PS_CLOSE_DEAD, "closed by the server while idle");
  assert_lists_agree(&pl);
  cr_assert_eq(counts_of(&pl).open, 0);
  cr_assert_eq(ps_phys_refused(), 0);
  free_pool(&pl);
}
