#!/usr/bin/env bash
# bench-cluster.sh: start three coffer nodes on loopback for the figures of
# docs/BENCHMARKS.md, initialize and unseal them, and print the environment
# for `coffer bench`. Stop them with `scripts/bench-cluster.sh stop`.
#
#   scripts/bench-cluster.sh [DIR]     start (DIR default /tmp/coffer-bench)
#   scripts/bench-cluster.sh stop [DIR]
#
# The nodes run with TLS (API over TLS, Raft and peer calls over mutual
# TLS): the built binary makes a CA (key DIR/ca.key), one node certificate
# for localhost and 127.0.0.1 and the client certificate root in DIR/certs,
# and DIR/env exports COFFER_CACERT, COFFER_CLIENT_CERT and
# COFFER_CLIENT_KEY. INSECURE=1 runs them -insecure instead (plaintext, the
# comparison rows of docs/BENCHMARKS.md): addresses then carry http://.
# DIR/env also exports COFFER_BENCH_SCHEME, the prefix of a node's address
# ("" or "http://"), for scripts that address one node.
# SERVER_FLAGS adds flags to every node, e.g.
# SERVER_FLAGS="-raft-snapshot-interval=10s" scripts/bench-cluster.sh
#
# Ports: API 8510/8520/8530, Raft 85x1, gossip 85x2, pprof 85x3, HTTP 85x4,
# metrics 85x5. PORTS=274 moves them to 274x0-274x5 (API 27410/27420/27430),
# for a second cluster beside the first.
#
# A cluster that holds a preload is worth keeping: KEEP=1 with stop stops
# the nodes and leaves DIR as it is (data, certificates, the shares in
# init.json, the gossip key), and FROM=DIR starts a new cluster on a copy
# of it (same PORTS: Raft's membership names the addresses), unsealed with
# its shares, instead of a fresh one:
#
#   PORTS=274 scripts/bench-cluster.sh /tmp/c1m && source /tmp/c1m/env &&
#     coffer bench preload -keys=1000000 && KEEP=1 scripts/bench-cluster.sh stop /tmp/c1m
#   PORTS=274 FROM=/tmp/c1m scripts/bench-cluster.sh /tmp/run1   # as often as needed
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/coffer}
P=${PORTS:-85}

if [ "${1:-}" = stop ]; then
  dir=${2:-/tmp/coffer-bench}
  for i in 1 2 3; do
    [ -f "$dir/n$i.pid" ] && kill "$(cat "$dir/n$i.pid")" 2>/dev/null || true
  done
  for i in 1 2 3; do
    [ -f "$dir/n$i.pid" ] || continue
    pid=$(cat "$dir/n$i.pid")
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  if [ "${KEEP:-}" = 1 ]; then
    rm -f "$dir"/n?.pid
  else
    rm -rf "$dir"
  fi
  exit 0
fi

dir=${1:-/tmp/coffer-bench}
[ -x "$BIN" ] || { echo "no $BIN: run make build first" >&2; exit 1; }
[ -e "$dir" ] && { echo "$dir exists: stop the old cluster with $0 stop $dir" >&2; exit 1; }
from=${FROM:-}
if [ -n "$from" ]; then
  [ -s "$from/init.json" ] && [ -s "$from/cluster.key" ] || { echo "$from holds no kept cluster (init.json, cluster.key)" >&2; exit 1; }
  ls "$from"/n?.pid >/dev/null 2>&1 && { echo "$from is running: stop it with KEEP=1 $0 stop $from" >&2; exit 1; }
  cp -a "$from" "$dir"
  # Each file again, emptied first and written a page (4 KiB) at a time,
  # as bbolt and raft-wal write: cp's large writes leave a file in large
  # page-cache folios, into which ext4 takes a page write at several times
  # the cost (fsm/bench_test.go, copyFile), which no node that wrote its
  # own files pays.
  find "$dir" -type f -size +1M -print0 | while IFS= read -r -d '' f; do
    : >"$f"
    dd if="$from/${f#"$dir"/}" of="$f" bs=4096 conv=notrunc status=none
  done
fi
mkdir -p "$dir"
umask 077
# The gossip key every node of a cluster needs (never printed; kept in the
# cluster's directory, mode 0600, for FROM).
if [ -n "$from" ]; then
  COFFER_CLUSTER_KEY=$(cat "$dir/cluster.key")
else
  COFFER_CLUSTER_KEY=${COFFER_CLUSTER_KEY:-$(head -c 32 /dev/urandom | base64)}
  printf '%s\n' "$COFFER_CLUSTER_KEY" >"$dir/cluster.key"
fi
export COFFER_CLUSTER_KEY
if [ "${INSECURE:-}" = 1 ]; then
  scheme=http://
  security=(-insecure)
  client=()
