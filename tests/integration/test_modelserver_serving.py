"""The model server as a running process: batching, logs, health, the command
line, HandleReloadConfigRequest, and SIGTERM draining in-flight requests.
(The official TF Serving stubs are exercised by the conformance suite; these
tests use servekit_protocol's, which keeps TensorFlow out of this process.)

One server for the module, with ``--enable_batching`` and TF Serving's batching
parameters (batches of up to 8 rows, 100 ms to fill, 2 queued batches, 1 batch
thread): ``linear`` answers at once, ``slow`` spends 0.4 s per batch.
Concurrent requests share batches yet each caller gets its own rows back, and a
full queue answers 503 / UNAVAILABLE at once. The drain test stops the server,
so it comes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servekit_protocol import messages, tensors
from servekit_protocol.services import ModelServiceStub, PredictionServiceStub

from tests.support.models import linear_target, publish_linear_pipeline
from tests.support.modelserver import (
    METRICS_PATH,
    MODEL_SERVER,
    ModelServer,
    model_server,
    write_monitoring_config,
)
from tests.support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_BATCH_SIZE = 8
MAX_ENQUEUED_BATCHES = 2
SLOW_SECONDS = 0.4
SLOW_WARNING = "the slow step warns on every call"


def config_text(registry: Path, names: tuple[str, ...]) -> str:
    return (
        "model_config_list {\n"
        + "".join(
            f'  config {{ name: "{name}" base_path: {json.dumps(str(registry / name))}'
            ' model_platform: "sklearn" }\n'
            for name in names
        )
        + "}\n"
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serving") / "registry"
    publish_linear_pipeline(root, "linear", offset=1.0)
    publish_linear_pipeline(
        root, "slow", offset=2.0, sleep_seconds=SLOW_SECONDS, warning=SLOW_WARNING
    )
    publish_linear_pipeline(root, "extra", offset=4.0)
    return root


@contextlib.contextmanager
def batching_server(
    registry: Path,
    names: tuple[str, ...],
    *,
    max_batch_size: int,
    batch_timeout_micros: int,
    max_enqueued_batches: int,
) -> Iterator[ModelServer]:
    """A model server on ``names`` with batching (one batch thread) and metrics."""
    root = registry.parent
    config = root / "models.config"
    config.write_text(config_text(registry, names))
    batching = root / "batching.config"
    batching.write_text(
        f"max_batch_size {{ value: {max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {batch_timeout_micros} }}\n"
        f"max_enqueued_batches {{ value: {max_enqueued_batches} }}\n"
        "num_batch_threads { value: 1 }\n"
    )
    monitoring = write_monitoring_config(root)
    with model_server(
        [
            f"--model_config_file={config}",
            "--enable_batching",
            f"--batching_parameters_file={batching}",
            f"--monitoring_config_file={monitoring}",
        ],
        log_path=root / "server.log",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def server(registry: Path) -> Iterator[ModelServer]:
    with batching_server(
        registry,
        ("linear", "slow"),
        max_batch_size=MAX_BATCH_SIZE,
        batch_timeout_micros=100_000,
        max_enqueued_batches=MAX_ENQUEUED_BATCHES,
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


def json_lines(text: str) -> list[dict[str, Any]]:
    """The log's JSON lines (TensorFlow's own C++ logging is not JSON)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_health_is_not_serving_until_the_models_are_loaded(
    server: ModelServer,
) -> None:
    # gRPC answers from the start; loading and warming up the models (with
    # "slow"'s sleeping step) takes seconds.
    assert server.health_seen == ["NOT_SERVING", "SERVING"]


def test_logs_are_json_lines_with_request_ids(server: ModelServer) -> None:
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        answer = client.get("/v1/models/missing", headers={"x-request-id": "log-1"})
        assert answer.status_code == 404
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = messages.GetModelStatusRequest()
        request.model_spec.name = "missing"
        with pytest.raises(grpc.RpcError):
            ModelServiceStub(channel).GetModelStatus(
                request, timeout=30, metadata=(("x-request-id", "log-2"),)
            )

    def logged() -> bool:
        ids = {line.get("request_id") for line in json_lines(server.process.log_text())}
        return {"log-1", "log-2"} <= ids

    wait_until(logged, timeout=10, what="the request log lines")
    lines = json_lines(server.process.log_text())
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
    by_id = {line.get("request_id"): line for line in lines}
    assert by_id["log-1"]["protocol"] == "rest"
    assert by_id["log-1"]["model"] == "missing"
    assert by_id["log-2"]["protocol"] == "grpc"


