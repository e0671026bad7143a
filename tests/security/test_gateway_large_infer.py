"""Large OIP ``ModelInfer`` calls with raw inputs through the gateway.

tritonclient and KServe's gRPC client send numpy inputs in
``raw_input_contents``, the bytes of a TensorProto's ``tensor_content``. From
``--grpc-parse-offload-bytes`` (1 MiB) up the gateway reads such a message's
small fields only and writes the backend's Predict around views of the raw
inputs (``gateway.codecs.v2_spliced``), where it used to copy the message on
the loop, pickle it to a JSON worker and parse it there; a large answer comes
back as the backend's bytes and the ModelInferResponse is written around its
outputs' values in a thread (``gateway.codecs.v2_grpc_answer``), where it was
parsed, decoded and built on the loop.

The three gateways of :mod:`tests.security.forwarding_stack` answer every
request, valid or not, with equal status, message and answer bytes; the
backend receives the client's raw bytes; the forwarding gateway's loop spends
well under the parsing one's on a large call, keeps answering small calls
meanwhile, and its memory grows by about the message it received.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from servekit_protocol import messages
from servekit_protocol import oip_messages as oip

from tests.security.figures import record
from tests.security.forwarding_stack import Gateways, grpc_call
from tests.security.loopstall import assert_no_stall
from tests.security.stack import (
    Listener,
    PeakMemory,
    SmallCalls,
    cpu_seconds,
    loop_cpu_seconds,
)
from tests.security.test_large_grpc import FEATURES
from tests.support.processes import spawned_workers

pytestmark = pytest.mark.integration

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
ROWS = 8_000
"""Rows of the large request: 8,000 x 256 FP64 values, 15.6 MiB, just under
the gateways' body limit."""
CPU_ROUNDS = 6
SMALL_CALL_LATENCY = 1.0
"""Most a small call may take while large calls are handled (the bound of
``test_gateway_large_grpc``, for the same loaded runner)."""
MEMORY_GROWTH_LIMIT = 80 * 1024 * 1024
"""Most the forwarding gateway's resident memory may grow over three large
raw ``ModelInfer`` calls: the body as received (15.6 MiB) and the receive
buffers it passed through, the allocator's retained pages; no copy of the
message, no pickle, no arrays (the worker path's 160 MiB bound counts five
copies)."""


def _raw(
    rows: int = ROWS, datatype: str = "FP64", dtype: str = "<f8"
) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="wide", id="raw")
    request.inputs.add(name="x", datatype=datatype, shape=[rows, FEATURES])
    values = np.random.default_rng(11).normal(size=rows * FEATURES)
    request.raw_input_contents.append(values.astype(dtype).tobytes())
    return request


ANSWER_ROWS = 900_000
"""Rows of the call with a large answer: two FP64 inputs of the ``linear``
pipeline (14.4 MB) answered with 7.2 MB of FP64 predictions."""


def _linear(typed: bool = False, rows: int = ANSWER_ROWS) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="linear", id="answer")
    rng = np.random.default_rng(13)
    for name in ("a", "b"):
        tensor = request.inputs.add(name=name, datatype="FP64", shape=[rows])
        values = rng.normal(size=rows)
        if typed:
            tensor.contents.fp64_contents.extend(values)
        else:
            request.raw_input_contents.append(values.astype("<f8").tobytes())
    return request


def _linear_with(change: Callable[[oip.ModelInferRequest], object]) -> bytes:
    request = _linear()
    change(request)
    return request.SerializeToString()


def _raw_with(change: Callable[[oip.ModelInferRequest], object]) -> bytes:
    request = _raw()
    change(request)
    return request.SerializeToString()


def _bools(request: oip.ModelInferRequest, bad: bool) -> None:
    request.inputs[0].datatype = "BOOL"
    size = ROWS * FEATURES
    values = np.random.default_rng(12).integers(0, 2, size, dtype=np.uint8)
    values[-1] = 2 if bad else 1
    # A byte a value: 2 MiB, over the threshold still.
    request.raw_input_contents[0] = values.tobytes()


def _classified(request: oip.ModelInferRequest) -> None:
    request.outputs.add(name="predictions").parameters["classification"].int64_param = 2