else
  scheme=
  certs=$dir/certs
  if [ -z "$from" ]; then
    "$BIN" cert create-ca -certs-dir="$certs" -ca-key="$dir/ca.key" >/dev/null
    "$BIN" cert create-node -certs-dir="$certs" -ca-key="$dir/ca.key" localhost 127.0.0.1 >/dev/null
    "$BIN" cert create-client -certs-dir="$certs" -ca-key="$dir/ca.key" root >/dev/null
  fi
  security=(-certs-dir="$certs")
  # ca.crt and client.root.crt/.key: operator init requires the client
  # certificate on a TLS node.
  client=(-certs-dir="$certs")
fi
# Builds older than the metrics (issue 15) have no -metrics-addr: the A/B
# of what metrics cost runs one of them.
has_metrics=
# (Not a pipe into grep -q: under pipefail the usage's exit status, or
# SIGPIPE, failed it and the nodes took the default metrics port.)
server_help=$("$BIN" server -h 2>&1 || true)
[[ $server_help == *-metrics-addr* ]] && has_metrics=1
for i in 1 2 3; do
  metrics_flag=()
  [ -n "$has_metrics" ] && metrics_flag=(-metrics-addr=127.0.0.1:$P${i}5)
  "$BIN" server -node-id=n$i -data-dir="$dir/n$i" -api-addr=127.0.0.1:$P${i}0 \
    -raft-addr=127.0.0.1:$P${i}1 -gossip-addr=127.0.0.1:$P${i}2 -pprof-addr=127.0.0.1:$P${i}3 -http-addr=127.0.0.1:$P${i}4 "${metrics_flag[@]}" \
    -bootstrap-expect=3 -join=127.0.0.1:${P}12,127.0.0.1:${P}22,127.0.0.1:${P}32 \
    -log-level=warn "${security[@]}" ${SERVER_FLAGS:-} >"$dir/n$i.log" 2>&1 &
  echo $! >"$dir/n$i.pid"
done
addrs="${scheme}127.0.0.1:${P}10,${scheme}127.0.0.1:${P}20,${scheme}127.0.0.1:${P}30"
# A node that cannot start (a port in use by another cluster) exits at once.
for _ in $(seq 1 10); do
  for i in 1 2 3; do
    if ! kill -0 "$(cat "$dir/n$i.pid")" 2>/dev/null; then
      echo "node n$i did not start: $(tail -n 3 "$dir/n$i.log")" >&2
      echo "(another cluster on ports ${P}x0-${P}x5? stop it with $0 stop)" >&2
      "$0" stop "$dir"
      exit 1
    fi
  done
  sleep 0.1
done
if [ -z "$from" ]; then
  for _ in $(seq 1 150); do
    "$BIN" operator init "${client[@]}" -address="$addrs" -format=json >"$dir/init.json" 2>"$dir/init.err" && break
    sleep 0.2
  done
  [ -s "$dir/init.json" ] || { echo "init failed: $(cat "$dir/init.err")" >&2; exit 1; }
fi
token=$(sed -n 's/.*"root_token": *"\([^"]*\)".*/\1/p' "$dir/init.json")
mapfile -t shares < <(tr -d '\n ' <"$dir/init.json" | sed 's/.*"unseal_keys_b64":\[\([^]]*\)\].*/\1/' | tr ',' '\n' | tr -d '"')
for i in 1 2 3; do
  for k in 0 1 2; do
    for _ in $(seq 1 300); do
      printf '%s\n' "${shares[$k]}" | "$BIN" operator unseal "${client[@]}" -address="${scheme}127.0.0.1:$P${i}0" >/dev/null 2>&1 && break
      sleep 0.2
    done
  done
done
for i in 1 2 3; do
  for _ in $(seq 1 600); do "$BIN" healthcheck "${client[@]}" -address="${scheme}127.0.0.1:$P${i}0" >/dev/null 2>&1 && break; sleep 0.1; done
done
{
  echo "export COFFER_ADDR=$addrs"
  echo "export COFFER_TOKEN=$token"
  echo "export COFFER_BENCH_SCHEME=$scheme"
  if [ -z "$scheme" ]; then
    echo "export COFFER_CACERT=$certs/ca.crt"
    echo "export COFFER_CLIENT_CERT=$certs/client.root.crt"
    echo "export COFFER_CLIENT_KEY=$certs/client.root.key"
  fi
} >"$dir/env"
echo "three nodes up in $dir ($([ -z "$scheme" ] && echo TLS || echo "plaintext, -insecure")); for coffer bench: source $dir/env" >&2
# shellcheck disable=SC1091
(source "$dir/env" && "$BIN" operator members >&2) || true
