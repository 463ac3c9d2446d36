#!/usr/bin/env bash
# DNS lookups with dnsperf (Debian's package) against one agent, release build, loopback,
# fsync on: two DCs of three servers (dc1 on 127.0.94.1-3, dc2 on .11-13) and a client
# agent in dc1 (127.0.94.21). Service `web` has 3 passing instances in each DC.
#  1. `web.service.consul A` (local) and `web.service.dc2.consul A` (forwarded to dc2 over
#     QUIC) asked of a dc1 server that is not dc1's leader, then of the dc1 client agent.
#  2. Queries/s from dnsperf's summary; p50/p99 from its per-query latencies (-v).
# usage: benches/dns.sh SECONDS [OUTSTANDING]   (needs dnsperf, curl)
set -euo pipefail
d=${1:-10}; q=${2:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$root/Cargo.toml"
bin=$root/target/release/consulate
dir=$(mktemp -d)
pids=()
trap 'kill ${pids[@]} 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
{
  for dc in 1 2; do
    echo '[[datacenters]]'; echo "name = \"dc$dc\""; echo 'agents = ['
    for n in 1 2 3; do
      echo "  { name = \"d$dc$n\", role = \"server\", address = \"127.0.94.$(( (dc - 1) * 10 + n ))\" },"
    done
    [ "$dc" = 1 ] && echo '  { name = "d1c", role = "client", address = "127.0.94.21" },'
    echo ']'
  done
} > "$dir/topo.toml"
"$bin" tls ca create --dir "$dir/certs" >/dev/null
for dc in 1 2; do for n in 1 2 3; do
  "$bin" tls cert create --server --dc "dc$dc" --node "d$dc$n" --dir "$dir/certs" >/dev/null
done; done
"$bin" tls cert create --client --dc dc1 --node d1c --dir "$dir/certs" >/dev/null
"$bin" topology render "$dir/topo.toml" --out "$dir/cfg" --certs "$dir/certs" --data-dir "$dir/data" >/dev/null
for cfg in "$dir"/cfg/*.toml; do
  env RUST_LOG=warn "$bin" agent --config "$cfg" >>"$dir/$(basename "$cfg" .toml).log" 2>&1 & pids+=($!)
done
leader_of() {
  for _ in $(seq 200); do
    l=$(curl -sf "http://$1:8500/v1/status/leader" | tr -d '"' | cut -d: -f1 || true)
    [ -n "$l" ] && { echo "$l"; return 0; }
    sleep 0.1
  done
  echo "no leader at $1" >&2; exit 1
}
leader1=$(leader_of 127.0.94.1); leader2=$(leader_of 127.0.94.11)
for dc in 1 2; do
  leader=$leader1; [ "$dc" = 2 ] && leader=$leader2
  for i in 1 2 3; do
    curl -sf -X PUT "http://$leader:8500/v1/catalog/register" -d "{\"Node\": \"web-$dc-$i\",
      \"Address\": \"10.$dc.0.$i\", \"Service\": {\"Service\": \"web\", \"Port\": 80}}" >/dev/null
  done
done
via=127.0.94.1; [ "$via" = "$leader1" ] && via=127.0.94.2
for _ in $(seq 300); do
  [ "$(dig @$via -p 8600 +short web.service.dc2.consul A | wc -l)" = 3 ] &&
    [ "$(dig @127.0.94.21 -p 8600 +short web.service.dc2.consul A | wc -l)" = 3 ] && break
  sleep 0.1
done
echo "dc1 server $via (not the leader), dc1 client 127.0.94.21; ${d}s each, $q outstanding"
run() { # run AGENT NAME
  echo "$2 A" > "$dir/q.txt"
  dnsperf -s "$1" -p 8600 -d "$dir/q.txt" -l "$d" -q "$q" -c 8 -T 2 -v > "$dir/perf.out" 2>&1 || true
  qps=$(grep "Queries per second" "$dir/perf.out" | awk '{print $4}')
  lost=$(grep "Queries lost" "$dir/perf.out" | awk '{print $3}')
  # -v lines: "> NOERROR web.service.consul A 0.000123" (latency last, seconds).
  grep '^> ' "$dir/perf.out" | awk '{print $NF}' | sort -n > "$dir/lat.txt"
  n=$(wc -l < "$dir/lat.txt")
  p50=$(sed -n "$(( n / 2 ))p" "$dir/lat.txt"); p99=$(sed -n "$(( n * 99 / 100 ))p" "$dir/lat.txt")
  rc=$(grep '^> ' "$dir/perf.out" | awk '{print $2}' | sort | uniq -c | tr '\n' ' ')
  printf '%-8s %-26s %9s q/s  p50 %7.3f ms  p99 %7.3f ms  lost %s  (%s)\n' \
    "$3" "$2" "$qps" "$(echo "$p50 * 1000" | bc -l)" "$(echo "$p99 * 1000" | bc -l)" "$lost" "$rc"
}
run "$via" web.service.consul server
run "$via" web.service.dc2.consul server
run 127.0.94.21 web.service.consul client
run 127.0.94.21 web.service.dc2.consul client
