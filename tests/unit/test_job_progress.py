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


def test_a_site_counts_as_lost_only_once_it_answered_without_the_job_long_enough():
    from flare_operator.status.job import SiteWatch

    w = SiteWatch()
    assert w.due(0.0, 5) and w.lost(0.0, 15) == []
    w.observe(["org-b"], 100.0)
    assert not w.due(103.0, 5) and w.due(105.0, 5)
    assert w.lost(110.0, 15) == []
    w.observe(["org-b", "org-c"], 110.0)
    assert w.lost(115.0, 15) == ["org-b"], "org-b since 100, org-c only since 110"
    w.observe(["org-c"], 116.0)  # org-b runs it again (a slow start, not a loss): its clock is reset
    assert w.lost(126.0, 15) == ["org-c"]
    w.observe([], 127.0)
    assert w.lost(1000.0, 15) == []
