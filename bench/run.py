"""Runs the benchmark variants interleaved, several times, against the private server(s)
scripts/bench started, and writes a markdown report (bench/results/<UTC time>.md) and a
chart (.png) with medians, ratios against baselines measured in the same run, physical
connection counts and errors.

Every figure is a ratio against a baseline of the same run: in each repetition every
selected variant runs once, in a fixed order, so slow drift (thermal, other load, the
server's caches) hits every variant alike; a ratio is the median over repetitions of the
ratio between a variant and its baseline in the same repetition.

Physical connections come from the server (SHOW GLOBAL STATUS LIKE 'Connections' before
and after each run, over a separate admin connection), never from the shim.

Environment (set by scripts/bench): PS_TEST_* of the server (scripts/server),
PS_BENCH_DIR (scratch directory), PS_BENCH_TLS_CA (CA file the server's certificate is
signed with; the server has --ssl-ca/--ssl-cert/--ssl-key).

The group `grain` (issue 13, the transaction grain) runs programs that keep their handles
open (bench/holders, bench/grain_django.py); their peak of server connections is the
server's Max_used_connections after a FLUSH STATUS taken just before the run, minus the
connections open at that moment (this script's own).

Usage: run.py [--reps N] [--only GROUP[,GROUP...]] [--scale F] [--results DIR]
Groups: tcp socket tls rtt python django pyrtt fairness revalidate shimcost grain."""
import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time

import MySQLdb

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.join(ROOT, "build")
LIB = os.path.join(BUILD, "libpoolshim.so")
CYCLE = os.path.join(BUILD, "bench", "cycle")
PROXY = os.path.join(BUILD, "bench", "delayproxy")
HOLDERS = os.path.join(BUILD, "bench", "holders")
PY = "/usr/bin/python3"  # Debian's, where python3-mysqldb/-sqlalchemy/-django live

GROUPS = ["tcp", "socket", "tls", "rtt", "python", "django", "pyrtt", "fairness", "revalidate",
          "shimcost", "grain"]
POOL = 16            # POOLSHIM_POOL_SIZE of the poolshim variants (= SQLAlchemy's pool_size)
FAIR_POOL = 8        # the fairness group: 256 (and 8) threads on a pool of 8
DELAY_US = 250       # delayproxy: per chunk and direction, so +0.5 ms per round trip
PY_THREADS = 16
RTT_PY_THREADS = 4   # the pyrtt group: few threads, so the round trips, not the GIL, limit
# Strict FIFO service's throughput with 256 threads on the pool of 8, as a fraction of 8
# threads' (bench/results/20261203T122844Z.md, the last run before barging, quiet machine):
# what every thread's mean wait under strict FIFO (its FIFO share) is computed from.
FIFO_RATIO = {"poolshim": 0.40, "always": 0.70}


def quantum_us():
    """PS_POOL_QUANTUM_US from src/pool.h: how long a looping thread may re-take its own
    returns while others wait (one run); then its return goes to the oldest waiter."""
    with open(os.path.join(ROOT, "src", "pool.h")) as f:
        m = re.search(r"#define PS_POOL_QUANTUM_US \(\(gint64\)(\d+)\)", f.read())
    return int(m.group(1)) if m else None


# Per turn of a connection, beyond its run's quantum: the run's last loan, the grace a held
# return waits, and the wake-up of the waiter it goes to (256 threads on 2 cores).
TURN_SLACK_US = 1000


GROUP_TITLES = {
    "tcp": "C loop, TCP",
    "socket": "C loop, unix socket",
    "tls": "C loop, TLS (TCP)",
    "rtt": "C loop, TCP + 0.5 ms RTT",
    "python": f"Python MySQLdb, {PY_THREADS}-thread pool",
    "django": f"Django ORM, {PY_THREADS}-thread pool",
    "fairness": f"256 threads on a pool of {FAIR_POOL}",
    "pyrtt": f"Python MySQLdb, {RTT_PY_THREADS} threads, 0.5 ms RTT",
    "djrtt": f"Django ORM, {RTT_PY_THREADS} threads, 0.5 ms RTT",
    "django1": "Django ORM, one thread",
    "revalidate": "C loop, TCP, credentials proved again (POOLSHIM_REVALIDATE)",
}

# The group `grain` (issue 13): programs that hold their handles open, on a pool of 8.
# Each workload is a sub-group of its own; its baseline is the kept connection (the
# program as it is, without the pool).
GRAIN_POOL = 8
GRAIN_TIMEOUT = "10s"  # POOLSHIM_TIMEOUT of the pooled variants: how long a waiter waits
GRAIN_WORKLOADS = {    # sub-group: (title, threads, tasks before --scale, command maker)
    "grain-django": ("Django ORM, 32 threads, CONN_MAX_AGE=None, 2 ms think", 32, 1600,
                     lambda t, per_task: [PY, os.path.join(HERE, "grain_django.py"), str(t),
                                          "32", "--think-ms", "2"]
                     + (["--per-task"] if per_task else [])),
    "grain-holders": ("C, 64 threads each holding a handle, 3 ms think", 64, 6400,
                      lambda t, per_task: [HOLDERS, "--threads", "64", "--tasks", str(t),
                                           "--think-us", "3000"]
                      + (["--per-task"] if per_task else [])),
    "grain-one": ("C, one thread holding one handle, no think time", 1, 4000,
                  lambda t, per_task: [HOLDERS, "--threads", "1", "--tasks", str(t),
                                       "--think-us", "0"] + (["--per-task"] if per_task else [])),
    "grain-mixed": ("C, 16 threads, half with their own time zone, user variable or "
                    "session variable, 1 ms think", 16, 3200,
                    lambda t, per_task: [HOLDERS, "--threads", "16", "--tasks", str(t),
                                         "--think-us", "1000", "--mixed"]
                    + (["--per-task"] if per_task else [])),
}
for _g, _w in GRAIN_WORKLOADS.items():
    GROUP_TITLES[_g] = _w[0]
GRAIN_LIMITS = {"grain-django": 1.10, "grain-holders": 1.10, "grain-one": 1.05}

# Cycles per run (before --scale), chosen so that a run takes roughly 0.5 to 2 s on a
# 2-core machine: slow variants (no-pool TLS, 0.5 ms RTT) get fewer cycles.
CYCLES = {
    "tcp": {"nopool": {1: 4000, 8: 8000, 64: 8000}, "poolshim": {1: 8000, 8: 16000, 64: 16000},
            "kept": {1: 16000, 8: 32000, 64: 32000}},
    "tls": {"nopool": {1: 500, 8: 1000, 64: 1000}, "poolshim": {1: 6000, 8: 12000, 64: 12000},
            "kept": {1: 12000, 8: 32000, 64: 32000}},
    "rtt": {"nopool": {1: 400, 8: 3000, 64: 3000}, "poolshim": {1: 600, 8: 4000, 64: 5000},
            "kept": {1: 1600, 8: 8000, 64: 16000}},
}
for _g in CYCLES.values():  # the strict mode runs as many cycles as the default
    _g["always"] = _g["poolshim"]
