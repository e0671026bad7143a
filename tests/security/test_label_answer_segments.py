"""Large Classify answers of a TensorFlow model whose ``classes`` output is
strings (``bytes`` objects, some not UTF-8), over gRPC and REST: the labels
reach the JSON worker that builds the answer through the answer's shared
memory segment as a buffer and offsets
(:mod:`modelserver.protocol.labelbuffers`), not pickled through the pool's
pipe, where 600,000 labels held the GIL, and so the event loop, for the whole
pickling call.

Two servers serve the same SavedModel: one at the default thresholds, one that
parses every message and body and writes every answer on its event loop. The
tests assert that both answer the same bytes (labels that are not UTF-8
written as TF Serving writes them, the same way on both), that an arrays
segment existed while the first built the answer and none is left afterwards,
and that the call held its event loop no longer than ``test_loop_stalls``
allows: CPU stretches within 50 ms, and its lag within the bound that
:func:`~tests.security.loopstall.lag_limit` sets from a probe beside it (the
pickling thread held the GIL, which shows as lag, not as the loop's CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from servekit_protocol import messages

from tests.security.loopstall import LAG_FLOOR, assert_no_stall
from tests.security.paired_servers import Servers, offloading_and_in_place
from tests.security.test_body_segments import settled_segments, watching_segments
from tests.security.test_gateway_large_examples import (
    SERVICE,
    large_examples_request,
)
from tests.support.modelserver import (
    METRICS_PATH,
    ModelServer,
    write_monitoring_config,
)

pytestmark = pytest.mark.integration

MODEL = "labelled"
MESSAGE_LIMIT = 64 * 1024 * 1024
"""Both servers' gRPC message and REST body limit."""
EXAMPLES = 60_000
"""Examples of the large calls: 600,000 labels of ten classes, over the
16,384 elements from which an answer is built in a worker."""
REST_STALL_EXAMPLES = 200_000
"""Examples of the REST call whose loop is watched: 2 Mi labels, whose
pickling through the pipe lagged the loop 1.0-2.5 s (load 13; 0.1-0.5 s at
600,000 labels, within the lag bound of a quiet machine). The gRPC answer
costs its worker 5 µs a label, so its call stays at :data:`EXAMPLES`."""
REST_LAG_FLOOR = 0.5
"""Lag the REST call of :data:`REST_STALL_EXAMPLES` may cause however quiet
the machine (a bucket bound): with its labels in a segment it lagged 0.1-0.25 s
(load 9-14; the 0.25 s bucket holds 0.15-0.25 s), against the
1.0-2.5 s of the pickled labels; the rest of that call's work (two million
string outputs of the model, its examples) was not taken apart further."""
CLASSES = 10
PREFIXES = [b"yes \xff", b"caf\xc3\xa9 ", b"\xc3", b"", b"no "] + [
    b"class %d " % index for index in range(5, CLASSES)
]
"""Each class's label starts with its prefix (a lone ``\\xff`` or ``\\xc3`` is
not UTF-8) and ends with the example's index, so that no two rows are alike."""
SIGNATURES = {
    "distinct": "classify",
    "vocabulary": "classify_vocabulary",
}
"""Labels that differ in every example, and one vocabulary every example has
(tiled by the model, as a TensorFlow classifier's often is)."""


def _save_labelled(path: Path) -> None:
    import tensorflow as tf

    prefixes = tf.constant(PREFIXES)

    def parsed(serialized: Any) -> Any:
        features = {"a": tf.io.FixedLenFeature([1], tf.float32)}
        return tf.io.parse_example(serialized, features)["a"]

    def scores_of(a: Any) -> Any:
        return tf.sigmoid(a + tf.range(CLASSES, dtype=tf.float32))

    class Labelled(tf.Module):  # type: ignore[misc]
        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.string, name="inputs")]
        )
        def classify(self, serialized: Any) -> dict[str, Any]:
            a = parsed(serialized)
            count = tf.shape(a)[0]
            index = tf.strings.as_string(tf.range(count))[:, None]
            classes = tf.strings.join(
                [tf.tile(prefixes[None, :], [count, 1]), tf.tile(index, [1, CLASSES])]
            )
            return {"classes": classes, "scores": scores_of(a)}

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.string, name="inputs")]
        )
        def classify_vocabulary(self, serialized: Any) -> dict[str, Any]:
            a = parsed(serialized)
            classes = tf.tile(prefixes[None, :], [tf.shape(a)[0], 1])
            return {"classes": classes, "scores": scores_of(a)}

    module = Labelled()
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "classify": module.classify,
            "classify_vocabulary": module.classify_vocabulary,
        },
    )


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    folder = tmp_path_factory.mktemp("label-answer-segments")
    _save_labelled(folder / MODEL / "1")
    common = (
        f"--model_name={MODEL}",
        f"--model_base_path={folder / MODEL}",
        f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
        f"--monitoring_config_file={write_monitoring_config(folder)}",
    )
    with offloading_and_in_place(common, folder) as servers:
        yield servers


