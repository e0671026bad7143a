"""A typed endpoint's body parsed and validated as FastAPI does, runnable in a
JSON worker process.

The typed endpoints' pydantic models are built per signature at run time and do
not pickle, so a worker gets a :class:`TypedSchema` (the manifest and the names
that pick the signature) and builds the same models from it, once per schema.
Parsing, validating and the errors follow FastAPI's request handler for a single
JSON body (`fastapi.routing.get_request_handler`): the content type decides
whether the body is JSON, `json.loads` reads it, the model validates it with
`from_attributes`, and a problem answers as the in-place path answers it (422
with the fields, or 400). The rows then become the `PredictRequest`, so that the
event loop only parses its bytes (packed tensors: a copy).
"""

from __future__ import annotations

import email.message
import json
from dataclasses import dataclass
from typing import Any

from modelregistry import Manifest
from pydantic import TypeAdapter, ValidationError

from gateway.codecs.typed import TypedSignature, build_typed_signature
from gateway.errors import InvalidInput

PARSE_FAILURE = "There was an error parsing the body"
"""FastAPI's 400 for a body that is JSON by its content type but not text."""
ROUTED_MISFIT = "the rows do not fit the routed version's schema"
"""The 422 for rows that fit the endpoint's version but not the routed one."""
CACHED_SCHEMAS = 64
"""Typed signatures a worker keeps built (a registry's worth)."""


@dataclass(frozen=True)
class TypedSchema:
    """What rebuilds a typed signature in another process."""

    model: str
    version: int
    signature: str
    manifest_json: str


@dataclass(frozen=True)
class Refusal:
    """A body refused before any backend call: FastAPI's 422 (`detail` set) or
    400."""

    status: int
    message: str
    detail: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class TypedBody:
    """A typed body's outcome: refused, or the serialized `PredictRequest` (or
    the 400 its rows earn when they become tensors, which the in-place path
    answers only after routing)."""

    refusal: Refusal | None = None
    request: bytes = b""
    invalid: str | None = None


_signatures: dict[TypedSchema, tuple[TypedSignature, TypeAdapter[Any]]] = {}


def schema_of(typed: TypedSignature, manifest: Manifest) -> TypedSchema:
    """The picklable description of `typed`, built from `manifest`."""
    return TypedSchema(
        typed.model, typed.version, typed.signature, manifest.model_dump_json()
    )


def _signature(schema: TypedSchema) -> tuple[TypedSignature, TypeAdapter[Any]]:
    built = _signatures.get(schema)
    if built is None:
        manifest = Manifest.model_validate_json(schema.manifest_json)
        typed = build_typed_signature(
            schema.model, schema.version, manifest, schema.signature
        )
        if typed is None:
            raise ValueError(f"no typed form for {schema.model} {schema.signature}")
        if len(_signatures) >= CACHED_SCHEMAS:
            _signatures.clear()
        built = _signatures[schema] = (typed, TypeAdapter(typed.request_model))
    return built


def field_errors(errors: list[Any], prefix: tuple[str, ...]) -> list[dict[str, Any]]:
    """Pydantic's errors as the gateway answers them: type, loc, msg."""
    return [
        {
            "type": error.get("type"),
            "loc": [*prefix, *error.get("loc", ())],
            "msg": error.get("msg"),
        }
        for error in errors
    ]


def summary(errors: list[dict[str, Any]]) -> str:
    """One line naming the first invalid field, for the `error` key of a 422."""
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ())) or "body"
    return f"invalid input at {where}: {first.get('msg', 'invalid')}"


def _unprocessable(errors: list[dict[str, Any]]) -> Refusal:
    return Refusal(422, summary(errors), errors)


_MISSING = object()


def _decoded(body: bytes, content_type: str | None) -> Any:
    """The value FastAPI validates: the JSON, the bytes themselves when the
    content type is not JSON, or nothing for an empty body.

    Raises:
        json.JSONDecodeError, and anything else decoding raises.
    """
    if not body:
        return _MISSING
    if not content_type:
        # FastAPI's strict content type: no header, no JSON.
        return body
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() == "application":
        subtype = message.get_content_subtype()
        if subtype == "json" or subtype.endswith("+json"):
            return json.loads(body)
    return body


def parse_typed_body(
    schema: TypedSchema,
    body: bytes,
    content_type: str | None,
    routed: TypedSchema | None = None,
) -> TypedBody:
    """Parse and validate `body` against the endpoint's schema, then (when the
    request is routed to a version with another schema) its rows against the
    routed one, and turn them into the routed version's `PredictRequest`."""
    typed, adapter = _signature(schema)
    try:
        value = _decoded(body, content_type)
    except json.JSONDecodeError as exc:
        return TypedBody(
            _unprocessable(
                [
                    {
                        "type": "json_invalid",
                        "loc": ["body", exc.pos],
                        "msg": "JSON decode error",
                    }
                ]
            )
        )
    except Exception:  # as FastAPI: any other failure to decode is a 400
        return TypedBody(Refusal(400, PARSE_FAILURE))
    if value is _MISSING:
        return TypedBody(
            _unprocessable(
                [{"type": "missing", "loc": ["body"], "msg": "Field required"}]
            )
        )
    try:
        validated = adapter.validate_python(value, from_attributes=True)
    except ValidationError as exc:
        return TypedBody(_unprocessable(field_errors(exc.errors(), ("body",))))
    rows: list[dict[str, Any]] = [
        row.model_dump(by_alias=True) for row in getattr(validated, "instances", [])
    ]
    if routed is not None and routed != schema:
        typed, _ = _signature(routed)
        try:
            rows = [
                typed.row_model.model_validate(row).model_dump(by_alias=True)
                for row in rows
            ]
        except ValidationError as exc:
            errors = field_errors(exc.errors(), ("body", "instances"))
            return TypedBody(Refusal(422, ROUTED_MISFIT, errors))
    try:
        request = typed.predict_request(rows)
    except InvalidInput as exc:
        return TypedBody(invalid=exc.message)
    return TypedBody(request=request.SerializeToString())
