"""TF Serving's REST API (`/v1/models/...`) over TF Serving gRPC.

Same paths, bodies, errors and JSON dialect as TF Serving: the URL grammar is
`servekit_protocol.paths` and the codec `servekit_protocol.json_codec`, both
shared with the model server. Request JSON is typed
with the target version's signature, fetched once by GetModelMetadata and cached.
Responses also carry `x-model-version` and `x-route` headers (extensions).
"""

from __future__ import annotations

from servekit_protocol import json_codec, messages, paths
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.clients.arrays import ArrayRequest, decoded_outputs
from gateway.context import CallContext
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


def _parse(request: Request) -> paths.ModelPath:
    """The model path a request names, read from the raw (percent-encoded) path
    as TF Serving reads it.

    Raises:
        ProtocolError: TF Serving's 400 for a path outside the grammar.
    """
    raw: bytes | None = request.scope.get("raw_path")
    path = raw.partition(b"?")[0].decode("latin-1") if raw else request.scope["path"]
    return paths.parse_path(request.method, path)


def _bytes_response(body: bytes) -> Response:
    return Response(body, media_type=JSON)


async def get_model(request: Request) -> Response:
    """Status (`/v1/models/{m}[/versions/{v}|/labels/{l}]`) or `.../metadata`."""

    async def handle(ctx: CallContext) -> Response:
        parsed = _parse(request)
        model, version, label = parsed.model, parsed.version, parsed.label
        gateway = gateway_of(request)
        authorize(gateway, ctx.headers, model, ctx.client)
        if parsed.api == "metadata":
            response, _ = await gateway.metadata(ctx, model, version, label)
            ctx.route = "metadata"
            return _bytes_response(json_codec.format_metadata_response(response))
        status = await gateway.status(ctx, model, version, label)
        return _bytes_response(json_codec.format_status_response(status))

    return await serve_http(request, PROTOCOL, handle)


async def post_model(request: Request) -> Response:
    """`:predict`, `:classify` and `:regress`."""

    async def handle(ctx: CallContext) -> Response:
        parsed = _parse(request)
        model, version, label = parsed.model, parsed.version, parsed.label
        gateway = gateway_of(request)
        authorize(gateway, ctx.headers, model, ctx.client)
        body = await read_body(request, gateway.settings.max_body_bytes)
        verb = parsed.api
        if verb == "predict":
            return await _predict(ctx, request, model, version, label, body)
        examples = await gateway.parsers.run(
            len(body), json_codec.parse_examples_request, body
        )
        if verb == "classify":
            classify = messages.ClassificationRequest()
            classify.model_spec.signature_name = examples.signature_name
            classify.input.CopyFrom(examples.input)
            answer = await gateway.classify(ctx, model, version, label, classify)
            # Only the gRPC adapters keep answers as their bytes.
            assert isinstance(answer, messages.ClassificationResponse)
            return _bytes_response(
                await _write_classify(gateway.parsers, answer.result)
            )
        regress = messages.RegressionRequest()
        regress.model_spec.signature_name = examples.signature_name
        regress.input.CopyFrom(examples.input)
        result = await gateway.regress(ctx, model, version, label, regress)
        assert isinstance(result, messages.RegressionResponse)
        return _bytes_response(await _write_regress(gateway.parsers, result.result))

    return await serve_http(request, PROTOCOL, handle)


async def _write_classify(
    parsers: json_codec.BodyParsers, result: messages.ClassificationResult
) -> bytes:
    """The `:classify` answer: from the answer threshold (in pairs) its JSON is
    written in a worker, from the message's bytes, by the same function.

    Raises:
        ProtocolError: an empty result (400), or the worker died (503).
    """
    threshold = parsers.answer_threshold_elements
    if json_codec.classification_pairs(result, threshold) < threshold:
        return json_codec.format_classify_response(result)
    return await parsers.in_worker(
        json_codec.format_serialized_classify_response, result.SerializeToString()
    )


async def _write_regress(
    parsers: json_codec.BodyParsers, result: messages.RegressionResult
) -> bytes:
    """The `:regress` answer: from the answer threshold (in values) its JSON is
    written in a worker, as `:classify`'s.

    Raises:
        ProtocolError: an empty result (400), or the worker died (503).
    """
    if len(result.regressions) < parsers.answer_threshold_elements:
        return json_codec.format_regress_response(result)
    return await parsers.in_worker(
        json_codec.format_serialized_regress_response, result.SerializeToString()
    )


async def other_method(request: Request) -> Response:
    """Any method but GET and POST under `/v1/`: TF Serving's 400 `Malformed
    request: <METHOD> <path>` (not a 405), with the request id and access line
    every v1 answer has."""

    async def handle(_ctx: CallContext) -> Response:
        _parse(request)  # raises: the grammar has only GET and POST paths
        raise AssertionError("unreachable: only GET and POST paths parse")

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
    # A large translated answer comes back as its bytes and is decoded off
    # the loop; the JSON is written in a worker from the JSON threshold.
    threshold = gateway.settings.grpc_parse_offload_bytes
    ctx.keep_answer_from = threshold if threshold > 0 else None
    formats: list[json_codec.RequestFormat] = []

    async def encode(signatures: SignatureSet | None) -> ArrayRequest:
        assert signatures is not None
        parsed = await gateway.parsers.run(
            len(body),
            json_codec.parse_predict_request,
            body,
            signatures.input_specs,
            gateway.gatekeeper.tensor_limits,
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
    outputs = await decoded_outputs(predicted.translated)
    return _bytes_response(
        await gateway.parsers.write_answer(
            json_codec.output_elements(outputs),
            json_codec.format_predict_response,
            outputs,
            formats[-1],
        )
    )


def is_v1_path(path: str) -> bool:
    """Whether the v1 API answers `path`: TF Serving's dispatcher takes every
    path matching `(?i)/v1/.*` and answers those outside its grammar with 400."""
    return paths.is_api_path(path)


def v1_routes() -> list[Route]:
    """TF Serving's paths put the verb after a colon, so one catch-all per method."""
    return [
        Route(V1_PREFIX + "{rest:path}", get_model, methods=["GET"]),
        Route(V1_PREFIX + "{rest:path}", post_model, methods=["POST"]),
    ]
