"""TF Serving's REST JSON dialect: requests in, responses out."""

import math
from typing import Any

import numpy as np
import orjson
import pytest
from servekit_protocol import json_codec, messages
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.json_codec import RequestFormat, TensorSpec

ONE = {"x": TensorSpec("float32", (-1,))}
TWO = {"a": TensorSpec("float32"), "s_bytes": TensorSpec("string")}


def _parse(body: bytes, specs: dict[str, TensorSpec] = ONE) -> json_codec.PredictBody:
    return json_codec.parse_predict_request(body, specs)


def _error(body: bytes, specs: dict[str, TensorSpec] = ONE) -> str:
    with pytest.raises(InvalidArgument) as caught:
        json_codec.parse_predict_request(body, specs)
    return caught.value.message


def test_row_format_single_input() -> None:
    parsed = _parse(b'{"instances": [1, 2.5, 3]}')
    assert parsed.format is RequestFormat.ROW
    assert parsed.signature_name == "serving_default"
    assert parsed.inputs["x"].dtype == np.float32
    assert parsed.inputs["x"].tolist() == [1.0, 2.5, 3.0]


def test_row_format_named_inputs_are_batched() -> None:
    parsed = _parse(
        b'{"signature_name": "s", "instances": ['
        b'{"a": [1, 2], "s_bytes": {"b64": "aGk="}}, {"a": [3, 4], "s_bytes": "yo"}]}',
        TWO,
    )
    assert parsed.signature_name == "s"
    assert parsed.inputs["a"].shape == (2, 2)
    assert parsed.inputs["s_bytes"].tolist() == [b"hi", b"yo"]


def test_columnar_format() -> None:
    parsed = _parse(b'{"inputs": {"a": [1], "s_bytes": [["x"], ["y"]]}}', TWO)
    assert parsed.format is RequestFormat.COLUMNAR
    assert parsed.inputs["a"].shape == (1,)
    assert parsed.inputs["s_bytes"].shape == (2, 1)
    single = _parse(b'{"inputs": [1.5, 2]}')
    assert single.inputs["x"].tolist() == [1.5, 2.0]


def test_columnar_extra_keys_are_ignored_like_tf_serving() -> None:
    parsed = _parse(b'{"inputs": {"x": [1], "unused": "z"}}')
    assert list(parsed.inputs) == ["x"]


def test_nan_and_infinity_tokens_are_accepted() -> None:
    values = _parse(b'{"instances": [NaN, Infinity, -Infinity]}').inputs["x"]
    assert math.isnan(values[0])
    assert values[1] == math.inf
    assert values[2] == -math.inf


def test_specs_can_come_from_a_function_of_the_signature_name() -> None:
    asked: list[str] = []

    def specs(name: str) -> dict[str, TensorSpec]:
        asked.append(name)
        return {"v": TensorSpec("int64")}

    parsed = json_codec.parse_predict_request(b'{"instances": [7]}', specs)
    assert asked == ["serving_default"]
    assert parsed.inputs["v"].dtype == np.int64


@pytest.mark.parametrize(
    ("dtype", "body", "expected"),
    [
        ("bool", b"[true, false]", [True, False]),
        ("int8", b"[-128, 127]", [-128, 127]),
        ("uint64", b"[18446744073709551615]", [2**64 - 1]),
        ("float64", b"[0.1, 1]", [0.1, 1.0]),
        ("float16", b"[0.5]", [0.5]),
        ("string", b'["a", {"b64": "/w=="}]', [b"a", b"\xff"]),
    ],
)
def test_dtypes(dtype: str, body: bytes, expected: list[Any]) -> None:
    parsed = _parse(b'{"instances": ' + body + b"}", {"x": TensorSpec(dtype)})
    assert parsed.inputs["x"].tolist() == expected


