#!/usr/bin/env bash
# bench-acl.sh: what access control costs. On a fresh local three-node TLS
# cluster (scripts/bench-cluster.sh), the rows of docs/BENCHMARKS.md run with
# the root token and with a service token whose one policy has 20 rules
# (the grant it uses is not the first one), alternated run by run (root,
# policy, root, …) so that the machine's drift falls on both. RUNS (default
# 3) runs of DURATION (default 10s) each; the medians and every run. Then
# AppRole logins per second with batch and with service tokens, same run.
#
#   scripts/bench-acl.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
BIN=${BIN:-bin/coffer}
command -v jq >/dev/null || { echo "bench-acl.sh needs jq (apt-get install jq)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "no $BIN: run make build first" >&2; exit 1; }

dir=$(mktemp -u /tmp/coffer-acl.XXXXXX)
BIN=$BIN scripts/bench-cluster.sh "$dir" 2>/dev/null
trap 'scripts/bench-cluster.sh stop "$dir"' EXIT
# shellcheck disable=SC1091
source "$dir/env"
peers=$("$BIN" operator raft list-peers -format=json)
follower=$(jq -r '[.[] | select(.leader | not)][0].id' <<<"$peers")
faddr="${COFFER_BENCH_SCHEME}127.0.0.1:85${follower#n}0"

policy="$dir/bench.hcl"
{
  for t in payments orders users billing search; do
    echo "path \"secret/data/$t/*\" { capabilities = [\"read\"] }"
    echo "path \"secret/metadata/$t/*\" { capabilities = [\"list\"] }"
  done
  for t in a b c d e; do
    echo "path \"secret/data/+/$t\" { capabilities = [\"read\", \"update\"] }"
  done
  echo 'path "secret/data/admin/*" { capabilities = ["deny"] }'
  echo 'path "sys/capabilities-self" { capabilities = ["update"] }'
  echo 'path "auth/token/lookup-self" { capabilities = ["read"] }'
  echo 'path "secret/metadata/bench/*" { capabilities = ["list", "read"] }'
  echo 'path "secret/data/bench/*" { capabilities = ["create", "read", "update"] }'
} >"$policy"
rules=$(grep -c '^path' "$policy")
"$BIN" policy write bench "$policy" >/dev/null
ptoken=$("$BIN" token create -policy=bench -no-default-policy -ttl=2h -format=json | jq -r .token)
root=$COFFER_TOKEN

echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(go version | cut -d' ' -f3), load average before: $(cut -d' ' -f1-3 /proc/loadavg). TLS. Policy: $rules rules. $RUNS runs of $DURATION per token, alternated."
echo
echo "| workload | root ops/s (median) | policy token ops/s (median) | policy / root | root runs | policy runs |"
echo "|---|---|---|---|---|---|"

pair() {
  local name=$1; shift
  local r=() p=()
  for _ in $(seq "$RUNS"); do
    r+=("$("$BIN" bench -token="$root" -format=json -duration="$DURATION" "$@" 2>/dev/null | jq .ops_per_sec)")
    p+=("$("$BIN" bench -token="$ptoken" -format=json -duration="$DURATION" "$@" 2>/dev/null | jq .ops_per_sec)")
  done
  jq -rn --arg name "$name" --argjson r "$(printf '%s\n' "${r[@]}" | jq -s .)" --argjson p "$(printf '%s\n' "${p[@]}" | jq -s .)" '
    def med: sort | .[(length/2|floor)];
    "| \($name) | \($r|med|floor) | \($p|med|floor) | \((($p|med)/($r|med)*1000|floor)/10) % | \([$r[]|floor]|join(", ")) | \([$p[]|floor]|join(", ")) |"'
}

pair "writes, 16 clients" -clients=16 kv-write
pair "stale reads on a follower, 16 clients" -clients=16 -consistency=stale -address="$faddr" kv-read
pair "stale reads on a follower, 64 clients" -clients=64 -consistency=stale -address="$faddr" kv-read

echo
echo "| logins | ops/s (median) | p50 ms | p99 ms | runs (ops/s) |"
echo "|---|---|---|---|---|"
login() {
  local name=$1; shift
  local out=()
  for _ in $(seq "$RUNS"); do
    out+=("$("$BIN" bench -token="$root" -format=json -duration="$DURATION" "$@" 2>>"$dir/login.err")")
  done
  printf '%s\n' "${out[@]}" | jq -rs --arg name "$name" '
    sort_by(.ops_per_sec) as $r | $r[(length/2|floor)] as $m |
    "| \($name) | \($m.ops_per_sec|floor) | \($m.p50_ms) | \($m.p99_ms) | \([$r[].ops_per_sec|floor]|join(", ")) |"'
}
login "AppRole logins, batch tokens, 16 clients" -clients=16 -token-type=batch approle-login
login "AppRole logins, service tokens, 16 clients" -clients=16 -token-type=service approle-login
