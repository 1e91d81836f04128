"""demo/harness.py -- owns the measurements and the report of scripts/demo.

  harness.py run --client NAME --variant VARIANT --results FILE [--format FMT] -- CMD...
      Runs CMD once against the private server (PS_TEST_* from scripts/server) and appends
      one JSON line to FILE.  Exit 0 if CMD ran and printed its result, 1 otherwise.
  harness.py report --pool-size N FILE [--grain FILE2]
      Prints the table of every run in FILE and a paragraph on what it shows; with --grain,
      then the table of the runs in FILE2 (programs that keep their connections: the
      grain of issue 13) and a paragraph on those.

All facts come from outside the client, through one root connection of this (never
preloaded) process:
  - connections opened: the delta of the server's global status 'Connections';
  - peak: 'Max_used_connections' after a FLUSH STATUS taken just before the run, minus
    the connections open at that moment (the harness's own);
  - TIME_WAIT: sockets of connections to the server's port that are in TIME_WAIT after
    the run and were not before it, client ends (dport) and server ends (sport) apart.
    A set difference, not a count difference, so that TIME_WAITs of earlier runs that
    expire during this one do not hide new ones.  On loopback Linux recycles TIME_WAITs
    when a new connect reuses a port, so these are lower bounds.
Before and after a run the harness waits until the server has no other connection and
no socket of its port is half-closed.

Clients print "tasks=N seconds=S errors=E" (--format plain) or are sysbench runs
(--format sysbench: events and total time from its report, errors from the
"demo_thread_errors=N" lines of demo/connect.lua plus sysbench's ignored errors).
Tasks per second use the client's own timing (interpreter start-up is not included).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import MySQLdb

PORT = int(os.environ.get("PS_TEST_PORT", "0"))
SETTLE_SECONDS = 5.0


def admin():
    return MySQLdb.connect(host=os.environ["PS_TEST_HOST"], port=PORT,
                           user=os.environ["PS_TEST_ROOT_USER"],
                           passwd=os.environ["PS_TEST_ROOT_PASSWORD"])


def status(conn, *names):
    cur = conn.cursor()
    cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN (%s)" % ",".join(["%s"] * len(names)),
                names)
    values = {k: int(v) for k, v in cur.fetchall()}
    return [values[n] for n in names]


def settle(conn):
    """Wait until only the harness's own connection is left on the server (the server
    threads of a finished client need a few ms to go away) and no socket of the server's
    port is still half-closed (so that its TIME_WAIT, if any, exists already).  Returns
    the number of connections on the server."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        (n,) = status(conn, "Threads_connected")
        if (n <= 1 and not closing_sockets()) or time.monotonic() > deadline:
            return n
        time.sleep(0.01)


