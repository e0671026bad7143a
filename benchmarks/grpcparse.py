"""How long a large gRPC ``Predict`` message holds the model server's event loop,
parsed in place and parsed in a worker process.

In place, the loop runs protobuf's parse and the conversion to arrays
(:func:`modelserver.protocol.grpc.converters.to_predict_request`) with the GIL
held: the whole time is a stall. Offloaded, the loop runs
:class:`modelserver.protocol.grpc.largerequests.PredictDecoder` (the message
handed to one of the JSON workers through a shared memory segment, the arrays
read back) while a ticker on the same loop records the longest gap between its
ticks (1 ms apart): that gap is the stall other clients would see. Sizes are
of ``double_val`` messages (the costliest encoding to parse), rounds side by
side, medians reported.

Run as ``python -m benchmarks.grpcparse [--sizes 16,64,256] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import numpy as np
import uvloop
from modelserver.protocol.grpc import converters
from modelserver.protocol.grpc.largerequests import Decoded, PredictDecoder
from servekit_protocol import messages
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.tensor_limits import TensorLimits

_TICK_SECONDS = 0.001
_LIMITS = TensorLimits(max_elements=1 << 26, max_bytes=1 << 30)
"""Room for the 256 MiB message's 32 Mi values."""


def message_of(mib: int) -> bytes:
    """A PredictRequest of about ``mib`` MiB: one float64 input of 64 columns."""
    values = mib * 2**20 // 8
    request = messages.PredictRequest()
    request.model_spec.name = "wide"
    tensor = request.inputs["x"]
    tensor.dtype = messages.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=values // 64)
    tensor.tensor_shape.dim.add(size=64)
    tensor.double_val.extend(np.random.default_rng(0).normal(size=values))
    return request.SerializeToString()


def in_place(data: bytes) -> float:
    """Seconds the loop would be held: parse and arrays."""
    started = time.perf_counter()
    converters.to_predict_request(messages.PredictRequest.FromString(data), _LIMITS)
    return time.perf_counter() - started


async def offloaded(
    decoder: PredictDecoder | None, data: bytes, seconds: float = 0.0
) -> tuple[float, float]:
    """(longest gap between the ticker's ticks, seconds the decode took); with
    no decoder, the ticker alone for ``seconds`` (what the machine's load alone
    costs it)."""
    gaps = [0.0]
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(_TICK_SECONDS)
            now = time.perf_counter()
            gaps.append(now - last - _TICK_SECONDS)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    if decoder is None:
        await asyncio.sleep(seconds)
    else:
        decoded = await decoder(memoryview(data))
        # A parse in place (no room in shared memory) would measure nothing.
        assert isinstance(decoded, Decoded), "parsed in place"
        assert decoded.request is not None, decoded.error
    seconds = time.perf_counter() - started
    done.set()
    await ticker
    return max(gaps), seconds


async def measure(sizes: list[int], rounds: int) -> None:
    parsers = BodyParsers()
    parsers.start(preload=("modelserver.protocol.grpc.largerequests",))
    decoder = PredictDecoder(parsers, _LIMITS)
    try:
        # The workers' start and first imports are not what is measured.
        await decoder(memoryview(message_of(1)))
        print(f"load average {os.getloadavg()[0]:.1f}")
        print(
            "| message | in place: loop held | offloaded: longest stall "
            "| idle loop, as long: longest stall | offloaded: decode took |"
        )
        print("| ---: | ---: | ---: | ---: | ---: |")
        for mib in sizes:
            data = message_of(mib)
            held, stalls, idle, took = [], [], [], []
            for _ in range(rounds):
                held.append(in_place(data))
                stall, seconds = await offloaded(decoder, data)
                stalls.append(stall)
                took.append(seconds)
                idle.append((await offloaded(None, b"", seconds))[0])
            print(
                f"| {len(data) / 2**20:.0f} MiB "
                f"| {statistics.median(held) * 1e3:.0f} ms "
                f"| {statistics.median(stalls) * 1e3:.1f} ms "
                f"| {statistics.median(idle) * 1e3:.1f} ms "
                f"| {statistics.median(took) * 1e3:.0f} ms |",
                flush=True,
            )
    finally:
        parsers.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,64,256", help="MiB, comma separated")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]
    uvloop.run(measure(sizes, options.rounds))


if __name__ == "__main__":
    main()
