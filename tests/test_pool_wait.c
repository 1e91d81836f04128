/* test_pool_wait.c: the pool's waiters, without a server: the deadline, a released or freed
 * slot handed to a waiter, FIFO order, and bounded barging (the grace, the quantum, the
 * poller), on the fake clock wherever the grace or the quantum matters. */
#include <criterion/criterion.h>
#include <glib.h>

#include "pool_fakes.h"

TestSuite(pool, .timeout = 30);

/* ---- a full key ------------------------------------------------------------------- */

Test(pool, a_full_key_times_out_at_the_deadline)
{
  PsPool *pool = new_pool(2, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  PsItem *a = open_one(pool, key, GINT_TO_POINTER(1));
  PsItem *b = open_one(pool, key, GINT_TO_POINTER(2));
  ASSERT_GAUGES(pool, 2, 0, 2, 0);

  PsGrant g;
  gint64 start = g_get_monotonic_time();
  ps_pool_acquire(pool, key, start + 200 * MS, &g);
  gint64 elapsed = g_get_monotonic_time() - start;

  cr_assert_eq(g.kind, PS_GRANT_TIMEOUT);
  cr_assert_null(g.item);
  cr_assert_null(g.victims);
  cr_assert_geq(elapsed, 150 * MS, "returned after %" G_GINT64_FORMAT " us", elapsed);
  cr_assert_lt(elapsed, 5 * SEC, "returned after %" G_GINT64_FORMAT " us", elapsed);
  cr_assert_geq(g.waited_us, 150 * MS, "waited_us %" G_GINT64_FORMAT, g.waited_us);
  cr_assert_lt(g.waited_us, 5 * SEC, "waited_us %" G_GINT64_FORMAT, g.waited_us);

  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.waits, 1);
  cr_assert_eq(c.wait_timeouts, 1);
  ASSERT_GAUGES(pool, 2, 0, 2, 0); /* the timed-out waiter left nothing behind */

  cr_assert(ps_pool_release(pool, a, FALSE));
  cr_assert(ps_pool_release(pool, b, FALSE));
  ps_pool_free(pool, NULL);
}

/* ---- waiters ---------------------------------------------------------------------- */

/* A key of one connection, lent to the calling thread, and a caller of the key waiting for
 * it in another thread. */
typedef struct {
  PsPool *pool;
  PsPoolKey *key;
  PsItem *item; /* the key's only connection */
  Waiter w;
  GThread *t;
  gint64 arrived; /* when the waiter arrived, on the fake clock (take_twice_then_start_waiter) */
} OneConn;

static void
open_the_connection(OneConn *s, PsPool *pool)
{
  *s = (OneConn){.pool = pool, .key = key_n(pool, 1)};
  s->item = open_one(pool, s->key, GINT_TO_POINTER(7));
}

static void
start_the_waiter(OneConn *s)
{
  s->t = start_waiter(&s->w, s->pool, s->key);
  wait_until_waiting(s->pool, 1);
  ASSERT_GAUGES(s->pool, 1, 0, 1, 1);
}

/* The connection opened for the calling thread, then the waiter. */
static void
lend_then_start_waiter(OneConn *s)
{
  open_the_connection(s, new_pool(1, 0, 0, 0));
  start_the_waiter(s);
}

Test(pool, a_waiter_is_served_the_released_connection)
{
  OneConn s;
  lend_then_start_waiter(&s);

  cr_assert(ps_pool_release(s.pool, s.item, FALSE));
  g_thread_join(s.t);

  cr_assert_eq(s.w.grant.kind, PS_GRANT_IDLE);
  cr_assert_eq(s.w.grant.item, s.item, "the waiter gets exactly the released connection");
  cr_assert_null(s.w.grant.victims);
  cr_assert_gt(s.w.grant.waited_us, 0);
  ASSERT_GAUGES(s.pool, 1, 0, 1, 0);
  PsPoolCounts c;
  ps_pool_counts(s.pool, &c);
  cr_assert_eq(c.waits, 1);
  cr_assert_eq(c.wait_timeouts, 0);
  cr_assert_eq(c.served_idle, 1);
  cr_assert_eq(c.borrowed, 2);

  cr_assert(ps_pool_release(s.pool, s.item, FALSE));
  ps_pool_free(s.pool, NULL);
}

