/* test_hostslots.c: the host-wide slot files on their own (no server): the cap within one
 * process, across threads and processes, release on SIGKILL and across fork, directory names
 * and modes. Each test gets a private root; real time is only asserted with slack of seconds. */
#include <criterion/criterion.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hostslots.h"

#define MS 1000
#define SEC ((gint64)G_USEC_PER_SEC)

static char *tmp;  /* this test's private directory, from g_dir_make_tmp */
static char *root; /* tmp/root: created by the module, so its mode is the module's doing */

/* ---- helpers ---------------------------------------------------------------------- */

static void
rm_tree(const char *path)
{
  GDir *dir = g_dir_open(path, 0, NULL);
  if (dir != NULL) {
    const char *name;
    while ((name = g_dir_read_name(dir)) != NULL) {
      char *child = g_build_filename(path, name, NULL);
      rm_tree(child);
      g_free(child);
    }
    g_dir_close(dir);
  }
  g_remove(path);
}

static void
setup(void)
{
  GError *error = NULL;
  tmp = g_dir_make_tmp("hostslots-XXXXXX", &error);
  cr_assert_not_null(tmp, "g_dir_make_tmp: %s", error ? error->message : "?");
  root = g_build_filename(tmp, "root", NULL);
}

static void
teardown(void)
{
  rm_tree(tmp);
  g_free(root);
  g_free(tmp);
}

TestSuite(hostslots, .init = setup, .fini = teardown, .timeout = 60);

static gint64
in_ms(gint64 ms)
{
  return g_get_monotonic_time() + ms * MS;
}

static PsHostSlots *
new_slots(const char *server, guint max)
{
  GError *error = NULL;
  PsHostSlots *slots = ps_host_slots_new(root, FALSE, server, max, &error);
  cr_assert_not_null(slots, "ps_host_slots_new(%s): %s", server, error ? error->message : "?");
  return slots;
}

/* A slot that must be free: waits at most 5 s. */
static int
take(PsHostSlots *slots)
{
  GError *error = NULL;
  int fd = ps_host_slot_acquire(slots, in_ms(5000), &error);
  cr_assert_geq(fd, 0, "acquire: %s", error ? error->message : "no error set");
  return fd;
}

/* Asserts that every slot is held: one round of tries, no waiting. */
static void
assert_all_held(PsHostSlots *slots)
{
  GError *error = NULL;
  int fd = ps_host_slot_acquire(slots, g_get_monotonic_time(), &error);
  cr_assert_eq(fd, -1, "a slot was free");
  cr_assert(g_error_matches(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_TIMED_OUT), "%s",
            error ? error->message : "no error set");
  g_error_free(error);
}

static guint
count_open_fds(void)
{
  GDir *dir = g_dir_open("/proc/self/fd", 0, NULL);
  cr_assert_not_null(dir);
  guint n = 0;
  while (g_dir_read_name(dir) != NULL)
    n++;
  g_dir_close(dir);
  return n;
}

static GPtrArray *
list_dir(const char *path)
{
  GDir *dir = g_dir_open(path, 0, NULL);
  cr_assert_not_null(dir, "cannot list %s", path);
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  const char *name;
  while ((name = g_dir_read_name(dir)) != NULL)
    g_ptr_array_add(names, g_strdup(name));
  g_dir_close(dir);
  return names;
}

static void
read_exactly(int fd, void *buf, size_t len)
{
  size_t done = 0;
  while (done < len) {
    ssize_t n = read(fd, (char *)buf + done, len - done);
    cr_assert_gt(n, 0, "pipe closed or failed after %zu of %zu bytes", done, len);
    done += (size_t)n;
  }
}

static void
assert_exited_cleanly(pid_t pid)
{
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
}

/* How a forked child leaves: frees its copy of the PsHostSlots (Valgrind follows children
 * and would count it lost) and skips Criterion's exit handlers, which belong to the parent. */
static G_GNUC_NORETURN void
child_exit(PsHostSlots *slots, int status)
{
  ps_host_slots_free(slots);
  _exit(status);
}

/* Forks a child that keeps its copies of the parent's descriptors until the parent closes
 * *release (the write end of a pipe), then leaves with child_exit. */