def closing_sockets():
    out = subprocess.run(["ss", "-Htan", "state", "fin-wait-1", "state", "fin-wait-2",
                          "state", "closing", "state", "last-ack", "state", "close-wait",
                          f"( dport = :{PORT} or sport = :{PORT} )"],
                         check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def time_wait_sockets(side):
    """TIME_WAIT sockets of connections to the server's port, as a set of endpoint pairs:
    side "dport" gives the client ends, "sport" the server ends (on loopback both are on
    this machine; which end gets the TIME_WAIT depends on which closed first)."""
    out = subprocess.run(["ss", "-Htan", "state", "time-wait", f"( {side} = :{PORT} )"],
                         check=True, capture_output=True, text=True).stdout
    return {tuple(line.split()[-2:]) for line in out.splitlines() if line.strip()}


def parse_plain(stdout):
    m = None
    for m in re.finditer(r"tasks=(\d+) seconds=([\d.]+) errors=(\d+)", stdout):
        pass
    if not m:
        return None
    return int(m.group(1)), float(m.group(2)), int(m.group(3))


def parse_sysbench(stdout):
    events = re.search(r"total number of events:\s+(\d+)", stdout)
    total = re.search(r"total time:\s+([\d.]+)s", stdout)
    per_thread = re.findall(r"demo_thread_errors=(\d+)", stdout)
    ignored = re.search(r"ignored errors:\s+(\d+)", stdout)
    if not (events and total and per_thread):
        return None
    errors = sum(int(e) for e in per_thread) + (int(ignored.group(1)) if ignored else 0)
    return int(events.group(1)), float(total.group(1)), errors


def cmd_run(args):
    conn = admin()
    baseline = settle(conn)
    conn.cursor().execute("FLUSH STATUS")  # Max_used_connections := connected now
    (conn_before,) = status(conn, "Connections")
    tw_before = time_wait_sockets("dport")
    tws_before = time_wait_sockets("sport")

    start = time.monotonic()
    try:
        res = subprocess.run(args.cmd, capture_output=True, text=True, timeout=300)
        rc, stdout, stderr = res.returncode, res.stdout, res.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        rc, stdout, stderr = -1, "", str(e)
    wall = time.monotonic() - start

    settle(conn)  # every server thread gone: every client socket is closed by now
    tw_after = time_wait_sockets("dport")
    tws_after = time_wait_sockets("sport")
    conn_after, max_used = status(conn, "Connections", "Max_used_connections")
    conn.close()

    parsed = (parse_sysbench if args.format == "sysbench" else parse_plain)(stdout)
    ok = parsed is not None and (rc == 0 or parsed[2] > 0)
    row = dict(client=args.client, variant=args.variant, rc=rc, ok=ok, wall=round(wall, 3),
               opened=conn_after - conn_before, peak=max(0, max_used - baseline),
               time_wait=len(tw_after - tw_before),
               time_wait_server=len(tws_after - tws_before))
    if parsed:
        row.update(tasks=parsed[0], seconds=parsed[1], errors=parsed[2])
    # What the library said (a refused or unknown setting, a pool that stayed full).
    said = [l.strip() for l in stderr.splitlines() if "poolshim" in l]
    if said:
        row["said"] = said[:3]
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")

    if not ok or stderr.strip():
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        what = "FAILED" if not ok else "stderr"
        print(f"==> {what}: {args.client} ({args.variant}), exit status {rc}:\n{tail}"
              + ("" if parsed else f"\n---- stdout ----\n{stdout[-2000:]}"), file=sys.stderr)
    return 0 if ok else 1


def fmt_int(n):
    return f"{n:,}"


def cmd_report(args):
    print_table([json.loads(line) for line in open(args.results) if line.strip()],
                lambda rows: explain(rows, args.pool_size))
    if args.grain:
        print()
        print_table([json.loads(line) for line in open(args.grain) if line.strip()],
                    lambda rows: explain_grain(rows, args.pool_size))


def print_table(rows, paragraph):
    for r in rows:
        r["rate"] = r["tasks"] / r["seconds"] if r.get("tasks") and r["seconds"] > 0 else None
    base = {r["client"]: r for r in rows if r["variant"] == "no pool" and r["rate"]}
    header = ["client", "variant", "tasks", "tasks/s", "vs no pool", "conns opened",
              "peak conns", "TIME_WAIT client", "TIME_WAIT server", "errors"]
    table = []
    for r in rows:
        b = base.get(r["client"])
        ratio = f"{r['rate'] / b['rate']:.2f}x" if r["rate"] and b and r is not b else "-"
        errors = fmt_int(r["errors"]) if "errors" in r else "-"
        table.append([r["client"], r["variant"],
                      fmt_int(r["tasks"]) if "tasks" in r else "-",
                      fmt_int(round(r["rate"])) if r["rate"] else "-", ratio,
                      fmt_int(r["opened"]), str(r["peak"]), fmt_int(r["time_wait"]),
                      fmt_int(r["time_wait_server"]),
                      errors + ("" if r["ok"] else " (FAILED)")])
    widths = [max(len(header[i]), *(len(t[i]) for t in table)) for i in range(len(header))]
    left = {0, 1}  # text columns; the numbers are right-aligned

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i in left else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) if i in left else "-" * (w + 1) + ":"
                         for i, w in enumerate(widths)) + "|")
    for t in table:
        print(line(t))
    print()
    print(textwrap.fill(paragraph(rows), width=92))


