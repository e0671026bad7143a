"""The REST API as a lean raw ASGI application (TF Serving's ``--rest_api_port``).

No framework: one ASGI callable reads the body once, picks a handler from the
route table in :mod:`.routes` (two precompiled regular expressions), awaits the
dataplane and writes the JSON answer. This keeps the per-request cost near a
bare ASGI app's, which matters because batching can only amortise the model
call, not the HTTP layer.

Besides the TF Serving API it serves the Prometheus text at the monitoring
config's path when enabled, and gRPC-Web: ``POST
/tensorflow.serving.<Service>/<Method>`` with ``Content-Type:
application/grpc-web`` runs the gRPC port's servicer
(:mod:`servekit_protocol.grpcweb_server`), so answers and status codes are the
gRPC API's. Not in TF Serving: browsers can call it without a proxy, and the
gateway reaches its backends this way, an HTTP/1.1 exchange costing both sides
less than a Python gRPC call. Bodies sent with ``Content-Encoding: gzip`` are
inflated (as TF Serving does; ``deflate`` too), mostly in a thread so the event
loop keeps serving others. Request bodies, inflated or not, are limited to
``max_body_bytes`` (413 beyond). Every answer carries ``x-request-id``.

Readiness, as the Open Inference Protocol spells it (not in TF Serving, whose
``GET /v1/models/<m>`` answers 200 while a model is still LOADING):
``GET /v2/health/ready`` is 200 when every configured model has its wanted
versions loaded (``DataPlane.ready``) and 400 with ``waiting_for`` otherwise;
``GET /v2/health/live`` is 200 while the process serves. Kubernetes and Compose
probe these.

Failed requests are logged at INFO; successful ones only at DEBUG (an access
log), which costs nothing on the hot path when disabled.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from servekit_protocol import grpcweb_server, json_codec
from servekit_protocol.bodies import BodyTooLarge, coding_of, inflate, too_large_message
from servekit_protocol.buffers import join_chunks, release_later
from servekit_protocol.errors import ProtocolError
from servekit_protocol.grpc_codes import to_grpc
from servekit_protocol.grpc_server import OffloadedDecoder
from servekit_protocol.grpcweb import is_grpc_web, is_text
from servekit_protocol.logs import (
    REQUEST_ID_HEADER,
    bind_model,
    bind_request_id,
    version_var,
)
from servekit_protocol.services import PREDICTION_SERVICE
from servekit_protocol.text_bodies import TextBody

from modelserver.dataplane import DataPlane
from modelserver.errors import InvalidInput, ServingError
from modelserver.protocol.grpc.largeanswers import AnswerWriter
from modelserver.protocol.grpc.largeexamples import large_message_decoders
from modelserver.protocol.grpc.servicer import ModelServicer, PredictionServicer
from modelserver.protocol.rest.errors import (
    PayloadTooLarge,
    error_body,
    internal_error_body,
)
from modelserver.protocol.rest.routes import Routes, is_api_path

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024
"""Largest request body accepted (after gzip inflation), as the gRPC limit."""

_REQUEST_ID_HEADER = REQUEST_ID_HEADER.encode()
GRPC_WEB_PROTOCOL = "grpc-web"
"""The ``protocol`` label of gRPC-Web calls in metrics and logs."""
_MODEL_VERSION_HEADER = b"x-model-version"
_JSON_CONTENT_TYPE = (b"content-type", b"application/json")
_READY_PATH = "/v2/health/ready"
_LIVE_PATH = "/v2/health/live"
_TEXT_CONTENT_TYPE = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
_CORS_HEADERS = (
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"POST, GET"),
    # TF Serving allows Content-Type; gRPC-Web clients also send these, and
    # read their status from headers a browser hides unless exposed.
    (
        b"access-control-allow-headers",
        b"Content-Type, X-Grpc-Web, X-User-Agent, Grpc-Timeout, X-Request-Id",
    ),
    (b"access-control-expose-headers", b"Grpc-Status, Grpc-Message, X-Request-Id"),
)


class RestApp:
    """ASGI application serving TF Serving's REST API over a :class:`DataPlane`.

    Args:
        dataplane: Where every API call goes.
        timeout: Seconds a predict/classify/regress call may take (TF Serving's
            ``--rest_api_timeout_in_ms``); ``None`` for no limit.
        metrics_path: Path of the Prometheus endpoint, or ``None`` when disabled.
        render_metrics: Returns the Prometheus text page.
        enable_cors: Add TF Serving's permissive CORS headers.
        max_body_bytes: Request body limit (after inflation).
        packed_outputs: Answer gRPC-Web Predict calls with ``tensor_content``
            rather than the typed fields.
        parsers: Where JSON bodies are parsed (large ones off the event loop);
            the default parses from 1 MiB up in worker processes.
        grpc_parse_offload_bytes: gRPC-Web messages this large or larger are
            parsed in ``parsers``, as on the gRPC port; 0 parses every one on
            the event loop.
    """

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        timeout: float | None = None,
        metrics_path: str | None = None,
        render_metrics: Callable[[], bytes] | None = None,
        enable_cors: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        packed_outputs: bool = False,
        parsers: json_codec.BodyParsers | None = None,
        grpc_parse_offload_bytes: int = 0,
    ) -> None:
        self._dataplane = dataplane
        if parsers is None:
            parsers = json_codec.BodyParsers()
        self._routes = Routes(dataplane, timeout=timeout, parsers=parsers)
        self._grpc_web = grpcweb_server.tf_serving_methods(
            PredictionServicer(
                dataplane,
                GRPC_WEB_PROTOCOL,
                packed_outputs=packed_outputs,
                answers=AnswerWriter(parsers),
            ),
            ModelServicer(dataplane, GRPC_WEB_PROTOCOL),
        )
        self._grpc_web_decoders = (
            {
                f"/{PREDICTION_SERVICE}/{method}": OffloadedDecoder(
                    decoder, grpc_parse_offload_bytes
                )
                for method, decoder in large_message_decoders(
                    parsers, dataplane.tensor_limits
                ).items()
            }
            if grpc_parse_offload_bytes > 0
            else {}
        )
        self._metrics_path = metrics_path if render_metrics is not None else None
        self._render_metrics = render_metrics
        self._extra_headers: tuple[tuple[bytes, bytes], ...] = (
            _CORS_HEADERS if enable_cors else ()
        )
        self._max_body_bytes = max_body_bytes

    def _health(self, raw_path: str) -> tuple[int, bytes]:
        # OIP: 200 means true, a 4xx false.
        dataplane = self._dataplane
        if raw_path == _LIVE_PATH:
            live = dataplane.live()
            return (200 if live else 400), json.dumps({"live": live}).encode()
        if dataplane.ready():
            return 200, b'{"ready": true}'
        waiting = {"ready": False, "waiting_for": dataplane.waiting_for()}
        return 400, json.dumps(waiting).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _handle_lifespan(receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming_id: bytes | None = None
        content_encoding = b""
        content_type_header = b""
        origin = b""
        for key, value in scope["headers"]:
            if key == _REQUEST_ID_HEADER:
                incoming_id = value
            elif key == b"content-encoding":
                content_encoding = value
            elif key == b"content-type":
                content_type_header = value
            elif key == b"origin":
                origin = value
        started = time.perf_counter()
        request_id = bind_request_id(incoming_id, "rest")
        method: str = scope["method"]
        raw_path = _raw_path(scope)
        if method == "POST" and raw_path.startswith(grpcweb_server.SERVICE_PREFIX):
            await self._grpc_web_call(
                scope,
                receive,
                send,
                raw_path,
                (content_type_header, content_encoding),
                request_id,
            )
            return
        status = 200
        content_type = _JSON_CONTENT_TYPE
        try:
            if raw_path == self._metrics_path and self._render_metrics is not None:
                content_type = _TEXT_CONTENT_TYPE
                payload = self._render_metrics()
            elif method == "GET" and raw_path in (_READY_PATH, _LIVE_PATH):
                status, payload = self._health(raw_path)
            elif method == "OPTIONS" and (
                is_api_path(raw_path)
                or raw_path.startswith(grpcweb_server.SERVICE_PREFIX)
            ):
                payload = _preflight(origin)
            elif not is_api_path(raw_path):
                status = HTTPStatus.NOT_FOUND.value
                payload = error_body(f"Not found: {method} {raw_path}")
            else:
                route = self._routes.match(method, raw_path)
                bind_model(route.spec.name, route.spec.version)
                body = await self._read_body(receive, content_encoding)
                payload = await route.handler(route.spec, body)
        except ServingError as exc:
            status = exc.status
            payload = error_body(exc.message)
            logger.info(
                "%s %s answered %d: %s",
                method,
                raw_path,
                status,
                exc.message,
                extra={"status": status, "api_error": type(exc).__name__},
            )
        except Exception:
            status = HTTPStatus.INTERNAL_SERVER_ERROR.value
            payload = internal_error_body(request_id)
            logger.exception("%s %s failed", method, raw_path)
        headers = [
            content_type,
            # Without a length uvicorn would chunk the answer; TF Serving sends one.
            (b"content-length", b"%d" % len(payload)),
            (_REQUEST_ID_HEADER, request_id.encode()),
        ]
        version = version_var.get()
        if status == 200 and version is not None:
            # Not in TF Serving's API: a proxy in front (the gateway) learns which
            # version answered, as the gRPC response's model_spec tells.
            headers.append((_MODEL_VERSION_HEADER, b"%d" % version))
        headers.extend(self._extra_headers)
        await send(
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        await send({"type": "http.response.body", "body": payload})
        if status == 200 and logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s %s answered 200",
                method,
                raw_path,
                extra={"status": 200, "seconds": time.perf_counter() - started},
            )

    async def _grpc_web_call(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        raw_path: str,
        content_headers: tuple[bytes, bytes],
        request_id: str,
    ) -> None:
        content_type, content_encoding = content_headers
        if not is_grpc_web(content_type):
            answer = grpcweb_server.unsupported_media()
        else:
            try:
                body = await self._read_grpc_web_body(
                    receive, content_type, content_encoding
                )
            except ServingError as exc:
                answer = grpcweb_server.error_answer(
                    content_type, to_grpc(exc.grpc_code), exc.message
                )
            else:
                metadata, timeout = grpcweb_server.header_metadata(
                    [(k, v) for k, v in scope["headers"] if k != _REQUEST_ID_HEADER]
                )
                # The servicer binds the request id from metadata: give it ours.
                metadata.append((REQUEST_ID_HEADER, request_id))
                # A text body's chunks were freed as they were decoded; a binary
                # body is handed over as the only reference to it.
                text_body = body if isinstance(body, TextBody) else None
                holder = [body] if isinstance(body, bytes) else []
                del body
                answer = await grpcweb_server.call_unary(
                    self._grpc_web,
                    raw_path,
                    content_type,
                    holder[0] if text_body is None else text_body,
                    metadata,
                    timeout,
                    self._grpc_web_decoders,
                )
                # Freed in a thread when large (see servekit_protocol.buffers).
                release_later(holder)
        headers = answer.headers
        headers.append((b"content-length", b"%d" % answer.length))
        headers.append((_REQUEST_ID_HEADER, request_id.encode()))
        headers.extend(self._extra_headers)
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": headers}
        )
        for event in answer.body_events():
            await send(event)

    async def _received_chunks(self, receive: Receive) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive, refused past the body limit.

        Raises:
            PayloadTooLarge: the body is above the limit.
        """
        limit = self._max_body_bytes
        size = 0
        more = True
        while more:
            message = await receive()
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(too_large_message(limit))
            if chunk:
                yield chunk
            more = message.get("more_body", False)

    async def _read_grpc_web_body(
        self, receive: Receive, content_type: bytes, content_encoding: bytes
    ) -> bytes | TextBody:
        """A gRPC-Web call's body; a ``grpc-web-text`` one sent without a
        content coding is decoded as it arrives, in a worker thread.

        Raises:
            PayloadTooLarge, InvalidInput: as :meth:`_read_body`.
        """
        if not is_text(content_type) or coding_of(content_encoding) is not None:
            return await self._read_body(receive, content_encoding)
        body = TextBody()
        async for chunk in self._received_chunks(receive):
            await body.add(chunk)
        return body

    async def _read_body(self, receive: Receive, content_encoding: bytes) -> bytes:
        limit = self._max_body_bytes
        chunks = [chunk async for chunk in self._received_chunks(receive)]
        body = await join_chunks(chunks, sum(map(len, chunks))) if chunks else b""
        coding = coding_of(content_encoding)
        if coding is not None:
            try:
                body = await inflate(body, coding, limit)
            except BodyTooLarge as exc:
                raise PayloadTooLarge(exc.message) from exc
            except ProtocolError as exc:
                raise InvalidInput(exc.message) from exc
        return body


