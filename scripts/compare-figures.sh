#!/usr/bin/env bash
# compare-figures.sh: coffer and etcd v3.7.1 measured in one invocation, on
# one machine, in the same hour, both with TLS on client and peer traffic:
# the goal rows of issue 16 and the scale rows at several key counts.
#
#   scripts/etcd-build.sh                                 # once (make does it)
#   scripts/compare-figures.sh                            # the full run
#   SIZES="1000 10000" RUNS=1 DURATION=3 scripts/compare-figures.sh   # smoke
#
# What it does, with a three-node coffer cluster (scripts/bench-cluster.sh,
# ports 85x0-85x5) and a three-member etcd cluster (clients 2379/2479/2579,
# peers 2380/2480/2580) up side by side, each idle while the other is
# measured:
#   - for each size of SIZES, fewest first: preload both to that many keys
#     of VALUE_SIZE bytes (coffer bench preload from the previous size on;
#     etcd's benchmark put --sequential-keys, then compact so that etcd
#     holds just the keys' last revisions), save a snapshot of each (its size
#     against the live data, keys x VALUE_SIZE; coffer's also against the
#     keys and values its state stores, from coffer operator raft snapshot
#     inspect: etcd's snapshot status has no such figure), then the rows RUNS times,
#     coffer and etcd alternately: at the first size the goal rows (writes
#     16 and 64 clients to the leader, stale/serializable follower reads 16
#     and 64, linearizable follower reads 64), at the others writes and
#     stale follower reads with 64 clients over all the keys stored; each
#     row records every node's CPU (user+system from /proc/PID/stat) and
#     bytes written (/proc/PID/io write_bytes); then every node's RSS.
#   - at the first size, with strace installed, one more writes-64 run per
#     tool with strace -c -f counting fsync and fdatasync on every node
#     (strace slows the nodes: the run's ops/s is not a figure; fewer
#     writes per batch may mean more fsyncs per write than unobserved).
#   - at the largest size: RUNS times a follower is killed with kill -9,
#     restarted and (coffer) unsealed, timed until it serves (coffer
#     healthcheck; etcd endpoint health); then once a new node joins (coffer:
#     a 4th node on 8540-8543 with -join, unsealed, which the leader adds
#     as a non-voter; etcd: member add --learner, as etcd advises, and a
#     4th member on 2679/2680), timed until it has applied the leader's
#     index (coffer status applied_index; etcd endpoint status revision).
# Limits: etcd's benchmark reads one key (it cannot read random ones), so
# its read rows read one key with all the others stored; coffer reads keys
# at random among all.
#
# Output: OUT/compare-figures.raw.jsonl (every measurement, one JSON a
# line), OUT/compare-figures.json (medians and goals, coffer bench report),
# OUT/compare-figures.md (tables for docs/BENCHMARKS.md), OUT/scale.png
# (coffer bench plot). OUT defaults to bin.
#
# Env: SIZES (default "1000 100000 1000000"), RUNS (3), DURATION (seconds
# per row, 15), VALUE_SIZE (256), PRELOAD_CLIENTS (256), DATA_PARENT (where
# the data lives, a real disk, default /var/tmp), KEEP=1 keeps the data and
# logs, BIN (bin/coffer), ETCD_BIN (.tools/etcd/bin), JOIN_TIMEOUT (seconds
# a new node has to catch up before its figure is dropped, 600).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZES=${SIZES:-1000 100000 1000000}
RUNS=${RUNS:-3}
DURATION=${DURATION:-15}
VALUE_SIZE=${VALUE_SIZE:-256}
PRELOAD_CLIENTS=${PRELOAD_CLIENTS:-256}
JOIN_TIMEOUT=${JOIN_TIMEOUT:-600}
DATA_PARENT=${DATA_PARENT:-/var/tmp}
OUT=${OUT:-bin}
BIN=${BIN:-bin/coffer}
ETCD_BIN=${ETCD_BIN:-.tools/etcd/bin}

die() { echo "compare-figures.sh: $*" >&2; exit 1; }
log() { echo "# $(date -u +%H:%M:%S) $*" >&2; }

