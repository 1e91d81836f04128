/* config.h: the POOLSHIM_* variables, parsed once into an immutable PsConfig.
 * The table in config.c is the single definition of every name, default and range. */
#pragma once
#include <glib.h>

#include "log.h"

typedef enum {
  PS_RESET_RESET = 0,   /* COM_RESET_CONNECTION (change_user when the server lacks it) */
  PS_RESET_CHANGE_USER, /* COM_CHANGE_USER: full re-authentication */
  PS_RESET_ROLLBACK,    /* ROLLBACK only: keeps session variables (caller's choice) */
  PS_RESET_NONE,        /* nothing: trusts the application completely */
} PsResetMode;

typedef struct {
  gboolean disable;
  guint pool_size;           /* physical connections per key */
  guint max_connections;     /* whole process; 0 = unlimited */
  gint64 timeout_us;         /* wait for a free connection */
  gint64 max_lifetime_us;    /* 0 = unlimited */
  gint64 idle_timeout_us;    /* 0 = never */
  PsResetMode reset;
  gint64 reset_timeout_us;   /* bound on each round trip of a reset */
  gint64 leak_warn_us;       /* warn about connections lent longer than this; 0 = off */
  PsLogLevel log_level;
} PsConfig;

/* Looks a variable up; returns NULL when unset. */
typedef const char *(*PsEnvLookup)(const char *name, gpointer user_data);

/* Parses from an environment; every problem is reported with one ps_warn line and the
 * default is kept. `names` lists the POOLSHIM_* names present (for unknown-name checks). */
void ps_config_parse(PsConfig *out, PsEnvLookup lookup, gpointer user_data,
                     const char *const *present_names);

/* Parses the process environment (environ). */
void ps_config_from_environ(PsConfig *out);

/* Value parsers, exposed for unit tests. */
gboolean ps_config_parse_duration(const char *text, gint64 *out_us);
gboolean ps_config_parse_uint(const char *text, guint64 *out);

/* The closest known variable name to `name`, or NULL when nothing is close. */
const char *ps_config_closest_name(const char *name);

/* Table access for documentation checks: returns FALSE past the end. */
gboolean ps_config_describe(guint index, const char **name, const char **def,
                            const char **range, const char **help);
