#!/bin/sh
# A setuid-root copy of tests/secureprobe run as `nobody` (getauxval(AT_SECURE) = 1) with
# POOLSHIM_LOG_FILE, POOLSHIM_STATS_FILE and POOLSHIM_CONFIG set: none of those files is
# created or read, one warning names them, the connect still works. Then the same copy run as
# root (not privileged beyond its caller): the same settings are used, so the first half
# could fail. Needs root (to chown/chmod the copy) and a file system without nosuid.
# Usage: check-secure.sh SECUREPROBE LIBPOOLSHIM WORKDIR
set -eu
probe="$1" lib="$2" work="$3"
fail() { echo "FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || fail "this test needs root to make a setuid-root copy of the probe"
for v in PS_TEST_HOST PS_TEST_PORT PS_TEST_USER PS_TEST_PASSWORD PS_TEST_DB; do
  eval "[ -n \"\${$v:-}\" ]" || fail "$v is not set (run through scripts/test)"
done
# The directory of the copy must be on a file system without nosuid and reachable by
# `nobody` through every parent: a checkout under a 0700 directory (mktemp -d) is not, so
# the build directory is tried first, then /var/tmp and /tmp.
dir= why=
for base in "$work" /var/tmp /tmp; do
  d=$(mktemp -d "$base/pst-secure.XXXXXX") || continue
  chmod 755 "$d"
  if findmnt -n -o OPTIONS -T "$d" | tr ',' '\n' | grep -qx nosuid; then
    why="$why $base: nosuid;"
  elif ! env -u LD_PRELOAD setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups \
      test -x "$d/."; then
    why="$why $base: not reachable by nobody;"
  else
    dir=$d
    break
  fi
  rm -rf "$d"
done
[ -n "$dir" ] || fail "no directory where a setuid copy can run as nobody:$why"
trap 'rm -rf "$dir"' EXIT
cp "$probe" "$dir/secureprobe"
cp "$lib" "$dir/libpoolshim.so"
chown root:root "$dir/secureprobe" "$dir/libpoolshim.so"
chmod 4755 "$dir/secureprobe"
chmod 644 "$dir/libpoolshim.so"
mkdir "$dir/out"
chmod 1777 "$dir/out"
# A key file that, if read, raises the log level and warns about an unknown key.
printf '[default]\nlog = debug\nbogus_key = 1\n' >"$dir/out/conf"
chmod 644 "$dir/out/conf"

run() { # run WHO: the probe with the file settings, as nobody (setuid) or as root
  who=$1 out="$dir/$1.out" err="$dir/$1.err"
  set -- env POOLSHIM_LOG_FILE="$dir/out/$1.log" POOLSHIM_STATS_FILE="$dir/out/$1.prom" \
    POOLSHIM_CONFIG="$dir/out/conf" "$dir/secureprobe" "$dir/libpoolshim.so"
  if [ "$who" = nobody ]; then
    set -- setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups "$@"
  fi
  # No LD_PRELOAD: the probe loads the shim itself, and a test wrapper's preload (the TSan
  # pass's) must not run inside setpriv and env as nobody, where it cannot write its logs.
  set -- env -u LD_PRELOAD "$@"
  timeout 60 "$@" >"$out" 2>"$err" || fail "the probe run as $who failed ($?): $(cat "$out" "$err")"
}

run nobody
grep -qx 'secure=1' "$dir/nobody.out" || fail "the setuid copy is not AT_SECURE: $(cat "$dir/nobody.out")"
grep -qx 'euid=0' "$dir/nobody.out" || fail "the setuid copy does not run as root: $(cat "$dir/nobody.out")"
grep -qx 'connected=1' "$dir/nobody.out" || fail "the connect failed: $(cat "$dir/nobody.out" "$dir/nobody.err")"
for f in nobody.log nobody.prom; do
  [ ! -e "$dir/out/$f" ] || fail "$f was created by the privileged process: $(cat "$dir/out/$f")"
done
lines=$(grep -c . "$dir/nobody.err" || true)
[ "$lines" = 1 ] || fail "expected one warning on stderr, got $lines: $(cat "$dir/nobody.err")"
grep -q '^poolshim: warning: this process runs with elevated privileges' "$dir/nobody.err" ||
  fail "not the warning expected: $(cat "$dir/nobody.err")"
grep -q 'POOLSHIM_LOG_FILE, POOLSHIM_STATS_FILE, POOLSHIM_CONFIG ignored' "$dir/nobody.err" ||
  fail "the warning does not name the variables: $(cat "$dir/nobody.err")"
if grep -q bogus_key "$dir/nobody.err"; then fail "the key file was read"; fi

run root
grep -qx 'secure=0' "$dir/root.out" || fail "the root run is AT_SECURE: $(cat "$dir/root.out")"
grep -qx 'connected=1' "$dir/root.out" || fail "the connect failed: $(cat "$dir/root.out" "$dir/root.err")"
[ -s "$dir/out/root.prom" ] || fail "an ordinary process did not write POOLSHIM_STATS_FILE"
grep -q 'bogus_key' "$dir/out/root.log" ||
  fail "an ordinary process did not read POOLSHIM_CONFIG or log to POOLSHIM_LOG_FILE: $(cat "$dir/out/root.log" "$dir/root.err" 2>&1)"
echo "secure: the privileged copy used no file setting from the environment; the ordinary one did"
