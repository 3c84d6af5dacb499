"""Pure: what the orchestrator observed about a ComputeSpec -> its phase and conditions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..api.common import Decision
from ..api.compute import ComputePhase, ComputeSpecStatus, SiteStatus
from ..api.conditions import ConditionType as T
from ..api.conditions import Reason as R
from .conditions import Conditions


@dataclass(frozen=True)
class ObservedSite:
    org: str
    datasets: tuple[str, ...]
    gateway: bool  # the org registered a Gateway on the hub
    decision: Decision = Decision.PENDING
    message: str = ""
    client_ready: bool = False
    client_problem: str = ""  # why the site's client does not run (the site's report)


@dataclass(frozen=True)
class ObservedCompute:
    generation: int
    active: bool
    sites: tuple[ObservedSite, ...]
    provisioned: bool = False
    provisioning_error: str = ""
    server_ready: bool = False
    server_endpoint: str | None = None
    server_problem: str = ""  # why the server does not run (its Pod's state)
    project: str | None = None
    previous: ComputeSpecStatus = field(default_factory=ComputeSpecStatus)


def compute_status(o: ObservedCompute, now: datetime) -> ComputeSpecStatus:
    conds = Conditions(o.previous.conditions, generation=o.generation, now=now)
    cond = conds.set

    missing = [s.org for s in o.sites if not s.gateway]
    denied = [s for s in o.sites if s.decision == Decision.REJECTED]
    waiting = [s.org for s in o.sites if s.gateway and s.decision == Decision.PENDING]
    if missing:
        # why a Gateway that exists does not count (another org's or an unlabelled namespace), if so
        why = [s.message for s in o.sites if not s.gateway and s.message and s.message != f"{s.org} has no Gateway on the hub"]
        cond(T.DATASETS_GRANTED, False, R.GATEWAY_MISSING,
             f"no Gateway registered on the hub for {', '.join(missing)}: the org's site must install the gateway"
             + (f" ({'; '.join(why)})" if why else ""))
    elif denied:
        cond(T.DATASETS_GRANTED, False, R.DATASET_DENIED,
             "; ".join(f"{s.org} refused {', '.join(s.datasets)}: {s.message}" for s in denied))
    elif waiting:
        cond(T.DATASETS_GRANTED, None, R.AWAITING_SITES, f"waiting for {', '.join(waiting)} to answer")
    else:
        cond(T.DATASETS_GRANTED, True, R.APPROVED, "every org granted its datasets")
    granted = not missing and not denied and not waiting

    if o.provisioning_error:
        cond(T.PROVISIONED, False, R.PROVISIONING_FAILED, o.provisioning_error)
    elif o.provisioned:
        cond(T.PROVISIONED, True, R.RECONCILED, f"NVFlare project {o.project} with its own root CA")
    else:
        cond(T.PROVISIONED, False, R.PROGRESSING, "waiting for every org's answer before provisioning")

    not_ready = [s.org for s in o.sites if not s.client_ready]
    client_failing = [f"{s.org}: {s.client_problem}" for s in o.sites if not s.client_ready and s.client_problem]
    server_failing = [f"server: {o.server_problem}"] if not o.server_ready and o.server_problem else []
    failing = server_failing + client_failing
    if not o.active:
        cond(T.SERVER_READY, False, R.DEACTIVATED, "spec.active is false: the server is scaled to zero")
        cond(T.CLIENTS_READY, False, R.DEACTIVATED, "spec.active is false: clients are scaled to zero")
    else:
        if o.server_ready:
            cond(T.SERVER_READY, True, R.RECONCILED, f"NVFlare server at {o.server_endpoint}")
        elif o.server_problem:
            cond(T.SERVER_READY, False, R.WORKLOAD_FAILING, o.server_problem)
        else:
            cond(T.SERVER_READY, False, R.SERVER_STARTING, "the NVFlare server is starting")
        if not not_ready and o.sites:
            cond(T.CLIENTS_READY, True, R.RECONCILED, "every client is connected")
        elif client_failing:
            cond(T.CLIENTS_READY, False, R.WORKLOAD_FAILING, "; ".join(client_failing))
        else:
            cond(T.CLIENTS_READY, False, R.CLIENTS_STARTING, f"waiting for clients of {', '.join(not_ready)}")

    if not o.active:
        phase, ready, reason, msg = ComputePhase.DEACTIVATED, False, R.DEACTIVATED, "spec.active is false"
    elif o.provisioning_error:
        phase, ready, reason, msg = ComputePhase.FAILED, False, R.PROVISIONING_FAILED, o.provisioning_error
    elif missing or denied:
        phase, ready = ComputePhase.FAILED if denied else ComputePhase.PENDING, False
        reason = R.DATASET_DENIED if denied else R.GATEWAY_MISSING
        msg = conds.message(T.DATASETS_GRANTED)
    elif not granted:
        phase, ready, reason, msg = ComputePhase.PENDING, False, R.AWAITING_SITES, f"waiting for {', '.join(waiting)}"
    elif not o.provisioned:
        phase, ready, reason, msg = ComputePhase.PROVISIONING, False, R.PROGRESSING, "provisioning the federation"
    elif failing:
        phase, ready, reason, msg = ComputePhase.STARTING, False, R.WORKLOAD_FAILING, "; ".join(failing)
    elif not o.server_ready or not_ready:
        phase, ready = ComputePhase.STARTING, False
        reason = R.SERVER_STARTING if not o.server_ready else R.CLIENTS_STARTING
        msg = "the NVFlare server is starting" if not o.server_ready else f"waiting for clients of {', '.join(not_ready)}"
    else:
        phase, ready, reason, msg = ComputePhase.READY, True, R.RECONCILED, "server and every client are connected"
    cond(T.READY, ready, reason, msg)

    sites = [SiteStatus(org=s.org, site=s.org, datasets=list(s.datasets), decision=s.decision,
                        message=(s.client_problem if s.client_problem and not s.client_ready else s.message)[:1024],
                        client_ready=s.client_ready) for s in o.sites]
    return ComputeSpecStatus(
        phase=phase, observed_generation=o.generation, conditions=conds.items, server_endpoint=o.server_endpoint,
        project=o.project, sites=sites,
        ready_clients=f"{sum(s.client_ready for s in o.sites)}/{len(o.sites)}",
    )
