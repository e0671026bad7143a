"""gRPC-Web on the HTTP port: TF Serving's gRPC services over HTTP/1.1.

``POST /tensorflow.serving.PredictionService/Predict`` (and every other method of
PredictionService and ModelService) with ``Content-Type: application/grpc-web``
or ``application/grpc-web-text`` runs the gRPC front's proxies
(:mod:`gateway.grpcfront.servicer`). Keys (``x-api-key`` or ``Authorization``
headers), routing, rollouts, rate limits, deadlines (``grpc-timeout``), metrics
(``protocol="grpc-web"``) and logs are the gRPC port's, and so are the status
codes, sent trailers-only on failure; a large Predict, Classify, Regress or
MultiInference is forwarded unparsed as on the gRPC port. For clients that cannot speak HTTP/2 (a
browser's gRPC-Web client, an HTTP/1.1-only proxy) without an Envoy in between.
"""

from __future__ import annotations

from servekit_protocol import grpcweb_server
from servekit_protocol.grpcweb import is_grpc_web
from servekit_protocol.logs import REQUEST_ID_HEADER, accept_request_id
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from gateway.clients.forwarded import forwarding_decoders
from gateway.dataplane import Gateway
from gateway.errors import GatewayError
from gateway.grpcfront.servicer import GrpcFront, ModelProxy, PredictionProxy, needs_key
from gateway.routes.handling import authenticate, read_grpc_web_body

PROTOCOL = "grpc-web"
SERVICE_PREFIX = grpcweb_server.SERVICE_PREFIX
_REQUEST_ID_HEADER = REQUEST_ID_HEADER.encode()


class GrpcWebEndpoint:
    """The ASGI handler of every gRPC-Web path."""

    def __init__(self, gateway: Gateway, max_body_bytes: int) -> None:
        front = GrpcFront(gateway, PROTOCOL)
        self._methods = grpcweb_server.tf_serving_methods(
            PredictionProxy(front), ModelProxy(front)
        )
        threshold = gateway.settings.grpc_parse_offload_bytes
        self._offloaded = forwarding_decoders(threshold) if threshold > 0 else None
        self._limit = max_body_bytes
        self._gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = b""
        incoming_id: bytes | None = None
        forwarded = []
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            if key == _REQUEST_ID_HEADER:
                incoming_id = value
            else:
                forwarded.append((key, value))
        # Chosen here, so the HTTP answer and the call's logs name the same id.
        request_id = accept_request_id(incoming_id)
        if not is_grpc_web(content_type):
            answer = grpcweb_server.unsupported_media()
        else:
            try:
                if needs_key(scope["path"]):
                    # From the headers, before a byte of the body is read.
                    authenticate(self._gateway, scope)
                body = await read_grpc_web_body(
                    Request(scope, receive), self._limit, content_type
                )
            except GatewayError as exc:
                answer = grpcweb_server.error_answer(
                    content_type, exc.grpc_code, exc.public_message()
                )
            else:
                metadata, timeout = grpcweb_server.header_metadata(forwarded)
                metadata.append((REQUEST_ID_HEADER, request_id))
                answer = await grpcweb_server.call_unary(
                    self._methods,
                    scope["path"],
                    content_type,
                    body,
                    metadata,
                    timeout,
                    self._offloaded,
                )
        headers = answer.headers
        # Without a length uvicorn would chunk the answer.
        headers.append((b"content-length", b"%d" % answer.length))
        headers.append((_REQUEST_ID_HEADER, request_id.encode("latin-1")))
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": headers}
        )
        for event in answer.body_events():
            await send(event)
