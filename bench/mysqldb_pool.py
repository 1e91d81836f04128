"""A Django-style thread pool on MySQLdb: each task connects, runs SELECT 1, closes.

Usage: mysqldb_pool.py TASKS THREADS. Server from PS_TEST_*. Prints one result line."""
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import MySQLdb

TASKS, THREADS = int(sys.argv[1]), int(sys.argv[2])
ARGS = dict(host=os.environ["PS_TEST_HOST"], port=int(os.environ["PS_TEST_PORT"]),
            user=os.environ["PS_TEST_USER"], passwd=os.environ["PS_TEST_PASSWORD"],
            db=os.environ["PS_TEST_DB"])


def task(_):
    conn = MySQLdb.connect(**ARGS)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        return 0 if cur.fetchone()[0] == 1 else 1
    finally:
        conn.close()


start = time.monotonic()
with ThreadPoolExecutor(THREADS) as pool:
    errors = sum(pool.map(task, range(TASKS)))
print(f"seconds={time.monotonic() - start:.4f} cycles={TASKS} errors={errors}")
