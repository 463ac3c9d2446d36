#!/usr/bin/env bash
# Read benchmark of Consul's HTTP API on a 3-server DC plus one client agent (loopback, fsync
# on): `GET /v1/catalog/service/web` (3 instances registered) and `GET /v1/kv/bench-read`,
# in default mode and with `?stale`, asked of the leader and of the client agent (which
# forwards every read over QUIC to a server). wrk, CONNS connections, SECONDS per row.
# usage: benches/api_http.sh CONNS SECONDS     (needs wrk and curl)
set -euo pipefail
c=${1:-64}; d=${2:-8}; t=$(( c < 2 ? 1 : 2 ))
CLIENTS=1 . "$(dirname "$0")/cluster.sh" 91 a
for n in a1 a2 a3 ac1; do start $n; done
wait_leader
client=127.0.91.21
for _ in $(seq 100); do curl -sf "http://$client:8500/v1/status/leader" >/dev/null && break; sleep 0.1; done
curl -sf -X PUT -d 'bench-value' "http://$leader:8500/v1/kv/bench-read" >/dev/null
for i in 1 2 3; do
  curl -sf -X PUT "http://$leader:8500/v1/catalog/register" -d "{\"Node\":\"web-node-$i\",\"Address\":\"10.0.0.$i\",\"Service\":{\"ID\":\"web-$i\",\"Service\":\"web\",\"Tags\":[\"v1\"],\"Port\":8080}}" >/dev/null
done
echo "consulate leader $leader, client $client; conns $c; ${d}s each"
for target in "server $leader" "client $client"; do
  set -- $target
  for path in /v1/catalog/service/web "/v1/catalog/service/web?stale" /v1/kv/bench-read "/v1/kv/bench-read?stale"; do
    echo "$1 GET $path:"
    wrk -t$t -c"$c" -d"${d}s" --latency "http://$2:8500$path" | grep -E "Requests/sec|50%|99%"
  done
done