# ---- checks -------------------------------------------------------------------
command -v jq >/dev/null || die "needs jq (apt-get install jq)"
[ -x "$BIN" ] || die "no $BIN: run make build first"
for b in etcd etcdctl benchmark; do
  [ -x "$ETCD_BIN/$b" ] || die "no $ETCD_BIN/$b: run scripts/etcd-build.sh first"
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS=$RUNS: want a positive whole number"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION=$DURATION: want whole seconds, e.g. 15"
[[ $JOIN_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "JOIN_TIMEOUT=$JOIN_TIMEOUT: want whole seconds"
[[ $VALUE_SIZE =~ ^[1-9][0-9]*$ ]] || die "VALUE_SIZE=$VALUE_SIZE: want a positive number of bytes"
read -r -a sizes <<<"$SIZES"
[ ${#sizes[@]} -gt 0 ] || die "SIZES is empty: give key counts, e.g. SIZES=\"1000 100000\""
prev=0
for s in "${sizes[@]}"; do
  [[ $s =~ ^[1-9][0-9]*$ ]] || die "SIZES: $s is not a positive key count"
  [ "$s" -gt "$prev" ] || die "SIZES must grow: $s after $prev"
  prev=$s
done
SMALL=${sizes[0]}
LARGE=${sizes[${#sizes[@]}-1]}
fstype=$(df --output=fstype "$DATA_PARENT" | tail -1 | tr -d ' ')
case $fstype in tmpfs|ramfs) die "$DATA_PARENT is $fstype: set DATA_PARENT to a directory on a real disk" ;; esac
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in 8510 8511 8512 8513 8514 8515 8520 8521 8522 8523 8524 8525 8530 8531 8532 8533 8534 8535 \
  8540 8541 8542 8543 2379 2380 2479 2480 2579 2580 2679 2680; do
  port_busy "$p" && die "port 127.0.0.1:$p is in use: stop whatever listens there first (scripts/bench-cluster.sh stop?)"
done
mkdir -p "$OUT"

WORK=$(mktemp -d "$DATA_PARENT/compare-figures.XXXXXX")
CDIR=$WORK/coffer     # scripts/bench-cluster.sh's directory
EDIR=$WORK/etcd
RAW=$OUT/compare-figures.raw.jsonl
: >"$RAW"
EPIDS=()              # etcd members by index (0-3)
STRACES=()

cleanup() {
  local rc=$?
  trap '' INT TERM
  set +e
  for p in "${STRACES[@]}"; do kill "$p" 2>/dev/null; done
  for f in "$CDIR"/n*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  for p in "${EPIDS[@]}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  for f in "$CDIR"/n*.pid; do
    [ -f "$f" ] || continue
    p=$(cat "$f")
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  for p in "${EPIDS[@]}"; do
    [ -n "$p" ] || continue
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  if [ "${KEEP:-}" = 1 ]; then
    echo "compare-figures.sh: data and logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  [ $rc -eq 0 ] || echo "compare-figures.sh: failed (exit $rc); rerun with KEEP=1 to keep the nodes' logs" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# record JSON: one measurement to the raw file (jq -c checks it is JSON).
record() { jq -c . <<<"$1" >>"$RAW"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }
CLK_TCK=$(getconf CLK_TCK)
# proc_cpu PID: user+system seconds; proc_wbytes PID: bytes written to storage.
proc_cpu() { awk -v t="$CLK_TCK" '{sub(/^.*\) /,""); printf "%.4f", ($12+$13)/t}' "/proc/$1/stat"; }
proc_wbytes() { awk '/^write_bytes:/{print $2}' "/proc/$1/io"; }
proc_rss() { awk '/^VmRSS:/{print $2*1024}' "/proc/$1/status"; }
# proc_rss_anon PID: the anonymous part of its RSS (heap, stacks), the rest
# being mapped files the kernel can drop.
proc_rss_anon() { awk '/^RssAnon:/{print $2*1024}' "/proc/$1/status"; }

# ---- the coffer cluster ---------------------------------------------------------
COFFER_CLUSTER_KEY=$(head -c 32 /dev/urandom | base64)
export COFFER_CLUSTER_KEY
BIN=$BIN scripts/bench-cluster.sh "$CDIR" 2>"$WORK/bench-cluster.err" ||
  die "the coffer cluster did not start: $(tail -n 2 "$WORK/bench-cluster.err" | tr '\n' ' ')"
# shellcheck disable=SC1091
source "$CDIR/env"
mapfile -t SHARES < <(jq -r '.unseal_keys_b64[]' "$CDIR/init.json")
cpid() { cat "$CDIR/$1.pid"; }
coffer_roles() {
  local peers
  peers=$("$BIN" operator raft list-peers -format=json)
  CLEADER=$(jq -r '.[] | select(.leader) | .id' <<<"$peers")
  mapfile -t CFOLLOWERS < <(jq -r '.[] | select(.leader | not) | select(.id != "n4") | .id' <<<"$peers")
  [ -n "$CLEADER" ] && [ ${#CFOLLOWERS[@]} -ge 1 ] || die "coffer has no leader and follower: $peers"
  CFADDR="127.0.0.1:85${CFOLLOWERS[0]#n}0"
}
coffer_role() { [ "$1" = "$CLEADER" ] && echo leader || echo follower; }
log "coffer: three TLS nodes up in $CDIR"

# ---- the etcd cluster -------------------------------------------------------------
ENAMES=(e1 e2 e3 e4)
ECPORTS=(2379 2479 2579 2679)
EPPORTS=(2380 2480 2580 2680)
mkdir -p "$EDIR"
ECERTS=$EDIR/certs
"$BIN" cert create-ca -certs-dir="$ECERTS" -ca-key="$EDIR/ca.key" >/dev/null
"$BIN" cert create-node -certs-dir="$ECERTS" -ca-key="$EDIR/ca.key" 127.0.0.1 localhost >/dev/null
"$BIN" cert create-client -certs-dir="$ECERTS" -ca-key="$EDIR/ca.key" root >/dev/null
ESERVER_TLS=(--cert-file "$ECERTS/node.crt" --key-file "$ECERTS/node.key"
  --trusted-ca-file "$ECERTS/ca.crt" --client-cert-auth
  --peer-cert-file "$ECERTS/node.crt" --peer-key-file "$ECERTS/node.key"
  --peer-trusted-ca-file "$ECERTS/ca.crt" --peer-client-cert-auth)
ECLIENT_TLS=(--cacert "$ECERTS/ca.crt" --cert "$ECERTS/client.root.crt" --key "$ECERTS/client.root.key")
ctl() { "$ETCD_BIN/etcdctl" "${ECLIENT_TLS[@]}" --dial-timeout=2s --command-timeout=30s "$@"; }
eep() { echo "https://127.0.0.1:${ECPORTS[$1]}"; }
EINITIAL="e1=https://127.0.0.1:2380,e2=https://127.0.0.1:2480,e3=https://127.0.0.1:2580"
# start_member I CLUSTER STATE: run member I in the background, EPIDS[I].
start_member() {
  local i=$1 n=${ENAMES[$1]} c p
  c=$(eep "$i"); p="https://127.0.0.1:${EPPORTS[$i]}"
  "$ETCD_BIN/etcd" --name "$n" --data-dir "$EDIR/$n" \
    --listen-client-urls "$c" --advertise-client-urls "$c" \
    --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
    --initial-cluster "$2" --initial-cluster-token compare-figures \
    --initial-cluster-state "$3" "${ESERVER_TLS[@]}" >>"$EDIR/$n.log" 2>&1 &
  EPIDS[i]=$!
}
for i in 0 1 2; do start_member "$i" "$EINITIAL" new; done
EALL="$(eep 0),$(eep 1),$(eep 2)"
ok=
for _ in $(seq 120); do
  ctl --endpoints="$EALL" endpoint health >/dev/null 2>&1 && { ok=1; break; }
  for i in 0 1 2; do kill -0 "${EPIDS[$i]}" 2>/dev/null || die "etcd member ${ENAMES[$i]} exited: $(tail -n 2 "$EDIR/${ENAMES[$i]}.log" | tr '\n' ' ')"; done
  sleep 0.5
done
[ -n "$ok" ] || die "the etcd cluster is not healthy after 60 s: see $EDIR/*.log (KEEP=1)"
# efield EP FIELD: a field of etcdctl endpoint status -w fields.
efield() { ctl --endpoints="$1" endpoint status -w fields | awk -F' : ' -v f="\"$2\"" '$1==f{print $2; exit}'; }
etcd_roles() {
  local i m l
  ELEADER=; EFOLLOWERS=()
  for i in 0 1 2; do
    m=$(efield "$(eep "$i")" MemberID); l=$(efield "$(eep "$i")" Leader)
    if [ "$m" = "$l" ]; then ELEADER=$i; else EFOLLOWERS+=("$i"); fi
  done
  [ -n "$ELEADER" ] && [ ${#EFOLLOWERS[@]} -ge 1 ] || die "etcd has no leader and follower"
}
etcd_role() { [ "$1" = "$ELEADER" ] && echo leader || echo follower; }
READ_KEY=compare-figures-read-key
ctl --endpoints="$EALL" put "$READ_KEY" "$(head -c "$VALUE_SIZE" /dev/zero | tr '\0' v)" >/dev/null
log "etcd: three TLS members up in $EDIR ($("$ETCD_BIN/etcd" --version | head -1))"

record "$(jq -n --arg m "$(date -u +%Y-%m-%dT%H:%MZ)" --arg cores "$(nproc)" --arg go "$(go version 2>/dev/null | cut -d' ' -f3)" \
  --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --arg etcd "$("$ETCD_BIN/etcd" --version | head -1 | awk '{print $3}')" \
  --arg runs "$RUNS" --arg dur "$DURATION" --arg sizes "$SIZES" --arg vs "$VALUE_SIZE" '{kind:"meta", meta:{measured:$m, cores:$cores, go:$go,
  "load before":$load, etcd:$etcd, runs:$runs, "seconds per row":$dur, sizes:$sizes, "value bytes":$vs,
  transport:"TLS on client and peer traffic, client certificates required"}}')"

# ---- one row ------------------------------------------------------------------
# node_costs TOOL: "name role pid" lines of the tool's three nodes.
node_costs() {
  local i
  if [ "$1" = coffer ]; then
    for i in 1 2 3; do echo "n$i $(coffer_role "n$i") $(cpid "n$i")"; done
  else
    for i in 0 1 2; do echo "${ENAMES[$i]} $(etcd_role "$i") ${EPIDS[$i]}"; done
  fi
}
# snap_costs TOOL: "name role pid cpu wbytes" now.
snap_costs() {
  local n r p
  while read -r n r p; do echo "$n $r $p $(proc_cpu "$p") $(proc_wbytes "$p")"; done < <(node_costs "$1")
}
# costs_json BEFORE AFTER: the nodes' CPU and bytes written between two snaps.
costs_json() {
  paste -d' ' <(echo "$1") <(echo "$2") | awk '{printf "{\"node\":\"%s\",\"role\":\"%s\",\"cpu_s\":%.4f,\"write_bytes\":%d}\n", $1, $2, $9-$4, $10-$5}' | jq -cs .
}

# coffer_row ROW KEYS RUN
coffer_row() {
  local row=$1 keys=$2 run=$3 args before after out
  case $row in
    w16) args=(-clients=16 kv-write) ;;
    w64) args=(-clients=64 kv-write) ;;
    s16) args=(-clients=16 -consistency=stale -address="$CFADDR" -no-prepopulate kv-read) ;;
    s64) args=(-clients=64 -consistency=stale -address="$CFADDR" -no-prepopulate kv-read) ;;
    l64) args=(-clients=64 -consistency=linearizable -address="$CFADDR" -no-prepopulate kv-read) ;;
  esac
  before=$(snap_costs coffer)
  out=$("$BIN" bench -format=json -duration="${DURATION}s" -keys="$keys" -value-size="$VALUE_SIZE" "${args[@]}" 2>>"$WORK/bench.err") ||
    die "coffer bench $row failed: $(tail -n 1 "$WORK/bench.err")"
  after=$(snap_costs coffer)
  record "$(jq -c --arg row "$row" --argjson keys "$keys" --argjson run "$run" --argjson nodes "$(costs_json "$before" "$after")" \
    '{kind:"row", tool:"coffer", row:$row, keys:$keys, run:$run, ops_per_sec, p50_ms, p99_ms, ops, errors:([.errors[]]|add // 0), nodes:$nodes}' <<<"$out")"
  log "coffer $row keys=$keys run $run: $(jq -r '"\(.ops_per_sec|floor) ops/s, p99 \(.p99_ms) ms, errors \(.errors)"' <<<"$out")"
}

# etcd_bench OUTFILE TOTAL ARGS...: one run of etcd's benchmark; sets OPS P50 P99 ERRS COUNT.
etcd_bench() {
  local f=$1 total=$2; shift 2
  "$ETCD_BIN/benchmark" --precise "${ECLIENT_TLS[@]}" "$@" --total="$total" >"$f" 2>&1 ||
    die "etcd's benchmark failed: $(tail -n 2 "$f" | tr '\n' ' ')"
  OPS=$(awk -F'\t' '/Requests\/sec:/{print $2; exit}' "$f")
  P50=$(awk '$1=="50%" && $2=="in"{print $3*1000; exit}' "$f")
  P99=$(awk '$1=="99%" && $2=="in"{print $3*1000; exit}' "$f")
  ERRS=$(awk '/^Error distribution:/{e=1; next} e && /^  \[[0-9]+\]/{gsub(/[\[\]]/,"",$1); s+=$1} END{print s+0}' "$f")
  COUNT=$(( total - ERRS ))
  [ -n "$OPS" ] && [ -n "$P50" ] && [ -n "$P99" ] || die "could not read etcd's benchmark output $f (KEEP=1 keeps it)"
}
# etcd_args ROW KEYS: sets EARGS, the benchmark's arguments of a row.
etcd_args() {
  local put=(put --key-size=8 --val-size="$VALUE_SIZE" --key-space-size="$2" --sequential-keys=false)
  local f
  f=$(eep "${EFOLLOWERS[0]}")
  case $1 in
    w16) EARGS=(--endpoints="$(eep "$ELEADER")" --conns=2 --clients=16 "${put[@]}") ;;
    w64) EARGS=(--endpoints="$(eep "$ELEADER")" --conns=8 --clients=64 "${put[@]}") ;;
    s16) EARGS=(--endpoints="$f" --conns=2 --clients=16 range "$READ_KEY" --consistency=s) ;;
    s64) EARGS=(--endpoints="$f" --conns=8 --clients=64 range "$READ_KEY" --consistency=s) ;;
    l64) EARGS=(--endpoints="$f" --conns=8 --clients=64 range "$READ_KEY" --consistency=l) ;;
  esac
}
# etcd_calibrate ROW KEYS: ETOTAL, the requests that last about DURATION.
etcd_calibrate() {
  etcd_args "$1" "$2"
  etcd_bench "$EDIR/$1.$2.cal.txt" 3000 "${EARGS[@]}"
  ETOTAL=$(awk -v r="$OPS" -v s="$DURATION" 'BEGIN{t=int(r*s); if (t<500) t=500; print t}')
}
# etcd_row ROW KEYS RUN
etcd_row() {
  local row=$1 keys=$2 run=$3 before after
  etcd_args "$row" "$keys"
  before=$(snap_costs etcd)
  etcd_bench "$EDIR/$row.$keys.run$run.txt" "$ETOTAL" "${EARGS[@]}"
  after=$(snap_costs etcd)
  record "$(jq -nc --arg row "$row" --argjson keys "$keys" --argjson run "$run" --argjson ops "$OPS" --argjson p50 "$P50" --argjson p99 "$P99" \
    --argjson n "$COUNT" --argjson errs "$ERRS" --argjson nodes "$(costs_json "$before" "$after")" \
    '{kind:"row", tool:"etcd", row:$row, keys:$keys, run:$run, ops_per_sec:$ops, p50_ms:$p50, p99_ms:$p99, ops:$n, errors:$errs, nodes:$nodes}')"
  log "etcd $row keys=$keys run $run: $(printf %.0f "$OPS") ops/s, p99 $P99 ms, errors $ERRS"
}

