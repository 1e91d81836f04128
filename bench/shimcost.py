"""The shim's own CPU cost: instructions per pooled connect+close pair, from callgrind.

What is measured, exactly
-------------------------
`cycle --threads 1 --cycles N` (connect, SELECT 1, close, N times over TCP) runs under
`valgrind --tool=callgrind` with LD_PRELOAD=libpoolshim.so, once with N1 and once with
N2 cycles. Everything that happens once per process (loading, the first physical connect,
configuration, closing the pool at exit) is the same in both runs, so the difference of
any cost divided by N2-N1 is the steady-state cost of one more pooled connect+close pair.

Callgrind counts instructions executed in user space only: the kernel's side of the
syscalls (send, recv, poll on the socket) is not counted, and neither is waiting for the
server. So these are the client-side CPU instructions, "outside the network".

From the callgrind output file (parsed here, not sampled) we take, per pair:

  total       inclusive cost of the shim's two entry points, mysql_real_connect and
              mysql_close as defined in libpoolshim.so (the calls the application makes),
              i.e. everything executed between entering and leaving them: the shim's code,
              the GLib and libc code it calls, and the client library functions it calls.
              The latter is mostly the session reset of a returned connection:
              COM_RESET_CONNECTION and COM_INIT_DB packets written and their answers
              read and parsed by libmariadb (plus mysql_init of the pool's own shell and
              the like). The SELECT 1 of the loop is not inside these calls.
  libmariadb  the part of `total` spent inside libmariadb.so.3: the inclusive cost of
              every call arc from a function of libpoolshim.so into a function of
              libmariadb.so.3 (what libmariadb calls in turn, e.g. libc's memcpy or the
              send/recv wrappers, is inside those arcs), except the arcs out of the
              shim's callback wrappers. watch.c replaces the connection's db_command and
              read_query_result methods, so every command libmariadb sends (the loop's
              own SELECT 1 too, outside `total`) runs libmariadb -> wrapper -> the real
              method in libmariadb; those pass-through arcs are the application's
              command, not the shim's, and counting them made this column bigger than
              `total`. A wrapper run inside the entry points (a command the shim itself
              sends, e.g. a reset at return) is inside the entry point's outer arc into
              libmariadb, so there it is counted here, wrapper included.
  shim-only   total - libmariadb: instructions the shim adds on top of the client
              library's own work inside the two entry points.
  self, by object (detail rows) the whole pair, not only the entry points:
              libpoolshim.so's own code (`self`, the sum of the exclusive cost of its
              functions) plus the GLib/libc/ld.so functions it calls directly (`by
              object`, inclusive cost of call arcs from libpoolshim.so into each other
              object). These include the wrappers' work on the application's own
              commands (`wrapper_cost`: callbacks from libmariadb into the shim minus
              what the wrappers pass on to libmariadb), which is outside `total`.

  handle_free the part of `total` that frees the application's handle: libmariadb's
              mysql_close called by the shim on the struct the connection was moved out
              of (its options, its extensions, the struct itself). The application's own
              mysql_close does exactly this work without the pool too.
  added       total - handle_free: what the pool adds to a connect+close pair (the
              figure issue 12 sets at under 3,000 instructions).

Each figure is measured per reset mode (POOLSHIM_RESET): the default, and `none`, whose
return sends no command when the borrower left no transaction, the stand-in for a
returned connection with nothing to reset (`auto` when nothing changed). More modes:
`--modes default,none,auto`.

Cross-check: `total` equals the inclusive figures callgrind_annotate --inclusive=yes
prints for the two entry points (also reported). For reference, the same is measured
without the shim: the inclusive cost of libmariadb's own mysql_real_connect and
mysql_close per pair, i.e. what a physical connect+close costs the client in user space
(handshake parsing, authentication scramble, COM_QUIT), again without the kernel's share.

Usage (normally called from bench/run.py): shimcost.py CYCLE LIB WORKDIR [N1 N2]
[--modes default,none]. Server coordinates from PS_TEST_*. Prints a JSON object: the
default mode's figures at the top level, every mode's under "modes".
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


def run_callgrind(cycle, lib, workdir, n, preload, mode="default"):
    tag = f"shim-{mode}" if preload else "plain"
    out = os.path.join(workdir, f"callgrind.{tag}.{n}.out")
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.pop("POOLSHIM_RESET", None)
    if preload:
        env["LD_PRELOAD"] = lib
        env["POOLSHIM_POOL_SIZE"] = "1"
        if mode != "default":
            env["POOLSHIM_RESET"] = mode
    res = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          cycle, "--threads", "1", "--cycles", str(n)],
                         env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0 or "errors=0" not in res.stdout:
        raise RuntimeError(f"callgrind run failed (rc {res.returncode}):\n{res.stdout}\n"
                           f"{res.stderr[-2000:]}")
    return out


def measure(cycle, lib, workdir, n1=200, n2=1200, modes=("default", "none")):
    d = n2 - n1
    plain = {n: analyse(run_callgrind(cycle, lib, workdir, n, False)) for n in (n1, n2)}
    by_mode = {}
    for mode in modes:
        files = {n: run_callgrind(cycle, lib, workdir, n, True, mode) for n in (n1, n2)}
        a1, a2 = analyse(files[n1]), analyse(files[n2])

        def per(key):
            return (a2[key] - a1[key]) / d

        total, libmariadb = per("total"), per("libmariadb")
        objs = sorted(set(a1["by_obj"]) | set(a2["by_obj"]))
        by_obj = {o: (a2["by_obj"].get(o, 0) - a1["by_obj"].get(o, 0)) / d for o in objs}
        ann = (annotate_total(files[n2]) - annotate_total(files[n1])) / d
        by_mode[mode] = dict(
            total=total, libmariadb=libmariadb, shim_only=total - libmariadb,
            shim_self=per("shim_self"),
            shim_by_obj={o: v for o, v in by_obj.items()
                         if o != "libmariadb" and abs(v) >= 0.5},
            callbacks=per("callbacks"),
            wrapper_cost=per("wrapper_cost"),
            handle_free=per("handle_free"),
            added=total - per("handle_free"),
            annotate_total=ann,
        )
    first = by_mode[modes[0]]
    return dict(first, n1=n1, n2=n2, mode=modes[0], modes=by_mode,
                physical_pair=(plain[n2]["real_pair"] - plain[n1]["real_pair"]) / d)


if __name__ == "__main__":
    args = sys.argv[1:]
    modes = ("default", "none")
    if "--modes" in args:
        i = args.index("--modes")
        modes = tuple(m.strip() for m in args[i + 1].split(",") if m.strip())
        del args[i:i + 2]
    if len(args) not in (3, 5):
        sys.exit(__doc__.split("Usage")[1])
    extra = [int(x) for x in args[3:5]]
    print(json.dumps(measure(args[0], args[1], args[2], *extra, modes=modes), indent=2))
