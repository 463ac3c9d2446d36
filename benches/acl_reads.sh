#!/usr/bin/env bash
# What ACLs cost a read: two 3-server DCs on loopback run side by side, one with ACLs off
# (127.0.88.x) and one with ACLs on (127.0.84.x, default_policy = "deny"), both idle but
# for the row being measured; rows alternate between them, ROUNDS pairs per read mode,
# each row default-mode or ?stale reads of one key at 64 connections for SECONDS, every
# request carrying a token header (with ACLs on a scoped token, a policy granting
# key_prefix "" read, checked on every request by the server that answers; with ACLs off
# the same header, ignored), so the requests are the same. Short alternating rows on two
# live clusters put both sides under the same machine noise. Each row also reports the
# leader's CPU time per request; the end, each round's ratio and the ratio of the sums.
# With PIN=1 (a 2-core machine): every server runs on core 0 but the leaders on core 1, and
# wrk (one thread) on core 0, so that the leader measured has a core of its own and its
# throughput is what a request costs it rather than how the scheduler shares two cores.
# With TOGETHER=1 (implies PIN=1) each pair of rows runs at the same time instead of one
# after the other: both leaders share core 1, so both see the same speed of a virtual
# core that varies by tens of percent from second to second; their throughputs and CPU
# per request are then compared within the same seconds.
# usage: [PIN=1|TOGETHER=1] benches/acl_reads.sh [SECONDS] [ROUNDS]     (needs wrk and curl)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = __cluster ]; then
  # One side: NET MODE READY-FILE; writes "leader-ip token leader-pid" there, then waits.
  net=$2 mode=$3 ready=$4
  . "$here/cluster.sh" "$net" a
  root_token=bench-root-token
  if [ "$mode" = on ]; then
    for n in a1 a2 a3; do
      { echo 'primary_datacenter = "dc1"'; cat "$dir/cfg/$n.toml"
        echo '[acl]'; echo 'enabled = true'; echo 'default_policy = "deny"'
        echo '[acl.tokens]'; echo "initial_management = \"$root_token\""; echo "agent = \"$root_token\""
      } > "$dir/cfg/$n.acl"; mv "$dir/cfg/$n.acl" "$dir/cfg/$n.toml"
    done
  fi
  for n in a1 a2 a3; do start $n; done; wait_leader
  u=http://$leader:8500
  token=00000000-1111-2222-3333-444444444444
  if [ "$mode" = on ]; then
    until curl -sf -H "X-Consul-Token: $root_token" -X PUT -d v "$u/v1/kv/bench-read" >/dev/null; do sleep 0.1; done
    curl -sf -H "X-Consul-Token: $root_token" -X PUT -d '{"Name":"reader","Rules":"key_prefix \"\" { policy = \"read\" }"}' "$u/v1/acl/policy" >/dev/null
    token=$(curl -sf -H "X-Consul-Token: $root_token" -X PUT -d '{"Policies":[{"Name":"reader"}]}' "$u/v1/acl/token" | sed 's/.*"SecretID":"\([^"]*\)".*/\1/')
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-Consul-Token: $token" "$u/v1/kv/bench-read")" = 200 ]
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$u/v1/kv/bench-read")" = 403 ]
  else
    until curl -sf -X PUT -d v "$u/v1/kv/bench-read" >/dev/null; do sleep 0.1; done
  fi
  if [ -n "${PIN:-}" ]; then
    for p in "${pid[@]}"; do taskset -a -p -c 0 "$p" >/dev/null; done
    taskset -a -p -c 1 "${pid[a${leader##*.}]}" >/dev/null
  fi
  echo "$leader $token ${pid[a${leader##*.}]}" > "$ready.tmp"; mv "$ready.tmp" "$ready"
  # On TERM: stop the sleep (cluster.sh's exit trap waits for every child), then the DC.
  sleep infinity & sleeper=$!
  trap 'kill $sleeper 2>/dev/null; exit 0' TERM
  wait $sleeper
  exit 0
