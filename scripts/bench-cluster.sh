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
# Ports: API 8510/8520/8530, Raft 85x1, gossip 85x2, pprof 85x3.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/coffer}

if [ "${1:-}" = stop ]; then
  dir=${2:-/tmp/coffer-bench}
  for i in 1 2 3; do
    [ -f "$dir/n$i.pid" ] && kill "$(cat "$dir/n$i.pid")" 2>/dev/null || true
  done
  for i in 1 2 3; do
    [ -f "$dir/n$i.pid" ] || continue
    pid=$(cat "$dir/n$i.pid")
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -rf "$dir"
  exit 0
fi

dir=${1:-/tmp/coffer-bench}
[ -x "$BIN" ] || { echo "no $BIN: run make build first" >&2; exit 1; }
[ -e "$dir" ] && { echo "$dir exists: stop the old cluster with $0 stop $dir" >&2; exit 1; }
mkdir -p "$dir"
umask 077
# The gossip key every node of a cluster needs (never printed).
COFFER_CLUSTER_KEY=${COFFER_CLUSTER_KEY:-$(head -c 32 /dev/urandom | base64)}
export COFFER_CLUSTER_KEY
if [ "${INSECURE:-}" = 1 ]; then
  scheme=http://
  security=(-insecure)
  client=()
else
  scheme=
  certs=$dir/certs
  "$BIN" cert create-ca -certs-dir="$certs" -ca-key="$dir/ca.key" >/dev/null
  "$BIN" cert create-node -certs-dir="$certs" -ca-key="$dir/ca.key" localhost 127.0.0.1 >/dev/null
  "$BIN" cert create-client -certs-dir="$certs" -ca-key="$dir/ca.key" root >/dev/null
  security=(-certs-dir="$certs")
  # ca.crt and client.root.crt/.key: operator init requires the client
  # certificate on a TLS node.
  client=(-certs-dir="$certs")
fi
# Builds older than the metrics (issue 15) have no -metrics-addr: the A/B
# of what metrics cost runs one of them.
has_metrics=
"$BIN" server -h 2>&1 | grep -q -- -metrics-addr && has_metrics=1
for i in 1 2 3; do
  metrics_flag=()
  [ -n "$has_metrics" ] && metrics_flag=(-metrics-addr=127.0.0.1:85${i}5)
  "$BIN" server -node-id=n$i -data-dir="$dir/n$i" -api-addr=127.0.0.1:85${i}0 \
    -raft-addr=127.0.0.1:85${i}1 -gossip-addr=127.0.0.1:85${i}2 -pprof-addr=127.0.0.1:85${i}3 -http-addr=127.0.0.1:85${i}4 "${metrics_flag[@]}" \
    -bootstrap-expect=3 -join=127.0.0.1:8512,127.0.0.1:8522,127.0.0.1:8532 \
    -log-level=warn "${security[@]}" ${SERVER_FLAGS:-} >"$dir/n$i.log" 2>&1 &
  echo $! >"$dir/n$i.pid"
done
addrs="${scheme}127.0.0.1:8510,${scheme}127.0.0.1:8520,${scheme}127.0.0.1:8530"
# A node that cannot start (a port in use by another cluster) exits at once.
for _ in $(seq 1 10); do
  for i in 1 2 3; do
    if ! kill -0 "$(cat "$dir/n$i.pid")" 2>/dev/null; then
      echo "node n$i did not start: $(tail -n 3 "$dir/n$i.log")" >&2
      echo "(another cluster on ports 85x0-85x3? stop it with $0 stop)" >&2
      "$0" stop "$dir"
      exit 1
    fi
  done
  sleep 0.1
done
for _ in $(seq 1 150); do
  "$BIN" operator init "${client[@]}" -address="$addrs" -format=json >"$dir/init.json" 2>"$dir/init.err" && break
  sleep 0.2
done
[ -s "$dir/init.json" ] || { echo "init failed: $(cat "$dir/init.err")" >&2; exit 1; }
token=$(sed -n 's/.*"root_token": *"\([^"]*\)".*/\1/p' "$dir/init.json")
mapfile -t shares < <(tr -d '\n ' <"$dir/init.json" | sed 's/.*"unseal_keys_b64":\[\([^]]*\)\].*/\1/' | tr ',' '\n' | tr -d '"')
for i in 1 2 3; do
  for k in 0 1 2; do
    printf '%s\n' "${shares[$k]}" | "$BIN" operator unseal "${client[@]}" -address="${scheme}127.0.0.1:85${i}0" >/dev/null
  done
done
for i in 1 2 3; do
  for _ in $(seq 1 100); do "$BIN" healthcheck "${client[@]}" -address="${scheme}127.0.0.1:85${i}0" >/dev/null 2>&1 && break; sleep 0.1; done
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
