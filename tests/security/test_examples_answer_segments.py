"""Large Classify, Regress and MultiInference answers of the model server,
over gRPC and REST, built in its JSON workers with their classifications and
regression values reaching the worker through a shared memory segment (a
``servekit-<pid>-*-outputs`` file of ``/dev/shm``) rather than pickled through
the pool's pipe: the label row, the scores and the values are arrays
(:mod:`modelserver.protocol.answerarrays`).

Two servers serve the same scikit-learn models: one at the default
thresholds, one that parses every message and body and writes every answer on
its event loop. The tests assert that both answer the same bytes, that an
arrays segment existed while the first built the answer, that none is left
afterwards, and that no CPU stretch of its event loop went over the 50 ms
bound of ``test_loop_stalls``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import httpx
import numpy as np
import orjson
import pytest
from servekit_protocol import messages

from tests.security.loopstall import assert_no_stall
from tests.security.paired_servers import Servers, offloading_and_in_place
from tests.security.test_body_segments import settled_segments, watching_segments
from tests.security.test_gateway_large_examples import (
    SERVICE,
    large_examples_request,
)
from tests.support.compiledmodels import models_config
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import (
    METRICS_PATH,
    ModelServer,
    write_monitoring_config,
)
from tests.support.pipelines import CLASSES, publish_classifier

pytestmark = pytest.mark.integration

MESSAGE_LIMIT = 64 * 1024 * 1024
"""Both servers' gRPC message and REST body limit."""
EXAMPLES = 60_000
"""Examples of the large calls: 600,000 (label, score) pairs of the ten-class
classifier and 60,000 regression values, both over the 16,384 elements from
which an answer is built in a worker."""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    folder = tmp_path_factory.mktemp("examples-answer-segments")
    registry = folder / "models"
    publish_classifier(registry, "classifier")
    publish_linear_pipeline(registry, "linear", offset=1.0)
    config = models_config(folder, registry, ("classifier", "linear"))
    common = (
        f"--model_config_file={config}",
        f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
        f"--monitoring_config_file={write_monitoring_config(folder)}",
    )
    with offloading_and_in_place(common, folder) as servers:
        yield servers


def _multi_regress(count: int) -> bytes:
    regress = messages.RegressionRequest.FromString(
        large_examples_request("Regress", count)
    )
    request = messages.MultiInferenceRequest(input=regress.input)
    request.tasks.add(
        model_spec=messages.ModelSpec(name="linear"),
        method_name="tensorflow/serving/regress",
    )
    data: bytes = request.SerializeToString()
    return data


GRPC_CALLS: dict[str, tuple[str, Callable[[int], bytes]]] = {
    "Classify": ("Classify", lambda n: large_examples_request("Classify", n)),
    "Regress": ("Regress", lambda n: large_examples_request("Regress", n)),
    "MultiInference classify": (
        "MultiInference",
        lambda n: large_examples_request("MultiInference", n),
    ),
    "MultiInference regress": ("MultiInference", _multi_regress),
}


def _grpc(server: ModelServer, method: str, data: bytes) -> bytes:
    options = [
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        answer: bytes = channel.unary_unary(SERVICE + method)(data, timeout=120)
    return answer


def _rest_body(examples: int) -> bytes:
    rows = [
        {"a": [float(a)], "b": [float(b)]}
        for a, b in np.random.default_rng(5).normal(size=(examples, 2)).tolist()
    ]
    return orjson.dumps({"examples": rows})


def _rest(server: ModelServer, path: str, body: bytes) -> bytes:
    answer = httpx.post(
        f"{server.rest_url}/v1/models/{path}",
        content=body,
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text[:200]
    return answer.content


@pytest.mark.parametrize("call", list(GRPC_CALLS))
def test_large_grpc_answers_are_the_in_place_bytes(servers: Servers, call: str) -> None:
    method, build = GRPC_CALLS[call]
    data = build(EXAMPLES)
    answer = _grpc(servers.offloading, method, data)
    assert answer == _grpc(servers.in_place, method, data)
    response = {
        "Classify": messages.ClassificationResponse,
        "Regress": messages.RegressionResponse,
        "MultiInference": messages.MultiInferenceResponse,
    }[method].FromString(answer)
    if method == "Classify":
        first = response.result.classifications[0].classes
        assert [item.label for item in first] == CLASSES
        assert len(response.result.classifications) == EXAMPLES
    elif method == "Regress":
        assert len(response.result.regressions) == EXAMPLES
    else:
        assert len(response.results) == 1
    assert settled_segments(servers.offloading.process.pid) == []


@pytest.mark.parametrize("path", ["classifier:classify", "linear:regress"])
def test_large_rest_answers_are_the_in_place_bytes(servers: Servers, path: str) -> None:
    body = _rest_body(EXAMPLES)
    answer = _rest(servers.offloading, path, body)
    assert answer == _rest(servers.in_place, path, body)
    assert len(orjson.loads(answer)["results"]) == EXAMPLES
    assert settled_segments(servers.offloading.process.pid) == []


@pytest.mark.parametrize(
    "call", ["grpc Classify", "grpc Regress", "rest classify", "rest regress"]
)
def test_a_large_answer_s_results_go_through_a_segment_without_stalling_the_loop(
    servers: Servers, call: str
) -> None:
    server = servers.offloading
    transport, kind = call.split()
    if transport == "grpc":
        data = large_examples_request(kind, EXAMPLES)

        def once() -> None:
            _grpc(server, kind, data)

    else:
        body = _rest_body(EXAMPLES)
        path = "classifier:classify" if kind == "classify" else "linear:regress"

        def once() -> None:
            _rest(server, path, body)

    once()  # the first call of a kind starts what it needs
    assert watching_segments(
        server.process.pid,
        "-outputs",
        lambda: assert_no_stall(
            server.rest_url + METRICS_PATH, "modelserver", f"{call} answer", once
        ),
    )
    assert settled_segments(server.process.pid) == []