static pid_t
fork_idle_child(PsHostSlots *slots, int *release)
{
  int go[2];
  cr_assert_eq(pipe(go), 0);
  pid_t pid = fork();
  cr_assert_geq(pid, 0, "fork");
  if (pid == 0) {
    close(go[1]);
    char c;
    child_exit(slots, read(go[0], &c, 1) == 0 ? 0 : 1);
  }
  close(go[0]);
  *release = go[1];
  return pid;
}

/* ---- within one process ------------------------------------------------------------ */

Test(hostslots, max_slots_are_held_at_once_and_the_next_acquire_times_out_at_its_deadline)
{
  guint fds_before = count_open_fds();
  PsHostSlots *slots = new_slots("db1:3306", 3);
  int fds[3];
  for (int i = 0; i < 3; i++) {
    fds[i] = take(slots);
    struct stat st;
    cr_assert_eq(fstat(fds[i], &st), 0);
    for (int j = 0; j < i; j++) {
      struct stat other;
      cr_assert_eq(fstat(fds[j], &other), 0);
      cr_assert_neq(st.st_ino, other.st_ino, "slots %d and %d are the same file", j, i);
    }
  }

  gint64 deadline = in_ms(300);
  GError *error = NULL;
  int fd = ps_host_slot_acquire(slots, deadline, &error);
  gint64 now = g_get_monotonic_time();
  cr_assert_eq(fd, -1, "a fourth slot of three was granted");
  cr_assert(g_error_matches(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_TIMED_OUT), "%s",
            error ? error->message : "no error set");
  cr_assert_geq(now, deadline, "gave up %" G_GINT64_FORMAT " us early", deadline - now);
  cr_assert_lt(now, deadline + 3 * SEC, "overslept its deadline by seconds");
  cr_assert_not_null(strstr(error->message, ps_host_slots_dir(slots)), "%s", error->message);
  g_error_free(error);

  for (int i = 0; i < 3; i++)
    ps_host_slot_release(fds[i]);
  ps_host_slots_free(slots);
  cr_assert_eq(count_open_fds(), fds_before, "descriptors leaked");
}

typedef struct {
  PsHostSlots *slots;
  gint64 deadline;
  int fd;
  gint64 returned_at;
  gint done;
} Waiter;

static gpointer
wait_for_slot(gpointer data)
{
  Waiter *w = data;
  w->fd = ps_host_slot_acquire(w->slots, w->deadline, NULL);
  w->returned_at = g_get_monotonic_time();
  g_atomic_int_set(&w->done, 1);
  return NULL;
}

/* Starts w waiting for a slot in a thread, and returns once the slots show it waiting. */
static GThread *
start_waiter_seen(Waiter *w)
{
  GThread *thread = g_thread_new("waiter", wait_for_slot, w);
  gint64 until = in_ms(5000);
  while (!ps_host_slots_contended(w->slots) && g_get_monotonic_time() < until)
    g_usleep(5 * MS);
  cr_assert(ps_host_slots_contended(w->slots), "a waiter never showed");
  return thread;
}

Test(hostslots, releasing_a_slot_lets_a_waiting_thread_acquire_before_its_deadline)
{
  PsHostSlots *slots = new_slots("db1:3306", 2);
  int a = take(slots), b = take(slots);
  Waiter w = {.slots = slots, .deadline = in_ms(20000), .fd = -1};
  /* Seen waiting first: a fixed sleep raced with the thread's start on a loaded machine,
   * which then found the slot released and never waited. */
  GThread *thread = start_waiter_seen(&w);
  g_usleep(200 * MS); /* time for a waiter that would not wait to return */
  cr_assert_eq(g_atomic_int_get(&w.done), 0, "the waiter returned while both slots were held");

  gint64 released_at = g_get_monotonic_time();
  ps_host_slot_release(a);
  g_thread_join(thread);
  cr_assert_geq(w.fd, 0, "the waiter got no slot");
  cr_assert_lt(w.returned_at, w.deadline, "the waiter only returned at its deadline");
  cr_assert_lt(w.returned_at - released_at, 5 * SEC, "the waiter took seconds to notice");

  ps_host_slot_release(w.fd);
  ps_host_slot_release(b);
  ps_host_slots_free(slots);
}