# strace_fsyncs: one writes-64 run per tool with strace counting the
# nodes' fsync and fdatasync calls.
strace_fsyncs() {
  local keys=$1 tool n r p out ops f calls
  for tool in coffer etcd; do
    STRACES=()
    local names=()
    # etcd's request count for the run is calibrated before strace
    # attaches: the calibration's writes are not the run's, and counted
    # under strace they added their fsyncs to etcd's per-write figure.
    if [ "$tool" = etcd ]; then etcd_calibrate w64 "$keys"; fi
    while read -r n r p; do
      strace -f -c -e trace=fsync,fdatasync -o "$WORK/strace.$tool.$n" -p "$p" 2>/dev/null &
      STRACES+=($!); names+=("$n $r")
    done < <(node_costs "$tool")
    sleep 1 # strace attaches to every thread
    if [ "$tool" = coffer ]; then
      out=$("$BIN" bench -format=json -duration="${DURATION}s" -keys="$keys" -value-size="$VALUE_SIZE" -clients=64 kv-write 2>>"$WORK/bench.err") ||
        die "coffer bench under strace failed: $(tail -n 1 "$WORK/bench.err")"
      ops=$(jq -r .ops <<<"$out")
    else
      etcd_bench "$EDIR/w64.$keys.strace.txt" "$ETOTAL" "${EARGS[@]}"
      ops=$COUNT
    fi
    for p in "${STRACES[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    for p in "${STRACES[@]}"; do wait "$p" 2>/dev/null || true; done
    STRACES=()
    for nr in "${names[@]}"; do
      read -r n r <<<"$nr"
      f=$WORK/strace.$tool.$n
      calls=$(awk '$NF=="fsync" || $NF=="fdatasync" {s+=$4} END{print s+0}' "$f" 2>/dev/null || echo 0)
      record "$(jq -nc --arg tool "$tool" --arg n "$n" --arg r "$r" --argjson keys "$keys" --argjson f "$calls" --argjson ops "$ops" \
        '{kind:"fsync", tool:$tool, row:"w64", keys:$keys, node:$n, role:$r, fsyncs:$f, ops:$ops}')"
    done
    log "$tool: fsyncs counted over $ops writes under strace"
  done
}

