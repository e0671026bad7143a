"""TF Serving's gRPC services, bound by method path instead of generated code.

The method paths are TF Serving's (``/tensorflow.serving.PredictionService/
Predict``...), so official clients call our servers and our stubs call TF
Serving. Stubs accept a ``grpc.Channel`` or a ``grpc.aio.Channel``; the
``add_*_to_server`` helpers accept a ``grpc.Server`` or a ``grpc.aio.Server``.
Servicers for ``grpc.aio`` override the methods with ``async def``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

import grpc
from google.protobuf.message import Message

from servekit_protocol.messages import (
    ClassificationRequest,
    ClassificationResponse,
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    GetModelStatusRequest,
    GetModelStatusResponse,
    MultiInferenceRequest,
    MultiInferenceResponse,
    PredictRequest,
    PredictResponse,
    RegressionRequest,
    RegressionResponse,
    ReloadConfigRequest,
    ReloadConfigResponse,
    Serialized,
)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"

# grpc.ServicerContext or grpc.aio.ServicerContext; grpc ships no type stubs.
ServicerContext: TypeAlias = Any


@dataclass(frozen=True, slots=True)
class Method:
    """One unary RPC: its name and the messages it exchanges."""

    service: str
    name: str
    request: type[Message]
    response: type[Message]

    @property
    def path(self) -> str:
        """The HTTP/2 path gRPC uses, e.g. "/tensorflow.serving.ModelService/GetModelStatus"."""
        return f"/{self.service}/{self.name}"


PREDICTION_METHODS = (
    Method(
        PREDICTION_SERVICE, "Classify", ClassificationRequest, ClassificationResponse
    ),
    Method(PREDICTION_SERVICE, "Regress", RegressionRequest, RegressionResponse),
    Method(PREDICTION_SERVICE, "Predict", PredictRequest, PredictResponse),
    Method(
        PREDICTION_SERVICE,
        "MultiInference",
        MultiInferenceRequest,
        MultiInferenceResponse,
    ),
    Method(
        PREDICTION_SERVICE,
        "GetModelMetadata",
        GetModelMetadataRequest,
        GetModelMetadataResponse,
    ),
)
MODEL_METHODS = (
    Method(
        MODEL_SERVICE, "GetModelStatus", GetModelStatusRequest, GetModelStatusResponse
    ),
    Method(
        MODEL_SERVICE,
        "HandleReloadConfigRequest",
        ReloadConfigRequest,
        ReloadConfigResponse,
    ),
)


def _bind(channel: Any, method: Method) -> Any:
    return channel.unary_unary(
        method.path,
        request_serializer=method.request.SerializeToString,
        response_deserializer=method.response.FromString,
    )


class PredictionServiceStub:
    """Client of ``tensorflow.serving.PredictionService``.

    Each attribute is a unary-unary callable of the channel's flavour: with a
    ``grpc.aio.Channel`` calls return awaitables, otherwise responses (and
    ``.future``/``.with_call`` are available).
    """

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        self.Classify = _bind(channel, PREDICTION_METHODS[0])
        self.Regress = _bind(channel, PREDICTION_METHODS[1])
        self.Predict = _bind(channel, PREDICTION_METHODS[2])
        self.MultiInference = _bind(channel, PREDICTION_METHODS[3])
        self.GetModelMetadata = _bind(channel, PREDICTION_METHODS[4])


class ModelServiceStub:
    """Client of ``tensorflow.serving.ModelService``."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        self.GetModelStatus = _bind(channel, MODEL_METHODS[0])
        self.HandleReloadConfigRequest = _bind(channel, MODEL_METHODS[1])


def _unimplemented(context: ServicerContext, method: str) -> NoReturn:
    context.set_code(grpc.StatusCode.UNIMPLEMENTED)
    context.set_details(f"{method} is not implemented")
    raise NotImplementedError(f"{method} is not implemented")


class PredictionServiceServicer:
    """Base class of PredictionService implementations.

    Override the methods you serve, as ``def`` for ``grpc.server`` or
    ``async def`` for ``grpc.aio.server``; the others answer UNIMPLEMENTED.
    An answer already :class:`~servekit_protocol.messages.Serialized` is for
    servekit's own servers (HTTP/2 and gRPC-Web) only.
    """

    def Classify(
        self, request: ClassificationRequest, context: ServicerContext
    ) -> (
        ClassificationResponse
        | Serialized
        | Awaitable[ClassificationResponse | Serialized]
    ):
        del request
        _unimplemented(context, "Classify")

    def Regress(
        self, request: RegressionRequest, context: ServicerContext
    ) -> RegressionResponse | Serialized | Awaitable[RegressionResponse | Serialized]:
        del request
        _unimplemented(context, "Regress")

    def Predict(
        self, request: PredictRequest, context: ServicerContext
    ) -> PredictResponse | Serialized | Awaitable[PredictResponse | Serialized]:
        del request
        _unimplemented(context, "Predict")

    def MultiInference(
        self, request: MultiInferenceRequest, context: ServicerContext
    ) -> (
        MultiInferenceResponse
        | Serialized
        | Awaitable[MultiInferenceResponse | Serialized]
    ):
        del request
        _unimplemented(context, "MultiInference")

    def GetModelMetadata(
        self, request: GetModelMetadataRequest, context: ServicerContext
    ) -> GetModelMetadataResponse | Awaitable[GetModelMetadataResponse]:
        del request
        _unimplemented(context, "GetModelMetadata")


class ModelServiceServicer:
    """Base class of ModelService implementations (see PredictionServiceServicer)."""

    def GetModelStatus(
        self, request: GetModelStatusRequest, context: ServicerContext
    ) -> GetModelStatusResponse | Awaitable[GetModelStatusResponse]:
        del request
        _unimplemented(context, "GetModelStatus")

    def HandleReloadConfigRequest(
        self, request: ReloadConfigRequest, context: ServicerContext
    ) -> ReloadConfigResponse | Awaitable[ReloadConfigResponse]:
        del request
        _unimplemented(context, "HandleReloadConfigRequest")


def _handlers(servicer: object, methods: tuple[Method, ...]) -> dict[str, Any]:
    handlers: dict[str, Any] = {}
    for method in methods:
        behaviour: Callable[..., Any] = getattr(servicer, method.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=method.request.FromString,
            response_serializer=method.response.SerializeToString,
        )
    return handlers


def _register(server: Any, service: str, handlers: dict[str, Any]) -> None:
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, handlers),)
    )
    # Registered handlers skip the generic lookup on every call (grpc >= 1.63).
    register = getattr(server, "add_registered_method_handlers", None)
    if register is not None:
        register(service, handlers)


def add_prediction_service_to_server(
    servicer: PredictionServiceServicer, server: grpc.Server | grpc.aio.Server
) -> None:
    """Serve ``tensorflow.serving.PredictionService`` with this servicer."""
    _register(server, PREDICTION_SERVICE, _handlers(servicer, PREDICTION_METHODS))


def add_model_service_to_server(
    servicer: ModelServiceServicer, server: grpc.Server | grpc.aio.Server
) -> None:
    """Serve ``tensorflow.serving.ModelService`` with this servicer."""
    _register(server, MODEL_SERVICE, _handlers(servicer, MODEL_METHODS))


__all__ = [
    "MODEL_METHODS",
    "MODEL_SERVICE",
    "PREDICTION_METHODS",
    "PREDICTION_SERVICE",
    "Method",
    "ModelServiceServicer",
    "ModelServiceStub",
    "PredictionServiceServicer",
    "PredictionServiceStub",
    "ServicerContext",
    "add_model_service_to_server",
    "add_prediction_service_to_server",
]
