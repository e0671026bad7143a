"""Concurrent small gRPC Predicts whose one value fills a large tensor, merged by
the gateway, are not written out on its event loop.

TensorFlow's fill rule lets a Predict of a few bytes declare a tensor up to the
request limit, one value standing for every element. The gateway forwards a
lone Predict as it came, but merges concurrent ones of the same model and layout
(``gateway.clients.coalescer``), and merging such tensors writes them out:
decoded, joined and encoded again. From ``DECODE_IN_THREAD_BYTES`` (1 MiB) of
declared tensor bytes that happens in a worker thread, and so does writing the
merged message. Page faults of the gateway's main thread (its event loop's) count
the new memory that thread touches, whatever the machine's load. A merged call is
held to the request limit each caller was checked against (a byte budget beside
the row limit), so callers of a few bytes cannot together make the gateway write
more than one request may hold, and the callers that fit still merge.

OIP ModelInfer (gRPC and REST) has no fill rule: a tensor carries every element
it declares, and a short one is refused (``gateway.codecs.v2``); TF Serving's REST
JSON writes out every value too. So a merged gRPC Predict is the one path where a
small message makes the gateway write a large tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from modelregistry.layout import SERVEKIT_CONFIG_FILE
from servekit_protocol import messages

from tests.security.figures import record
from tests.security.merging_stack import (
    MERGED_CALLERS,
    MESSAGE_LIMIT,
    concurrent_calls,
    gateway_flags,
)
from tests.security.recording import PREDICT
from tests.security.stack import assert_no_traceback, loop_page_faults
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.metrics import sample_sum
from tests.support.models import publish_regression
from tests.support.modelserver import (
    METRICS_PATH,
    ModelServer,
    model_server,
    write_monitoring_config,
)

pytestmark = pytest.mark.integration

FEATURES = 262_144
"""Inputs of the ``broad`` model: a row is 2 MiB of float64, so each merged
caller's one-row request (a few bytes) declares 2 MiB, over the threshold alone,
and the merge of ``MERGED_CALLERS`` of them 16 MiB."""
CAPPED_BYTES = 33 * 1024 * 1024
"""The capped gateway's request limit: room for the first call (16 rows, 32 MiB)
and for two callers of ``CAPPED_ROWS`` rows (16 MiB each) merged, not three."""
CAPPED_ROWS = 8
"""Rows of a capped gateway's caller: four of them fill the default row limit
(32), so the bytes, not the rows, bound its merges."""
ROUNDS = 3
"""Most rounds of concurrent calls: the callers merge in each one that finds the
first call (16 rows, 32 MiB filled in the model server) in flight; one merge is
asserted."""
FAULTS_LIMIT = 64
"""Most page faults the gateway's loop thread may take over the rounds. Merged
on the loop, one round writes the callers' arrays, their join, the encoded
tensor and the message: 64 MiB, at least 32 faults with 2 MiB huge pages and
16,384 with 4 KiB ones; the rounds' other work (a few small answers) touches
next to nothing new."""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with ``broad``."""
    from sklearn.linear_model import LinearRegression

    registry = tmp_path_factory.mktemp("gateway-filled-merge") / "models"
    rng = np.random.default_rng(5)
    features = rng.normal(size=(8, FEATURES))
    model = LinearRegression().fit(features, features[:, :4].sum(axis=1))
    publish_regression(registry, "broad", model, FEATURES)
    return registry


@pytest.fixture(scope="module")
def server(registry: Path) -> Iterator[ModelServer]:
    with model_server(
        (
            f"--model_config_file={registry / SERVEKIT_CONFIG_FILE}",
            f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
            f"--monitoring_config_file={write_monitoring_config(registry.parent)}",
        ),
        log_path=registry.parent / "model-server.log",
    ) as server:
        yield server
        assert_no_traceback(server.process)


def _gateway(
    server: ModelServer, registry: Path, folder: Path, *flags: str
) -> contextlib.AbstractContextManager[GatewayProcess]:
    """A gateway merging Predicts (its default) in front of ``server``, called
    as gRPC-Web on the server's REST port."""
    return running_gateway(
        folder,
        env={"GATEWAY_REGISTRY": str(registry)},
        flags=[*gateway_flags(server), f"--max-body-bytes={MESSAGE_LIMIT}", *flags],
    )


