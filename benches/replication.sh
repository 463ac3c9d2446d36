#!/usr/bin/env bash
# Replication health under write load (issue 18): a 3-server DC on loopback (fsync on),
# wrk writes with consulate_put.lua at CONNS connections for SECONDS, REPS times; after
# each run, the leader's Raft RPC failures (consulate_raft_rpc_failures_total: timeouts are
# AppendEntries that openraft gave up on after its heartbeat interval and sent again) and
# the write latency percentiles; then each server's log commits over 100 ms
# (consulate_raft_log_commit_seconds).
# usage: benches/replication.sh [CONNS] [SECONDS] [REPS]     (needs wrk and curl)
set -euo pipefail
c=${1:-16}; d=${2:-20}; reps=${3:-3}; t=$(( c < 2 ? 1 : 2 ))
. "$(dirname "$0")/cluster.sh" 99 r
for n in r1 r2 r3; do start $n; done
wait_leader
echo "consulate leader $leader; writes at $c connections, ${d}s, $reps runs"
for r in $(seq "$reps"); do
  before=$(raft_failures)
  out=$(wrk -t$t -c"$c" -d"${d}s" --latency -s "$root/benches/consulate_put.lua" "http://$leader:8500")
  after=$(raft_failures)
  echo "run $r: $(echo "$out" | awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +90%/ {p90=$2} /^ +99%/ {p99=$2} END {printf "%s req/s  p50 %s  p90 %s  p99 %s", rps, p50, p90, p99}')  raft RPC failures: $(( after - before ))"
done
curl -sf "http://$leader:8500/metrics" | grep '^consulate_raft_rpc_failures_total' || echo "(no Raft RPC failed)"
# Log commits (write + fsync) slower than 100 ms, on each server: the disk's stalls.
for n in r1 r2 r3; do
  ip=127.0.99.${n#r}
  curl -sf "http://$ip:8500/metrics" | awk -v n="$n" '
    /^consulate_raft_log_commit_seconds_bucket\{le="0.1"\}/ {fast=$2}
    /^consulate_raft_log_commit_seconds_count/ {all=$2}
    END {printf "%s: %d log commits, %d over 100 ms\n", n, all, all - fast}'
done
