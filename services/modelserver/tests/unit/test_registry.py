"""Version policies, labels, states and availability-preserving reloads."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelserver.config import ModelConfig, VersionPolicy
from modelserver.errors import (
    FailedPrecondition,
    InvalidConfig,
    LabelNotFound,
    ModelNotFound,
    VersionNotFound,
)
from modelserver.observability.metrics import Metrics
from modelserver.registry.registry import ModelRegistry
from modelserver.registry.repository import LoadOptions, load_runtime, scan_versions
from modelserver.runtimes.base import Runtime
from modelserver.types import ModelSpec, VersionState, VersionStatus

from tests.support.models import VersionFolder

RegistryFactory = Callable[..., ModelRegistry]


def _load(config: ModelConfig, version: int, path: Path) -> Runtime:
    return load_runtime(
        name=config.name,
        version=version,
        path=path,
        platform=config.platform,
        options=LoadOptions(),
    )


@pytest.fixture
async def make_registry(metrics: Metrics) -> AsyncIterator[RegistryFactory]:
    executor = ThreadPoolExecutor(max_workers=2)
    created: list[ModelRegistry] = []

    def make(**overrides: Any) -> ModelRegistry:
        options: dict[str, Any] = {
            "loader": _load,
            "load_executor": executor,
            "metrics": metrics,
            "max_load_retries": 0,
        }
        options.update(overrides)
        registry = ModelRegistry(**options)
        created.append(registry)
        return registry

    yield make
    for registry in created:
        await registry.close()
    executor.shutdown(wait=True)


def linear(base_path: Path, **changes: Any) -> ModelConfig:
    values: dict[str, Any] = {
        "name": "linear",
        "base_path": base_path,
        "platform": "sklearn",
    }
    values.update(changes)
    return ModelConfig(**values)


def states(registry: ModelRegistry, name: str = "linear") -> dict[int, VersionState]:
    return {status.version: status.state for status in registry.statuses(name)}


def test_scan_ignores_hidden_temporary_and_non_integer_entries(tmp_path: Path) -> None:
    for name in ("1", "0003", ".5", ".tmp-6", "7.partial", "abc", "٣"):
        (tmp_path / name).mkdir()
    (tmp_path / "9").write_text("a file, not a version")
    assert scan_versions(tmp_path) == {1: tmp_path / "1", 3: tmp_path / "0003"}
    assert scan_versions(tmp_path / "missing") == {}


async def test_latest_policy_serves_the_highest_version(
    make_registry: RegistryFactory, linear_folder: VersionFolder
) -> None:
    base = linear_folder.base
    linear_folder.install(1)
    linear_folder.install(2)
    (base / ".tmp-3").mkdir()
    registry = make_registry()
    await registry.apply_config([linear(base)])
    assert states(registry) == {2: VersionState.AVAILABLE}
    assert registry.resolve(ModelSpec("linear")).version == 2
    with pytest.raises(VersionNotFound, match=r"Specific\(linear, 1\)"):
        registry.resolve(ModelSpec("linear", version=1))


async def test_new_version_replaces_the_old_one_after_it_is_available(
    make_registry: RegistryFactory, linear_folder: VersionFolder
) -> None:
    base = linear_folder.base
    linear_folder.install(1)
    registry = make_registry()
    await registry.apply_config([linear(base)])
    old = registry.resolve(ModelSpec("linear"))
    old.acquire()  # a request in flight on version 1
    try:
        linear_folder.install(2)
        await registry.poll_file_system()
        await registry.settle_loads()
        assert registry.resolve(ModelSpec("linear")).version == 2
        assert states(registry)[1] is VersionState.UNLOADING
    finally:
        old.release()
    await registry.settle()
    assert states(registry) == {2: VersionState.AVAILABLE, 1: VersionState.END}


async def test_failed_version_is_reported_and_the_old_one_keeps_serving(
    make_registry: RegistryFactory, linear_folder: VersionFolder
) -> None:
    base = linear_folder.base
    linear_folder.install(1)
    registry = make_registry()
    await registry.apply_config([linear(base)])
    broken = linear_folder.install(2)
    with (broken / "model.joblib").open("ab") as handle:
        handle.write(b"corrupt")
    await registry.poll_file_system()
    await registry.settle()
    two, one = registry.statuses("linear")
    assert one == VersionStatus(1, VersionState.AVAILABLE)
    assert two.state is VersionState.END
    assert two.error_code == 15  # DATA_LOSS
    assert "sha256" in two.error_message
    assert registry.resolve(ModelSpec("linear")).version == 1
    # Another poll neither retries the broken version nor unloads version 1.
    await registry.poll_file_system()
    await registry.settle()
    assert registry.statuses("linear")[0] == two
    assert registry.resolve(ModelSpec("linear")).version == 1


async def test_vanished_version_is_unloaded_gracefully(
    make_registry: RegistryFactory, linear_folder: VersionFolder
) -> None:
    base = linear_folder.base
    linear_folder.install(1)
    linear_folder.install(2)
    registry = make_registry()
    await registry.apply_config([linear(base, policy=VersionPolicy(kind="all"))])
    assert states(registry) == {1: VersionState.AVAILABLE, 2: VersionState.AVAILABLE}
    serving = registry.resolve(ModelSpec("linear", version=2))
    runtime = serving.acquire()
    try:
        shutil.rmtree(base / "2")
        await registry.poll_file_system()
        assert registry.resolve(ModelSpec("linear")).version == 1
        assert states(registry)[2] is VersionState.UNLOADING
        # The request that was in flight still has its model.
        call = runtime.prepare_predict(
            "", {"a": np.array([1.0]), "b": np.array([1.0])}, ()
        )
        assert runtime.run(call)["predictions"].tolist() == pytest.approx([6.0])
    finally:
        serving.release()
    await registry.settle()
    assert states(registry) == {1: VersionState.AVAILABLE, 2: VersionState.END}


async def test_a_vanished_version_that_comes_back_is_loaded_again(
    make_registry: RegistryFactory, linear_folder: VersionFolder
) -> None:
    base = linear_folder.base
    linear_folder.install(1)
    registry = make_registry()
    await registry.apply_config([linear(base)])
    shutil.rmtree(base / "1")
    await registry.poll_file_system()
    await registry.settle()
    with pytest.raises(ModelNotFound, match=r"Latest\(linear\)"):
        registry.resolve(ModelSpec("linear"))
    linear_folder.install(1)
    await registry.poll_file_system()
    await registry.settle()
    assert registry.resolve(ModelSpec("linear")).version == 1


async def test_specific_policy_and_labels(
    make_registry: RegistryFactory, linear_folder: VersionFolder
) -> None:
    base = linear_folder.base
    for version in (1, 2, 3):
        linear_folder.install(version)
    registry = make_registry()
    policy = VersionPolicy(kind="specific", versions=frozenset({1, 2}))
    await registry.apply_config(
        [linear(base, policy=policy, labels={"stable": 1, "canary": 2})]
    )
    assert states(registry) == {1: VersionState.AVAILABLE, 2: VersionState.AVAILABLE}
    assert registry.resolve(ModelSpec("linear")).version == 2
    assert registry.resolve(ModelSpec("linear", label="stable")).version == 1
    assert registry.resolve(ModelSpec("linear", label="canary")).version == 2
    with pytest.raises(LabelNotFound, match="Unrecognized servable version label: x"):
        registry.resolve(ModelSpec("linear", label="x"))
    with pytest.raises(LabelNotFound):
        registry.resolve(ModelSpec("other", label="stable"))
    assert registry.labelled_version("linear", "canary") == 2
    with pytest.raises(LabelNotFound, match="Unrecognized servable version label: x"):
        registry.labelled_version("linear", "x")


async def test_label_on_an_unavailable_version_is_refused(
    make_registry: RegistryFactory, linear_folder: VersionFolder
) -> None:
    base = linear_folder.base
    linear_folder.install(1)
    registry = make_registry()
    await registry.apply_config([linear(base, labels={"stable": 1})])
    with pytest.raises(FailedPrecondition, match="version 5 of model linear"):
        await registry.apply_config([linear(base, labels={"stable": 1, "next": 5})])
    # The labels stay as they were.
    assert registry.labels("linear") == {"stable": 1}


async def test_labels_for_unavailable_versions_when_allowed(
    make_registry: RegistryFactory, linear_folder: VersionFolder
) -> None:
    base = linear_folder.base
    linear_folder.install(1)
    registry = make_registry(allow_labels_for_unavailable=True)
    await registry.apply_config([linear(base, labels={"stable": 1})])
    await registry.apply_config([linear(base, labels={"stable": 1, "next": 5})])
    assert registry.labels("linear") == {"stable": 1, "next": 5}
    with pytest.raises(VersionNotFound, match=r"Specific\(linear, 5\)"):
        registry.resolve(ModelSpec("linear", label="next"))
    # Moving an existing label to an unavailable version is still refused.
    with pytest.raises(FailedPrecondition):
        await registry.apply_config([linear(base, labels={"stable": 7})])


async def test_a_label_may_name_a_version_the_same_config_loads(
    make_registry: RegistryFactory, linear_folder: VersionFolder
) -> None:
    base = linear_folder.base
    linear_folder.install(1)
    linear_folder.install(2)
    registry = make_registry()
    only_one = VersionPolicy(kind="specific", versions=frozenset({1}))
    await registry.apply_config([linear(base, policy=only_one, labels={"stable": 1})])
    all_versions = VersionPolicy(kind="all")
    await registry.apply_config(
        [linear(base, policy=all_versions, labels={"stable": 1, "canary": 2})]
    )
    assert registry.resolve(ModelSpec("linear", label="canary")).version == 2


async def test_models_removed_from_the_config_are_unloaded(
    make_registry: RegistryFactory, linear_folder: VersionFolder
) -> None:
    base = linear_folder.base
    linear_folder.install(1)
    registry = make_registry()
    await registry.apply_config([linear(base)])
    await registry.apply_config([])
    await registry.settle()
    with pytest.raises(ModelNotFound):
        registry.resolve(ModelSpec("linear"))
    assert states(registry) == {1: VersionState.END}
    assert registry.model_names() == []


async def test_status_errors_use_tf_serving_messages(
    make_registry: RegistryFactory, linear_folder: VersionFolder
) -> None:
    base = linear_folder.base
    linear_folder.install(1)
    registry = make_registry()
    await registry.apply_config([linear(base)])
    with pytest.raises(ModelNotFound, match="Could not find any versions of model x"):
        registry.statuses("x")
    with pytest.raises(VersionNotFound, match="Could not find version 9 of model"):
        registry.statuses("linear", 9)
    assert registry.statuses("linear", 1) == [VersionStatus(1, VersionState.AVAILABLE)]


async def test_moving_a_model_keeps_serving_until_the_new_path_is_ready(
    make_registry: RegistryFactory,
    sklearn_linear_version: Path,
    install_version: Any,
    tmp_path: Path,
) -> None:
    install_version(sklearn_linear_version, tmp_path / "old", 1)
    install_version(sklearn_linear_version, tmp_path / "new", 4)
    registry = make_registry()
    await registry.apply_config([linear(tmp_path / "old")])
    await registry.apply_config([linear(tmp_path / "new")])
    assert registry.resolve(ModelSpec("linear")).version == 4
    with pytest.raises(InvalidConfig, match="Illegal to change a model's platform"):
        await registry.apply_config([linear(tmp_path / "new", platform="tensorflow")])


async def test_failed_loads_are_retried(
    make_registry: RegistryFactory,
    sklearn_linear_version: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = tmp_path / "linear"
    version_dir = base / "1"
    shutil.copytree(sklearn_linear_version, version_dir)
    manifest = (version_dir / "servekit.json").read_bytes()
    (version_dir / "servekit.json").unlink()  # a copy still under way
    registry = make_registry(max_load_retries=3, load_retry_interval_seconds=0.5)
    caplog.set_level(logging.WARNING, logger="modelserver.registry.registry")
    applying = asyncio.create_task(registry.apply_config([linear(base)]))
    for _ in range(200):
        if "failed" in caplog.text:
            break
        await asyncio.sleep(0.05)
    assert "no servekit.json manifest" in caplog.text
    (version_dir / "servekit.json").write_bytes(manifest)
    await applying
    assert states(registry) == {1: VersionState.AVAILABLE}


async def test_version_state_metric_follows_the_states(
    make_registry: RegistryFactory, linear_folder: VersionFolder, metrics: Metrics
) -> None:
    base = linear_folder.base
    linear_folder.install(1)
    registry = make_registry()
    await registry.apply_config([linear(base)])

    def sample(state: str) -> float | None:
        return metrics.registry.get_sample_value(
            "modelserver_model_version_state",
            {"model": "linear", "version": "1", "state": state},
        )

    assert sample("AVAILABLE") == 1.0
    assert sample("LOADING") == 0.0
    assert (
        metrics.registry.get_sample_value(
            "modelserver_model_load_latency_seconds_count",
            {"model": "linear", "version": "1"},
        )
        == 1.0
    )
