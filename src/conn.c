/* conn.c: the only file that knows Connector/C 3.3's internals (struct layouts, back-pointers,
 * what mysql_real_connect and mysql_close do). Each trick names the library code it mirrors.
 * No pool policy and no locking here: callers decide when; this file knows how. */
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
/* ma_pvio.h declares pvio->ctls as MARIADB_TLS only when told TLS exists; Debian's
 * library is built with OpenSSL. */
#define HAVE_TLS 1
typedef unsigned char uchar;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <ma_pvio.h>
#pragma GCC diagnostic pop
#include <mysqld_error.h>
#include <errmsg.h>
#include <poll.h>
#include <string.h>

#include "log.h"

#ifndef INVALID_SOCKET
#define INVALID_SOCKET (-1)
#endif

PsClientApi ps_real;

/* Mirror of the head of Connector/C 3.3's `struct st_mysql_options_extension`
 * (include/ma_common.h), up to the fields we read. ps_conn_library_ok() verifies the
 * offsets against the library's own accessors before anything relies on them. */
typedef struct {
  char *buffer;
  unsigned int elements, max_element, alloc_increment, size_of_element;
} PsMirrorDynArray;
typedef struct {
  unsigned int key_offset, key_length, records, blength, current_record, flags;
  PsMirrorDynArray array;
  void *get_key, *free, *calc_hashnr;
} PsMirrorHashtbl;
typedef struct {
  char *plugin_dir, *default_auth, *ssl_crl, *ssl_crlpath, *server_public_key_path;
  void *async_context;
  PsMirrorHashtbl connect_attrs;
  size_t connect_attrs_len;
  void *report_progress;
  void *db_driver;
  char *tls_fp, *tls_fp_list, *tls_pw;
  my_bool multi_command;
  char *url;
  unsigned int tls_cipher_strength;
  char *tls_version;
  my_bool read_only;
  char *connection_handler;
  void *set_option;
  PsMirrorHashtbl userdata;
  char *server_public_key, *proxy_header;
  size_t proxy_header_len;
  void *io_wait;
  my_bool skip_read_response;
  char *restricted_auth, *rpl_host;
  unsigned short rpl_port;
  void (*status_callback)(void *ptr, enum enum_mariadb_status_info type, ...);
  void *status_data;
  my_bool tls_verify_server_cert;
} PsMirrorOptionsExt;

#define OPT_EXT(m) ((PsMirrorOptionsExt *)(m)->options.extension)

/* Mirror of `struct st_mariadb_extension` (include/ma_common.h), also verified at start. */
typedef struct {
  void *list, *current;
} PsMirrorSessionState;
typedef struct {
  void *conn_hdlr;
  PsMirrorSessionState session_state[SESSION_TRACK_TYPES];
  unsigned long mariadb_client_flag, mariadb_server_capabilities;
  my_bool auto_local_infile; /* per handle: MYSQL_OPT_LOCAL_INFILE's mode, not per session */
} PsMirrorExtension;

#define EXT(m) ((PsMirrorExtension *)(m)->extension)

/* A per-process salt so that the password digest in memory is useless elsewhere. */
static guint8 key_salt[16];

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
  /* mysql_get_client_version() is the Connector/C package version: 3.3.x is verified. */
  if (v < 30300 || v >= 30400) {
    *why = "unsupported client library version (poolshim is verified with Connector/C 3.3)";
    return FALSE;
  }
  for (gsize i = 0; i < sizeof key_salt; i += 4) {
    guint32 r = g_random_int();
    memcpy(key_salt + i, &r, 4);
  }
  return probe_layout(why);
}

/* ---- keys ---- */

static void
add_bytes(GChecksum *cs, guint8 tag, const void *p, gsize len)
{
  guint64 l = len;
  g_checksum_update(cs, &tag, 1);
  g_checksum_update(cs, (const guchar *)&l, sizeof l);
  g_checksum_update(cs, p, len);
}

