"""Large ModelInfer messages with typed contents or BYTES go to the gateway's
JSON workers through shared memory segments, never through the pool's pipe.

Through the pipe, the gateway copied and pickled the message, and unpickled
the encoded Predict, holding the GIL (and so its event loop) about 160 ms at
64 MiB (``python -m benchmarks.grpcparse --target gateway --method infer``).
The tests see the segments the gateway makes (named for its process id in
:func:`~servekit_protocol.segments.default_directory`) while it answers, find none
left once it has answered, errors and abandoned calls included, and check
that BYTES inputs answer as a gateway parsing every message on its loop
answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from servekit_protocol import oip_messages as oip
from servekit_protocol.segments import default_directory

from tests.security.forwarding_stack import BODY_LIMIT, Gateways, grpc_call
from tests.security.test_gateway_large_grpc import MODEL_INFER
from tests.security.test_large_grpc import FEATURES
from tests.support.gateway import GatewayProcess
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

ENTRY_BYTES = 1024
"""Bytes of each BYTES value: a number padded with zeros, which the backend's
cast to ``wide``'s FP64 reads as the number."""
BYTES_ROWS = 56
"""Rows of 256 BYTES values in the large request: 14 MiB, under the 16 MiB
body limit."""
REMOVAL_SECONDS = 10.0
"""Most the gateway may take to remove a call's segments once it has answered
(a thread unlinks them; a few ms on an idle machine)."""
ABANDON_SECONDS = 0.05
"""The abandoned call's deadline: about as long as the message takes to
arrive, far short of the workers' parse of it (over 100 ms for 13.7 MiB of
``fp64_contents`` on an idle machine)."""
POLL_SECONDS = 0.002
"""How often the watcher lists the segments while a call runs: the message's
segment lives from the message's arrival to the answer (hundreds of ms for
15 MiB), so a 2 ms poll cannot miss it."""


def _bytes_infer(
    rows: int = BYTES_ROWS, values: list[bytes] | None = None
) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="wide", id="large")
    tensor = request.inputs.add(name="x", datatype="BYTES", shape=[rows, FEATURES])
    if values is None:
        numbers = np.random.default_rng(11).normal(size=rows * FEATURES)
        values = [f"{value:.6f}".encode().ljust(ENTRY_BYTES, b"0") for value in numbers]
    tensor.contents.bytes_contents.extend(values)
    return request


def _typed_infer(rows: int = 7_000) -> bytes:
    request = oip.ModelInferRequest(model_name="wide", id="large")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[rows, FEATURES])
    tensor.contents.fp64_contents.extend(
        np.random.default_rng(12).normal(size=rows * FEATURES)
    )
    return request.SerializeToString()


def _with(change: Callable[[oip.ModelInferRequest], None]) -> bytes:
    request = _bytes_infer()
    change(request)
    return request.SerializeToString()


def _not_a_number(request: oip.ModelInferRequest) -> None:
    request.inputs[0].contents.bytes_contents[5] = b"x" * ENTRY_BYTES


BYTES_CASES: dict[str, Callable[[], bytes]] = {
    "14 MiB BYTES": lambda: _bytes_infer().SerializeToString(),
    "a value short": lambda: _with(lambda r: r.inputs[0].contents.bytes_contents.pop()),
    "a value not a number": lambda: _with(_not_a_number),
    "unknown model": lambda: _with(lambda r: setattr(r, "model_name", "nope")),
    "FP64 in bytes_contents": lambda: _with(
        lambda r: setattr(r.inputs[0], "datatype", "FP64")
    ),
    "classification": lambda: _with(
        lambda r: setattr(
            r.outputs.add(name="predictions").parameters["classification"],
            "int64_param",
            2,
        )
    ),
}


@pytest.mark.parametrize("case", list(BYTES_CASES))
def test_a_large_bytes_model_infer_is_answered_as_one_parsed_on_the_loop(
    gateways: Gateways, case: str
) -> None:
    data = BYTES_CASES[case]()
    assert 1024 * 1024 <= len(data) <= BODY_LIMIT
    parsed = grpc_call(gateways.parsing, data, MODEL_INFER)
    assert grpc_call(gateways.forwarding, data, MODEL_INFER) == parsed
    assert grpc_call(gateways.forwarding_grpc, data, MODEL_INFER) == parsed
    if case == "14 MiB BYTES":
        assert parsed[0] == "OK", parsed[1]
        answer = oip.ModelInferResponse.FromString(parsed[2])
        assert answer.id == "large"
        assert list(answer.outputs[0].shape) == [BYTES_ROWS]


def _segments_of(gateway: GatewayProcess) -> set[str]:
    prefix = f"servekit-{gateway.process.pid}-"
    return {path.name for path in Path(default_directory()).glob(prefix + "*")}


def _seen_during(gateway: GatewayProcess, call: Callable[[], object]) -> set[str]:
    """The gateway's segments listed while ``call`` runs."""
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(_segments_of(gateway))
            time.sleep(POLL_SECONDS)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        call()
    finally:
        done.set()
        watcher.join()
    return seen


def _all_removed(gateway: GatewayProcess) -> None:
    wait_until(
        lambda: not _segments_of(gateway),
        timeout=REMOVAL_SECONDS,
        what="the gateway's shared memory segments removed",
    )


SEGMENT_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "typed": (_typed_infer, "OK"),
    "BYTES": (lambda: _bytes_infer().SerializeToString(), "OK"),
    "BYTES, a value short": (BYTES_CASES["a value short"], "INVALID_ARGUMENT"),
    "typed, truncated": (lambda: _typed_infer()[:-9], "INTERNAL"),
}


@pytest.mark.parametrize("case", list(SEGMENT_CASES))
def test_the_message_goes_to_the_workers_through_shared_memory(
    gateways: Gateways, case: str
) -> None:
    make, status = SEGMENT_CASES[case]
    data = make()
    gateway = gateways.forwarding
    _all_removed(gateway)
    outcome: list[tuple[str, str, bytes]] = []
    seen = _seen_during(
        gateway, lambda: outcome.append(grpc_call(gateway, data, MODEL_INFER))
    )
    assert outcome[0][0] == status, outcome[0][1]
    assert any(name.endswith("-infer") for name in seen), seen
    if status == "OK":
        # The encoded Predict came back through a segment of its own.
        assert any(name.endswith("-predict") for name in seen), seen
    _all_removed(gateway)


def test_an_abandoned_call_leaves_no_segment(gateways: Gateways) -> None:
    gateway = gateways.forwarding
    data = _typed_infer()
    _all_removed(gateway)
    # The client gives up while the gateway is still at the message; the
    # workers finish it, and the segments go all the same.
    outcome = grpc_call(gateway, data, MODEL_INFER, timeout=ABANDON_SECONDS)
    assert outcome[0] == "DEADLINE_EXCEEDED", outcome
    _all_removed(gateway)
    answered = grpc_call(gateway, data, MODEL_INFER)
    assert answered[0] == "OK", answered[1]
    _all_removed(gateway)
