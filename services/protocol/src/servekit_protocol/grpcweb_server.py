"""Answer unary gRPC-Web calls with the grpc.aio servicers of TF Serving's services.

The model server and the gateway both serve gRPC-Web on their HTTP port by
running their gRPC servicer methods unchanged: :class:`WebContext` gives a method
the part of ``grpc.aio.ServicerContext`` the servicers use, and ``abort`` ends the
call with a status. :func:`call_unary` turns every outcome into an HTTP answer:
200 with the response frame and a trailer frame, or "trailers-only" (200 with
``grpc-status`` and ``grpc-message`` in the headers, no body) on failure.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError, Message

from servekit_protocol import grpcweb, messages
from servekit_protocol.byte_parts import byte_views, take
from servekit_protocol.errors import ProtocolError
from servekit_protocol.logs import (
    REQUEST_ID_HEADER,
    bind_request_id,
    incoming_request_id,
)
from servekit_protocol.services import MODEL_SERVICE, PREDICTION_SERVICE
from servekit_protocol.text_bodies import TextBody

if TYPE_CHECKING:
    from servekit_protocol.grpc_server.calls import OffloadedDecoder

logger = logging.getLogger(__name__)

SERVICE_PREFIX = "/tensorflow.serving."
"""Paths of TF Serving's gRPC services (not of any REST API)."""

Method = Callable[[Any, Any], Awaitable[Message]]
UnaryMethods = Mapping[str, tuple[type[Message], Method]]
Headers = list[tuple[bytes, bytes]]


class Aborted(Exception):
    """What :meth:`WebContext.abort` raises: the call ends with this status."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = tuple(trailing)


class WebContext:
    """The part of ``grpc.aio.ServicerContext`` TF Serving's servicers use."""

    def __init__(
        self, metadata: Sequence[tuple[str, str | bytes]], deadline: float | None
    ) -> None:
        self._metadata = tuple(metadata)
        self._deadline = deadline
        self.trailing: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def bind_request_id(self, protocol: str) -> None:
        """Bind the call's request id before its handler does: decoding a
        large message may log (a warning when it goes to a worker through the
        pipe). A fresh id, when the caller sent none or one that is replaced,
        goes into the metadata, from which the handler binds the same id."""
        incoming = incoming_request_id(self._metadata)
        request_id = bind_request_id(incoming, protocol)
        if request_id != incoming:
            kept = (item for item in self._metadata if item[0] != REQUEST_ID_HEADER)
            self._metadata = (*kept, (REQUEST_ID_HEADER, request_id))

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


Body = tuple[bytes | memoryview, ...]
"""An answer's body as the parts it is written in, in order."""
JOIN_BELOW_BYTES = 64 * 1024
"""An answer's body smaller than this is joined into one part: copying a few
KiB costs less than writing each part on its own."""


@dataclass(slots=True)
class WebAnswer:
    """Status, headers and body of one call's HTTP answer.

    The body is in parts (a large answer's message prefix, message and trailer
    frame), so that the message is written as the bytes it was serialized to,
    never copied into one joined body on the event loop.
    """

    status: int
    headers: Headers
    parts: Body

    @property
    def length(self) -> int:
        """Bytes of the body."""
        return sum(len(part) for part in self.parts)

    def body_events(self) -> list[dict[str, Any]]:
        """The ASGI ``http.response.body`` events that send the body, one a part
        (the server writes each as it is)."""
        last = len(self.parts) - 1
        return [
            {"type": "http.response.body", "body": part, "more_body": index < last}
            for index, part in enumerate(self.parts)
        ] or [{"type": "http.response.body", "body": b""}]


