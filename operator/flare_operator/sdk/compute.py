"""Federations (ComputeSpecs) from Python: define, create, activate, deactivate, status, delete.

    from flare_operator.sdk import compute
    spec = compute.ComputeSpec(name="esm2-scl", model={"id": "esm2-finetune", "version": "1.0.0"},
                               dataset_ids=["org-a/scl-org-a", "org-b/scl-org-b"], client_n_cpu=2)
    compute.create(spec); compute.get_status("esm2-scl")

A ComputeSpec is checked locally with the same models (and CEL rules' checks) the CRD is generated
from, so a mistake is reported before anything is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..api import InvalidObject, parse_object
from ..api.kinds import API_VERSION
from .errors import ComputeRejected, Forbidden, InvalidSpec, NotFound, OrgReason
from .session import Session, current

KIND = "ComputeSpec"


class ComputeSpec(BaseModel):
    """A federation: one catalog model over datasets of several orgs; ``dataset_ids`` as ``org/id``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    model: dict[str, str]
    dataset_ids: list[str] = Field(min_length=1)
    client_n_cpu: str | int | float = "2"
    client_n_gpu: int = 0
    client_memory: str = "8Gi"
    server_n_cpu: str | int | float = "1"
    server_memory: str = "2Gi"
    active: bool = True

    @field_validator("dataset_ids")
    @classmethod
    def _org_slash_id(cls, ids: list[str]) -> list[str]:
        bad = [i for i in ids if i.count("/") != 1 or not all(i.split("/"))]
        if bad:
            raise ValueError(f"dataset ids must read org/id (e.g. org-a/scl-org-a), not {bad}")
        return ids

    def manifest(self, namespace: str) -> dict:
        """The ComputeSpec object, validated as the API server would (schema and CEL rules)."""
        obj = {
            "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": self.name, "namespace": namespace},
            "spec": {
                "model": dict(self.model),
                "datasets": [{"org": i.split("/")[0], "id": i.split("/")[1]} for i in self.dataset_ids],
                "server": {"cpu": str(self.server_n_cpu), "memory": self.server_memory},
                "client": {"cpu": str(self.client_n_cpu), "memory": self.client_memory, "gpu": self.client_n_gpu},
                "active": self.active,
            },
        }
        try:
            parse_object(obj)
        except InvalidObject as err:
            raise InvalidSpec(f"ComputeSpec {self.name} is not valid: {err}", "kubectl explain computespecs.spec") from None
        return obj


@dataclass(frozen=True)
class SiteState:
    org: str
    decision: str
    message: str
    client_ready: bool


@dataclass(frozen=True)
class ComputeStatus:
    name: str
    namespace: str
    phase: str
    ready: bool
    message: str
    ready_clients: str
    sites: list[SiteState] = field(default_factory=list)
    active: bool = True

    @classmethod
    def of(cls, obj: dict) -> ComputeStatus:
        st = obj.get("status") or {}
        ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
        return cls(
            name=obj["metadata"]["name"], namespace=obj["metadata"]["namespace"], phase=st.get("phase") or "Pending",
            ready=ready.get("status") == "True", message=ready.get("message", ""),
            ready_clients=st.get("readyClients") or "", active=obj["spec"].get("active", True),
            sites=[SiteState(s["org"], s.get("decision", "Pending"), s.get("message", ""), bool(s.get("clientReady")))
                   for s in st.get("sites") or []],
        )


def create(spec: ComputeSpec, *, check_datasets: bool = True, session: Session | None = None) -> ComputeStatus:
    """Create the federation (active unless ``spec.active`` is False); every org decides on its request.

    ``check_datasets``: first compare ``dataset_ids`` with what is offered to your org (the orchestrator's
    catalog), so a wrong org or id is reported before anything is made; skipped where no catalog is
    published yet (the sites then answer on the ComputeSpec's status)."""
    s = current(session)
    obj = spec.manifest(s.namespace)
    if check_datasets:
        _check_offered(spec.dataset_ids, s)
    return ComputeStatus.of(s.create(obj))


def _check_offered(dataset_ids: list[str], s: Session) -> None:
    try:
        offered = {f"{d['org']}/{d['id']}" for d in s.published_catalog().get("datasets") or []}
    except (NotFound, Forbidden):
        return  # no catalog here (yet), or the roles predate it: the sites answer on the status
    unknown = [i for i in dataset_ids if i not in offered]
    if unknown:
        raise NotFound(f"not offered to your org: {', '.join(unknown)} (offered: {', '.join(sorted(offered)) or 'none'}); "
                       "check the org and the dataset id", "flareop datasets list")


def _set_active(name: str, active: bool, session: Session | None) -> ComputeStatus:
    return ComputeStatus.of(current(session).patch(KIND, name, {"spec": {"active": active}}))


def activate(name: str, *, session: Session | None = None) -> ComputeStatus:
    """Bring the server and every client back (same identities and workspaces)."""
    return _set_active(name, True, session)


def deactivate(name: str, *, session: Session | None = None) -> ComputeStatus:
    """Scale the server and every client to zero (releases their GPUs); jobs on it are paused."""
    return _set_active(name, False, session)


def get_status(name: str, *, session: Session | None = None) -> ComputeStatus:
    return ComputeStatus.of(current(session).get(KIND, name))


def wait_until_ready(name: str, timeout: float = 300, *, poll_interval: float = 2.0,
                     session: Session | None = None) -> ComputeStatus:
    """Wait until the federation's server and every client run (phase Ready). Raises ``ComputeRejected``
    (each org's answer) when an org refused, ``InvalidSpec`` when it Failed otherwise, the SDK's ``TimeoutError`` (saying which orgs have not answered or which clients
    are missing) after ``timeout`` seconds."""
    import time

    from .errors import TimeoutError

    s = current(session)
    deadline = time.monotonic() + timeout
    while True:
        st = get_status(name, session=s)
        if st.phase == "Ready":
            return st
        denied = [OrgReason(x.org, x.decision, x.message) for x in st.sites if x.decision == "Rejected"]
        if denied:
            raise ComputeRejected(f"ComputeSpec {name}: " + "; ".join(f"{r.org} refused: {r.message}" for r in denied),
                                  [OrgReason(x.org, x.decision, x.message) for x in st.sites],
                                  f"kubectl describe computespec {name} -n {s.namespace}")
        if st.phase == "Failed":
            raise InvalidSpec(f"ComputeSpec {name} failed: {st.message}", f"kubectl describe computespec {name} -n {s.namespace}")
        if time.monotonic() > deadline:
            waiting = [f"{x.org}: {x.decision} {x.message}".strip() for x in st.sites if not x.client_ready]
            raise TimeoutError(f"ComputeSpec {name} is {st.phase} after {timeout:g} s ({st.message}); "
                               f"waiting for: {'; '.join(waiting) or 'the server'}",
                               f"kubectl describe computespec {name} -n {s.namespace}")
        time.sleep(poll_interval)


def list_compute(*, session: Session | None = None) -> list[ComputeStatus]:
    return [ComputeStatus.of(o) for o in current(session).list(KIND)]


def delete(name: str, *, wait: float | None = 120, session: Session | None = None) -> None:
    """Delete the federation: its server, clients and credentials go; finished jobs' results stay.
    Returns once the operator has removed them (``wait`` seconds at most; None: at once)."""
    current(session).delete(KIND, name, wait=wait)
