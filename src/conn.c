/* conn.c, with conn_key.c and conn_reset.c: the only files that know Connector/C 3.3's
 * internals (struct layouts, back-pointers, what mysql_real_connect and mysql_close do). This
 * one: the library check, moving a live connection between structs, liveness and closing.
 * Each trick names the library code it mirrors. No pool policy and no locking here: callers
 * decide when; this file knows how. */
#include "conn.h"
#include "secret.h"

#include <errno.h>
#include <fcntl.h>
#include <errmsg.h>
#include <mysqld_error.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "gil.h"
#include "mirror.h"
#include "watch.h"

PsClientApi ps_real;

static gboolean
probe_layout(const char **why)
{
  MYSQL *m = ps_real.init(NULL);
  if (!m) {
    *why = "mysql_init failed";
    return FALSE;
  }
  gboolean ok = TRUE;
  ps_real.optionsv(m, MYSQL_PLUGIN_DIR, "/poolshim-probe-1");
  ps_real.optionsv(m, MARIADB_OPT_TLS_PEER_FP, "poolshim-probe-2");
  ps_real.optionsv(m, MARIADB_OPT_TLS_VERSION, "TLSv1.2");
  ps_real.optionsv(m, MARIADB_OPT_CONNECTION_HANDLER, "poolshim-probe-3");
  ps_real.optionsv(m, MARIADB_OPT_STATUS_CALLBACK, NULL, NULL);
  PsMirrorOptionsExt *ext = OPT_EXT(m);
  char *a = NULL, *b = NULL, *c = NULL, *d = NULL;
  ps_real.get_optionv(m, MYSQL_PLUGIN_DIR, &a);
  ps_real.get_optionv(m, MARIADB_OPT_TLS_PEER_FP, &b);
  ps_real.get_optionv(m, MARIADB_OPT_TLS_VERSION, &c);
  ps_real.get_optionv(m, MARIADB_OPT_CONNECTION_HANDLER, &d);
  if (!ext || !a || ext->plugin_dir != a || ext->tls_fp != b || ext->tls_version != c ||
      ext->connection_handler != d || ext->status_data != (void *)m || !ext->status_callback) {
    *why = "the options layout differs from Connector/C 3.3";
    ok = FALSE;
  }
  /* mysql_optionsv(MYSQL_OPT_LOCAL_INFILE, 2) sets WAIT_FOR_QUERY (1), 1 sets ALWAYS_ACCEPT. */
  unsigned int mode = 2;
  ps_real.optionsv(m, MYSQL_OPT_LOCAL_INFILE, &mode);
  gboolean auto_ok = EXT(m) && EXT(m)->auto_local_infile == 1;
  mode = 1;
  ps_real.optionsv(m, MYSQL_OPT_LOCAL_INFILE, &mode);
  if (ok && (!auto_ok || EXT(m)->auto_local_infile != 0)) {
    *why = "the handle extension layout differs from Connector/C 3.3";
    ok = FALSE;
  }
  /* The handler name is only a string until connect: closing frees it normally. */
  ps_real.close(m);
  return ok;
}

gboolean
ps_conn_library_ok(const char **why)
{
  unsigned long v = ps_real.get_client_version ? ps_real.get_client_version() : 0;
#ifdef PS_TEST_HOOKS
  /* Lets a test take the unsupported-library path with the real library: compiled only into
   * tests/'s libpoolshim-test.so, never into the installed library. */
  const char *forced = g_getenv("POOLSHIM_TEST_CLIENT_VERSION");
  if (forced)
    v = strtoul(forced, NULL, 10);
#endif
  /* mysql_get_client_version() is the Connector/C package version: 3.3.x is verified. */
  if (v < 30300 || v >= 30400) {
    *why = "unsupported client library version (poolshim is verified with Connector/C 3.3)";
    return FALSE;
  }
  ps_conn_key_seed();
  return probe_layout(why);
}

/* ---- the transplant ---- */

/* Installs the default session-tracking callback when the handle has none, exactly as
 * mysql_real_connect does before connecting (mariadb_lib.c). Without it, an OK packet
 * carrying session-tracking data (SET NAMES, USE) calls a NULL pointer. */
