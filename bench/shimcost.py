"""The shim's own CPU cost: instructions per pooled connect+close pair, from callgrind.

The headline: issue 12's definition
-----------------------------------
"Under 3,000 client instructions added per pooled connect+close pair, measured as above
(callgrind; a pooled loop minus a kept connection's queries minus mysql_init + mysql_close
of unconnected handles)". Three loops of bench/cycle.c run under
`valgrind --tool=callgrind`, each once with N1 and once with N2 cycles, and the
whole-program instruction count of each run (callgrind's `totals:`, every object: the
program, libmariadb, the shim, GLib, libc, ld.so) is taken:

  pooled      `cycle --threads 1 --cycles N` with LD_PRELOAD=libpoolshim.so
              (POOLSHIM_POOL_SIZE=1): mysql_init, connect, SELECT 1, close, N times over
              TCP; the connects after the first are lent from the pool.
  kept        `cycle --kept` without the shim: the same SELECT 1, N times, on one
              connection (no connect or close per cycle): the queries' own cost.
  unconnected `cycle --unconnected` without the shim: mysql_init + mysql_close of a handle
              never connected, N times: the application's own handle, which it creates
              and frees with or without a pool.

Everything that happens once per process (loading, the first physical connect,
configuration, the final Ssl_cipher check, closing the pool at exit) is the same in the
N1 and N2 runs of one loop, so (count(N2) - count(N1)) / (N2 - N1) is the cost of one more
cycle of that loop. Then

  added = pooled - kept - unconnected     (per cycle)

is what the pool adds to a connect+close pair, everything included: the two entry points
(lending, returning, moving the connection between MYSQL structs, the pool's own
mysql_init of the shell a connection lives in) and the watch's wrappers around
libmariadb's db_command / db_read_query_result on the loop's own SELECT 1 (statement
classification, reply inspection: watch.c, session.c), which run on every query of a
pooled connection.

Callgrind counts instructions executed in user space only: the kernel's side of the
syscalls (send, recv, poll on the socket) is not counted, and neither is waiting for the
server. So these are the client-side CPU instructions, "outside the network". One thing
in them depends on timing: a read that finds no reply yet returns EAGAIN, and libmariadb
waits in poll() and reads again (a hundred-odd instructions), as often as the machine's
load makes the server late. So every loop's count leaves out libmariadb's calls of libc's
recv() and of its own wait function (the one that calls poll()): the same reads happen in
all three loops for the same queries (the pooled loop under auto sends nothing else), and
what remains is deterministic to about ten instructions per cycle. Under a mode whose
return sends a reset, the reads of its replies are left out the same way (their parsing
by libmariadb is counted). The shim's own poll() on lending (a liveness check) is counted.
`--reps R` runs each loop R times and keeps the fewest instructions (default 1).

The detail rows: where the pooled loop's cycle goes
---------------------------------------------------
From the pooled runs' callgrind output (parsed here, not sampled), per pair:

  total       inclusive cost of the shim's two entry points, mysql_real_connect and
              mysql_close as defined in libpoolshim.so (the calls the application makes),
              i.e. everything executed between entering and leaving them: the shim's code,
              the GLib and libc code it calls, and the client library functions it calls
              (the session reset of a returned connection when one is sent, the pool's
              own mysql_init of a shell, freeing the application's handle). The SELECT 1
              of the loop is not inside these calls.
  libmariadb  the part of `total` spent inside libmariadb.so.3: the inclusive cost of
              every call arc from a function of libpoolshim.so into a function of
              libmariadb.so.3, except the arcs out of the shim's callback wrappers (those
              pass the application's own command on; a wrapper run inside the entry
              points, for a command the shim itself sends, is inside the entry point's
              outer arc into libmariadb and counted here).
  shim-only   total - libmariadb.
  handle_free the part of `total` that frees the application's handle: libmariadb's
              mysql_close called by the shim on the struct the connection was moved out
              of. The application's own mysql_close does this work without the pool too;
              `unconnected` above measures it the same way (plus mysql_init).
  entry_added total - handle_free: the entry points' share of `added` (this was the
              headline before it counted the wrappers).
  wrapper_cost the wrappers' work on the application's own SELECT 1, outside `total`:
              callbacks from libmariadb into the shim minus what the wrappers pass on to
              libmariadb (the command itself).
  self, by object the whole pair, not only the entry points: libpoolshim.so's own code
              (`self`, exclusive cost of its functions) plus the GLib/libc/ld.so
              functions it calls directly (inclusive cost of call arcs from libpoolshim.so
              into each other object).

Cross-check: `total` equals the inclusive figures callgrind_annotate --inclusive=yes
prints for the two entry points (also reported). For reference, the same is measured
without the shim: the inclusive cost of libmariadb's own mysql_real_connect and
mysql_close per pair (from the kept and unconnected runs there is none per cycle, so from
a plain run of the connect loop), i.e. what a physical connect+close costs the client.

Each figure is measured per reset mode (POOLSHIM_RESET): the default (auto), and `none`,
whose return sends no command when the borrower left no transaction. More modes:
`--modes default,none,auto,always`.

Usage (normally called from bench/run.py): shimcost.py CYCLE LIB WORKDIR [N1 N2]
[--modes default,none] [--reps R]. CYCLE and LIB are made absolute. Server coordinates from
PS_TEST_*. Prints a JSON object: the default mode's figures at the top level, every
mode's under "modes", the loops without the shim under "baseline".
"""
import json
import os
import re
import subprocess
import sys
from collections import defaultdict

