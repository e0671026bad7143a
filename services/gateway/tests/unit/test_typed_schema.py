from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from gateway.codecs.typed import UNRECORDED_NULL_NOTE, build_typed_signature
from modelregistry import Manifest
from pydantic import ValidationError
from servekit_protocol import messages
from servekit_protocol.tensors import from_ndarray, to_ndarray


def manifest(**fields: Any) -> Manifest:
    return Manifest.model_validate(
        {
            "name": "m",
            "framework": "sklearn",
            "created": "2026-01-01T00:00:00Z",
            "artifact": "model.joblib",
            **fields,
        }
    )


TABULAR = manifest(
    features=[
        # The pipeline imputes median income: null is a missing value.
        {"name": "median income", "dtype": "float64", "nullable": True},
        {"name": "ocean", "dtype": "string"},
        {"name": "rooms", "dtype": "int8"},
    ],
    signatures={
        "serving_default": {
            "inputs": {
                "median income": {"dtype": "float64", "shape": [-1]},
                "ocean": {"dtype": "string", "shape": [-1]},
                "rooms": {"dtype": "int8", "shape": [-1]},
            },
            "outputs": {"predictions": {"dtype": "float64", "shape": [-1]}},
        },
        "predict_proba": {
            "inputs": {
                "median income": {"dtype": "float64", "shape": [-1]},
                "ocean": {"dtype": "string", "shape": [-1]},
                "rooms": {"dtype": "int8", "shape": [-1]},
            },
            "outputs": {"probabilities": {"dtype": "float64", "shape": [-1, 3]}},
        },
    },
    examples=[{"median income": 3.0, "ocean": "NEAR BAY", "rooms": 4}],
)


def test_tabular_rows_become_typed_columns() -> None:
    typed = build_typed_signature("m", 1, TABULAR, "serving_default")
    assert typed is not None
    body = typed.request_model.model_validate(
        {
            "instances": [
                {"median income": 3.5, "ocean": "INLAND", "rooms": 3},
                {"median income": None, "ocean": "NEAR BAY", "rooms": -2},
            ]
        }
    )
    rows = [row.model_dump(by_alias=True) for row in body.__dict__["instances"]]
    request = typed.predict_request(rows)
    income = to_ndarray(request.inputs["median income"])
    assert income.dtype == np.float64
    assert income[0] == 3.5 and math.isnan(income[1])
    assert to_ndarray(request.inputs["ocean"]).tolist() == [b"INLAND", b"NEAR BAY"]
    rooms = to_ndarray(request.inputs["rooms"])
    assert rooms.dtype == np.int8 and rooms.tolist() == [3, -2]
    schema = typed.request_model.model_json_schema()
    assert schema["examples"] == [{"instances": TABULAR.examples}]


@pytest.mark.parametrize(
    ("row", "location", "error_type"),
    [
        (
            {"median income": "3", "ocean": "x", "rooms": 1},
            "median income",
            "float_type",
        ),
        ({"median income": 3.0, "ocean": 7, "rooms": 1}, "ocean", "string_type"),
        (
            {"median income": 3.0, "ocean": "x", "rooms": 300},
            "rooms",
            "less_than_equal",
        ),
        ({"median income": 3.0, "ocean": "x", "rooms": 1.5}, "rooms", "int_type"),
        ({"median income": 3.0, "ocean": "x"}, "rooms", "missing"),
        (
            {"median income": 3.0, "ocean": "x", "rooms": 1, "typo": 1},
            "typo",
            "extra_forbidden",
        ),
    ],
)
def test_rows_are_validated_field_by_field(
    row: dict[str, Any], location: str, error_type: str
) -> None:
    typed = build_typed_signature("m", 1, TABULAR, "serving_default")
    assert typed is not None
    with pytest.raises(ValidationError) as caught:
        typed.request_model.model_validate({"instances": [row]})
    errors = {(str(error["loc"][-1]), error["type"]) for error in caught.value.errors()}
    assert (location, error_type) in errors