Test(pool, a_waiter_is_granted_a_slot_when_a_holder_discards)
{
  OneConn s;
  lend_then_start_waiter(&s);

  ps_pool_discard(s.pool, s.item, PS_CLOSE_DEAD);
  cr_assert_eq(s.item->close_reason, PS_CLOSE_DEAD);
  ps_pool_item_free(s.item);
  g_thread_join(s.t);

  cr_assert_eq(s.w.grant.kind, PS_GRANT_OPEN);
  cr_assert_null(s.w.grant.item);
  cr_assert_null(s.w.grant.victims);
  /* The slot is reserved for the waiter: counted open, nothing lent, nothing idle. */
  ASSERT_GAUGES(s.pool, 1, 0, 0, 0);
  PsPoolCounts c;
  ps_pool_counts(s.pool, &c);
  cr_assert_eq(c.closed, 1);
  cr_assert_eq(c.closed_by[PS_CLOSE_DEAD], 1);

  PsItem *fresh = ps_pool_opened(s.pool, s.key, GINT_TO_POINTER(8));
  ASSERT_GAUGES(s.pool, 1, 0, 1, 0);
  cr_assert(ps_pool_release(s.pool, fresh, FALSE));
  ps_pool_free(s.pool, NULL);
}

Test(pool, a_failed_open_frees_the_slot_for_a_waiter)
{
  PsPool *pool = new_pool(1, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  PsGrant g;
  ps_pool_acquire(pool, key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_OPEN);

  Waiter w;
  GThread *t = start_waiter(&w, pool, key);
  wait_until_waiting(pool, 1);
  ASSERT_GAUGES(pool, 1, 0, 0, 1);

  ps_pool_open_failed(pool, key);
  g_thread_join(t);

  cr_assert_eq(w.grant.kind, PS_GRANT_OPEN, "the freed slot goes to the waiter");
  cr_assert_null(w.grant.victims);
  ASSERT_GAUGES(pool, 1, 0, 0, 0);
  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.opened, 0);
  cr_assert_eq(c.closed, 0, "a connection that never opened is not counted as closed");

  ps_pool_open_failed(pool, key);
  ASSERT_GAUGES(pool, 0, 0, 0, 0);
  ps_pool_free(pool, NULL);
}

typedef struct {
  PsPool *pool;
  PsPoolKey *key;
  gint next;      /* atomic: next free slot of `order` */
  int order[16];  /* arrival indexes, in the order the waiters were served */
} FifoShared;

typedef struct {
  FifoShared *shared;
  int index;
  PsGrant grant;
  gboolean released_ok;
} FifoWaiter;

static gpointer
fifo_waiter_main(gpointer p)
{
  FifoWaiter *w = p;
  FifoShared *s = w->shared;
  ps_pool_acquire(s->pool, s->key, in_ms(20000), &w->grant);
  if (w->grant.kind == PS_GRANT_IDLE) {
    int pos = g_atomic_int_add(&s->next, 1);
    if (pos >= 0 && pos < (int)G_N_ELEMENTS(s->order))
      s->order[pos] = w->index;
    w->released_ok = ps_pool_release(s->pool, w->grant.item, FALSE);
  }
  return NULL;
}

Test(pool, waiters_are_served_in_arrival_order)
{
  enum { N = 5 };
  FifoShared shared = {.pool = new_pool(1, 0, 0, 0)};
  shared.key = key_n(shared.pool, 1);
  for (guint i = 0; i < G_N_ELEMENTS(shared.order); i++)
    shared.order[i] = -1;
  PsItem *item = open_one(shared.pool, shared.key, GINT_TO_POINTER(42));

  FifoWaiter w[N];
  GThread *t[N];
  for (int i = 0; i < N; i++) {
    w[i] = (FifoWaiter){.shared = &shared, .index = i};
    t[i] = g_thread_new("fifo", fifo_waiter_main, &w[i]);
    wait_until_waiting(shared.pool, (guint)i + 1);
  }

  /* One release starts the chain: each served waiter releases the connection again, and
   * every release hands it to the next waiter in line. */
  cr_assert(ps_pool_release(shared.pool, item, FALSE));
  for (int i = 0; i < N; i++)
    g_thread_join(t[i]);

  cr_assert_eq(g_atomic_int_get(&shared.next), N, "every waiter was served");
  for (int i = 0; i < N; i++) {
    cr_assert_eq(w[i].grant.kind, PS_GRANT_IDLE, "waiter %d got kind %d", i, w[i].grant.kind);
    cr_assert_eq(w[i].grant.item, item, "waiter %d got another item", i);
    cr_assert(w[i].released_ok);
    cr_assert_eq(shared.order[i], i, "service #%d went to waiter %d, not %d", i,
                 shared.order[i], i);
  }
  ASSERT_GAUGES(shared.pool, 1, 1, 0, 0);
  PsPoolCounts c;
  ps_pool_counts(shared.pool, &c);
  cr_assert_eq(c.waits, N);
  cr_assert_eq(c.wait_timeouts, 0);
  cr_assert_eq(c.served_idle, N);
  cr_assert_eq(c.opened, 1);
  ps_pool_free(shared.pool, NULL);
}