@pytest.fixture(scope="module")
def gateway(
    server: ModelServer, registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with _gateway(server, registry, tmp_path_factory.mktemp("gateway")) as gateway:
        yield gateway
        assert_no_traceback(gateway.process)


@pytest.fixture(scope="module")
def capped_gateway(
    server: ModelServer, registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway whose requests may hold ``CAPPED_BYTES`` of tensors: room for
    one caller's filled row, not for two merged."""
    folder = tmp_path_factory.mktemp("capped-gateway")
    flag = f"--max-request-tensor-bytes={CAPPED_BYTES}"
    with _gateway(server, registry, folder, flag) as gateway:
        yield gateway
        assert_no_traceback(gateway.process)


def filled_request(caller: int, rows: int) -> bytes:
    """A Predict of ``rows`` rows of ``broad`` whose one value, the caller's
    number, stands for every element."""
    request = messages.PredictRequest()
    request.model_spec.name = "broad"
    tensor = request.inputs["x"]
    tensor.dtype = messages.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=FEATURES)
    tensor.double_val.append(float(caller))
    return request.SerializeToString()


def _merges(gateway: GatewayProcess, over: int = 1) -> float:
    """Backend Predicts the gateway made for more than ``over`` callers so far
    (``over`` one of the histogram's bounds)."""
    calls = gateway.metric("gateway_coalesced_requests_count")
    fewer = gateway.metric("gateway_coalesced_requests_bucket", le=f"{over:.1f}")
    return calls - fewer


def _predictions(data: bytes) -> list[float]:
    answer = messages.PredictResponse.FromString(data)
    return list(answer.outputs["predictions"].double_val)


def test_merged_filled_tensors_are_not_written_on_the_gateways_loop(
    gateway: GatewayProcess,
) -> None:
    pid = gateway.process.pid
    # One round first: the first merge starts what merging needs (a worker
    # thread, imports), a one-off that is not what is bounded.
    concurrent_calls(gateway, PREDICT, filled_request, rows=1)
    merges = _merges(gateway)
    faults = loop_page_faults(pid)
    outcomes: list[tuple[str, bytes]] = []
    for _ in range(ROUNDS):
        outcomes = concurrent_calls(gateway, PREDICT, filled_request, rows=1)
        assert [status for status, _ in outcomes] == ["OK"] * len(outcomes)
        if _merges(gateway) > merges:
            break
    faults = loop_page_faults(pid) - faults
    record("merged filled Predicts: page faults on the gateway's loop", faults)
    assert _merges(gateway) > merges, "no call was merged"
    assert faults < FAULTS_LIMIT, f"the loop's thread took {faults} page faults"
    # Each caller's answer is the model's to its own request (to the last bits
    # the model's arithmetic on 8 rows and on 1 may differ in).
    options = [("grpc.max_send_message_length", MESSAGE_LIMIT)]
    with grpc.insecure_channel(gateway.grpc_target, options=options) as channel:
        lone = channel.unary_unary(PREDICT)
        for caller in (1, MERGED_CALLERS):
            alone = _predictions(lone(filled_request(caller, 1), timeout=60))
            merged = _predictions(outcomes[caller][1])
            np.testing.assert_allclose(merged, alone, rtol=1e-12)


def _backend_predicts(server: ModelServer) -> float:
    """Predicts the model server has answered so far, whatever their protocol."""
    text = httpx.get(f"{server.rest_url}{METRICS_PATH}", timeout=10).text
    return sample_sum(text, "modelserver_request_count_total", api="predict")


def test_callers_merge_as_far_as_the_request_limit_holds(
    server: ModelServer, capped_gateway: GatewayProcess
) -> None:
    # Each caller's rows are within the limit alone, two fit it together,
    # three do not: a few bytes a caller, they would otherwise make the gateway
    # write the limit's worth several times in one request. The callers that
    # fit merge; one that would pass the limit goes in the next call.
    concurrent_calls(capped_gateway, PREDICT, filled_request, rows=CAPPED_ROWS)
    merges = _merges(capped_gateway)
    oversized = _merges(capped_gateway, over=2)
    predicts = _backend_predicts(server)
    outcomes: list[tuple[str, bytes]] = []
    callers = 0
    for _ in range(ROUNDS):
        outcomes = concurrent_calls(
            capped_gateway, PREDICT, filled_request, rows=CAPPED_ROWS
        )
        assert [status for status, _ in outcomes] == ["OK"] * len(outcomes)
        callers += len(outcomes)
        if _merges(capped_gateway) > merges:
            break
    assert _merges(capped_gateway) > merges, "no call was merged"
    # Merged, not refused and served one by one: fewer backend calls than callers.
    assert _backend_predicts(server) - predicts < callers
    assert _merges(capped_gateway, over=2) == oversized, "a merge passed the limit"
    options = [("grpc.max_send_message_length", MESSAGE_LIMIT)]
    with grpc.insecure_channel(capped_gateway.grpc_target, options=options) as channel:
        lone = channel.unary_unary(PREDICT)
        for caller in range(1, len(outcomes)):
            alone = _predictions(lone(filled_request(caller, CAPPED_ROWS), timeout=60))
            merged = _predictions(outcomes[caller][1])
            np.testing.assert_allclose(merged, alone, rtol=1e-12)