NAME_RE = re.compile(r"^\((\d+)\)(?:\s+(.*))?$")


def _name(table, value):
    """Callgrind name compression: '(id) name' defines, '(id)' refers."""
    m = NAME_RE.match(value)
    if not m:
        return value
    ident, name = m.group(1), m.group(2)
    if name is not None:
        table[ident] = name
        return name
    return table.get(ident, f"({ident})")


def parse(path):
    """Returns (self_cost, arcs) for event Ir.

    self_cost[(ob, fn)] = exclusive instructions of that function;
    arcs[((ob, fn), (cob, cfn))] = inclusive instructions of the calls caller -> callee.
    The callee's object is the one named by a cob= line since the previous call, else
    the caller's own object (that is how callgrind writes it)."""
    names = {"ob": {}, "fl": {}, "fn": {}}
    self_cost = defaultdict(int)
    arcs = defaultdict(int)
    ob = fn = None
    cob = cfn = None
    in_call = False
    with open(path) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if in_call:
                    arcs[((ob, fn), (cob if cob is not None else ob, cfn))] += cost
                    in_call = False
                    cob = cfn = None
                else:
                    self_cost[(ob, fn)] += cost
                continue
            key, _, value = line.rstrip("\n").partition("=")
            if key == "ob":
                ob = _name(names["ob"], value)
            elif key == "fn":
                fn = _name(names["fn"], value)
            elif key in ("fl", "fi", "fe", "cfi", "cfl", "jfi"):
                _name(names["fl"], value)
            elif key == "cob":
                cob = _name(names["ob"], value)
            elif key == "cfn":
                cfn = _name(names["fn"], value)
            elif key == "jfn":
                _name(names["fn"], value)
            elif key == "calls":
                in_call = True
    return self_cost, arcs


def obj_kind(ob):
    base = os.path.basename(ob or "???")
    for k in ("libpoolshim", "libmariadb", "libglib", "libc.so", "ld-linux", "libcrypto",
              "libssl"):
        if base.startswith(k):
            return {"libc.so": "libc", "ld-linux": "ld.so"}.get(k, k)
    return base


