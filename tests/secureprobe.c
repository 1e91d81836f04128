/* secureprobe: one connect through the shim in a process that may be privileged (the
 * secure test runs a setuid-root copy as another user). A setuid program ignores
 * LD_PRELOAD paths; /etc/ld.so.preload would load the shim before main, this probe loads it
 * with dlopen (the same code runs either way). Usage: secureprobe LIBPOOLSHIM; prints
 * secure=, euid=, connected= lines; the server comes from PS_TEST_*. */
#include <dlfcn.h>
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/auxv.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
  if (argc < 2) {
    fprintf(stderr, "usage: secureprobe LIBPOOLSHIM\n");
    return 2;
  }
  void *shim = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (!shim) {
    fprintf(stderr, "secureprobe: %s\n", dlerror());
    return 2;
  }
  MYSQL *(*connect)(MYSQL *, const char *, const char *, const char *, const char *,
                    unsigned int, const char *, unsigned long) =
    (__typeof__(connect))dlsym(shim, "mysql_real_connect");
  void (*close_)(MYSQL *) = (__typeof__(close_))dlsym(shim, "mysql_close");
  if (!connect || !close_) {
    fprintf(stderr, "secureprobe: the shim exports no mysql_real_connect/mysql_close\n");
    return 2;
  }
  printf("secure=%lu\neuid=%d\nruid=%d\n", getauxval(AT_SECURE), (int)geteuid(), (int)getuid());
  MYSQL *m = mysql_init(NULL);
  const char *port = getenv("PS_TEST_PORT");
  MYSQL *ok = connect(m, getenv("PS_TEST_HOST"), getenv("PS_TEST_USER"),
                      getenv("PS_TEST_PASSWORD"), getenv("PS_TEST_DB"),
                      (unsigned int)(port ? atoi(port) : 0), NULL, 0);
  printf("connected=%d\n", ok != NULL);
  if (!ok)
    printf("error=%u %s\n", mysql_errno(m), mysql_error(m));
  close_(m);
  return 0;
}
