"""The CPU a JSON worker spends counting the tf.Examples of a large
``Regress`` message it then refuses (:mod:`modelserver.examplesize`,
:mod:`modelserver.protocol.grpc.examplewire`).

Every example counts 48 bytes toward ``--max_request_tensor_bytes``, so the
count of a message of tiny examples (two to four bytes each, each unlike the
one before) must walk 5,592,405 of them at the default limit before it may
refuse the message. A step of Python an example cost the worker 3.1-3.2 s of
CPU for that (load average 6-8); runs of small fields matched by a regular
expression cost it 0.2-0.3 s (load average 9-12). The test sends that message
over gRPC to a server at its default limits, asserts the refusal and the
workers' CPU for it.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from servekit_protocol import examples as example_codec
from servekit_protocol import messages

from tests.security.figures import record
from tests.security.stack import assert_no_traceback, cpu_seconds
from tests.support.compiledmodels import models_config
from tests.support.forwarded_messages import LENGTH_DELIMITED, field
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server
from tests.support.processes import spawned_workers

pytestmark = pytest.mark.integration

SERVICE = "/tensorflow.serving.PredictionService/"
MESSAGE_BYTES = 64 * 1024 * 1024
"""The attacking message: 22 million tiny examples, four times what the
default limit lets the count walk."""
WORKER_CPU_LIMIT = 1.0
"""Most CPU seconds the workers may spend on the attacking message, from its
segment mapped to the refusal: 0.2-0.3 s measured at load average 9-12 on 2
cores, so a loaded CI machine has three times that; a step of Python an
example spent 3.1-3.2 s."""
LIMIT_MESSAGE = "The request's examples hold at least "


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    folder = tmp_path_factory.mktemp("example-walk")
    registry = folder / "models"
    publish_linear_pipeline(registry, "linear", offset=1.0)
    config = f"--model_config_file={models_config(folder, registry, ('linear',))}"
    with model_server((config,), log_path=folder / "server.log") as running:
        yield running
        assert_no_traceback(running.process)


def _regress(listed: bytes) -> bytes:
    """A RegressionRequest for ``linear`` whose ExampleList holds ``listed``."""
    request = messages.RegressionRequest()
    request.model_spec.name = "linear"
    return request.SerializeToString() + field(
        2, LENGTH_DELIMITED, field(1, LENGTH_DELIMITED, listed)
    )


def _call(server: ModelServer, data: bytes) -> tuple[str, str]:
    options = [
        ("grpc.max_send_message_length", 2 * MESSAGE_BYTES),
        ("grpc.max_receive_message_length", 2 * MESSAGE_BYTES),
    ]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        try:
            channel.unary_unary(SERVICE + "Regress")(data, timeout=300)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()
    return "OK", ""


def _workers_cpu(pid: int) -> dict[int, float]:
    return {worker: cpu_seconds(worker) for worker in spawned_workers(pid)}


def test_tiny_examples_past_the_limit_cost_a_worker_well_under_a_second(
    server: ModelServer,
) -> None:
    # Empty examples and examples of one empty ``features``, alternating.
    tiny = b"\x0a\x00\x0a\x02\x0a\x00"
    attack = _regress(tiny * (MESSAGE_BYTES // len(tiny)))
    # The workers started, and each has run a large message once.
    example = example_codec.from_dict({"a": [1.0], "b": [2.0]}).SerializeToString()
    answered = _regress(field(1, LENGTH_DELIMITED, example) * 50_000)
    for _ in range(2):
        assert _call(server, answered) == ("OK", "")
    before = _workers_cpu(server.process.pid)
    assert before
    status, details = _call(server, attack)
    after = _workers_cpu(server.process.pid)
    used = sum(after[pid] - before.get(pid, 0.0) for pid in after)
    record("worker CPU seconds", used)
    assert status == "INVALID_ARGUMENT", (status, details)
    assert details.startswith(LIMIT_MESSAGE), details
    assert used < WORKER_CPU_LIMIT, f"workers used {used:.2f} s of CPU"
    assert server.process.popen.poll() is None
