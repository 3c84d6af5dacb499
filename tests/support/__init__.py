"""Test support: local Kubernetes control planes (controlplane.py) and their pytest fixtures
(kube_fixtures.py)."""