/* ---- bounded barging -------------------------------------------------------------- */

/* Polls until `waiting_after` callers are left waiting (or 10 s have passed). */
static gboolean
wait_until_served(PsPool *pool, guint waiting_after)
{
  gint64 give_up = g_get_monotonic_time() + 10 * SEC;
  PsPoolCounts c;
  do {
    ps_pool_counts(pool, &c);
    if (c.waiting == waiting_after)
      return TRUE;
    g_usleep(1000);
  } while (g_get_monotonic_time() < give_up);
  return FALSE;
}

/* On the fake clock: the calling thread takes the key's only connection, returns it and
 * takes it again `gap_us` later (within the grace, it is looping from then on; after it, it
 * did other work in between). Then the waiter arrives. */
static void
take_twice_then_start_waiter(OneConn *s, gint64 gap_us)
{
  open_the_connection(s, new_pool_on_fake_clock(1, 0, 0, 0));
  cr_assert(ps_pool_release(s->pool, s->item, FALSE));
  clock_add(gap_us);
  PsGrant g;
  ps_pool_acquire(s->pool, s->key, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE);
  cr_assert_eq(g.item, s->item);
  start_the_waiter(s);
  s->arrived = fake_clock();
}

/* One cycle of the looping thread: its loan ends after `loan_us` and its return is held
 * back for it (idle, and the waiter still waits); `gap_us` later it connects again and
 * re-takes its own connection without waiting. */
static void
loop_cycle(OneConn *s, gint64 loan_us, gint64 gap_us, int cycle)
{
  clock_add(loan_us);
  cr_assert(ps_pool_release(s->pool, s->item, FALSE));
  ASSERT_GAUGES(s->pool, 1, 1, 0, 1);
  clock_add(gap_us);
  PsGrant g;
  ps_pool_acquire(s->pool, s->key, in_ms(300), &g);
  cr_assert_eq(g.kind, PS_GRANT_IDLE,
               "cycle %d, %" G_GINT64_FORMAT " us after the waiter arrived: the looping thread "
               "got kind %d, not its own connection back",
               cycle, fake_clock() - s->arrived, g.kind);
  cr_assert_eq(g.item, s->item);
  cr_assert_eq(g.waited_us, 0);
}

/* A looping thread and a waiter (take_twice_then_start_waiter), then cycles (loop_cycle)
 * as long as a cycle ends within the quantum, which began with the looping thread's acquire
 * just before the waiter arrived; returns the number of cycles. */
static int
loop_through_the_quantum(OneConn *s, gint64 loan_us, gint64 gap_us)
{
  take_twice_then_start_waiter(s, 0);
  int cycles = 0;
  while (fake_clock() + loan_us + gap_us - s->arrived < PS_POOL_QUANTUM_US)
    loop_cycle(s, loan_us, gap_us, cycles++);
  ASSERT_GAUGES(s->pool, 1, 0, 1, 1);
  return cycles;
}

/* The looping thread's loan ends at `at`, past its quantum: the return is the waiter's, at
 * once (no grace). */
static void
return_past_the_quantum(OneConn *s, gint64 at)
{
  clock_set(at);
  cr_assert(ps_pool_release(s->pool, s->item, FALSE));
  g_thread_join(s->t);
  cr_assert_eq(s->w.grant.kind, PS_GRANT_IDLE);
  cr_assert_eq(s->w.grant.item, s->item);
  cr_assert_eq(s->w.grant.waited_us, at - s->arrived,
               "served %" G_GINT64_FORMAT " us after arrival, the quantum is %" G_GINT64_FORMAT,
               s->w.grant.waited_us, PS_POOL_QUANTUM_US);
}