def _raw_path(scope: Scope) -> str:
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        path: str = scope["path"]
        return path
    query = raw.find(b"?")
    if query >= 0:
        raw = raw[:query]
    return raw.decode("latin-1")


def _preflight(origin: bytes) -> bytes:
    # TF Serving accepts a CORS preflight only with an http(s) Origin header.
    if origin.startswith((b"http://", b"https://")):
        return b""
    raise InvalidInput("Origin header is missing in CORS preflight")


async def _handle_lifespan(receive: Receive, send: Send) -> None:
    # Start-up and shutdown are driven by the composition root, not by uvicorn;
    # acknowledge the protocol so servers that insist on it are satisfied.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app(
    dataplane: DataPlane,
    *,
    timeout: float | None = None,
    metrics_path: str | None = None,
    render_metrics: Callable[[], bytes] | None = None,
    enable_cors: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    packed_outputs: bool = False,
    parsers: json_codec.BodyParsers | None = None,
    grpc_parse_offload_bytes: int = 0,
) -> RestApp:
    """Build the REST ASGI app (see :class:`RestApp` for the arguments)."""
    return RestApp(
        dataplane,
        timeout=timeout,
        metrics_path=metrics_path,
        render_metrics=render_metrics,
        enable_cors=enable_cors,
        max_body_bytes=max_body_bytes,
        packed_outputs=packed_outputs,
        parsers=parsers,
        grpc_parse_offload_bytes=grpc_parse_offload_bytes,
    )
