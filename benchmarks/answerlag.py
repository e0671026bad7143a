"""How long a large answer or ``:predict`` body crossing to a JSON worker holds
the model server's event loop: through the process pool's pipe (pickled, as
before) against through shared memory segments
(:mod:`servekit_protocol.segment_answers`, :mod:`servekit_protocol.segment_bodies`).

The loop's own CPU is small either way: what holds it is the GIL, taken by the
pool's helper threads while they pickle and unpickle the arrays and the bytes.
A ticker on the loop (1 ms apart, :mod:`benchmarks.ticker`) records the
longest gap between its ticks during each call: that gap is the stall other
clients would see. Three kinds, each at 16 and 64 MiB of doubles: a gRPC
``PredictResponse`` built in the worker, the REST JSON answer of the same
outputs, and a REST ``:predict`` body (256 columns) parsed in the worker. The
two roads run in turns, each answer checked equal; medians and maxima of the
longest gaps are reported with their ratio.

Run as ``python -m benchmarks.answerlag [--rounds 5] [--sizes 16,64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from collections.abc import Awaitable
from typing import Any

import numpy as np
import orjson
from modelserver.protocol.grpc import converters, largeanswers
from modelserver.types import PredictResponse, ResolvedSpec
from servekit_protocol import json_codec, segment_answers, segment_bodies
from servekit_protocol.json_codec import BodyParsers

from benchmarks.ticker import loop_intervals

SPEC = ResolvedSpec("m", 1, "serving_default")
SPECS = {"x": json_codec.TensorSpec("DT_DOUBLE", None)}


def serialize_through_pipe(response: PredictResponse) -> bytes:
    """The PredictResponse's bytes as the pipe road built them (in a worker)."""
    return converters.from_predict_response(response, packed=False).SerializeToString()


async def _longest(call: Awaitable[Any]) -> tuple[float, Any]:
    async with loop_intervals() as gaps:
        result = await call
    return max(gaps), result


def _report(kind: str, pipe: list[float], segments: list[float]) -> None:
    ratio = statistics.median(pipe) / statistics.median(segments)
    print(
        f"{kind}: longest loop gap ms, pipe median {statistics.median(pipe) * 1e3:.1f}"
        f" (max {max(pipe) * 1e3:.1f}), segments median "
        f"{statistics.median(segments) * 1e3:.1f} (max {max(segments) * 1e3:.1f}),"
        f" pipe/segments {ratio:.1f}x",
        flush=True,
    )


async def _run(rounds: int, sizes: list[int]) -> None:
    parsers = BodyParsers(workers=2, threshold_bytes=1, answer_threshold_elements=1)
    parsers.start(
        ["servekit_protocol.segment_answers", "servekit_protocol.segment_bodies"]
    )
    await parsers.wait_started(120)
    try:
        for mib in sizes:
            outputs = {"y": np.random.default_rng(1).normal(size=(mib * 131_072,))}
            response = PredictResponse(SPEC, outputs)
            row = json_codec.RequestFormat.ROW
            body = orjson.dumps(
                {"instances": outputs["y"].reshape(-1, 256)},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
            gaps: dict[str, list[float]] = {}
            for _ in range(rounds):
                pairs = {
                    f"gRPC PredictResponse {mib} MiB": (
                        parsers.in_worker(serialize_through_pipe, response),
                        segment_answers.write_in_worker(
                            parsers,
                            largeanswers.serialize_predict,
                            outputs,
                            SPEC,
                            False,
                        ),
                    ),
                    f"REST JSON answer of {mib} MiB of doubles": (
                        parsers.in_worker(
                            json_codec.format_predict_response, outputs, row
                        ),
                        segment_answers.write_in_worker(
                            parsers, json_codec.format_predict_response, outputs, row
                        ),
                    ),
                    f"REST :predict body {len(body) >> 20} MiB ({mib} MiB array)": (
                        parsers.in_worker(
                            json_codec.parse_predict_request, body, SPECS, None
                        ),
                        segment_bodies.parse_predict(parsers, body, SPECS, None),
                    ),
                }
                for kind, (through_pipe, through_segments) in pairs.items():
                    gap_pipe, piped = await _longest(through_pipe)
                    gap_segments, segmented = await _longest(through_segments)
                    if isinstance(piped, bytes):
                        assert piped == segmented, kind
                    else:
                        assert np.array_equal(
                            piped.inputs["x"], segmented.inputs["x"]
                        ), kind
                    gaps.setdefault(f"{kind} pipe", []).append(gap_pipe)
                    gaps.setdefault(f"{kind} segments", []).append(gap_segments)
            for kind in dict.fromkeys(key.rsplit(" ", 1)[0] for key in gaps):
                _report(kind, gaps[f"{kind} pipe"], gaps[f"{kind} segments"])
    finally:
        parsers.close()


def main() -> None:
    """Parse the arguments and run the rounds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="16,64", help="MiB of doubles")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    asyncio.run(_run(args.rounds, [int(size) for size in args.sizes.split(",")]))


if __name__ == "__main__":
    main()
