/* conn.c: the only file that knows Connector/C 3.3's internals (struct layouts, back-pointers,
 * what mysql_real_connect and mysql_close do). Each trick names the library code it mirrors.
 * No pool policy and no locking here: callers decide when; this file knows how. */
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

#include "log.h"
#include "mirror.h"
#include "session.h"
#include "watch.h"

#ifndef INVALID_SOCKET
#define INVALID_SOCKET (-1)
#endif

PsClientApi ps_real;

/* The per-process key of the pool-key hash (see ps_conn_key). */
static guint64 sip_k0, sip_k1;

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
  sip_k0 = ((guint64)g_random_int() << 32) | g_random_int();
  sip_k1 = ((guint64)g_random_int() << 32) | g_random_int();
  return probe_layout(why);
}

/* ---- keys ---- */

/* SipHash-1-3 with a 128-bit result (Aumasson & Bernstein; the variant Rust's HashMap
 * uses), keyed with a per-process random key: GLib has no keyed hash, and a SHA-256 over
 * every option cost ~30,000 instructions per connect. The digest only finds the pool;
 * the password itself is compared with the one the pooled connection holds before it is
 * lent (ps_conn_same_identity). */
typedef struct {
  guint64 v0, v1, v2, v3, tail, len;
} PsSip;

#define ROTL(x, b) (guint64)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND(s)                                                                                \
  do {                                                                                             \
    s->v0 += s->v1;                                                                                \
    s->v1 = ROTL(s->v1, 13);                                                                       \
    s->v1 ^= s->v0;                                                                                \
    s->v0 = ROTL(s->v0, 32);                                                                       \
    s->v2 += s->v3;                                                                                \
    s->v3 = ROTL(s->v3, 16);                                                                       \
    s->v3 ^= s->v2;                                                                                \
    s->v0 += s->v3;                                                                                \
    s->v3 = ROTL(s->v3, 21);                                                                       \
    s->v3 ^= s->v0;                                                                                \
    s->v2 += s->v1;                                                                                \
    s->v1 = ROTL(s->v1, 17);                                                                       \
    s->v1 ^= s->v2;                                                                                \
    s->v2 = ROTL(s->v2, 32);                                                                       \
  } while (0)

static void
sip_init(PsSip *s)
{
  s->v0 = sip_k0 ^ 0x736f6d6570736575ULL;
  s->v1 = sip_k1 ^ 0x646f72616e646f6dULL ^ 0xee;
  s->v2 = sip_k0 ^ 0x6c7967656e657261ULL;
  s->v3 = sip_k1 ^ 0x7465646279746573ULL;
  s->tail = 0;
  s->len = 0;
}

static inline void
sip_word(PsSip *s, guint64 m)
{
  s->v3 ^= m;
  SIPROUND(s);
  s->v0 ^= m;
}

static void
sip_feed(PsSip *s, const void *data, gsize n)
{
  const guint8 *p = data;
  guint fill = s->len & 7;
  s->len += n;
  if (fill) {
    while (n && fill < 8) {
      s->tail |= (guint64)*p++ << (8 * fill++);
      n--;
    }
    if (fill < 8)
      return;
    sip_word(s, s->tail);
    s->tail = 0;
  }
  for (; n >= 8; p += 8, n -= 8) {
    guint64 m;
    memcpy(&m, p, 8);
    sip_word(s, GUINT64_FROM_LE(m));
  }
  for (guint i = 0; i < n; i++)
    s->tail |= (guint64)p[i] << (8 * i);
}

static void
sip_final(PsSip *s, guint8 out[16])
{
  sip_word(s, s->tail | (s->len << 56));
  s->v2 ^= 0xee;
  SIPROUND(s);
  SIPROUND(s);
  SIPROUND(s);
  guint64 a = GUINT64_TO_LE(s->v0 ^ s->v1 ^ s->v2 ^ s->v3);
  s->v1 ^= 0xdd;
  SIPROUND(s);
  SIPROUND(s);
  SIPROUND(s);
  guint64 b = GUINT64_TO_LE(s->v0 ^ s->v1 ^ s->v2 ^ s->v3);
  memcpy(out, &a, 8);
  memcpy(out + 8, &b, 8);
}

/* The key's bytes are laid out in a buffer and hashed a word at a time: feeding the hash
 * field by field cost more than the hash itself. */
typedef struct {
  PsSip sip;
  gsize n;
  guint8 buf[512];
} PsKeyBuf;

static void
kb_flush(PsKeyBuf *kb)
{
  gsize whole = kb->n & ~(gsize)7;
  sip_feed(&kb->sip, kb->buf, whole);
  memmove(kb->buf, kb->buf + whole, kb->n - whole);
  kb->n -= whole;
}

static void
kb_put_slow(PsKeyBuf *kb, const void *p, gsize len)
{
  while (len) {
    if (kb->n == sizeof kb->buf)
      kb_flush(kb);
    gsize take = MIN(len, sizeof kb->buf - kb->n);
    memcpy(kb->buf + kb->n, p, take);
    kb->n += take;
    p = (const guint8 *)p + take;
    len -= take;
  }
}

static inline void
kb_put(PsKeyBuf *kb, const void *p, gsize len)
{
  if (G_LIKELY(kb->n + len <= sizeof kb->buf)) {
    memcpy(kb->buf + kb->n, p, len);
    kb->n += len;
    return;
  }
  kb_put_slow(kb, p, len);
}

/* A string with its length, so that field boundaries cannot shift; NULL differs from "". */
static inline void
feed_str(PsKeyBuf *kb, const char *str)
{
  guint32 n = str ? (guint32)strlen(str) + 1 : 0;
  kb_put(kb, &n, sizeof n);
  if (n > 1)
    kb_put(kb, str, n - 1);
}

/* Optional strings: a bit mask of which are set, then only those (most are NULL). */
static void
feed_optional(PsKeyBuf *kb, const char *const *fields, guint count)
{
  guint64 mask = 0;
  guint set[64], nset = 0;
  for (guint i = 0; i < count; i++)
    if (fields[i]) {
      mask |= G_GUINT64_CONSTANT(1) << i;
      set[nset++] = i;
    }
  kb_put(kb, &mask, sizeof mask);
  for (guint k = 0; k < nset; k++)
    feed_str(kb, fields[set[k]]);
}

