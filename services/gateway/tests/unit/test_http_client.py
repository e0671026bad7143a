"""The forwarding HTTP client against a small asyncio server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
from gateway.clients.http import AnswerTooLarge, ConnectionFailed, HttpBackend
from servekit_protocol.buffers import JOIN_IN_THREAD_BYTES

LIMIT = 1024 * 1024 * 1024
"""The answer cap of the clients here, unless a test says otherwise."""

Answer = Callable[[bytes], bytes]
"""Request head and body (as received) -> the raw bytes to answer."""


def fixed(body: bytes, extra: bytes = b"") -> Answer:
    def answer(_request: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + extra
            + b"content-length: %d\r\n\r\n" % len(body)
            + body
        )

    return answer


async def serve(
    answer: Answer,
    scenario: Callable[[HttpBackend, list[int]], Awaitable[None]],
    close_after_each: bool = False,
    max_answer_bytes: int = LIMIT,
) -> list[int]:
    """Run `scenario` against a server; return the connection number of each
    request it received."""
    connections = 0
    seen: list[int] = []

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal connections
        connections += 1
        number = connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                seen.append(number)
                writer.write(answer(head + body))
                await writer.drain()
                if close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = HttpBackend(f"127.0.0.1:{port}", max_answer_bytes)
    try:
        await scenario(backend, seen)
    finally:
        backend.close()
        server.close()
        await server.wait_closed()
    return seen


def test_requests_reuse_one_keep_alive_connection() -> None:
    async def scenario(backend: HttpBackend, _seen: list[int]) -> None:
        for index in range(5):
            answer = await backend.request("POST", "/v1/models/m:predict", b"{}")
            assert answer.status == 200
            assert answer.body == b'{"i": 1}'
            assert answer.headers[b"content-type"] == b"application/json"
            del index

    seen = asyncio.run(serve(fixed(b'{"i": 1}'), scenario))
    assert seen == [1, 1, 1, 1, 1]


def test_the_request_carries_path_body_and_headers() -> None:
    received: list[bytes] = []

    def echo(request: bytes) -> bytes:
        received.append(request)
        return fixed(b"ok")(request)

    async def scenario(backend: HttpBackend, _seen: list[int]) -> None:
        await backend.request(
            "POST",
            "/v1/models/m/labels/x:predict",
            b'{"a": 1}',
            (("x-request-id", "r1"),),
        )

    asyncio.run(serve(echo, scenario))
    [request] = received
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/models/m/labels/x:predict HTTP/1.1"
    assert b"x-request-id: r1" in lines
    assert b"content-length: 8" in lines
    assert body == b'{"a": 1}'


def test_a_connection_the_server_closed_is_replaced() -> None:
    async def scenario(backend: HttpBackend, _seen: list[int]) -> None:
        for _ in range(3):
            answer = await backend.request("POST", "/x", b"{}")
            assert answer.status == 200
            # Let the server's close reach the idle connection.
            await asyncio.sleep(0.05)

    seen = asyncio.run(serve(fixed(b"{}"), scenario, close_after_each=True))
    assert seen == [1, 2, 3]


def test_connection_close_answers_are_not_reused() -> None:
    async def scenario(backend: HttpBackend, _seen: list[int]) -> None:
        for _ in range(2):
            assert (await backend.request("POST", "/x", b"{}")).status == 200

    seen = asyncio.run(serve(fixed(b"{}", b"connection: close\r\n"), scenario))
    assert seen == [1, 2]


def test_chunked_answers_are_joined() -> None:
    def chunked(_request: bytes) -> bytes:
        return (
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
            b'5\r\n{"err\r\n7\r\nor": 1}\r\n0\r\n\r\n'
        )

    async def scenario(backend: HttpBackend, _seen: list[int]) -> None:
        answer = await backend.request("POST", "/x", b"{}")
        assert answer.status == 404
        assert answer.body == b'{"error": 1}'

    asyncio.run(serve(chunked, scenario))


def test_a_malformed_answer_fails_the_call() -> None:
    async def scenario(backend: HttpBackend, _seen: list[int]) -> None:
        with pytest.raises(ConnectionFailed):
            await backend.request("POST", "/x", b"{}")

    asyncio.run(serve(lambda _request: b"NOT HTTP AT ALL\r\n\r\n", scenario))


def test_nothing_listening_is_connection_failed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> None:
        with pytest.raises(ConnectionFailed, match="cannot connect"):
            await HttpBackend(f"127.0.0.1:{port}", LIMIT).request("POST", "/x", b"{}")

    asyncio.run(scenario())


def test_an_address_without_a_port_is_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        HttpBackend("localhost", LIMIT)


def test_a_large_body_is_joined_or_left_as_its_chunks() -> None:
    body = bytes(range(256)) * (JOIN_IN_THREAD_BYTES // 256 + 1)

    async def scenario(backend: HttpBackend, _seen: list[int]) -> None:
        joined = await backend.request("POST", "/v1/models/m:predict", b"{}")
        assert joined.body == body and not joined.chunks
        left = await backend.request(
            "POST", "/v1/models/m:predict", b"{}", joined=False
        )
        assert left.body == b"" and len(left.chunks) > 1
        assert b"".join(left.chunks) == body

    asyncio.run(serve(fixed(body), scenario))


def test_an_answer_at_the_limit_is_read_and_one_over_it_refused() -> None:
    """The limit counts body bytes; one announced over it is refused from its
    headers, and the next call gets a fresh connection."""
    cap = 4096
    answers = iter([b"x" * cap, b"y" * (cap + 1), b"z"])

    def answer(_request: bytes) -> bytes:
        return fixed(next(answers))(_request)

    async def scenario(backend: HttpBackend, _seen: list[int]) -> None:
        assert (await backend.request("POST", "/x", b"{}")).body == b"x" * cap
        with pytest.raises(AnswerTooLarge, match="declared 4097 bytes"):
            await backend.request("POST", "/x", b"{}")
        assert (await backend.request("POST", "/x", b"{}")).body == b"z"

    seen = asyncio.run(serve(answer, scenario, max_answer_bytes=cap))
    assert seen == [1, 1, 2]


def test_an_endless_answer_stops_at_the_limit() -> None:
    """A chunked body sent without end: refused once past the limit, its
    connection closed (the sender sees it), not read until a deadline."""
    cap = 8 * 1024 * 1024
    chunk = b"%x\r\n%s\r\n" % (65536, b"e" * 65536)
    sent = 0
    ended: asyncio.Event | None = None

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(chunk)
                await writer.drain()
                sent += 65536
        except ConnectionError:
            pass
        writer.close()
        assert ended is not None
        ended.set()

    async def scenario() -> None:
        nonlocal ended
        ended = asyncio.Event()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        backend = HttpBackend(f"127.0.0.1:{port}", cap)
        try:
            with pytest.raises(AnswerTooLarge, match="over the gateway's limit"):
                # Generous: the refusal comes after 8 MiB over loopback.
                async with asyncio.timeout(60):
                    await backend.request("POST", "/x", b"{}")
            async with asyncio.timeout(60):
                await ended.wait()
        finally:
            backend.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    # What was in flight (socket buffers) when the client closed, on top of
    # the limit: far from the gigabytes an unbounded read takes in a minute.
    assert cap < sent < 4 * cap