# ---- the sizes --------------------------------------------------------------------
start_all=$(now)
prev=0
for keys in "${sizes[@]}"; do
  coffer_roles; etcd_roles
  log "== $keys keys (coffer leader $CLEADER, follower ${CFOLLOWERS[0]}; etcd leader ${ENAMES[$ELEADER]})"
  t0=$(now)
  "$BIN" bench preload -format=json -keys="$keys" -from="$prev" -clients="$PRELOAD_CLIENTS" -value-size="$VALUE_SIZE" >"$WORK/preload.json" 2>"$WORK/preload.err" ||
    die "coffer bench preload to $keys keys failed: $(tail -n 1 "$WORK/preload.err")"
  record "$(jq -nc --arg s "$(since "$t0")" --argjson keys "$keys" --argjson w $((keys - prev)) '{kind:"preload", tool:"coffer", keys:$keys, seconds:($s|tonumber), written:$w}')"
  log "coffer: preloaded to $keys keys in $(since "$t0") s"
  t0=$(now)
  etcd_bench "$EDIR/preload.$keys.txt" "$keys" --endpoints="$(eep "$ELEADER")" --conns=32 --clients="$PRELOAD_CLIENTS" \
    put --key-size=8 --val-size="$VALUE_SIZE" --sequential-keys --key-space-size="$keys"
  # Compacted, not defragmented: after a defrag, a member added later
  # never applied the snapshot sent to it (etcd 3.7.1 here: "failed to
  # publish local member ... too many requests" for minutes).
  rev=$(efield "$(eep "$ELEADER")" Revision)
  ctl --endpoints="$(eep "$ELEADER")" compact "$rev" >/dev/null
  record "$(jq -nc --arg s "$(since "$t0")" --argjson keys "$keys" '{kind:"preload", tool:"etcd", keys:$keys, seconds:($s|tonumber), written:$keys}')"
  log "etcd: preloaded to $keys keys and compacted in $(since "$t0") s"
  prev=$keys

  live=$((keys * VALUE_SIZE))
  "$BIN" operator raft snapshot save "$WORK/coffer.snap" >/dev/null 2>"$WORK/snap.err" || die "coffer snapshot save failed: $(tail -n 1 "$WORK/snap.err")"
  # stored_bytes: every key and value coffer's state holds (metadata,
  # versions, indexes), against live_bytes, the values alone. inspect
  # copies the state into TMPDIR while it reads it: the data disk here.
  stored=$(TMPDIR=$WORK "$BIN" operator raft snapshot inspect -format=json "$WORK/coffer.snap" 2>"$WORK/snap.err" | jq -e .stored_bytes) ||
    die "coffer snapshot inspect failed: $(tail -n 1 "$WORK/snap.err")"
  record "$(jq -nc --argjson keys "$keys" --argjson b "$(stat -c %s "$WORK/coffer.snap")" --argjson l "$live" --argjson s "$stored" '{kind:"snapshot", tool:"coffer", keys:$keys, bytes:$b, live_bytes:$l, stored_bytes:$s}')"
  ctl --endpoints="$(eep "$ELEADER")" snapshot save "$WORK/etcd.snap" >/dev/null 2>"$WORK/snap.err" || die "etcdctl snapshot save failed: $(tail -n 1 "$WORK/snap.err")"
  record "$(jq -nc --argjson keys "$keys" --argjson b "$(stat -c %s "$WORK/etcd.snap")" --argjson l "$live" '{kind:"snapshot", tool:"etcd", keys:$keys, bytes:$b, live_bytes:$l}')"
  rm -f "$WORK/coffer.snap" "$WORK/etcd.snap"

  if [ "$keys" = "$SMALL" ]; then rows=(w16 w64 s16 s64 l64); else rows=(w64 s64); fi
  for row in "${rows[@]}"; do
    etcd_calibrate "$row" "$keys"
    for run in $(seq "$RUNS"); do
      coffer_row "$row" "$keys" "$run"
      etcd_row "$row" "$keys" "$run"
    done
  done
  if [ "$keys" = "$SMALL" ]; then
    if command -v strace >/dev/null; then strace_fsyncs "$keys"; else log "no strace: fsyncs per write are not measured"; fi
  fi
  for tool in coffer etcd; do
    while read -r n r p; do
      record "$(jq -nc --arg tool "$tool" --arg n "$n" --arg r "$r" --argjson keys "$keys" --argjson b "$(proc_rss "$p")" --argjson a "$(proc_rss_anon "$p")" '{kind:"rss", tool:$tool, keys:$keys, node:$n, role:$r, bytes:$b, anon_bytes:$a}')"
    done < <(node_costs "$tool")
  done