static gboolean
is_library_attribute(const char *name)
{
  static const char *const own[] = {"_client_name", "_client_version", "_os", "_pid",
                                    "_platform", "_server_host", "_thread", NULL};
  for (const char *const *o = own; *o; o++)
    if (g_strcmp0(name, *o) == 0)
      return TRUE;
  return FALSE;
}

guint
ps_conn_user_attributes(MYSQL *m, char ***keys, char ***values)
{
  PsMirrorOptionsExt *ext = OPT_EXT(m);
  guint records = ext ? ext->connect_attrs.records : 0;
  *keys = *values = NULL;
  if (!records)
    return 0;
  /* The library fills caller-allocated arrays: it takes their addresses (mariadb_lib.c). */
  unsigned int got = 0;
  *keys = g_new0(char *, records + 1);
  *values = g_new0(char *, records + 1);
  ps_real.get_optionv(m, MYSQL_OPT_CONNECT_ATTRS, keys, values, &got);
  guint n = 0;
  for (unsigned int i = 0; i < got && i < records; i++) {
    /* The library re-adds its own attributes at every connect attempt (ma_set_connect_attrs);
     * they never shape the session, and would split a retried handle into a second pool. */
    if (is_library_attribute((*keys)[i]))
      continue;
    (*keys)[n] = (*keys)[i];
    (*values)[n] = (*values)[i];
    n++;
  }
  for (guint i = n; i < records; i++)
    (*keys)[i] = (*values)[i] = NULL;
  return n;
}

char **
ps_conn_init_commands(MYSQL *m)
{
  char **cmds = NULL;
  unsigned int n = 0;
  ps_real.get_optionv(m, MYSQL_INIT_COMMAND, &cmds, &n);
  char **copy = g_new0(char *, n + 1);
  for (unsigned int i = 0; i < n; i++)
    copy[i] = g_strdup(cmds[i]);
  return copy;
}

static const char *
nonempty(const char *a, const char *b)
{
  return a && a[0] ? a : b;
}

/* A program connects with the same settings again and again: the digest of the last
 * connect of this thread is reused when every byte hashed is the same (the comparison is
 * exact, so the key still covers every setting). Not when the bytes did not fit the buffer
 * (long init commands): part of them is already hashed (n is then 0). The buffer holds the
 * password, as the pooled connections' structs do; it never leaves the process. */
typedef struct {
  gsize n;
  guint8 digest[PS_KEY_DIGEST_LEN];
  guint8 buf[sizeof ((PsKeyBuf *)0)->buf];
} PsLastKey;
static __thread PsLastKey last_key;

/* Whether feed_str(str) would write the bytes at *off of the last key, and past them. */
static inline __attribute__((always_inline)) gboolean
same_str(const PsLastKey *last, gsize *off, const char *str)
{
  guint32 n;
  if (*off + sizeof n > last->n)
    return FALSE;
  memcpy(&n, last->buf + *off, sizeof n);
  *off += sizeof n;
  if (!str || n == 0)
    return !str && n == 0;
  gsize len = n - 1;
  if (len > last->n - *off)
    return FALSE;
  /* The stored bytes hold no NUL: strncmp stops at str's end, then str must end there. */
  if (len && strncmp(str, (const char *)last->buf + *off, len) != 0)
    return FALSE;
  if (str[len] != '\0')
    return FALSE;
  *off += len;
  return TRUE;
}

static inline __attribute__((always_inline)) gboolean
same_bytes(const PsLastKey *last, gsize *off, const void *p, gsize n)
{
  if (n > last->n - *off || memcmp(last->buf + *off, p, n) != 0)
    return FALSE;
  *off += n;
  return TRUE;
}

/* The common case of the cache above without laying the key out first: a connect with no
 * optional string option, proxy header, init command or connection attribute (most
 * programs set none). Compares, field by field, the very bytes ps_conn_key's buffer would
 * hold with those of the last key: TRUE only when they are all the same and nothing
 * follows them, so the last digest is this key's. Anything else takes the general path. */
static gboolean
same_as_last(const PsLastKey *last, const PsConnKey *key, const guint64 *nums, gsize nums_len,
             MYSQL *m, const PsMirrorOptionsExt *ext)
{
  const struct st_mysql_options *o = &m->options;
  /* The optional strings of ps_conn_key, in its order: all NULL makes a zero mask. */
  guintptr any = (guintptr)o->charset_name | (guintptr)o->charset_dir |
                 (guintptr)o->bind_address | (guintptr)o->ssl_key | (guintptr)o->ssl_cert |
                 (guintptr)o->ssl_ca | (guintptr)o->ssl_capath | (guintptr)o->ssl_cipher;
  if (ext)
    any |= (guintptr)ext->ssl_crl | (guintptr)ext->ssl_crlpath | (guintptr)ext->tls_version |
           (guintptr)ext->tls_fp | (guintptr)ext->tls_fp_list | (guintptr)ext->tls_pw |
           (guintptr)ext->server_public_key | (guintptr)ext->server_public_key_path |
           (guintptr)ext->plugin_dir | (guintptr)ext->default_auth |
           (guintptr)ext->restricted_auth | (guintptr)ext->proxy_header |
           (guintptr)ext->connect_attrs.records;
  const PsMirrorDynArray *cmds = (const PsMirrorDynArray *)o->init_command;
  if (any || (cmds && cmds->elements) || last->n == 0)
    return FALSE;
  gsize off = 0;
  /* After the numbers: the optional strings' mask (0), the number of init commands (0),
   * no attributes, the end mark. */
  const struct __attribute__((packed)) {
    guint64 mask, ncmds;
    guint32 end;
  } tail = {0, 0, G_MAXUINT32};
  return same_str(last, &off, key->host) && same_str(last, &off, key->user) &&
         same_str(last, &off, key->password) && same_str(last, &off, key->db) &&
         same_str(last, &off, key->unix_socket) && same_bytes(last, &off, nums, nums_len) &&
         same_bytes(last, &off, &tail, sizeof tail) && off == last->n;
}