CYCLES["socket"] = CYCLES["tcp"]
LABELS = {"nopool": "no pool", "poolshim": "poolshim", "kept": "kept connection (limit)",
          "always": "poolshim, POOLSHIM_RESET=always",
          "sqlalchemy": "SQLAlchemy QueuePool (code change)",
          "persistent": "CONN_MAX_AGE=None (persistent)",
          "reval": "poolshim, POOLSHIM_REVALIDATE=1ms (a proof at most every ms)",
          "pertask": "no pool, a connection per task",
          "gconnect": "poolshim, POOLSHIM_GRAIN=connect (the default)",
          "gtrans": "poolshim, POOLSHIM_GRAIN=transaction",
          "ownpool": f"the program's own pool of {GRAIN_POOL} (rewritten: a connection per "
                     "task from a shared stack, no reset, no restore; reference)",
          "ownshared": "the program's own pool (rewritten: kept connections shared from a "
                       "stack, no connect, no close; reference)"}


class Variant:
    def __init__(self, group, tag, threads, cycles, cmd, env=None, pool=None, tls=False,
                 proxy=False, baseline="nopool", label=None, latency=False, peak=False,
                 known_failure=None):
        self.group, self.tag, self.threads, self.cycles = group, tag, threads, cycles
        self.cmd, self.env, self.pool, self.tls, self.proxy = cmd, env or {}, pool, tls, proxy
        self.baseline, self.latency = baseline, latency
        # peak: measure the peak of server connections (Max_used_connections);
        # known_failure: why this variant is expected to fail today (reported, and not
        # counted in the exit status).
        self.peak, self.known_failure = peak, known_failure
        self.label = label or LABELS[tag]
        self.runs = []

    @property
    def key(self):
        return (self.group, self.threads, self.tag)

    @property
    def baseline_key(self):
        if self.group == "fairness":
            return (self.group, FAIR_POOL, self.tag)
        return (self.group, self.threads, self.baseline)

    @property
    def is_cycle(self):
        return self.cmd[0] == CYCLE


def preload(pool, tag="poolshim"):
    """The environment of a pooled variant: `poolshim` runs the default reset mode (auto),
    `always` the strict one that resets every returned session."""
    env = {"LD_PRELOAD": LIB, "POOLSHIM_POOL_SIZE": str(pool)}
    if tag == "always":
        env["POOLSHIM_RESET"] = "always"
    return env


POOLED = ("poolshim", "always")


def variants(groups, scale):
    def n(x):
        return max(1, int(x * scale))

    out = []
    for g in ("tcp", "socket", "tls", "rtt"):
        if g not in groups:
            continue
        extra = {"socket": ["--socket"], "tls": ["--tls", os.environ.get("PS_BENCH_TLS_CA", "")]}
        for threads in (1, 8, 64):
            for tag in ("nopool", "poolshim", "always", "kept"):
                cyc = max(threads, n(CYCLES[g][tag][threads]))
                cmd = [CYCLE, "--threads", str(threads), "--cycles", str(cyc)]
                cmd += extra.get(g, []) + (["--kept"] if tag == "kept" else [])
                out.append(Variant(g, tag, threads, cyc, cmd,
                                   env=preload(POOL, tag) if tag in POOLED else {},
                                   pool=POOL if tag in POOLED else None,
                                   tls=g == "tls", proxy=g == "rtt"))
    def mysqldb(group, threads, tasks, proxy=False):
        script = os.path.join(HERE, "mysqldb_pool.py")
        tasks = tasks[:2] + tasks[1:]  # the strict mode runs as many tasks as the default
        for (tag, mode), t in zip((("nopool", "connect"), ("poolshim", "connect"),
                                   ("always", "connect"), ("sqlalchemy", "sqlalchemy"),
                                   ("kept", "kept")), tasks):
            cmd = [PY, script, str(n(t)), str(threads), "--mode", mode, "--pool-size", str(POOL)]
            out.append(Variant(group, tag, threads, n(t), cmd,
                               env=preload(POOL, tag) if tag in POOLED else {},
                               pool=POOL if tag in POOLED else None, proxy=proxy))

    def django(group, threads, tasks, proxy=False):
        script = os.path.join(HERE, "django_pool.py")
        tasks = tasks[:2] + tasks[1:]
        for tag, t in zip(("nopool", "poolshim", "always", "persistent"), tasks):
            cmd = [PY, script, str(n(t)), str(threads)]
            cmd += ["--persistent"] if tag == "persistent" else []
            out.append(Variant(group, tag, threads, n(t), cmd,
                               env=preload(POOL, tag) if tag in POOLED else {},
                               pool=POOL if tag in POOLED else None, proxy=proxy))

    if "python" in groups:
        mysqldb("python", PY_THREADS, (3000, 4000, 4000, 6000))
    if "django" in groups:
        django("django", PY_THREADS, (2000, 3000, 5000))
        # The same tasks on one thread: no other thread waits for the interpreter's lock
        # each time MySQLdb lets go of it around a call into the client library.
        django("django1", 1, (1000, 3000, 5000))
    if "pyrtt" in groups:
        # The interpreted clients where the network is not loopback: each connect's own
        # setup statements are round trips (MySQLdb: SET autocommit; Django: four).
        mysqldb("pyrtt", RTT_PY_THREADS, (300, 800, 800, 1500), proxy=True)
        django("djrtt", RTT_PY_THREADS, (200, 500, 1200), proxy=True)
    if "revalidate" in groups:
        # The cost of proving a pool's credentials again (COM_CHANGE_USER on the connect
        # path): the default (one proof a minute) against one every millisecond (the
        # smallest interval; at most one proof per connect).
        cyc = n(CYCLES["tcp"]["poolshim"][1])
        for tag, env in (("poolshim", preload(POOL)),
                         ("reval", dict(preload(POOL), POOLSHIM_REVALIDATE="1ms"))):
            cmd = [CYCLE, "--threads", "1", "--cycles", str(cyc)]
            out.append(Variant("revalidate", tag, 1, cyc, cmd, env=env, pool=POOL,
                               baseline="poolshim"))
    if "grain" in groups:
        # Variants: no pool with a connection per task (the program changed to give its
        # connection back), poolshim's connect grain (today's default: a handle holds its
        # connection until mysql_close, so threads beyond the pool size wait, then fail
        # with 1040), the transaction grain, and the kept connection (the program as it
        # is, without the pool: the baseline of every ratio).
        for g, (title, threads, tasks, make) in GRAIN_WORKLOADS.items():
            t = max(threads, n(tasks))
            # The holders also run as their own pool of 8 (bench/holders --shared): what
            # any pool of that size can do at best, at the task's grain, told by the
            # program itself (the server's group commit shares an fsync among fewer
            # commits with 8 connections than with 64).
            tags = ("pertask", "gconnect", "gtrans") + (
                ("ownpool",) if g == "grain-holders" else ()) + ("kept",)
            for tag in tags:
                env, pool, known = {}, None, None
                if tag in ("gconnect", "gtrans"):
                    env = {"LD_PRELOAD": LIB, "POOLSHIM_POOL_SIZE": str(GRAIN_POOL),
                           "POOLSHIM_TIMEOUT": GRAIN_TIMEOUT,
                           "POOLSHIM_GRAIN": "connect" if tag == "gconnect" else "transaction"}
                    pool = GRAIN_POOL
                if tag == "gconnect" and threads > GRAIN_POOL:
                    known = (f"issue 13: each of the {threads} threads holds a handle, the "
                             "connect grain lends a connection per handle")
                cmd = make(t, tag == "pertask")
                if tag == "ownpool":
                    cmd += ["--shared", str(GRAIN_POOL)]
                out.append(Variant(g, tag, threads, t, cmd, env=env,
                                   pool=pool, baseline="kept", peak=True,
                                   known_failure=known))
    if "fairness" in groups:
        # The pooled variants, and the same threads sharing 8 kept connections in the
        # program itself (`ownshared`, cycle --shared): what 256 threads on 8 connections
        # cost on this machine whatever the pool.
        for tag in POOLED + ("ownshared",):
            # About 40,000 cycles each: long enough that starting and ending 256 threads is
            # a small part of the run (at 32 cycles a thread it was most of its noise), and
            # a thread of the 256 goes through several runs of bounded barging (pool.c).
            for threads, per in ((FAIR_POOL, 5000), (256, 160)):
                cyc = threads * max(1, n(per))
                cmd = [CYCLE, "--threads", str(threads), "--cycles", str(cyc), "--latency"]
                if tag == "ownshared":
                    out.append(Variant("fairness", tag, threads, cyc,
                                       cmd + ["--shared", str(FAIR_POOL)], latency=True,
                                       label=f"{LABELS[tag]}, {threads} threads, "
                                             f"{FAIR_POOL} connections"))
                    continue
                out.append(Variant("fairness", tag, threads, cyc, cmd,
                                   env=preload(FAIR_POOL, tag), pool=FAIR_POOL, latency=True,
                                   label=f"{LABELS[tag]}, {threads} threads, pool of {FAIR_POOL}"))
    return out


