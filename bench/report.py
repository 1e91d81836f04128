"""The benchmark's report (bench/run.py): the markdown text (targets, the grain's targets
and rows, the results table, checks per group, revalidation, fairness, the shim's own
cost) and the chart, from the variants run.py has run and summarised. Runs nothing."""
import os
import platform
import statistics

from variants import (DELAY_US, FAIR_POOL, FIFO_RATIO, GRAIN_LIMITS, GRAIN_POOL,
                      GRAIN_TIMEOUT, GRAIN_WORKLOADS, GROUP_TITLES, LABELS, POOL, PY_THREADS,
                      TURN_SLACK_US, MIN_REPS, quantum_us, reps_of)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def throughput(r, v):
    """Cycles (or tasks) per second of one run of variant v."""
    return v.cycles / r["seconds"] if r.get("seconds") else None


def server_us_of(r, v):
    """Server CPU per cycle of one run (microseconds)."""
    return r.get("server_us")


def commands_note(v, unit):
    """The server's commands per cycle (or task) of variant v, median over its runs (the
    `Questions` counter: exact, unlike the times), or None for runs that did not count them
    (before 2026-12-07 evening)."""
    cs = [r["commands"] for r in v.runs if r.get("commands") is not None]
    return f"{median(cs):.2f} server commands/{unit}" if cs else None


def seconds_of(r, v):
    return r["seconds"]


def paired(a, b, fig, ok=lambda ra, rb: True):
    """a / b of one figure (fig(run, variant)) within each repetition: a's i-th run against
    b's, where both have the figure and ok(a's run, b's run)."""
    out = []
    for ra, rb in zip(a.runs, b.runs):
        x, y = fig(ra, a), fig(rb, b)
        if x and y and ok(ra, rb):
            out.append(x / y)
    return out


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def fmt_num(x, spec=",.0f"):
    return "-" if x is None else format(x, spec)


def more_reps(groups, reps):
    """The groups that ran more repetitions than --reps (variants.MIN_REPS), for the header:
    the selected groups and their sub-groups (grain-django is grain's)."""
    subs = [g for g in MIN_REPS if any(g == s or g.startswith(s + "-") for s in groups)]
    more = [f"{g}: {reps_of(g, reps)}" for g in subs if reps_of(g, reps) > reps]
    return f" ({', '.join(more)})" if more else ""


def spread(xs):
    """min-max of the repetitions, compact (the noise a median hides)."""
    xs = [x for x in xs if x]
    if len(xs) < 2:
        return "-"

    def k(x):
        return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"
    return f"{k(min(xs))}-{k(max(xs))}"


def report(todo, by_key, groups, args, vers, shimcost, proxy_info, started, wall, cpu=None,
           cpugap=None):
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
             f"{args.reps} repetitions{more_reps(groups, args.reps)}, interleaved (each "
             "group in reverse order every other repetition); "
             f"run time {wall:.0f} s")
    L.append(f"- poolshim variants: `POOLSHIM_POOL_SIZE={POOL}` (fairness group: "
             f"{FAIR_POOL}), other settings default. Physical connections: the server's "
             "`Connections` counter before/after each run (max over repetitions; a C "
             "loop's count includes its final `Ssl_cipher` check connection).")
    L.append("- cycles/s: median over repetitions (*range*: slowest-fastest repetition); "
             "*vs baseline*: median over repetitions of the ratio to the baseline run of the "
             "same repetition (no pool at the same thread count; fairness: 8 threads); a "
             "target row that sets two variants against each other is likewise the median "
             "of their ratio within each repetition (range: the repetitions' lowest-highest; "
             "beside it the ratio of the two medians, which the row gave until 2026-12-07).")
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

    def ratio_row(desc, a_key, b_key, want, at_most=False, per_run=throughput):
        """a / b of one figure of a run (cycles/s or server CPU per cycle) against a limit:
        the median over repetitions of the ratio within one repetition, as the results
        table's *vs baseline* (the two run side by side in each), with the repetitions'
        range."""
        a, b = by_key.get(a_key), by_key.get(b_key)
        if not a or not b:
            return
        pairs = paired(a, b, per_run)
        if not pairs:
            return
        x = median(pairs)
        ok = x <= want if at_most else x >= want
        # What the row said until 2026-12-07 (the two variants' medians divided), beside it.
        ma, mb = (median(per_run(r, v) for r in v.runs) for v in (a, b))
        old = f"; medians' ratio {ma / mb:.2f}x" if ma and mb else ""
        L.append(f"| {desc} | {x:.2f}x (repetitions {min(pairs):.2f}-{max(pairs):.2f}{old}) | "
                 f"{'yes' if ok else '**no**'} |")

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
                      1.2, at_most=True, per_run=server_us_of)
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
        commands = commands_note(v, "cycle")
        if commands:
            notes.append(commands)
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
    if cpugap:
        import cpugap as cg
        L.extend(cg.report(cpugap))
    return "\n".join(L) + "\n"


