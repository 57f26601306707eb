#!/usr/bin/env bash
# etcd-build.sh: build etcd, etcdctl and etcd's `benchmark` tool
# (tools/benchmark) from the Go module proxy into .tools/etcd/bin (or
# $OUT/bin), for the same-machine comparison of docs/BENCHMARKS.md
# (scripts/etcd-figures.sh, `make etcd-figures`). Repeatable from scratch:
#   scripts/etcd-build.sh
# Needs: Go >= 1.26 (etcd v3.7.x go.mod says `go 1.26`) and a reachable GOPROXY.
# ETCD_VERSION overrides the version (default v3.7.1).
set -euo pipefail

ETCD_VERSION="${ETCD_VERSION:-v3.7.1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/.tools/etcd}"
BUILD="$OUT/build"
BIN="$OUT/bin"

export GOTOOLCHAIN=local          # never try to download another toolchain
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0              # as etcd's release binaries are built
# The module proxy is the environment's GOPROXY (go env), never named here.

go version
need_minor=26
have_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
if [ "$have_minor" -lt "$need_minor" ]; then
  echo "need Go >= 1.$need_minor, have $(go env GOVERSION)" >&2; exit 1
fi

start=$(date +%s)
rm -rf "$BUILD"
mkdir -p "$BUILD" "$BIN"
cd "$BUILD"

# Scratch module: `go install pkg@version` refuses etcd's modules because their
# go.mod files carry replace directives; requiring them from another module
# ignores those replaces and resolves every etcd sub-module from the proxy.
go mod init etcdbuild >/dev/null 2>&1

# - go.etcd.io/etcd/server/v3      : its root package is `package main` (the etcd server)
# - go.etcd.io/etcd/etcdctl/v3     : etcdctl (used by etcd-figures.sh for status/put)
# - go.etcd.io/etcd/v3/tools/benchmark : etcd's benchmark tool lives in the repo's ROOT
#   module (go.etcd.io/etcd/v3); there is no separate go.etcd.io/etcd/tools/v3 module
#   for v3.7.x on the proxy (the proxy answers 403 for tools/v3@v3.7.1).
go get \
  "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" \
  "go.etcd.io/etcd/etcdctl/v3@${ETCD_VERSION}" \
  "go.etcd.io/etcd/v3/tools/benchmark@${ETCD_VERSION}"

go build -trimpath -o "$BIN/etcd"      go.etcd.io/etcd/server/v3
go build -trimpath -o "$BIN/etcdctl"   go.etcd.io/etcd/etcdctl/v3
go build -trimpath -o "$BIN/benchmark" go.etcd.io/etcd/v3/tools/benchmark

end=$(date +%s)
echo "== built in $((end-start)) s"
"$BIN/etcd" --version
"$BIN/etcdctl" version
for b in etcd etcdctl benchmark; do
  echo "== $b"; go version -m "$BIN/$b" | grep -E '^\s+(path|mod|dep)\s+(go\.etcd\.io|google\.golang\.org/grpc\s)' || true
done
