"""`servekit batch predict`: score a CSV, JSON Lines or Parquet input with one version."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from servekit.console import (
    CommandError,
    add_registry_argument,
    print_json,
    print_table,
    registry_path,
)

API_KEY_ENV = "SERVEKIT_API_KEY"


def register(subparsers: Any) -> None:
    """Add `batch` and its `predict` action."""
    parser = subparsers.add_parser(
        "batch", help="batch prediction jobs: a file in, predictions out"
    )
    actions = parser.add_subparsers(
        dest="batch_command", metavar="ACTION", required=True
    )
    sub = actions.add_parser(
        "predict",
        help="score a CSV, JSON Lines or Parquet file (or a folder of them)",
        description=(
            "Score every row of the input with one model version and write "
            "prediction.results-NNNNN-of-MMMMM and prediction.errors-* shards, "
            "the job manifest job.json and the counts. In this process (the "
            "registry's version, loaded as the model server loads it) or, with "
            "--target, against a running gateway or model server. A re-run with "
            "the same arguments skips the shards already written."
        ),
    )
    add_registry_argument(sub)
    sub.add_argument("--model", required=True, help="NAME, NAME:VERSION or NAME@LABEL")
    sub.add_argument(
        "--input",
        required=True,
        type=Path,
        help="a .csv/.jsonl/.parquet file or folder",
    )
    sub.add_argument("--output", required=True, type=Path, help="the output folder")
    sub.add_argument(
        "--output-format",
        choices=("jsonl", "csv", "parquet"),
        default="jsonl",
        help="results as Vertex JSON Lines (default), or the input's columns "
        "plus prediction columns",
    )
    sub.add_argument(
        "--signature", default="", help="signature name (default serving_default)"
    )
    sub.add_argument(
        "--batch-size",
        type=_positive,
        default=1024,
        help="instances per model call or request (default 1024)",
    )
    sub.add_argument(
        "--rows-per-shard",
        type=_positive,
        default=100_000,
        help="rows per output shard: the unit a re-run skips (default 100000)",
    )
    sub.add_argument(
        "--shard",
        default="0/1",
        help="INDEX/COUNT: write only the output shards k with k %% COUNT == INDEX",
    )
    sub.add_argument(
        "--target",
        help="URL of a gateway or model server REST API (default: run in process)",
    )
    sub.add_argument(
        "--api-key",
        default=None,
        help=f"the gateway's API key (default ${API_KEY_ENV})",
    )
    sub.add_argument(
        "--concurrency",
        type=_positive,
        default=4,
        help="requests in flight with --target (default 4)",
    )
    sub.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="in process: worker processes writing this process's shards in "
        "parallel, each with the version loaded (default: the CPUs this process "
        "may use, at most one per shard left to write)",
    )
    sub.add_argument(
        "--retries",
        type=int,
        default=4,
        help="retries of a request answered 429/502/503/504 or not answered",
    )
    sub.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per request (default 60)"
    )
    sub.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.add_argument("--json", action="store_true", help="print the manifest as JSON")
    sub.set_defaults(handler=_predict)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _predict(args: argparse.Namespace) -> int:
    from servekit.batch import (
        inprocess,
        job,
        predictors,
        processes,
        refs,
        remote,
        sources,
        versions,
    )

    ref = refs.parse_model_ref(args.model)
    shard = refs.parse_shard(args.shard)
    if args.retries < 0:
        raise CommandError("--retries must be 0 or more")
    predictor: predictors.Predictor
    if args.target:
        api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
        predictor = remote.RemotePredictor(
            args.target,
            ref.name,
            version=ref.version,
            label=ref.label,
            signature=args.signature,
            api_key=api_key,
            retries=args.retries,
            timeout=args.timeout,
            concurrency=args.concurrency,
        )
    else:
        registry = registry_path(args)
        version = versions.resolve_version(registry, ref)
        predictor = inprocess.InProcessPredictor(
            registry, ref.name, version, args.signature
        )
    try:
        files = sources.discover(args.input)
        settings = job.JobSettings(
            output=args.output,
            output_format=args.output_format,
            batch_size=args.batch_size,
            rows_per_shard=args.rows_per_shard,
            shard=shard,
            concurrency=args.concurrency if args.target else 1,
            mode="target" if args.target else "in-process",
            target=args.target,
        )
        workers = _workers(args, files, settings)
        with contextlib.ExitStack() as stack:
            pool = None
            if workers > 1:
                pool = stack.enter_context(
                    processes.ShardProcesses(
                        registry_path(args),
                        predictor.model.name,
                        predictor.model.version,
                        args.signature,
                        workers,
                    )
                )
            if args.no_progress:
                manifest = job.run_job(files, predictor, settings, processes=pool)
            else:
                manifest = _with_progress(files, predictor, settings, pool)
    finally:
        predictor.close()
    if args.json:
        print_json(manifest)
    else:
        _print_summary(manifest, args.output)
    return 0


def _workers(args: argparse.Namespace, files: Any, settings: Any) -> int:
    """The worker processes for this run: none (1) with --target."""
    from servekit.batch import job

    if args.target:
        if args.workers is not None:
            raise CommandError(
                "--workers is for jobs run in process; use --concurrency with --target"
            )
        return 1
    wanted = args.workers or _usable_cpus()
    plan = job.ShardPlan(sum(source.rows for source in files), settings.rows_per_shard)
    return max(1, min(wanted, len(job.missing_shards(plan, settings))))


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _RowsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- rows/s" if speed is None else f"{speed:,.0f} rows/s")


def _with_progress(
    files: Any, predictor: Any, settings: Any, pool: Any
) -> dict[str, Any]:
    from servekit.batch import job

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        _RowsPerSecond(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task(
            f"{predictor.model.name}:{predictor.model.version}", total=None
        )

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        manifest: dict[str, Any] = job.run_job(
            files, predictor, settings, update, processes=pool
        )
        return manifest


def _print_summary(manifest: dict[str, Any], output: Path) -> None:
    stats = manifest["completion_stats"]
    shards = manifest["shards"]
    run = manifest["this_run"]
    model = manifest["model"]
    print_table(
        f"batch prediction: {model['name']} version {model['version']} -> {output}",
        ["", ""],
        [
            ["succeeded", stats["successful_count"]],
            ["failed", stats["failed_count"]],
            ["incomplete", stats["incomplete_count"]],
            ["shards done", f"{shards['done']} of {shards['count']}"],
            ["this run", f"{run['rows']} rows in {run['seconds']} s"],
        ],
    )
    if not manifest["complete"]:
        sys.stderr.write(
            "servekit: the job is not complete: run the other --shard "
            "processes, or this command again\n"
        )
