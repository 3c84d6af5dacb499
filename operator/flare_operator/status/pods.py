"""Pure: why a workload Pod does not run, in words a person can act on (from the Pod's status)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

FAILING_WAITING_REASONS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "CrashLoopBackOff", "RunContainerError", "PreCreateHookError", "PostStartHookError",
})
"""Container states that do not clear up by waiting: the image, the configuration or the program is wrong."""

MESSAGE_MAX = 512

CLAIM_BINDING = "unbound immediate PersistentVolumeClaims"
"""The scheduler's words for a Pod whose claim is still being provisioned and bound: a StatefulSet
creates its Pod and the Pod's claim together, so every new workload says this for a moment."""
CLAIM_BINDING_GRACE = timedelta(seconds=60)
"""How long a Pod may wait for its claim before that counts as failing (a claim that never binds: no
provisioner for its StorageClass, no volume that fits)."""


def pod_problem(pod: dict | None, now: datetime | None = None) -> str | None:
    """``"Pod ns/name: <reason>: <message>"`` when the Pod cannot be scheduled or a container of it
    is stuck in a failing state; None while it runs or is merely starting (waiting less than
    CLAIM_BINDING_GRACE for its claim to bind counts as starting)."""
    if not pod:
        return None
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            message = cond.get("message") or "no node fits"
            if CLAIM_BINDING in message and _younger(cond.get("lastTransitionTime"), now, CLAIM_BINDING_GRACE):
                return None
            return _cut(f"Pod {name} cannot be scheduled: {message}")
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in FAILING_WAITING_REASONS:
            detail = waiting.get("message") or ""
            if reason == "CrashLoopBackOff":
                last = ((cs.get("lastState") or {}).get("terminated") or {})
                detail = f"exit code {last.get('exitCode')}" + (f" ({last['reason']})" if last.get("reason") else "")
            return _cut(f"Pod {name}, container {cs.get('name')}: {reason}" + (f": {detail}" if detail else ""))
    return None


def problem_fields(pod: dict) -> dict:
    """What ``pod_problem`` reads of a Pod (to keep a watched Pod's state small and judge it later: how
    long it has waited for its claim is a question of when it is asked)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    return {"metadata": {"namespace": meta.get("namespace", ""), "name": meta.get("name", "")},
            "status": {k: status[k] for k in ("conditions", "initContainerStatuses", "containerStatuses")
                       if k in status}}


def statefulset_ready(sts: dict | None) -> bool:
    """Every replica it wants ready (and it wants at least one)."""
    if not sts:
        return False
    wanted = sts["spec"].get("replicas", 1)
    return wanted > 0 and (sts.get("status") or {}).get("readyReplicas", 0) >= wanted


def _younger(stamp: str | None, now: datetime | None, age: timedelta) -> bool:
    if not stamp:
        return False
    since = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (now or datetime.now(UTC)) - since < age


def _cut(text: str) -> str:
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 1] + "…"
