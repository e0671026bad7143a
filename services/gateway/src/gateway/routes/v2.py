"""The Open Inference Protocol ("v2", KServe/Triton/MLServer) over TF Serving gRPC.

`/v2/models/{m}[/versions/{v}]/infer` becomes a PredictRequest: each v2 input is a
tensor of the signature (numeric inputs are converted to the signature's dtype),
`outputs` becomes the output filter, and `parameters.signature_name` picks a
signature other than `serving_default`. A non-numeric `{v}` is taken as a label.
"""

from __future__ import annotations

from typing import Any

from servekit_protocol import messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.tensors import numpy_dtype, to_shape
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import gateway
from gateway.clients.arrays import ArrayRequest, output_arrays
from gateway.codecs.v2 import (
    format_infer_response,
    parse_infer_request,
    tensor_metadata,
    v2_datatype,
)
from gateway.context import CallContext
from gateway.errors import InvalidInput
from gateway.forwarding import PredictCall
from gateway.routes.handling import (
    authorize,
    gateway_of,
    json_response,
    parse_json,
    read_body,
    serve_http,
)
from gateway.signatures import DEFAULT_SIGNATURE, SignatureSet

PROTOCOL = "rest_v2"
SERVER_NAME = "servekit-gateway"


def version_or_label(raw: str | None) -> tuple[int | None, str | None]:
    """A v2 version string: digits are a version, anything else a label."""
    if raw is None or raw == "":
        return None, None
    if raw.isdigit():
        return int(raw), None
    return None, raw


def _available_versions(status: messages.GetModelStatusResponse) -> list[int]:
    return sorted(
        entry.version
        for entry in status.model_version_status
        if entry.state == messages.ModelVersionStatus.State.AVAILABLE
    )


def _tensor_entries(infos: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for key in sorted(infos):
        info = infos[key]
        try:
            datatype = v2_datatype(numpy_dtype(info.dtype))
        except (ProtocolError, InvalidInput):
            datatype = "BYTES"
        shape = to_shape(info.tensor_shape)
        entries.append(
            tensor_metadata(key, datatype, shape if shape is not None else [-1])
        )
    return entries


async def server_metadata(_request: Request) -> Response:
    return json_response(
        {"name": SERVER_NAME, "version": gateway.__version__, "extensions": []}
    )


async def live(_request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    is_ready, _ = await request.app.state.readiness.check()
    # The protocol says 200 is true and a 4xx is false.
    return json_response({"ready": is_ready}, 200 if is_ready else 400)


async def model_metadata(request: Request) -> Response:
    model = request.path_params["model"]
    version, label = version_or_label(request.path_params.get("version"))

    async def handle(ctx: CallContext) -> Response:
        gw = gateway_of(request)
        authorize(gw, ctx.headers, model)
        response, target = await gw.metadata(ctx, model, version, label)
        status = await gw.status(ctx, model, None, None)
        signature_map = messages.SignatureDefMap()
        packed = response.metadata.get("signature_def")
        if packed is not None:
            signature_map.ParseFromString(packed.value)
        signature = signature_map.signature_def.get(DEFAULT_SIGNATURE)
        platform = "tensorflow"
        if gw.registry is not None:
            resolved = (
                response.model_spec.version.value
                if response.model_spec.HasField("version")
                else None
            )
            manifest = (
                gw.registry.manifest(model, resolved) if resolved is not None else None
            )
            if manifest is not None:
                platform = manifest.framework
        ctx.route = "metadata"
        return json_response(
            {
                "name": model,
                "versions": [str(v) for v in _available_versions(status)],
                "platform": platform,
                "inputs": _tensor_entries(signature.inputs) if signature else [],
                "outputs": _tensor_entries(signature.outputs) if signature else [],
            }
        )

    return await serve_http(request, PROTOCOL, handle)


async def model_ready(request: Request) -> Response:
    model = request.path_params["model"]
    version, label = version_or_label(request.path_params.get("version"))

    async def handle(ctx: CallContext) -> Response:
        gw = gateway_of(request)
        authorize(gw, ctx.headers, model)
        status = await gw.status(ctx, model, version, label)
        is_ready = bool(_available_versions(status))
        return json_response(
            {"name": model, "ready": is_ready}, 200 if is_ready else 400
        )

    return await serve_http(request, PROTOCOL, handle)


async def infer(request: Request) -> Response:
    model = request.path_params["model"]
    version, label = version_or_label(request.path_params.get("version"))

    async def handle(ctx: CallContext) -> Response:
        gw = gateway_of(request)
        authorize(gw, ctx.headers, model)
        body = parse_json(await read_body(request, gw.settings.max_body_bytes))
        if not isinstance(body, dict):
            raise InvalidInput("the request body must be a JSON object")
        parameters = body.get("parameters") or {}
        signature_name = (
            parameters.get("signature_name", "") if isinstance(parameters, dict) else ""
        )
        parsed_holder: list[Any] = []

        def encode(signatures: SignatureSet | None) -> ArrayRequest:
            wanted = (
                signatures.input_dtypes(signature_name)
                if signatures is not None
                else None
            )
            parsed = parse_infer_request(body, wanted)
            parsed_holder[:] = [parsed]
            request = ArrayRequest(
                parsed.inputs, output_filter=tuple(parsed.outputs or ())
            )
            if isinstance(signature_name, str) and signature_name:
                request.model_spec.signature_name = signature_name
            return request

        plan = gw.plan(ctx, model, version, label)
        response = (await gw.predict(ctx, plan, PredictCall(encode))).translated
        parsed = parsed_holder[0]
        try:
            answered = output_arrays(response)
        except ProtocolError as exc:
            raise InvalidInput(exc.message) from exc
        names = parsed.outputs or sorted(answered)
        outputs = {name: answered[name] for name in names if name in answered}
        return json_response(
            format_infer_response(
                model,
                str(response.model_spec.version.value)
                if response.model_spec.HasField("version")
                else "",
                outputs,
                parsed.request_id,
            )
        )

    return await serve_http(request, PROTOCOL, handle)


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
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
    ]
