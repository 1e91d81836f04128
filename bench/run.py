"""Runs benchmark variants interleaved, several times, against the private server, and
prints a markdown table of medians with ratios against the no-pool baseline of each group.

Physical connections come from the server (SHOW GLOBAL STATUS LIKE 'Connections'), never
from the shim. Usage: run.py [--reps N] [--only SUBSTRING] [--out FILE]."""
import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys

import MySQLdb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
LIB = os.path.join(BUILD, "libpoolshim.so")
CYCLE = os.path.join(BUILD, "bench", "cycle")
PY = "/usr/bin/python3"


def admin():
    return MySQLdb.connect(host=os.environ["PS_TEST_HOST"], port=int(os.environ["PS_TEST_PORT"]),
                           user=os.environ["PS_TEST_ROOT_USER"],
                           passwd=os.environ["PS_TEST_ROOT_PASSWORD"])


def status(conn, name):
    cur = conn.cursor()
    cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
    return int(cur.fetchone()[1])


def variants():
    c = [CYCLE]
    out = []
    for threads in (1, 8):
        group = f"C loop, {threads} thread{'s' if threads > 1 else ''}, TCP, 5000 cycles"
        base = c + ["--threads", str(threads), "--cycles", "5000"]
        out.append((group, "no pool", base, {}))
        out.append((group, "poolshim", base, {"LD_PRELOAD": LIB}))
        out.append((group, "kept connection (limit)", base + ["--kept"], {}))
    group = "Python MySQLdb, 16-thread pool, 5000 tasks"
    py = [PY, os.path.join(ROOT, "bench", "mysqldb_pool.py"), "5000", "16"]
    out.append((group, "no pool", py, {}))
    out.append((group, "poolshim", py, {"LD_PRELOAD": LIB}))
    return out


def run_once(conn, cmd, extra_env):
    env = dict(os.environ)
    env.update(extra_env)
    before = status(conn, "Connections")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    after = status(conn, "Connections")
    fields = dict(kv.split("=") for kv in res.stdout.split())
    if res.returncode != 0 or "seconds" not in fields:
        sys.exit(f"benchmark failed: {' '.join(cmd)}\n{res.stdout}\n{res.stderr}")
    return float(fields["seconds"]), int(fields["cycles"]), int(fields["errors"]), after - before


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--out")
    args = ap.parse_args()
    todo = [v for v in variants() if args.only in v[0] or args.only in v[1]]
    conn = admin()
    results = {i: [] for i in range(len(todo))}
    for rep in range(args.reps):  # interleaved: drift hits every variant alike
        for i, (group, name, cmd, env) in enumerate(todo):
            results[i].append(run_once(conn, cmd, env))
    lines = [
        f"Benchmark {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"nproc={os.cpu_count()}, {platform.machine()}, server {conn.get_server_info()}, "
        f"client library {MySQLdb._mysql.get_client_info()}, medians of {args.reps} "
        "interleaved runs.",
        "",
        "| workload | variant | wall time (s) | cycles/s | vs no pool | physical connections | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    baseline = {}
    for i, (group, name, cmd, env) in enumerate(todo):
        secs = statistics.median(r[0] for r in results[i])
        cycles = results[i][0][1]
        errors = sum(r[2] for r in results[i])
        conns = max(r[3] for r in results[i])
        if name == "no pool":
            baseline[group] = secs
        ratio = f"{baseline[group] / secs:.2f}x" if group in baseline else "-"
        lines.append(f"| {group} | {name} | {secs:.3f} | {cycles / secs:,.0f} | {ratio} | "
                     f"{conns} | {errors} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
