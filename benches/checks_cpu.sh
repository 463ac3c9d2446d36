#!/usr/bin/env bash
# CPU cost of the check runner: a client agent of a 3-server DC (127.0.97.x) runs N HTTP
# checks at a 1 s interval against a local HTTP server (python3 http.server); its CPU time
# is read from /proc over SECONDS, against the same agent idle just before.
# usage: benches/checks_cpu.sh [N] [SECONDS]     (needs curl and python3)
set -euo pipefail
count=${1:-500}; secs=${2:-20}
CLIENTS=1 . "$(dirname "$0")/cluster.sh" 97 k
for x in k1 k2 k3 kc1; do start $x; done
wait_leader
agent=http://127.0.97.21:8500
python3 -m http.server --bind 127.0.97.50 18080 --directory "$dir" >/dev/null 2>&1 & web=$!
trap 'kill $web ${pid[@]} 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "$agent/v1/agent/self" >/dev/null && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/${pid[kc1]}/stat"; }
hz=$(getconf CLK_TCK)
c0=$(ticks); sleep "$secs"; c1=$(ticks)
echo "client agent idle: $(( c1 - c0 )) ticks (1/$hz s) over ${secs}s"
for i in $(seq "$count"); do
  curl -sf -X PUT "$agent/v1/agent/service/register" -d "{\"Name\":\"svc$i\",\"Port\":18080,\"Check\":{\"HTTP\":\"http://127.0.97.50:18080/\",\"Interval\":\"1s\",\"Timeout\":\"2s\"}}"
done
for _ in $(seq 600); do
  p=$(curl -sf "http://$leader:8500/v1/health/state/passing" | python3 -c 'import json,sys; print(sum(1 for c in json.load(sys.stdin) if c["CheckID"].startswith("service:")))')
  [ "$p" -ge "$count" ] && break; sleep 0.5
done
echo "$p checks passing in the catalog"
c0=$(ticks); s0=$(date +%s.%N); sleep "$secs"; c1=$(ticks); s1=$(date +%s.%N)
cpu=$(echo "scale=2; ($c1 - $c0) * 100 / $hz / ($s1 - $s0)" | bc)
echo "client agent with $count HTTP checks at 1 s: $(( c1 - c0 )) ticks over $(echo "$s1 - $s0" | bc) s = ${cpu}% of one core"
