"""How long a large gRPC ``Predict`` (or ``Classify``) message holds the model
server's event loop, parsed in place and parsed in a worker process.

In place, the loop runs protobuf's parse and the conversion to arrays
(:func:`modelserver.protocol.grpc.converters.to_predict_request`) with the GIL
held: the whole time is a stall. Offloaded, the loop runs
:class:`modelserver.protocol.grpc.largerequests.PredictDecoder` (the message
handed to one of the JSON workers through a shared memory segment, the arrays
read back) while a ticker on the same loop records the longest gap between its
ticks (1 ms apart): that gap is the stall other clients would see. Sizes are
of ``double_val`` messages (the costliest encoding to parse), rounds side by
side, medians reported.

With ``--method classify``: ClassificationRequests of tf.Examples of eight float
features, parsed and turned into dicts in place
(:func:`~modelserver.protocol.grpc.converters.to_classify_request`; the
scikit-learn runtime's columns, also on the loop in place, are not counted),
offloaded through :class:`~modelserver.protocol.grpc.largeexamples.ExamplesDecoder`
(parsed and turned into columns in the worker).

With ``--no-room``: the message's shared memory segment cannot be written (an
ENOSPC raised in this process, as on a full ``/dev/shm``), so the offloaded
column is the pool's pipe carrying the message and the arrays.

With ``--method free``: a received body of each size (a ``bytearray``, its pages
touched) dropped on the loop, against handed to
:func:`servekit_protocol.buffers.release_later`: the longest gap of the same
ticker.

With ``--method receive``: the CPU a message of each size costs the gRPC
server's ``h2`` connection to receive (its frames handed over 16 KiB at a time
and acknowledged, as the server does), with ``hyperframe``'s own frame
``repr`` (which ``h2`` builds for every frame) against the short one of
:mod:`servekit_protocol.grpc_server.frame_repr`, rounds in turns.

With ``--target gateway``: the gateway's steps, measured by
:mod:`benchmarks.grpcparse_gateway` (``--method infer``: its large ModelInfer
alone).

Run as ``python -m benchmarks.grpcparse [--sizes 16,64,256] [--rounds 3]
[--method predict|classify|regress|free|receive|infer] [--target gateway]
[--no-room]``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import uvloop
from hyperframe.frame import DataFrame
from modelserver.protocol.grpc import converters
from modelserver.protocol.grpc.largeexamples import CLASSIFY, ExamplesDecoder
from modelserver.protocol.grpc.largerequests import (
    Decoded,
    PredictDecoder,
    SegmentDecoder,
)
from servekit_protocol import examples as example_codec
from servekit_protocol import messages, segments
from servekit_protocol.buffers import release_later
from servekit_protocol.grpc_server import frame_repr
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.tensor_limits import TensorLimits

from benchmarks.ticker import TICK_SECONDS, loop_intervals

LIMITS = TensorLimits(max_elements=1 << 26, max_bytes=1 << 30)
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


def classify_message_of(mib: int) -> bytes:
    """A ClassificationRequest of about ``mib`` MiB: examples of eight float
    features (about 150 bytes each)."""
    count = mib * 2**20 // 150
    values = np.random.default_rng(0).normal(size=(count, 8)).tolist()
    names = [f"f{index}" for index in range(8)]
    request = messages.ClassificationRequest()
    request.model_spec.name = "tabular"
    request.input.CopyFrom(
        example_codec.from_dicts(
            {name: [value] for name, value in zip(names, row, strict=True)}
            for row in values
        )
    )
    return request.SerializeToString()


def in_place(data: bytes, method: str = "predict") -> float:
    """Seconds the loop would be held: parse and arrays (or dicts)."""
    started = time.perf_counter()
    if method == "classify":
        converters.to_classify_request(messages.ClassificationRequest.FromString(data))
    else:
        converters.to_predict_request(messages.PredictRequest.FromString(data), LIMITS)
    return time.perf_counter() - started


async def offloaded(
    decoder: Callable[[memoryview], Awaitable[Any]] | None,
    data: bytes,
    seconds: float = 0.0,
) -> tuple[float, float]:
    """(longest gap between the ticker's ticks, seconds the decode took); with
    no decoder, the ticker alone for ``seconds`` (what the machine's load alone
    costs it)."""
    async with loop_intervals() as intervals:
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        if decoder is None:
            await asyncio.sleep(seconds)
        else:
            decoded = await decoder(memoryview(data))
            # A parse in place (no room in shared memory) would measure nothing.
            assert not isinstance(decoded, messages.PredictRequest), "parsed in place"
            if isinstance(decoded, Decoded):
                assert decoded.request is not None, decoded.error
        seconds = time.perf_counter() - started
    return _longest_gap(intervals), seconds


def _longest_gap(intervals: list[float]) -> float:
    """How much later than due the latest tick came (0 with no tick)."""
    return max([0.0, *(interval - TICK_SECONDS for interval in intervals)])


async def print_rounds(
    sizes: list[int],
    rounds: int,
    make: Callable[[int], bytes],
    hold: Callable[[bytes], float],
    decode: Callable[[memoryview], Awaitable[Any]],
    header: str,
) -> None:
    """Print one row per size: the loop held by ``hold`` (in place) against the
    longest stall while ``decode`` runs off the loop, the idle loop's longest
    stall over as long, and how long ``decode`` took; medians of ``rounds``
    side by side. ``header`` is the table's header row, its columns in that
    order."""
    print(header)
    print("| ---: | ---: | ---: | ---: | ---: |")
    for mib in sizes:
        data = make(mib)
        held, stalls, idle, took = [], [], [], []
        for _ in range(rounds):
            held.append(hold(data))
            stall, seconds = await offloaded(decode, data)
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


async def measure(sizes: list[int], rounds: int, method: str) -> None:
    parsers = BodyParsers()
    parsers.start(preload=("modelserver.protocol.grpc.largeexamples",))
    decoder: SegmentDecoder[Any] = (
        ExamplesDecoder(parsers, CLASSIFY, LIMITS)
        if method == "classify"
        else PredictDecoder(parsers, LIMITS)
    )
    make = classify_message_of if method == "classify" else message_of
    try:
        # The workers' start and first imports are not what is measured.
        await decoder(memoryview(make(1)))
        print(f"load average {os.getloadavg()[0]:.1f}")
        await print_rounds(
            sizes,
            rounds,
            make,
            lambda data: in_place(data, method),
            decoder,
            "| message | in place: loop held | offloaded: longest stall "
            "| idle loop, as long: longest stall | offloaded: decode took |",
        )
    finally:
        parsers.close()


async def stall_of(free: Callable[[list[bytearray]], Any], mib: int) -> float:
    """The ticker's longest gap while ``free`` drops a touched body of ``mib``
    MiB (given as the only reference, in a list)."""
    holder = [bytearray(b"\x01") * (mib * 2**20)]
    async with loop_intervals() as intervals:
        await asyncio.sleep(0.05)
        work = free(holder)
        if work is not None:
            await work
        await asyncio.sleep(0.05)
    return _longest_gap(intervals)


async def measure_free(sizes: list[int], rounds: int) -> None:
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(
        "| body | dropped on the loop: longest stall | release_later: longest stall |"
    )
    print("| ---: | ---: | ---: |")
    for mib in sizes:
        dropped, released = [], []
        for _ in range(rounds):
            dropped.append(await stall_of(lambda holder: holder.clear(), mib))
            released.append(await stall_of(release_later, mib))
        print(
            f"| {mib} MiB | {statistics.median(dropped) * 1e3:.1f} ms "
            f"| {statistics.median(released) * 1e3:.1f} ms |",
            flush=True,
        )


def client_bytes(body_bytes: int) -> bytes:
    """What a client sends for one call with a body of ``body_bytes``: the
    preface, SETTINGS, a HEADERS frame and 16 KiB DATA frames."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection

    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(
        1,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/tensorflow.serving.PredictionService/Predict"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
        ],
    )
    wire = bytearray(client.data_to_send())
    chunk = b"\x01" * 16_384
    for offset in range(0, body_bytes, len(chunk)):
        frame = DataFrame(1, chunk[: body_bytes - offset])
        if offset + len(chunk) >= body_bytes:
            frame.flags.add("END_STREAM")
        wire += frame.serialize()
    return bytes(wire)


