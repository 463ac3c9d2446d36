#!/usr/bin/env bash
# What `?filter=` costs: a 3-server DC on loopback with service `web` of 1,000 instances
# (100 racks in node metadata, each instance with a passing check), and at 64 connections
# on the leader, alternated REPS times: `GET /v1/health/service/web` unfiltered, filtered
# by an expression every instance matches (the filter's whole cost, the same answer), and
# by one a tenth match (`Node.Meta.rack`).
# usage: benches/filter.sh [SECONDS] [REPS]     (needs wrk, curl and python3)
set -euo pipefail
d=${1:-10}; reps=${2:-3}
. "$(dirname "$0")/cluster.sh" 88 f
for n in f1 f2 f3; do start $n; done; wait_leader
u=http://$leader:8500
python3 - "$u" <<'PY'
import json, sys, urllib.request
u = sys.argv[1]
for i in range(1000):
    body = {"Node": f"n{i}", "Address": f"10.2.{i // 250}.{i % 250 + 1}",
            "NodeMeta": {"rack": f"r{i % 10}"},
            "Service": {"ID": "web", "Service": "web", "Port": 80, "Tags": ["v1"],
                        "Meta": {"env": "prod"}},
            "Check": {"CheckID": "up", "Name": "up", "ServiceID": "web", "Status": "passing"}}
    req = urllib.request.Request(f"{u}/v1/catalog/register", data=json.dumps(body).encode(), method="PUT")
    urllib.request.urlopen(req).read()
PY
enc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$1"; }
all=$(enc 'Service.Meta.env == "prod" and "v1" in Service.Tags')
tenth=$(enc 'Node.Meta.rack == "r7"')
[ "$(curl -sf "$u/v1/health/service/web?filter=$all" | grep -o '"ServiceID":"web"' | wc -l)" = 1000 ]
[ "$(curl -sf "$u/v1/health/service/web?filter=$tenth" | grep -o '"ServiceID":"web"' | wc -l)" = 100 ]
row() { # LABEL URL
  wrk -t2 -c64 -d"${d}s" --latency "$2" | awk -v l="$1" '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Requests\/sec/ {rps=$2} /Non-2xx|Socket errors/ {err=err" "$0}
    END {printf "%-30s %10s req/s  p50 %-9s p99 %-9s%s\n", l, rps, p50, p99, err}'
}
for r in $(seq "$reps"); do
  row "unfiltered #$r" "$u/v1/health/service/web"
  row "filter keeping all #$r" "$u/v1/health/service/web?filter=$all"
  row "filter keeping 1/10 #$r" "$u/v1/health/service/web?filter=$tenth"
done
