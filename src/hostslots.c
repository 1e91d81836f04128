/* hostslots.c: host-wide connection slots as flock()ed files (see hostslots.h). Owns the slot
 * directories and the descriptors it hands out; no MySQL, no pool policy, no logging (the
 * caller logs the GError). The cap is cooperative: any local user can hold or remove slots. */
#include "hostslots.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

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

struct PsHostSlots {
  char *dir; /* root/slots-<server>; immutable after new, so threads share it unlocked */
  guint max;
  /* dir/waiting: every process waiting for a slot holds a shared lock on it; a holder of
   * idle slots asks with an exclusive try-lock whether anyone does (see contended). */
  int waiting_fd;
};

static void
set_failed(GError **error, int err, const char *what, const char *path)
{
  g_set_error(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_FAILED, "cannot %s %s: %s", what,
              path, g_strerror(err));
}

/* mkdir's mode goes through the umask, hence the chmod: processes of other users must be
 * able to create slot files here, and the sticky bit stops them deleting each other's. An
 * existing directory is left as it is (only its owner could chmod it). */
static gboolean
make_shared_dir(const char *path, GError **error)
{
  if (mkdir(path, 0777) == 0) {
    if (chmod(path, 01777) == 0)
      return TRUE;
    set_failed(error, errno, "chmod", path);
    return FALSE;
  }
  if (errno == EEXIST)
    return TRUE;
  set_failed(error, errno, "create directory", path);
  return FALSE;
}

/* O_NOFOLLOW: the slot directory sits in a world-writable one, where another user could
 * plant a symlink to make us create files elsewhere. */
static int
open_dir(const char *dir, GError **error)
{
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    set_failed(error, errno, "open directory", dir);
  return fd;
}

static int open_slot(int dfd, const char *name);

/* Every lock descriptor this process holds (slots and waiting announcements). A child
 * forked without exec must not keep the parent's locks alive after the parent dies: it
 * closes its copies at fork (ps_host_slots_after_fork). Taking a lock and registering it
 * happen under registry_lock, which the fork handlers hold, so no copy escapes. */
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

/* The "waiting" file, opened once per server: -1 when it cannot be (the cap then still
 * holds, only idle slots are not handed over early). */
static void
slots_open_waiting(int dfd, int *fd)
{
  *fd = open_slot(dfd, "waiting");
}

PsHostSlots *
ps_host_slots_new(const char *root, const char *server, guint max, GError **error)
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
  char *dir = g_build_filename(root, name->str, NULL);
  g_string_free(name, TRUE);

  int fd = -1, waiting_fd = -1;
  if (!make_shared_dir(root, error) || !make_shared_dir(dir, error) ||
      (fd = open_dir(dir, error)) < 0) {
    g_free(dir);
    return NULL;
  }
  slots_open_waiting(fd, &waiting_fd);
  close(fd);
  PsHostSlots *slots = g_new(PsHostSlots, 1);
  slots->dir = dir;
  slots->max = max;
  slots->waiting_fd = waiting_fd;
  return slots;
}

void
ps_host_slots_free(PsHostSlots *slots)
{
  if (slots == NULL)
    return;
  if (slots->waiting_fd >= 0)
    close(slots->waiting_fd);
  g_free(slots->dir);
  g_free(slots);
}

const char *
ps_host_slots_dir(const PsHostSlots *slots)
{
  return slots->dir;
}

/* Read-only is enough for flock. Never O_CREAT on an existing file: with fs.protected_regular
 * (systemd's default) the kernel refuses that in a sticky world-writable directory when
 * another user created the file. Losing the O_EXCL race to another process just reopens. */
static int
open_slot(int dfd, const char *name)
{
  for (;;) {
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0)
      return fd;
    if (errno == EINTR)
      continue;
    if (errno != ENOENT)
      return -1;
    fd = openat(dfd, name, O_RDONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd >= 0) {
      if (fchmod(fd, 0666) == 0) /* the umask narrowed the mode */
        return fd;
      int err = errno;
      close(fd);
      errno = err;
      return -1;
    }
    if (errno != EEXIST && errno != EINTR)
      return -1;
  }
}

