"""API models of every flareop.io/v1alpha1 kind: the one source of truth for CRDs and the operator."""

from .access_request import AccessRequestSpec, AccessRequestStatus, RequestKind, RuleResult
from .base import ApiModel, CelRule
from .common import ClientResources, Condition, ConditionStatus, Decision, ModelRef, ServerResources
from .compute import ComputePhase, ComputeSpecSpec, ComputeSpecStatus, DatasetRef
from .conditions import ConditionType, Reason
from .dataset_grant import DatasetGrantSpec, DatasetGrantStatus
from .gateway import GatewaySpec, GatewayStatus, RuntimeKind
from .job import FINISHED_PHASES, FederatedJobSpec, FederatedJobStatus, JobPhase, Weighting
from .job_approval import ApprovalDecision, JobApprovalSpec, JobApprovalStatus
from .kinds import (
    API_VERSION,
    GROUP,
    KINDS,
    KINDS_BY_NAME,
    VERSION,
    InvalidObject,
    Kind,
    ParsedObject,
    parse_object,
)
from .org_policy import ORG_POLICY_NAME, ApprovalMode, OrgPolicySpec, OrgPolicyStatus

__all__ = [
    "API_VERSION", "FINISHED_PHASES", "GROUP", "KINDS", "KINDS_BY_NAME", "ORG_POLICY_NAME", "VERSION",
    "AccessRequestSpec", "AccessRequestStatus", "ApiModel", "ApprovalDecision", "ApprovalMode", "CelRule",
    "ClientResources", "ComputePhase", "ComputeSpecSpec", "ComputeSpecStatus", "Condition", "ConditionStatus",
    "ConditionType", "DatasetGrantSpec", "DatasetGrantStatus", "DatasetRef", "Decision", "FederatedJobSpec",
    "FederatedJobStatus", "GatewaySpec", "GatewayStatus", "JobApprovalSpec", "JobApprovalStatus", "JobPhase",
    "InvalidObject", "Kind", "ModelRef", "ParsedObject", "parse_object", "OrgPolicySpec", "OrgPolicyStatus", "Reason", "RequestKind", "RuleResult", "RuntimeKind",
    "ServerResources", "Weighting",
]
