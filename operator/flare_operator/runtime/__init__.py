"""Workload adapters (kubernetes, process) and Kubernetes I/O (server-side apply, events)."""
