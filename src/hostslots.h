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
  PS_HOST_SLOTS_ERROR_REFUSED,   /* a directory failed the checks below */
  PS_HOST_SLOTS_ERROR_UNUSABLE,  /* every slot file failed them (warned once) */
} PsHostSlotsError;
GQuark ps_host_slots_error_quark(void);

typedef struct PsHostSlots PsHostSlots;

/* Slots for one server under `root`, whose parent must exist: files root/slots-<server>/0..N-1.
 * `server` is free text ("db1:3306", "localhost:/run/mysqld/mysqld.sock"); it becomes one
 * path component plus a hash of the raw text, so two spellings of one server ("db1" and
 * "10.0.0.5") count separately. Returns NULL with a PS_HOST_SLOTS_ERROR naming the path.
 *
 * Who is trusted, checked with fstat on what O_NOFOLLOW|O_NONBLOCK opened, never by path:
 * - the root: a directory (not a link) owned by this user (euid) or root; writable by its
 *   group or by everyone only with the sticky bit. A missing root is created 0700. With
 *   `private_root` (the per-user fallback, ps_host_slots_private_root) it must be owned by
 *   this user and mode 0700: one of ours with another mode is narrowed, never widened;
 * - a "group directory" is writable by its group and not by everyone: only root and its
 *   members can create entries there, and an entry that carries the directory's group is a
 *   member's. Entries (the server's directory in the root, slot files in that) must be owned
 *   by this user or root, or be a member's inside a group directory;
 * - the server's directory: a directory, owned as above, sticky if group/world-writable.
 *   Created 0700, or 03770 with the root's group inside a group root;
 * - slot files (0..N-1, waiting): regular files, owned as above. Created 0600, or 0640 with
 *   the directory's group inside a group directory. Anything else (a FIFO, a link, a
 *   directory, a socket, another user's file) is skipped with one warning and never waited
 *   on: the cap counts one slot less; with none left, PS_HOST_SLOTS_ERROR_UNUSABLE.
 * Whoever can write the directory can still hold slots (or "waiting") with flock: that
 * denies, it never blocks a call (every flock here is LOCK_NB). */
PsHostSlots *ps_host_slots_new(const char *root, gboolean private_root, const char *server,
                               guint max, GError **error);
/* ps_host_slots_new under `root`; when that is refused or fails, one warning and the same
 * under ps_host_slots_private_root(); when that fails too, one warning and NULL (not capped).
 * For the broker: no lock may be held (it creates directories). */
PsHostSlots *ps_host_slots_open(const char *root, const char *server, guint max);
void ps_host_slots_free(PsHostSlots *slots);
/* The slot directory, for log lines. */
const char *ps_host_slots_dir(const PsHostSlots *slots);

/* Takes a free slot, waiting until deadline_us (g_get_monotonic_time() clock) while all usable
 * slots are held; a deadline already past still tries each slot once. Thread-safe. Returns a
 * descriptor (O_CLOEXEC) that holds the lock, or -1 with PS_HOST_SLOTS_ERROR_TIMED_OUT,
 * _UNUSABLE (no slot file passes the checks), _REFUSED (a directory does not) or _FAILED.
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
 * /run is writable, else ps_host_slots_private_root(). Creates nothing. */
char *ps_host_slots_default_root(void);
/* The per-user root: "$XDG_RUNTIME_DIR/poolshim" when that variable names a writable
 * directory (ignored in set-user-ID processes), else "$TMPDIR/poolshim-<euid>" ("/tmp"
 * when TMPDIR is unset or empty).
 * A cap kept there binds only this user's processes. Creates nothing. */
char *ps_host_slots_private_root(void);
