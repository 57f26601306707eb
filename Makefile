# coffer — build, run and test targets. Everything the project needs is
# installed from here (Go modules through the module proxy, protoc from
# Debian's packages), never by hand.

GO        ?= go
BIN       := bin/coffer
TOOLS     := $(CURDIR)/.tools
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
TEST_FLAGS ?= -race -count=1 -timeout=15m

API_PROTOS := $(wildcard api/proto/coffer/v1/*.proto)
FSM_PROTOS := $(wildcard fsm/fsmpb/*.proto)

.PHONY: all build run test bench proto lint fmt tools clean

all: build

## build: the coffer binary, statically linked, in bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/coffer

## run: build and start a dev server (in-memory-style temp dir, auto-unsealed)
run: build
	./$(BIN) server -dev

## test: vet, gofmt check and every test with the race detector
test:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed on:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) test $(TEST_FLAGS) ./...

## bench: the Go benchmarks of the hot paths
bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

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

clean:
	rm -rf bin $(TOOLS)
