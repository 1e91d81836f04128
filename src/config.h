/* config.h: the POOLSHIM_* variables and the optional key file (POOLSHIM_CONFIG), parsed once
 * into an immutable PsConfig. The table in config.c is the single definition of every name,
 * default and range; the documentation is generated from it. */
#pragma once
#include <glib.h>

#include "log.h"

typedef enum {
  PS_RESET_ALWAYS = 0,  /* COM_RESET_CONNECTION at every return (change_user when the server
                           lacks it); "reset" is accepted for it */
  PS_RESET_CHANGE_USER, /* COM_CHANGE_USER: full re-authentication */
  PS_RESET_ROLLBACK,    /* ROLLBACK only: keeps session variables (caller's choice) */
  PS_RESET_NONE,        /* nothing: trusts the application completely */
  PS_RESET_AUTO,        /* undo what the borrower changed: nothing, ROLLBACK, or a full reset */
} PsResetMode;
#define PS_RESET_RESET PS_RESET_ALWAYS

/* POOLSHIM_GRAIN: how long a handle holds its physical connection. */
typedef enum {
  PS_GRAIN_CONNECT = 0,  /* from mysql_real_connect to mysql_close */
  PS_GRAIN_TRANSACTION,  /* between transactions another handle may take it (issue 13);
                            only with PS_RESET_AUTO */
} PsGrain;

/* POOLSHIM_PYTHON_LOCK: what a Python MySQLdb call the pool answers does with the
 * interpreter's lock (gil.c). */
typedef enum {
  PS_PYTHON_LOCK_KEEP = 0, /* let go only where the call may wait */
  PS_PYTHON_LOCK_RELEASE,  /* around every call, as the driver asks */
} PsPythonLock;

/* What a [pool PATTERN] group of the key file may change for the pools it matches. */
typedef struct {
  guint pool_size;
  guint min_idle;            /* idle connections kept open ahead of demand */
  gint64 timeout_us;
  gint64 max_lifetime_us;
  gint64 idle_timeout_us;
  PsResetMode reset;
} PsPoolSettings;

typedef struct {
  gboolean disable;
  guint pool_size;           /* physical connections per key */
  guint min_idle;            /* per key, opened in the background; 0 = none */
  guint max_connections;     /* whole process; 0 = unlimited */
  gint64 timeout_us;         /* wait for a free connection */
  gint64 max_lifetime_us;    /* 0 = unlimited */
  gint64 idle_timeout_us;    /* 0 = never */
  PsResetMode reset;
  gint64 reset_timeout_us;   /* bound on each round trip of a reset */
  PsGrain grain;             /* PS_GRAIN_TRANSACTION only with PS_RESET_AUTO */
  PsPythonLock python_lock;
  gint64 leak_warn_us;       /* warn about connections lent longer than this; 0 = off */
  gint64 revalidate_us;      /* re-authenticate a pool's credentials this often; 0 = off */
  PsLogLevel log_level;
  char *log_file;            /* NULL = stderr */
  char *stats_file;          /* pattern with %p, %n, %%; NULL = no stats file */
  gint64 stats_interval_us;
  guint host_max;            /* connections per server for all processes; 0 = off */
  char *host_dir;            /* NULL = the default slot directory */
  char *config_file;         /* the key file these values came from, if any */
  GPtrArray *pool_rules;     /* of the [pool PATTERN] groups, in file order; NULL = none */
} PsConfig;

/* Looks a variable up; returns NULL when unset. */
typedef const char *(*PsEnvLookup)(const char *name, gpointer user_data);

/* Parses from an environment, and from the key file POOLSHIM_CONFIG names; every problem is
 * reported with one ps_warn line and the default is kept. `present_names` lists the
 * POOLSHIM_* names present (for unknown-name checks). Free with ps_config_clear. */
void ps_config_parse(PsConfig *out, PsEnvLookup lookup, gpointer user_data,
                     const char *const *present_names);
void ps_config_clear(PsConfig *cfg);
gboolean ps_config_equal(const PsConfig *a, const PsConfig *b);

/* Parses the process environment (environ). In a privileged process (getauxval(AT_SECURE):
 * setuid, setgid, capabilities) the path variables (POOLSHIM_LOG_FILE, POOLSHIM_STATS_FILE,
 * POOLSHIM_HOST_DIR, POOLSHIM_CONFIG) are not read from it: one warning names those set. */
void ps_config_from_environ(PsConfig *out);
/* The same with AT_SECURE given (for tests). */
void ps_config_from_environ_secure(PsConfig *out, gboolean secure);

/* The settings of the pool named `pool_name` (user@host:port/db): the first [pool PATTERN]
 * group that matches it, over the process-wide values. */
void ps_config_pool_settings(const PsConfig *cfg, const char *pool_name, PsPoolSettings *out);

/* Whether any pool may have a POOLSHIM_MIN_IDLE (process-wide or in a [pool] group). */
gboolean ps_config_any_min_idle(const PsConfig *cfg);

/* Value parsers, exposed for unit tests. */
gboolean ps_config_parse_duration(const char *text, gint64 *out_us);
gboolean ps_config_parse_uint(const char *text, guint64 *out);

/* The closest known variable name to `name`, or NULL when nothing is close. */
const char *ps_config_closest_name(const char *name);

/* Table access for documentation checks: returns FALSE past the end. `file_key` is the
 * name in the key file (NULL when the variable is read from the environment only) and
 * `per_pool` whether a [pool ...] group may set it. */
gboolean ps_config_describe(guint index, const char **name, const char **def,
                            const char **range, const char **help);
gboolean ps_config_describe_file(guint index, const char **file_key, gboolean *per_pool);
