#!/usr/bin/env bash
# bench-figures.sh: measure the rows of docs/BENCHMARKS.md on a fresh local
# three-node cluster (scripts/bench-cluster.sh). Each row runs RUNS times
# (default 3) for DURATION (default 15s); the table shows the median run and
# every run's ops/s. Needs bin/coffer (make build) and jq. With GHZ set to a
# ghz binary, the read rows are also measured with ghz (one run each, through
# server reflection, all reads of one key: ghz's templates cannot pick among
# the thousand). ghz closes its connections at the end of a run with calls in
# flight; those fail with "transport is closing" and are counted apart.
#
# The cluster and every client speak TLS (coffer bench and ghz present the
# CA and the client certificate root); INSECURE=1 measures the same rows on
# -insecure nodes, the plaintext comparison.
#
#   scripts/bench-figures.sh > figures.md
#   INSECURE=1 scripts/bench-figures.sh > figures-insecure.md
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-15s}
BIN=${BIN:-bin/coffer}
command -v jq >/dev/null || { echo "bench-figures.sh needs jq (apt-get install jq)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "no $BIN: run make build first" >&2; exit 1; }

dir=$(mktemp -u /tmp/coffer-figures.XXXXXX)
BIN=$BIN INSECURE=${INSECURE:-} scripts/bench-cluster.sh "$dir" 2>/dev/null
trap 'scripts/bench-cluster.sh stop "$dir"' EXIT
# shellcheck disable=SC1091
source "$dir/env"
peers=$("$BIN" operator raft list-peers -format=json)
leader=$(jq -r '.[] | select(.leader) | .id' <<<"$peers")
follower=$(jq -r '[.[] | select(.leader | not)][0].id' <<<"$peers")
fhost="127.0.0.1:85${follower#n}0"
faddr="${COFFER_BENCH_SCHEME}$fhost"
if [ -n "$COFFER_BENCH_SCHEME" ]; then
  transport="plaintext (-insecure nodes)"
  ghz_tls=(--insecure)
else
  transport="TLS (mutual between nodes; clients present a client certificate)"
  ghz_tls=(--cacert "$COFFER_CACERT" --cert "$COFFER_CLIENT_CERT" --key "$COFFER_CLIENT_KEY")
fi

echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(go version | cut -d' ' -f3), load average before: $(cut -d' ' -f1-3 /proc/loadavg). Transport: $transport."
echo "Leader $leader, follower $follower ($faddr). $RUNS runs of $DURATION each; the median run is shown."
echo
echo "| workload | ops/s (median) | p50 ms | p99 ms | runs (ops/s) |"
echo "|---|---|---|---|---|"

# row NAME ARGS...: run coffer bench RUNS times and print the median run.
row() {
  local name=$1; shift
  local out=()
  for _ in $(seq "$RUNS"); do
    out+=("$("$BIN" bench -format=json -duration="$DURATION" "$@" 2>/dev/null)")
  done
  printf '%s\n' "${out[@]}" | jq -rs --arg name "$name" '
    sort_by(.ops_per_sec) as $r | $r[(length/2|floor)] as $m |
    "| \($name) | \($m.ops_per_sec|floor) | \($m.p50_ms) | \($m.p99_ms) | \([$r[].ops_per_sec|floor]|join(", ")) |"'
}

row "writes, 16 clients" -clients=16 kv-write
row "writes, 64 clients" -clients=64 kv-write
row "stale reads on a follower, 16 clients" -clients=16 -consistency=stale -address="$faddr" kv-read
row "stale reads on a follower, 64 clients" -clients=64 -consistency=stale -address="$faddr" kv-read
row "linearizable reads on a follower, 64 clients" -clients=64 -consistency=linearizable -address="$faddr" kv-read

if [ -n "${GHZ:-}" ]; then
  for c in 16 64; do
    for cons in STALE LINEARIZABLE; do
      "$GHZ" "${ghz_tls[@]}" --call coffer.v1.KV/Get -c "$c" -z "$DURATION" --connections=$(( (c + 7) / 8 )) \
        --metadata "{\"authorization\":\"Bearer $COFFER_TOKEN\"}" \
        -d "{\"path\":\"secret/bench/k1\",\"read\":{\"consistency\":\"CONSISTENCY_$cons\"}}" \
        -O json "$fhost" 2>/dev/null |
        jq -r --arg n "ghz: $(tr A-Z a-z <<<"$cons") reads on a follower, $c clients" \
          '"| \($n) | \(.rps|floor) | \(.latencyDistribution[]|select(.percentage==50)|.latency/1e6) | \(.latencyDistribution[]|select(.percentage==99)|.latency/1e6) | errors: \([(.errorDistribution // {})|to_entries[]|select(.key|test("transport is closing")|not)|.value]|add // 0) (\([(.errorDistribution // {})|to_entries[]|select(.key|test("transport is closing"))|.value]|add // 0) cut off when ghz stops) |"'
    done
  done
fi

echo
echo "RSS after the runs: $("$BIN" bench -format=json -clients=1 -duration=1s kv-read 2>/dev/null | jq -r '.node_rss_bytes | to_entries | map("\(.key) \(.value/1048576|floor) MiB") | join(", ")')."