static void
ensure_status_callback(MYSQL *m)
{
  /* What the library installs (its ma_save_session_track_info, not exported), learnt from
   * the first handle it was installed on: every later handle with an options extension
   * gets the same two fields without a call into the library (one per lend). */
  static void (*learnt)(void *, enum enum_mariadb_status_info, ...);
  PsMirrorOptionsExt *ext = OPT_EXT(m);
  if (ext && ext->status_callback)
    return;
  __typeof__(learnt) cb = __atomic_load_n(&learnt, __ATOMIC_RELAXED);
  if (ext && cb) {
    ext->status_callback = cb;
    ext->status_data = m;
    return;
  }
  ps_real.optionsv(m, MARIADB_OPT_STATUS_CALLBACK, NULL, NULL);
  ext = OPT_EXT(m);
  if (ext && ext->status_callback && ext->status_data == (void *)m)
    __atomic_store_n(&learnt, ext->status_callback, __ATOMIC_RELAXED);
}

MYSQL *
ps_conn_shell_new(unsigned int timeout_s)
{
  MYSQL *m = ps_real.init(NULL);
  if (m) {
    ensure_status_callback(m);
    m->options.read_timeout = timeout_s;
    m->options.write_timeout = timeout_s;
  }
  return m;
}

/* Repoints what refers back to the struct that holds a connection. */
static void
repair_back_pointers(MYSQL *m)
{
  MARIADB_PVIO *pvio = m->net.pvio;
  if (!pvio)
    return;
  pvio->mysql = m; /* mariadb_reconnect: mysql->net.pvio->mysql = mysql */
  /* ma_pvio_tls_set_connection (not exported): OpenSSL app data is read on TLS errors. */
  if (pvio->ctls && pvio->ctls->ssl && ps_real.ssl_set_ex_data)
    ps_real.ssl_set_ex_data(pvio->ctls->ssl, 0, m);
}

#define SWAP(a, b)                                                                                 \
  do {                                                                                             \
    __typeof__(a) swap_tmp_ = (a);                                                                 \
    (a) = (b);                                                                                     \
    (b) = swap_tmp_;                                                                               \
  } while (0)

/* Exchanges the bytes [from, to) of two structs, 16 at a time in registers. */
typedef guint64 PsSwapUnit __attribute__((vector_size(16)));

static inline void
swap_span(MYSQL *a, MYSQL *b, gsize from, gsize to)
{
  guint8 *x = (guint8 *)a, *y = (guint8 *)b;
  gsize i = from;
#pragma GCC unroll 16
  for (; i + sizeof(PsSwapUnit) <= to; i += sizeof(PsSwapUnit)) {
    PsSwapUnit u, v;
    memcpy(&u, x + i, sizeof u);
    memcpy(&v, y + i, sizeof v);
    memcpy(x + i, &v, sizeof v);
    memcpy(y + i, &u, sizeof u);
  }
  for (; i < to; i++) {
    guint8 t = x[i];
    x[i] = y[i];
    y[i] = t;
  }
}

#define SPAN_END(field) (offsetof(MYSQL, field) + sizeof(((MYSQL *)0)->field))

void
ps_conn_move(MYSQL *to, MYSQL *from)
{
  /* mariadb_reconnect's `*mysql = tmp_mysql`, as an exchange of everything but what belongs
   * to the handle: its options (kept in place, so no status_data dangles) and the text of
   * its last error (512 of the struct's 1,272 bytes). The spans are widened to whole 16-byte
   * units into that text, which is then emptied on both sides: it is rewritten before anyone
   * reads it (ps_conn_present_fresh when lent, a reply or ps_conn_set_error otherwise).
   * About a third of the bytes of three whole-struct copies, moved once. */
  const gsize err_at = offsetof(MYSQL, net.last_error), err_end = SPAN_END(net.last_error);
  swap_span(to, from, 0, MIN(err_end, (err_at + 15) & ~(gsize)15));
  swap_span(to, from, MAX(err_at, err_end & ~(gsize)15), offsetof(MYSQL, options));
  swap_span(to, from, SPAN_END(options), sizeof(MYSQL));
  to->net.last_error[0] = '\0';
  from->net.last_error[0] = '\0';
  /* Also the handle's, and in the spans above: swapped back. */
  SWAP(to->free_me, from->free_me);
  SWAP(to->stmts, from->stmts);
  if (EXT(to) && EXT(from))
    SWAP(EXT(to)->auto_local_infile, EXT(from)->auto_local_infile);
  repair_back_pointers(to);
  repair_back_pointers(from);
}

/* ---- the transaction grain: a connection between a handle and a pool struct ----
 * Unlike ps_conn_move, these move only the session's own fields: what the handle shows
 * (affected rows, insert id, info and the read buffer it points into, warnings, fields,
 * errors, status, database, character set) stays in the handle's struct. */

