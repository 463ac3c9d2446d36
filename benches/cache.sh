#!/usr/bin/env bash
# What the agent cache buys for another DC's service: dc1 (a server on 127.0.85.1 and a
# client on .21) and dc2 (a server on .11), service `web` of 10 instances in each DC; at
# 64 connections on dc1's client, alternated REPS times for SECONDS each:
# `GET /v1/health/service/web` (dc1's own, forwarded by the client to its server: the
# local read), `?dc=dc2` (forwarded on to dc2) and `?dc=dc2&cached` (from the client's
# cache, kept current by one blocking query); then dc2's prepared query `web` executed
# from dc1's client, forwarded (`/v1/query/web/execute?dc=dc2`) and from the client's
# cache (`&cached`, Consul's simple caching). Then bursts of identical uncached reads
# given to dc1's server at once (BURST clients, 1,000 by default, connected before any
# asks), and the forwards to dc2 they cost (coalescing).
# usage: benches/cache.sh [SECONDS] [REPS]     (needs wrk, curl and python3)
set -euo pipefail
d=${1:-8}; reps=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$root/Cargo.toml"
bin=$root/target/release/consulate
dir=$(mktemp -d)
declare -A pid
trap 'kill ${pid[@]} 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/topo.toml" <<'TOPO'
[limits]
http_max_conns_per_client = 0
[[datacenters]]
name = "dc1"
agents = [
  { name = "k1", role = "server", address = "127.0.85.1" },
  { name = "kc1", role = "client", address = "127.0.85.21" },
]
[[datacenters]]
name = "dc2"
agents = [
  { name = "k2", role = "server", address = "127.0.85.11" },
]
TOPO
"$bin" tls ca create --dir "$dir/certs" >/dev/null
"$bin" tls cert create --server --dc dc1 --node k1 --dir "$dir/certs" >/dev/null
"$bin" tls cert create --client --dc dc1 --node kc1 --dir "$dir/certs" >/dev/null
"$bin" tls cert create --server --dc dc2 --node k2 --dir "$dir/certs" >/dev/null
"$bin" topology render "$dir/topo.toml" --out "$dir/cfg" --certs "$dir/certs" --data-dir "$dir/data" >/dev/null
for n in k1 kc1 k2; do
  env RUST_LOG=warn "$bin" agent --config "$dir/cfg/$n.toml" >>"$dir/$n.log" 2>&1 & pid[$n]=$!
done
c=http://127.0.85.21:8500
for _ in $(seq 300); do
  [ "$(curl -sf "$c/v1/catalog/nodes?dc=dc2" | grep -c '"Node"' || true)" -ge 1 ] && break
  sleep 0.1
done
python3 - "$c" <<'PY'
import json, sys, urllib.request
c = sys.argv[1]
for dc in ("dc1", "dc2"):
    for i in range(10):
        body = {"Node": f"n{i}", "Address": f"10.3.0.{i + 1}",
                "Service": {"ID": "web", "Service": "web", "Port": 80},
                "Check": {"CheckID": "up", "Name": "up", "ServiceID": "web", "Status": "passing"}}
        req = urllib.request.Request(f"{c}/v1/catalog/register?dc={dc}", data=json.dumps(body).encode(), method="PUT")
        urllib.request.urlopen(req).read()
PY
curl -sf -X POST "$c/v1/query?dc=dc2" -d '{"Name": "web", "Service": {"Service": "web"}}' >/dev/null
for q in "" "?dc=dc2" "?dc=dc2&cached"; do
  [ "$(curl -sf "$c/v1/health/service/web$q" | grep -o '"ServiceID":"web"' | wc -l)" = 10 ]
  [ -z "$q" ] || [ "$(curl -sf "$c/v1/query/web/execute$q" | grep -o '"ServiceID":"web"' | wc -l)" = 10 ]
done
row() { # LABEL URL
  wrk -t2 -c64 -d"${d}s" --latency "$2" | awk -v l="$1" '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Requests\/sec/ {rps=$2} /Non-2xx|Socket errors/ {err=err" "$0}
    END {printf "%-26s %10s req/s  p50 %-9s p99 %-9s%s\n", l, rps, p50, p99, err}'
}
for r in $(seq "$reps"); do
  row "local #$r" "$c/v1/health/service/web"
  row "dc2 forwarded #$r" "$c/v1/health/service/web?dc=dc2"
  row "dc2 cached #$r" "$c/v1/health/service/web?dc=dc2&cached"
  row "dc2 query forwarded #$r" "$c/v1/query/web/execute?dc=dc2"
  row "dc2 query cached #$r" "$c/v1/query/web/execute?dc=dc2&cached"
done
echo "cache: $(curl -sf "$c/metrics" | grep -E '^consulate_cache_(requests_total|entries)' | tr '\n' ' ')"
# Coalescing: BURST clients ask dc1's server for dc2's web at once, uncached: each opens
# its connection first, then all send their request in one pass (about 10 us apart) and
# read the answers; how many forwards to dc2 that cost, REPS times.
s=http://127.0.85.1:8500
# The sum of a metric's samples on dc1's server (lines starting with PREFIX).
metric() { curl -sf "$s/metrics" | awk -v m="$1" 'index($0, m) == 1 {n += $2} END {print n + 0}'; }
forwards() { metric 'consulate_rpc_cross_dc_total{datacenter="dc2"'; }
joined() { metric consulate_federation_coalesced_total; }
ulimit -n 8192
for r in $(seq "$reps"); do
  before=$(forwards); joined_before=$(joined)
  python3 - 127.0.85.1 8500 "${BURST:-1000}" "$dir/burst_ms" <<'PY'
import selectors, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
request = (f"GET /v1/health/service/web?dc=dc2 HTTP/1.1\r\nHost: {host}\r\n"
           "Connection: close\r\n\r\n").encode()
socks = [socket.create_connection((host, port)) for _ in range(n)]
sel, answers = selectors.DefaultSelector(), {}
started = time.monotonic()
for s in socks:
    s.sendall(request)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    answers[s] = b""
deadline = started + 30
while sel.get_map() and time.monotonic() < deadline:
    for key, _ in sel.select(timeout=1):
        data = key.fileobj.recv(65536)
        if data:
            answers[key.fileobj] += data
        else:
            sel.unregister(key.fileobj)
            key.fileobj.close()
elapsed = time.monotonic() - started
bad = [a[:40] for a in answers.values() if not a.startswith(b"HTTP/1.1 200")]
assert not bad and not sel.get_map(), (len(bad), bad[:3])
print(f"{elapsed * 1000:.0f}", file=open(sys.argv[4], "w"))
PY
  echo "burst #$r: ${BURST:-1000} identical reads at once (all answered within $(cat "$dir/burst_ms") ms) cost $(( $(forwards) - before )) forwards to dc2 ($(( $(joined) - joined_before )) joined one in flight)"
done
