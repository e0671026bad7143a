"""Batch filling with ``batch_timeout_micros`` 0 and closed-loop clients.

Eight clients each send their next request as soon as the previous one is
answered, against a model that spends 0.2 s per batch. The first client starts
alone, so its request runs as a batch of one while the other seven queue up.
With batches formed only from whatever is waiting, the two groups would take
turns for ever (batches of 1 and 7); the server instead waits, up to one batch's
duration, for the callers it just answered, so after the first round every
batch holds all eight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.test_modelserver_serving import (
    batch_size_histogram,
    batching_server,
)
from tests.support.models import linear_target, publish_linear_pipeline
from tests.support.modelserver import ModelServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 8
ROUNDS = 5
SLOW_SECONDS = 0.2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    registry = tmp_path_factory.mktemp("filling") / "registry"
    publish_linear_pipeline(registry, "slow", offset=2.0, sleep_seconds=SLOW_SECONDS)
    with batching_server(
        registry,
        ("slow",),
        max_batch_size=CLIENTS,
        batch_timeout_micros=0,
        max_enqueued_batches=4,
    ) as running:
        yield running


async def _client(client: httpx.AsyncClient, index: int, delay: float) -> None:
    await asyncio.sleep(delay)
    for round_ in range(ROUNDS):
        a, b = float(index), float(round_)
        answer = await client.post(
            "/v1/models/slow:predict", json={"instances": [{"a": a, "b": b}]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == pytest.approx([linear_target(a, b, 2.0)])


async def test_answered_callers_rejoin_one_full_batch(server: ModelServer) -> None:
    # Warm up so the server knows how long a batch takes.
    async with httpx.AsyncClient(base_url=server.rest_url, timeout=30) as client:
        await _client(client, 0, 0.0)
    before_batches, before_rows = batch_size_histogram(server, "slow")

    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(
        base_url=server.rest_url, timeout=30, limits=limits
    ) as client:
        await asyncio.gather(
            *(
                _client(client, index, 0.0 if index == 0 else SLOW_SECONDS / 4)
                for index in range(CLIENTS)
            )
        )

    batches, rows = batch_size_histogram(server, "slow")
    assert rows - before_rows == CLIENTS * ROUNDS
    # A lone first batch, then full ones: ROUNDS + 1 batches. Alternating halves
    # would need about twice as many.
    assert batches - before_batches <= ROUNDS + 2