done

# ---- restart and join at the largest size ---------------------------------------------
coffer_roles; etcd_roles
# wait_for SECONDS CMD...: run CMD until it succeeds; fail after SECONDS.
wait_for() {
  local limit=$1 t0; shift
  t0=$(now)
  until "$@" >/dev/null 2>&1; do
    awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN{exit !(b-a > l)}' && return 1
    sleep 0.05
  done
}
coffer_answers() { "$BIN" status -address="$1" -format=json >/dev/null 2>&1; [ $? -ne 1 ]; }
# give_share ADDR K: the unseal share K to the node at ADDR.
give_share() { printf '%s\n' "${SHARES[$2]}" | "$BIN" operator unseal -address="$1" >/dev/null 2>>"$WORK/unseal.err"; }
# coffer_unseal ADDR: a threshold of shares, each tried again until taken
# (a node not yet a member, or catching up, refuses for a while).
coffer_unseal() {
  local k
  for k in 0 1 2; do wait_for 600 give_share "$1" "$k" || return 1; done
}
for run in $(seq "$RUNS"); do
  f=${CFOLLOWERS[0]}; addr="127.0.0.1:85${f#n}0"; pid=$(cpid "$f")
  mapfile -d '' cmd <"/proc/$pid/cmdline"
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  t0=$(now)
  "${cmd[@]}" >>"$CDIR/$f.log" 2>&1 &
  echo $! >"$CDIR/$f.pid"
  wait_for 120 coffer_answers "$addr" || die "coffer $f did not answer within 120 s of its restart: see $CDIR/$f.log (KEEP=1)"
  coffer_unseal "$addr" || die "unsealing coffer $f after its restart failed: $(tail -n 1 "$WORK/unseal.err")"
  wait_for 300 "$BIN" healthcheck -address="$addr" || die "coffer $f did not serve within 300 s of its restart"
  s=$(since "$t0")
  record "$(jq -nc --argjson keys "$LARGE" --argjson run "$run" --arg s "$s" '{kind:"restart", tool:"coffer", keys:$keys, run:$run, seconds:($s|tonumber)}')"
  log "coffer: $f killed with kill -9, restarted and unsealed, serving after $s s"

  i=${EFOLLOWERS[0]}; pid=${EPIDS[$i]}
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  t0=$(now)
  start_member "$i" "$EINITIAL" new
  wait_for 300 ctl --endpoints="$(eep "$i")" endpoint health || die "etcd ${ENAMES[$i]} did not serve within 300 s of its restart: see $EDIR/${ENAMES[$i]}.log (KEEP=1)"
  s=$(since "$t0")
  record "$(jq -nc --argjson keys "$LARGE" --argjson run "$run" --arg s "$s" '{kind:"restart", tool:"etcd", keys:$keys, run:$run, seconds:($s|tonumber)}')"
  log "etcd: ${ENAMES[$i]} killed with kill -9 and restarted, serving after $s s"
