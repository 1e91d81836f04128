/* delayproxy: a loopback TCP proxy that simulates network latency, for benchmarks.
 *
 *   delayproxy [--listen PORT] [--delay-us US] TARGET_HOST TARGET_PORT
 *
 * Listens on 127.0.0.1:PORT (0, the default, picks a free port) and prints "port=N" on
 * stdout once it accepts connections. Every accepted connection gets its own connection to
 * TARGET; every chunk read in either direction is written to the other side US
 * microseconds (default 250) after it was read, so a request/response round trip costs
 * 2*US more: 0.5 ms by default. Order within a direction is kept; chunks are not merged
 * or split beyond what the kernel does. Bandwidth limits and loss are not simulated.
 *
 * The TCP handshake. On a real network a client's connect() returns after one round trip
 * (SYN, SYN-ACK), the server accepts when the ACK arrives (1.5 round trips) and MySQL's
 * greeting, which the server sends first, reaches the client 2 round trips after connect()
 * began. On loopback the client's connect() completes at once, so the proxy opens its
 * connection to TARGET only 3*US after accepting (--connect-delay-us, default 3*US): the
 * greeting then arrives 3*US + US = 2 round trips after connect(), as on a real network.
 * --connect-delay-us 0 gives the bare model in which only data chunks are delayed (a
 * connect then costs 1.5 round trips less than on a real network, which favours clients
 * that open a connection per request).
 *
 * One thread, epoll, a timerfd armed at the earliest due chunk (CLOCK_MONOTONIC, absolute,
 * timer slack 1 ns so a 250 us delay is not rounded up by the kernel's default 50 us slack).
 * Since every chunk gets the same delay, due times are in arrival order across all
 * connections: one global FIFO of pending chunks gives the next deadline in O(1); each
 * direction also keeps its chunks in a FIFO so writes keep their order and a slow reader
 * only stalls its own direction (reading from its source stops above 4 MiB queued).
 *
 * On SIGTERM/SIGINT it prints to stderr what it did: connections, chunks, bytes, and how
 * late chunks were written after their due time (mean and max, microseconds); that is the
 * measure of whether it kept up. SIGUSR1 prints the same line and starts counting afresh
 * (the benchmark sends it after every run). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define CHUNK_MAX 65536
#define QUEUE_LIMIT (4u << 20)
#define DETACHED UINT32_MAX /* Side.events: removed from the epoll set */

typedef struct Conn Conn;

typedef struct Chunk {
  struct Chunk *next;              /* in its direction's FIFO */
  struct Chunk *gprev, *gnext;     /* in the global pending FIFO while not yet due */
  Conn *conn;
  int dir;                         /* read from side dir, written to side 1-dir */
  int due_passed;                  /* may be written */
  uint64_t due;                    /* ns, CLOCK_MONOTONIC */
  size_t len, off;
  char data[];
} Chunk;

typedef struct {
  Conn *conn;
  int idx;                         /* 0 = client side, 1 = server side */
} Tag;

typedef struct {
  int fd;
  Tag tag;
  int eof;                         /* read 0 from this side */
  int shut;                        /* shutdown(SHUT_WR) done on this side */
  int connecting;                  /* non-blocking connect in progress (server side) */
  uint32_t events;                 /* current epoll interest */
  Chunk *head, *tail;              /* chunks read from this side, for the other one */
  size_t queued;
} Side;

struct Conn {
  Side s[2];
  int dead;
  int pending;                     /* waiting for its connect to TARGET (s[1].fd == -1) */
  uint64_t connect_due;
  Conn *pprev, *pnext;             /* in the FIFO of pending connects */
};

static int ep, tfd;
static Chunk *ghead, *gtail;       /* global FIFO of chunks not yet due */
static Conn *phead, *ptail;        /* FIFO of connections whose connect is not yet due */
static long connect_delay_ns = -1; /* -1: 3 * delay_ns */
static uint64_t armed_for;         /* deadline the timerfd is armed for, 0 = disarmed */
static long delay_ns = 250000;
static struct sockaddr_in target;
static volatile sig_atomic_t stop, report;
static void connect_target(Conn *c);
static struct {
  unsigned long conns, chunks, bytes, late_n;
  uint64_t late_sum_ns, late_max_ns;
} st;

