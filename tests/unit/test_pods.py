"""Why a workload Pod does not run, from its status (status/pods.py)."""

from __future__ import annotations

from flare_operator.status.pods import pod_problem


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
