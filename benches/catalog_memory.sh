#!/usr/bin/env bash
# Memory and idle cost of a server: RSS of each of 3 servers fresh, then holding 10,000
# service instances (with a check each) over 1,000 nodes; then 5,000 idle blocking queries
# held open on the leader: its RSS growth, and its CPU time over HOLD/2 seconds against the
# same interval just before without them (Raft heartbeats cost the leader a little anyway).
# usage: benches/catalog_memory.sh [HOLD]     (needs curl and python3)
set -euo pipefail
hold=${1:-20}
. "$(dirname "$0")/cluster.sh" 92 m
for n in m1 m2 m3; do start $n; done
wait_leader
rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
lpid=""; for n in m1 m2 m3; do ip=127.0.92.${n#m}; [ "$ip" = "$leader" ] && lpid=${pid[$n]}; done
echo "fresh RSS (MB): $(for n in m1 m2 m3; do echo -n "$n=$(rss ${pid[$n]}) "; done)"
t0=$(date +%s.%N)
python3 "$root/benches/catalog_memory.py" register "$leader:8500" 1000 10
t1=$(date +%s.%N)
echo "registered 10000 instances over 1000 nodes in $(echo "$t1 - $t0" | bc) s"
curl -sf "http://$leader:8500/v1/catalog/services" | python3 -c 'import json,sys; print("services:", len(json.load(sys.stdin)))'
sleep 2   # let followers apply and settle before sampling
echo "RSS holding the catalog (MB): $(for n in m1 m2 m3; do echo -n "$n=$(rss ${pid[$n]}) "; done)"
before=$(rss "$lpid")
b0=$(cpu_ticks "$lpid"); sleep $(( hold / 2 )); b1=$(cpu_ticks "$lpid")
echo "leader CPU idle, no queries (baseline): $(( b1 - b0 )) ticks (10 ms) over $(( hold / 2 )) s"
python3 "$root/benches/catalog_memory.py" block "$leader:8500" ${BLOCKERS:-5000} /v1/catalog/service/svc-3 "$hold" &
blocker=$!
for _ in $(seq 600); do
  n=$(curl -sf "http://$leader:8500/metrics" | awk '/^consulate_rpc_queries_blocking / {print $2}')
  [ "${n:-0}" -ge "${BLOCKERS:-5000}" ] && break; sleep 0.1
done
echo "blocking queries waiting on the leader: $n"
c0=$(cpu_ticks "$lpid"); s0=$(date +%s.%N)
sleep $(( hold / 2 ))
c1=$(cpu_ticks "$lpid"); s1=$(date +%s.%N)
after=$(rss "$lpid")
echo "leader RSS: $before MB before, $after MB with ${BLOCKERS:-5000} blocking queries (+$(( after - before )) MB)"
echo "leader CPU while they wait: $(( c1 - c0 )) ticks (10 ms) over $(echo "$s1 - $s0" | bc) s"
wait $blocker
