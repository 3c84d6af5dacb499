"""Prometheus metrics of the operator (prometheus-client), served on config.metricsPort."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from ..api.compute import ComputePhase
from ..api.job import JobPhase

RECONCILES = Counter("flareop_reconcile_total", "Reconcile passes, by kind and result", ["kind", "result"])
RECONCILE_SECONDS = Histogram("flareop_reconcile_duration_seconds", "Time one reconcile pass takes", ["kind"],
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
API_REQUESTS = Counter("flareop_api_requests_total", "Requests the operator made to Kubernetes API servers",
                       ["verb"])
API_REQUEST_SECONDS = Histogram("flareop_api_request_duration_seconds",
                                "Time one Kubernetes API request takes, queueing for a connection included",
                                ["verb"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
STATUS_WRITES = Counter("flareop_status_writes_total", "Status patches (only written when something changed)",
                        ["kind"])


def serve(port: int, host: str = "127.0.0.1") -> None:
    if port:
        start_http_server(port, addr=host)

# --- FederatedJobs and ComputeSpecs (gauges are recomputed from the operator's last view of each object)
JOBS_BY_PHASE = Gauge("flareop_federatedjobs", "FederatedJobs by phase, as this operator last saw them", ["phase"])
COMPUTE_BY_PHASE = Gauge("flareop_computespecs", "ComputeSpecs by phase, as this operator last saw them", ["phase"])
APPROVAL_WAIT_SECONDS = Histogram(
    "flareop_job_approval_wait_seconds", "From a FederatedJob's creation until every org approved it",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600))
SUBMIT_SECONDS = Histogram("flareop_job_submit_seconds", "Building and submitting an NVFlare job (FLARE API)",
                           buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60))
ROUNDS_COMPLETED = Counter("flareop_job_rounds_completed_total", "Federated rounds completed, all jobs")
JOB_SUBMISSIONS = Counter("flareop_job_submissions_total", "NVFlare submissions, first and resubmissions",
                          ["reason"])
JOBS_FINISHED = Counter("flareop_jobs_finished_total", "FederatedJobs that ended, by final phase", ["phase"])


class PhaseGauge:
    """Keeps each object's last phase and publishes the counts per phase into a Gauge."""

    def __init__(self, gauge: Gauge, phases: list[str]):
        self.gauge = gauge
        self.phases = phases
        self.last: dict[str, str] = {}
        for phase in phases:
            gauge.labels(phase).set(0)

    def observe(self, uid: str, phase: str | None) -> None:
        if phase:
            self.last[uid] = phase
        else:
            self.last.pop(uid, None)
        counts = dict.fromkeys(self.phases, 0)
        for seen in self.last.values():
            counts[seen] = counts.get(seen, 0) + 1
        for phase, n in counts.items():
            self.gauge.labels(phase).set(n)


JOB_PHASES = PhaseGauge(JOBS_BY_PHASE, [p.value for p in JobPhase])
COMPUTE_PHASES = PhaseGauge(COMPUTE_BY_PHASE, [p.value for p in ComputePhase])
