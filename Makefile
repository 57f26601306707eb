# coffer — build, run and test targets. Everything the project needs is
# installed from here (Go modules through the module proxy, protoc and
# haproxy from Debian's packages), never by hand.

GO        ?= go
BIN       := bin/coffer
TOOLS     := $(CURDIR)/.tools
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
GHZ_VERSION                := v0.93.0
# -p 1: one package at a time. The cluster suites measure failover and
# check timing-sensitive promises; two of them sharing 2 cores starve each
# other's Raft heartbeats into spurious elections.
TEST_FLAGS ?= -race -count=1 -p 1 -timeout=20m

API_PROTOS := $(wildcard api/proto/coffer/v1/*.proto)
FSM_PROTOS := $(wildcard fsm/fsmpb/*.proto)

.PHONY: all build run test test-deps bench bench-database bench-figures bench-protocols etcd-figures compare-figures proto proto-check lint fmt tools clean

all: build

## build: the coffer binary, statically linked, in bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/coffer

## run: build and start a dev server (in-memory-style temp dir, auto-unsealed)
run: build
	./$(BIN) server -dev

## test: vet, gofmt check and every test with the race detector
test: test-deps
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed on:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) test $(TEST_FLAGS) ./...

## test-deps: what the tests run besides Go: haproxy (Debian's package) for
## integration/haproxy_test.go, and PostgreSQL (Debian's postgresql package)
## for internal/pgtest's users (server/database). Installed when missing;
## where they cannot be (not root), those tests skip, except under CI=true,
## where this fails.
test-deps:
	@command -v haproxy >/dev/null || { apt-get update -qq && apt-get install -y -qq haproxy; } || \
	  { test "$$CI" != true && echo "haproxy is not installed and could not be: the HAProxy tests will skip"; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } || \
	  { test "$$CI" != true && echo "PostgreSQL is not installed and could not be: the PostgreSQL tests will skip"; }

## bench: the Go benchmarks of the hot paths
bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

## bench-database: the database engine's figures of docs/BENCHMARKS.md on a
## three-node in-process cluster with a local PostgreSQL: creds and
## revocations per second, and the first revocation after a leader kill with
## 100,000 live leases (LEASES=N to change it; about 3 minutes)
bench-database: test-deps
	COFFER_DB_BENCH=1 COFFER_DB_BENCH_LEASES=$(or $(LEASES),100000) $(GO) test -run 'TestBenchDatabase' -count=1 -v -timeout 30m ./integration/ | grep -E 'FIGURE|^(---|ok|FAIL)'

## bench-figures: the table of docs/BENCHMARKS.md, measured on a local
## three-node TLS cluster with coffer bench and ghz (about 5 minutes; needs
## jq); INSECURE=1 measures the plaintext comparison rows
bench-figures: build
	GOBIN=$(TOOLS) $(GO) install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)
	GHZ=$(TOOLS)/ghz scripts/bench-figures.sh

## bench-protocols: the KV rows over gRPC and over the Vault-compatible HTTP
## API side by side (coffer bench -protocol=http), through a follower and
## the leader, 16 and 64 clients, on one local three-node TLS cluster
## (about 5 minutes; needs jq; RUNS and DURATION as for bench-figures)
bench-protocols: build
	scripts/bench-protocols.sh

## etcd-figures: the same rows for etcd v3.7.1 on this machine, with etcd's
## own benchmark tool (builds etcd from the module proxy into .tools/etcd),
## over TLS with certificates from bin/coffer cert; INSECURE=1: plaintext
etcd-figures: build
	test -x $(TOOLS)/etcd/bin/benchmark || scripts/etcd-build.sh
	RUNS=$${RUNS:-3} scripts/etcd-figures.sh

## compare-figures: coffer and etcd v3.7.1 in one run, both with TLS on
## client and peer traffic: the goal rows of issue 16, the scale rows at
## SIZES keys stored (default "1000 100000 1000000"), restart and join
## times, snapshot sizes, RSS, CPU, bytes and fsyncs per write; medians of
## RUNS (3) runs of DURATION (15) s. Writes bin/compare-figures.json, .md
## and bin/scale.png (needs jq; strace for the fsyncs; about 35 minutes)
compare-figures: build
	test -x $(TOOLS)/etcd/bin/benchmark || scripts/etcd-build.sh
	scripts/compare-figures.sh

## lint: gofmt and go vet
lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	$(GO) vet ./...

fmt:
	gofmt -w .

## tools: the pinned protobuf generators (protoc itself comes from Debian's protobuf-compiler)
tools:
	@command -v protoc >/dev/null || { apt-get update -qq && apt-get install -y -qq protobuf-compiler; }
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

## proto: regenerate the committed Go code from the .proto files
proto: tools
	PATH=$(TOOLS):$$PATH protoc -I api/proto --go_out=. --go_opt=module=coffer \
		--go-grpc_out=. --go-grpc_opt=module=coffer $(API_PROTOS)
	PATH=$(TOOLS):$$PATH protoc -I . --go_out=. --go_opt=module=coffer $(FSM_PROTOS)

## proto-check: fail when the committed generated code is not what `make proto` makes
proto-check: proto
	@git diff --exit-code --stat -- api/cofferpb fsm/fsmpb || { echo "generated protobuf code is out of date: run make proto and commit the result"; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- api/cofferpb fsm/fsmpb)" || { git status --short -- api/cofferpb fsm/fsmpb; echo "make proto wrote files that are not committed: commit them"; exit 1; }

clean:
	rm -rf bin $(TOOLS)

## ---- docker-compose: a three-node cluster on a private network ----------
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_NODES := coffer1 coffer2 coffer3
COMPOSE_ADDRS := 127.0.0.1:8400 127.0.0.1:8410 127.0.0.1:8420
# The compose cluster's certificates (git-ignored): the CA key apart, ca.crt
# and the client certificate root for the CLI, and one directory per node
# (ca.crt, node.crt, node.key) that its container mounts read-only.
CERTS  := .coffer/certs
CA_KEY := .coffer/ca.key

.PHONY: docker docker-upgrade-from compose-certs compose-up compose-init compose-down chaos chaos-long

## IMAGE: the tag `make docker` builds and the chaos suite runs
IMAGE ?= coffer:dev

## docker: the $(IMAGE) image, FROM scratch around the static binary
docker: build
	docker build -q -t $(IMAGE) .

## UPGRADE_FROM: the oldest commit upgrades are promised from (docs/OPERATIONS.md)
UPGRADE_FROM ?= e65a302

## docker-upgrade-from: the image of UPGRADE_FROM (coffer:upgrade-from), built
## in a temporary git worktree, for the rolling upgrade of make chaos-long
docker-upgrade-from:
	@tree=$$(mktemp -d) && rmdir $$tree && git worktree add -q --detach $$tree $(UPGRADE_FROM) && \
	  $(MAKE) -C $$tree build && docker build -q -t coffer:upgrade-from $$tree; \
	  rc=$$?; git worktree remove --force $$tree; exit $$rc

## compose-certs: the compose cluster's CA, a node certificate per node (its
## service name, localhost, 127.0.0.1) and the client certificate root, in
## .coffer/; existing ones are kept (a node's is remade when the CA changed)
compose-certs: build
	@test -f $(CERTS)/ca.crt || ./$(BIN) cert create-ca -certs-dir=$(CERTS) -ca-key=$(CA_KEY)
	@for n in $(COMPOSE_NODES); do \
	  test -f $(CERTS)/$$n/node.crt && cmp -s $(CERTS)/ca.crt $(CERTS)/$$n/ca.crt && continue; \
	  mkdir -p -m 700 $(CERTS)/$$n && cp $(CERTS)/ca.crt $(CERTS)/$$n/ca.crt && \
	  ./$(BIN) cert create-node -overwrite -certs-dir=$(CERTS)/$$n -ca-key=$(CA_KEY) $$n localhost 127.0.0.1 || exit 1; \
	done
	@test $(CERTS)/client.root.crt -nt $(CERTS)/ca.crt || \
	  ./$(BIN) cert create-client -overwrite -certs-dir=$(CERTS) -ca-key=$(CA_KEY) root

## compose-up: build the binary, the certificates and the image, start three TLS nodes
compose-up: docker compose-certs
	@test -f .env || { umask 077; echo "COFFER_CLUSTER_KEY=$$(head -c 32 /dev/urandom | base64)" > .env; echo "wrote .env with a fresh cluster key"; }
	$(COMPOSE) up -d --no-build
	@for a in $(COMPOSE_ADDRS); do \
	  for i in $$(seq 1 100); do ./$(BIN) healthcheck -certs-dir=$(CERTS) -address=$$a >/dev/null 2>&1 && break; sleep 0.2; done; \
	  ./$(BIN) healthcheck -certs-dir=$(CERTS) -address=$$a >/dev/null || { echo "node $$a did not come up: $(COMPOSE) logs"; exit 1; }; \
	done
	@echo "cluster up: export COFFER_ADDR=$$(echo $(COMPOSE_ADDRS) | tr ' ' ,) COFFER_CACERT=$(CURDIR)/$(CERTS)/ca.crt"

## compose-init: init once with the client certificate root (output in
## .coffer-init.json, mode 0600), unseal every node
compose-init: build
	@for i in $$(seq 1 150); do ./$(BIN) status -certs-dir=$(CERTS) -address=127.0.0.1:8400 -format=json 2>/dev/null | grep -q '"leader_id": "coffer' && break; sleep 0.2; done
	@if ./$(BIN) status -certs-dir=$(CERTS) -address=127.0.0.1:8400 -format=json | grep -q '"initialized": false'; then \
	  umask 077; ./$(BIN) operator init -certs-dir=$(CERTS) -address=127.0.0.1:8400 -format=json > .coffer-init.json.tmp && mv .coffer-init.json.tmp .coffer-init.json; \
	  echo "initialized: shares and root token in .coffer-init.json (keep it safe)"; \
	fi
	@test -f .coffer-init.json || { echo "cluster is initialized but .coffer-init.json is missing: unseal by hand with coffer operator unseal"; exit 1; }
	@keys=$$(sed -n '/unseal_keys_b64/,/]/p' .coffer-init.json | grep -o '"[A-Za-z0-9+/=]*"' | tr -d '"' | head -3); \
	for a in $(COMPOSE_ADDRS); do \
	  for k in $$keys; do ./$(BIN) operator unseal -certs-dir=$(CERTS) -address=$$a $$k >/dev/null || exit 1; done; \
	  ./$(BIN) status -certs-dir=$(CERTS) -address=$$a >/dev/null && echo "unsealed $$a"; \
	done
	@echo "root token: the root_token field of .coffer-init.json"

## chaos: the docker chaos suite (leader kill, pause, partition, quorum loss,
## graceful and rolling restarts) against $(IMAGE)
chaos: docker
	rm -f bin/chaos-*.png
	COFFER_CHAOS=1 COFFER_CHAOS_IMAGE=$(IMAGE) COFFER_CHAOS_OUT=$(CURDIR)/bin/chaos-figures.json $(GO) test -race -count=1 -timeout=20m -run '^TestDocker' ./integration/chaos/
	@cat bin/chaos-figures.json
	@ls -l bin/chaos-*.png

## chaos-long: the docker chaos suite with its long runs (COFFER_CHAOS_LONG=1:
## 100 leader kills, ten leader pauses each of 2, 5 and 20 s, a seeded
## schedule of 80 faults, the memory limit, the rolling upgrade from
## UPGRADE_FROM), for the record in docs/CHAOS.md
chaos-long: docker docker-upgrade-from
	rm -f bin/chaos-*.png
	COFFER_CHAOS=1 COFFER_CHAOS_LONG=1 COFFER_CHAOS_IMAGE=$(IMAGE) COFFER_CHAOS_OUT=$(CURDIR)/bin/chaos-figures-long.json $(GO) test -race -count=1 -timeout=90m -run '^TestDocker' ./integration/chaos/
	@cat bin/chaos-figures-long.json

## compose-down: stop and remove the containers, the network and the volumes
compose-down:
	$(COMPOSE) down -v --remove-orphans
