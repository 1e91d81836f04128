/* house.h: the broker's background threads (house.c): housekeeper, statistics writer and
 * leak watchdog, each started only where its setting asks for it. */
#pragma once
#include "pool.h"

/* In the process that parsed the configuration, and again in each forked child that uses
 * the pool (threads do not survive fork). */
void ps_house_start(void);
/* Drain: nothing is opened ahead any more; returns once the housekeeper's tick is over. */
void ps_house_stop(void);
/* POOLSHIM_STATS_FILE: one snapshot of every pool, written now. */
void ps_house_write_stats(void);
/* Frees the pools unused for a minute (memory stays bounded). */
void ps_house_forget_pools(PsPool *pool);
