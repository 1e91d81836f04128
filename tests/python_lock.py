"""Python MySQLdb under the shim: what a call does with the interpreter's lock
(POOLSHIM_PYTHON_LOCK, src/gil.c). Run by tests/test_python.c with the shim preloaded.

Usage: python_lock.py SCENARIO. Server from PS_TEST_*. Prints key=value lines.

  loop      16 threads, 40 connect / SELECT CONNECTION_ID(), SLEEP(0.002) / close each, on
            the pool the environment sets: the connects beyond the pool's size wait for a
            free connection while the interpreter's lock must be free for the others to
            close theirs. The 2 ms on the server make the waits certain: without them a
            loaded machine once ran all 640 connects without one finding the pool full.
  sleep     one thread runs SELECT SLEEP(1) on a pooled connection while another counts
            10 ms ticks: the lock must be let go while the query waits for the server.
  handover  pool of 1: thread A holds the connection; thread B connects and waits; A sees
            B waiting (in Python), closes, and B gets A's connection.
"""
import ctypes
import os
import sys
import threading
import time

import MySQLdb


class Stats(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "borrowed", "served_idle", "opened", "closed", "waits", "wait_timeouts", "resets",
        "unpooled")] + [(n, ctypes.c_uint) for n in (
            "open", "idle", "lent", "waiting", "pools")] + [
        ("python_lock_kept", ctypes.c_ulonglong), ("python_lock_released", ctypes.c_ulonglong)]


def stats():
    s = Stats()
    fn = ctypes.CDLL(None).poolshim_stats
    assert fn(ctypes.byref(s), ctypes.sizeof(s)) == 0
    return s


def connect():
    return MySQLdb.connect(host=os.environ["PS_TEST_HOST"], port=int(os.environ["PS_TEST_PORT"]),
                           user=os.environ["PS_TEST_USER"], passwd=os.environ["PS_TEST_PASSWORD"],
                           db=os.environ["PS_TEST_DB"])


def scalar(c, sql):
    cur = c.cursor()
    cur.execute(sql)
    v = cur.fetchone()[0]
    cur.close()
    return v


def report(**kv):
    for k, v in kv.items():
        print(f"{k}={v}")


def loop():
    ids, errors, lock = set(), [], threading.Lock()

    def work():
        for _ in range(40):
            try:
                c = connect()
                i = scalar(c, "SELECT CONNECTION_ID(), SLEEP(0.002)")
                c.close()
                with lock:
                    ids.add(i)
            except Exception as exc:  # every error is reported
                errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = stats()
    report(ids=len(ids), errors=len(errors), waits=s.waits, kept=s.python_lock_kept,
           released=s.python_lock_released, first_error=errors[0] if errors else "-")


def sleep():
    c = connect()
    scalar(c, "SELECT 1")
    ticks, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    result = {}

    def query():
        start = time.monotonic()
        result["value"] = scalar(c, "SELECT SLEEP(1)")
        result["span"] = (start, time.monotonic())

    t = threading.Thread(target=tick)
    t.start()
    q = threading.Thread(target=query)
    q.start()
    q.join()
    stop.set()
    t.join()
    c.close()
    start, end = result["span"]
    during = sum(1 for x in ticks if start + 0.1 <= x <= end - 0.1)
    report(value=result["value"], seconds=f"{end - start:.3f}", ticks_during=during)


def handover():
    a = connect()
    a_id = scalar(a, "SELECT CONNECTION_ID()")
    got, b_started = {}, threading.Event()

    def b():
        b_started.set()
        start = time.monotonic()
        c = connect()  # waits: the pool's one connection is A's
        got["waited"] = time.monotonic() - start
        got["id"] = scalar(c, "SELECT CONNECTION_ID()")
        c.close()

    t = threading.Thread(target=b)
    t.start()
    b_started.wait()
    # B is now in its connect, waiting for the pool: this thread runs Python meanwhile.
    deadline = time.monotonic() + 5
    while stats().waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    waiting = stats().waiting
    time.sleep(0.2)
    a.close()
    t.join()
    report(waiting=waiting, same=int(got.get("id") == a_id), waited_ms=int(got.get("waited", -1) * 1000))


{"loop": loop, "sleep": sleep, "handover": handover}[sys.argv[1]]()
