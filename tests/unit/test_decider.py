"""The site webhook's signed decider record: only the webhook's record for this very decision counts."""

import yaml

from flare_operator.api import JobApprovalSpec
from flare_operator.policy.decider import record, verified_decider
from tests.sample_data import VALID_DIR

SPEC = JobApprovalSpec.model_validate(yaml.safe_load((VALID_DIR / "jobapproval.yaml").read_text())["spec"])
KEY = b"k" * 32


def test_the_webhooks_record_verifies():
    signed = record(KEY, "org-b", "run1", SPEC, "alice@org-b", ["org-b-admins"])
    assert verified_decider(KEY, "org-b", "run1", SPEC, signed) == "alice@org-b"


def test_a_typed_or_altered_record_does_not():
    signed = record(KEY, "org-b", "run1", SPEC, "alice@org-b", [])
    assert verified_decider(KEY, "org-b", "run1", SPEC, {"username": "alice@org-b", "groups": []}) is None
    assert verified_decider(KEY, "org-b", "run1", SPEC, {**signed, "username": "ceo@org-b"}) is None
    assert verified_decider(b"x" * 32, "org-b", "run1", SPEC, signed) is None  # another site's key
    assert verified_decider(None, "org-b", "run1", SPEC, signed) is None  # no webhook at this site
    assert verified_decider(KEY, "org-b", "run1", SPEC, "not a mapping") is None


def test_a_record_is_bound_to_its_decision():
    signed = record(KEY, "org-b", "run1", SPEC, "alice@org-b", [])
    reject = SPEC.model_copy(update={"decision": "Reject", "reason": "no"})
    other_job = SPEC.model_copy(update={"job": SPEC.job.model_copy(update={"uid": "another"})})
    assert verified_decider(KEY, "org-b", "run1", reject, signed) is None
    assert verified_decider(KEY, "org-b", "run1", other_job, signed) is None
    assert verified_decider(KEY, "org-b", "copy-of-run1", SPEC, signed) is None  # copied onto another approval
