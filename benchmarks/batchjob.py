"""Batch prediction throughput: ``python -m benchmarks.batchjob [--rows N] ...``.

For each model (default ``tabular`` and ``digits`` from the registry, trained into
a temporary one when absent) and each input format, side by side in one run:

- **limit**: the runtime called directly (``prepare_predict`` + ``run``) on
  ready arrays, ``--batch-size`` rows a call: the most a job could do. For a
  TensorFlow version it is measured twice, with TensorFlow's default thread
  pools and with one thread each (intra- and inter-op), and the higher of the
  two in each round is the limit the ratios are taken against: the best one
  stream of calls does;
- **in process**: ``servekit batch predict``'s job (reading the file, counting
  its rows, writing the results in each ``--output-formats`` format with the
  instances, manifest), model load excluded;
- **N workers**: the same job with ``--workers`` worker processes, each with the
  version loaded (started before the clock, as the model load is excluded above;
  their start time is reported apart);
- **floor** (Parquet input to Parquet results only): the same file scored in
  ``--workers`` processes by code with no job logic (:mod:`benchmarks.batchfloor`),
  what any job reading and writing these files in that many processes spends;
- **target**: the same job against a ``servekit-model-server`` on 127.0.0.1
  (``--concurrency`` requests in flight), or with ``--through-gateway`` against
  the gateway in front of it.

Rounds alternate limit and job so that both see the same machine load; the ratio
is the median of the per-round ratios. Beside the rows/s, each gets its CPU time
in µs a row (all threads; the N-worker job's includes its workers' processes),
which a busy machine inflates less than it slows the wall clock. Results go to
stdout as a Markdown table and to ``bench-results/batch.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.batchfloor import FloorProcesses
from benchmarks.batchreport import print_table
from benchmarks.cpuload import family_cpu_seconds
from benchmarks.settings import REPO_ROOT

VENV_BIN = Path(sys.executable).parent
FORMATS = ("parquet", "csv", "jsonl")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batchjob")
    parser.add_argument("--registry", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--models", nargs="+", default=["tabular", "digits"])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS))
    parser.add_argument(
        "--output-formats", nargs="+", default=["jsonl"], choices=FORMATS
    )
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument(
        "--rows-per-shard",
        type=int,
        default=100_000,
        help="the job's output shards (default: servekit batch predict's 100000)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="worker processes of the second in-process job (default: the CPUs)",
    )
    parser.add_argument(
        "--workers-session-threads",
        type=int,
        default=0,
        help="a TensorFlow version's thread pools in each worker and floor process "
        "(default 0: TensorFlow's, as the job's workers)",
    )
    parser.add_argument("--no-target", action="store_true")
    parser.add_argument(
        "--through-gateway",
        action="store_true",
        help="the target is a gateway in front of the model server",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="also time the job's phases apart (count, read, predict, write)",
    )
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "bench-results" / "batch.json"
    )
    return parser.parse_args(argv)


def ensure_models(registry: Path, models: list[str]) -> Path:
    """The registry holding ``models``: the given one, or a fresh temporary one."""
    from modelregistry import Registry, RegistryError

    try:
        for name in models:
            Registry(registry).resolve(name)
        return registry
    except RegistryError:
        pass
    fresh = Path(tempfile.mkdtemp(prefix="batch-bench-")) / "models"
    for name in models:
        print(f"training {name} into {fresh}", flush=True)
        subprocess.run(
            [str(VENV_BIN / "servekit"), "train", name, "--registry", str(fresh),
             "--no-progress"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return fresh


def frame_for(registry: Path, name: str, rows: int) -> pd.DataFrame:
    """``rows`` input rows cycled from the manifest's examples (a column per input,
    or ``pixel_<i>`` columns for a single matrix input)."""
    from modelregistry import Registry

    store = Registry(registry)
    manifest = store.manifest(name, store.resolve(name))
    examples = manifest.examples
    frame = pd.DataFrame([examples[i % len(examples)] for i in range(rows)])
    if len(frame.columns) == 1 and isinstance(frame.iloc[0, 0], list):
        matrix = np.asarray(frame.iloc[:, 0].tolist(), dtype=np.float32)
        frame = pd.DataFrame(
            matrix, columns=[f"pixel_{i}" for i in range(matrix.shape[1])]
        )
    return frame


def write_inputs(
    frame: pd.DataFrame, folder: Path, formats: list[str], *, matrix: bool
) -> dict[str, Path]:
    paths = {}
    for fmt in formats:
        path = folder / f"input.{fmt}"
        if fmt == "parquet":
            frame.to_parquet(path)
        elif fmt == "csv":
            frame.to_csv(path, index=False)
        elif matrix:
            # A single matrix input: each line is the row's values, as TF Serving
            # takes bare rows (objects would need the input's name as their key).
            with path.open("w") as handle:
                for row in frame.to_numpy().tolist():
                    handle.write(json.dumps(row) + "\n")
        else:
            with path.open("w") as handle:
                for line in frame.to_json(orient="records", lines=True).splitlines():
                    handle.write(line + "\n")
        paths[fmt] = path
    return paths


def runtime_limit(predictor: Any, frame: pd.DataFrame, batch_size: int) -> float:
    """Rows/s of prepare_predict + run on ready arrays, ``batch_size`` rows a call."""
    runtime = predictor.runtime  # the very runtime object the job calls
    signature = predictor.model.signature_name
    specs = predictor.schema.inputs
    if all(name in frame.columns for name in specs):
        arrays = {
            name: (
                frame[name].to_numpy(dtype=object)
                if kind == "text"
                else frame[name].to_numpy()
            )
            for name, kind in specs.items()
        }
    else:
        (name,) = specs
        arrays = {name: frame.to_numpy(dtype=np.float32)}
    rows = len(frame)
    started = time.perf_counter()
    for first in range(0, rows, batch_size):
        batch = {
            key: value[first : first + batch_size] for key, value in arrays.items()
        }
        call = runtime.prepare_predict(signature, batch, ())
        runtime.run(call)
    return rows / (time.perf_counter() - started)


def job_rate(predictor: Any, path: Path, output: Path, args: argparse.Namespace,
             *, workers: int = 1, output_format: str = "jsonl",
             processes: Any = None) -> float:  # fmt: skip
    from servekit.batch import job, refs, sources

    started = time.perf_counter()
    files = sources.discover(path)
    settings = job.JobSettings(
        output=output,
        output_format=output_format,
        batch_size=args.batch_size,
        rows_per_shard=args.rows_per_shard,
        shard=refs.ShardSlice(),
        concurrency=workers,
    )
    manifest = job.run_job(files, predictor, settings, processes=processes)
    seconds = time.perf_counter() - started
    assert manifest["completion_stats"]["successful_count"] == args.rows, manifest
    rows: int = args.rows
    return rows / seconds


def phase_split(
    predictor: Any, path: Path, output: Path, output_format: str, batch_size: int
) -> dict[str, float]:
    """Microseconds per row of each phase of a job, run one after the other:
    wall time (``*_us``) and the process's CPU time, all threads (``*_cpu_us``),
    which a loaded machine inflates less."""
    from servekit.batch import outputs, sources

    marks = [(time.perf_counter(), time.process_time())]
    files = sources.discover(path)
    marks.append((time.perf_counter(), time.process_time()))
    rows = sum(source.rows for source in files)
    chunks = list(sources.read_chunks(files, 0, rows, batch_size, predictor.schema))
    for chunk in chunks:  # the job does this in its read thread
        predictor.prepare_chunk(chunk)
    marks.append((time.perf_counter(), time.process_time()))
    answers = [predictor.predict_chunk(chunk) for chunk in chunks]
    marks.append((time.perf_counter(), time.process_time()))
    output.mkdir(parents=True)
    writer = outputs.ShardWriter(output, 0, 1, output_format)
    for chunk, answer in zip(chunks, answers, strict=True):
        writer.write(chunk, answer)
    writer.commit()
    marks.append((time.perf_counter(), time.process_time()))
    split: dict[str, float] = {}
    for phase, before, after in zip(
        ("count", "read", "predict", "write"), marks, marks[1:], strict=False
    ):
        split[f"{phase}_us"] = round((after[0] - before[0]) * 1e6 / rows, 3)
        split[f"{phase}_cpu_us"] = round((after[1] - before[1]) * 1e6 / rows, 3)
    return split


@contextlib.contextmanager
def model_server(registry: Path, folder: Path, *, gateway: bool) -> Iterator[str]:
    from tests.support.gateway import gateway_over_registry
    from tests.support.modelserver import model_server as start

    if gateway:
        with gateway_over_registry(registry, folder) as front:
            yield front.url
        return
    with start(
        [f"--model_config_file={registry / 'servekit.config'}"],
        log_path=folder / "model-server.log",
        ready_timeout=300,
    ) as server:
        yield server.rest_url


def main(argv: list[str] | None = None) -> int:
    from servekit.batch import versions
    from servekit.batch.inprocess import InProcessPredictor
    from servekit.batch.processes import ShardProcesses
    from servekit.batch.remote import RemotePredictor

    args = parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    registry = ensure_models(args.registry, args.models)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as scratch:
        folder = Path(scratch)
        server = (
            contextlib.nullcontext(None)
            if args.no_target
            else model_server(registry, folder, gateway=args.through_gateway)
        )
        with server as target:
            for name in args.models:
                version = versions.resolve_version(registry, refs_of(name))
                local = InProcessPredictor(registry, name, version, "")
                single = (
                    InProcessPredictor(registry, name, version, "", session_threads=1)
                    if is_tensorflow(local.runtime)
                    else None
                )
                pool_started = time.perf_counter()
                pool = ShardProcesses(
                    registry, name, version, "", args.workers,
                    session_threads=args.workers_session_threads,
                )  # fmt: skip
                pool.__enter__()
                pool_seconds = time.perf_counter() - pool_started
                floor = (
                    FloorProcesses(
                        registry, name, version, args.workers,
                        session_threads=pool.session_threads,
                    )
                    if "parquet" in args.formats and "parquet" in args.output_formats
                    else None
                )  # fmt: skip
                if floor is not None:
                    floor.__enter__()
                remote = (
                    None
                    if target is None
                    else RemotePredictor(
                        target, name, version=version, label=None, signature="",
                        api_key=None, retries=2, timeout=120,
                        concurrency=args.concurrency,
                    )
                )  # fmt: skip
                frame = frame_for(registry, name, args.rows)
                inputs = write_inputs(
                    frame,
                    folder,
                    args.formats,
                    matrix=len(local.schema.inputs) == 1
                    and not all(n in frame.columns for n in local.schema.inputs),
                )
                for (fmt, path), written in itertools.product(
                    inputs.items(), args.output_formats
                ):
                    limits, jobs, ratios, targets = [], [], [], []
                    spread, spread_ratios = [], []
                    limit_cpu, job_cpu, workers_cpu = [], [], []
                    defaults, singles, single_cpu = [], [], []
                    floors, floor_ratios, floor_cpu = [], [], []
                    with_floor = floor is not None and fmt == written == "parquet"
                    load_before = os.getloadavg()[0]
                    for round_number in range(args.rounds):
                        where = folder / f"{name}-{fmt}-{written}-{round_number}"
                        cpu = time.process_time()
                        limit = runtime_limit(local, frame, args.batch_size)
                        limit_cpu.append((time.process_time() - cpu) / args.rows)
                        defaults.append(limit)
                        if single is not None:
                            cpu = time.process_time()
                            singles.append(
                                runtime_limit(single, frame, args.batch_size)
                            )
                            single_cpu.append((time.process_time() - cpu) / args.rows)
                            limit = max(limit, singles[-1])
                        cpu = time.process_time()
                        rate = job_rate(local, path, where, args, output_format=written)
                        job_cpu.append((time.process_time() - cpu) / args.rows)
                        limits.append(limit)
                        jobs.append(rate)
                        ratios.append(rate / limit)
                        family_cpu = family_cpu_seconds(os.getpid())
                        parallel = job_rate(
                            local, path, where.with_name(where.name + "-w"), args,
                            output_format=written, processes=pool,
                        )  # fmt: skip
                        workers_cpu.append(
                            (family_cpu_seconds(os.getpid()) - family_cpu) / args.rows
                        )
                        spread.append(parallel)
                        spread_ratios.append(parallel / limit)
                        if with_floor:
                            assert floor is not None
                            done = floor.run(
                                path, where.with_name(where.name + "-f"), args.rows,
                                args.batch_size,
                            )  # fmt: skip
                            floors.append(args.rows / done.seconds)
                            floor_ratios.append(floors[-1] / limit)
                            floor_cpu.append(done.cpu_seconds / args.rows)
                        if remote is not None:
                            targets.append(
                                job_rate(
                                    remote, path, where.with_name(where.name + "-t"),
                                    args, workers=args.concurrency,
                                    output_format=written,
                                )
                            )  # fmt: skip
                    cheapest = min(
                        statistics.median(values)
                        for values in (limit_cpu, single_cpu)
                        if values
                    )
                    row = {
                        "model": f"{name}:{version}",
                        "format": fmt,
                        "output_format": written,
                        "rows": args.rows,
                        "batch_size": args.batch_size,
                        # The higher of the two below in each round, for a
                        # TensorFlow version; the ratios are taken against it.
                        "limit_rows_per_s": statistics.median(limits),
                        "limit_default_threads_rows_per_s": statistics.median(defaults),
                        "limit_one_thread_rows_per_s": median_or_none(singles),
                        "limit_one_thread_cpu_us": median_or_none(single_cpu, 1e6),
                        "in_process_rows_per_s": statistics.median(jobs),
                        "ratio": statistics.median(ratios),
                        "ratios": [round(ratio, 3) for ratio in ratios],
                        "workers": args.workers,
                        "workers_rows_per_s": statistics.median(spread),
                        "workers_ratio": statistics.median(spread_ratios),
                        "workers_ratios": [round(r, 3) for r in spread_ratios],
                        "workers_start_s": round(pool_seconds, 3),
                        "workers_session_threads": pool.session_threads,
                        # Code with no job logic, in as many processes.
                        "floor_rows_per_s": median_or_none(floors),
                        "floor_ratio": median_or_none(floor_ratios),
                        "floor_ratios": [round(r, 3) for r in floor_ratios],
                        "floor_cpu_us": median_or_none(floor_cpu, 1e6),
                        # The floor's ratio were its processes to share all the
                        # cores and the limit to have one to itself, each at the
                        # CPU a row measured here (the cheaper limit): a load
                        # inflates CPU time far less than it slows the wall clock.
                        "floor_cpu_bound": None
                        if not floor_cpu
                        else cores * cheapest / statistics.median(floor_cpu),
                        "cores": cores,
                        # The 1-minute load average before and after the rounds:
                        # how busy the machine's cores were around the figures.
                        "load_average": [load_before, os.getloadavg()[0]],
                        # CPU time of all the process's threads, µs a row.
                        "limit_cpu_us": round(statistics.median(limit_cpu) * 1e6, 3),
                        "job_cpu_us": round(statistics.median(job_cpu) * 1e6, 3),
                        # The N-worker job's: this process and its workers'.
                        "workers_cpu_us": round(
                            statistics.median(workers_cpu) * 1e6, 3
                        ),
                        "target_rows_per_s": statistics.median(targets)
                        if targets
                        else None,
                    }
                    if args.split:
                        row["split_us_per_row"] = phase_split(
                            local, path, folder / f"{name}-{fmt}-{written}-split",
                            written, args.batch_size,
                        )  # fmt: skip
                    results.append(row)
                    print(json.dumps(row), flush=True)
                pool.__exit__(None, None, None)
                if floor is not None:
                    floor.__exit__(None, None, None)
                local.close()
                if single is not None:
                    single.close()
                if remote is not None:
                    remote.close()
    print()
    print_table(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def median_or_none(values: list[float], scale: float = 1.0) -> float | None:
    """The median of ``values`` times ``scale`` (``None`` when there are none)."""
    return statistics.median(values) * scale if values else None


def is_tensorflow(runtime: Any) -> bool:
    """Whether ``runtime`` runs a SavedModel (its thread pools can be set)."""
    module = sys.modules.get("modelserver.runtimes.tensorflow")
    return module is not None and isinstance(runtime, module.TensorFlowRuntime)


def refs_of(name: str) -> Any:
    from servekit.batch.refs import parse_model_ref

    return parse_model_ref(name)


if __name__ == "__main__":
    sys.exit(main())
