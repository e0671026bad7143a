"""Large answers through the gateway's gRPC and gRPC-Web ports, passed back as
the backend sent them.

Parsing a large answer on the event loop and serializing it again for the
client held every other call: some 30 ms for 16 MiB of floats, more for string
tensors (a cost per value). From ``--grpc-parse-offload-bytes`` (1 MiB) up the
gateway keeps a ``Predict``, ``Classify``, ``Regress`` or ``MultiInference``
answer that goes to its client unchanged as its bytes, reading only its model
spec (``gateway.clients.answers``).

Three gateways stand in front of one model server, as in
``test_gateway_large_grpc``: one calling it over gRPC-Web (the default with
``--rest-backends``), one over gRPC, and one parsing every message whole
(``--grpc-parse-offload-bytes 0``). Large answers of float, integer and string
tensors, and errors, must reach the client with equal status, message and
bytes from all three; the answers are the backend's own bytes (read through a
relay); the forwarding gateway's event loop spends less than the parsing one's
on a large string answer, small calls sent alongside keep being answered, and
its resident memory grows by a bounded amount.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from modelregistry.layout import SERVEKIT_CONFIG_FILE
from servekit_protocol import messages

from tests.security.figures import record
from tests.security.forwarding_stack import BODY_LIMIT, Outcome, grpc_call, web_call
from tests.security.recording import PREDICT
from tests.security.stack import (
    Listener,
    PeakMemory,
    SmallCalls,
    assert_no_traceback,
    loop_cpu_seconds,
)
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import model_server

pytestmark = pytest.mark.integration

ROWS = 250_000
"""Rows of a large call: a 2 MiB request (one float64 a row) whose answer is
2 MiB of floats, 1.2 MiB of integers or 2.1 MiB of strings, each over the
1 MiB threshold."""
CPU_ROUNDS = 5
"""Calls to each gateway in the loop-CPU comparison."""
STRING_ROWS = 1_200_000
"""Rows of the call whose loop time is compared: a 9.2 MiB request and a
10.3 MiB answer of strings (1.2 M values to parse and write again)."""
CLASS_BASE = 1_000_000_000
"""Integer classes start here: five bytes a value in ``int64_val``."""
SMALL_CALL_LATENCY = 2.0
"""Most a small call may take while large answers go by (a few ms on an idle
machine). The small calls are served by the same model server, which for each
large call predicts 1.2 M rows and writes 10.3 MiB of strings on the same
2 cores: 0.58-1.01 s measured at load average 7-8, most of it the backend's;
the margin is for a loaded runner."""
MEMORY_GROWTH_LIMIT = 160 * 1024 * 1024
"""Most the forwarding gateway's resident memory may grow over three large
string calls: the 9.2 MiB request as received and framed for the backend, the
10.3 MiB answer as received, joined and framed for the client, and the
allocator's retained pages."""
SMALL_ANSWER_SHARE = 0.75
"""Most the forwarding gateway's loop may spend on a small request's 10.3 MiB
answer of strings, as a share of what the parsing gateway's spends. Both
receive it from the backend and send it on (most of the forwarding one's
time); the parsing one also parses it and writes its 1.2 M strings again.
Measured over 5 calls each: 0.57 when the answer is passed back as received,
0.89 when it was parsed for a small request (load average 7-9)."""
MODELS = ("floats", "ints", "strings")


def _publish(registry: Path, name: str, kind: str) -> None:
    """A model on one ``[-1, 1]`` float64 input ``x`` whose ``predictions``
    are floats (a linear regression), integers or strings (classifiers)."""
    import joblib
    from modelregistry import Registry
    from sklearn.linear_model import LinearRegression, LogisticRegression

    rng = np.random.default_rng(5)
    features = rng.normal(size=(400, 1))
    bands = np.digitize(features[:, 0], np.linspace(-1.5, 1.5, 5))
    model: Any
    if kind == "floats":
        model = LinearRegression().fit(features, 3.0 * features[:, 0] + 0.25)
        dtype = "float64"
    elif kind == "ints":
        model = LogisticRegression(max_iter=500).fit(features, bands + CLASS_BASE)
        dtype = "int64"
    else:
        model = LogisticRegression(max_iter=500).fit(
            features, np.array([f"class-{band}" for band in bands])
        )
        dtype = "string"
    with Registry(registry).publish(name, framework="sklearn") as draft:
        joblib.dump(model, draft.path / "model.joblib")
        draft.manifest.update(
            artifact="model.joblib",
            task="regression" if kind == "floats" else "classification",
            features=[],
            signatures={
                "serving_default": {
                    "method": "predict",
                    "inputs": {"x": {"dtype": "float64", "shape": [-1, 1]}},
                    "outputs": {"predictions": {"dtype": dtype, "shape": [-1]}},
                }
            },
            metrics={},
        )


