"""Every sample parses with the models; every invalid sample fails with the message a user should see."""

import pytest

from flare_operator.api import KINDS, InvalidObject, parse_object
from tests.sample_data import expected_error, invalid_samples, valid_samples


def test_one_valid_sample_per_kind():
    kinds = sorted(obj["kind"] for _, obj in valid_samples())
    assert kinds == sorted(k.kind for k in KINDS)


@pytest.mark.parametrize(("name", "obj"), valid_samples(), ids=[n for n, _ in valid_samples()])
def test_valid_sample_parses_and_round_trips(name, obj):
    parsed = parse_object(obj)
    wire = parsed.spec.to_wire()
    # What the user wrote survives parsing unchanged (defaults may be added around it).
    assert _contains(wire, obj["spec"]), f"{name}: {wire} lost fields of {obj['spec']}"


@pytest.mark.parametrize(("name", "obj"), invalid_samples(), ids=[n for n, _ in invalid_samples()])
def test_invalid_sample_is_refused_with_its_message(name, obj):
    with pytest.raises(InvalidObject) as err:
        parse_object(obj)
    assert expected_error(obj, "model") in str(err.value)


def test_unknown_kind_and_api_version_are_named():
    with pytest.raises(InvalidObject, match="apiVersion must be flareop.io/v1alpha1"):
        parse_object({"apiVersion": "v1", "kind": "ComputeSpec"})
    with pytest.raises(InvalidObject, match="unknown kind 'Federation'"):
        parse_object({"apiVersion": "flareop.io/v1alpha1", "kind": "Federation"})


def _contains(actual, expected) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and _contains(actual[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(map(_contains, actual, expected))
    if isinstance(expected, int | float) and not isinstance(expected, bool) and isinstance(actual, str):
        return str(expected) == actual  # quantities are normalised to strings
    return actual == expected