gboolean
ps_conn_key(MYSQL *m, const char *host, const char *user, const char *passwd, const char *db,
            unsigned int port, const char *unix_socket, unsigned long client_flag,
            PsConnKey *key, const char **why)
{
  if (m->net.pvio) {
    *why = "handle already connected";
    return FALSE;
  }
  const char *h = nonempty(host, m->options.host);
  /* The options extension is read through the layout ps_conn_library_ok() verified. */
  PsMirrorOptionsExt *ext = OPT_EXT(m);
  if (ext && ext->connection_handler) {
    *why = "connection handler plugin";
    return FALSE;
  }
  if (m->options.my_cnf_file || m->options.my_cnf_group) {
    *why = "option file (MYSQL_READ_DEFAULT_FILE/GROUP) applied at connect";
    return FALSE;
  }
  if (ext && ext->async_context) {
    *why = "non-blocking API";
    return FALSE;
  }
  /* Defaults resolved as mthd_my_real_connect resolves them. */
  key->host = h;
  key->user = nonempty(user, m->options.user);
  key->password = passwd ? passwd : m->options.password;
  if (!key->password)
    key->password = g_getenv("MYSQL_PWD");
  if (!key->password)
    key->password = "";
  key->db = nonempty(db, m->options.db);
  key->unix_socket = unix_socket ? unix_socket : m->options.unix_socket;
  key->port = port ? port : m->options.port;

  const struct st_mysql_options *o = &m->options;
  guint64 nums[] = {key->port,          client_flag,       o->client_flag,
                    o->protocol,        o->compress,       o->secure_auth,
                    o->max_allowed_packet, o->use_ssl,
                    ext ? ext->tls_verify_server_cert : 0, ext ? ext->read_only : 0,
                    ext ? ext->proxy_header_len : 0};
  /* One thread-local address lookup (__tls_get_addr in a shared object): the empty asm
   * keeps the compiler from computing the address again at every use. */
  PsLastKey *last = &last_key;
  __asm__("" : "+r"(last));
  /* The last key's host passed the test below: the same bytes pass it again. */
  if (same_as_last(last, key, nums, sizeof nums, m, ext)) {
    memcpy(key->digest, last->digest, sizeof key->digest);
    return TRUE;
  }
  if (h && strpbrk(h, ":;=") && (strstr(h, "://") || strpbrk(h, ";="))) {
    *why = "connection string or connection handler";
    return FALSE;
  }

  PsKeyBuf kb;
  PsKeyBuf *const s = &kb;
  sip_init(&kb.sip);
  kb.n = 0;
  feed_str(s, key->host);
  feed_str(s, key->user);
  feed_str(s, key->password);
  feed_str(s, key->db);
  feed_str(s, key->unix_socket);
  kb_put(s, nums, sizeof nums);
  const char *optional[] = {
    o->charset_name, o->charset_dir, o->bind_address, o->ssl_key, o->ssl_cert, o->ssl_ca,
    o->ssl_capath, o->ssl_cipher,
    ext ? ext->ssl_crl : NULL, ext ? ext->ssl_crlpath : NULL, ext ? ext->tls_version : NULL,
    ext ? ext->tls_fp : NULL, ext ? ext->tls_fp_list : NULL, ext ? ext->tls_pw : NULL,
    ext ? ext->server_public_key : NULL, ext ? ext->server_public_key_path : NULL,
    ext ? ext->plugin_dir : NULL, ext ? ext->default_auth : NULL,
    ext ? ext->restricted_auth : NULL,
  };
  feed_optional(s, optional, G_N_ELEMENTS(optional));
  if (ext && ext->proxy_header)
    kb_put(s, ext->proxy_header, ext->proxy_header_len);
  /* Init commands, in order (options.init_command is the library's public DYNAMIC_ARRAY). */
  const PsMirrorDynArray *cmds = (const PsMirrorDynArray *)o->init_command;
  guint64 ncmds = cmds ? cmds->elements : 0;
  kb_put(s, &ncmds, sizeof ncmds);
  for (guint64 i = 0; i < ncmds; i++)
    feed_str(s, ((char **)cmds->buffer)[i]);
  /* Connection attributes reach the server at the handshake. */
  g_autofree char **attr_keys = NULL;
  g_autofree char **attr_vals = NULL;
  guint nattrs =
      ext && ext->connect_attrs.records ? ps_conn_user_attributes(m, &attr_keys, &attr_vals) : 0;
  for (guint i = 0; i < nattrs; i++) {
    feed_str(s, attr_keys[i]);
    feed_str(s, attr_vals[i]);
  }
  /* The end of the attributes: no string length can take this value. */
  guint32 end = G_MAXUINT32;
  kb_put(s, &end, sizeof end);
  gboolean whole = kb.sip.len == 0;
  if (whole && last->n == kb.n && memcmp(last->buf, kb.buf, kb.n) == 0) {
    memcpy(key->digest, last->digest, sizeof key->digest);
    return TRUE;
  }
  sip_feed(&kb.sip, kb.buf, kb.n);
  sip_final(&kb.sip, key->digest);
  if (whole) {
    last->n = kb.n;
    memcpy(last->buf, kb.buf, kb.n);
    memcpy(last->digest, key->digest, sizeof last->digest);
  }
  return TRUE;
}

void
ps_conn_key_server(const PsConnKey *key, char *buf, gsize len)
{
  if (key->unix_socket && (!key->host || g_str_equal(key->host, "localhost")))
    g_snprintf(buf, len, "localhost:%s", key->unix_socket);
  else
    g_snprintf(buf, len, "%s:%u", key->host ? key->host : "localhost",
               key->port ? key->port : 3306);
}

void
ps_conn_key_label(const PsConnKey *key, char *buf, gsize len)
{
  char server[512];
  ps_conn_key_server(key, server, sizeof server);
  g_snprintf(buf, len, "%s@%s/%s", key->user ? key->user : "", server, key->db ? key->db : "");
}

gboolean
ps_conn_same_identity(MYSQL *pooled, const PsConnKey *key)
{
  /* The struct keeps the user and password it authenticated with (mysql_close_memory frees
   * them): an exact comparison, whatever the digest says. */
  const char *user = key->user ? key->user : "";
  return pooled->user && pooled->passwd && key->password && strcmp(pooled->user, user) == 0 &&
         strcmp(pooled->passwd, key->password) == 0;
}

static gboolean run_and_drain(MYSQL *m, const char *sql);

/* A command of a reset pipeline. */
typedef struct {
  enum enum_server_command cmd;
  const char *arg;
} PsCmd;

static gboolean send_pipeline(MYSQL *m, const PsCmd *cmds, int n, unsigned int timeout_s);

