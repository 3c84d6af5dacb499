"""flare-operator: governed cross-organisation federated learning on Kubernetes with NVIDIA FLARE."""

__version__ = "0.1.0"