static void
add_str(GChecksum *cs, guint8 tag, const char *s)
{
  if (!s) {
    guint8 none[2] = {tag, 0xff};
    g_checksum_update(cs, none, 2); /* NULL differs from "" */
    return;
  }
  add_bytes(cs, tag, s, strlen(s));
}

static void
add_u64(GChecksum *cs, guint8 tag, guint64 v)
{
  add_bytes(cs, tag, &v, sizeof v);
}

static const char *
opt_str(MYSQL *m, enum mysql_option opt)
{
  char *s = NULL;
  if (ps_real.get_optionv(m, opt, &s))
    return NULL;
  return s;
}

static my_bool
opt_bool(MYSQL *m, enum mysql_option opt)
{
  my_bool b = 0;
  ps_real.get_optionv(m, opt, &b);
  return b;
}

static const char *
nonempty(const char *a, const char *b)
{
  return a && a[0] ? a : b;
}

gboolean
ps_conn_key(MYSQL *m, const char *host, const char *user, const char *passwd, const char *db,
            unsigned int port, const char *unix_socket, unsigned long client_flag,
            PsConnKey *key, const char **why)
{
  memset(key, 0, sizeof *key);
  if (m->net.pvio) {
    *why = "handle already connected";
    return FALSE;
  }
  const char *h = nonempty(host, m->options.host);
  if (h && (strstr(h, "://") || strchr(h, ';') || strchr(h, '='))) {
    *why = "connection string or connection handler";
    return FALSE;
  }
  if (opt_str(m, MARIADB_OPT_CONNECTION_HANDLER)) {
    *why = "connection handler plugin";
    return FALSE;
  }
  if (m->options.my_cnf_file || m->options.my_cnf_group) {
    *why = "option file (MYSQL_READ_DEFAULT_FILE/GROUP) applied at connect";
    return FALSE;
  }
  if (opt_bool(m, MYSQL_OPT_NONBLOCK)) {
    *why = "non-blocking API";
    return FALSE;
  }
  /* Defaults resolved as mthd_my_real_connect resolves them. */
  const char *u = nonempty(user, m->options.user);
  const char *pw = passwd ? passwd : m->options.password;
  if (!pw)
    pw = g_getenv("MYSQL_PWD");
  if (!pw)
    pw = "";
  const char *d = nonempty(db, m->options.db);
  const char *sock = unix_socket ? unix_socket : m->options.unix_socket;
  unsigned int p = port ? port : m->options.port;

  GChecksum *cs = g_checksum_new(G_CHECKSUM_SHA256);
  g_checksum_update(cs, key_salt, sizeof key_salt);
  guint8 t = 0;
  add_str(cs, ++t, h);
  add_str(cs, ++t, u);
  add_str(cs, ++t, pw);
  add_str(cs, ++t, d);
  add_str(cs, ++t, sock);
  add_u64(cs, ++t, p);
  add_u64(cs, ++t, client_flag);
  add_u64(cs, ++t, m->options.client_flag);
  add_u64(cs, ++t, m->options.protocol);
  add_str(cs, ++t, m->options.charset_name);
  add_str(cs, ++t, m->options.charset_dir);
  add_u64(cs, ++t, m->options.compress);
  add_u64(cs, ++t, m->options.secure_auth);
  add_u64(cs, ++t, m->options.max_allowed_packet);
  add_str(cs, ++t, m->options.bind_address);
  add_u64(cs, ++t, m->options.use_ssl);
  add_str(cs, ++t, m->options.ssl_key);
  add_str(cs, ++t, m->options.ssl_cert);
  add_str(cs, ++t, m->options.ssl_ca);
  add_str(cs, ++t, m->options.ssl_capath);
  add_str(cs, ++t, m->options.ssl_cipher);
  add_str(cs, ++t, opt_str(m, MYSQL_OPT_SSL_CRL));
  add_str(cs, ++t, opt_str(m, MYSQL_OPT_SSL_CRLPATH));
  add_str(cs, ++t, opt_str(m, MARIADB_OPT_TLS_VERSION));
  add_str(cs, ++t, opt_str(m, MARIADB_OPT_TLS_PEER_FP));
  add_str(cs, ++t, opt_str(m, MARIADB_OPT_TLS_PEER_FP_LIST));
  add_str(cs, ++t, opt_str(m, MARIADB_OPT_TLS_PASSPHRASE));
  add_u64(cs, ++t, opt_bool(m, MYSQL_OPT_SSL_VERIFY_SERVER_CERT));
  add_str(cs, ++t, opt_str(m, MYSQL_SERVER_PUBLIC_KEY));
  add_str(cs, ++t, opt_str(m, MYSQL_PLUGIN_DIR));
  add_str(cs, ++t, opt_str(m, MYSQL_DEFAULT_AUTH));
  add_u64(cs, ++t, opt_bool(m, MARIADB_OPT_CONNECTION_READ_ONLY));
  PsMirrorOptionsExt *ext = OPT_EXT(m);
  add_str(cs, ++t, ext ? ext->restricted_auth : NULL);
  if (ext && ext->proxy_header)
    add_bytes(cs, ++t, ext->proxy_header, ext->proxy_header_len);
  else
    add_str(cs, ++t, NULL);
  /* Init commands, in order. */
  char **cmds = NULL;
  unsigned int ncmds = 0;
  ps_real.get_optionv(m, MYSQL_INIT_COMMAND, &cmds, &ncmds);
  add_u64(cs, ++t, ncmds);
  for (unsigned int i = 0; i < ncmds; i++)
    add_str(cs, t, cmds[i]);
  /* Connection attributes reach the server at the handshake. */
  char **attr_keys = NULL, **attr_vals = NULL;
  unsigned int nattrs = 0;
  ps_real.get_optionv(m, MYSQL_OPT_CONNECT_ATTRS, NULL, NULL, &nattrs);
  add_u64(cs, ++t, nattrs);
  if (nattrs) {
    /* The library fills caller-allocated arrays: it takes their addresses (mariadb_lib.c). */
    attr_keys = g_new0(char *, nattrs);
    attr_vals = g_new0(char *, nattrs);
    ps_real.get_optionv(m, MYSQL_OPT_CONNECT_ATTRS, &attr_keys, &attr_vals, &nattrs);
    for (unsigned int i = 0; i < nattrs; i++) {
      add_str(cs, t, attr_keys[i]);
      add_str(cs, t, attr_vals[i]);
    }
    g_free(attr_keys);
    g_free(attr_vals);
  }
  gsize len = PS_KEY_DIGEST_LEN;
  g_checksum_get_digest(cs, key->digest, &len);
  g_checksum_free(cs);

  if (sock && (!h || g_str_equal(h, "localhost")))
    g_snprintf(key->label, sizeof key->label, "%s@localhost:%s/%s", u ? u : "",
               sock, d ? d : "");
  else
    g_snprintf(key->label, sizeof key->label, "%s@%s:%u/%s", u ? u : "",
               h ? h : "localhost", p ? p : 3306, d ? d : "");
  key->db = g_strdup(d);
  return TRUE;
}

