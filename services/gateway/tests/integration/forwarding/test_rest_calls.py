"""A lone v1 `:predict` goes to the backend's REST API as it came, and the
gateway's resilience (retries, circuit breaker, deadline) holds on that path."""

from __future__ import annotations

import gzip
import time

import pytest

from tests.support.forwarding import BODY, predict, served_count
from tests.support.gateway import GatewayProcess
from tests.support.modelserver import ModelServer
from tests.support.processes import wait_until
from tests.support.rest_backends import BusyBackend


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
