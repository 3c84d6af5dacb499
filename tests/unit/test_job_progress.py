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
