# Local Kubernetes control plane built from Go modules (hack/controlplane/README.md).
# Included by the top-level Makefile.
CONTROLPLANE_DIR ?= hack/controlplane
CLUSTER_DIR ?= .cluster

.PHONY: controlplane cluster-up cluster-down controlplane-bench

## controlplane: build (or reuse) flarecp, kubectl, kwok and helm; prints their directory
controlplane:
	@$(CONTROLPLANE_DIR)/build.sh | tail -n1

## cluster-up: start a local cluster in $(CLUSTER_DIR)/ in the background and wait until ready
cluster-up:
	@$(CONTROLPLANE_DIR)/cluster.sh up $(CLUSTER_DIR)

## cluster-down: stop the cluster in $(CLUSTER_DIR)/
cluster-down:
	@$(CONTROLPLANE_DIR)/cluster.sh down $(CLUSTER_DIR)

## controlplane-bench: cold/warm build and start-up timings (BENCH_COLD=0 skips the cold build)
controlplane-bench:
	@$(CONTROLPLANE_DIR)/bench.sh
