"""How long sending a large gRPC answer holds servekit's gRPC server's event loop.

The server (:class:`servekit_protocol.grpc_server.GrpcServer`, on uvloop, as both
services run it) answers a message serialized already
(:class:`~servekit_protocol.messages.Serialized`) to grpcio's client in another
process; a ticker on the server's loop records the longest gap between its ticks
(1 ms apart), and the loop thread's CPU time is read around each call. Each
configuration of :attr:`Http2Limits.max_data_frame_bytes` has its own server and
client; rounds go in turns, medians are reported, with the ratio of each to the
first configuration. The largest setting (16 MiB - 1) sends frames as large as
grpcio's client allows, as the server did before it had the setting.

Run as ``python -m benchmarks.answersend [--sizes 16,64] [--rounds 5]
[--frame-bytes 16384,65536,16777215]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvloop
from servekit_protocol import messages
from servekit_protocol.grpc_server import GrpcServer, Http2Limits

from benchmarks.ticker import loop_intervals

_CLIENT = """
import sys, grpc
channel = grpc.insecure_channel(
    sys.argv[1], options=[("grpc.max_receive_message_length", -1)]
)
call = channel.unary_unary(sys.argv[2], lambda b: b, lambda b: b)
call(b"", timeout=60)
print("ready", flush=True)
for line in sys.stdin:
    print(len(call(b"", timeout=60)), flush=True)
"""
_PATH = "/bench.Large/Large"


@dataclass
class _Setup:
    """One configuration's server, client and samples."""

    frame_bytes: int
    server: GrpcServer
    client: subprocess.Popen[str]
    cpu: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)


async def _start(frame_bytes: int, message: bytes) -> _Setup:
    async def large(request: bytes, context: Any) -> messages.Serialized:  # noqa: ARG001
        return messages.Serialized(message)

    server = GrpcServer(
        max_receive_bytes=1024,
        max_send_bytes=len(message),
        limits=Http2Limits(max_data_frame_bytes=frame_bytes),
    )
    handler = grpc.unary_unary_rpc_method_handler(
        large, request_deserializer=bytes, response_serializer=bytes
    )
    server.add_registered_method_handlers("bench.Large", {"Large": handler})
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, f"127.0.0.1:{port}", _PATH],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    ready = await asyncio.to_thread(client.stdout.readline)
    assert ready.strip() == "ready", ready
    return _Setup(frame_bytes, server, client)


async def _round(setup: _Setup, size: int) -> None:
    client = setup.client
    assert client.stdin is not None and client.stdout is not None
    async with loop_intervals() as intervals:
        started = time.thread_time()
        client.stdin.write("go\n")
        client.stdin.flush()
        line = await asyncio.to_thread(client.stdout.readline)
        setup.cpu.append(time.thread_time() - started)
    setup.gaps.append(max([0.0, *intervals]))
    assert int(line) == size, line


async def measure(sizes: list[int], rounds: int, frame_sizes: list[int]) -> None:
    """Print one table row per size and frame setting."""
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| answer | largest DATA frame | loop CPU | ratio | longest stall (worst) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for mib in sizes:
        message = bytes(range(256)) * (4096 * mib)
        setups = [await _start(frame, message) for frame in frame_sizes]
        try:
            for _ in range(rounds):
                for setup in setups:
                    await _round(setup, len(message))
        finally:
            for setup in setups:
                assert setup.client.stdin is not None
                setup.client.stdin.close()
                setup.client.wait()
                await setup.server.stop(0)
        first = statistics.median(setups[0].cpu)
        for setup in setups:
            cpu = statistics.median(setup.cpu)
            print(
                f"| {mib} MiB | {setup.frame_bytes // 1024} KiB "
                f"| {cpu * 1e3:.0f} ms | {cpu / first:.2f} "
                f"| {statistics.median(setup.gaps) * 1e3:.0f} ms "
                f"({max(setup.gaps) * 1e3:.0f} ms) |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,64", help="MiB, comma separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--frame-bytes",
        default="65536,16384,16777215",
        help="max_data_frame_bytes settings, comma separated (the first is the "
        "ratios' base)",
    )
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]
    frames = [int(size) for size in options.frame_bytes.split(",")]
    uvloop.run(measure(sizes, options.rounds, frames))


if __name__ == "__main__":
    main()
