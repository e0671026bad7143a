"""The in-process limit: the model called directly, no server, no serialization.

For scikit-learn, ``pipeline.predict`` on a ready-made DataFrame of ``batch`` copies
of the example row, or, for a version whose compiled model passed the parity gate
(the model server serves that one), the compiled model's ``predict`` on the
per-column arrays a request decodes into; for a SavedModel, its ``serving_default`` signature on ready-made
tensors. Each batch size is called in a loop for a fixed time after a warm-up; the
per-call latencies and rows per second are printed as one JSON line.

Each batch size is measured twice. ``results`` runs under the model server's
warning filters (``modelserver.warning_filters``), so the served latency minus this
one is what serving adds to the same call. ``process_filters`` runs under the
filters this process's imports left, as a plain script calls the model; for a
scikit-learn forest that is slower, because every joblib task re-installs every
filter.

Run pinned to the servers' core: ``python -m benchmarks.inprocess --registry R
--model NAME --seconds S --batch-sizes 1,32``.

With ``--reference`` the process instead loads the model once, prints
``{"ready": NAME}`` and then answers each line of standard input (a number of
seconds) with one block of batch-1 calls of that length, under the server's
filters. The bench keeps three such processes per model and has their blocks take turns
with the servers' (see ``benchmarks.interleaved``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from benchmarks.payloads import example_row, input_dtypes
from benchmarks.stats import summarize_nanoseconds


def timed_calls(
    call: Callable[[], Any], seconds: float, warmup_s: float, uncounted_calls: int = 0
) -> list[int]:
    """Call repeatedly for ``warmup_s`` and at least ``uncounted_calls`` times
    (discarded), then for ``seconds``."""
    end_of_warmup = time.perf_counter() + warmup_s
    while uncounted_calls > 0 or time.perf_counter() < end_of_warmup:
        call()
        uncounted_calls -= 1
    latencies: list[int] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter_ns()
        call()
        latencies.append(time.perf_counter_ns() - started)
    return latencies


def sklearn_call(
    version_dir: Path, manifest: Any, row: dict[str, Any], batch: int
) -> Callable[[], Any]:
    import numpy as np
    import pandas as pd
    from modelregistry import load_pickle

    dtypes = input_dtypes(manifest)
    verdict = manifest.compiled
    if verdict is not None and verdict.status == "passed":
        from modelserver.compiled import CompiledModel
        from modelserver.compiled.hybrid import find_step

        source = None
        if CompiledModel.needs_pickle(version_dir):
            estimator = load_pickle(version_dir, manifest)
            source = lambda location: find_step(estimator, location)  # noqa: E731
        compiled = CompiledModel.load(version_dir, source)
        columns = {
            name: np.asarray(
                [row[name]] * batch,
                dtype=object if dtypes[name] == "string" else np.dtype(dtypes[name]),
            )
            for name in row
        }
        return lambda: compiled.predict(columns)
    pipeline = load_pickle(version_dir, manifest)
    frame = pd.DataFrame(
        {
            name: np.asarray(
                [row[name]] * batch,
                dtype=object if dtypes[name] == "string" else np.dtype(dtypes[name]),
            )
            for name in row
        }
    )
    return lambda: pipeline.predict(frame)


def tensorflow_call(
    version_dir: Path, manifest: Any, row: dict[str, Any], batch: int
) -> Callable[[], Any]:
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    signature = loaded.signatures["serving_default"]
    dtypes = input_dtypes(manifest)
    inputs = {
        name: tf.constant(np.asarray([row[name]] * batch, dtype=np.dtype(dtypes[name])))
        for name in row
    }

    def call() -> Any:
        # `loaded` stays referenced: the signature alone holds its variables weakly.
        return loaded and signature(**inputs)

    return call


def model_calls(
    registry_root: Path, model: str, batch_sizes: Sequence[int]
) -> tuple[str, list[Callable[[], Any]]]:
    """The model's framework and one ready-made call per batch size."""
    from modelregistry import Registry

    registry = Registry(registry_root)
    version = registry.resolve(model)
    manifest = registry.manifest(model, version)
    version_dir = registry.version_dir(model, version)
    row = example_row(manifest)
    factory = sklearn_call if manifest.framework == "sklearn" else tensorflow_call
    calls = [factory(version_dir, manifest, row, batch) for batch in batch_sizes]
    return manifest.framework, calls


def serve_reference(
    registry_root: Path, model: str, requests: TextIO, answers: TextIO
) -> None:
    """Answer each line of ``requests`` (seconds) with one block of batch-1 calls:
    one uncounted call (another process had the core just before), then calls
    until the seconds are up; the answer lists their latencies in ns."""
    from modelserver import warning_filters

    _, (call,) = model_calls(registry_root, model, [1])
    warning_filters.install()
    call()
    print(json.dumps({"ready": model}), file=answers, flush=True)
    for line in requests:
        if not line.strip():
            continue
        latencies = timed_calls(call, float(line), 0.0, uncounted_calls=1)
        print(json.dumps({"latencies_ns": latencies}), file=answers, flush=True)


def measure_model(
    registry_root: Path,
    model: str,
    batch_sizes: Sequence[int],
    seconds: float,
    warmup_s: float,
) -> dict[str, Any]:
    """Latency and rows/s of direct calls at each batch size."""
    from modelserver import warning_filters

    framework, calls = model_calls(registry_root, model, batch_sizes)
    process_filters = [
        timed_entry(call, batch, seconds, warmup_s)
        for call, batch in zip(calls, batch_sizes, strict=True)
    ]
    warning_filters.install()
    results = [
        timed_entry(call, batch, seconds, warmup_s)
        for call, batch in zip(calls, batch_sizes, strict=True)
    ]
    return {
        "model": model,
        "framework": framework,
        "results": results,
        "process_filters": process_filters,
    }


def timed_entry(
    call: Callable[[], Any], batch: int, seconds: float, warmup_s: float
) -> dict[str, Any]:
    """One batch size's summary: calls, p50/p99/mean ms and rows per second."""
    latencies = timed_calls(call, seconds, warmup_s)
    summary = summarize_nanoseconds(latencies)
    return {
        "batch": batch,
        "calls": summary.count,
        "p50_ms": summary.p50_ms,
        "p99_ms": summary.p99_ms,
        "mean_ms": summary.mean_ms,
        "rows_per_s": batch * summary.count / (sum(latencies) / 1e9),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inprocess")
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="answer each line of standard input (seconds) with a block of batch-1 calls",
    )
    args = parser.parse_args(argv)
    if args.reference:
        serve_reference(args.registry, args.model, sys.stdin, sys.stdout)
        return 0
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    result = measure_model(
        args.registry, args.model, batch_sizes, args.seconds, args.warmup
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