void
ps_conn_key_clear(PsConnKey *key)
{
  g_clear_pointer(&key->db, g_free);
}

static gboolean run_and_drain(MYSQL *m, const char *sql);

/* CURRENT_ROLE() of the session in m; the handle's visible results are restored after. */
static char *
query_role(MYSQL *m)
{
  my_ulonglong affected = m->affected_rows, insert_id = m->insert_id;
  unsigned int warnings = m->warning_count, status = m->server_status;
  char *role = NULL;
  if (ps_real.real_query(m, "SELECT CURRENT_ROLE()", 20) == 0) {
    MYSQL_RES *res = ps_real.store_result(m);
    if (res) {
      MYSQL_ROW row = ps_real.fetch_row(res);
      if (row && row[0])
        role = g_strdup(row[0]);
      ps_real.free_result(res);
    }
  }
  m->affected_rows = affected;
  m->insert_id = insert_id;
  m->warning_count = warnings;
  m->server_status = status;
  m->net.last_errno = 0;
  m->net.last_error[0] = '\0';
  strcpy(m->net.sqlstate, "00000");
  return role;
}

PsConnProfile *
ps_conn_profile_new(MYSQL *m, const char *requested_db)
{
  PsConnProfile *p = g_new0(PsConnProfile, 1);
  p->db = g_strdup(requested_db);
  p->user = g_strdup(m->user);
  p->role = query_role(m);
  p->charset = m->charset;
  char **cmds = NULL;
  unsigned int n = 0;
  ps_real.get_optionv(m, MYSQL_INIT_COMMAND, &cmds, &n);
  p->init_commands = g_new0(char *, n + 1);
  for (unsigned int i = 0; i < n; i++)
    p->init_commands[i] = g_strdup(cmds[i]);
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
  g_strfreev(p->init_commands);
  g_free(p);
}

