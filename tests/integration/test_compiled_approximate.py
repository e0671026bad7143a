"""Approximate mode over the wire: float32 trees whose measured error is kept.

The two models of ``tests.support.compiledmodels`` are published with
``servekit models publish --compile approximate``: ``sizes`` (a random-forest
classifier) and ``clipped`` (a random-forest regressor behind a hybrid plan). The
parity gate records each one's maximum error over its rows in the manifest and
``servekit models show`` prints it; one model server with batching serves both
from their compiled models, and over REST and gRPC every answer for the gate's
held-out rows differs from the pickle's by no more than that recorded error
(probabilities absolutely, regressions relatively, as the gate measures), the
classes being the pickle's.
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
from modelregistry import Manifest, Registry, load_model
from servekit_protocol import messages, tensors
from servekit_protocol.services import PredictionServiceStub

from tests.support.cli import ok, servekit
from tests.support.compiledmodels import (
    batching_parameters,
    build_models,
    models_config,
    publish,
)
from tests.support.modelserver import ModelServer, model_server

# Publishing runs two parity gates (seconds each alone, minutes on a loaded
# 2-core machine) before the server starts.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

MODELS = ("sizes", "clipped")
APPROXIMATE_TOLERANCE = 1e-4
"""The approximate gate's default bound (``servekit models show`` prints it)."""
PARTS = 10
"""gRPC requests the rows are split into, sent at once so the batcher merges them."""
REST_ROWS = 50
"""Rows per REST call: a call over the batcher's 64 rows is refused, as in TF Serving."""


@dataclass
class Served:
    registry: Path
    server: ModelServer
    show: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("compiled-approximate")
    registry = folder / "models"
    build_models(folder)
    for name in MODELS:
        publish(folder, registry, name, "--compile", "approximate")
    show = {
        name: ok(servekit("models", "show", name, "--registry", registry))
        for name in MODELS
    }
    with model_server(
        [
            f"--model_config_file={models_config(folder, registry, MODELS)}",
            "--enable_batching",
            f"--batching_parameters_file={batching_parameters(folder)}",
        ],
        log_path=folder / "server.log",
    ) as server:
        yield Served(registry, server, show)


def manifest_of(served: Served, name: str) -> Manifest:
    return Registry(served.registry).manifest(name, 1)


def recorded_error(served: Served, name: str) -> float:
    verdict = manifest_of(served, name).compiled
    assert verdict is not None and verdict.max_error is not None
    return verdict.max_error


def gate_rows(served: Served, name: str) -> list[dict[str, Any]]:
    """The held-out rows the gate compared (the version's ``heldout.json``)."""
    folder = Registry(served.registry).version_dir(name, 1)
    rows: list[dict[str, Any]] = json.loads((folder / "heldout.json").read_text())
    return rows


def pickle_answers(
    served: Served, name: str, rows: list[dict[str, Any]], method: str
) -> Any:
    registry = Registry(served.registry)
    manifest = registry.manifest(name, 1)
    estimator = load_model(registry.version_dir(name, 1), manifest)
    frame = pd.DataFrame(rows)[[feature.name for feature in manifest.features]]
    return getattr(estimator, method)(frame)


