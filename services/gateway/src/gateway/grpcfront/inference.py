"""`inference.GRPCInferenceService` (the Open Inference Protocol over gRPC).

Model methods go through `GrpcFront.serve` like TF Serving's services on this
port: the same credentials, admission limit, deadline, request id, metrics and
error table; the work is `gateway.oip`'s, shared with the HTTP routes. Server
liveness, readiness and metadata need no credentials, as on HTTP. A ModelInfer
message from ``GATEWAY_GRPC_PARSE_OFFLOAD_BYTES`` up is never parsed whole on
the event loop: its raw inputs are written into the backend's Predict as
they came (`codecs.v2_spliced`), any other is parsed in the JSON workers,
handed there through shared memory (`grpcfront.infer_segments`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
from servekit_protocol import oip_messages as oip
from servekit_protocol.messages import Serialized
from servekit_protocol.oip_services import GRPCInferenceServiceServicer
from servekit_protocol.services import ServicerContext

import gateway
from gateway import oip as plane
from gateway.codecs.v2 import InferRequest
from gateway.codecs.v2_grpc import (
    EncodedInfer,
    InferMessage,
    format_model_infer,
    parameters_dict,
    parse_model_infer,
)
from gateway.codecs.v2_grpc_answer import (
    built_answer,
    outputs_size,
    write_infer_answer,
)
from gateway.codecs.v2_spliced import (
    RawInfer,
    SplicedInfer,
    encode_raw_infer,
)
from gateway.context import CallContext
from gateway.grpcfront.infer_segments import encode_infer, release
from gateway.grpcfront.servicer import GrpcFront
from gateway.routes.health import ReadinessCache

Wanted = Mapping[str, np.dtype[Any]] | None
"""The target's input dtypes, when known."""

SERVER_NAME = "servekit-gateway"
# Triton's model configuration names TF Serving's SavedModels this way.
CONFIG_PLATFORMS = {"tensorflow": "tensorflow_savedmodel"}


def _config_tensor_type(datatype: str) -> oip.DataType.ValueType:
    return oip.DataType.Value(
        "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
    )


