/* hostslots.c: host-wide connection slots as flock()ed files (see hostslots.h). Owns the slot
 * directories, the checks on whatever it finds in them, and the descriptors it hands out; no
 * MySQL, no pool policy. Nothing here blocks on a file: every open is O_NONBLOCK, every flock
 * LOCK_NB; the only wait is ps_host_slot_acquire's sleep between rounds, with no lock held. */
#include "hostslots.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gil.h"
#include "log.h"

/* Spelled out instead of G_DEFINE_QUARK, whose dashed argument clang-format would split. */
GQuark
ps_host_slots_error_quark(void)
{
  return g_quark_from_static_string("ps-host-slots-error-quark");
}

/* Enough of the server name to recognise it in `ls`; the hash keeps cut names apart. */
#define PS_NAME_KEEP 64
#define PS_BACKOFF_MIN_US 1000
#define PS_BACKOFF_MAX_US 50000
/* Every open of a name another user may have planted: a FIFO or a file with a lease would
 * block a plain open (under our locks), a link would lead elsewhere, a terminal would become
 * the process's controlling terminal. */
#define PS_OPEN_FLAGS (O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
#define PS_DIR_FLAGS (PS_OPEN_FLAGS | O_DIRECTORY)

/* What try_slot found, besides a descriptor. */
enum { PS_SLOT_HELD = -1, PS_SLOT_ERROR = -2, PS_SLOT_SKIPPED = -3 };

struct PsHostSlots {
  /* All immutable after new, so threads share them unlocked. */
  char *root;
  char *name; /* slots-<server>-<hash>, inside root */
  char *dir;  /* root/name, for messages */
  gboolean private_root;
  guint max;
  /* dir/waiting: every process waiting for a slot holds a shared lock on it; a holder of
   * idle slots asks with an exclusive try-lock whether anyone does (see contended). */
  int waiting_fd;
  /* Slot files already warned about (bit i: file i; bit max: "waiting"), and whether the
   * "no usable slot" warning was given: one warning each, not one per connect. */
  guint *warned;
  gint warned_none;
};

static void
set_failed(GError **error, int err, const char *what, const char *path)
{
  g_set_error(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_FAILED, "cannot %s %s: %s", what,
              path, g_strerror(err));
}

static void
set_refused(GError **error, const char *path, const struct stat *st, const char *why)
{
  if (st == NULL)
    g_set_error(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_REFUSED, "refusing %s: %s", path,
                why);
  else
    g_set_error(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_REFUSED,
                "refusing %s: %s (owner uid %u, group %u, mode %04o)", path, why,
                (unsigned)st->st_uid, (unsigned)st->st_gid, (unsigned)(st->st_mode & 07777));
}

/* ---- who may own what (hostslots.h explains the rules) ------------------------------ */

/* Writable by its group and not by everyone: only root and the group's members can create
 * entries in it. */
static gboolean
is_group_dir(const struct stat *st)
{
  return (st->st_mode & S_IWGRP) && !(st->st_mode & S_IWOTH);
}

/* This user or root; inside a group directory also any member, known by the directory's
 * group on the entry (set by the setgid bit, or by us at creation). */
static gboolean
owner_trusted(const struct stat *st, const struct stat *parent)
{
  return st->st_uid == geteuid() || st->st_uid == 0 ||
         (parent != NULL && is_group_dir(parent) && st->st_gid == parent->st_gid);
}

/* Why a directory is refused, or NULL. `parent` is NULL for the root. */
static const char *
dir_refusal(const struct stat *st, const struct stat *parent, gboolean private_root)
{
  if (!S_ISDIR(st->st_mode))
    return "not a directory";
  if (private_root)
    return st->st_uid != geteuid()         ? "a private directory owned by another user"
           : (st->st_mode & 07777) != 0700 ? "a private directory whose mode is not 0700"
                                           : NULL;
  if (!owner_trusted(st, parent))
    return parent ? "owned by a user who is not this one, root or a member of its group"
                  : "owned by a user who is neither this one nor root";
  if ((st->st_mode & (S_IWGRP | S_IWOTH)) && !(st->st_mode & S_ISVTX))
    return "writable by other users without the sticky bit";
  return NULL;
}

/* Gives what we just created in `parent` the mode it calls for: in a group directory the
 * group shares it (its group set if the setgid bit did not), anywhere else it is ours. */