@pytest.mark.parametrize(
    ("body", "specs", "message"),
    [
        (b"", ONE, "JSON Parse error: The document is empty"),
        (b'{"instances": [1,', ONE, "JSON Parse error: "),
        (b"[1]", ONE, "JSON Value: [1] Is not object"),
        (b"{}", ONE, "Missing 'inputs' or 'instances' key"),
        (
            b'{"inputs": [1], "instances": [1]}',
            ONE,
            "expecting only one of 'inputs' or 'instances' keys to exist",
        ),
        (
            b'{"signature_name": 1, "instances": [1]}',
            ONE,
            "'signature_name' key must be",
        ),
        (b'{"instances": []}', ONE, "No values in 'instances' array"),
        (b'{"instances": 1}', ONE, "Expecting 'instances' to be an list/array"),
        (
            b'{"instances": [{"a": 1, "x": 2}]}',
            TWO,
            "Failed to process element: 0 key: x of 'instances' list. Error: "
            "Invalid argument: JSON object: does not have named input: x",
        ),
        (
            b'{"instances": [{"a": 1}]}',
            TWO,
            "Failed to process element: 0 of 'instances' list. JSON object: "
            '{"a":1} keys must be equal to: a,s_bytes',
        ),
        (
            b'{"instances": [1, 2]}',
            TWO,
            "instances is a plain list, but expecting list of objects",
        ),
        (
            b'{"instances": [{"a": [1, 2], "s_bytes": "q"}, {"a": [1], "s_bytes": "r"}]}',
            TWO,
            "Failed to process element: 1 key: a of 'instances' list. Error: "
            "Invalid argument: Expecting tensor size: 2 but got: 1",
        ),
        (
            b'{"instances": [1, "a"]}',
            ONE,
            "Failed to process element: 1 of 'instances' list. Error: Invalid argument: "
            'JSON Value: "a" Type: String is not of expected type: float32',
        ),
        (b'{"instances": [1, null]}', ONE, "JSON Value: null Type: Null"),
        (
            b'{"instances": [1, {"a": 1}]}',
            ONE,
            "Expecting value/list but got object at item 1 of input list",
        ),
        (
            b'{"instances": ["a", {"a": 1}]}',
            {"x": TensorSpec("string")},
            "Expecting value/list but got object at item 1 of input list",
        ),
        (
            b'{"instances": [{"a": 1, "s_bytes": "q"}, [1]]}',
            TWO,
            "Expecting object but got list at item 1 of input list",
        ),
        (
            b'{"instances": [1.5]}',
            {"x": TensorSpec("int32")},
            "JSON Value: 1.5 Type: Number",
        ),
        (b'{"instances": [300]}', {"x": TensorSpec("int8")}, "JSON Value: 300"),
        (
            b'{"instances": [1]}',
            {"x": TensorSpec("bool")},
            "not of expected type: bool",
        ),
        (b'{"instances": [true]}', ONE, "JSON Value: true Type: True"),
        (
            b'{"instances": [{"b64": "@@"}]}',
            {"x": TensorSpec("string")},
            "base64 decode",
        ),
        (
            b'{"instances": [[1, [2]]]}',
            {"x": TensorSpec("float32")},
            "unexpected level",
        ),
        (b'{"instances": [[1, 2]]}', ONE, "Input: x has shape [1,2]"),
        (
            b'{"inputs": {"a": [1]}}',
            TWO,
            "Missing named input: s_bytes in 'inputs' object.",
        ),
        (
            b'{"inputs": [1]}',
            TWO,
            "inputs is a plain value/list, but expecting an object",
        ),
        (
            b'{"instances": [1]}',
            {},
            "Failed to get input map for signature: serving_default",
        ),
    ],
)
def test_errors_use_tf_serving_wording(
    body: bytes, specs: dict[str, TensorSpec], message: str
) -> None:
    assert message in _error(body, specs)


def test_errors_are_bad_requests() -> None:
    with pytest.raises(InvalidArgument) as caught:
        _parse(b"{}")
    assert caught.value.status == 400
    assert isinstance(caught.value, ValueError)


def test_large_row_batches_convert_in_one_go() -> None:
    rows = [[float(i), float(i + 1), float(i + 2)] for i in range(20000)]
    body = orjson.dumps({"instances": rows})
    parsed = _parse(body, {"x": TensorSpec("float32", (-1, 3))})
    assert parsed.inputs["x"].shape == (20000, 3)
    assert parsed.inputs["x"][-1].tolist() == [19999.0, 20000.0, 20001.0]


# ---- responses --------------------------------------------------------------------------


def _loads(body: bytes) -> Any:
    return orjson.loads(body)


