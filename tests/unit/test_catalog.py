"""The app catalog: listing, app.yaml validation, parameter validation with JSON paths, defaults."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from flare_operator.catalog import (
    CatalogError,
    ParameterError,
    catalog_root,
    list_apps,
    load_app,
    load_app_dir,
    validate_aggregation,
    validate_params,
    validate_privacy,
)
from flare_operator.datagen import LOCATION_CLASSES

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def app():
    return load_app("esm2-finetune")


def test_lists_esm2_finetune_from_repo_catalog(monkeypatch):
    monkeypatch.delenv("FLARE_APPS_DIR", raising=False)
    assert catalog_root() == REPO / "flare_apps"
    apps = {a.id: a for a in list_apps()}
    assert "esm2-finetune" in apps
    assert "_shared" not in apps
    a = apps["esm2-finetune"]
    assert a.version == "1.0.0"
    assert a.summary()["parameters"]["$schema"].endswith("2020-12/schema")
    assert a.resources["client"]["gpu"] == 0


def test_labels_match_the_data_generator(app):
    assert tuple(app.labels) == LOCATION_CLASSES


def test_defaults_applied_recursively(app):
    p = validate_params(app, {"mode": "lora", "lora": {"r": 4}})
    assert p["preset"] == "tiny" and p["rounds"] == 3 and p["batchSize"] == 16
    assert p["lora"] == {"r": 4, "alpha": 16, "dropout": 0.0, "targetModules": ["query", "key", "value"]}
    assert app.defaults()["mode"] == "full"


@pytest.mark.parametrize(
    "params, path, fragment",
    [
        ({"lora": {"r": 0}}, "$.lora.r", "less than the minimum of 1"),
        ({"batchSize": "16"}, "$.batchSize", "is not of type 'integer'"),
        ({"mode": "half"}, "$.mode", "is not one of"),
        ({"learningRate": 0}, "$.learningRate", "less than or equal to the minimum"),
        ({"bogus": 1}, "$", "'bogus' was unexpected"),
        ({"preset": "35M"}, "$.pretrainedPath", "presets other than tiny need pretrainedPath"),
        ({"lora": {"targetModules": ["attn"]}}, "$.lora.targetModules[0]", "is not one of"),
    ],
)
def test_parameter_errors_name_the_json_path(app, params, path, fragment):
    with pytest.raises(ParameterError) as ei:
        validate_params(app, params)
    errs = ei.value.errors
    assert any(e.path == path and fragment in e.message for e in errs), [str(e) for e in errs]
    assert path in str(ei.value)


def test_multiple_errors_reported_together(app):
    with pytest.raises(ParameterError) as ei:
        validate_params(app, {"rounds": 0, "seed": -1})
    assert {e.path for e in ei.value.errors} == {"$.rounds", "$.seed"}


def test_real_preset_ok_with_path_or_random_init(app):
    assert validate_params(app, {"preset": "35M", "pretrainedPath": "/weights/esm2_35M"})["preset"] == "35M"
    assert validate_params(app, {"preset": "8M", "allowRandomInit": True})["allowRandomInit"] is True


def test_params_must_be_a_mapping(app):
    with pytest.raises(ParameterError, match=r"\$: must be an object"):
        validate_params(app, ["mode"])


def _copy_app(tmp_path: Path, edit) -> Path:
    root = tmp_path / "apps"
    dest = root / "esm2-finetune"
    shutil.copytree(REPO / "flare_apps" / "esm2-finetune", dest, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((dest / "app.yaml").read_text())
    edit(raw)
    (dest / "app.yaml").write_text(yaml.safe_dump(raw))
    return dest


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda r: r.update(version="1.0"), "$.version"),
        (lambda r: r.pop("description"), "'description' is a required property"),
        (lambda r: r.update(id="other-app"), "does not match the folder name"),
        (lambda r: r["parameters"].update(type="array"), "type: object"),
        (lambda r: r["parameters"]["properties"]["rounds"].update(minimum="one"), "not a valid JSON Schema"),
        (lambda r: r["parameters"]["properties"]["rounds"].update(default=0), "defaults do not validate"),
        (lambda r: r["resources"]["client"].update(memory="lots"), "$.resources.client.memory"),
        (lambda r: r["nvflare"].pop("clientScript"), "'clientScript' is a required property"),
    ],
)
def test_bad_app_yaml_is_rejected_clearly(tmp_path, edit, fragment):
    d = _copy_app(tmp_path, edit)
    with pytest.raises(CatalogError) as ei:
        load_app_dir(d)
    assert fragment in str(ei.value) and "app.yaml" in str(ei.value)


def test_env_var_overrides_catalog_root(tmp_path, monkeypatch):
    d = _copy_app(tmp_path, lambda r: r.update(version="2.0.0-rc.1"))
    (d.parent / "not-an-app").mkdir()
    monkeypatch.setenv("FLARE_APPS_DIR", str(d.parent))
    assert catalog_root() == d.parent
    assert [a.version for a in list_apps()] == ["2.0.0-rc.1"]
    assert load_app("esm2-finetune", version="2.0.0-rc.1").path == d


def test_unknown_app_and_version(tmp_path, monkeypatch):
    monkeypatch.delenv("FLARE_APPS_DIR", raising=False)
    with pytest.raises(CatalogError, match="unknown app 'nope'.*esm2-finetune"):
        load_app("nope")
    with pytest.raises(CatalogError, match="not 9.9.9"):
        load_app("esm2-finetune", version="9.9.9")
    with pytest.raises(CatalogError, match="invalid app id"):
        load_app("../etc")
    monkeypatch.setenv("FLARE_APPS_DIR", str(tmp_path / "missing"))
    with pytest.raises(CatalogError, match="not a directory"):
        list_apps()


def test_broken_yaml(tmp_path):
    d = tmp_path / "x-app"
    d.mkdir()
    (d / "app.yaml").write_text("id: [unclosed\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_app_dir(d)


def test_privacy_and_aggregation_settings():
    p = validate_privacy(
        {
            "differentialPrivacy": {"enabled": True},
            "filters": [{"type": "ExcludeVars", "args": {"exclude_vars": "classifier"}}],
        }
    )
    assert p["differentialPrivacy"] == {
        "enabled": True,
        "level": "client",
        "clipNorm": 1.0,
        "noiseMultiplier": 1.0,
        "delta": 1e-5,
        "accountant": "rdp",
    }
    assert validate_privacy(None) == {
        "differentialPrivacy": {
            "enabled": False,
            "level": "client",
            "clipNorm": 1.0,
            "noiseMultiplier": 1.0,
            "delta": 1e-5,
            "accountant": "rdp",
        },
        "filters": [],
    }
    with pytest.raises(ParameterError, match=r"\$.differentialPrivacy.level"):
        validate_privacy({"differentialPrivacy": {"level": "record"}})
    with pytest.raises(ParameterError, match=r"\$.differentialPrivacy.delta"):
        validate_privacy({"differentialPrivacy": {"delta": 1}})
    with pytest.raises(ParameterError, match=r"\$.filters\[0\].type"):
        validate_privacy({"filters": [{"type": "GaussianNoise"}]})
    with pytest.raises(ParameterError, match=r"\$.filters\[0\].args"):
        validate_privacy({"filters": [{"type": "PercentilePrivacy", "args": {"percentile": 500}}]})
    assert validate_aggregation({}) == {"weighting": "sample", "maxShare": 0.5}
    with pytest.raises(ParameterError, match=r"\$.maxShare: 0.3 is infeasible for 2 sites"):
        validate_aggregation({"weighting": "capped", "maxShare": 0.3}, n_sites=2)
    with pytest.raises(ParameterError, match=r"\$.weighting"):
        validate_aggregation({"weighting": "median"})