static void
share_like(int fd, struct stat *st, const struct stat *parent, mode_t group_mode, mode_t own_mode)
{
  gboolean group = is_group_dir(parent);
  if (group && st->st_gid != parent->st_gid && fchown(fd, (uid_t)-1, parent->st_gid) == 0)
    st->st_gid = parent->st_gid;
  mode_t mode = group ? group_mode : own_mode;
  if (fchmod(fd, mode) == 0) /* the umask narrowed the mode */
    st->st_mode = (st->st_mode & ~(mode_t)07777) | mode;
}

/* ---- directories -------------------------------------------------------------------- */

/* Opens and checks the root, created 0700 when missing (its parent must exist). A private
 * root of ours with another mode (an older poolshim made it 01777) is narrowed to 0700. */
static int
open_root(const PsHostSlots *slots, struct stat *st, GError **error)
{
  gboolean made = mkdir(slots->root, 0700) == 0;
  if (!made && errno != EEXIST) {
    set_failed(error, errno, "create directory", slots->root);
    return -1;
  }
  int fd = open(slots->root, PS_DIR_FLAGS);
  if (fd < 0 && (errno == ELOOP || errno == ENOTDIR)) {
    set_refused(error, slots->root, NULL, "a symbolic link or not a directory");
    return -1;
  }
  if (fd < 0 || fstat(fd, st) != 0) {
    set_failed(error, errno, "open directory", slots->root);
    if (fd >= 0)
      close(fd);
    return -1;
  }
  if ((made || slots->private_root) && S_ISDIR(st->st_mode) && st->st_uid == geteuid() &&
      (st->st_mode & 07777) != 0700 && fchmod(fd, 0700) == 0) /* or the umask's mode */
    st->st_mode = (st->st_mode & ~(mode_t)07777) | 0700;
  const char *why = dir_refusal(st, NULL, slots->private_root);
  if (why) {
    set_refused(error, slots->root, st, why);
    close(fd);
    return -1;
  }
  return fd;
}

/* Opens and checks the server's slot directory (created when missing: tmp cleaners remove
 * it), reached from a checked root without following links. */
static int
open_dir(const PsHostSlots *slots, struct stat *st, GError **error)
{
  struct stat root_st;
  int rfd = open_root(slots, &root_st, error);
  if (rfd < 0)
    return -1;
  gboolean made = mkdirat(rfd, slots->name, 0700) == 0;
  const char *what = made || errno == EEXIST ? "open directory" : "create directory";
  int fd = made || errno == EEXIST ? openat(rfd, slots->name, PS_DIR_FLAGS) : -1;
  int err = errno;
  const char *why = NULL;
  if (fd < 0 && (err == ELOOP || err == ENOTDIR)) {
    why = "a symbolic link or not a directory";
  } else if (fd >= 0 && fstat(fd, st) == 0) {
    if (made) /* a member of a group root shares it (sticky: nobody removes another's file) */
      share_like(fd, st, &root_st, 03770, 0700);
    why = dir_refusal(st, &root_st, FALSE);
  } else if (fd >= 0) {
    err = errno;
    close(fd);
    fd = -1;
  }
  close(rfd);
  if (why) {
    set_refused(error, slots->dir, fd >= 0 ? st : NULL, why);
    if (fd >= 0)
      close(fd);
    return -1;
  }
  if (fd < 0)
    set_failed(error, err, what, slots->dir);
  return fd;
}

/* Opens slot file `name` of the directory dfd (stat: dst), creating it when missing. -1
 * with *why set when what is there is refused (skipped, never waited on), or with *why NULL
 * and errno (EWOULDBLOCK: a lease, like a held slot). Never O_CREAT on an existing file:
 * with fs.protected_regular (systemd's default) the kernel refuses that in a sticky
 * writable directory when another user created the file. */
static int
open_slot(int dfd, const struct stat *dst, const char *name, const char **why)
{
  *why = NULL;
  for (;;) {
    gboolean made = FALSE;
    int fd = openat(dfd, name, PS_OPEN_FLAGS);
    if (fd < 0 && errno == ENOENT) {
      fd = openat(dfd, name, PS_OPEN_FLAGS | O_CREAT | O_EXCL, 0600);
      if (fd < 0 && errno == EEXIST)
        continue; /* lost the race to another process: open theirs */
      made = fd >= 0;
    }
    if (fd < 0 && errno == EINTR)
      continue;
    if (fd < 0) {
      if (errno == ELOOP)
        *why = "a symbolic link";
      else if (errno == EACCES || errno == EPERM)
        *why = "not readable by this user";
      else if (errno == ENXIO)
        *why = "a socket";
      return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
      int err = errno;
      close(fd);
      errno = err;
      return -1;
    }
    if (made)
      share_like(fd, &st, dst, 0640, 0600);
    if (S_ISFIFO(st.st_mode))
      *why = "a FIFO";
    else if (S_ISDIR(st.st_mode))
      *why = "a directory";
    else if (!S_ISREG(st.st_mode))
      *why = "not a regular file";
    else if (!owner_trusted(&st, dst))
      *why = "owned by a user who is not this one, root or a member of the directory's group";
    if (*why == NULL)
      return fd;
    close(fd);
    return -1;
  }
}

