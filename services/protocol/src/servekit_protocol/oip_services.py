"""The Open Inference Protocol's ``inference.GRPCInferenceService``, bound by path.

The method paths are the official ones (``/inference.GRPCInferenceService/
ModelInfer``...), so tritonclient's and kserve's gRPC clients call our servers
and our stub calls Triton, KServe or MLServer. Like
:mod:`servekit_protocol.services`, the stub accepts a ``grpc.Channel`` or a
``grpc.aio.Channel`` and ``add_inference_service_to_server`` a ``grpc.Server``,
a ``grpc.aio.Server`` or servekit's own gRPC server.
"""

from __future__ import annotations

from collections.abc import Awaitable

import grpc

from servekit_protocol import oip_messages as oip
from servekit_protocol.messages import Serialized
from servekit_protocol.services import (
    Method,
    ServicerContext,
    _bind,
    _handlers,
    _register,
    _unimplemented,
)

INFERENCE_SERVICE = "inference.GRPCInferenceService"

INFERENCE_METHODS = (
    Method(
        INFERENCE_SERVICE, "ServerLive", oip.ServerLiveRequest, oip.ServerLiveResponse
    ),
    Method(
        INFERENCE_SERVICE,
        "ServerReady",
        oip.ServerReadyRequest,
        oip.ServerReadyResponse,
    ),
    Method(
        INFERENCE_SERVICE, "ModelReady", oip.ModelReadyRequest, oip.ModelReadyResponse
    ),
    Method(
        INFERENCE_SERVICE,
        "ServerMetadata",
        oip.ServerMetadataRequest,
        oip.ServerMetadataResponse,
    ),
    Method(
        INFERENCE_SERVICE,
        "ModelMetadata",
        oip.ModelMetadataRequest,
        oip.ModelMetadataResponse,
    ),
    Method(
        INFERENCE_SERVICE, "ModelInfer", oip.ModelInferRequest, oip.ModelInferResponse
    ),
    Method(
        INFERENCE_SERVICE,
        "ModelConfig",
        oip.ModelConfigRequest,
        oip.ModelConfigResponse,
    ),
)


class GRPCInferenceServiceStub:
    """Client of ``inference.GRPCInferenceService`` (unary methods)."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        bound = {method.name: _bind(channel, method) for method in INFERENCE_METHODS}
        self.ServerLive = bound["ServerLive"]
        self.ServerReady = bound["ServerReady"]
        self.ModelReady = bound["ModelReady"]
        self.ServerMetadata = bound["ServerMetadata"]
        self.ModelMetadata = bound["ModelMetadata"]
        self.ModelInfer = bound["ModelInfer"]
        self.ModelConfig = bound["ModelConfig"]


class GRPCInferenceServiceServicer:
    """Base class of GRPCInferenceService implementations.

    Override the methods you serve (``async def`` for asyncio servers); the
    others answer UNIMPLEMENTED. Triton's statistics, repository,
    shared-memory, trace, log and streaming methods are not registered, so
    calling them answers UNIMPLEMENTED too.
    """

    def ServerLive(
        self, request: oip.ServerLiveRequest, context: ServicerContext
    ) -> oip.ServerLiveResponse | Awaitable[oip.ServerLiveResponse]:
        del request
        _unimplemented(context, "ServerLive")

    def ServerReady(
        self, request: oip.ServerReadyRequest, context: ServicerContext
    ) -> oip.ServerReadyResponse | Awaitable[oip.ServerReadyResponse]:
        del request
        _unimplemented(context, "ServerReady")

    def ModelReady(
        self, request: oip.ModelReadyRequest, context: ServicerContext
    ) -> oip.ModelReadyResponse | Awaitable[oip.ModelReadyResponse]:
        del request
        _unimplemented(context, "ModelReady")

    def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: ServicerContext
    ) -> oip.ServerMetadataResponse | Awaitable[oip.ServerMetadataResponse]:
        del request
        _unimplemented(context, "ServerMetadata")

    def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: ServicerContext
    ) -> oip.ModelMetadataResponse | Awaitable[oip.ModelMetadataResponse]:
        del request
        _unimplemented(context, "ModelMetadata")

    def ModelInfer(
        self, request: oip.ModelInferRequest, context: ServicerContext
    ) -> (
        oip.ModelInferResponse
        | Serialized
        | Awaitable[oip.ModelInferResponse | Serialized]
    ):
        """An answer already :class:`~servekit_protocol.messages.Serialized` is
        sent as its bytes (a large answer written off the event loop)."""
        del request
        _unimplemented(context, "ModelInfer")

    def ModelConfig(
        self, request: oip.ModelConfigRequest, context: ServicerContext
    ) -> oip.ModelConfigResponse | Awaitable[oip.ModelConfigResponse]:
        del request
        _unimplemented(context, "ModelConfig")


def add_inference_service_to_server(
    servicer: GRPCInferenceServiceServicer, server: grpc.Server | grpc.aio.Server
) -> None:
    """Serve ``inference.GRPCInferenceService`` with this servicer."""
    _register(server, INFERENCE_SERVICE, _handlers(servicer, INFERENCE_METHODS))


__all__ = [
    "INFERENCE_METHODS",
    "INFERENCE_SERVICE",
    "GRPCInferenceServiceServicer",
    "GRPCInferenceServiceStub",
    "add_inference_service_to_server",
]
