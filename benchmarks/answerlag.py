"""How long a large answer or ``:predict`` body crossing to a JSON worker holds
the model server's event loop: through the process pool's pipe (pickled, as
before) against through shared memory segments
(:mod:`servekit_protocol.segment_answers`, :mod:`servekit_protocol.segment_bodies`).

The loop's own CPU is small either way: what holds it is the GIL, taken by the
pool's helper threads while they pickle and unpickle the arrays and the bytes.
A ticker on the loop (1 ms apart, :mod:`benchmarks.ticker`) records the
longest gap between its ticks during each call: that gap is the stall other
clients would see. The kinds, each at 16 and 64 MiB of doubles: a gRPC
``PredictResponse`` built in the worker, the REST JSON answer of the same
outputs, and a REST ``:predict`` body (256 columns) parsed in the worker
(``--kinds predict``); gRPC and REST Classify answers of ten classes whose
labels every example shares (a scikit-learn model's: the pipe road pickled
them whole), gRPC and REST Regress answers of float32 values, a body read
for its ``signature_name`` and a ``:regress`` body of examples, sent back as
dicts or as columns (``--kinds examples``); gRPC and REST Classify answers of
two classes whose labels are ``bytes`` objects (a TensorFlow model's
``classes``), different in every example or its vocabulary tiled, 16,384
examples a MiB (``--kinds labels``: the pipe road pickles the object labels,
the segment road carries them as a buffer and offsets). The two roads run in turns, each answer checked
equal; medians and maxima of the longest gaps are reported with their ratio.

Run as ``python -m benchmarks.answerlag [--rounds 5] [--sizes 16,64]
[--kinds all|predict|examples|labels]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import numpy as np
import orjson
from modelserver import examplecolumns
from modelserver.protocol import answerarrays
from modelserver.protocol.grpc import converters, largeanswers
from modelserver.protocol.grpc.largeanswers import AnswerWriter
from modelserver.protocol.rest import codec, examplebodies
from modelserver.types import (
    Classifications,
    ClassifyResponse,
    ExampleColumns,
    PredictResponse,
    RegressResponse,
    ResolvedSpec,
)
from servekit_protocol import json_codec, messages, segment_answers, segment_bodies
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


Calls = dict[str, tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]]]]
"""Kind -> (the pipe road, the segment road), each making a fresh call."""


def _predict_kinds(parsers: BodyParsers, mib: int) -> Calls:
    outputs = {"y": np.random.default_rng(1).normal(size=(mib * 131_072,))}
    response = PredictResponse(SPEC, outputs)
    row = json_codec.RequestFormat.ROW
    body = orjson.dumps(
        {"instances": outputs["y"].reshape(-1, 256)},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return {
        f"gRPC PredictResponse {mib} MiB": (
            lambda: parsers.in_worker(serialize_through_pipe, response),
            lambda: segment_answers.write_in_worker(
                parsers, largeanswers.serialize_predict, outputs, SPEC, False
            ),
        ),
        f"REST JSON answer of {mib} MiB of doubles": (
            lambda: parsers.in_worker(json_codec.format_predict_response, outputs, row),
            lambda: segment_answers.write_in_worker(
                parsers, json_codec.format_predict_response, outputs, row
            ),
        ),
        f"REST :predict body {len(body) >> 20} MiB ({mib} MiB array)": (
            lambda: parsers.in_worker(
                json_codec.parse_predict_request, body, SPECS, None
            ),
            lambda: segment_bodies.parse_predict(parsers, body, SPECS, None),
        ),
    }


def _examples_kinds(parsers: BodyParsers, mib: int) -> Calls:
    rng = np.random.default_rng(2)
    examples = mib * 131_072 // CLASSES
    scores = rng.random((examples, CLASSES)).astype(np.float32).astype(np.float64)
    labels = np.array([f"class {index}" for index in range(CLASSES)], dtype=object)
    results = Classifications(
        np.broadcast_to(labels, scores.shape), scores, examples, CLASSES
    )
    unscored = replace(results, scores=None)
    values = rng.normal(size=mib * 131_072).astype(np.float32)
    regression = RegressResponse(SPEC, values)
    named = orjson.dumps(
        {"signature_name": "serving_default", "instances": scores.reshape(-1, 1)},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    rows = [{"a": [a], "b": [b]} for a, b in scores[: len(values) // 8, :2].tolist()]
    examples_body = orjson.dumps({"examples": rows})
    writer = AnswerWriter(parsers)
    return {
        f"gRPC Classify answer {mib} MiB of scores, labels shared": (
            lambda: segment_answers.write_in_worker(
                parsers, classify_through_pipe, {"s": scores}, SPEC, unscored
            ),
            lambda: writer.classify(ClassifyResponse(SPEC, results)),
        ),
        f"REST :classify answer {mib} MiB of scores, labels shared": (
            lambda: segment_answers.write_in_worker(
                parsers, classify_json_through_pipe, {"s": scores}, unscored
            ),
            lambda: codec.encode_classify(results, parsers),
        ),
        f"gRPC Regress answer {mib} Mi/8 values": (
            lambda: parsers.in_worker(regress_through_pipe, regression),
            lambda: writer.regress(regression),
        ),
        f"REST :regress answer {mib} Mi/8 values": (
            lambda: parsers.in_worker(codec.regress_json, values),
            lambda: codec.encode_regress(values, parsers),
        ),
        f"REST signature_name read of {len(named) >> 20} MiB": (
            lambda: parsers.in_worker(codec.signature_name_of, named),
            lambda: segment_bodies.run_on_body(parsers, codec.signature_name_of, named),
        ),
        f"REST :regress body {len(examples_body) >> 20} MiB ({len(rows)} examples)": (
            lambda: parsers.in_worker(codec.examples_of, examples_body),
            lambda: examplebodies.decode_large_examples(parsers, examples_body, None),
        ),
    }


CLASSES = 10
LABELLED_EXAMPLES_A_MIB = 16_384


def _labels_kinds(parsers: BodyParsers, mib: int) -> Calls:
    examples = mib * LABELLED_EXAMPLES_A_MIB
    scores = np.random.default_rng(3).random((examples, 2))
    scores = scores.astype(np.float32).astype(np.float64)
    distinct = np.empty((examples, 2), object)
    distinct[:, 0] = [b"yes-%d" % index for index in range(examples)]
    distinct[:, 1] = [b"no-\xff%d" % index for index in range(examples)]
    tiled = np.empty((examples, 2), object)
    tiled[:, 0] = [b"yes"] * examples
    tiled[:, 1] = [b"no \xff"] * examples
    calls: Calls = {}
    for name, labels in (("distinct", distinct), ("tiled", tiled)):
        calls.update(_labelled_calls(parsers, name, labels, scores))
    return calls


def _labelled_calls(parsers: BodyParsers, name: str, labels: Any, scores: Any) -> Calls:
    examples = len(labels)
    results = Classifications(labels, scores, examples, 2)
    # The pipe road: the object labels pickled by the segment writer.
    arrays = {"labels": labels, "scores": scores}
    shape = answerarrays.ClassificationsShape(examples, 2)
    writer = AnswerWriter(parsers)
    return {
        f"gRPC Classify answer {examples} examples, {name} bytes labels": (
            lambda: segment_answers.write_in_worker(
                parsers, largeanswers.serialize_classify, arrays, SPEC, shape
            ),
            lambda: writer.classify(ClassifyResponse(SPEC, results)),
        ),
        f"REST :classify answer {examples} examples, {name} bytes labels": (
            lambda: segment_answers.write_in_worker(
                parsers, codec.classify_json_of, arrays, shape
            ),
            lambda: codec.encode_classify(results, parsers),
        ),
    }


def classify_through_pipe(
    arrays: dict[str, Any], spec: ResolvedSpec, results: Classifications
) -> bytes:
    """The ClassificationResponse's bytes as the pipe road built them: the
    scores through a segment, the labels (a broadcast row) pickled whole."""
    response = ClassifyResponse(spec, replace(results, scores=arrays["s"]))
    return converters.from_classify_response(response).SerializeToString()


def classify_json_through_pipe(
    arrays: dict[str, Any], results: Classifications
) -> bytes:
    """The ``:classify`` JSON as the pipe road wrote it (labels pickled)."""
    return codec.classify_json(replace(results, scores=arrays["s"]))


def regress_through_pipe(response: RegressResponse) -> bytes:
    """The RegressionResponse's bytes as the pipe road built them (the values
    pickled)."""
    return converters.from_regress_response(response).SerializeToString()


def _same(piped: Any, segmented: Any) -> bool:
    if isinstance(segmented, messages.Serialized):
        segmented = segmented.data
    if isinstance(piped, bytes | str):
        return bool(piped == segmented)
    if isinstance(piped, tuple) and isinstance(segmented[1], ExampleColumns):
        # The dicts read in place, and the columns read in a worker.
        name, examples, _ = piped
        as_dicts = examplecolumns.to_examples(segmented[1])
        return name == segmented[0] and repr(examples) == repr(as_dicts)
    if hasattr(piped, "inputs"):
        return bool(np.array_equal(piped.inputs["x"], segmented.inputs["x"]))
    # Two pickles of equal objects may differ in what they share; the texts
    # do not.
    return repr(piped) == repr(segmented)


async def _run(rounds: int, sizes: list[int], kinds: str) -> None:
    parsers = BodyParsers(workers=2, threshold_bytes=1, answer_threshold_elements=1)
    parsers.start(
        [
            "servekit_protocol.segment_answers",
            "servekit_protocol.segment_bodies",
            "modelserver.protocol.rest.codec",
            "modelserver.protocol.grpc.largeanswers",
        ]
    )
    await parsers.wait_started(120)
    try:
        for mib in sizes:
            calls: Calls = {}
            if kinds in ("all", "predict"):
                calls.update(_predict_kinds(parsers, mib))
            if kinds in ("all", "examples"):
                calls.update(_examples_kinds(parsers, mib))
            if kinds in ("all", "labels"):
                calls.update(_labels_kinds(parsers, mib))
            gaps: dict[str, list[float]] = {}
            for _ in range(rounds):
                for kind, (through_pipe, through_segments) in calls.items():
                    gap_pipe, piped = await _longest(through_pipe())
                    gap_segments, segmented = await _longest(through_segments())
                    assert _same(piped, segmented), kind
                    gaps.setdefault(f"{kind} pipe", []).append(gap_pipe)
                    gaps.setdefault(f"{kind} segments", []).append(gap_segments)
            for kind in calls:
                _report(kind, gaps[f"{kind} pipe"], gaps[f"{kind} segments"])
    finally:
        parsers.close()


def main() -> None:
    """Parse the arguments and run the rounds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="16,64", help="MiB of doubles")
    parser.add_argument(
        "--kinds",
        choices=("all", "predict", "examples", "labels"),
        default="all",
        help="predict: the Predict answers and body; examples: the Classify and "
        "Regress answers, the signature_name read and the examples body; labels: "
        "Classify answers of bytes labels",
    )
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    sizes = [int(size) for size in args.sizes.split(",")]
    asyncio.run(_run(args.rounds, sizes, args.kinds))


if __name__ == "__main__":
    main()
