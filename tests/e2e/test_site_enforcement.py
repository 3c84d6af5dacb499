"""Site enforcement with real NVFlare processes: each org's client refuses every job its own site
has not approved, even one submitted straight through the FLARE API with the operator's admin kit.

org-a approves automatically, org-b by hand. While org-b has not approved the FederatedJob, the
hub (here: the test, holding the operator's admin kit) submits NVFlare jobs itself — one carrying
the real job's uid and content hash (approved by org-a only), one with a made-up hash. org-b's
client refuses both (and org-a's the made-up one): the refusal is in the client's log and in the
job's schedule history at the server, no job folder appears at the site and org-b's data is never
read. Once org-b approves, the operator's own submission of the job runs at once, and reads the data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import BASE_PARAMS, stale_atime, was_read
from tests.operator_harness import (
    Consortium,
    OperatorProcess,
    apply,
    compute,
    create_org_namespace,
    free_port,
    gateway_config,
    grant,
    install_crds,
    operator_config,
    policy,
    remove_namespaces,
    wait_phase,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.e2e

PARAMS = {**BASE_PARAMS, "localSteps": 2}


def approved_uids(client_folder: Path) -> dict[str, str]:
    path = client_folder / "enforcement" / "approved.json"
    if not path.exists():
        return {}
    return {e["uid"]: e["contentHash"] for e in json.loads(path.read_text())["approved"]}


def client_log(client_folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (client_folder / "log.txt", client_folder / "stdout.log")
                     if p.exists())


def submit_straight(admin, tmp: Path, name: str, sites: dict[str, str], metadata: dict) -> str:
    """What a compromised hub could do: build a job and submit it with the operator's admin kit."""
    from flare_operator.builders.nvflare_job import build_job, write_job
    from flare_operator.catalog import load_app

    files = build_job(load_app("esm2-finetune", "1.0.0"), {**PARAMS, "rounds": 1},
                      [{"name": org, "datasetPath": f"dataset:{ds}"} for org, ds in sites.items()],
                      job_name=name, metadata=metadata)
    folder = write_job(files, tmp / name)
    return admin.submit(folder, f"bypass-{name}")



