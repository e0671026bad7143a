"""The cost of TF Serving's answer encoding, measured in process.

A Predict answer's outputs are encoded as TF Serving does by default (the
dtype's typed field, ``float_val``...) or packed as ``tensor_content``
(``--enable_serialization_as_tensor_content``). For each output shape this
times, side by side in the same rounds, building the PredictResponse the model
server sends and serialising it (what a call costs the server), and parsing
those bytes and decoding the output to numpy (what it costs the gateway or a
client). Each line is one case: median nanoseconds of both encodings and the
ratio typed / packed.

Run: ``python -m benchmarks.encoding [--rounds 7] [--seconds 0.2]``; ``make
bench`` runs it too (``--systems encoding`` alone) and reports it as a section.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from servekit_protocol import messages
from servekit_protocol.tensors import from_ndarray, to_ndarray


@dataclass(frozen=True)
class Case:
    """One output tensor of an answer."""

    name: str
    array: np.ndarray[Any, Any]


def cases() -> list[Case]:
    """Answers of the usual sizes: one score, a batch of class scores, an image."""
    rng = np.random.default_rng(0)
    return [
        Case("float32[1,1]", np.array([[3.0]], np.float32)),
        Case("float64[32]", rng.normal(size=32)),
        Case("float32[32,10]", rng.normal(size=(32, 10)).astype(np.float32)),
        Case("int64[32]", rng.integers(0, 10, size=32)),
        Case("int32[32,10]", rng.integers(-1000, 1000, size=(32, 10), dtype=np.int32)),
        Case("float16[32,10]", rng.normal(size=(32, 10)).astype(np.float16)),
        Case(
            "float32[8,224,224,3]",
            rng.normal(size=(8, 224, 224, 3)).astype(np.float32),
        ),
    ]


def encode(array: np.ndarray[Any, Any], packed: bool) -> bytes:
    """The answer the model server sends for one output."""
    response = messages.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 1
    response.model_spec.signature_name = "serving_default"
    from_ndarray(array, into=response.outputs["y"], packed=packed)
    return response.SerializeToString()


def decode(data: bytes) -> np.ndarray[Any, Any]:
    """What the gateway or a client does with the answer."""
    return to_ndarray(messages.PredictResponse.FromString(data).outputs["y"])


def median_ns(call: Callable[[], object], seconds: float) -> float:
    """Median duration of ``call`` over about ``seconds`` (at least 5 calls)."""
    durations: list[int] = []
    stop = time.perf_counter() + seconds
    while len(durations) < 5 or time.perf_counter() < stop:
        started = time.perf_counter_ns()
        call()
        durations.append(time.perf_counter_ns() - started)
    return statistics.median(durations)


def measure(case: Case, rounds: int, seconds: float) -> dict[str, object]:
    """Both encodings of one case, alternating within each round."""
    typed_bytes = encode(case.array, packed=False)
    packed_bytes = encode(case.array, packed=True)
    assert np.array_equal(decode(typed_bytes), decode(packed_bytes))
    timings: dict[str, list[float]] = {
        key: []
        for key in ("encode_typed", "encode_packed", "decode_typed", "decode_packed")
    }
    for _ in range(rounds):
        timings["encode_typed"].append(
            median_ns(lambda: encode(case.array, False), seconds)
        )
        timings["encode_packed"].append(
            median_ns(lambda: encode(case.array, True), seconds)
        )
        timings["decode_typed"].append(median_ns(lambda: decode(typed_bytes), seconds))
        timings["decode_packed"].append(
            median_ns(lambda: decode(packed_bytes), seconds)
        )
    result: dict[str, object] = {
        "case": case.name,
        "bytes_typed": len(typed_bytes),
        "bytes_packed": len(packed_bytes),
    }
    for key, values in timings.items():
        result[f"{key}_ns"] = round(statistics.median(values))
    for step in ("encode", "decode"):
        typed = statistics.median(timings[f"{step}_typed"])
        packed = statistics.median(timings[f"{step}_packed"])
        result[f"{step}_ratio"] = round(typed / packed, 2)
    return result


def measure_all(
    rounds: int, seconds: float, progress: Callable[[str], None] | None = None
) -> list[dict[str, object]]:
    """Every case, one after the other (`make bench` runs this once the servers
    have stopped, so the measurement has the machine to itself)."""
    results = []
    for case in cases():
        if progress is not None:
            progress(f"encoding: {case.name}")
        results.append(measure(case, rounds, seconds))
    return results


def _us(value: object) -> str:
    microseconds = float(str(value)) / 1000.0
    return f"{microseconds:,.1f}" if microseconds < 100 else f"{microseconds:,.0f}"


def _ratio(value: object) -> str:
    return f"{float(str(value)):.2f}×"


def render_section(results: Sequence[dict[str, object]]) -> str:
    """The report's section: per output, both encodings' cost and their ratio."""
    lines = [
        "## gRPC answer encoding: typed fields vs tensor_content",
        "",
        "One Predict answer with one output, built and serialised as the model "
        "server sends it (encode), then parsed and turned into numpy as the "
        "gateway or a client does (decode): TF Serving's default typed fields "
        "(`float_val`, `int64_val`...) against packed `tensor_content` "
        "(`--enable_serialization_as_tensor_content`). Medians in µs, measured in "
        "process, the two encodings alternating within each round; ratio = typed "
        "/ packed.",
        "",
        "| output | bytes typed / packed | encode µs typed | packed | ratio "
        "| decode µs typed | packed | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results:
        lines.append(
            f"| {row['case']} | {row['bytes_typed']:,} / {row['bytes_packed']:,} "
            f"| {_us(row['encode_typed_ns'])} | {_us(row['encode_packed_ns'])} "
            f"| {_ratio(row['encode_ratio'])} | {_us(row['decode_typed_ns'])} "
            f"| {_us(row['decode_packed_ns'])} | {_ratio(row['decode_ratio'])} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON line per case."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.encoding", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds (default 7)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=0.2,
        help="seconds per encoding per round (default 0.2)",
    )
    options = parser.parse_args(argv)
    for case in cases():
        print(json.dumps(measure(case, options.rounds, options.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