def explain(rows, pool_size):
    """One paragraph in plain language, filled in with the measured numbers."""
    plain = [r for r in rows if r["variant"] == "no pool" and r["rate"]]
    pooled = [r for r in rows if r["variant"] != "no pool" and r["rate"]]
    if not plain or not pooled:
        return "Not enough successful runs to compare the two variants."
    base = {r["client"]: r for r in plain}
    ratios = sorted(((r["rate"] / base[r["client"]]["rate"], r["client"])
                     for r in pooled if r["client"] in base), reverse=True)

    def total(rs, key):
        return fmt_int(sum(r[key] for r in rs))

    tw_plain = sum(r["time_wait"] + r["time_wait_server"] for r in plain)
    tw_pooled = sum(r["time_wait"] + r["time_wait_server"] for r in pooled)
    threads = max(r["peak"] for r in plain)
    errors_plain = sum(r["errors"] for r in plain)
    errors_pooled = sum(r["errors"] for r in pooled)
    single = [r for r in pooled if r["opened"] == 1]
    text = (
        "What the numbers show: without the pool every task paid for a connection of its "
        f"own, so {total(plain, 'tasks')} tasks opened {total(plain, 'opened')} physical "
        "connections (a TCP handshake, a login and a server thread each), and every close "
        f"left a socket in TIME_WAIT for 60 s, {fmt_int(tw_plain)} in all "
        f"({total(plain, 'time_wait')} on the client side, where they hold ephemeral "
        f"ports, and {total(plain, 'time_wait_server')} on the server side, depending on "
        "which end closed first; Linux recycles some of them on loopback, so these counts "
        f"are a lower bound); the threaded clients had up to {threads} connections open "
        "on the server at once, more than they have threads, because a closed connection "
        "takes a moment to go away on the server. Run through scripts/poolshim-run "
        f"--pool-size {pool_size}, the same unmodified programs opened "
        f"{total(pooled, 'opened')} connections in all for {total(pooled, 'tasks')} tasks "
        f"(never more than {max(r['opened'] for r in pooled)} per program"
        + (f"; {' and '.join(r['client'].split(',')[0] for r in single)}, one request at "
           "a time, needed just one" if single else "")
        + f"), left {fmt_int(tw_pooled)} TIME_WAIT sockets (the pooled connections closed "
        "at exit), and never had more than "
        f"{max(r['peak'] for r in pooled)} connections open on the server: the pool size "
        "bounds it, however many threads ask. Throughput with the pool, against without: "
        + ", ".join(f"{c.split(',')[0]} {x:.1f}x" for x, c in ratios)
        + ". The gain is largest where connecting is most of the work and smallest where "
        "the ORM or the interpreter does most of it (a borrowed connection still costs a "
        "session reset); this is loopback, where connecting is as cheap as it gets, so "
        "across a network or with TLS every avoided connect saves more. "
    )
    if errors_plain or errors_pooled:
        text += (f"Errors: {errors_plain} without the pool and {errors_pooled} with it; "
                 "the messages are printed above the table.")
    else:
        text += "No task failed in either variant."
    return text


def explain_grain(rows, pool_size):
    """The paragraph under the table of the programs that keep their connections."""
    if not rows:
        return "No run of the kept-connection client."
    by = {r["variant"]: r for r in rows}
    plain = by.get("no pool")
    parts = []
    explained = False  # the connect grain's error 1040, said once
    if plain and plain.get("rate"):
        parts.append(f"Without the pool the {plain['client'].split(',')[1].strip()} of this "
                     f"client kept {plain['peak']} server connections open for the whole run "
                     "(Django's CONN_MAX_AGE = None: one connection per thread, also while "
                     "the thread thinks).")
    for r in rows:
        if r is plain:
            continue
        what = (f"{r['variant']}: peak {r['peak']} server connections, "
                + (f"{r['rate']:,.0f} tasks/s, " if r.get("rate") else "")
                + f"{fmt_int(r['errors']) if 'errors' in r else 'no'} errors")
        said = " ".join(r.get("said", []))
        if "POOLSHIM_GRAIN" in said:
            line = next(l for l in r["said"] if "POOLSHIM_GRAIN" in l)
            what += ("; the library did not take POOLSHIM_GRAIN=transaction (it said: "
                     f"\"{line}\"), so this run used the connect grain")
        connect_grain = "POOLSHIM_GRAIN" in said or "transaction" not in r["variant"]
        if r.get("errors") and ("1040" in said or "is full" in said) and connect_grain:
            if explained:
                what += "; error 1040 as above"
            else:
                what += (f"; the threads beyond the {pool_size}th waited at connect for a "
                         "connection that a thinking thread holds, and failed with error "
                         "1040 after POOLSHIM_TIMEOUT: the connect grain lends a connection "
                         "per handle")
            explained = True
        elif r.get("errors") or not r.get("ok"):
            what += "; see the messages above the tables"
        parts.append(what + ".")
    parts.append("The transaction grain (issue 13) lends the connection per transaction inside "
                 "a handle that stays open; its target is at most "
                 f"{pool_size} server connections and no error, near the speed of the kept "
                 "connections.")
    return " ".join(parts)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--client", required=True)
    run.add_argument("--variant", required=True)
    run.add_argument("--results", required=True)
    run.add_argument("--format", choices=["plain", "sysbench"], default="plain")
    run.add_argument("cmd", nargs="+")
    rep = sub.add_parser("report")
    rep.add_argument("--pool-size", type=int, required=True)
    rep.add_argument("results")
    rep.add_argument("--grain", help="results of the kept-connection client (issue 13)")
    args = ap.parse_args()
    if os.environ.get("LD_PRELOAD"):
        sys.exit("harness.py: must not run with LD_PRELOAD set (it measures the server)")
    sys.exit(cmd_run(args) if args.command == "run" else cmd_report(args))


if __name__ == "__main__":
    main()
