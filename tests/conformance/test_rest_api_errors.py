"""TF Serving's REST API errors (unknown models, versions, labels and signatures,
malformed bodies and paths), as its documentation and its own model-server tests
describe them, checked against a running servekit-model-server."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conformance.conftest import (
    error_of,
)

pytestmark = pytest.mark.integration

testdata = pytest.mark.usefixtures("needs_testdata")


# ---- errors ---------------------------------------------------------------------------


def test_unknown_model_is_404_with_tf_serving_message(rest: httpx.Client) -> None:
    # The REST document's own error example.
    response = rest.post("/v1/models/half:predict", json={"instances": [1.0, 5.0]})
    assert response.status_code == 404
    assert error_of(response) == "Servable not found for request: Latest(half)"


def test_unknown_version_is_404(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/linear/versions/77:predict", json={"instances": [{"a": 1, "b": 1}]}
    )
    assert response.status_code == 404
    assert error_of(response) == "Servable not found for request: Specific(linear, 77)"


def test_unknown_label_is_400(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/linear/labels/nope:predict", json={"instances": [{"a": 1, "b": 1}]}
    )
    assert response.status_code == 400
    assert error_of(response) == "Unrecognized servable version label: nope"


def test_unknown_signature_is_400(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/half_plus:predict",
        json={"signature_name": "nope", "instances": [1.0]},
    )
    assert response.status_code == 400
    assert error_of(response) == (
        'Serving signature name: "nope" not found in signature def'
    )


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        (b"", r"^JSON Parse error: The document is empty$"),
        (b"{not json", r"^JSON Parse error: "),
        (b"[1, 2]", r"Is not object"),
        (b'{"signature_name": 7, "instances": [1.0]}', r"signature_name"),
        (b'{"instances": [1.0], "inputs": [1.0]}', r"expecting only one of"),
        (b'{"something": [1.0]}', r"^Missing 'inputs' or 'instances' key$"),
        (b'{"instances": []}', r"No values in 'instances' array"),
        (b'{"instances": ["a", "b"]}', r"."),
        (b'{"instances": [[1.0], [1.0, 2.0]]}', r"."),
    ],
)
def test_malformed_predict_bodies_are_400(
    rest: httpx.Client, body: bytes, pattern: str
) -> None:
    response = rest.post("/v1/models/half_plus:predict", content=body)
    assert response.status_code == 400, response.text
    assert re.search(pattern, error_of(response)), error_of(response)


def test_wrong_input_name_is_400(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/linear:predict", json={"inputs": {"a": [1.0], "z": [2.0]}}
    )
    assert response.status_code == 400, response.text
    assert error_of(response)


def test_missing_examples_is_400(rest: httpx.Client) -> None:
    response = rest.post("/v1/models/linear:regress", json={"instances": [1.0]})
    assert response.status_code == 400, response.text
    assert "examples" in error_of(response)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/foo"),
        ("POST", "/v1/models/linear:explain"),
        ("POST", "/v1/models/linear"),
        ("GET", "/v1/models/linear:predict"),
        ("PUT", "/v1/models/linear"),
        ("DELETE", "/v1/models/linear/versions/1"),
    ],
)
def test_malformed_api_paths_are_400(
    rest: httpx.Client, method: str, path: str
) -> None:
    response = rest.request(method, path)
    assert response.status_code == 400
    assert error_of(response) == f"Malformed request: {method} {path}"


def test_paths_outside_the_api_are_404(rest: httpx.Client) -> None:
    assert rest.get("/").status_code == 404
    assert rest.get("/v2/models/linear").status_code == 404


def test_version_beyond_int64_is_400(rest: httpx.Client) -> None:
    response = rest.get("/v1/models/linear/versions/99999999999999999999")
    assert response.status_code == 400
    assert error_of(response) == (
        "Failed to convert version: 99999999999999999999 to numeric."
    )


def test_corrupt_gzip_body_is_400(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/half_plus:predict",
        content=b"\x1f\x8bnot really gzip",
        headers={"content-encoding": "gzip"},
    )
    assert response.status_code == 400
    assert error_of(response)


@testdata
def test_no_input_signature_cannot_be_called_over_rest(rest: httpx.Client) -> None:
    response = rest.post(
        "/v1/models/saved_model_counter:predict",
        json={"signature_name": "get_counter", "instances": [1.0]},
    )
    assert response.status_code == 400
    assert error_of(response) == "Failed to get input map for signature: get_counter"