def relative_error(expected: Any, actual: Any) -> float:
    """Largest relative difference, as the gate measures regressions."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    scale = np.maximum(np.abs(expected), np.abs(actual))
    difference = np.abs(expected - actual)
    return float(
        np.max(np.where(scale > 0, difference / np.where(scale > 0, scale, 1), 0))
    )


def absolute_error(expected: Any, actual: Any) -> float:
    return float(
        np.max(np.abs(np.asarray(expected, dtype=np.float64) - np.asarray(actual)))
    )


def rest(
    served: Served, name: str, rows: list[dict[str, Any]], signature: str = ""
) -> list[Any]:
    """The answers for ``rows``, in calls of at most ``REST_ROWS`` rows."""
    answers: list[Any] = []
    for start in range(0, len(rows), REST_ROWS):
        body: dict[str, Any] = {"instances": rows[start : start + REST_ROWS]}
        if signature:
            body["signature_name"] = signature
        response = httpx.post(
            f"{served.server.rest_url}/v1/models/{name}:predict", json=body, timeout=60
        )
        assert response.status_code == 200, response.text
        answers += response.json()["predictions"]
    return answers


def test_the_measured_error_is_recorded_and_shown(served: Served) -> None:
    log = served.server.process.log_text()
    for name in MODELS:
        manifest = manifest_of(served, name)
        verdict = manifest.compiled
        assert verdict is not None
        assert (verdict.status, verdict.mode) == ("passed", "approximate")
        assert verdict.tolerance == APPROXIMATE_TOLERANCE
        # float32 trees do not repeat float64 sums exactly: an error is measured.
        assert verdict.max_error is not None
        assert 0 < verdict.max_error <= APPROXIMATE_TOLERANCE
        assert {"compiled/plan.json", "compiled/model.onnx"} <= set(manifest.files)
        shown = f"passed (approximate, max error {verdict.max_error:.3g} <= 0.0001"
        assert shown in served.show[name]
        assert f"serving {name} version 1 from its compiled model (approximate)" in log


def test_rest_answers_keep_the_recorded_error(served: Served) -> None:
    rows = gate_rows(served, "sizes")
    classes = rest(served, "sizes", rows)
    assert classes == pickle_answers(served, "sizes", rows, "predict").tolist()
    probabilities = rest(served, "sizes", rows, "predict_proba")
    expected = pickle_answers(served, "sizes", rows, "predict_proba")
    assert absolute_error(expected, probabilities) <= recorded_error(served, "sizes")
    rows = gate_rows(served, "clipped")
    predictions = rest(served, "clipped", rows)
    expected = pickle_answers(served, "clipped", rows, "predict")
    assert relative_error(expected, predictions) <= recorded_error(served, "clipped")


async def test_grpc_batched_answers_keep_the_recorded_error(served: Served) -> None:
    async def predict(
        stub: PredictionServiceStub,
        name: str,
        signature: str,
        rows: list[dict[str, Any]],
    ) -> Any:
        request = messages.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = signature
        for feature in manifest_of(served, name).features:
            values = [row[feature.name] for row in rows]
            array = (
                np.array([value.encode() for value in values], dtype=object)
                if feature.dtype == "string"
                else np.array(values, dtype=feature.dtype)
            )
            tensors.from_ndarray(array, into=request.inputs[feature.name])
        response = await stub.Predict(request, timeout=60)
        (output,) = response.outputs.values()
        return tensors.to_ndarray(output)

    async def answers(
        stub: PredictionServiceStub, name: str, signature: str
    ) -> tuple[list[dict[str, Any]], Any]:
        rows = gate_rows(served, name)
        parts = np.array_split(np.arange(len(rows)), PARTS)
        # Sent at once: the model server's batcher merges them into fewer calls.
        answered = await asyncio.gather(
            *(predict(stub, name, signature, [rows[i] for i in part]) for part in parts)
        )
        return rows, np.concatenate(answered)

    async with grpc.aio.insecure_channel(served.server.grpc_target) as channel:
        stub = PredictionServiceStub(channel)
        rows, probabilities = await answers(stub, "sizes", "predict_proba")
        expected = pickle_answers(served, "sizes", rows, "predict_proba")
        assert absolute_error(expected, probabilities) <= recorded_error(
            served, "sizes"
        )
        rows, classes = await answers(stub, "sizes", "serving_default")
        assert [label.decode() for label in classes.tolist()] == pickle_answers(
            served, "sizes", rows, "predict"
        ).tolist()
        rows, predictions = await answers(stub, "clipped", "serving_default")
        expected = pickle_answers(served, "clipped", rows, "predict")
        assert relative_error(expected, predictions) <= recorded_error(
            served, "clipped"
        )
