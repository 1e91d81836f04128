"""Where the pooled loop's extra client CPU goes: the gap between a pooled connect+close
cycle and a kept connection's, in CPU time rather than instructions.

bench/shimcost.py counts the user-space instructions the pool adds (callgrind): about
2,900 per cycle, about a microsecond. The `tcp` group's pooled loop costs more than that
against the kept connection, so this measures the rest with the kernel's own accounting
(getrusage of the child: user and system CPU time, context switches) of `bench/cycle`:

  kept        `cycle --kept`, no shim: SELECT 1 on one connection per thread
  unconnected `cycle --unconnected`, no shim: mysql_init + mysql_close of a handle never
              connected, the application's own handle (with or without a pool)
  pooled      `cycle` with LD_PRELOAD=libpoolshim.so, POOLSHIM_POOL_SIZE=16, the default
              reset mode: mysql_init, connect (lent), SELECT 1, close (returned)

each with 1 and 8 threads over TCP, once on both cores and once with the client pinned to
one core (sched_setaffinity; the server stays where it is). Per cycle:

  added = pooled - kept - unconnected     (user + system, microseconds)

and added(2 cores) - added(1 core) at 8 threads, beyond the same difference at 1 thread
(where nothing is shared and only the placement changes), is the part that comes from the
pool's shared state (its lock, key and counters, the handle registry) moving between the
cores' caches: a client pinned to one core runs the same code without that traffic.

System calls per cycle come from `strace -f -c` of a short 1-thread run (so what lock
contention adds at 8 threads, futex calls, is not in them) of each loop at
two cycle counts (the difference, so start-up and exit drop out): the pooled loop's extra
call is the liveness check of a lent connection (one poll() that does not wait).

Runs are interleaved over repetitions and the medians reported; the machine's noise shows
in the min-max columns. Whole runs include start-up and exit (a few milliseconds against
about a second of cycles)."""
import os
import re
import shutil
import statistics
import subprocess
import tempfile

LOOPS = ("kept", "unconnected", "pooled")
POOL_SIZE = 16


def _env(loop, lib):
    """The caller's environment without LD_PRELOAD or any POOLSHIM_* setting (the pooled
    loop runs the defaults but for the pool's size)."""
    env = {k: v for k, v in os.environ.items()
           if k != "LD_PRELOAD" and not k.startswith("POOLSHIM_")}
    if loop == "pooled":
        env.update(LD_PRELOAD=lib, POOLSHIM_POOL_SIZE=str(POOL_SIZE))
    return env


def _cmd(cycle, loop, threads, cycles):
    cmd = [cycle, "--threads", str(threads), "--cycles", str(cycles)]
    if loop in ("kept", "unconnected"):
        cmd.append("--" + loop)
    return cmd


