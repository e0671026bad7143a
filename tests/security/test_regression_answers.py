"""Regress and MultiInference regression answers of the model server, over
gRPC and REST, written from the runtime's float32 array
(:func:`modelserver.runtimes.base.regression_results`): the values reach the
answer writers, and the JSON worker through the answer's segment, as that
array, never as a list of Python floats.

As a list, the values were made from the model's output in ~1 ms steps that
held the GIL, then made into an array again for the segment the same way: a
large call held the event loop in many short stretches, each up to the
interpreter's switch interval (5 ms). The tests assert what the clients get
(the model's own values, bit for bit, on both transports; TF Serving's JSON
for NaN, infinities, negative zero and subnormals; the REST answer the JSON of
the gRPC answer's message). The loop's share is measured beside a 1 ms
ticker in ``services/modelserver/tests/unit/test_regression_lag.py``: on the
wire, a large Regress's other work (its examples, the model) lags the loop
more than the values ever did.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from servekit_protocol import json_codec, messages

from tests.security.test_gateway_large_examples import (
    SERVICE,
    large_examples_request,
)
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import (
    ModelServer,
    model_server,
    write_monitoring_config,
)

pytestmark = pytest.mark.integration

MESSAGE_LIMIT = 128 * 1024 * 1024
"""The server's gRPC message and REST body limit."""
ECHO = "echo"
"""A TensorFlow model whose regression value is the example's ``a / b`` in
float32: ``a`` itself where ``b`` is 1, NaN or an infinity where ``b`` is 0
(JSON examples carry no NaN)."""
LINEAR = "linear"
"""The scikit-learn pipeline ``y = 2 a + 3 b + 1``."""
SPECIAL_VALUES = np.array(
    [0.1, -0.0, 0.0, 1.5e-38, -1.17549435e-38, 3.4028235e38, 1 / 3, np.nan, np.inf]
    + [-np.inf, 16_777_217.0, 1e-7],
    np.float32,
)
SPECIAL_JSON = (
    b'{"results":[0.1,-0.0,0.0,1.5e-38,-1.1754944e-38,3.4028235e+38,0.33333334,'
    b"NaN,Infinity,-Infinity,16777216.0,1e-7]}"
)
"""TF Serving's JSON of :data:`SPECIAL_VALUES` as regression values: each the
shortest text that reads back as its float32, NaN and the infinities as
JavaScript writes them."""
EXAMPLES = 60_000
"""Examples of the large parity calls, over the 16,384 values from which an
answer is written in a worker."""


def _save_echo(path: Path) -> None:
    import tensorflow as tf

    class Echo(tf.Module):  # type: ignore[misc]
        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.string, name="inputs")]
        )
        def regress(self, serialized: Any) -> dict[str, Any]:
            features = {name: tf.io.FixedLenFeature([1], tf.float32) for name in "ab"}
            parsed = tf.io.parse_example(serialized, features)
            return {"outputs": parsed["a"] / parsed["b"]}

    module = Echo()
    tf.saved_model.save(
        module, str(path), signatures={"serving_default": module.regress}
    )


