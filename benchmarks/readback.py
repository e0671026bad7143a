"""The model beside a float32 read-back: ``python -m benchmarks.readback``.

A batch job turns each chunk's ``float32`` outputs into the ``float64`` values
their shortest text reads back as (``servekit.batch.answers.read_back``) in a
thread of its own while the model runs the next chunk. This measures what that
thread costs the model: the runtime's rows/s on ready arrays (as
``benchmarks.batchjob``'s limit) alone, then with a second thread reading back
``--batch-size`` rows of ten probabilities over and over, once with
``orjson.loads`` and numpy (which hold the GIL throughout) and once with
``read_back``. Rounds alternate the three so that they see the same load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.batchjob import frame_for, refs_of, runtime_limit
from benchmarks.settings import REPO_ROOT


def _with_orjson(array: Any) -> Any:
    text = orjson.dumps(array.reshape(-1), option=orjson.OPT_SERIALIZE_NUMPY)
    return np.array(orjson.loads(text), dtype=np.float64).reshape(array.shape)


def main(argv: list[str] | None = None) -> int:
    from servekit.batch import versions
    from servekit.batch.answers import read_back
    from servekit.batch.inprocess import InProcessPredictor

    parser = argparse.ArgumentParser(prog="python -m benchmarks.readback")
    parser.add_argument("--registry", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    version = versions.resolve_version(args.registry, refs_of(args.model))
    predictor = InProcessPredictor(args.registry, args.model, version, "")
    frame = frame_for(args.registry, args.model, args.rows)
    generator = np.random.default_rng(5)
    probabilities = generator.random((args.batch_size, 10)).astype(np.float32)
    routes: dict[str, Callable[[Any], Any] | None] = {
        "alone": None,
        "orjson.loads": _with_orjson,
        "read_back": read_back,
    }
    rates: dict[str, list[float]] = {name: [] for name in routes}
    for round_number in range(args.rounds):
        for name, route in routes.items():
            stop = threading.Event()
            done = [0]

            def beside(
                route: Callable[[Any], Any], stop: threading.Event, done: list[int]
            ) -> None:
                while not stop.is_set():
                    route(probabilities)
                    done[0] += 1

            thread = (
                None
                if route is None
                else threading.Thread(target=beside, args=(route, stop, done))
            )
            if thread is not None:
                thread.start()
            started = time.perf_counter()
            rate = runtime_limit(predictor, frame, args.batch_size)
            seconds = time.perf_counter() - started
            stop.set()
            if thread is not None:
                thread.join()
            rates[name].append(rate)
            print(
                f"round {round_number} {name:13s} model {rate:12,.0f} rows/s, "
                f"read-backs beside it {done[0] / seconds:8,.0f}/s, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    for name, values in rates.items():
        print(f"{name:13s} median model rows/s {statistics.median(values):,.0f}")
    predictor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