/* ---- the transplant ---- */

/* Installs the default session-tracking callback when the handle has none, exactly as
 * mysql_real_connect does before connecting (mariadb_lib.c). Without it, an OK packet
 * carrying session-tracking data (SET NAMES, USE) calls a NULL pointer. */
static void
ensure_status_callback(MYSQL *m)
{
  PsMirrorOptionsExt *ext = OPT_EXT(m);
  if (!ext || !ext->status_callback)
    ps_real.optionsv(m, MARIADB_OPT_STATUS_CALLBACK, NULL, NULL);
}

MYSQL *
ps_conn_shell_new(void)
{
  MYSQL *m = ps_real.init(NULL);
  if (m)
    ensure_status_callback(m);
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

void
ps_conn_move(MYSQL *to, MYSQL *from)
{
  MYSQL tmp = *to;
  *to = *from;
  *from = tmp;
  /* What belongs to the handle, not to the connection, stays where it was. */
  SWAP(to->options, from->options);
  SWAP(to->free_me, from->free_me);
  SWAP(to->stmts, from->stmts);
  if (EXT(to) && EXT(from))
    SWAP(EXT(to)->auto_local_infile, EXT(from)->auto_local_infile);
  repair_back_pointers(to);
  repair_back_pointers(from);
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
  if (run_and_drain(m, "ROLLBACK"))
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
  if (!profile->role)
    return run_and_drain(m, "SET ROLE NONE");
  GString *sql = g_string_new("SET ROLE `");
  for (const char *c = profile->role; *c; c++) {
    if (*c == '`')
      g_string_append_c(sql, '`');
    g_string_append_c(sql, *c);
  }
  g_string_append_c(sql, '`');
  gboolean ok = run_and_drain(m, sql->str);
  g_string_free(sql, TRUE);
  return ok;
}

static void
bound_round_trips(MYSQL *m, unsigned int timeout_s)
{
  MARIADB_PVIO *pvio = m->net.pvio;
  if (pvio && pvio->methods && pvio->methods->set_timeout) {
    pvio->methods->set_timeout(pvio, PVIO_READ_TIMEOUT, (int)timeout_s);
    pvio->methods->set_timeout(pvio, PVIO_WRITE_TIMEOUT, (int)timeout_s);
  }
  /* TLS reads take their timeout from the options (ma_tls_read in secure/openssl.c). */
  m->options.read_timeout = timeout_s;
  m->options.write_timeout = timeout_s;
  /* A failed reset must fail, not reconnect behind the pool's back. */
  m->options.reconnect = 0;
}

gboolean
ps_conn_reset(MYSQL *m, PsResetMode mode, const PsConnProfile *profile, unsigned int timeout_s,
              const char **why)
{
  bound_round_trips(m, timeout_s);
  gboolean in_trans = (m->server_status & SERVER_STATUS_IN_TRANS) != 0;
  if (mode == PS_RESET_NONE || mode == PS_RESET_ROLLBACK) {
    /* These modes keep the session: server-side statements would outlive their handles. */
    if (m->stmts) {
      *why = "prepared statements are open and the reset mode keeps them";
      return FALSE;
    }
    if ((in_trans || mode == PS_RESET_ROLLBACK) && !end_transaction(m, FALSE, why))
      return FALSE;
    if (mode == PS_RESET_NONE)
      return TRUE;
    if (!run_and_drain(m, "UNLOCK TABLES") || !run_and_drain(m, "DO RELEASE_ALL_LOCKS()")) {
      *why = "releasing locks failed";
      return FALSE;
    }
    if (profile->db && (!m->db || strcmp(m->db, profile->db) != 0) &&
        ps_real.select_db(m, profile->db)) {
      *why = "re-selecting the database failed";
      return FALSE;
    }
    if (!restore_role(m, profile)) {
      *why = "restoring the role failed";
      return FALSE;
    }
    return TRUE;
  }
  if (in_trans && !end_transaction(m, TRUE, why))
    return FALSE;
  /* Statement handles are invalidated exactly as mysql_close invalidates them. */
  if (m->methods && m->methods->invalidate_stmts)
    m->methods->invalidate_stmts(m, "mysql_close()");
  /* COM_RESET_CONNECTION keeps the current database, so a pool without a default database
   * cannot undo a USE with it: COM_CHANGE_USER resets that too. */
  if (mode == PS_RESET_CHANGE_USER || !profile->db) {
    if (!change_user(m, profile)) {
      *why = "COM_CHANGE_USER failed";
      return FALSE;
    }
  } else if (ps_real.reset_connection(m)) {
    if (m->net.last_errno != ER_UNKNOWN_COM_ERROR || !change_user(m, profile)) {
      *why = "COM_RESET_CONNECTION failed";
      return FALSE;
    }
  } else {
    /* The server is back at the handshake charset; the client side keeps whatever SET
     * NAMES made it until told otherwise. */
    m->charset = profile->charset;
    /* Always re-select: the tracked m->db misses a USE done with session_track_schema=OFF. */
    if (ps_real.select_db(m, profile->db)) {
      *why = "re-selecting the database failed";
      return FALSE;
    }
  }
  if (!restore_role(m, profile)) {
    *why = "restoring the role failed";
    return FALSE;
  }
  for (char **c = profile->init_commands; c && *c; c++) {
    if (!run_and_drain(m, *c)) {
      *why = "re-running an init command failed";
      return FALSE;
    }
  }
  m->affected_rows = ~(my_ulonglong)0;
  m->insert_id = 0;
  m->warning_count = 0;
  m->info = NULL;
  return TRUE;
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
  if (!m->net.pvio || !m->net.buff)
    return FALSE;
  my_socket fd = ps_real.get_socket(m);
  if (fd == INVALID_SOCKET)
    return FALSE;
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int saved = errno;
  int r;
  do
    r = poll(&p, 1, 0);
  while (r < 0 && errno == EINTR);
  errno = saved;
  /* Nothing may arrive on an idle session: readable means EOF or an error packet. */
  return r == 0;
}

void
ps_conn_adopt(MYSQL *m)
{
  ensure_status_callback(m);
  MARIADB_PVIO *pvio = m->net.pvio;
  /* mthd_my_real_connect applies the handle's timeouts to the socket after connecting. */
  if (pvio && pvio->methods && pvio->methods->set_timeout) {
    pvio->methods->set_timeout(pvio, PVIO_READ_TIMEOUT, (int)m->options.read_timeout);
    pvio->methods->set_timeout(pvio, PVIO_WRITE_TIMEOUT, (int)m->options.write_timeout);
  }
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
  if (m)
    ps_real.close(m);
}

void
ps_conn_abandon(MYSQL *m)
{
  if (!m)
    return;
  MARIADB_PVIO *pvio = m->net.pvio;
  /* A TLS close_notify would end the parent's session: leak the TLS object instead. */
  if (pvio && pvio->ctls)
    pvio->ctls = NULL;
  /* mysql_close_slow_part sends COM_QUIT only when net.buff is set. */
  free(m->net.buff);
  m->net.buff = NULL;
  ps_real.close(m);
}
