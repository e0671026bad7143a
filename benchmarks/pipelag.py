"""How long a large gRPC Predict message decoded in a worker holds the model
server's event loop when its shared memory folder has no room
(:mod:`modelserver.protocol.grpc.largerequests`): the message sent, and its
arrays received, through pipes of their own
(:mod:`servekit_protocol.messagepipe`; "own pipe"), against both
pickled through the process pool's pipe (:class:`MessageBytes` and
``CarriedArray``, the road before the pipes of their own and still their
fallback; "pickled"), against the message and arrays through segments.

The folder without room is one that does not exist: every segment's
``open`` fails with an ``OSError``, the branch a full ``/dev/shm`` (``ENOSPC``)
or a file size limit (``EFBIG``) takes. A ticker on the loop (1 ms apart,
:mod:`benchmarks.ticker`) records the longest gap between its ticks during
each call; the three roads run in turns and their arrays are checked equal.

With ``--method infer``, the same for the gateway's large ModelInfer
messages with typed contents (:mod:`gateway.grpcfront.infer_segments`): the
message read for its head and encoded as the backend's Predict in a worker,
through pipes of their own ("own pipe"), against the road before them (the
message copied on the loop and pickled to the worker twice, the Predict
unpickled back; "pickled"), against segments. The Predicts are checked equal.

Run as ``python -m benchmarks.pipelag [--rounds 3] [--sizes 64,256]
[--method predict|infer]``.
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
from gateway.codecs.v2_grpc import encode_infer_message, read_infer_message
from gateway.grpcfront.infer_segments import encode_infer, read_infer, release
from modelserver.protocol.grpc.largerequests import PredictDecoder, decode_predict
from servekit_protocol import messages
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


def infer_message(mib: int) -> bytes:
    """A ModelInfer message of about ``mib`` MiB of ``fp64_contents``."""
    rows = mib * 1024 * 1024 // 8 // FEATURES
    request = oip.ModelInferRequest(model_name="wide", id="large")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[rows, FEATURES])
    tensor.contents.fp64_contents.extend(
        np.random.default_rng(3).normal(size=rows * FEATURES)
    )
    return request.SerializeToString()


Road = Callable[[bytes], Awaitable[Any]]
"""A road: a message -> its decoded array."""


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


async def _longest(road: Road, message: bytes) -> tuple[float, Any]:
    async with loop_intervals() as gaps:
        array = await road(message)
    return max(gaps), array


_WORKER_MODULES = {
    "predict": ["modelserver.protocol.grpc.largerequests"],
    "infer": ["gateway.codecs.v2_grpc"],
}


async def _parsers(directory: str, method: str) -> BodyParsers:
    parsers = BodyParsers(workers=2, threshold_bytes=1, segment_dir=directory)
    parsers.start(_WORKER_MODULES[method])
    await parsers.wait_started(120)
    return parsers


def _roads(method: str, tight: BodyParsers, roomy: BodyParsers) -> dict[str, Road]:
    if method == "infer":
        return {
            "own pipe": _infer_road(tight),
            "pickled": _pickled_infer_road(tight),
            "segments": _infer_road(roomy),
        }
    return {
        "own pipe": _decoder_road(PredictDecoder(tight, None)),
        "pickled": _pickled_road(tight),
        "segments": _decoder_road(PredictDecoder(roomy, None)),
    }


async def _run(rounds: int, sizes: list[int], method: str) -> None:
    with tempfile.TemporaryDirectory() as room:
        tight = await _parsers(str(Path(room) / "missing"), method)
        roomy = await _parsers(room, method)
        try:
            roads = _roads(method, tight, roomy)
            for mib in sizes:
                message = (infer_message if method == "infer" else predict_message)(mib)
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
                    assert all(np.array_equal(arrays[0], a) for a in arrays[1:])
                    del arrays
                print(
                    f"{len(message) >> 20} MiB {method} message, longest loop gap ms: "
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
        "--method",
        choices=sorted(_WORKER_MODULES),
        default="predict",
        help="the model server's Predict or the gateway's ModelInfer",
    )
    args = parser.parse_args()
    # The servers' warning for each call without room is not what is measured.
    logging.disable(logging.WARNING)
    print(f"load average {os.getloadavg()}", flush=True)
    sizes = [int(size) for size in args.sizes.split(",")]
    asyncio.run(_run(args.rounds, sizes, args.method))


if __name__ == "__main__":
    main()
