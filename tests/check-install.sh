#!/bin/sh
# check-install.sh BUILD_DIR: `meson install` into a temporary DESTDIR puts every file where
# the brief says, and the installed launcher, stat tool and man pages work from there.
set -eu
build=$1
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

meson install -C "$build" --destdir "$dest" --no-rebuild --quiet >/dev/null ||
  fail "meson install failed"
prefix=$(meson introspect "$build" --buildoptions |
  /usr/bin/python3 -c 'import json,sys; o={x["name"]:x["value"] for x in json.load(sys.stdin)}; print(o["prefix"], o["libdir"], o["bindir"], o["includedir"], o["mandir"])')
set -- $prefix
root="$dest$1"
for f in "$2/libpoolshim.so" "$3/poolshim-run" "$3/poolshim-stat" "$4/poolshim.h" \
         "$5/man7/poolshim.7" "$5/man1/poolshim-run.1" "$5/man1/poolshim-stat.1"; do
  case $f in /*) path="$dest$f" ;; *) path="$root/$f" ;; esac
  [ -e "$path" ] || fail "not installed: $f"
  echo "installed: $f"
done
case $2 in /*) libdir="$dest$2" ;; *) libdir="$root/$2" ;; esac
case $3 in /*) bindir="$dest$3" ;; *) bindir="$root/$3" ;; esac
case $5 in /*) mandir="$dest$5" ;; *) mandir="$root/$5" ;; esac

# The installed launcher finds the installed library (not the build tree's).
preload=$(env -u LD_PRELOAD "$bindir/poolshim-run" sh -c 'echo "$LD_PRELOAD"')
[ "$(readlink -f "$preload")" = "$(readlink -f "$libdir/libpoolshim.so")" ] ||
  fail "installed poolshim-run preloads '$preload', expected $libdir/libpoolshim.so"
echo "installed poolshim-run preloads $preload"
"$bindir/poolshim-stat" --version >/dev/null || fail "installed poolshim-stat --version"

# The man pages render without a warning; poolshim(7) lists every variable of the code.
for page in "$mandir/man7/poolshim.7" "$mandir/man1/poolshim-run.1" "$mandir/man1/poolshim-stat.1"; do
  out=$(groff -man -Tutf8 -ww -z "$page" 2>&1) || fail "groff failed on $page"
  [ -z "$out" ] || fail "groff warnings on $page: $out"
done
for v in POOLSHIM_POOL_SIZE POOLSHIM_CONFIG POOLSHIM_STATS_FILE POOLSHIM_HOST_MAX POOLSHIM_LOG_FILE; do
  grep -q "^\.B $v\$" "$mandir/man7/poolshim.7" || fail "poolshim(7) does not describe $v"
done
grep -q '@VARIABLES@\|@VERSION@' "$mandir/man7/poolshim.7" && fail "poolshim(7) has unsubstituted placeholders"
echo "man pages render cleanly"
