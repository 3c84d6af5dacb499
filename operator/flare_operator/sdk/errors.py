"""Errors the SDK raises: each says what happened and the kubectl command that shows more."""

from __future__ import annotations

import builtins
from dataclasses import dataclass


class FlareError(Exception):
    """Base of the SDK's errors. ``hint``: a command a person can run to see more (or fix it)."""

    exit_code = 1

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  see: {self.hint}" if self.hint else self.message


class NotFound(FlareError, LookupError):
    """The object (job, ComputeSpec, dataset) does not exist where the caller looked."""

    exit_code = 3


class Forbidden(FlareError, PermissionError):
    """The API server refused the caller (RBAC): the message names the verb and the resource."""

    exit_code = 4


class InvalidSpec(FlareError, ValueError):
    """The object is refused as written (schema, CEL rules, admission webhook, local validation)."""

    exit_code = 2


class TimeoutError(FlareError, builtins.TimeoutError):  # noqa: A001 - the SDK's own, still a builtins.TimeoutError
    """Waited for `timeout` seconds; the job goes on (nothing was stopped)."""

    exit_code = 5


class AwaitingApproval(TimeoutError):
    """The wait ended while these orgs have not decided yet."""

    exit_code = 6

    def __init__(self, message: str, orgs: list[str], hint: str = ""):
        super().__init__(message, hint)
        self.orgs = orgs


@dataclass(frozen=True)
class OrgReason:
    org: str
    decision: str
    message: str


class Rejected(FlareError):
    """At least one data owner said no; ``reasons`` holds every org's answer (their policy's rules in
    words: which rule decided and why)."""

    exit_code = 7

    def __init__(self, message: str, reasons: list[OrgReason], hint: str = ""):
        super().__init__(message, hint)
        self.reasons = reasons

    @property
    def rejected_by(self) -> list[str]:
        return [r.org for r in self.reasons if r.decision == "Rejected"]


class JobRejected(Rejected):
    """A data owner rejected the job."""


class ComputeRejected(Rejected):
    """A data owner refused to serve its datasets to the federation (no client runs there)."""


class JobFailed(FlareError):
    """The job ended in a phase other than Succeeded (Failed, TimedOut, Aborted, Revoked)."""

    exit_code = 8

    def __init__(self, message: str, phase: str, hint: str = ""):
        super().__init__(message, hint)
        self.phase = phase
