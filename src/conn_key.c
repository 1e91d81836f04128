/* conn_key.c: the pool key of a connect, from its arguments and the handle's options as
 * Connector/C 3.3 stores them (mirror.h), and the identity check before a pooled connection
 * is lent. Part of the conn module (conn.h): reads library internals, never changes them. */
#include "conn.h"

#include <string.h>

#include "mirror.h"

/* The per-process key of the pool-key hash (see ps_conn_key). */
static guint64 sip_k0, sip_k1;

void
ps_conn_key_seed(void)
{
  sip_k0 = ((guint64)g_random_int() << 32) | g_random_int();
  sip_k1 = ((guint64)g_random_int() << 32) | g_random_int();
}

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
