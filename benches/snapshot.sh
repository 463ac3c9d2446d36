#!/usr/bin/env bash
# Snapshot save and restore, and what a transaction costs: a 3-server DC on loopback
# filled with KEYS keys of 100-byte random values (64 per transaction), then REPS times
# `consulate snapshot save` and `consulate snapshot restore` of it (wall time of the CLI,
# archive size against the raw keys and values); then 10-op transactions against
# single-key PUTs at 64 connections for SECONDS each, alternated REPS times (the pair's
# order swapping every repetition). The rows write new keys (a transaction's ten are
# neighbours; the state grows by about half a million keys per transaction row); with
# TXN_KEYS=overwrite each write overwrites random ones of the KEYS loaded keys instead (a
# transaction's ten scattered over the tree, the state the same size in every row).
# usage: [TXN_KEYS=overwrite] benches/snapshot.sh [KEYS] [REPS] [SECONDS]
#        (needs wrk, curl, python3)
set -euo pipefail
keys=${1:-100000}; reps=${2:-3}; d=${3:-8}
. "$(dirname "$0")/cluster.sh" 86 p
for n in p1 p2 p3; do start $n; done; wait_leader
u=http://$leader:8500
raw=$(python3 - "$u" "$keys" <<'PY'
import base64, json, os, sys, urllib.request
u, keys = sys.argv[1], int(sys.argv[2])
raw = 0
for start in range(0, keys, 64):
    ops = []
    for i in range(start, min(start + 64, keys)):
        key, value = f"bench/{i:07d}", os.urandom(50).hex().encode()
        raw += len(key) + len(value)
        ops.append({"KV": {"Verb": "set", "Key": key, "Value": base64.b64encode(value).decode()}})
    req = urllib.request.Request(f"{u}/v1/txn", data=json.dumps(ops).encode(), method="PUT")
    urllib.request.urlopen(req).read()
print(raw)
PY
)
export CONSUL_HTTP_ADDR=$u
ms() { python3 -c 'import time; print(int(time.monotonic()*1000))'; }
for r in $(seq "$reps"); do
  t0=$(ms); "$bin" snapshot save "$dir/snap" >/dev/null; t1=$(ms)
  size=$(stat -c %s "$dir/snap")
  "$bin" snapshot restore "$dir/snap" >/dev/null; t2=$(ms)
  [ "$(curl -sf "$u/v1/kv/bench/?keys" | grep -o '"bench/' | wc -l)" = "$keys" ]
  printf "%d keys #%d: save %5d ms  restore %5d ms  archive %d bytes = %.2fx the raw %d bytes\n" \
    "$keys" "$r" $((t1 - t0)) $((t2 - t1)) "$size" "$(echo "$size / $raw" | bc -l)" "$raw"
done
row() { # LABEL ARGS...
  local l=$1; shift
  wrk -t2 -c64 -d"${d}s" --latency "$@" | awk -v l="$l" '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Requests\/sec/ {rps=$2} /Non-2xx|Socket errors/ {err=err" "$0}
    END {printf "%-24s %10s req/s  p50 %-9s p99 %-9s%s\n", l, rps, p50, p99, err}'
}
# The two rows of a repetition swap order every other time: each row adds keys, so the
# second one of a pair meets a larger state (unless TXN_KEYS=overwrite).
space=(); [ "${TXN_KEYS:-}" = overwrite ] && space=(-- "$keys")
put() { row "single-key PUT #$r" -s "$root/benches/consulate_put.lua" "$u/v1/kv/" "${space[@]}"; }
txn() { row "10-op txn #$r" -s "$root/benches/txn_put.lua" "$u/v1/txn" "${space[@]}"; }
for r in $(seq "$reps"); do
  if [ $((r % 2)) = 1 ]; then put; txn; else txn; put; fi
done