class InferenceProxy(GRPCInferenceServiceServicer):
    """The Open Inference Protocol's gRPC service in front of the routed backends."""

    def __init__(self, front: GrpcFront, readiness: ReadinessCache) -> None:
        self._front = front
        self._gateway = front.gateway
        self._readiness = readiness
        threshold = front.gateway.settings.grpc_parse_offload_bytes
        self._keep_answer_from = threshold if threshold > 0 else None
        """Answers from this size come back as the backend's bytes (`clients.answers`), written off the loop."""

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: ServicerContext
    ) -> oip.ServerLiveResponse:
        del request, context
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: ServicerContext
    ) -> oip.ServerReadyResponse:
        del request, context
        ready, _ = await self._readiness.check()
        return oip.ServerReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: ServicerContext
    ) -> oip.ServerMetadataResponse:
        del request, context
        return oip.ServerMetadataResponse(
            name=SERVER_NAME,
            version=gateway.__version__,
            extensions=list(plane.EXTENSIONS),
        )

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: ServicerContext
    ) -> oip.ModelReadyResponse:
        async def handle(ctx: CallContext) -> oip.ModelReadyResponse:
            ready = await plane.model_ready(
                self._gateway, ctx, request.name, request.version
            )
            return oip.ModelReadyResponse(ready=ready)

        return await self._front.serve(context, "ModelReady", request.name, handle)

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: ServicerContext
    ) -> oip.ModelMetadataResponse:
        async def handle(ctx: CallContext) -> oip.ModelMetadataResponse:
            info = await plane.model_info(
                self._gateway, ctx, request.name, request.version
            )
            response = oip.ModelMetadataResponse(
                name=info.name, versions=info.versions, platform=info.platform
            )
            for tensors, entries in (
                (info.inputs, response.inputs),
                (info.outputs, response.outputs),
            ):
                for tensor in tensors:
                    entries.add(
                        name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
                    )
            return response

        return await self._front.serve(context, "ModelMetadata", request.name, handle)

    async def ModelConfig(
        self, request: oip.ModelConfigRequest, context: ServicerContext
    ) -> oip.ModelConfigResponse:
        async def handle(ctx: CallContext) -> oip.ModelConfigResponse:
            info = await plane.model_info(
                self._gateway, ctx, request.name, request.version
            )
            config = oip.ModelConfig(
                name=info.name,
                platform=CONFIG_PLATFORMS.get(info.platform, info.platform),
                backend=info.platform,
                # The signature's shapes include the batch dimension (-1).
                max_batch_size=0,
            )
            for tensor in info.inputs:
                config.input.add(
                    name=tensor.name,
                    data_type=_config_tensor_type(tensor.datatype),
                    dims=tensor.shape,
                )
            for tensor in info.outputs:
                config.output.add(
                    name=tensor.name,
                    data_type=_config_tensor_type(tensor.datatype),
                    dims=tensor.shape,
                )
            return oip.ModelConfigResponse(config=config)

        return await self._front.serve(context, "ModelConfig", request.name, handle)

    async def ModelInfer(
        self,
        request: oip.ModelInferRequest | InferMessage | RawInfer,
        context: ServicerContext,
    ) -> oip.ModelInferResponse | Serialized:
        """A large message comes as a `RawInfer` (its raw inputs checked and
        written into the backend's Predict in a thread) or an `InferMessage`
        (parsed, checked and encoded for the backend in a worker process); it
        is routed and answered the same way. A large answer, whatever the
        request's size, is kept as the backend's bytes and written in a thread
        (`codecs.v2_grpc_answer`); so is a large share of a merged call's
        answer, which comes decoded."""
        parse: Callable[
            [Wanted],
            InferRequest
            | Awaitable[InferRequest]
            | Awaitable[EncodedInfer]
            | Awaitable[SplicedInfer],
        ]
        if isinstance(request, RawInfer):
            parameters = parameters_dict(request.head.parameters)
            raw = True
            spliced = request
            limits = self._gateway.gatekeeper.tensor_limits

            async def parse(wanted: Wanted) -> SplicedInfer:
                return await asyncio.to_thread(
                    encode_raw_infer, spliced, wanted, limits
                )

        elif isinstance(request, InferMessage):
            parameters = request.parameters
            raw = request.raw
            message = request
            parsers = self._gateway.parsers
            limits = self._gateway.gatekeeper.tensor_limits

            async def parse(wanted: Wanted) -> EncodedInfer:
                return await encode_infer(parsers, message, wanted, limits)

        else:
            parameters = parameters_dict(request.parameters)
            raw = bool(request.raw_input_contents)
            parsed = request

            def parse(wanted: Wanted) -> InferRequest:
                return parse_model_infer(parsed, wanted)

        async def handle(ctx: CallContext) -> oip.ModelInferResponse | Serialized:
            ctx.keep_answer_from = self._keep_answer_from
            answer = await plane.infer(
                self._gateway,
                ctx,
                request.model_name,
                request.model_version,
                plane.signature_name(parameters),
                parse,
            )
            # Answer in the form the client used: raw bytes for raw inputs.
            if answer.received is not None:
                return Serialized(
                    await asyncio.to_thread(
                        write_infer_answer,
                        request.model_name,
                        answer.model_version,
                        answer.received,
                        answer.request,
                        raw,
                    )
                )
            keep_from = self._keep_answer_from
            if keep_from is not None and outputs_size(answer.outputs) >= keep_from:
                # Decoded already (a merged call's share): written in a
                # thread all the same.
                return Serialized(
                    await asyncio.to_thread(
                        built_answer,
                        request.model_name,
                        answer.model_version,
                        answer.outputs,
                        answer.request,
                        raw,
                    )
                )
            return format_model_infer(
                request.model_name,
                answer.model_version,
                answer.outputs,
                answer.request,
                raw=raw,
            )

        try:
            return await self._front.serve(
                context, "ModelInfer", request.model_name, handle
            )
        finally:
            if isinstance(request, InferMessage):
                release(request)


__all__ = ["InferenceProxy"]