def analyse(path):
    self_cost, arcs = parse(path)
    shim_entries = {"mysql_real_connect", "mysql_close"}
    total = libmariadb = shim_self = 0
    by_obj = defaultdict(int)
    callbacks = 0   # libmariadb -> libpoolshim (would be double-subtracted)
    real_pair = 0   # libmariadb's own mysql_real_connect + mysql_close, called by anyone
    handle_free = 0  # libpoolshim -> libmariadb's mysql_close: freeing a handle
    # The shim's functions that libmariadb calls back (watch.c's wrappers of the
    # connection's db_command / read_query_result methods): what they pass on to
    # libmariadb is the application's own command, not the shim's work.
    wrappers = {cfn for ((ob, fn), (cob, cfn)) in arcs
                if obj_kind(ob) == "libmariadb" and obj_kind(cob) == "libpoolshim"
                and cfn not in shim_entries}
    passthrough = 0  # wrappers -> libmariadb: the wrapped command itself
    for ((ob, fn), (cob, cfn)), cost in arcs.items():
        kind, ckind = obj_kind(ob), obj_kind(cob)
        if ckind == "libpoolshim" and cfn in shim_entries and kind != "libpoolshim":
            total += cost
        if kind == "libpoolshim" and ckind != "libpoolshim":
            by_obj[ckind] += cost
            if ckind == "libmariadb":
                if fn in wrappers:
                    passthrough += cost
                else:
                    libmariadb += cost
                if cfn == "mysql_close":
                    handle_free += cost
        if kind == "libmariadb" and ckind == "libpoolshim":
            callbacks += cost
        if ckind == "libmariadb" and cfn in shim_entries and kind != "libmariadb":
            real_pair += cost
    for (ob, fn), cost in self_cost.items():
        if obj_kind(ob) == "libpoolshim":
            shim_self += cost
    return dict(total=total, libmariadb=libmariadb, shim_self=shim_self,
                by_obj=dict(by_obj), callbacks=callbacks, passthrough=passthrough,
                wrapper_cost=callbacks - passthrough, real_pair=real_pair,
                handle_free=handle_free)


def annotate_total(path):
    """Inclusive Ir of libpoolshim's two entry points as callgrind_annotate prints them."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    total = 0
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(.*?\)\s+\S*:(mysql_real_connect|mysql_close)\s+\[(.*)\]",
                     line)
        if m and "libpoolshim" in m.group(3):
            total += int(m.group(1).replace(",", ""))
    return total


def total_ir(path):
    """Whole-program instructions of a callgrind run (its `totals:` line)."""
    with open(path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def socket_waits(path):
    """Instructions of libmariadb's socket reads in libc's recv() and of its waits for a
    reply not yet there (the libmariadb functions that call libc's poll(): a read that
    found no data waits there, then reads again): the part of a run that depends on how
    fast the server answered. Returns (instructions, calls of the wait function)."""
    _self, arcs = parse(path)
    waits = {fn for ((ob, fn), (cob, cfn)) in arcs
             if obj_kind(ob) == "libmariadb" and obj_kind(cob) == "libc" and cfn == "poll"}
    cost = calls = 0
    for ((ob, fn), (cob, cfn)), c in arcs.items():
        if obj_kind(ob) != "libmariadb":
            continue
        if (obj_kind(cob) == "libc" and cfn == "recv") or \
                (obj_kind(cob) == "libmariadb" and cfn in waits):
            cost += c
    return cost


def steady_ir(path):
    """Whole-program instructions minus socket_waits: deterministic to a few per cycle."""
    return total_ir(path) - socket_waits(path)


def run_callgrind(cycle, lib, workdir, n, preload, mode="default", loop=None):
    """loop: None (connect per cycle), "kept" or "unconnected" (bench/cycle.c's modes)."""
    tag = f"shim-{mode}" if preload else f"plain{'-' + loop if loop else ''}"
    out = os.path.join(workdir, f"callgrind.{tag}.{n}.out")
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.pop("POOLSHIM_RESET", None)
    if preload:
        if not os.path.exists(lib):
            raise RuntimeError(f"{lib}: no such library")
        env["LD_PRELOAD"] = lib
        env["POOLSHIM_POOL_SIZE"] = "1"
        if mode != "default":
            env["POOLSHIM_RESET"] = mode
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           cycle, "--threads", "1", "--cycles", str(n)] + ([f"--{loop}"] if loop else [])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0 or "errors=0" not in res.stdout:
        raise RuntimeError(f"callgrind run failed (rc {res.returncode}):\n{res.stdout}\n"
                           f"{res.stderr[-2000:]}")
    if preload:
        # A preload the loader could not open is ignored with a message, not an error:
        # without this check the figures would be zeros.
        self_cost, _ = parse(out)
        if not any(obj_kind(ob) == "libpoolshim" for (ob, _fn) in self_cost):
            raise RuntimeError(f"the shim was not loaded in {out}:\n{res.stderr[-500:]}")
    return out


