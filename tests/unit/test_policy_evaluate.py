"""policy.evaluate: every rule passing and failing with its exact message, and how org decisions are made.

The inputs are the committed samples (crds/samples): org-b's grant scl-org-b (consumers [modeller],
esm2-finetune >=1.0.0,<2.0.0, max 10 rounds, min 2 orgs, DP required, max epsilon 10, budget 30,
expires 2027-12-31), its OrgPolicy (cpu 8, memory 32Gi, gpu 2, max 86400 s, DP floor with max
epsilon 10, allowed [modeller]) and the job esm2-scl-run1's AccessRequest (5 rounds, 3600 s,
epsilon 8, client cpu 2 / 8Gi / 1 gpu, orgs org-a and org-b), tweaked per case.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from flare_operator.api import (
    AccessRequestSpec,
    AccessRequestStatus,
    DatasetGrantSpec,
    DatasetGrantStatus,
    Decision,
    JobApprovalSpec,
    OrgPolicySpec,
    Reason,
    RuleResult,
)
from flare_operator.policy import evaluate as ev
from flare_operator.policy import ledger
from flare_operator.policy.evaluate import ApprovalView, Evaluation, GrantView, _num, evaluate
from tests.sample_data import VALID_DIR

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
HASH = "sha256:78ebd9afe2355f2db1e7cf4aff7ee2bd9a79cc64ca5396f5fda340346b323176"  # the sample request's
OLD_HASH = "sha256:" + "0" * 64
UID = "6f1d3c2e-8a4b-4f0e-9c7d-2b1a0e9f8d7c"
G = "DatasetGrant/scl-org-b"
P = "OrgPolicy/default"
DELETE = object()


def _sample(kind: str) -> dict[str, Any]:
    return yaml.safe_load((VALID_DIR / f"{kind}.yaml").read_text())["spec"]


REQUEST, GRANT, POLICY, APPROVAL = (_sample(k) for k in ("accessrequest", "datasetgrant", "orgpolicy", "jobapproval"))
AUTOMATIC = {"approvalMode": "Automatic"}


def _tweak(base: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    """A deep copy of base with dotted paths set (DELETE removes the key)."""
    out = copy.deepcopy(base)
    for path, value in (patch or {}).items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


def request(patch: dict[str, Any] | None = None) -> AccessRequestSpec:
    return AccessRequestSpec.model_validate(_tweak(REQUEST, patch))


def compute_request(patch: dict[str, Any] | None = None) -> AccessRequestSpec:
    base = {"source.kind": "Compute", "source.name": "esm2-scl", "rounds": DELETE, "durationSeconds": DELETE,
            "differentialPrivacy": DELETE, "contentHash": "sha256:" + "c" * 64}
    return request({**base, **(patch or {})})


def grant(patch: dict[str, Any] | None = None, name: str = "scl-org-b", status: DatasetGrantStatus | None = None):
    return GrantView(name=name, spec=DatasetGrantSpec.model_validate(_tweak(GRANT, patch)), status=status)


def policy(patch: dict[str, Any] | None = None) -> OrgPolicySpec:
    return OrgPolicySpec.model_validate(_tweak(POLICY, patch))


def approval(patch: dict[str, Any] | None = None, name: str = "esm2-scl-run1", created: datetime = NOW,
             decided_by: str | None = "alice@org-b") -> ApprovalView:
    return ApprovalView(name=name, spec=JobApprovalSpec.model_validate(_tweak(APPROVAL, patch)), created=created,
                        decided_by=decided_by)


def run(req=None, grants=None, pol: Any = "auto", approvals=(), now=NOW) -> Evaluation:
    result = evaluate(
        req if req is not None else request(),
        grants=[grant()] if grants is None else grants,
        policy=policy(AUTOMATIC) if pol == "auto" else pol,
        approvals=list(approvals),
        now=now,
    )
    # Whatever the inputs, the answer fits the AccessRequest's status as the CRD bounds it.
    AccessRequestStatus(decision=result.decision, reason=result.reason, message=result.message,
                        rules=result.status_rules(), epsilon_reserved=result.epsilon_to_reserve)
    return result


def triples(rules) -> list[tuple[str, str, str]]:
    return [(r.rule, r.source, r.message) for r in rules]


# --- every rule passing --------------------------------------------------------------------------

PASSING_JOB_RULES = [
    ("DatasetGranted", G, "org-b: dataset scl-org-b is granted by scl-org-b"),
    ("ConsumerAllowed", G, "org-b: grant scl-org-b allows consumer org modeller"),
    ("ModelAllowed", G, "org-b: grant scl-org-b allows model esm2-finetune 1.0.0 (versions >=1.0.0,<2.0.0)"),
    ("GrantNotExpired", G, "org-b: grant scl-org-b is valid until 2027-12-31T00:00:00Z"),
    ("MinParticipatingOrgs", G, "org-b: grant scl-org-b needs at least 2 participating orgs; the federation has 2"),
    ("MaxRounds", G, "org-b: grant scl-org-b allows at most 10 rounds; job asks 5"),
    ("DifferentialPrivacy", G, "org-b: job uses differential privacy with epsilon 8.0, within grant scl-org-b's maximum 10.0"),
    ("EpsilonBudget", G, "org-b: grant scl-org-b has 30.0 of 30.0 epsilon left; job asks 8.0"),
    ("ConsumerAllowed", P, "org-b: OrgPolicy allows consumer org modeller"),
    ("ClientResources", P,
     "org-b: OrgPolicy allows a client at most cpu 8, memory 32Gi and gpu 2; job asks cpu 2, memory 8Gi and gpu 1"),
    ("JobDuration", P, "org-b: OrgPolicy allows jobs at most 86400 s (activeDeadlineSeconds); job asks 3600"),
    ("DifferentialPrivacy", P, "org-b: job uses differential privacy with epsilon 8.0, within OrgPolicy's maximum 10.0"),
]


def test_every_rule_passes_with_its_message_and_automatic_policy_approves():
    result = run(pol=policy(AUTOMATIC))
    assert triples(result.rules) == PASSING_JOB_RULES
    assert all(r.passed for r in result.rules)
    assert {r.rule for r in result.rules} == set(ev.RULES) - {ev.MANUAL_APPROVAL, ev.CONTENT_VERIFIED}
    assert result.decision == Decision.APPROVED
    assert result.reason == Reason.APPROVED
    assert result.message == "org-b: approved automatically; all 12 rules passed"
    assert result.epsilon_to_reserve == 8.0
    assert result.charged_grants == ("scl-org-b",)
    assert result.approval is None


def test_rule_names_are_stable_public_api():
    assert ev.RULES == (
        "ContentVerified", "DatasetGranted", "ConsumerAllowed", "ModelAllowed", "GrantNotExpired", "MinParticipatingOrgs",
        "ClientResources", "MaxRounds", "JobDuration", "DifferentialPrivacy", "EpsilonBudget", "ManualApproval",
    )


def test_unconfigured_rules_are_not_listed():
    bare_grant = grant({"maxRounds": DELETE, "privacy": {}, "expiresAt": DELETE, "minParticipatingOrgs": DELETE})
    result = run(req=request({"differentialPrivacy": DELETE}), grants=[bare_grant], pol=OrgPolicySpec(
        approval_mode="Automatic"))
    assert triples(result.rules) == [
        ("DatasetGranted", G, "org-b: dataset scl-org-b is granted by scl-org-b"),
        ("ConsumerAllowed", G, "org-b: grant scl-org-b allows consumer org modeller"),
        ("ModelAllowed", G, "org-b: grant scl-org-b allows model esm2-finetune 1.0.0 (versions >=1.0.0,<2.0.0)"),
        ("MinParticipatingOrgs", G,
         "org-b: grant scl-org-b needs at least 1 participating orgs; the federation has 2"),
    ]
    assert result.decision == Decision.APPROVED
    assert result.epsilon_to_reserve == 0.0  # approved, but without DP nothing is reserved


# --- every rule failing, one at a time -----------------------------------------------------------

# id, request patch, grant patch, policy patch, the one failing rule (rule, source, message)
FAILING = [
    ("dataset-not-granted", {"datasets": ["scl-org-b", "tox-org-b"]}, {}, {},
     ("DatasetGranted", "", "org-b has no DatasetGrant for dataset tox-org-b")),
    ("consumer-not-in-grant", {}, {"consumers": ["org-c"]}, {},
     ("ConsumerAllowed", G, "org-b: grant scl-org-b does not allow consumer org modeller (not in its spec.consumers)")),
    ("consumer-blocked-by-policy", {}, {}, {"consumers": {"blocked": ["modeller"]}},
     ("ConsumerAllowed", P, "org-b: OrgPolicy blocks consumer org modeller")),
    ("consumer-not-allowed-by-policy", {}, {}, {"consumers": {"allowed": ["org-c"]}},
     ("ConsumerAllowed", P,
      "org-b: OrgPolicy serves only the consumer orgs in spec.consumers.allowed, and modeller is not one")),
    ("model-id-not-granted", {}, {"models": [{"id": "chemprop", "versions": "*"}, {"id": "alpha"}]}, {},
     ("ModelAllowed", G, "org-b: grant scl-org-b does not allow model esm2-finetune (it allows: alpha, chemprop)")),
    ("model-version-outside-constraint", {"model.version": "2.1.0"}, {}, {},
     ("ModelAllowed", G,
      "org-b: grant scl-org-b allows model esm2-finetune only in versions >=1.0.0,<2.0.0; job asks 2.1.0")),
    ("model-prerelease-not-named", {"model.version": "1.5.0-rc.1"}, {}, {},
     ("ModelAllowed", G,
      "org-b: grant scl-org-b allows model esm2-finetune only in versions >=1.0.0,<2.0.0; job asks 1.5.0-rc.1")),
    ("model-version-not-comparable", {"model.version": "1.0.0-custom"}, {}, {},
     ("ModelAllowed", G,
      "org-b: model version 1.0.0-custom cannot be compared with grant scl-org-b's version constraint "
      "(use MAJOR.MINOR.PATCH[-alpha.N|-beta.N|-rc.N], e.g. 1.0.0)")),
    ("model-constraint-invalid", {}, {"models": [{"id": "esm2-finetune", "versions": "=>1.0"}]}, {},
     ("ModelAllowed", G,
      "org-b: grant scl-org-b has an invalid version constraint '=>1.0' for model esm2-finetune; org-b's admin "
      "must fix it (PEP 440, e.g. '>=1.0.0,<2.0.0', '1.2.*' or '*')")),
    ("grant-expired", {}, {"expiresAt": "2026-11-25T08:59:59Z"}, {},
     ("GrantNotExpired", G, "org-b: grant scl-org-b expired at 2026-11-25T08:59:59Z")),
    ("grant-expires-now", {}, {"expiresAt": "2026-11-25T09:00:00Z"}, {},
     ("GrantNotExpired", G, "org-b: grant scl-org-b expired at 2026-11-25T09:00:00Z")),
    ("too-few-orgs", {"participatingOrgs": ["org-b", "org-a"]}, {"minParticipatingOrgs": 3}, {},
     ("MinParticipatingOrgs", G,
      "org-b: grant scl-org-b needs at least 3 participating orgs; the federation has 2 (org-a, org-b)")),
    ("too-few-orgs-empty-list-counts-this-org", {"participatingOrgs": []}, {}, {},
     ("MinParticipatingOrgs", G,
      "org-b: grant scl-org-b needs at least 2 participating orgs; the federation has 1 (org-b)")),
    ("client-cpu-and-gpu-too-big", {"client.cpu": "16", "client.gpu": 4}, {}, {},
     ("ClientResources", P, "org-b: OrgPolicy allows a client at most cpu 8 and gpu 2; job asks cpu 16 and gpu 4")),
    ("client-memory-too-big", {"client.memory": "32769Mi"}, {}, {},
     ("ClientResources", P, "org-b: OrgPolicy allows a client at most memory 32Gi; job asks memory 32769Mi")),
    ("too-many-rounds", {"rounds": 20}, {}, {},
     ("MaxRounds", G, "org-b: grant scl-org-b allows at most 10 rounds; job asks 20")),
    ("rounds-not-stated", {"rounds": DELETE}, {}, {},
     ("MaxRounds", G, "org-b: grant scl-org-b allows at most 10 rounds; the job states no rounds")),
    ("duration-not-set", {"durationSeconds": DELETE}, {}, {},
     ("JobDuration", P,
      "org-b: OrgPolicy requires jobs to set spec.activeDeadlineSeconds (at most 86400); the job sets none")),
    ("duration-too-long", {"durationSeconds": 172800}, {}, {},
     ("JobDuration", P, "org-b: OrgPolicy allows jobs at most 86400 s (activeDeadlineSeconds); job asks 172800")),
    ("dp-required-by-grant", {"differentialPrivacy.enabled": False}, {}, {"privacyFloor": {}},
     ("DifferentialPrivacy", G,
      "org-b: grant scl-org-b requires differential privacy; enable spec.privacy.differentialPrivacy with "
      "epsilon at most 10.0")),
    ("dp-required-by-policy", {"differentialPrivacy": DELETE}, {"privacy": {}},
     {"privacyFloor": {"dpRequired": True}},
     ("DifferentialPrivacy", P, "org-b: OrgPolicy requires differential privacy; enable spec.privacy.differentialPrivacy")),
    ("epsilon-above-grant-maximum", {"differentialPrivacy.epsilon": 12}, {}, {"privacyFloor.maxEpsilon": 20},
     ("DifferentialPrivacy", G, "org-b: grant scl-org-b allows epsilon at most 10.0 per job; job asks 12.0")),
    ("epsilon-above-policy-floor", {}, {}, {"privacyFloor.maxEpsilon": 5},
     ("DifferentialPrivacy", P, "org-b: OrgPolicy allows epsilon at most 5.0 per job; job asks 8.0")),
]


@pytest.mark.parametrize(("req_patch", "grant_patch", "pol_patch", "expected"),
                         [c[1:] for c in FAILING], ids=[c[0] for c in FAILING])
def test_one_failing_rule_rejects_with_its_message(req_patch, grant_patch, pol_patch, expected):
    result = run(req=request(req_patch), grants=[grant(grant_patch)], pol=policy({**AUTOMATIC, **pol_patch}))
    assert triples(result.failed) == [expected]
    assert result.decision == Decision.REJECTED
    assert result.reason == Reason.REJECTED
    assert result.message == expected[2]
    assert result.epsilon_to_reserve == 0.0


def test_epsilon_budget_exhausted_names_what_is_left():
    used = ledger.spend(ledger.reserve(None, "modeller/old", "old-uid", 28), "old-uid", 28)
    result = run(grants=[grant(status=used)])
    assert triples(result.failed) == [
        ("EpsilonBudget", G, "org-b: grant scl-org-b has 2.0 of 30.0 epsilon left; job asks 8.0")]
    assert result.decision == Decision.REJECTED
    assert result.message == "org-b: grant scl-org-b has 2.0 of 30.0 epsilon left; job asks 8.0"


def test_several_failures_are_all_reported_in_order():
    result = run(
        req=request({"rounds": 20, "client.gpu": 4, "model.version": "2.0.0"}),
        grants=[grant({"expiresAt": "2026-01-01T00:00:00Z"})],
        pol=policy({**AUTOMATIC, "consumers": {"blocked": ["modeller"]}}),
    )
    expected = [
        ("ModelAllowed", G,
         "org-b: grant scl-org-b allows model esm2-finetune only in versions >=1.0.0,<2.0.0; job asks 2.0.0"),
        ("GrantNotExpired", G, "org-b: grant scl-org-b expired at 2026-01-01T00:00:00Z"),
        ("MaxRounds", G, "org-b: grant scl-org-b allows at most 10 rounds; job asks 20"),
        ("ConsumerAllowed", P, "org-b: OrgPolicy blocks consumer org modeller"),
        ("ClientResources", P, "org-b: OrgPolicy allows a client at most gpu 2; job asks gpu 4"),
    ]
    assert triples(result.failed) == expected
    assert result.message == " | ".join(m for _, _, m in expected)
    assert result.decision == Decision.REJECTED
    # passed rules are still listed
    assert {r.rule for r in result.rules if r.passed} >= {"DatasetGranted", "ConsumerAllowed", "EpsilonBudget"}


# --- rules passing in their less obvious forms -----------------------------------------------------


@pytest.mark.parametrize(
    ("versions", "version", "shown"),
    [
        ("*", "7.3.1-rc.1", "org-b: grant scl-org-b allows model esm2-finetune in any version"),
        ("1.0.*", "1.0.4", "org-b: grant scl-org-b allows model esm2-finetune 1.0.4 (versions 1.0.*)"),
        ("1.0.0", "1.0.0", "org-b: grant scl-org-b allows model esm2-finetune 1.0.0 (versions 1.0.0)"),
        ("~=1.2", "1.9.0", "org-b: grant scl-org-b allows model esm2-finetune 1.9.0 (versions ~=1.2)"),
        (">=1.1.0-rc.1", "1.1.0-rc.2", "org-b: grant scl-org-b allows model esm2-finetune 1.1.0-rc.2 (versions >=1.1.0-rc.1)"),
        ("<2, !=1.0.1", "1.0.2", "org-b: grant scl-org-b allows model esm2-finetune 1.0.2 (versions <2, !=1.0.1)"),
    ],
)
def test_model_version_constraints(versions, version, shown):
    result = run(req=request({"model.version": version}),
                 grants=[grant({"models": [{"id": "esm2-finetune", "versions": versions}]})])
    (model_rule,) = [r for r in result.rules if r.rule == "ModelAllowed"]
    assert (model_rule.passed, model_rule.message) == (True, shown)


def test_model_listed_twice_either_constraint_allows():
    g = grant({"models": [{"id": "esm2-finetune", "versions": "<1.0.0"}, {"id": "esm2-finetune", "versions": "2.*"}]})
    assert run(req=request({"model.version": "2.3.0"}), grants=[g]).decision == Decision.APPROVED
    rejected = run(req=request({"model.version": "1.5.0"}), grants=[g])
    assert rejected.message == (
        "org-b: grant scl-org-b allows model esm2-finetune only in versions <1.0.0 or 2.*; job asks 1.5.0")


def test_client_quantities_are_compared_not_strings():
    equal = request({"client.cpu": "8000m", "client.memory": "32768Mi", "client.gpu": 2})
    result = run(req=equal)
    (rule,) = [r for r in result.rules if r.rule == "ClientResources"]
    assert rule.passed
    assert result.decision == Decision.APPROVED


def test_dp_not_required_and_not_used():
    result = run(req=request({"differentialPrivacy.enabled": False}),
                 grants=[grant({"privacy": {}})], pol=policy({**AUTOMATIC, "privacyFloor": {}}))
    # Nothing about DP is configured (epsilon limits need dpRequired, a CEL rule), so no DP rule is listed.
    assert [r for r in result.rules if r.rule == "DifferentialPrivacy"] == []
    assert result.decision == Decision.APPROVED
    assert result.epsilon_to_reserve == 0.0


def test_naive_now_is_utc():
    g = grant({"expiresAt": "2026-11-25T09:30:00Z"})
    assert run(grants=[g], now=datetime(2026, 11, 25, 9, 0)).decision == Decision.APPROVED
    assert run(grants=[g], now=datetime(2026, 11, 25, 10, 0)).decision == Decision.REJECTED


# --- grants: several per dataset, several datasets -------------------------------------------------


def test_an_expired_grant_is_replaced_by_a_valid_one_for_the_same_dataset():
    old = grant({"expiresAt": "2026-01-01T00:00:00Z"}, name="a-old")
    new = grant({"expiresAt": "2027-06-01T00:00:00Z"}, name="b-new")
    result = run(grants=[new, old])
    assert result.decision == Decision.APPROVED
    assert result.charged_grants == ("b-new",)
    assert all(r.source in ("DatasetGrant/b-new", P) for r in result.rules)


def test_when_no_grant_for_a_dataset_allows_the_request_every_candidate_says_why():
    old = grant({"expiresAt": "2026-01-01T00:00:00Z"}, name="a-old")
    other = grant({"consumers": ["org-c"]}, name="b-other")
    result = run(grants=[other, old])
    assert triples(result.failed) == [
        ("GrantNotExpired", "DatasetGrant/a-old", "org-b: grant a-old expired at 2026-01-01T00:00:00Z"),
        ("ConsumerAllowed", "DatasetGrant/b-other",
         "org-b: grant b-other does not allow consumer org modeller (not in its spec.consumers)"),
    ]
    assert result.rules[0].message == "org-b: dataset scl-org-b has DatasetGrant(s) a-old, b-other"
    assert result.charged_grants == ()


def test_two_datasets_charge_one_grant_each():
    tox = grant({"dataset.id": "tox-org-b"}, name="tox")
    result = run(req=request({"datasets": ["scl-org-b", "tox-org-b", "scl-org-b"]}), grants=[tox, grant()])
    assert result.decision == Decision.APPROVED
    assert result.charged_grants == ("scl-org-b", "tox")
    assert [r.message for r in result.rules if r.rule == "DatasetGranted"] == [
        "org-b: dataset scl-org-b is granted by scl-org-b", "org-b: dataset tox-org-b is granted by tox"]


def test_grants_of_other_datasets_are_ignored():
    result = run(grants=[grant({"dataset.id": "tox-org-b", "consumers": ["org-c"]}, name="tox"), grant()])
    assert result.decision == Decision.APPROVED
    assert "DatasetGrant/tox" not in {r.source for r in result.rules}


# --- the epsilon budget is idempotent and cannot be overspent ------------------------------------


def test_re_evaluating_an_admitted_job_does_not_count_its_own_reservation():
    others = ledger.reserve(None, "modeller/other", "other-uid", 20)
    first = run(grants=[grant(status=others)])
    assert first.decision == Decision.APPROVED
    assert first.epsilon_to_reserve == 8.0
    # The controller reserved it; the next evaluation (any input changed) sees the same answer.
    reserved = ledger.reserve(others, "modeller/esm2-scl-run1", UID, first.epsilon_to_reserve)
    assert reserved.epsilon_reserved == 28.0
    again = run(grants=[grant(status=reserved)])
    assert again == first
    assert [r.message for r in again.rules if r.rule == "EpsilonBudget"] == [
        "org-b: grant scl-org-b has 10.0 of 30.0 epsilon left; job asks 8.0"]


def test_two_jobs_admitted_at_once_cannot_both_take_the_last_of_the_budget():
    status = ledger.reserve(None, "modeller/other", "other-uid", 20)  # 10 left
    job_a = request({"source.uid": "uid-a", "source.name": "run-a"})
    job_b = request({"source.uid": "uid-b", "source.name": "run-b"})
    # Both see the same resourceVersion: each alone fits...
    assert run(req=job_a, grants=[grant(status=status)]).decision == Decision.APPROVED
    assert run(req=job_b, grants=[grant(status=status)]).decision == Decision.APPROVED
    # ...A's guarded update wins; B's conflicts, so B is evaluated again on the fresh status.
    status = ledger.reserve(status, "modeller/run-a", "uid-a", 8)
    b_again = run(req=job_b, grants=[grant(status=status)])
    assert b_again.decision == Decision.REJECTED
    assert b_again.message == "org-b: grant scl-org-b has 2.0 of 30.0 epsilon left; job asks 8.0"
    assert run(req=job_a, grants=[grant(status=status)]).decision == Decision.APPROVED  # A stays admitted


def test_spent_epsilon_of_finished_jobs_counts():
    status = ledger.spend(ledger.reserve(None, "modeller/x", "x", 10), "x", 9.5)
    status = ledger.reserve(status, "modeller/y", "y", 12.5)
    exact = run(grants=[grant(status=status)])  # 30 - 9.5 spent - 12.5 reserved = 8.0: exactly fits
    assert exact.decision == Decision.APPROVED
    assert [r.message for r in exact.rules if r.rule == "EpsilonBudget"] == [
        "org-b: grant scl-org-b has 8.0 of 30.0 epsilon left; job asks 8.0"]
    status = ledger.reserve(status, "modeller/z", "z", 0.5)
    assert run(grants=[grant(status=status)]).message == (
        "org-b: grant scl-org-b has 7.5 of 30.0 epsilon left; job asks 8.0")


def test_the_budget_composes_two_earlier_jobs_and_refuses_one_that_would_overspend():
    """Two finished sample-level DP jobs at epsilon 8 whose sites recorded their events use 10.85 of a
    budget of 20 together (RDP composition), not 16: a third job at 8 fits; a fourth, with the third's
    8 reserved, would overspend, and the message gives the epsilon left."""
    from tests.unit.test_policy_ledger import demo_job_events

    eps, events = demo_job_events()
    status = None
    for uid in ("first", "second"):
        status = ledger.spend(ledger.reserve(status, f"modeller/{uid}", uid, 8), uid, eps, delta=1e-5, events=events)
    assert status.epsilon_spent > 12 and status.epsilon_used < 12  # a plain sum would leave 4 of 20, too few
    small = {"privacy.epsilonBudget": 20}
    third = run(grants=[grant(small, status=status)])
    assert third.decision == Decision.APPROVED and third.epsilon_to_reserve == 8.0
    left = round(20 - status.epsilon_used, 9)
    assert [r.message for r in third.rules if r.rule == "EpsilonBudget"] == [
        f"org-b: grant scl-org-b has {_num(left)} of 20.0 epsilon left; job asks 8.0"]
    status = ledger.reserve(status, "modeller/third", "third", 8)
    fourth = run(request({"source.uid": "fourth-uid", "source.name": "fourth"}), grants=[grant(small, status=status)])
    assert fourth.decision == Decision.REJECTED
    assert fourth.message == f"org-b: grant scl-org-b has {_num(left - 8)} of 20.0 epsilon left; job asks 8.0"


# --- manual approval -----------------------------------------------------------------------------

MANUAL = {"approvalMode": "Manual"}
WAITING = ("waiting for org-b's admin: create a JobApproval for job modeller/esm2-scl-run1 with contentHash " + HASH)


def test_manual_without_approval_is_pending_and_says_what_to_create():
    result = run(pol=policy(MANUAL))
    assert result.decision == Decision.PENDING
    assert result.reason == Reason.AWAITING_APPROVAL
    assert result.message == WAITING
    assert triples(result.failed) == [("ManualApproval", P, WAITING)]
    assert triples(result.rules[:-1]) == PASSING_JOB_RULES
    assert result.epsilon_to_reserve == 0.0


def test_manual_approve_approves():
    result = run(pol=policy(MANUAL), approvals=[approval()])
    assert result.decision == Decision.APPROVED
    assert result.reason == Reason.APPROVED
    assert result.rules[-1].model_dump() == {
        "rule": "ManualApproval", "passed": True, "source": "JobApproval/esm2-scl-run1",
        "message": "org-b: approved by alice@org-b (JobApproval esm2-scl-run1)"}
    assert result.message == "org-b: approved by alice@org-b (JobApproval esm2-scl-run1); all 13 rules passed"
    assert result.approval == "esm2-scl-run1"
    assert result.epsilon_to_reserve == 8.0


def test_manual_reject_rejects_with_the_admins_reason():
    reject = approval({"decision": "Reject", "reason": "use at most 3 rounds on our data"}, name="no-thanks")
    result = run(pol=policy(MANUAL), approvals=[reject])
    assert result.decision == Decision.REJECTED
    assert result.reason == Reason.REJECTED
    msg = "org-b: rejected by alice@org-b (JobApproval no-thanks): use at most 3 rounds on our data"
    assert triples(result.failed) == [("ManualApproval", "JobApproval/no-thanks", msg)]
    assert result.message == msg
    assert result.approval == "no-thanks"
    assert result.epsilon_to_reserve == 0.0


def test_an_approval_the_webhook_did_not_record_does_not_count():
    result = run(pol=policy(MANUAL), approvals=[approval(decided_by=None)])
    assert result.decision == Decision.PENDING
    assert result.message == (
        WAITING + "; JobApproval esm2-scl-run1 does not count: org-b's admission webhook did not record who "
        "decided (created while the webhook was bypassed, or its record was altered): delete it and create it again")


def test_an_approval_counts_for_one_job_only():
    """Deleting a job and creating it again under the same name (same content hash) needs a new decision."""
    earlier = approval({"job.uid": "an-earlier-job-of-that-name"}, name="run1-first")
    result = run(pol=policy(MANUAL), approvals=[earlier])
    assert result.decision == Decision.PENDING
    assert result.message == (
        WAITING + "; JobApproval run1-first was for an earlier job of that name (another uid): this job "
        f"(uid {UID}) needs a decision of its own")
    no_uid = approval({"job.uid": DELETE}, name="no-uid")
    assert run(pol=policy(MANUAL), approvals=[no_uid]).decision == Decision.PENDING


def test_a_failed_content_check_rejects_whatever_the_grants_allow():
    bad = RuleResult(rule=ev.CONTENT_VERIFIED, passed=False, message="org-b: the hub's esm2-finetune 1.0.0 differs")
    result = evaluate(request(), grants=[grant()], policy=policy(AUTOMATIC), now=NOW, content=bad)
    assert result.decision == Decision.REJECTED and result.rules[0] == bad
    assert result.message == "org-b: the hub's esm2-finetune 1.0.0 differs"
    good = bad.model_copy(update={"passed": True, "message": "ok"})
    assert evaluate(request(), grants=[grant()], policy=policy(AUTOMATIC), now=NOW, content=good).decision == \
        Decision.APPROVED


def test_approval_for_an_older_hash_is_ignored_and_mentioned():
    stale = approval({"contentHash": OLD_HASH}, name="old-approval")
    result = run(pol=policy(MANUAL), approvals=[stale])
    assert result.decision == Decision.PENDING
    assert result.message == (
        WAITING + "; a JobApproval (old-approval) exists for an older content hash; the job changed since: decide again")


def test_the_approval_for_the_current_hash_decides_even_next_to_stale_ones():
    stale_reject = approval({"contentHash": OLD_HASH, "decision": "Reject", "reason": "no"}, name="old",
                            created=NOW + timedelta(hours=1))
    result = run(pol=policy(MANUAL), approvals=[stale_reject, approval()])
    assert result.decision == Decision.APPROVED
    assert result.approval == "esm2-scl-run1"


def test_approvals_for_other_jobs_are_ignored():
    other_name = approval({"job.name": "esm2-scl-run2"}, name="run2")
    other_ns = approval({"job.namespace": "other-team"}, name="other-team")
    result = run(pol=policy(MANUAL), approvals=[other_name, other_ns])
    assert result.decision == Decision.PENDING
    assert result.message == WAITING


@pytest.mark.parametrize(
    ("first", "second", "decision"),
    [("Approve", "Reject", Decision.REJECTED), ("Reject", "Approve", Decision.APPROVED)],
)
def test_the_newest_approval_wins(first, second, decision):
    older = approval({"decision": first, "reason": "r"}, name="z-older", created=NOW - timedelta(minutes=5))
    newer = approval({"decision": second, "reason": "r"}, name="a-newer", created=NOW)
    assert run(pol=policy(MANUAL), approvals=[newer, older]).decision == decision


def test_at_the_same_instant_reject_wins():
    a = approval({"decision": "Approve"}, name="b")
    r = approval({"decision": "Reject", "reason": "r"}, name="a")
    assert run(pol=policy(MANUAL), approvals=[a, r]).decision == Decision.REJECTED
    assert run(pol=policy(MANUAL), approvals=[r, a]).decision == Decision.REJECTED


def test_a_manual_approve_never_overrides_the_orgs_limits():
    result = run(req=request({"rounds": 20}), pol=policy(MANUAL), approvals=[approval()])
    assert result.decision == Decision.REJECTED
    assert result.message == "org-b: grant scl-org-b allows at most 10 rounds; job asks 20"
    assert triples(result.failed) == [("MaxRounds", G, "org-b: grant scl-org-b allows at most 10 rounds; job asks 20")]
    assert result.rules[-1].model_dump() == {
        "rule": "ManualApproval", "passed": True, "source": "JobApproval/esm2-scl-run1",
        "message": "org-b: approved by alice@org-b (JobApproval esm2-scl-run1), but an approval never overrides "
                   "org-b's limits"}
    assert result.epsilon_to_reserve == 0.0


def test_a_failed_rule_with_no_approval_is_rejected_not_pending():
    result = run(req=request({"rounds": 20}), pol=policy(MANUAL))
    assert result.decision == Decision.REJECTED
    assert "ManualApproval" not in {r.rule for r in result.rules}


def test_reject_and_failed_rules_are_all_reported():
    reject = approval({"decision": "Reject", "reason": "too long"}, name="no")
    result = run(req=request({"rounds": 20}), pol=policy(MANUAL), approvals=[reject])
    assert result.message == ("org-b: grant scl-org-b allows at most 10 rounds; job asks 20 | "
                              "org-b: rejected by alice@org-b (JobApproval no): too long")


def test_no_org_policy_means_manual_for_jobs():
    result = run(pol=None)
    assert result.decision == Decision.PENDING
    assert result.message == WAITING + " (org-b has no OrgPolicy 'default', so jobs need manual approval)"
    assert result.rules[-1].source == ""
    assert {r.source for r in result.rules[:-1]} == {G}  # no policy rules without a policy
    approved = run(pol=None, approvals=[approval()])
    assert approved.decision == Decision.APPROVED
    assert approved.epsilon_to_reserve == 8.0


def test_automatic_mode_ignores_job_approvals():
    reject = approval({"decision": "Reject", "reason": "r"})
    result = run(pol=policy(AUTOMATIC), approvals=[reject])
    assert result.decision == Decision.APPROVED
    assert "ManualApproval" not in {r.rule for r in result.rules}


# --- compute requests ----------------------------------------------------------------------------

PASSING_COMPUTE_RULES = [
    ("DatasetGranted", G, "org-b: dataset scl-org-b is granted by scl-org-b"),
    ("ConsumerAllowed", G, "org-b: grant scl-org-b allows consumer org modeller"),
    ("ModelAllowed", G, "org-b: grant scl-org-b allows model esm2-finetune 1.0.0 (versions >=1.0.0,<2.0.0)"),
    ("GrantNotExpired", G, "org-b: grant scl-org-b is valid until 2027-12-31T00:00:00Z"),
    ("MinParticipatingOrgs", G, "org-b: grant scl-org-b needs at least 2 participating orgs; the federation has 2"),
    ("ConsumerAllowed", P, "org-b: OrgPolicy allows consumer org modeller"),
    ("ClientResources", P,
     "org-b: OrgPolicy allows a client at most cpu 8, memory 32Gi and gpu 2; ComputeSpec asks cpu 2, memory 8Gi "
     "and gpu 1"),
]


@pytest.mark.parametrize("pol", [policy(MANUAL), policy(AUTOMATIC), None], ids=["manual", "automatic", "no-policy"])
def test_compute_requests_are_approved_when_every_rule_passes_whatever_the_mode(pol):
    result = run(req=compute_request(), pol=pol)
    expected = PASSING_COMPUTE_RULES if pol is not None else PASSING_COMPUTE_RULES[:5]
    assert triples(result.rules) == expected
    assert result.decision == Decision.APPROVED
    assert result.reason == Reason.APPROVED
    assert result.message == ("org-b: approved: consumer modeller may run a client for esm2-finetune 1.0.0; "
                              "its jobs are decided one by one")
    assert result.epsilon_to_reserve == 0.0


def test_compute_requests_skip_job_only_rules_even_with_job_fields_set():
    # rounds 20 > 10, DP off although required, no duration: none of that concerns a compute request
    result = run(req=compute_request({"rounds": 20}), pol=policy(MANUAL))
    assert result.decision == Decision.APPROVED
    assert not {r.rule for r in result.rules} & {"MaxRounds", "JobDuration", "DifferentialPrivacy",
                                                  "EpsilonBudget", "ManualApproval"}


def test_compute_request_denied():
    result = run(req=compute_request({"client.gpu": 4, "model.version": "3.0.0"}), grants=[grant()])
    assert result.decision == Decision.REJECTED
    assert result.message == (
        "org-b: grant scl-org-b allows model esm2-finetune only in versions >=1.0.0,<2.0.0; ComputeSpec asks 3.0.0 | "
        "org-b: OrgPolicy allows a client at most gpu 2; ComputeSpec asks gpu 4")


# --- bounds of the status ------------------------------------------------------------------------


def test_many_failures_fit_the_status():
    datasets = [f"ds-{i:02d}" for i in range(64)]
    result = run(req=request({"datasets": datasets}), grants=[])
    assert len(result.failed) == 64
    assert len(result.message) <= ev.MESSAGE_MAX
    assert result.message.startswith("org-b has no DatasetGrant for dataset ds-00 | org-b has no DatasetGrant")
    assert result.message.endswith("more (see status.rules)")


def test_status_rules_keep_failures_first_when_they_do_not_fit():
    grants = [grant({"dataset.id": f"ds-{i:02d}"}, name=f"g-{i:02d}") for i in range(10)]
    req = request({"datasets": [f"ds-{i:02d}" for i in range(10)], "rounds": 20})
    result = run(req=req, grants=grants)
    assert len(result.rules) > ev.RULES_MAX
    kept = result.status_rules()
    assert len(kept) == ev.RULES_MAX
    assert kept[:10] == result.failed


def test_inputs_are_not_changed():
    g, p, r, a = grant(), policy(MANUAL), request(), approval()
    before = [x.model_copy(deep=True) for x in (g.spec, p, r, a.spec)]
    run(req=r, grants=[g], pol=p, approvals=[a])
    assert [g.spec, p, r, a.spec] == before


def test_joined_message_keeps_whole_messages_and_counts_the_rest():
    assert ev._join(["a", "b"]) == "a | b"
    assert ev._join(["a" * 600, "b" * 600]) == "a" * 600 + " | … and 1 more (see status.rules)"
    clipped = ev._join(["x" * 1024] * 3)
    assert len(clipped) == ev.MESSAGE_MAX
    assert clipped.endswith("x… | … and 2 more (see status.rules)")
