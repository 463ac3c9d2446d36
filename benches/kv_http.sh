#!/usr/bin/env bash
# KV benchmark of a 3-server DC on loopback (fsync on), loaded by wrk exactly as
# ../shared/bench/etcd-baseline.sh loads etcd: writes with consulate_put.lua (distinct keys,
# 64-byte values), then default-mode (leader) and ?stale reads of one key.
# usage: benches/kv_http.sh CONNS SECONDS     (needs wrk and curl)
set -euo pipefail
c=${1:-64}; d=${2:-8}; t=$(( c < 2 ? 1 : 2 ))
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$root/Cargo.toml"
bin=$root/target/release/consulate
dir=$(mktemp -d); pids=()
trap 'kill ${pids[@]} 2>/dev/null; wait ${pids[@]} 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/topo.toml" <<TOPO
[[datacenters]]
name = "dc1"
agents = [
  { name = "b1", role = "server", address = "127.0.90.1" },
  { name = "b2", role = "server", address = "127.0.90.2" },
  { name = "b3", role = "server", address = "127.0.90.3" },
]
TOPO
"$bin" tls ca create --dir "$dir/certs" >/dev/null
for n in b1 b2 b3; do "$bin" tls cert create --server --dc dc1 --node $n --dir "$dir/certs" >/dev/null; done
"$bin" topology render "$dir/topo.toml" --out "$dir/cfg" --certs "$dir/certs" --data-dir "$dir/data" >/dev/null
for n in b1 b2 b3; do
  RUST_LOG=warn "$bin" agent --config "$dir/cfg/$n.toml" >"$dir/$n.log" 2>&1 &
  pids+=($!)
done
leader=""
for _ in $(seq 100); do
  leader=$(curl -sf http://127.0.90.1:8500/v1/status/leader | tr -d '"' | cut -d: -f1 || true)
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "no leader"; exit 1; }
curl -sf -X PUT -d 'bench-value' "http://$leader:8500/v1/kv/bench-read" >/dev/null
echo "consulate leader $leader; conns $c; ${d}s each"
echo "write:";           wrk -t$t -c"$c" -d"${d}s" --latency -s "$root/benches/consulate_put.lua" "http://$leader:8500" | grep -E "Requests/sec|50%|99%"
echo "read (default):";  wrk -t$t -c"$c" -d"${d}s" --latency "http://$leader:8500/v1/kv/bench-read" | grep -E "Requests/sec|50%|99%"
echo "read (stale):";    wrk -t$t -c"$c" -d"${d}s" --latency "http://$leader:8500/v1/kv/bench-read?stale" | grep -E "Requests/sec|50%|99%"
