"""The HTTP app in process (httpx ASGITransport) over a real gRPC backend double:
load shedding, readiness, metrics, the fast-path routes and method handling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from gateway.main import create_app
from gateway.settings import Settings

from tests.support.processes import free_port
from tests.support.slow_backend import slow_backend

DELAY_SECONDS = 0.5


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    with slow_backend(DELAY_SECONDS) as address:
        yield address


@contextlib.asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app built by `create_app`, called in process; its backend channels are
    closed at the end."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway"
        ) as client:
            yield client
    finally:
        await app.gateway.close()


@pytest.fixture
async def client(backend: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(default_backend=backend, registry=None, max_in_flight=2)
    async with app_client(settings) as http:
        yield http


async def test_requests_above_max_in_flight_are_shed_at_once(
    client: httpx.AsyncClient,
) -> None:
    async def predict() -> httpx.Response:
        return await client.post("/v1/models/m:predict", json={"instances": [1.0]})

    responses = await asyncio.gather(*(predict() for _ in range(4)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 200, 503, 503]
    shed = [response for response in responses if response.status_code == 503]
    assert all("in flight" in response.json()["error"] for response in shed)
    metrics = (await client.get("/metrics")).text
    assert 'gateway_rejections_total{reason="overloaded"} 2.0' in metrics


async def test_metrics_label_latency_by_model_version_route_protocol_code(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/models/m:predict", json={"instances": [1.0, 2.0]})
    assert response.json() == {"predictions": [2.0, 4.0]}
    assert response.headers["x-model-version"] == "1"
    metrics = (await client.get("/metrics")).text
    assert (
        'gateway_request_duration_seconds_count{code="200",model="m",'
        'protocol="rest_v1",route="default",version="1"} 1.0'
    ) in metrics


async def test_health_and_wrong_methods(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    # TF Serving answers every path under /v1/ itself: a wrong method is 400.
    wrong_method = await client.put("/v1/models/m:predict")
    assert wrong_method.status_code == 400
    assert wrong_method.json() == {
        "error": "Malformed request: PUT /v1/models/m:predict"
    }
    assert (await client.get("/nowhere")).status_code == 404
    assert (await client.post("/healthz")).status_code == 405


async def test_readyz_is_503_when_the_backend_is_unreachable() -> None:
    settings = Settings(default_backend=f"127.0.0.1:{free_port()}", registry=None)
    async with app_client(settings) as client:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert "unreachable" in str(response.json()["checks"])
        assert (await client.get("/healthz")).status_code == 200


async def test_concurrent_requests_share_one_cached_metadata_fetch(
    backend: str,
) -> None:
    settings = Settings(default_backend=backend, registry=None, max_in_flight=20)
    async with app_client(settings) as client:

        async def predict(version: int | None) -> httpx.Response:
            path = "/v1/models/m" + (f"/versions/{version}" if version else "")
            return await client.post(f"{path}:predict", json={"instances": [1.0]})

        first = await asyncio.gather(*(predict(1) for _ in range(6)))
        again = await asyncio.gather(*(predict(1) for _ in range(3)))
        assert {response.status_code for response in [*first, *again]} == {200}
        metrics = (await client.get("/metrics")).text
        fetches = [
            line
            for line in metrics.splitlines()
            if line.startswith("gateway_backend_duration_seconds_count")
            and 'method="GetModelMetadata"' in line
        ]
        assert len(fetches) == 1 and fetches[0].endswith(" 1.0"), fetches
