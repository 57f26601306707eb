#!/usr/bin/env bash
# bench-ab.sh: compare two coffer builds fairly by alternating them, each
# round on a fresh local three-node cluster (scripts/bench-cluster.sh), one
# run per row. Rows drift by 10-15 % over minutes on a shared machine; a
# build measured after the other inherits that drift, alternation does not.
#
#   A=/tmp/coffer-before B=bin/coffer ROUNDS=5 scripts/bench-ab.sh
#
# ROWS picks rows among: w16 w64 s16 s64 l64 (default "w16 w64 s16 l64").
# The clusters run with TLS (both builds need `coffer cert`); INSECURE=1
# runs them -insecure, and INSECURE_A=1 or INSECURE_B=1 only one side (the
# same build twice, with and without TLS, measures what TLS costs).
# SCRAPE=1 scrapes every node's /metrics once a second during the runs of
# a build that serves them, as a Prometheus would (what metrics cost).
# SERVER_FLAGS_A and SERVER_FLAGS_B add flags to one side's nodes (the same
# build with two settings: B=bin/coffer A=bin/coffer
# SERVER_FLAGS_B=-raft-log-store=wal), SERVER_FLAGS to both.
# CPU=1 adds, after each row's ops/s, the CPU the three nodes used per
# operation in µs (from /proc: user + system): steadier than ops/s on a
# shared machine, whose throughput drifts with whatever else runs.
# PORTS moves the clusters' ports (scripts/bench-cluster.sh). KEYS=N runs
# every row over N keys (default 1000). FROM_A and FROM_B start each
# round's cluster on a copy of a kept, preloaded cluster (bench-cluster.sh
# FROM, made on the same PORTS) instead of a fresh one, and the reads then
# read the preloaded keys (-no-prepopulate): rows with a million secrets
# stored without writing them every round. WARMUP=10s writes for that long
# before the rows, unmeasured (a cluster started on a copy snapshots its
# log and faults its pages in first).
set -euo pipefail
cd "$(dirname "$0")/.."
A=${A:?set A to the first build}
B=${B:?set B to the second build}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-15s}
ROWS=${ROWS:-w16 w64 s16 l64}
P=${PORTS:-85}
KEYS=${KEYS:-1000}
command -v jq >/dev/null || { echo "bench-ab.sh needs jq (apt-get install jq)" >&2; exit 1; }
# node_cpu_ticks DIR: user + system clock ticks of the cluster's three nodes.
node_cpu_ticks() {
  local t=0 i
  for i in 1 2 3; do
    read -r -a st <"/proc/$(cat "$1/n$i.pid")/stat"
    t=$(( t + st[13] + st[14] ))
  done
  echo "$t"
}
for round in $(seq "$ROUNDS"); do
  for name in A B; do
    BIN=${!name}
    insecure_var=INSECURE_$name
    insecure=${!insecure_var:-${INSECURE:-}}
    dir=$(mktemp -u /tmp/coffer-ab.XXXXXX)
    # The other side's settings must not leak into this one (a TLS side's
    # client certificate on a plaintext side is refused).
    unset COFFER_ADDR COFFER_TOKEN COFFER_CACERT COFFER_CLIENT_CERT COFFER_CLIENT_KEY COFFER_BENCH_SCHEME
    flags_var=SERVER_FLAGS_$name
    flags=${!flags_var:-${SERVER_FLAGS:-}}
    from_var=FROM_$name
    from=${!from_var:-}
    keyargs=(-keys="$KEYS")
    [ -n "$from" ] && keyargs+=(-no-prepopulate)
    BIN=$BIN INSECURE=$insecure SERVER_FLAGS=$flags PORTS=$P FROM=$from scripts/bench-cluster.sh "$dir" >/dev/null 2>&1
    # shellcheck disable=SC1091
    source "$dir/env"
    peers=$("$BIN" operator raft list-peers -format=json)
    follower=$(jq -r '[.[] | select(.leader | not)][0].id' <<<"$peers")
    faddr="${COFFER_BENCH_SCHEME}127.0.0.1:$P${follower#n}0"
    line="round $round $name:"
    scraper=
    if [ -n "${SCRAPE:-}" ] && curl -sf -o /dev/null "http://127.0.0.1:${P}15/metrics"; then
      ( while :; do for i in 1 2 3; do curl -sf -o /dev/null "http://127.0.0.1:$P${i}5/metrics"; done; sleep 1; done ) &
      scraper=$!
      line+=" (scraped)"
    fi
    if [ -n "${WARMUP:-}" ]; then
      "$BIN" bench -duration="$WARMUP" "${keyargs[@]}" -clients=64 kv-write >/dev/null 2>&1 || true
    fi
    for row in $ROWS; do
      case $row in
        w16) args=(-clients=16 kv-write) ;;
        w64) args=(-clients=64 kv-write) ;;
        s16) args=(-clients=16 -consistency=stale -address="$faddr" kv-read) ;;
        s64) args=(-clients=64 -consistency=stale -address="$faddr" kv-read) ;;
        l64) args=(-clients=64 -consistency=linearizable -address="$faddr" kv-read) ;;
        *) echo "unknown row $row" >&2; exit 1 ;;
      esac
      cpu0=$(node_cpu_ticks "$dir")
      out=$("$BIN" bench -format=json -duration="$DURATION" "${keyargs[@]}" "${args[@]}" 2>/dev/null)
      cpu1=$(node_cpu_ticks "$dir")
      ops=$(jq -r '.ops_per_sec|floor' <<<"$out")
      line+=" $row $ops"
      if [ -n "${CPU:-}" ]; then
        total=$(jq -r '.ops' <<<"$out")
        line+=" ($(( (cpu1 - cpu0) * 1000000 / $(getconf CLK_TCK) / (total > 0 ? total : 1) ))µs)"
      fi
    done
    [ -n "$scraper" ] && kill "$scraper"
    echo "$line"
    scripts/bench-cluster.sh stop "$dir" >/dev/null 2>&1
  done
done
