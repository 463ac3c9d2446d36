#!/usr/bin/env bash
# Cost of a Prometheus scrape of a server holding 10,000 service instances (with a check
# each) over 1,000 nodes: the leader's CPU time over SCRAPES sequential `GET /metrics`
# (curl, the next one as soon as the last returned) against the same time idle, the size
# of one scrape and its number of series, before and after registering the instances.
# usage: benches/scrape.sh [SCRAPES]     (needs curl and python3)
set -euo pipefail
scrapes=${1:-500}
. "$(dirname "$0")/cluster.sh" 98 p
for n in p1 p2 p3; do start $n; done
wait_leader
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
lpid=""; for n in p1 p2 p3; do ip=127.0.98.${n#p}; [ "$ip" = "$leader" ] && lpid=${pid[$n]}; done
hz=$(getconf CLK_TCK)
url="http://$leader:8500/metrics"
series() { curl -sf "$url" | grep -vc '^#'; }
measure() {
  local t0 t1 s0 s1 i0 i1
  i0=$(cpu_ticks "$lpid"); s0=$(date +%s.%N); sleep 5; s1=$(date +%s.%N); i1=$(cpu_ticks "$lpid")
  local idle_per_s; idle_per_s=$(echo "scale=4; ($i1 - $i0) / ($s1 - $s0)" | bc)
  t0=$(cpu_ticks "$lpid"); s0=$(date +%s.%N)
  for _ in $(seq "$scrapes"); do curl -sf -o /dev/null "$url"; done
  s1=$(date +%s.%N); t1=$(cpu_ticks "$lpid")
  local per_scrape_ms
  per_scrape_ms=$(echo "scale=3; (($t1 - $t0) - $idle_per_s * ($s1 - $s0)) * 1000 / $hz / $scrapes" | bc)
  echo "$1: $(series) series, $(curl -sf "$url" | wc -c) bytes per scrape; leader CPU per scrape ${per_scrape_ms} ms (idle $(echo "scale=1; $idle_per_s * 1000 / $hz" | bc) ms/s subtracted; $scrapes scrapes in $(echo "$s1 - $s0" | bc) s)"
}
measure "empty catalog"
python3 "$root/benches/catalog_memory.py" register "$leader:8500" 1000 10
measure "10,000 instances"
