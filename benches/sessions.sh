#!/usr/bin/env bash
# Cost of session TTLs on the leader (release build, loopback, fsync on): a DC of three
# servers (127.0.95.1-3) and a client agent (127.0.95.21). 1,000 sessions with 10 s TTLs
# are created through the client agent and renewed by their "owners" (one Python process,
# keep-alive, each session every 5 s = 200 renewals/s, through the client agent, which
# forwards to a server, which forwards to the leader). Reported: the leader's CPU (utime +
# stime from /proc) over SECONDS idle before any session exists, and over SECONDS of
# renewals; and whether every session survived.
# usage: benches/sessions.sh SECONDS     (needs curl, python3)
set -euo pipefail
d=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$root/Cargo.toml"
bin=$root/target/release/consulate
dir=$(mktemp -d)
pids=()
trap 'kill ${pids[@]} 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/topo.toml" <<EOF
[[datacenters]]
name = "dc1"
agents = [
  { name = "e1", role = "server", address = "127.0.95.1" },
  { name = "e2", role = "server", address = "127.0.95.2" },
  { name = "e3", role = "server", address = "127.0.95.3" },
  { name = "ec", role = "client", address = "127.0.95.21" },
]
EOF
"$bin" tls ca create --dir "$dir/certs" >/dev/null
for n in 1 2 3; do "$bin" tls cert create --server --dc dc1 --node "e$n" --dir "$dir/certs" >/dev/null; done
"$bin" tls cert create --client --dc dc1 --node ec --dir "$dir/certs" >/dev/null
"$bin" topology render "$dir/topo.toml" --out "$dir/cfg" --certs "$dir/certs" --data-dir "$dir/data" >/dev/null
declare -A pid
for n in e1 e2 e3 ec; do
  env RUST_LOG=warn "$bin" agent --config "$dir/cfg/$n.toml" >>"$dir/$n.log" 2>&1 & pid[$n]=$!; pids+=($!)
done
for _ in $(seq 200); do
  l=$(curl -sf "http://127.0.95.21:8500/v1/status/leader" | tr -d '"' | cut -d: -f1 || true)
  [ -n "$l" ] && break; sleep 0.1
done
for _ in $(seq 100); do curl -sf http://127.0.95.21:8500/v1/catalog/node/ec | grep -q serfHealth && break; sleep 0.1; done
leader=${pid[e${l##*.}]}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
echo "leader $l (pid $leader); ${d}s per window"
t0=$(ticks "$leader"); sleep "$d"; t1=$(ticks "$leader")
echo "idle, no sessions:        $(echo "scale=2; 100 * ($t1 - $t0) / $hz / $d" | bc)% of one core"
python3 - "$d" "$leader" "$hz" <<'EOF'
import http.client, json, os, sys, time
d, leader, hz = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection("127.0.95.21", 8500)
def req(method, path, body=None):
    c.request(method, path, body=body)
    r = c.getresponse()
    return r.status, r.read()
ids = []
for i in range(1000):
    status, body = req("PUT", "/v1/session/create", json.dumps({"Name": f"s{i}", "TTL": "10s"}))
    assert status == 200, body
    ids.append(json.loads(body)["ID"])
def ticks():
    with open(f"/proc/{leader}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])
t0, start, failed = ticks(), time.monotonic(), 0
n = 0
while time.monotonic() - start < d:
    # Each session every 5 s: 200 renewals per second, evenly spread.
    due = start + n * 5.0 / len(ids)
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    status, _ = req("PUT", f"/v1/session/renew/{ids[n % len(ids)]}")
    failed += status != 200
    n += 1
used = (ticks() - t0) / hz
status, body = req("GET", "/v1/session/list?stale")
alive = len(json.loads(body))
print(f"1,000 sessions renewed:   {100 * used / d:.2f}% of one core "
      f"({n} renewals, {n / d:.0f}/s, {failed} failed; {alive} sessions alive)")
EOF
