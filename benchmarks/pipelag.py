"""How long a large message handled in a worker holds a server's event loop
when its shared memory folder has no room, through pipes of their
own (:mod:`servekit_protocol.messagepipe`; "own pipe"), against pickled
through the process pool's pipe (the road before the pipes of their own and
still their fallback; "pickled"), against segments, for three kinds:

- ``grpc``: a gRPC Predict message decoded in a worker
  (:mod:`modelserver.protocol.grpc.largerequests`), the message sent and its
  arrays received (pickled: :class:`MessageBytes` and ``CarriedArray``);
- ``grpc-arrays``: the same, the message through a segment with room and
  its arrays' segment without (own pipe: one the worker makes; pickled:
  ``CarriedArray``);
- ``rest-body``: a REST ``:predict`` JSON body parsed in a worker
  (:mod:`servekit_protocol.segment_bodies`), the body sent and its arrays
  received (pickled: the body and the parsed body as they are);
- ``rest-answer``: a ``:predict`` answer written in a worker
  (:mod:`servekit_protocol.segment_answers`), its arrays sent and the JSON
  received (pickled: the arrays and the answer as they are);
- ``gateway-infer``: the gateway's large ModelInfer with typed contents
  (:mod:`gateway.grpcfront.infer_segments`), read for its head and encoded as
  the backend's Predict in a worker, the message sent (twice) and the Predict
  received (pickled: the road before the pipes of their own, the message
  copied on the loop and pickled, the Predict unpickled). The Predicts are
  checked equal.

The folder without room is one that does not exist: every segment's
``open`` fails with an ``OSError``, the branch a full ``/dev/shm`` (``ENOSPC``)
or a file size limit (``EFBIG``) takes. A ticker on the loop (1 ms apart,
:mod:`benchmarks.ticker`) records the longest gap between its ticks during
each call; the three roads run in turns and their arrays are checked equal.

Sizes are MiB of the doubles decoded or answered (a JSON body or answer is
about 2.4 times as large). Run as ``python -m benchmarks.pipelag [--rounds 3]
[--sizes 64,256] [--kinds grpc,grpc-arrays,rest-body,rest-answer,gateway-infer]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from gateway.codecs.v2_grpc import encode_infer_message, read_infer_message
from gateway.grpcfront.infer_segments import encode_infer, read_infer, release
from modelserver.protocol.carriedarrays import carried_back
from modelserver.protocol.grpc.largerequests import (
    PredictDecoder,
    decode_predict,
)
from servekit_protocol import (
    json_codec,
    messages,
    segment_answers,
    segment_bodies,
    segments,
)
from servekit_protocol import oip_messages as oip
from servekit_protocol.json_codec import BodyParsers
from servekit_protocol.pickledmessage import MessageBytes
from servekit_protocol.tensor_limits import TensorLimits

from benchmarks.ticker import loop_intervals

FEATURES = 256


def predict_message(mib: int) -> bytes:
    """A Predict message of about ``mib`` MiB of ``double_val`` values."""
    rows = mib * 1024 * 1024 // 8 // FEATURES
    request = messages.PredictRequest()
    request.model_spec.name = "wide"
    tensor = request.inputs["x"]
    tensor.dtype = messages.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=FEATURES)
    tensor.double_val.extend(np.random.default_rng(3).normal(size=rows * FEATURES))
    return request.SerializeToString()


Road = Callable[[bytes], Awaitable[Any]]
"""A road: a message -> its decoded array (or answer)."""

SPECS = {"x": json_codec.TensorSpec("DT_DOUBLE", None)}
ROW = json_codec.RequestFormat.ROW


def _values(mib: int) -> np.ndarray[Any, Any]:
    rows = mib * 1024 * 1024 // 8 // FEATURES
    return np.random.default_rng(3).normal(size=(rows, FEATURES))


def predict_body(mib: int) -> bytes:
    """A ``:predict`` body of ``mib`` MiB of doubles (row format)."""
    return orjson.dumps({"instances": _values(mib)}, option=orjson.OPT_SERIALIZE_NUMPY)


def _body_road(parsers: BodyParsers) -> Road:
    async def road(body: bytes) -> Any:
        parsed = await segment_bodies.parse_predict(parsers, body, SPECS, None)
        return parsed.inputs["x"]

    return road


def _pickled_body_road(parsers: BodyParsers) -> Road:
    async def road(body: bytes) -> Any:
        parsed = await parsers.in_worker(
            json_codec.parse_predict_request, body, SPECS, None
        )
        return parsed.inputs["x"]

    return road


_ANSWERED: dict[bytes, dict[str, np.ndarray[Any, Any]]] = {}
"""The outputs each answer road writes, by the key it is given."""


def _answer_road(parsers: BodyParsers) -> Road:
    async def road(key: bytes) -> Any:
        return await segment_answers.write_in_worker(
            parsers, json_codec.format_predict_response, _ANSWERED[key], ROW
        )

    return road


def _pickled_answer_road(parsers: BodyParsers) -> Road:
    async def road(key: bytes) -> Any:
        return await parsers.in_worker(
            json_codec.format_predict_response, _ANSWERED[key], ROW
        )

    return road


def _decoder_road(decoder: PredictDecoder) -> Road:
    async def road(message: bytes) -> Any:
        decoded = await decoder(memoryview(message))
        return decoded.unwrap().inputs["x"]

    return road


def _pickled_road(parsers: BodyParsers) -> Road:
    async def road(message: bytes) -> Any:
        decoded = await parsers.in_worker(
            decode_predict, MessageBytes(memoryview(message)), None, None
        )
        assert isinstance(decoded.carried, dict)
        return decoded.carried["x"].array

    return road


def infer_message(mib: int) -> bytes:
    """A ModelInfer message of about ``mib`` MiB of ``fp64_contents``."""
    request = oip.ModelInferRequest(model_name="wide", id="large")
    values = _values(mib)
    tensor = request.inputs.add(name="x", datatype="FP64", shape=list(values.shape))
    tensor.contents.fp64_contents.extend(values.reshape(-1))
    return request.SerializeToString()


_LIMITS = TensorLimits(max_bytes=1 << 30)


def _infer_road(parsers: BodyParsers) -> Road:
    async def road(message: bytes) -> Any:
        head = await read_infer(parsers, memoryview(message))
        try:
            encoded = await encode_infer(parsers, head, None, _LIMITS)
        finally:
            release(head)
        return np.frombuffer(encoded.message, np.uint8)

    return road


def _pickled_infer_road(parsers: BodyParsers) -> Road:
    # The gateway's road without room before the pipes of their own.
    async def road(message: bytes) -> Any:
        data = bytes(memoryview(message))
        await parsers.in_worker(read_infer_message, data)
        encoded = await parsers.in_worker(encode_infer_message, data, None, _LIMITS)
        return np.frombuffer(encoded.message, np.uint8)

    return road


def _equal(one: Any, other: Any) -> bool:
    if isinstance(one, bytes):
        return bool(one == other)
    return bool(np.array_equal(one, other))


def _arrays_road(roomy: BodyParsers, arrays_folder: str | None) -> Road:
    # The message through a segment of ``roomy``'s; its arrays to a segment
    # of ``arrays_folder`` (one without room), or carried when None.
    async def road(message: bytes) -> Any:
        message_segment = segments.new_path(roomy.segment_dir, "message")
        await asyncio.to_thread(segments.write_bytes, message_segment, message)
        try:
            arrays_segment = (
                None
                if arrays_folder is None
                else segments.new_path(arrays_folder, "arrays")
            )
            decoded = await roomy.in_worker(
                decode_predict, message_segment, arrays_segment, None
            )
        finally:
            await asyncio.to_thread(segments.unlink, message_segment)
        return (await carried_back(decoded.carried))["x"]

    return road


async def _longest(road: Road, message: bytes) -> tuple[float, Any]:
    async with loop_intervals() as gaps:
        array = await road(message)
    return max(gaps), array


async def _parsers(directory: str) -> BodyParsers:
    parsers = BodyParsers(workers=2, threshold_bytes=1, segment_dir=directory)
    parsers.start(["modelserver.protocol.grpc.largerequests", "gateway.codecs.v2_grpc"])
    await parsers.wait_started(120)
    return parsers


def _roads(kind: str, tight: BodyParsers, roomy: BodyParsers) -> dict[str, Road]:
    if kind == "grpc-arrays":
        return {
            "own pipe": _arrays_road(roomy, tight.segment_dir),
            "pickled": _arrays_road(roomy, None),
            "segments": _decoder_road(PredictDecoder(roomy, None)),
        }
    if kind == "gateway-infer":
        return {
            "own pipe": _infer_road(tight),
            "pickled": _pickled_infer_road(tight),
            "segments": _infer_road(roomy),
        }
    if kind == "rest-body":
        return {
            "own pipe": _body_road(tight),
            "pickled": _pickled_body_road(tight),
            "segments": _body_road(roomy),
        }
    if kind == "rest-answer":
        return {
            "own pipe": _answer_road(tight),
            "pickled": _pickled_answer_road(tight),
            "segments": _answer_road(roomy),
        }
    return {
        "own pipe": _decoder_road(PredictDecoder(tight, None)),
        "pickled": _pickled_road(tight),
        "segments": _decoder_road(PredictDecoder(roomy, None)),
    }


def _input(kind: str, mib: int) -> bytes:
    if kind == "rest-body":
        return predict_body(mib)
    if kind == "rest-answer":
        key = str(mib).encode()
        _ANSWERED[key] = {"y": _values(mib)}
        return key
    if kind == "gateway-infer":
        return infer_message(mib)
    return predict_message(mib)


async def _run(rounds: int, sizes: list[int], kinds: list[str]) -> None:
    with tempfile.TemporaryDirectory() as room:
        tight = await _parsers(str(Path(room) / "missing"))
        roomy = await _parsers(room)
        try:
            for kind, mib in ((kind, mib) for kind in kinds for mib in sizes):
                roads = _roads(kind, tight, roomy)
                message = _input(kind, mib)
                # One call of each first: the workers' first large message
                # maps and touches memory they keep.
                for road in roads.values():
                    await _longest(road, message)
                gaps: dict[str, list[float]] = {name: [] for name in roads}
                for _ in range(rounds):
                    arrays = []
                    for name, road in roads.items():
                        gap, array = await _longest(road, message)
                        gaps[name].append(gap)
                        arrays.append(array)
                    assert all(_equal(arrays[0], a) for a in arrays[1:])
                    del arrays
                _ANSWERED.clear()
                print(
                    f"{kind}, {mib} MiB of doubles, longest loop gap ms: "
                    + "; ".join(
                        f"{name} "
                        + ", ".join(f"{gap * 1e3:.1f}" for gap in found)
                        + f" (median {statistics.median(found) * 1e3:.1f})"
                        for name, found in gaps.items()
                    ),
                    flush=True,
                )
        finally:
            tight.close()
            roomy.close()


def main() -> None:
    """Parse the arguments and run the rounds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="64,256", help="MiB of doubles")
    parser.add_argument(
        "--kinds",
        default="grpc,grpc-arrays,rest-body,rest-answer",
        help="comma-separated: grpc, grpc-arrays, rest-body, rest-answer, "
        "gateway-infer",
    )
    args = parser.parse_args()
    # The servers' warning for each call without room is not what is measured.
    logging.disable(logging.WARNING)
    print(f"load average {os.getloadavg()}", flush=True)
    sizes = [int(size) for size in args.sizes.split(",")]
    asyncio.run(_run(args.rounds, sizes, args.kinds.split(",")))


if __name__ == "__main__":
    main()
