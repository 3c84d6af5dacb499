"""Fuzzed manifests against a real kube-apiserver with the operator running (issue 19).

Every kind gets specs drawn from its own schema and mutations of a valid object (wrong types, values
past their bounds, text outside the BMP, huge strings, unknown fields, references to objects that
do not exist), created the way kubectl does (strict field validation). Checked:
- every refusal by the API server is a 400/422 that names the field (the mutated one, or a spec path);
- every accepted object of a kind the operator reports on gets a status for its generation, and each
  condition that is not True says why in words;
- the operator never logs a handler failure, a traceback or a status the API server refused; it keeps
  running and its liveness probe answers 200 after every batch;
- healthy objects created before the fuzz still reconcile after it.

The figures are printed at the end. `make test` uses seed 0 (repeatable); FUZZ_SEED=random draws a new
one (printed), FUZZ_SEED=n replays it; FUZZ_EXAMPLES=n sets the examples per kind and source (25).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.fuzz.manifests import Mutation, crds, generated, mutated
from tests.operator_harness import (
    Consortium,
    OperatorProcess,
    apply,
    compute,
    create_org_namespace,
    free_port,
    gateway_config,
    get,
    grant,
    health,
    install_crds,
    job,
    operator_config,
    policy,
    processes_under,
    remove_namespaces,
    seed_from_env,
)
from tests.sample_data import valid_samples
from tests.support.kube_fixtures import raw_request, wait_for

pytestmark = pytest.mark.fuzz

SEED = seed_from_env("FUZZ_SEED")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
SCHEMAS = crds()
PLURALS = {"ComputeSpec": "computespecs", "FederatedJob": "federatedjobs", "DatasetGrant": "datasetgrants",
           "OrgPolicy": "orgpolicies", "JobApproval": "jobapprovals", "AccessRequest": "accessrequests",
           "Gateway": "gateways"}
REPORTED = {"ComputeSpec", "FederatedJob", "DatasetGrant", "AccessRequest"}
"""Kinds the operator writes a status on for any object (a Gateway's only when it is an org's seat;
OrgPolicy and JobApproval are read, not reported on, with automatic orgs)."""
NOBODY = "fuzz-nobody"
"""The only consumer the fuzz's grants name: no fuzzed ComputeSpec can be approved, so no NVFlare
process ever starts and the suite stays a control-plane test."""
FIGURES: Counter = Counter()


@dataclass
class Fuzz:
    cp: object
    api: object
    a: str
    b: str
    m: str
    operator: OperatorProcess
    liveness: int
    accepted: list[tuple[str, str, str, Mutation | None]] = field(default_factory=list)
    count: int = 0

    def namespace(self, kind: str) -> str:
        """Hub kinds in the modeller's namespace; the site's in org-a's, but OrgPolicy in org-b's: an
        org has one, named default, which each try replaces (org-b decides nothing the suite needs)."""
        return self.m if kind in ("ComputeSpec", "FederatedJob") else self.b if kind == "OrgPolicy" else self.a

    def send(self, kind: str, spec, mutation: Mutation | None) -> None:
        self.count += 1
        ns, name = self.namespace(kind), "default" if kind == "OrgPolicy" else f"fz-{self.count}"
        if kind == "OrgPolicy":
            self.cp.kubectl("delete", "orgpolicy", "default", "-n", ns, "--ignore-not-found", "--wait=false")
        obj = {"apiVersion": "flareop.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": ns},
               "spec": spec}
        FIGURES["manifests tried"] += 1
        FIGURES[f"tried {mutation.kind if mutation else 'generated'}"] += 1
        from kubernetes.client.exceptions import ApiException

        try:
            raw_request(self.api, "POST", f"/apis/flareop.io/v1alpha1/namespaces/{ns}/{PLURALS[kind]}"
                        "?fieldValidation=Strict", body=obj)
        except ApiException as err:
            refusal = _refusal(err)
            assert err.status in (400, 422), f"{kind} refused with {err.status}, not as invalid: {refusal[:600]}"
            if mutation is not None:
                assert mutation.leaf in refusal or mutation.field in refusal, \
                    f"{kind} with {mutation.kind} at {mutation.field}: the refusal does not name it: {refusal[:600]}"
            else:
                assert "spec" in refusal, f"{kind}: the refusal names no field: {refusal[:600]}"
            FIGURES["rejected by the API server"] += 1
            return
        FIGURES["accepted"] += 1
        self.accepted.append((kind, ns, name, mutation))

    def healthy_operator(self) -> None:
        assert self.operator.proc.poll() is None, f"the operator exited:\n{self.operator.tail(80)}"
        status, body = health(self.liveness)
        assert status == 200, f"liveness answered {status}: {body[:400]}"
        FIGURES["liveness checks"] += 1
        bad = [line for line in self.operator.log_path.read_text(errors="replace").splitlines()
               if "failed with an exception" in line or "Traceback" in line
               or "refused the status" in line or "Unprocessable" in line]
        assert not bad, "the operator logged failures:\n" + "\n".join(bad[:20]) + f"\n...\n{self.operator.tail(60)}"


def _refusal(err) -> str:
    try:
        body = json.loads(err.body)
    except (TypeError, ValueError):
        return str(err.body)
    causes = (body.get("details") or {}).get("causes") or []
    return " | ".join([body.get("message", ""), *(f"{c.get('field')}: {c.get('message')}" for c in causes)])


def _base(kind: str, fz: Fuzz) -> dict:
    """The committed sample of `kind`, pointed at this test's namespaces and objects."""
    obj = next(o for _, o in valid_samples() if o["kind"] == kind)
    obj = json.loads(json.dumps(obj).replace('"modeller"', json.dumps(fz.m))
                     .replace('"org-a"', json.dumps(fz.a)).replace('"org-b"', json.dumps(fz.b)))
    spec = obj["spec"]
    if kind == "FederatedJob":
        spec["computeSpecRef"]["name"] = "esm2"
    elif kind == "DatasetGrant":
        spec["consumers"] = [NOBODY]
    elif kind in ("JobApproval", "AccessRequest"):
        (spec.get("job") if kind == "JobApproval" else spec["source"])["name"] = "healthy"
    return obj


