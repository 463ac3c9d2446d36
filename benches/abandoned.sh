#!/usr/bin/env bash
# Hostile blocking queries (issue 26): dc1 (server h11 on 127.0.95.1, client agent h1c on
# .21) and dc2 (server h21 on .11), loopback, release build.
#  1. N blocking queries on a dc1 key and N on a dc2 key (`?dc=dc2`), all sent to dc1's
#     client agent and then abandoned (sockets closed): time until
#     consulate_rpc_queries_blocking is 0 on both servers, polled every 10 ms.
#  2. W waiters on key `a`; 100 writes to key `b`, then one to `a`: waiters woken per write
#     (consulate_kv_waiters_woken_total on the leader).
# usage: benches/abandoned.sh [N] [W]     (needs curl and python3)
set -euo pipefail
n=${1:-5000}; w=${2:-1000}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$root/Cargo.toml"
bin=$root/target/release/consulate
dir=$(mktemp -d)
declare -A pid
trap 'kill ${pid[@]} 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/topo.toml" <<TOPO
[[datacenters]]
name = "dc1"
agents = [
  { name = "h11", role = "server", address = "127.0.95.1" },
  { name = "h1c", role = "client", address = "127.0.95.21" },
]
[[datacenters]]
name = "dc2"
agents = [ { name = "h21", role = "server", address = "127.0.95.11" } ]
TOPO
"$bin" tls ca create --dir "$dir/certs" >/dev/null
"$bin" tls cert create --server --dc dc1 --node h11 --dir "$dir/certs" >/dev/null
"$bin" tls cert create --client --dc dc1 --node h1c --dir "$dir/certs" >/dev/null
"$bin" tls cert create --server --dc dc2 --node h21 --dir "$dir/certs" >/dev/null
"$bin" topology render "$dir/topo.toml" --out "$dir/cfg" --certs "$dir/certs" --data-dir "$dir/data" >/dev/null
# The bench's one address holds every query: above the default cap of 200 per client.
printf '[limits]\nhttp_max_conns_per_client = 100000\n' >> "$dir/cfg/h1c.toml"
for a in h11 h1c h21; do
  env RUST_LOG=warn "$bin" agent --config "$dir/cfg/$a.toml" >>"$dir/$a.log" 2>&1 & pid[$a]=$!
done
c=127.0.95.21:8500; s1=127.0.95.1:8500; s2=127.0.95.11:8500
for _ in $(seq 300); do
  curl -sf "http://$c/v1/status/leader?dc=dc2" | grep -q 8300 &&
    curl -sf "http://$c/v1/status/leader" | grep -q 8300 && break
  sleep 0.1
done
python3 - "$c" "$s1" "$s2" "$n" "$w" <<'PY'
import asyncio, sys, time, urllib.request
client, s1, s2, n, w = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def metric(agent, name):
    text = urllib.request.urlopen(f"http://{agent}/metrics").read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + " ") or l.startswith(name + "{"))

def put(path, body=b"v"):
    req = urllib.request.Request(f"http://{client}{path}", data=body, method="PUT")
    assert urllib.request.urlopen(req).read() == b"true"

def index(path):
    return urllib.request.urlopen(f"http://{client}{path}").headers["X-Consul-Index"]

async def hold(path, count):
    host, port = client.split(":")
    conns = []
    for _ in range(count):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {client}\r\n\r\n".encode())
        conns.append(writer)
    await asyncio.gather(*(c.drain() for c in conns))
    return conns

async def main():
    for dc in ("dc1", "dc2"):
        put(f"/v1/kv/watched?dc={dc}")
    i1, i2 = index("/v1/kv/watched?dc=dc1"), index("/v1/kv/watched?dc=dc2")
    local = await hold(f"/v1/kv/watched?index={i1}&wait=10m", n)
    remote = await hold(f"/v1/kv/watched?dc=dc2&index={i2}&wait=10m", n)
    deadline = time.time() + 120
    while metric(s1, "consulate_rpc_queries_blocking") < n or metric(s2, "consulate_rpc_queries_blocking") < n:
        assert time.time() < deadline, f"queries never all waiting: dc1 {metric(s1, 'consulate_rpc_queries_blocking')}, dc2 {metric(s2, 'consulate_rpc_queries_blocking')}"
        await asyncio.sleep(0.1)
    print(f"{n} queries waiting on dc1's server and {n} on dc2's (through dc1's client agent)")
    t0 = time.time()
    for c in local + remote:
        c.transport.abort()
    while True:
        a, b = metric(s1, "consulate_rpc_queries_blocking"), metric(s2, "consulate_rpc_queries_blocking")
        if a == 0 and b == 0:
            break
        assert time.time() - t0 < 60, f"still held after 60 s: dc1 {a}, dc2 {b}"
        await asyncio.sleep(0.01)
    print(f"all {2 * n} abandoned queries released on both servers {1000 * (time.time() - t0):.0f} ms after the disconnects")

    put("/v1/kv/a"); put("/v1/kv/b")
    ia = index("/v1/kv/a")
    waiters = await hold(f"/v1/kv/a?index={ia}&wait=10m", w)
    while metric(s1, "consulate_rpc_queries_blocking") < w:
        await asyncio.sleep(0.1)
    before = metric(s1, "consulate_kv_waiters_woken_total")
    for _ in range(100):
        put("/v1/kv/b")
    unrelated = metric(s1, "consulate_kv_waiters_woken_total") - before
    put("/v1/kv/a", b"new")
    own = metric(s1, "consulate_kv_waiters_woken_total") - before - unrelated
    print(f"{w} waiters on key a: 100 writes to b woke {unrelated:.0f} ({unrelated / 100:.1f} per write); one write to a woke {own:.0f}")
    for c in waiters:
        c.transport.abort()

asyncio.run(main())
PY