# --- the server and the proxy ------------------------------------------------------------

def admin():
    return MySQLdb.connect(unix_socket=os.environ["PS_TEST_SOCKET"],
                           user=os.environ["PS_TEST_ROOT_USER"],
                           passwd=os.environ["PS_TEST_ROOT_PASSWORD"])


def status(conn, name):
    cur = conn.cursor()
    cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
    return int(cur.fetchone()[1])


def settle(conn, seconds=5.0):
    """Waits (at most `seconds`) until only this script's connection is left on the server
    (the server threads of a finished run need a moment to go away); returns how many
    connections are open."""
    deadline = time.monotonic() + seconds
    while True:
        n = status(conn, "Threads_connected")
        if n <= 1 or time.monotonic() > deadline:
            return n
        time.sleep(0.01)


class Proxy:
    """bench/delayproxy in front of the server's TCP port, SCHED_FIFO when permitted so
    that the simulated network does not queue behind the benchmark's own threads."""

    def __init__(self, workdir):
        self.log_path = os.path.join(workdir, "delayproxy.log")
        self.log = open(self.log_path, "a")
        base = [PROXY, "--delay-us", str(DELAY_US), os.environ["PS_TEST_HOST"],
                os.environ["PS_TEST_PORT"]]
        self.realtime = True
        self.proc = None
        for cmd in (["chrt", "-f", "1"] + base, base):
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
            line = proc.stdout.readline()
            if line.startswith("port="):
                self.proc, self.port = proc, int(line.split("=")[1])
                break
            proc.wait()
            self.realtime = False
        if not self.proc:
            raise RuntimeError(f"delayproxy did not start; see {self.log_path}")
        with open(os.path.join(workdir, "delayproxy.pid"), "w") as f:
            f.write(f"{self.proc.pid}\n")

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _lines(self):
        with open(self.log_path) as f:
            # Only whole lines: the proxy may be writing the last one right now.
            return [l for l in f if l.startswith("delayproxy: connections=") and l.endswith("\n")]

    def stats(self):
        """Sends SIGUSR1 (print and reset the counters) and returns the printed line."""
        before = len(self._lines())
        self.proc.send_signal(signal.SIGUSR1)
        for _ in range(200):
            lines = self._lines()
            if len(lines) > before:
                return dict(kv.split("=", 1) for kv in lines[-1].split()[1:] if "=" in kv)
            time.sleep(0.01)
        return {}

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


# --- CPU used by others ------------------------------------------------------------------

