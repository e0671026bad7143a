"""What the tf.Examples of one ``Classify``, ``Regress`` or ``MultiInference``
request may make, merged with their context, on the model server.

A context is merged into every example, so a small request of many empty
examples and a wide context makes the context's values once an example; a
large message of many small features costs far more parsed than sent. The
request's tensor limits (``--max_request_tensor_elements``,
``--max_request_tensor_bytes``) cap what the examples make, counted from the
parsed counts before any dict or column is built, in place and in a JSON
worker alike. The tests send such requests over gRPC, gRPC-Web and REST and
assert the refusal, the bounded memory growth of the server and of its
workers, and that small calls sent alongside kept being answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import orjson
import pytest
from servekit_protocol import examples as example_codec
from servekit_protocol import messages

from tests.security.figures import record
from tests.security.stack import (
    Listener,
    PeakMemory,
    SmallCalls,
    assert_no_traceback,
)
from tests.support.compiledmodels import models_config
from tests.support.forwarded_messages import LENGTH_DELIMITED, field
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server
from tests.support.pipelines import publish_classifier
from tests.support.processes import spawned_workers

pytestmark = pytest.mark.integration

SERVICE = "/tensorflow.serving.PredictionService/"
MESSAGE_LIMIT = 64 * 1024 * 1024
"""The servers' gRPC message and REST body limit."""
CONTEXT_FEATURES = 1000
"""One-value features of the amplifying request's context (12 KiB serialized)."""
EMPTY_EXAMPLES = 40_000
"""Empty examples of the amplifying request (80 KB serialized): merged, 40
million values, over the default 33,554,432 elements and 256 MiB. Merged into
dicts in place they took about 36 KB an example (1.4 GB)."""
AMPLIFIED_GROWTH_LIMIT = 64 * 1024 * 1024
"""Most the server's resident memory may grow over the amplifying requests:
the bodies and their parsed form, a few MB (the margin is the allocator's)."""
SMALL_FEATURES_LIMIT = 16 * 1024 * 1024
"""``--max_request_tensor_bytes`` of the server the many-small-features
message is sent to."""
SMALL_FEATURES = 64
"""One-value features an example of that message."""
SMALL_FEATURE_EXAMPLES = 24_000
"""Its examples: a 26 MiB message making 1.5 million features of 16 bytes
(values and counts), 24 MiB, over the 16 MiB limit. Parsed whole, upb took
about ten times the message (307 MB for 30 MiB) before anything was counted."""
WORKER_GROWTH_LIMIT = 128 * 1024 * 1024
"""Most the workers' resident memory (all together) may grow on that message:
the message mapped from its segment, copied by the parser with its examples
left serialized, one example at a time (95-98 MiB measured at load average
5-7)."""
UNDER_EXAMPLES = 60_000
"""Examples of two features of a message over the 1 MiB from which it goes to
a worker (1.8 MiB) that the same server answers: 1.9 MiB of values and counts."""
SMALL_CALL_LATENCY = 1.0
"""Most a small call may take meanwhile (a few ms on an idle machine; the
margin is for the shared 2-core runner, as in ``test_large_json``)."""
REST_WORKER_EXAMPLES = 400_000
"""Empty examples of the REST body over the 1 MiB from which it is parsed in a
worker (1.2 MB): 400 million values merged."""
REST_WORKER_GROWTH_LIMIT = 128 * 1024 * 1024
"""Most the workers' resident memory may grow on it: the JSON document and
its 400,000 parsed examples (40-43 MiB measured at load average 8). Merged
into dicts, 400 million entries would not fit the machine."""
LIMIT_MESSAGE = "The request's examples hold at least "


