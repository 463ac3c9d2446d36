#!/usr/bin/env bash
# The web UI with many services: `consulate up` (release build) with three DCs of three
# servers and a client on 127.0.71-73.x, SERVICES services registered in each DC (one
# instance each, on ten catalog-only nodes, a tenth with a critical check), then headless Chromium
# opens dc1's client's /ui/ (benches/ui_render.py): the overview's render time over RUNS
# loads, and the client agent's CPU with no UI, the overview and the services page open.
# usage: benches/ui.sh [SERVICES] [RUNS] [SECONDS]   (needs chromium, chromedriver and
# target/py-venv with selenium, as .ci/run installs them)
set -euo pipefail
services=${1:-1000}; runs=${2:-5}; secs=${3:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$root/Cargo.toml"
bin=$root/target/release/consulate
dir=$(mktemp -d)
{
  for d in 1 2 3; do
    echo "[[datacenters]]"; echo "name = \"dc$d\""; echo "agents = ["
    for n in 1 2 3; do echo "  { name = \"dc$d-server-$n\", role = \"server\", address = \"127.0.7$d.$n\" },"; done
    echo "  { name = \"dc$d-client-1\", role = \"client\", address = \"127.0.7$d.10\" },"; echo "]"
  done
} > "$dir/topo.toml"
(cd "$dir" && exec "$bin" up topo.toml > up.out 2>&1) & up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 120); do grep -q "Ctrl-C stops every agent" "$dir/up.out" && break; sleep 0.5; done
grep -q "Ctrl-C stops every agent" "$dir/up.out" || { cat "$dir/up.out"; exit 1; }
# SERVICES registrations per DC through catalog/register on its client (kept-alive).
"$root/target/py-venv/bin/python" - "$services" <<'PY'
import http.client, json, sys
n = int(sys.argv[1])
for d in (1, 2, 3):
    c = http.client.HTTPConnection(f"127.0.7{d}.10", 8500)
    for i in range(n):
        body = {"Node": f"bench-{i // 100}", "Address": f"10.7{d}.0.{i // 100}",
                "Service": {"Service": f"svc-{i:04d}", "ID": f"svc-{i:04d}", "Port": 10000 + i, "Tags": ["bench"]},
                "Check": {"CheckID": f"svc-{i:04d}-check", "Name": "bench", "ServiceID": f"svc-{i:04d}",
                          "Status": "critical" if i % 10 == 0 else "passing"}}
        c.request("PUT", "/v1/catalog/register", json.dumps(body))
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
PY
pid=$(cat "$dir/.consulate/pids/dc1-client-1.pid")
"$root/target/py-venv/bin/python" "$root/benches/ui_render.py" 127.0.71.10:8500 3 "$runs" "$secs" "$pid"