def _grpc_request(labels: str) -> bytes:
    request = messages.ClassificationRequest.FromString(
        large_examples_request("Classify", EXAMPLES, b"")
    )
    request.model_spec.Clear()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = SIGNATURES[labels]
    data: bytes = request.SerializeToString()
    return data


def _grpc(server: ModelServer, data: bytes) -> bytes:
    options = [
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        answer: bytes = channel.unary_unary(SERVICE + "Classify")(data, timeout=120)
    return answer


def _rest_body(labels: str, examples: int = EXAMPLES) -> bytes:
    rows = [
        {"a": [float(a)], "b": [float(b)]}
        for a, b in np.random.default_rng(5).normal(size=(examples, 2)).tolist()
    ]
    return orjson.dumps({"signature_name": SIGNATURES[labels], "examples": rows})


def _rest(server: ModelServer, body: bytes) -> bytes:
    answer = httpx.post(
        f"{server.rest_url}/v1/models/{MODEL}:classify",
        content=body,
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text[:200]
    return answer.content


def _expected_row(index: int, labels: str) -> list[str]:
    tail = b"%d" % index if labels == "distinct" else b""
    return [(prefix + tail).decode("utf-8", "replace") for prefix in PREFIXES]


@pytest.mark.parametrize("labels", list(SIGNATURES))
def test_large_grpc_answers_are_the_in_place_bytes(
    servers: Servers, labels: str
) -> None:
    data = _grpc_request(labels)
    answer = _grpc(servers.offloading, data)
    assert answer == _grpc(servers.in_place, data)
    results = messages.ClassificationResponse.FromString(answer).result
    assert len(results.classifications) == EXAMPLES
    for index in (0, EXAMPLES - 1):
        classes = results.classifications[index].classes
        assert [item.label for item in classes] == _expected_row(index, labels)
    assert settled_segments(servers.offloading.process.pid) == []


@pytest.mark.parametrize("labels", list(SIGNATURES))
def test_large_rest_answers_are_the_in_place_bytes(
    servers: Servers, labels: str
) -> None:
    body = _rest_body(labels)
    answer = _rest(servers.offloading, body)
    assert answer == _rest(servers.in_place, body)
    results = orjson.loads(answer)["results"]
    assert len(results) == EXAMPLES
    for index in (0, EXAMPLES - 1):
        assert [label for label, _ in results[index]] == _expected_row(index, labels)
    assert settled_segments(servers.offloading.process.pid) == []


@pytest.mark.parametrize(
    "call", ["grpc distinct", "grpc vocabulary", "rest distinct", "rest vocabulary"]
)
def test_a_large_answer_s_labels_go_through_a_segment_without_stalling_the_loop(
    servers: Servers, call: str
) -> None:
    server = servers.offloading
    transport, labels = call.split()
    once: Callable[[], None]
    if transport == "grpc":
        data = _grpc_request(labels)

        def once() -> None:
            _grpc(server, data)

    else:
        body = _rest_body(labels, REST_STALL_EXAMPLES)

        def once() -> None:
            _rest(server, body)

    once()  # the first call of a kind starts what it needs
    assert watching_segments(
        server.process.pid,
        "-outputs",
        lambda: assert_no_stall(
            server.rest_url + METRICS_PATH,
            "modelserver",
            f"{call} labels answer",
            once,
            bound_lag=True,
            lag_floor=LAG_FLOOR if transport == "grpc" else REST_LAG_FLOOR,
        ),
    )
    assert settled_segments(server.process.pid) == []
