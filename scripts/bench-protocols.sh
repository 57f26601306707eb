#!/usr/bin/env bash
# bench-protocols.sh: the KV rows over gRPC and over the Vault-compatible
# HTTP API side by side, on one fresh local three-node cluster
# (scripts/bench-cluster.sh: TLS, HTTP API on 127.0.0.1:85x4), through a
# follower and through the leader, 16 and 64 clients, 256-byte values.
# Each row runs RUNS times (default 3) for DURATION (default 15s), gRPC and
# HTTP alternating so that the machine's drift hits both; the median run of
# each is shown, with every run's ops/s. Needs bin/coffer (make build) and
# jq. CONSISTENCY (default "default") is the reads' consistency;
# INSECURE=1 measures -insecure nodes instead.
#
# coffer bench -protocol=http drives the HTTP API with plain net/http (one
# keep-alive HTTP/1.1 connection per client, no client library), so the
# figures are the server's, as the gRPC ones are with coffer's api.Client.
#
#   scripts/bench-protocols.sh > figures-protocols.md
#   RUNS=1 DURATION=2s scripts/bench-protocols.sh    # a quick check
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-15s}
BIN=${BIN:-bin/coffer}
CONSISTENCY=${CONSISTENCY:-default}
command -v jq >/dev/null || { echo "bench-protocols.sh needs jq (apt-get install jq)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "no $BIN: run make build first" >&2; exit 1; }

dir=$(mktemp -u /tmp/coffer-protocols.XXXXXX)
BIN=$BIN INSECURE=${INSECURE:-} scripts/bench-cluster.sh "$dir" 2>/dev/null
trap 'scripts/bench-cluster.sh stop "$dir"' EXIT
# shellcheck disable=SC1091
source "$dir/env"
peers=$("$BIN" operator raft list-peers -format=json)
leader=$(jq -r '.[] | select(.leader) | .id' <<<"$peers")
follower=$(jq -r '[.[] | select(.leader | not)][0].id' <<<"$peers")
# The gRPC API of node nK is 127.0.0.1:85K0, its HTTP API 127.0.0.1:85K4.
grpc_addr() { echo "${COFFER_BENCH_SCHEME}127.0.0.1:85${1#n}0"; }
http_addr() { echo "${COFFER_BENCH_SCHEME}127.0.0.1:85${1#n}4"; }
transport=$([ -n "$COFFER_BENCH_SCHEME" ] && echo "plaintext (-insecure nodes)" || echo "TLS (clients present the CA and the client certificate root)")

echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(go version | cut -d' ' -f3), load average before: $(cut -d' ' -f1-3 /proc/loadavg). Transport: $transport."
echo "Leader $leader, follower $follower. $RUNS runs of $DURATION per protocol and row, alternating; the median run is shown. Reads: $CONSISTENCY consistency, 1,000 keys of 256 bytes."
echo
echo "| workload | through | clients | gRPC ops/s | gRPC p50 / p99 ms | HTTP ops/s | HTTP p50 / p99 ms | runs gRPC | runs HTTP |"
echo "|---|---|---|---|---|---|---|---|---|"

# median: the median run of the JSON results on stdin, as "ops|p50 / p99|runs".
median() {
  jq -rs 'sort_by(.ops_per_sec) as $r | $r[(length/2|floor)] as $m |
    "\($m.ops_per_sec|floor)|\($m.p50_ms) / \($m.p99_ms)|\([$r[].ops_per_sec|floor]|join(", "))|\([$r[].errors|to_entries[]|.value]|add // 0)"'
}

# row WORKLOAD VIA NODE CLIENTS: RUNS runs of each protocol, alternating.
row() {
  local workload=$1 via=$2 node=$3 clients=$4
  local common=(-format=json -duration="$DURATION" -clients="$clients" -value-size=256 -consistency="$CONSISTENCY")
  local g=() h=()
  for _ in $(seq "$RUNS"); do
    g+=("$("$BIN" bench "${common[@]}" -address="$(grpc_addr "$node")" "$workload" 2>/dev/null)")
    h+=("$("$BIN" bench "${common[@]}" -protocol=http -http-addr="$(http_addr "$node")" "$workload" 2>/dev/null)")
  done
  local gm hm
  gm=$(printf '%s\n' "${g[@]}" | median)
  hm=$(printf '%s\n' "${h[@]}" | median)
  IFS='|' read -r gops glat gruns gerr <<<"$gm"
  IFS='|' read -r hops hlat hruns herr <<<"$hm"
  local name=writes
  [ "$workload" = kv-read ] && name="$CONSISTENCY reads"
  echo "| $name | $via ($node) | $clients | $gops | $glat | $hops | $hlat | $gruns | $hruns |"
  if [ "$gerr" != 0 ] || [ "$herr" != 0 ]; then
    echo "errors in the runs above: gRPC $gerr, HTTP $herr (see coffer bench -format=json)" >&2
  fi
}

for via in follower leader; do
  node=$([ "$via" = leader ] && echo "$leader" || echo "$follower")
  for c in 16 64; do
    row kv-write "$via" "$node" "$c"
    row kv-read "$via" "$node" "$c"
  done
done
