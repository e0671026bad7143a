"""Large ``Classify``, ``Regress`` and ``MultiInference`` calls to a TensorFlow
SavedModel's classify and regress signatures (TF Serving's ``half_plus_two``).

TensorFlow's runtime takes the examples serialized, so it rebuilds a dict an
example from the columns a JSON worker made and serializes each example again,
once a task. From a thousand examples this runs in a thread, not on the event
loop. The tests assert that the answers are TF Serving's (the model's
``0.5 x + 2`` and ``0.5 x + 3`` through float32), that on a large
``MultiInference`` of three tasks the event loop (the main thread) spent under
:data:`LOOP_CPU_LIMIT` and the server's memory grew by less than
:data:`MEMORY_GROWTH_LIMIT` while small calls kept being answered, and that
one whose context, merged into its examples, makes more than the request's
tensor limits is refused. A second server that turns the model's outputs into
classifications and regression values, and writes the answers, on its event
loop gives the same bytes as the first, which does both off the loop for
large answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from servekit_protocol import examples as example_codec
from servekit_protocol import messages

from tests.security.figures import record
from tests.security.stack import (
    Listener,
    PeakMemory,
    SmallCalls,
    assert_no_traceback,
    loop_cpu_seconds,
)
from tests.support.models import copy_tfserving_testdata, publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server

pytestmark = pytest.mark.integration

MODEL = "half_plus_two"
SERVICE = "/tensorflow.serving.PredictionService/"
MESSAGE_LIMIT = 64 * 1024 * 1024
"""The server's gRPC message limit."""
EXAMPLES = 100_000
"""Examples of the large calls (two float features, a 3.3 MiB message)."""
TASKS = (
    ("regress_x_to_y", "tensorflow/serving/regress", 2.0),
    ("regress_x_to_y2", "tensorflow/serving/regress", 3.0),
    ("classify_x_to_y", "tensorflow/serving/classify", 2.0),
)
"""The MultiInference's tasks: signature, method and the model's offset."""
LOOP_CPU_LIMIT = 0.5
"""CPU seconds the event loop may spend on the large MultiInference: reading
the message, handing it to a worker, assembling the columns and the answers
(0.31 s measured at load average 8). With the examples prepared on the loop
it spent 4.6 s."""
MEMORY_GROWTH_LIMIT = 256 * 1024 * 1024
"""Most the server's resident memory may grow on it: a dict an example and its
three serializations, the model's tensors and three answers (65-73 MiB
measured)."""
SMALL_CALL_LATENCY = 1.0
"""Most a small call may take meanwhile (a few ms on an idle machine; the
margin is for the shared 2-core runner, as in ``test_large_json``)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    yield from _serve(tmp_path_factory.mktemp("examples-tensorflow"), ())


@pytest.fixture(scope="module")
def in_place_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ModelServer]:
    """The same models on a server that post-processes every model output and
    writes every answer on its event loop."""
    yield from _serve(
        tmp_path_factory.mktemp("examples-tensorflow-in-place"),
        ("--rest_api_json_answer_offload_elements=1000000000",),
    )


def _serve(folder: Path, extra: tuple[str, ...]) -> Iterator[ModelServer]:
    try:
        models = copy_tfserving_testdata(folder / "tfs", MODEL)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    registry = folder / "models"
    publish_linear_pipeline(registry, "linear", offset=1.0)
    entries = [
        (MODEL, models / MODEL, "tensorflow"),
        ("linear", registry / "linear", "sklearn"),
    ]
    config = folder / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f"  config {{ name: {json.dumps(name)} base_path: "
            f"{json.dumps(str(path))} model_platform: {json.dumps(platform)} }}\n"
            for name, path, platform in entries
        )
        + "}\n"
    )
    with model_server(
        (
            f"--model_config_file={config}",
            f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
            *extra,
        ),
        log_path=Path(folder / "server.log"),
    ) as running:
        yield running
        assert_no_traceback(running.process)


def _xs(count: int) -> list[float]:
    # Values exact in float32, so the expected answers are exact too.
    rng = np.random.default_rng(3)
    return (rng.integers(-1000, 1000, size=count) / 8).tolist()


def _input(xs: list[float], context: dict[str, Any] | None = None) -> Any:
    return example_codec.from_dicts([{"x": [x], "x2": [x]} for x in xs], context)


def _call(server: ModelServer, method: str, request: Any) -> tuple[str, str, bytes]:
    options = [
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        try:
            answer = channel.unary_unary(SERVICE + method)(
                request.SerializeToString(), timeout=120
            )
        except grpc.RpcError as exc:
            return exc.code().name, exc.details(), b""
    return "OK", "", answer


def _expected(xs: list[float], offset: float) -> list[float]:
    values = np.asarray(xs, np.float32) * np.float32(0.5) + np.float32(offset)
    return values.astype(np.float64).tolist()


def _multi_inference(xs: list[float], context: dict[str, Any] | None = None) -> Any:
    request = messages.MultiInferenceRequest()
    for signature, method, _ in TASKS:
        task = request.tasks.add()
        task.model_spec.name = MODEL
        task.model_spec.signature_name = signature
        task.method_name = method
    request.input.CopyFrom(_input(xs, context))
    return request


def _assert_answers(answer: tuple[str, str, bytes], xs: list[float]) -> None:
    assert answer[:2] == ("OK", ""), answer[:2]
    response = messages.MultiInferenceResponse.FromString(answer[2])
    assert len(response.results) == len(TASKS)
    for result, (signature, method, offset) in zip(
        response.results, TASKS, strict=True
    ):
        assert result.model_spec.signature_name == signature
        if method.endswith("regress"):
            values = [entry.value for entry in result.regression_result.regressions]
        else:
            values = [
                entry.classes[0].score
                for entry in result.classification_result.classifications
            ]
        assert values == _expected(xs, offset)


@pytest.mark.parametrize("count", [3, 2_000])
def test_classify_and_regress_answer_as_tf_serving(
    server: ModelServer, count: int
) -> None:
    xs = _xs(count)
    classify = messages.ClassificationRequest()
    classify.model_spec.name = MODEL
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.CopyFrom(_input(xs))
    status, details, data = _call(server, "Classify", classify)
    assert (status, details) == ("OK", "")
    classes = messages.ClassificationResponse.FromString(data).result.classifications
    assert [entry.classes[0].score for entry in classes] == _expected(xs, 2.0)
    regress = messages.RegressionRequest()
    regress.model_spec.name = MODEL
    regress.model_spec.signature_name = "regress_x_to_y2"
    # The context's x is replaced by each example's own.
    regress.input.CopyFrom(_input(xs, {"x": [100.0], "note": [b"n"]}))
    status, details, data = _call(server, "Regress", regress)
    assert (status, details) == ("OK", "")
    values = messages.RegressionResponse.FromString(data).result.regressions
    assert [entry.value for entry in values] == _expected(xs, 3.0)
    _assert_answers(_call(server, "MultiInference", _multi_inference(xs)), xs)


def test_a_large_multi_inference_does_not_hold_up_other_clients(
    server: ModelServer,
) -> None:
    xs = _xs(EXAMPLES)
    request = _multi_inference(xs)
    assert request.ByteSize() > 1024 * 1024
    pid = server.process.pid
    listener = Listener("model server", server.rest_port, server.process, {})
    memory = PeakMemory(lambda: {pid})
    before = loop_cpu_seconds(pid)
    with SmallCalls(listener) as small:
        answer = _call(server, "MultiInference", request)
        time.sleep(0.05)
    used = loop_cpu_seconds(pid) - before
    growth = memory.growth()
    record("event loop CPU s", used)
    record("memory growth MiB", growth / 2**20)
    _assert_answers(answer, xs)
    assert used < LOOP_CPU_LIMIT, f"the event loop spent {used:.2f} s of CPU"
    assert growth < MEMORY_GROWTH_LIMIT, f"+{growth >> 20} MiB"
    small.assert_kept_up(SMALL_CALL_LATENCY, "large MultiInference ran")


def _classify(xs: list[float]) -> Any:
    request = messages.ClassificationRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.CopyFrom(_input(xs))
    return request


def _regress(xs: list[float]) -> Any:
    request = messages.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.CopyFrom(_input(xs))
    return request


LARGE_CALLS = {
    "Classify": _classify,
    "Regress": _regress,
    "MultiInference": _multi_inference,
}


@pytest.mark.parametrize("method", list(LARGE_CALLS))
def test_large_answers_post_processed_off_the_loop_are_the_in_place_bytes(
    server: ModelServer, in_place_server: ModelServer, method: str
) -> None:
    xs = _xs(EXAMPLES)
    request = LARGE_CALLS[method](xs)
    used: dict[str, float] = {}
    answers: dict[str, tuple[str, str, bytes]] = {}
    for name, running in (("off", server), ("in place", in_place_server)):
        before = loop_cpu_seconds(running.process.pid)
        answers[name] = _call(running, method, request)
        used[name] = loop_cpu_seconds(running.process.pid) - before
        record(f"event loop CPU s, {name}", used[name])
    assert answers["off"][:2] == ("OK", ""), answers["off"][:2]
    assert answers["off"] == answers["in place"]
    assert used["off"] < LOOP_CPU_LIMIT, f"the event loop spent {used['off']:.2f} s"


def test_a_multi_inference_over_the_limits_is_refused(server: ModelServer) -> None:
    # 200,000 examples of a 2 KiB context: 400 MiB merged, over 256 MiB.
    request = _multi_inference(_xs(200_000), {"note": [bytes(2048)]})
    status, details, _ = _call(server, "MultiInference", request)
    assert status == "INVALID_ARGUMENT"
    assert details.startswith("The request's examples hold at least ")
    assert server.process.popen.poll() is None
