"""The Django workload of issue 13 (the transaction grain): a thread pool whose threads keep
their database connection (CONN_MAX_AGE=None, Django's persistent connections: one per
worker thread for the thread's whole life). Each task is an atomic create + count of the
thread's own rows, then think time, then a read of the created row. Every answer is checked
against what the thread itself wrote; at the end the table must hold exactly the rows the
tasks created (no lost or doubled row).

Usage: grain_django.py TASKS THREADS [--think-ms MS] [--per-task]. Server from PS_TEST_*.
  --per-task   CONN_MAX_AGE=0 and connection.close() after every task (a connection per
               task, Django's default), for the no-pool comparison.
Prints two lines: tasks=TASKS seconds=S errors=E+W (for scripts/demo's harness), then
seconds=S cycles=TASKS errors=E wrong=W (for bench/run.py); exit 1 if E or W is not 0.
The model has managed=False: its table is created with raw SQL first (no migrations)."""
import argparse
import itertools
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ap = argparse.ArgumentParser()
ap.add_argument("tasks", type=int)
ap.add_argument("threads", type=int)
ap.add_argument("--think-ms", type=float, default=2.0)
ap.add_argument("--per-task", action="store_true")
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
        "CONN_MAX_AGE": 0 if args.per_task else None,
    }},
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()
from django.db import connection, connections, models, transaction  # noqa: E402


class Item(models.Model):
    worker = models.IntegerField()
    n = models.IntegerField()
    note = models.CharField(max_length=64)

    class Meta:
        app_label = "grainbench"
        db_table = "grain_item"
        managed = False


with connection.cursor() as cur:
    cur.execute("DROP TABLE IF EXISTS grain_item")
    cur.execute("CREATE TABLE grain_item (id INT AUTO_INCREMENT PRIMARY KEY, worker INT NOT "
                "NULL, n INT NOT NULL, note VARCHAR(64) NOT NULL, KEY (worker)) ENGINE=InnoDB")
connection.close()  # the main thread holds no connection during the run

local = threading.local()
ids = itertools.count()
lock = threading.Lock()
problems = []
created = [0]


def problem(kind, text):
    with lock:
        problems.append((kind, text))


def task(i):
    """Returns (errors, wrong) of one task."""
    if not hasattr(local, "worker"):
        local.worker, local.made = next(ids), 0
    w = local.worker
    try:
        with transaction.atomic():
            item = Item.objects.create(worker=w, n=i, note=f"task {i} of worker {w}")
            count = Item.objects.filter(worker=w).count()
        local.made += 1
        with lock:
            created[0] += 1
        wrong = 0
        if count != local.made:
            problem("wrong", f"worker {w}: counted {count} own rows, made {local.made}")
            wrong += 1
        time.sleep(args.think_ms / 1000)
        again = Item.objects.get(pk=item.pk)
        if (again.worker, again.n, again.note) != (w, i, f"task {i} of worker {w}"):
            problem("wrong", f"worker {w}: row {item.pk} reads back as "
                             f"{(again.worker, again.n, again.note)}")
            wrong += 1
        return 0, wrong
    except Exception as exc:  # counted; the first few are printed
        problem("error", f"worker {w}: {exc!r}")
        return 1, 0
    finally:
        if args.per_task:
            connection.close()


start = time.monotonic()
with ThreadPoolExecutor(args.threads) as pool:
    results = list(pool.map(task, range(args.tasks)))
seconds = time.monotonic() - start
errors = sum(r[0] for r in results)
wrong = sum(r[1] for r in results)
try:  # no lost or doubled row: the table against the tasks whose transaction committed
    with connection.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM grain_item")
        rows = cur.fetchone()[0]
    if rows != created[0]:
        problem("wrong", f"the table has {rows} rows, the tasks created {created[0]}")
        wrong += 1
except Exception as exc:
    problem("error", f"final count: {exc!r}")
    errors += 1
connections.close_all()
for kind, text in problems[:3]:
    print(f"grain_django: {kind}: {text}", file=sys.stderr)
if len(problems) > 3:
    print(f"grain_django: ... {len(problems) - 3} more", file=sys.stderr)
# scripts/demo's line (demo/harness.py: wrong answers count as errors), then bench/run.py's.
print(f"tasks={args.tasks} seconds={seconds:.4f} errors={errors + wrong}")
print(f"seconds={seconds:.4f} cycles={args.tasks} errors={errors} wrong={wrong}")
sys.exit(1 if errors or wrong else 0)
