"""The CRD YAML is generated from the models: committed files match, and the schemas are structural."""

import pytest
import yaml

from flare_operator.api import KINDS, crdgen
from tests.sample_data import REPO, crd_files


def test_committed_crds_and_api_doc_match_the_models():
    stale = [str(p.relative_to(REPO)) for p, text in crdgen.generated_files(REPO).items()
             if not p.exists() or p.read_text() != text]
    assert not stale, f"run `make crds`: {stale} drifted from operator/flare_operator/api/"


def test_no_stray_crd_files():
    assert {p.name for p in crd_files()} == {f"{k.crd_name}.yaml" for k in KINDS}


def _walk(node, path="$"):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}[*]")


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_schema_is_structural_and_documented(kind):
    crd = yaml.safe_load(crdgen.render_crd(kind))
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert "flare" in crd["spec"]["names"]["categories"]
    assert crd["spec"]["names"]["shortNames"]
    root = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        assert "$ref" not in node and "anyOf" not in node or node.get("x-kubernetes-int-or-string"), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if path.count(".") >= 2 and not path.endswith(("[]", "[*]")):
            assert node.get("description"), f"{path} has no description"
    status = root["properties"]["status"]["properties"]
    assert "observedGeneration" in status
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) >= {"type", "status", "reason", "lastTransitionTime"}


def test_lifecycle_kinds_show_phase_and_ready_columns():
    for kind in KINDS:
        names = [c["name"] for c in kind.columns]
        assert names[-1] == "Age"
        if kind.kind in ("ComputeSpec", "FederatedJob"):
            assert {"Phase", "Ready"} <= set(names)
    job_columns = [c["name"] for c in next(k for k in KINDS if k.kind == "FederatedJob").columns]
    assert "Round" in job_columns


def test_generator_refuses_undocumented_fields():
    from pydantic import Field

    from flare_operator.api.base import ApiModel

    class Undocumented(ApiModel):
        name: str = Field(max_length=10)

    with pytest.raises(crdgen.SchemaError, match="needs a description"):
        crdgen.openapi_schema(Undocumented, ".spec", "x")