@dataclass(frozen=True)
class Servers:
    defaults: ModelServer
    """The default limits."""
    small_limit: ModelServer
    """``--max_request_tensor_bytes`` of :data:`SMALL_FEATURES_LIMIT`."""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    folder = tmp_path_factory.mktemp("examples-limits")
    registry = folder / "models"
    publish_classifier(registry, "classifier")
    publish_linear_pipeline(registry, "linear", offset=1.0)
    config = models_config(folder, registry, ("classifier", "linear"))
    common = (
        f"--model_config_file={config}",
        f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
    )
    with (
        model_server(common, log_path=folder / "defaults.log") as defaults,
        model_server(
            (*common, f"--max_request_tensor_bytes={SMALL_FEATURES_LIMIT}"),
            log_path=folder / "small-limit.log",
        ) as small_limit,
    ):
        yield Servers(defaults, small_limit)
        assert_no_traceback(defaults.process)
        assert_no_traceback(small_limit.process)


def _request(method: str, request_input: messages.Input) -> bytes:
    request: Any
    if method == "MultiInference":
        request = messages.MultiInferenceRequest()
        task = request.tasks.add()
        task.model_spec.name = "classifier"
        task.method_name = "tensorflow/serving/classify"
    elif method == "Classify":
        request = messages.ClassificationRequest()
        request.model_spec.name = "classifier"
    else:
        request = messages.RegressionRequest()
        request.model_spec.name = "linear"
    request.input.CopyFrom(request_input)
    data: bytes = request.SerializeToString()
    return data


def _wide_context() -> dict[str, list[float]]:
    context = {f"c{index}": [float(index)] for index in range(CONTEXT_FEATURES)}
    return {"a": [1.0], "b": [2.0], **context}


def _amplifying(method: str) -> bytes:
    return _request(
        method, example_codec.from_dicts([{}] * EMPTY_EXAMPLES, _wide_context())
    )


def _small_features(method: str) -> bytes:
    example = example_codec.from_dict(
        {f"f{index:02}": [float(index)] for index in range(SMALL_FEATURES)}
    )
    # Input.example_list (1) of ExampleList.examples (1), the example repeated:
    # the same bytes as building the list, in a fraction of the time.
    listed = (
        field(1, LENGTH_DELIMITED, example.SerializeToString()) * SMALL_FEATURE_EXAMPLES
    )
    head = _request(method, messages.Input())
    return head + field(2, LENGTH_DELIMITED, field(1, LENGTH_DELIMITED, listed))


