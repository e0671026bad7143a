"""servekit's HTTP/2 gRPC server against grpcio's own client, on 127.0.0.1.

A tiny service echoes its request's bytes (or fails, sleeps, streams) so every
part of the transport is reached through a real gRPC client: large messages in
both directions (flow control), compression, metadata, deadlines, statuses,
unknown methods, health Watch, cancellation and a graceful stop.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from servekit_protocol.grpc_server import GrpcServer, OffloadedDecoder, hpack_integer

SERVICE = "test.Echo"
LIMIT = 8 * 1024 * 1024


def _identity(data: bytes) -> bytes:
    return data


class Echo:
    """Echo answers its request; Fail aborts; Slow sleeps; Count streams."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def echo(self, request: bytes, context: Any) -> bytes:
        context.set_trailing_metadata((("x-request-id", "abc"),))
        metadata = dict(context.invocation_metadata())
        return request + metadata.get("x-suffix", "").encode()

    async def fail(self, request: bytes, context: Any) -> bytes:  # noqa: ARG002
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: é %")
        raise AssertionError("abort returned")

    async def slow(self, request: bytes, context: Any) -> bytes:  # noqa: ARG002
        self.started.set()
        try:
            await asyncio.sleep(float(request or b"0.3"))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"done"

    async def count(self, request: bytes, context: Any) -> AsyncIterator[bytes]:  # noqa: ARG002
        for number in range(int(request)):
            yield b"%d" % number

    async def plain(self, request: bytes, context: Any) -> bytes:  # noqa: ARG002
        return request[::-1]

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        unary = {
            "Echo": self.echo,
            "Plain": self.plain,
            "Fail": self.fail,
            "Slow": self.slow,
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                method, request_deserializer=_identity, response_serializer=_identity
            )
            for name, method in unary.items()
        }
        handlers["Count"] = grpc.unary_stream_rpc_method_handler(
            self.count, request_deserializer=_identity, response_serializer=_identity
        )
        return handlers


@pytest.fixture
async def served() -> AsyncIterator[
    tuple[GrpcServer, Echo, health_aio.HealthServicer, str]
]:
    server = GrpcServer(max_receive_bytes=LIMIT, max_send_bytes=LIMIT)
    echo = Echo()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, echo.handlers()),)
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield server, echo, health, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def _call(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=_identity,
        response_deserializer=_identity,
    )


async def test_a_call_gets_its_answer_metadata_and_trailers(
    served: tuple[GrpcServer, Echo, health_aio.HealthServicer, str],
) -> None:
    async with grpc.aio.insecure_channel(served[3]) as channel:
        call = _call(channel, "Echo")(b"hello", metadata=(("x-suffix", "!"),))
        assert await call == b"hello!"
        assert await call.code() == grpc.StatusCode.OK
        assert ("x-request-id", "abc") in tuple(await call.trailing_metadata())
        # Many calls on one connection: streams and the HPACK table carry on.
        for index in range(50):
            assert await _call(channel, "Echo")(b"%d" % index) == b"%d" % index


async def test_repeated_calls_without_trailing_metadata(
    served: tuple[GrpcServer, Echo, health_aio.HealthServicer, str],
) -> None:
    # The same request headers each time and the bare OK trailers each time (the
    # blocks the connection's coders take from memory), mixed with other calls.
    async with grpc.aio.insecure_channel(served[3]) as channel:
        for index in range(30):
            call = _call(channel, "Plain")(b"ab%d" % index)
            assert await call == (b"ab%d" % index)[::-1]
            assert await call.code() == grpc.StatusCode.OK
            assert tuple(await call.trailing_metadata()) == ()
            if index % 7 == 0:
                echoed = _call(channel, "Echo")(
                    b"x", metadata=(("x-suffix", str(index)),)
                )
                assert await echoed == b"x%d" % index
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await _call(channel, "Fail")(b"")
                assert failed.value.code() == grpc.StatusCode.NOT_FOUND


async def test_large_messages_cross_the_flow_control_windows(
    served: tuple[GrpcServer, Echo, health_aio.HealthServicer, str],
) -> None:
    big = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    async with grpc.aio.insecure_channel(
        served[3], options=(("grpc.max_receive_message_length", LIMIT),)
    ) as channel:
        assert await _call(channel, "Echo")(big) == big


async def test_compressed_requests_are_inflated(
    served: tuple[GrpcServer, Echo, health_aio.HealthServicer, str],
) -> None:
    async with grpc.aio.insecure_channel(
        served[3], compression=grpc.Compression.Gzip
    ) as channel:
        assert await _call(channel, "Echo")(b"z" * 100_000) == b"z" * 100_000