/* SET ROLE for the session's original role (a backquoted identifier). */
static char *
role_statement(const char *role)
{
  if (!role)
    return g_strdup("SET ROLE NONE");
  GString *sql = g_string_new("SET ROLE `");
  for (const char *c = role; *c; c++) {
    if (*c == '`')
      g_string_append_c(sql, '`');
    g_string_append_c(sql, *c);
  }
  g_string_append_c(sql, '`');
  return g_string_free(sql, FALSE);
}

/* CURRENT_ROLE() and @@wait_timeout of the session in m, read once per pool; the handle's
 * visible results are restored after. */
static char *
query_role(MYSQL *m, gboolean *track, unsigned long *wait_timeout_s, gboolean *init_connect,
           gboolean *ok)
{
  my_ulonglong affected = m->affected_rows, insert_id = m->insert_id;
  unsigned int warnings = m->warning_count, status = m->server_status;
  char *role = NULL;
  static const char sql[] =
    "SELECT CURRENT_ROLE(), @@session.wait_timeout, @@global.init_connect <> ''";
  *ok = FALSE;
  /* With tracking, both statements go in one write; the SET's reply is read first. A
   * server that refuses it (no session tracking: older than MariaDB 10.2) leaves the pool
   * without it: every return then gets the full reset. */
  const PsCmd cmds[] = {{COM_QUERY, PS_SESSION_TRACKING_SQL}, {COM_QUERY, sql}};
  gboolean sent;
  if (*track) {
    sent = send_pipeline(m, cmds, 2, m->options.write_timeout);
    if (sent && m->methods->db_read_query_result(m) != 0) {
      if (m->net.last_errno >= CR_MIN_ERROR)
        sent = FALSE; /* the connection, not the statement */
      else
        *track = FALSE;
    }
    sent = sent && m->methods->db_read_query_result(m) == 0;
  } else {
    sent = ps_real.real_query(m, sql, sizeof sql - 1) == 0;
  }
  if (sent) {
    MYSQL_RES *res = ps_real.store_result(m);
    if (res) {
      *ok = TRUE;
      MYSQL_ROW row = ps_real.fetch_row(res);
      if (row && row[0])
        role = g_strdup(row[0]);
      if (row && row[1])
        *wait_timeout_s = strtoul(row[1], NULL, 10);
      *init_connect = !row || !row[2] || strcmp(row[2], "0") != 0;
      ps_real.free_result(res);
    }
  }
  m->affected_rows = affected;
  m->insert_id = insert_id;
  m->warning_count = warnings;
  m->server_status = status;
  if (*ok) {
    m->net.last_errno = 0;
    m->net.last_error[0] = '\0';
    strcpy(m->net.sqlstate, "00000");
  }
  return role;
}

gboolean
ps_conn_track_session(MYSQL *m)
{
  my_ulonglong affected = m->affected_rows, insert_id = m->insert_id;
  unsigned int warnings = m->warning_count, status = m->server_status;
  gboolean ok = run_and_drain(m, PS_SESSION_TRACKING_SQL);
  m->affected_rows = affected;
  m->insert_id = insert_id;
  m->warning_count = warnings;
  m->server_status = status;
  if (ok) {
    m->net.last_errno = 0;
    m->net.last_error[0] = '\0';
    strcpy(m->net.sqlstate, "00000");
  }
  return ok;
}

PsConnProfile *
ps_conn_profile_new(MYSQL *m, const char *requested_db, gboolean track)
{
  /* Read before the pool's own query below overwrites them. */
  PsConnFresh fresh = {
      .affected_rows = m->affected_rows,
      .insert_id = m->insert_id,
      .field_count = m->field_count,
      .warning_count = m->warning_count,
      .has_info = m->info != NULL,
  };
  unsigned long wait_timeout_s = 0;
  gboolean ok;
  unsigned int server_status = m->server_status;
  gboolean init_connect = TRUE;
  char *role = query_role(m, &track, &wait_timeout_s, &init_connect, &ok);
  if (!ok) {
    /* The connection failed under us: nothing learnt can be trusted for the whole pool. */
    g_free(role);
    return NULL;
  }
  PsConnProfile *p = g_new0(PsConnProfile, 1);
  p->db = g_strdup(requested_db);
  p->user = g_strdup(m->user);
  p->role = role;
  p->wait_timeout_s = wait_timeout_s;
  p->role_sql = role_statement(p->role);
  p->charset = m->charset;
  p->init_commands = ps_conn_init_commands(m);
  p->fresh = fresh;
  p->track = track;
  p->server_status = server_status;
  p->init_connect = init_connect;
  return p;
}

