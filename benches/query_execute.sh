#!/usr/bin/env bash
# What a prepared query costs: a 3-server DC on loopback with service `web` (10 instances,
# each with a passing check), and `GET /v1/health/service/web` against
# `GET /v1/query/web-q/execute` (a query answered in this DC: no failover), alternated REPS
# times at 64 connections, both in the default consistency mode on the leader.
# usage: benches/query_execute.sh [SECONDS] [REPS]     (needs wrk and curl)
set -euo pipefail
d=${1:-10}; reps=${2:-3}
. "$(dirname "$0")/cluster.sh" 87 q
for n in q1 q2 q3; do start $n; done; wait_leader
u=http://$leader:8500
for i in $(seq 10); do
  body="{\"Node\":\"n$i\",\"Address\":\"10.1.0.$i\",\"Service\":{\"ID\":\"web-$i\",\"Service\":\"web\",\"Port\":80},\"Check\":{\"CheckID\":\"up\",\"Name\":\"up\",\"ServiceID\":\"web-$i\",\"Status\":\"passing\"}}"
  until curl -sf -X PUT -d "$body" "$u/v1/catalog/register" >/dev/null; do sleep 0.1; done
done
curl -sf -X POST -d '{"Name":"web-q","Service":{"Service":"web","Failover":{"NearestN":2}}}' "$u/v1/query" >/dev/null
[ "$(curl -sf "$u/v1/query/web-q/execute" | grep -o '"Port":80' | wc -l)" = 10 ]
row() { # LABEL URL
  wrk -t2 -c64 -d"${d}s" --latency "$2" | awk -v l="$1" '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Requests\/sec/ {rps=$2} /Non-2xx|Socket errors/ {err=err" "$0}
    END {printf "%-28s %10s req/s  p50 %-9s p99 %-9s%s\n", l, rps, p50, p99, err}'
}
for r in $(seq "$reps"); do
  row "health/service #$r" "$u/v1/health/service/web"
  row "query execute #$r" "$u/v1/query/web-q/execute"
done