/* One warning per slot file (bit `i`; i == max is "waiting") for the life of `slots`. */
static void
warn_skipped(PsHostSlots *slots, guint i, const char *name, const char *why)
{
  guint bit = 1u << (i % 31);
  if (g_atomic_int_or(&slots->warned[i / 31], bit) & bit)
    return;
  ps_warn("POOLSHIM_HOST_MAX: %s/%s is %s: skipped%s", slots->dir, name, why,
          i < slots->max ? " (the cap counts one slot less)" : "");
}

/* Every lock descriptor this process holds (slots and waiting announcements). A child
 * forked without exec must not keep the parent's locks alive after the parent dies: it
 * closes its copies at fork (ps_host_slots_after_fork). Opening a lock file, locking it and
 * registering it happen under registry_lock, which the fork handlers hold, so no copy
 * escapes; all three are non-blocking (PS_OPEN_FLAGS, LOCK_NB), and nothing else is done
 * under it (warnings are written after it). */
static GMutex registry_lock;
static GHashTable *registry;

static void
register_fd(int fd)
{
  if (!registry)
    registry = g_hash_table_new(g_direct_hash, g_direct_equal);
  g_hash_table_add(registry, GINT_TO_POINTER(fd));
}

void
ps_host_slots_before_fork(void)
{
  g_mutex_lock(&registry_lock);
}

void
ps_host_slots_after_fork(gboolean child)
{
  if (child && registry) {
    /* Close, never unlock: the lock is the parent's, through the description we share. */
    GHashTableIter it;
    gpointer fd;
    g_hash_table_iter_init(&it, registry);
    while (g_hash_table_iter_next(&it, &fd, NULL))
      close(GPOINTER_TO_INT(fd));
    g_hash_table_remove_all(registry);
  }
  g_mutex_unlock(&registry_lock);
}

PsHostSlots *
ps_host_slots_new(const char *root, gboolean private_root, const char *server, guint max,
                  GError **error)
{
  g_return_val_if_fail(root != NULL && server != NULL && max > 0, NULL);
  /* The "slots-" prefix also means no name can be "." or "..". */
  GString *name = g_string_new("slots-");
  for (const char *p = server; *p != '\0' && p - server < PS_NAME_KEEP; p++)
    g_string_append_c(name, g_ascii_isalnum(*p) || strchr("._-", *p) ? *p : '_');
  /* SHA-256, not g_str_hash: every process and version on the host must agree on the name. */
  char *hash = g_compute_checksum_for_string(G_CHECKSUM_SHA256, server, -1);
  g_string_append_printf(name, "-%.16s", hash);
  g_free(hash);

  PsHostSlots *slots = g_new0(PsHostSlots, 1);
  slots->root = g_strdup(root);
  slots->name = g_string_free(name, FALSE);
  slots->dir = g_build_filename(root, slots->name, NULL);
  slots->private_root = private_root;
  slots->max = max;
  slots->waiting_fd = -1;
  slots->warned = g_new0(guint, max / 31 + 1);
  struct stat dst;
  int dfd = open_dir(slots, &dst, error);
  if (dfd < 0) {
    ps_host_slots_free(slots);
    return NULL;
  }
  /* -1 when it cannot be used: the cap still holds, only idle slots are not handed over
   * early. Not registered: it holds no lock (contended takes one only for a moment). */
  const char *why;
  slots->waiting_fd = open_slot(dfd, &dst, "waiting", &why);
  close(dfd);
  if (why)
    warn_skipped(slots, max, "waiting", why);
  return slots;
}

void
ps_host_slots_free(PsHostSlots *slots)
{
  if (slots == NULL)
    return;
  if (slots->waiting_fd >= 0)
    close(slots->waiting_fd);
  g_free(slots->warned);
  g_free(slots->dir);
  g_free(slots->name);
  g_free(slots->root);
  g_free(slots);
}

