#!/usr/bin/env bash
# Cross-DC forwarding on loopback (no emulated delay, fsync on): three DCs of three servers
# (dc1 on 127.0.93.1-3, dc2 on .11-13, dc3 on .21-23, each server rendered from one
# topology with wan_join to the first server of the other DCs).
#  1. `GET /v1/kv/bench-read` answered locally by dc2's leader vs the same query given to a
#     dc1 server with `?dc=dc2` (forwarded over QUIC to dc2), default mode and `?stale`,
#     with 1 and CONNS connections (wrk, SECONDS per row).
#  2. Time from starting each dc3 server to it being alive in the WAN view of a server of
#     every DC (dc1, dc2 and dc3), polled every 20 ms.
# usage: benches/federation.sh CONNS SECONDS     (needs wrk, curl and jq)
set -euo pipefail
c=${1:-64}; d=${2:-8}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$root/Cargo.toml"
bin=$root/target/release/consulate
dir=$(mktemp -d)
declare -A pid
trap 'kill ${pid[@]} 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
{
  for dc in 1 2 3; do
    echo '[[datacenters]]'; echo "name = \"dc$dc\""; echo 'agents = ['
    for n in 1 2 3; do
      echo "  { name = \"f$dc$n\", role = \"server\", address = \"127.0.93.$(( (dc - 1) * 10 + n ))\" },"
    done
    echo ']'
  done
} > "$dir/topo.toml"
"$bin" tls ca create --dir "$dir/certs" >/dev/null
for dc in 1 2 3; do for n in 1 2 3; do
  "$bin" tls cert create --server --dc "dc$dc" --node "f$dc$n" --dir "$dir/certs" >/dev/null
done; done
"$bin" topology render "$dir/topo.toml" --out "$dir/cfg" --certs "$dir/certs" --data-dir "$dir/data" >/dev/null
start() { env RUST_LOG=warn ${AGENT_ENV:-} "$bin" agent --config "$dir/cfg/$1.toml" >>"$dir/$1.log" 2>&1 & pid[$1]=$!; }
now_ms() { date +%s%3N; }
alive_in() { # alive_in HOST MEMBER: is MEMBER alive in HOST's WAN view?
  curl -sf "http://$1:8500/v1/agent/members?wan=1" |
    jq -e --arg m "$2" 'any(.[]; .Name == $m and .Status == 1)' >/dev/null 2>&1
}
for dc in 1 2; do for n in 1 2 3; do start "f$dc$n"; done; done
leader_of() {
  for _ in $(seq 200); do
    l=$(curl -sf "http://$1:8500/v1/status/leader" | tr -d '"' | cut -d: -f1 || true)
    [ -n "$l" ] && { echo "$l"; return 0; }
    sleep 0.1
  done
  echo "no leader at $1" >&2; exit 1
}
leader1=$(leader_of 127.0.93.1); leader2=$(leader_of 127.0.93.11)
for _ in $(seq 300); do alive_in 127.0.93.1 f23.dc2 && alive_in 127.0.93.2 f23.dc2 && alive_in 127.0.93.3 f23.dc2 && break; sleep 0.1; done
curl -sf -X PUT -d 'bench-value' "http://$leader2:8500/v1/kv/bench-read" >/dev/null
# A dc1 server that is not dc1's leader, so the forwarded request is not also a leader's.
via=127.0.93.1; [ "$via" = "$leader1" ] && via=127.0.93.2
curl -sf "http://$via:8500/v1/kv/bench-read?dc=dc2&raw" | grep -q bench-value
echo "dc2 leader $leader2 (local), dc1 server $via (forwarding); ${d}s each"
for conns in 1 "$c"; do
  t=$(( conns < 2 ? 1 : 2 ))
  for q in "" "?stale"; do
    sep=${q:+&}; sep=${sep:-?}
    echo "local     conns $conns GET /v1/kv/bench-read$q:"
    wrk -t$t -c"$conns" -d"${d}s" --latency "http://$leader2:8500/v1/kv/bench-read$q" | grep -E "Requests/sec|50%|99%"
    echo "forwarded conns $conns GET /v1/kv/bench-read$q${sep}dc=dc2:"
    wrk -t$t -c"$conns" -d"${d}s" --latency "http://$via:8500/v1/kv/bench-read$q${sep}dc=dc2" | grep -E "Requests/sec|50%|99%"
  done
done
echo "new server visible in every DC's WAN view (dc1, dc2, dc3):"
for n in 1 2 3; do
  t0=$(now_ms); start "f3$n"
  until alive_in 127.0.93.1 "f3$n.dc3" && alive_in 127.0.93.11 "f3$n.dc3" && alive_in 127.0.93.21 "f3$n.dc3"; do
    sleep 0.02
    [ $(( $(now_ms) - t0 )) -lt 30000 ] || { echo "f3$n.dc3 not visible after 30 s"; exit 1; }
  done
  echo "  f3$n.dc3: $(( $(now_ms) - t0 )) ms"
done
