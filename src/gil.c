/* gil.c: POOLSHIM_PYTHON_LOCK=keep. Python's MySQLdb lets go of the interpreter's lock around
 * every call into the client library; a call the pool answers at once (a pooled connect, a
 * close, a setup statement answered ahead) then waits to take it back from another thread.
 * Here the driver module's two lock calls and the client library's calls that may wait are
 * redirected (their GOT slots), so that the lock is let go only where the call may wait. */
#include "gil.h"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <netdb.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"

_Thread_local PsGilDefer ps_gil_defer __attribute__((tls_model("initial-exec")));

#define SEEN_MAX 16
#define SLOTS_MAX 4

static struct {
  GMutex lock;
  gboolean keep;     /* POOLSHIM_PYTHON_LOCK=keep */
  gboolean lib_done; /* the client library's waiting calls are redirected */
  /* Callers of mysql_real_connect already looked at (either verdict): published with a
   * release store of `nseen` after the slot, read without the lock. */
  const void *seen[SEEN_MAX];
  guint nseen;
  void *(*save)(void);
  void (*restore)(void *);
  void *(*tstate_get)(void);
  int (*poll)(struct pollfd *, nfds_t, int);
  ssize_t (*recv)(int, void *, size_t, int);
  ssize_t (*send)(int, const void *, size_t, int);
  int (*connect)(int, const struct sockaddr *, socklen_t);
  int (*getaddrinfo)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
  int (*usleep)(useconds_t);
  guint64 kept, released;
} G;

void
ps_gil_configure(gboolean keep)
{
  G.keep = keep;
}

void
ps_gil_counts(guint64 *kept, guint64 *released)
{
  *kept = __atomic_load_n(&G.kept, __ATOMIC_RELAXED);
  *released = __atomic_load_n(&G.released, __ATOMIC_RELAXED);
}

void
ps_gil_counts_clear(void)
{
  __atomic_store_n(&G.kept, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&G.released, 0, __ATOMIC_RELAXED);
}

void
ps_gil_release_slow(void)
{
  ps_gil_defer.released = TRUE;
  __atomic_add_fetch(&G.released, 1, __ATOMIC_RELAXED);
  G.save();
}

/* The driver's Py_BEGIN_ALLOW_THREADS: the lock stays taken, and the thread state current,
 * until the call reaches a place that may wait (ps_gil_release) or returns. */
static void *
kept_save(void)
{
  /* A thread that kept the lock is inside the driver's call, where Python code cannot run:
   * it cannot come here again before kept_restore. Anything else is not ours to keep. */
  if (G_UNLIKELY(ps_gil_defer.tstate != NULL))
    return G.save();
  void *t = G.tstate_get();
  ps_gil_defer = (PsGilDefer){.tstate = t, .released = FALSE};
  return t;
}

/* The driver's Py_END_ALLOW_THREADS. */
static void
kept_restore(void *t)
{
  if (t && ps_gil_defer.tstate == t) {
    gboolean released = ps_gil_defer.released;
    ps_gil_defer = (PsGilDefer){0};
    if (!released) {
      __atomic_add_fetch(&G.kept, 1, __ATOMIC_RELAXED);
      return;
    }
  }
  G.restore(t);
}

/* The client library's calls that may wait. MSG_DONTWAIT reads and writes never do. */
static int
kept_poll(struct pollfd *fds, nfds_t n, int timeout)
{
  if (timeout != 0)
    ps_gil_release();
  return G.poll(fds, n, timeout);
}

static ssize_t
kept_recv(int fd, void *buf, size_t len, int flags)
{
  if (!(flags & MSG_DONTWAIT))
    ps_gil_release();
  return G.recv(fd, buf, len, flags);
}

static ssize_t
kept_send(int fd, const void *buf, size_t len, int flags)
{
  if (!(flags & MSG_DONTWAIT))
    ps_gil_release();
  return G.send(fd, buf, len, flags);
}

static int
kept_connect(int fd, const struct sockaddr *addr, socklen_t len)
{
  ps_gil_release();
  return G.connect(fd, addr, len);
}

static int
kept_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                 struct addrinfo **res)
{
  ps_gil_release();
  return G.getaddrinfo(node, service, hints, res);
}

static int
kept_usleep(useconds_t us)
{
  ps_gil_release();
  return G.usleep(us);
}

#if defined(__x86_64__)
#define SLOT_RELOC(t) ((t) == R_X86_64_JUMP_SLOT || (t) == R_X86_64_GLOB_DAT)
#elif defined(__aarch64__)
#define SLOT_RELOC(t) ((t) == R_AARCH64_JUMP_SLOT || (t) == R_AARCH64_GLOB_DAT)
#endif

