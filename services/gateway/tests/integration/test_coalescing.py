"""Concurrent Predict calls merged into one backend call, over the wire.

A model server hosts `slow` (y = 2a + 3b + 1 behind a 1 s step, so requests
overlap) and `slower` (a 3 s step), and the gateway sits in front with its
default coalescing. Every caller
must get exactly its own rows, a caller's bad values must not fail the others, and
a caller's deadline holds while it waits for the call in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
from servekit_protocol import messages
from servekit_protocol.services import PredictionServiceStub
from servekit_protocol.tensors import from_ndarray

from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.models import linear_target, publish_linear_pipeline
from tests.support.modelserver import model_server
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

STEP_SECONDS = 1.0
"""How long one backend call takes. The coalescer holds queued callers for about
one call's duration while the callers it just answered send again, and these
tests send while a call is in flight: both need a caller's turn (read the answer,
send the next request, the gateway parse it) to fit well inside one call, and on
a loaded 2-core machine that turn has taken over 0.3 s."""
PREDICT = "/v1/models/slow:predict"
SLOWER_SECONDS = 3.0
"""The step of `slower`, whose call a caller with a short deadline queues behind:
long enough that being answered before it ends cannot be a loaded machine's luck."""


@pytest.fixture(scope="module")
def coalescing_gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("coalescing") / "models"
    publish_linear_pipeline(root, "slow", offset=1.0, sleep_seconds=STEP_SECONDS)
    publish_linear_pipeline(root, "slower", offset=1.0, sleep_seconds=SLOWER_SECONDS)
    logs = tmp_path_factory.mktemp("coalescing-logs")
    with (
        model_server(
            [f"--model_config_file={root / 'servekit.config'}"],
            log_path=logs / "model-server.log",
        ) as server,
        running_gateway(
            logs,
            env={
                "GATEWAY_REGISTRY": str(root),
                "GATEWAY_DEFAULT_BACKEND": server.grpc_target,
                "PYTHONPATH": "",
            },
        ) as gateway,
    ):
        yield gateway


