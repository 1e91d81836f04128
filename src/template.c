/* template.c: opens connections of a pool without the application (POOLSHIM_MIN_IDLE and the
 * background replacement of expired ones). It copies the connect arguments and every option
 * the pool key covers from a handle the application connected, and replays them with
 * mysql_optionsv onto fresh handles. The proof that a replayed handle is the same pool is the
 * key digest itself: a template whose replay gives another digest is refused. */
#include "conn.h"
#include "secret.h"

#include <string.h>

#include "mirror.h"

typedef struct {
  enum mysql_option option;
  char *value;
} PsStrOption;

struct PsConnTemplate {
  char *host, *user, *passwd, *db, *unix_socket;
  unsigned int port;
  unsigned long client_flag;
  GArray *strings;        /* PsStrOption, in the order they are replayed */
  unsigned int protocol, connect_timeout, read_timeout, write_timeout;
  unsigned long max_allowed_packet, options_client_flag;
  my_bool compress, secure_auth, use_ssl, verify_cert, read_only;
  char *proxy_header;
  size_t proxy_header_len;
  char **init_commands;   /* NULL-terminated */
  char **attr_keys, **attr_values;
};

static void
add_string(PsConnTemplate *t, enum mysql_option option, const char *value)
{
  if (!value)
    return;
  PsStrOption o = {option, g_strdup(value)};
  g_array_append_val(t->strings, o);
}

static void
clear_string(gpointer data)
{
  g_free(((PsStrOption *)data)->value);
}

void
ps_conn_template_free(PsConnTemplate *t)
{
  if (!t)
    return;
  g_free(t->host);
  g_free(t->user);
  ps_secret_free(t->passwd);
  g_free(t->db);
  g_free(t->unix_socket);
  g_array_unref(t->strings);
  g_free(t->proxy_header);
  g_strfreev(t->init_commands);
  g_strfreev(t->attr_keys);
  g_strfreev(t->attr_values);
  g_free(t);
}

/* Everything ps_conn_key reads, in an order in which later options cannot undo earlier ones
 * (the TLS string options switch use_ssl on: SSL_ENFORCE comes after them). */
static gboolean
replay(const PsConnTemplate *t, MYSQL *h, unsigned int timeout_s)
{
  int bad = 0;
  for (guint i = 0; i < t->strings->len; i++) {
    const PsStrOption *o = &g_array_index(t->strings, PsStrOption, i);
    bad |= ps_real.optionsv(h, o->option, o->value);
  }
  bad |= ps_real.optionsv(h, MYSQL_OPT_PROTOCOL, &t->protocol);
  if (t->compress)
    bad |= ps_real.optionsv(h, MYSQL_OPT_COMPRESS, NULL);
  bad |= ps_real.optionsv(h, MYSQL_SECURE_AUTH, &t->secure_auth);
  if (t->max_allowed_packet)
    bad |= ps_real.optionsv(h, MYSQL_OPT_MAX_ALLOWED_PACKET, &t->max_allowed_packet);
  bad |= ps_real.optionsv(h, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &t->verify_cert);
  bad |= ps_real.optionsv(h, MARIADB_OPT_CONNECTION_READ_ONLY, &t->read_only);
  if (t->proxy_header)
    bad |= ps_real.optionsv(h, MARIADB_OPT_PROXY_HEADER, t->proxy_header, t->proxy_header_len);
  for (char **c = t->init_commands; c && *c; c++)
    bad |= ps_real.optionsv(h, MYSQL_INIT_COMMAND, *c);
  for (guint i = 0; t->attr_keys && t->attr_keys[i]; i++)
    bad |= ps_real.optionsv(h, MYSQL_OPT_CONNECT_ATTR_ADD, t->attr_keys[i], t->attr_values[i]);
  bad |= ps_real.optionsv(h, MYSQL_OPT_SSL_ENFORCE, &t->use_ssl);
  /* Background opens are bounded even when the application's are not: a process that exits
   * waits for the one under way (ps_broker_drain). A caller may bound it otherwise. */
  unsigned int connect_timeout =
    timeout_s ? timeout_s : t->connect_timeout ? MIN(t->connect_timeout, 10) : 10;
  bad |= ps_real.optionsv(h, MYSQL_OPT_CONNECT_TIMEOUT, &connect_timeout);
  if (t->read_timeout)
    bad |= ps_real.optionsv(h, MYSQL_OPT_READ_TIMEOUT, &t->read_timeout);
  if (t->write_timeout)
    bad |= ps_real.optionsv(h, MYSQL_OPT_WRITE_TIMEOUT, &t->write_timeout);
  /* Flags some options add (CLIENT_LOCAL_FILES, ...), exactly as the application's had. */
  h->options.client_flag = t->options_client_flag;
  return bad == 0;
}

static MYSQL *
replayed_handle(const PsConnTemplate *t, unsigned int timeout_s)
{
  MYSQL *h = ps_real.init(NULL);
  if (h && !replay(t, h, timeout_s)) {
    ps_real.close(h);
    h = NULL;
  }
  return h;
}