def tf_serving_methods(prediction: Any, models: Any) -> dict[str, tuple[Any, Method]]:
    """Path → (request message, servicer method) for PredictionService and
    ModelService servicers."""
    service = f"/{PREDICTION_SERVICE}/"
    model_service = f"/{MODEL_SERVICE}/"
    return {
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


def unsupported_media() -> WebAnswer:
    """The answer to a service path sent without a gRPC-Web content type (415,
    as a gRPC server answers a wrong content type)."""
    body = b'{"error": "gRPC-Web calls need Content-Type: application/grpc-web"}'
    return WebAnswer(415, [(b"content-type", b"application/json")], (body,))


def error_answer(content_type: bytes, code: grpc.StatusCode, details: str) -> WebAnswer:
    """A trailers-only answer for a failure before the call ran (body limits)."""
    return _trailers_only(_answer_type(content_type), code, details, ())


def header_metadata(
    headers: Sequence[tuple[bytes, bytes]],
) -> tuple[list[tuple[str, str]], str | None]:
    """A request's headers as call metadata, and its ``grpc-timeout`` if any."""
    metadata = [
        (key.decode("latin-1"), value.decode("latin-1")) for key, value in headers
    ]
    timeout = next((value for key, value in metadata if key == "grpc-timeout"), None)
    return metadata, timeout


async def call_unary(
    methods: UnaryMethods,
    raw_path: str,
    content_type: bytes,
    received: bytes | TextBody,
    metadata: Sequence[tuple[str, str]],
    timeout_header: str | None,
    offloaded: Mapping[str, OffloadedDecoder] | None = None,
) -> WebAnswer:
    """Run one unary call; every outcome is a gRPC status, never an exception
    (a servicer's own unexpected errors are its ``abort`` to make).

    ``received`` is the body as read, or a ``grpc-web-text`` body decoded
    while it was read; a text body's base64 error is answered here, after the
    checks that come before it (method, metadata, timeout).

    ``offloaded`` gives, by path, the decoders of large messages, as on the
    gRPC port (:meth:`~servekit_protocol.grpc_server.GrpcServer.offload_decoding`).
    """
    text = grpcweb.is_text(content_type)
    answer_type = _answer_type(content_type)
    try:
        context = WebContext(_binary_values(metadata), None)
        entry = methods.get(raw_path)
        if entry is None:
            raise Aborted(
                grpc.StatusCode.UNIMPLEMENTED,
                f"Method not found: {raw_path.lstrip('/')}",
                (),
            )
        request_type, method = entry
        if timeout_header is not None:
            deadline = time.monotonic() + grpcweb.decode_timeout(timeout_header)
            context = WebContext(context.invocation_metadata(), deadline)
        if isinstance(received, TextBody):
            body = await received.decoded()
        elif text and len(received) >= grpcweb.TEXT_IN_THREAD_BYTES:
            body = await asyncio.to_thread(grpcweb.decode_text, received)
        elif text:
            body = grpcweb.decode_text(received)
        else:
            body = received
        decoder = offloaded.get(raw_path) if offloaded else None
        try:
            if decoder is not None and len(body) >= decoder.threshold_bytes:
                # A view: copying hundreds of MiB would hold the loop too.
                message = grpcweb.request_message(memoryview(body))  # type: ignore[arg-type]
                if len(message) >= decoder.threshold_bytes:
                    context.bind_request_id("grpc-web")
                    request = await decoder.decode(memoryview(message))
                else:
                    request = request_type.FromString(message)
            else:
                request = request_type.FromString(grpcweb.request_message(body))
        except DecodeError as exc:
            # The gRPC port's words (the error names the type): a gateway that
            # forwards a large message unparsed passes on its backend's answer,
            # whichever of the two the backend was called on.
            raise Aborted(
                grpc.StatusCode.INTERNAL,
                f"Failed to parse the request: {exc}",
                (),
            ) from exc
        response = await method(request, context)
    except Aborted as exc:
        return _trailers_only(answer_type, exc.code, exc.details, exc.trailing)
    except ProtocolError as exc:
        return _trailers_only(
            answer_type, grpc.StatusCode.INVALID_ARGUMENT, exc.message, ()
        )
    return WebAnswer(
        200,
        [(b"content-type", answer_type)],
        await _answer_body(response.SerializeToString(), context.trailing, text),
    )


async def _answer_body(
    serialized: bytes | memoryview, trailing: Sequence[tuple[str, str]], text: bool
) -> Body:
    """The parts of a successful answer's body: the message's frame and the
    trailer frame, in base64 for ``grpc-web-text``."""
    parts: Body = (
        grpcweb.prefix(len(serialized)),
        serialized,
        grpcweb.trailer_frame(grpcweb.OK, "", trailing),
    )
    size = sum(len(part) for part in parts)
    if text:
        if size >= grpcweb.TEXT_IN_THREAD_BYTES:
            return await asyncio.to_thread(_encode_text, parts)
        return _encode_text(parts)
    if size < JOIN_BELOW_BYTES:
        return (b"".join(parts),)
    return parts


_TEXT_PIECE_BYTES = 3 * 256 * 1024
"""Bytes encoded to base64 in one call: a multiple of three, so that the
pieces' encodings, one after the other, are the encoding of the whole (no
padding between them), and each call is short: run in a thread, the event loop
gets the GIL back between pieces."""


def _encode_text(parts: Body) -> Body:
    """``parts`` in base64 (``grpc-web-text``), as pieces."""
    pending = byte_views(parts)
    encoded: list[bytes] = []
    while pending:
        encoded.append(
            binascii.b2a_base64(take(pending, _TEXT_PIECE_BYTES), newline=False)
        )
    return tuple(encoded)


def _binary_values(
    metadata: Sequence[tuple[str, str]],
) -> list[tuple[str, str | bytes]]:
    """``metadata`` with ``-bin`` values decoded, as the gRPC port gives them to
    a servicer (base64, padded or not, as gRPC-Web carries them in headers).

    Raises:
        Aborted: INVALID_ARGUMENT for a value that is not base64.
    """
    decoded: list[tuple[str, str | bytes]] = []
    for key, value in metadata:
        if not key.endswith("-bin"):
            decoded.append((key, value))
            continue
        raw = value.encode("latin-1")
        try:
            binary = binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
        except binascii.Error as exc:
            # A client's mistake, not the server's: one line, no traceback.
            logger.info("gRPC-Web call: malformed %s metadata: %s", key, exc)
            raise Aborted(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Malformed base64 in metadata {key!r}",
            ) from None
        decoded.append((key, binary))
    return decoded


def _answer_type(content_type: bytes) -> bytes:
    if grpcweb.is_text(content_type):
        return grpcweb.TEXT_CONTENT_TYPE
    return grpcweb.CONTENT_TYPE


def _trailers_only(
    answer_type: bytes,
    code: grpc.StatusCode,
    details: str,
    trailing: Sequence[tuple[str, str]],
) -> WebAnswer:
    headers: Headers = [
        (b"content-type", answer_type),
        (b"grpc-status", b"%d" % code.value[0]),
        (
            b"grpc-message",
            grpcweb.encode_status_message(details).encode("latin-1"),
        ),
    ]
    # The HTTP layer sends x-request-id itself.
    headers.extend(
        (key.encode("latin-1"), value.encode("latin-1"))
        for key, value in trailing
        if key != "x-request-id"
    )
    return WebAnswer(200, headers, ())