Test(hostslots, a_waiting_acquire_shows_as_contention_until_it_is_served)
{
  PsHostSlots *slots = new_slots("db1:3306", 1);
  cr_assert_not(ps_host_slots_contended(slots), "nobody waits yet");
  int a = take(slots);
  cr_assert_not(ps_host_slots_contended(slots), "holding is not waiting");
  Waiter w = {.slots = slots, .deadline = in_ms(20000), .fd = -1};
  GThread *thread = start_waiter_seen(&w);
  cr_assert(ps_host_slots_contended(slots), "asking does not consume the signal");
  ps_host_slot_release(a);
  g_thread_join(thread);
  cr_assert_geq(w.fd, 0);
  cr_assert_not(ps_host_slots_contended(slots), "the served waiter no longer waits");
  ps_host_slot_release(w.fd);
  /* A waiter that gives up at its deadline stops showing too. */
  int b = take(slots);
  cr_assert_eq(ps_host_slot_acquire(slots, in_ms(50), NULL), -1);
  cr_assert_not(ps_host_slots_contended(slots), "a waiter that timed out no longer waits");
  ps_host_slot_release(b);
  ps_host_slots_free(slots);
}

Test(hostslots, a_child_forked_during_a_wait_does_not_keep_the_contention_signal)
{
  PsHostSlots *slots = new_slots("db1:3306", 1);
  int a = take(slots);
  Waiter w = {.slots = slots, .deadline = in_ms(20000), .fd = -1};
  GThread *thread = start_waiter_seen(&w);
  /* The child inherits the waiter's descriptor on the "waiting" file and keeps it open. */
  int release;
  pid_t pid = fork_idle_child(slots, &release);
  ps_host_slot_release(a);
  g_thread_join(thread);
  cr_assert_geq(w.fd, 0);
  cr_assert_not(ps_host_slots_contended(slots), "the child's copy still signals a waiter");
  close(release);
  assert_exited_cleanly(pid);
  ps_host_slot_release(w.fd);
  ps_host_slots_free(slots);
}

typedef struct {
  PsHostSlots *slots;
  gint held;     /* slots held right now, by all threads */
  gint max_held; /* the most ever held at once */
  gint granted;
} Crowd;

static gpointer
churn(gpointer data)
{
  Crowd *c = data;
  for (int i = 0; i < 50; i++) {
    int fd = ps_host_slot_acquire(c->slots, in_ms(20000), NULL);
    if (fd < 0)
      continue;
    g_atomic_int_inc(&c->granted);
    gint now = g_atomic_int_add(&c->held, 1) + 1;
    gint seen;
    while (now > (seen = g_atomic_int_get(&c->max_held)) &&
           !g_atomic_int_compare_and_exchange(&c->max_held, seen, now))
      ;
    g_usleep(200);
    g_atomic_int_add(&c->held, -1);
    ps_host_slot_release(fd);
  }
  return NULL;
}

Test(hostslots, threads_of_one_process_never_hold_more_than_max)
{
  Crowd c = {.slots = new_slots("db1:3306", 3)};
  GThread *threads[8];
  for (int i = 0; i < 8; i++)
    threads[i] = g_thread_new("churn", churn, &c);
  for (int i = 0; i < 8; i++)
    g_thread_join(threads[i]);
  cr_assert_eq(c.granted, 8 * 50, "some acquires failed or timed out");
  cr_assert_leq(c.max_held, 3, "%d slots of 3 were held at once", c.max_held);
  ps_host_slots_free(c.slots);
}

/* ---- across processes ------------------------------------------------------------- */

