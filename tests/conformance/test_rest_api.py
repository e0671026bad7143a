"""TF Serving's REST API, as its documentation (``g3doc/api_rest.md``) and its own
model-server tests describe it, checked against a running servekit-model-server. Its error answers:
test_rest_api_errors.py."""

from __future__ import annotations

import base64
import gzip
import json
import re
import struct
from typing import Any

import httpx
import pytest

from tests.conformance.conftest import (
    TWO_VERSIONS,
    error_of,
    expected_metadata,
    without_empty_defaults,
)
from tests.support.models import linear_target
from tests.support.modelserver import METRICS_PATH, ModelServer

pytestmark = pytest.mark.integration

testdata = pytest.mark.usefixtures("needs_testdata")


# ---- model status ----------------------------------------------------------------


@testdata
def test_status_of_a_model_is_its_version_list(rest: httpx.Client) -> None:
    response = rest.get("/v1/models/half_plus_two")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


@testdata
def test_status_of_one_version(rest: httpx.Client) -> None:
    response = rest.get(f"/v1/models/{TWO_VERSIONS}/versions/124")
    assert response.status_code == 200
    (only,) = response.json()["model_version_status"]
    assert only["version"] == "124"
    assert only["state"] == "AVAILABLE"


@testdata
def test_status_lists_every_served_version(rest: httpx.Client) -> None:
    statuses = rest.get(f"/v1/models/{TWO_VERSIONS}").json()["model_version_status"]
    assert sorted(s["version"] for s in statuses) == ["123", "124"]
    assert {s["state"] for s in statuses} == {"AVAILABLE"}


@testdata
@pytest.mark.parametrize(("label", "version"), [("stable", "123"), ("canary", "124")])
def test_status_by_label_answers_the_labelled_version(
    rest: httpx.Client, label: str, version: str
) -> None:
    # TF Serving's GetModelStatusImpl ignores the label and lists every
    # version; servekit answers the version the label points at.
    response = rest.get(f"/v1/models/{TWO_VERSIONS}/labels/{label}")
    assert response.status_code == 200
    (only,) = response.json()["model_version_status"]
    assert only["version"] == version
    assert only["state"] == "AVAILABLE"


def test_status_by_unknown_label_is_400(rest: httpx.Client) -> None:
    # The error TF Serving gives a request on a label it does not know.
    response = rest.get("/v1/models/linear/labels/nope")
    assert response.status_code == 400
    assert error_of(response) == "Unrecognized servable version label: nope"


def test_status_of_unknown_model_is_404(rest: httpx.Client) -> None:
    response = rest.get("/v1/models/no_such_model")
    assert response.status_code == 404
    assert error_of(response) == "Could not find any versions of model no_such_model"


def test_status_of_unknown_version_is_404(rest: httpx.Client) -> None:
    response = rest.get("/v1/models/linear/versions/999")
    assert response.status_code == 404
    assert error_of(response) == "Could not find version 999 of model linear"


def test_status_without_a_model_name_is_400(rest: httpx.Client) -> None:
    response = rest.get("/v1/models")
    assert response.status_code == 400
    assert error_of(response) == "Missing model name in request."


# ---- metadata ------------------------------------------------------------------------


@testdata
@pytest.mark.parametrize(
    ("model", "expected_file"),
    [
        ("half_plus_two", "half_plus_two_model_metadata.json"),
        (TWO_VERSIONS, "saved_model_half_plus_two_2_versions_metadata.json"),
    ],
)
def test_metadata_matches_tf_serving(
    rest: httpx.Client, model: str, expected_file: str
) -> None:
    answer = metadata_of(rest, model)
    expected = expected_metadata(expected_file)
    assert without_empty_defaults(answer) == without_empty_defaults(
        expected["metadata"]["signature_def"]["signature_def"]
    )