static uint64_t
now_ns(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void
die(const char *what)
{
  fprintf(stderr, "delayproxy: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void
arm_timer(void)
{
  uint64_t want = ghead ? ghead->due : 0;
  if (phead && (!want || phead->connect_due < want))
    want = phead->connect_due;
  if (want == armed_for)
    return;
  struct itimerspec it = {0};
  if (want) {
    it.it_value.tv_sec = (time_t)(want / 1000000000u);
    it.it_value.tv_nsec = (long)(want % 1000000000u);
  }
  if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &it, NULL) < 0)
    die("timerfd_settime");
  armed_for = want;
}

static void
set_interest(Side *sd, uint32_t ev)
{
  if (sd->fd < 0 || sd->events == ev || sd->events == DETACHED)
    return;
  struct epoll_event e = {.events = ev, .data.ptr = &sd->tag};
  if (epoll_ctl(ep, EPOLL_CTL_MOD, sd->fd, &e) < 0)
    die("epoll_ctl MOD");
  sd->events = ev;
}

/* Interest of both sides from the state: read while not at EOF and the queue it feeds
 * is not too long; write while due data waits for it (or the connect is in progress). */
static void
update(Conn *c)
{
  for (int i = 0; i < 2; i++) {
    Side *sd = &c->s[i], *other = &c->s[1 - i];
    uint32_t ev = 0;
    if (sd->connecting) {
      ev = EPOLLOUT;
    } else {
      if (!sd->eof && sd->queued < QUEUE_LIMIT)
        ev |= EPOLLIN;
      if (other->head && other->head->due_passed)
        ev |= EPOLLOUT;
    }
    set_interest(sd, ev);
  }
}

static void
gunlink(Chunk *k)
{
  if (k->gprev)
    k->gprev->gnext = k->gnext;
  else
    ghead = k->gnext;
  if (k->gnext)
    k->gnext->gprev = k->gprev;
  else
    gtail = k->gprev;
  k->gprev = k->gnext = NULL;
}

static void
punlink(Conn *c)
{
  if (c->pprev)
    c->pprev->pnext = c->pnext;
  else
    phead = c->pnext;
  if (c->pnext)
    c->pnext->pprev = c->pprev;
  else
    ptail = c->pprev;
  c->pprev = c->pnext = NULL;
  c->pending = 0;
}

static void
conn_free(Conn *c)
{
  if (c->pending)
    punlink(c);
  for (int i = 0; i < 2; i++) {
    Chunk *k = c->s[i].head;
    while (k) {
      Chunk *n = k->next;
      if (!k->due_passed)
        gunlink(k);
      free(k);
      k = n;
    }
    if (c->s[i].fd >= 0)
      close(c->s[i].fd); /* also removes it from the epoll set */
  }
  free(c);
}

/* Tears the pair down (error, reset, or both directions finished). Deferred to the end of
 * the event batch: later events of the same batch may still point at this Conn. */
static Conn **graveyard;
static size_t ngrave, capgrave;

static void
kill_conn(Conn *c)
{
  if (c->dead)
    return;
  c->dead = 1;
  for (int i = 0; i < 2; i++)
    if (c->s[i].fd >= 0) {
      epoll_ctl(ep, EPOLL_CTL_DEL, c->s[i].fd, NULL);
      close(c->s[i].fd);
      c->s[i].fd = -1;
    }
  if (ngrave == capgrave) {
    capgrave = capgrave ? 2 * capgrave : 64;
    graveyard = realloc(graveyard, capgrave * sizeof *graveyard);
    if (!graveyard)
      die("realloc");
  }
  graveyard[ngrave++] = c;
}

/* Both directions finished: EOF read and all of it written and shut down. */
static void
maybe_done(Conn *c)
{
  if (c->s[0].eof && c->s[1].eof && !c->s[0].head && !c->s[1].head && c->s[0].shut &&
      c->s[1].shut)
    kill_conn(c);
}

/* Writes due chunks read from side `dir` to the other side. */
static void
flush(Conn *c, int dir)
{
  Side *src = &c->s[dir], *dst = &c->s[1 - dir];
  if (c->dead || dst->connecting || dst->fd < 0)
    return;
  while (src->head && src->head->due_passed) {
    Chunk *k = src->head;
    if (k->off == 0) {
      uint64_t late = now_ns() - k->due;
      st.late_n++;
      st.late_sum_ns += late;
      if (late > st.late_max_ns)
        st.late_max_ns = late;
    }
    ssize_t w = send(dst->fd, k->data + k->off, k->len - k->off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      kill_conn(c);
      return;
    }
    k->off += (size_t)w;
    if (k->off < k->len)
      break;
    src->head = k->next;
    if (!src->head)
      src->tail = NULL;
    src->queued -= k->len;
    free(k);
  }
  if (!src->head && src->eof && !dst->shut) {
    shutdown(dst->fd, SHUT_WR);
    dst->shut = 1;
  }
  update(c);
  maybe_done(c);
}

static void
on_readable(Conn *c, int idx)
{
  Side *sd = &c->s[idx];
  for (int rounds = 0; rounds < 4 && !sd->eof && sd->queued < QUEUE_LIMIT; rounds++) {
    char buf[CHUNK_MAX];
    ssize_t r = recv(sd->fd, buf, sizeof buf, 0);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      kill_conn(c);
      return;
    }
    if (r == 0) {
      sd->eof = 1;
      /* Nothing pending: pass the EOF on now (an EOF is not delayed; no data is lost). */
      if (!sd->head)
        flush(c, idx);
      break;
    }
    Chunk *k = malloc(sizeof *k + (size_t)r);
    if (!k)
      die("malloc");
    memcpy(k->data, buf, (size_t)r);
    k->len = (size_t)r;
    k->off = 0;
    k->conn = c;
    k->dir = idx;
    k->due_passed = 0;
    k->due = now_ns() + (uint64_t)delay_ns;
    k->next = NULL;
    if (sd->tail)
      sd->tail->next = k;
    else
      sd->head = k;
    sd->tail = k;
    sd->queued += k->len;
    k->gnext = NULL;
    k->gprev = gtail;
    if (gtail)
      gtail->gnext = k;
    else
      ghead = k;
    gtail = k;
    st.chunks++;
    st.bytes += (unsigned long)r;
    if ((size_t)r < sizeof buf)
      break;
  }
  update(c);
  arm_timer();
}

