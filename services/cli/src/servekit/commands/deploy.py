"""`servekit deploy ...`: build images, render and apply manifests, roll out, compose."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servekit.commands import deploy_batch
from servekit.console import (
    CommandError,
    add_registry_argument,
    print_json,
    print_table,
    registry_path,
    version_argument,
)

if TYPE_CHECKING:
    from servekit.deploy.project import Project


def register(subparsers: Any) -> None:
    """Add `deploy` and its subcommands."""
    parser = subparsers.add_parser(
        "deploy",
        help="images, Kubernetes manifests, rollouts and docker compose",
        description="Ship servekit: build images, render/apply the k8s/ overlays, "
        "roll model versions out, run the compose stack. See deploy/README.md.",
    )
    commands = parser.add_subparsers(
        dest="deploy_command", metavar="ACTION", required=True
    )

    sub = commands.add_parser(
        "build", help="build the images with the Docker engine, tagged with the git sha"
    )
    _add_project_argument(sub)
    sub.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="images to build (default: gateway modelserver trainer loadtest; "
        "also: modelserver-tf, modelserver-gpu)",
    )
    sub.add_argument(
        "--tag", help="image tag (default: the git commit, -dirty if changed)"
    )
    sub.add_argument(
        "--repository",
        default=None,
        help="image repository prefix (default: servekit), e.g. ghcr.io/acme/servekit",
    )
    sub.add_argument("--push", action="store_true", help="push after building")
    sub.add_argument("--pull", action="store_true", help="pull newer base images")
    sub.add_argument(
        "--dry-run",
        action="store_true",
        help="show the images, tags and build contexts; build nothing",
    )
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.set_defaults(handler=_build)

    sub = commands.add_parser("render", help="print an overlay's manifests (kustomize)")
    _add_project_argument(sub)
    _add_overlay_arguments(sub)
    sub.add_argument(
        "--output", "-o", type=Path, default=None, help="write to a file, not stdout"
    )
    sub.set_defaults(handler=_render)

    sub = commands.add_parser(
        "apply", help="apply an overlay to the cluster (kubectl), or --dry-run"
    )
    _add_project_argument(sub)
    _add_overlay_arguments(sub)
    _add_context_argument(sub)
    mode = sub.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="render and list what would be applied; no cluster needed",
    )
    mode.add_argument(
        "--diff",
        action="store_true",
        help="show what would change in the live cluster (kubectl diff)",
    )
    sub.add_argument("--json", action="store_true", help="machine-readable --dry-run")
    sub.set_defaults(handler=_apply)

    sub = commands.add_parser("status", help="workloads of the servekit namespace")
    _add_context_argument(sub)
    sub.add_argument("--namespace", "-n", default="servekit")
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.set_defaults(handler=_status)

    sub = commands.add_parser(
        "rollout",
        help="send a model's traffic (or --canary a share of it) to a version",
        description="Move registry labels (the model servers re-read their config) "
        "and the gateway's canary weight in routes.yaml; no pod restarts.",
    )
    add_registry_argument(sub)
    sub.add_argument("model")
    sub.add_argument("version", type=version_argument)
    sub.add_argument(
        "--canary",
        metavar="WEIGHT",
        default=None,
        help="share of requests for VERSION, e.g. 0.1 or 10%%; 0 ends the canary",
    )
    sub.add_argument(
        "--routes-file",
        type=Path,
        default=None,
        help="the gateway routing file (default: <registry>/routes.yaml)",
    )
    sub.add_argument(
        "--wait-url",
        action="append",
        default=[],
        metavar="URL",
        help="REST base URL of a model server (repeatable); wait until it serves "
        "VERSION before routing traffic to it, e.g. http://127.0.0.1:8501",
    )
    sub.add_argument(
        "--wait-timeout", type=float, default=300.0, help="seconds (default 300)"
    )
    sub.add_argument(
        "--settle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="without --wait-url: pause this long between labelling VERSION and "
        "routing traffic to it, for the servers to re-read their config and load "
        "it (default: 0 here, 25 with --cluster)",
    )
    sub.add_argument(
        "--cluster",
        action="store_true",
        help="run the rollout in the cluster, in a one-off pod that mounts the "
        "registry volume (kubectl)",
    )
    _add_context_argument(sub)
    sub.add_argument("--namespace", "-n", default="servekit", help="with --cluster")
    sub.add_argument(
        "--image",
        default=None,
        help="with --cluster: image with the servekit CLI (default: the image of "
        "the cluster's servekit-train job)",
    )
    sub.add_argument(
        "--dry-run",
        action="store_true",
        help="with --cluster: print the kubectl command instead of running it",
    )
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.set_defaults(handler=_rollout)

    sub = commands.add_parser(
        "compose", help="run the stack with docker compose (up, down, config)"
    )
    _add_project_argument(sub)
    sub.add_argument("action", choices=("up", "down", "config"))
    sub.add_argument(
        "--gpu", action="store_true", help="add docker-compose.gpu.yml (NVIDIA GPU)"
    )
    sub.add_argument(
        "--profile",
        action="append",
        default=[],
        choices=("train", "loadtest"),
        help="also run a profile's services (repeatable)",
    )
    sub.add_argument("--build", action="store_true", help="up: build images first")
    sub.add_argument("--image-tag", default=None, help="servekit image tag to run")
    sub.add_argument(
        "--foreground", action="store_true", help="up: stay attached (Ctrl-C stops)"
    )
    sub.add_argument("--volumes", action="store_true", help="down: also remove volumes")
    sub.set_defaults(handler=_compose)
    deploy_batch.register(commands)


def _add_project_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=None,
        help="the servekit checkout (default: found from the current directory)",
    )


def _add_overlay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overlay",
        required=True,
        help="a folder of k8s/overlays/ (local, gpu, loadtest, ...)",
    )
    parser.add_argument(
        "--image-tag",
        default=None,
        help="use this tag for the servekit/* images (e.g. the one `build` printed)",
    )
    parser.add_argument(
        "--image-repository",
        default=None,
        help="pull the servekit/* images from this repository prefix instead",
    )


def _add_context_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--context", default=None, help="kubeconfig context (default: current)"
    )


def _project(args: argparse.Namespace) -> Project:
    from servekit.deploy.project import find_project

    return find_project(args.project_dir)


def _stderr_line(message: str) -> None:
    sys.stderr.write(message + "\n")


# ---- build ---------------------------------------------------------------------


def _build(args: argparse.Namespace) -> int:
    from servekit.deploy import images
    from servekit.deploy.project import git_revision

    project = _project(args)
    revision: str | None = None
    if args.tag:
        tag = str(args.tag)
    else:
        revision = tag = git_revision(project.root)
    plans = images.plan_builds(
        args.images,
        tag,
        repository=args.repository or images.DEFAULT_REPOSITORY,
        revision=revision,
    )
    if args.dry_run:
        rows: list[dict[str, Any]] = []
        for plan in plans:
            context = images.build_context(project.root, plan.spec.dockerfile)
            members = images.context_members(context)
            size = context.seek(0, 2)
            context.close()
            rows.append(
                {
                    "image": plan.reference,
                    "dockerfile": plan.spec.dockerfile,
                    "build_args": dict(plan.spec.build_args),
                    "context_files": len(members),
                    "context_bytes": size,
                }
            )
        if args.json:
            print_json(rows)
            return 0
        print_table(
            f"images to build from {project.root} (dry run)",
            ["image", "dockerfile", "build args", "context"],
            [
                [
                    plan.reference,
                    plan.spec.dockerfile,
                    " ".join(f"{k}={v}" for k, v in plan.spec.build_args.items()),
                    f"{row['context_files']} files, "
                    f"{row['context_bytes'] / 1e6:.1f} MB",
                ]
                for plan, row in zip(plans, rows, strict=True)
            ],
        )
        return 0

    client = images.connect()
    from rich.console import Console

    console = Console(stderr=True)
    built = []
    for number, plan in enumerate(plans, start=1):
        prefix = f"[{number}/{len(plans)}] {plan.reference}"
        with console.status(prefix) as status:

            def progress(line: str, status: Any = status, prefix: str = prefix) -> None:
                status.update(f"{prefix}: {line[:100]}")

            image_id = images.build_image(
                client, project.root, plan, progress, pull=args.pull
            )
            if args.push:
                images.push_image(client, plan.reference, progress)
        console.print(
            f"{prefix} built {image_id[:19]}" + (" and pushed" if args.push else "")
        )
        built.append({"image": plan.reference, "id": image_id, "pushed": args.push})
    if args.json:
        print_json(built)
    else:
        print(f"tag: {tag}")
    return 0


# ---- render / apply / status ------------------------------------------------------


def _render(args: argparse.Namespace) -> int:
    from servekit.deploy import manifests

    text, _ = manifests.render(
        _project(args), args.overlay, args.image_tag, args.image_repository
    )
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
        _stderr_line(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _apply(args: argparse.Namespace) -> int:
    from servekit.deploy import cluster, manifests

    text, objects = manifests.render(
        _project(args), args.overlay, args.image_tag, args.image_repository
    )
    if args.dry_run:
        summaries = manifests.summarize(objects)
        if args.json:
            print_json(
                [
                    {
                        "kind": s.kind,
                        "namespace": s.namespace,
                        "name": s.name,
                        "images": list(s.images),
                    }
                    for s in summaries
                ]
            )
        else:
            print_table(
                f"overlay {args.overlay}: {len(summaries)} objects would be applied "
                "(dry run, nothing sent)",
                ["kind", "namespace", "name", "images"],
                [[s.kind, s.namespace, s.name, ", ".join(s.images)] for s in summaries],
            )
        return 0
    if args.diff:
        sys.stdout.write(cluster.diff(text, args.context))
        return 0
    sys.stdout.write(cluster.apply(text, args.context))
    return 0


def _status(args: argparse.Namespace) -> int:
    from servekit.deploy import cluster

    lines = cluster.status(args.namespace, args.context)
    if args.json:
        print_json([line.__dict__ for line in lines])
        return 0
    if not lines:
        raise CommandError(
            f"nothing deployed in namespace {args.namespace!r}; "
            "run `servekit deploy apply --overlay NAME`"
        )
    print_table(
        f"namespace {args.namespace}",
        ["kind", "name", "ready", "detail"],
        [[line.kind, line.name, line.ready, line.detail] for line in lines],
    )
    return 0


# ---- rollout ------------------------------------------------------------------------


def _rollout_in_cluster(args: argparse.Namespace) -> int:
    import shlex

    from servekit.deploy import incluster, rollout

    if args.wait_url or args.routes_file or args.registry:
        raise CommandError(
            "--cluster uses the cluster's registry volume and its routes.yaml; "
            "drop --registry, --routes-file and --wait-url"
        )
    if args.canary is not None:
        rollout.parse_weight(args.canary)  # refuse a bad weight before any pod starts
    settle = 25.0 if args.settle is None else args.settle
    command = incluster.rollout_command(args.model, args.version, args.canary, settle)
    image = args.image
    if image is None and args.dry_run:
        image = "<image of job/servekit-train>"
    if image is None:
        image = incluster.trainer_image(args.namespace, args.context)
    kubectl_run = incluster.kubectl_run(args.namespace, args.context, image, command)
    if args.dry_run:
        print(shlex.join(kubectl_run))
        return 0
    _stderr_line(f"running `{shlex.join(command)}` in namespace {args.namespace}")
    incluster.run_in_cluster(kubectl_run)
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from modelregistry import Registry, RegistryError

    from servekit.deploy import rollout
    from servekit.deploy.routes import ROUTES_FILE_NAME

    if args.cluster:
        return _rollout_in_cluster(args)
    if args.dry_run:
        raise CommandError("--dry-run goes with --cluster")
    registry_root = registry_path(args)
    if not registry_root.is_dir():
        raise CommandError(f"registry {registry_root} does not exist")
    registry = Registry(registry_root)
    weight = None if args.canary is None else rollout.parse_weight(args.canary)
    routes_file = args.routes_file or registry_root / ROUTES_FILE_NAME

    def wait(version: int) -> None:
        if args.wait_url:
            rollout.wait_until_available(
                args.wait_url, args.model, version, args.wait_timeout, _stderr_line
            )
        elif args.settle:
            _stderr_line(f"waiting {args.settle:g}s for the servers to load {version}")
            time.sleep(args.settle)

    try:
        result = rollout.rollout(
            registry, args.model, args.version, weight, routes_file, wait, _stderr_line
        )
    except RegistryError as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        print_json(
            {
                "model": result.model,
                "stable": result.stable,
                "canary": result.canary,
                "canary_weight": result.weight,
                "routes_file": str(result.routes_file),
            }
        )
    else:
        canary = (
            f"version {result.canary} gets {result.weight:.0%}"
            if result.canary is not None
            else "none"
        )
        print(f"{result.model}: stable version {result.stable}; canary: {canary}")
    return 0


# ---- compose ------------------------------------------------------------------------


def _compose(args: argparse.Namespace) -> int:
    from servekit.deploy import compose, settings

    project = _project(args)
    program = compose.compose_program()
    env = settings.tool_environment(settings.compose_defaults(args.image_tag))
    if args.action == "config":
        command = compose.compose_command(
            program, project, ["config"], args.gpu, args.profile
        )
        sys.stdout.write(compose.config(command, project, env))
        return 0
    if args.action == "down":
        action = ["down", "--remove-orphans"] + (["--volumes"] if args.volumes else [])
        # Profiled services are only stopped when their profile is named.
        profiles = args.profile or ["train", "loadtest"]
        command = compose.compose_command(program, project, action, args.gpu, profiles)
        compose.run_compose(command, project, env)
        return 0
    action = ["up"] + ([] if args.foreground else ["--detach"])
    if args.build:
        action.append("--build")
    command = compose.compose_command(program, project, action, args.gpu, args.profile)
    compose.run_compose(command, project, env)
    if not args.foreground:
        print(
            "gateway: http://127.0.0.1:8000 (gRPC 127.0.0.1:8001); "
            "TF Serving: http://127.0.0.1:8501 (gRPC 127.0.0.1:8500)"
        )
    return 0
