"""The DataPlane serving SavedModels: ours and TF Serving's own test models."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelserver.dataplane import DataPlane
from modelserver.observability.metrics import Metrics
from modelserver.registry.warmup import WARMUP_FILE
from modelserver.types import (
    ClassifyRequest,
    ModelSpec,
    PredictRequest,
    RegressRequest,
    ResolvedSpec,
    VersionState,
)

pytestmark = pytest.mark.slow

StartDataPlane = Callable[..., Awaitable[DataPlane]]


@pytest.fixture
def half_plus_two_config(
    tmp_path: Path, tf_saved_model: Path, install_version: Any, write_config: Any
) -> Path:
    install_version(tf_saved_model, tmp_path / "half", 1)
    return write_config(  # type: ignore[no-any-return]
        tmp_path / "servekit.config",
        'name: "half" base_path: "half" model_platform: "tensorflow"',
    )


async def test_predict_classify_regress(
    start_dataplane: StartDataPlane, half_plus_two_config: Path
) -> None:
    dataplane = await start_dataplane(half_plus_two_config)
    x = np.array([1.0, 2.0], dtype=np.float32)
    response = await dataplane.predict(PredictRequest(ModelSpec("half"), {"x": x}))
    assert response.spec == ResolvedSpec("half", 1, "serving_default")
    np.testing.assert_allclose(response.outputs["y"], [2.5, 3.0])
    regressed = await dataplane.regress(
        RegressRequest(ModelSpec("half", signature_name="regress"), [{"x": [4.0]}])
    )
    assert regressed.results.tolist() == [4.0]
    classified = await dataplane.classify(
        ClassifyRequest(ModelSpec("half", signature_name="classify"), [{"x": [0.0]}])
    )
    assert classified.results.pairs() == [[("large", 0.5), ("small", 0.5)]]


async def test_batching_with_padding_on_a_saved_model(
    start_dataplane: StartDataPlane,
    half_plus_two_config: Path,
    tmp_path: Path,
    metrics: Metrics,
) -> None:
    batching = tmp_path / "batching.txt"
    batching.write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 100000 }\n"
        "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\n"
        "pad_variable_length_inputs: true\nnum_batch_threads { value: 1 }\n"
    )
    dataplane = await start_dataplane(
        half_plus_two_config,
        enable_batching=True,
        batching_parameters_file=str(batching),
    )
    rows = [
        np.array([[1.0, 2.0]], dtype=np.float32),
        np.array([[1.0, 2.0, 3.0]], dtype=np.float32),
        np.array([[5.0]], dtype=np.float32),
    ]
    answers = await asyncio.gather(
        *(
            dataplane.predict(
                PredictRequest(
                    ModelSpec("half", signature_name="row_sum"), {"rows": row}
                )
            )
            for row in rows
        )
    )
    # Each row is padded with its own first value: [1, 2] -> [1, 2, 1].
    assert [answer.outputs["total"].tolist() for answer in answers] == [
        [4.0],
        [6.0],
        [15.0],
    ]
    labels = {"model": "half", "version": "1", "signature": "row_sum"}
    assert (
        metrics.registry.get_sample_value("modelserver_batch_size_count", labels) == 1
    )
    assert metrics.registry.get_sample_value("modelserver_batch_size_sum", labels) == 4


async def test_warmup_failure_keeps_a_version_from_serving(
    start_dataplane: StartDataPlane,
    tmp_path: Path,
    tf_saved_model: Path,
    install_version: Any,
    write_config: Any,
) -> None:
    version = install_version(tf_saved_model, tmp_path / "half", 1)
    (version / WARMUP_FILE).write_bytes(b"\x00\x01")
    config = write_config(
        tmp_path / "servekit.config",
        'name: "half" base_path: "half" model_platform: "tensorflow"',
    )
    dataplane = await start_dataplane(config)
    (status,) = await dataplane.status(ModelSpec("half"))
    assert status.state is VersionState.END
    assert "Truncated" in status.error_message
    # Without warmup the same version loads.
    other = await start_dataplane(config, enable_model_warmup=False)
    assert (await other.status(ModelSpec("half")))[0].state is VersionState.AVAILABLE


async def test_tf_serving_test_models_behind_one_config(
    start_dataplane: StartDataPlane,
    tfserving_models: Path,
    tmp_path: Path,
    write_config: Any,
) -> None:
    for name in ("half_plus_two", "half_plus_three", "saved_model_counter"):
        shutil.copytree(tfserving_models / name, tmp_path / name)
    shutil.copytree(
        tfserving_models / "saved_model_half_plus_two_2_versions",
        tmp_path / "two_versions",
    )
    config = write_config(
        tmp_path / "models.config",
        'name: "half_plus_two" base_path: "half_plus_two" model_platform: "tensorflow"',
        'name: "half_plus_three" base_path: "half_plus_three" '
        'model_platform: "tensorflow"',
        'name: "counter" base_path: "saved_model_counter" model_platform: "tensorflow"',
        'name: "two" base_path: "two_versions" model_platform: "tensorflow" '
        "model_version_policy { all {} } "
        'version_labels { key: "stable" value: 123 } '
        'version_labels { key: "canary" value: 124 }',
    )
    dataplane = await start_dataplane(config)
    x = np.array([1.0, 2.0, 5.0], dtype=np.float32)
    three = await dataplane.predict(
        PredictRequest(ModelSpec("half_plus_three"), {"x": x})
    )
    np.testing.assert_allclose(three.outputs["y"], [3.5, 4.0, 5.5])
    assert three.spec.version == 123
    stable = await dataplane.predict(
        PredictRequest(ModelSpec("two", label="stable"), {"x": x})
    )
    canary = await dataplane.predict(
        PredictRequest(ModelSpec("two", label="canary"), {"x": x})
    )
    assert (stable.spec.version, canary.spec.version) == (123, 124)
    latest = await dataplane.predict(PredictRequest(ModelSpec("two"), {"x": x}))
    assert latest.spec.version == 124
    counter = ModelSpec("counter", signature_name="incr_counter")
    counts = [
        (await dataplane.predict(PredictRequest(counter, {}))).outputs["output"]
        for _ in range(3)
    ]
    assert [float(count) for count in counts] == [1.0, 2.0, 3.0]
    metadata = await dataplane.metadata(ModelSpec("half_plus_two"))
    assert set(metadata.signatures) == {
        "serving_default",
        "classify_x_to_y",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
    }
