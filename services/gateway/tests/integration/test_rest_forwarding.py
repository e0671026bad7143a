"""v1 `:predict` forwarded to the backends' REST API (`GATEWAY_REST_BACKENDS`).

A request alone on its target goes to the model server's REST port as it came;
concurrent ones are merged, as JSON, into one REST call and each caller gets its
own rows, or its own error. The REST path keeps the gateway's resilience: retries
and the circuit breaker on an unreachable backend (503) or one that answers 503,
the deadline on a silent one (504). Which API served is read from the model server's own request counter,
whose `protocol` label says `rest` or `grpc`; merging, from the gateway's
`gateway_coalesced_requests` histogram.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from modelregistry import Registry
from modelregistry.servingconfig import config_text

from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.metrics import sample_sum
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import (
    METRICS_PATH,
    ModelServer,
    model_server,
    write_monitoring_config,
)
from tests.support.processes import free_port, wait_until

ROW = {"a": 1.0, "b": 2.0}
BODY = json.dumps({"instances": [ROW]}).encode()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("forwarding") / "models"
    publish_linear_pipeline(root, "linear", offset=1.0)
    publish_linear_pipeline(root, "linear", offset=5.0)
    Registry(root).set_label("linear", "stable", 1)
    return root


@pytest.fixture(scope="module")
def backend_config(registry: Path) -> Path:
    """The registry's models, and `twin` from a registry the gateway does not read:
    the gateway cannot know twin's labels, so its canary label is tried on the
    backend, which has none."""
    elsewhere = registry.parent / "elsewhere"
    publish_linear_pipeline(elsewhere, "twin", offset=1.0)
    Registry(elsewhere).set_label("twin", "stable", 1)
    entries = [
        replace(entry, base_path=str(root / entry.base_path))
        for root in (registry, elsewhere)
        for entry in Registry(root).serving_entries(None)
    ]
    path = registry.parent / "backend.config"
    path.write_text(config_text(entries))
    return path


@pytest.fixture(scope="module")
def backend(
    backend_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelServer]:
    logs = tmp_path_factory.mktemp("forwarding-logs")
    monitoring = write_monitoring_config(logs)
    with model_server(
        [
            f"--model_config_file={backend_config}",
            f"--monitoring_config_file={monitoring}",
        ],
        log_path=logs / "model-server.log",
        ready_timeout=180,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def silent_rest() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


class BusyBackend(ThreadingHTTPServer):
    """A REST backend whose queue is full: `/v1/models/busy` always answers 503,
    `/v1/models/flaky` answers 503 once, then 200."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _BusyHandler)
        self.calls: dict[str, int] = {"busy": 0, "flaky": 0}
        self.lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _BusyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BusyBackend

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        model = "busy" if self.path.startswith("/v1/models/busy") else "flaky"
        with self.server.lock:
            self.server.calls[model] += 1
            first = self.server.calls[model] == 1
        if model == "busy" or first:
            status, body = 503, b'{"error": "Batch queue full: 1 batches enqueued"}'
        else:
            status, body = 200, b'{"predictions": [42.0]}'
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def busy_rest() -> Iterator[BusyBackend]:
    server = BusyBackend()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(
    registry: Path,
    backend: ModelServer,
    silent_rest: str,
    busy_rest: BusyBackend,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    silent_grpc = f"127.0.0.1:{free_port()}"
    dead_grpc = f"127.0.0.1:{free_port()}"
    dead_rest = f"127.0.0.1:{free_port()}"
    busy_grpc = f"127.0.0.1:{free_port()}"
    routes = {
        "routes": {
            "silent": {"backend": silent_grpc},
            "dead": {"backend": dead_grpc},
            "busy": {"backend": busy_grpc},
            "flaky": {"backend": busy_grpc},
            "twin": {
                "stable": "stable",
                "canary": {"label": "canary", "weight": 1.0},
            },
        }
    }
    (registry / "routes.yaml").write_text(json.dumps(routes))
    rest_backends = {
        backend.grpc_target: f"127.0.0.1:{backend.rest_port}",
        silent_grpc: silent_rest,
        dead_grpc: dead_rest,
        busy_grpc: busy_rest.address,
    }
    env = {
        "GATEWAY_REGISTRY": str(registry),
        "GATEWAY_DEFAULT_BACKEND": backend.grpc_target,
        "GATEWAY_REST_BACKENDS": json.dumps(rest_backends),
        "GATEWAY_BREAKER_FAILURES": "3",
        "GATEWAY_BREAKER_RESET_SECONDS": "30",
    }
    with running_gateway(tmp_path_factory.mktemp("forwarding-gateway"), env=env) as gw:
        yield gw


def served_count(server: ModelServer, protocol: str) -> float:
    """Predict requests the model server answered over `protocol` so far."""
    text = httpx.get(f"{server.rest_url}{METRICS_PATH}", timeout=10).text
    return sample_sum(
        text, "modelserver_request_count_total", api="predict", protocol=protocol
    )


def predict(
    base: str, path: str, body: bytes = BODY, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{base}{path}",
        content=body,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=30,
    )


def test_a_lone_request_goes_over_rest_and_answers_as_the_backend(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    rest_before = served_count(backend, "rest")
    grpc_before = served_count(backend, "grpc")
    via = predict(gateway.url, "/v1/models/linear:predict")
    direct = predict(backend.rest_url, "/v1/models/linear:predict")
    assert via.status_code == direct.status_code == 200
    assert via.content == direct.content
    assert via.json()["predictions"] == pytest.approx([2 * 1.0 + 3 * 2.0 + 5.0])
    assert via.headers["x-model-version"] == "2"
    assert served_count(backend, "rest") == rest_before + 2
    assert served_count(backend, "grpc") == grpc_before


def test_labels_and_versions_reach_the_backend_in_the_path(
    gateway: GatewayProcess,
) -> None:
    stable = predict(gateway.url, "/v1/models/linear/labels/stable:predict")
    first = predict(gateway.url, "/v1/models/linear/versions/1:predict")
    assert stable.status_code == first.status_code == 200
    assert stable.json() == first.json()
    assert first.json()["predictions"] == pytest.approx([2 + 6 + 1.0])
    assert stable.headers["x-model-version"] == "1"
    assert first.headers["x-model-version"] == "1"


def test_backend_errors_come_back_as_the_backend_gave_them(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    for path, body, status in (
        ("/v1/models/linear/versions/9:predict", BODY, 404),
        ("/v1/models/nosuchmodel:predict", BODY, 404),
        ("/v1/models/linear:predict", b"{not json", 400),
        ("/v1/models/linear:predict", b'{"instances": [{"a": "x"}]}', 400),
    ):
        via = predict(gateway.url, path, body)
        direct = predict(backend.rest_url, path, body)
        assert via.status_code == direct.status_code == status, (path, via.text)
        assert via.json() == direct.json()
        assert "error" in via.json()


def test_the_request_id_travels_to_the_backend(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    request_id = "forwarded-request-id-0001"
    answer = predict(
        gateway.url,
        "/v1/models/linear/versions/9:predict",
        headers={"x-request-id": request_id},
    )
    assert answer.status_code == 404
    assert answer.headers["x-request-id"] == request_id
    wait_until(
        lambda: request_id in backend.process.log_text(),
        timeout=5,
        what="the request id in the model server's log",
    )


def test_an_unreachable_rest_backend_is_503_then_fast_once_the_circuit_opens(
    gateway: GatewayProcess,
) -> None:
    answers = [predict(gateway.url, "/v1/models/dead:predict") for _ in range(2)]
    assert [a.status_code for a in answers] == [503, 503]
    assert "unavailable" in answers[0].json()["error"]
    started = time.perf_counter()
    refused = predict(gateway.url, "/v1/models/dead:predict")
    elapsed = time.perf_counter() - started
    assert refused.status_code == 503
    assert "circuit open" in refused.json()["error"]
    assert elapsed < 0.5


def test_a_silent_rest_backend_is_504_at_the_deadline(gateway: GatewayProcess) -> None:
    started = time.perf_counter()
    answer = predict(
        gateway.url,
        "/v1/models/silent:predict",
        headers={"x-request-timeout-ms": "400"},
    )
    elapsed = time.perf_counter() - started
    assert answer.status_code == 504
    assert "deadline" in answer.json()["error"]
    assert 0.35 < elapsed < 3.0


def test_a_backend_503_is_retried_like_unavailable(
    gateway: GatewayProcess, busy_rest: BusyBackend
) -> None:
    retries_before = gateway.metric("gateway_backend_retries_total")
    flaky = predict(gateway.url, "/v1/models/flaky:predict")
    assert flaky.status_code == 200, flaky.text
    assert flaky.json() == {"predictions": [42.0]}
    assert busy_rest.calls["flaky"] == 2
    busy = predict(gateway.url, "/v1/models/busy:predict")
    assert busy.status_code == 503
    assert "Batch queue full" in busy.json()["error"]
    # The first try and GATEWAY_RETRIES (2) retries.
    assert busy_rest.calls["busy"] == 3
    assert gateway.metric("gateway_backend_retries_total") - retries_before == 3


def test_a_vanished_canary_label_falls_back_to_stable_over_rest(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    request_id = "vanished-canary-0001"
    answer = predict(
        gateway.url, "/v1/models/twin:predict", headers={"x-request-id": request_id}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-route"] == "stable"
    assert answer.headers["x-model-version"] == "1"
    assert answer.json()["predictions"] == pytest.approx([2 + 6 + 1.0])

    def canary_refused() -> bool:
        return any(
            request_id in line and "labels/canary:predict answered 400" in line
            for line in backend.process.log_text().splitlines()
        )

    # The canary try reached the backend and failed there, then stable answered.
    wait_until(canary_refused, timeout=5, what="the canary's 400 in the backend log")


def test_a_gzip_body_is_inflated_and_forwarded(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    rest_before = served_count(backend, "rest")
    zipped = predict(
        gateway.url,
        "/v1/models/linear:predict",
        gzip.compress(BODY),
        headers={"content-encoding": "gzip"},
    )
    plain = predict(gateway.url, "/v1/models/linear:predict")
    assert zipped.status_code == plain.status_code == 200
    assert zipped.content == plain.content
    assert served_count(backend, "rest") == rest_before + 2
    broken = predict(
        gateway.url,
        "/v1/models/linear:predict",
        gzip.compress(BODY)[:-6],
        headers={"content-encoding": "gzip"},
    )
    assert broken.status_code == 400
    assert "uncompress" in broken.json()["error"]


def burst(base: str, path: str, bodies: list[bytes]) -> list[httpx.Response]:
    """The bodies sent 16 at a time, answers in order."""
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda body: predict(base, path, body), bodies))


def merged_callers(gateway: GatewayProcess) -> float:
    """Callers served by merged calls beyond one per call, so far."""
    served = gateway.metric("gateway_coalesced_requests_sum")
    return served - gateway.metric("gateway_coalesced_requests_count")


def test_concurrent_requests_are_merged_into_rest_calls_and_answer_each_caller(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    grpc_before = served_count(backend, "grpc")
    rest_before = served_count(backend, "rest")
    merged_before = merged_callers(gateway)
    rows = [{"a": float(i), "b": 1.0} for i in range(64)]
    bodies = [json.dumps({"instances": [row]}).encode() for row in rows]
    answers = burst(gateway.url, "/v1/models/linear/versions/1:predict", bodies)
    for row, answer in zip(rows, answers, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model-version"] == "1"
        assert answer.json() == {
            "predictions": pytest.approx([2 * row["a"] + 3 * row["b"] + 1.0])
        }
    assert served_count(backend, "grpc") == grpc_before
    calls = served_count(backend, "rest") - rest_before
    assert 1 <= calls < 64
    assert merged_callers(gateway) - merged_before == 64 - calls


def test_merged_columns_answer_each_caller_as_a_direct_call(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    bodies = [
        json.dumps({"inputs": {"a": [float(i), 1.0], "b": [2.0, float(-i)]}}).encode()
        for i in range(48)
    ]
    path = "/v1/models/linear/versions/2:predict"
    for body, answer in zip(bodies, burst(gateway.url, path, bodies), strict=True):
        direct = predict(backend.rest_url, path, body)
        assert answer.status_code == direct.status_code == 200
        assert answer.json() == direct.json()


def test_a_bad_body_in_a_merged_call_gets_its_own_error(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    good = [json.dumps({"instances": [{"a": float(i), "b": 0.0}]}) for i in range(40)]
    bad = json.dumps({"instances": [{"a": "text", "b": 0.0}]})
    bodies = [(bad if i % 8 == 3 else good[i]).encode() for i in range(40)]
    path = "/v1/models/linear/versions/1:predict"
    refused = predict(backend.rest_url, path, bad.encode())
    assert refused.status_code == 400
    for i, answer in enumerate(burst(gateway.url, path, bodies)):
        if i % 8 == 3:
            assert answer.status_code == 400
            assert answer.json() == refused.json()
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"] == pytest.approx([2.0 * i + 1.0])
