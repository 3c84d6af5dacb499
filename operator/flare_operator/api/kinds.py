"""The seven kinds: names, printer columns and root-level rules, for the CRD generator and clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .access_request import AccessRequestSpec, AccessRequestStatus
from .base import ApiModel, CelRule
from .compute import ComputeSpecSpec, ComputeSpecStatus
from .dataset_grant import DatasetGrantSpec, DatasetGrantStatus
from .gateway import GatewaySpec, GatewayStatus
from .job import FederatedJobSpec, FederatedJobStatus
from .job_approval import JobApprovalSpec, JobApprovalStatus
from .org_policy import ORG_POLICY_NAME, OrgPolicySpec, OrgPolicyStatus

GROUP = "flareop.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "flare"


def _column(name: str, json_path: str, type_: str = "string", description: str = "", priority: int = 0) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": type_, "jsonPath": json_path}
    if description:
        col["description"] = description
    if priority:
        col["priority"] = priority
    return col


def _condition_column(name: str, condition: str) -> dict[str, Any]:
    return _column(name, f'.status.conditions[?(@.type=="{condition}")].status', description=f"{condition} condition")


AGE = _column("Age", ".metadata.creationTimestamp", "date")
PHASE = _column("Phase", ".status.phase", description="Lifecycle phase")
READY = _condition_column("Ready", "Ready")


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    side: str  # "hub" or "site": where the object lives
    description: str
    spec: type[ApiModel]
    status: type[ApiModel]
    columns: tuple[dict[str, Any], ...]
    root_rules: tuple[CelRule, ...] = field(default=())  # their checks take the whole object dict

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


# Once NVFlare has the job, only spec.suspend may change: the sites approved this exact content.
_JOB_SPEC_FROZEN_AFTER_SUBMIT = CelRule(
    rule=(
        "!has(oldSelf.status) || !has(oldSelf.status.submittedAt) || ("
        "self.spec.computeSpecRef == oldSelf.spec.computeSpecRef"
        " && self.spec.rounds == oldSelf.spec.rounds"
        " && self.spec.parameters == oldSelf.spec.parameters"
        " && self.spec.privacy == oldSelf.spec.privacy"
        " && self.spec.aggregation == oldSelf.spec.aggregation"
        " && self.spec.backoffLimit == oldSelf.spec.backoffLimit"
        " && self.spec.?activeDeadlineSeconds == oldSelf.spec.?activeDeadlineSeconds"
        " && self.spec.?ttlSecondsAfterFinished == oldSelf.spec.?ttlSecondsAfterFinished)"
    ),
    message="spec is immutable once the job was submitted (status.submittedAt is set); only spec.suspend "
    "may change. Create a new FederatedJob to change anything else.",
    field_path=".spec",
)

_ONE_POLICY_PER_ORG = CelRule(
    rule=f"self.metadata.name == '{ORG_POLICY_NAME}'",
    message=f"metadata.name must be '{ORG_POLICY_NAME}': an org has exactly one OrgPolicy",
    check=lambda obj: obj.get("metadata", {}).get("name") == ORG_POLICY_NAME,
)


KINDS: tuple[Kind, ...] = (
    Kind(
        kind="ComputeSpec",
        plural="computespecs",
        short_names=("fcs", "compute"),
        side="hub",
        description="A federation (NVFlare server + one GPU client per data-owner site) for one catalog model "
        "over datasets of several orgs. Lives in the consumer's namespace on the hub.",
        spec=ComputeSpecSpec,
        status=ComputeSpecStatus,
        columns=(
            _column("Model", ".spec.model.id"),
            PHASE,
            READY,
            _column("Clients", ".status.readyClients", description="Connected clients / expected"),
            _column("Active", ".spec.active", "boolean"),
            _column("Endpoint", ".status.serverEndpoint", priority=1),
            AGE,
        ),
    ),
    Kind(
        kind="FederatedJob",
        plural="federatedjobs",
        short_names=("fedjob", "fedjobs", "fj"),
        side="hub",
        description="One federated training run on a ComputeSpec's federation. It runs only when every org "
        "whose data it touches approved its exact content.",
        spec=FederatedJobSpec,
        status=FederatedJobStatus,
        columns=(
            _column("Compute", ".spec.computeSpecRef.name"),
            PHASE,
            READY,
            _column("Round", ".status.progress", description="Rounds completed / total"),
            _column("Attempts", ".status.attempts", "integer", priority=1),
            _column("NVFlare-Job", ".status.nvflareJobId", priority=1),
            AGE,
        ),
        root_rules=(_JOB_SPEC_FROZEN_AFTER_SUBMIT,),
    ),
    Kind(
        kind="Gateway",
        plural="gateways",
        short_names=("fgw",),
        side="hub",
        description="A data-owner site's registration on the hub, written by the site's gateway controller "
        "into the org's namespace.",
        spec=GatewaySpec,
        status=GatewayStatus,
        columns=(
            _column("Org", ".spec.org"),
            _column("Site", ".spec.site"),
            _column("Runtime", ".spec.runtime", priority=1),
            _condition_column("Connected", "Connected"),
            _column("Datasets", ".status.datasetsOffered", "integer"),
            _column("Clients", ".status.clientsRunning", "integer"),
            AGE,
        ),
    ),
    Kind(
        kind="AccessRequest",
        plural="accessrequests",
        short_names=("areq",),
        side="hub",
        description="What one ComputeSpec or FederatedJob asks of one org. The orchestrator writes the spec "
        "into the org's hub namespace; the org's gateway controller answers in the status.",
        spec=AccessRequestSpec,
        status=AccessRequestStatus,
        columns=(
            _column("Kind", ".spec.source.kind"),
            _column("Source", ".spec.source.name"),
            _column("Consumer", ".spec.consumerOrg"),
            _column("Decision", ".status.decision"),
            _column("Reason", ".status.reason", priority=1),
            AGE,
        ),
    ),
    Kind(
        kind="DatasetGrant",
        plural="datasetgrants",
        short_names=("dg", "grant"),
        side="site",
        description="A dataset at a data-owner site and who may train on it: consumer orgs, models, rounds, "
        "privacy terms and expiry. Written only by the data owner.",
        spec=DatasetGrantSpec,
        status=DatasetGrantStatus,
        columns=(
            _column("Dataset", ".spec.dataset.id"),
            _condition_column("Valid", "Valid"),
            _condition_column("Ready", "Ready"),
            _column("Samples", ".spec.dataset.sampleCount", "integer"),
            _column("Eps-Spent", ".status.epsilonSpent", "number"),
            _column("Eps-Reserved", ".status.epsilonReserved", "number", priority=1),
            _column("Eps-Budget", ".spec.privacy.epsilonBudget", "number"),
            _column("Expires", ".spec.expiresAt", "date", priority=1),
            AGE,
        ),
    ),
    Kind(
        kind="OrgPolicy",
        plural="orgpolicies",
        short_names=("opol",),
        side="site",
        description="How a data owner decides on jobs: automatic or manual approval, resource and duration "
        "ceilings, privacy floor, allowed and blocked consumers. One per org, named 'default'.",
        spec=OrgPolicySpec,
        status=OrgPolicyStatus,
        columns=(
            _column("Approval", ".spec.approvalMode"),
            _column("DP-Required", ".spec.privacyFloor.dpRequired", "boolean"),
            AGE,
        ),
        root_rules=(_ONE_POLICY_PER_ORG,),
    ),
    Kind(
        kind="JobApproval",
        plural="jobapprovals",
        short_names=("jappr", "approval"),
        side="site",
        description="A data-owner admin's Approve or Reject of one FederatedJob, bound to its content hash. "
        "Who decided is recorded from the API request, not typed.",
        spec=JobApprovalSpec,
        status=JobApprovalStatus,
        columns=(
            _column("Job", ".spec.job.name"),
            _column("Namespace", ".spec.job.namespace", priority=1),
            _column("Decision", ".spec.decision"),
            _column("Decided-By", ".status.decidedBy.username"),
            AGE,
        ),
    ),
)

KINDS_BY_NAME = {k.kind: k for k in KINDS}


class InvalidObject(ValueError):
    """A custom resource that the API server would refuse; the message says why."""


@dataclass(frozen=True)
class ParsedObject:
    kind: Kind
    name: str
    namespace: str | None
    spec: ApiModel
    status: ApiModel | None


def parse_object(obj: dict[str, Any]) -> ParsedObject:
    """Validate a whole custom resource dict as the API server would (minus transition rules)."""
    if obj.get("apiVersion") != API_VERSION:
        raise InvalidObject(f"apiVersion must be {API_VERSION}, not {obj.get('apiVersion')!r}")
    kind = KINDS_BY_NAME.get(obj.get("kind", ""))
    if kind is None:
        raise InvalidObject(f"unknown kind {obj.get('kind')!r}; known: {', '.join(KINDS_BY_NAME)}")
    failed = [r.message for r in kind.root_rules if r.check is not None and not r.check(obj)]
    if failed:
        raise InvalidObject(f"{kind.kind}: " + "; ".join(failed))
    try:
        spec = kind.spec.model_validate(obj.get("spec") or {})
        status = kind.status.model_validate(obj["status"]) if obj.get("status") else None
    except ValueError as err:
        raise InvalidObject(f"{kind.kind}: {err}") from err
    meta = obj.get("metadata", {})
    return ParsedObject(kind, meta.get("name", ""), meta.get("namespace"), spec, status)
