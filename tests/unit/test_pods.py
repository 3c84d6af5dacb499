"""Why a workload Pod does not run, from its status (status/pods.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flare_operator.status.pods import CLAIM_BINDING_GRACE, pod_problem, problem_fields


def pod(**status) -> dict:
    return {"metadata": {"namespace": "org-b", "name": "fed-org-b-0"}, "status": status}


def waiting(reason: str, message: str = "", **extra) -> dict:
    return {"name": "client", "state": {"waiting": {"reason": reason, "message": message}}, **extra}


def test_running_or_starting_pods_have_no_problem():
    assert pod_problem(None) is None
    assert pod_problem(pod(phase="Running", containerStatuses=[{"name": "client", "state": {"running": {}}}])) is None
    assert pod_problem(pod(phase="Pending", containerStatuses=[waiting("ContainerCreating")])) is None
    assert pod_problem(pod(phase="Pending", conditions=[{"type": "PodScheduled", "status": "False",
                                                        "reason": "SchedulerError"}])) is None


def test_an_image_that_cannot_be_pulled_is_named():
    problem = pod_problem(pod(phase="Pending", containerStatuses=[
        waiting("ErrImageNeverPull", 'Container image "reg/x:nope" is not present with pull policy of Never')]))
    assert problem == ('Pod org-b/fed-org-b-0, container client: ErrImageNeverPull: Container image "reg/x:nope" '
                       "is not present with pull policy of Never")


def test_unschedulable_and_crash_looping_pods_say_why():
    unschedulable = pod(phase="Pending", conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": '0/1 nodes are available: persistentvolumeclaim "cells" not found.'}])
    assert pod_problem(unschedulable) == ('Pod org-b/fed-org-b-0 cannot be scheduled: 0/1 nodes are available: '
                                          'persistentvolumeclaim "cells" not found.')
    crashing = pod(phase="Running", containerStatuses=[waiting(
        "CrashLoopBackOff", "back-off 40s", lastState={"terminated": {"exitCode": 1, "reason": "Error"}})])
    assert pod_problem(crashing) == "Pod org-b/fed-org-b-0, container client: CrashLoopBackOff: exit code 1 (Error)"


def test_long_messages_are_cut():
    assert len(pod_problem(pod(containerStatuses=[waiting("ErrImagePull", "x" * 5000)]))) == 512


def test_a_pod_whose_claim_is_being_bound_is_starting_until_the_grace_runs_out():
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)

    def waiting_for_claim(age: timedelta) -> dict:
        return pod(phase="Pending", conditions=[{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "lastTransitionTime": (now - age).isoformat().replace("+00:00", "Z"),
            "message": "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims. not found"}])

    assert pod_problem(waiting_for_claim(timedelta(seconds=3)), now) is None  # a new StatefulSet's Pod
    # judged when asked, from what a watch kept of the Pod (runtime/kubernetes.py observe)
    kept = problem_fields({**waiting_for_claim(CLAIM_BINDING_GRACE + timedelta(seconds=1)), "spec": {"x": 1}})
    assert "spec" not in kept
    late = pod_problem(kept, now)
    assert late == ("Pod org-b/fed-org-b-0 cannot be scheduled: 0/2 nodes are available: pod has unbound "
                    "immediate PersistentVolumeClaims. not found")
    no_time = waiting_for_claim(timedelta(0))
    del no_time["status"]["conditions"][0]["lastTransitionTime"]
    assert pod_problem(no_time, now) is not None  # cannot tell how long: say it
