"""A large answer goes out framed without a joined copy, over gRPC and gRPC-Web.

A method answers a 32 MiB message serialized already
(:class:`~servekit_protocol.messages.Serialized`), and a client in another
process reads it over 127.0.0.1: from servekit's HTTP/2 gRPC server, and from
gRPC-Web on uvicorn (the listeners' ``httptools`` protocol on ``uvloop``, as
both services run them). ``tracemalloc`` follows the server's process: the most
it allocated while answering must stay far under the message's size, where
joining the prefix (and the trailer frame) to the message, as the answer was
framed before, allocated a copy of all of it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import subprocess
import sys
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
import uvicorn
import uvloop
from servekit_protocol import grpcweb, grpcweb_server, messages
from servekit_protocol.byte_parts import byte_views, take
from servekit_protocol.grpc_server import GrpcServer
from starlette.types import Receive, Scope, Send

SERVICE = "test.Large"
PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"
MESSAGE = bytes(range(256)) * (128 * 1024)
"""32 MiB, every byte value, so a misplaced piece changes the digest."""
ALLOCATION_LIMIT = 8 * 1024 * 1024
"""Most the server may allocate while answering: h2 builds each DATA frame
(16 KiB to the client's largest frame size) in a few copies, and at most the
write buffer's high-water mark (256 KiB) waits unsent; a joined copy alone is
32 MiB."""
CLIENT_SECONDS = 60.0
"""A client process's whole run (start-up included) on a loaded machine."""

_GRPC_CLIENT = """
import hashlib, sys, grpc
channel = grpc.insecure_channel(
    sys.argv[1], options=[("grpc.max_receive_message_length", -1)]
)
call = channel.unary_unary(sys.argv[2], lambda b: b, lambda b: b)
answer = call(b"", timeout=50)
print(len(answer), hashlib.sha256(answer).hexdigest())
"""
_GRPC_WEB_CLIENT = """
import hashlib, sys, httpx
answer = httpx.post(
    sys.argv[1],
    content=bytes(5),
    headers={"content-type": "application/grpc-web+proto"},
    timeout=50,
)
body = answer.content
length = int.from_bytes(body[1:5], "big")
message, trailer = body[5 : 5 + length], body[5 + length :]
print(
    answer.headers["content-length"], len(body), body[0], length,
    hashlib.sha256(message).hexdigest(), trailer[5:].decode().split()[:2],
)
"""


def _client(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _allocated_while(client: subprocess.Popen[str]) -> tuple[int, str]:
    """The most the process allocated (over what it held) until ``client``
    ended, and what the client printed."""
    tracemalloc.reset_peak()
    held, _ = tracemalloc.get_traced_memory()
    out, err = await asyncio.wait_for(
        asyncio.to_thread(client.communicate), CLIENT_SECONDS
    )
    _, peak = tracemalloc.get_traced_memory()
    assert client.returncode == 0, err
    return peak - held, out.strip()


def _traced(main: Callable[[], Awaitable[None]]) -> None:
    tracemalloc.start()
    try:
        uvloop.run(main())
    finally:
        tracemalloc.stop()


def test_a_large_grpc_answer_is_sent_from_the_message_s_own_bytes() -> None:
    async def large(request: bytes, context: Any) -> messages.Serialized:
        return messages.Serialized(MESSAGE)

    async def main() -> None:
        server = GrpcServer(max_receive_bytes=1024, max_send_bytes=len(MESSAGE))
        handler = grpc.unary_unary_rpc_method_handler(
            large, request_deserializer=bytes, response_serializer=bytes
        )
        server.add_registered_method_handlers(SERVICE, {"Large": handler})
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            client = _client(_GRPC_CLIENT, f"127.0.0.1:{port}", f"/{SERVICE}/Large")
            allocated, printed = await _allocated_while(client)
        finally:
            await server.stop(0)
        assert printed == f"{len(MESSAGE)} {hashlib.sha256(MESSAGE).hexdigest()}"
        assert allocated < ALLOCATION_LIMIT

    _traced(main)


def test_a_large_grpc_web_answer_is_written_in_parts() -> None:
    async def predict(request: Any, context: Any) -> messages.Serialized:
        return messages.Serialized(MESSAGE)

    methods = {PREDICT_PATH: (messages.PredictRequest, predict)}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        answer = await grpcweb_server.call_unary(
            methods, scope["path"], grpcweb.CONTENT_TYPE, bytes(5), [], None
        )
        headers = [*answer.headers, (b"content-length", b"%d" % answer.length)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for event in answer.body_events():
            await send(event)

    async def main() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        config = uvicorn.Config(
            app, http="httptools", log_config=None, access_log=False, lifespan="off"
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            client = _client(_GRPC_WEB_CLIENT, f"http://127.0.0.1:{port}{PREDICT_PATH}")
            allocated, printed = await _allocated_while(client)
        finally:
            server.should_exit = True
            await serving
            listener.close()
        trailer = grpcweb.trailer_frame(grpcweb.OK, "", ())
        size = 5 + len(MESSAGE) + len(trailer)
        digest = hashlib.sha256(MESSAGE).hexdigest()
        assert printed == (
            f"{size} {size} 0 {len(MESSAGE)} {digest} ['grpc-status:', '0']"
        )
        assert allocated < ALLOCATION_LIMIT

    _traced(main)


def test_pieces_are_views_except_across_parts() -> None:
    prefix, message, trailer = b"\x00\x00\x00\x00\x0a", bytes(range(10)), b"end"
    pending = byte_views((prefix, message, b"", trailer))
    pieces = []
    while pending:
        pieces.append(take(pending, 4))
    assert b"".join(pieces) == prefix + message + trailer
    assert [len(piece) for piece in pieces] == [4, 4, 4, 4, 2]
    # Within one part, a piece is a view of the part's own bytes.
    assert isinstance(pieces[2], memoryview)
    assert pieces[2].obj is message
    assert isinstance(pieces[1], bytes)


def test_a_piece_as_large_as_the_rest_takes_it_whole() -> None:
    message = bytearray(b"abcdef")
    pending = byte_views((b"12", message))
    assert take(pending, 100) == b"12abcdef"
    assert not pending
    pending = byte_views((message,))
    whole = take(pending, 6)
    assert isinstance(whole, memoryview)
    assert whole.obj is message
    assert not pending


async def _answer(content_type: bytes, message: bytes) -> grpcweb_server.WebAnswer:
    async def predict(request: Any, context: Any) -> messages.Serialized:
        context.set_trailing_metadata((("x-model", "m"),))
        return messages.Serialized(message)

    methods = {PREDICT_PATH: (messages.PredictRequest, predict)}
    body = bytes(5)
    if grpcweb.is_text(content_type):
        body = base64.b64encode(body)
    return await grpcweb_server.call_unary(
        methods, PREDICT_PATH, content_type, body, [], None
    )


@pytest.mark.parametrize("size", [0, 100, 3 * 256 * 1024 - 5, 2 * 1024 * 1024 + 1])
async def test_a_grpc_web_text_answer_is_the_whole_body_in_base64(size: int) -> None:
    message = bytes(range(256)) * (size // 256) + bytes(size % 256)
    whole = grpcweb.frame(message) + grpcweb.trailer_frame(
        grpcweb.OK, "", [("x-model", "m")]
    )
    binary = await _answer(grpcweb.CONTENT_TYPE, message)
    assert b"".join(binary.parts) == whole
    assert binary.length == len(whole)
    text = await _answer(grpcweb.TEXT_CONTENT_TYPE, message)
    # Encoded in pieces, with no padding between them.
    assert b"".join(text.parts) == base64.b64encode(whole)
    assert text.length == len(base64.b64encode(whole))
