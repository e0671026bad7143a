"""gRPC-Web on the REST port: the gRPC API's unary methods over HTTP/1.1.

``POST /tensorflow.serving.PredictionService/Predict`` (and every other method of
PredictionService and ModelService) with ``Content-Type: application/grpc-web``
(or ``application/grpc-web-text``) runs the same servicer as the gRPC port, so
the answers, status codes and messages are the gRPC API's. Not in TF Serving:
browsers can call the model server without an Envoy in front, and the gateway
uses it to reach its backends through the cheap HTTP/1.1 path instead of a
second Python gRPC call (:mod:`gateway.clients.grpcweb`).

Errors are answered "trailers-only": HTTP 200 with ``grpc-status`` and
``grpc-message`` in the headers and no body. A path of these services sent with
another content type gets 415, as a gRPC server answers it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from servekit_protocol import grpcweb, messages
from servekit_protocol.errors import ProtocolError

from modelserver.dataplane import DataPlane
from modelserver.protocol.grpc.servicer import ModelServicer, PredictionServicer

PROTOCOL = "grpc-web"
"""The ``protocol`` label of these calls in metrics and logs."""
SERVICE_PREFIX = "/tensorflow.serving."
_GRPC_STATUS = b"grpc-status"
_GRPC_MESSAGE = b"grpc-message"

HeaderList = list[tuple[bytes, bytes]]
Method = Callable[[Any, Any], Awaitable[Message]]


class Aborted(Exception):
    """What ``context.abort`` raises: the call ends with this status."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str]]
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = tuple(trailing)


class WebContext:
    """The part of ``grpc.aio.ServicerContext`` the servicers use."""

    def __init__(
        self, metadata: Sequence[tuple[str, str]], deadline: float | None
    ) -> None:
        self._metadata = tuple(metadata)
        self._deadline = deadline
        self.trailing: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.trailing = tuple(metadata)

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        raise Aborted(code, details, trailing_metadata or self.trailing)


class GrpcWebAnswer:
    """Status, headers and body of one gRPC-Web call's HTTP answer."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: HeaderList, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class GrpcWeb:
    """Dispatches gRPC-Web calls to the gRPC API's servicers."""

    def __init__(self, dataplane: DataPlane) -> None:
        prediction = PredictionServicer(dataplane, PROTOCOL)
        models = ModelServicer(dataplane, PROTOCOL)
        service = "/tensorflow.serving.PredictionService/"
        model_service = "/tensorflow.serving.ModelService/"
        self._methods: dict[str, tuple[type[Message], Method]] = {
            service + "Predict": (messages.PredictRequest, prediction.Predict),
            service + "Classify": (messages.ClassificationRequest, prediction.Classify),
            service + "Regress": (messages.RegressionRequest, prediction.Regress),
            service + "MultiInference": (
                messages.MultiInferenceRequest,
                prediction.MultiInference,
            ),
            service + "GetModelMetadata": (
                messages.GetModelMetadataRequest,
                prediction.GetModelMetadata,
            ),
            model_service + "GetModelStatus": (
                messages.GetModelStatusRequest,
                models.GetModelStatus,
            ),
            model_service + "HandleReloadConfigRequest": (
                messages.ReloadConfigRequest,
                models.HandleReloadConfigRequest,
            ),
        }

    @staticmethod
    def claims(raw_path: str) -> bool:
        """Whether the path belongs to a gRPC service (not to the REST API)."""
        return raw_path.startswith(SERVICE_PREFIX)

    async def call(
        self,
        raw_path: str,
        content_type: bytes,
        body: bytes,
        metadata: Sequence[tuple[str, str]],
        timeout_header: str | None,
    ) -> GrpcWebAnswer:
        """Run one unary call; every outcome is a gRPC status, never an exception."""
        text = grpcweb.is_text(content_type)
        answer_type = grpcweb.TEXT_CONTENT_TYPE if text else grpcweb.CONTENT_TYPE
        context = WebContext(metadata, None)
        try:
            entry = self._methods.get(raw_path)
            if entry is None:
                raise Aborted(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"Method not found: {raw_path.lstrip('/')}",
                    (),
                )
            request_type, method = entry
            if timeout_header is not None:
                context = WebContext(
                    metadata,
                    time.monotonic() + grpcweb.decode_timeout(timeout_header),
                )
            if text:
                body = grpcweb.decode_text(body)
            try:
                request = request_type.FromString(grpcweb.request_message(body))
            except DecodeError as exc:
                raise Aborted(
                    grpc.StatusCode.INTERNAL,
                    f"Failed to parse the request as {request_type.__name__}: {exc}",
                    (),
                ) from exc
            response = await method(request, context)
        except Aborted as exc:
            return _trailers_only(answer_type, exc.code, exc.details, exc.trailing)
        except ProtocolError as exc:
            return _trailers_only(
                answer_type, grpc.StatusCode.INVALID_ARGUMENT, exc.message, ()
            )
        payload = grpcweb.frame(response.SerializeToString()) + grpcweb.trailer_frame(
            grpcweb.OK, "", context.trailing
        )
        if text:
            payload = base64.b64encode(payload)
        return GrpcWebAnswer(200, [(b"content-type", answer_type)], payload)


def unsupported_media() -> GrpcWebAnswer:
    """The answer to a service path sent without a gRPC-Web content type."""
    body = b'{"error": "gRPC-Web calls need Content-Type: application/grpc-web"}'
    return GrpcWebAnswer(415, [(b"content-type", b"application/json")], body)


def error_answer(
    content_type: bytes, code: grpc.StatusCode, details: str
) -> GrpcWebAnswer:
    """A trailers-only answer for a failure before the call ran (body limits)."""
    answer_type = (
        grpcweb.TEXT_CONTENT_TYPE
        if grpcweb.is_text(content_type)
        else grpcweb.CONTENT_TYPE
    )
    return _trailers_only(answer_type, code, details, ())


def _trailers_only(
    answer_type: bytes,
    code: grpc.StatusCode,
    details: str,
    trailing: Sequence[tuple[str, str]],
) -> GrpcWebAnswer:
    headers: HeaderList = [
        (b"content-type", answer_type),
        (_GRPC_STATUS, b"%d" % code.value[0]),
        (_GRPC_MESSAGE, grpcweb.encode_status_message(details).encode("latin-1")),
    ]
    headers.extend(
        (key.encode("latin-1"), value.encode("latin-1"))
        for key, value in trailing
        if key != "x-request-id"
    )
    return GrpcWebAnswer(200, headers, b"")
