"""A killed backend: fast 503 while its circuit is open, recovery when it returns.
A slow backend: 504 at the client's deadline."""

from __future__ import annotations

import statistics
import time

import httpx
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.processes import wait_until
from tests.support.restartable import RestartableModelServer

pytestmark = pytest.mark.integration

ROW = {"instances": [{"a": 1.0, "b": 1.0}]}
SLEEPY_ROW = {"instances": [1.0, 2.0]}


def test_slow_backend_gets_504_at_the_client_deadline(
    client: httpx.Client, sleepy_seconds: float
) -> None:
    started = time.monotonic()
    response = client.post(
        "/v1/models/sleepy:predict",
        json=SLEEPY_ROW,
        headers={"x-request-timeout-ms": "500"},
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert "deadline" in response.json()["error"]
    assert 0.4 < elapsed < sleepy_seconds


def test_client_timeout_is_capped_by_the_maximum(client: httpx.Client) -> None:
    assert (
        client.post(
            "/v1/models/sleepy:predict",
            json=SLEEPY_ROW,
            headers={"x-request-timeout-ms": "abc"},
        ).status_code
        == 400
    )
    ok = client.post(
        "/v1/models/sleepy:predict",
        json=SLEEPY_ROW,
        headers={"x-request-timeout-ms": "60000"},
    )
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"predictions": [2.0, 4.0]}


@pytest.mark.slow
def test_killed_backend_fails_fast_then_recovers(
    gateway: GatewayProcess, client: httpx.Client, side_server: RestartableModelServer
) -> None:
    assert client.post("/v1/models/flaky:predict", json=ROW).status_code == 200
    side_server.kill()
    try:
        first = [client.post("/v1/models/flaky:predict", json=ROW) for _ in range(3)]
        assert all(response.status_code == 503 for response in first)
        wait_until(
            lambda: (
                gateway.metric("gateway_circuit_open", backend=side_server.target) == 1
            ),
            timeout=5,
            what="the circuit to open",
        )
        # Each refusal is timed next to a request the gateway answers itself
        # (an unknown model, 404), so both see the same load: on a busy 2-core
        # machine a loopback round trip alone can take tens of ms.
        timings, baseline = [], []
        for _ in range(10):
            started = time.monotonic()
            response = client.post("/v1/models/flaky:predict", json=ROW)
            timings.append(time.monotonic() - started)
            assert response.status_code == 503
            assert "error" in response.json()
            started = time.monotonic()
            unknown = client.post("/v1/models/no-such-model:predict", json=ROW)
            baseline.append(time.monotonic() - started)
            assert unknown.status_code == 404
        # Refused at once: no more than 50 ms above the gateway's own answer
        # (medians, so one descheduled call cannot decide).
        assert statistics.median(timings) < statistics.median(baseline) + 0.05, (
            timings,
            baseline,
        )
        assert (
            gateway.metric(
                "gateway_circuit_rejections_total", backend=side_server.target
            )
            > 0
        )
        # Other models are not affected.
        assert (
            client.post("/v1/models/linear/versions/1:predict", json=ROW).status_code
            == 200
        )
    finally:
        side_server.start()
    wait_until(
        lambda: client.post("/v1/models/flaky:predict", json=ROW).status_code == 200,
        timeout=15,
        what="recovery after the backend returned",
    )
    assert gateway.metric("gateway_circuit_open", backend=side_server.target) == 0