def test_row_response_single_output() -> None:
    body = json_codec.format_predict_response(
        {"y": np.array([[1.5], [0.1]], np.float32)}, RequestFormat.ROW
    )
    # float32 values print at their own precision, not as widened doubles.
    assert body == b'{"predictions":[[1.5],[0.1]]}'


def test_row_response_several_outputs_are_objects() -> None:
    body = json_codec.format_predict_response(
        {
            "y": np.array([1, 2], np.int64),
            "label_bytes": np.array([b"a", b"b"], dtype=object),
            "text": np.array([b"\xff", "ok"], dtype=object),
        },
        RequestFormat.ROW,
    )
    assert _loads(body) == {
        "predictions": [
            {"y": 1, "label_bytes": {"b64": "YQ=="}, "text": {"b64": "/w=="}},
            {"y": 2, "label_bytes": {"b64": "Yg=="}, "text": "ok"},
        ]
    }


def test_columnar_response() -> None:
    single = json_codec.format_predict_response(
        {"y": np.array([[1, 2]], np.int32)}, RequestFormat.COLUMNAR
    )
    assert single == b'{"outputs":[[1,2]]}'
    several = json_codec.format_predict_response(
        {"y": np.array(3.0), "ok": np.array([True])}, RequestFormat.COLUMNAR
    )
    assert _loads(several) == {"outputs": {"y": 3.0, "ok": [True]}}


def test_non_finite_floats_are_written_as_tokens() -> None:
    body = json_codec.format_predict_response(
        {"y": np.array([np.nan, np.inf, -np.inf, 0.5], np.float32)},
        RequestFormat.COLUMNAR,
    )
    assert body == b'{"outputs":[NaN,Infinity,-Infinity,0.5]}'
    assert json_codec.loads(body)["outputs"][3] == 0.5


def test_half_precision_and_non_contiguous_outputs() -> None:
    import ml_dtypes

    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    body = json_codec.format_predict_response(
        {
            "h": np.array([0.5, 1.0], np.float16),
            "bf": np.array([2.0, 3.0], ml_dtypes.bfloat16),
            "col": matrix[:, 1],
        },
        RequestFormat.COLUMNAR,
    )
    assert _loads(body) == {
        "outputs": {"h": [0.5, 1.0], "bf": [2.0, 3.0], "col": [1.0, 4.0]}
    }


def test_response_errors() -> None:
    with pytest.raises(InvalidArgument, match="empty tensor map"):
        json_codec.format_predict_response({}, RequestFormat.ROW)
    with pytest.raises(InvalidArgument, match="has no shape information"):
        json_codec.format_predict_response({"y": np.array(1.0)}, RequestFormat.ROW)
    with pytest.raises(
        InvalidArgument, match="inconsistent batch size: 3 expecting: 2"
    ):
        json_codec.format_predict_response(
            {"a": np.zeros(2), "b": np.zeros(3)}, RequestFormat.ROW
        )
    with pytest.raises(InvalidArgument, match="DT_COMPLEX64"):
        json_codec.format_predict_response(
            {"c": np.array([1j], np.complex64)}, RequestFormat.COLUMNAR
        )


# ---- classify / regress -------------------------------------------------------------------


def test_examples_request_with_context() -> None:
    parsed = json_codec.parse_examples_request(
        b'{"signature_name": "classify_x_to_y", "context": {"c": true},'
        b' "examples": [{"x": 1.5, "t": "a", "n": [1, 2], "b": {"b64": "aGk="}}, {"x": 2.0}]}'
    )
    assert parsed.signature_name == "classify_x_to_y"
    with_context = parsed.input.example_list_with_context
    assert list(with_context.context.features.feature["c"].int64_list.value) == [1]
    first = with_context.examples[0].features.feature
    assert list(first["x"].float_list.value) == [1.5]
    assert list(first["t"].bytes_list.value) == [b"a"]
    assert list(first["n"].int64_list.value) == [1, 2]
    assert list(first["b"].bytes_list.value) == [b"hi"]
    assert len(with_context.examples) == 2


