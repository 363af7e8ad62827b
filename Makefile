# Tessera's developer entry points. Everything runs from the workspace root.
SHELL := /bin/bash
GO ?= go
# Every module of the workspace, as package patterns.
MODULES := $(shell $(GO) list -m -f '{{.Dir}}/...' 2>/dev/null)
# Tools live in their own module so they do not move the services' versions.
TOOL = GOWORK=off $(GO) -C tools tool

.PHONY: build image test test-short test-sharded test-compat test-large test-containers nemesis fuzz generate generate-check lint bench dev

# The version is the git revision (with -dirty for uncommitted changes):
# the same tree gives the same tag.
VERSION ?= $(shell git describe --always --dirty --abbrev=12 2>/dev/null || echo devel)
LDFLAGS := -s -w -X main.version=$(VERSION)

build:
	mkdir -p bin
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/tessera ./cmd/tessera

# The container image tessera:$(VERSION) (also tagged tessera:latest): a
# static binary built here, copied into an image FROM scratch
# (deploy/image/Dockerfile), so nothing is pulled from a registry.
IMAGE ?= tessera
image:
	rm -rf build/image && mkdir -p build/image/tmp build/image/data
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o build/image/tessera ./cmd/tessera
	cp /etc/ssl/certs/ca-certificates.crt deploy/image/Dockerfile build/image/
	chmod 1777 build/image/tmp
	docker build -q -t $(IMAGE):$(VERSION) -t $(IMAGE):latest build/image
	@echo "built $(IMAGE):$(VERSION)"

# test/k8s (Kubernetes' storage conformance tests) and test/kubeapiserver (a
# real kube-apiserver on Tessera) are modules outside the workspace, so that
# Kubernetes' dependency versions stay out of the services.
K8S_TEST = cd test/k8s && GOWORK=off $(GO)
APISERVER_TEST = cd test/kubeapiserver && GOWORK=off $(GO)

test:
	$(GO) test -count=1 -timeout 20m $(MODULES)
	$(K8S_TEST) test -count=1 -timeout 15m ./...
	$(APISERVER_TEST) test -count=1 -timeout 20m ./...

# The compatibility suites again on a store cut into shards: Kubernetes'
# storage conformance with the kubernetes pre-split plus splits inside the
# keys its tests use, and the real kube-apiserver on the kubernetes
# pre-split (the differential test and test/integration's shard tests run
# on several shards in make test already).
SPLIT_KEYS ?= kubernetes,/pods/m,/pods/s
test-sharded:
	cd test/k8s && TESSERA_SPLIT_KEYS='$(SPLIT_KEYS)' GOWORK=off $(GO) test -count=1 -timeout 15m ./...
	cd test/kubeapiserver && TESSERA_SPLIT_KEYS=kubernetes GOWORK=off $(GO) test -count=1 -timeout 20m -run 'TestKubeAPIServer$$' ./...

test-short:
	$(GO) test -count=1 -short -timeout 10m $(MODULES)

# The differential test against embedded etcd, verbose so the log shows the
# random seed (rerun one with COMPAT_SEED=N).
COMPAT_SEED ?= 0
test-compat:
	$(GO) test -count=1 -v -timeout 10m -run 'TestDifferential|TestEdgeCases' ./test/etcdcompat/ -etcdcompat.seed=$(COMPAT_SEED)

# The large requests of the hardening work (a million-key del --prefix, a
# 200 000-key lease revoke, a txn of 128 values of 12 KiB, then a restart of
# every process) against tessera dev and a 3-process cluster: minutes.
test-large:
	$(GO) test -count=1 -v -timeout 20m -run 'TestLargeRequests' ./test/e2e/ -e2e.large

# The cluster of real hosts: the image, 3 replicas, 2 watchers and 2
# gateways as containers on a private Docker network, killed, partitioned
# and restarted under load (make test runs it too, for a minute of load;
# it skips without a Docker engine).
test-containers:
	NEMESIS_DURATION=$(NEMESIS_DURATION) $(GO) test -count=1 -v -timeout 20m ./test/containers/

# The fault tests (test/integration and test/e2e) under a longer load.
NEMESIS_DURATION ?= 60s
NEMESIS_TESTS := TestNemesis|TestWatchLatencyWhileAReplicaIsCutOff|TestProcessNemesis|TestNetworkNemesis
nemesis:
	NEMESIS_DURATION=$(NEMESIS_DURATION) $(GO) test -count=1 -v -timeout 60m -run '$(NEMESIS_TESTS)' ./test/integration/ ./test/e2e/

# Every fuzz target for FUZZTIME each (its seed corpus also runs in make test).
FUZZTIME ?= 20s
FUZZ_TARGETS := \
	./pkg/mvcc:FuzzApplyTxn \
	./pkg/mvcc:FuzzChangeRecord \
	./pkg/mvcc:FuzzStoredValues \
	./pkg/mvcc:FuzzSnapshotStream \
	./services/replica/internal/datasm:FuzzUpdate \
	./services/replica:FuzzInspectBackup \
	./services/gateway/internal/reqcheck:FuzzValidateThenApply \
	./test/integration:FuzzRESTBody
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; echo "== fuzz $$name ($$pkg, $(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

generate:
	GOWORK=off $$(GOWORK=off $(GO) -C tools tool -n buf) generate
	GOWORK=off $$(GOWORK=off $(GO) -C tools tool -n buf) lint

# CI: generated code must match the protos.
generate-check: generate
	git diff --exit-code -- proto
	test -z "$$(git status --porcelain -- proto)"

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.\(gw\.\)\?go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(MODULES)
	$(K8S_TEST) vet ./...
	$(APISERVER_TEST) vet ./...

bench:
	cd bench && $(GO) run . $(BENCHFLAGS)

dev: build
	./bin/tessera dev
