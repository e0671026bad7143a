"""`servekit train <job>`: run a training job and publish its model to the registry."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelregistry import Registry, RegistryError, check_model_name
from rich.console import Console

from servekit.console import (
    CommandError,
    add_registry_argument,
    print_json,
    print_table,
    registry_path,
    version_argument,
)

# Kept in step with training.tabular.ESTIMATORS; importing it here would load
# scikit-learn for every `servekit` invocation.
ESTIMATOR_CHOICES = ("random-forest", "linear", "gradient-boosting")
TASK_CHOICES = ("auto", "regression", "classification")


def register(subparsers: Any) -> None:
    """Add `train` and one subcommand per job."""
    parser = subparsers.add_parser(
        "train",
        help="train a model and publish it to the registry",
        description="Train a model and publish it as a new version in the registry.",
    )
    jobs = parser.add_subparsers(dest="job", metavar="JOB", required=True)

    tabular = jobs.add_parser(
        "tabular",
        help="scikit-learn pipeline on tabular data (bundled diabetes data or a CSV)",
        description=(
            "A scikit-learn Pipeline: imputation, scaling, one-hot encoding, "
            "cluster-similarity features, then a regressor or classifier. Without "
            "--csv it trains on scikit-learn's bundled diabetes data."
        ),
    )
    _add_common_arguments(tabular, default_name="tabular")
    tabular.add_argument(
        "--csv", type=Path, help="train on this CSV file instead of the bundled data"
    )
    tabular.add_argument("--target", metavar="COLUMN", help="the CSV column to predict")
    tabular.add_argument(
        "--task",
        choices=TASK_CHOICES,
        default="auto",
        help="auto: regression for a numeric target, classification otherwise",
    )
    tabular.add_argument(
        "--estimator",
        choices=ESTIMATOR_CHOICES,
        default="random-forest",
        help="final step of the pipeline (default: random-forest, 50 trees)",
    )
    tabular.add_argument(
        "--compile",
        dest="compile_mode",
        choices=("exact", "approximate", "none"),
        default="exact",
        help="compile the pipeline and run the parity gate (default exact: float64)",
    )
    tabular.set_defaults(handler=_train_tabular)

    digits = jobs.add_parser(
        "digits",
        help="Keras classifier on the bundled 8x8 digits, exported as a SavedModel",
        description=(
            "A small Keras network on scikit-learn's handwritten digits, exported "
            "as a SavedModel with serving_default and classify signatures and TF "
            "Serving warm-up requests."
        ),
    )
    _add_common_arguments(digits, default_name="digits")
    digits.add_argument(
        "--epochs",
        type=_positive_int,
        default=10,
        help="training epochs (default: 10)",
    )
    digits.set_defaults(handler=_train_digits)


def _add_common_arguments(parser: argparse.ArgumentParser, default_name: str) -> None:
    add_registry_argument(parser)
    parser.add_argument(
        "--name", default=default_name, help=f"model name (default: {default_name})"
    )
    parser.add_argument(
        "--version",
        type=version_argument,
        help="version number to publish (default: the next one)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=42,
        help="random seed: the same seed gives the same model (default: 42)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON for scripts"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="do not show progress bars"
    )


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _seed(text: str) -> int:
    # numpy seeds are unsigned 32-bit integers.
    if not text.isdigit() or int(text) >= 2**32:
        raise argparse.ArgumentTypeError(
            f"invalid seed {text!r}: use an integer from 0 to {2**32 - 1}"
        )
    return int(text)


def _registry(args: argparse.Namespace) -> Registry:
    try:
        check_model_name(args.name)
    except RegistryError as exc:
        raise CommandError(str(exc)) from exc
    return Registry(registry_path(args))


def _train_tabular(args: argparse.Namespace) -> int:
    registry = _registry(args)
    # The data is checked before scikit-learn is imported (seconds), so bad input
    # is reported at once.
    from training.datasets import load_tabular_dataset
    from training.errors import TrainingError

    try:
        dataset = load_tabular_dataset(args.csv, args.target, args.task)
        from training.tabular import TabularOptions, train_tabular

        options = TabularOptions(
            name=args.name,
            version=args.version,
            seed=args.seed,
            csv=args.csv,
            target=args.target,
            task=args.task,
            estimator=args.estimator,
        )
        published = train_tabular(
            registry,
            options,
            show_progress=not args.no_progress,
            dataset=dataset,
            finish=_compiler(args.compile_mode),
        )
    except (TrainingError, RegistryError) as exc:
        raise CommandError(str(exc)) from exc
    except OSError as exc:
        raise CommandError(_describe_os_error(exc)) from exc
    return _report(published.to_json(), args.json)


def _compiler(mode: str) -> Any:
    if mode == "none":
        return None
    from servekit.compiling import MODES, compile_draft

    chosen = next(m for m in MODES if m == mode)

    def finish(draft: Any, pipeline: Any, heldout: list[dict[str, Any]]) -> None:
        compile_draft(draft, pipeline, heldout, chosen)

    return finish


def _train_digits(args: argparse.Namespace) -> int:
    registry = _registry(args)
    # Still no TensorFlow here: training.digits imports it once the registry
    # has accepted the draft.
    from training.digits import DigitsOptions, train_digits
    from training.errors import TrainingError

    options = DigitsOptions(
        name=args.name, version=args.version, seed=args.seed, epochs=args.epochs
    )
    try:
        published = train_digits(registry, options, show_progress=not args.no_progress)
    except (TrainingError, RegistryError) as exc:
        raise CommandError(str(exc)) from exc
    except OSError as exc:
        raise CommandError(_describe_os_error(exc)) from exc
    return _report(published.to_json(), args.json)


def _describe_os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def _report(result: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print_json(result)
        return 0
    Console().print(
        f"published [bold]{result['name']}[/bold] version {result['version']} "
        f"({result['framework']}, {result['task']}) at {result['path']}",
        highlight=False,
    )
    print_table(
        "held-out metrics",
        ("metric", "value"),
        [(name, f"{value:.4f}") for name, value in sorted(result["metrics"].items())],
    )
    return 0