static void
take_string(char **to, char **from)
{
  free(*to);
  *to = *from;
  *from = NULL;
}

static char *
copy_string(const char *s)
{
  return s ? strdup(s) : NULL;
}

gboolean
ps_conn_copy_out(MYSQL *to, const MYSQL *from)
{
  /* `from` is read only: its owner may read it meanwhile (never write what is read here:
   * those fields change only inside a command, which the handle's state excludes). */
  gsize size = from->net.max_packet + 16;
  unsigned char *buff = malloc(size);
  if (!buff)
    return FALSE;
  free(to->net.buff);
  to->net.buff = buff;
  to->net.buff_end = buff + from->net.max_packet;
  to->net.write_pos = to->net.read_pos = buff;
  to->net.max_packet = from->net.max_packet;
  to->net.max_packet_size = from->net.max_packet_size;
  to->net.remain_in_buf = to->net.length = to->net.buf_length = to->net.where_b = 0;
  to->net.pkt_nr = to->net.compress_pkt_nr = 0;
  to->net.write_timeout = from->net.write_timeout;
  to->net.read_timeout = from->net.read_timeout;
  to->net.retry_count = from->net.retry_count;
  to->net.fcntl = from->net.fcntl;
  to->net.compress = from->net.compress;
  to->net.reading_or_writing = 0;
  to->net.fd = from->net.fd;
  to->net.pvio = from->net.pvio;
  /* Not the database: mysql_select_db writes it after its command's reply. Without one,
   * the reset that follows selects the pool's own. */
  free(to->db);
  to->db = NULL;
  char **mine[] = {&to->host, &to->user, &to->unix_socket, &to->server_version,
                   &to->host_info};
  const char *theirs[] = {from->host, from->user, from->unix_socket, from->server_version,
                          from->host_info};
  for (gsize i = 0; i < G_N_ELEMENTS(mine); i++) {
    free(*mine[i]);
    *mine[i] = copy_string(theirs[i]);
  }
  if (to->passwd)
    ps_secret_wipe(to->passwd);
  free(to->passwd);
  to->passwd = copy_string(from->passwd);
  to->thread_id = from->thread_id;
  to->port = from->port;
  to->client_flag = from->client_flag;
  to->server_capabilities = from->server_capabilities;
  to->protocol_version = from->protocol_version;
  to->server_status = from->server_status;
  to->server_language = from->server_language;
  memcpy(to->scramble_buff, from->scramble_buff, sizeof to->scramble_buff);
  to->status = MYSQL_STATUS_READY;
  to->field_count = 0;
  to->info = NULL;
  if (EXT(to) && EXT(from)) {
    EXT(to)->mariadb_client_flag = EXT(from)->mariadb_client_flag;
    EXT(to)->mariadb_server_capabilities = EXT(from)->mariadb_server_capabilities;
  }
  repair_back_pointers(to);
  ensure_status_callback(to);
  return TRUE;
}

void
ps_conn_forget(MYSQL *m)
{
  m->net.pvio = NULL;
}

void
ps_conn_copy_in(MYSQL *to, MYSQL *from)
{
  to->net.pvio = from->net.pvio;
  from->net.pvio = NULL;
  to->net.fd = from->net.fd;
  to->net.pkt_nr = to->net.compress_pkt_nr = 0;
  to->net.compress = from->net.compress;
  to->net.remain_in_buf = to->net.length = to->net.buf_length = to->net.where_b = 0;
  take_string(&to->host, &from->host);
  take_string(&to->user, &from->user);
  if (to->passwd)
    ps_secret_wipe(to->passwd);
  take_string(&to->passwd, &from->passwd);
  take_string(&to->unix_socket, &from->unix_socket);
  take_string(&to->server_version, &from->server_version);
  take_string(&to->host_info, &from->host_info);
  to->thread_id = from->thread_id;
  to->port = from->port;
  to->client_flag = from->client_flag;
  to->server_capabilities = from->server_capabilities;
  to->protocol_version = from->protocol_version;
  /* The pool's restore changed the session, not the handle's commands. */
  to->server_status = from->server_status & ~SERVER_SESSION_STATE_CHANGED;
  to->server_language = from->server_language;
  memcpy(to->scramble_buff, from->scramble_buff, sizeof to->scramble_buff);
  if (EXT(to) && EXT(from)) {
    EXT(to)->mariadb_client_flag = EXT(from)->mariadb_client_flag;
    EXT(to)->mariadb_server_capabilities = EXT(from)->mariadb_server_capabilities;
  }
  repair_back_pointers(to);
  ps_conn_adopt(to);
}

