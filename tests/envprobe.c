/* envprobe: a tiny unmodified client for tests that run it under different environments.
 * Usage: envprobe CYCLES [PASSWORD]; prints each cycle's CONNECTION_ID() on stdout. */
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>

int
main(int argc, char **argv)
{
  int cycles = argc > 1 ? atoi(argv[1]) : 1;
  const char *password = argc > 2 ? argv[2] : getenv("PS_TEST_PASSWORD");
  for (int i = 0; i < cycles; i++) {
    MYSQL *m = mysql_init(NULL);
    if (!mysql_real_connect(m, getenv("PS_TEST_HOST"), getenv("PS_TEST_USER"), password,
                            getenv("PS_TEST_DB"), (unsigned)atoi(getenv("PS_TEST_PORT")), NULL,
                            0)) {
      printf("error %u\n", mysql_errno(m));
      mysql_close(m);
      continue;
    }
    if (mysql_query(m, "SELECT CONNECTION_ID()") == 0) {
      MYSQL_RES *r = mysql_store_result(m);
      MYSQL_ROW row = mysql_fetch_row(r);
      printf("%s\n", row[0]);
      mysql_free_result(r);
    }
    mysql_close(m);
  }
  return 0;
}