def _grpc_call(server: ModelServer, method: str, data: bytes) -> tuple[str, str]:
    """(status name, details) of one raw call."""
    options = [
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        try:
            channel.unary_unary(SERVICE + method)(data, timeout=120)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()
    return "OK", ""


def _web_call(server: ModelServer, method: str, data: bytes) -> tuple[str, str]:
    """The same as a gRPC-Web call on the REST port (status as its number)."""
    answer = httpx.post(
        f"{server.rest_url}{SERVICE}{method}",
        content=len(data).to_bytes(5, "big") + data,
        headers={"content-type": "application/grpc-web+proto"},
        timeout=120,
    )
    assert answer.status_code == 200
    status = answer.headers.get("grpc-status", "0")
    names = {"0": "OK", "3": "INVALID_ARGUMENT"}
    return names.get(status, status), answer.headers.get("grpc-message", "")


def _rest_call(server: ModelServer, method: str, body: bytes) -> tuple[str, str]:
    """(HTTP status, error) of one ``:classify`` or ``:regress`` call."""
    model, verb = (
        ("classifier", "classify")
        if method == "Classify"
        else (
            "linear",
            "regress",
        )
    )
    answer = httpx.post(
        f"{server.rest_url}/v1/models/{model}:{verb}", content=body, timeout=120
    )
    error = orjson.loads(answer.content).get("error", "")
    return str(answer.status_code), error


def _rest_amplifying() -> bytes:
    return orjson.dumps({"context": _wide_context(), "examples": [{}] * EMPTY_EXAMPLES})


def _assert_refused(answer: tuple[str, str], status: str) -> None:
    assert answer[0] == status, answer
    assert answer[1].startswith(LIMIT_MESSAGE), answer
    assert answer[1].endswith("per request"), answer


CALLS: dict[str, Callable[[ModelServer, str], tuple[str, str]]] = {
    "grpc": lambda server, method: _grpc_call(server, method, _amplifying(method)),
    "grpc-web": lambda server, method: _web_call(server, method, _amplifying(method)),
    "rest": lambda server, method: _rest_call(server, method, _rest_amplifying()),
}
STATUSES = {"grpc": "INVALID_ARGUMENT", "grpc-web": "INVALID_ARGUMENT", "rest": "400"}


@pytest.mark.parametrize("transport", list(CALLS))
@pytest.mark.parametrize("method", ["Classify", "Regress", "MultiInference"])
def test_a_wide_context_over_many_empty_examples_is_refused(
    servers: Servers, transport: str, method: str
) -> None:
    if transport == "rest" and method == "MultiInference":
        pytest.skip("TF Serving's REST API has no MultiInference")
    server = servers.defaults
    data = _amplifying(method)
    assert len(data) < 128 * 1024
    listener = Listener("model server", server.rest_port, server.process, {})
    memory = PeakMemory(lambda: {server.process.pid})
    with SmallCalls(listener) as small:
        for _ in range(3):
            _assert_refused(CALLS[transport](server, method), STATUSES[transport])
        time.sleep(0.05)
    growth = memory.growth()
    record("memory growth MiB", growth / 2**20)
    assert growth < AMPLIFIED_GROWTH_LIMIT, f"+{growth >> 20} MiB"
    small.assert_kept_up(SMALL_CALL_LATENCY, "amplifying requests were refused")
    assert server.process.popen.poll() is None


@pytest.mark.parametrize("method", ["Classify", "Regress", "MultiInference"])
def test_many_small_features_are_refused_before_the_worker_builds_them(
    servers: Servers, method: str
) -> None:
    server = servers.small_limit
    data = _small_features(method)
    assert 20 * 2**20 < len(data) < MESSAGE_LIMIT
    workers = PeakMemory(lambda: spawned_workers(server.process.pid))
    listener = Listener("model server", server.rest_port, server.process, {})
    with SmallCalls(listener) as small:
        answer = _grpc_call(server, method, data)
        time.sleep(0.05)
    growth = workers.growth()
    record("worker memory growth MiB", growth / 2**20)
    _assert_refused(answer, "INVALID_ARGUMENT")
    assert growth < WORKER_GROWTH_LIMIT, f"workers +{growth >> 20} MiB"
    small.assert_kept_up(SMALL_CALL_LATENCY, "small features were counted")
    # A large message of examples under the limit is answered.
    under = _request(
        method, example_codec.from_dicts([{"a": [1.0], "b": [2.0]}] * UNDER_EXAMPLES)
    )
    assert len(under) > 1024 * 1024
    assert _grpc_call(server, method, under) == ("OK", "")


@pytest.mark.parametrize("method", ["Classify", "Regress"])
def test_a_wide_context_in_a_large_rest_body_is_refused_in_a_worker(
    servers: Servers, method: str
) -> None:
    server = servers.defaults
    body = orjson.dumps(
        {"context": _wide_context(), "examples": [{}] * REST_WORKER_EXAMPLES}
    )
    assert len(body) > 1024 * 1024
    workers = PeakMemory(lambda: spawned_workers(server.process.pid))
    listener = Listener("model server", server.rest_port, server.process, {})
    with SmallCalls(listener) as small:
        answer = _rest_call(server, method, body)
        time.sleep(0.05)
    growth = workers.growth()
    record("worker memory growth MiB", growth / 2**20)
    _assert_refused(answer, "400")
    assert growth < REST_WORKER_GROWTH_LIMIT, f"workers +{growth >> 20} MiB"
    small.assert_kept_up(SMALL_CALL_LATENCY, "a large body was refused")