/* ---- liveness and closing ---- */

/* One poll of an idle connection's socket without waiting: poll's result (-1 also when the
 * connection has no socket), *revents set when it is 1. errno is left as it was. */
static int
poll_idle(MYSQL *m, short events, short *revents)
{
  MARIADB_PVIO *pvio = m->net.pvio;
  if (!pvio || !m->net.buff)
    return -1;
  /* What mysql_get_socket does for a connected handle (ma_pvio_get_handle), without the
   * two calls around it: a pooled connection is never one of the non-blocking API. */
  my_socket fd = INVALID_SOCKET;
  if (!pvio->methods || !pvio->methods->get_handle || pvio->methods->get_handle(pvio, &fd))
    fd = ps_real.get_socket(m);
  if (fd == INVALID_SOCKET)
    return -1;
  struct pollfd p = {.fd = fd, .events = events};
  int saved = errno;
  int r;
  /* The system call itself: a poll that does not wait needs no cancellation point, and
   * libc's wrapper of one costs more than the rest of a lend's liveness check. */
  do
#ifdef SYS_poll
    r = (int)syscall(SYS_poll, &p, 1, 0);
#else
    r = (int)syscall(SYS_ppoll, &p, 1, &(struct timespec){0, 0}, NULL, 0);
#endif
  while (r < 0 && errno == EINTR);
  errno = saved;
  *revents = p.revents;
  return r;
}

static int
bounded_ms(int ms, unsigned int timeout_s)
{
  int bound = (int)MIN(timeout_s, G_MAXINT / 1000) * 1000;
  return ms > 0 && ms < bound ? ms : bound;
}

/* Stores ms (a stored value: > 0, or -1 for none) as type's timeout; with `kernel`, on
 * the socket too (set_timeout takes seconds; stored values are whole seconds). */
static void
set_io_timeout(MARIADB_PVIO *pvio, enum enum_pvio_timeout type, int ms, gboolean kernel)
{
  if (pvio->timeout[type] == ms)
    return;
  if (kernel)
    pvio->methods->set_timeout(pvio, type, ms > 0 ? ms / 1000 : 0);
  else
    pvio->timeout[type] = ms;
}

void
ps_conn_io_bound(MYSQL *m, unsigned int timeout_s, PsIoBound *saved)
{
  MARIADB_PVIO *pvio = m->net.pvio;
  saved->read_ms = pvio ? pvio->timeout[PVIO_READ_TIMEOUT] : 0;
  saved->write_ms = pvio ? pvio->timeout[PVIO_WRITE_TIMEOUT] : 0;
  saved->kernel = pvio && pvio->ctls && pvio->methods && pvio->methods->set_timeout;
  if (!pvio || !timeout_s || (pvio->ctls && !saved->kernel))
    return;
  set_io_timeout(pvio, PVIO_READ_TIMEOUT, bounded_ms(saved->read_ms, timeout_s), saved->kernel);
  set_io_timeout(pvio, PVIO_WRITE_TIMEOUT, bounded_ms(saved->write_ms, timeout_s),
                 saved->kernel);
}

void
ps_conn_io_unbound(MYSQL *m, const PsIoBound *saved)
{
  MARIADB_PVIO *pvio = m->net.pvio;
  if (!pvio || (pvio->ctls && !saved->kernel))
    return;
  set_io_timeout(pvio, PVIO_READ_TIMEOUT, saved->read_ms, saved->kernel);
  set_io_timeout(pvio, PVIO_WRITE_TIMEOUT, saved->write_ms, saved->kernel);
}

