/* mirror.h: Connector/C 3.3's private struct layouts that poolshim reads, for conn*.c and
 * template.c only. ps_conn_library_ok() verifies them against the library's own accessors
 * at start; nothing may rely on them before that. */
#pragma once
#include <glib.h>
#include <mysql.h>

/* ma_pvio.h declares pvio->ctls as MARIADB_TLS only when told TLS exists; Debian's
 * library is built with OpenSSL. */
#define HAVE_TLS 1
typedef unsigned char uchar;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <ma_pvio.h>
#pragma GCC diagnostic pop

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

#ifndef INVALID_SOCKET
#define INVALID_SOCKET (-1)
#endif

/* Applies a timeout (seconds, 0 = none) to the socket unless it already has it: each
 * change is a setsockopt(). pvio_socket_set_timeout stores it as `timeout > 0 ? timeout *
 * 1000 : -1` milliseconds in pvio->timeout[type] (plugins/pvio/pvio_socket.c). */
static inline void
ps_mirror_set_socket_timeout(MARIADB_PVIO *pvio, enum enum_pvio_timeout type,
                             unsigned int seconds)
{
  gint64 want = seconds > 0 ? (gint64)seconds * 1000 : -1;
  if ((gint64)pvio->timeout[type] != want)
    pvio->methods->set_timeout(pvio, type, (int)seconds);
}