@dataclass(frozen=True)
class Served:
    server: ModelServer
    linear: Any
    """The pipeline itself, loaded from its version folder."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import joblib

    folder = tmp_path_factory.mktemp("regression-answers")
    registry = folder / "models"
    _save_echo(registry / ECHO / "1")
    version = publish_linear_pipeline(registry, LINEAR, offset=1.0)
    config = folder / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "{ECHO}" base_path: "{registry / ECHO}"'
        ' model_platform: "tensorflow" }\n'
        f'  config {{ name: "{LINEAR}" base_path: "{registry / LINEAR}"'
        ' model_platform: "sklearn" }\n'
        "}\n"
    )
    flags = (
        f"--model_config_file={config}",
        f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
        f"--monitoring_config_file={write_monitoring_config(folder)}",
    )
    linear = joblib.load(registry / LINEAR / str(version) / "model.joblib")
    with model_server(flags, log_path=folder / "server.log") as server:
        yield Served(server, linear)


def _grpc(server: ModelServer, method: str, data: bytes) -> bytes:
    options = [
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        answer: bytes = channel.unary_unary(SERVICE + method)(data, timeout=300)
    return answer


def _rest(server: ModelServer, model: str, rows: list[dict[str, Any]]) -> bytes:
    answer = httpx.post(
        f"{server.rest_url}/v1/models/{model}:regress",
        content=orjson.dumps({"examples": rows}),
        headers={"content-type": "application/json"},
        timeout=300,
    )
    assert answer.status_code == 200, answer.text[:200]
    return answer.content


def _echo_features(values: np.ndarray[Any, Any]) -> list[tuple[float, float]]:
    """``(a, b)`` of each example, ``a / b`` being the value."""
    features = []
    for value in values.astype(float).tolist():
        if np.isnan(value):
            features.append((0.0, 0.0))
        elif np.isinf(value):
            features.append((float(np.sign(value)), 0.0))
        else:
            features.append((value, 1.0))
    return features


def _echo_request(values: np.ndarray[Any, Any]) -> bytes:
    request = messages.RegressionRequest()
    request.model_spec.name = ECHO
    for a, b in _echo_features(values):
        feature = request.input.example_list.examples.add().features.feature
        feature["a"].float_list.value.append(a)
        feature["b"].float_list.value.append(b)
    data: bytes = request.SerializeToString()
    return data


def _echo_rows(values: np.ndarray[Any, Any]) -> list[dict[str, Any]]:
    return [{"a": [a], "b": [b]} for a, b in _echo_features(values)]


def _values_of(answer: bytes) -> np.ndarray[Any, Any]:
    result = messages.RegressionResponse.FromString(answer).result
    return np.array([item.value for item in result.regressions], np.float32)


def _same_bits(found: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> bool:
    """The same float32 values, negative zeros included; any NaN matches any
    (TensorFlow's 0 / 0 has the sign bit set, numpy's NaN not)."""
    nan = np.isnan(expected)
    return bool(
        np.array_equal(np.isnan(found), nan)
        and np.array_equal(found[~nan].view(np.uint32), expected[~nan].view(np.uint32))
    )


def test_the_answers_write_float32_values_as_tf_serving_does(served: Served) -> None:
    server = served.server
    answer = _grpc(server, "Regress", _echo_request(SPECIAL_VALUES))
    assert _same_bits(_values_of(answer), SPECIAL_VALUES)
    assert _rest(server, ECHO + "/versions/1", _echo_rows(SPECIAL_VALUES)) == (
        SPECIAL_JSON
    )


def _large_echo_values() -> np.ndarray[Any, Any]:
    values = np.random.default_rng(7).normal(scale=1e3, size=EXAMPLES) ** 3
    values[::997] = np.tile(SPECIAL_VALUES, len(values[::997]))[: len(values[::997])]
    return values.astype(np.float32)


def test_large_answers_hold_the_model_s_values_on_both_transports(
    served: Served,
) -> None:
    server = served.server
    values = _large_echo_values()
    grpc_answer = _grpc(server, "Regress", _echo_request(values))
    assert _same_bits(_values_of(grpc_answer), values)
    result = messages.RegressionResponse.FromString(grpc_answer).result
    rest_answer = _rest(server, ECHO, _echo_rows(values))
    assert rest_answer == json_codec.format_regress_response(result)


def _linear_values(served: Served, data: bytes) -> np.ndarray[Any, Any]:
    """What the pipeline itself answers for ``data``'s examples, as float32."""
    import pandas as pd

    request = messages.RegressionRequest.FromString(data)
    examples = request.input.example_list.examples
    frame = pd.DataFrame(
        {
            name: [
                example.features.feature[name].float_list.value[0]
                for example in examples
            ]
            for name in "ab"
        }
    )
    return np.asarray(served.linear.predict(frame)).reshape(-1).astype(np.float32)


def test_a_large_regress_and_multi_inference_answer_the_pipeline_s_values(
    served: Served,
) -> None:
    server = served.server
    data = large_examples_request("Regress", EXAMPLES, b"")
    request = messages.RegressionRequest.FromString(data)
    request.model_spec.Clear()
    request.model_spec.name = LINEAR
    data = request.SerializeToString()
    expected = _linear_values(served, data)
    assert _same_bits(_values_of(_grpc(server, "Regress", data)), expected)
    multi = messages.MultiInferenceRequest(input=request.input)
    multi.tasks.add(
        model_spec=messages.ModelSpec(name=LINEAR),
        method_name="tensorflow/serving/regress",
    )
    answer = messages.MultiInferenceResponse.FromString(
        _grpc(server, "MultiInference", multi.SerializeToString())
    )
    (task,) = answer.results
    found = np.array([item.value for item in task.regression_result.regressions])
    assert _same_bits(found.astype(np.float32), expected)