Test(hostslots, processes_together_never_hold_more_than_max)
{
  PsHostSlots *slots = new_slots("db1:3306", 4);
  int report[2], go[2];
  cr_assert_eq(pipe(report), 0);
  cr_assert_eq(pipe(go), 0);
  pid_t kids[3];
  for (int k = 0; k < 3; k++) {
    kids[k] = fork();
    cr_assert_geq(kids[k], 0, "fork");
    if (kids[k] == 0) {
      /* No Criterion asserts in here: a child only reports and exits. */
      close(report[0]);
      close(go[1]);
      gint64 deadline = in_ms(1500);
      char got = 0;
      for (int i = 0; i < 2; i++)
        if (ps_host_slot_acquire(slots, deadline, NULL) >= 0)
          got++;
      char c;
      if (write(report[1], &got, 1) != 1 || read(go[0], &c, 1) != 0)
        child_exit(slots, 1);
      child_exit(slots, 0); /* holds its slots until the parent closes `go` */
    }
  }
  close(report[1]);
  close(go[0]);

  int total = 0;
  for (int k = 0; k < 3; k++) {
    char got;
    read_exactly(report[0], &got, 1);
    cr_assert_leq(got, 2, "a child got %d slots of the 2 it asked for", got);
    total += got;
  }
  /* Nobody releases before `go`, so the children stop short only once all 4 are taken. */
  cr_assert_eq(total, 4, "children held %d slots of 4 at once", total);
  assert_all_held(slots);

  close(go[1]);
  for (int k = 0; k < 3; k++)
    assert_exited_cleanly(kids[k]);
  close(report[0]);
  int fds[4];
  for (int i = 0; i < 4; i++)
    fds[i] = take(slots);
  for (int i = 0; i < 4; i++)
    ps_host_slot_release(fds[i]);
  ps_host_slots_free(slots);
}

Test(hostslots, slots_of_a_process_killed_with_sigkill_are_free_again)
{
  PsHostSlots *slots = new_slots("db1:3306", 3);
  int ready[2], hold[2];
  cr_assert_eq(pipe(ready), 0);
  cr_assert_eq(pipe(hold), 0);
  pid_t pid = fork();
  cr_assert_geq(pid, 0, "fork");
  if (pid == 0) {
    close(ready[0]);
    close(hold[1]);
    char got = 0;
    for (int i = 0; i < 3; i++)
      if (ps_host_slot_acquire(slots, in_ms(5000), NULL) >= 0)
        got++;
    /* Blocks until SIGKILL, or until the test process dies on a failed assert (EOF):
     * never an orphan holding Criterion's pipes. */
    char c;
    if (write(ready[1], &got, 1) == 1)
      (void)!read(hold[0], &c, 1);
    child_exit(slots, 1);
  }
  close(ready[1]);
  close(hold[0]);
  char got;
  read_exactly(ready[0], &got, 1);
  close(ready[0]);
  cr_assert_eq(got, 3, "the child took %d slots of 3", got);

  GError *error = NULL;
  cr_assert_eq(ps_host_slot_acquire(slots, in_ms(200), &error), -1, "the child's slot was free");
  cr_assert(g_error_matches(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_TIMED_OUT));
  g_error_free(error);

  cr_assert_eq(kill(pid, SIGKILL), 0);
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %#x", status);
  /* A deadline of now: each slot is tried once, no waiting. */
  int fds[3];
  for (int i = 0; i < 3; i++) {
    fds[i] = ps_host_slot_acquire(slots, g_get_monotonic_time(), &error);
    cr_assert_geq(fds[i], 0, "slot %d still held: %s", i, error ? error->message : "?");
  }
  for (int i = 0; i < 3; i++)
    ps_host_slot_release(fds[i]);
  close(hold[1]);
  ps_host_slots_free(slots);
}

Test(hostslots, a_forked_child_closing_its_copy_leaves_the_parent_holding_the_slot)
{
  PsHostSlots *slots = new_slots("db1:3306", 1);
  int fd = take(slots);
  pid_t pid = fork();
  cr_assert_geq(pid, 0, "fork");
  if (pid == 0) {
    close(fd);
    child_exit(slots, 0);
  }
  assert_exited_cleanly(pid);
  assert_all_held(slots);
  ps_host_slot_release(fd);
  ps_host_slot_release(take(slots));
  ps_host_slots_free(slots);
}

Test(hostslots, release_frees_the_slot_while_a_forked_child_still_has_a_copy)
{
  PsHostSlots *slots = new_slots("db1:3306", 1);
  int fd = take(slots);
  int release;
  pid_t pid = fork_idle_child(slots, &release); /* keeps its copy of fd until released */
  ps_host_slot_release(fd);
  GError *error = NULL;
  int again = ps_host_slot_acquire(slots, g_get_monotonic_time(), &error);
  cr_assert_geq(again, 0, "the child's copy kept the slot: %s", error ? error->message : "?");
  close(release);
  assert_exited_cleanly(pid);
  ps_host_slot_release(again);
  ps_host_slots_free(slots);
}

