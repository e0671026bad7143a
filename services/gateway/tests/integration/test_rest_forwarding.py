"""Backends reached on their REST port (`GATEWAY_REST_BACKENDS`).

A v1 `:predict` alone on its target goes to the model server's REST API as it
came; concurrent ones are merged, as JSON, into one REST call and each caller gets
its own rows, or its own error. Every other backend call (gRPC front, v2, typed,
metadata) goes as gRPC-Web on the same port, merged Predicts included; a backend
whose REST port has no gRPC-Web (TF Serving) is called over gRPC instead. Both
paths keep the gateway's resilience: retries and the circuit breaker on an
unreachable backend or one that answers 503 / UNAVAILABLE, the deadline on a
silent one. Which API served is read from the model server's own request
counter, whose `protocol` label says `rest`, `grpc` or `grpc-web`; merging, from
the gateway's `gateway_coalesced_requests` histogram.
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

import grpc
import httpx
import numpy as np
import pytest
from modelregistry import Registry
from modelregistry.servingconfig import config_text
from servekit_protocol import grpcweb, messages
from servekit_protocol.services import PredictionServiceStub
from servekit_protocol.tensors import from_ndarray, to_ndarray

from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.metrics import sample_sum
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import (
    METRICS_PATH,
    ModelServer,
    model_server,
    write_monitoring_config,
)
from tests.support.numerics import assert_same_prediction
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
    publish_linear_pipeline(elsewhere, "plain", offset=4.0)
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
    `/v1/models/flaky` answers 503 once, then 200; a gRPC-Web Predict answers
    UNAVAILABLE the first time for each model name, then y = [42.0].

    gRPC-Web Predicts are counted per model name (``web:<name>``); other
    gRPC-Web methods (the gateway's status checks, made each second for its
    readiness, so as many as the test's duration allows) answer UNIMPLEMENTED
    and are not counted."""

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
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path.startswith("/tensorflow.serving."):
            self._grpc_web(body)
            return
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

    def _grpc_web(self, body: bytes) -> None:
        if not self.path.endswith("/Predict"):
            self.send_response(200)
            self.send_header("content-type", "application/grpc-web+proto")
            self.send_header("grpc-status", "12")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        request = messages.PredictRequest.FromString(grpcweb.request_message(body))
        key = f"web:{request.model_spec.name}"
        with self.server.lock:
            self.server.calls[key] = self.server.calls.get(key, 0) + 1
            first = self.server.calls[key] == 1
        self.send_response(200)
        self.send_header("content-type", "application/grpc-web+proto")
        if first:
            self.send_header("grpc-status", "14")
            self.send_header("grpc-message", "Batch queue full")
            payload = b""
        else:
            response = messages.PredictResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = 1
            from_ndarray(np.array([42.0]), into=response.outputs["y"])
            payload = grpcweb.frame(response.SerializeToString())
            payload += grpcweb.trailer_frame(0, "", ())
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _NotFoundHandler(BaseHTTPRequestHandler):
    """What TF Serving's REST port answers outside `/v1/`: 404."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        body = b'{"error": "Not found"}'
        self.send_response(404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def no_grpc_web_rest() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFoundHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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
    no_grpc_web_rest: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    silent_grpc = f"127.0.0.1:{free_port()}"
    dead_grpc = f"127.0.0.1:{free_port()}"
    dead_rest = f"127.0.0.1:{free_port()}"
    busy_grpc = f"127.0.0.1:{free_port()}"
    # Its own address, so its circuit is not the one `busy` opens.
    webflaky_grpc = f"127.0.0.1:{free_port()}"
    routes = {
        "routes": {
            "silent": {"backend": silent_grpc},
            "dead": {"backend": dead_grpc},
            "busy": {"backend": busy_grpc},
            "flaky": {"backend": busy_grpc},
            "webflaky": {"backend": webflaky_grpc},
            # The model server itself, under another name whose REST port is a
            # server without gRPC-Web (as TF Serving's is).
            "plain": {"backend": f"localhost:{backend.grpc_port}"},
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
        webflaky_grpc: busy_rest.address,
        f"localhost:{backend.grpc_port}": no_grpc_web_rest,
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
    # Timed against a request the gateway answers itself (unknown model), sent
    # just after, so a loaded machine's slow round trips count on both sides.
    started = time.perf_counter()
    assert predict(gateway.url, "/v1/models/no-such-model:predict").status_code == 404
    baseline = time.perf_counter() - started
    assert refused.status_code == 503
    assert "circuit open" in refused.json()["error"]
    assert elapsed < baseline + 0.5


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


def test_a_vanished_canary_label_falls_back_to_stable_over_grpc(
    gateway: GatewayProcess,
) -> None:
    canary_before = gateway.metric(
        "gateway_route_requests_total", model="twin", route="canary"
    )
    request = messages.PredictRequest()
    request.model_spec.name = "twin"
    from_ndarray(np.array([1.0]), into=request.inputs["a"])
    from_ndarray(np.array([2.0]), into=request.inputs["b"])
    answer = grpc_predict(gateway.grpc_target, request)
    # Routed to the canary first (weight 1.0); the backend has no such label, so
    # the stable version answered.
    assert (
        gateway.metric("gateway_route_requests_total", model="twin", route="canary")
        == canary_before + 1
    )
    assert answer.model_spec.version.value == 1
    np.testing.assert_allclose(to_ndarray(answer.outputs["predictions"]), [9.0])


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
        merged, alone = answer.json(), direct.json()
        assert merged.keys() == alone.keys() == {"outputs"}
        assert_same_prediction(merged["outputs"], alone["outputs"])


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


# ---- gRPC-Web: every other backend call -------------------------------------------


def linear_request(
    version: int | None = None, rows: int = 2
) -> messages.PredictRequest:
    request = messages.PredictRequest()
    request.model_spec.name = "linear"
    if version is not None:
        request.model_spec.version.value = version
    from_ndarray(np.arange(rows, dtype=np.float64), into=request.inputs["a"])
    from_ndarray(np.full(rows, 0.5), into=request.inputs["b"])
    return request


def grpc_predict(
    target: str, request: messages.PredictRequest, timeout: float = 30
) -> messages.PredictResponse:
    with grpc.insecure_channel(target) as channel:
        response: messages.PredictResponse = PredictionServiceStub(channel).Predict(
            request, timeout=timeout
        )
        return response


def grpc_failure(
    target: str, request: messages.PredictRequest, timeout: float = 30
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        grpc_predict(target, request, timeout)
    return caught.value


def test_grpc_predicts_reach_the_backend_as_grpc_web(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    web_before = served_count(backend, "grpc-web")
    grpc_before = served_count(backend, "grpc")
    via = grpc_predict(gateway.grpc_target, linear_request(version=1))
    assert served_count(backend, "grpc-web") == web_before + 1
    direct = grpc_predict(backend.grpc_target, linear_request(version=1))
    assert via == direct
    np.testing.assert_allclose(
        to_ndarray(via.outputs["predictions"]), [2 * 0 + 1.5 + 1.0, 2 * 1 + 1.5 + 1.0]
    )
    assert served_count(backend, "grpc") == grpc_before + 1  # the direct call only


def test_v2_infer_goes_as_grpc_web(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    web_before = served_count(backend, "grpc-web")
    answer = httpx.post(
        f"{gateway.url}/v2/models/linear/versions/2/infer",
        json={
            "inputs": [
                {"name": "a", "datatype": "FP64", "shape": [1], "data": [1.0]},
                {"name": "b", "datatype": "FP64", "shape": [1], "data": [2.0]},
            ]
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == pytest.approx([2 + 6 + 5.0])
    assert served_count(backend, "grpc-web") == web_before + 1


def test_backend_errors_over_grpc_web_are_the_backends(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    request = linear_request(version=9)
    via = grpc_failure(gateway.grpc_target, request)
    direct = grpc_failure(backend.grpc_target, request)
    assert via.code() == direct.code() == grpc.StatusCode.NOT_FOUND
    assert via.details() == direct.details()
    wrong = linear_request(version=1)
    wrong.inputs["c"].CopyFrom(wrong.inputs["a"])
    via = grpc_failure(gateway.grpc_target, wrong)
    assert via.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert via.details() == grpc_failure(backend.grpc_target, wrong).details()


def test_concurrent_grpc_predicts_are_merged_into_grpc_web_calls(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    web_before = served_count(backend, "grpc-web")
    grpc_before = served_count(backend, "grpc")
    merged_before = merged_callers(gateway)
    requests = []
    for i in range(48):
        request = linear_request(version=2, rows=1)
        from_ndarray(np.array([float(i)]), into=request.inputs["a"])
        requests.append(request)
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = PredictionServiceStub(channel)
        futures = [stub.Predict.future(r, timeout=30) for r in requests]
        answers = [future.result() for future in futures]
    for i, answer in enumerate(answers):
        np.testing.assert_allclose(
            to_ndarray(answer.outputs["predictions"]), [2 * i + 1.5 + 5.0]
        )
        assert answer.model_spec.version.value == 2
    calls = served_count(backend, "grpc-web") - web_before
    assert 1 <= calls < 48
    assert merged_callers(gateway) - merged_before == 48 - calls
    assert served_count(backend, "grpc") == grpc_before


def test_a_backend_without_grpc_web_is_called_over_grpc(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    web_before = served_count(backend, "grpc-web")
    grpc_before = served_count(backend, "grpc")
    for _ in range(2):
        request = linear_request()
        request.model_spec.name = "plain"
        answer = grpc_predict(gateway.grpc_target, request)
        np.testing.assert_allclose(
            to_ndarray(answer.outputs["predictions"]), [1.5 + 4.0, 2 + 1.5 + 4.0]
        )
    assert served_count(backend, "grpc") == grpc_before + 2
    assert served_count(backend, "grpc-web") == web_before
    found = [
        line
        for line in gateway.process.log_text().splitlines()
        if "has no gRPC-Web" in line
    ]
    assert len(found) == 1, found


def test_grpc_web_unavailable_is_retried(
    gateway: GatewayProcess, busy_rest: BusyBackend
) -> None:
    retries_before = gateway.metric("gateway_backend_retries_total")
    request = linear_request()
    request.model_spec.name = "webflaky"
    answer = grpc_predict(gateway.grpc_target, request)
    np.testing.assert_allclose(to_ndarray(answer.outputs["y"]), [42.0])
    assert busy_rest.calls["web:webflaky"] == 2
    assert gateway.metric("gateway_backend_retries_total") - retries_before == 1


def test_a_silent_grpc_web_backend_is_deadline_exceeded(
    gateway: GatewayProcess,
) -> None:
    request = linear_request()
    request.model_spec.name = "silent"
    started = time.perf_counter()
    failure = grpc_failure(gateway.grpc_target, request, timeout=0.4)
    elapsed = time.perf_counter() - started
    assert failure.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 3.0


def test_an_unreachable_grpc_web_backend_is_unavailable(
    gateway: GatewayProcess,
) -> None:
    request = linear_request()
    request.model_spec.name = "dead"
    failure = grpc_failure(gateway.grpc_target, request)
    assert failure.code() == grpc.StatusCode.UNAVAILABLE
    assert "unavailable" in (failure.details() or "")
