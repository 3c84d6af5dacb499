"""Prometheus metrics of the operator (prometheus-client), served on config.metricsPort."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RECONCILES = Counter("flareop_reconcile_total", "Reconcile passes, by kind and result", ["kind", "result"])
RECONCILE_SECONDS = Histogram("flareop_reconcile_duration_seconds", "Time one reconcile pass takes", ["kind"],
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
API_REQUESTS = Counter("flareop_api_requests_total", "Requests the operator made to Kubernetes API servers",
                       ["verb"])
STATUS_WRITES = Counter("flareop_status_writes_total", "Status patches (only written when something changed)",
                        ["kind"])


def serve(port: int) -> None:
    if port:
        start_http_server(port, addr="127.0.0.1")