def receive_cpu(wire: bytes) -> float:
    """CPU seconds an ``h2`` server connection takes to receive ``wire``."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import DataReceived
    from h2.settings import SettingCodes

    server = H2Connection(H2Configuration(client_side=False))
    server.local_settings.update({SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    server.initiate_connection()
    server.increment_flow_control_window(2**31 - 1 - 65_535)
    view = memoryview(wire)
    started = time.process_time()
    for offset in range(0, len(view), 16_384):
        for event in server.receive_data(view[offset : offset + 16_384]):
            if isinstance(event, DataReceived):
                server.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
        server.data_to_send()
    return time.process_time() - started


def measure_receive(sizes: list[int], rounds: int) -> None:
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| body | hyperframe's repr: CPU | short repr: CPU | saved |")
    print("| ---: | ---: | ---: | ---: |")
    for mib in sizes:
        wire = client_bytes(mib * 2**20)
        before, after = [], []
        for _ in range(rounds):
            frame_repr.uninstall()
            before.append(receive_cpu(wire))
            frame_repr.install()
            after.append(receive_cpu(wire))
        old, new = statistics.median(before), statistics.median(after)
        print(
            f"| {mib} MiB | {old * 1e3:.0f} ms | {new * 1e3:.0f} ms "
            f"| {(old - new) * 1e3:.0f} ms |",
            flush=True,
        )


def _no_room(path: str, data: bytes | bytearray | memoryview) -> None:  # noqa: ARG001
    raise OSError(errno.ENOSPC, "No space left on device", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,64,256", help="MiB, comma separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", choices=("modelserver", "gateway"))
    parser.add_argument(
        "--method",
        choices=("predict", "classify", "regress", "free", "receive", "infer"),
        default="predict",
    )
    parser.add_argument(
        "--no-room",
        action="store_true",
        help="fail the message's shared memory segment: the pipe carries it",
    )
    options = parser.parse_args()
    if options.no_room:
        segments.write_bytes = _no_room
        # One warning a call otherwise, on the table's stream.
        logging.getLogger("modelserver.protocol.grpc.largerequests").disabled = True
    sizes = [int(size) for size in options.sizes.split(",")]
    if options.target == "gateway":
        from benchmarks.grpcparse_gateway import (
            measure_answers,
            measure_gateway,
            measure_infer,
            measure_infer_answers,
        )

        if options.method == "infer":
            uvloop.run(measure_infer(sizes, options.rounds))
            return
        measure_gateway(sizes, options.rounds, options.method)
        if options.method == "predict":
            measure_answers(sizes, options.rounds)
            uvloop.run(measure_infer(sizes, options.rounds))
            uvloop.run(measure_infer_answers(sizes, options.rounds))
    elif options.method in ("regress", "infer"):
        parser.error(f"--method {options.method} is measured with --target gateway")
    elif options.method == "receive":
        measure_receive(sizes, options.rounds)
    elif options.method == "free":
        uvloop.run(measure_free(sizes, options.rounds))
    else:
        uvloop.run(measure(sizes, options.rounds, options.method))


if __name__ == "__main__":
    main()
