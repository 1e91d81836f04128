#!/bin/sh
# The installed library (first argument) holds no POOLSHIM_TEST_* hook: a test build's
# copy (second argument) does, so that this check would see one if the switch leaked.
set -eu
lib="$1" test_lib="$2"
hooks=$(strings -a "$test_lib" | grep -E '^POOLSHIM_TEST_[A-Z_]+$' | sort -u || true)
if [ -z "$hooks" ]; then
  echo "the test library $test_lib has no POOLSHIM_TEST_* hook: this check proves nothing"
  exit 1
fi
for h in $hooks; do
  if strings -a "$lib" | grep -qx "$h"; then
    echo "$lib contains the test hook $h"
    exit 1
  fi
done
echo "no test hook in $lib (the test library has: $(echo $hooks))"
