#!/usr/bin/env bash
# What ACLs cost a read: a 3-server DC on loopback, once with ACLs off and once with ACLs on
# (default_policy = "deny"), alternated REPS times (off-on, on-off, ...); each time default-mode and ?stale reads
# of one key at 64 connections, every request carrying a token header (with ACLs on a
# scoped token: a policy granting key_prefix "" read, checked on every request by the
# server that answers; with ACLs off the same header, ignored), so the requests are the same.
# Each row also reports the leader's CPU time per request it answered.
# usage: benches/acl_reads.sh [SECONDS] [REPS]     (needs wrk and curl)
set -euo pipefail
d=${1:-10}; reps=${2:-3}
. "$(dirname "$0")/cluster.sh" 88 a
root_token=bench-root-token
for n in a1 a2 a3; do cp "$dir/cfg/$n.toml" "$dir/cfg/$n.plain"; done
acl_on() {
  for n in a1 a2 a3; do
    { echo 'primary_datacenter = "dc1"'; cat "$dir/cfg/$n.plain"
      echo '[acl]'; echo 'enabled = true'; echo 'default_policy = "deny"'
      echo '[acl.tokens]'; echo "initial_management = \"$root_token\""; echo "agent = \"$root_token\""
    } > "$dir/cfg/$n.toml"
  done
}
acl_off() { for n in a1 a2 a3; do cp "$dir/cfg/$n.plain" "$dir/cfg/$n.toml"; done; }
stop_all() { for n in a1 a2 a3; do kill "${pid[$n]}" 2>/dev/null || true; wait "${pid[$n]}" 2>/dev/null || true; done; rm -rf "$dir/data"; }
# CPU time (user + system, clock ticks) the leader's process has used so far.
leader_ticks() {
  local n=a${leader##*.}
  awk '{print $14 + $15}' "/proc/${pid[$n]}/stat"
}
row() { # LABEL URL [TOKEN]: requests/s, latency, and the leader's CPU per request (less
  # sensitive than throughput to what else the machine runs)
  local h=(); [ -n "${3:-}" ] && h=(-H "X-Consul-Token: $3")
  local before; before=$(leader_ticks)
  local out; out=$(wrk -t2 -c64 -d"${d}s" --latency "${h[@]}" "$2")
  local ticks=$(( $(leader_ticks) - before )) hz; hz=$(getconf CLK_TCK)
  echo "$out" | awk -v l="$1" -v t="$ticks" -v hz="$hz" '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Requests\/sec/ {rps=$2} / requests in / {n=$1} /Non-2xx|Socket errors/ {err=err" "$0}
    END {printf "%-28s %10s req/s  p50 %-9s p99 %-9s leader CPU %5.1f us/req%s\n", l, rps, p50, p99, t / hz * 1e6 / n, err}'
}
off_rows() { # REP
  acl_off; for n in a1 a2 a3; do start $n; done; wait_leader
  u=http://$leader:8500
  until curl -sf -X PUT -d v "$u/v1/kv/bench-read" >/dev/null; do sleep 0.1; done
  # The same requests as with ACLs on, token header included (ignored here).
  row "acl off default #$1" "$u/v1/kv/bench-read" 00000000-1111-2222-3333-444444444444
  row "acl off stale #$1" "$u/v1/kv/bench-read?stale" 00000000-1111-2222-3333-444444444444
  stop_all
}
on_rows() { # REP
  acl_on; for n in a1 a2 a3; do start $n; done; wait_leader
  u=http://$leader:8500
  until curl -sf -H "X-Consul-Token: $root_token" -X PUT -d v "$u/v1/kv/bench-read" >/dev/null; do sleep 0.1; done
  curl -sf -H "X-Consul-Token: $root_token" -X PUT -d '{"Name":"reader","Rules":"key_prefix \"\" { policy = \"read\" }"}' "$u/v1/acl/policy" >/dev/null
  token=$(curl -sf -H "X-Consul-Token: $root_token" -X PUT -d '{"Policies":[{"Name":"reader"}]}' "$u/v1/acl/token" | sed 's/.*"SecretID":"\([^"]*\)".*/\1/')
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-Consul-Token: $token" "$u/v1/kv/bench-read")" = 200 ]
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$u/v1/kv/bench-read")" = 403 ]
  row "acl on default #$1" "$u/v1/kv/bench-read" "$token"
  row "acl on stale #$1" "$u/v1/kv/bench-read?stale" "$token"
  stop_all
}
# Off-on, then on-off (ABBA), so that neither side always runs on a machine that has
# been loaded longer.
for r in $(seq "$reps"); do
  if [ $((r % 2)) = 1 ]; then off_rows "$r"; on_rows "$r"; else on_rows "$r"; off_rows "$r"; fi
done