CASES: dict[str, Callable[[], bytes]] = {
    "15.6 MiB": lambda: _raw().SerializeToString(),
    "FP32 cast to the model's FP64": lambda: _raw(
        2 * ROWS, "FP32", "<f4"
    ).SerializeToString(),
    "INT64 cast": lambda: _raw_with(
        lambda r: setattr(r.inputs[0], "datatype", "INT64")
    ),
    "version, parameters and outputs": lambda: _raw_with(
        lambda r: (
            setattr(r, "model_version", "1"),
            setattr(r.parameters["signature_name"], "string_param", "serving_default"),
            r.outputs.add(name="predictions"),
        )
    ),
    "classification": lambda: _raw_with(_classified),
    "unknown output": lambda: _raw_with(lambda r: r.outputs.add(name="nope")),
    "unknown model": lambda: _raw_with(lambda r: setattr(r, "model_name", "nope")),
    "unknown version": lambda: _raw_with(lambda r: setattr(r, "model_version", "9")),
    "unknown signature": lambda: _raw_with(
        lambda r: setattr(r.parameters["signature_name"], "string_param", "nope")
    ),
    "unknown input": lambda: _raw_with(lambda r: setattr(r.inputs[0], "name", "y")),
    "no input name": lambda: _raw_with(lambda r: setattr(r.inputs[0], "name", "")),
    "bytes short": lambda: _raw_with(
        lambda r: r.inputs[0].shape.__setitem__(0, ROWS + 1)
    ),
    "negative dimension": lambda: _raw_with(
        lambda r: r.inputs[0].shape.__setitem__(0, -1)
    ),
    "unknown datatype": lambda: _raw_with(
        lambda r: setattr(r.inputs[0], "datatype", "FP8")
    ),
    "two raw entries": lambda: _raw_with(lambda r: r.raw_input_contents.append(b"")),
    "BOOL": lambda: _raw_with(lambda r: _bools(r, bad=False)),
    "BOOL byte 2": lambda: _raw_with(lambda r: _bools(r, bad=True)),
    "over the tensor limits": lambda: _raw(4 * ROWS, "UINT8", "u1").SerializeToString(),
    "truncated": lambda: _raw().SerializeToString()[:-5],
    "7.2 MB answer": lambda: _linear().SerializeToString(),
    "7.2 MB answer, typed": lambda: _linear(typed=True).SerializeToString(),
    "7.2 MB answer, the output asked for": lambda: _linear_with(
        lambda r: r.outputs.add(name="predictions")
    ),
    "7.2 MB answer, classified": lambda: _linear_with(_classified),
    "7.2 MB answer, an unknown output": lambda: _linear_with(
        lambda r: r.outputs.add(name="nope")
    ),
    "a shadowed route": lambda: _raw_with(
        lambda r: setattr(r, "model_name", "mirrored")
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_raw_model_infer_is_answered_as_one_parsed_on_the_loop(
    gateways: Gateways, case: str
) -> None:
    data = CASES[case]()
    assert len(data) >= 1024 * 1024
    parsed = grpc_call(gateways.parsing, data, MODEL_INFER)
    assert grpc_call(gateways.forwarding, data, MODEL_INFER) == parsed
    assert grpc_call(gateways.forwarding_grpc, data, MODEL_INFER) == parsed
    if case == "15.6 MiB":
        assert parsed[0] == "OK", parsed[1]
        answer = oip.ModelInferResponse.FromString(parsed[2])
        assert answer.id == "raw"
        assert list(answer.outputs[0].shape) == [ROWS]
        assert len(answer.raw_output_contents[0]) == ROWS * 8
    if case == "7.2 MB answer":
        assert parsed[0] == "OK", parsed[1]
        answer = oip.ModelInferResponse.FromString(parsed[2])
        assert answer.id == "answer"
        assert list(answer.outputs[0].shape) == [ANSWER_ROWS]
        assert len(answer.raw_output_contents[0]) == ANSWER_ROWS * 8


def test_the_backend_gets_the_raw_inputs_as_sent(gateways: Gateways) -> None:
    request = _raw()
    data = request.SerializeToString()
    raw = request.raw_input_contents[0]
    recorder = gateways.forwarded
    recorder.clear()
    outcome = grpc_call(gateways.forwarding, data, MODEL_INFER)
    assert outcome[0] == "OK", outcome[1]
    (sent,) = recorder.predict_messages()
    predict = messages.PredictRequest.FromString(sent)
    assert predict.model_spec.name == "wide"
    tensor = predict.inputs["x"]
    assert tensor.dtype == messages.DT_DOUBLE
    assert [dim.size for dim in tensor.tensor_shape.dim] == [ROWS, FEATURES]
    assert tensor.tensor_content == raw
    # The message ends with the client's bytes: nothing after them to write.
    assert sent.endswith(raw)


def test_a_raw_model_infer_leaves_the_json_workers_idle(gateways: Gateways) -> None:
    gateway = gateways.forwarding
    workers = spawned_workers(gateway.process.pid)
    assert workers, "the gateway started no JSON workers"
    before = sum(cpu_seconds(pid) for pid in workers)
    outcome = grpc_call(gateway, _raw().SerializeToString(), MODEL_INFER)
    assert outcome[0] == "OK", outcome[1]
    # Parsed there, the message took tens of ms of the workers' CPU; spliced,
    # none (idle workers wait on a pipe).
    assert sum(cpu_seconds(pid) for pid in workers) - before == 0.0


@pytest.mark.parametrize("case", ["15.6 MiB", "7.2 MB answer"])
def test_the_forwarding_gateways_loop_spends_less_on_a_large_model_infer(
    gateways: Gateways, case: str
) -> None:
    data = CASES[case]()
    spent: dict[str, list[float]] = {"spliced": [], "parsed": []}
    outcomes = []
    # Alternated, so that a busy spell of the machine falls on both.
    for _ in range(CPU_ROUNDS):
        for name, gateway in (
            ("spliced", gateways.forwarding),
            ("parsed", gateways.parsing),
        ):
            pid = gateway.process.pid
            before = loop_cpu_seconds(pid)
            outcomes.append(grpc_call(gateway, data, MODEL_INFER))
            assert outcomes[-1][0] == "OK", outcomes[-1][1]
            spent[name].append(loop_cpu_seconds(pid) - before)
    totals = {name: sum(seconds) for name, seconds in spent.items()}
    for name, seconds in totals.items():
        record(f"gateway loop CPU s {CPU_ROUNDS} raw ModelInfer ({name})", seconds)
    assert len({outcome[2] for outcome in outcomes}) == 1
    # Both receive the request over HTTP/2 (some 45 ms of loop time a call
    # for 15.6 MiB, most of either's), send it to the backend and send the
    # answer to the client; the parsing gateway also parses the request, makes
    # its arrays, encodes and serializes the Predict again (some 20 ms), and
    # parses the answer, decodes it and builds the ModelInferResponse (the
    # 7.2 MB answer's 900,000 values one Python float each). Measured: 0.41
    # and 0.57 of the parsing gateway's (load average 8-10); a copy or a parse
    # of the message on the loop comes to 0.85 and more. Totals over the
    # rounds, not medians: the clock ticks every 10 ms.
    assert totals["spliced"] < totals["parsed"] * 0.85, spent


def test_large_model_infers_do_not_hold_up_other_clients(gateways: Gateways) -> None:
    gateway = gateways.forwarding
    data = _raw().SerializeToString()
    listener = Listener("gateway HTTP", gateway.http_port, gateway.process, {})
    pid = gateway.process.pid
    memory = PeakMemory(lambda: {pid})
    try:
        with SmallCalls(listener) as small:
            for _ in range(3):
                outcome = grpc_call(gateway, data, MODEL_INFER)
                assert outcome[0] == "OK", outcome[1]
            time.sleep(0.05)
    finally:
        growth = memory.growth()
    record("memory growth MiB (raw ModelInfer)", growth / 2**20)
    small.assert_kept_up(SMALL_CALL_LATENCY, "large raw ModelInfer calls were served")
    assert growth < MEMORY_GROWTH_LIMIT, f"+{growth >> 20} MiB"


STALL_CALLS: dict[str, tuple[Callable[[], bytes], Callable[[], bytes]]] = {
    "15.6 MiB raw ModelInfer": (
        lambda: _raw(rows=1_024).SerializeToString(),
        lambda: _raw().SerializeToString(),
    ),
    "raw ModelInfer, 7.2 MB answer": (
        lambda: _linear(rows=100_000).SerializeToString(),
        lambda: _linear().SerializeToString(),
    ),
}
"""A warm-up message (over the 1 MiB threshold: the first call of a kind
starts what it needs) and the large one."""


@pytest.mark.parametrize("family", list(STALL_CALLS))
def test_a_large_raw_model_infer_does_not_stall_the_gateways_loop(
    gateways: Gateways, family: str
) -> None:
    gateway = gateways.forwarding
    warm, large = STALL_CALLS[family]

    def call(data: bytes) -> None:
        outcome = grpc_call(gateway, data, MODEL_INFER)
        assert outcome[0] == "OK", outcome[1]

    call(warm())
    data = large()
    assert_no_stall(
        gateway.url + "/metrics", "gateway", f"gateway, {family}", lambda: call(data)
    )