def test_warnings_from_model_code_are_json_lines(server: ModelServer) -> None:
    # "slow"'s step warns on every call: in warmup and in each of these requests.
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        for _ in range(3):
            answer = client.post(
                "/v1/models/slow:predict", json={"instances": [{"a": 1.0, "b": 1.0}]}
            )
            assert answer.status_code == 200, answer.text
    warned = [
        line
        for line in json_lines(server.process.log_text())
        if SLOW_WARNING in line["message"]
    ]
    assert len(warned) >= 3, warned
    assert {line["logger"] for line in warned} == {"py.warnings"}
    assert {line["level"] for line in warned} == {"WARNING"}
    assert SLOW_WARNING not in "\n".join(
        line
        for line in server.process.log_text().splitlines()
        if not line.startswith("{")
    )


def test_handle_reload_config_request_replaces_the_model_list(
    server: ModelServer, registry: Path
) -> None:
    config = messages.ModelServerConfig()
    for name in ("linear", "slow", "extra"):
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = str(registry / name)
        entry.model_platform = "sklearn"
    request = messages.ReloadConfigRequest(config=config)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = ModelServiceStub(channel)
        response = stub.HandleReloadConfigRequest(request, timeout=60)
        assert response.status.error_code == 0
        bad = messages.ReloadConfigRequest()
        with pytest.raises(grpc.RpcError) as caught:
            stub.HandleReloadConfigRequest(bad, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == (
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported"
        )
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        answer = client.post(
            "/v1/models/extra:predict", json={"instances": [{"a": 1.0, "b": 1.0}]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == pytest.approx(
            [linear_target(1.0, 1.0, 4.0)]
        )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        # The other flag errors are covered in-process by the flag unit tests.
        (["--no_such_flag=1"], "unknown argument: --no_such_flag=1"),
        (["--port=8500"], "model_base_path"),
    ],
)
def test_bad_command_lines_exit_with_an_error(
    arguments: list[str], message: str
) -> None:
    finished = subprocess.run(
        [str(MODEL_SERVER), *arguments], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 255
    assert message in finished.stdout + finished.stderr


def test_sigterm_drains_in_flight_requests_and_exits_0(server: ModelServer) -> None:
    # Three requests of half a batch: two share the first batch, the third
    # waits for the only batch thread. When the signal arrives one batch is
    # running and a request still waits in the queue; all must be answered.
    requests = [rows(MAX_BATCH_SIZE // 2, seed=900 + index) for index in range(3)]
    results: list[Any] = []
    # Connections are opened first so that the requests are on the wire, not
    # still connecting, when the signal arrives.
    clients = [httpx.Client(base_url=server.rest_url, timeout=60) for _ in requests]
    for client in clients:
        assert client.get("/v1/models/slow").status_code == 200

    def call(client: httpx.Client, request: list[dict[str, float]]) -> None:
        try:
            answer = client.post("/v1/models/slow:predict", json={"instances": request})
            results.append((answer.status_code, answer.json(), request))
        except httpx.HTTPError as error:
            results.append(repr(error))
        finally:
            client.close()

    callers = [
        threading.Thread(target=call, args=(client, request))
        for client, request in zip(clients, requests, strict=True)
    ]
    for caller in callers:
        caller.start()
    time.sleep(SLOW_SECONDS / 2)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    for caller in callers:
        caller.join(timeout=60)
    assert len(results) == len(requests), results
    for result in results:
        assert not isinstance(result, str), result
        status, body, request = result
        assert status == 200, body
        assert body["predictions"] == pytest.approx(
            [linear_target(row["a"], row["b"], 2.0) for row in request]
        )
    assert time.monotonic() - started < 30
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.rest_url + "/v1/models/slow", timeout=5)
