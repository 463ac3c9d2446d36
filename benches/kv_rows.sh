#!/usr/bin/env bash
# The consulate rows of ../shared/bench/side-by-side.sh, from this tree, on a DC without
# the per-client connection cap (so c256 is not answered 429 past 200 connections): a
# 3-server DC on loopback (fsync on), writes with consulate_put.lua at 1 connection (once)
# and at 16, 64 and 256 connections (REPS times each), then default, stale and consistent
# reads of one key at 64; each row requests/s and p50/p90/p99 in the shared script's
# format, plus the Raft RPCs the leader gave up on during each write row.
# usage: benches/kv_rows.sh [SECONDS] [REPS]     (needs wrk and curl)
set -euo pipefail
d=${1:-10}; reps=${2:-3}
. "$(dirname "$0")/cluster.sh" 89 k
for n in k1 k2 k3; do start $n; done
wait_leader
u=http://$leader:8500
curl -sf -X PUT -d 'bench-value' "$u/v1/kv/bench-read" >/dev/null
row() { # LABEL WRK-ARGS...
  local label=$1; shift
  local before; before=$(raft_failures)
  wrk "$@" 2>&1 | awk -v l="$label" '
    /^ +50%/ {p50=$2} /^ +90%/ {p90=$2} /^ +99%/ {p99=$2} /Requests\/sec/ {rps=$2} /Non-2xx|Socket errors/ {err=err" "$0}
    END {printf "%-40s %10s req/s  p50 %-9s p90 %-9s p99 %-9s%s", l, rps, p50, p90, p99, err}'
  echo "  raft RPC failures: $(( $(raft_failures) - before ))"
}
echo "consulate leader $leader; ${d}s per row"
row "consulate write c1 #1" -t1 -c1 -d"${d}s" --latency -s "$root/benches/consulate_put.lua" "$u"
for c in 16 64 256; do
  for r in $(seq "$reps"); do
    row "consulate write c$c #$r" -t2 -c"$c" -d"${d}s" --latency -s "$root/benches/consulate_put.lua" "$u"
  done
done
for m in default stale consistent; do
  q=$([ $m = default ] && echo "" || echo "?$m")
  row "consulate read $m c64" -t2 -c64 -d"${d}s" --latency "$u/v1/kv/bench-read$q"
done
