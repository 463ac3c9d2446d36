#!/usr/bin/env bash
# Leader failover time of a 3-server DC with default Raft timings: kill -9 the leader, then
# time until a surviving server accepts a write (PUT through any survivor; it forwards to
# the new leader once there is one). usage: benches/failover.sh [ROUNDS]   (needs curl)
set -euo pipefail
rounds=${1:-5}
. "$(dirname "$0")/cluster.sh" 91 f
for n in f1 f2 f3; do start $n; done
now_ms() { date +%s%3N; }
leader_of() { curl -sf "http://$1:8500/v1/status/leader" | tr -d '"' | cut -d: -f1; }
wait_write() { until [ "$(curl -sf -m 0.3 -X PUT -d x "http://$1:8500/v1/kv/failover" || true)" = true ]; do sleep 0.01; done; }
index_of() { curl -sf -m 1 -o /dev/null -D - "http://$1:8500/v1/kv/failover?$2" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-consul-index"{print $2}'; }
# A restarted server has caught up when its own state has the leader's index.
caught_up() { until [ -n "$(index_of "$1" stale)" ] && [ "$(index_of "$1" stale)" = "$(index_of "$2" consistent)" ]; do sleep 0.05; done; }
wait_write 127.0.91.1
for r in $(seq "$rounds"); do
  l=""; until [ -n "$l" ]; do l=$(leader_of 127.0.91.1 || leader_of 127.0.91.2 || leader_of 127.0.91.3 || true); done
  victim=f${l##*.}
  survivor=127.0.91.$(( ${l##*.} % 3 + 1 ))
  t0=$(now_ms); kill -9 "${pid[$victim]}"; wait "${pid[$victim]}" 2>/dev/null || true
  wait_write "$survivor"
  echo "round $r: killed leader $victim, a survivor accepted a write after $(( $(now_ms) - t0 )) ms"
  start "$victim"; wait_write "127.0.91.${l##*.}"; caught_up "127.0.91.${l##*.}" "$survivor"
done
