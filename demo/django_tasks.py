"""demo/django_tasks.py -- owns the Django client of scripts/demo.

The classic case: Django's ORM used from a thread pool (a job runner, a threaded WSGI
server).  Each task creates a model row and reads it back, then closes the thread's
database connection, which is what close_old_connections() does at the end of every
request with the default CONN_MAX_AGE=0.  Standalone: settings.configure(), one model,
its table created with the schema editor.  Nothing in here knows about poolshim.

Usage: /usr/bin/python3 django_tasks.py TASKS THREADS   (server from PS_TEST_*)
Prints one line: "tasks=N seconds=S errors=E"; exit 1 if any task failed.
"""
import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import django
from django.conf import settings

TASKS, THREADS = int(sys.argv[1]), int(sys.argv[2])

settings.configure(
    DEBUG=False,
    USE_TZ=True,
    INSTALLED_APPS=[],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "HOST": os.environ["PS_TEST_HOST"],
            "PORT": os.environ["PS_TEST_PORT"],
            "USER": os.environ["PS_TEST_USER"],
            "PASSWORD": os.environ["PS_TEST_PASSWORD"],
            "NAME": os.environ["PS_TEST_DB"],
            "CONN_MAX_AGE": 0,  # the default: one connection per request
        }
    },
)
django.setup()

from django.db import connection, models  # noqa: E402  (needs settings first)


class Order(models.Model):
    customer = models.CharField(max_length=64)
    amount = models.IntegerField()

    class Meta:
        app_label = "demo"
        db_table = "demo_order"


def create_table():
    with connection.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS demo_order")
    with connection.schema_editor() as editor:
        editor.create_model(Order)
    connection.close()


def task(i):
    """One unit of work; returns 1 on error, 0 on success."""
    try:
        order = Order.objects.create(customer=f"customer-{i % 97}", amount=i)
        again = Order.objects.get(pk=order.pk)
        if again.amount != i:
            raise AssertionError(f"task {i}: read back amount {again.amount}")
        return 0
    except Exception:  # count every exception, show the first few
        if task.shown < 3:
            task.shown += 1
            traceback.print_exc()
        return 1
    finally:
        connection.close()  # what close_old_connections() does with CONN_MAX_AGE=0


task.shown = 0

create_table()
start = time.monotonic()
with ThreadPoolExecutor(THREADS) as pool:
    errors = sum(pool.map(task, range(TASKS)))
seconds = time.monotonic() - start
print(f"tasks={TASKS} seconds={seconds:.4f} errors={errors}")
sys.exit(1 if errors else 0)
