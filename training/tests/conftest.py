"""Models trained once per session: the default tabular job in process, the digits
job through the `servekit` console script (it enables TensorFlow's process-wide op
determinism, which must not leak into the test process)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from modelregistry import Registry

# pytest's importlib mode names this file "training.tests.conftest" and, unless the
# real package was imported earlier in the session, registers the repository's
# training/ folder as a namespace package "training" first, which hides
# training/src/training from every later import. Put the real package back.
if getattr(sys.modules.get("training"), "__file__", "") is None:
    del sys.modules["training"]
    importlib.import_module("training")

if TYPE_CHECKING:
    from training.published import PublishedModel

SERVEKIT = Path(sys.executable).with_name("servekit")


def clean_environment() -> dict[str, str]:
    """This process's environment without a registry choice, with a wide terminal."""
    environment = {
        key: value for key, value in os.environ.items() if key != "SERVEKIT_REGISTRY"
    }
    environment["COLUMNS"] = "200"
    return environment


def run_servekit(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the installed `servekit` console script and capture its output."""
    environment = clean_environment()
    environment.update(env or {})
    return subprocess.run(
        [str(SERVEKIT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        check=False,
    )


RunServekit = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def servekit() -> RunServekit:
    """`servekit(*args, env=None, timeout=120)` runs the console script."""
    return run_servekit


@pytest.fixture(scope="session")
def tabular_model(tmp_path_factory: pytest.TempPathFactory) -> PublishedModel:
    from training.tabular import TabularOptions, train_tabular

    registry = Registry(tmp_path_factory.mktemp("tabular-registry"))
    return train_tabular(registry, TabularOptions(), show_progress=False)


@dataclass
class DigitsRun:
    """`servekit train digits` running in the background."""

    process: subprocess.Popen[bytes]
    root: Path
    stdout: Path
    stderr: Path


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DigitsRun]:
    folder = tmp_path_factory.mktemp("digits")
    root = folder / "registry"
    stdout_path = folder / "stdout.json"
    stderr_path = folder / "stderr.log"
    # Files, not pipes: nobody reads while it runs, and TensorFlow logs a lot.
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [
                str(SERVEKIT),
                "train",
                "digits",
                "--epochs",
                "2",
                "--registry",
                str(root),
                "--json",
                "--no-progress",
            ],
            stdout=stdout,
            stderr=stderr,
            env=clean_environment(),
        )
    run = DigitsRun(process, root, stdout_path, stderr_path)
    try:
        yield run
    finally:
        if run.process.poll() is None:
            run.process.kill()
        run.process.wait()


def uses_digits_model(item: pytest.Item) -> bool:
    return "digits_model" in getattr(item, "fixturenames", ())


@pytest.fixture(scope="session", autouse=True)
def start_digits_early(request: pytest.FixtureRequest) -> None:
    """Start the digits job with the first test of this folder when digits tests are
    selected: its TensorFlow start-up overlaps the scikit-learn tests."""
    if any(uses_digits_model(item) for item in request.session.items):
        request.getfixturevalue("digits_run")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run this folder's digits tests after its other tests (same slots, new order)."""
    here = Path(__file__).parent
    slots = [index for index, item in enumerate(items) if here in item.path.parents]
    mine = [items[index] for index in slots]
    mine.sort(key=uses_digits_model)
    for index, item in zip(slots, mine, strict=True):
        items[index] = item


@pytest.fixture(scope="session")
def digits_model(digits_run: DigitsRun) -> PublishedModel:
    from training.published import PublishedModel

    try:
        returncode = digits_run.process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("servekit train digits did not finish within 300 s")
    stderr = digits_run.stderr.read_text(errors="replace")
    assert returncode == 0, stderr[-2000:]
    result = json.loads(digits_run.stdout.read_text())
    return PublishedModel(
        name=result["name"],
        version=result["version"],
        path=Path(result["path"]),
        framework=result["framework"],
        task=result["task"],
        metrics=result["metrics"],
    )
