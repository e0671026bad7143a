"""`gateway.codecs.typed_body`: a typed body parsed and validated outside FastAPI
answers what FastAPI's handler answers in place."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from gateway.codecs.typed import TypedSignature, build_typed_signature
from gateway.codecs.typed_body import (
    ROUTED_MISFIT,
    TypedSchema,
    field_errors,
    parse_typed_body,
    schema_of,
    summary,
)
from modelregistry import Manifest
from servekit_protocol import messages
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


def manifest(features: list[str]) -> Manifest:
    return Manifest.model_validate(
        {
            "name": "m",
            "framework": "sklearn",
            "created": "2026-01-01T00:00:00Z",
            "artifact": "model.joblib",
            "features": [{"name": name, "dtype": "float64"} for name in features],
            "signatures": {
                "serving_default": {
                    "inputs": {
                        name: {"dtype": "float64", "shape": [-1]} for name in features
                    },
                    "outputs": {"predictions": {"dtype": "float64", "shape": [-1]}},
                }
            },
        }
    )


def typed_and_schema(
    features: list[str], version: int = 1
) -> tuple[TypedSignature, TypedSchema]:
    source = manifest(features)
    typed = build_typed_signature("m", version, source, "serving_default")
    assert typed is not None
    return typed, schema_of(typed, source)


def fastapi_client(typed: TypedSignature) -> TestClient:
    """FastAPI validating `typed`'s request model, its refusals answered as the
    gateway answers them (`gateway.main`)."""
    app = FastAPI()

    async def endpoint(body: Any) -> Response:
        return JSONResponse({"rows": len(body.instances)})

    endpoint.__annotations__["body"] = typed.request_model
    app.post("/predict")(endpoint)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_request: Request, exc: RequestValidationError) -> Response:
        errors = field_errors(list(exc.errors()), ())
        return JSONResponse({"error": summary(errors), "detail": errors}, 422)

    @app.exception_handler(HTTPException)
    async def on_http(_request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"error": exc.detail}, exc.status_code)

    return TestClient(app)


JSON = "application/json"

BODIES: list[tuple[bytes, str | None]] = [
    (b'{"instances": [{"a": 1.0, "b": 2.0}]}', JSON),
    (b'{"instances": [{"a": "1", "b": 2.0}, {"a": 1.0}]}', JSON),
    (b'{"instances": [{"a": 1.0, "b": 2.0, "c": 3.0}]}', JSON),
    (b'{"instances": [{"a": NaN, "b": -1e400}]}', JSON),
    (b'{"instances": []}', JSON),
    (b'{"rows": []}', JSON),
    (b"[1, 2]", JSON),
    (b'{"instances": [', JSON),
    (b'{"instances": "\xff\xfe"}', JSON),
    (b"[" * 10_000, JSON),
    (b"", JSON),
    (b'{"instances": [{"a": 1.0, "b": 2.0}]}', None),
    (b'{"instances": [{"a": 1.0, "b": 2.0}]}', "text/plain"),
    (b'{"instances": [{"a": 1.0, "b": 2.0}]}', "application/problem+json"),
]


@pytest.mark.parametrize(("body", "content_type"), BODIES)
def test_refusals_are_fastapis(body: bytes, content_type: str | None) -> None:
    typed, schema = typed_and_schema(["a", "b"])
    headers = {"content-type": content_type} if content_type else {}
    expected = fastapi_client(typed).post("/predict", content=body, headers=headers)
    parsed = parse_typed_body(schema, body, content_type)
    if expected.status_code == 200:
        assert parsed.refusal is None
        return
    assert parsed.refusal is not None
    got: dict[str, Any] = {"error": parsed.refusal.message}
    if parsed.refusal.detail is not None:
        got["detail"] = parsed.refusal.detail
    assert (parsed.refusal.status, got) == (expected.status_code, expected.json())


def test_a_valid_body_becomes_the_request_built_in_place() -> None:
    typed, schema = typed_and_schema(["a", "b"])
    body = b'{"instances": [{"a": 1.5, "b": 2.0}, {"b": -1.0, "a": 0.25}]}'
    parsed = parse_typed_body(schema, body, JSON)
    assert parsed.refusal is None and parsed.invalid is None
    rows = [
        row.model_dump(by_alias=True)
        for row in typed.request_model.model_validate_json(body).instances  # type: ignore[attr-defined]
    ]
    assert messages.PredictRequest.FromString(parsed.request) == typed.predict_request(
        rows
    )


def test_rows_are_checked_and_built_for_the_routed_version() -> None:
    _, documented = typed_and_schema(["a", "b"])
    routed_typed, routed = typed_and_schema(["a", "b", "c"], version=2)
    body = b'{"instances": [{"a": 1.0, "b": 2.0}]}'
    refused = parse_typed_body(documented, body, JSON, routed)
    assert refused.refusal is not None
    assert (refused.refusal.status, refused.refusal.message) == (422, ROUTED_MISFIT)
    assert refused.refusal.detail == [
        {"type": "missing", "loc": ["body", "instances", "c"], "msg": "Field required"}
    ]
    _, narrower = typed_and_schema(["a"], version=3)
    parsed = parse_typed_body(documented, body, JSON, narrower)
    assert parsed.refusal is not None  # "b" is not a feature of version 3
    _, same_features = typed_and_schema(["a", "b"], version=4)
    built = parse_typed_body(documented, body, JSON, same_features)
    assert built.refusal is None
    request = messages.PredictRequest.FromString(built.request)
    assert sorted(request.inputs) == ["a", "b"]
    assert routed_typed.version == 2