def test_multi_column_outputs_are_lists_per_row() -> None:
    typed = build_typed_signature("m", 2, TABULAR, "predict_proba")
    assert typed is not None
    response = messages.PredictResponse()
    from_ndarray(
        np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]),
        into=response.outputs["probabilities"],
    )
    predictions = typed.predictions(response)
    assert predictions == [[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]
    typed.response_model.model_validate(
        {"model": "m", "version": 2, "predictions": predictions}
    )


def test_signature_inputs_become_fields_without_features() -> None:
    digits = manifest(
        framework="tensorflow",
        artifact="saved_model.pb",
        signatures={
            "serving_default": {
                "inputs": {"pixels": {"dtype": "float32", "shape": [-1, 64]}},
                "outputs": {
                    "probabilities": {"dtype": "float32", "shape": [-1, 10]},
                    "class": {"dtype": "int64", "shape": [-1]},
                },
            }
        },
    )
    typed = build_typed_signature("digits", 1, digits, "serving_default")
    assert typed is not None
    with pytest.raises(ValidationError):
        typed.request_model.model_validate({"instances": [{"pixels": [0.0] * 63}]})
    request = typed.predict_request([{"pixels": [1.0] * 64}, {"pixels": [2.0] * 64}])
    pixels = to_ndarray(request.inputs["pixels"])
    assert pixels.shape == (2, 64) and pixels.dtype == np.float32
    response = messages.PredictResponse()
    from_ndarray(np.zeros((1, 10), np.float32), into=response.outputs["probabilities"])
    from_ndarray(np.array([3]), into=response.outputs["class"])
    assert typed.predictions(response) == [{"probabilities": [0.0] * 10, "class": 3}]


def test_features_stacked_into_one_matrix_input() -> None:
    stacked = manifest(
        features=[
            {"name": "x1", "dtype": "float32"},
            {"name": "x2", "dtype": "float32"},
        ],
        signatures={
            "serving_default": {
                "inputs": {"inputs": {"dtype": "float32", "shape": [-1, 2]}},
                "outputs": {"y": {"dtype": "float32", "shape": [-1]}},
            }
        },
    )
    typed = build_typed_signature("m", 1, stacked, "serving_default")
    assert typed is not None
    request = typed.predict_request([{"x1": 1.0, "x2": 2.0}, {"x1": 3.0, "x2": 4.0}])
    np.testing.assert_array_equal(
        to_ndarray(request.inputs["inputs"]), [[1, 2], [3, 4]]
    )


def test_no_typed_form_for_classify_signatures() -> None:
    classify = manifest(
        signatures={
            "serving_default": {
                "method": "classify",
                "inputs": {"inputs": {"dtype": "string", "shape": [-1]}},
                "outputs": {"scores": {"dtype": "float32", "shape": [-1, 2]}},
            }
        }
    )
    assert build_typed_signature("m", 1, classify, "serving_default") is None


def test_floats_are_finite_within_their_dtype_and_null_only_where_imputed() -> None:
    narrow = manifest(
        features=[
            {"name": "x", "dtype": "float32", "nullable": False},
            {"name": "y", "dtype": "float64", "nullable": False},
        ],
        signatures={
            "serving_default": {
                "inputs": {
                    "x": {"dtype": "float32", "shape": [-1]},
                    "y": {"dtype": "float64", "shape": [-1]},
                },
                "outputs": {"predictions": {"dtype": "float64", "shape": [-1]}},
            }
        },
    )
    typed = build_typed_signature("n", 1, narrow, "serving_default")
    assert typed is not None

    def valid(row: dict[str, Any]) -> bool:
        try:
            typed.request_model.model_validate({"instances": [row]})
        except ValidationError:
            return False
        return True

    assert valid({"x": 3.0e38, "y": 1.0e308})
    assert not valid({"x": 3.5e38, "y": 0.0})
    assert not valid({"x": 0.0, "y": 10**309})
    assert not valid({"x": math.inf, "y": 0.0})
    assert not valid({"x": None, "y": 0.0})
    schema = typed.response_model.model_json_schema()
    item = schema["properties"]["predictions"]["items"]
    assert {"type": "null"} in item["anyOf"]


def test_a_manifest_from_before_nullable_takes_null_in_float_columns() -> None:
    # What servekit wrote before Feature.nullable: no key. Such a version keeps
    # the schema it was published with: null in every float column (as NaN),
    # and the field says why and what a model that does not impute answers.
    written_then = manifest(
        features=[
            {"name": "x", "dtype": "float32"},
            {"name": "n", "dtype": "int64"},
        ],
        signatures={
            "serving_default": {
                "inputs": {
                    "x": {"dtype": "float32", "shape": [-1]},
                    "n": {"dtype": "int64", "shape": [-1]},
                },
                "outputs": {"predictions": {"dtype": "float64", "shape": [-1]}},
            }
        },
    )
    assert [f.nullable for f in written_then.features] == [None, None]
    typed = build_typed_signature("old", 1, written_then, "serving_default")
    assert typed is not None
    body = typed.request_model.model_validate({"instances": [{"x": None, "n": 2}]})
    rows = [row.model_dump(by_alias=True) for row in body.__dict__["instances"]]
    assert math.isnan(to_ndarray(typed.predict_request(rows).inputs["x"])[0])
    with pytest.raises(ValidationError):
        typed.request_model.model_validate({"instances": [{"x": 1.0, "n": None}]})
    properties = typed.row_model.model_json_schema()["properties"]
    assert {"type": "null"} in properties["x"]["anyOf"]
    assert properties["x"]["description"] == f"float32; {UNRECORDED_NULL_NOTE}"
    assert properties["n"]["description"] == "int64"