# The grain's reference rows (no target): what the report says the transaction grain's
# time is over, in the words after "the time of".
GRAIN_REFERENCES = {
    "ownpool": lambda g: (
        f"the program's own pool of {GRAIN_POOL} (median over repetitions of the ratio in "
        "each). That pool is the bound of any pool of this size: it knows where each task "
        "ends, and its connections carry no session to restore. What it pays against the "
        "kept connections is the pool's size itself."),
    "taskpool": lambda g: (
        "the same program rewritten to close its connection after every task on poolshim's "
        f"pool of {GRAIN_POOL} (median over repetitions of the ratio in each): the same eight "
        "connections shared at the task's grain with the program's help, with no take and no "
        "restore. What that pays against the kept connections is what "
        f"{GRAIN_WORKLOADS[g][1]} threads on {GRAIN_POOL} connections cost this workload, "
        "whoever shares them."),
}


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
        for tag in ("gconnect", "gtrans") + tuple(GRAIN_REFERENCES):
            v = by_key.get((g, GRAIN_WORKLOADS[g][1], tag))
            if v is None:
                continue
            ref = tag in GRAIN_REFERENCES
            limit = GRAIN_LIMITS.get(g) if not ref else None
            tr = median(paired(v, kept, seconds_of, lambda r, k: not r["errors"])
                        if kept else [])
            v.time_ratio = tr
            checks = [v.peak_max is not None and v.peak_max <= GRAIN_POOL,
                      v.errors - v.wrong == 0, v.wrong == 0]
            if limit:
                checks.append(tr is not None and tr <= limit)
            met = all(checks)
            lim = f" (<= {limit:.2f}x)" if limit else ""
            L.append(f"| {GROUP_TITLES[g]} | {v.label} | {fmt_num(v.peak_max)} | "
                     f"{v.errors - v.wrong} | {v.wrong} | {fmt_ratio(tr)}{lim} | "
                     f"{('yes' if met else '**no**') if not ref else '(reference)'} |")
    L.append("")
    for g in gs:
        tv = by_key.get((g, GRAIN_WORKLOADS[g][1], "gtrans"))
        for tag, what in GRAIN_REFERENCES.items():
            own = by_key.get((g, GRAIN_WORKLOADS[g][1], tag))
            if own is None or tv is None:
                continue
            tr = median(paired(tv, own, seconds_of,
                               lambda r, o: not r["errors"] and not o["errors"]))
            L.append(f"{GROUP_TITLES[g]}: the transaction grain takes {fmt_ratio(tr)} the "
                     f"time of {what(g)}")
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
            notes = [n for n in (commands_note(v, "task"),) if n] + v.notes
            L.append(f"| {GROUP_TITLES[g]} | {v.label} | {v.threads} | {v.cycles} | "
                     f"{fmt_num(v.med_sec, '.3f')} | {fmt_num(v.med_thr)} | "
                     f"{fmt_num(v.peak_max)} | {v.conns} | {v.errors - v.wrong} | {v.wrong} | "
                     f"{'; '.join(notes)} |")
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
