"""The fuzz suite's schema conversion (tests/fuzz/manifests.py): the CRDs' structural schemas as JSON
Schema accept every committed sample (the fuzz draws from no narrower a space than the API accepts),
refuse what the structural schema refuses, and a mutation names the field it touched."""

from __future__ import annotations

import jsonschema
import pytest

from tests.fuzz.manifests import Mutation, crds, json_schema, leaves
from tests.sample_data import valid_samples

SCHEMAS = crds()


@pytest.mark.parametrize(("name", "obj"), valid_samples(), ids=[n for n, _ in valid_samples()])
def test_every_sample_fits_its_converted_schema(name, obj):
    jsonschema.validate(obj["spec"], json_schema(SCHEMAS[obj["kind"]]["properties"]["spec"]))


def test_the_converted_schema_refuses_unknown_fields_and_wrong_types():
    spec = json_schema(SCHEMAS["FederatedJob"]["properties"]["spec"])
    good = next(o for _, o in valid_samples() if o["kind"] == "FederatedJob")["spec"]
    for bad in ({**good, "unknownField": 1}, {**good, "rounds": "five"}, {**good, "rounds": 10001}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, spec)


def test_a_mutation_names_its_field_as_the_api_server_does():
    m = Mutation("type", ("datasets", 0, "org"))
    assert (m.field, m.leaf) == ("spec.datasets[0].org", "org")


def test_leaves_reach_every_scalar_through_the_schema():
    obj = next(o for _, o in valid_samples() if o["kind"] == "ComputeSpec")
    paths = {p for p, _ in leaves(obj["spec"], SCHEMAS["ComputeSpec"]["properties"]["spec"])}
    assert {("model", "id"), ("datasets", 1, "org"), ("client", "gpu"), ("active",)} <= paths