done

# A new node joins: coffer's 4th node with -join, unsealed as an operator
# would, until it has applied the leader's index.
target=$("$BIN" status -address="127.0.0.1:85${CLEADER#n}0" -format=json | jq -r .applied_index)
t0=$(now)
"$BIN" server -node-id=n4 -data-dir="$CDIR/n4" -api-addr=127.0.0.1:8540 -raft-addr=127.0.0.1:8541 \
  -gossip-addr=127.0.0.1:8542 -pprof-addr=127.0.0.1:8543 -http-addr= -metrics-addr= \
  -join=127.0.0.1:8512,127.0.0.1:8522,127.0.0.1:8532 -log-level=warn -certs-dir="$CDIR/certs" >"$CDIR/n4.log" 2>&1 &
echo $! >"$CDIR/n4.pid"
wait_for 120 coffer_answers 127.0.0.1:8540 || die "the new coffer node n4 did not answer within 120 s: see $CDIR/n4.log (KEEP=1)"
coffer_caught_up() {
  [ "$("$BIN" status -address=127.0.0.1:8540 -format=json 2>/dev/null | jq -r '.applied_index // 0')" -ge "$target" ]
}
coffer_unseal 127.0.0.1:8540 || die "unsealing the new coffer node n4 failed for 600 s: $(tail -n 1 "$WORK/unseal.err")"
# A join that does not finish is reported and the run goes on to the
# report: the other figures stand.
if wait_for "$JOIN_TIMEOUT" coffer_caught_up; then
  s=$(since "$t0")
  record "$(jq -nc --argjson keys "$LARGE" --arg s "$s" '{kind:"join", tool:"coffer", keys:$keys, seconds:($s|tonumber)}')"
  log "coffer: a new node joined and applied index $target after $s s"
