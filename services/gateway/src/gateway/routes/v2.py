"""The Open Inference Protocol ("v2", KServe/Triton/MLServer) over HTTP.

`/v2/models/{m}[/versions/{v}]/infer` becomes a PredictRequest through
`gateway.oip`: each v2 input is a tensor of the signature (numeric inputs are
converted to the signature's dtype), `outputs` becomes the output filter, and
`parameters.signature_name` picks a signature other than `serving_default`. A
non-numeric `{v}` is taken as a label. Bodies may use the binary tensor data
extension (`Inference-Header-Content-Length`) both ways, the classification
extension, and `Content-Encoding: gzip` or `deflate`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf.message import DecodeError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import gateway
from gateway import oip
from gateway.codecs.answers import (
    answer_request,
    output_elements,
    write_infer_answer,
)
from gateway.codecs.v2 import (
    InferRequest,
    parse_infer_body,
    parse_infer_request,
    read_document,
    read_parameters,
    tensor_metadata,
)
from gateway.codecs.v2_binary import BINARY_CONTENT_TYPE, HEADER_LENGTH, split_body
from gateway.codecs.v2_grpc_answer import chosen_outputs
from gateway.context import CallContext
from gateway.errors import unreadable_answer
from gateway.routes.handling import (
    authorize,
    gateway_of,
    json_response,
    read_body,
    serve_http,
)

PROTOCOL = "rest_v2"
_PARAMETERS_KEY = b'"parameters"'
_ESCAPE = b"\\u"
SERVER_NAME = "servekit-gateway"
# Triton's model configuration extension names its platforms this way.
CONFIG_PLATFORMS = {"tensorflow": "tensorflow_savedmodel"}


def _tensor_entries(infos: list[oip.TensorInfo]) -> list[dict[str, Any]]:
    return [tensor_metadata(info.name, info.datatype, info.shape) for info in infos]


async def server_metadata(_request: Request) -> Response:
    return json_response(
        {
            "name": SERVER_NAME,
            "version": gateway.__version__,
            "extensions": list(oip.EXTENSIONS),
        }
    )


async def live(_request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    is_ready, _ = await request.app.state.readiness.check()
    # The protocol says 200 is true and a 4xx is false.
    return json_response({"ready": is_ready}, 200 if is_ready else 400)


async def model_metadata(request: Request) -> Response:
    model = request.path_params["model"]

    async def handle(ctx: CallContext) -> Response:
        gw = gateway_of(request)
        authorize(gw, ctx.headers, model, ctx.client)
        info = await oip.model_info(gw, ctx, model, request.path_params.get("version"))
        return json_response(
            {
                "name": info.name,
                "versions": info.versions,
                "platform": info.platform,
                "inputs": _tensor_entries(info.inputs),
                "outputs": _tensor_entries(info.outputs),
            }
        )

    return await serve_http(request, PROTOCOL, handle)


async def model_config(request: Request) -> Response:
    """Triton's model configuration extension: the signature as a model config."""
    model = request.path_params["model"]

    async def handle(ctx: CallContext) -> Response:
        gw = gateway_of(request)
        authorize(gw, ctx.headers, model, ctx.client)
        info = await oip.model_info(gw, ctx, model, request.path_params.get("version"))
        return json_response(
            {
                "name": info.name,
                "platform": CONFIG_PLATFORMS.get(info.platform, info.platform),
                "backend": info.platform,
                "max_batch_size": 0,
                "input": [_config_tensor(t) for t in info.inputs],
                "output": [_config_tensor(t) for t in info.outputs],
            }
        )

    return await serve_http(request, PROTOCOL, handle)


def _config_tensor(info: oip.TensorInfo) -> dict[str, Any]:
    datatype = "STRING" if info.datatype == "BYTES" else info.datatype
    return {"name": info.name, "data_type": f"TYPE_{datatype}", "dims": info.shape}


