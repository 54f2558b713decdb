# fast-sandbox — the commands a developer and CI run.
#
#   make up      bring up a local single-node cluster with fast-sandbox and run a sample sandbox
#   make test    verify generated code, then unit, integration and end-to-end tests

SHELL := /usr/bin/env bash
GO ?= go
K8S_VERSION ?= v1.37.2
OUTPUT := _output
BIN := $(OUTPUT)/bin
GOTEST_FLAGS ?=

.PHONY: all build generate verify test test-unit test-integration test-e2e \
	cluster-binaries cluster-up cluster-down images up down bench-e2e bench-interactive clean \
	install-plugin

all: build

build: ## Build the fast-sandbox binaries into _output/bin.
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ ./cmd/...

generate: ## Regenerate deepcopy, clientset, listers, informers and CRDs.
	hack/update-codegen.sh

verify: ## Fail if generated files are stale, gofmt, go vet or golangci-lint complain.
	hack/verify.sh

test: verify test-unit test-integration test-e2e ## Everything CI runs.

test-unit:
	$(GO) test $(GOTEST_FLAGS) -race -count=1 $$($(GO) list ./... | grep -v /test/)

test-integration:
	$(GO) test $(GOTEST_FLAGS) -race -count=1 -timeout 20m ./test/integration/...

test-e2e: cluster-binaries ## End-to-end tests on a local cluster they bring up (root).
	$(GO) test $(GOTEST_FLAGS) -race -count=1 -timeout 40m ./test/e2e/...

cluster-binaries: ## Build etcd and the Kubernetes binaries (cached outside the tree).
	hack/cluster/build-binaries.sh $(K8S_VERSION)

cluster-up: cluster-binaries ## Start the local single-node cluster.
	hack/cluster/up.sh

cluster-down: ## Stop the local cluster and remove every trace of it.
	hack/cluster/down.sh

images: ## Build the OCI images (test image, pause) and import them into the cluster's containerd.
	hack/images.sh

up: ## Local cluster + fast-sandbox + a sample sandbox run to Succeeded.
	hack/up.sh

down: cluster-down ## Remove everything make up made.

bench-e2e: up ## Start latency: Pods vs Sandboxes on the local cluster (see docs/benchmarks.md).
	mkdir -p $(OUTPUT)
	set -o pipefail; $(GO) run ./hack/bench-e2e --kubeconfig $$(source hack/cluster/lib.sh && echo $$KUBECONFIG_FILE) | tee $(OUTPUT)/bench-e2e.md

bench-interactive: up ## exec, pause/resume and one-shot runs: Sandboxes vs Pods on the local cluster (see docs/benchmarks.md).
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/kubectl-sandbox ./cmd/kubectl-sandbox
	set -o pipefail; source hack/cluster/lib.sh && $(GO) run ./hack/bench-interactive --kubeconfig $$KUBECONFIG_FILE \
		--kubectl $$BIN_DIR/kubectl --plugin $(BIN)/kubectl-sandbox | tee $(OUTPUT)/bench-interactive.md

PREFIX ?= /usr/local

install-plugin: ## Build the kubectl plugin (kubectl sandbox ...) and install it into $(PREFIX)/bin.
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/kubectl-sandbox ./cmd/kubectl-sandbox
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BIN)/kubectl-sandbox $(DESTDIR)$(PREFIX)/bin/kubectl-sandbox

clean:
	rm -rf $(OUTPUT)
