#!/bin/sh
# The library exports exactly the interposed entry points and the public API.
set -eu
got=$(nm -D --defined-only "$1" | awk '{print $3}' | sort | tr '\n' ' ')
want="mariadb_rpl_open mysql_change_user mysql_close mysql_real_connect mysql_server_end poolshim_stats poolshim_version "
if [ "$got" != "$want" ]; then
  echo "exported: $got"
  echo "expected: $want"
  exit 1
fi
echo "exports ok: $got"
