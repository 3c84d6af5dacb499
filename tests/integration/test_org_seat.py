"""An org's seat cannot be taken (issue 12): org-c's site, with its scoped hub credential, publishes a
Gateway claiming org-b in org-c's own hub namespace. On a real API server with the real operator:
the hub counts it for no org — org-b's AccessRequests and client kit never go to org-c's namespace —,
flags it on the Gateway (OrgVerified=False, Ready=False with what to do, through the attacker's own
heartbeats) with a Warning Event, and says why org-b has no Gateway; once org-b's real site
registers in org-b's namespace, org-b's requests and kit go there."""

from __future__ import annotations

import json

import pytest

from flare_operator.builders.rbac import gateway_hub_role, role_binding
from flare_operator.builders.requests import kit_secret_name
from tests.operator_harness import (
    Consortium,
    OperatorProcess,
    apply,
    compute,
    create_org_namespace,
    gateway_config,
    get,
    grant,
    install_crds,
    operator_config,
    policy,
    remove_namespaces,
    running_operator,
)
from tests.support.kube_fixtures import wait_for

pytestmark = pytest.mark.integration


def condition(obj: dict | None, type_: str) -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def names(cp, kind: str, namespace: str, *selector: str) -> list[str]:
    return cp.kubectl("get", kind, "-n", namespace, "-o", "name", *selector).stdout.split()


def job(namespace: str, name: str) -> dict:
    return {"apiVersion": "flareop.io/v1alpha1", "kind": "FederatedJob", "metadata": {"name": name, "namespace": namespace},
            "spec": {"computeSpecRef": {"name": "esm2"}, "rounds": 1, "parameters": {"preset": "tiny"},
                     "privacy": {"differentialPrivacy": {"enabled": False}}}}


def test_a_gateway_in_another_orgs_namespace_cannot_take_the_orgs_seat(control_plane, tmp_path):
    cp = control_plane
    install_crds(cp)
    c = Consortium()
    b, evil, m = c.org("org-b"), c.org("org-c"), c.modeller
    for ns in (b, evil, m):
        create_org_namespace(cp, ns, ns)
    try:
        apply(cp, grant(b, "scl-b", m), policy(b, "Automatic"),
              grant(evil, "scl-b", m), policy(evil, "Automatic"))  # the bait: org-c would approve org-b's request
        # org-c's site gets the hub credential every site gets: its own hub namespace only.
        user = f"gateway-{evil}"
        apply(cp, gateway_hub_role(evil), role_binding(evil, "flare-gateway", user=user))
        scoped = cp.user_kubeconfig(user)
        attacker = {"org": b, "site": b, "namespace": evil, "hubNamespace": evil, "hubKubeconfig": str(scoped),
                    "runtime": "process", "dataRoots": ["/"]}
        config = operator_config(tmp_path, [attacker], namespaces=[m, b, evil], heartbeatSeconds=1)
        with running_operator(cp, tmp_path, config):
            flagged = wait_for(lambda: (g := get(cp, "gateway", evil, b)) and condition(g, "OrgVerified").get(
                "status") == "False" and g, timeout=60, message="the hub flagged org-c's Gateway claiming org-b")
            verified, ready = condition(flagged, "OrgVerified"), condition(flagged, "Ready")
            assert verified["reason"] == "OrgMismatch"
            assert verified["message"].startswith(
                f"namespace {evil} belongs to org {evil} (label flareop.io/org); a Gateway there cannot register "
                f"org {b}: the hub ignores it"), verified["message"]
            assert (ready["status"], ready["reason"], ready["message"]) == ("False", "OrgMismatch", verified["message"])
            events = json.loads(cp.kubectl("get", "events", "-n", evil, "-o", "json").stdout)["items"]
            assert any(e["reason"] == "OrgMismatch" and e["type"] == "Warning" and e["regarding" if "regarding" in e
                       else "involvedObject"]["name"] == b for e in events), events

            # The attacker's own heartbeats do not turn it back to Ready.
            beat = flagged["status"]["lastHeartbeatTime"]
            for _ in range(3):
                now = wait_for(lambda beat=beat: (g := get(cp, "gateway", evil, b))["status"]["lastHeartbeatTime"] != beat
                               and g, timeout=30, message="the next heartbeat")
                assert condition(now, "Connected")["status"] == "True"
                assert condition(now, "Ready")["status"] == "False" and condition(now, "Ready")["reason"] == "OrgMismatch"
                beat = now["status"]["lastHeartbeatTime"]

            # A ComputeSpec and a job that need org-b: nothing goes to org-c; both say why org-b is missing.
            apply(cp, compute(m, "esm2", [(b, "scl-b")], active=False), job(m, "run1"))
            why = f"{b}'s Gateway {b} is in namespace {evil}, which belongs to {evil}"
            site = wait_for(lambda: next(iter((get(cp, "computespec", m, "esm2").get("status") or {}).get("sites") or []),
                                         None), timeout=60, message="the ComputeSpec's view of org-b")
            assert site["message"] == f"{b} has no Gateway on the hub: {why}", site
            approvals = wait_for(lambda: (get(cp, "federatedjob", m, "run1").get("status") or {}).get("approvals"),
                                 timeout=60, message="the job's view of org-b")
            assert approvals[0]["org"] == b and why in approvals[0]["message"], approvals

            # org-b's real site registers in org-b's namespace: the seat is org-b's.
            legit_cfg = operator_config(tmp_path / "b", [gateway_config(b, b)], mode="gateway", heartbeatSeconds=1)
            (tmp_path / "b").mkdir()
            legit = OperatorProcess(cp, tmp_path / "b", legit_cfg, name="org-b-gateway").start()
            try:
                wait_for(lambda: condition(get(cp, "gateway", b, b), "OrgVerified").get("status") == "True"
                         and condition(get(cp, "gateway", b, b), "Ready").get("status") == "True",
                         timeout=60, message="org-b's own Gateway counts")
                request = f"compute-{m}-esm2"
                wait_for(lambda: (get(cp, "accessrequest", b, request) or {}).get("status", {}).get("decision")
                         == "Approved", timeout=60, message="org-b decided at its own site")
                wait_for(lambda: get(cp, "secret", b, kit_secret_name(request)), timeout=120,
                         message="org-b's client kit delivered to org-b's namespace")
                wait_for(lambda: get(cp, "accessrequest", b, f"job-{m}-run1"), timeout=60,
                         message="the job asks org-b in org-b's namespace")
            except BaseException:
                print(f"--- {legit.log_path}\n{legit.tail(80)}")
                raise
            finally:
                legit.stop()

            assert names(cp, "accessrequests", evil) == [], "no request of org-b ever went to org-c"
            assert names(cp, "secrets", evil, "-l", "flareop.io/federation") == [], "no kit went to org-c"
            assert condition(get(cp, "gateway", evil, b), "OrgVerified")["reason"] == "OrgMismatch"
    finally:
        remove_namespaces(cp, b, evil, m)