#ifdef SLOT_RELOC
typedef struct {
  const char *name;
  void *fn;
  void **slots[SLOTS_MAX];
  guint nslots;
} PsRedirect;

typedef struct {
  ElfW(Addr) base;
  ElfW(Addr) relro_lo, relro_hi;
} PsRelro;

static int
find_relro(struct dl_phdr_info *info, size_t size, void *data)
{
  (void)size;
  PsRelro *r = data;
  if (info->dlpi_addr != r->base)
    return 0;
  for (int i = 0; i < info->dlpi_phnum; i++)
    if (info->dlpi_phdr[i].p_type == PT_GNU_RELRO) {
      r->relro_lo = r->base + info->dlpi_phdr[i].p_vaddr;
      r->relro_hi = r->relro_lo + info->dlpi_phdr[i].p_memsz;
    }
  return 1;
}

/* glibc relocates these d_ptr entries in place on most targets; not on all. */
static ElfW(Addr)
dyn_ptr(const struct link_map *lm, ElfW(Addr) p)
{
  return p < lm->l_addr ? lm->l_addr + p : p;
}

/* Finds the GOT slots of `r`'s names in `lm` (its PLT and GLOB_DAT relocations). */
static void
find_slots(const struct link_map *lm, PsRedirect *r, guint n)
{
  const ElfW(Rela) *tables[2] = {NULL, NULL};
  size_t sizes[2] = {0, 0};
  const ElfW(Sym) *sym = NULL;
  const char *str = NULL;
  gboolean rela_plt = TRUE;
  for (const ElfW(Dyn) *d = lm->l_ld; d->d_tag != DT_NULL; d++) {
    switch (d->d_tag) {
    case DT_JMPREL: tables[0] = (const void *)dyn_ptr(lm, d->d_un.d_ptr); break;
    case DT_PLTRELSZ: sizes[0] = d->d_un.d_val; break;
    case DT_PLTREL: rela_plt = d->d_un.d_val == DT_RELA; break;
    case DT_RELA: tables[1] = (const void *)dyn_ptr(lm, d->d_un.d_ptr); break;
    case DT_RELASZ: sizes[1] = d->d_un.d_val; break;
    case DT_SYMTAB: sym = (const void *)dyn_ptr(lm, d->d_un.d_ptr); break;
    case DT_STRTAB: str = (const void *)dyn_ptr(lm, d->d_un.d_ptr); break;
    default: break;
    }
  }
  if (!sym || !str || !rela_plt)
    return;
  for (guint t = 0; t < 2; t++)
    for (size_t i = 0; tables[t] && i < sizes[t] / sizeof(ElfW(Rela)); i++) {
      const ElfW(Rela) *rel = &tables[t][i];
      if (!SLOT_RELOC(ELF64_R_TYPE(rel->r_info)) || !ELF64_R_SYM(rel->r_info))
        continue;
      const char *name = str + sym[ELF64_R_SYM(rel->r_info)].st_name;
      for (guint k = 0; k < n; k++)
        if (r[k].nslots < SLOTS_MAX && strcmp(name, r[k].name) == 0)
          r[k].slots[r[k].nslots++] = (void **)(lm->l_addr + rel->r_offset);
    }
}

/* Writes each redirect's function into its slots, in the order given (a slot under RELRO is
 * made writable for the write). FALSE, with nothing written, when a slot cannot be. */
static gboolean
redirect(const struct link_map *lm, PsRedirect *r, guint n)
{
  PsRelro relro = {.base = lm->l_addr};
  dl_iterate_phdr(find_relro, &relro);
  /* The pages the loader made read-only (_dl_protect_relro): both ends rounded down, so a
   * last partial page stays writable and must stay so. */
  guintptr page = (guintptr)sysconf(_SC_PAGESIZE);
  guintptr lo = relro.relro_lo & ~(page - 1), hi = relro.relro_hi & ~(page - 1);
  gboolean opened = FALSE;
  for (guint k = 0; k < n && hi > lo; k++)
    for (guint s = 0; s < r[k].nslots; s++)
      opened = opened || ((guintptr)r[k].slots[s] >= lo && (guintptr)r[k].slots[s] < hi);
  if (opened && mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE) != 0)
    return FALSE;
  /* Aligned pointer stores: a thread calling through a slot meanwhile sees old or new. */
  for (guint k = 0; k < n; k++)
    for (guint s = 0; s < r[k].nslots; s++)
      __atomic_store_n(r[k].slots[s], r[k].fn, __ATOMIC_RELEASE);
  if (opened)
    mprotect((void *)lo, hi - lo, PROT_READ);
  return TRUE;
}