def test_clients_refuse_jobs_their_org_has_not_approved(control_plane, e2e_data, tmp_path):
    from flare_operator.nvflare.admin import FlareAdmin

    cp = control_plane
    install_crds(cp)
    c = Consortium()
    a, b, m = c.org("org-a"), c.org("org-b"), c.modeller
    for ns in (a, b, m):
        create_org_namespace(cp, ns, ns)
    # Each org's data in its own folder (a copy: this test watches when org-b's file is read).
    data = {}
    for org, site in zip((a, b), e2e_data["sites"].values(), strict=True):
        data[org] = tmp_path / "data" / org / "scl.csv"
        data[org].parent.mkdir(parents=True)
        shutil.copy(site["path"], data[org])
    apply(cp, grant(a, "scl-a", m, path=str(data[a])), grant(b, "scl-b", m, path=str(data[b])),
          policy(a, "Automatic"), policy(b, "Manual"))
    # org-b decides by hand: its admission webhook records who decided (an unrecorded JobApproval counts for nothing)
    config = operator_config(tmp_path, [gateway_config(a, a), dict(gateway_config(b, b), webhookPort=free_port())],
                             namespaces=[m])
    op = OperatorProcess(cp, tmp_path, config).start()
    admin = None
    try:
        apply(cp, compute(m, "esm2", [(a, "scl-a"), (b, "scl-b")]))
        fed = wait_phase(cp, "computespec", m, "esm2", "Ready", timeout=180)["status"]["project"]
        flare = tmp_path / "flare"
        clients = {org: flare / f"site-{org}" / fed / org for org in (a, b)}
        for org, folder in clients.items():
            resources = json.loads((folder / "local" / "flareop_enforcement__p_resources.json").read_text())
            assert resources["components"][0]["args"]["approved_file"] == str(folder / "enforcement" / "approved.json")
            assert approved_uids(folder) == {}, f"{org} approved nothing yet"

        job = {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob", "metadata": {"name": "run1", "namespace": m},
               "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": 1, "parameters": PARAMS,
                        "activeDeadlineSeconds": 600}}
        apply(cp, job)
        waiting = wait_phase(cp, "federatedjob", m, "run1", "AwaitingApproval", timeout=60)
        uid, content_hash = waiting["metadata"]["uid"], waiting["status"]["contentHash"]
        wait_for(lambda: approved_uids(clients[a]) == {uid: content_hash}, timeout=30,
                 message="org-a's site allows the job it approved")
        assert approved_uids(clients[b]) == {}, "org-b has not decided: its site allows nothing"

        # The bypass: NVFlare jobs submitted straight through the FLARE API with the operator's admin kit.
        control = data[b].with_name("control.csv")
        shutil.copy(data[b], control)
        stale_atime(data[b])
        stale_atime(control)
        control.read_bytes()
        atime_works = was_read(control)  # this filesystem records reads (relatime)
        assert not was_read(data[b])
        admin = FlareAdmin(flare / fed / "admin@flareop.io", timeout=10.0)
        submit_dir = tmp_path / "bypass"
        sites = {a: "scl-a", b: "scl-b"}
        as_if_approved = submit_straight(admin, submit_dir, "as-if-approved", sites,
                                         {"uid": uid, "contentHash": content_hash, "attempt": 1, "job": f"{m}/run1"})
        made_up = submit_straight(admin, submit_dir, "made-up", sites,
                                  {"uid": "00000000-forged", "contentHash": "sha256:" + "0" * 64, "job": f"{m}/evil"})

        def history(job_id: str) -> str:
            return "\n".join(admin.job_meta(job_id).get("schedule_history") or [])

        wait_for(lambda: f"{b} has not approved job {m}/run1" in history(as_if_approved), timeout=60,
                 message="the server records org-b's refusal of the job it did not approve")
        wait_for(lambda: f"{b} has not approved job {m}/evil" in history(made_up)
                 and f"{a} has not approved job {m}/evil" in history(made_up), timeout=60,
                 message="the server records both orgs' refusals of the made-up job")
        meta = admin.job_meta(as_if_approved)
        assert meta["flareop"]["contentHash"] == content_hash, "the orchestrator's metadata reaches the job meta"
        assert meta["status"] == "SUBMITTED", meta["status"]
        assert f"{a} has not approved" not in history(as_if_approved), "org-a allows what it approved"
        assert "approve it with a JobApproval at" in history(as_if_approved)

        logs = {org: client_log(folder) for org, folder in clients.items()}
        assert f"REFUSED check_resources of NVFlare job {as_if_approved}" in logs[b]
        assert f"REFUSED check_resources of NVFlare job {made_up}" in logs[b]
        assert f"REFUSED check_resources of NVFlare job {made_up}" in logs[a]
        assert f"REFUSED check_resources of NVFlare job {as_if_approved}" not in logs[a]
        assert content_hash in logs[b] and f"at org {b}" in logs[b]
        for org, folder in clients.items():
            for job_id in (as_if_approved, made_up):
                assert not (folder / job_id).exists(), f"{org} deployed refused job {job_id}"
        if atime_works:
            assert not was_read(data[b]), "org-b's data was read by a job org-b never approved"
        for job_id in (as_if_approved, made_up):
            admin.abort(job_id)
        wait_for(lambda: all(admin.job_meta(j)["status"] == "FINISHED:ABORTED" for j in (as_if_approved, made_up)),
                 timeout=30, message="refused jobs aborted")

        # org-b approves: its site allows the job before the hub sees the decision, so the
        # operator's own submission is scheduled on the first try and reads the data.
        apply(cp, {"apiVersion": "flareop.io/v1alpha1", "kind": "JobApproval",
                   "metadata": {"name": "run1", "namespace": b},
                   "spec": {"job": {"namespace": m, "name": "run1"}, "contentHash": content_hash,
                            "decision": "Approve", "reason": "reviewed"}})
        done = wait_phase(cp, "federatedjob", m, "run1", "Succeeded", timeout=300)
        job_meta = admin.job_meta(done["status"]["nvflareJobId"])
        assert not [h for h in job_meta.get("schedule_history") or [] if "not approved" in h or "refuses" in h]
        if atime_works:
            assert was_read(data[b]), "the approved job read org-b's data"
        for org, folder in clients.items():  # each site got exactly the app its gateway approved
            assert f"starting NVFlare job {done['status']['nvflareJobId']}: its app digests to" in client_log(folder), org
        # The job ended: neither site takes it any more.
        wait_for(lambda: not approved_uids(clients[a]) and not approved_uids(clients[b]), timeout=60,
                 message="finished job withdrawn from both sites' approved lists")
    except BaseException:
        print(op.tail(120))
        for org in (a, b):
            folder = tmp_path / "flare" / f"site-{org}"
            for log in folder.rglob("log.txt"):
                print(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        if admin is not None:
            admin.close()
        op.stop()
        remove_namespaces(cp, a, b, m)
