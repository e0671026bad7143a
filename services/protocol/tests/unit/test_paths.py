"""TF Serving's v1 URL grammar: what both services accept, refuse and build."""

from __future__ import annotations

import pytest
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.paths import ModelPath, is_api_path, model_path, parse_path
from servekit_protocol.serving import (
    is_unknown_label,
    unknown_label_message,
)
from servekit_protocol.status import Code


@pytest.mark.parametrize(
    ("method", "path", "parsed"),
    [
        ("POST", "/v1/models/m:predict", ModelPath("m", None, None, "predict")),
        ("POST", "/v1/models/m/versions/3:regress", ModelPath("m", 3, None, "regress")),
        (
            "POST",
            "/v1/models/m/labels/canary:classify",
            ModelPath("m", None, "canary", "classify"),
        ),
        ("POST", "/V1/Models/m:predict", ModelPath("m", None, None, "predict")),
        ("POST", "/v1/models/a%2Fb:predict", ModelPath("a/b", None, None, "predict")),
        ("GET", "/v1/models/m", ModelPath("m", None, None, "status")),
        ("GET", "/v1/models/m/versions/2", ModelPath("m", 2, None, "status")),
        ("GET", "/v1/models/m/labels/l%20x", ModelPath("m", None, "l x", "status")),
        ("GET", "/v1/models/m/metadata", ModelPath("m", None, None, "metadata")),
    ],
)
def test_paths_parse_as_tf_serving_reads_them(
    method: str, path: str, parsed: ModelPath
) -> None:
    assert is_api_path(path)
    assert parse_path(method, path) == parsed


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("GET", "/v1/models/m:predict", "Malformed request: GET /v1/models/m:predict"),
        ("POST", "/v1/models/m", "Malformed request: POST /v1/models/m"),
        (
            "POST",
            "/v1/models/m:PREDICT",
            "Malformed request: POST /v1/models/m:PREDICT",
        ),
        ("PUT", "/v1/models/m:predict", "Malformed request: PUT /v1/models/m:predict"),
        ("GET", "/v1/models", "Missing model name in request."),
        (
            "GET",
            "/v1/models/m/versions/99999999999999999999",
            "Failed to convert version: 99999999999999999999 to numeric.",
        ),
    ],
)
def test_other_paths_are_tf_servings_400(method: str, path: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_path(method, path)
    assert caught.value.message == message
    assert caught.value.status == 400


def test_built_paths_parse_back() -> None:
    for built, method in (
        (model_path("a/b", label="c d", api="predict"), "POST"),
        (model_path("m", version=4, api="metadata"), "GET"),
        (model_path("m"), "GET"),
    ):
        parsed = parse_path(method, built)
        assert model_path(parsed.model, parsed.version, parsed.label, parsed.api) == (
            built
        )
    assert model_path("m", label="canary", api="predict") == (
        "/v1/models/m/labels/canary:predict"
    )


def test_the_unknown_label_refusal_is_recognised_by_code_and_message() -> None:
    message = unknown_label_message("canary")
    assert message == "Unrecognized servable version label: canary"
    assert is_unknown_label(Code.INVALID_ARGUMENT, message)
    assert not is_unknown_label(Code.NOT_FOUND, message)
    assert not is_unknown_label(Code.INVALID_ARGUMENT, "label canary is weird")
