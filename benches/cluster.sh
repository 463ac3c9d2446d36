# Sourced by the benchmark scripts: builds the release binary and prepares a 3-server DC
# named dc1 on 127.0.<NET>.1-3 (and, with CLIENTS=N, client agents PREFIXc1..N on
# 127.0.<NET>.21..) in a temporary folder. Defines $bin, $dir, start NODE, wait_leader
# (sets $leader), raft_failures. With BIN set, runs that binary instead of building one.
# usage: . benches/cluster.sh NET PREFIX     (nodes are PREFIX1..PREFIX3)
net=$1; prefix=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${BIN:-}" ]; then cargo build --release -q --manifest-path "$root/Cargo.toml"; fi
bin=${BIN:-$root/target/release/consulate}
dir=$(mktemp -d)
declare -A pid
trap 'kill ${pid[@]} 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
{
  # Benchmarks load one agent from one address with more connections than the default
  # per-client cap (200): no cap.
  echo '[limits]'; echo 'http_max_conns_per_client = 0'
  echo '[[datacenters]]'; echo 'name = "dc1"'; echo 'agents = ['
  for n in 1 2 3; do echo "  { name = \"$prefix$n\", role = \"server\", address = \"127.0.$net.$n\" },"; done
  for n in $(seq 1 "${CLIENTS:-0}"); do echo "  { name = \"${prefix}c$n\", role = \"client\", address = \"127.0.$net.$((20 + n))\" },"; done
  echo ']'
} > "$dir/topo.toml"
"$bin" tls ca create --dir "$dir/certs" >/dev/null
for n in 1 2 3; do "$bin" tls cert create --server --dc dc1 --node "$prefix$n" --dir "$dir/certs" >/dev/null; done
for n in $(seq 1 "${CLIENTS:-0}"); do "$bin" tls cert create --client --dc dc1 --node "${prefix}c$n" --dir "$dir/certs" >/dev/null; done
"$bin" topology render "$dir/topo.toml" --out "$dir/cfg" --certs "$dir/certs" --data-dir "$dir/data" >/dev/null
start() { env RUST_LOG=warn ${AGENT_ENV:-} "$bin" agent --config "$dir/cfg/$1.toml" >>"$dir/$1.log" 2>&1 & pid[$1]=$!; }
# Raft RPCs the leader gave up on so far (consulate_raft_rpc_failures_total, every RPC and
# reason); needs $leader.
raft_failures() {
  curl -sf "http://$leader:8500/metrics" | awk '/^consulate_raft_rpc_failures_total/ {s += $2} END {print s + 0}'
}
# Waits until server 1 names a leader; sets $leader to its IP.
wait_leader() {
  leader=""
  for _ in $(seq 100); do
    leader=$(curl -sf "http://127.0.$net.1:8500/v1/status/leader" | tr -d '"' | cut -d: -f1 || true)
    [ -n "$leader" ] && return 0
    sleep 0.1
  done
  echo "no leader" >&2; exit 1
}