/* Opens and locks slot `i`: its descriptor, -1 when someone holds it, -2 on an error. Each
 * attempt opens its own file description: flock() conflicts between descriptions, also
 * within one process, which is what makes threads count separately. */
static int
try_slot(const PsHostSlots *slots, int dfd, guint i, GError **error)
{
  char name[16];
  g_snprintf(name, sizeof name, "%u", i);
  g_mutex_lock(&registry_lock);
  int fd = open_slot(dfd, name);
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
  if (fd >= 0 && err == EWOULDBLOCK)
    return -1;
  char *path = g_build_filename(slots->dir, name, NULL);
  set_failed(error, err, fd >= 0 ? "lock" : "open", path);
  g_free(path);
  return -2;
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
announce_waiting(int dfd, int *fd)
{
  if (*fd >= 0)
    return;
  g_mutex_lock(&registry_lock);
  int w = open_slot(dfd, "waiting");
  if (w >= 0 && flock(w, LOCK_SH | LOCK_NB) == 0) {
    register_fd(w);
    *fd = w;
  } else if (w >= 0) {
    close(w);
  }
  g_mutex_unlock(&registry_lock);
}

/* Spreads the first slot tried over processes and threads. Not g_random: it takes a global
 * lock that a child forked from a multi-threaded host could find held forever. */
static guint
first_slot(const PsHostSlots *slots)
{
  static gint rotor;
  return ((guint)getpid() + (guint)g_atomic_int_add(&rotor, 1)) % slots->max;
}

/* Tries every slot once from `start`: a held descriptor, -1 when all are busy, -2 on an
 * error (set in *error). */
static int
try_round(const PsHostSlots *slots, int dfd, guint start, GError **error)
{
  int fd = -1;
  for (guint i = 0; i < slots->max && fd == -1; i++)
    fd = try_slot(slots, dfd, (start + i) % slots->max, error);
  return fd;
}

int
ps_host_slot_try_acquire(PsHostSlots *slots)
{
  int dfd = open_dir(slots->dir, NULL);
  if (dfd < 0)
    return -1;
  int fd = try_round(slots, dfd, first_slot(slots), NULL);
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
    /* Reopened each round so that a directory recreated (tmp cleaners) is picked up. */
    int dfd = open_dir(slots->dir, error);
    if (dfd < 0) {
      ps_host_slot_release(waiting);
      return -1;
    }
    int fd = try_round(slots, dfd, start, error);
    if (fd == -1)
      announce_waiting(dfd, &waiting);
    close(dfd);
    if (fd != -1) {
      ps_host_slot_release(waiting);
      return fd >= 0 ? fd : -1;
    }
    gint64 now = g_get_monotonic_time();
    if (now >= deadline_us) {
      ps_host_slot_release(waiting);
      g_set_error(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_TIMED_OUT,
                  "all %u host slots in %s stayed held", slots->max, slots->dir);
      return -1;
    }
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

char *
ps_host_slots_default_root(void)
{
  /* /run/poolshim is the only place all users share: prefer it when usable. */
  if (access("/run/poolshim", W_OK | X_OK) == 0 ||
      (access("/run/poolshim", F_OK) != 0 && access("/run", W_OK | X_OK) == 0))
    return g_strdup("/run/poolshim");
  const char *xdg = g_getenv("XDG_RUNTIME_DIR");
  if (xdg != NULL && g_path_is_absolute(xdg) && access(xdg, W_OK | X_OK) == 0)
    return g_build_filename(xdg, "poolshim", NULL);
  char leaf[32];
  g_snprintf(leaf, sizeof leaf, "poolshim-%u", (unsigned)getuid());
  return g_build_filename(g_get_tmp_dir(), leaf, NULL);
}