def _run(cycle, lib, loop, threads, cycles, one_core):
    """One run: (user_us, sys_us, voluntary, involuntary context switches) per cycle."""
    pre = (lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if one_core else None
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(_cmd(cycle, loop, threads, cycles), env=_env(loop, lib),
                             stdout=out, stderr=subprocess.STDOUT, preexec_fn=pre)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if p.returncode != 0 or "errors=0" not in text:
        raise RuntimeError(f"{loop} loop ({threads} threads) failed: {text.strip()[:300]}")
    return (ru.ru_utime * 1e6 / cycles, ru.ru_stime * 1e6 / cycles,
            ru.ru_nvcsw / cycles, ru.ru_nivcsw / cycles)


def _syscalls(cycle, lib, workdir, loop, cycles):
    """{syscall: calls} of a 1-thread run, from strace -f -c; a read that found no reply
    yet (recvfrom failing with EAGAIN) and the poll() that then waits for it count as
    "recvfrom EAGAIN" and "poll (waiting for a reply)": how many there are depends on
    timing, not on the pool."""
    with tempfile.NamedTemporaryFile("r", dir=workdir, suffix=".strace") as f:
        subprocess.run(["strace", "-f", "-c", "-o", f.name] + _cmd(cycle, loop, 1, cycles),
                       env=_env(loop, lib), check=True, capture_output=True, timeout=300)
        calls, errors = {}, {}
        for line in f.read().splitlines():
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$", line)
            if m and m.group(3) != "total":
                calls[m.group(3)] = int(m.group(1))
                errors[m.group(3)] = int(m.group(2) or 0)
    waits = errors.get("recvfrom", 0)
    if waits:
        calls["recvfrom"] -= waits
        calls["recvfrom EAGAIN"] = waits
        calls["poll"] = calls.get("poll", 0) - waits
        calls["poll (waiting for a reply)"] = waits
    return calls


def measure(cycle, lib, workdir, scale=1.0, reps=7, log=None):
    cycle, lib = os.path.abspath(cycle), os.path.abspath(lib)
    cycles = {1: max(1000, int(20000 * scale)), 8: max(1000, int(40000 * scale))}
    runs = {}  # (loop, threads, cores) -> [(user, sys, vcsw, ivcsw)]
    for rep in range(reps):
        for threads in (1, 8):
            for cores in (2, 1):
                for loop in LOOPS:
                    r = _run(cycle, lib, loop, threads, cycles[threads], cores == 1)
                    runs.setdefault((loop, threads, cores), []).append(r)
        if log:
            log(f"   cpugap repetition {rep + 1}/{reps} done")
    rows = []
    for threads in (1, 8):
        for cores in (2, 1):
            rs = {loop: runs[(loop, threads, cores)] for loop in LOOPS}
            row = dict(threads=threads, cores=cores, cycles=cycles[threads])
            for loop in LOOPS:
                t = [r[0] + r[1] for r in rs[loop]]
                row[loop] = dict(user=statistics.median(r[0] for r in rs[loop]),
                                 sys=statistics.median(r[1] for r in rs[loop]),
                                 total=statistics.median(t), min=min(t), max=max(t),
                                 vcsw=statistics.median(r[2] for r in rs[loop]),
                                 ivcsw=statistics.median(r[3] for r in rs[loop]))
            # Per repetition (its three loops ran one after another), then the median:
            # drift between repetitions drops out of the difference.
            def per_rep(i):
                return [(p[i] if i >= 0 else p[0] + p[1]) - (k[i] if i >= 0 else k[0] + k[1])
                        - (u[i] if i >= 0 else u[0] + u[1])
                        for p, k, u in zip(rs["pooled"], rs["kept"], rs["unconnected"])]

            added = per_rep(-1)
            row["added"] = statistics.median(added)
            row["added_min"], row["added_max"] = min(added), max(added)
            row["added_user"] = statistics.median(per_rep(0))
            row["added_sys"] = statistics.median(per_rep(1))
            row["ratio"] = statistics.median(
                (p[0] + p[1]) / max(k[0] + k[1], 1e-9) for p, k in zip(rs["pooled"], rs["kept"]))
            rows.append(row)
    res = dict(reps=reps, pool_size=POOL_SIZE, rows=rows)
    if shutil.which("strace"):
        n1, n2 = 1000, 3000
        try:
            sc = {}
            for loop in LOOPS:
                a, b = (_syscalls(cycle, lib, workdir, loop, n) for n in (n1, n2))
                sc[loop] = {k: (b.get(k, 0) - a.get(k, 0)) / (n2 - n1) for k in set(a) | set(b)}
                sc[loop] = {k: v for k, v in sc[loop].items() if abs(v) >= 0.005}
            res["syscalls"] = sc
        except (subprocess.SubprocessError, OSError) as exc:  # ptrace refused, say
            res["syscalls_error"] = f"strace failed: {str(exc).strip()[:200]}"
    else:
        res["syscalls_error"] = "strace is not installed"
    return res


def report(res):
    """Markdown lines for bench/report.py."""
    L = ["## Where the pooled loop's extra client CPU goes (`cpugap`)", ""]
    if "error" in res:
        return L + [f"measurement failed: {res['error']}", ""]
    L.append("Client CPU time per cycle from the kernel's accounting of `bench/cycle` (user + "
             "system, microseconds, median of "
             f"{res['reps']} interleaved repetitions, min-max in brackets) over TCP: *kept* = "
             "`--kept` (no shim), *init+close* = `--unconnected` (the application's own "
             "handle, no shim), *pooled* = the shim preloaded (pool of "
             f"{res['pool_size']}, default reset). *added* = pooled - kept - init+close within each repetition (its three loops ran "
             "one after another), the median of those and their range; its user and system "
             "parts are medians of their own, so they need not add up to it exactly; "
             "*pooled / kept* likewise per repetition. "
             "*1 core*: the client pinned to one core (the server is not): the same code "
             "without its shared state moving between the cores. See bench/cpugap.py.")
    L.append("")
    L.append("| threads | client on | kept | init+close | pooled | added [range] (user + sys) | "
             "pooled / kept | ctx switches per cycle (kept / pooled) |")
    L.append("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        k, u, p = r["kept"], r["unconnected"], r["pooled"]
        L.append(f"| {r['threads']} | {r['cores']} core{'s' if r['cores'] > 1 else ''} | "
                 f"{k['total']:.1f} [{k['min']:.1f}-{k['max']:.1f}] | {u['total']:.2f} | "
                 f"{p['total']:.1f} [{p['min']:.1f}-{p['max']:.1f}] | "
                 f"{r['added']:.1f} [{r['added_min']:.1f}-{r['added_max']:.1f}] "
                 f"({r['added_user']:.1f} + {r['added_sys']:.1f}) | "
                 f"{r['ratio']:.2f}x | {k['vcsw'] + k['ivcsw']:.2f} / "
                 f"{p['vcsw'] + p['ivcsw']:.2f} |")
    rows = {(r["threads"], r["cores"]): r for r in res["rows"]}
    if all(k in rows for k in ((1, 2), (1, 1), (8, 2), (8, 1))):
        def diff(t, k):
            return rows[(t, 2)][k] - rows[(t, 1)][k]

        L.append("")
        L.append(f"*added* on two cores minus on one: {diff(8, 'added'):+.1f} us per cycle "
                 f"at 8 threads ({diff(8, 'added_user'):+.1f} us of it user time), "
                 f"{diff(1, 'added'):+.1f} us at 1 thread ({diff(1, 'added_user'):+.1f} "
                 "user). One thread shares nothing with another, so its "
                 "difference is what the placement alone does to the measurement (where the "
                 "kernel wakes the client against the server); only what 8 threads show "
                 "beyond it can be the pool's shared state moving between the cores.")
    L.append("")
    if "syscalls" in res:
        sc = res["syscalls"]
        timing = ("recvfrom EAGAIN", "poll (waiting for a reply)")
        names = sorted((n for n in set().union(*sc.values()) if n not in timing),
                       key=lambda n: (-max(s.get(n, 0) for s in sc.values()), n))
        L.append("System calls per cycle (1 thread, `strace -f -c` at 1,000 and 3,000 cycles, "
                 "the difference / 2,000). Left out: a read that finds no reply yet and the "
                 "poll() that then waits for it, whose number depends on timing (under strace "
                 "more than without); the `poll` row is every other poll():")
        L.append("")
        L.append("| system call | kept | init+close | pooled |")
        L.append("|---|---:|---:|---:|")
        for n in names:
            L.append(f"| {n} | " + " | ".join(f"{sc[loop].get(n, 0):.2f}" for loop in LOOPS) + " |")
        L.append("")
    else:
        L.append(f"(system calls not counted: {res.get('syscalls_error')})")
        L.append("")
    return L