async def test_statuses_reach_the_client(
    served: tuple[GrpcServer, Echo, health_aio.HealthServicer, str],
) -> None:
    async with grpc.aio.insecure_channel(served[3]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _call(channel, "Fail")(b"")
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == "no such thing: é %"
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await _call(channel, "Nothing")(b"")
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as too_large:
            await _call(channel, "Echo")(b"x" * (LIMIT + 1))
        assert too_large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The connection is still good after each failure.
        assert await _call(channel, "Echo")(b"ok") == b"ok"


async def test_a_deadline_ends_the_call(
    served: tuple[GrpcServer, Echo, health_aio.HealthServicer, str],
) -> None:
    _, echo, _, address = served
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await _call(channel, "Slow")(b"5", timeout=0.2)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(echo.cancelled.wait(), 5)


async def test_a_cancelled_call_stops_its_handler(
    served: tuple[GrpcServer, Echo, health_aio.HealthServicer, str],
) -> None:
    _, echo, _, address = served
    async with grpc.aio.insecure_channel(address) as channel:
        call = _call(channel, "Slow")(b"5")
        await asyncio.wait_for(echo.started.wait(), 5)
        call.cancel()
        await asyncio.wait_for(echo.cancelled.wait(), 5)
        assert await _call(channel, "Echo")(b"next") == b"next"


async def test_server_streaming_and_health(
    served: tuple[GrpcServer, Echo, health_aio.HealthServicer, str],
) -> None:
    _, _, health, address = served
    async with grpc.aio.insecure_channel(address) as channel:
        count = channel.unary_stream(
            f"/{SERVICE}/Count",
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        assert [message async for message in count(b"3")] == [b"0", b"1", b"2"]
        stub = health_pb2_grpc.HealthStub(channel)
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="x"))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        await health.set("x", health_pb2.HealthCheckResponse.SERVING)
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


async def test_stop_lets_calls_under_way_finish() -> None:
    server = GrpcServer(max_receive_bytes=LIMIT, max_send_bytes=LIMIT)
    echo = Echo()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, echo.handlers()),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = _call(channel, "Slow")(b"0.3")
        await asyncio.wait_for(echo.started.wait(), 5)
        await server.stop(5)
        assert await call == b"done"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


async def test_a_client_that_is_not_http2_is_sent_away(
    served: tuple[GrpcServer, Echo, health_aio.HealthServicer, str],
) -> None:
    host, _, port = served[3].rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    # The server's SETTINGS, then GOAWAY (type 7) with PROTOCOL_ERROR, then close.
    assert b"\x07\x00\x00\x00\x00\x00" in data
    async with grpc.aio.insecure_channel(served[3]) as channel:
        assert await _call(channel, "Echo")(b"still serving") == b"still serving"


async def test_a_burst_of_connections_waits_in_the_backlog(
    served: tuple[GrpcServer, Echo, health_aio.HealthServicer, str],
) -> None:
    # The loop is held (this test does not await) while 300 clients connect, so
    # only the kernel's accept queue can complete their handshakes. With the
    # loop's default backlog of 100 about 200 of them would sit unanswered.
    host, _, port = served[3].rpartition(":")
    clients = []
    try:
        for _ in range(300):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex((host, int(port)))
            clients.append(client)
        waiting = set(clients)
        deadline = time.monotonic() + 5  # generous: a loaded machine, no accepts
        while waiting and time.monotonic() < deadline:
            _, writable, _ = select.select([], list(waiting), [], 0.2)
            waiting -= set(writable)
        assert not waiting, f"{len(waiting)} of 300 handshakes not completed"
        assert all(
            c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for c in clients
        )
    finally:
        for client in clients:
            client.close()
    async with grpc.aio.insecure_channel(served[3]) as channel:
        assert await _call(channel, "Echo")(b"after") == b"after"


def test_hpack_integers_continue_past_the_prefix() -> None:
    # RFC 7541 C.1.1-C.1.3.
    assert hpack_integer(10, 5) == bytes([0b01010])
    assert hpack_integer(1337, 5) == bytes([0b11111, 0b10011010, 0b00001010])
    assert hpack_integer(42, 8) == bytes([42])


async def test_large_requests_go_to_the_method_s_decoder(
    served: tuple[GrpcServer, Echo, health_aio.HealthServicer, str],
) -> None:
    server = served[0]
    seen: list[int] = []

    async def decode(message: memoryview) -> bytes:
        seen.append(len(message))
        if message[:1] == b"?":
            raise DecodeError("not a message")
        return bytes(message) + b"!"

    server.offload_decoding(f"/{SERVICE}/Plain", OffloadedDecoder(decode, 1000))
    async with grpc.aio.insecure_channel(served[3]) as channel:
        # Under the threshold, and other methods: the deserializer, as before.
        assert await _call(channel, "Plain")(b"x" * 999) == b"x" * 999
        assert await _call(channel, "Echo")(b"y" * 5000) == b"y" * 5000
        assert await _call(channel, "Plain")(b"ab" * 500) == b"!" + b"ba" * 500
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _call(channel, "Plain")(b"?" * 2000)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert failed.value.details() == "Failed to parse the request: not a message"
    async with grpc.aio.insecure_channel(
        served[3], compression=grpc.Compression.Gzip
    ) as channel:
        # Counted inflated: 3000 bytes that compress to a few dozen.
        assert await _call(channel, "Plain")(b"z" * 3000) == b"!" + b"z" * 3000
    assert seen == [1000, 2000, 3000]
