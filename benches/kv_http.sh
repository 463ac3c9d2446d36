#!/usr/bin/env bash
# KV benchmark of a 3-server DC on loopback (fsync on), loaded by wrk exactly as
# ../shared/bench/etcd-baseline.sh loads etcd: writes with consulate_put.lua (distinct keys,
# 64-byte values), then default-mode (leader) and ?stale reads of one key.
# usage: benches/kv_http.sh CONNS SECONDS     (needs wrk and curl)
set -euo pipefail
c=${1:-64}; d=${2:-8}; t=$(( c < 2 ? 1 : 2 ))
. "$(dirname "$0")/cluster.sh" 90 b
for n in b1 b2 b3; do start $n; done
wait_leader
curl -sf -X PUT -d 'bench-value' "http://$leader:8500/v1/kv/bench-read" >/dev/null
echo "consulate leader $leader; conns $c; ${d}s each"
echo "write:";           wrk -t$t -c"$c" -d"${d}s" --latency -s "$root/benches/consulate_put.lua" "http://$leader:8500" | grep -E "Requests/sec|50%|99%"
echo "read (default):";  wrk -t$t -c"$c" -d"${d}s" --latency "http://$leader:8500/v1/kv/bench-read" | grep -E "Requests/sec|50%|99%"
echo "read (stale):";    wrk -t$t -c"$c" -d"${d}s" --latency "http://$leader:8500/v1/kv/bench-read?stale" | grep -E "Requests/sec|50%|99%"
