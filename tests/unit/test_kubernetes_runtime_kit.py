"""How the kubernetes runtime splits a provisioned kit for its Pods (runtime/kubernetes.py)."""

from __future__ import annotations

import json

from flare_operator.builders.federation import FederationPlan
from flare_operator.builders.workloads import STATE_DIR
from flare_operator.nvflare.provisioning import provision
from flare_operator.runtime.kubernetes import SCHEDULE_RETRY_SECONDS, server_target, split_kit


def test_the_server_retries_refused_jobs_soon_and_keeps_its_state_on_the_volume():
    svc = "fed-server.modeller.svc"
    kits = provision(FederationPlan("fed", svc, 8002, 8003, (("org-a", "org-a"),))).kits
    startup, local = split_kit(kits[svc])
    assert "server.key" in startup and "fed_server.json" in startup
    resources = json.loads(local["resources.json"])
    (scheduler,) = [c for c in resources["components"] if c["id"] == "job_scheduler"]
    assert scheduler["args"]["min_schedule_interval"] == SCHEDULE_RETRY_SECONDS
    assert f"{STATE_DIR}/jobs-storage" in local["resources.json"], "the job store lives on the workspace volume"
    assert server_target(split_kit(kits["org-a"])[0]) == (svc, 8002)
