"""A compiled classifier and a hybrid plan over the wire.

Two versions published with ``servekit models publish`` (exact mode), built by
``tests.support.compiledmodels``:

- ``sizes``: a RandomForestClassifier behind a ColumnTransformer, string classes,
  compiled whole. Its answers over REST v1 (``:predict`` with the default and the
  ``predict_proba`` signatures, ``:classify``), gRPC (Predict, Classify), and
  through the gateway (the Open Inference Protocol, the typed endpoints, and
  concurrent calls the gateway coalesces into one) are the pickle's: the same
  classes, probabilities within 1e-9.
- ``clipped``: a regressor whose ColumnTransformer applies a user's function no
  converter knows (shipped in the version's ``code/``): the hybrid plan runs that
  step in Python and the rest compiled, and ``servekit models show`` says so.

One model server with batching serves both, the gateway in front of it. The
gateway reaches the model server through a relay that delays every answer by
``RELAY_DELAY_SECONDS``, so a call it has in flight lasts that long and the calls
sent meanwhile queue behind it, as the coalescing test needs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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

from tests.support.cli import ok, servekit
from tests.support.compiledmodels import (
    batching_parameters,
    build_models,
    models_config,
    publish,
)
from tests.support.delayrelay import delaying_relay
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.modelserver import ModelServer, model_server
from tests.support.processes import wait_until

# Publishing runs two parity gates (seconds each alone, minutes on a loaded
# 2-core machine) before the servers start.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

MODELS = ("sizes", "clipped")
TOLERANCE = 1e-9
"""The exact gate's bound for probabilities, which the answers must keep."""
RELAY_DELAY_SECONDS = 1.0
"""How long each gateway-to-model-server call lasts at least. The coalescing test
sends its callers while one call is in flight: a caller's turn (send, the gateway
parse it) must fit well inside it, and on a loaded 2-core machine that has taken
over 0.3 s (as in the gateway's own coalescing tests)."""


