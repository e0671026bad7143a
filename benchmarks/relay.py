"""The floor of any Python front end that speaks TF Serving gRPC to its backend.

A relay in front of a model server that does nothing but move bytes: on REST it
reads the request body, sends the model's ready-made PredictRequest (the same
one the gRPC load sends) over one ``grpc.aio`` channel and answers a short JSON
object with the answer's size; on gRPC it hands each Predict's bytes to the
backend and the answer's bytes back, unparsed. No JSON parsing, routing, auth,
metrics or logs. Its added latency over the model server alone is what the
hop itself costs (uvicorn, the gRPC client, and the backend's gRPC server
instead of its REST one), which the gateway cannot go below.

One relay serves one model, as each model has its own model server in the
bench. Run as ``python -m benchmarks.relay --backend HOST:PORT --http-port P
--grpc-port Q --request FILE``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _same(data: bytes) -> bytes:
    return data


def rest_app(
    forward: Callable[[bytes], Awaitable[bytes]], request: bytes
) -> Callable[..., Awaitable[None]]:
    """The ASGI app: any POST ending in ``:predict`` sends ``request``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        if not scope["path"].endswith(":predict"):
            status, body = 404, b'{"error": "not a :predict path"}'
        else:
            try:
                answer = await forward(request)
                status, body = 200, b'{"bytes": %d}' % len(answer)
            except Exception as exc:  # the load generator counts the non-200
                status, body = 502, b'{"error": "%s"}' % type(exc).__name__.encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


async def serve(backend: str, http_port: int, grpc_port: int, request: bytes) -> None:
    import grpc
    import uvicorn

    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    channel = grpc.aio.insecure_channel(backend, options=options)
    forward = channel.unary_unary(
        PREDICT_METHOD, request_serializer=_same, response_deserializer=_same
    )

    async def relay(request: bytes, context: Any) -> bytes:  # noqa: ARG001
        answer: bytes = await forward(request)
        return answer

    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tensorflow.serving.PredictionService",
                {
                    "Predict": grpc.unary_unary_rpc_method_handler(
                        relay, request_deserializer=_same, response_serializer=_same
                    )
                },
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    config = uvicorn.Config(
        rest_app(forward, request),
        host="127.0.0.1",
        port=http_port,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await server.stop(None)
        await channel.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay")
    parser.add_argument("--backend", required=True, help="the model server's host:port")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument(
        "--request",
        type=Path,
        required=True,
        help="the serialized PredictRequest every REST call sends",
    )
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(
        serve(args.backend, args.http_port, args.grpc_port, args.request.read_bytes())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