def test_examples_request_without_context() -> None:
    parsed = json_codec.parse_regress_request(b'{"examples": [{"x": [1.0, 2.0]}]}')
    assert parsed.input.WhichOneof("kind") == "example_list"
    assert parsed.signature_name == "serving_default"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"examples": [{"x": [1, 1.5]}]}', "Unexpected element type in feature: x"),
        (
            b'{"examples": [{"x": null}]}',
            "Feature: x has element with unexpected JSON type: Null",
        ),
        (b'{"examples": [{"x": [[1]]}]}', "unexpected JSON type: Array"),
        (b'{"examples": [{"x": 18446744073709551615}]}', "has uint64_t element"),
        (b'{"examples": []}', "'examples' value is an empty array"),
        (b'{"examples": {}}', "Expecting 'examples' value to be an list/array"),
        (b"{}", "key 'examples' is expected and was not found"),
        (b'{"examples": [1]}', "Example must be JSON object but got JSON Number"),
    ],
)
def test_examples_request_errors(body: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        json_codec.parse_examples_request(body)
    assert message in caught.value.message


def test_classify_and_regress_responses() -> None:
    result = messages.ClassificationResult()
    row = result.classifications.add()
    row.classes.add(label="cat", score=0.1)
    row.classes.add(label="", score=0.9)
    assert json_codec.format_classify_response(result) == (
        b'{"results":[[["cat",0.1],["",0.9]]]}'
    )
    regression = messages.RegressionResult()
    regression.regressions.add(value=0.2)
    regression.regressions.add(value=-3.0)
    assert json_codec.format_regress_response(regression) == b'{"results":[0.2,-3.0]}'
    with pytest.raises(InvalidArgument, match="empty ClassificationResults"):
        json_codec.format_classify_response(messages.ClassificationResult())
    with pytest.raises(InvalidArgument, match="empty RegressionResults"):
        json_codec.format_regress_response(messages.RegressionResult())


def test_serialized_results_are_written_as_the_messages() -> None:
    result = messages.ClassificationResult()
    row = result.classifications.add()
    row.classes.add(label="\u00e9t\u00e9", score=1 / 3)
    row.classes.add(score=float("nan"))
    result.classifications.add()  # no classes: an empty row
    serialized = result.SerializeToString()
    assert json_codec.format_serialized_classify_response(
        serialized
    ) == json_codec.format_classify_response(result)
    regression = messages.RegressionResult()
    for value in (0.1, float("inf"), -2.5):
        regression.regressions.add(value=value)
    assert json_codec.format_serialized_regress_response(
        regression.SerializeToString()
    ) == json_codec.format_regress_response(regression)
    with pytest.raises(InvalidArgument, match="empty ClassificationResults"):
        json_codec.format_serialized_classify_response(b"")
    with pytest.raises(InvalidArgument, match="empty RegressionResults"):
        json_codec.format_serialized_regress_response(b"")


def test_classification_pairs_are_counted_up_to_enough() -> None:
    result = messages.ClassificationResult()
    for classes in (3, 0, 2):
        row = result.classifications.add()
        for index in range(classes):
            row.classes.add(label=str(index), score=0.5)
    assert json_codec.classification_pairs(result, 100) == 6  # the empty row: one
    assert json_codec.classification_pairs(result, 4) == 4  # stopped at the 2nd row
    assert json_codec.classification_pairs(messages.ClassificationResult(), 1) == 0


def test_status_response_looks_like_tf_servings() -> None:
    response = messages.GetModelStatusResponse()
    response.model_version_status.add(
        version=123, state=messages.ModelVersionStatus.AVAILABLE
    )
    assert _loads(json_codec.format_status_response(response)) == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def test_error_body() -> None:
    assert _loads(json_codec.error_body('bad "x"')) == {"error": 'bad "x"'}


def test_specs_from_tensor_infos() -> None:
    info = messages.TensorInfo(name="x:0", dtype=messages.DT_DOUBLE)
    info.tensor_shape.dim.add(size=-1)
    info.tensor_shape.dim.add(size=2)
    unknown = messages.TensorInfo(name="s:0", dtype=messages.DT_STRING)
    unknown.tensor_shape.unknown_rank = True
    specs = json_codec.specs_from_tensor_infos({"x": info, "s": unknown})
    assert specs == {
        "x": TensorSpec("float64", (-1, 2)),
        "s": TensorSpec("string", None),
    }