else
  log "WARNING: the new coffer node n4 did not reach applied index $target within $JOIN_TIMEOUT s: no join figure (see $CDIR/n4.log with KEEP=1)"
fi

# etcd refuses a member add until every member has been up for a few
# seconds (the restart above): that wait is not the join's, the clock
# starts when the add is taken.
member_add() { ctl --endpoints="$(eep "$ELEADER")" member add e4 --learner --peer-urls=https://127.0.0.1:2680 >"$EDIR/member-add.txt" 2>&1; }
target=$(efield "$(eep "$ELEADER")" Revision)
wait_for 120 member_add || die "etcdctl member add failed for 120 s: $(grep -v '^{' "$EDIR/member-add.txt" | tail -n 1)"
t0=$(now)
start_member 3 "$EINITIAL,e4=https://127.0.0.1:2680" existing
etcd_caught_up() { [ "$(efield "$(eep 3)" Revision)" -ge "$target" ]; }
if wait_for "$JOIN_TIMEOUT" etcd_caught_up; then
  s=$(since "$t0")
  record "$(jq -nc --argjson keys "$LARGE" --arg s "$s" '{kind:"join", tool:"etcd", keys:$keys, seconds:($s|tonumber)}')"
  log "etcd: a new member joined and reached revision $target after $s s"
else
  log "WARNING: the new etcd member e4 did not reach revision $target within $JOIN_TIMEOUT s: no join figure (see $EDIR/e4.log with KEEP=1)"
  kill "${EPIDS[3]}" 2>/dev/null || true
fi

# ---- the report ------------------------------------------------------------------
"$BIN" bench report -in "$RAW" -json "$OUT/compare-figures.json" -md "$OUT/compare-figures.md"
"$BIN" bench plot -in "$OUT/compare-figures.json" -out "$OUT/scale.png" >/dev/null
log "done in $(since "$start_all") s: $OUT/compare-figures.md, $OUT/compare-figures.json, $OUT/scale.png (raw: $RAW)"
cat "$OUT/compare-figures.md"
