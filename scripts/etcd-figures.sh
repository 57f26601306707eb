#!/usr/bin/env bash
# etcd-figures.sh: throughput and latency of a local 3-member etcd cluster,
# measured with etcd's own `benchmark` tool, for the same-machine comparison
# in docs/BENCHMARKS.md (the rows of scripts/bench-figures.sh, etcd's way).
#
#   scripts/etcd-build.sh               # once: .tools/etcd/bin/{etcd,etcdctl,benchmark}
#   scripts/etcd-figures.sh             # DURATION=15 s per row, RUNS=1
#   DURATION=2 scripts/etcd-figures.sh  # smoke
#   make etcd-figures                   # both, RUNS=3
#
# TLS, as coffer's rows: client and peer URLs are https, both with client
# certificate authentication (--client-cert-auth, --peer-client-cert-auth),
# and etcdctl and the benchmark present a client certificate. The
# certificates are made by coffer's own binary (bin/coffer cert: a CA, a
# node certificate for 127.0.0.1 and localhost with server and client
# usage, the client certificate root) in the data dir. INSECURE=1 runs
# plaintext http URLs instead, the comparison rows.
#
# Env:
#   INSECURE     1: plaintext (default: TLS)
#   COFFER_BIN   the coffer binary that makes the certificates (default bin/coffer)
#   DURATION     target seconds per measured row (default 15)
#   RUNS         repetitions of each row (default 1)
#   CAL_SECONDS  length of the calibration run used to size --total (default 3,
#                capped at DURATION); one calibration per workload, not measured
#   DATA_PARENT  parent dir of the cluster's data dirs (default /var/tmp; must be
#                on a real disk, not tmpfs; the script refuses tmpfs)
#   RESULTS      dir for raw benchmark output and etcd logs
#                (default /tmp/etcd-figures.<timestamp>)
#
# Stdout: one line per row `| workload | ops/s | p50 ms | p99 ms |`, then one
# line per member with its VmRSS/VmHWM. Details (totals, elapsed, errors) go to
# stderr as lines starting with '#'.
#
# Cluster: names e1,e2,e3; clients 127.0.0.1:2379/2479/2579; peers 2380/2480/2580.
# Only the flags needed to form a static 3-member loopback cluster are set;
# everything else is etcd's default (snapshot-count, heartbeat 100ms,
# election 1000ms, quota 2 GiB, no auto-compaction, log-level info, ...).
set -eEuo pipefail
trap 'echo "etcd-figures.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${ETCD_BIN:-$ROOT/.tools/etcd/bin}"
DURATION="${DURATION:-15}"
RUNS="${RUNS:-1}"
CAL_SECONDS="${CAL_SECONDS:-3}"
DATA_PARENT="${DATA_PARENT:-/var/tmp}"
RESULTS="${RESULTS:-/tmp/etcd-figures.$(date +%Y%m%d-%H%M%S)}"

ETCD="$BIN/etcd"; ETCDCTL="$BIN/etcdctl"; BENCH="$BIN/benchmark"
for b in "$ETCD" "$ETCDCTL" "$BENCH"; do
  [ -x "$b" ] || { echo "missing $b: run scripts/etcd-build.sh first" >&2; exit 1; }
done
INSECURE="${INSECURE:-}"
COFFER_BIN="${COFFER_BIN:-$ROOT/bin/coffer}"
if [ "$INSECURE" != 1 ] && [ ! -x "$COFFER_BIN" ]; then
  echo "missing $COFFER_BIN, which makes the certificates: run make build first (or INSECURE=1)" >&2; exit 1
fi

log() { echo "# $*" >&2; }

# ---- checks -----------------------------------------------------------------
fstype="$(df --output=fstype "$DATA_PARENT" | tail -1 | tr -d ' ')"
if [ "$fstype" = tmpfs ] || [ "$fstype" = ramfs ]; then
  echo "$DATA_PARENT is $fstype; set DATA_PARENT to a dir on a real disk" >&2; exit 1
fi
NAMES=(e1 e2 e3)
CPORTS=(2379 2479 2579)
PPORTS=(2380 2480 2580)
for p in "${CPORTS[@]}" "${PPORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port 127.0.0.1:$p is already in use; stop whatever listens there first" >&2; exit 1
  fi
done

mkdir -p "$RESULTS"
DATA="$(mktemp -d "$DATA_PARENT/etcd-cmp.XXXXXX")"
log "data dir $DATA (fs $fstype), results $RESULTS, DURATION=$DURATION RUNS=$RUNS, $([ "$INSECURE" = 1 ] && echo "plaintext (INSECURE=1)" || echo TLS)"
log "$("$ETCD" --version | head -1), nproc=$(nproc)"

