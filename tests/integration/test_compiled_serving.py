"""Compiled versions over the wire: the parity gate's verdicts and the answers.

One registry: the default ``tabular`` job (compiled at training, exact mode), the
book's chapter-2 notebook pickle published with ``servekit models publish``
(compiled, exact), and a Ridge pipeline (no converter: refused, the pickle
serves). ``servekit models show`` names each verdict; one model server with
batching serves all three, the compiled ones from ``compiled/``, and every answer
over REST and gRPC equals the pickle's own ``predict``, float for float.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio
import httpx
import numpy as np
import pandas as pd
import pytest
from modelregistry import Registry, load_model
from servekit_protocol import messages, tensors
from servekit_protocol.services import PredictionServiceStub

from tests.integration.test_chapter2 import regions_pipeline, run_notebook
from tests.support.cli import ok, servekit
from tests.support.modelserver import ModelServer, model_server

# The module's setup trains a model and publishes two, each compiled and gated
# (seconds each alone); on a loaded 2-core machine it has taken over 300 s.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

MODELS = ("tabular", "housing", "regions")


@dataclass
class Served:
    registry: Path
    server: ModelServer
    show: dict[str, str]


def batching_parameters(folder: Path) -> Path:
    path = folder / "batching.txt"
    path.write_text(
        "max_batch_size { value: 128 }\n"
        "batch_timeout_micros { value: 2000 }\n"
        "num_batch_threads { value: 1 }\n"
        "max_enqueued_batches { value: 100 }\n"
    )
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("compiled")
    registry = folder / "models"
    ok(servekit("train", "tabular", "--registry", registry, "--no-progress"))
    run_notebook(folder)
    ok(
        servekit(
            "models",
            "publish",
            "housing",
            folder / "my_california_housing_model.pkl",
            "--example",
            folder / "rows.csv",
            "--code",
            folder / "housing_helpers.py",
            "--registry",
            registry,
        )
    )
    regions_pipeline(folder)
    ok(
        servekit(
            "models",
            "publish",
            "regions",
            folder / "regions.pkl",
            "--registry",
            registry,
        )
    )
    show = {
        name: ok(servekit("models", "show", name, "--registry", registry))
        for name in MODELS
    }
    config = folder / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f'  config {{ name: "{name}" base_path: {json.dumps(str(registry / name))}'
            ' model_platform: "sklearn" }\n'
            for name in MODELS
        )
        + "}\n"
    )
    with model_server(
        [
            f"--model_config_file={config}",
            "--enable_batching",
            f"--batching_parameters_file={batching_parameters(folder)}",
        ],
        log_path=folder / "server.log",
    ) as server:
        yield Served(registry=registry, server=server, show=show)


def pickle_predict(registry: Path, name: str, rows: list[dict[str, Any]]) -> list[Any]:
    registry_ = Registry(registry)
    manifest = registry_.manifest(name, 1)
    estimator = load_model(registry_.version_dir(name, 1), manifest)
    frame = pd.DataFrame(rows)[[feature.name for feature in manifest.features]]
    for feature in manifest.features:
        if feature.dtype != "string":
            frame[feature.name] = frame[feature.name].astype(feature.dtype)
    return list(estimator.predict(frame).tolist())


def test_show_names_each_verdict(served: Served) -> None:
    assert "passed (exact, max error 0 <= 1e-09" in served.show["tabular"]
    assert "passed (exact" in served.show["housing"]
    refused = served.show["regions"]
    assert "refused at step ridge" in refused
    assert "no converter for Ridge" in refused
    manifest = Registry(served.registry).manifest("regions", 1)
    assert manifest.compiled is not None and manifest.compiled.status == "refused"
    assert not any(path.startswith("compiled/") for path in manifest.files)


def test_compiled_versions_serve_from_compiled(served: Served) -> None:
    log = served.server.process.log_text()
    assert "serving tabular version 1 from its compiled model (exact)" in log
    assert "serving housing version 1 from its compiled model (exact)" in log
    assert "serving regions version 1 from its compiled model" not in log


def test_tabular_rest_answers_equal_the_pickle(served: Served) -> None:
    folder = Registry(served.registry).version_dir("tabular", 1)
    heldout = json.loads((folder / "heldout.json").read_text())
    rows = [row for row in heldout if all(value is not None for value in row.values())]
    response = httpx.post(
        f"{served.server.rest_url}/v1/models/tabular:predict",
        json={"instances": rows},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == pickle_predict(
        served.registry, "tabular", rows
    )


async def test_housing_grpc_batched_answers_equal_the_pickle(served: Served) -> None:
    manifest = Registry(served.registry).manifest("housing", 1)
    rows = manifest.examples
    expected = pickle_predict(served.registry, "housing", rows)

    async def call(stub: PredictionServiceStub, index: int) -> list[float]:
        request = messages.PredictRequest()
        request.model_spec.name = "housing"
        row = rows[index % len(rows)]
        for feature in manifest.features:
            value = row[feature.name]
            array = (
                np.array([value.encode()], dtype=object)
                if feature.dtype == "string"
                else np.array([value], dtype=feature.dtype)
            )
            tensors.from_ndarray(array, into=request.inputs[feature.name])
        response = await stub.Predict(request, timeout=30)
        return list(tensors.to_ndarray(response.outputs["predictions"]).tolist())

    async with grpc.aio.insecure_channel(served.server.grpc_target) as channel:
        stub = PredictionServiceStub(channel)
        answers = await asyncio.gather(*(call(stub, i) for i in range(24)))
    for index, answer in enumerate(answers):
        assert answer == [expected[index % len(rows)]]


def test_refused_version_serves_the_pickle(served: Served) -> None:
    rows = [{"size": 50.0, "region": "north"}, {"size": 120.0, "region": "east"}]
    response = httpx.post(
        f"{served.server.rest_url}/v1/models/regions:predict",
        json={"instances": rows},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == pickle_predict(
        served.registry, "regions", rows
    )


def test_compile_command_records_the_approximate_error(served: Served) -> None:
    # Last: it replaces tabular's compiled model (the running server keeps the
    # one it loaded).
    result = servekit(
        "models",
        "compile",
        "tabular",
        "1",
        "--mode",
        "approximate",
        "--registry",
        served.registry,
    )
    assert result.returncode == 0, result.stderr
    assert "passed (approximate, max error" in result.stdout
    verdict = Registry(served.registry).manifest("tabular", 1).compiled
    assert verdict is not None and verdict.mode == "approximate"
    assert verdict.max_error is not None and 0 < verdict.max_error <= 1e-4
    assert ok(
        servekit("models", "verify", "tabular", "1", "--registry", served.registry)
    )
    refused = servekit("models", "compile", "regions", "--registry", served.registry)
    assert refused.returncode == 1
    assert "refused at step ridge" in refused.stdout