gboolean
ps_conn_idle_closed(MYSQL *m, gboolean replies_pending)
{
  if (!m->net.pvio || !m->net.buff || ps_real.get_socket(m) == INVALID_SOCKET)
    return TRUE;
  /* POLLRDHUP: the server closed its side, even when the replies of a reset it answered
   * before are still unread (those make the socket readable on their own). */
  short revents;
  if (poll_idle(m, POLLIN | POLLRDHUP, &revents) <= 0)
    return FALSE;
  if (revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
    return TRUE;
  return !replies_pending && (revents & POLLIN);
}

gboolean
ps_conn_replies_arrived(MYSQL *m, int pending)
{
  if (pending <= 0)
    return TRUE;
  MARIADB_PVIO *pvio = m->net.pvio;
  if (!pvio || !m->net.buff)
    return TRUE; /* lending finds out what is wrong with it */
  if (pvio->cache && pvio->cache_pos < pvio->cache + pvio->cache_size)
    return TRUE; /* already read ahead into the library's buffer */
  my_socket fd = ps_real.get_socket(m);
  if (fd == INVALID_SOCKET)
    return TRUE;
  if (m->net.compress) {
    /* The packets cannot be counted from outside: any byte is taken as the replies. */
    short revents;
    return poll_idle(m, POLLIN, &revents) != 0;
  }
  /* Count the complete packets waiting in the socket (4-byte header: 3-byte length, then
   * the sequence number), or over TLS the complete records (5-byte header: type, version,
   * 2-byte length): the server writes each reply with one flush, one record. The replies
   * are OK/ERR packets of a few dozen bytes; a full peek buffer is as good as arrived. */
  gboolean tls = pvio->ctls != NULL;
  unsigned char buf[1024];
  int saved = errno;
  ssize_t n;
  do
    n = recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  gboolean would_block = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  errno = saved;
  if (n <= 0)
    return !would_block; /* EOF or an error: lending discards it without waiting */
  if ((size_t)n == sizeof buf)
    return TRUE;
  int complete = 0;
  size_t at = 0, hdr = tls ? 5 : 4;
  while (at + hdr <= (size_t)n) {
    size_t len = tls ? ((size_t)buf[at + 3] << 8 | (size_t)buf[at + 4])
                     : ((size_t)buf[at] | (size_t)buf[at + 1] << 8 | (size_t)buf[at + 2] << 16);
    if (at + hdr + len > (size_t)n)
      break;
    at += hdr + len;
    complete++;
  }
  if (complete >= pending)
    return TRUE;
  /* Some replies, then the server closed it (KILL): lending finds that out and discards
   * it; passed over, it would sit in the pool dead. */
  short revents;
  return poll_idle(m, POLLIN | POLLRDHUP, &revents) > 0 &&
         (revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

gboolean
ps_conn_set_rcvlowat(MYSQL *m, int bytes)
{
  MARIADB_PVIO *pvio = m->net.pvio;
  /* TCP alone: a Unix socket's poll ignores the mark (unix_poll), so it would only cost
   * the two calls. */
  if (!pvio || pvio->type != PVIO_TYPE_SOCKET || pvio->ctls || m->net.compress || !m->net.buff)
    return FALSE;
  my_socket fd = ps_real.get_socket(m);
  if (fd == INVALID_SOCKET)
    return FALSE;
  int saved = errno;
  gboolean ok = setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof bytes) == 0;
  errno = saved;
  return ok;
}

void
ps_conn_set_cloexec(MYSQL *m)
{
  my_socket fd = ps_real.get_socket(m);
  if (fd == INVALID_SOCKET)
    return;
  int flags = fcntl(fd, F_GETFD);
  if (flags >= 0 && !(flags & FD_CLOEXEC))
    fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

gboolean
ps_conn_idle_alive(MYSQL *m)
{
  short revents;
  /* Nothing may arrive on an idle session: readable means EOF or an error packet. */
  return poll_idle(m, POLLIN, &revents) == 0;
}

void
ps_conn_adopt(MYSQL *m)
{
  ensure_status_callback(m);
  MARIADB_PVIO *pvio = m->net.pvio;
  /* mthd_my_real_connect applies the handle's timeouts to the socket after connecting. */
  if (pvio && pvio->methods && pvio->methods->set_timeout) {
    ps_mirror_set_socket_timeout(pvio, PVIO_READ_TIMEOUT, m->options.read_timeout);
    ps_mirror_set_socket_timeout(pvio, PVIO_WRITE_TIMEOUT, m->options.write_timeout);
  }
  m->net.last_errno = 0;
  m->net.last_error[0] = '\0';
  strcpy(m->net.sqlstate, "00000");
}

void
ps_conn_present_fresh(MYSQL *m, const PsConnProfile *profile)
{
  /* mysql_real_connect (mthd_my_real_connect in mariadb_lib.c) leaves what the auth OK
   * packet's ma_read_ok_packet set (affected rows and insert id 0, its warning count; the
   * struct was zeroed by mysql_init, so field_count 0 and info NULL), or, with init
   * commands, what the last one's reply set; then sqlstate "00000" and no error. A pooled
   * connection shows instead the reset's replies, the pool's own `SELECT CURRENT_ROLE()`
   * (field count 2) or an earlier borrower's last command: replaced by the values the
   * pool's first real connect showed (PsConnFresh). mysql_info(): the library points it
   * into its read buffer; NULL when a fresh connect has none, else the message the reset's
   * re-run init commands left (on the first connect, the pool's own query has replaced it:
   * NULL). The server status stays the session's own: its autocommit bit is the truth. */
  m->affected_rows = profile->fresh.affected_rows;
  m->insert_id = profile->fresh.insert_id;
  m->field_count = profile->fresh.field_count;
  m->warning_count = profile->fresh.warning_count;
  if (!profile->fresh.has_info)
    m->info = NULL;
  m->net.last_errno = 0;
  m->net.last_error[0] = '\0';
  strcpy(m->net.sqlstate, "00000");
}

void
ps_conn_set_error(MYSQL *m, unsigned int errnum, const char *sqlstate, const char *msg)
{
  m->net.last_errno = errnum;
  g_strlcpy(m->net.sqlstate, sqlstate, sizeof m->net.sqlstate);
  g_strlcpy(m->net.last_error, msg, sizeof m->net.last_error);
}

void
ps_conn_close(MYSQL *m)
{
  if (!m)
    return;
  /* A return that sent nothing left the last borrower's timeouts (maybe none) on the
   * socket: COM_QUIT is written within the shell's own. */
  MARIADB_PVIO *pvio = m->net.pvio;
  if (pvio && pvio->methods && pvio->methods->set_timeout)
    ps_mirror_set_socket_timeout(pvio, PVIO_WRITE_TIMEOUT, m->options.write_timeout);
  ps_secret_wipe(m->passwd); /* the library frees it as it is */
  ps_real.close(m);
}

void
ps_conn_close_and_wait(MYSQL *m, int timeout_ms)
{
  int copy = ps_conn_close_keep_socket(m);
  ps_conn_wait_sockets_closed(&copy, 1, g_get_monotonic_time() + (gint64)timeout_ms * 1000);
}

int
ps_conn_close_keep_socket(MYSQL *m)
{
  if (!m)
    return -1;
  /* A duplicate keeps the socket open past mysql_close (which sends COM_QUIT): the server's
   * own close shows as EOF on it, so once that is read the server has let the session go.
   * What a host-wide cap needs: the next process may then connect without the server ever
   * seeing more sessions than slots. */
  my_socket fd = m->net.pvio ? ps_real.get_socket(m) : INVALID_SOCKET;
  int saved = errno;
  int copy = fd == INVALID_SOCKET ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
  ps_secret_wipe(m->passwd);
  ps_real.close(m);
  errno = saved;
  return copy;
}

void
ps_conn_wait_sockets_closed(const int *fds, guint n, gint64 deadline_us)
{
  int saved = errno;
  struct pollfd *p = g_new(struct pollfd, MAX(n, 1));
  guint open = 0;
  for (guint i = 0; i < n; i++)
    if (fds[i] >= 0)
      p[open++] = (struct pollfd){.fd = fds[i], .events = POLLIN};
  /* One deadline for all: closing many costs one wait, not one per connection. */
  if (open > 0)
    ps_gil_release();
  while (open > 0) {
    gint64 left = deadline_us - g_get_monotonic_time();
    if (left <= 0)
      break;
    if (poll(p, open, (int)MAX(1, MIN(left / 1000, G_MAXINT))) < 0 && errno != EINTR)
      break;
    for (guint i = 0; i < open;) {
      char buf[256];
      ssize_t got = p[i].revents ? recv(p[i].fd, buf, sizeof buf, MSG_DONTWAIT) : -1;
      if (p[i].revents && (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR))) {
        close(p[i].fd); /* EOF: the server closed its side */
        p[i] = p[--open];
      } else {
        i++;
      }
    }
  }
  for (guint i = 0; i < open; i++)
    close(p[i].fd);
  g_free(p);
  errno = saved;
}

void
ps_conn_abandon(MYSQL *m)
{
  if (!m)
    return;
  /* TLS needs nothing here: ma_tls_close sets SSL_set_quiet_shutdown before SSL_shutdown,
   * so no close_notify is ever sent, and the TLS state is freed (secure/openssl.c).
   * mysql_close_slow_part sends COM_QUIT only when net.buff is set. */
  free(m->net.buff);
  m->net.buff = NULL;
  ps_secret_wipe(m->passwd);
  ps_real.close(m);
}
