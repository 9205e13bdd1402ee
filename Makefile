# Flotilla: operate a fleet of Istio service meshes.
#   make run    start the management plane on the embedded defaults
#   make test   build what the tests need and run every test
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X flotilla.io/flotilla/internal/cli.Version=$(VERSION)

# Code generators, pinned; installed into bin/ by `make tools`.
BUF_VERSION            := v1.75.0
PROTOC_GEN_GO_VERSION  := v1.36.12
CONNECT_GO_VERSION     := v1.21.1

include tools/localfleet/localfleet.mk

.PHONY: all build run test test-short generate tools lint clean bench bench-smoke ui image image-check image-test image-lint

all: build

# The web UI: React + TypeScript + Vite sources in web/, built into
# internal/ui/static/app, which go build embeds. npm ci installs exactly
# the committed lockfile.
UI         := internal/ui/static/app/index.html
UI_SOURCES := $(shell find web/src -type f 2>/dev/null) web/index.html web/vite.config.ts web/tsconfig.json

## ui: build the web UI (embedded by the next go build)
ui: $(UI)

$(UI): web/node_modules/.stamp $(UI_SOURCES)
	cd web && npm run build

web/node_modules/.stamp: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $@

## build: bin/flotilla, with the web UI
build: $(UI)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/flotilla ./cmd/flotilla

## run: the server on the embedded SQLite store, plus a local fleet of two clusters with istiod
run: build fleet-istio
	./scripts/run.sh

## test: every test, with the race detector, against a real local fleet and PostgreSQL,
## then the local fleet's own tests (its module is separate), then every benchmark once
test: $(UI) fleet-workloads fleet-istio $(BIN)/dex $(BIN)/externaldns-crd.yaml
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) --no-print-directory fleet-test
	$(MAKE) --no-print-directory image-test
	$(MAKE) --no-print-directory bench-smoke

# The container image (docs/install.md, "Images"), built by tools/image,
# its own module so that go-containerregistry stays out of go.mod. Every
# timestamp in it is the commit's time, so one commit gives one digest.
IMAGE_DIR         := $(BIN)/image
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
REVISION          ?= $(shell git rev-parse HEAD 2>/dev/null)
IMAGE_FLAGS        = -root $(CURDIR) -version $(VERSION) -revision '$(REVISION)' -epoch $(SOURCE_DATE_EPOCH)

## image: the OCI image index of flotilla (linux/amd64, linux/arm64) in bin/image/oci, SBOMs in
## bin/image/sbom; no Docker engine. make image REGISTRY=host/repo[:tag] also pushes it
image: $(UI)
	cd tools/image && $(GO) run . $(IMAGE_FLAGS) -out $(IMAGE_DIR) $(if $(REGISTRY),-push $(REGISTRY))

## image-check: build the image twice, the second time from an empty Go build cache, and compare
## the digests (about 6 minutes on 2 cores: both architectures compile from scratch)
image-check: image
	@cache=$$(mktemp -d) && trap 'rm -rf "$$cache"' EXIT && \
	  (cd tools/image && GOCACHE=$$cache $(GO) run . $(IMAGE_FLAGS) -out $(IMAGE_DIR)-check) && \
	  if cmp -s $(IMAGE_DIR)/digest $(IMAGE_DIR)-check/digest; then echo "reproducible: $$(cat $(IMAGE_DIR)/digest)"; \
	  else echo "not reproducible: $$(cat $(IMAGE_DIR)/digest) vs $$(cat $(IMAGE_DIR)-check/digest)"; exit 1; fi

## image-test: the image builder's tests (two builds of both architectures, a loopback registry)
image-test: $(UI)
	cd tools/image && $(GO) test -count=1 -timeout 20m ./...

image-lint:
	@out=$$(gofmt -l tools/image); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	cd tools/image && $(GO) vet ./...

## bench-smoke: every benchmark once (-benchtime 1x), so that benchmark code cannot rot (about 4 minutes)
bench-smoke:
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 15m ./bench/...

## test-short: unit tests only (no fleet, no database)
test-short:
	$(GO) test -count=1 ./internal/selector/... ./internal/schema/... ./internal/resource/...

## bench: the benchmarks under bench/, each with the sample size docs/benchmarks.md records
## (a long run: the fleet-scale one alone takes tens of minutes); one package: make bench BENCH=gslb.
## FLOTILLA_BENCH_FULL=1 gives the benchmarks that read it their documented sizes (bench-smoke runs small ones)
BENCH_RUNS := apply:2000x fanout:50x propagation:50x fleetscale:10x registry:100x discovery:30x discoveryscale:3000x settings:30x gslb:20x edge:20x agent:3x istiorender:20x istioinstall:5x
BENCH      ?= $(foreach r,$(BENCH_RUNS),$(firstword $(subst :, ,$(r))))
bench: fleet-workloads
	@set -e; for r in $(BENCH_RUNS); do pkg=$${r%%:*}; n=$${r##*:}; \
	  case " $(BENCH) " in *" $$pkg "*) ;; *) continue;; esac; \
	  echo "== bench/$$pkg ($$n)"; \
	  FLOTILLA_BENCH_FULL=1 $(GO) test -run '^$$' -bench . -benchtime $$n -timeout 60m ./bench/$$pkg/; \
	done

$(BIN)/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-connect-go:
	GOBIN=$(BIN) $(GO) install connectrpc.com/connect/cmd/protoc-gen-connect-go@$(CONNECT_GO_VERSION)

# Dex, the OIDC provider the end-to-end tests log people in through, built
# from its pinned module (tools/dex) like the local fleet's binaries.
$(BIN)/dex: tools/dex/go.mod tools/dex/go.sum
	cd tools/dex && $(GO) build -trimpath -ldflags '-s -w' -o $@ github.com/dexidp/dex/cmd/dex
	touch $@

# external-dns's DNSEndpoint CRD, from its pinned release, for the GSLB
# end-to-end test (installed into a local-fleet API server).
TMPDIR ?= /tmp
EXTERNAL_DNS_VERSION := v0.20.0
$(BIN)/externaldns-crd.yaml:
	dir=$$(cd $(TMPDIR) && $(GO) mod download -json sigs.k8s.io/external-dns@$(EXTERNAL_DNS_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p') && \
	install -D -m 0644 "$$dir/config/crd/standard/dnsendpoints.externaldns.k8s.io.yaml" $@

## tools: the pinned code generators
tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-connect-go

## generate: regenerate gen/ from api/ (checked in; CI fails when it differs)
generate: tools web/node_modules/.stamp
	rm -rf gen web/src/gen
	cd api && $(BIN)/buf lint && $(BIN)/buf generate
	cd web && npm run generate

## lint: gofmt and go vet, here and in the local fleet's and the image builder's modules
# vet -race compiles the dependencies as `make test` does, so the test run
# reuses them (docs/benchmarks.md: a cold build saves about 2 minutes).
lint: fleet-lint image-lint
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^tools/')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -race ./...

clean:
	rm -rf $(BIN) flotilla-data .run web/node_modules internal/ui/static/app
