/* opsrun.h: tests/opsprobe run asynchronously (test_observe, test_hostmax): started with an
 * environment of its own, its report read while it runs, stdin closed to end a `hold 0`.
 * Every wait is bounded and fails the test when it runs out. */
#pragma once
#include "helpers.h"

typedef struct OpsProbe OpsProbe;

/* Starts $PST_OPSPROBE with args (NULL-terminated) and the test's environment changed by
 * `env` (name, value pairs as for pst_run). */
OpsProbe *ops_start(const char *const *args, const char *const *env);
/* Waits (max timeout_ms) for the probe's report line NAME=value; caller frees. */
char *ops_wait_value(OpsProbe *p, const char *name, int timeout_ms);
/* TRUE while the probe has not exited; reads what it printed meanwhile. */
gboolean ops_running(OpsProbe *p);
/* Closes its stdin, reads everything and waits (max timeout_ms) for it to exit. */
void ops_finish(OpsProbe *p, int timeout_ms);
/* After ops_finish (or ops_running == FALSE): what it printed, its wait status. */
const char *ops_out(const OpsProbe *p);
const char *ops_err(const OpsProbe *p);
int ops_status(const OpsProbe *p);
int ops_pid(const OpsProbe *p);
void ops_kill(OpsProbe *p, int sig);
void ops_free(OpsProbe *p);
/* A probe that exited 0 and whose report has NAME=want. */
void ops_assert_value(const OpsProbe *p, const char *name, const char *want);

/* A new private directory under the temporary directory (g_free it); removed with its
 * contents by ops_rm_tree. */
char *ops_tmp_dir(const char *prefix);
void ops_rm_tree(const char *dir);
/* A whole file (it must exist); caller frees. */
char *ops_read_file(const char *path);
