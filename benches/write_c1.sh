#!/usr/bin/env bash
# One-connection writes, the row of ../shared/bench/side-by-side.sh that depends most on
# the log's fsync, interleaved between systems in one sitting: each round starts each
# system afresh (a 3-member etcd 3.4 and 3-server consulate DCs, on loopback, fsync on),
# warms it for 2 s, measures SECONDS with `wrk -t1 -c1` and stops it.
# usage: benches/write_c1.sh ROUNDS SECONDS SYSTEM...   (SYSTEM: `etcd` or a consulate
# binary, e.g. target/release/consulate and a build of an earlier commit)
set -euo pipefail
rounds=${1:-3}; secs=${2:-5}; shift 2
here=$(cd "$(dirname "$0")" && pwd)
etcd_lua=$(cd "$here/../../shared/bench" 2>/dev/null && pwd)/etcd_put.lua
row() { # LABEL WRK-ARGS...
  local label=$1; shift
  wrk "$@" 2>&1 | awk -v l="$label" '
    /^ +50%/ {p50=$2} /^ +90%/ {p90=$2} /^ +99%/ {p99=$2} /Requests\/sec/ {rps=$2} /Non-2xx|Socket errors/ {err=err" "$0}
    END {printf "%-60s %8s req/s  p50 %-8s p90 %-8s p99 %-8s%s\n", l, rps, p50, p90, p99, err}'
}
etcd_round() { # LABEL
  local d pids=() leader=""
  d=$(mktemp -d)
  for i in 1 2 3; do
    etcd --name n$i --data-dir "$d/n$i" --listen-client-urls http://127.0.0.1:${i}2379 \
      --advertise-client-urls http://127.0.0.1:${i}2379 --listen-peer-urls http://127.0.0.1:${i}2380 \
      --initial-advertise-peer-urls http://127.0.0.1:${i}2380 \
      --initial-cluster n1=http://127.0.0.1:12380,n2=http://127.0.0.1:22380,n3=http://127.0.0.1:32380 \
      --initial-cluster-token bench --initial-cluster-state new >"$d/n$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 100); do
    for i in 1 2 3; do
      s=$(curl -s -X POST http://127.0.0.1:${i}2379/v3/maintenance/status -d '{}' || true)
      ld=$(echo "$s" | grep -o '"leader":"[0-9]*"' | grep -o '[0-9]*' || true)
      me=$(echo "$s" | grep -o '"member_id":"[0-9]*"' | grep -o '[0-9]*' || true)
      [ -n "$ld" ] && [ "$ld" = "$me" ] && leader=$i
    done
    [ -n "$leader" ] && break; sleep 0.1
  done
  wrk -t1 -c1 -d2s -s "$etcd_lua" "http://127.0.0.1:${leader}2379" >/dev/null
  row "$1" -t1 -c1 -d"${secs}s" --latency -s "$etcd_lua" "http://127.0.0.1:${leader}2379"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true; rm -rf "$d"
}
consulate_round() { # LABEL BIN
  BIN=$(realpath "$2") bash -c '
    set -euo pipefail
    . "$1/cluster.sh" 87 w
    for n in w1 w2 w3; do start $n; done
    wait_leader
    u=http://$leader:8500
    wrk -t1 -c1 -d2s -s "$1/consulate_put.lua" "$u" >/dev/null
    wrk -t1 -c1 -d"$2s" --latency -s "$1/consulate_put.lua" "$u"' _ "$here" "$secs" 2>&1 |
    awk -v l="$1" '
    /^ +50%/ {p50=$2} /^ +90%/ {p90=$2} /^ +99%/ {p99=$2} /Requests\/sec/ {rps=$2} /Non-2xx|Socket errors/ {err=err" "$0}
    END {printf "%-60s %8s req/s  p50 %-8s p90 %-8s p99 %-8s%s\n", l, rps, p50, p90, p99, err}'
}
for r in $(seq "$rounds"); do
  for s in "$@"; do
    if [ "$s" = etcd ]; then etcd_round "etcd write c1 #$r"; else consulate_round "$s write c1 #$r" "$s"; fi
  done
done