DANGLING = {
    "ComputeSpec": {("datasets", 0, "org"): "no-such-org", ("datasets", 0, "id"): "no-such-dataset",
                    ("model", "id"): "no-such-model", ("model", "version"): "9.9.9"},
    "FederatedJob": {("computeSpecRef", "name"): "no-such-compute"},
    "DatasetGrant": {("dataset", "persistentVolumeClaim", "claimName"): "no-such-claim",
                     ("models", 0, "id"): "no-such-model"},
    "JobApproval": {("job", "name"): "no-such-job", ("job", "namespace"): "no-such-namespace"},
    "OrgPolicy": {("consumers", "allowed", 0): "no-such-org"},
    "AccessRequest": {("source", "name"): "no-such-job", ("source", "namespace"): "no-such-namespace",
                      ("compute", "datasets", 0, "org"): "no-such-org"},
    "Gateway": {("org",): "no-such-org", ("datasets", 0, "id"): "no-such-dataset"},
}


@pytest.fixture(scope="module")
def fz(control_plane, tmp_path_factory):
    cp = control_plane
    tmp = tmp_path_factory.mktemp("fuzz")
    install_crds(cp)
    c = Consortium()
    a, b, m = c.org("org-a"), c.org("org-b"), c.modeller
    for ns in (a, b, m):
        create_org_namespace(cp, ns, ns)
    data = tmp / "scl.csv"
    data.write_text("sequence,label\nMKV,Nucleus\n")
    apply(cp, policy(a, "Automatic"), policy(b, "Automatic"), grant(a, "scl-a", NOBODY, path=str(data)),
          compute(m, "esm2", [(a, "scl-a")]), job(m, "healthy", rounds=3))
    liveness = free_port()
    # Long resyncs: hundreds of objects, each reconciled on create and on change, not re-read every 2 s.
    config = operator_config(tmp, [gateway_config(a, a), gateway_config(b, b)], namespaces=[m, a, b],
                             resyncSeconds=30)
    op = OperatorProcess(cp, tmp, config, args=("--liveness", f"http://127.0.0.1:{liveness}/healthz")).start()
    api = cp.api_client()
    fuzz = Fuzz(cp, api, a, b, m, op, liveness)
    try:
        wait_for(lambda: health(liveness)[0] == 200, timeout=120, message="the operator's liveness answers")
        for kind, name, ns in (("computespec", "esm2", m), ("federatedjob", "healthy", m), ("datasetgrant", "scl-a", a)):
            wait_for(lambda kind=kind, name=name, ns=ns: _reported(get(cp, kind, ns, name)), timeout=120,
                     message=f"{kind} {name} reported on")
        print(f"FUZZ_SEED={SEED}")
        yield fuzz
    except BaseException:
        print(f"--- {op.log_path}\n{op.tail(150)}")
        raise
    finally:
        op.stop()
        api.close()
        remove_namespaces(cp, a, b, m)
    assert not processes_under(tmp / "flare"), "an NVFlare process started or was left"


def _reported(obj: dict | None) -> bool:
    """The operator has reported on this generation of the object."""
    if obj is None:
        return False
    st = obj.get("status") or {}
    current = st.get("observedGeneration") == obj["metadata"]["generation"]
    return current and bool(st.get("conditions") or st.get("decision"))


