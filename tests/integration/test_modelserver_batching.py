"""Batching over the wire: concurrent requests share batches yet each caller gets
its own rows back, and a full queue answers 503 / UNAVAILABLE at once.

One server with ``--enable_batching`` and TF Serving's batching parameters
(batches of up to 8 rows, 100 ms to fill, 2 queued batches, 1 batch thread):
``linear`` answers at once, ``slow`` spends 0.4 s per batch.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servekit_protocol import messages, tensors
from servekit_protocol.services import PredictionServiceStub

from tests.support.models import linear_target, publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

METRICS_PATH = "/monitoring/prometheus/metrics"
MAX_BATCH_SIZE = 8
MAX_ENQUEUED_BATCHES = 2
SLOW_SECONDS = 0.4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    root = tmp_path_factory.mktemp("batching")
    registry = root / "registry"
    publish_linear_pipeline(registry, "linear", offset=1.0)
    publish_linear_pipeline(registry, "slow", offset=2.0, sleep_seconds=SLOW_SECONDS)
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f'  config {{ name: "{name}" base_path: {json.dumps(str(registry / name))}'
            ' model_platform: "sklearn" }\n'
            for name in ("linear", "slow")
        )
        + "}\n"
    )
    batching = root / "batching.config"
    batching.write_text(
        f"max_batch_size {{ value: {MAX_BATCH_SIZE} }}\n"
        "batch_timeout_micros { value: 100000 }\n"
        f"max_enqueued_batches {{ value: {MAX_ENQUEUED_BATCHES} }}\n"
        "num_batch_threads { value: 1 }\n"
    )
    monitoring = root / "monitoring.config"
    monitoring.write_text(
        f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n'
    )
    with model_server(
        [
            f"--model_config_file={config}",
            "--enable_batching",
            f"--batching_parameters_file={batching}",
            f"--monitoring_config_file={monitoring}",
        ],
        log_path=Path(root / "server.log"),
    ) as running:
        yield running


def batch_size_histogram(server: ModelServer, model: str) -> tuple[float, float]:
    """(number of batches, rows in them) of ``model`` from the Prometheus page."""
    page = httpx.get(server.rest_url + METRICS_PATH, timeout=30).text
    count = total = 0.0
    for family in text_string_to_metric_families(page):
        if family.name != "modelserver_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
    return count, total


def rows(count: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [
        {"a": float(a), "b": float(b)} for a, b in rng.normal(size=(count, 2)).round(3)
    ]


async def test_concurrent_rest_requests_are_merged_and_answered_row_by_row(
    server: ModelServer,
) -> None:
    before_batches, before_rows = batch_size_histogram(server, "linear")
    requests = [rows(1 + index % 2, seed=index) for index in range(MAX_BATCH_SIZE)]
    async with httpx.AsyncClient(base_url=server.rest_url, timeout=30) as client:
        answers = await asyncio.gather(
            *(
                client.post("/v1/models/linear:predict", json={"instances": request})
                for request in requests
            )
        )
    for request, answer in zip(requests, answers, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == pytest.approx(
            [linear_target(row["a"], row["b"], 1.0) for row in request]
        )
    batches, batched_rows = batch_size_histogram(server, "linear")
    sent_rows = sum(len(request) for request in requests)
    assert batched_rows - before_rows >= sent_rows
    # Fewer batches than requests: some requests shared a batch.
    assert 0 < batches - before_batches < len(requests)


async def test_concurrent_grpc_requests_get_their_own_rows(server: ModelServer) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = PredictionServiceStub(channel)

        async def call(seed: int) -> tuple[list[dict[str, float]], list[float]]:
            request_rows = rows(2, seed)
            request = messages.PredictRequest()
            request.model_spec.name = "linear"
            for column in ("a", "b"):
                tensors.from_ndarray(
                    np.array([row[column] for row in request_rows]),
                    into=request.inputs[column],
                )
            response = await stub.Predict(request, timeout=30)
            return request_rows, tensors.to_ndarray(
                response.outputs["predictions"]
            ).tolist()

        results = await asyncio.gather(*(call(seed) for seed in range(100, 106)))
    for request_rows, predictions in results:
        assert predictions == pytest.approx(
            [linear_target(row["a"], row["b"], 1.0) for row in request_rows]
        )


async def test_a_full_queue_answers_503_at_once(server: ModelServer) -> None:
    # One batch runs while MAX_ENQUEUED_BATCHES wait: everything beyond must be
    # refused immediately rather than wait.
    capacity = MAX_BATCH_SIZE * (MAX_ENQUEUED_BATCHES + 1)
    limits = httpx.Limits(max_connections=3 * capacity)
    async with httpx.AsyncClient(
        base_url=server.rest_url, timeout=60, limits=limits
    ) as client:

        async def timed_call(seed: int) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = await client.post(
                "/v1/models/slow:predict", json={"instances": rows(1, seed)}
            )
            return response, time.monotonic() - started

        results = await asyncio.gather(
            *(timed_call(seed) for seed in range(3 * capacity))
        )
    codes = [response.status_code for response, _ in results]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= MAX_BATCH_SIZE
    refused = [seconds for response, seconds in results if response.status_code == 503]
    served = [seconds for response, seconds in results if response.status_code == 200]
    assert refused, codes
    for response, _ in results:
        if response.status_code == 503:
            assert response.json()["error"]
    # Refused at once rather than after waiting for batches: refusals come back
    # sooner than the answers that waited for a batch (medians compare the two
    # whatever the speed of a busy test machine).
    assert statistics.median(refused) < statistics.median(served)


async def test_a_full_queue_answers_unavailable_over_grpc(server: ModelServer) -> None:
    capacity = MAX_BATCH_SIZE * (MAX_ENQUEUED_BATCHES + 1)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = PredictionServiceStub(channel)

        async def call(seed: int) -> grpc.StatusCode:
            request = messages.PredictRequest()
            request.model_spec.name = "slow"
            row = rows(1, seed)[0]
            for column in ("a", "b"):
                tensors.from_ndarray(
                    np.array([row[column]]), into=request.inputs[column]
                )
            try:
                await stub.Predict(request, timeout=60)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        codes = await asyncio.gather(*(call(seed) for seed in range(3 * capacity)))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert grpc.StatusCode.UNAVAILABLE in codes
    assert codes.count(grpc.StatusCode.OK) >= MAX_BATCH_SIZE
