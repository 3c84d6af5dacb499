"""The process runtime reads what a site's own client recorded of a job's privacy (every attempt), which
the site's gateway composes on its grants' ledgers (policy/ledger.py)."""

from __future__ import annotations

import json

from flare_operator.runtime.workloads import PRIVACY_RECORD_FILE, _job_folders, _privacy_record

UID = "6f1d3c2e-8a4b-4f0e-9c7d-2b1a0e9f8d7c"


def _attempt(ws, job_id, uid=UID, record=None):
    folder = ws / job_id
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"name": job_id, "flareop": {"uid": uid}}))
    if record is not None:
        (folder / PRIVACY_RECORD_FILE).write_text(record if isinstance(record, str) else json.dumps(record))
    return folder


def _event(count):
    return {"mechanism": "PoissonGaussian", "noiseMultiplier": 1.1, "sampleRate": 0.0667, "count": count}


def test_every_attempt_of_the_job_adds_its_events(tmp_path):
    _attempt(tmp_path, "job-1", record={"level": "sample", "delta": 1e-5, "events": [_event(16)]})
    _attempt(tmp_path, "job-2", record={"level": "sample", "delta": 1e-5, "events": [_event(48)]})
    _attempt(tmp_path, "job-3", uid="another-job", record={"level": "sample", "delta": 1e-5, "events": [_event(9)]})
    _attempt(tmp_path, "job-4")  # deployed, no step under DP yet
    folders = _job_folders(tmp_path, UID)
    assert [f.name for f in folders] == ["job-1", "job-2", "job-4"]
    assert _privacy_record(folders) == {"delta": 1e-5, "events": [_event(16), _event(48)]}


def test_no_record_or_an_unreadable_one_is_unknown(tmp_path):
    assert _privacy_record(_job_folders(tmp_path, UID)) is None  # never deployed here
    assert _privacy_record([_attempt(tmp_path, "job-1")]) is None  # no DP record (a non-DP job, another app)
    broken = [_attempt(tmp_path, "job-2", record={"level": "sample", "delta": 1e-5, "events": [_event(8)]}),
              _attempt(tmp_path, "job-3", record="{half a docu")]
    assert _privacy_record(broken) is None  # the ledger then charges the reservation


def test_attempts_with_different_deltas_are_not_composed_as_one_job(tmp_path):
    folders = [_attempt(tmp_path, "job-1", record={"level": "sample", "delta": 1e-5, "events": [_event(8)]}),
               _attempt(tmp_path, "job-2", record={"level": "sample", "delta": 1e-6, "events": [_event(8)]})]
    assert _privacy_record(folders) is None
