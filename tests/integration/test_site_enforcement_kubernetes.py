"""Site enforcement with the kubernetes runtime (real API server, kwok nodes): each site's gateway
materialises its own decisions into the ConfigMap `<federation>-approved-jobs` its client mounts,
and the client's local configuration loads the enforcement component that reads it. Approvals and
revocations change the ConfigMap only: the client's StatefulSet and Pod stay as they are."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.operator_harness import (
    OperatorProcess,
    apply,
    compute,
    consortium_namespaces,
    free_port,
    gateway_config,
    get,
    grant,
    policy,
    remove_namespaces,
    wait_phase,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.integration


def approved(cp, namespace: str, fed: str) -> dict[str, tuple[str, str]] | None:
    cm = get(cp, "configmap", namespace, f"{fed}-approved-jobs")
    if cm is None:
        return None
    doc = json.loads(cm["data"]["approved.json"])
    return {e["uid"]: (e["contentHash"], e["job"]) for e in doc["approved"]}


def nudged(cp, namespace: str, fed: str) -> bool:
    """The client Pod carries the digest of the document now in its ConfigMap: the annotation change
    that makes the kubelet rewrite the mounted file at once instead of at its next periodic sync."""
    cm = get(cp, "configmap", namespace, f"{fed}-approved-jobs")
    digest = hashlib.sha256(cm["data"]["approved.json"].encode()).hexdigest()[:16]
    annotations = client_pod(cp, namespace)["metadata"].get("annotations") or {}
    return annotations.get("flareop.io/approved-jobs-sha256") == digest


def client_pod(cp, namespace: str) -> dict:
    pods = json.loads(cp.kubectl("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=client",
                                 "-o", "json").stdout)["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def test_sites_materialise_their_approvals_into_the_clients_configmap(control_plane, tmp_path):
    cp = control_plane
    _, a, b, m = consortium_namespaces(cp)
    apply(cp, grant(a, "scl-a", m), grant(b, "scl-b", m), policy(a, "Automatic"), policy(b, "Manual"))
    sites = [dict(gateway_config(org, org), runtime="kubernetes") for org in (a, b)]
    sites[1]["webhookPort"] = free_port()  # org-b's approvals count only as its webhook records them
    config = {"mode": "all", "runtime": "kubernetes", "adminRoute": "none", "resyncSeconds": 2, "heartbeatSeconds": 5, "gateways": sites,
              "namespaces": [m], "workdir": str(tmp_path / "work")}
    op = OperatorProcess(cp, tmp_path, config).start()
    try:
        apply(cp, compute(m, "esm2", [(a, "scl-a"), (b, "scl-b")]))
        fed = wait_phase(cp, "computespec", m, "esm2", "Ready", timeout=120)["status"]["project"]
        before = {}
        for org in (a, b):
            assert approved(cp, org, fed) == {}, f"{org}'s client starts with nothing approved"
            sts = get(cp, "statefulset", org, f"{fed}-{org}")
            volume = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "enforcement")
            assert volume["configMap"]["name"] == f"{fed}-approved-jobs"
            local = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "local-config")
            local_files = get(cp, "configmap", org, local["configMap"]["name"])["data"]
            component = json.loads(local_files["flareop_enforcement__p_resources.json"])["components"][0]
            assert component["path"] == "flare_operator.nvflare.enforcement.ApprovedJobsOnly"
            assert component["args"] == {"approved_file": "/etc/flareop/enforcement/approved.json", "org": org}
            before[org] = (sts["metadata"]["generation"], client_pod(cp, org)["metadata"]["uid"])

        apply(cp, {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob",
                   "metadata": {"name": "run1", "namespace": m},
                   "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": 2, "parameters": {"preset": "tiny"}}})
        waiting = wait_phase(cp, "federatedjob", m, "run1", "AwaitingApproval", timeout=60)
        uid, first_hash = waiting["metadata"]["uid"], waiting["status"]["contentHash"]
        wait_for(lambda: approved(cp, a, fed) == {uid: (first_hash, f"{m}/run1")}, timeout=30,
                 message="org-a (automatic) allows the job at its client")
        assert approved(cp, b, fed) == {}, "org-b has not decided"

        apply(cp, {"apiVersion": "flareop.io/v1alpha1", "kind": "JobApproval",
                   "metadata": {"name": "run1", "namespace": b},
                   "spec": {"job": {"namespace": m, "name": "run1"}, "contentHash": first_hash,
                            "decision": "Approve"}})
        wait_phase(cp, "federatedjob", m, "run1", "Queued", timeout=60)
        assert approved(cp, b, fed) == {uid: (first_hash, f"{m}/run1")}, "approved at org-b before the hub saw it"
        wait_for(lambda: nudged(cp, b, fed), timeout=30, message="org-b's client Pod nudged to reload the document")

        # Revocation at org-b (issue 12, 6): deleting the approval withdraws the job from its client at once.
        cp.kubectl("delete", "jobapproval", "run1", "-n", b)
        wait_for(lambda: approved(cp, b, fed) == {}, timeout=30, message="approval deleted: withdrawn at org-b")
        wait_for(lambda: nudged(cp, b, fed), timeout=30, message="the revocation nudged org-b's client Pod too")
        apply(cp, {"apiVersion": "flareop.io/v1alpha1", "kind": "JobApproval",
                   "metadata": {"name": "run1-again", "namespace": b},
                   "spec": {"job": {"namespace": m, "name": "run1"}, "contentHash": first_hash,
                            "decision": "Approve"}})
        wait_for(lambda: approved(cp, b, fed) == {uid: (first_hash, f"{m}/run1")}, timeout=30,
                 message="approved again at org-b")

        # The job changes: org-a decides again for the new hash, org-b's approval no longer counts.
        cp.kubectl("patch", "federatedjob", "run1", "-n", m, "--type=merge", "-p", '{"spec":{"rounds":3}}')
        again = wait_phase(cp, "federatedjob", m, "run1", "AwaitingApproval", timeout=60)
        new_hash = again["status"]["contentHash"]
        assert new_hash != first_hash
        wait_for(lambda: approved(cp, a, fed) == {uid: (new_hash, f"{m}/run1")} and approved(cp, b, fed) == {},
                 timeout=30, message="org-a re-approved the new hash; org-b's approval withdrawn")

        # Deleting the job withdraws it everywhere.
        cp.kubectl("delete", "federatedjob", "run1", "-n", m, "--timeout=60s")
        wait_for(lambda: approved(cp, a, fed) == {} and approved(cp, b, fed) == {}, timeout=30,
                 message="deleted job withdrawn from both sites")

        for org in (a, b):  # none of this restarted a client
            sts = get(cp, "statefulset", org, f"{fed}-{org}")
            assert (sts["metadata"]["generation"], client_pod(cp, org)["metadata"]["uid"]) == before[org]

        # A grant that expires (by the site's own clock) withdraws everything it allowed: the job from
        # the client's list, and the client itself (the compute is no longer granted either).
        apply(cp, {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob", "metadata": {"name": "run2", "namespace": m},
                   "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": 2, "parameters": {"preset": "tiny"}}})
        run2 = wait_phase(cp, "federatedjob", m, "run2", "AwaitingApproval", timeout=60)
        apply(cp, {"apiVersion": "flareop.io/v1alpha1", "kind": "JobApproval", "metadata": {"name": "run2", "namespace": b},
                   "spec": {"job": {"namespace": m, "name": "run2"}, "contentHash": run2["status"]["contentHash"],
                            "decision": "Approve"}})
        wait_for(lambda: run2["metadata"]["uid"] in (approved(cp, b, fed) or {}), timeout=30, message="run2 at org-b")
        expires = (datetime.now(UTC) + timedelta(seconds=8)).strftime("%Y-%m-%dT%H:%M:%SZ")
        apply(cp, grant(b, "scl-b", m, expiresAt=expires))
        wait_for(lambda: not approved(cp, b, fed) and get(cp, "statefulset", b, f"{fed}-{b}") is None, timeout=40,
                 message="grant expired: the job withdrawn and the client removed at org-b")
        # The site withdraws first, then records its decision on the AccessRequest (its next write).
        request = wait_for(
            lambda: (s := get(cp, "accessrequest", b, f"job-{m}-run2")["status"])["decision"] == "Rejected" and s,
            timeout=30, message="org-b's AccessRequest for run2 Rejected",
        )  # fmt: skip
        assert f"grant scl-b expired at {expires}" in request["message"], request
    except BaseException:
        print(op.tail(120))
        raise
    finally:
        op.stop()
        remove_namespaces(cp, a, b, m)