static void
on_timer(void)
{
  uint64_t expirations;
  if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
    die("read timerfd");
  armed_for = 0;
  uint64_t now = now_ns();
  while (phead && phead->connect_due <= now) {
    Conn *c = phead;
    punlink(c);
    if (!c->dead)
      connect_target(c);
  }
  while (ghead && ghead->due <= now) {
    Chunk *k = ghead;
    gunlink(k);
    k->due_passed = 1;
    /* Only the head of a direction can be written; the rest waits for it. */
    if (k->conn->s[k->dir].head == k)
      flush(k->conn, k->dir);
    else
      update(k->conn);
  }
  arm_timer();
}

static void
add_fd(Side *sd, uint32_t ev)
{
  struct epoll_event e = {.events = ev, .data.ptr = &sd->tag};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, sd->fd, &e) < 0)
    die("epoll_ctl ADD");
  sd->events = ev;
}

/* Opens the connection to TARGET for c (its client side is already accepted). */
static void
connect_target(Conn *c)
{
  int sfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (sfd < 0)
    die("socket");
  int one = 1;
  setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->s[1].fd = sfd;
  if (connect(sfd, (struct sockaddr *)&target, sizeof target) < 0) {
    if (errno != EINPROGRESS) {
      fprintf(stderr, "delayproxy: connect to target: %s\n", strerror(errno));
      kill_conn(c);
      return;
    }
    c->s[1].connecting = 1;
  }
  add_fd(&c->s[1], c->s[1].connecting ? EPOLLOUT : EPOLLIN);
  if (!c->s[1].connecting) {
    flush(c, 0); /* anything the client sent meanwhile and is due, or its EOF */
    update(c);
  }
}

static void
on_accept(int lfd)
{
  for (;;) {
    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED)
        return;
      if (errno == EMFILE || errno == ENFILE) {
        fprintf(stderr, "delayproxy: accept: %s\n", strerror(errno));
        return;
      }
      die("accept");
    }
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    Conn *c = calloc(1, sizeof *c);
    if (!c)
      die("calloc");
    c->s[0].fd = cfd;
    c->s[1].fd = -1;
    for (int i = 0; i < 2; i++) {
      c->s[i].tag.conn = c;
      c->s[i].tag.idx = i;
    }
    st.conns++;
    add_fd(&c->s[0], EPOLLIN);
    if (connect_delay_ns == 0) {
      connect_target(c);
      continue;
    }
    c->pending = 1;
    c->connect_due = now_ns() + (uint64_t)connect_delay_ns;
    c->pprev = ptail;
    if (ptail)
      ptail->pnext = c;
    else
      phead = c;
    ptail = c;
    arm_timer();
  }
}