void
ps_conn_profile_free(gpointer profile)
{
  PsConnProfile *p = profile;
  if (!p)
    return;
  g_free(p->db);
  g_free(p->user);
  g_free(p->role);
  g_free(p->role_sql);
  g_strfreev(p->init_commands);
  ps_conn_template_free(p->opener);
  g_free(p);
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

/* ---- return, reset, liveness ---- */

gboolean
ps_conn_returnable(MYSQL *m, const char **why)
{
  if (!m->net.pvio || !m->net.buff) {
    *why = "connection lost";
    return FALSE;
  }
  if (m->status != MYSQL_STATUS_READY) {
    *why = "unread result set";
    return FALSE;
  }
  if (m->server_status & SERVER_MORE_RESULTS_EXIST) {
    *why = "more results pending";
    return FALSE;
  }
  unsigned int e = m->net.last_errno;
  if ((e >= CR_MIN_ERROR && e <= CR_MAX_ERROR) || e >= CER_MIN_ERROR) {
    *why = "client-side error on the connection";
    return FALSE;
  }
  return TRUE;
}

static gboolean
run_and_drain(MYSQL *m, const char *sql)
{
  if (ps_real.real_query(m, sql, (unsigned long)strlen(sql)))
    return FALSE;
  int more;
  do {
    MYSQL_RES *res = ps_real.store_result(m);
    if (res)
      ps_real.free_result(res);
    else if (m->net.last_errno)
      return FALSE;
    more = ps_real.next_result(m);
    if (more > 0)
      return FALSE;
  } while (more == 0);
  return TRUE;
}

static gboolean
change_user(MYSQL *m, const PsConnProfile *profile)
{
  /* mysql_change_user strdup()s its arguments before freeing the struct's own copies. On
   * the application's handle it sends the key's charset, auth options and attributes. */
  if (ps_real.change_user(m, m->user, m->passwd, profile->db))
    return FALSE;
  if (profile->charset && m->charset != profile->charset &&
      ps_real.set_character_set(m, profile->charset->csname))
    return FALSE;
  return TRUE;
}

/* Ends an open transaction without committing it. An XA transaction that is only started
 * or ended can be dropped by a session reset; a prepared one belongs to its transaction
 * manager and must survive: the caller then closes the connection, as mysql_close would. */
static gboolean
end_transaction(MYSQL *m, gboolean reset_follows, const char **why)
{
  /* Whatever completion_type the borrower set: CHAIN would open the next borrower's
   * transaction (its autocommitted writes then lost at its close), RELEASE would end the
   * session. */
  if (run_and_drain(m, "ROLLBACK AND NO CHAIN NO RELEASE"))
    return TRUE;
  if (m->net.last_errno == ER_XAER_RMFAIL && reset_follows &&
      (strstr(m->net.last_error, "ACTIVE") || strstr(m->net.last_error, "IDLE")))
    return TRUE;
  *why = m->net.last_errno == ER_XAER_RMFAIL ? "an XA transaction is prepared or open"
                                              : "ROLLBACK failed";
  return FALSE;
}

static gboolean
restore_role(MYSQL *m, const PsConnProfile *profile)
{
  /* Neither COM_RESET_CONNECTION nor COM_CHANGE_USER drops a SET ROLE (MariaDB 10.11). */
  return run_and_drain(m, profile->role_sql);
}

/* Applies a timeout (seconds, 0 = none) to the socket unless it already has it: each
 * change is a setsockopt(). pvio_socket_set_timeout stores it as `timeout > 0 ? timeout *
 * 1000 : -1` milliseconds in pvio->timeout[type] (plugins/pvio/pvio_socket.c). */
static void
set_socket_timeout(MARIADB_PVIO *pvio, enum enum_pvio_timeout type, unsigned int seconds)
{
  gint64 want = seconds > 0 ? (gint64)seconds * 1000 : -1;
  if ((gint64)pvio->timeout[type] != want)
    pvio->methods->set_timeout(pvio, type, (int)seconds);
}

static void
bound_round_trips(MYSQL *m, unsigned int timeout_s)
{
  MARIADB_PVIO *pvio = m->net.pvio;
  if (pvio && pvio->methods && pvio->methods->set_timeout) {
    set_socket_timeout(pvio, PVIO_READ_TIMEOUT, timeout_s);
    set_socket_timeout(pvio, PVIO_WRITE_TIMEOUT, timeout_s);
  }
  /* TLS reads take their timeout from the options (ma_tls_read in secure/openssl.c). */
  m->options.read_timeout = timeout_s;
  m->options.write_timeout = timeout_s;
  /* A failed reset must fail, not reconnect behind the pool's back. */
  m->options.reconnect = 0;
}

/* Sends one command without reading its reply (mthd_my_send_cmd with skip_check, as
 * mysql_send_query does): replies are read in order later, the protocol allows it. */
static gboolean
send_only(MYSQL *m, enum enum_server_command cmd, const char *arg)
{
  return m->methods->db_command(m, cmd, arg, arg ? strlen(arg) : 0, 1, NULL) == 0;
}

gboolean
ps_conn_send_query(MYSQL *m, const char *query)
{
  return send_only(m, COM_QUERY, query);
}

/* Sends the commands back to back without reading a reply: on a plain socket in one
 * send() of the packets the library would write one by one (a syscall and a server wake-up
 * instead of several); over TLS, compression or a connection handler, through the library,
 * one command at a time. What mthd_my_send_cmd does around a send is done here too. */
static gboolean
send_pipeline(MYSQL *m, const PsCmd *cmds, int n, unsigned int timeout_s)
{
  MARIADB_PVIO *pvio = m->net.pvio;
  my_socket fd = pvio ? ps_real.get_socket(m) : INVALID_SOCKET;
  gsize total = 0;
  for (int i = 0; i < n; i++)
    total += 5 + strlen(cmds[i].arg);
  if (!pvio || pvio->ctls || m->net.compress || (EXT(m) && EXT(m)->conn_hdlr) ||
      fd == INVALID_SOCKET || total > 16384 || m->status != MYSQL_STATUS_READY ||
      (m->server_status & SERVER_MORE_RESULTS_EXIST)) {
    for (int i = 0; i < n; i++)
      if (!send_only(m, cmds[i].cmd, cmds[i].arg))
        return FALSE;
    return TRUE;
  }
  /* A reset is a few dozen bytes: no allocation on the way back to the pool. */
  unsigned char small[1024];
  g_autofree unsigned char *big = total > sizeof small ? g_malloc(total) : NULL;
  unsigned char *buf = big ? big : small;
  gsize at = 0;
  for (int i = 0; i < n; i++) {
    gsize len = 1 + strlen(cmds[i].arg); /* < 16384: one packet each, sequence number 0 */
    buf[at] = (unsigned char)(len & 0xff);
    buf[at + 1] = (unsigned char)((len >> 8) & 0xff);
    buf[at + 2] = (unsigned char)((len >> 16) & 0xff);
    buf[at + 3] = 0;
    buf[at + 4] = (unsigned char)cmds[i].cmd;
    memcpy(buf + at + 5, cmds[i].arg, len - 1);
    at += 4 + len;
  }
  m->net.last_errno = 0;
  m->net.last_error[0] = '\0';
  strcpy(m->net.sqlstate, "00000");
  m->info = NULL;
  m->affected_rows = ~(my_ulonglong)0;
  int saved = errno;
  gsize off = 0;
  while (off < total) {
    ssize_t w = send(fd, buf + off, total - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      off += (gsize)w;
      continue;
    }
    if (w < 0 && errno == EINTR)
      continue;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
        poll(&p, 1, timeout_s ? (int)MIN(timeout_s, 3600) * 1000 : -1) == 1)
      continue;
    errno = saved;
    ps_conn_set_error(m, CR_SERVER_GONE_ERROR, "HY000", "MySQL server has gone away");
    return FALSE;
  }
  errno = saved;
  /* As after the library's own write of a one-packet command. */
  m->net.pkt_nr = 1;
  m->net.compress_pkt_nr = 1;
  return TRUE;
}