@testdata
def test_metadata_of_a_native_tf2_saved_model(rest: httpx.Client) -> None:
    answer = metadata_of(rest, "half_plus_two_tf2")
    # TF Serving's expected answer was exported from a sibling model without
    # signature defaults; this SavedModel has one for serving_default's x.
    default_x = answer["serving_default"].pop("defaults")["x"]
    assert default_x["dtype"] == "DT_FLOAT"
    assert default_x["tensor_shape"]["dim"] == [{"size": "1", "name": ""}]
    decoded = default_x.get("float_val") or list(
        struct.unpack("<f", base64.b64decode(default_x["tensor_content"]))
    )
    assert decoded == [0.0]
    expected = expected_metadata(
        "saved_model_half_plus_two_tf2_2_versions_metadata.json"
    )
    assert without_empty_defaults(answer) == without_empty_defaults(
        expected["metadata"]["signature_def"]["signature_def"]
    )


def metadata_of(rest: httpx.Client, model: str) -> dict[str, Any]:
    """The signature map of ``model`` version 123 after checking the envelope."""
    response = rest.get(f"/v1/models/{model}/versions/123/metadata")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_spec"] == {
        "name": model,
        "signature_name": "",
        "version": "123",
    }
    assert set(answer) == {"model_spec", "metadata"}
    assert set(answer["metadata"]) == {"signature_def"}
    assert set(answer["metadata"]["signature_def"]) == {"signature_def"}
    signatures: dict[str, Any] = answer["metadata"]["signature_def"]["signature_def"]
    return signatures


@testdata
def test_metadata_by_label_resolves_the_labelled_version(rest: httpx.Client) -> None:
    stable = rest.get(f"/v1/models/{TWO_VERSIONS}/labels/stable/metadata").json()
    canary = rest.get(f"/v1/models/{TWO_VERSIONS}/labels/canary/metadata").json()
    latest = rest.get(f"/v1/models/{TWO_VERSIONS}/metadata").json()
    assert stable["model_spec"]["version"] == "123"
    assert canary["model_spec"]["version"] == "124"
    assert latest["model_spec"]["version"] == "124"


def test_metadata_of_a_scikit_learn_pipeline(rest: httpx.Client) -> None:
    answer = rest.get("/v1/models/linear/metadata").json()
    assert answer["model_spec"]["name"] == "linear"
    signature = answer["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert set(signature["inputs"]) == {"a", "b"}
    assert signature["inputs"]["a"]["dtype"] == "DT_DOUBLE"
    assert signature["inputs"]["a"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}],
        "unknown_rank": False,
    }
    assert set(signature["outputs"]) == {"predictions"}


def test_metadata_of_unknown_model_is_404(rest: httpx.Client) -> None:
    response = rest.get("/v1/models/no_such_model/metadata")
    assert response.status_code == 404
    assert "no_such_model" in error_of(response)


# ---- predict ---------------------------------------------------------------------------