PIDS=()
cleanup() {
  local rc=$?
  trap '' INT TERM   # finish cleaning up even if signalled again
  trap - ERR
  set +e
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  rm -rf "$DATA"
  log "cluster stopped, data removed"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- (1) certificates and the cluster ------------------------------------------
if [ "$INSECURE" = 1 ]; then
  S=http://
  SERVER_TLS=()
  CLIENT_TLS=()
else
  S=https://
  CERTS="$DATA/certs"
  "$COFFER_BIN" cert create-ca -certs-dir="$CERTS" -ca-key="$DATA/ca.key" >/dev/null
  "$COFFER_BIN" cert create-node -certs-dir="$CERTS" -ca-key="$DATA/ca.key" 127.0.0.1 localhost >/dev/null
  "$COFFER_BIN" cert create-client -certs-dir="$CERTS" -ca-key="$DATA/ca.key" root >/dev/null
  SERVER_TLS=(--cert-file "$CERTS/node.crt" --key-file "$CERTS/node.key"
    --trusted-ca-file "$CERTS/ca.crt" --client-cert-auth
    --peer-cert-file "$CERTS/node.crt" --peer-key-file "$CERTS/node.key"
    --peer-trusted-ca-file "$CERTS/ca.crt" --peer-client-cert-auth)
  CLIENT_TLS=(--cacert "$CERTS/ca.crt" --cert "$CERTS/client.root.crt" --key "$CERTS/client.root.key")
fi
# ctl runs etcdctl with the client's TLS flags.
ctl() { "$ETCDCTL" "${CLIENT_TLS[@]}" "$@"; }
INITIAL=""
for i in 0 1 2; do
  INITIAL+="${INITIAL:+,}${NAMES[$i]}=${S}127.0.0.1:${PPORTS[$i]}"
done
for i in 0 1 2; do
  n=${NAMES[$i]}; c="${S}127.0.0.1:${CPORTS[$i]}"; p="${S}127.0.0.1:${PPORTS[$i]}"
  "$ETCD" --name "$n" --data-dir "$DATA/$n" \
    --listen-client-urls "$c" --advertise-client-urls "$c" \
    --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
    --initial-cluster "$INITIAL" --initial-cluster-token etcd-cmp \
    --initial-cluster-state new "${SERVER_TLS[@]}" \
    >"$RESULTS/$n.log" 2>&1 &
  PIDS+=($!)
done
ALL_EPS="${S}127.0.0.1:2379,${S}127.0.0.1:2479,${S}127.0.0.1:2579"

# ---- (2) wait until healthy ---------------------------------------------------
ok=0
for _ in $(seq 60); do
  if ctl --endpoints="$ALL_EPS" --dial-timeout=1s --command-timeout=2s \
       endpoint health >/dev/null 2>&1; then ok=1; break; fi
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "etcd pid $pid died; see $RESULTS/*.log" >&2; exit 1; }
  done
  sleep 0.5
done
[ $ok = 1 ] || { echo "cluster not healthy after 30 s; see $RESULTS/*.log" >&2; exit 1; }
log "cluster healthy"