Test(pool, a_looping_releaser_retakes_its_connection_while_the_oldest_waiter_is_young)
{
  OneConn s;
  take_twice_then_start_waiter(&s, 0);

  /* Twenty cycles within the bound: each return is held back, each connect re-takes it
   * without waiting, and the waiter (no grace passes on the fake clock) keeps waiting. */
  for (int i = 0; i < 20; i++)
    loop_cycle(&s, 10, 10, i); /* well inside the grace and the bound */
  cr_assert_lt(fake_clock() - s.arrived, PS_POOL_QUANTUM_US);
  ASSERT_GAUGES(s.pool, 1, 0, 1, 1);

  /* A thread that does not come back: the waiter gets the connection after the grace. */
  cr_assert(ps_pool_release(s.pool, s.item, FALSE));
  clock_add(PS_POOL_BARGE_GRACE_US);
  g_thread_join(s.t);
  cr_assert_eq(s.w.grant.kind, PS_GRANT_IDLE);
  cr_assert_eq(s.w.grant.item, s.item);
  cr_assert(ps_pool_release(s.pool, s.item, FALSE));
  ps_pool_free(s.pool, NULL);
}

Test(pool, a_looping_thread_hands_over_once_its_quantum_is_spent)
{
  OneConn s;
  /* The looping thread cycles, 30 us a loan, until its quantum is nearly spent. */
  int cycles = loop_through_the_quantum(&s, 30, 30);
  cr_assert_gt(cycles, 20, "the looping thread cycled %d times without a handoff", cycles);

  /* The quantum is spent: the next return is the waiter's. */
  return_past_the_quantum(&s, s.arrived + PS_POOL_QUANTUM_US);

  /* And the looping thread, coming straight back, waits its turn now. */
  PsGrant g;
  ps_pool_acquire(s.pool, s.key, in_ms(50), &g);
  cr_assert_eq(g.kind, PS_GRANT_TIMEOUT);
  cr_assert(ps_pool_release(s.pool, s.item, FALSE));
  ps_pool_free(s.pool, NULL);
}

/* Long loans do not stretch a run: it ends at the first return after its quantum, and the
 * waiter, served then, begins a run of its own. */
Test(pool, a_run_of_long_loans_also_ends_with_its_quantum)
{
  OneConn s;
  /* 1 ms per loan, 10 us between a return and the next connect. */
  int cycles = loop_through_the_quantum(&s, 1000, 10);
  cr_assert_geq(cycles, 3);

  /* A loan that ends past the quantum: its return is the waiter's. */
  return_past_the_quantum(&s, s.arrived + PS_POOL_QUANTUM_US + 500);
  cr_assert(ps_pool_release(s.pool, s.item, FALSE));
  ps_pool_free(s.pool, NULL);
}

Test(pool, a_held_return_goes_to_the_waiter_after_the_grace_with_nothing_else_happening)
{
  OneConn s;
  take_twice_then_start_waiter(&s, 0);

  /* The looping thread returns the connection and goes away: it is held for the grace. */
  clock_add(10);
  gint64 returned = fake_clock();
  cr_assert(ps_pool_release(s.pool, s.item, FALSE));
  g_usleep(20 * MS); /* several poll periods of real time, none of fake time */
  ASSERT_GAUGES(s.pool, 1, 1, 0, 1);

  /* The grace passes: no pool operation follows, the waiter's own poll hands it over. */
  clock_set(returned + PS_POOL_BARGE_GRACE_US);
  cr_assert(wait_until_served(s.pool, 0), "the held connection was stranded");
  g_thread_join(s.t);
  cr_assert_eq(s.w.grant.kind, PS_GRANT_IDLE);
  cr_assert_eq(s.w.grant.item, s.item);
  ASSERT_GAUGES(s.pool, 1, 0, 1, 0);
  cr_assert(ps_pool_release(s.pool, s.item, FALSE));
  ps_pool_free(s.pool, NULL);
}