async def model_ready(request: Request) -> Response:
    model = request.path_params["model"]

    async def handle(ctx: CallContext) -> Response:
        gw = gateway_of(request)
        authorize(gw, ctx.headers, model, ctx.client)
        is_ready = await oip.model_ready(
            gw, ctx, model, request.path_params.get("version")
        )
        return json_response(
            {"name": model, "ready": is_ready}, 200 if is_ready else 400
        )

    return await serve_http(request, PROTOCOL, handle)


async def infer(request: Request) -> Response:
    model = request.path_params["model"]

    async def handle(ctx: CallContext) -> Response:
        gw = gateway_of(request)
        authorize(gw, ctx.headers, model, ctx.client)
        # read_body inflates gzip and deflate bodies under the same limit.
        body = await read_body(request, gw.settings.max_body_bytes)
        header, binary = split_body(body, ctx.headers.get(HEADER_LENGTH))
        parsers = gw.parsers
        size = len(header)
        if size < parsers.threshold_bytes:
            document = read_document(header)
            parameters = document.get("parameters") or {}

            async def parse(wanted: Any) -> InferRequest:
                return parse_infer_request(document, wanted, binary)

        else:
            # The JSON is parsed in a worker. The signature it may name is
            # needed first, so a body that can name one (the key, or any
            # escape that could spell it) is read there twice; others once.
            parameters = {}
            if _PARAMETERS_KEY in header or _ESCAPE in header:
                parameters = await parsers.run(size, read_parameters, header)

            async def parse(wanted: Any) -> InferRequest:
                return await parsers.run(size, parse_infer_body, header, wanted, binary)

        # A large answer comes back as its bytes and is decoded off the loop;
        # the JSON is written in a worker from the JSON threshold.
        threshold = gw.settings.grpc_parse_offload_bytes
        ctx.keep_answer_from = threshold if threshold > 0 else None
        answer = await oip.infer(
            gw,
            ctx,
            model,
            request.path_params.get("version"),
            oip.signature_name(parameters),
            parse,
        )
        outputs = answer.outputs
        if answer.received is not None:
            outputs = await _kept_outputs(model, answer)
        written = await gw.parsers.write_answer(
            output_elements(outputs),
            write_infer_answer,
            outputs,
            answer_request(answer.request),
            model,
            answer.model_version,
            ctx.headers.get("accept-encoding", ""),
        )
        content, header_length = written.content, written.header_length
        headers: dict[str, str] = {}
        if header_length is not None:
            # The length is of the JSON before any compression (clients inflate first).
            headers["Inference-Header-Content-Length"] = str(header_length)
        if written.coding is not None:
            headers["Content-Encoding"] = written.coding
        return Response(
            content,
            media_type="application/json"
            if header_length is None
            else BINARY_CONTENT_TYPE,
            headers=headers,
        )

    return await serve_http(request, PROTOCOL, handle)


async def _kept_outputs(model: str, answer: oip.InferAnswer) -> dict[str, Any]:
    """The outputs asked for of an answer kept as its bytes, parsed and decoded
    in a worker thread (:func:`~gateway.clients.arrays.decoded_outputs`).

    Raises:
        BackendError: INTERNAL, the answer does not parse (as it fails when
            parsed on receipt).
        InvalidInput: as :func:`~gateway.codecs.v2_grpc_answer.chosen_outputs`.
    """
    assert answer.received is not None
    try:
        return await asyncio.to_thread(
            chosen_outputs, model, answer.request, answer.received
        )
    except DecodeError as exc:
        raise unreadable_answer(exc) from exc


def v2_routes() -> list[Route]:
    """The v2 route table (plain Starlette routes: no pydantic on the hot path)."""
    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{model}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
        Route(
            "/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]
        ),
        Route("/v2/models/{model}/config", model_config, methods=["GET"]),
        Route(
            "/v2/models/{model}/versions/{version}/config",
            model_config,
            methods=["GET"],
        ),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
    ]