# ---- (3) leader and a follower -------------------------------------------------
# prints "<endpoint> <memberID> <leaderID>" for each member
status_all() {
  local ep
  for ep in ${ALL_EPS//,/ }; do
    ctl --endpoints="$ep" --command-timeout=3s endpoint status -w fields |
      awk -v ep="$ep" -F' : ' '/^"MemberID"/{m=$2} /^"Leader"/{l=$2} END{print ep, m, l}'
  done
}
find_roles() {
  LEADER=""; FOLLOWER=""; LEADER_NAME=""
  local ep m l i
  while read -r ep m l; do
    if [ "$m" = "$l" ]; then LEADER="$ep"; elif [ -z "$FOLLOWER" ]; then FOLLOWER="$ep"; fi
  done < <(status_all)
  [ -n "$LEADER" ] && [ -n "$FOLLOWER" ] || { echo "could not find leader/follower" >&2; status_all >&2; exit 1; }
  for i in 0 1 2; do
    if [ "$LEADER" = "${S}127.0.0.1:${CPORTS[$i]}" ]; then LEADER_NAME=${NAMES[$i]}; fi
  done
}
find_roles
LEADER0="$LEADER"
log "leader $LEADER ($LEADER_NAME), follower $FOLLOWER"

# Key read by the range rows: one existing key with a 256-byte value.
READ_KEY="etcd-cmp-read-key"
ctl --endpoints="$LEADER" put "$READ_KEY" "$(head -c 256 /dev/zero | tr '\0' 'v')" >/dev/null

# ---- (4) workloads ----------------------------------------------------------
# bench <outfile> <total> <benchmark args...>; sets OPS P50 P99 ERRS ELAPSED
bench() {
  local out=$1 total=$2; shift 2
  "$BENCH" --precise "${CLIENT_TLS[@]}" "$@" --total="$total" >"$out" 2>&1 || { echo "benchmark failed, see $out" >&2; cat "$out" >&2; exit 1; }
  OPS=$(awk -F'\t' '/Requests\/sec:/{print $2; exit}' "$out")
  ELAPSED=$(awk -F'\t' '/^  Total:/{sub(/ secs\./,"",$2); print $2; exit}' "$out")
  P50=$(awk '$1=="50%" && $2=="in"{print $3*1000; exit}' "$out")
  P99=$(awk '$1=="99%" && $2=="in"{print $3*1000; exit}' "$out")
  ERRS=$(awk '/^Error distribution:/{e=1; next} e && /^  \[[0-9]+\]/{gsub(/[\[\]]/,"",$1); s+=$1} END{print s+0}' "$out")
  if [ -z "$OPS" ] || [ -z "$P50" ] || [ -z "$P99" ]; then
    echo "could not parse $out" >&2; cat "$out" >&2; exit 1
  fi
}

# workload <label> <slug> <benchmark args...>: calibrate --total, then RUNS rows
workload() {
  local label=$1 slug=$2; shift 2
  local cal=$CAL_SECONDS r total
  if [ "$DURATION" -lt "$cal" ]; then cal=$DURATION; fi
  bench "$RESULTS/$slug.cal0.txt" 2000 "$@"
  total=$(awk -v r="$OPS" -v s="$cal" 'BEGIN{t=int(r*s); if(t<200)t=200; print t}')
  bench "$RESULTS/$slug.cal1.txt" "$total" "$@"
  total=$(awk -v r="$OPS" -v s="$DURATION" 'BEGIN{t=int(r*s); if(t<200)t=200; print t}')
  log "$label: calibration $(printf %.0f "$OPS") ops/s over $(printf %.2f "$ELAPSED") s -> --total=$total"
  for r in $(seq "$RUNS"); do
    bench "$RESULTS/$slug.run$r.txt" "$total" "$@"
    printf '| %s | %.0f | %.3f | %.3f |\n' "$label" "$OPS" "$P50" "$P99"
    log "$label run $r: total=$total elapsed=$(printf %.2f "$ELAPSED") s errors=$ERRS"
    if [ "$ERRS" != 0 ]; then log "WARNING: $label run $r had $ERRS errors, see $RESULTS/$slug.run$r.txt"; fi
  done
}

PUT=(put --key-size=8 --val-size=256 --key-space-size=1000 --sequential-keys=false)
echo "| workload | ops/s | p50 ms | p99 ms |"
echo "|---|---|---|---|"
workload "put 256B, 16 clients, leader"  put16 --endpoints="$LEADER" --conns=2 --clients=16 "${PUT[@]}"
workload "put 256B, 64 clients, leader"  put64 --endpoints="$LEADER" --conns=8 --clients=64 "${PUT[@]}"
workload "range serializable, 1 key, 16 clients, follower"  rs16 --endpoints="$FOLLOWER" --conns=2 --clients=16 range "$READ_KEY" --consistency=s
workload "range serializable, 1 key, 64 clients, follower"  rs64 --endpoints="$FOLLOWER" --conns=8 --clients=64 range "$READ_KEY" --consistency=s
workload "range linearizable, 1 key, 64 clients, follower"  rl64 --endpoints="$FOLLOWER" --conns=8 --clients=64 range "$READ_KEY" --consistency=l

# ---- RSS and final state ------------------------------------------------------
find_roles
if [ "$LEADER" != "$LEADER0" ]; then log "WARNING: leader changed during the runs: $LEADER0 -> $LEADER"; fi
for i in 0 1 2; do
  pid=${PIDS[$i]}; ep="${S}127.0.0.1:${CPORTS[$i]}"
  role=follower; if [ "$ep" = "$LEADER" ]; then role=leader; fi
  rss=$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status")
  hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status")
  printf '| rss %s (%s, pid %s) | VmRSS %.1f MiB | VmHWM %.1f MiB | |\n' "${NAMES[$i]}" "$role" "$pid" "$(awk -v k="$rss" 'BEGIN{print k/1024}')" "$(awk -v k="$hwm" 'BEGIN{print k/1024}')"
done
ctl --endpoints="$ALL_EPS" endpoint status -w table >"$RESULTS/endpoint-status.txt" 2>&1 || true
dbs=""
for i in 0 1 2; do
  db=$(ctl --endpoints="${S}127.0.0.1:${CPORTS[$i]}" endpoint status -w fields 2>/dev/null | awk -F' : ' '/^"DBSize"/{printf "%.1fMiB", $2/1048576}')
  dbs+="${NAMES[$i]}=$db "
done
log "db sizes after the runs: $dbs(status table in $RESULTS/endpoint-status.txt)"
