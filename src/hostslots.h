/* hostslots.h: the host-wide cap on physical connections per server (POOLSHIM_HOST_MAX).
 * One connection holds one slot: an exclusive flock() on one of N files in a per-server
 * directory, dropped by the kernel when the holder dies. Files and locks only: no MySQL. */
#pragma once
#include <glib.h>

/* Our own domain: G_IO_ERROR lives in libgio, which the shim does not link. */
#define PS_HOST_SLOTS_ERROR (ps_host_slots_error_quark())
typedef enum {
  PS_HOST_SLOTS_ERROR_TIMED_OUT, /* all N slots stayed held until the deadline */
  PS_HOST_SLOTS_ERROR_FAILED,    /* a directory or slot file could not be made, opened, locked */
} PsHostSlotsError;
GQuark ps_host_slots_error_quark(void);

typedef struct PsHostSlots PsHostSlots;

/* Slots for one server under `root`, whose parent must exist: files root/slots-<server>/0..N-1.
 * `server` is free text ("db1:3306", "localhost:/run/mysqld/mysqld.sock"); it becomes one
 * path component plus a hash of the raw text, so two spellings of one server ("db1" and
 * "10.0.0.5") count separately. Directories are created 01777 so that processes of every
 * user share them. Returns NULL with a PS_HOST_SLOTS_ERROR naming the path. */
PsHostSlots *ps_host_slots_new(const char *root, const char *server, guint max, GError **error);
void ps_host_slots_free(PsHostSlots *slots);
/* The slot directory, for log lines. */
const char *ps_host_slots_dir(const PsHostSlots *slots);

/* Takes a free slot, waiting until deadline_us (g_get_monotonic_time() clock) while all N are
 * held; a deadline already past still tries each slot once. Thread-safe. Returns a descriptor
 * (O_CLOEXEC) that holds the lock, or -1 with PS_HOST_SLOTS_ERROR_TIMED_OUT or _FAILED.
 *
 * Fork: a child shares the parent's locks through its inherited copies of these descriptors;
 * ps_host_slots_after_fork(TRUE) closes them. The child must NOT call ps_host_slot_release()
 * on them: that unlocks the open file description both share, freeing the parent's slot. */
int ps_host_slot_acquire(PsHostSlots *slots, gint64 deadline_us, GError **error);
/* One round over the slots, never waiting and never announcing a waiter (for filling a pool
 * ahead of demand, which must not make others give their slots up): a descriptor or -1. */
int ps_host_slot_try_acquire(PsHostSlots *slots);

/* Around fork(): every lock descriptor this process holds is registered; the child closes its
 * copies (never unlocks them), so the parent's slots die with the parent. */
void ps_host_slots_before_fork(void);
void ps_host_slots_after_fork(gboolean child);

/* TRUE when some process (this one included) is waiting in ps_host_slot_acquire for a slot
 * of this server: a holder of an idle connection should then close it. Two system calls. */
gboolean ps_host_slots_contended(PsHostSlots *slots);
/* Frees the slot even when a forked child still has a copy of the descriptor, then closes. */
void ps_host_slot_release(int fd);

/* The default root, newly allocated (g_free): "/run/poolshim" if it exists and is writable or
 * /run is writable, else "$XDG_RUNTIME_DIR/poolshim", else "<g_get_tmp_dir()>/poolshim-<uid>".
 * Creates nothing. The last two are private to one user (and TMPDIR), so the cap then only
 * binds that user's processes. */
char *ps_host_slots_default_root(void);