static void
on_event(Tag *tag, uint32_t ev)
{
  Conn *c = tag->conn;
  int idx = tag->idx;
  if (c->dead)
    return;
  Side *sd = &c->s[idx];
  if (sd->connecting) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(sd->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
      kill_conn(c);
      return;
    }
    sd->connecting = 0;
    flush(c, 1 - idx); /* anything the client sent meanwhile and is due */
    update(c);
    return;
  }
  if (ev & EPOLLERR) { /* reset or refused: nothing more can be delivered either way */
    kill_conn(c);
    return;
  }
  if (ev & (EPOLLIN | EPOLLHUP)) {
    on_readable(c, idx);
    if (c->dead)
      return;
    if ((ev & EPOLLHUP) && sd->eof) {
      /* Both halves of this socket are closed; HUP is reported whatever the interest,
       * so stop watching it (level-triggered, it would spin). What it sent is still
       * delivered from the timer; the pair goes when that is done (maybe_done). */
      epoll_ctl(ep, EPOLL_CTL_DEL, sd->fd, NULL);
      sd->events = DETACHED;
      maybe_done(c);
      return;
    }
  }
  if (ev & EPOLLOUT)
    flush(c, 1 - idx); /* writable: write what was read from the other side */
}

static void
on_signal(int sig)
{
  if (sig == SIGUSR1)
    report = 1;
  else
    stop = 1;
}

/* One line of statistics on stderr; with reset, start counting afresh (SIGUSR1). */
static void
print_stats(int reset)
{
  fprintf(stderr,
          "delayproxy: connections=%lu chunks=%lu bytes=%lu late_mean_us=%.1f late_max_us=%.1f\n",
          st.conns, st.chunks, st.bytes,
          st.late_n ? (double)st.late_sum_ns / (double)st.late_n / 1000.0 : 0.0,
          (double)st.late_max_ns / 1000.0);
  fflush(stderr);
  if (reset)
    memset(&st, 0, sizeof st);
}

int
main(int argc, char **argv)
{
  int port = 0, i;
  for (i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--listen") && i + 1 < argc)
      port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--delay-us") && i + 1 < argc)
      delay_ns = atol(argv[++i]) * 1000L;
    else if (!strcmp(argv[i], "--connect-delay-us") && i + 1 < argc)
      connect_delay_ns = atol(argv[++i]) * 1000L;
    else
      break;
  }
  if (argc - i != 2 || delay_ns < 0 || connect_delay_ns < -1) {
    fprintf(stderr, "usage: delayproxy [--listen PORT] [--delay-us US] [--connect-delay-us US] "
                    "TARGET_HOST TARGET_PORT\n");
    return 2;
  }
  if (connect_delay_ns < 0)
    connect_delay_ns = 3 * delay_ns;
  target.sin_family = AF_INET;
  target.sin_port = htons((uint16_t)atoi(argv[i + 1]));
  if (inet_pton(AF_INET, argv[i], &target.sin_addr) != 1) {
    fprintf(stderr, "delayproxy: target must be an IPv4 address: %s\n", argv[i]);
    return 2;
  }
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0)
    die("socket");
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, (struct sockaddr *)&la, sizeof la) < 0)
    die("bind");
  if (listen(lfd, 1024) < 0)
    die("listen");
  socklen_t ll = sizeof la;
  getsockname(lfd, (struct sockaddr *)&la, &ll);

  ep = epoll_create1(EPOLL_CLOEXEC);
  tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (ep < 0 || tfd < 0)
    die("epoll/timerfd");
  static Tag ltag, ttag; /* conn == NULL: idx 0 = listener, 1 = timer */
  ltag.idx = 0;
  ttag.idx = 1;
  struct epoll_event e = {.events = EPOLLIN, .data.ptr = &ltag};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &e);
  e.data.ptr = &ttag;
  epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &e);

  printf("port=%d\n", ntohs(la.sin_port));
  fflush(stdout);

  struct epoll_event evs[256];
  while (!stop) {
    if (report) {
      report = 0;
      print_stats(1);
    }
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      die("epoll_wait");
    }
    for (int j = 0; j < n; j++) {
      Tag *tag = evs[j].data.ptr;
      if (!tag->conn) {
        if (tag->idx == 0)
          on_accept(lfd);
        else
          on_timer();
      } else {
        on_event(tag, evs[j].events);
      }
    }
    for (size_t g = 0; g < ngrave; g++)
      conn_free(graveyard[g]);
    ngrave = 0;
  }
  print_stats(0);
  return 0;
}
