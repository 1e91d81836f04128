#!/bin/sh
# check-stat.sh POOLSHIM_STAT_BINARY SAMPLES_DIR: poolshim-stat against the files in tests/stat
# and against processes this script starts: table values, exited marking, warnings, JSON,
# exit statuses, PID mode, --watch. Every check runs; the script fails if any one fails.
# shellcheck disable=SC2016,SC2034 # checks are eval'd: their variables expand when they run
set -u
bin=$1
samples=$2
py=/usr/bin/python3
tmp=$(mktemp -d)
pids=
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}
check() { # check DESCRIPTION COMMAND...: the command's status is the verdict (eval for && chains)
  desc=$1
  shift
  if "$@"; then echo "ok: $desc"; else fail "$desc"; fi
}
# The numeric columns (SIZE..WAIT_P99) of the row of PROGRAM and POOL, single-spaced.
cols() {
  PROG=$1 POOL=$2 awk '{ sub(/ \(exited\)/, "") }
    $2 == ENVIRON["PROG"] && $3 == ENVIRON["POOL"] { $1 = $2 = $3 = $16 = ""; print }' \
    "$tmp/out" | sed 's/^ *//; s/ *$//; s/  */ /g'
}
expect_row() {
  got=$(cols "$1" "$2")
  if [ "$got" = "$3" ]; then echo "ok: row $1 $2"; else fail "row $1 $2: got '$got', want '$3'"; fi
}
wait_exec() { # until the started process is sleep (not yet env), so /proc shows its environment
  i=0
  while [ "$(cat "/proc/$1/comm" 2>/dev/null)" != sleep ] && [ $i -lt 100 ]; do
    sleep 0.05
    i=$((i + 1))
  done
}

# --- the table of the sample directory ---
"$bin" "$samples" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "exit status 0 when files were read" eval '[ $rc -eq 0 ] && [ -s "$tmp/out" ]'
check "header exactly once, all columns" eval '[ "$(grep -c "^PID " "$tmp/out")" = 1 ] &&
  [ "$(head -n 1 "$tmp/out" | tr -s " ")" = "PID PROGRAM POOL SIZE LENT IDLE OPENING WAITING \
BORROWED HIT% OPENED CLOSED WAITS TIMEOUTS WAIT_P99 AGE" ]'
expect_row gunicorn 'app@db1:3306/shop' '10 3 2 0 0 5000 99.8 10 6 12 0 <=100us'
expect_row gunicorn 'ro"user\x@db2:3306/stats' '4 4 0 1 2 200 75.0 9 5 60 2 <=1s'
expect_row gunicorn '(total)' '14 7 2 1 2 5200 98.8 19 11 72 2 <=10ms'
expect_row php-fpm 'web@db1:3306/shop' '5 0 5 0 0 0 - 5 0 0 0 -'
expect_row reportd '-' '- - - - - - - - - - - -'
expect_row worker 'jobs@db1:3306/q' '5 0 1 0 0 40 25.0 7 0 0 0 >10s'
check "one (total) row: only the process with two pools" [ "$(grep -c '(total)' "$tmp/out")" = 1 ]
check "7 table lines (header, 6 rows), equally wide, then the unpooled line" \
  eval '[ "$(awk "NR <= 7 { print length }" "$tmp/out" | sort -u | wc -l)" = 1 ] &&
  [ "$(grep -c "" "$tmp/out")" = 8 ]'
check "dead pid marked exited" grep -Eq '^4194304 \(exited\) +php-fpm +web@' "$tmp/out"
check "live pid not marked" eval '[ "$(grep -c "^1 " "$tmp/out")" = 5 ] &&
  ! grep -q "^1 (exited)" "$tmp/out"'
check "AGE column: time since the file was written" \
  eval '[ "$(awk "NR > 1 && NR <= 7 && /[0-9]+[smhd]\$/" "$tmp/out" | wc -l)" = 6 ]'