/* ---- directories ------------------------------------------------------------------ */

Test(hostslots, different_servers_get_different_directories_inside_root)
{
  /* "db1_3306" sanitizes like "db1:3306": only the hash tells them apart. */
  const char *servers[] = {"db1:3306", "db2:3306", "db1_3306", "../../x/..//etc/passwd", ".."};
  enum { N = G_N_ELEMENTS(servers) };
  PsHostSlots *slots[N];
  int fds[N];
  for (int i = 0; i < N; i++) {
    slots[i] = new_slots(servers[i], 1);
    fds[i] = take(slots[i]); /* max=1 each: a shared directory would block here */
    const char *dir = ps_host_slots_dir(slots[i]);
    char *parent = g_path_get_dirname(dir);
    char *base = g_path_get_basename(dir);
    cr_assert_str_eq(parent, root, "%s is not directly in the root", dir);
    cr_assert(g_str_has_prefix(base, "slots-"), "%s", base);
    for (int j = 0; j < i; j++)
      cr_assert_str_neq(dir, ps_host_slots_dir(slots[j]), "%s and %s share a directory",
                        servers[i], servers[j]);
    g_free(parent);
    g_free(base);
  }

  GPtrArray *in_tmp = list_dir(tmp);
  cr_assert_eq(in_tmp->len, 1, "something was created beside the root");
  cr_assert_str_eq(g_ptr_array_index(in_tmp, 0), "root");
  GPtrArray *in_root = list_dir(root);
  cr_assert_eq(in_root->len, N, "%u entries in the root for %d servers", in_root->len, N);
  g_ptr_array_unref(in_tmp);
  g_ptr_array_unref(in_root);
  for (int i = 0; i < N; i++) {
    ps_host_slot_release(fds[i]);
    ps_host_slots_free(slots[i]);
  }
}

static void
assert_mode(const char *path, mode_t type, mode_t mode)
{
  struct stat st;
  cr_assert_eq(lstat(path, &st), 0, "%s: %s", path, g_strerror(errno));
  cr_assert_eq(st.st_mode & S_IFMT, type, "%s has the wrong type", path);
  cr_assert_eq(st.st_mode & 07777, mode, "%s has mode %04o, not %04o", path,
               (unsigned)(st.st_mode & 07777), (unsigned)mode);
}

Test(hostslots, directories_are_0700_and_slot_files_0600_whatever_the_umask)
{
  /* Nobody else can write into what we create, nor open a slot file to hold it. */
  mode_t old = umask(0);
  PsHostSlots *slots = new_slots("db1:3306", 1);
  int fd = take(slots);
  umask(old);
  assert_mode(root, S_IFDIR, 0700);
  assert_mode(ps_host_slots_dir(slots), S_IFDIR, 0700);
  char *file = g_build_filename(ps_host_slots_dir(slots), "0", NULL);
  assert_mode(file, S_IFREG, 0600);
  g_free(file);
  ps_host_slot_release(fd);
  ps_host_slots_free(slots);
}

