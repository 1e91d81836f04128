/* faultproxy: a loopback TCP proxy that the tests stall and break on purpose.
 *
 *   faultproxy [--signals-only] [TARGET_HOST TARGET_PORT]
 *
 * Listens on 127.0.0.1 on a free port, prints "port=N" on stdout once it accepts
 * connections, and forwards every accepted connection to TARGET (default
 * $PS_TEST_HOST:$PS_TEST_PORT) over a connection of its own, opened at accept time.
 *
 * Control: one letter per line on stdin; each is answered with one line on stdout once it
 * has taken effect, so a test that waits for the answer knows the proxy's state:
 *   f  freeze: stop forwarding in both directions; sockets stay open and new connections
 *      are still accepted (and connected to TARGET), exactly like a server that stopped
 *      answering: every peer waits                                   -> "frozen"
 *   t  thaw: forwarding resumes, buffered bytes flow                 -> "thawed"
 *   g  greeting only: from now on, a new connection gets the server's first bytes (its
 *      greeting) and then stalls for good, both directions, like a server that stopped
 *      answering in the middle of a handshake; `t` ends the mode for new ones -> "greeting only"
 *   c  cut: close every proxied connection now, both sides           -> "cut N"
 *   s  status                                                        -> "conns N frozen F"
 * End of stdin ends the proxy: it never outlives the test that started it. With
 * --signals-only stdin is ignored and SIGUSR1 freezes, SIGUSR2 thaws and SIGHUP cuts
 * (the same answers on stdout; the signals also work without the option). SIGTERM and
 * SIGINT end it.
 *
 * One thread, poll(), a signalfd; each direction has one buffer and is read only when its
 * buffer is empty, so a stalled reader stalls only its own direction. Every socket has
 * TCP_NODELAY: the proxy adds no Nagle delay. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 65536

typedef struct {
  char data[BUF_SIZE];
  size_t off, len; /* bytes read from this side, not yet written to the other */
  int eof;         /* this side sent FIN */
} Dir;

typedef struct Conn {
  int fd[2]; /* 0 = client, 1 = target */
  Dir d[2];  /* d[i]: from side i to side 1 - i */
  int dead;
  int greeting_only; /* accepted in `g` mode: stalls once the greeting is through */
  int stalled;
  struct Conn *next;
} Conn;

static Conn *conns;
static int frozen;
static int greeting_only;
static struct pollfd *pfds; /* rebuilt before every poll(); global, so reachable at exit */
static Conn **owners;       /* the connection of each entry of pfds */
static struct sockaddr_storage target;
static socklen_t target_len;

