/* config_common.h: what the configuration parser's unit tests (test_config,
 * test_config_files) share: ps_config_parse over a fake environment, fd 2 captured around a
 * call, and a line count. No server and no client library here. */
#pragma once
#include <glib.h>
#include <stdio.h>

#include "config.h"

#define SEC ((gint64)G_USEC_PER_SEC)

/* Parses an environment given as NULL-terminated name/value pairs; every name set is
 * also reported present. `extra_names` (may be NULL) are present but unset. */
void parse_env(PsConfig *cfg, const char *const *pairs, const char *const *extra_names);

/* fd 2 redirected to a temporary file around a call. */
typedef struct {
  int saved;
  FILE *file;
} Capture;

void capture_start(Capture *c);
/* Restores fd 2 and returns what was written (caller frees). */
char *capture_end(Capture *c);

guint count_lines(const char *text);