Test(hostslots, failures_name_the_path_and_leak_no_descriptor)
{
  guint fds_before = count_open_fds();
  GError *error = NULL;
  char *missing = g_build_filename(tmp, "no", "such", NULL);
  cr_assert_null(ps_host_slots_new(missing, FALSE, "db1:3306", 2, &error));
  cr_assert(g_error_matches(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_FAILED));
  cr_assert_not_null(strstr(error->message, missing), "%s", error->message);
  g_clear_error(&error);
  g_free(missing);

  /* A symlink planted as the only slot file: not followed, and the error says no slot is
   * usable instead of waiting for the deadline. */
  PsHostSlots *slots = new_slots("db1:3306", 1);
  char *file = g_build_filename(ps_host_slots_dir(slots), "0", NULL);
  char *target = g_build_filename(tmp, "planted", NULL);
  cr_assert_eq(symlink(target, file), 0);
  gint64 started = g_get_monotonic_time();
  cr_assert_eq(ps_host_slot_acquire(slots, in_ms(20000), &error), -1);
  cr_assert_lt(g_get_monotonic_time() - started, 10 * SEC, "waited for the deadline");
  cr_assert(g_error_matches(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_UNUSABLE), "%s",
            error ? error->message : "no error set");
  cr_assert_not_null(strstr(error->message, ps_host_slots_dir(slots)), "%s", error->message);
  cr_assert(!g_file_test(target, G_FILE_TEST_EXISTS), "the symlink was followed");
  g_clear_error(&error);
  g_free(target);
  g_free(file);

  /* The slot directory removed under a live PsHostSlots (tmp cleaners): made again. */
  rm_tree(ps_host_slots_dir(slots));
  int fd = ps_host_slot_acquire(slots, in_ms(5000), &error);
  cr_assert_geq(fd, 0, "%s", error ? error->message : "?");
  ps_host_slot_release(fd);
  /* The root replaced by a file: refused, and the error names it. */
  rm_tree(root);
  cr_assert(g_file_set_contents(root, "", 0, NULL));
  cr_assert_eq(ps_host_slot_acquire(slots, in_ms(5000), &error), -1);
  cr_assert(g_error_matches(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_REFUSED), "%s",
            error ? error->message : "no error set");
  cr_assert_not_null(strstr(error->message, root), "%s", error->message);
  g_clear_error(&error);
  ps_host_slots_free(slots);
  cr_assert_eq(count_open_fds(), fds_before, "descriptors leaked");
}

Test(hostslots, default_root_is_an_absolute_path_this_process_can_write_or_create)
{
  char *dir = ps_host_slots_default_root();
  cr_assert_not_null(dir);
  cr_assert(g_path_is_absolute(dir), "%s", dir);
  if (g_file_test(dir, G_FILE_TEST_EXISTS)) {
    cr_assert(g_file_test(dir, G_FILE_TEST_IS_DIR), "%s is not a directory", dir);
    cr_assert_eq(access(dir, W_OK | X_OK), 0, "%s is not writable", dir);
  } else {
    char *parent = g_path_get_dirname(dir);
    cr_assert_eq(access(parent, W_OK | X_OK), 0, "%s cannot be created in %s", dir, parent);
    g_free(parent);
  }
  g_free(dir);
}

/* ---- who is trusted (runs as root, as CI does: files are given to nobody) ----------- */

#define NOBODY 65534
#define NOGROUP 65534

static void
assert_owned(const char *path, uid_t uid, gid_t gid, mode_t mode)
{
  struct stat st;
  cr_assert_eq(lstat(path, &st), 0, "%s: %s", path, g_strerror(errno));
  cr_assert_eq(st.st_uid, uid, "%s: owner %u", path, (unsigned)st.st_uid);
  cr_assert_eq(st.st_gid, gid, "%s: group %u", path, (unsigned)st.st_gid);
  cr_assert_eq(st.st_mode & 07777, mode, "%s has mode %04o, not %04o", path,
               (unsigned)(st.st_mode & 07777), (unsigned)mode);
}

/* Slot file `name` of `slots` is the file open on fd. */
static gboolean
is_slot(PsHostSlots *slots, const char *name, int fd)
{
  char *path = g_build_filename(ps_host_slots_dir(slots), name, NULL);
  struct stat a, b;
  gboolean same = stat(path, &a) == 0 && fstat(fd, &b) == 0 && a.st_ino == b.st_ino;
  g_free(path);
  return same;
}