const char *
ps_host_slots_dir(const PsHostSlots *slots)
{
  return slots->dir;
}

/* Opens and locks slot `i`: its descriptor, PS_SLOT_HELD when someone holds it,
 * PS_SLOT_SKIPPED when the file there is refused (warned once), PS_SLOT_ERROR on an error.
 * Each attempt opens its own file description: flock() conflicts between descriptions,
 * also within one process, which is what makes threads count separately. */
static int
try_slot(PsHostSlots *slots, int dfd, const struct stat *dst, guint i, GError **error)
{
  char name[16];
  g_snprintf(name, sizeof name, "%u", i);
  const char *why;
  g_mutex_lock(&registry_lock);
  int fd = open_slot(dfd, dst, name, &why);
  int rc = -1;
  if (fd >= 0)
    while ((rc = flock(fd, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR)
      ;
  if (rc == 0)
    register_fd(fd);
  int err = errno;
  g_mutex_unlock(&registry_lock);
  if (rc == 0)
    return fd;
  if (fd >= 0)
    close(fd);
  if (why) {
    warn_skipped(slots, i, name, why);
    return PS_SLOT_SKIPPED;
  }
  if (err == EWOULDBLOCK) /* a lock, or a lease on the file: held either way */
    return PS_SLOT_HELD;
  char *path = g_build_filename(slots->dir, name, NULL);
  set_failed(error, err, fd >= 0 ? "lock" : "open", path);
  g_free(path);
  return PS_SLOT_ERROR;
}

gboolean
ps_host_slots_contended(PsHostSlots *slots)
{
  if (slots->waiting_fd < 0)
    return FALSE;
  int rc;
  while ((rc = flock(slots->waiting_fd, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR)
    ;
  if (rc != 0)
    return errno == EWOULDBLOCK; /* someone holds it shared: a waiter */
  flock(slots->waiting_fd, LOCK_UN);
  return FALSE;
}

/* Announces a waiter for as long as `*fd` stays open: a shared lock of its own description
 * (so that it conflicts with the try-lock of contended, also in this process). Never
 * blocks: a holder's momentary exclusive try-lock just delays the announcement a round. */
static void
announce_waiting(PsHostSlots *slots, int dfd, const struct stat *dst, int *fd)
{
  if (*fd >= 0)
    return;
  const char *why;
  g_mutex_lock(&registry_lock);
  int w = open_slot(dfd, dst, "waiting", &why);
  if (w >= 0 && flock(w, LOCK_SH | LOCK_NB) == 0) {
    register_fd(w);
    *fd = w;
  } else if (w >= 0) {
    close(w);
  }
  g_mutex_unlock(&registry_lock);
  if (why)
    warn_skipped(slots, slots->max, "waiting", why);
}

/* Spreads the first slot tried over processes and threads. Not g_random: it takes a global
 * lock that a child forked from a multi-threaded host could find held forever. */
static guint
first_slot(const PsHostSlots *slots)
{
  static gint rotor;
  return ((guint)getpid() + (guint)g_atomic_int_add(&rotor, 1)) % slots->max;
}

/* Tries every slot once from `start`: a held descriptor, PS_SLOT_HELD when none was free
 * (*skipped: how many files were refused), PS_SLOT_ERROR on an error (set in *error). */
static int
try_round(PsHostSlots *slots, int dfd, const struct stat *dst, guint start, guint *skipped,
          GError **error)
{
  *skipped = 0;
  for (guint i = 0; i < slots->max; i++) {
    int fd = try_slot(slots, dfd, dst, (start + i) % slots->max, error);
    if (fd >= 0 || fd == PS_SLOT_ERROR)
      return fd;
    *skipped += fd == PS_SLOT_SKIPPED;
  }
  return PS_SLOT_HELD;
}

/* Every slot file is refused: nothing to count with, nothing to wait for. */
static void
set_unusable(PsHostSlots *slots, GError **error)
{
  g_set_error(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_UNUSABLE,
              "none of the %u slot files in %s is usable", slots->max, slots->dir);
  if (!g_atomic_int_exchange(&slots->warned_none, 1))
    ps_warn("POOLSHIM_HOST_MAX: none of the %u slot files in %s is usable: connections to "
            "this server are not capped",
            slots->max, slots->dir);
}

int
ps_host_slot_try_acquire(PsHostSlots *slots)
{
  struct stat dst;
  int dfd = open_dir(slots, &dst, NULL);
  if (dfd < 0)
    return -1;
  guint skipped;
  int fd = try_round(slots, dfd, &dst, first_slot(slots), &skipped, NULL);
  close(dfd);
  return fd >= 0 ? fd : -1;
}

int
ps_host_slot_acquire(PsHostSlots *slots, gint64 deadline_us, GError **error)
{
  /* Given up with ps_host_slot_release, like a slot: unlocked before the close, or a child
   * forked during the wait would keep signalling a waiter through its copy. */
  int waiting = -1;
  guint start = first_slot(slots);
  gint64 backoff_us = PS_BACKOFF_MIN_US;
  for (;;) {
    /* Reopened and checked each round: a directory recreated (tmp cleaners) or replaced
     * is noticed. */
    struct stat dst;
    int dfd = open_dir(slots, &dst, error);
    if (dfd < 0) {
      ps_host_slot_release(waiting);
      return -1;
    }
    guint skipped;
    int fd = try_round(slots, dfd, &dst, start, &skipped, error);
    if (fd == PS_SLOT_HELD && skipped < slots->max)
      announce_waiting(slots, dfd, &dst, &waiting);
    close(dfd);
    if (fd != PS_SLOT_HELD || skipped == slots->max) {
      ps_host_slot_release(waiting);
      if (fd == PS_SLOT_HELD)
        set_unusable(slots, error);
      return fd >= 0 ? fd : -1;
    }
    gint64 now = g_get_monotonic_time();
    if (now >= deadline_us) {
      ps_host_slot_release(waiting);
      g_set_error(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_TIMED_OUT,
                  "all %u host slots in %s stayed held", slots->max - skipped, slots->dir);
      return -1;
    }
    ps_gil_release();
    g_usleep((gulong)MIN(backoff_us, deadline_us - now));
    backoff_us = MIN(backoff_us * 2, PS_BACKOFF_MAX_US);
  }
}

void
ps_host_slot_release(int fd)
{
  if (fd < 0)
    return;
  /* Unlock before closing: a child forked while we held the slot may still have a copy of
   * the descriptor, and close() alone would leave the lock with that copy. */
  g_mutex_lock(&registry_lock);
  if (registry)
    g_hash_table_remove(registry, GINT_TO_POINTER(fd));
  flock(fd, LOCK_UN);
  close(fd);
  g_mutex_unlock(&registry_lock);
}

/* ---- where the slots live ----------------------------------------------------------- */

char *
ps_host_slots_private_root(void)
{
  /* secure_getenv: in a set-user-ID program the caller's environment must not choose where
   * the owner creates directories (glibc already drops TMPDIR there). */
  const char *xdg = secure_getenv("XDG_RUNTIME_DIR");
  if (xdg != NULL && g_path_is_absolute(xdg) && euidaccess(xdg, W_OK | X_OK) == 0)
    return g_build_filename(xdg, "poolshim", NULL);
  char leaf[32];
  g_snprintf(leaf, sizeof leaf, "poolshim-%u", (unsigned)geteuid());
  /* What g_get_tmp_dir() reads, without its process-wide cache: connects of several threads
   * get here at once, and that cache is filled under a lock of GLib's own. */
  const char *tmp = secure_getenv("TMPDIR");
  return g_build_filename(tmp != NULL && *tmp != '\0' ? tmp : "/tmp", leaf, NULL);
}

char *
ps_host_slots_default_root(void)
{
  /* /run/poolshim is the place users can share (hostslots.h): prefer it when usable. */
  if (euidaccess("/run/poolshim", W_OK | X_OK) == 0 ||
      (access("/run/poolshim", F_OK) != 0 && euidaccess("/run", W_OK | X_OK) == 0))
    return g_strdup("/run/poolshim");
  return ps_host_slots_private_root();
}

PsHostSlots *
ps_host_slots_open(const char *root, const char *server, guint max)
{
  g_autofree char *own = ps_host_slots_private_root();
  gboolean is_own = g_str_equal(root, own);
  g_autoptr(GError) error = NULL;
  PsHostSlots *slots = ps_host_slots_new(root, is_own, server, max, &error);
  if (slots == NULL && !is_own) {
    ps_warn("POOLSHIM_HOST_MAX: %s; the slots of %s are kept in %s instead, shared only by "
            "this user's processes",
            error->message, server, own);
    g_clear_error(&error);
    slots = ps_host_slots_new(own, TRUE, server, max, &error);
  }
  if (slots == NULL)
    ps_warn("POOLSHIM_HOST_MAX: %s; connections to %s are not capped", error->message, server);
  return slots;
}
