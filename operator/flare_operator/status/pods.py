"""Pure: why a workload Pod does not run, in words a person can act on (from the Pod's status)."""

from __future__ import annotations

FAILING_WAITING_REASONS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "CrashLoopBackOff", "RunContainerError", "PreCreateHookError", "PostStartHookError",
})
"""Container states that do not clear up by waiting: the image, the configuration or the program is wrong."""

MESSAGE_MAX = 512


def pod_problem(pod: dict | None) -> str | None:
    """``"Pod ns/name: <reason>: <message>"`` when the Pod cannot be scheduled or a container of it
    is stuck in a failing state; None while it runs or is merely starting."""
    if not pod:
        return None
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return _cut(f"Pod {name} cannot be scheduled: {cond.get('message') or 'no node fits'}")
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


def statefulset_ready(sts: dict | None) -> bool:
    """Every replica it wants ready (and it wants at least one)."""
    if not sts:
        return False
    wanted = sts["spec"].get("replicas", 1)
    return wanted > 0 and (sts.get("status") or {}).get("readyReplicas", 0) >= wanted


def _cut(text: str) -> str:
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 1] + "…"
