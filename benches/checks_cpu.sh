#!/usr/bin/env bash
# CPU cost of the check runner: a client agent of a 3-server DC (127.0.97.x) runs N HTTP
# checks at a 1 s interval against a local HTTP server (python3 http.server); its CPU time
# is read from /proc over SECONDS, against the same agent idle just before.
# With PROTOCOL=HTTP/1.1 the target keeps connections open (HTTP keep-alive), as most
# application servers do; the default (HTTP/1.0) closes every connection, so each check
# run pays a TCP handshake and teardown (on loopback, the kernel work of both ends is
# charged to the agent).
# usage: [PROTOCOL=HTTP/1.1] benches/checks_cpu.sh [N] [SECONDS]     (needs curl, python3)
set -euo pipefail
count=${1:-500}; secs=${2:-20}
CLIENTS=1 . "$(dirname "$0")/cluster.sh" 97 k
for x in k1 k2 k3 kc1; do start $x; done
wait_leader
agent=http://127.0.97.21:8500
python3 -m http.server --protocol "${PROTOCOL:-HTTP/1.0}" --bind 127.0.97.50 18080 --directory "$dir" >/dev/null 2>&1 & web=$!
trap 'kill $web ${pid[@]} 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "$agent/v1/agent/self" >/dev/null && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/${pid[kc1]}/stat"; }
uticks() { awk '{print $14}' "/proc/${pid[kc1]}/stat"; }
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
c0=$(ticks); u0=$(uticks); s0=$(date +%s.%N); sleep "$secs"; c1=$(ticks); u1=$(uticks); s1=$(date +%s.%N)
cpu=$(echo "scale=2; ($c1 - $c0) * 100 / $hz / ($s1 - $s0)" | bc)
echo "client agent with $count HTTP checks at 1 s: $(( c1 - c0 )) ticks ($(( u1 - u0 )) user, $(( c1 - c0 - u1 + u0 )) system) over $(echo "$s1 - $s0" | bc) s = ${cpu}% of one core"