Test(hostslots, in_a_group_directory_members_share_and_other_files_are_skipped)
{
  cr_assert_eq(geteuid(), 0, "this test gives files to nobody");
  /* What an administrator makes: install -d -m 3770 -o root -g GROUP. */
  cr_assert_eq(mkdir(root, 0700), 0);
  cr_assert_eq(chown(root, 0, NOGROUP), 0);
  cr_assert_eq(chmod(root, 03770), 0);
  PsHostSlots *slots = new_slots("db1:3306", 3);
  /* What we create there is the group's: sticky, setgid, group-readable slot files. */
  assert_owned(ps_host_slots_dir(slots), 0, NOGROUP, 03770);
  int fds[3];
  for (int i = 0; i < 3; i++) /* makes all three files */
    fds[i] = take(slots);
  for (int i = 0; i < 3; i++)
    ps_host_slot_release(fds[i]);
  char *path = g_build_filename(ps_host_slots_dir(slots), "0", NULL);
  char *member = g_build_filename(ps_host_slots_dir(slots), "1", NULL);
  char *stranger = g_build_filename(ps_host_slots_dir(slots), "2", NULL);
  assert_owned(path, 0, NOGROUP, 0640);
  /* A member's file (the directory's group) counts; a file of nobody's own group is not a
   * member's: skipped. */
  g_remove(member);
  g_remove(stranger);
  cr_assert(g_file_set_contents(member, "", 0, NULL));
  cr_assert_eq(chown(member, NOBODY, NOGROUP), 0);
  cr_assert(g_file_set_contents(stranger, "", 0, NULL));
  cr_assert_eq(chown(stranger, NOBODY, 0), 0);
  int a = take(slots), b = take(slots);
  cr_assert(is_slot(slots, "0", a) || is_slot(slots, "0", b), "slot 0 was not used");
  cr_assert(is_slot(slots, "1", a) || is_slot(slots, "1", b), "the member's slot was not used");
  assert_all_held(slots);
  ps_host_slot_release(a);
  ps_host_slot_release(b);
  ps_host_slots_free(slots);

  /* A member's server directory is used; one that does not carry the group is refused. */
  slots = new_slots("db2:3306", 1);
  char *dir = g_strdup(ps_host_slots_dir(slots));
  ps_host_slots_free(slots);
  cr_assert_eq(chown(dir, NOBODY, NOGROUP), 0);
  slots = new_slots("db2:3306", 1);
  ps_host_slot_release(take(slots));
  ps_host_slots_free(slots);
  cr_assert_eq(chown(dir, NOBODY, 0), 0);
  GError *error = NULL;
  cr_assert_null(ps_host_slots_new(root, FALSE, "db2:3306", 1, &error));
  cr_assert(g_error_matches(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_REFUSED), "%s",
            error ? error->message : "no error");
  cr_assert_not_null(strstr(error->message, dir), "%s", error->message);
  g_clear_error(&error);

  /* A group directory without the sticky bit: members could remove each other's files. */
  cr_assert_eq(chmod(root, 02770), 0);
  cr_assert_null(ps_host_slots_new(root, FALSE, "db1:3306", 1, &error));
  cr_assert(g_error_matches(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_REFUSED), "%s",
            error ? error->message : "no error");
  cr_assert_not_null(strstr(error->message, root), "%s", error->message);
  g_clear_error(&error);
  g_free(dir);
  g_free(path);
  g_free(member);
  g_free(stranger);
}

Test(hostslots, a_private_root_is_made_0700_narrowed_when_ours_and_refused_when_not)
{
  cr_assert_eq(geteuid(), 0, "this test gives files to nobody");
  GError *error = NULL;
  mode_t old = umask(0);
  PsHostSlots *slots = ps_host_slots_new(root, TRUE, "db1:3306", 1, &error);
  umask(old);
  cr_assert_not_null(slots, "%s", error ? error->message : "?");
  assert_owned(root, 0, 0, 0700);
  ps_host_slots_free(slots);

  /* Made 01777 by an older poolshim: ours, so narrowed (never the other way). */
  cr_assert_eq(chmod(root, 01777), 0);
  slots = ps_host_slots_new(root, TRUE, "db1:3306", 1, &error);
  cr_assert_not_null(slots, "%s", error ? error->message : "?");
  assert_owned(root, 0, 0, 0700);
  ps_host_slots_free(slots);

  /* Another user's, whatever its mode: refused, left as it is. */
  cr_assert_eq(chown(root, NOBODY, NOGROUP), 0);
  cr_assert_null(ps_host_slots_new(root, TRUE, "db1:3306", 1, &error));
  cr_assert(g_error_matches(error, PS_HOST_SLOTS_ERROR, PS_HOST_SLOTS_ERROR_REFUSED), "%s",
            error ? error->message : "no error");
  cr_assert_not_null(strstr(error->message, root), "%s", error->message);
  g_clear_error(&error);
  assert_owned(root, NOBODY, NOGROUP, 0700);
}
