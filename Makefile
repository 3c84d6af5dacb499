# flare-operator: `make demo` shows it, `make test` proves it. `make help` lists the rest.
SHELL := /bin/bash
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
PYTEST ?= $(PYTHON) -m pytest
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help install test test-unit test-schema test-integration test-fuzz test-chaos test-node test-e2e lint crds charts-docs chart-tools test-charts demo demo-down demo-multicluster demo-multicluster-down demo-k8s demo-k8s-down bench-compute bench-scale bench-job images

## help: list the targets
help:
	@grep -hE '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'
	@grep -hE '^[a-z0-9-]+: .*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z0-9-]+):.*## /  \1: /'

## install: create .venv and install the project with its extras (torch from pip's cache after the first time)
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[operator,flare,train,dev,s3,sdk,datagen]'
	touch $@

## test: every tier (unit, schema, charts, integration, fuzz, chaos, node, e2e) - the README's test command and CI's
test: install controlplane images chart-tools
	$(PYTEST) tests/unit tests/schema tests/charts tests/integration tests/fuzz tests/chaos tests/node tests/e2e

## test-unit: pure code only (seconds, no control plane)
test-unit: install
	$(PYTEST) tests/unit

## test-schema: the CRDs on a real kube-apiserver
test-schema: install controlplane
	$(PYTEST) tests/schema

## test-charts: the Helm charts - lint, every mode rendered and dry-run on a real API server, values schema, CRD upgrade, generated READMEs
test-charts: install controlplane chart-tools
	$(PYTEST) tests/charts

## chart-tools: helm-docs (pinned, built once into the cache) for the charts' READMEs
chart-tools:
	@bash hack/charts/helm-docs.sh >/dev/null

## charts-docs: regenerate charts/*/README.md from README.md.gotmpl and the values' comments
charts-docs: chart-tools
	$$(bash hack/charts/helm-docs.sh | tail -n1) --chart-search-root charts --skip-version-footer -l warning

## test-integration: the operator and the control plane on real API servers
test-integration: install controlplane
	$(PYTEST) tests/integration

## test-fuzz: manifests drawn from the CRDs' schemas and mutated, sent to a real API server with the operator running (FUZZ_SEED=n replays, FUZZ_EXAMPLES=n per kind and source)
test-fuzz: install controlplane
	$(PYTEST) tests/fuzz

## test-chaos: 30 FederatedJob lifecycles while the operator and NVFlare processes are SIGKILLed at random (CHAOS_SEED=random|n, CHAOS_LIFECYCLES=n); ≈ 12-15 min on 2 cores (docs/robustness.md)
test-chaos: install controlplane
	$(PYTEST) tests/chaos

## test-node: pods from the project's images on a real node (kubelet, containerd; root)
test-node: install controlplane images
	$(PYTEST) tests/node

## test-e2e: real NVFlare federations training real torch models
test-e2e: install
	$(PYTEST) tests/e2e

## lint: ruff, import-linter layering, CRD drift
lint: install
	$(VENV)/bin/ruff check operator tests bench flare_apps
	$(VENV)/bin/lint-imports
	$(PYTHON) -m flare_operator.cli crds --check

## crds: regenerate crds/*.yaml and docs/api.md from operator/flare_operator/api/
crds: install
	$(PYTHON) -m flare_operator.cli crds

## bench-compute: ComputeSpec apply -> workloads created, p50/p95 vs applying the manifests directly; API requests per reconcile
bench-compute: install controlplane
	$(PYTHON) bench/compute_reconcile.py --count 20

## bench-scale: one hub and N orgs (ORGS=10,50,100, each on a fresh control plane, kwok nodes): AccessRequests decided, ComputeSpec -> StatefulSets vs direct apply, approval -> submission pass, the hub operator's and the gateways process's RSS/CPU over time, API requests per reconcile (PROFILE=1: sample their threads)
ORGS ?= 10,50,100
bench-scale: install controlplane
	$(PYTHON) bench/scale.py --orgs $(ORGS) $(if $(PROFILE),--profile)

## bench-job: a FederatedJob vs the same job submitted straight to NVFlare on the same federation: wall-time ratio, apply -> first round; RUNTIME=kubernetes: server and clients as Pods on a real node (root, images; FLARE_REAL_NODE_CLUSTER=DIR attaches to a running one)
bench-job: install controlplane $(if $(filter kubernetes,$(RUNTIME)),$(if $(FLARE_IMAGES_JSON),,images))
	$(PYTHON) bench/job_overhead.py --repeats 4 $(if $(RUNTIME),--runtime $(RUNTIME))

## demo: local control plane, CRDs, the operator, the ESM2 consortium scenario up to an approved job
demo: install controlplane
	@bash hack/demo.sh

## demo-down: stop what `make demo` started (operator, NVFlare processes, control plane)
demo-down:
	-@test -f .demo/operator.pid && kill $$(cat .demo/operator.pid) 2>/dev/null; rm -f .demo/operator.pid
	@$(MAKE) --no-print-directory cluster-down

## demo-multicluster: the same scenario with the hub, org-a and org-b on three control planes; sites connect outbound with scoped hub credentials
demo-multicluster: install controlplane
	@bash hack/demo-multicluster.sh

## demo-multicluster-down: stop what `make demo-multicluster` started (its 3 operators, NVFlare processes, 3 control planes)
demo-multicluster-down:
	@bash hack/demo-multicluster.sh down

## demo-k8s: the same scenario on a cluster with a real node (root): the orchestrator and both orgs' gateways installed with helm from charts/, NVFlare in Pods, results in an S3-compatible store
demo-k8s: install controlplane images
	@bash hack/demo-k8s.sh

## demo-k8s-down: stop what `make demo-k8s` started (the cluster and its node, the results store)
demo-k8s-down:
	@bash hack/demo-k8s.sh down

## images: the operator, runtime and pause images as OCI archives, built from images/*/Dockerfile with buildah (no Docker, no registry; cached by content; last line: JSON with archives and refs)
images:
	@bash hack/images/build.sh | tail -n1

.PHONY: s3server
## s3server: build (or reuse) the S3-compatible test server (gofakes3 with SigV4 checks, hack/s3server); prints its path
s3server:
	@bash hack/s3server/build.sh | tail -n1

include hack/controlplane/controlplane.mk
-include flare_apps/apps.mk