Test(pool, a_thread_that_comes_back_after_the_grace_hands_its_return_to_the_waiter)
{
  OneConn s;
  /* Work between the close and the next connect (a request, Django's ORM): not looping. */
  take_twice_then_start_waiter(&s, PS_POOL_BARGE_GRACE_US + 1);

  cr_assert(ps_pool_release(s.pool, s.item, FALSE));
  ASSERT_GAUGES(s.pool, 1, 0, 1, 0); /* handed over at once, not held */
  g_thread_join(s.t);
  cr_assert_eq(s.w.grant.item, s.item);
  cr_assert(ps_pool_release(s.pool, s.item, FALSE));
  ps_pool_free(s.pool, NULL);
}

/* ---- a request that lost what it was served keeps its place ----------------------- */

typedef struct {
  PsPool *pool;
  PsPoolKey *key;
  gint64 arrived_us;
  PsGrant grant;
} Again;

static gpointer
again_main(gpointer p)
{
  Again *a = p;
  ps_pool_acquire_again(a->pool, a->key, TRUE, a->arrived_us, in_ms(20000), &a->grant);
  return NULL;
}

/* A connect is served an idle connection that turns out dead (the server KILLed it while
 * idle): its slot goes to the oldest waiter, and the connect asks again. It arrived before
 * every waiter, so it is next, not last (32 threads on 8 connections under KILLs: a connect
 * sent to the tail at each dead connection it drew waited out POOLSHIM_TIMEOUT). */
Test(pool, a_request_that_lost_its_connection_keeps_its_place_in_the_queue)
{
  PsPool *pool = new_pool_on_fake_clock(1, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  gint64 t0 = fake_clock();
  PsItem *dead = open_one(pool, key, GINT_TO_POINTER(1));
  Waiter w1, w2;
  clock_add(10);
  GThread *t1 = start_waiter(&w1, pool, key);
  wait_until_waiting(pool, 1);
  clock_add(10);
  GThread *t2 = start_waiter(&w2, pool, key);
  wait_until_waiting(pool, 2);

  /* The connection is found dead: its slot is the oldest waiter's, to open a new one. */
  ps_pool_discard(pool, dead, PS_CLOSE_DEAD);
  ps_pool_item_free(dead);
  g_thread_join(t1);
  cr_assert_eq(w1.grant.kind, PS_GRANT_OPEN, "the first waiter got kind %d", w1.grant.kind);
  PsItem *fresh = ps_pool_opened(pool, key, GINT_TO_POINTER(2));

  /* The connect asks again, with the time it first arrived. */
  clock_add(10);
  Again a = {.pool = pool, .key = key, .arrived_us = t0};
  GThread *ta = g_thread_new("again", again_main, &a);
  wait_until_waiting(pool, 2);

  /* The next return is the connect's, though the second waiter queued before it asked
   * again. */
  cr_assert(ps_pool_release(pool, fresh, FALSE));
  g_thread_join(ta);
  cr_assert_eq(a.grant.kind, PS_GRANT_IDLE, "the connect asking again got kind %d",
               a.grant.kind);
  cr_assert_eq(a.grant.item, fresh);
  ASSERT_GAUGES(pool, 1, 0, 1, 1); /* the second waiter still waits */

  cr_assert(ps_pool_release(pool, fresh, FALSE));
  g_thread_join(t2);
  cr_assert_eq(w2.grant.kind, PS_GRANT_IDLE);
  cr_assert_eq(w2.grant.item, fresh);
  PsPoolCounts c;
  ps_pool_counts(pool, &c);
  cr_assert_eq(c.waits, 2, "asking again is the same wait, not a new one: %" G_GUINT64_FORMAT,
               (guint64)c.waits);
  cr_assert(ps_pool_release(pool, fresh, FALSE));
  ps_pool_free(pool, NULL);
}

/* Asking again when nobody waits, or only later arrivals wait while a connection is free:
 * served at once. */
Test(pool, a_request_asking_again_is_served_at_once_when_nobody_older_waits)
{
  PsPool *pool = new_pool_on_fake_clock(2, 0, 0, 0);
  PsPoolKey *key = key_n(pool, 1);
  gint64 t0 = fake_clock();
  clock_add(10);
  PsGrant g;
  ps_pool_acquire_again(pool, key, TRUE, t0, in_ms(1000), &g);
  cr_assert_eq(g.kind, PS_GRANT_OPEN, "got kind %d", g.kind);
  cr_assert_eq(g.waited_us, 0);
  PsItem *item = ps_pool_opened(pool, key, GINT_TO_POINTER(1));
  cr_assert(ps_pool_release(pool, item, FALSE));
  ps_pool_free(pool, NULL);
}