/* The client library's waiting calls, once for the process. */
static gboolean
redirect_library(const void *client_lib)
{
  Dl_info info;
  struct link_map *lm = NULL;
  if (!dladdr1(client_lib, &info, (void **)&lm, RTLD_DL_LINKMAP) || !lm)
    return FALSE;
  G.poll = (int (*)(struct pollfd *, nfds_t, int))dlsym(RTLD_NEXT, "poll");
  G.recv = (ssize_t(*)(int, void *, size_t, int))dlsym(RTLD_NEXT, "recv");
  G.send = (ssize_t(*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
  G.connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
  G.getaddrinfo = (int (*)(const char *, const char *, const struct addrinfo *,
                           struct addrinfo **))dlsym(RTLD_NEXT, "getaddrinfo");
  G.usleep = (int (*)(useconds_t))dlsym(RTLD_NEXT, "usleep");
  if (!G.poll || !G.recv || !G.send || !G.connect || !G.getaddrinfo || !G.usleep)
    return FALSE;
  PsRedirect r[] = {
    {.name = "poll", .fn = (void *)kept_poll},
    {.name = "recv", .fn = (void *)kept_recv},
    {.name = "send", .fn = (void *)kept_send},
    {.name = "connect", .fn = (void *)kept_connect},
    {.name = "getaddrinfo", .fn = (void *)kept_getaddrinfo},
    {.name = "usleep", .fn = (void *)kept_usleep},
  };
  find_slots(lm, r, G_N_ELEMENTS(r));
  /* Every call of the library that may wait must come here first, or none may be kept. */
  for (guint k = 0; k < G_N_ELEMENTS(r); k++)
    if (!r[k].nslots && strcmp(r[k].name, "usleep") != 0)
      return FALSE;
  return redirect(lm, r, G_N_ELEMENTS(r));
}

/* A Python MySQLdb module (mysqlclient's `_mysql`): every call it makes between releasing and
 * taking the lock is a client library call, whose waits redirect_library covers. */
static void
adopt_module(const void *caller, const void *client_lib)
{
  Dl_info info;
  struct link_map *lm = NULL;
  if (!dladdr1(caller, &info, (void **)&lm, RTLD_DL_LINKMAP) || !lm || !info.dli_fname)
    return;
  const char *base = strrchr(info.dli_fname, '/');
  base = base ? base + 1 : info.dli_fname;
  if (strncmp(base, "_mysql.", 7) != 0)
    return;
  G.save = (void *(*)(void))dlsym(RTLD_DEFAULT, "PyEval_SaveThread");
  G.restore = (void (*)(void *))dlsym(RTLD_DEFAULT, "PyEval_RestoreThread");
  G.tstate_get = (void *(*)(void))dlsym(RTLD_DEFAULT, "PyThreadState_Get");
  if (!G.save || !G.restore || !G.tstate_get)
    return;
  /* Restore first: a kept_save must always be undone by kept_restore. */
  PsRedirect r[] = {
    {.name = "PyEval_RestoreThread", .fn = (void *)kept_restore},
    {.name = "PyEval_SaveThread", .fn = (void *)kept_save},
  };
  find_slots(lm, r, G_N_ELEMENTS(r));
  if (!r[0].nslots || !r[1].nslots)
    return;
  if (!G.lib_done && !(G.lib_done = redirect_library(client_lib))) {
    ps_info("Python driver %s: the client library's waiting calls cannot be redirected; "
            "the interpreter's lock is let go around every call as the driver asks",
            info.dli_fname);
    return;
  }
  if (redirect(lm, r, G_N_ELEMENTS(r)))
    ps_info("Python driver %s: the interpreter's lock is kept through calls that do not "
            "wait (POOLSHIM_PYTHON_LOCK=keep)",
            info.dli_fname);
}
#endif

void
ps_gil_adopt(const void *caller, const void *client_lib)
{
  guint n = __atomic_load_n(&G.nseen, __ATOMIC_ACQUIRE);
  for (guint i = 0; i < n; i++)
    if (G.seen[i] == caller)
      return;
  if (!G.keep || n == SEEN_MAX)
    return;
  g_mutex_lock(&G.lock);
  n = G.nseen;
  gboolean seen = FALSE;
  for (guint i = 0; i < n; i++)
    seen = seen || G.seen[i] == caller;
  if (!seen && n < SEEN_MAX) {
#ifdef SLOT_RELOC
    adopt_module(caller, client_lib);
#else
    (void)client_lib;
#endif
    G.seen[n] = caller;
    __atomic_store_n(&G.nseen, n + 1, __ATOMIC_RELEASE);
  }
  g_mutex_unlock(&G.lock);
}

void
ps_gil_lock_for_fork(void)
{
  g_mutex_lock(&G.lock);
}

void
ps_gil_unlock_after_fork(void)
{
  g_mutex_unlock(&G.lock);
}