@testdata
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("half_plus_two", [2.5, 3.0, 4.5]),
        # The REST document's curl example (y = x / 2 + 3).
        ("half_plus_three", [3.5, 4.0, 5.5]),
    ],
)
def test_predict_row_format(
    rest: httpx.Client, model: str, expected: list[float]
) -> None:
    response = rest.post(
        f"/v1/models/{model}:predict", json={"instances": [1.0, 2.0, 5.0]}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": expected}


@testdata
def test_predict_columnar_format(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/half_plus_two:predict", json={"inputs": [2.0, 3.0, 4.0]}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"outputs": [3.0, 3.5, 4.0]}


@testdata
def test_predict_on_a_native_tf2_saved_model(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/half_plus_two_tf2:predict", json={"instances": [1.0]}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [2.5]}


@testdata
@pytest.mark.parametrize(
    "path",
    [
        f"/v1/models/{TWO_VERSIONS}/versions/123:predict",
        f"/v1/models/{TWO_VERSIONS}/versions/124:predict",
        f"/v1/models/{TWO_VERSIONS}/labels/stable:predict",
        f"/v1/models/{TWO_VERSIONS}/labels/canary:predict",
    ],
)
def test_predict_on_a_version_or_label(rest: httpx.Client, path: str) -> None:
    response = rest.post(path, json={"instances": [2.0]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [3.0]}


def test_predict_row_format_with_named_inputs(rest: httpx.Client) -> None:
    rows = [{"a": 1.0, "b": 2.0}, {"a": -0.5, "b": 0.25}]
    response = rest.post("/v1/models/linear:predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert predictions == pytest.approx(
        [linear_target(row["a"], row["b"], 1.0) for row in rows]
    )


def test_predict_columnar_format_with_named_inputs(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/linear:predict",
        json={"inputs": {"a": [1.0, 0.0], "b": [2.0, 1.0]}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == pytest.approx([9.0, 4.0])


def test_predict_binary_values_in_and_bytes_outputs_out(rest: httpx.Client) -> None:
    raw = [b"\x00\xffbinary", b"text"]
    response = rest.post(
        "/v1/models/half_plus:predict",
        json={
            "signature_name": "echo",
            "instances": [{"b64": base64.b64encode(value).decode()} for value in raw],
        },
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    # Several outputs: one object per row; "_bytes" outputs come back as b64.
    assert [base64.b64decode(p["text_bytes"]["b64"]) for p in predictions] == raw
    assert [p["length"] for p in predictions] == [len(value) for value in raw]


def test_predict_with_a_gzip_body(rest: httpx.Client) -> None:
    body = gzip.compress(b'{"instances": [1.0, 3.0]}')
    response = rest.post(
        "/v1/models/half_plus:predict",
        content=body,
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [2.5, 3.5]}


def test_predict_accepts_nan_and_infinity(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/half_plus:predict",
        content=b'{"instances": [NaN, Infinity, -Infinity]}',
    )
    assert response.status_code == 200, response.text
    assert response.text.replace(" ", "").replace("\n", "") == (
        '{"predictions":[NaN,Infinity,-Infinity]}'
    )


# ---- classify and regress ------------------------------------------------------------


@testdata
def test_classify(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/half_plus_two:classify",
        json={"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [[["", 3.0]]]}


@testdata
def test_regress(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/half_plus_two:regress",
        json={"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [3.0]}


@testdata
def test_regress_with_the_rest_documents_example(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/half_plus_three:regress",
        json={
            "signature_name": "tensorflow/serving/regress",
            "examples": [{"x": 1.0}, {"x": 2.0}],
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [3.5, 4.0]}


@testdata
def test_regress_with_a_context(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/half_plus_two:regress",
        json={
            "signature_name": "regress_x_to_y",
            "context": {"x": 4.0},
            "examples": [{}, {}],
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [4.0, 4.0]}


def test_regress_on_a_scikit_learn_pipeline(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/linear:regress", json={"examples": [{"a": 1.0, "b": 2.0}]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"] == pytest.approx([9.0])


# ---- monitoring and request ids ------------------------------------------------------


def test_prometheus_endpoint(rest: httpx.Client) -> None:
    rest.post("/v1/models/half_plus:predict", json={"instances": [1.0]})
    response = rest.get(METRICS_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE" in text
    assert re.search(r'modelserver_request_count_total\{[^}]*model="half_plus"', text)


def test_request_id_is_echoed(rest: httpx.Client) -> None:
    response = rest.get("/v1/models/linear", headers={"x-request-id": "conformance-1"})
    assert response.headers["x-request-id"] == "conformance-1"


def test_request_id_is_generated_when_absent(rest: httpx.Client) -> None:
    first = rest.get("/v1/models/linear").headers["x-request-id"]
    second = rest.get("/v1/models/no_such_model").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


def test_every_log_line_is_json_native_ones_included(
    conformance_server: ModelServer, rest: httpx.Client
) -> None:
    # TensorFlow's C++ logging writes to descriptor 2 itself (start-up notices at
    # least); the server turns those lines into records of the "native" logger.
    rest.post("/v1/models/half_plus:predict", json={"instances": [1.0]})
    lines = conformance_server.process.log_text().splitlines()
    records = [json.loads(line) for line in lines]
    native = [record for record in records if record["logger"] == "native"]
    assert all(record["message"] for record in native)
    assert any(record["logger"] == "modelserver" for record in records)
