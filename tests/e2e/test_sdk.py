"""The SDK and the `flareop` CLI against a real federation (issue 16): a modeller defines compute and
submits jobs from Python, a data owner approves and rejects from the CLI, results come back checked.
Real API server, real NVFlare (process runtime), real training; every error path a person meets:
a job awaiting approval, rejected by hand, rejected for budget, an object that does not exist, an
invalid spec refused before sending, a user without rights."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from flare_operator.builders.rbac import (
    MODELLER_ROLE,
    ORG_ADMIN_ROLE,
    modeller_cluster_role,
    org_admin_cluster_role,
    role_binding,
)
from flare_operator.sdk import compute, datasets, job, models, owner
from flare_operator.sdk.errors import (
    AwaitingApproval,
    ComputeRejected,
    Forbidden,
    InvalidSpec,
    JobRejected,
    NotFound,
)
from flare_operator.sdk.session import Session
from tests.e2e.conftest import BASE_PARAMS
from tests.operator_harness import apply, automatic_federation, grant, wait_phase
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.e2e

PARAMS = {**BASE_PARAMS, "localSteps": 2}


def flareop(kubeconfig, *args: str, namespace: str, expect: int = 0) -> str:
    proc = subprocess.run([sys.executable, "-m", "flare_operator.sdk.cli", "--kubeconfig", str(kubeconfig),
                           "-n", namespace, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, f"flareop {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_modeller_and_data_owner_workflow(control_plane, e2e_data, tmp_path):
    cp = control_plane
    paths = [s["path"] for s in e2e_data["sites"].values()]
    with automatic_federation(cp, e2e_data, tmp_path, org_b_policy="Manual") as fed:
        (a, b), m = fed.orgs, fed.modeller
        # People as the platform binds them: a scientist (flare-modeller in m), org admins (flare-org-admin).
        apply(cp, modeller_cluster_role(), org_admin_cluster_role(),
              role_binding(m, MODELLER_ROLE, user=f"scientist-{m}", cluster_role=True),
              role_binding(a, ORG_ADMIN_ROLE, user=f"admin-{a}", cluster_role=True),
              role_binding(b, ORG_ADMIN_ROLE, user=f"admin-{b}", cluster_role=True))
        scientist, admin_a, admin_b = (cp.user_kubeconfig(u) for u in (f"scientist-{m}", f"admin-{a}", f"admin-{b}"))
        me, owner_b = Session(scientist, namespace=m), Session(admin_b, namespace=b)

        # --- what the scientist may pick from (the orchestrator's flare-catalog in m) ------------------
        offered = wait_for(lambda: {d.ref: d for d in datasets.list_datasets(session=me)} or None, timeout=60,
                           message="the catalog lists both orgs' datasets")
        assert set(offered) == {f"{a}/scl-a", f"{b}/scl-b"}, offered
        assert offered[f"{a}/scl-a"].sample_count > 0 and offered[f"{a}/scl-a"].terms["models"] == ["esm2-finetune *"]
        assert not any("path" in json.dumps(d.terms) or str(p) in d.description for d in offered.values() for p in paths)
        assert [d.ref for d in datasets.list_datasets("scl-b", session=me)] == [f"{b}/scl-b"]
        (esm2,) = models.list_models("esm2", session=me)
        assert esm2.version == "1.0.0" and "localSteps" in esm2.parameters["properties"]
        assert "esm2-finetune" in flareop(scientist, "models", "list", namespace=m)
        assert json.loads(flareop(scientist, "-o", "json", "datasets", "list", namespace=m))[0]["org"] == a

        # --- compute -------------------------------------------------------------------------------
        assert compute.get_status("esm2", session=me).phase == "Ready"
        with pytest.raises(ValueError, match="org/id"):
            compute.ComputeSpec(name="x", model={"id": "esm2-finetune", "version": "1.0.0"}, dataset_ids=["scl-a"])
        with pytest.raises(InvalidSpec, match="gpu must be between 0 and 8"):
            compute.create(compute.ComputeSpec(name="x", model={"id": "esm2-finetune", "version": "1.0.0"},
                                               dataset_ids=[f"{a}/scl-a"], client_n_gpu=9), session=me)
        spare = compute.ComputeSpec(name="spare", model={"id": "esm2-finetune", "version": "1.0.0"},
                                    dataset_ids=[f"{a}/scl-a", f"{b}/scl-b"], client_n_cpu="1", client_memory="1Gi",
                                    active=False)
        assert compute.create(spare, session=me).name == "spare"
        wait_for(lambda: compute.get_status("spare", session=me).phase == "Deactivated", timeout=60,
                 message="spare created deactivated")
        assert compute.activate("spare", session=me).active
        assert compute.deactivate("spare", session=me).active is False
        assert {c.name for c in compute.list_compute(session=me)} == {"esm2", "spare"}
        assert json.loads(flareop(scientist, "-o", "json", "compute", "activate", "spare", namespace=m))["active"] is True
        assert json.loads(flareop(scientist, "-o", "json", "compute", "deactivate", "spare", namespace=m))["active"] is False
        assert "spare" in flareop(scientist, "compute", "status", namespace=m)
        flareop(scientist, "compute", "delete", "spare", namespace=m)
        out = flareop(scientist, "-o", "json", "compute", "create", "via-cli", "--model", "esm2-finetune@1.0.0",
                      "-d", f"{a}/scl-a", "-d", f"{b}/scl-b", "--inactive", namespace=m)
        assert json.loads(out)["name"] == "via-cli"
        compute.delete("via-cli", session=me)
        # A wrong org or dataset id is reported before anything is made (the catalog says what is offered)...
        with pytest.raises(NotFound, match=f"not offered to your org: org-z/scl-a, {a}/nope") as unknown:
            compute.create(spare.model_copy(update={"name": "typo", "dataset_ids": ["org-z/scl-a", f"{a}/nope"]}),
                           session=me)
        assert unknown.value.hint == "flareop datasets list"
        flareop(scientist, "compute", "create", "typo", "--model", "esm2-finetune@1.0.0", "-d", f"{a}/nope",
                namespace=m, expect=3)
        # ... and where the check is skipped, the org that holds no such dataset refuses, in its words.
        compute.create(spare.model_copy(update={"name": "typo", "dataset_ids": [f"{a}/nope"], "active": True}),
                       check_datasets=False, session=me)
        with pytest.raises(ComputeRejected) as refused_compute:
            compute.wait_until_ready("typo", timeout=60, session=me)
        assert refused_compute.value.rejected_by == [a] and "nope" in str(refused_compute.value)
        compute.delete("typo", session=me)
        with pytest.raises(NotFound) as missing:
            compute.get_status("spare", session=me)
        assert missing.value.hint == f"kubectl get computespecs -n {m}"
        with pytest.raises(NotFound):
            job.submit("no-such-federation", PARAMS, rounds=1, session=me)

        # --- a job that org-b approves by hand --------------------------------------------------------
        run1 = job.submit("esm2", PARAMS, rounds=2, name="run1", session=me)
        wait_for(lambda: job.status(run1, session=me).phase == "AwaitingApproval", timeout=60,
                 message="run1 awaits org-b")
        with pytest.raises(AwaitingApproval) as waiting:
            job.wait_until_job_finished(run1, timeout=1, progress=False, session=me)
        assert waiting.value.orgs == [b] and isinstance(waiting.value, TimeoutError)

        listed = json.loads(flareop(admin_b, "-o", "json", "pending", namespace=b))
        assert [r["job"] for r in listed] == [f"{m}/run1"] and listed[0]["rounds"] == 2
        assert listed[0]["datasets"] == ["scl-b"] and listed[0]["code_digest"].startswith("sha256:")
        out = flareop(admin_b, "approve", f"{m}/run1", "--reason", "reviewed", "--yes", namespace=b)
        assert "JobApproval" in out and listed[0]["content_hash"] in out
        assert owner.pending(session=owner_b) == []

        with pytest.raises(TimeoutError, match="goes on|awaits approval"):  # the SDK's, a builtins.TimeoutError
            job.wait_until_job_finished(run1, timeout=0.5, progress=False, session=me)
        seen = []
        done = job.wait_until_job_finished(run1, timeout=420, poll_interval=1, session=me, on_update=seen.append)
        assert done.phase == "Succeeded" and done.current_round == 2 and done.accuracy is not None
        assert any(s.phase == "Running" for s in seen) and seen[-1].phase == "Succeeded"
        files = job.download_results(run1, tmp_path / "results", session=me)
        listed_files = {f["name"]: f["sha256"] for f in done.results["files"]}
        assert {p.relative_to(tmp_path / "results").as_posix() for p in files} == set(listed_files)
        for p in files:
            assert hashlib.sha256(p.read_bytes()).hexdigest() == listed_files[p.relative_to(tmp_path / "results").as_posix()]
        logs = job.logs(run1, session=me)
        assert "server" in logs and any(site.startswith(a) for site in logs), sorted(logs)
        out = flareop(scientist, "-o", "json", "job", "download", "run1", "--to", str(tmp_path / "cli-results"), namespace=m)
        assert len(json.loads(out)) == len(files)
        assert "==> server <==" in flareop(scientist, "job", "logs", "run1", "--participant", "server", namespace=m)
        table = flareop(scientist, "job", "list", namespace=m)
        assert "run1" in table and "Succeeded" in table and "2/2" in table

        # --- rejected by hand, with a reason the modeller sees -------------------------------------------
        run2 = job.submit("esm2", PARAMS, rounds=1, name="run2", session=me)
        wait_for(lambda: owner.pending(session=owner_b), timeout=60, message="run2 reaches org-b")
        owner.reject("run2", "use at most 1 local step per round", session=owner_b)
        with pytest.raises(JobRejected) as rejected:
            job.wait_until_job_finished(run2, timeout=120, progress=False, session=me)
        assert rejected.value.rejected_by == [b] and "at most 1 local step" in str(rejected.value)
        assert rejected.value.hint == f"kubectl describe federatedjob run2 -n {m}"
        flareop(scientist, "job", "wait", "run2", "--timeout", "30", namespace=m, expect=7)

        # --- suspended and resumed; submitted and rejected from the CLI; deleted --------------------------
        out = flareop(scientist, "-o", "json", "job", "submit", "esm2", "--rounds", "4", "--name", "run4",
                      "-p", "preset=tiny", "-p", "maxSeqLength=64", "-p", "batchSize=32", "-p", "localSteps=2",
                      "-p", "torchThreads=1", namespace=m)
        assert json.loads(out) == {"job": "run4"}
        wait_for(lambda: owner.pending(session=owner_b), timeout=60, message="run4 reaches org-b")
        owner.approve("run4", session=owner_b)
        wait_for(lambda: job.status("run4", session=me).current_round >= 1, timeout=240, message="run4 trains")
        assert job.abort("run4", session=me).suspended
        wait_for(lambda: job.status("run4", session=me).phase == "Suspended", timeout=120, message="run4 suspended")
        assert json.loads(flareop(scientist, "-o", "json", "job", "resume", "run4", namespace=m))["suspended"] is False
        wait_for(lambda: job.status("run4", session=me).phase == "Running", timeout=120, message="run4 resumed")
        assert json.loads(flareop(scientist, "-o", "json", "job", "abort", "run4", namespace=m))["suspended"] is True
        wait_for(lambda: job.status("run4", session=me).phase == "Suspended", timeout=120, message="run4 suspended again")
        assert not job.resume("run4", session=me).suspended
        assert job.wait_until_job_finished("run4", timeout=420, progress=False, session=me).current_round == 4
        flareop(scientist, "job", "delete", "run4", namespace=m)
        run5 = job.submit("esm2", PARAMS, rounds=1, session=me)
        wait_for(lambda: owner.pending(session=owner_b), timeout=60, message="run5 reaches org-b")
        flareop(admin_b, "reject", run5, "--reason", "not this quarter", "-y", namespace=b)
        with pytest.raises(JobRejected, match="not this quarter"):
            job.wait_until_job_finished(run5, timeout=120, progress=False, session=me)
        job.delete(run5, session=me)
        assert {j.name for j in job.list_jobs(session=me)} == {run1, run2}

        # --- rejected for budget: org-a's grant has less epsilon left than the job asks ------------------
        apply(cp, grant(a, "scl-a", m, path=str(paths[0]), privacy={"dpRequired": True, "epsilonBudget": 3}))
        run3 = job.submit("esm2", PARAMS, rounds=1, name="run3", epsilon=4, session=me)
        with pytest.raises(JobRejected) as broke:
            job.wait_until_job_finished(run3, timeout=120, progress=False, session=me)
        assert a in broke.value.rejected_by and "epsilon left; job asks 4" in str(broke.value), str(broke.value)
        budgets = json.loads(flareop(admin_a, "-o", "json", "budget", namespace=a))
        assert budgets[0]["budget"] == 3 and budgets[0]["left"] == 3

        # --- not found, forbidden, exit codes -----------------------------------------------------------------
        with pytest.raises(NotFound):
            job.status("nope", session=me)
        flareop(scientist, "job", "status", "nope", namespace=m, expect=3)
        stranger = Session(cp.user_kubeconfig("mallory", ["guests"]), namespace=m)
        with pytest.raises(Forbidden) as refused:
            job.list_jobs(session=stranger)
        assert refused.value.hint == f"kubectl auth can-i list federatedjobs -n {m}"
        with pytest.raises(Forbidden):
            job.submit("esm2", PARAMS, rounds=1, session=stranger)
        with pytest.raises(Forbidden):  # a modeller cannot approve for a data owner
            owner.approve(f"{m}/run1", session=Session(scientist, namespace=b))
        with pytest.raises(Forbidden):
            datasets.list_datasets(session=stranger)
        proc = subprocess.run([sys.executable, "-m", "flare_operator.sdk.cli", "--kubeconfig",
                               str(cp.user_kubeconfig("mallory", ["guests"])), "-n", m, "job", "list"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 4 and "kubectl auth can-i" in proc.stderr, proc.stderr
        wait_phase(cp, "federatedjob", m, run1, "Succeeded")
