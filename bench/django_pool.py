"""A Django thread pool: each task uses the ORM's connection, runs SELECT 1, and closes
the connection as a request handler does at the end of a request (CONN_MAX_AGE=0).

Usage: django_pool.py TASKS THREADS [--persistent]. Server from PS_TEST_*. THREADS 1 runs
the tasks in the main thread (no executor).
Prints one result line: seconds=... cycles=... errors=...

  (default)     CONN_MAX_AGE=0 and connection.close() after every task: Django's default;
                run it with and without LD_PRELOAD=libpoolshim.so.
  --persistent  CONN_MAX_AGE=None and no close: Django's persistent connections, one per
                worker thread for the whole run (Django connections are thread-local).
"""
import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ap = argparse.ArgumentParser()
ap.add_argument("tasks", type=int)
ap.add_argument("threads", type=int)
ap.add_argument("--persistent", action="store_true")
args = ap.parse_args()

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.configure(
    DATABASES={"default": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": os.environ["PS_TEST_DB"],
        "USER": os.environ["PS_TEST_USER"],
        "PASSWORD": os.environ["PS_TEST_PASSWORD"],
        "HOST": os.environ["PS_TEST_HOST"],
        "PORT": os.environ["PS_TEST_PORT"],
        "CONN_MAX_AGE": None if args.persistent else 0,
    }},
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()
from django.db import connection, connections  # noqa: E402

first_error = []


def task(_):
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
            bad = 0 if cur.fetchone()[0] == 1 else 1
        if not args.persistent:
            connection.close()
        return bad
    except Exception as exc:  # counted, and the first one is printed
        if not first_error:
            first_error.append(exc)
        return 1


start = time.monotonic()
if args.threads == 1:
    # In this thread, with no executor: no second thread waits for the interpreter's lock
    # whenever MySQLdb lets go of it around a call into the client library.
    errors = sum(task(i) for i in range(args.tasks))
else:
    with ThreadPoolExecutor(args.threads) as pool:
        errors = sum(pool.map(task, range(args.tasks)))
seconds = time.monotonic() - start
connections.close_all()  # this thread's; worker threads' connections close with them
if first_error:
    print(f"first error: {first_error[0]!r}", file=sys.stderr)
print(f"seconds={seconds:.4f} cycles={args.tasks} errors={errors}")
sys.exit(1 if errors else 0)
