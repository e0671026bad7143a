"""What every HTTP model endpoint shares: request id, admission, deadline, body limit,
auth, error bodies, metrics and the access log line.

The endpoints are plain Starlette handlers (no pydantic body parsing on the hot
paths); each one hands `serve_http` a coroutine that does its protocol's work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from servekit_protocol.bodies import BodyTooLarge, coding_of, inflate
from servekit_protocol.buffers import join_chunks
from servekit_protocol.errors import ProtocolError
from servekit_protocol.grpcweb import is_text
from servekit_protocol.logs import (
    REQUEST_ID_HEADER,
    accept_request_id,
    bind_model,
    bind_request,
)
from servekit_protocol.text_bodies import TextBody
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope

from gateway.context import CallContext
from gateway.dataplane import Gateway
from gateway.errors import (
    GatewayError,
    InvalidInput,
    PayloadTooLarge,
    UnprocessableInput,
    internal_error_message,
)
from gateway.security.credentials import client_host

logger = logging.getLogger(__name__)

TIMEOUT_HEADER = "x-request-timeout-ms"
JSON = "application/json"


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Serialize with orjson (numpy scalars and arrays included)."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type=JSON,
        headers=headers,
    )


def error_response(exc: GatewayError) -> Response:
    """TF Serving's error body: `{"error": message}` (422s add field `detail`)."""
    body: dict[str, Any] = {"error": exc.public_message()}
    if isinstance(exc, UnprocessableInput):
        body["detail"] = exc.detail
    return json_response(body, exc.http_status, headers=exc.headers())


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.scope["app"].gateway
    return gateway


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers as a plain dict (ASGI names are lower-case; a
    repeated header keeps its first value, as Starlette's `Headers` does).
    `Headers` scans the raw list on every lookup, and a model request looks up
    half a dozen names."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in reversed(scope["headers"])
    }


def parse_timeout(raw: str | None) -> float | None:
    """The client's `x-request-timeout-ms` (None when absent).

    Raises:
        InvalidInput: not a positive number.
    """
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise InvalidInput(
            f"{TIMEOUT_HEADER} must be a number of milliseconds"
        ) from exc
    if not value > 0:
        raise InvalidInput(f"{TIMEOUT_HEADER} must be positive")
    return value


def check_body_headers(scope: Scope, limit: int) -> bytes:
    """Refuse a body whose Content-Length is above `limit` before reading it, and
    return the request's Content-Encoding (empty without one).

    Raises:
        PayloadTooLarge: the declared size is above the limit.
    """
    encoding = b""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise PayloadTooLarge(
                    f"request body of {value.decode()} bytes exceeds the limit "
                    f"of {limit} bytes"
                )
        elif name == b"content-encoding":
            encoding = value
    return encoding


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands out an already-read body, then defers to the real one
    (which reports the client's disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds `limit` bytes.

    A gzip or deflate body (`Content-Encoding`) is inflated a step at a time,
    mostly in a thread (the event loop serves others meanwhile), and the limit
    applies to the inflated size too.

    Raises:
        PayloadTooLarge: declared, actual or inflated size above the limit.
        InvalidInput: a body that does not inflate, or a connection that closed
            before the body ended.
    """
    encoding = check_body_headers(request.scope, limit)
    chunks = [chunk async for chunk in _received_chunks(request, limit)]
    body = await join_chunks(chunks, sum(map(len, chunks))) if chunks else b""
    coding = coding_of(encoding) if encoding else None
    if coding is not None:
        # TF Serving inflates gzip bodies; the backends then get plain JSON.
        try:
            return await inflate(body, coding, limit)
        except BodyTooLarge as exc:
            raise PayloadTooLarge(exc.message) from exc
        except ProtocolError as exc:
            raise InvalidInput(exc.message) from exc
    return body


async def read_grpc_web_body(
    request: Request, limit: int, content_type: bytes
) -> bytes | TextBody:
    """A gRPC-Web call's body, as :func:`read_body` reads it; a
    ``grpc-web-text`` one sent without a content coding is decoded as it
    arrives, in a worker thread.

    Raises:
        PayloadTooLarge, InvalidInput: as :func:`read_body`.
    """
    encoding = check_body_headers(request.scope, limit)
    if not is_text(content_type) or (encoding and coding_of(encoding) is not None):
        return await read_body(request, limit)
    body = TextBody()
    async for chunk in _received_chunks(request, limit):
        await body.add(chunk)
    return body


async def _received_chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, refused as soon as they exceed `limit`
    bytes.

    Raises:
        PayloadTooLarge: above the limit.
        InvalidInput: the connection closed before the body ended.
    """
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"request body exceeds the limit of {limit} bytes"
                )
            if chunk:
                yield chunk
    except ClientDisconnect as exc:
        # The client left (or its body timed out and the listener closed the
        # connection): nobody reads the answer, and it is no server error.
        raise InvalidInput("request body incomplete: the connection closed") from exc