@dataclass
class Served:
    registry: Path
    server: ModelServer
    gateway: GatewayProcess
    show: dict[str, str]
    rows: list[dict[str, Any]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("compiled-classifier")
    registry = folder / "models"
    build_models(folder)
    for name in MODELS:
        publish(folder, registry, name)
    show = {
        name: ok(servekit("models", "show", name, "--registry", registry))
        for name in MODELS
    }
    rows = json.loads((folder / "rows.json").read_text())
    with (
        model_server(
            [
                f"--model_config_file={models_config(folder, registry, MODELS)}",
                "--enable_batching",
                f"--batching_parameters_file={batching_parameters(folder)}",
            ],
            log_path=folder / "server.log",
        ) as server,
        delaying_relay(server.grpc_target, RELAY_DELAY_SECONDS) as relayed,
        running_gateway(
            folder / "gateway",
            env={
                "GATEWAY_REGISTRY": str(registry),
                "GATEWAY_DEFAULT_BACKEND": relayed,
                "GATEWAY_AUTH_ENABLED": "false",
            },
        ) as gateway,
    ):
        yield Served(registry, server, gateway, show, rows)


def pickle_of(served: Served, name: str) -> tuple[Any, pd.DataFrame]:
    registry = Registry(served.registry)
    manifest = registry.manifest(name, 1)
    estimator = load_model(registry.version_dir(name, 1), manifest)
    frame = pd.DataFrame(served.rows)[[f.name for f in manifest.features]]
    return estimator, frame


def rest(served: Served, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{served.server.rest_url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def feature_tensors(
    request: Any, row: dict[str, Any], features: list[tuple[str, str]]
) -> None:
    for name, dtype in features:
        array = (
            np.array([row[name].encode()], dtype=object)
            if dtype == "string"
            else np.array([row[name]], dtype=dtype)
        )
        tensors.from_ndarray(array, into=request.inputs[name])


def test_show_names_the_compiled_and_the_hybrid_verdicts(served: Served) -> None:
    assert "passed (exact, max error 0 <= 1e-09" in served.show["sizes"]
    assert "hybrid" not in served.show["sizes"]
    assert "passed (exact" in served.show["clipped"]
    assert "hybrid: prep/clip in Python" in served.show["clipped"]
    verdict = Registry(served.registry).manifest("clipped", 1).compiled
    assert verdict is not None and verdict.python_steps == ["prep/clip"]
    log = served.server.process.log_text()
    for name in MODELS:
        assert f"serving {name} version 1 from its compiled model (exact)" in log


def test_rest_predict_and_predict_proba_equal_the_pickle(served: Served) -> None:
    estimator, frame = pickle_of(served, "sizes")
    labels = rest(served, "/v1/models/sizes:predict", {"instances": served.rows})
    assert labels["predictions"] == estimator.predict(frame).tolist()
    answer = rest(
        served,
        "/v1/models/sizes:predict",
        {"signature_name": "predict_proba", "instances": served.rows},
    )
    np.testing.assert_allclose(
        np.asarray(answer["predictions"]),
        estimator.predict_proba(frame),
        rtol=0,
        atol=TOLERANCE,
    )


def test_rest_classify_answers_every_class_with_the_pickle_probability(
    served: Served,
) -> None:
    estimator, frame = pickle_of(served, "sizes")
    answer = rest(served, "/v1/models/sizes:classify", {"examples": served.rows})
    expected = estimator.predict_proba(frame)
    classes = [str(label) for label in estimator.classes_]
    assert len(answer["results"]) == len(served.rows)
    for row, pairs in enumerate(answer["results"]):
        assert [label for label, _ in pairs] == classes
        # Classify scores are float32 on the wire (TF Serving's Class.score), so
        # the compiled and the pickle's probabilities must round to the same one.
        np.testing.assert_array_equal(
            np.float32([score for _, score in pairs]), np.float32(expected[row])
        )


async def test_grpc_batched_predict_proba_and_classify_equal_the_pickle(
    served: Served,
) -> None:
    estimator, frame = pickle_of(served, "sizes")
    manifest = Registry(served.registry).manifest("sizes", 1)
    features = [(f.name, f.dtype) for f in manifest.features]
    expected = estimator.predict_proba(frame)
    classes = [str(label).encode() for label in estimator.classes_]

    async def predict(stub: PredictionServiceStub, index: int) -> Any:
        request = messages.PredictRequest()
        request.model_spec.name = "sizes"
        request.model_spec.signature_name = "predict_proba"
        feature_tensors(request, served.rows[index], features)
        response = await stub.Predict(request, timeout=30)
        return tensors.to_ndarray(response.outputs["probabilities"])

    async def classify(stub: PredictionServiceStub, index: int) -> Any:
        request = messages.ClassificationRequest()
        request.model_spec.name = "sizes"
        example = request.input.example_list.examples.add()
        for name, dtype in features:
            value = served.rows[index][name]
            feature = example.features.feature[name]
            if dtype == "string":
                feature.bytes_list.value.append(value.encode())
            else:
                feature.float_list.value.append(value)
        response = await stub.Classify(request, timeout=30)
        return response.result.classifications[0].classes

    async with grpc.aio.insecure_channel(served.server.grpc_target) as channel:
        stub = PredictionServiceStub(channel)
        # Concurrent single-row calls: the batcher merges them into one call.
        answers = await asyncio.gather(
            *(predict(stub, i) for i in range(len(served.rows)))
        )
        classified = await classify(stub, 0)
    for index, answer in enumerate(answers):
        np.testing.assert_allclose(answer[0], expected[index], rtol=0, atol=TOLERANCE)
    assert [item.label.encode() for item in classified] == classes
    np.testing.assert_array_equal(
        np.float32([item.score for item in classified]), np.float32(expected[0])
    )


def test_v2_through_the_gateway_equals_the_pickle(served: Served) -> None:
    estimator, frame = pickle_of(served, "sizes")
    manifest = Registry(served.registry).manifest("sizes", 1)
    inputs = [
        {
            "name": feature.name,
            "shape": [len(served.rows)],
            "datatype": "BYTES" if feature.dtype == "string" else "FP64",
            "data": [row[feature.name] for row in served.rows],
        }
        for feature in manifest.features
    ]
    response = httpx.post(
        f"{served.gateway.url}/v2/models/sizes/infer",
        json={"inputs": inputs},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["data"] == estimator.predict(frame).tolist()


def test_the_hybrid_plan_answers_as_the_pickle(served: Served) -> None:
    estimator, frame = pickle_of(served, "clipped")
    answer = rest(served, "/v1/models/clipped:predict", {"instances": served.rows})
    assert answer["predictions"] == estimator.predict(frame).tolist()


def gateway_post(served: Served, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{served.gateway.url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_typed_endpoints_answer_as_the_pickle(served: Served) -> None:
    estimator, frame = pickle_of(served, "sizes")
    labels = gateway_post(served, "/models/sizes/predict", {"instances": served.rows})
    assert (labels["model"], labels["version"]) == ("sizes", 1)
    assert labels["predictions"] == estimator.predict(frame).tolist()
    pinned = gateway_post(
        served, "/models/sizes/versions/1/predict_proba", {"instances": served.rows}
    )
    np.testing.assert_allclose(
        np.asarray(pinned["predictions"]),
        estimator.predict_proba(frame),
        rtol=0,
        atol=TOLERANCE,
    )
    refused = httpx.post(
        f"{served.gateway.url}/models/sizes/predict",
        json={"instances": [{**served.rows[0], "size": "large"}]},
        timeout=60,
    )
    assert refused.status_code == 422, refused.text


def test_coalesced_calls_each_get_the_pickle_answers_of_their_rows(
    served: Served,
) -> None:
    estimator, frame = pickle_of(served, "sizes")
    expected = estimator.predict_proba(frame)
    gateway = served.gateway
    merged_before = gateway.metric("gateway_coalesced_requests_sum")
    parts = [(start, start + 1 + start % 3) for start in range(0, 32, 4)]

    def call(part: tuple[int, int]) -> Any:
        return gateway_post(
            served,
            "/v1/models/sizes:predict",
            {
                "signature_name": "predict_proba",
                "instances": served.rows[part[0] : part[1]],
            },
        )

    with ThreadPoolExecutor(1 + len(parts)) as pool:
        # One call in flight first (it lasts the relay's delay): the others
        # queue behind it in the gateway and go out merged.
        holder = pool.submit(call, (32, 40))
        wait_until(
            lambda: gateway.metric("gateway_in_flight_requests") >= 1,
            timeout=30,
            interval=0.01,
            process=gateway.process,
            what="a request in flight",
        )
        answers = list(pool.map(call, parts))
        held = holder.result()
    assert gateway.metric("gateway_coalesced_requests_sum") - merged_before >= 2
    np.testing.assert_allclose(
        np.asarray(held["predictions"]), expected[32:40], rtol=0, atol=TOLERANCE
    )
    for (start, end), answer in zip(parts, answers, strict=True):
        np.testing.assert_allclose(
            np.asarray(answer["predictions"]),
            expected[start:end],
            rtol=0,
            atol=TOLERANCE,
        )
