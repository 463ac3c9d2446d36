#!/usr/bin/env bash
# Failure detection with default settings on a DC of 3 servers and 5 client agents (real
# processes, loopback): ROUNDS times, kill -9 a client and time until the leader's catalog
# shows its serfHealth critical (polled every 20 ms), then restart it and wait for passing.
# With SOAK=MINUTES, instead keep both cores busy with two spinning processes for that long
# and count every time any agent saw a failed member or the catalog had a critical
# serfHealth (sampled every second): the false-failure check.
# usage: benches/gossip_failure.sh [ROUNDS]      SOAK=10 benches/gossip_failure.sh
set -euo pipefail
rounds=${1:-10}
CLIENTS=5 . "$(dirname "$0")/cluster.sh" 94 g
for n in g1 g2 g3 gc1 gc2 gc3 gc4 gc5; do start $n; done
wait_leader
l="http://$leader:8500"
serf() { curl -sf "$l/v1/health/node/$1" | python3 -c 'import json,sys; print(next((c["Status"] for c in json.load(sys.stdin) if c["CheckID"]=="serfHealth"), "none"))'; }
for _ in $(seq 300); do
  alive=$(curl -sf "$l/v1/agent/members" | python3 -c 'import json,sys; print(sum(1 for m in json.load(sys.stdin) if m["Status"]==1))' || echo 0)
  [ "$alive" = 8 ] && [ "$(serf gc5)" = passing ] && break; sleep 0.1
done
echo "8 members alive, all registered"
if [ -n "${SOAK:-}" ]; then
  spin() { while :; do :; done; }
  spin & s1=$!; spin & s2=$!
  end=$(( $(date +%s) + SOAK * 60 )); samples=0; bad=0
  while [ "$(date +%s)" -lt "$end" ]; do
    crit=$(curl -sf "$l/v1/health/state/critical" | python3 -c 'import json,sys; print(sum(1 for c in json.load(sys.stdin) if c["CheckID"]=="serfHealth"))' || echo 0)
    failed=0
    for ip in 1 2 3 21 22 23 24 25; do
      f=$(curl -sf "http://127.0.94.$ip:8500/metrics" | awk '/^consulate_gossip_members\{pool="lan",status="failed"\}/ {print $2}')
      failed=$(( failed + ${f:-0} ))
    done
    samples=$((samples + 1)); [ $(( crit + failed )) -gt 0 ] && bad=$((bad + 1))
    sleep 1
  done
  kill $s1 $s2
  echo "soak ${SOAK} min with both cores busy: $samples samples, $bad with a false failure"
  exit 0
fi
for r in $(seq "$rounds"); do
  victim=gc$(( (r - 1) % 5 + 1 ))
  kill -9 "${pid[$victim]}"; t0=$(date +%s%N)
  until [ "$(serf $victim)" = critical ]; do sleep 0.02; done
  t1=$(date +%s%N)
  echo "round $r: kill -9 $victim -> serfHealth critical in $(( (t1 - t0) / 1000000 )) ms"
  start "$victim"
  until [ "$(serf $victim)" = passing ]; do sleep 0.1; done
done