def parse_json(body: bytes) -> Any:
    """Decode a JSON body.

    Raises:
        InvalidInput: not JSON.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"JSON Parse error: {exc}") from exc


def client_of(scope: Scope) -> str:
    """The peer's address (host only) of an ASGI request."""
    return client_host(scope.get("client"))


def authenticate(gateway: Gateway, scope: Scope) -> None:
    """Check the caller's key from the request's headers alone, before its body
    is read.

    Raises:
        Unauthenticated, RateLimited.
    """
    gateway.gatekeeper.authenticate(request_headers(scope), client_of(scope))


def authorize(
    gateway: Gateway,
    headers: Mapping[str, str],
    model: str,
    client: str | tuple[str, int] | None = None,
) -> None:
    """Check the caller's key (from the request's headers) for `model`: scope and
    rate.

    Raises:
        Unauthenticated, PermissionDenied, RateLimited.
    """
    bind_model(model)
    gateway.authorize(
        model,
        headers.get("authorization"),
        headers.get("x-api-key"),
        client_host(client),
    )


async def serve_http(
    request: Request,
    protocol: str,
    handle: Callable[[CallContext], Awaitable[Response]],
) -> Response:
    """Run one model request with the shared policy around `handle`."""
    gateway = gateway_of(request)
    headers = request_headers(request.scope)
    request_id = accept_request_id(headers.get(REQUEST_ID_HEADER))
    bind_request(request_id, protocol)
    ctx = CallContext(
        request_id=request_id,
        protocol=protocol,
        deadline=0.0,
        headers=headers,
        client=client_of(request.scope),
    )
    try:
        with gateway.admission():
            ctx.deadline = gateway.deadline(parse_timeout(headers.get(TIMEOUT_HEADER)))
            response = await handle(ctx)
    except GatewayError as exc:
        if exc.http_status >= 500:
            logger.warning("request failed: %s", exc.message)
        response = error_response(exc)
    except ProtocolError as exc:
        response = json_response({"error": exc.message}, int(exc.status))
    except Exception:
        logger.exception("unexpected error")
        response = json_response({"error": internal_error_message()}, 500)
    finish(gateway, ctx, request, response)
    return response


def finish(
    gateway: Gateway, ctx: CallContext, request: Request, response: Response
) -> None:
    """Stamp the request id, record the latency histogram, write the access line."""
    raw = response.raw_headers
    raw.append((b"x-request-id", ctx.request_id.encode("latin-1")))
    if ctx.version:
        raw.append((b"x-model-version", ctx.version.encode("latin-1")))
    if ctx.route:
        raw.append((b"x-route", ctx.route.encode("latin-1")))
    status = response.status_code
    elapsed = time.perf_counter() - ctx.started
    # Unknown or unauthorized model names are client input: keep them out of labels.
    model = ctx.model if status not in (401, 403, 404) else ""
    gateway.metrics.observe_request(
        model, ctx.version, ctx.route, ctx.protocol, str(status), elapsed
    )
    access_log = gateway.access_log
    if access_log.enabled:
        bind_model(ctx.model, ctx.version or None)
        access_log.write(
            f"{request.method} {request.scope['path']} {status}",
            status=status,
            duration_ms=round(elapsed * 1000, 3),
        )


def reject(request: Request, protocol: str, exc: GatewayError) -> Response:
    """Answer an error raised before a handler ran (dependencies, body validation)."""
    gateway = gateway_of(request)
    request_id = accept_request_id(request.headers.get(REQUEST_ID_HEADER))
    bind_request(request_id, protocol)
    parts = request.scope["path"].split("/")
    ctx = CallContext(
        request_id=request_id,
        protocol=protocol,
        deadline=0.0,
        model=parts[2] if len(parts) > 2 and parts[1] == "models" else "",
    )
    response = error_response(exc)
    finish(gateway, ctx, request, response)
    return response
