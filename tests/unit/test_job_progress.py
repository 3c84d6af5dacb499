"""Status fields from the app's live metrics.json."""

from __future__ import annotations

from flare_operator.status.job import progress_from_metrics


def test_no_round_completed_yet():
    assert progress_from_metrics({"last_completed_round": None, "history": []}, 3) == {
        "current_round": 0, "progress": "0/3"}


def test_the_first_round_counts_as_one():
    record = {"last_completed_round": 0, "history": [
        {"round": 0, "global": {"val_accuracy": 0.4, "note": "x"}, "sites": {"org-a": {"val_accuracy": 0.5, "dp_epsilon": 1.5}}}]}
    got = progress_from_metrics(record, 3)
    assert got["current_round"] == 1 and got["progress"] == "1/3"
    assert got["global_metrics"] == {"val_accuracy": 0.4}, "only numbers are metrics"
    (site,) = got["site_metrics"]
    assert site.site == "org-a" and site.epsilon_spent == 1.5


def test_the_final_evaluation_wins_and_reported_epsilon_is_used():
    record = {"last_completed_round": 2, "history": [{"global": {"val_accuracy": 0.1}, "sites": {}}],
              "final": {"global": {"val_accuracy": 0.9}, "sites": {"org-a": {"val_accuracy": 0.8, "dp_epsilon": 2.0}}},
              "epsilon_spent": {"org-a": 2.5}}
    got = progress_from_metrics(record, 3)
    assert got["progress"] == "3/3" and got["global_metrics"] == {"val_accuracy": 0.9}
    assert got["site_metrics"][0].epsilon_spent == 2.5


# --- a site whose client lost the running job (status/job.py SiteWatch, nvflare/admin.py without_job) ---

def test_without_job_counts_clients_that_answer_without_the_job():
    from flare_operator.nvflare.admin import without_job

    answers = [
        {"client_name": "org-a", "app_name": "app_org-a", "job_id": "j1", "status": "started"},
        {"client_name": "org-a", "app_name": "app_org-a", "job_id": "j0", "status": "started"},
        {"client_name": "org-b", "status": "no_jobs"},
        {"client_name": "org-c", "status": "no_reply"},  # may be restarting: not counted
        {"client_name": "org-d", "app_name": "app_org-d", "job_id": "j0", "status": "started"},  # another job only
    ]
    assert without_job(answers, "j1") == ["org-b", "org-d"]
    assert without_job([], "j1") == []


def test_a_site_counts_as_lost_once_it_answered_without_the_job_long_enough():
    from flare_operator.status.job import SiteWatch

    sites = ["org-a", "org-b", "org-c"]
    w = SiteWatch()
    assert w.due(0.0, 5) and w.lost(0.0, 15, 180) == []
    w.observe(sites, ["org-b", "org-c"], 100.0)  # org-a runs it; org-b and org-c not yet (slow to start)
    assert not w.due(103.0, 5) and w.due(105.0, 5)
    w.observe(sites, ["org-c"], 110.0)  # org-b started it
    w.observe(sites, ["org-a", "org-c"], 120.0)  # org-a, seen running it, now answers without it
    assert w.lost(134.0, 15, 180) == []
    assert w.lost(135.0, 15, 180) == ["org-a"], "seen running it: lost after lost_after"
    assert w.lost(279.0, 15, 180) == ["org-a"], "never seen running it (missing since 100): given start_within"
    assert w.lost(280.0, 15, 180) == ["org-a", "org-c"]
    w.observe(sites, ["org-c"], 130.0)  # org-a runs it again: its clock is reset
    assert w.lost(200.0, 15, 180) == []
    w.observe(sites, [], 300.0)
    assert w.lost(1000.0, 15, 180) == []


def test_abort_of_a_job_a_restarted_server_no_longer_runs_is_not_an_error(tmp_path):
    """NVFlare 2.9: a job whose record still says RUNNING after the server restarted cannot be
    aborted; the server answers an internal error, not JobNotRunning (found by the chaos suite: the
    suspend handler failed on it for ever)."""
    import pytest
    from nvflare.fuel.flare_api.api_spec import InternalError

    from flare_operator.nvflare.admin import FlareAdmin

    class Session:
        def __init__(self, error):
            self.error = error

        def abort_job(self, job_id):
            if self.error:
                raise self.error

    admin = FlareAdmin(tmp_path)
    admin._session = Session(InternalError("server internal error: Job j1 is not running."))
    assert admin.abort("j1") is False
    admin._session = Session(None)
    assert admin.abort("j1") is True
    admin._session = Session(InternalError("server internal error: exception <class 'KeyError'>"))
    with pytest.raises(InternalError):
        admin.abort("j1")
