"""The gateway's two steps of a large ``Predict`` that
hold its loop, each one synchronous (so each is a stall): reading the message
(parsed whole and the tensor limits checked, or read for forwarding by
:func:`gateway.clients.forwarded.read_predict`), then writing it for the
backend (the target's model spec set, serialized and framed for gRPC-Web);
with ``--method classify`` or ``regress``, the same two steps of a
ClassificationRequest or RegressionRequest of tf.Examples (read for
forwarding by :func:`gateway.clients.forwarded_examples.read_examples`);
and a large OIP ``ModelInfer`` (typed, BYTES or raw), parsed, turned into
arrays and encoded as the backend's Predict on the loop, against the same in
the JSON workers (through their pipe, or through shared memory) and (raw)
spliced in a thread, with the ticker running, and its answer
built on the loop against written in a thread; and a large ``Predict`` answer
of floats or strings, parsed and
serialized again for the client, against kept as the backend sent it
(:mod:`gateway.clients.answers`).

Run through ``python -m benchmarks.grpcparse --target gateway``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from servekit_protocol import grpcweb, messages
from servekit_protocol.json_codec import BodyParsers

from benchmarks.grpcparse import LIMITS, classify_message_of, message_of, offloaded


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
        check_tensor_protos(request.inputs.values(), LIMITS)
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


INFER_FORMS = ("typed", "bytes", "raw")
"""How a ModelInfer's tensor travels: ``fp64_contents``, ``bytes_contents``
or ``raw_input_contents``."""


def infer_message_of(mib: int, form: str = "typed") -> bytes:
    """A ModelInferRequest of about ``mib`` MiB of FP64 values, in
    ``fp64_contents`` or ``raw_input_contents``; or (``bytes``) of BYTES
    values of 1 KiB each, numbers padded with zeros."""
    from servekit_protocol import oip_messages as oip

    values = mib * 2**20 // 8
    request = oip.ModelInferRequest(model_name="wide")
    data = np.random.default_rng(0).normal(size=values)
    if form == "bytes":
        count = mib * 2**10
        strings = request.inputs.add(
            name="x", datatype="BYTES", shape=[count // 64, 64]
        )
        strings.contents.bytes_contents.extend(
            f"{value:.6f}".encode().ljust(1024, b"0") for value in data[:count]
        )
        return request.SerializeToString()
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[values // 64, 64])
    if form == "raw":
        request.raw_input_contents.append(data.astype("<f8").tobytes())
    else:
        tensor.contents.fp64_contents.extend(data)
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
    """A large ModelInfer's loop stall: parsed on the loop, through the JSON
    workers' pipe (every message before raw inputs were spliced), through
    the workers with the message and the Predict in shared memory (typed
    contents and BYTES: :mod:`gateway.grpcfront.infer_segments`), and read
    with its raw inputs spliced into the backend's Predict
    (:mod:`gateway.codecs.v2_spliced`, the encoding in a thread)."""
    import asyncio

    from gateway.clients.forwarded import ForwardedPredict, WrittenPredict
    from gateway.codecs.v2_grpc import encode_infer_message, read_infer_message
    from gateway.codecs.v2_spliced import RawInfer, encode_raw_infer, read_raw_infer
    from gateway.grpcfront.infer_segments import encode_infer, read_infer

    parsers = BodyParsers()
    parsers.start(preload=("gateway.codecs.v2_grpc",))
    spec = messages.ModelSpec(name="wide")

    async def through_workers(message: memoryview) -> None:
        data = bytes(message)
        await parsers.in_worker(read_infer_message, data)
        encoded = await parsers.in_worker(encode_infer_message, data, None, LIMITS)
        ForwardedPredict(spec, {}, memoryview(encoded.message)).framed()

    async def through_segments(message: memoryview) -> None:
        head = await read_infer(parsers, message)
        assert head.segment, "not through shared memory"
        encoded = await encode_infer(parsers, head, None, LIMITS)
        ForwardedPredict(spec, {}, memoryview(encoded.message)).framed()

    async def spliced(message: memoryview) -> None:
        raw = read_raw_infer(message)
        assert isinstance(raw, RawInfer), "not a raw request"
        encoded = await asyncio.to_thread(encode_raw_infer, raw, None, LIMITS)
        WrittenPredict(spec, {}, memoryview(b""), parts=encoded.parts).framed()

    def median_ms(values: list[float], digits: int = 1) -> str:
        return f"{statistics.median(values) * 1e3:.{digits}f} ms" if values else "-"

    try:
        await through_workers(memoryview(infer_message_of(1)))
        await through_segments(memoryview(infer_message_of(1)))
        print(f"load average {os.getloadavg()[0]:.1f}")
        print(
            "| ModelInfer | in place: loop held | in the workers: longest stall "
            "| shared memory: longest stall | spliced: longest stall "
            "| idle loop, as long: longest stall | in the workers: took "
            "| shared memory: took |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for mib in sizes:
            for form in INFER_FORMS:
                data = infer_message_of(mib, form)
                held, stalls, idle, took = [], [], [], []
                shared, shared_took, splices = [], [], []
                for _ in range(rounds):
                    held.append(infer_in_place(data))
                    stall, seconds = await offloaded(through_workers, data)
                    stalls.append(stall)
                    took.append(seconds)
                    if form == "raw":
                        splices.append((await offloaded(spliced, data))[0])
                    else:
                        stall, seconds = await offloaded(through_segments, data)
                        shared.append(stall)
                        shared_took.append(seconds)
                    idle.append((await offloaded(None, b"", seconds))[0])
                print(
                    f"| {len(data) / 2**20:.0f} MiB {form} "
                    f"| {median_ms(held, 0)} | {median_ms(stalls)} "
                    f"| {median_ms(shared)} | {median_ms(splices)} "
                    f"| {median_ms(idle)} | {median_ms(took, 0)} "
                    f"| {median_ms(shared_took, 0)} |",
                    flush=True,
                )
    finally:
        parsers.close()


async def measure_infer_answers(sizes: list[int], rounds: int) -> None:
    """A large ModelInfer's answer (raw outputs) from the backend's Predict
    answer of float64 values: parsed, decoded and built on the loop, as
    before, against written from the bytes in a thread
    (:func:`gateway.codecs.v2_grpc_answer.write_infer_answer`), the loop's
    longest stall meanwhile."""
    import asyncio

    from gateway.clients.answers import ReceivedAnswer, read_answer
    from gateway.codecs.v2 import InferRequest
    from gateway.codecs.v2_grpc import format_model_infer
    from gateway.codecs.v2_grpc_answer import chosen_outputs, write_infer_answer

    request = InferRequest({}, "id")

    def on_the_loop(data: bytes) -> float:
        started = time.perf_counter()
        response = messages.PredictResponse.FromString(data)
        outputs = chosen_outputs("wide", request, response)
        format_model_infer("wide", "1", outputs, request, raw=True).SerializeToString()
        return time.perf_counter() - started

    def written(kept: ReceivedAnswer) -> Callable[[memoryview], Awaitable[None]]:
        async def write(_message: memoryview) -> None:
            await asyncio.to_thread(
                write_infer_answer, "wide", "1", kept, request, True
            )

        return write

    print(
        "| ModelInfer answer | built on the loop: loop held "
        "| written in a thread: longest stall | idle loop, as long |"
    )
    print("| ---: | ---: | ---: | ---: |")
    for mib in sizes:
        data = answer_of(mib, strings=False)
        # As the backend client keeps it (a walk of its two fields).
        kept = read_answer(data, 2)
        assert kept is not None
        held, stalls, idle = [], [], []
        for _ in range(rounds):
            held.append(on_the_loop(data))
            stall, seconds = await offloaded(written(kept), data)
            stalls.append(stall)
            idle.append((await offloaded(None, b"", seconds))[0])
        print(
            f"| {len(data) / 2**20:.0f} MiB float64 "
            f"| {statistics.median(held) * 1e3:.0f} ms "
            f"| {statistics.median(stalls) * 1e3:.1f} ms "
            f"| {statistics.median(idle) * 1e3:.1f} ms |",
            flush=True,
        )


def answer_of(mib: int, strings: bool) -> bytes:
    """A PredictResponse of about ``mib`` MiB: float64 values, or strings of
    seven bytes (nine a value on the wire)."""
    response = messages.PredictResponse()
    response.model_spec.name = "wide"
    response.model_spec.version.value = 1
    tensor = response.outputs["predictions"]
    if strings:
        count = mib * 2**20 // 9
        tensor.dtype = messages.DT_STRING
        tensor.string_val.extend(b"class-%d" % (i % 10) for i in range(count))
    else:
        count = mib * 2**20 // 8
        tensor.dtype = messages.DT_DOUBLE
        tensor.double_val.extend(np.random.default_rng(0).normal(size=count))
    tensor.tensor_shape.dim.add(size=count)
    return response.SerializeToString()


ANSWER_STEPS = ("parsed", "kept, joined", "kept")
"""How a backend's answer is handled: parsed and serialized again (and framed
joined), kept as received but framed joined (a copy of all of it, as the gRPC
server framed every answer before), or kept and framed with the prefix apart
(:data:`servekit_protocol.grpc_server.calls.Framed`, as now)."""


def answer_step(data: bytes, step: str) -> float:
    """Seconds the gateway's loop spends on a backend's answer until it is
    framed for the client (:func:`gateway.clients.answers.read_answer` keeps
    it as received)."""
    from gateway.clients.answers import read_answer

    started = time.perf_counter()
    if step == "parsed":
        out = messages.PredictResponse.FromString(data).SerializeToString()
    else:
        kept = read_answer(data, 2)
        assert kept is not None
        out = kept.data
    if step == "kept":
        (grpcweb.prefix(len(out)), out)
    else:
        grpcweb.prefix(len(out)) + out
    return time.perf_counter() - started


def measure_answers(sizes: list[int], rounds: int) -> None:
    print(
        "| answer | parsed and serialized again (worst) "
        "| kept, framed joined (worst) | kept, prefix apart (worst) |"
    )
    print("| ---: | ---: | ---: | ---: |")
    for mib in sizes:
        for strings in (False, True):
            data = answer_of(mib, strings)
            steps: dict[str, list[float]] = {step: [] for step in ANSWER_STEPS}
            for _ in range(rounds):
                for step in ANSWER_STEPS:
                    steps[step].append(answer_step(data, step))
            cells = [
                f"{statistics.median(steps[step]) * 1e3:.0f} ms "
                f"({max(steps[step]) * 1e3:.0f} ms)"
                for step in ANSWER_STEPS
            ]
            kind = "strings" if strings else "float64"
            print(
                f"| {len(data) / 2**20:.0f} MiB {kind} | {' | '.join(cells)} |",
                flush=True,
            )


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
