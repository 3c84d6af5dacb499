"""A FederatedJob's life beyond the happy path, on a real API server and real NVFlare processes:
operator killed mid-job, NVFlare server or a site's client killed mid-job, suspend and resume, deadline, delete while
running, compute deactivated under a running job, ttlSecondsAfterFinished, /metrics."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import BASE_PARAMS
from tests.operator_harness import (
    OperatorProcess,
    apply,
    automatic_federation,
    get,
    grant,
    ledger,
    processes_under,
    scrape,
    wait_phase,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.e2e

def job(namespace: str, name: str, rounds: int, **spec) -> dict:
    return {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": rounds,
                     "parameters": {**BASE_PARAMS, "localSteps": 8}, **spec}}


def status(cp, namespace: str, name: str) -> dict:
    return (get(cp, "federatedjob", namespace, name) or {}).get("status") or {}


def wait_status(cp, namespace: str, name: str, check, message: str, timeout: float = 240) -> dict:
    return wait_for(lambda: (s := status(cp, namespace, name)) and check(s) and s, timeout=timeout,
                    message=f"{namespace}/{name}: {message}")


def job_processes(workdir: Path, job_id: str) -> list[str]:
    return [p for p in processes_under(workdir) if job_id in p]


def test_a_job_survives_an_operator_restart_a_server_crash_and_a_client_crash(control_plane, e2e_data, tmp_path):
    cp = control_plane
    with automatic_federation(cp, e2e_data, tmp_path) as fed:
        m, ops, config, port = fed.modeller, fed.operators, fed.config, fed.metrics_port
        apply(cp, job(m, "long", 8, backoffLimit=3, ttlSecondsAfterFinished=5))
        first = wait_status(cp, m, "long", lambda s: s.get("phase") == "Running" and s.get("currentRound", 0) >= 1,
                            "running, a round done")
        job_id = first["nvflareJobId"]

        # The operator dies mid-job; its participants live on, the next operator adopts them and
        # follows the same NVFlare job: no resubmission.
        ops[0].stop(signal.SIGKILL)
        assert job_processes(tmp_path / "flare", job_id), "the NVFlare job runs on without the operator"
        ops.append(OperatorProcess(cp, tmp_path, config, name="operator-2").start())
        later = wait_status(cp, m, "long", lambda s: s.get("currentRound", 0) > first["currentRound"],
                            "progress followed by the restarted operator")
        assert later["nvflareJobId"] == job_id and later["attempts"] == 1
        assert "adopted" in ops[1].log_path.read_text()

        # The NVFlare server dies (its whole process group, as when a Pod dies): the supervisor
        # restarts it, NVFlare marks the job ABANDONED, the operator resubmits from the checkpoint.
        (server,) = [int(p.split(":")[0]) for p in processes_under(tmp_path / "flare") if "server_train" in p]
        os.killpg(server, signal.SIGKILL)
        resumed = wait_status(cp, m, "long", lambda s: s.get("attempts") == 2 and s.get("nvflareJobId"),
                              "resubmitted after the server crash")
        assert resumed["serverFailures"] == 1 and resumed["nvflareJobId"] != job_id
        checkpoint = resumed["checkpoint"]
        assert checkpoint["fromJobId"] == job_id and checkpoint["completedRounds"] >= later["currentRound"]

        # A site's client dies mid-job: restarted, it comes back without the job, and NVFlare 2.9
        # would wait for it for ever; the operator sees the site answer without the job, aborts it
        # and resubmits from the checkpoint (siteFailures, same backoffLimit).
        second = wait_status(cp, m, "long", lambda s: s.get("currentRound", 0) > checkpoint["completedRounds"],
                             "the resubmitted job made a round")
        client = min(int(p.split(":")[0]) for p in processes_under(tmp_path / "flare") if "client_train" in p)
        os.killpg(client, signal.SIGKILL)
        third = wait_status(cp, m, "long", lambda s: s.get("attempts") == 3 and s.get("nvflareJobId"),
                            "resubmitted after the client crash", timeout=120)
        assert third["siteFailures"] == 1 and third["serverFailures"] == 1
        assert third["checkpoint"]["fromJobId"] == second["nvflareJobId"]
        assert third["checkpoint"]["completedRounds"] >= second["currentRound"]
        events = cp.kubectl("get", "events", "-n", m, "--field-selector", "reason=SiteLostJob", "-o", "json").stdout
        assert "its client restarted mid-job" in events, events

        # The NVFlare job is aborted by nothing the job's spec asks for: what an operator killed
        # between aborting an attempt a site lost and recording it leaves behind (found by the chaos
        # suite; it ended such jobs Aborted), or someone at the FLARE admin console. The spec still
        # says run: resubmitted from the checkpoint, a server failure.
        running = wait_status(cp, m, "long", lambda s: s.get("currentRound", 0) > third["checkpoint"]["completedRounds"],
                              "the third attempt made a round")
        from flare_operator.nvflare.admin import FlareAdmin

        project = get(cp, "computespec", m, "esm2")["status"]["project"]
        console = FlareAdmin(tmp_path / "flare" / project / "admin@flareop.io", timeout=10.0)
        try:
            assert console.abort(running["nvflareJobId"])
        finally:
            console.close()
        fourth = wait_status(cp, m, "long", lambda s: s.get("attempts") == 4 and s.get("nvflareJobId"),
                             "resubmitted after an abort nothing asked for", timeout=120)
        assert fourth["serverFailures"] == 2 and fourth["siteFailures"] == 1
        assert fourth["checkpoint"]["fromJobId"] == running["nvflareJobId"]

        done = wait_phase(cp, "federatedjob", m, "long", "Succeeded", timeout=300)["status"]
        assert done["progress"] == "8/8" and done["attempts"] == 4
        results = Path(done["results"]["location"])
        metrics = json.loads((results / "metrics.json").read_text())
        resumed_at = fourth["checkpoint"]["completedRounds"]
        assert metrics["resumed_from"]["round"] == resumed_at
        assert metrics["job"]["metadata"]["attempt"] == 4
        assert len(metrics["history"]) == 8 - resumed_at
        for lost in (job_id, second["nvflareJobId"], running["nvflareJobId"]):
            assert (results / "attempts" / f"metrics-{lost}.json").exists(), "the lost attempts' metrics are kept"
        logs = {f["name"] for f in done["results"]["files"] if f["name"].startswith("logs/")}
        assert {"logs/server-log.txt", f"logs/{fed.orgs[0]}-log.txt"} <= logs, logs
        wait_for(lambda: not job_processes(tmp_path / "flare", second["nvflareJobId"]), timeout=60,
                 message="the attempt a site lost was aborted")

        # /metrics of the restarted operator: what it saw move.
        seen = scrape(port)
        assert seen['flareop_job_submissions_total{reason="resubmit"}'] == 3
        assert seen["flareop_job_rounds_completed_total"] >= 8 - first["currentRound"] - 1
        assert seen['flareop_jobs_finished_total{phase="Succeeded"}'] == 1
        assert seen['flareop_computespecs{phase="Ready"}'] == 1
        assert seen["flareop_job_submit_seconds_count"] == 3

        # ttlSecondsAfterFinished: the finished job goes away, its results stay.
        wait_for(lambda: get(cp, "federatedjob", m, "long") is None, timeout=60, message="job garbage-collected")
        assert (results / "metrics.json").exists()
        assert scrape(port).get('flareop_federatedjobs{phase="Succeeded"}') == 0


def test_suspend_resume_deadline_delete_and_deactivation(control_plane, e2e_data, tmp_path):
    cp = control_plane
    workdir = tmp_path / "flare"
    with automatic_federation(cp, e2e_data, tmp_path) as fed:
        m, port = fed.modeller, fed.metrics_port
        # Suspend after a round: the NVFlare job is aborted, the checkpoint kept; resume continues from it.
        apply(cp, job(m, "pausable", 4))
        first = wait_status(cp, m, "pausable", lambda s: s.get("currentRound", 0) >= 1, "a round done")
        cp.kubectl("patch", "federatedjob", "pausable", "-n", m, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        suspended = wait_phase(cp, "federatedjob", m, "pausable", "Suspended", timeout=60)["status"]
        assert "nvflareJobId" not in suspended
        checkpoint = suspended["checkpoint"]
        assert checkpoint["fromJobId"] == first["nvflareJobId"] and checkpoint["completedRounds"] >= 1
        wait_for(lambda: not job_processes(workdir, first["nvflareJobId"]), timeout=60,
                 message="the suspended NVFlare job stopped")
        cp.kubectl("patch", "federatedjob", "pausable", "-n", m, "--type=merge", "-p", '{"spec":{"suspend":false}}')
        done = wait_phase(cp, "federatedjob", m, "pausable", "Succeeded", timeout=240)["status"]
        assert done["attempts"] == 2 and done["serverFailures"] == 0 and done["progress"] == "4/4"
        metrics = json.loads((Path(done["results"]["location"]) / "metrics.json").read_text())
        assert metrics["resumed_from"]["round"] == checkpoint["completedRounds"]
        assert [h["round"] for h in metrics["history"]] == list(range(checkpoint["completedRounds"], 4))

        # activeDeadlineSeconds: aborted, TimedOut.
        apply(cp, job(m, "slow", 50, activeDeadlineSeconds=8))
        timed_out = wait_phase(cp, "federatedjob", m, "slow", "TimedOut", timeout=120)["status"]
        assert any(c["reason"] == "DeadlineExceeded" for c in timed_out["conditions"])
        assert "logs/server-log.txt" in {f["name"] for f in timed_out["results"]["files"]}, "logs kept for debugging"
        wait_for(lambda: not job_processes(workdir, timed_out["nvflareJobId"]), timeout=60,
                 message="the timed-out NVFlare job stopped")

        # Deleting a running job aborts its NVFlare job; the epsilon it reserved stays spent (issue 12, 7).
        b = fed.orgs[1]
        apply(cp, grant(b, "scl-b", m, path=str(e2e_data["sites"]["site-2"]["path"]),
                        privacy={"dpRequired": True, "epsilonBudget": 100}))
        dp = {"privacy": {"differentialPrivacy": {"enabled": True, "epsilon": 20}}}
        apply(cp, job(m, "doomed", 50, **dp))
        running = wait_status(cp, m, "doomed", lambda s: s.get("phase") == "Running", "running")
        assert job_processes(workdir, running["nvflareJobId"])
        assert ledger(cp, b, "scl-b")["epsilonReserved"] == 20
        cp.kubectl("delete", "federatedjob", "doomed", "-n", m, "--timeout=60s")
        wait_for(lambda: not job_processes(workdir, running["nvflareJobId"]), timeout=60,
                 message="the deleted job's NVFlare job stopped")
        spent = wait_for(lambda: ledger(cp, b, "scl-b").get("epsilonSpent"), timeout=60,
                         message="the deleted job's reservation became spent epsilon")
        assert 0 < spent <= 20 and ledger(cp, b, "scl-b")["epsilonReserved"] == 0  # the rounds that ran
        assert [e["spent"] for e in ledger(cp, b, "scl-b")["ledger"]] == [True]

        # Deactivating the compute under a running job fails it with the reason.
        apply(cp, job(m, "stranded", 50, **dp))
        wait_status(cp, m, "stranded", lambda s: s.get("phase") == "Running", "running")
        cp.kubectl("patch", "computespec", "esm2", "-n", m, "--type=merge", "-p", '{"spec":{"active":false}}')
        failed = wait_phase(cp, "federatedjob", m, "stranded", "Failed", timeout=120)["status"]
        reason = {c["type"]: c for c in failed["conditions"]}["Failed"]
        assert reason["reason"] == "ComputeDeactivated" and "esm2" in reason["message"]

        seen = scrape(port)
        assert seen['flareop_jobs_finished_total{phase="TimedOut"}'] == 1
        assert seen['flareop_jobs_finished_total{phase="Failed"}'] == 1
        assert seen['flareop_job_submissions_total{reason="first"}'] == 4
        assert seen["flareop_job_approval_wait_seconds_count"] == 4
        assert seen['flareop_federatedjobs{phase="Succeeded"}'] == 1