/* Reads one pending reply, consuming any result sets (init commands may SELECT). */
static gboolean
read_reply(MYSQL *m)
{
  if (m->methods->db_read_query_result(m))
    return FALSE;
  for (;;) {
    if (m->field_count) {
      MYSQL_RES *res = ps_real.store_result(m);
      if (!res)
        return FALSE;
      ps_real.free_result(res);
    }
    if (!(m->server_status & SERVER_MORE_RESULTS_EXIST))
      return TRUE;
    if (m->methods->db_read_query_result(m))
      return FALSE;
  }
}

/* How many commands reset_commands writes (at most). */
static guint
reset_commands_len(const PsConnProfile *profile, guint nextra)
{
  return 4 + (profile->init_commands ? g_strv_length(profile->init_commands) : 0) + nextra;
}

/* The fast reset's commands into cmds (reset_commands_len of them at most):
 * COM_RESET_CONNECTION, COM_INIT_DB of `db` (unless NULL), SET ROLE, the init commands,
 * session tracking on again (auto mode: the reset turned it off), then extra[0..nextra).
 * Returns how many. */
static int
reset_commands(PsCmd *cmds, const PsConnProfile *profile, const char *db,
               const char *const *extra, guint nextra)
{
  int k = 0;
  cmds[k++] = (PsCmd){COM_RESET_CONNECTION, ""};
  if (db)
    cmds[k++] = (PsCmd){COM_INIT_DB, db};
  cmds[k++] = (PsCmd){COM_QUERY, profile->role_sql};
  for (char **c = profile->init_commands; c && *c; c++)
    cmds[k++] = (PsCmd){COM_QUERY, *c};
  if (profile->track)
    cmds[k++] = (PsCmd){COM_QUERY, PS_SESSION_TRACKING_SQL};
  for (guint i = 0; i < nextra; i++)
    cmds[k++] = (PsCmd){COM_QUERY, extra[i]};
  return k;
}

/* PsWatchRestore: a borrower's first command was not the next statement run ahead for it.
 * COM_RESET_CONNECTION, the role, the init commands, then the statements the borrower did
 * send (answered ahead), in one write, every reply read: the session is then what the
 * borrower's own commands would have made of the reset one. Within the handle's own
 * timeouts: this runs inside one of its commands. */
static gboolean
restore_session(MYSQL *m, gpointer data, const char *const *replay, guint nreplay)
{
  const PsConnProfile *profile = data;
  PsCmd *cmds = g_newa(PsCmd, reset_commands_len(profile, nreplay));
  int n = reset_commands(cmds, profile, NULL, replay, nreplay);
  if (!send_pipeline(m, cmds, n, m->options.write_timeout))
    return FALSE;
  for (int i = 0; i < n; i++)
    if (!read_reply(m))
      return FALSE;
  return TRUE;
}
gboolean
ps_conn_run_pipeline(MYSQL *m, const char *query, char **value, const char *db,
                     const char *const *stmts, guint n)
{
  PsCmd *cmds = g_newa(PsCmd, n + 2);
  int k = 0;
  if (query)
    cmds[k++] = (PsCmd){COM_QUERY, query};
  if (db)
    cmds[k++] = (PsCmd){COM_INIT_DB, db};
  for (guint i = 0; i < n; i++)
    cmds[k++] = (PsCmd){COM_QUERY, stmts[i]};
  if (k && !send_pipeline(m, cmds, k, m->options.write_timeout))
    return FALSE;
  int i = 0;
  if (query) {
    i = 1;
    if (m->methods->db_read_query_result(m) || !m->field_count)
      return FALSE;
    MYSQL_RES *res = ps_real.store_result(m);
    MYSQL_ROW row = res ? ps_real.fetch_row(res) : NULL;
    gboolean ok = row && row[0];
    if (ok)
      *value = g_strdup(row[0]);
    if (res)
      ps_real.free_result(res);
    if (!ok)
      return FALSE;
  }
  for (; i < k; i++)
    if (!read_reply(m))
      return FALSE;
  return TRUE;
}

static void present_returned(MYSQL *m, const PsConnProfile *profile);
static int reset_begin(MYSQL *m, PsResetMode mode, PsConnProfile *profile, PsWatch *watch,
                       guint dirty, unsigned int timeout_s, PsPlan *plan, const char **why);

int
ps_conn_reset_begin(MYSQL *m, PsResetMode mode, PsConnProfile *profile, PsWatch *watch,
                    unsigned int timeout_s, PsPlan *plan, const char **why)
{
  /* Auto, the common return: the borrower changed nothing, kept nothing, left no
   * transaction. What reset_begin and reset_light conclude then, without their steps. */
  if (mode == PS_RESET_AUTO && !m->stmts && !(m->server_status & SERVER_STATUS_IN_TRANS) &&
      !__atomic_load_n(&profile->no_reset_command, __ATOMIC_RELAXED) &&
      ps_watch_take_untouched(m, watch)) {
    present_returned(m, profile);
    *plan = PS_PLAN_NOTHING;
    return 0;
  }
  guint dirty = ps_watch_take(m, watch);
  *plan = mode == PS_RESET_ALWAYS || mode == PS_RESET_AUTO ? PS_PLAN_FULL : PS_PLAN_MODE;
  int pending = reset_begin(m, mode, profile, watch, dirty, timeout_s, plan, why);
  /* The reset's own commands are not the next borrower's doing (none were sent when auto
   * found nothing to undo: the take above left nothing to clear). */
  if (*plan != PS_PLAN_NOTHING && *plan != PS_PLAN_KEEP)
    ps_watch_take(m, watch);
  return pending;
}

/* What a return without a reset leaves on the handle for the next borrower (auto). */
static void
present_returned(MYSQL *m, const PsConnProfile *profile)
{
  /* The next borrower's client side starts at the handshake charset; a kept SET NAMES
   * switches it again when that borrower sends it (the kept reply carries the charset). */
  m->charset = profile->charset;
  /* Drivers read autocommit from the status flags (MySQLdb's get_autocommit decides whether
   * to send SET autocommit): the next borrower must see a fresh session's, not the last
   * reply's (a kept SET autocommit=0 is answered with its own status when sent again). */
  m->server_status = profile->server_status;
  m->status = MYSQL_STATUS_READY;
  m->affected_rows = ~(my_ulonglong)0;
  m->insert_id = 0;
  m->warning_count = 0;
  m->info = NULL;
}

