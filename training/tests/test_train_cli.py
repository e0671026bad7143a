"""`servekit train` through the console script: success output and one-line refusals
that leave the registry exactly as it was."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import pytest
from modelregistry import Registry, load_pickle, read_manifest

RunServekit = Callable[..., subprocess.CompletedProcess[str]]


def snapshot(root: Path) -> dict[str, str]:
    """Every entry below ``root`` (hidden ones too) with the sha256 of each file."""
    if not root.exists():
        return {}
    return {
        path.relative_to(root).as_posix(): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        )
        for path in sorted(root.rglob("*"))
    }


def write_regression_csv(path: Path) -> None:
    rng = np.random.default_rng(11)
    size = rng.uniform(20, 200, 120)
    rooms = rng.integers(1, 6, 120)
    town = rng.choice(["north", "south"], 120)
    price = 3 * size + 20 * rooms + np.where(town == "north", 100, 0)
    pd.DataFrame(
        {
            "size": size,
            "rooms": rooms,
            "town": town,
            "price": price + rng.normal(0, 5, 120),
        }
    ).to_csv(path, index=False)


@pytest.fixture(scope="module")
def published_registry(
    tmp_path_factory: pytest.TempPathFactory, servekit: RunServekit
) -> Path:
    """A registry with `houses` version 1, published through the console script with
    the registry chosen by $SERVEKIT_REGISTRY."""
    folder = tmp_path_factory.mktemp("cli")
    csv = folder / "houses.csv"
    write_regression_csv(csv)
    root = folder / "registry"
    completed = servekit(
        "train",
        "tabular",
        "--csv",
        str(csv),
        "--target",
        "price",
        "--name",
        "houses",
        "--seed",
        "3",
        "--no-progress",
        env={"SERVEKIT_REGISTRY": str(root)},
    )
    assert completed.returncode == 0, completed.stderr
    # The summary for people (scripts use --json, as the digits fixture does).
    assert (
        f"published houses version 1 (sklearn, regression) at {root / 'houses' / '1'}"
        in completed.stdout
    )
    for metric in ("rmse", "mae", "r2"):
        assert metric in completed.stdout
    return root


def test_csv_job_publishes_a_loadable_pipeline(published_registry: Path) -> None:
    folder = published_registry / "houses" / "1"
    manifest = read_manifest(folder)
    assert [(f.name, f.dtype) for f in manifest.features] == [
        ("size", "float64"),
        ("rooms", "int64"),
        ("town", "string"),
    ]
    assert manifest.metrics["r2"] > 0.9
    pipeline = load_pickle(folder, manifest)
    predictions = pipeline.predict(pd.DataFrame(manifest.examples))
    assert predictions.shape == (5,)
    assert Registry(published_registry).verify("houses", 1) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "bogus"], "invalid choice: 'bogus'"),
        (["train", "tabular", "--version", "two"], "invalid version 'two'"),
        (["train", "tabular", "--version", "0"], "invalid version '0'"),
        (["train", "digits", "--epochs", "none"], "not a positive integer"),
        (["train", "tabular", "--estimator", "magic"], "invalid choice: 'magic'"),
    ],
)
def test_argument_errors(
    arguments: list[str], message: str, tmp_path: Path, servekit: RunServekit
) -> None:
    completed = servekit(*arguments, env={"SERVEKIT_REGISTRY": str(tmp_path / "r")})
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert message in lines[-1]
    # argparse puts its usage first; the error itself is one line.
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1])
    assert not (tmp_path / "r").exists()


def test_missing_csv(
    published_registry: Path, servekit: RunServekit, tmp_path: Path
) -> None:
    before = snapshot(published_registry)
    missing = tmp_path / "nowhere.csv"
    completed = servekit(
        "train",
        "tabular",
        "--registry",
        str(published_registry),
        "--csv",
        str(missing),
        "--target",
        "price",
    )
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        f"servekit: error: CSV file not found: {missing}"
    ]
    assert snapshot(published_registry) == before


def test_absent_target_column(
    published_registry: Path, servekit: RunServekit, tmp_path: Path
) -> None:
    csv = tmp_path / "houses.csv"
    write_regression_csv(csv)
    fresh = tmp_path / "fresh-registry"
    completed = servekit(
        "train",
        "tabular",
        "--registry",
        str(fresh),
        "--csv",
        str(csv),
        "--target",
        "cost",
    )
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "target column 'cost' not found" in lines[0]
    assert "size, rooms, town, price" in lines[0]
    assert not fresh.exists()


def test_version_taken(published_registry: Path, servekit: RunServekit) -> None:
    before = snapshot(published_registry)
    # Any job: the number is taken whatever the framework (digits refuses before
    # loading its data, which keeps this quick).
    completed = servekit(
        "train",
        "digits",
        "--registry",
        str(published_registry),
        "--name",
        "houses",
        "--version",
        "1",
    )
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        "servekit: error: model 'houses' already has version 1"
    ]
    assert snapshot(published_registry) == before


def test_registry_below_a_file(tmp_path: Path, servekit: RunServekit) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the registry's parent should be\n")
    completed = servekit(
        "train", "digits", "--registry", str(blocker / "models"), "--epochs", "1"
    )
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "not writable" in lines[0]
    assert blocker.read_text() == "a file where the registry's parent should be\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_registry(published_registry: Path, servekit: RunServekit) -> None:
    model_dir = published_registry / "houses"
    before = snapshot(published_registry)
    model_dir.chmod(0o555)
    try:
        completed = servekit(
            "train",
            "tabular",
            "--registry",
            str(published_registry),
            "--name",
            "houses",
        )
    finally:
        model_dir.chmod(0o755)
    assert completed.returncode == 1
    assert len(completed.stderr.strip().splitlines()) == 1
    assert "not writable" in completed.stderr
    assert snapshot(published_registry) == before


def test_invalid_model_name(tmp_path: Path, servekit: RunServekit) -> None:
    completed = servekit(
        "train", "tabular", "--registry", str(tmp_path / "r"), "--name", "../escape"
    )
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "invalid model name '../escape'" in lines[0]
    assert not (tmp_path / "r").exists()


def test_cli_choices_match_the_jobs() -> None:
    from servekit.commands.train import ESTIMATOR_CHOICES, TASK_CHOICES
    from training.datasets import TaskChoice
    from training.tabular import ESTIMATORS

    assert ESTIMATOR_CHOICES == ESTIMATORS
    assert get_args(TaskChoice) == TASK_CHOICES
