"""The NVFlare job builder: pure, torch-free, per-site apps, DP/filters/aggregation wiring, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flare_operator.builders.nvflare_job import (
    DP_FILTER,
    JobBuildError,
    SiteSpec,
    build_job,
    job_content_hash,
    sites_for,
    write_job,
)
from flare_operator.catalog import ParameterError, load_app

SITES = [{"name": "site-1", "datasetPath": "/data/a.csv"}, SiteSpec("site-2", "/data/b.parquet")]


@pytest.fixture(scope="module")
def app():
    return load_app("esm2-finetune")


def _cfg(files, path):
    return json.loads(files[path])


def test_layout_and_meta(app):
    files = build_job(
        app, {"rounds": 4}, SITES, job_name="j1", metadata={"uid": "abc", "contentHash": "sha256:x"}
    )
    meta = _cfg(files, "j1/meta.json")
    assert meta["deploy_map"] == {
        "app_server": ["server"],
        "app_site-1": ["site-1"],
        "app_site-2": ["site-2"],
    }
    assert meta["min_clients"] == 2 and meta["name"] == "j1"
    assert meta["flareop"] == {
        "app": {"id": "esm2-finetune", "version": app.version},
        "uid": "abc",
        "contentHash": "sha256:x",
    }
    for prefix in ("j1/app_server", "j1/app_site-1", "j1/app_site-2"):
        assert f"{prefix}/custom/esm2_app/modeling.py" in files
        assert f"{prefix}/custom/flare_app_common/dp.py" in files
        assert f"{prefix}/custom/esm2_client.py" in files
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in files)
    srv = _cfg(files, "j1/app_server/config/config_fed_server.json")
    wf = srv["workflows"][0]
    assert wf["path"] == "esm2_app.controller.Esm2FedAvg"
    assert wf["args"]["num_rounds"] == 4 and wf["args"]["sites"] == ["site-1", "site-2"]
    assert wf["args"]["params"]["mode"] == "full"  # defaults applied
    assert wf["args"]["aggregation"] == {"weighting": "sample", "maxShare": 0.5}


def test_each_site_gets_only_its_own_dataset_path(app):
    files = build_job(app, {}, SITES, job_name="j")
    c1 = _cfg(files, "j/app_site-1/custom/site_config.json")
    assert c1["datasetPath"] == "/data/a.csv" and c1["site"] == "site-1"
    blob1 = b"".join(v for k, v in files.items() if k.startswith("j/app_site-1/"))
    assert b"/data/b.parquet" not in blob1
    ex = _cfg(files, "j/app_site-1/config/config_fed_client.json")["executors"][0]
    assert ex["executor"]["path"].endswith("ClientAPIExecutor")
    assert ex["executor"]["args"]["task_script_path"] == "esm2_client.py"
    assert ex["executor"]["args"]["params_transfer_type"] == "DIFF"
    assert set(ex["tasks"]) == {"train", "validate"}
    assert _cfg(files, "j/app_site-1/config/config_fed_client.json")["task_result_filters"] == []


def test_a_site_with_several_datasets_trains_on_all_of_them(app):
    sites = sites_for({"org-a": ("scl-a",), "org-b": ("scl-b1", "scl-b2")}, lambda org: f"{org}-client")
    assert [(s.name, s.paths()) for s in sites] == [
        ("org-a-client", ("dataset:scl-a",)),
        ("org-b-client", ("dataset:scl-b1", "dataset:scl-b2")),
    ]
    files = build_job(app, {}, sites, job_name="j")
    assert _cfg(files, "j/app_org-a-client/custom/site_config.json")["datasetPath"] == "dataset:scl-a"
    assert _cfg(files, "j/app_org-b-client/custom/site_config.json")["datasetPath"] == ["dataset:scl-b1", "dataset:scl-b2"]
    mapping = [{"name": "s1", "datasetPath": ["/d/x.csv", "/d/y.csv"]}]
    assert _cfg(build_job(app, {}, mapping, job_name="k"), "k/app_s1/custom/site_config.json")["datasetPath"] == [
        "/d/x.csv",
        "/d/y.csv",
    ]


def test_dp_and_nvflare_filters_on_train_results(app):
    privacy = {
        "differentialPrivacy": {
            "enabled": True,
            "clipNorm": 0.5,
            "noiseMultiplier": 1.2,
            "accountant": "pld",
        },
        "filters": [
            {"type": "ExcludeVars", "args": {"exclude_vars": "classifier"}},
            {"type": "PercentilePrivacy", "args": {"percentile": 10, "gamma": 0.01}},
        ],
    }
    files = build_job(app, {}, SITES, job_name="j", privacy=privacy)
    trf = _cfg(files, "j/app_site-2/config/config_fed_client.json")["task_result_filters"]
    assert trf[0]["tasks"] == ["train"]
    f = trf[0]["filters"]
    assert f[0] == {
        "path": DP_FILTER,
        "args": {"clip_norm": 0.5, "noise_multiplier": 1.2, "delta": 1e-5, "accountant": "pld"},
    }
    assert f[1]["path"] == "nvflare.app_common.filters.exclude_vars.ExcludeVars"
    assert f[2]["path"] == "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy"
    srv = _cfg(files, "j/app_server/config/config_fed_server.json")["workflows"][0]["args"]
    assert srv["privacy"]["differentialPrivacy"]["enabled"] is True


def test_capped_aggregation_and_min_clients(app):
    files = build_job(
        app, {}, SITES, job_name="j", aggregation={"weighting": "capped", "maxShare": 0.6}, min_clients=1
    )
    args = _cfg(files, "j/app_server/config/config_fed_server.json")["workflows"][0]["args"]
    assert args["aggregation"] == {"weighting": "capped", "maxShare": 0.6} and args["min_clients"] == 1
    with pytest.raises(ParameterError, match="infeasible"):
        build_job(app, {}, SITES, job_name="j", aggregation={"weighting": "capped", "maxShare": 0.4})


@pytest.mark.parametrize(
    "kwargs, err, fragment",
    [
        ({"params": {"mode": "nope"}}, ParameterError, "$.mode"),
        ({"sites": []}, JobBuildError, "at least one site"),
        ({"sites": [SITES[0], SITES[0]]}, JobBuildError, "duplicate site names"),
        ({"sites": [{"name": "bad name", "datasetPath": "/x"}]}, JobBuildError, "invalid site name"),
        ({"sites": [{"name": "server", "datasetPath": "/x"}]}, JobBuildError, "invalid site name"),
        ({"sites": [{"name": "s1"}]}, JobBuildError, "datasetPath is required"),
        ({"sites": [{"name": "s1", "datasetPath": []}]}, JobBuildError, "datasetPath is required"),
        ({"sites": [{"name": "s1", "datasetPath": ["/x", "/x"]}]}, JobBuildError, "the same dataset twice"),
        ({"job_name": "../x"}, JobBuildError, "invalid job name"),
        ({"min_clients": 3}, JobBuildError, "min_clients"),
        ({"metadata": {"x": object()}}, JobBuildError, "JSON-serialisable"),
        ({"privacy": {"filters": [{"type": "DXOBlocker"}]}}, ParameterError, "$.filters[0].type"),
        ({"resume": {"checkpoint": ""}}, JobBuildError, "resume.checkpoint"),
        ({"resume": {"checkpoint": "/r/g.safetensors", "startRound": 3}}, JobBuildError, "resume.startRound"),
    ],
)
def test_errors(app, kwargs, err, fragment):
    args = {"params": {}, "sites": SITES, "job_name": "j", **kwargs}
    with pytest.raises(err) as ei:
        build_job(app, args.pop("params"), args.pop("sites"), **args)
    assert fragment in str(ei.value)


def test_content_hash_is_stable_and_sensitive(app):
    a = build_job(app, {"rounds": 2}, SITES, job_name="j")
    b = build_job(app, {"rounds": 2}, SITES, job_name="j")
    c = build_job(app, {"rounds": 3}, SITES, job_name="j")
    assert job_content_hash(a) == job_content_hash(b) != job_content_hash(c)
    assert job_content_hash(a).startswith("sha256:")


def test_write_job(app, tmp_path):
    files = build_job(app, {}, SITES, job_name="myjob")
    d = write_job(files, tmp_path)
    assert d == tmp_path / "myjob"
    assert json.loads((d / "meta.json").read_text())["name"] == "myjob"
    assert (d / "app_site-2" / "custom" / "esm2_app" / "vocab.txt").read_text().splitlines()[1] == "<pad>"
    with pytest.raises(JobBuildError, match="unsafe path"):
        write_job({"../evil": b""}, tmp_path)


def test_building_a_job_imports_neither_torch_nor_nvflare(tmp_path):
    code = (
        "import sys\n"
        "from flare_operator.catalog import load_app\n"
        "from flare_operator.builders.nvflare_job import build_job, write_job\n"
        "files = build_job(load_app('esm2-finetune'), {'mode': 'lora'}, [{'name': 's1', 'datasetPath': '/d'}], job_name='j',\n"
        "    privacy={'differentialPrivacy': {'enabled': True}})\n"
        f"write_job(files, {str(tmp_path)!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nvflare', 'transformers', 'peft', 'kopf', 'kubernetes'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resume_from_checkpoint(app):
    files = build_job(
        app, {"rounds": 3}, SITES, job_name="j", resume={"checkpoint": "/r/g.safetensors", "startRound": 2}
    )
    args = _cfg(files, "j/app_server/config/config_fed_server.json")["workflows"][0]["args"]
    assert args["initial_checkpoint"] == "/r/g.safetensors" and args["start_round"] == 2
    plain = _cfg(build_job(app, {}, SITES, job_name="j"), "j/app_server/config/config_fed_server.json")
    assert (
        plain["workflows"][0]["args"]["initial_checkpoint"] == ""
        and plain["workflows"][0]["args"]["start_round"] == 0
    )


def test_generated_filter_configs_instantiate(app):
    """The NVFlare filter classes accept exactly the args the builder writes."""
    import importlib

    privacy = {
        "differentialPrivacy": {"enabled": True},
        "filters": [
            {"type": "ExcludeVars", "args": {"exclude_vars": "classifier"}},
            {"type": "PercentilePrivacy", "args": {"percentile": 10, "gamma": 0.01}},
            {
                "type": "SVTPrivacy",
                "args": {"fraction": 0.1, "epsilon": 0.1, "noise_var": 0.1, "gamma": 1e-5, "tau": 1e-6},
            },
        ],
    }
    files = build_job(app, {}, SITES, job_name="j", privacy=privacy)
    filters = _cfg(files, "j/app_site-1/config/config_fed_client.json")["task_result_filters"][0]["filters"]
    sys.path.insert(0, str(app.path.parent / "_shared"))
    for f in filters:
        mod, cls = f["path"].rsplit(".", 1)
        obj = getattr(importlib.import_module(mod), cls)(**f["args"])
        assert obj is not None


def test_api_shapes_translate_to_builder_settings(app):
    from flare_operator.builders.nvflare_job import aggregation_from_api, privacy_from_api
    from flare_operator.catalog import expected_epsilon

    priv = privacy_from_api(
        {"differentialPrivacy": {"enabled": True, "epsilon": 8, "delta": 1e-5, "clipNorm": 1.0}}, 5
    )
    dp = priv["differentialPrivacy"]
    assert "epsilon" not in dp and dp["clipNorm"] == 1.0
    eps = expected_epsilon(priv, 5)
    assert 7.9 < eps <= 8.0  # calibrated: the target is met, and not by a wide margin
    assert privacy_from_api({"differentialPrivacy": {"enabled": False}}, 5) == {
        "differentialPrivacy": {"enabled": False}
    }
    with pytest.raises(JobBuildError, match="epsilon is required"):
        privacy_from_api({"differentialPrivacy": {"enabled": True}}, 5)
    assert aggregation_from_api({"weighting": "Capped", "maxSiteShare": 0.6}) == {
        "weighting": "capped",
        "maxShare": 0.6,
    }
    assert aggregation_from_api({"weighting": "SampleCount"}) == {"weighting": "sample"}
    assert aggregation_from_api(None) == {"weighting": "sample"}
    with pytest.raises(JobBuildError, match="unknown aggregation weighting"):
        aggregation_from_api({"weighting": "Median"})
    files = build_job(
        app,
        {"rounds": 5},
        SITES,
        job_name="j",
        privacy=priv,
        aggregation=aggregation_from_api({"weighting": "Uniform"}),
    )
    assert _cfg(files, "j/app_site-1/config/config_fed_client.json")["task_result_filters"][0]["filters"][0][
        "args"
    ]["noise_multiplier"] == pytest.approx(dp["noiseMultiplier"])


def test_a_resumed_dp_job_keeps_counting_each_sites_releases(app):
    """Epsilon goes on from the updates earlier attempts released, never restarts at zero."""
    import importlib

    privacy = {"differentialPrivacy": {"enabled": True}}
    resumed = build_job(app, {"rounds": 4}, SITES, job_name="j", privacy=privacy,
                        resume={"checkpoint": "/r/g.safetensors", "startRound": 2, "priorReleases": 3})
    (dp,) = _cfg(resumed, "j/app_site-1/config/config_fed_client.json")["task_result_filters"][0]["filters"]
    assert dp["args"]["prior_releases"] == 3
    sys.path.insert(0, str(app.path.parent / "_shared"))
    module, _, cls = dp["path"].rpartition(".")
    assert getattr(importlib.import_module(module), cls)(**dp["args"]).releases == 3
    fresh = build_job(app, {"rounds": 4}, SITES, job_name="j", privacy=privacy)
    (dp,) = _cfg(fresh, "j/app_site-1/config/config_fed_client.json")["task_result_filters"][0]["filters"]
    assert "prior_releases" not in dp["args"]
    with pytest.raises(JobBuildError, match="priorReleases"):
        build_job(app, {"rounds": 4}, SITES, job_name="j", privacy=privacy,
                  resume={"checkpoint": "/r/g.safetensors", "startRound": 2, "priorReleases": -1})


def test_clients_stream_their_job_logs_to_the_server(app):
    files = build_job(app, {}, SITES, job_name="j")
    client = _cfg(files, "j/app_site-1/config/config_fed_client.json")["components"]
    server = _cfg(files, "j/app_server/config/config_fed_server.json")["components"]
    assert [c["path"].rsplit(".", 1)[1] for c in client] == ["JobLogStreamer"]
    assert client[0]["args"]["target_parent_server"] is True, "the server's job process may end first"
    assert server == [], "the server's parent process receives and stores the logs"


def test_sample_level_dp_runs_in_the_training_script_not_as_a_filter(app):
    """Sample level: each site's script gets SampleDP's arguments (the target, not a noise multiplier:
    the site calibrates from its own record count); no client-level filter; a resumed job's earlier
    rounds are reporting only, so the site's own build of the app digests the same."""
    from flare_operator.builders.nvflare_job import SAMPLE_DP, privacy_from_api
    from flare_operator.policy.site_enforcement import app_digest

    api = {"differentialPrivacy": {"enabled": True, "level": "Sample", "epsilon": 8.0, "delta": 1e-5, "clipNorm": 0.7}}
    privacy = privacy_from_api(api, 4)
    assert privacy["differentialPrivacy"]["level"] == "sample" and "noiseMultiplier" not in privacy["differentialPrivacy"]
    fresh = build_job(app, {"rounds": 4}, SITES, job_name="j", privacy=privacy)
    assert _cfg(fresh, "j/app_site-1/config/config_fed_client.json")["task_result_filters"] == []
    sample = _cfg(fresh, "j/app_site-2/custom/site_config.json")["sampleDP"]
    assert sample == {"path": SAMPLE_DP, "args": {"epsilon": 8.0, "delta": 1e-5, "clip_norm": 0.7,
                                                   "accountant": "rdp", "rounds": 4}}
    resumed = build_job(app, {"rounds": 4}, SITES, job_name="j", privacy=privacy,
                        resume={"checkpoint": "/r/g.safetensors", "startRound": 2, "priorReleases": 3})
    assert _cfg(resumed, "j/app_site-2/custom/site_config.json")["sampleDP"]["args"]["prior_releases"] == 3

    def site_app(files):
        return {k.split("/", 2)[2]: v for k, v in files.items() if k.startswith("j/app_site-2/")}

    assert app_digest(site_app(resumed)) == app_digest(site_app(fresh))
    assert "sampleDP" not in _cfg(build_job(app, {}, SITES, job_name="j"), "j/app_site-1/custom/site_config.json")
    with pytest.raises(JobBuildError, match="epsilon is required"):
        privacy_from_api({"differentialPrivacy": {"enabled": True, "level": "Sample"}}, 4)
    with pytest.raises(JobBuildError, match="proxMu > 0 cannot be combined with sample-level"):
        build_job(app, {"rounds": 4, "proxMu": 0.1}, SITES, job_name="j", privacy=privacy)
