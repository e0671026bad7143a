"""`servekit deploy batch`: run `servekit batch predict` in the cluster as an Indexed Job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from servekit.console import print_json, print_table


def register(commands: Any) -> None:
    """Add the `batch` action to `servekit deploy`."""
    sub = commands.add_parser(
        "batch",
        help="render and apply a batch prediction Indexed Job (one shard per index)",
        description=(
            "Set up the batch component's Indexed Job for one job (model, input "
            "and output on the batch-data volume, shard count) and apply only its "
            "objects; --render prints them, --dry-run lists them. Re-running a "
            "job's pods skips the shards already written."
        ),
    )
    sub.add_argument(
        "--project-dir",
        type=Path,
        default=None,
        help="the servekit checkout (default: found from the current directory)",
    )
    sub.add_argument(
        "--overlay",
        default="batch",
        help="an overlay with the batch component (default: batch)",
    )
    sub.add_argument("--model", required=True, help="NAME, NAME:VERSION or NAME@LABEL")
    sub.add_argument(
        "--input", required=True, help="file or folder in the pod, e.g. /data/input"
    )
    sub.add_argument(
        "--output", required=True, help="folder in the pod, e.g. /data/output/run-1"
    )
    sub.add_argument(
        "--shards", type=int, default=4, help="completion indexes (default 4)"
    )
    sub.add_argument("--parallelism", type=int, default=None, help="pods at once")
    sub.add_argument("--batch-size", type=int, default=None)
    sub.add_argument("--rows-per-shard", type=int, default=None)
    sub.add_argument("--name", default=None, help="Job name (default from the model)")
    sub.add_argument("--image-tag", default=None, help="tag of the servekit images")
    sub.add_argument("--image-repository", default=None)
    sub.add_argument("--context", default=None, help="kubeconfig context")
    mode = sub.add_mutually_exclusive_group()
    mode.add_argument("--render", action="store_true", help="print the manifests")
    mode.add_argument(
        "--dry-run", action="store_true", help="list the objects; send nothing"
    )
    sub.add_argument("--json", action="store_true", help="machine-readable --dry-run")
    sub.set_defaults(handler=_deploy_batch)


def _deploy_batch(args: argparse.Namespace) -> int:
    from servekit.batch.refs import parse_model_ref
    from servekit.deploy import cluster, manifests
    from servekit.deploy.batchjob import BatchJob, batch_objects
    from servekit.deploy.project import find_project

    parse_model_ref(args.model)
    job = BatchJob(
        model=args.model,
        input=args.input,
        output=args.output,
        shards=args.shards,
        parallelism=args.parallelism,
        batch_size=args.batch_size,
        rows_per_shard=args.rows_per_shard,
        name=args.name,
    )
    objects = batch_objects(
        find_project(args.project_dir),
        args.overlay,
        job,
        args.image_tag,
        args.image_repository,
    )
    text = manifests.dump_objects(objects)
    if args.render:
        sys.stdout.write(text)
        return 0
    if args.dry_run:
        rows = [
            [s.kind, s.namespace, s.name, ", ".join(s.images)]
            for s in manifests.summarize(objects)
        ]
        if args.json:
            print_json(
                [
                    dict(zip(("kind", "namespace", "name", "images"), row, strict=True))
                    for row in rows
                ]
            )
        else:
            print_table(
                f"batch job: {len(rows)} objects would be applied (dry run)",
                ["kind", "namespace", "name", "images"],
                rows,
            )
        return 0
    sys.stdout.write(cluster.apply(text, args.context))
    return 0
