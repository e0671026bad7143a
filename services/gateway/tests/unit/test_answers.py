"""Backend answers kept as their bytes: the model spec read from the top-level
fields must be the one a full parse gives, and anything odd is left to the
full parse."""

from __future__ import annotations

import numpy as np
import pytest
from gateway.clients.answers import (
    MAX_TOP_LEVEL_FIELDS,
    ReceivedAnswer,
    read_answer,
    spec_field_number,
)
from servekit_protocol import messages
from servekit_protocol.tensors import from_ndarray


def _predict_answer() -> messages.PredictResponse:
    response = messages.PredictResponse()
    response.model_spec.name = "wide"
    response.model_spec.version.value = 3
    response.model_spec.signature_name = "serving_default"
    rng = np.random.default_rng(0)
    response.outputs["scores"].CopyFrom(from_ndarray(rng.normal(size=(100, 3))))
    response.outputs["ids"].CopyFrom(from_ndarray(rng.integers(0, 1 << 40, size=100)))
    response.outputs["labels"].CopyFrom(
        from_ndarray(np.array([b"class-%d" % i for i in range(100)], dtype=object))
    )
    return response


@pytest.mark.parametrize(
    "response_type",
    [
        messages.PredictResponse,
        messages.ClassificationResponse,
        messages.RegressionResponse,
    ],
)
def test_the_spec_field_is_found_by_name(response_type: type) -> None:
    assert spec_field_number(response_type) == 2


def test_a_multi_inference_answer_has_no_spec_field() -> None:
    assert spec_field_number(messages.MultiInferenceResponse) is None
    answer = messages.MultiInferenceResponse()
    result = answer.results.add()
    result.model_spec.name = "wide"
    data = answer.SerializeToString()
    kept = read_answer(data, None)
    assert kept is not None
    assert kept.data is data
    assert kept.model_spec == messages.ModelSpec()


def test_a_predict_answer_is_kept_with_its_spec() -> None:
    response = _predict_answer()
    data = response.SerializeToString()
    kept = read_answer(data, 2)
    assert isinstance(kept, ReceivedAnswer)
    assert isinstance(kept, messages.Serialized)
    assert kept.SerializeToString() is data
    assert kept.model_spec == response.model_spec


def test_a_classification_answer_is_kept_with_its_spec() -> None:
    response = messages.ClassificationResponse()
    response.model_spec.name = "tabular"
    response.model_spec.version.value = 7
    for index in range(50):
        response.result.classifications.add().classes.add(label=f"c{index}", score=0.5)
    kept = read_answer(response.SerializeToString(), 2)
    assert kept is not None
    assert kept.model_spec == response.model_spec


def test_repeated_specs_merge_as_the_parse_merges_them() -> None:
    response = _predict_answer()
    later = messages.ModelSpec(version_label="canary")
    later.ClearField("version")
    data = (
        response.SerializeToString()
        + b"\x12"
        + bytes((later.ByteSize(),))
        + later.SerializeToString()
    )
    kept = read_answer(data, 2)
    assert kept is not None
    assert kept.model_spec == messages.PredictResponse.FromString(data).model_spec


def test_an_answer_without_a_spec_has_an_empty_one() -> None:
    response = _predict_answer()
    response.ClearField("model_spec")
    kept = read_answer(response.SerializeToString(), 2)
    assert kept is not None
    assert not kept.model_spec.HasField("version")
    assert kept.model_spec.name == ""


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_predict_answer().SerializeToString()[:-3], id="truncated"),
        pytest.param(b"\x0a\xff\xff\xff\xff\x0f" + bytes(64), id="length past the end"),
        pytest.param(b"\x02\x00", id="field number 0"),
        pytest.param(b"\x0b\x0c", id="a group"),
        pytest.param(b"\x10\x01", id="the spec as a varint"),
        pytest.param(b"\x12\x02\x0a\xff", id="a malformed spec"),
        pytest.param(b"\x18" + b"\xff" * 11, id="an 11-byte varint"),
        pytest.param(b"\x18\x01" * (MAX_TOP_LEVEL_FIELDS + 1), id="too many fields"),
    ],
)
def test_anything_odd_is_left_to_the_full_parse(data: bytes) -> None:
    assert read_answer(data, 2) is None


def test_fixed_width_unknown_fields_are_skipped() -> None:
    spec = messages.ModelSpec(name="m").SerializeToString()
    # Field 9 as 64 bits, field 10 as 32 bits, then the spec.
    data = (
        b"\x49" + bytes(8) + b"\x55" + bytes(4) + b"\x12" + bytes((len(spec),)) + spec
    )
    kept = read_answer(data, 2)
    assert kept is not None
    assert kept.model_spec.name == "m"