PsConnTemplate *
ps_conn_template_new(MYSQL *m, const char *host, const char *user, const char *passwd,
                     const char *db, unsigned int port, const char *unix_socket,
                     unsigned long client_flag, const guint8 digest[PS_KEY_DIGEST_LEN],
                     const char **why)
{
  const struct st_mysql_options *o = &m->options;
  PsMirrorOptionsExt *ext = OPT_EXT(m);
  PsConnTemplate *t = g_new0(PsConnTemplate, 1);
  t->host = g_strdup(host);
  t->user = g_strdup(user);
  t->passwd = g_strdup(passwd);
  t->db = g_strdup(db);
  t->unix_socket = g_strdup(unix_socket);
  t->port = port;
  t->client_flag = client_flag;
  t->strings = g_array_new(FALSE, TRUE, sizeof(PsStrOption));
  g_array_set_clear_func(t->strings, clear_string);
  add_string(t, MYSQL_SET_CHARSET_DIR, o->charset_dir);
  add_string(t, MYSQL_SET_CHARSET_NAME, o->charset_name);
  add_string(t, MYSQL_OPT_BIND, o->bind_address);
  add_string(t, MYSQL_OPT_SSL_KEY, o->ssl_key);
  add_string(t, MYSQL_OPT_SSL_CERT, o->ssl_cert);
  add_string(t, MYSQL_OPT_SSL_CA, o->ssl_ca);
  add_string(t, MYSQL_OPT_SSL_CAPATH, o->ssl_capath);
  add_string(t, MYSQL_OPT_SSL_CIPHER, o->ssl_cipher);
  if (ext) {
    add_string(t, MYSQL_OPT_SSL_CRL, ext->ssl_crl);
    add_string(t, MYSQL_OPT_SSL_CRLPATH, ext->ssl_crlpath);
    add_string(t, MARIADB_OPT_TLS_VERSION, ext->tls_version);
    add_string(t, MARIADB_OPT_TLS_PEER_FP, ext->tls_fp);
    add_string(t, MARIADB_OPT_TLS_PEER_FP_LIST, ext->tls_fp_list);
    add_string(t, MARIADB_OPT_TLS_PASSPHRASE, ext->tls_pw);
    add_string(t, MYSQL_SERVER_PUBLIC_KEY, ext->server_public_key);
    add_string(t, MYSQL_PLUGIN_DIR, ext->plugin_dir);
    add_string(t, MYSQL_DEFAULT_AUTH, ext->default_auth);
    add_string(t, MARIADB_OPT_RESTRICTED_AUTH, ext->restricted_auth);
    t->verify_cert = ext->tls_verify_server_cert;
    t->read_only = ext->read_only;
    if (ext->proxy_header) {
      t->proxy_header = g_memdup2(ext->proxy_header, ext->proxy_header_len);
      t->proxy_header_len = ext->proxy_header_len;
    }
  }
  t->protocol = o->protocol;
  t->compress = o->compress;
  t->secure_auth = o->secure_auth;
  t->max_allowed_packet = o->max_allowed_packet;
  t->use_ssl = o->use_ssl;
  t->options_client_flag = o->client_flag;
  t->connect_timeout = o->connect_timeout;
  t->read_timeout = o->read_timeout;
  t->write_timeout = o->write_timeout;
  t->init_commands = ps_conn_init_commands(m);
  g_autofree char **keys = NULL;
  g_autofree char **values = NULL;
  ps_conn_user_attributes(m, &keys, &values);
  t->attr_keys = g_strdupv(keys);
  t->attr_values = g_strdupv(values);
  /* The proof: a handle built from the template is keyed exactly like the application's. */
  MYSQL *h = replayed_handle(t, 0);
  PsConnKey key;
  const char *unkeyable = NULL;
  gboolean same = h && ps_conn_key(h, t->host, t->user, t->passwd, t->db, t->port,
                                   t->unix_socket, t->client_flag, &key, &unkeyable) &&
                  memcmp(key.digest, digest, PS_KEY_DIGEST_LEN) == 0;
  if (h)
    ps_real.close(h);
  if (!same) {
    *why = h ? "its options cannot be replayed exactly" : "an option could not be replayed";
    ps_conn_template_free(t);
    return NULL;
  }
  return t;
}

MYSQL *
ps_conn_template_open(const PsConnTemplate *t, unsigned int timeout_s, char *err, gsize errlen)
{
  MYSQL *h = replayed_handle(t, timeout_s);
  if (!h) {
    g_strlcpy(err, "cannot build a handle", errlen);
    return NULL;
  }
  if (!ps_real.real_connect(h, t->host, t->user, t->passwd, t->db, t->port, t->unix_socket,
                            t->client_flag)) {
    g_strlcpy(err, h->net.last_error, errlen);
    ps_real.close(h);
    return NULL;
  }
  return h;
}