/* POOLSHIM_RESET=auto: the session is the fresh one, plus the borrow's leading session setup
 * (kept for the next borrower), plus at most an open transaction. Nothing is sent, or
 * ROLLBACK alone, its reply read at the next lend like a reset's. -1 when it cannot be sent. */
static int
reset_light(MYSQL *m, PsConnProfile *profile, PsWatch *watch, unsigned int timeout_s,
            PsPlan *plan, const char **why)
{
  /* Session variables set after the leading setup go back to their fresh values, the global
   * ones (`= DEFAULT`), in one statement. autocommit back on would commit an open
   * transaction: ROLLBACK first whenever it is restored. */
  static const char *const var_sets[PS_VAR_COUNT] = {
    "autocommit=DEFAULT",   "sql_mode=DEFAULT",         "time_zone=DEFAULT",
    "tx_isolation=DEFAULT", "tx_read_only=DEFAULT",     "sql_auto_is_null=DEFAULT",
    "last_insert_id=0"};
  guint vars = ps_watch_restore_vars(watch);
  gboolean in_trans = (m->server_status & SERVER_STATUS_IN_TRANS) != 0 ||
                      ps_watch_maybe_in_trans(watch) || (vars & PS_VAR_AUTOCOMMIT);
  char set[256];
  if (vars)
    g_strlcpy(set, "SET SESSION ", sizeof set); /* not 256 bytes zeroed at every return */
  for (guint i = 0; vars && i < PS_VAR_COUNT; i++) {
    if (vars & (1u << i)) {
      if (set[strlen(set) - 1] != ' ')
        g_strlcat(set, ", ", sizeof set);
      g_strlcat(set, var_sets[i], sizeof set);
    }
  }
  PsCmd cmds[2];
  int n = 0;
  if (in_trans)
    cmds[n++] = (PsCmd){COM_QUERY, "ROLLBACK"};
  if (vars)
    cmds[n++] = (PsCmd){COM_QUERY, set};
  /* Sent before the watch keeps anything: over TLS the send goes through its command hook,
   * which must not take them for the next borrower's divergent first command. */
  /* Nothing to send, nothing to bound: the socket keeps the borrower's timeouts, which the
   * next lend sets anyway (ps_conn_adopt). */
  if (n)
    bound_round_trips(m, timeout_s);
  if (n && !send_pipeline(m, cmds, n, timeout_s)) {
    *why = "sending ROLLBACK or restoring session variables failed";
    return -1;
  }
  ps_watch_keep(watch, restore_session, profile);
  present_returned(m, profile);
  *plan = vars       ? PS_PLAN_RESTORE
          : in_trans ? PS_PLAN_ROLLBACK
          : ps_watch_kept(watch) ? PS_PLAN_KEEP
                                 : PS_PLAN_NOTHING;
  return n;
}

static int
reset_begin(MYSQL *m, PsResetMode mode, PsConnProfile *profile, PsWatch *watch, guint dirty,
            unsigned int timeout_s, PsPlan *plan, const char **why)
{
  if ((dirty & PS_DIRTY_UNPOOLABLE) && mode != PS_RESET_NONE) {
    *why = "the session holds state no reset clears (SET profiling, a server option set with "
           "mysql_set_server_option) or went unwatched (an automatic reconnect)";
    return -1;
  }
  /* Auto: every command was classified and every reply looked at (watch.c, session.c). Not
   * when replies of statements run ahead are still unread (the borrower sent fewer: the
   * session holds statements it did not send), nor with statement handles, whose server
   * side only a reset or their close ends. */
  /* Variables set after the leading setup are restored to the global values only where
   * those are a fresh session's: no init command or init_connect sets them, and the
   * leading setup (kept for the next borrower) does not set the same ones. */
  guint vars = ps_watch_restore_vars(watch);
  gboolean vars_ok = !vars || (!(profile->init_commands && profile->init_commands[0]) &&
                               !profile->init_connect &&
                               !(vars & ps_watch_setup_vars(watch)));
  if (mode == PS_RESET_AUTO && ps_watch_auto(watch) && !(dirty & (PS_DIRTY_FULL | PS_DIRTY_DB)) &&
      vars_ok && !ps_watch_ahead(watch) && !m->stmts &&
      !__atomic_load_n(&profile->no_reset_command, __ATOMIC_RELAXED))
    return reset_light(m, profile, watch, timeout_s, plan, why);
  /* `none` with no transaction and nothing run ahead sends nothing: no bounds to set. */
  if (mode != PS_RESET_NONE || ps_watch_ahead(watch) || (m->server_status & SERVER_STATUS_IN_TRANS))
    bound_round_trips(m, timeout_s);
  /* A borrower that sent fewer commands leaves replies of statements run ahead for it. */
  const char *const *learnt = NULL;
  guint nlearnt = ps_watch_learnt(watch, &learnt);
  if (!ps_watch_settle(m, watch)) {
    *why = "reading the reply of a statement run ahead failed";
    return -1;
  }
  gboolean in_trans = (m->server_status & SERVER_STATUS_IN_TRANS) != 0;
  if (mode == PS_RESET_NONE || mode == PS_RESET_ROLLBACK) {
    /* These modes keep the session: server-side statements would outlive their handles. */
    if (m->stmts) {
      *why = "prepared statements are open and the reset mode keeps them";
      return -1;
    }
    if ((in_trans || mode == PS_RESET_ROLLBACK) && !end_transaction(m, FALSE, why))
      return -1;
    if (mode == PS_RESET_NONE)
      return 0;
    if (!run_and_drain(m, "UNLOCK TABLES") || !run_and_drain(m, "DO RELEASE_ALL_LOCKS()")) {
      *why = "releasing locks failed";
      return -1;
    }
    if (profile->db && (!m->db || strcmp(m->db, profile->db) != 0) &&
        ps_real.select_db(m, profile->db)) {
      *why = "re-selecting the database failed";
      return -1;
    }
    if (!restore_role(m, profile)) {
      *why = "restoring the role failed";
      return -1;
    }
    return 0;
  }
  /* Rare: only a connection returned inside a transaction pays this round trip, to learn
   * whether a prepared XA transaction must be left to its transaction manager. */
  if (in_trans && !end_transaction(m, TRUE, why))
    return -1;
  /* Statement handles are invalidated exactly as mysql_close invalidates them. */
  if (m->methods && m->methods->invalidate_stmts)
    m->methods->invalidate_stmts(m, "mysql_close()");
  if ((mode == PS_RESET_ALWAYS || mode == PS_RESET_AUTO) && profile->db &&
      !__atomic_load_n(&profile->no_reset_command, __ATOMIC_RELAXED)) {
    /* The fast path: COM_RESET_CONNECTION, SET ROLE and the init commands go out
     * together now; their replies are read when the connection is next lent, by which time
     * they have usually arrived. mysql_close() does not wait for the server. The reset
     * keeps the current database: COM_INIT_DB goes too when the borrower may have changed
     * it (watch.c), a command the server would otherwise run for nothing on every return.
     * The role too survives the reset, and a stored function can change it unseen: it is
     * always restored. */
    const char *db = (dirty & PS_DIRTY_DB) || g_strcmp0(m->db, profile->db) != 0
                       ? profile->db : NULL;
    /* The borrower began with session setup (SET NAMES, SET autocommit, ...): run it
     * ahead for the next one, whose identical statements then cost no round trip
     * (watch.h). Not with compression or a connection handler plugin, whose sending the
     * watch cannot stand in for. */
    gboolean ahead = nlearnt && !m->net.compress && !(EXT(m) && EXT(m)->conn_hdlr);
    guint nahead = ahead ? nlearnt : 0;
    PsCmd *cmds = g_newa(PsCmd, reset_commands_len(profile, nahead));
    int n = reset_commands(cmds, profile, db, learnt, nahead);
    int pending = n - (int)nahead;
    if (!send_pipeline(m, cmds, n, timeout_s)) {
      *why = "sending the session reset failed";
      return -1;
    }
    if (ahead)
      ps_watch_sent_ahead(watch, restore_session, profile);
    return pending;
  }
  /* COM_RESET_CONNECTION keeps the current database, so a pool without a default database
   * cannot undo a USE with it: COM_CHANGE_USER resets that too (and serves servers older
   * than MariaDB 10.2.4, which lack COM_RESET_CONNECTION). */
  if (!change_user(m, profile)) {
    *why = "COM_CHANGE_USER failed";
    return -1;
  }
  if (!restore_role(m, profile)) {
    *why = "restoring the role failed";
    return -1;
  }
  for (char **c = profile->init_commands; c && *c; c++) {
    if (!run_and_drain(m, *c)) {
      *why = "re-running an init command failed";
      return -1;
    }
  }
  if (profile->track && !run_and_drain(m, PS_SESSION_TRACKING_SQL)) {
    *why = "turning session tracking on failed";
    return -1;
  }
  return 0;
}

