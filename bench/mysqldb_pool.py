"""A Django-style thread pool on MySQLdb: each task connects, runs SELECT 1, closes.

Usage: mysqldb_pool.py TASKS THREADS [--mode MODE]. Server from PS_TEST_*.
Prints one result line: seconds=... cycles=... errors=...

Modes:
  connect     (default) MySQLdb.connect / SELECT 1 / close in every task: what an
              unmodified program does; run it with and without LD_PRELOAD=libpoolshim.so.
  sqlalchemy  SQLAlchemy's QueuePool (create_engine("mysql+mysqldb://...", pool_size=16)),
              every task `with engine.connect() as c: c.execute(text("SELECT 1"))`: the
              in-process pool a program gets by changing its code.
  kept        one connection per worker thread, opened by its first task and kept open
              (thread-local): the limit any pool can reach.
"""
import argparse
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import MySQLdb

ap = argparse.ArgumentParser()
ap.add_argument("tasks", type=int)
ap.add_argument("threads", type=int)
ap.add_argument("--mode", choices=("connect", "sqlalchemy", "kept"), default="connect")
ap.add_argument("--pool-size", type=int, default=16, help="SQLAlchemy pool_size")
args = ap.parse_args()

ARGS = dict(host=os.environ["PS_TEST_HOST"], port=int(os.environ["PS_TEST_PORT"]),
            user=os.environ["PS_TEST_USER"], passwd=os.environ["PS_TEST_PASSWORD"],
            db=os.environ["PS_TEST_DB"])
first_error = []


def note(exc):
    if not first_error:
        first_error.append(exc)
    return 1


def task_connect(_):
    try:
        conn = MySQLdb.connect(**ARGS)
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            return 0 if cur.fetchone()[0] == 1 else 1
        finally:
            conn.close()
    except Exception as exc:  # counted, and the first one is printed
        return note(exc)


local = threading.local()
kept_conns = []
kept_lock = threading.Lock()


def task_kept(_):
    try:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = MySQLdb.connect(**ARGS)
            with kept_lock:
                kept_conns.append(conn)
        cur = conn.cursor()
        cur.execute("SELECT 1")
        return 0 if cur.fetchone()[0] == 1 else 1
    except Exception as exc:
        return note(exc)


engine = None
if args.mode == "sqlalchemy":
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import URL

    url = URL.create("mysql+mysqldb", username=ARGS["user"], password=ARGS["passwd"],
                     host=ARGS["host"], port=ARGS["port"], database=ARGS["db"])
    engine = create_engine(url, pool_size=args.pool_size)
    SELECT_1 = text("SELECT 1")


def task_sqlalchemy(_):
    try:
        with engine.connect() as c:
            return 0 if c.execute(SELECT_1).scalar() == 1 else 1
    except Exception as exc:
        return note(exc)


task = {"connect": task_connect, "kept": task_kept, "sqlalchemy": task_sqlalchemy}[args.mode]
start = time.monotonic()
with ThreadPoolExecutor(args.threads) as pool:
    errors = sum(pool.map(task, range(args.tasks)))
seconds = time.monotonic() - start
for c in kept_conns:
    c.close()
if engine is not None:
    engine.dispose()
if first_error:
    print(f"first error: {first_error[0]!r}", file=sys.stderr)
print(f"seconds={seconds:.4f} cycles={args.tasks} errors={errors}")
sys.exit(1 if errors else 0)
