# Make fragment for the local fleet: etcd, kube-apiserver and localfleet in
# bin/, plus Istio's CRDs in bin/istio-crds.yaml, and istiod (fleet-istio).
#
# Include it from the top-level Makefile (`include tools/localfleet/localfleet.mk`)
# or use it alone from the repository root: `make -f tools/localfleet/localfleet.mk fleet`.
# Each binary is a real file target whose prerequisites are its module's
# go.mod, go.sum and Go sources, so `make fleet` rebuilds only what changed.
# A cold build of kube-apiserver takes minutes; see docs/benchmarks.md.

# When included, do not let `fleet` become the including Makefile's default goal.
LOCALFLEET_INCLUDED := $(filter-out 1,$(words $(MAKEFILE_LIST)))
LOCALFLEET_GOAL     := $(.DEFAULT_GOAL)

LOCALFLEET_DIR  := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
LOCALFLEET_ROOT := $(abspath $(LOCALFLEET_DIR)/../..)
LOCALFLEET_BIN  ?= $(LOCALFLEET_ROOT)/bin

# The checksum database has no entries for k8s.io/kubernetes and its staging
# modules; go.sum (committed) is what verifies them.
LOCALFLEET_GO := GONOSUMDB=k8s.io go

LOCALFLEET_K8S_VERSION := v1.36.3
LOCALFLEET_K8S_LDFLAGS := -s -w \
	-X k8s.io/component-base/version.gitVersion=$(LOCALFLEET_K8S_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 \
	-X k8s.io/component-base/version.gitMinor=36

LOCALFLEET_MOD      := $(LOCALFLEET_DIR)/go.mod $(LOCALFLEET_DIR)/go.sum
LOCALFLEET_ETCD_MOD := $(LOCALFLEET_DIR)/etcd/go.mod $(LOCALFLEET_DIR)/etcd/go.sum
LOCALFLEET_KWOK_MOD := $(LOCALFLEET_DIR)/kwok/go.mod $(LOCALFLEET_DIR)/kwok/go.sum
LOCALFLEET_ISTIO_MOD := $(LOCALFLEET_DIR)/istiod/go.mod $(LOCALFLEET_DIR)/istiod/go.sum
LOCALFLEET_SRC      := $(shell find $(LOCALFLEET_DIR) -name '*.go' -not -name '*_test.go' -not -path '$(LOCALFLEET_DIR)/etcd/*')
LOCALFLEET_ETCD_SRC := $(wildcard $(LOCALFLEET_DIR)/etcd/*.go)

.PHONY: fleet fleet-workloads fleet-istio fleet-bench fleet-clean fleet-lint fleet-test

## fleet: build bin/etcd, bin/kube-apiserver, bin/localfleet and bin/istio-crds.yaml
fleet: $(LOCALFLEET_BIN)/kube-apiserver $(LOCALFLEET_BIN)/etcd $(LOCALFLEET_BIN)/localfleet $(LOCALFLEET_BIN)/istio-crds.yaml

## fleet-workloads: fleet, plus what `localfleet --workloads` needs: kube-controller-manager, kube-scheduler, kwok and its stages
fleet-workloads: fleet $(LOCALFLEET_BIN)/kube-controller-manager $(LOCALFLEET_BIN)/kube-scheduler $(LOCALFLEET_BIN)/kwok $(LOCALFLEET_BIN)/kwok-stages.yaml

## fleet-istio: fleet, plus what `localfleet --istio` needs: istiod (pilot-discovery), built from the pinned istio.io/istio
fleet-istio: fleet $(LOCALFLEET_BIN)/istiod

# istiod is Istio's pilot-discovery under the name its processes go by. A
# cold build takes about 6 minutes on 2 cores; see docs/benchmarks.md.
$(LOCALFLEET_BIN)/istiod: $(LOCALFLEET_ISTIO_MOD)
	cd $(LOCALFLEET_DIR)/istiod && $(LOCALFLEET_GO) build -trimpath -ldflags '-s -w' -o $@ istio.io/istio/pilot/cmd/pilot-discovery
	touch $@

$(LOCALFLEET_BIN)/kube-apiserver $(LOCALFLEET_BIN)/kube-controller-manager $(LOCALFLEET_BIN)/kube-scheduler: $(LOCALFLEET_BIN)/%: $(LOCALFLEET_MOD)
	cd $(LOCALFLEET_DIR) && $(LOCALFLEET_GO) build -trimpath -ldflags '$(LOCALFLEET_K8S_LDFLAGS)' -o $@ k8s.io/kubernetes/cmd/$*
	touch $@

$(LOCALFLEET_BIN)/kwok: $(LOCALFLEET_KWOK_MOD)
	cd $(LOCALFLEET_DIR)/kwok && go build -trimpath -ldflags '-s -w' -o $@ sigs.k8s.io/kwok/cmd/kwok
	touch $@

# kwok's "fast" node and pod stages (what kwokctl installs by default), from
# the pinned kwok module: nodes become Ready at once, pods Running with an IP.
# The heartbeat stage posts a node's status only every 10 minutes and leaves
# the rest to the node's Lease, which kwok renews only when given
# --node-lease-duration-seconds (package cluster passes it; see workloads.go).
LOCALFLEET_KWOK_STAGES := node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
	pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml
$(LOCALFLEET_BIN)/kwok-stages.yaml: $(LOCALFLEET_KWOK_MOD)
	cd $(LOCALFLEET_DIR)/kwok && go mod download sigs.k8s.io/kwok
	dir=$$(cd $(LOCALFLEET_DIR)/kwok && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok) && \
	for f in $(LOCALFLEET_KWOK_STAGES); do echo "---"; cat "$$dir/kustomize/stage/$$f"; done > $@.tmp && mv $@.tmp $@

$(LOCALFLEET_BIN)/etcd: $(LOCALFLEET_ETCD_MOD) $(LOCALFLEET_ETCD_SRC)
	cd $(LOCALFLEET_DIR)/etcd && go build -trimpath -ldflags '-s -w' -o $@ .
	touch $@

$(LOCALFLEET_BIN)/localfleet: $(LOCALFLEET_MOD) $(LOCALFLEET_SRC)
	cd $(LOCALFLEET_DIR) && $(LOCALFLEET_GO) build -trimpath -o $@ .
	touch $@

# Istio's CRDs, from the istio.io/istio version istiod is built from (its
# base chart's crd-all.gen.yaml), so that the two never disagree.
$(LOCALFLEET_BIN)/istio-crds.yaml: $(LOCALFLEET_ISTIO_MOD)
	cd $(LOCALFLEET_DIR)/istiod && $(LOCALFLEET_GO) mod download istio.io/istio
	install -D -m 0644 "$$(cd $(LOCALFLEET_DIR)/istiod && $(LOCALFLEET_GO) list -m -f '{{.Dir}}' istio.io/istio)/manifests/charts/base/files/crd-all.gen.yaml" $@

## fleet-lint: gofmt and go vet of the local fleet's modules (not covered by ./... at the root)
# vet and the tests take -trimpath, as the binaries' builds do, so that all
# three share one compilation of the Kubernetes modules (2026-12-03, warm
# build cache: vet of the local fleet's module 10 s with it, 80 s without).
fleet-lint:
	@out=$$(gofmt -l $(LOCALFLEET_DIR)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	cd $(LOCALFLEET_DIR) && $(LOCALFLEET_GO) vet -trimpath ./...
	cd $(LOCALFLEET_DIR)/etcd && go vet -trimpath ./...

## fleet-test: tests of the local fleet's module (they start real clusters)
fleet-test: fleet-workloads fleet-istio
	cd $(LOCALFLEET_DIR) && $(LOCALFLEET_GO) test -trimpath ./...

## fleet-bench: start time, `up --clusters 2` time and idle RSS (docs/benchmarks.md, "Local fleet")
fleet-bench: fleet-workloads fleet-istio
	cd $(LOCALFLEET_DIR) && $(LOCALFLEET_GO) test -run '^$$' -bench 'StartOneCluster|UpTwoClusters' -benchtime 3x ./internal/fleet/
	cd $(LOCALFLEET_DIR) && $(LOCALFLEET_GO) test -run '^$$' -bench 'IdleClusterRSS' -benchtime 1x ./internal/fleet/

fleet-clean:
	rm -f $(addprefix $(LOCALFLEET_BIN)/,kube-apiserver etcd localfleet istio-crds.yaml kube-controller-manager kube-scheduler kwok kwok-stages.yaml istiod)

ifneq ($(LOCALFLEET_INCLUDED),)
.DEFAULT_GOAL := $(LOCALFLEET_GOAL)
endif
