"""Runs the benchmark variants interleaved, several times, against the private server(s)
scripts/bench started, and writes a markdown report (bench/results/<UTC time>.md) and a
chart (.png) with medians, ratios against baselines measured in the same run, physical
connection counts and errors.

Every figure is a ratio against a baseline of the same run: in each of the first --reps
repetitions every selected variant runs once, in a fixed order, so slow drift (thermal,
other load, the server's caches) hits every variant alike, and the groups of
variants.MIN_REPS go on alone up to their own count. Every other repetition runs each
group's variants in the reverse order (A B, then B A): a drift within a repetition then
favours neither a variant nor its baseline in the median of their ratios. The results
table's *vs baseline* is the median over repetitions of the ratio between a variant and
its baseline in the same repetition; a target row that sets two variants against each other
is the median of their ratio within each repetition, and the two run back to back. Before
each run the server is left to finish closing the connections of the run before (settle,
quiet).

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
Groups: tcp socket tls rtt python django pyrtt fairness revalidate shimcost cpugap grain.

The groups, their settings and variants are in bench/variants.py; the report (markdown
and chart) is made by bench/report.py. This script runs the variants and writes the
files."""
import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time

import MySQLdb

from report import chart, fmt_num, median, report, throughput
from variants import (BUILD, CYCLE, DELAY_US, GROUPS, HERE, LIB, MIN_REPS, PROXY, ROOT,
                      reps_of, variants)


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


def quiet(pid, window=0.05, limit=3.0):
    """Waits (at most `limit` seconds) until the server used at most one clock tick of CPU
    in `window`: a guard, so that nothing of the run before (a run that opened thousands
    of connections) still runs on the server and counts in the next run's server CPU."""
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + limit
    last = _pid_cpu(pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = _pid_cpu(pid)
        if now - last <= tick + 1e-9:
            return
        last = now


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
    idle = settle(conn)
    if v.peak:
        conn.cursor().execute("FLUSH STATUS")  # Max_used_connections := connected now
    spid = server_pid()
    if spid:
        quiet(spid)
    before = status(conn, "Connections")
    scpu0 = _pid_cpu(spid) if spid else None
    steal0 = _busy_seconds()[1]
    q0 = status(conn, "Questions")
    t0 = time.monotonic()
    try:
        res = subprocess.run(v.cmd, env=env, capture_output=True, text=True, timeout=300)
        rc, stdout, stderr = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = -1, "", f"timed out after {exc.timeout} s"
    wall = time.monotonic() - t0
    steal = _busy_seconds()[1] - steal0
    # The server's commands (every statement and command but COM_PING) the program sent,
    # the pool's included: this read counts itself, nothing else ran (settle).
    commands = status(conn, "Questions") - q0 - 1
    after = status(conn, "Connections")
    scpu1 = _pid_cpu(spid) if spid else None
    if v.peak:
        peak = status(conn, "Max_used_connections") - idle
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    fields = dict(kv.split("=", 1) for kv in last.split() if "=" in kv)
    # steal: CPU seconds the hypervisor gave to other guests during the run (all CPUs)
    r = {"rc": rc, "conns": after - before, "wall": wall, "steal": steal, "notes": []}
    if v.peak:
        r["peak"] = peak
    if scpu0 is not None and v.cycles:
        r["server_us"] = (scpu1 - scpu0) * 1e6 / v.cycles  # server CPU per cycle
    if v.cycles:
        r["commands"] = commands / v.cycles  # server commands per cycle
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


def rep_order(todo, rep):
    """The variants in the order repetition `rep` runs them: as listed, with each group's
    (consecutive) variants reversed on every other repetition."""
    if rep % 2 == 0:
        return list(todo)
    out, block = [], []
    for v in todo:
        if block and block[-1].group != v.group:
            out += reversed(block)
            block = []
        block.append(v)
    return out + list(reversed(block))


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
    # Results of earlier runs not yet committed do not make the code measured another.
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", ".",
                            ":(exclude)bench/results"],
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3,
                    help="repetitions of every variant; the groups "
                    + ", ".join(f"{g} ({n})" for g, n in MIN_REPS.items())
                    + " run at least as many as given there")
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
    cpugap = None
    cpu = {"reps": []}
    total_meter = CpuMeter(proxy.proc.pid if proxy else None)
    try:
        reps = max(reps_of(v.group, args.reps) for v in todo)
        for rep in range(reps):  # interleaved: drift hits every variant alike
            print(f"== repetition {rep + 1}/{reps}", file=sys.stderr, flush=True)
            meter = CpuMeter(proxy.proc.pid if proxy else None)
            for v in rep_order(todo, rep):
                if rep >= reps_of(v.group, args.reps):
                    continue
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
        if "cpugap" in groups:
            print("== client CPU per cycle: kept, pooled, pinned to one core", file=sys.stderr,
                  flush=True)
            sys.path.insert(0, HERE)
            import cpugap as cg
            try:
                cpugap = cg.measure(CYCLE, LIB, workdir, scale=args.scale,
                                    reps=max(7, args.reps),
                                    log=lambda s: print(s, file=sys.stderr, flush=True))
            except Exception as exc:  # reported in the table, does not lose the rest
                cpugap = {"error": str(exc).strip().splitlines()[0][:300]}
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
                  cpu if cpu.get("total") else None, cpugap)
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
        json.dump({"versions": vers, "reps": args.reps, "min_reps": MIN_REPS, "groups": groups,
                   "cpu": cpu, "shimcost": shimcost, "cpugap": cpugap,
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