gboolean
ps_conn_reset_end(MYSQL *m, int pending, PsPlan plan, PsConnProfile *profile,
                  unsigned int timeout_s, const char **why)
{
  if (pending) {
    /* The borrower's connect deadline may be shorter than the reset timeout. */
    MARIADB_PVIO *pvio = m->net.pvio;
    if (pvio && pvio->methods && pvio->methods->set_timeout)
      pvio->methods->set_timeout(pvio, PVIO_READ_TIMEOUT, (int)timeout_s);
    m->options.read_timeout = timeout_s;
  }
  for (int i = 0; i < pending; i++) {
    if (!read_reply(m)) {
      if (plan == PS_PLAN_ROLLBACK || plan == PS_PLAN_RESTORE) {
        *why = "ROLLBACK or restoring session variables failed";
        return FALSE;
      }
      if (i == 0 && m->net.last_errno == ER_UNKNOWN_COM_ERROR) {
        /* A server without COM_RESET_CONNECTION: COM_CHANGE_USER from now on. */
        __atomic_store_n(&profile->no_reset_command, TRUE, __ATOMIC_RELAXED);
      }
      *why = i == 0 ? "COM_RESET_CONNECTION failed" : "restoring the session failed";
      return FALSE;
    }
  }
  if (pending && plan != PS_PLAN_ROLLBACK && plan != PS_PLAN_RESTORE) {
    /* What mysql_reset_connection and mysql_select_db do after their replies. The server is
     * back at the handshake charset; the client side keeps whatever SET NAMES made it. */
    m->charset = profile->charset;
    if (g_strcmp0(m->db, profile->db) != 0) {
      free(m->db);
      m->db = strdup(profile->db);
    }
  }
  if (pending && profile->track)
    m->server_status = profile->server_status; /* not the tracking SET's state-change flag */
  m->status = MYSQL_STATUS_READY;
  m->affected_rows = ~(my_ulonglong)0;
  m->insert_id = 0;
  m->warning_count = 0;
  m->info = NULL;
  return TRUE;
}

PsProof
ps_conn_reauthenticate(MYSQL *m, PsConnProfile *profile, PsWatch *watch,
                       unsigned int timeout_s, unsigned int *errnum)
{
  /* The reset bounds its round trips on the handle's options: they are the application's. */
  unsigned int rt = m->options.read_timeout, wt = m->options.write_timeout;
  my_bool reconnect = m->options.reconnect;
  const char *why = NULL;
  PsPlan plan = PS_PLAN_MODE;
  int r = reset_begin(m, PS_RESET_CHANGE_USER, profile, watch, ps_watch_take(m, watch),
                      timeout_s, &plan, &why);
  ps_watch_take(m, watch); /* the proof's commands are not the borrower's doing */
  m->options.read_timeout = rt;
  m->options.write_timeout = wt;
  m->options.reconnect = reconnect;
  if (r == 0 && profile->track)
    m->server_status = profile->server_status; /* not the tracking SET's state-change flag */
  if (r == 0)
    return PS_PROOF_OK;
  *errnum = m->net.last_errno;
  return *errnum > 0 && *errnum < CR_MIN_ERROR ? PS_PROOF_REFUSED : PS_PROOF_LOST;
}

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
    set_socket_timeout(pvio, PVIO_READ_TIMEOUT, m->options.read_timeout);
    set_socket_timeout(pvio, PVIO_WRITE_TIMEOUT, m->options.write_timeout);
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
    set_socket_timeout(pvio, PVIO_WRITE_TIMEOUT, m->options.write_timeout);
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
