"""runtime/worker.py: the provisioner's process exists only while there is work."""

from __future__ import annotations

import os
import time

import pytest

from flare_operator.runtime.worker import OnDemandProcess


def _wait(predicate, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_started_by_work_and_stopped_when_idle():
    worker = OnDemandProcess(idle_seconds=0.3)
    try:
        assert not worker.running and worker.started == 0  # nothing runs before the first task
        first = worker.submit(os.getpid).result(timeout=60)
        assert first != os.getpid() and worker.running and worker.started == 1
        assert worker.submit(os.getpid).result(timeout=60) == first  # one process serves a batch
        assert _wait(lambda: not worker.running)  # gone once idle
        second = worker.submit(os.getpid).result(timeout=60)
        assert second != first and worker.started == 2  # the next task starts another
    finally:
        worker.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        worker.submit(os.getpid)


def test_not_stopped_while_a_task_runs():
    worker = OnDemandProcess(idle_seconds=0.3)
    try:
        worker.submit(os.getpid).result(timeout=60)  # started, and idle for a moment
        slow = worker.submit(time.sleep, 2.0)
        time.sleep(1.0)  # well past idle_seconds
        assert worker.running and not slow.done() and worker.started == 1
        slow.result(timeout=60)
        assert _wait(lambda: not worker.running)
    finally:
        worker.shutdown()


def _loaded(*names: str) -> list[str]:
    import sys

    return [name for name in names if name in sys.modules]


def test_provisioner_process_imports_provisioning_only():
    """main.py's provisioner process: NVFlare's package __init__ (FedJob, the simulator, gRPC) is
    not run there, and its kits are byte-identical to those provisioned in a fully imported NVFlare."""
    from flare_operator.builders.federation import FederationPlan
    from flare_operator.nvflare.provisioning import lean_import, provision

    plan = FederationPlan(project="fed-lean", server_host="fed-lean-server", fl_port=8002, admin_port=8003,
                          clients=(("org-a", "org-a"), ("org-b", "org-b")), extra_host_names=())
    here = provision(plan)
    assert _loaded("grpc", "nvflare.job_config.api")  # this process: nvflare/__init__ ran
    worker = OnDemandProcess(idle_seconds=30, initializer=lean_import)
    try:
        there = worker.submit(provision, plan, here.ca_state).result(timeout=120)
        assert there.kits == here.kits and there.ca_state == here.ca_state
        assert worker.submit(_loaded, "grpc", "nvflare.job_config.api", "nvflare.lighter.provisioner").result(
            timeout=60) == ["nvflare.lighter.provisioner"]
    finally:
        worker.shutdown()