def _rows(seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [
        {"a": float(a), "b": float(b)} for a, b in rng.normal(size=(1 + seed % 3, 2))
    ]


def _post(
    gateway: GatewayProcess,
    body: dict[str, object] | str,
    path: str = PREDICT,
    **headers: str,
) -> httpx.Response:
    with gateway.client() as client:
        if isinstance(body, str):
            return client.post(
                path,
                content=body,
                headers={"content-type": "application/json", **headers},
            )
        return client.post(path, json=body, headers=headers)


def _wait_for_a_request_in_flight(gateway: GatewayProcess) -> None:
    """Return once the gateway is serving a request: what is sent from then on
    queues behind its backend call (for the STEP_SECONDS that call lasts)."""
    wait_until(
        lambda: gateway.metric("gateway_in_flight_requests") >= 1,
        timeout=30,
        interval=0.01,
        process=gateway.process,
        what="a request in flight",
    )


def _hold_backend(
    gateway: GatewayProcess,
    answered: list[float] | None = None,
    path: str = PREDICT,
) -> threading.Thread:
    """Put one call in flight so the next requests queue behind it; when it is
    answered, append the time (monotonic) to `answered`."""

    def hold() -> None:
        _post(gateway, {"instances": _rows(0)}, path)
        if answered is not None:
            answered.append(time.monotonic())

    thread = threading.Thread(target=hold)
    thread.start()
    _wait_for_a_request_in_flight(gateway)
    return thread


def test_concurrent_callers_each_get_their_own_rows_from_fewer_backend_calls(
    coalescing_gateway: GatewayProcess,
) -> None:
    gateway = coalescing_gateway
    calls_before = gateway.metric(
        "gateway_backend_duration_seconds_count", method="Predict"
    )
    merged_before = gateway.metric("gateway_coalesced_requests_sum")
    seeds = list(range(1, 13))
    with ThreadPoolExecutor(len(seeds)) as pool:
        answers = list(
            pool.map(lambda s: _post(gateway, {"instances": _rows(s)}), seeds)
        )
    for seed, answer in zip(seeds, answers, strict=True):
        assert answer.status_code == 200, answer.text
        expected = [linear_target(r["a"], r["b"], 1.0) for r in _rows(seed)]
        np.testing.assert_allclose(answer.json()["predictions"], expected)
        assert answer.headers["x-model-version"] == "1"
    calls = (
        gateway.metric("gateway_backend_duration_seconds_count", method="Predict")
        - calls_before
    )
    assert calls < len(seeds)
    assert gateway.metric("gateway_coalesced_requests_sum") - merged_before >= 2


def test_bad_values_of_one_caller_do_not_fail_the_others(
    coalescing_gateway: GatewayProcess,
) -> None:
    gateway = coalescing_gateway
    holder = _hold_backend(gateway)
    bad = '{"instances": [{"a": NaN, "b": 1.0}]}'
    with ThreadPoolExecutor(5) as pool:
        good = [
            pool.submit(_post, gateway, {"instances": _rows(s)}) for s in (4, 5, 6, 7)
        ]
        refused = pool.submit(_post, gateway, bad)
        answers = [future.result() for future in good]
        refusal = refused.result()
    holder.join()
    assert refusal.status_code == 400, refusal.text
    assert "NaN" in refusal.json()["error"]
    for seed, answer in zip((4, 5, 6, 7), answers, strict=True):
        assert answer.status_code == 200, answer.text
        expected = [linear_target(r["a"], r["b"], 1.0) for r in _rows(seed)]
        np.testing.assert_allclose(answer.json()["predictions"], expected)


def test_a_waiting_caller_keeps_its_deadline(
    coalescing_gateway: GatewayProcess,
) -> None:
    path = "/v1/models/slower:predict"
    holder_answered: list[float] = []
    holder = _hold_backend(coalescing_gateway, holder_answered, path)
    answer = _post(
        coalescing_gateway,
        {"instances": _rows(8)},
        path,
        **{"x-request-timeout-ms": "50"},
    )
    answered = time.monotonic()
    holder.join()
    assert answer.status_code == 504, answer.text
    # Answered well before the call it queued behind: a caller that waited for
    # that call could only be answered when it ended. Timed against that call
    # rather than the 50 ms: a loaded machine took 0.6 s to deliver such a 504.
    assert answered < holder_answered[0] - SLOWER_SECONDS / 2


def test_answered_callers_are_waited_for_so_calls_stay_full(
    coalescing_gateway: GatewayProcess,
) -> None:
    """Closed-loop callers: the first starts alone, the others queue behind its call.

    When that call returns, the queued callers are held until the answered one
    sends again, so from then on every backend call serves all of them; sending
    the queue at once would make the two groups alternate for ever.
    """
    gateway = coalescing_gateway
    clients, rounds = 6, 8
    calls_before = gateway.metric(
        "gateway_backend_duration_seconds_count", method="Predict"
    )

    def client(index: int) -> None:
        # One connection per caller: an answered caller sends again at once, not
        # after a TCP handshake that a busy machine can stretch past the hold.
        with gateway.client() as http:
            for round_ in range(rounds):
                row = {"a": float(index), "b": float(round_)}
                answer = http.post(PREDICT, json={"instances": [row]})
                assert answer.status_code == 200, answer.text
                np.testing.assert_allclose(
                    answer.json()["predictions"],
                    [linear_target(row["a"], row["b"], 1.0)],
                )

    with ThreadPoolExecutor(clients) as pool:
        first = pool.submit(client, 0)
        _wait_for_a_request_in_flight(gateway)
        others = [pool.submit(client, index) for index in range(1, clients)]
        for done in [first, *others]:
            done.result()
    calls = (
        gateway.metric("gateway_backend_duration_seconds_count", method="Predict")
        - calls_before
    )
    # The lone first call, then one call per round: rounds + 1. A caller whose
    # turn outlasts the hold costs one more call (the next hold joins the groups
    # again); on a machine loaded ten times over that has happened once in 4
    # rounds, so up to 3 such misses pass. Without the hold the two groups
    # alternate for ever: 2 × rounds = 16 calls.
    assert calls <= rounds + 4


def test_grpc_callers_of_a_merged_call_get_tf_servings_typed_fields(
    coalescing_gateway: GatewayProcess,
) -> None:
    """The answers the gateway cuts out of a merged one are encoded as TF Serving
    encodes answers: each caller's values in `double_val`, no `tensor_content`."""
    gateway = coalescing_gateway
    merged_before = gateway.metric("gateway_coalesced_requests_sum")
    seeds = (9, 10, 11, 12)

    def call(seed: int) -> messages.PredictResponse:
        request = messages.PredictRequest()
        request.model_spec.name = "slow"
        rows = _rows(seed)
        for column in ("a", "b"):
            # Packed, as tf.make_tensor_proto sends numpy arrays.
            from_ndarray(
                np.array([row[column] for row in rows]),
                into=request.inputs[column],
                packed=True,
            )
        with grpc.insecure_channel(gateway.grpc_target) as channel:
            answer: messages.PredictResponse = PredictionServiceStub(channel).Predict(
                request, timeout=10
            )
        return answer

    holder = _hold_backend(gateway)
    with ThreadPoolExecutor(len(seeds)) as pool:
        answers = list(pool.map(call, seeds))
    holder.join()
    assert gateway.metric("gateway_coalesced_requests_sum") - merged_before >= 2
    for seed, answer in zip(seeds, answers, strict=True):
        predicted = answer.outputs["predictions"]
        assert not predicted.tensor_content
        expected = [linear_target(r["a"], r["b"], 1.0) for r in _rows(seed)]
        np.testing.assert_allclose(list(predicted.double_val), expected)
        assert [dim.size for dim in predicted.tensor_shape.dim] == [len(expected)]