fi
d=${1:-5}; rounds=${2:-10}
[ -n "${TOGETHER:-}" ] && export PIN=1
# With BIN set, that binary is run instead of a fresh release build.
if [ -z "${BIN:-}" ]; then cargo build --release -q --manifest-path "$here/../Cargo.toml"; fi
export BIN=${BIN:-$here/../target/release/consulate}
tmp=$(mktemp -d); sides=()
trap 'kill ${sides[@]} 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
bash "$0" __cluster 88 off "$tmp/off" & sides+=($!)
# ON_MODE=off: a control run, both sides without ACLs (what the two DCs differ by alone).
bash "$0" __cluster 84 "${ON_MODE:-on}" "$tmp/on" & sides+=($!)
for _ in $(seq 300); do [ -f "$tmp/off" ] && [ -f "$tmp/on" ] && break; sleep 0.1; done
read -r off_ip off_token off_pid < "$tmp/off"; read -r on_ip on_token on_pid < "$tmp/on"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
row() { # SIDE MODE ROUND: prints "rps" to $tmp/SIDE-MODE-ROUND and the row to stdout
  local ip token pid q; eval "ip=\$${1}_ip token=\$${1}_token pid=\$${1}_pid"
  q=$([ "$2" = stale ] && echo "?stale" || echo "")
  local before; before=$(ticks "$pid")
  local wrk=(wrk -t2); [ -n "${PIN:-}" ] && wrk=(taskset -c 0 wrk -t1)
  local out; out=$("${wrk[@]}" -c64 -d"${d}s" --latency -H "X-Consul-Token: $token" "http://$ip:8500/v1/kv/bench-read$q")
  local t=$(( $(ticks "$pid") - before )) hz; hz=$(getconf CLK_TCK)
  echo "$out" | awk -v l="acl $1 $2 #$3" -v t="$t" -v hz="$hz" -v f="$tmp/$1-$2-$3" '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Requests\/sec/ {rps=$2} / requests in / {n=$1} /Non-2xx|Socket errors/ {err=err" "$0}
    END {us = t / hz * 1e6 / n; printf "%-24s %10s req/s  p50 %-9s p99 %-9s leader CPU %5.1f us/req%s\n", l, rps, p50, p99, us, err; print rps, us > f}'
}
# Rows strictly alternate between the two DCs (a DC loaded twice in a row measured slower
# the second time), ROUNDS pairs per read mode.
for m in default stale; do
  for r in $(seq "$rounds"); do
    if [ -n "${TOGETHER:-}" ]; then row off $m "$r" & a=$!; row on $m "$r" & b=$!; wait $a $b
    else row off $m "$r"; row on $m "$r"; fi
  done
done
for m in default stale; do
  ratios=""; son=0; soff=0; con=0; coff=0
  for r in $(seq "$rounds"); do
    read -r on on_us < "$tmp/on-$m-$r"; read -r off off_us < "$tmp/off-$m-$r"
    con=$(awk -v a="$con" -v b="$on_us" 'BEGIN {print a + b}'); coff=$(awk -v a="$coff" -v b="$off_us" 'BEGIN {print a + b}')
    ratios="$ratios $(awk -v a="$on" -v b="$off" 'BEGIN {printf "%.2f", a / b}')"
    son=$(awk -v a="$son" -v b="$on" 'BEGIN {print a + b}'); soff=$(awk -v a="$soff" -v b="$off" 'BEGIN {print a + b}')
  done
  sorted=$(echo $ratios | tr ' ' '\n' | sort -n | tr '\n' ' ')
  echo "$m: on/off per round:$ratios; sorted: $sorted; sums: $(awk -v a="$son" -v b="$soff" 'BEGIN {printf "%.3f", a / b}'); leader CPU per request on/off: $(awk -v a="$con" -v b="$coff" 'BEGIN {printf "%.3f", a / b}')"
done