static void
die(const char *what)
{
  fprintf(stderr, "faultproxy: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void
say(const char *fmt, ...)
{
  char line[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  if ((size_t)n > sizeof line - 2)
    n = (int)sizeof line - 2;
  line[n++] = '\n';
  for (ssize_t off = 0; off < n;) {
    ssize_t w = write(STDOUT_FILENO, line + off, (size_t)(n - off));
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      exit(0); /* nobody listens any more */
    off += w;
  }
}

static void
nodelay(int fd)
{
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void
resolve_target(const char *host, const char *port)
{
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0 || !res) {
    fprintf(stderr, "faultproxy: cannot resolve %s:%s: %s\n", host, port, gai_strerror(rc));
    exit(1);
  }
  memcpy(&target, res->ai_addr, res->ai_addrlen);
  target_len = res->ai_addrlen;
  freeaddrinfo(res);
}

static void
accept_all(int lfd)
{
  for (;;) {
    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      return; /* EAGAIN, or out of descriptors: try again at the next poll */
    }
    /* Loopback: a blocking connect returns (or is refused) at once. */
    int t = socket(target.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (t < 0 || connect(t, (struct sockaddr *)&target, target_len) < 0) {
      fprintf(stderr, "faultproxy: connect to the target: %s\n", strerror(errno));
      if (t >= 0)
        close(t);
      close(c);
      continue;
    }
    if (fcntl(t, F_SETFL, fcntl(t, F_GETFL) | O_NONBLOCK) < 0)
      die("fcntl");
    nodelay(c);
    nodelay(t);
    Conn *k = calloc(1, sizeof *k);
    if (!k)
      die("calloc");
    k->fd[0] = c;
    k->fd[1] = t;
    k->greeting_only = greeting_only;
    k->next = conns;
    conns = k;
  }
}

/* Writes what side `from` sent to the other side; marks the connection dead on error. */
static void
flush_dir(Conn *k, int from)
{
  Dir *d = &k->d[from];
  while (d->len > 0 && !k->dead) {
    ssize_t w = send(k->fd[1 - from], d->data + d->off, d->len, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        k->dead = 1;
      return;
    }
    d->off += (size_t)w;
    d->len -= (size_t)w;
  }
  if (d->len == 0)
    d->off = 0;
  if (d->len == 0 && from == 1 && k->greeting_only)
    k->stalled = 1; /* the greeting is through: nothing more flows */
}

static void
read_side(Conn *k, int i)
{
  Dir *d = &k->d[i];
  for (;;) {
    ssize_t r = recv(k->fd[i], d->data, sizeof d->data, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r == 0) {
      d->eof = 1;
    } else if (r < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        k->dead = 1;
    } else {
      d->off = 0;
      d->len = (size_t)r;
      flush_dir(k, i);
    }
    return;
  }
}

static void
close_conn(Conn *k)
{
  close(k->fd[0]);
  close(k->fd[1]);
  free(k);
}

/* Frees dead connections, and those whose one side ended and whose data went out. */
static void
reap(void)
{
  for (Conn **p = &conns; *p;) {
    Conn *k = *p;
    if (!k->dead && ((k->d[0].eof && k->d[0].len == 0) || (k->d[1].eof && k->d[1].len == 0)))
      k->dead = 1;
    if (k->dead) {
      *p = k->next;
      close_conn(k);
    } else {
      p = &k->next;
    }
  }
}

static int
cut_all(void)
{
  int n = 0;
  while (conns) {
    Conn *k = conns;
    conns = k->next;
    close_conn(k);
    n++;
  }
  return n;
}

static int
count_conns(void)
{
  int n = 0;
  for (Conn *k = conns; k; k = k->next)
    n++;
  return n;
}

static void
command(char c)
{
  switch (c) {
  case 'f':
    frozen = 1;
    say("frozen");
    break;
  case 't':
    frozen = 0;
    greeting_only = 0;
    say("thawed");
    break;
  case 'g':
    greeting_only = 1;
    say("greeting only");
    break;
  case 'c':
    say("cut %d", cut_all());
    break;
  case 's':
    say("conns %d frozen %d", count_conns(), frozen);
    break;
  default:
    break; /* newlines, blanks, anything else */
  }
}

int
main(int argc, char **argv)
{
  int use_stdin = 1;
  if (argc > 1 && strcmp(argv[1], "--signals-only") == 0) {
    use_stdin = 0;
    argc--;
    argv++;
  }
  const char *host = argc > 2 ? argv[1] : getenv("PS_TEST_HOST");
  const char *port = argc > 2 ? argv[2] : getenv("PS_TEST_PORT");
  if (!host || !port) {
    fprintf(stderr, "usage: faultproxy [--signals-only] [TARGET_HOST TARGET_PORT]\n"
                    "(default target: $PS_TEST_HOST:$PS_TEST_PORT)\n");
    return 2;
  }
  resolve_target(host, port);

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGUSR1);
  sigaddset(&mask, SIGUSR2);
  sigaddset(&mask, SIGHUP);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
    die("sigprocmask");
  int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sfd < 0)
    die("signalfd");
  signal(SIGPIPE, SIG_IGN);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0)
    die("socket");
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof addr;
  if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 128) < 0 ||
      getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0)
    die("listen");
  say("port=%u", (unsigned)ntohs(addr.sin_port));

  size_t cap = 0;
  for (;;) {
    size_t need = 3 + 2 * (size_t)count_conns();
    if (need > cap) {
      cap = need * 2;
      pfds = realloc(pfds, cap * sizeof *pfds);
      owners = realloc(owners, cap * sizeof *owners);
      if (!pfds || !owners)
        die("realloc");
    }
    size_t n = 0;
    pfds[n++] = (struct pollfd){.fd = lfd, .events = POLLIN};
    pfds[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
    pfds[n++] = (struct pollfd){.fd = use_stdin ? STDIN_FILENO : -1, .events = POLLIN};
    /* Frozen: the connections are not polled at all, not even for a peer's close. */
    for (Conn *k = frozen ? NULL : conns; k; k = k->next) {
      if (k->stalled)
        continue;
      for (int i = 0; i < 2; i++) {
        short ev = 0;
        if (k->d[i].len == 0 && !k->d[i].eof)
          ev |= POLLIN;
        if (k->d[1 - i].len > 0)
          ev |= POLLOUT;
        owners[n] = k;
        pfds[n++] = (struct pollfd){.fd = k->fd[i], .events = ev};
      }
    }
    if (poll(pfds, n, -1) < 0) {
      if (errno == EINTR)
        continue;
      die("poll");
    }
    /* Data first, then new connections, then control: the answer to a command is written
     * after everything that poll() reported together with it. */
    for (size_t j = 3; j < n; j += 2) {
      Conn *k = owners[j];
      for (int i = 0; i < 2 && !k->dead; i++) {
        short re = pfds[j + (size_t)i].revents;
        if (re & POLLOUT)
          flush_dir(k, 1 - i);
        if (!k->dead && (re & (POLLIN | POLLHUP | POLLERR))) {
          if (k->d[i].len == 0 && !k->d[i].eof)
            read_side(k, i);
          else if (re & (POLLHUP | POLLERR))
            k->dead = 1; /* gone while its data still waits: nothing more can flow */
        }
      }
    }
    reap();
    if (pfds[0].revents & POLLIN)
      accept_all(lfd);
    if (pfds[1].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        switch (si.ssi_signo) {
        case SIGUSR1:
          command('f');
          break;
        case SIGUSR2:
          command('t');
          break;
        case SIGHUP:
          command('c');
          break;
        default:
          cut_all();
          return 0;
        }
      }
    }
    if (pfds[2].revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[64];
      ssize_t r = read(STDIN_FILENO, buf, sizeof buf);
      if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) {
        cut_all();
        return 0; /* the controller is gone */
      }
      for (ssize_t i = 0; i < r; i++)
        command(buf[i]);
    }
  }
}