def fewest(cycle, lib, workdir, n, preload, mode="default", loop=None, reps=1):
    """The run (callgrind output file) with the fewest instructions of `reps` runs alike.

    The one part of a loop's count that depends on timing: a read that finds the socket
    empty (the server has not answered yet) returns EAGAIN, and the client waits in poll()
    and reads again, about a hundred instructions more each time. How often that happens
    depends on the load of the machine; the run with the fewest instructions is the one
    with the fewest such retries, the closest to the loop's own cost."""
    best = None
    for _ in range(reps):
        out = run_callgrind(cycle, lib, workdir, n, preload, mode, loop)
        ir = steady_ir(out)
        if best is None or ir < best[0]:
            keep = out + ".fewest"
            os.replace(out, keep)
            best = (ir, keep)
    return best


def measure(cycle, lib, workdir, n1=200, n2=1200, modes=("default", "none"), reps=1):
    cycle, lib = os.path.abspath(cycle), os.path.abspath(lib)
    d = n2 - n1
    plain = {n: analyse(run_callgrind(cycle, lib, workdir, n, False)) for n in (n1, n2)}
    base = {}
    for loop in ("kept", "unconnected"):
        runs = {n: fewest(cycle, lib, workdir, n, False, loop=loop, reps=reps)[0]
                for n in (n1, n2)}
        base[loop] = (runs[n2] - runs[n1]) / d
    by_mode = {}
    for mode in modes:
        best = {n: fewest(cycle, lib, workdir, n, True, mode, reps=reps) for n in (n1, n2)}
        files = {n: best[n][1] for n in (n1, n2)}
        a1, a2 = analyse(files[n1]), analyse(files[n2])

        def per(key):
            return (a2[key] - a1[key]) / d

        pooled = (best[n2][0] - best[n1][0]) / d
        total, libmariadb = per("total"), per("libmariadb")
        objs = sorted(set(a1["by_obj"]) | set(a2["by_obj"]))
        by_obj = {o: (a2["by_obj"].get(o, 0) - a1["by_obj"].get(o, 0)) / d for o in objs}
        ann = (annotate_total(files[n2]) - annotate_total(files[n1])) / d
        by_mode[mode] = dict(
            pooled_cycle=pooled,
            added=pooled - base["kept"] - base["unconnected"],
            total=total, libmariadb=libmariadb, shim_only=total - libmariadb,
            shim_self=per("shim_self"),
            shim_by_obj={o: v for o, v in by_obj.items()
                         if o != "libmariadb" and abs(v) >= 0.5},
            callbacks=per("callbacks"),
            wrapper_cost=per("wrapper_cost"),
            handle_free=per("handle_free"),
            entry_added=total - per("handle_free"),
            annotate_total=ann,
        )
    first = by_mode[modes[0]]
    return dict(first, n1=n1, n2=n2, reps=reps, mode=modes[0], modes=by_mode,
                baseline=dict(kept_cycle=base["kept"], unconnected_cycle=base["unconnected"]),
                physical_pair=(plain[n2]["real_pair"] - plain[n1]["real_pair"]) / d)


if __name__ == "__main__":
    args = sys.argv[1:]
    modes = ("default", "none")
    if "--modes" in args:
        i = args.index("--modes")
        modes = tuple(m.strip() for m in args[i + 1].split(",") if m.strip())
        del args[i:i + 2]
    reps = 1
    if "--reps" in args:
        i = args.index("--reps")
        reps = int(args[i + 1])
        del args[i:i + 2]
    if len(args) not in (3, 5):
        sys.exit(__doc__.split("Usage")[1])
    extra = [int(x) for x in args[3:5]]
    print(json.dumps(measure(args[0], args[1], args[2], *extra, modes=modes, reps=reps),
                     indent=2))
