"""Condition types and reasons: named constants, each with what it means.

These strings are public API (kubectl, kstatus, alerts read them): change them only with a
version bump. Status is computed from observed state in `flare_operator.status` only.
"""

from enum import StrEnum


class ConditionType(StrEnum):
    READY = "Ready"
    """Summary: the object does what its spec asks (kstatus reads this)."""

    # ComputeSpec
    DATASETS_GRANTED = "DatasetsGranted"
    """Every org whose dataset the ComputeSpec uses allowed this consumer and model."""
    PROVISIONED = "Provisioned"
    """The federation's NVFlare project (CA, server, clients, admin kits) exists."""
    SERVER_READY = "ServerReady"
    """The NVFlare server is running and its admin port answers."""
    CLIENTS_READY = "ClientsReady"
    """Every site's NVFlare client is connected to the server."""

    # FederatedJob
    APPROVED = "Approved"
    """Every involved org approved this exact job + compute content (by hash)."""
    SUBMITTED = "Submitted"
    """The job was submitted to the NVFlare server; status.nvflareJobId names it."""
    RUNNING = "Running"
    """The NVFlare job is running."""
    COMPLETE = "Complete"
    """The job finished successfully and its results were fetched."""
    FAILED = "Failed"
    """The job ended without success (failed, timed out, aborted, rejected)."""
    SUSPENDED = "Suspended"
    """spec.suspend is true: nothing runs; resuming continues from the last checkpoint."""

    # Gateway
    CONNECTED = "Connected"
    """The site's gateway controller sent a heartbeat recently."""
    ORG_VERIFIED = "OrgVerified"
    """Written by the hub: the Gateway's namespace belongs to the org it registers (the namespace's
    flareop.io/org label, set by the cluster admin, equals spec.org), so the hub counts it for that
    org. False: the hub ignores this Gateway (no AccessRequests, no client kits go there) and Ready
    is False with the same reason; the message says what to change."""

    # AccessRequest
    DECIDED = "Decided"
    """The site answered the request for the content hash in spec."""

    # DatasetGrant
    EXPIRED = "Expired"
    """The grant's expiry time has passed; it allows nothing more."""
    VALID = "Valid"
    """The grant can be used: its location is allowed at this site (a PersistentVolumeClaim that
    exists in the site namespace, or a path under the site's dataRoots), its version constraints
    parse, and no other grant claims its dataset id for other data. An invalid grant allows nothing
    and is never mounted; the message says which field and what to do."""


class Reason(StrEnum):
    # generic
    RECONCILED = "Reconciled"
    """Everything the spec asks for is in place."""
    PROGRESSING = "Progressing"
    """Work is under way; the message says what is being waited on."""
    INVALID_SPEC = "InvalidSpec"
    """The spec cannot be acted on; the message says which field and why."""

    # ComputeSpec
    AWAITING_SITES = "AwaitingSites"
    """Some orgs have not answered the AccessRequest yet."""
    DATASET_DENIED = "DatasetDenied"
    """An org refused a dataset to this consumer or model; the message names it and why."""
    GATEWAY_MISSING = "GatewayMissing"
    """No Gateway is registered for an org the ComputeSpec needs."""
    DEACTIVATED = "Deactivated"
    """spec.active is false: server and clients are scaled to zero."""
    PROVISIONING_FAILED = "ProvisioningFailed"
    """NVFlare provisioning failed; the message has the error."""
    SERVER_STARTING = "ServerStarting"
    WORKLOAD_FAILING = "WorkloadFailing"  # a server or client Pod cannot run: the message says why
    """The NVFlare server is not ready yet."""
    CLIENTS_STARTING = "ClientsStarting"
    """Some clients are not connected yet; the message lists them."""

    # FederatedJob / AccessRequest decisions
    AWAITING_APPROVAL = "AwaitingApproval"
    """Some orgs have not decided yet; the message lists them."""
    APPROVED = "Approved"
    """The org(s) approved this content hash."""
    REJECTED = "Rejected"
    """An org rejected the job; the message has its reasons."""
    HASH_CHANGED = "HashChanged"
    """The job or compute changed after a decision; the decision no longer counts."""
    COMPUTE_NOT_READY = "ComputeNotReady"
    """The referenced ComputeSpec is missing, inactive or not Ready."""
    SUBMITTED = "Submitted"
    """The job was handed to the NVFlare server."""
    RUNNING = "Running"
    """The NVFlare job is running."""
    SUCCEEDED = "Succeeded"
    """The NVFlare job completed and results were stored."""
    JOB_FAILED = "JobFailed"
    """The NVFlare job failed; the message has NVFlare's status."""
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    """spec.activeDeadlineSeconds passed; the NVFlare job was aborted."""
    ABORTED = "Aborted"
    """The job was aborted (deleted, or its compute was deactivated)."""
    SUSPENDED = "Suspended"
    """spec.suspend is true."""
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    """The NVFlare server failed more often than spec.backoffLimit allows."""
    RESUBMITTED = "Resubmitted"
    """The NVFlare server lost the job (restart, crash); it was resubmitted from the last checkpoint."""
    COMPUTE_DEACTIVATED = "ComputeDeactivated"
    """The job's ComputeSpec was deactivated or deleted while the job ran; the NVFlare job was aborted."""
    SERVER_UNREACHABLE = "ServerUnreachable"
    """The FLARE API did not answer; the job is followed again once it does."""
    REVOKED = "Revoked"
    """An org withdrew its approval while the job ran (JobApproval rejected or deleted, grant deleted,
    expired or narrowed); the NVFlare job was aborted. The message names the org and its reason."""

    # Gateway
    HEARTBEAT = "Heartbeat"
    """The gateway reported in within its heartbeat interval."""
    HEARTBEAT_MISSED = "HeartbeatMissed"
    """No heartbeat within the interval: the site may be down or disconnected."""
    ORG_MATCH = "OrgMatch"
    """The Gateway's namespace is labelled flareop.io/org with the org it registers: it counts."""
    ORG_MISMATCH = "OrgMismatch"
    """The Gateway's namespace belongs to another org (its flareop.io/org label): a Gateway there
    cannot register this org, so the hub ignores it."""
    ORG_NAMESPACE_UNLABELLED = "OrgNamespaceUnlabelled"
    """The Gateway's namespace has no flareop.io/org label, so it belongs to no org: the hub ignores
    the Gateway until the cluster admin labels the namespace with its org."""
    ORG_AMBIGUOUS = "OrgAmbiguous"
    """Gateways for one org sit in several namespaces labelled with that org: the hub cannot tell
    which is the org's hub namespace and uses none until only one remains."""

    # DatasetGrant
    GRANT_EXPIRED = "GrantExpired"
    """spec.expiresAt has passed."""
    VALID = "Valid"
    """The grant passed every check of the site (Valid=True)."""
    INVALID_LOCATION = "InvalidLocation"
    """spec.dataset's path is outside the site's dataRoots (symlinks resolved), not usable by the
    site's runtime, or its PersistentVolumeClaim does not exist in the site namespace."""
    INVALID_VERSION_CONSTRAINT = "InvalidVersionConstraint"
    """A spec.models[].versions does not parse as a version constraint (PEP 440, e.g. '>=1.0.0,<2.0.0')."""
    DUPLICATE_DATASET_ID = "DuplicateDatasetId"
    """An older valid grant has the same spec.dataset.id with another location or format: one
    dataset id names one set of data; this grant is ignored until it matches or uses another id."""
