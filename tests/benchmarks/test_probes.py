"""The 1-client probes against a real model server, over HTTP/1.1 and HTTP/2."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from benchmarks.payloads import ModelPayloads, build_payloads
from benchmarks.probes import GrpcProbe, HttpProbe, ProbeError, hpack_integer
from benchmarks.targets import GrpcTarget, HttpTarget
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server

pytestmark = pytest.mark.integration

PREDICT = "/tensorflow.serving.PredictionService/Predict"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ModelServer, ModelPayloads]]:
    root = tmp_path_factory.mktemp("probes")
    registry = root / "registry"
    publish_linear_pipeline(registry, "slow", sleep_seconds=0.005)
    payloads = build_payloads(registry, "slow", root / "payloads")
    with model_server(
        ["--model_name=slow", f"--model_base_path={registry / 'slow'}"],
        log_path=root / "server.log",
    ) as server:
        yield server, payloads


def answer_size(server: ModelServer, request: bytes) -> int:
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary(PREDICT)
        answer: bytes = call(request, timeout=10)
    return len(answer)


def predict_probe(served: tuple[ModelServer, ModelPayloads], model: str) -> HttpProbe:
    server, payloads = served
    url = f"{server.rest_url}/v1/models/{model}:predict"
    return HttpProbe(HttpTarget(url, payloads.tfs_rest))


def test_http_probe_times_each_call_on_one_connection(
    served: tuple[ModelServer, ModelPayloads],
) -> None:
    with predict_probe(served, "slow") as probe:
        latencies = [probe.call() for _ in range(20)]
    # Every call runs the pipeline's 5 ms sleep.
    assert all(5_000_000 <= latency < 1_000_000_000 for latency in latencies)


def test_http_probe_reports_an_error_status(
    served: tuple[ModelServer, ModelPayloads],
) -> None:
    with predict_probe(served, "missing") as probe:
        with pytest.raises(ProbeError, match="HTTP status 404"):
            probe.call()
        # The connection stays usable after an error answer.
        with pytest.raises(ProbeError, match="HTTP status 404"):
            probe.call()


def test_grpc_probe_checks_the_answer_size(
    served: tuple[ModelServer, ModelPayloads],
) -> None:
    server, payloads = served
    size = answer_size(server, payloads.tfs_grpc.read_bytes())
    target = GrpcTarget(server.grpc_target, PREDICT, payloads.tfs_grpc, size)
    with GrpcProbe(target) as probe:
        latencies = [probe.call() for _ in range(20)]
    assert all(5_000_000 <= latency < 1_000_000_000 for latency in latencies)
    wrong = GrpcProbe(replace(target, response_bytes=size + 1))
    with wrong, pytest.raises(ProbeError, match=f"answered {size + 5} message bytes"):
        wrong.call()


def test_grpc_probe_reports_a_failed_call(
    served: tuple[ModelServer, ModelPayloads], tmp_path: Path
) -> None:
    server, _ = served
    # An empty PredictRequest names no model: NOT_FOUND, which carries no message.
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with GrpcProbe(GrpcTarget(server.grpc_target, PREDICT, empty, None)) as probe:
        for _ in range(3):
            with pytest.raises(ProbeError, match="answered 0 message bytes"):
                probe.call()


def test_hpack_integers_continue_past_the_prefix() -> None:
    # RFC 7541 C.1.1 and C.1.2: 10 and 1337 with a 5-bit prefix.
    assert hpack_integer(10, 5) == bytes([0b01010])
    assert hpack_integer(1337, 5) == bytes([0b11111, 0b10011010, 0b00001010])
    assert hpack_integer(200, 7) == bytes([0x7F, 73])
