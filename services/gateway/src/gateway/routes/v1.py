"""TF Serving's REST API (`/v1/models/...`) over TF Serving gRPC.

Same paths, bodies, errors and JSON dialect as TF Serving (the codec is
`servekit_protocol.json_codec`, shared with the model server). Request JSON is typed
with the target version's signature, fetched once by GetModelMetadata and cached.
Responses also carry `x-model-version` and `x-route` headers (extensions).
"""

from __future__ import annotations

import re

from servekit_protocol import json_codec, messages
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.clients.arrays import ArrayRequest, output_arrays
from gateway.context import CallContext
from gateway.errors import InvalidInput
from gateway.forwarding import PredictCall
from gateway.routes.handling import (
    JSON,
    authorize,
    gateway_of,
    read_body,
    serve_http,
)
from gateway.signatures import SignatureSet

PROTOCOL = "rest_v1"
V1_PREFIX = "/v1/models/"

_GET_PATH = re.compile(
    r"(?P<model>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<metadata>/metadata)?"
)
_POST_PATH = re.compile(
    r"(?P<model>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r":(?P<verb>predict|classify|regress)"
)


_INT64_MAX = 2**63 - 1
_INT64_DIGITS = len(str(_INT64_MAX))


def _malformed(request: Request) -> InvalidInput:
    return InvalidInput(f"Malformed request: {request.method} {request.url.path}")


def _version(raw: str | None) -> int | None:
    """The URL's version as an int64, as TF Serving converts it.

    Raises:
        InvalidInput: too large for int64 (TF Serving's wording).
    """
    if raw is None:
        return None
    # By length first: int() refuses over 4,300 digits with its own ValueError.
    if len(raw) > _INT64_DIGITS or int(raw) > _INT64_MAX:
        shown = raw if len(raw) <= 32 else raw[:32] + "..."
        raise InvalidInput(f"Failed to convert version: {shown} to numeric.")
    return int(raw)


def _bytes_response(body: bytes) -> Response:
    return Response(body, media_type=JSON)


async def get_model(request: Request) -> Response:
    """Status (`/v1/models/{m}[/versions/{v}|/labels/{l}]`) or `.../metadata`."""

    async def handle(ctx: CallContext) -> Response:
        match = _GET_PATH.fullmatch(request.path_params["rest"])
        if match is None:
            raise _malformed(request)
        model = match["model"]
        version, label = _version(match["version"]), match["label"]
        gateway = gateway_of(request)
        authorize(gateway, ctx.headers, model)
        if match["metadata"]:
            response, _ = await gateway.metadata(ctx, model, version, label)
            ctx.route = "metadata"
            return _bytes_response(json_codec.format_metadata_response(response))
        status = await gateway.status(ctx, model, version, label)
        return _bytes_response(json_codec.format_status_response(status))

    return await serve_http(request, PROTOCOL, handle)


async def post_model(request: Request) -> Response:
    """`:predict`, `:classify` and `:regress`."""

    async def handle(ctx: CallContext) -> Response:
        match = _POST_PATH.fullmatch(request.path_params["rest"])
        if match is None:
            raise _malformed(request)
        model = match["model"]
        version, label = _version(match["version"]), match["label"]
        gateway = gateway_of(request)
        authorize(gateway, ctx.headers, model)
        body = await read_body(request, gateway.settings.max_body_bytes)
        verb = match["verb"]
        if verb == "predict":
            return await _predict(ctx, request, model, version, label, body)
        examples = json_codec.parse_examples_request(body)
        if verb == "classify":
            classify = messages.ClassificationRequest()
            classify.model_spec.signature_name = examples.signature_name
            classify.input.CopyFrom(examples.input)
            answer = await gateway.classify(ctx, model, version, label, classify)
            return _bytes_response(json_codec.format_classify_response(answer.result))
        regress = messages.RegressionRequest()
        regress.model_spec.signature_name = examples.signature_name
        regress.input.CopyFrom(examples.input)
        result = await gateway.regress(ctx, model, version, label, regress)
        return _bytes_response(json_codec.format_regress_response(result.result))

    return await serve_http(request, PROTOCOL, handle)


async def _predict(
    ctx: CallContext,
    request: Request,
    model: str,
    version: int | None,
    label: str | None,
    body: bytes,
) -> Response:
    """Forwarded untranslated to a REST backend, or typed and sent over gRPC: the
    gateway decides (`Gateway.predict`); the JSON is parsed only in the latter."""
    gateway = gateway_of(request)
    plan = gateway.plan(ctx, model, version, label)
    formats: list[json_codec.RequestFormat] = []

    def encode(signatures: SignatureSet | None) -> ArrayRequest:
        assert signatures is not None
        parsed = json_codec.parse_predict_request(
            body, signatures.input_specs, gateway.gatekeeper.tensor_limits
        )
        formats.append(parsed.format)
        request = ArrayRequest(parsed.inputs)
        if parsed.signature_name:
            request.model_spec.signature_name = parsed.signature_name
        return request

    predicted = await gateway.predict(ctx, plan, PredictCall(encode, rest_body=body))
    if predicted.answer is not None:
        answer = predicted.answer
        return Response(answer.body, status_code=answer.status, media_type=JSON)
    outputs = output_arrays(predicted.translated)
    return _bytes_response(json_codec.format_predict_response(outputs, formats[-1]))


def v1_routes() -> list[Route]:
    """TF Serving's paths put the verb after a colon, so one catch-all per method."""
    return [
        Route(V1_PREFIX + "{rest:path}", get_model, methods=["GET"]),
        Route(V1_PREFIX + "{rest:path}", post_model, methods=["POST"]),
    ]
