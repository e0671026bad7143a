"""Pickle against compiled model, in process: ``python -m benchmarks.compiled``.

Trains the default ``tabular`` job into a temporary registry, compiles it in both
modes (exact float64, approximate float32 trees), and times, on one core, the call
each serving path makes per batch: the pickle's ``predict`` on a ready DataFrame (as
``benchmarks.inprocess`` does, under the model server's warning filters) and the
compiled model's ``predict`` on the per-column arrays a request decodes into. The
three take turns in short blocks, so load from elsewhere on the machine falls on all
of them alike. Prints a Markdown table of p50 latencies and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.inprocess import sklearn_call, timed_calls
from benchmarks.payloads import example_row, input_dtypes
from benchmarks.stats import summarize_nanoseconds

BLOCK_S = 0.05


def compiled_calls(
    registry_root: Path, batch_sizes: list[int]
) -> tuple[dict[str, list[Callable[[], Any]]], dict[str, Any]]:
    """Per path (pickle, exact, approximate), one ready call per batch size."""
    from modelregistry import Registry, load_model
    from modelserver.compiled import compile_model
    from modelserver.compiled.model import compiled_model

    registry = Registry(registry_root)
    manifest = registry.manifest("tabular", 1)
    folder = registry.version_dir("tabular", 1)
    estimator = load_model(folder, manifest)
    heldout = json.loads((folder / "heldout.json").read_text(encoding="utf-8"))
    features: list[tuple[str, str]] = [(f.name, f.dtype) for f in manifest.features]
    row = example_row(manifest)
    dtypes = input_dtypes(manifest)
    verdicts: dict[str, Any] = {}
    calls: dict[str, list[Callable[[], Any]]] = {
        "pickle": [sklearn_call(folder, manifest, row, batch) for batch in batch_sizes]
    }
    for mode in ("exact", "approximate"):
        result = compile_model(
            estimator,
            features=features,
            examples=manifest.examples,
            heldout=heldout,
            mode=mode,
        )
        verdicts[mode] = result.verdict
        model = compiled_model(
            json.loads(result.files["compiled/plan.json"]),
            result.files["compiled/model.onnx"],
        )
        calls[mode] = [
            _columns_call(model, row, dtypes, batch) for batch in batch_sizes
        ]
    return calls, verdicts


def _columns_call(
    model: Any, row: dict[str, Any], dtypes: dict[str, str], batch: int
) -> Callable[[], Any]:
    columns = {}
    for name, value in row.items():
        if dtypes[name] == "string":
            column = np.empty(batch, dtype=object)
            column[:] = [str(value)] * batch
        else:
            column = np.asarray([value] * batch, dtype=np.dtype(dtypes[name]))
        columns[name] = column
    return lambda: model.predict(columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    from modelregistry import Registry
    from modelserver import warning_filters
    from training.tabular import TabularOptions, train_tabular

    with tempfile.TemporaryDirectory() as root:
        train_tabular(Registry(Path(root)), TabularOptions(), show_progress=False)
        calls, verdicts = compiled_calls(Path(root), batch_sizes)
        warning_filters.install()
        latencies: dict[str, list[list[int]]] = {
            path: [[] for _ in batch_sizes] for path in calls
        }
        blocks = max(1, int(args.seconds / BLOCK_S))
        for _ in range(blocks):
            for path, path_calls in calls.items():
                for index, call in enumerate(path_calls):
                    latencies[path][index] += timed_calls(
                        call, BLOCK_S / len(batch_sizes), 0.0, uncounted_calls=1
                    )
    for mode, verdict in verdicts.items():
        print(
            f"{mode}: gate {verdict['status']}, max error {verdict['max_error']:.3g} "
            f"over {sum(verdict['rows'].values())} rows"
        )
    print()
    print(
        "| batch | pickle p50 ms | compiled exact p50 ms | compiled approximate "
        "p50 ms | exact speed-up | approximate speed-up |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for index, batch in enumerate(batch_sizes):
        p50 = {
            path: summarize_nanoseconds(latencies[path][index]).p50_ms for path in calls
        }
        print(
            f"| {batch} | {p50['pickle']:.3f} | {p50['exact']:.3f} | "
            f"{p50['approximate']:.3f} | {p50['pickle'] / p50['exact']:.0f}x | "
            f"{p50['pickle'] / p50['approximate']:.0f}x |"
        )


if __name__ == "__main__":
    main()
