"""`servekit models ...`: list, inspect, verify, label, roll out and publish models."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelregistry import Registry, RegistryError

from servekit.compiling import describe_verdict
from servekit.console import (
    CommandError,
    add_registry_argument,
    print_json,
    print_table,
    registry_path,
    version_argument,
)


def register(subparsers: Any) -> None:
    """Add `models` and its subcommands."""
    parser = subparsers.add_parser(
        "models", help="inspect and manage the model registry"
    )
    commands = parser.add_subparsers(
        dest="models_command", metavar="ACTION", required=True
    )

    def action(name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        add_registry_argument(sub)
        sub.set_defaults(handler=_guarded(handler))
        return sub

    sub = action("list", "models, versions and labels", _list)
    sub.add_argument("--json", action="store_true", help="machine-readable output")

    sub = action("show", "a version's manifest", _show)
    sub.add_argument("name")
    sub.add_argument("version", nargs="?", type=version_argument)
    sub.add_argument("--json", action="store_true", help="machine-readable output")

    sub = action("verify", "check files against their sha256 in the manifest", _verify)
    sub.add_argument("name", nargs="?", help="default: every model")
    sub.add_argument("version", nargs="?", type=version_argument)
    sub.add_argument("--json", action="store_true", help="machine-readable output")

    sub = action("label", "point a label (stable, canary, ...) at a version", _label)
    sub.add_argument("name")
    sub.add_argument("label")
    sub.add_argument("version", nargs="?", type=version_argument)
    sub.add_argument("--remove", action="store_true", help="drop the label instead")

    sub = action("promote", "make a version (default: the canary) stable", _promote)
    sub.add_argument("name")
    sub.add_argument("version", nargs="?", type=version_argument)

    sub = action(
        "rollback", "point stable back at the previous stable version", _rollback
    )
    sub.add_argument("name")

    sub = action("delete", "remove a version (refused while labelled)", _delete)
    sub.add_argument("name")
    sub.add_argument("version", type=version_argument)

    sub = action("config", "regenerate and print models.config", _config)
    sub.add_argument(
        "--all",
        action="store_true",
        help="print servekit.config (every model) instead of models.config (TF only)",
    )

    sub = action(
        "publish", "bring a model trained elsewhere into the registry", _publish
    )
    sub.add_argument("name")
    sub.add_argument(
        "path", type=Path, help="a SavedModel folder or a joblib/pickle file"
    )
    sub.add_argument("--version", type=version_argument, default=None)
    sub.add_argument(
        "--example",
        type=Path,
        default=None,
        help="CSV or JSON file of input rows (feature names, dtypes, examples)",
    )
    sub.add_argument(
        "--code",
        type=Path,
        action="append",
        default=[],
        help="a Python module the pickle needs (repeatable); copied into code/. "
        "Helpers a notebook defined (pickled as __main__.NAME) are looked up here",
    )
    sub.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="TYPE",
        help="a type of a .skops file to trust beyond scikit-learn, NumPy and SciPy "
        "classes (repeatable); recorded in the manifest",
    )
    sub.add_argument(
        "--write-skops",
        action="store_true",
        help="also write the pickle's .skops form next to it, when every type in it "
        "is trustable",
    )
    sub.add_argument(
        "--heldout",
        type=Path,
        default=None,
        help="CSV or JSON file of held-out input rows, kept for the parity gate",
    )
    sub.add_argument(
        "--compile",
        dest="compile_mode",
        choices=("exact", "approximate", "none"),
        default="exact",
        help="compile a pickle and run the parity gate (default exact: float64)",
    )

    sub = action(
        "compile",
        "compile a published scikit-learn version and run the parity gate",
        _compile,
    )
    sub.add_argument("name")
    sub.add_argument("version", nargs="?", type=version_argument)
    sub.add_argument(
        "--mode",
        choices=("exact", "approximate"),
        default="exact",
        help="exact: float64, max relative error 1e-9; approximate: float32 trees",
    )
    sub.add_argument("--json", action="store_true", help="machine-readable output")


def _guarded(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            code: int = handler(Registry(registry_path(args)), args)
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        return code

    return run


def _list(registry: Registry, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for name in registry.models():
        labels = registry.labels(name)
        for version in registry.versions(name):
            try:
                framework = registry.framework(name, version)
            except RegistryError:
                framework = "?"
            rows.append(
                {
                    "name": name,
                    "version": version,
                    "framework": framework,
                    "labels": sorted(k for k, v in labels.items() if v == version),
                }
            )
    if args.json:
        print_json(rows)
    else:
        print_table(
            f"models in {registry.root}",
            ["name", "version", "framework", "labels"],
            [
                [r["name"], r["version"], r["framework"], ", ".join(r["labels"])]
                for r in rows
            ],
        )
    return 0


def _show(registry: Registry, args: argparse.Namespace) -> int:
    version = args.version or registry.resolve(args.name)
    manifest = registry.manifest(args.name, version)
    data = manifest.model_dump(mode="json")
    data["version"] = version
    data["labels"] = sorted(
        k for k, v in registry.labels(args.name).items() if v == version
    )
    if args.json:
        print_json(data)
        return 0
    print_table(
        f"{args.name} version {version}",
        ["field", "value"],
        [
            ["framework", manifest.framework],
            ["created", manifest.created],
            ["task", manifest.task or ""],
            ["labels", ", ".join(data["labels"])],
            ["features", ", ".join(f"{f.name}:{f.dtype}" for f in manifest.features)],
            ["signatures", ", ".join(sorted(manifest.signatures))],
            ["metrics", ", ".join(f"{k}={v:.4g}" for k, v in manifest.metrics.items())],
            ["compiled", describe_verdict(data.get("compiled"))],
            ["files", str(len(manifest.files))],
            [
                "__main__ names",
                ", ".join(f"{k} -> {v}" for k, v in manifest.main_names.items()),
            ],
            ["trusted types", ", ".join(manifest.trusted_types or [])],
        ],
    )
    return 0


def _verify(registry: Registry, args: argparse.Namespace) -> int:
    targets: list[tuple[str, int]] = []
    names = [args.name] if args.name else registry.models()
    for name in names:
        versions = [args.version] if args.version else registry.versions(name)
        targets.extend((name, version) for version in versions)
    results = {
        f"{name}/{version}": registry.verify(name, version) for name, version in targets
    }
    if args.json:
        print_json(results)
    else:
        print_table(
            "verification",
            ["version", "result"],
            [[key, "; ".join(problems) or "ok"] for key, problems in results.items()],
        )
    failed = [key for key, problems in results.items() if problems]
    if failed:
        raise CommandError(f"verification failed for {', '.join(failed)}")
    return 0


def _label(registry: Registry, args: argparse.Namespace) -> int:
    if args.remove:
        registry.remove_label(args.name, args.label)
        print(f"removed label {args.label} from {args.name}")
        return 0
    if args.version is None:
        raise CommandError("give the version the label points at (or --remove)")
    registry.set_label(args.name, args.label, args.version)
    print(f"{args.name}: {args.label} -> {args.version}")
    return 0


def _promote(registry: Registry, args: argparse.Namespace) -> int:
    version = registry.promote(args.name, args.version)
    print(f"{args.name}: stable -> {version}")
    return 0


def _rollback(registry: Registry, args: argparse.Namespace) -> int:
    version = registry.rollback(args.name)
    print(f"{args.name}: stable -> {version} (rolled back)")
    return 0


def _delete(registry: Registry, args: argparse.Namespace) -> int:
    registry.delete(args.name, args.version)
    print(f"deleted {args.name} version {args.version}")
    return 0


def _config(registry: Registry, args: argparse.Namespace) -> int:
    if not registry.root.is_dir():
        raise CommandError(f"registry {registry.root} does not exist")
    registry.write_configs()
    from modelregistry import SERVEKIT_CONFIG_FILE, TF_CONFIG_FILE

    path = registry.root / (SERVEKIT_CONFIG_FILE if args.all else TF_CONFIG_FILE)
    print(path.read_text(encoding="utf-8"), end="")
    return 0


def _publish(registry: Registry, args: argparse.Namespace) -> int:
    from servekit.publishing import PublishRequest, publish_external

    published = publish_external(
        registry,
        PublishRequest(
            name=args.name,
            path=args.path,
            version=args.version,
            example=args.example,
            code=args.code,
            trust=args.trust,
            write_skops=args.write_skops,
            compile_mode=None if args.compile_mode == "none" else args.compile_mode,
            heldout=args.heldout,
        ),
    )
    location = registry.version_dir(args.name, published.version)
    print(f"published {args.name} version {published.version} to {location}")
    for note in published.notes:
        if note:
            print(note)
    verdict = registry.manifest(args.name, published.version).compiled
    if verdict is not None:
        print(f"compiled: {describe_verdict(verdict.model_dump())}")
    return 0


def _compile(registry: Registry, args: argparse.Namespace) -> int:
    from rich.console import Console

    from servekit.compiling import compile_published

    version = args.version or registry.resolve(args.name)
    verdict = compile_published(
        registry, args.name, version, args.mode, Console(stderr=True)
    )
    if args.json:
        print_json(verdict)
    else:
        print(f"{args.name} version {version}: {describe_verdict(verdict)}")
    return 0 if verdict["status"] == "passed" else 1