def _busy_seconds():
    """CPU time of the whole machine (user+nice+system+irq+softirq), and steal."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    steal = v[7] if len(v) > 7 else 0
    return busy / hz, steal / hz


def _pid_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def server_pid():
    try:
        with open(os.path.join(os.environ["PS_TEST_SERVER_DIR"], "mariadbd.pid")) as f:
            return int(f.read().strip())
    except (KeyError, OSError, ValueError):
        return None


class CpuMeter:
    """How much CPU other processes (not this benchmark, its children, its server or its
    proxy) used: the machine's busy time from /proc/stat minus ours. Kernel threads that
    carry our own loopback traffic (ksoftirqd) count as others, so it is never quite 0."""

    def __init__(self, proxy_pid=None):
        self.spid, self.proxy_pid = server_pid(), proxy_pid
        self.t0 = time.monotonic()
        self.m0 = self._mine()
        self.b0, self.s0 = _busy_seconds()

    def _mine(self):
        import resource
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        mine = s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
        if self.spid:
            mine += _pid_cpu(self.spid)
        if self.proxy_pid:
            mine += _pid_cpu(self.proxy_pid)
        return mine

    def read(self):
        b, st = _busy_seconds()
        wall = time.monotonic() - self.t0
        other = max(0.0, (b - self.b0) - (self._mine() - self.m0))
        return {"wall": wall, "other": other, "steal": st - self.s0,
                "other_pct": 100 * other / (wall * (os.cpu_count() or 1)) if wall else 0}


# --- running ---------------------------------------------------------------------------

def run_once(conn, v, proxy):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.update(v.env)
    if v.proxy:
        env["PS_TEST_PORT"] = str(proxy.port)
        proxy.stats()  # reset its counters
        cpu0 = proxy.cpu_seconds()
    if v.peak:
        idle = settle(conn)
        conn.cursor().execute("FLUSH STATUS")  # Max_used_connections := connected now
    before = status(conn, "Connections")
    spid = server_pid()
    scpu0 = _pid_cpu(spid) if spid else None
    t0 = time.monotonic()
    try:
        res = subprocess.run(v.cmd, env=env, capture_output=True, text=True, timeout=300)
        rc, stdout, stderr = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = -1, "", f"timed out after {exc.timeout} s"
    wall = time.monotonic() - t0
    after = status(conn, "Connections")
    scpu1 = _pid_cpu(spid) if spid else None
    if v.peak:
        peak = status(conn, "Max_used_connections") - idle
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    fields = dict(kv.split("=", 1) for kv in last.split() if "=" in kv)
    r = {"rc": rc, "conns": after - before, "wall": wall, "notes": []}
    if v.peak:
        r["peak"] = peak
    if scpu0 is not None and v.cycles:
        r["server_us"] = (scpu1 - scpu0) * 1e6 / v.cycles  # server CPU per cycle
    if "seconds" in fields:
        r["seconds"] = float(fields["seconds"])
        r["errors"] = int(fields["errors"])
        r["wrong"] = int(fields.get("wrong", 0))
        r["errors"] += r["wrong"]  # a wrong answer is an error of the run too
        r["fields"] = fields
    else:
        r["seconds"] = None
        r["errors"] = v.cycles
        r["fields"] = {}
        r["notes"].append(f"failed (exit {rc})")
    err_lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    if err_lines:
        head = " / ".join(err_lines[:3])
        r["notes"].append("stderr: " + head[:240]
                          + (f" (+{len(err_lines) - 3} lines)" if len(err_lines) > 3 else ""))
    if rc != 0 or r["errors"] or err_lines:
        r["log"] = (f"$ {' '.join(f'{k}={val}' for k, val in v.env.items())} "
                    f"{' '.join(v.cmd)}\nexit {rc}\n--- stdout\n{stdout[-2000:]}"
                    f"--- stderr\n{stderr[-6000:]}\n")
    if v.is_cycle and "cipher" in fields:
        c = fields["cipher"]
        r["cipher"] = c
        if v.tls and c in ("none", "error"):
            r["errors"] += 1
            r["notes"].append(f"TLS not in use (Ssl_cipher: {c})")
        if not v.tls and c != "none":
            r["errors"] += 1
            r["notes"].append(f"unexpected Ssl_cipher: {c}")
    if v.proxy:
        r["proxy"] = proxy.stats()
        r["proxy_cpu"] = proxy.cpu_seconds() - cpu0
    return r


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def throughput(r, v):
    return v.cycles / r["seconds"] if r["seconds"] else None


def summarise(todo):
    by_key = {v.key: v for v in todo}
    for v in todo:  # first: a baseline may come after its variants (grain: kept last)
        v.thr = [throughput(r, v) for r in v.runs]
    for v in todo:
        v.med_thr = median(v.thr)
        v.med_sec = median(r["seconds"] for r in v.runs)
        v.conns = max(r["conns"] for r in v.runs)
        v.med_server_us = median(r.get("server_us") for r in v.runs)
        v.errors = sum(r["errors"] for r in v.runs)
        v.wrong = sum(r.get("wrong", 0) for r in v.runs)
        v.peak_max = max((r["peak"] for r in v.runs if "peak" in r), default=None)
        base = by_key.get(v.baseline_key)
        v.ratio = None
        if base is not None and base is not v:
            pairs = [a / b for a, b in zip(v.thr, base.thr) if a and b]
            v.ratio = median(pairs) if pairs else None
        notes = []
        for r in v.runs:
            for nte in r["notes"]:
                if nte not in notes:
                    notes.append(nte)
        v.notes = notes
    return by_key


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def fmt_num(x, spec=",.0f"):
    return "-" if x is None else format(x, spec)


def spread(xs):
    """min-max of the repetitions, compact (the noise a median hides)."""
    xs = [x for x in xs if x]
    if len(xs) < 2:
        return "-"

    def k(x):
        return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"
    return f"{k(min(xs))}-{k(max(xs))}"


def versions(conn):
    cur = conn.cursor()
    cur.execute("SELECT VERSION()")
    server = cur.fetchone()[0]
    client = MySQLdb._mysql.get_client_info()
    try:
        pkg = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libmariadb3"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        pkg = ""
    shim = "?"
    try:
        with open(os.path.join(BUILD, "ps-version.h")) as f:
            m = re.search(r'POOLSHIM_VERSION\s+"([^"]+)"', f.read())
            shim = m.group(1) if m else "?"
    except OSError:
        pass
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain"],
                           capture_output=True, text=True).stdout.strip()
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            cpu = m.group(1).strip() if m else ""
    except OSError:
        pass
    return dict(server=server, client=client, client_pkg=pkg, shim=shim,
                git=git + (" with uncommitted changes" if dirty else ""), cpu=cpu)


# --- the report ----------------------------------------------------------------------------

def report(todo, by_key, groups, args, vers, shimcost, proxy_info, started, wall, cpu=None):
    L = []
    # The fairness group's reference: 256 over 8 threads on the program's own pool.
    o8, o256 = (by_key.get(("fairness", t, "ownshared")) for t in (FAIR_POOL, 256))
    own_ratio = o256.med_thr / o8.med_thr if o8 and o256 and o8.med_thr and o256.med_thr else None
    now = started.strftime("%Y-%m-%d %H:%M UTC")
    L.append(f"# poolshim benchmark, {now}")
    L.append("")
    L.append(f"- machine: `nproc` = {os.cpu_count()}, {vers['cpu'] or platform.processor()}, "
             f"Linux {platform.release()}")
    L.append(f"- client library: MariaDB Connector/C {vers['client']} (libmariadb3 "
             f"{vers['client_pkg']}); server: MariaDB {vers['server']} (private, scripts/server)")
    L.append(f"- poolshim {vers['shim']}, git {vers['git']}; groups: {', '.join(groups)}; "
             f"{args.reps} repetitions, interleaved; run time {wall:.0f} s")
    L.append(f"- poolshim variants: `POOLSHIM_POOL_SIZE={POOL}` (fairness group: "
             f"{FAIR_POOL}), other settings default. Physical connections: the server's "
             "`Connections` counter before/after each run (max over repetitions; a C "
             "loop's count includes its final `Ssl_cipher` check connection).")
    L.append("- cycles/s: median over repetitions (*range*: slowest-fastest repetition); "
             "*vs baseline*: median over repetitions of the ratio to the baseline run of the "
             "same repetition (no pool at the same thread count; fairness: 8 threads).")
    if cpu:
        per = ", ".join(f"{c['other_pct']:.0f}%" for c in cpu["reps"])
        L.append(f"- other load: processes outside this benchmark used {cpu['total']['other']:.1f} "
                 f"CPU-seconds during the repetitions ({cpu['total']['other_pct']:.0f}% of the "
                 f"machine; per repetition: {per}); steal {cpu['total']['steal']:.1f} s; "
                 f"load average at the end: {cpu['loadavg']}.")
    if "tls" in groups:
        L.append("- TLS: CA and RSA-2048 server certificate made with `openssl` for this run; "
                 "the client sets `MYSQL_OPT_SSL_CA`, `MYSQL_OPT_SSL_ENFORCE` and "
                 "`MYSQL_OPT_SSL_VERIFY_SERVER_CERT`; every run checks `Ssl_cipher` "
                 "afterwards on a connection with the same options.")
    if proxy_info:
        L.append(f"- 0.5 ms RTT: `bench/delayproxy` delays every chunk by {DELAY_US} us per "
                 "direction and opens its server connection 1.5 round trips after accepting "
                 "(the TCP handshake a loopback connect() skips); "
                 f"{'SCHED_FIFO' if proxy_info['realtime'] else 'normal priority'}. "
                 f"{proxy_info['summary']}")
    L.append("")

    # Targets.
    L.append("## Targets (from the issues; reported, not tuned for)")
    L.append("")
    L.append("| target | measured | met |")
    L.append("|---|---:|:---:|")

    def target(desc, key, want):
        v = by_key.get(key)
        if v is None or v.ratio is None:
            return
        L.append(f"| {desc} | {v.ratio:.2f}x | {'yes' if v.ratio >= want else '**no**'} |")

    target("8 threads, TLS: poolshim >= 20x no pool", ("tls", 8, "poolshim"), 20)
    target("8 threads, 0.5 ms RTT: poolshim >= 3x no pool", ("rtt", 8, "poolshim"), 3)

    def ratio_row(desc, a_key, b_key, want, at_most=False, attr="med_thr"):
        """a / b of one attribute (cycles/s or server CPU per cycle) against a limit."""
        a, b = by_key.get(a_key), by_key.get(b_key)
        x = None
        if a and b:
            va, vb = getattr(a, attr, None), getattr(b, attr, None)
            x = va / vb if va and vb else None
        if x is None:
            return
        ok = x <= want if at_most else x >= want
        L.append(f"| {desc} | {x:.2f}x | {'yes' if ok else '**no**'} |")

    # Issue 12 (reset only what changed): the default mode (auto), then the strict mode
    # (always) against the same limits, so the price of resetting every return is visible.
    for tag, name in (("poolshim", "poolshim"), ("always", "always")):
        for thr in (1, 8):
            ratio_row(f"{thr} thread{'s' if thr > 1 else ''}, TCP: kept connection / {name} "
                      "<= 1.15", ("tcp", thr, "kept"), ("tcp", thr, tag), 1.15, at_most=True)
        target(f"8 threads, TCP: {name} >= 5x no pool", ("tcp", 8, tag), 5)
        for thr in (1, 8):
            ratio_row(f"{thr} thread{'s' if thr > 1 else ''}, TCP: server CPU per cycle, "
                      f"{name} / kept connection <= 1.2", ("tcp", thr, tag), ("tcp", thr, "kept"),
                      1.2, at_most=True, attr="med_server_us")
        ratio_row(f"MySQLdb, 16 threads: {name} / SQLAlchemy QueuePool >= 1.10",
                  ("python", PY_THREADS, tag), ("python", PY_THREADS, "sqlalchemy"), 1.10)
        target(f"Django, 16 threads, CONN_MAX_AGE=0: {name} >= 2x no pool",
               ("django", PY_THREADS, tag), 2)
        one = by_key.get(("django1", 1, tag))
        if one and one.ratio:
            L.append(f"| (no target) Django, one thread, CONN_MAX_AGE=0: {name} / no pool | "
                     f"{one.ratio:.2f}x | - |")
        f8, f256 = by_key.get(("fairness", FAIR_POOL, tag)), by_key.get(("fairness", 256, tag))
        if f8 and f256 and f8.med_thr and f256.med_thr:
            x = f256.med_thr / f8.med_thr
            L.append(f"| {name}, 256 threads on a pool of {FAIR_POOL}: >= 0.90 of {FAIR_POOL} "
                     f"threads | {x:.2f}x | {'yes' if x >= 0.9 else '**no**'} |")
            # Bounded barging: most connects of a looping thread wait ~0, so the median says
            # nothing about fairness. What can fail is starvation. A waiter with P others
            # ahead on N connections waits at most ceil((P + 1) / N) runs of one quantum each
            # (plus the slack of a turn), and no thread's mean wait may exceed twice what
            # strict FIFO gives every thread (its FIFO share): barging may take a thread's
            # turns, a starved thread would wait long on every connect.
            quantum = quantum_us()
            ok = [r for r in f256.runs if r["fields"].get("connect_max_us")]
            if quantum and ok:
                turns = -(-256 // FAIR_POOL)
                bound = turns * (quantum + TURN_SLACK_US)
                share = (256 - FAIR_POOL) / (FIFO_RATIO[tag] * f8.med_thr) * 1e6
                mx = median(float(r["fields"]["connect_max_us"]) for r in ok)
                thi = median(float(r["fields"]["thread_mean_max_us"]) for r in ok)
                L.append(f"| {name}, 256 threads: max connect wait <= {turns} turns x (quantum "
                         f"{quantum / 1000:.0f} ms + {TURN_SLACK_US / 1000:.0f} ms) = "
                         f"{bound / 1000:.0f} ms | {mx / 1000:.1f} ms | "
                         f"{'yes' if mx <= bound else '**no**'} |")
                L.append(f"| {name}, 256 threads: highest per-thread mean wait <= 2 x FIFO "
                         f"share ({share / 1000:.1f} ms) | {thi / 1000:.1f} ms | "
                         f"{'yes' if thi <= 2 * share else '**no**'} |")
    if own_ratio:
        L.append(f"| (reference, no target) the program's own pool of {FAIR_POOL} kept "
                 f"connections, no pool library: 256 threads / {FAIR_POOL} threads | "
                 f"{own_ratio:.2f}x | - |")
    if shimcost and "error" not in shimcost:
        sc = shimcost.get("modes", {}).get(shimcost.get("mode"), shimcost)
        L.append(f"| instructions added per pooled connect+close pair "
                 f"(`{shimcost.get('mode', 'default')}`, callgrind, issue 12's definition) "
                 f"< 3,000 | {sc['added']:,.0f} | {'yes' if sc['added'] < 3000 else '**no**'} |")
    total_err = sum(v.errors for v in todo if not v.known_failure)
    known = sum(v.errors for v in todo if v.known_failure)
    L.append(f"| no errors in any variant | {total_err} errors"
             + (f" (and {known} in variants known to fail, see below)" if known else "")
             + f" | {'yes' if total_err == 0 else '**no**'} |")
    shim_vs = [v for v in todo if v.pool]
    over = [v for v in shim_vs if v.conns > v.pool]
    if shim_vs:
        worst = max(shim_vs, key=lambda v: v.conns / v.pool)
        L.append(f"| poolshim physical connections <= pool size | max {worst.conns} "
                 f"(pool {worst.pool}) | {'yes' if not over else '**no**'} |")
    L.append("")

    grain_report(L, todo, by_key)

    # The main table.
    L.append("## Results")
    L.append("")
    L.append("| workload | variant | threads | cycles | wall (s) | cycles/s | range | vs baseline "
             "| physical conns | pool | errors | notes |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for v in todo:
        notes = list(v.notes)
        if v.latency:
            lat = {k: median(float(r["fields"].get(k, "nan")) for r in v.runs if r["fields"])
                   for k in ("connect_p50_us", "connect_p99_us")}
            mx = max((float(r["fields"].get("connect_max_us", 0)) for r in v.runs
                      if r["fields"]), default=0)
            notes.insert(0, f"connect wait p50 {lat['connect_p50_us']:.0f} us, "
                            f"p99 {lat['connect_p99_us']:.0f} us, max {mx:.0f} us")
        if v.proxy:
            late = [float(r["proxy"].get("late_mean_us", "nan")) for r in v.runs if r.get("proxy")]
            cpu = [r["proxy_cpu"] / r["seconds"] for r in v.runs
                   if r.get("proxy_cpu") is not None and r["seconds"]]
            if late:
                notes.insert(0, f"proxy lateness {median(late):.0f} us, "
                                f"CPU {100 * median(cpu):.0f}%")
        srv = [r["server_us"] for r in v.runs if r.get("server_us") is not None]
        if srv:
            notes.append(f"server CPU {median(srv):.0f} us/cycle")
        tls = [r.get("cipher") for r in v.runs if r.get("cipher")]
        if v.tls and tls and all(c == tls[0] for c in tls) and tls[0] not in ("none", "error"):
            notes.insert(0, tls[0])
        ratio = fmt_ratio(v.ratio) if v.key != v.baseline_key else "1.00x (baseline)"
        L.append(f"| {GROUP_TITLES[v.group]} | {v.label} | {v.threads} | {v.cycles} | "
                 f"{fmt_num(v.med_sec, '.3f')} | {fmt_num(v.med_thr)} | {spread(v.thr)} | {ratio} | "
                 f"{v.conns} | {v.pool or '-'} | {v.errors} | {'; '.join(notes)} |")
    L.append("")

    # Checks per group.
    L.append("## Checks per group")
    L.append("")
    for g in groups + (["djrtt"] if "pyrtt" in groups else []) + \
            (["django1"] if "django" in groups else []):
        vs = [v for v in todo if v.group == g]
        if not vs:
            continue
        pooled = [v for v in vs if v.pool]
        within = all(v.conns <= v.pool for v in pooled)
        errs = [f"{v.label} ({v.threads} threads): {v.errors}" for v in vs if v.errors]
        detail = ", ".join(f"{v.threads} thr: {v.conns}/{v.pool}" for v in pooled)
        L.append(f"- {GROUP_TITLES[g]}: poolshim physical connections within pool size: "
                 f"{'yes' if within else '**NO**'} ({detail}); errors: "
                 f"{'none' if not errs else '**' + '; '.join(errs) + '**'}")
    L.append("")

    if "revalidate" in groups:
        d, e = by_key.get(("revalidate", 1, "poolshim")), by_key.get(("revalidate", 1, "reval"))
        if d and e and d.med_sec and e.med_sec:
            # At most one proof per connect and per millisecond of the run.
            most = min(e.cycles, e.med_sec * 1000)
            per = (e.med_sec - d.med_sec) * 1e6 / most
            sd = median(r.get("server_us", float("nan")) for r in d.runs)
            se = median(r.get("server_us", float("nan")) for r in e.runs)
            L.append("## Revalidation: the cost of proving credentials again")
            L.append("")
            L.append(f"1 thread, {e.cycles} connect/SELECT 1/close cycles per run. Default "
                     f"`POOLSHIM_REVALIDATE=60s` (no proof within a run): {d.med_sec:.3f} s, "
                     f"server CPU {sd:.1f} us per cycle. `1ms` (a `COM_CHANGE_USER` proof at "
                     f"most every millisecond, so at most {most:.0f} per run): "
                     f"{e.med_sec:.3f} s, server CPU {se:.1f} us per cycle. So at least "
                     f"{per:.0f} us of the loop's wall time per proof (a round trip, the "
                     "role and init commands restored). At the default interval one connect "
                     "per pool per minute pays it.")
            L.append("")

    if "fairness" in groups:
        v8, v256 = by_key.get(("fairness", FAIR_POOL, "poolshim")), by_key.get(("fairness", 256, "poolshim"))
        if v8 and v256:  # the default mode; the strict mode's rows are in the table above
            L.append(f"## Fairness: 256 threads sharing a pool of {FAIR_POOL}")
            L.append("")
            quantum = quantum_us() or 0
            L.append(f"Throughput with 256 threads is {fmt_ratio(v256.ratio)} that of "
                     f"{FAIR_POOL} threads on the same pool. Each connect's duration "
                     "(`mysql_real_connect`, measured in cycle.c, so for 256 threads mostly "
                     "the wait for a free connection). Waiting is FIFO with bounded barging: "
                     "a thread that closes and connects again at once re-takes its connection "
                     "without a thread switch for one run of at most a quantum "
                     f"({quantum / 1000:.0f} ms), then hands it to the oldest waiter and queues "
                     "behind the others, so most connects wait about nothing (p50 near 0) "
                     "and the waits that remain are long: one wait per run. Starvation would "
                     "show as a max above one run per turn of every connection ahead, or as "
                     "one thread's mean wait above twice its FIFO share (what strict FIFO "
                     "gives every thread): both are checked in the targets above. "
                     "(256 threads on 2 cores: a waiter that is handed a connection still has "
                     "to be scheduled, which widens the tail.)")
            if own_ratio:
                L.append("")
                L.append(f"Reference: the same threads with the program as its own pool of "
                         f"{FAIR_POOL} kept connections (`cycle --shared {FAIR_POOL}`: a "
                         "mutex-guarded stack and a condition variable, no connect, no close, "
                         f"no reset) do {own_ratio:.2f}x with 256 threads of "
                         f"what they do with {FAIR_POOL}: what 256 threads on "
                         f"{FAIR_POOL} connections cost this machine whatever shares them.")
            L.append("")
            L.append("| threads | p50 (us) | p99 (us) | max (us) | p99/p50 | max/p50 "
                     "| per-thread mean, lowest-highest (us) |")
            L.append("|---:|---:|---:|---:|---:|---:|---:|")
            for v in (v8, v256):
                ok = [r for r in v.runs if r["fields"]]
                if not ok:
                    continue
                p50 = median(float(r["fields"]["connect_p50_us"]) for r in ok)
                p99 = median(float(r["fields"]["connect_p99_us"]) for r in ok)
                mx = median(float(r["fields"]["connect_max_us"]) for r in ok)
                tlo = median(float(r["fields"].get("thread_mean_min_us", "nan")) for r in ok)
                thi = median(float(r["fields"].get("thread_mean_max_us", "nan")) for r in ok)
                L.append(f"| {v.threads} | {p50:.0f} | {p99:.0f} | {mx:.0f} | "
                         f"{p99 / max(p50, 1):.1f} | {mx / max(p50, 1):.1f} | "
                         f"{tlo:.0f}-{thi:.0f} |")
            L.append("")
            L.append("(medians over repetitions)")
            L.append("")

    if shimcost:
        L.append("## The shim's own cost (callgrind, user-space instructions)")
        L.append("")
        if "error" in shimcost:
            L.append(f"callgrind measurement failed: {shimcost['error']}")
        else:
            s = shimcost
            base = s.get("baseline") or {}
            L.append(f"Issue 12's definition: `bench/cycle --threads 1` over TCP under "
                     f"`valgrind --tool=callgrind`, {s['n1']} and {s['n2']} cycles, "
                     f"whole-program instructions per cycle (difference / {s['n2'] - s['n1']}) "
                     "of the pooled loop (mysql_init, connect, `SELECT 1`, close; the shim "
                     "preloaded, `POOLSHIM_POOL_SIZE=1`) minus a kept connection's loop "
                     "(`--kept`: the same `SELECT 1` on one connection, no shim) minus "
                     "mysql_init + mysql_close of a handle never connected (`--unconnected`, "
                     "no shim). *added* is everything the pool adds to a connect+close pair: "
                     "its two entry points and its wrappers around libmariadb's command and "
                     "reply methods on the loop's own query. Callgrind counts user-space "
                     "instructions only: the kernel side of send/recv/poll and the wait for "
                     "the server are not in these numbers; libmariadb's socket reads (libc's "
                     "recv and its wait for a late reply, which depends on timing) are left "
                     "out of all three loops alike. See bench/shimcost.py for exactly what "
                     "is counted.")
            L.append("")
            modes = s.get("modes") or {}
            L.append("| mode (`POOLSHIM_RESET`) | pooled cycle | kept cycle | init+close "
                     "unconnected | added | added < 3,000 |")
            L.append("|---|---:|---:|---:|---:|:---:|")
            for name, m in (modes or {s.get("mode", "default"): s}).items():
                L.append(f"| {name} | {m['pooled_cycle']:,.0f} | "
                         f"{base.get('kept_cycle', 0):,.0f} | "
                         f"{base.get('unconnected_cycle', 0):,.0f} | {m['added']:,.0f} | "
                         f"{'yes' if m['added'] < 3000 else 'no'} |")
            L.append("")
            L.append(f"Where the mode `{s.get('mode', 'default')}` spends it (per pair, from "
                     "the pooled runs' call graph):")
            L.append("")
            L.append("| what | instructions per pair |")
            L.append("|---|---:|")
            L.append(f"| entry points: inclusive cost of libpoolshim's `mysql_real_connect` + "
                     f"`mysql_close` | {s['total']:,.0f} |")
            L.append(f"| of which inside libmariadb (freeing the handle, setting its options; "
                     f"the reset's commands and replies when one is sent) "
                     f"| {s['libmariadb']:,.0f} |")
            L.append(f"| of which freeing the application's emptied handle (libmariadb's "
                     f"`mysql_close`, also in *init+close unconnected*) "
                     f"| {s['handle_free']:,.0f} |")
            L.append(f"| entry points minus freeing the handle | {s['entry_added']:,.0f} |")
            L.append(f"| per query: the shim's wrappers of libmariadb's db_command / "
                     f"read_query_result on the application's own `SELECT 1` "
                     f"(classification, reply inspection) | {s['wrapper_cost']:,.0f} |")
            L.append(f"| whole pair (entry points and wrappers): libpoolshim.so's own code "
                     f"| {s['shim_self']:,.0f} |")
            for o, c in sorted(s["shim_by_obj"].items(), key=lambda kv: -kv[1]):
                name = "PLT stubs (object ???)" if o == "???" else o
                L.append(f"| whole pair: called from the shim in {name} | {c:,.0f} |")
            L.append(f"| for reference, no shim: libmariadb's own `mysql_real_connect` + "
                     f"`mysql_close` (a physical connect+close, client side) | "
                     f"{s['physical_pair']:,.0f} |")
            L.append("")
            L.append(f"Cross-check: callgrind_annotate --inclusive=yes gives "
                     f"{s['annotate_total']:,.0f} for the two entry points"
                     + (f"; calls from libmariadb back into the shim: {s['callbacks']:,.0f}"
                        if s["callbacks"] else "") + ".")
            L.append("")
    return "\n".join(L) + "\n"


def grain_report(L, todo, by_key):
    """The group `grain` (issue 13): its targets and its rows."""
    gs = [g for g in GRAIN_WORKLOADS if any(v.group == g for v in todo)]
    if not gs:
        return
    L.append("## Transaction grain (issue 13): targets")
    L.append("")
    L.append(f"Pool of {GRAIN_POOL}, `POOLSHIM_TIMEOUT={GRAIN_TIMEOUT}`. *peak conns*: the "
             "server's `Max_used_connections` after a `FLUSH STATUS` taken just before the "
             "run, minus the connections open then (this script's), max over repetitions. "
             "*time vs kept*: median over repetitions of the variant's wall time over the "
             "kept connection's in the same repetition (the program as it is, no pool). "
             "Wrong answers: answers that differ from what the program's own thread wrote "
             "(every answer is checked), plus rows lost or doubled at the end.")
    L.append("")
    L.append("| workload | variant | peak conns <= 8 | errors = 0 | wrong = 0 | time vs kept "
             "| all met |")
    L.append("|---|---|---:|---:|---:|---:|:---:|")
    for g in gs:
        kept = by_key.get((g, GRAIN_WORKLOADS[g][1], "kept"))
        for tag in ("gconnect", "gtrans", "ownpool"):
            v = by_key.get((g, GRAIN_WORKLOADS[g][1], tag))
            if v is None:
                continue
            limit = GRAIN_LIMITS.get(g) if tag != "ownpool" else None
            secs = [(r["seconds"], k["seconds"]) for r, k in zip(v.runs, kept.runs if kept else [])
                    if r["seconds"] and k["seconds"] and not r["errors"]]
            tr = median(a / b for a, b in secs) if secs else None
            v.time_ratio = tr
            checks = [v.peak_max is not None and v.peak_max <= GRAIN_POOL,
                      v.errors - v.wrong == 0, v.wrong == 0]
            if limit:
                checks.append(tr is not None and tr <= limit)
            met = all(checks)
            lim = f" (<= {limit:.2f}x)" if limit else ""
            L.append(f"| {GROUP_TITLES[g]} | {v.label} | {fmt_num(v.peak_max)} | "
                     f"{v.errors - v.wrong} | {v.wrong} | {fmt_ratio(tr)}{lim} | "
                     f"{('yes' if met else '**no**') if tag != 'ownpool' else '(reference)'} |")
    L.append("")
    for g in gs:
        own = by_key.get((g, GRAIN_WORKLOADS[g][1], "ownpool"))
        tv = by_key.get((g, GRAIN_WORKLOADS[g][1], "gtrans"))
        if own is None or tv is None:
            continue
        secs = [(r["seconds"], o["seconds"]) for r, o in zip(tv.runs, own.runs)
                if r["seconds"] and o["seconds"] and not r["errors"] and not o["errors"]]
        tr = median(a / b for a, b in secs) if secs else None
        L.append(f"{GROUP_TITLES[g]}: the transaction grain takes {fmt_ratio(tr)} the time "
                 f"of the program's own pool of {GRAIN_POOL} (median over repetitions of the "
                 "ratio in each). That pool is the bound of any pool of this size: it knows "
                 "where each task ends, and its connections carry no session to restore. "
                 "What it pays against the kept connections is the pool's size itself.")
        L.append("")
    fails = [v for v in todo if v.group in gs and v.errors]
    if fails:
        L.append("Variants with errors or wrong answers (first lines of their output in the "
                 "results table's notes and in the -runs.log file):")
        L.append("")
        for v in fails:
            why = f" Known today: {v.known_failure}." if v.known_failure else ""
            L.append(f"- {GROUP_TITLES[v.group]}, {v.label}: {v.errors - v.wrong} errors, "
                     f"{v.wrong} wrong answers over {len(v.runs)} runs.{why}")
        L.append("")
    if any(v.tag == "gtrans" for v in todo) and any(
            "POOLSHIM_GRAIN" in n for v in todo if v.tag == "gtrans" for n in v.notes):
        L.append("The library warned about `POOLSHIM_GRAIN` (see the notes): the "
                 "transaction grain is not in this build, so its rows measure the connect "
                 "grain.")
        L.append("")
    L.append("| workload | variant | threads | tasks | wall (s) | tasks/s | peak conns "
             "| conns opened | errors | wrong | notes |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for g in gs:
        for v in todo:
            if v.group != g:
                continue
            L.append(f"| {GROUP_TITLES[g]} | {v.label} | {v.threads} | {v.cycles} | "
                     f"{fmt_num(v.med_sec, '.3f')} | {fmt_num(v.med_thr)} | "
                     f"{fmt_num(v.peak_max)} | {v.conns} | {v.errors - v.wrong} | {v.wrong} | "
                     f"{'; '.join(v.notes)} |")
    L.append("")


def chart(todo, by_key, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"nopool": "tab:red", "poolshim": "tab:blue", "always": "tab:purple",
              "sqlalchemy": "tab:green", "kept": "tab:gray"}
    panels = [g for g in ("tcp", "tls", "rtt") if any(v.group == g for v in todo)]
    if not panels and any(v.group == "python" for v in todo):
        panels = ["tcp"]
    if not panels:
        return False
    from matplotlib.ticker import FuncFormatter, LogLocator
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.0), squeeze=False)
    handles = {}
    for ax, g in zip(axes[0], panels):
        for tag in ("nopool", "always", "poolshim", "kept"):
            pts = [(t, by_key[(g, t, tag)].med_thr) for t in (1, 8, 64)
                   if (g, t, tag) in by_key and by_key[(g, t, tag)].med_thr]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colors[tag],
                        label=f"C: {LABELS[tag]}")
        if g == "tcp":
            for tag in ("nopool", "always", "poolshim", "sqlalchemy", "kept"):
                v = by_key.get(("python", PY_THREADS, tag))
                if v and v.med_thr:
                    ax.plot([PY_THREADS], [v.med_thr], "s", mfc="none", mew=2, ms=9,
                            color=colors[tag], label=f"Python {PY_THREADS} thr: {LABELS[tag]}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 8, 16, 64])
        ax.set_xticklabels(["1", "8", "16", "64"])
        ax.set_xlabel("client threads")
        ax.set_ylabel("connect + SELECT 1 + close per second")
        ax.set_title(GROUP_TITLES[g] + (" (+ Python)" if g == "tcp" else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}"))
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
               ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(f"poolshim: throughput (medians), nproc={os.cpu_count()}", fontsize=10)
    fig.tight_layout(rect=(0, 0.1 if len(handles) > 4 else 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated groups: " + " ".join(GROUPS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every cycle count")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    groups = GROUPS
    if args.only:
        groups = [g.strip() for g in args.only.split(",") if g.strip()]
        bad = [g for g in groups if g not in GROUPS]
        if bad:
            ap.error(f"unknown group(s) {', '.join(bad)}; groups: {' '.join(GROUPS)}")
        groups = [g for g in GROUPS if g in groups]
    workdir = os.environ.get("PS_BENCH_DIR") or "/tmp"
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    todo = variants(groups, args.scale)
    conn = admin()
    vers = versions(conn)
    proxy = Proxy(workdir) if any(v.proxy for v in todo) else None
    proxy_info = None
    shimcost = None
    cpu = {"reps": []}
    total_meter = CpuMeter(proxy.proc.pid if proxy else None)
    try:
        for rep in range(args.reps):  # interleaved: drift hits every variant alike
            print(f"== repetition {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
            meter = CpuMeter(proxy.proc.pid if proxy else None)
            for v in todo:
                r = run_once(conn, v, proxy)
                v.runs.append(r)
                thr = throughput(r, v)
                print(f"   {v.group:8} {v.label:36} {v.threads:3} thr: "
                      f"{fmt_num(thr):>8}/s conns {r['conns']:5} errors {r['errors']}"
                      + (f" peak {r['peak']}" if "peak" in r else "")
                      + (f"  [{'; '.join(r['notes'])}]" if r["notes"] else ""),
                      file=sys.stderr, flush=True)
            cpu["reps"].append(meter.read())
            print(f"   other processes used {cpu['reps'][-1]['other_pct']:.0f}% of the machine "
                  "during this repetition", file=sys.stderr, flush=True)
        cpu["total"] = total_meter.read()
        with open("/proc/loadavg") as f:
            cpu["loadavg"] = " ".join(f.read().split()[:3])
        if "shimcost" in groups:
            print("== callgrind: the shim's own cost", file=sys.stderr, flush=True)
            sys.path.insert(0, HERE)
            import shimcost as sc
            try:
                # PS_SHIMCOST_MODES: the reset modes measured, e.g. "auto,always,none".
                modes = tuple(m.strip() for m in os.environ.get(
                    "PS_SHIMCOST_MODES", "default,none").split(",") if m.strip())
                shimcost = sc.measure(CYCLE, LIB, workdir, modes=modes)
            except Exception as exc:  # reported in the table, does not lose the rest
                shimcost = {"error": str(exc).strip().splitlines()[0][:300]}
    finally:
        if proxy:
            late = []
            for v in todo:
                for r in v.runs:
                    if r.get("proxy"):
                        late.append(float(r["proxy"].get("late_max_us", 0)))
            proxy_info = {"realtime": proxy.realtime,
                          "summary": "Lateness = how long after its due time the proxy "
                                     "wrote a chunk (mean per run in the notes; worst "
                                     f"single chunk over all runs: {max(late, default=0):.0f} us)."}
            proxy.stop()
    by_key = summarise(todo)
    wall = time.monotonic() - t_start
    text = report(todo, by_key, groups, args, vers, shimcost, proxy_info, started, wall,
                  cpu if cpu.get("total") else None)
    print(text)
    os.makedirs(args.results, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    full = groups == GROUPS
    suffix = "" if full else "-" + "-".join(groups)
    md = os.path.join(args.results, f"{stamp}{suffix}.md")
    png = os.path.join(args.results, f"{stamp}{suffix}.png")
    with open(md, "w") as f:
        f.write(text)
    has_png = chart(todo, by_key, png)
    written = [md] + ([png] if has_png else [])
    raw = os.path.join(args.results, f"{stamp}{suffix}.json")
    with open(raw, "w") as f:  # every run's numbers, for re-plotting or a closer look
        json.dump({"versions": vers, "reps": args.reps, "groups": groups, "cpu": cpu,
                   "shimcost": shimcost,
                   "variants": [{"group": v.group, "tag": v.tag, "label": v.label,
                                 "threads": v.threads, "cycles": v.cycles, "pool": v.pool,
                                 "cmd": v.cmd, "env": v.env, "ratio": v.ratio,
                                 "runs": [{k: val for k, val in r.items() if k != "log"}
                                          for r in v.runs]} for v in todo]}, f, indent=1)
    written.append(raw)
    logs = [r["log"] for v in todo for r in v.runs if r.get("log")]
    if logs:  # full output of every run that failed, had errors or wrote to stderr
        log = os.path.join(args.results, f"{stamp}{suffix}-runs.log")
        with open(log, "w") as f:
            f.write("\n".join(logs))
        with open(md, "a") as f:
            f.write(f"\nOutput of the runs that failed or wrote to stderr: "
                    f"{os.path.basename(log)}\n")
        written.append(log)
    if full:  # a partial run (--only) never replaces the stable copies
        import shutil
        shutil.copyfile(md, os.path.join(args.results, "latest.md"))
        written.append(os.path.join(args.results, "latest.md"))
        if has_png:
            shutil.copyfile(png, os.path.join(args.results, "latest.png"))
            written.append(os.path.join(args.results, "latest.png"))
        shutil.copyfile(raw, os.path.join(args.results, "latest.json"))
    print("written: " + " ".join(os.path.relpath(p, ROOT) for p in written), file=sys.stderr)
    bad = sum(v.errors for v in todo if not v.known_failure)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