@dataclass(frozen=True)
class AnswerGateways:
    forwarding: GatewayProcess
    """Default threshold; gRPC-Web to the backend."""
    forwarding_grpc: GatewayProcess
    """Default threshold; gRPC to the backend."""
    parsing: GatewayProcess
    """Every message parsed whole."""
    backend_grpc: str
    """The model server's gRPC address, to call it directly."""


@pytest.fixture(scope="module")
def answer_gateways(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AnswerGateways]:
    folder = tmp_path_factory.mktemp("gateway-large-answers")
    registry = folder / "models"
    for kind in MODELS:
        _publish(registry, kind, kind)
    publish_linear_pipeline(registry, "linear", offset=1.0)
    (registry / "routes.yaml").write_text(json.dumps({"routes": {}}))
    config = registry / SERVEKIT_CONFIG_FILE
    with model_server(
        (f"--model_config_file={config}", f"--grpc_max_message_bytes={2 * BODY_LIMIT}"),
        log_path=folder / "model-server.log",
    ) as server:
        env = {"GATEWAY_REGISTRY": str(registry)}
        rest = f'{{"{server.grpc_target}": "127.0.0.1:{server.rest_port}"}}'
        flags = [
            f"--default-backend={server.grpc_target}",
            f"--rest-backends={rest}",
            f"--max-body-bytes={BODY_LIMIT}",
        ]
        with (
            running_gateway(folder / "forwarding", env=env, flags=flags) as forwarding,
            running_gateway(
                folder / "forwarding-grpc",
                env=env,
                flags=[*flags, "--backend-grpc-web=false"],
            ) as forwarding_grpc,
            running_gateway(
                folder / "parsing",
                env=env,
                flags=[*flags, "--grpc-parse-offload-bytes=0"],
            ) as parsing,
        ):
            yield AnswerGateways(
                forwarding, forwarding_grpc, parsing, server.grpc_target
            )
            for gateway in (forwarding, forwarding_grpc, parsing):
                assert_no_traceback(gateway.process)


def _request(model: str, rows: int = ROWS, **spec: Any) -> bytes:
    request = messages.PredictRequest()
    request.model_spec.name = model
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "signature" in spec:
        request.model_spec.signature_name = spec["signature"]
    tensor = request.inputs[spec.get("input", "x")]
    tensor.dtype = messages.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=1)
    tensor.double_val.extend(np.random.default_rng(rows).normal(size=rows))
    return request.SerializeToString()


def _call(gateway: GatewayProcess, transport: str, data: bytes) -> Outcome:
    if transport == "grpc":
        return grpc_call(gateway, data)
    return web_call(gateway, data)


CASES: dict[str, dict[str, Any]] = {
    "floats": {"model": "floats"},
    "ints": {"model": "ints"},
    "strings": {"model": "strings"},
    "version 1 and signature": {
        "model": "strings",
        "version": 1,
        "signature": "serving_default",
    },
    "missing version": {"model": "floats", "version": 9},
    "unknown signature": {"model": "ints", "signature": "nope"},
    "unknown model": {"model": "nope"},
    "unknown input": {"model": "floats", "input": "y"},
}
ANSWERED = frozenset((*MODELS, "version 1 and signature"))
"""The cases answered OK; the others are errors."""


