"""The DataPlane's models over time: config reloads, file-system polling, hot
reload under load, draining on stop, and a failed version beside a serving one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from modelserver.dataplane import DataPlane
from modelserver.errors import (
    FailedPrecondition,
    InvalidConfig,
    ModelNotFound,
    ModelNotReady,
)
from modelserver.types import (
    ModelSpec,
    PredictRequest,
    VersionState,
    VersionStatus,
)
from servekit_protocol import messages

from tests.support.models import VersionFolder, linear_inputs, publish_linear_pipeline

StartDataPlane = Callable[..., Awaitable[DataPlane]]


async def serve_linear(
    start_dataplane: StartDataPlane, write_config: Any, folder: VersionFolder
) -> DataPlane:
    """A dataplane serving ``linear`` from ``folder``, version 1 installed."""
    folder.install(1)
    config = write_config(
        folder.base.parent / "servekit.config",
        f'name: "linear" base_path: "{folder.base.name}" model_platform: "sklearn"',
    )
    return await start_dataplane(config)


async def test_reload_config_adds_and_removes_models(
    start_dataplane: StartDataPlane,
    two_models: Path,
    tmp_path: Path,
) -> None:
    dataplane = await start_dataplane(two_models)
    config = messages.ModelServerConfig()
    text_format.Parse(
        'model_config_list { config { name: "renamed" base_path: "'
        + str(tmp_path / "linear")
        + '" model_platform: "sklearn" } }',
        config,
    )
    await dataplane.reload_config(config)
    response = await dataplane.predict(
        PredictRequest(ModelSpec("renamed"), linear_inputs((1.0, 1.0)))
    )
    assert response.spec.version == 2
    with pytest.raises(ModelNotFound):
        await dataplane.predict(
            PredictRequest(ModelSpec("linear"), linear_inputs((1.0, 1.0)))
        )
    # An empty config changes nothing, as in TF Serving.
    await dataplane.reload_config(messages.ModelServerConfig())
    assert (await dataplane.status(ModelSpec("renamed")))[0].state is (
        VersionState.AVAILABLE
    )
    custom = messages.ModelServerConfig()
    custom.custom_model_config.type_url = "x"
    with pytest.raises(InvalidConfig):
        await dataplane.reload_config(custom)
    labelled = messages.ModelServerConfig()
    text_format.Parse(
        'model_config_list { config { name: "renamed" base_path: "'
        + str(tmp_path / "linear")
        + '" model_platform: "sklearn" version_labels { key: "old" value: 1 } } }',
        labelled,
    )
    with pytest.raises(FailedPrecondition):
        await dataplane.reload_config(labelled)


async def test_config_file_and_file_system_are_polled(
    start_dataplane: StartDataPlane,
    tmp_path: Path,
    sklearn_linear_version: Path,
    install_version: Any,
    write_config: Any,
) -> None:
    install_version(sklearn_linear_version, tmp_path / "first", 1)
    config = write_config(
        tmp_path / "servekit.config",
        'name: "first" base_path: "first" model_platform: "sklearn"',
    )
    dataplane = await start_dataplane(
        config,
        file_system_poll_wait_seconds=1,
        model_config_file_poll_wait_seconds=1,
    )
    install_version(sklearn_linear_version, tmp_path / "first", 5)
    install_version(sklearn_linear_version, tmp_path / "second", 1)
    write_config(
        config,
        'name: "first" base_path: "first" model_platform: "sklearn"',
        'name: "second" base_path: "second" model_platform: "sklearn"',
    )

    async def served(spec: ModelSpec) -> int:
        for _ in range(100):
            try:
                response = await dataplane.predict(
                    PredictRequest(spec, linear_inputs((1.0, 1.0)))
                )
            except ModelNotFound:
                await asyncio.sleep(0.1)
                continue
            if spec.name == "first" and response.spec.version != 5:
                await asyncio.sleep(0.1)
                continue
            return response.spec.version
        raise AssertionError(f"{spec.name} was not served in time")

    assert await served(ModelSpec("second")) == 1
    assert await served(ModelSpec("first")) == 5


async def test_hot_reload_under_load_drops_no_request(
    start_dataplane: StartDataPlane, linear_folder: VersionFolder, write_config: Any
) -> None:
    dataplane = await serve_linear(start_dataplane, write_config, linear_folder)
    versions_seen: list[int] = []
    failures: list[Exception] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                response = await dataplane.predict(
                    PredictRequest(ModelSpec("linear"), linear_inputs((1.0, 1.0)))
                )
                versions_seen.append(response.spec.version)
            except Exception as exc:
                failures.append(exc)
            await asyncio.sleep(0)

    clients = [asyncio.create_task(client()) for _ in range(4)]
    await asyncio.sleep(0.2)
    linear_folder.install(2)
    await dataplane.registry.poll_file_system()
    await dataplane.registry.settle()
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*clients)
    assert failures == []
    assert versions_seen[0] == 1
    assert versions_seen[-1] == 2
    assert await dataplane.status(ModelSpec("linear")) == [
        VersionStatus(2, VersionState.AVAILABLE),
        VersionStatus(1, VersionState.END),
    ]


async def test_stop_drains_in_flight_requests(
    start_dataplane: StartDataPlane, tmp_path: Path, write_config: Any
) -> None:
    publish_linear_pipeline(tmp_path, "slow", sleep_seconds=0.3)
    config = write_config(
        tmp_path / "slow.config",
        'name: "slow" base_path: "slow" model_platform: "sklearn"',
    )
    dataplane = await start_dataplane(config, enable_model_warmup=False)
    in_flight = asyncio.create_task(
        dataplane.predict(PredictRequest(ModelSpec("slow"), linear_inputs((1.0, 1.0))))
    )
    await asyncio.sleep(0.05)
    await dataplane.stop()
    response = await in_flight
    assert response.outputs["predictions"].tolist() == pytest.approx([6.0])
    assert not dataplane.ready()
    assert not dataplane.live()
    with pytest.raises(ModelNotReady):
        await dataplane.predict(
            PredictRequest(ModelSpec("slow"), linear_inputs((1.0, 1.0)))
        )


async def test_failed_version_reported_while_the_previous_one_serves(
    start_dataplane: StartDataPlane, linear_folder: VersionFolder, write_config: Any
) -> None:
    dataplane = await serve_linear(start_dataplane, write_config, linear_folder)
    broken = linear_folder.install(2)
    (broken / "model.joblib").write_bytes(b"not a pickle")
    await dataplane.registry.poll_file_system()
    await dataplane.registry.settle()
    failed, serving = await dataplane.status(ModelSpec("linear"))
    assert failed.version == 2
    assert failed.state is VersionState.END
    assert "sha256" in failed.error_message
    assert serving == VersionStatus(1, VersionState.AVAILABLE)
    response = await dataplane.predict(
        PredictRequest(ModelSpec("linear"), linear_inputs((1.0, 1.0)))
    )
    assert response.spec.version == 1
