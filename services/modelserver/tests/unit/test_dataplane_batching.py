"""The DataPlane's batching on real scikit-learn pipelines: merged requests, the
lone request, a full queue, and shedding what would miss its deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from modelserver.dataplane import DataPlane
from modelserver.errors import (
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
)
from modelserver.observability.metrics import Metrics
from modelserver.types import (
    ClassifyRequest,
    ClassifyResponse,
    ModelSpec,
    PredictRequest,
)

from tests.support.models import linear_inputs, publish_linear_pipeline

StartDataPlane = Callable[..., Awaitable[DataPlane]]


async def test_batching_merges_concurrent_requests(
    start_dataplane: StartDataPlane,
    two_models: Path,
    tmp_path: Path,
    metrics: Metrics,
) -> None:
    batching = tmp_path / "batching.txt"
    batching.write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 50000 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    dataplane = await start_dataplane(
        two_models, enable_batching=True, batching_parameters_file=str(batching)
    )
    rows = [(float(index), 1.0) for index in range(12)]
    responses = await asyncio.gather(
        *(
            dataplane.predict(PredictRequest(ModelSpec("linear"), linear_inputs(row)))
            for row in rows
        )
    )
    for (a, b), response in zip(rows, responses, strict=True):
        assert response.outputs["predictions"].tolist() == pytest.approx(
            [2 * a + 3 * b + 1]
        )
    labels = {"model": "linear", "version": "2", "signature": "serving_default"}
    batches = metrics.registry.get_sample_value("modelserver_batch_size_count", labels)
    merged_rows = metrics.registry.get_sample_value(
        "modelserver_batch_size_sum", labels
    )
    assert merged_rows == 12
    assert batches is not None
    assert batches < 12
    assert (
        metrics.registry.get_sample_value("modelserver_batch_queue_depth", labels) == 0
    )
    classified = await asyncio.gather(
        *(
            dataplane.classify(
                ClassifyRequest(
                    ModelSpec("classifier"), [{"size": [s], "color": [b"red"]}]
                )
            )
            for s in (3.0, -3.0)
        )
    )
    assert all(isinstance(answer, ClassifyResponse) for answer in classified)
    assert (
        classified[0].results.pairs()[0][0][1] > classified[1].results.pairs()[0][0][1]
    )


async def test_a_lone_request_does_not_wait_for_the_batch_timeout(
    start_dataplane: StartDataPlane, two_models: Path, tmp_path: Path
) -> None:
    batching = tmp_path / "batching.txt"
    batching.write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 5000000 }\n"
    )
    dataplane = await start_dataplane(
        two_models, enable_batching=True, batching_parameters_file=str(batching)
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(3):
        await dataplane.predict(
            PredictRequest(ModelSpec("linear"), linear_inputs((1.0, 1.0)))
        )
    assert loop.time() - started < 4.0


async def test_full_batch_queue_answers_overloaded_at_once(
    start_dataplane: StartDataPlane, tmp_path: Path, write_config: Any
) -> None:
    publish_linear_pipeline(tmp_path, "slow", sleep_seconds=0.3)
    config = write_config(
        tmp_path / "slow.config",
        'name: "slow" base_path: "slow" model_platform: "sklearn"',
    )
    batching = tmp_path / "batching.txt"
    batching.write_text(
        "max_batch_size { value: 2 }\nmax_enqueued_batches { value: 1 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    dataplane = await start_dataplane(
        config,
        enable_model_warmup=False,
        enable_batching=True,
        batching_parameters_file=str(batching),
    )

    async def one() -> str:
        try:
            await dataplane.predict(
                PredictRequest(ModelSpec("slow"), linear_inputs((1.0, 1.0)))
            )
        except Overloaded:
            return "overloaded"
        return "ok"

    outcomes = await asyncio.gather(*(one() for _ in range(8)))
    assert outcomes.count("ok") >= 2
    assert outcomes.count("overloaded") >= 1
    with pytest.raises(InvalidInput, match="larger than maximum input batch size 2"):
        await dataplane.predict(
            PredictRequest(
                ModelSpec("slow"), linear_inputs((1.0, 1.0), (1.0, 1.0), (1.0, 1.0))
            )
        )


async def test_requests_that_would_miss_their_deadline_are_shed(
    start_dataplane: StartDataPlane, tmp_path: Path, write_config: Any
) -> None:
    # A batch sleeps batch_sleep, so the queue's learned batch time is at least
    # that, and a call whose deadline is deadline_batches of them away is
    # accepted only while at most that many batches are ahead: of eight calls
    # on one thread, at most four are accepted whatever the machine's load.
    # The first accepted call starts at once; its deadline leaves three
    # batches' time (1.5 s) above its own for a loaded runner's thread hops.
    batch_sleep = 0.5
    deadline_batches = 4
    publish_linear_pipeline(tmp_path, "slow", sleep_seconds=batch_sleep)
    config = write_config(
        tmp_path / "slow.config",
        'name: "slow" base_path: "slow" model_platform: "sklearn"',
    )
    batching = tmp_path / "batching.txt"
    batching.write_text(
        "max_batch_size { value: 1 }\nmax_enqueued_batches { value: 100 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    dataplane = await start_dataplane(
        config,
        enable_model_warmup=False,
        enable_batching=True,
        batching_parameters_file=str(batching),
    )
    request = PredictRequest(ModelSpec("slow"), linear_inputs((1.0, 1.0)))
    await dataplane.predict(request)  # the queue learns how long a batch takes
    # Outcomes in the order the calls were answered: a shed call is answered
    # at once, before any batch ends (it never waits on the queue), which is
    # an order no load can change, unlike a bound on its wall time.
    answered: list[str] = []

    async def one() -> None:
        try:
            await dataplane.predict(request, timeout=batch_sleep * deadline_batches)
        except Overloaded as exc:
            assert "deadline" in str(exc)
            answered.append("shed")
        except DeadlineExceeded:
            answered.append("late")
        else:
            answered.append("ok")

    await asyncio.gather(*(one() for _ in range(8)))
    shed = answered.count("shed")
    assert shed >= 8 - deadline_batches, answered
    assert answered[:shed] == ["shed"] * shed, answered
    # The first accepted call ran at once and is served within its deadline.
    assert answered[shed : shed + 1] == ["ok"], answered