def _unclear(obj: dict) -> list[str]:
    """Conditions that are not True without words that say why."""
    return [f"{c['type']}={c['status']} ({c.get('reason')}): {c.get('message')!r}"
            for c in (obj.get("status") or {}).get("conditions") or []
            if c["status"] != "True" and len((c.get("message") or "").strip()) < 10]


def _fuzz(source, run) -> None:
    settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
             suppress_health_check=list(HealthCheck))(seed(SEED)(given(source)(run)))()


@pytest.mark.parametrize("kind", sorted(PLURALS))
def test_manifests_drawn_from_the_schema(fz, kind):
    _fuzz(generated(kind, SCHEMAS), lambda spec: fz.send(kind, spec, None))
    fz.healthy_operator()


@pytest.mark.parametrize("kind", sorted(PLURALS))
def test_mutated_manifests(fz, kind):
    _fuzz(mutated(kind, _base(kind, fz), SCHEMAS, DANGLING[kind]), lambda case: fz.send(kind, case[0]["spec"], case[1]))
    fz.healthy_operator()


def _stored(fz: Fuzz) -> dict[tuple[str, str, str], dict]:
    """Every object of the fuzzed kinds in the test's namespaces, by (kind, namespace, name): one list
    per kind (each kind is fuzzed in one namespace)."""
    out = {}
    for kind, plural in PLURALS.items():
        ns = fz.namespace(kind)
        for obj in raw_request(fz.api, "GET", f"/apis/flareop.io/v1alpha1/namespaces/{ns}/{plural}")["items"]:
            out[kind, ns, obj["metadata"]["name"]] = obj
    return out


def test_every_accepted_object_is_reported_on_with_reasons(fz):
    reported = [(kind, ns, name, m) for kind, ns, name, m in fz.accepted if kind in REPORTED]
    assert reported, "no object of a reported kind was accepted: the fuzz tried nothing the operator reads"

    def late() -> list[str]:
        stored = _stored(fz)
        return [f"{kind} {ns}/{name} ({m.kind + ' at ' + m.field if m else 'generated'}): "
                f"{json.dumps(stored.get((kind, ns, name), {}).get('status'))[:300]}"
                for kind, ns, name, m in reported if not _reported(stored.get((kind, ns, name)))]

    started = time.monotonic()
    try:
        wait_for(lambda: not late(), timeout=300, interval=3, message="every accepted object reported on")
    except TimeoutError:
        missing = late()
        raise AssertionError(f"{len(missing)} accepted objects not reported on:\n" + "\n".join(missing[:15])) from None
    FIGURES["seconds until all reported"] = round(time.monotonic() - started)
    stored = _stored(fz)
    unclear = {f"{kind} {ns}/{name}": u for kind, ns, name, _ in reported if (u := _unclear(stored[kind, ns, name]))}
    assert not unclear, f"conditions without a reason in words: {unclear}"
    FIGURES["accepted and reported"] = len(reported)
    FIGURES["accepted, not reported by design (OrgPolicy, JobApproval, Gateway)"] = len(fz.accepted) - len(reported)
    fz.healthy_operator()


def test_healthy_objects_still_reconcile(fz):
    cp = fz.cp
    cp.kubectl("patch", "federatedjob", "healthy", "-n", fz.m, "--type=merge", "-p", '{"spec": {"rounds": 4}}')
    cp.kubectl("patch", "datasetgrant", "scl-a", "-n", fz.a, "--type=merge", "-p", '{"spec": {"maxRounds": 7}}')
    cp.kubectl("patch", "computespec", "esm2", "-n", fz.m, "--type=merge", "-p", '{"spec": {"active": false}}')
    for kind, ns, name in (("federatedjob", fz.m, "healthy"), ("datasetgrant", fz.a, "scl-a"),
                           ("computespec", fz.m, "esm2")):
        obj = wait_for(lambda kind=kind, ns=ns, name=name: (o := get(cp, kind, ns, name)) and _reported(o) and o,
                       timeout=120, message=f"{kind} {name} reconciled after the fuzz")
        assert obj["metadata"]["generation"] == 2
    assert (get(cp, "computespec", fz.m, "esm2")["status"]["phase"]) == "Deactivated"
    fz.healthy_operator()


def test_figures(fz, capsys):
    assert FIGURES["rejected by the API server"] and FIGURES["accepted"], FIGURES
    with capsys.disabled():
        print(f"\nfuzz figures (FUZZ_SEED={SEED}, {EXAMPLES} examples per kind and source):")
        for key, value in sorted(FIGURES.items()):
            print(f"  {key}: {value}")