@pytest.mark.parametrize("transport", ["grpc", "grpc-web"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_large_answer_reaches_the_client_as_the_backend_sent_it(
    answer_gateways: AnswerGateways, case: str, transport: str
) -> None:
    spec = dict(CASES[case])
    data = _request(spec.pop("model"), **spec)
    parsed = _call(answer_gateways.parsing, transport, data)
    assert _call(answer_gateways.forwarding, transport, data) == parsed
    assert _call(answer_gateways.forwarding_grpc, transport, data) == parsed
    if case in ANSWERED:
        assert parsed[0] == "OK", parsed[1]
        # The backend's own bytes: the gateways add nothing and drop nothing.
        assert grpc_call(answer_gateways.backend_grpc, data) == parsed
        assert len(parsed[2]) >= 1024 * 1024
        answer = messages.PredictResponse.FromString(parsed[2])
        predictions = answer.outputs["predictions"]
        assert list(predictions.tensor_shape.dim)[0].size == ROWS
        assert answer.model_spec.version.value == 1
        if case == "ints":
            assert min(predictions.int64_val) >= CLASS_BASE
        elif CASES[case]["model"] == "strings":
            assert set(predictions.string_val) <= {b"class-%d" % i for i in range(6)}
    else:
        assert parsed[0] != "OK"


def test_an_answer_over_the_clients_receive_limit_still_fails(
    answer_gateways: AnswerGateways,
) -> None:
    data = _request("strings")
    for gateway in (answer_gateways.forwarding, answer_gateways.parsing):
        # grpcio's default receive limit is 4 MiB; the answer is 2.1 MiB.
        options = [("grpc.max_receive_message_length", 1024 * 1024)]
        with (
            grpc.insecure_channel(gateway.grpc_target, options=options) as channel,
            pytest.raises(grpc.RpcError) as failure,
        ):
            channel.unary_unary(PREDICT)(data, timeout=60)
        assert failure.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_forwarding_gateways_loop_spends_less_on_a_large_answer(
    answer_gateways: AnswerGateways,
) -> None:
    data = _request("strings", STRING_ROWS)
    spent: dict[str, list[float]] = {"passed through": [], "parsed": []}
    outcomes = []
    # Calls alternate between the gateways and each side's median is kept, so
    # one call slowed by the loaded machine (or a collection in either
    # process) moves neither figure.
    for _ in range(CPU_ROUNDS):
        for name, gateway in (
            ("passed through", answer_gateways.forwarding),
            ("parsed", answer_gateways.parsing),
        ):
            pid = gateway.process.pid
            before = loop_cpu_seconds(pid)
            outcomes.append(grpc_call(gateway, data))
            assert outcomes[-1][0] == "OK", outcomes[-1][1]
            spent[name].append(loop_cpu_seconds(pid) - before)
    medians = {name: statistics.median(seconds) for name, seconds in spent.items()}
    for name, seconds in medians.items():
        record(f"gateway loop CPU s a large string answer ({name})", seconds)
    assert len({outcome[2] for outcome in outcomes}) == 1
    # Both receive the 9.2 MiB request and send the 10.3 MiB answer over
    # HTTP/2 (most of either's loop time); the parsing gateway also parses and
    # writes again the request and the answer's 1.2 M strings. Measured: 0.47
    # to 0.60 of the parsing gateway's (load average 7-8); an answer parsed and
    # written again would add some 0.05 s a call to the forwarding gateway,
    # about 0.75 of the parsing one's.
    assert medians["passed through"] < medians["parsed"] * 0.7, spent


def _small_request(model: str, rows: int) -> bytes:
    """A request of a few bytes whose answer has ``rows`` values: one value in
    ``double_val`` stands for every element of its ``[rows, 1]`` tensor."""
    request = messages.PredictRequest()
    request.model_spec.name = model
    tensor = request.inputs["x"]
    tensor.dtype = messages.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=1)
    tensor.double_val.append(0.5)
    return request.SerializeToString()


@pytest.mark.parametrize("transport", ["grpc", "grpc-web"])
def test_a_small_request_s_large_answer_reaches_the_client_as_the_backend_sent_it(
    answer_gateways: AnswerGateways, transport: str
) -> None:
    data = _small_request("strings", STRING_ROWS)
    assert len(data) < 64
    parsed = _call(answer_gateways.parsing, transport, data)
    assert parsed[0] == "OK", parsed[1]
    assert len(parsed[2]) >= 10 * 1024 * 1024
    assert _call(answer_gateways.forwarding, transport, data) == parsed
    assert _call(answer_gateways.forwarding_grpc, transport, data) == parsed
    assert grpc_call(answer_gateways.backend_grpc, data) == parsed


def test_the_forwarding_gateways_loop_spends_less_on_a_small_request_s_answer(
    answer_gateways: AnswerGateways,
) -> None:
    data = _small_request("strings", STRING_ROWS)
    spent: dict[str, list[float]] = {"passed through": [], "parsed": []}
    outcomes = set()
    # In turns, as in the test above; summed over the rounds rather than the
    # median kept: each call's figure is a few ticks of the 10 ms CPU clock.
    for _ in range(CPU_ROUNDS):
        for name, gateway in (
            ("passed through", answer_gateways.forwarding),
            ("parsed", answer_gateways.parsing),
        ):
            pid = gateway.process.pid
            before = loop_cpu_seconds(pid)
            outcome = grpc_call(gateway.grpc_target, data)
            assert outcome[0] == "OK", outcome[1]
            spent[name].append(loop_cpu_seconds(pid) - before)
            outcomes.add(outcome[2])
    totals = {name: sum(seconds) for name, seconds in spent.items()}
    for name, seconds in totals.items():
        record(f"gateway loop CPU s 5 small requests' string answers ({name})", seconds)
    assert len(outcomes) == 1
    assert totals["passed through"] < totals["parsed"] * SMALL_ANSWER_SHARE, spent


def test_large_answers_do_not_hold_up_other_clients(
    answer_gateways: AnswerGateways,
) -> None:
    gateway = answer_gateways.forwarding
    data = _request("strings", STRING_ROWS)
    listener = Listener("gateway HTTP", gateway.http_port, gateway.process, {})
    pid = gateway.process.pid
    memory = PeakMemory(lambda: {pid})
    try:
        with SmallCalls(listener) as small:
            for transport in ("grpc", "grpc-web", "grpc"):
                outcome = _call(gateway, transport, data)
                assert outcome[0] == "OK", outcome[1]
            time.sleep(0.05)
    finally:
        growth = memory.growth()
    record("memory growth MiB (large answers)", growth / 2**20)
    small.assert_kept_up(SMALL_CALL_LATENCY, "large answers went back")
    assert growth < MEMORY_GROWTH_LIMIT, f"+{growth >> 20} MiB"