check "unpooled line" grep -qx 'unpooled connections (bypassed the pool): pid 1 (gunicorn): 3' \
  "$tmp/out"
check "an unknown metric makes no pool" eval 'grep -q "^1 *worker " "$tmp/out" &&
  ! grep -q ghost "$tmp/out"'
for w in "line 5: missing value" "line 6: value is not a finite number" \
  "line 7: bad escape in a label value" "line 8: unterminated label value" \
  "line 9: pool metric without a pool label" "line 10: value is not a non-negative integer"; do
  check "warning: $w" grep -q "^poolshim-stat: $samples/*worker-1.prom: $w\$" "$tmp/err"
done
check "no other warnings (unknown metric, trailing comma, timestamp are fine)" \
  eval '[ "$(grep -c "" "$tmp/err")" = 6 ]'

# --- JSON ---
"$bin" --json "$samples" >"$tmp/json" 2>/dev/null
rc=$?
check "--json exit status 0" eval '[ $rc -eq 0 ] && [ -s "$tmp/json" ]'
check "--json parses and has the numbers" "$py" - "$tmp/json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
p = {x["program"]: x for x in d["processes"]}
g, w = p["gunicorn"], p["worker"]
reasons = ["lifetime", "idle_timeout", "dead", "error", "reset_failed", "over_limit", "shutdown", "revoked"]
les = ["0.0001", "0.001", "0.01", "0.1", "1", "10", "+Inf"]
checks = [
    [x["file"].rsplit("/", 1)[1] for x in d["processes"]]
    == ["gunicorn-1.prom", "php-fpm-4194304.prom", "reportd-1.prom", "worker-1.prom"],
    (g["pid"], g["version"], g["alive"], g["unpooled"]) == (1, "0.1.0", True, 3),
    [x["pool"] for x in g["pools"]] == ["app@db1:3306/shop", 'ro"user\\x@db2:3306/stats'],
    {k: v for k, v in g["pools"][1].items() if k not in ("pool", "closed", "wait_seconds")}
    == dict(size=4, lent=4, idle=0, opening=1, waiting=2, borrowed=200, served_idle=150,
            opened=9, resets=190, waits=60, wait_timeouts=2),
    g["pools"][1]["closed"] == dict(zip(reasons, [2, 0, 3, 0, 0, 0, 0, 0])),
    list(g["pools"][1]["closed"]) == reasons,
    g["pools"][1]["wait_seconds"] == {
        "buckets": [{"le": le, "count": c}
                    for le, c in zip(les, [100, 120, 150, 190, 198, 199, 200])],
        "sum": 31.25, "count": 200},
    (p["php-fpm"]["pid"], p["php-fpm"]["alive"]) == (4194304, False),
    p["reportd"]["pools"] == [],
    (w["pools"][0]["borrowed"], w["pools"][0]["served_idle"], w["pools"][0]["idle"],
     w["pools"][0]["opened"]) == (40, 10, 1, 7),
    [b["count"] for b in w["pools"][0]["wait_seconds"]["buckets"]] == [0, 0, 0, 0, 3, 0, 4],
    all(isinstance(x["written_age_seconds"], float) and x["written_age_seconds"] > 0
        for x in d["processes"]),
]
bad = [i for i, ok in enumerate(checks) if not ok]
if bad:
    print("failed JSON checks (0-based):", bad, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

# --- names with control characters and bad UTF-8: escaped in JSON, visible in the table ---
mkdir "$tmp/ctl" "$tmp/empty" "$tmp/run"
printf '%s\n' 'poolshim_info{version="0.1.0",pid="1",program="ctl"} 1' >"$tmp/ctl/ctl-1.prom"
printf 'poolshim_pool_size{pool="a\\nb\tc\001d\303\251"} 3\n' >>"$tmp/ctl/ctl-1.prom"
printf 'poolshim_pool_size{pool="x\377y"} 4\n' >>"$tmp/ctl/ctl-1.prom"
echo 'not a stats file' >"$tmp/ctl/notes.txt"
echo 'garbage' >"$tmp/ctl/.ctl-1.prom.tmp.prom"
"$bin" --json "$tmp/ctl" >"$tmp/json" 2>"$tmp/err"
check "control characters as \\u00XX in JSON" grep -qF '"a\u000ab\u0009c\u0001d' "$tmp/json"
check "JSON of odd names parses back to the names" "$py" -c '
import json, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
sys.exit([p["pool"] for p in d["processes"][0]["pools"]] != ["a\nb\tc\x01d\u00e9", "x\ufffdy"])
' "$tmp/json"
check "only *.prom, no dot files, in a directory" eval '[ -s "$tmp/json" ] && [ ! -s "$tmp/err" ]'
"$bin" "$tmp/ctl" >"$tmp/out" 2>&1
check "control characters shown escaped in the table" grep -qF 'a\nb\x09c\x01d' "$tmp/out"

# --- POOLSHIM_GRAIN=transaction: takes, re-borrows and pins by reason, per pool ---
mkdir "$tmp/grain"
cat >"$tmp/grain/grainy-1.prom" <<'EOF'
poolshim_info{version="0.1.0",pid="1",program="grainy"} 1
poolshim_pool_size{pid="1",pool="app@h:1/d"} 8
poolshim_grain_takes_total{pid="1",pool="app@h:1/d"} 12
poolshim_grain_reborrows_total{pid="1",pool="app@h:1/d"} 11
poolshim_grain_pins_total{pid="1",pool="app@h:1/d",reason="transaction"} 5
poolshim_grain_pins_total{pid="1",pool="app@h:1/d",reason="warnings"} 2
poolshim_grain_pins_total{pid="1",pool="app@h:1/d",reason="a_future_reason"} 9
poolshim_pool_size{pid="1",pool="other@h:1/d"} 2
EOF
"$bin" "$tmp/grain" >"$tmp/out" 2>"$tmp/err"
check "grain: one line per pool that has the counts, after the table, no warning" \
  eval '[ ! -s "$tmp/err" ] && [ "$(grep -c "^transaction grain" "$tmp/out")" = 1 ] &&
  [ "$(tail -n 1 "$tmp/out")" = "transaction grain, pid 1 (grainy), pool app@h:1/d: takes 12, \
re-borrows 11, pins: transaction 5, autocommit 0, session 0, prepared_statement 0, \
unread_result 0, warnings 2, other 0" ]'
check "grain: no line for the sample files written under the connect grain" \
  eval '"$bin" "$samples" 2>/dev/null | { ! grep -q "transaction grain"; }'
"$bin" --json "$tmp/grain" >"$tmp/json" 2>/dev/null
check "grain: --json has the counts per pool, only where written" "$py" -c '
import json, sys
pools = json.load(open(sys.argv[1]))["processes"][0]["pools"]
g = pools[0].get("grain")
sys.exit(not (g == {"takes": 12, "reborrows": 11, "pins": {"transaction": 5, "autocommit": 0,
  "session": 0, "prepared_statement": 0, "unread_result": 0, "warnings": 2, "other": 0}}
  and "grain" not in pools[1]))
' "$tmp/json"

# --- a FIFO or a device given or planted: one line and a prompt exit, never a hang ---
mkfifo "$tmp/fifo.prom"
timeout 10 "$bin" "$tmp/fifo.prom" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "a FIFO argument: exit status 1, not a hang (124)" [ $rc -eq 1 ]
check "a FIFO argument: one line naming it" eval '[ "$(cat "$tmp/err")" = "poolshim-stat: $tmp/fifo.prom: not a regular file, skipped" ]'
timeout 10 "$bin" /dev/zero >"$tmp/out" 2>"$tmp/err"
rc=$?
check "a device argument: exit status 1, not endless reading (124)" [ $rc -eq 1 ]
check "a device argument: one line naming it" eval '[ "$(cat "$tmp/err")" = "poolshim-stat: /dev/zero: not a regular file, skipped" ]'
mkdir "$tmp/fifodir"
mkfifo "$tmp/fifodir/planted-1.prom"
cp "$samples/gunicorn-1.prom" "$tmp/fifodir/"
timeout 10 "$bin" "$tmp/fifodir" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "a FIFO planted in a directory: the other files are still shown" eval '[ $rc -eq 0 ] && grep -q gunicorn "$tmp/out"'
check "a FIFO planted in a directory: one line naming it" eval '[ "$(cat "$tmp/err")" = "poolshim-stat: $tmp/fifodir/planted-1.prom: not a regular file, skipped" ]'

# --- escape sequences in program and file names never reach the terminal raw ---
esc=$(printf '\033')
mkdir "$tmp/esc"
evil="$tmp/esc/x${esc}]0;owned$(printf '\007')${esc}[2J-1.prom"
{
  printf 'poolshim_info{version="0.1.0",pid="1",program="p\033[31mred"} 1\n'
  printf 'poolshim_unpooled_total{pid="1"} 2\n'
  printf 'poolshim_pool_size{pid="1",pool="a\033[2Jb"} 1\n'
  printf 'not a sample\n'
} >"$evil"
"$bin" "$tmp/esc" >"$tmp/out" 2>"$tmp/err"
check "no raw escape byte on stdout or stderr" eval '! grep -q "$esc" "$tmp/out" "$tmp/err"'
check "the file name is shown escaped in a warning" grep -qF 'x\x1b]0;owned\x07\x1b[2J-1.prom: line 4' "$tmp/err"
check "the program name is shown escaped in the table and the unpooled line" \
  eval '[ "$(grep -cF "p\\x1b[31mred" "$tmp/out")" -ge 2 ]'
check "the pool name is shown escaped" grep -qF 'a\x1b[2Jb' "$tmp/out"

# --- exit statuses and the no-argument mode ---
"$bin" "$tmp/empty" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "exit status 1 for an empty directory" [ $rc -eq 1 ]
check "says where it looked and how to enable the files" \
  grep -qF "$tmp/empty; to enable them, run the programs that use libpoolshim with \
POOLSHIM_STATS_FILE=/run/poolshim/%n-%p.prom" "$tmp/err"
"$bin" --bogus "$samples" >/dev/null 2>&1
rc=$?
check "exit status 2 for a bad option" [ $rc -eq 2 ]
"$bin" --watch=never "$samples" >/dev/null 2>&1
rc=$?
check "exit status 2 for a bad --watch value" [ $rc -eq 2 ]
"$bin" --version >"$tmp/out"
check "--version" grep -Eqx 'poolshim-stat [0-9]+\.[0-9]+\.[0-9]+' "$tmp/out"
POOLSHIM_STATS_FILE="$tmp/ctl/%n-%p.prom" "$bin" >"$tmp/out" 2>/dev/null
rc=$?
check "no argument: the directory of POOLSHIM_STATS_FILE" \
  eval '[ $rc -eq 0 ] && grep -q "^1 *ctl " "$tmp/out"'
POOLSHIM_STATS_FILE="$tmp/empty/%n-%p.prom" "$bin" >/dev/null 2>"$tmp/err"
rc=$?
check "no argument, nothing there: status 1, names the directory" \
  eval '[ $rc -eq 1 ] && grep -qF "found in $tmp/empty;" "$tmp/err"'

# --- PID mode, with processes started here ---
POOLSHIM_STATS_FILE="$tmp/run/%n-%p.prom" sleep 30 &
p1=$!
pids="$pids $p1"
sed "s/pid=\"1\"/pid=\"$p1\"/; s/program=\"gunicorn\"/program=\"sleep\"/" \
  "$samples/gunicorn-1.prom" >"$tmp/run/sleep-$p1.prom"
cp "$samples/php-fpm-4194304.prom" "$tmp/run/decoy-$p1.prom" # matches the glob, other pid
wait_exec $p1
"$bin" "$p1" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "PID with %n: status 0, the process's file, alive" \
  eval '[ $rc -eq 0 ] && grep -Eq "^$p1 +sleep +app@db1:3306/shop " "$tmp/out"'
check "PID with %n: a file of another pid is skipped" eval 'grep -q "^$p1 " "$tmp/out" &&
  ! grep -q php-fpm "$tmp/out"'
"$bin" --json "$p1" >"$tmp/json" 2>/dev/null
check "PID --json: pid and alive" "$py" -c '
import json, sys
p = json.load(open(sys.argv[1]))["processes"]
sys.exit(not (len(p) == 1 and p[0]["pid"] == int(sys.argv[2]) and p[0]["alive"] is True))
' "$tmp/json" "$p1"

POOLSHIM_STATS_FILE="$tmp/run/fixed-%p-%%.prom" sleep 30 &
p2=$!
pids="$pids $p2"
sed "s/pid=\"1\"/pid=\"$p2\"/" "$samples/reportd-1.prom" >"$tmp/run/fixed-$p2-%.prom"
wait_exec $p2
"$bin" "$p2" >"$tmp/out" 2>&1
check "PID with %p and %%" grep -Eq "^$p2 +reportd +- " "$tmp/out"

cd "$tmp/run" || exit 1
POOLSHIM_STATS_FILE="rel-%p.prom" sleep 30 &
p3=$!
pids="$pids $p3"
cd - >/dev/null || exit 1
sed "s/pid=\"1\"/pid=\"$p3\"/" "$samples/reportd-1.prom" >"$tmp/run/rel-$p3.prom"
wait_exec $p3
"$bin" "$p3" >"$tmp/out" 2>&1
check "PID with a relative pattern: from the process's directory" grep -Eq "^$p3 +reportd " \
  "$tmp/out"

env -u POOLSHIM_STATS_FILE sleep 30 &
p4=$!
pids="$pids $p4"
wait_exec $p4
"$bin" "$p4" >/dev/null 2>"$tmp/err"
rc=$?
check "PID without the variable: status 1" [ $rc -eq 1 ]
check "PID without the variable: names the pid and the variable" \
  grep -q "process $p4 has no POOLSHIM_STATS_FILE in its environment" "$tmp/err"

kill -KILL $p1
wait $p1 2>/dev/null
"$bin" "$tmp/run/sleep-$p1.prom" >"$tmp/out" 2>&1
check "a SIGKILLed process's file is shown, marked exited" \
  grep -Eq "^$p1 \(exited\) +sleep +app@" "$tmp/out"

# --- --watch: repeats until SIGINT/SIGTERM, then status 0; no escapes when not a tty ---
timeout --preserve-status -s INT 1.5 "$bin" --watch=0.4 "$samples" >"$tmp/out" 2>/dev/null
rc=$?
check "--watch ends with status 0 on SIGINT" eval '[ $rc -eq 0 ] && [ -s "$tmp/out" ]'
check "--watch redraws with a timestamp" \
  eval '[ "$(grep -c "^poolshim-stat 20.*every 0.4s" "$tmp/out")" -ge 2 ]'
esc=$(printf '\033')
check "--watch: no screen clearing when stdout is a file" \
  eval 'grep -q "^PID " "$tmp/out" && ! grep -q "$esc" "$tmp/out"'
# A bare --watch takes the default interval and leaves the next word an argument.
timeout --preserve-status -s TERM 1.5 "$bin" --watch "$samples" >"$tmp/out" 2>&1
rc=$?
check "--watch ends with status 0 on SIGTERM" \
  eval '[ $rc -eq 0 ] && grep -q "every 2s" "$tmp/out" && grep -q "^1 *gunicorn " "$tmp/out"'

if [ $failures -ne 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
