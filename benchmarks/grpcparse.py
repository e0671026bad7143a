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

With ``--method free``: a received body of each size (a ``bytearray``, its pages
touched) dropped on the loop, against handed to
:func:`servekit_protocol.buffers.release_later`: the longest gap of the same
ticker.

With ``--method receive``: the CPU a message of each size costs the gRPC
server's ``h2`` connection to receive (its frames handed over 16 KiB at a time
and acknowledged, as the server does), with ``hyperframe``'s own frame
``repr`` (which ``h2`` builds for every frame) against the short one of
:mod:`servekit_protocol.grpc_server.frame_repr`, rounds in turns.

With ``--target gateway``: the gateway's two steps of a large ``Predict`` that
hold its loop, each one synchronous (so each is a stall): reading the message
(parsed whole and the tensor limits checked, or read for forwarding by
:func:`gateway.clients.forwarded.read_predict`), then writing it for the
backend (the target's model spec set, serialized and framed for gRPC-Web);
with ``--method classify`` or ``regress``, the same two steps of a
ClassificationRequest or RegressionRequest of tf.Examples (read for
forwarding by :func:`gateway.clients.forwarded_examples.read_examples`);
and a large OIP ``ModelInfer``, parsed, turned into arrays and encoded as the
backend's Predict on the loop, against the same in the JSON workers with the
ticker running.

Run as ``python -m benchmarks.grpcparse [--sizes 16,64,256] [--rounds 3]
[--method predict|classify|regress|free|receive] [--target gateway]``.
"""

from __future__ import annotations

import argparse
import asyncio
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
from servekit_protocol import messages
from servekit_protocol.buffers import release_later
from servekit_protocol.grpc_server import frame_repr
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
        converters.to_predict_request(messages.PredictRequest.FromString(data), _LIMITS)
    return time.perf_counter() - started


async def offloaded(
    decoder: Callable[[memoryview], Awaitable[Any]] | None,
    data: bytes,
    seconds: float = 0.0,
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
        assert not isinstance(decoded, messages.PredictRequest), "parsed in place"
        if isinstance(decoded, Decoded):
            assert decoded.request is not None, decoded.error
    seconds = time.perf_counter() - started
    done.set()
    await ticker
    return max(gaps), seconds


async def measure(sizes: list[int], rounds: int, method: str) -> None:
    parsers = BodyParsers()
    parsers.start(preload=("modelserver.protocol.grpc.largeexamples",))
    decoder: SegmentDecoder[Any] = (
        ExamplesDecoder(parsers, CLASSIFY, _LIMITS)
        if method == "classify"
        else PredictDecoder(parsers, _LIMITS)
    )
    make = classify_message_of if method == "classify" else message_of
    try:
        # The workers' start and first imports are not what is measured.
        await decoder(memoryview(make(1)))
        print(f"load average {os.getloadavg()[0]:.1f}")
        print(
            "| message | in place: loop held | offloaded: longest stall "
            "| idle loop, as long: longest stall | offloaded: decode took |"
        )
        print("| ---: | ---: | ---: | ---: | ---: |")
        for mib in sizes:
            data = make(mib)
            held, stalls, idle, took = [], [], [], []
            for _ in range(rounds):
                held.append(in_place(data, method))
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


def gateway_steps(
    data: bytes, forward: bool, method: str = "predict"
) -> tuple[float, float]:
    """Seconds of the gateway's read step and write step for one message."""
    from gateway.clients.forwarded import read_predict
    from gateway.clients.forwarded_examples import read_examples
    from gateway.clients.spliced import Spliced
    from gateway.context import apply_target
    from gateway.routing.router import Target
    from servekit_protocol import grpcweb
    from servekit_protocol.tensor_limits import check_tensor_protos

    started = time.perf_counter()
    request: Any
    if method == "predict":
        request = (
            read_predict(memoryview(data))
            if forward
            else messages.PredictRequest.FromString(data)
        )
        check_tensor_protos(request.inputs.values(), _LIMITS)
    else:
        kind = _EXAMPLES_REQUESTS[method]
        request = (
            read_examples(memoryview(data), kind) if forward else kind.FromString(data)
        )
    read = time.perf_counter()
    apply_target(request.model_spec, Target("wide", ("b:1",), 2, None, "stable"))
    if isinstance(request, Spliced):
        request.framed()
    else:
        grpcweb.frame(request.SerializeToString())
    return read - started, time.perf_counter() - read


_EXAMPLES_REQUESTS: dict[str, Any] = {
    "classify": messages.ClassificationRequest,
    "regress": messages.RegressionRequest,
}


def infer_message_of(mib: int) -> bytes:
    """A ModelInferRequest of about ``mib`` MiB of ``fp64_contents``."""
    from servekit_protocol import oip_messages as oip

    values = mib * 2**20 // 8
    request = oip.ModelInferRequest(model_name="wide")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[values // 64, 64])
    tensor.contents.fp64_contents.extend(np.random.default_rng(0).normal(size=values))
    return request.SerializeToString()


def infer_in_place(data: bytes) -> float:
    """Seconds a ModelInfer parsed on the loop holds it: the parse, the arrays
    and the Predict for the backend, one synchronous run."""
    from gateway.clients.arrays import ArrayRequest
    from gateway.codecs.v2_grpc import parse_model_infer
    from servekit_protocol import grpcweb
    from servekit_protocol import oip_messages as oip

    started = time.perf_counter()
    parsed = parse_model_infer(oip.ModelInferRequest.FromString(data))
    request = ArrayRequest(parsed.inputs)
    request.model_spec.name = "wide"
    grpcweb.frame(request.to_proto().SerializeToString())
    return time.perf_counter() - started


async def measure_infer(sizes: list[int], rounds: int) -> None:
    from gateway.clients.forwarded import ForwardedPredict
    from gateway.codecs.v2_grpc import encode_infer_message
    from gateway.grpcfront.server import infer_reader

    parsers = BodyParsers()
    parsers.start(preload=("gateway.codecs.v2_grpc",))
    read = infer_reader(parsers)

    async def through_workers(message: memoryview) -> None:
        head = await read(message)
        encoded = await parsers.in_worker(
            encode_infer_message, head.message, None, _LIMITS
        )
        spec = messages.ModelSpec(name="wide")
        ForwardedPredict(spec, {}, memoryview(encoded.message)).framed()

    try:
        await through_workers(memoryview(infer_message_of(1)))
        print(
            "| ModelInfer | in place: loop held | in the workers: longest stall "
            "| idle loop, as long: longest stall | in the workers: took |"
        )
        print("| ---: | ---: | ---: | ---: | ---: |")
        for mib in sizes:
            data = infer_message_of(mib)
            held, stalls, idle, took = [], [], [], []
            for _ in range(rounds):
                held.append(infer_in_place(data))
                stall, seconds = await offloaded(through_workers, data)
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


def measure_gateway(sizes: list[int], rounds: int, method: str) -> None:
    print(f"load average {os.getloadavg()[0]:.1f}, {method}")
    print(
        "| message | parsed whole: read, write (worst) "
        "| forwarded: read, write (worst) |"
    )
    print("| ---: | ---: | ---: |")
    for mib in sizes:
        data = message_of(mib) if method == "predict" else classify_message_of(mib)
        if method == "regress":
            # The same examples: the two requests differ in their type alone.
            data = messages.RegressionRequest.FromString(data).SerializeToString()
        steps: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(rounds):
            for forward in (False, True):
                steps[forward].append(gateway_steps(data, forward, method))
        cells = []
        for forward in (False, True):
            reads = [read for read, _ in steps[forward]]
            writes = [write for _, write in steps[forward]]
            cells.append(
                f"{statistics.median(reads) * 1e3:.0f} ms, "
                f"{statistics.median(writes) * 1e3:.0f} ms "
                f"({max(max(reads), max(writes)) * 1e3:.0f} ms)"
            )
        print(f"| {len(data) / 2**20:.0f} MiB | {cells[0]} | {cells[1]} |", flush=True)


async def stall_of(free: Callable[[list[bytearray]], Any], mib: int) -> float:
    """The ticker's longest gap while ``free`` drops a touched body of ``mib``
    MiB (given as the only reference, in a list)."""
    holder = [bytearray(b"\x01") * (mib * 2**20)]
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
    work = free(holder)
    if work is not None:
        await work
    await asyncio.sleep(0.05)
    done.set()
    await ticker
    return max(gaps)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,64,256", help="MiB, comma separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", choices=("modelserver", "gateway"))
    parser.add_argument(
        "--method",
        choices=("predict", "classify", "regress", "free", "receive"),
        default="predict",
    )
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]
    if options.target == "gateway":
        measure_gateway(sizes, options.rounds, options.method)
        if options.method == "predict":
            uvloop.run(measure_infer(sizes, options.rounds))
    elif options.method == "regress":
        parser.error("--method regress is measured with --target gateway")
    elif options.method == "receive":
        measure_receive(sizes, options.rounds)
    elif options.method == "free":
        uvloop.run(measure_free(sizes, options.rounds))
    else:
        uvloop.run(measure(sizes, options.rounds, options.method))


if __name__ == "__main__":
    main()
