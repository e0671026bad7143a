"""With no room in their shared memory folder, both servers still answer large
calls, through their workers' pipe, exactly as servers with room do.

Each service is started twice on the same registry: once as usual, and once
with ``--shared_memory_dir`` / ``--shared-memory-dir`` naming a folder of the
test's own and a file size limit (``RLIMIT_FSIZE``, see
:func:`tests.support.processes.file_size_limited`) below every segment the
calls need. A segment's ``write`` then fails part way with ``EFBIG``, the
``OSError`` a full ``/dev/shm`` gives as ``ENOSPC``, caught by the same
``except OSError`` of each path (the warnings below quote the error, so the
test knows which branch ran). The limit needs no privilege and no tmpfs of
the test's own, so the test runs on any CI machine.

Each call is made on both stacks: the same status, message and bytes; the
servers without room log one warning line per fallback (JSON, with the error
and the folder), the others none; no segment is left in the folders once the
call is over; both processes stay up.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from modelregistry.layout import SERVEKIT_CONFIG_FILE
from servekit_protocol import messages
from servekit_protocol import oip_messages as oip

from tests.security.forwarding_stack import Outcome, grpc_call
from tests.security.loopstall import assert_no_stall
from tests.security.stack import assert_no_traceback
from tests.security.test_gateway_infer_segments import _bytes_infer, _typed_infer
from tests.security.test_gateway_large_grpc import MODEL_INFER
from tests.security.test_large_grpc import (
    FEATURES,
    PREDICT,
    predict_request,
    publish_wide_model,
)
from tests.security.test_loop_stalls import _small_predict_message, publish_line_model
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import (
    METRICS_PATH,
    ModelServer,
    model_server,
    write_monitoring_config,
)
from tests.support.pipelines import publish_classifier
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.integration

FILE_SIZE_LIMIT = 2 * 1024 * 1024
"""Largest file the servers without room may write: every segment of the
calls below is at least 8 MiB, while their logs stay under 100 KiB."""
MESSAGE_LIMIT = 128 * 1024 * 1024
"""gRPC message and body limit of all four servers (above the 96 MiB
ModelInfer whose lag is bounded)."""
PREDICT_ROWS = 8_192
"""Rows of the large Predict: 16 MiB of ``double_val``, answered with 8,192
values (under the answer threshold, so only the message takes the pipe)."""
ANSWER_ROWS = 2 * 1024 * 1024
"""Rows of the large answer to a few-byte Predict: 16 MiB of doubles."""
JSON_ROWS = 2_048
"""Rows of the large REST ``:predict`` body: about 10 MiB of JSON, answered
with 2,048 values (an answer written in place)."""
CLASSIFY_EXAMPLES = 150_000
"""Examples of the large REST ``:classify`` body: about 5 MiB of JSON, answered
with 150,000 results of ten classes (6 MiB of scores)."""
REGRESS_EXAMPLES = 600_000
"""Examples of the large REST ``:regress`` body: about 20 MiB of JSON,
answered with 600,000 values (2.3 MiB of float32, over the file size limit)."""
NARROW_ROWS = 6_144
"""Rows of the Predict whose message fits its segment (1.5 MiB of one-byte
``int64_val`` values, under the file size limit and over the offload
threshold) while its arrays do not (12 MiB of int64)."""
NARROW_JSON_ROWS = 3_072
"""Rows of the REST ``:predict`` body whose body fits its segment (1.5 MiB of
one-digit values, under the file size limit and over the body threshold)
while its arrays do not (6 MiB of doubles)."""
LAG_ROWS = 24_576
"""Rows of the Predict whose lag is bounded: 48 MiB of ``double_val`` (under
the message limit), answered with 24,576 values."""
TYPED_ROWS = 8_192
"""Rows of the typed ModelInfer: 16 MiB of ``fp64_contents``, which the gateway
encodes as a 16 MiB Predict for the model server."""
SETTLE_SECONDS = 30.0
"""Most time the servers may take to remove a call's segments after
answering: threads unlink them (milliseconds on an idle machine; the margin
is for a loaded 2-core runner)."""

ERRNO_TEXT = "[Errno 27] File too large"
"""How the server-side warnings quote the failed ``write`` (``EFBIG``)."""
MESSAGE_WARNING = "A large gRPC message went through the worker pipe (the message"
ARRAYS_WARNING = (
    "A large answer's arrays went to its worker through a pipe of their own"
)
ANSWER_WARNING = "A large answer came back from its worker through a pipe of its own"
BODY_WARNING = "A large request body went to its worker through a pipe of its own"
BODY_ARRAYS_WARNING = (
    "A large request body's arrays came back from their worker through a pipe "
    "of their own"
)
EXAMPLES_WARNING = (
    "A large body's examples came back from their worker through a pipe of their own"
)
MESSAGE_ARRAYS_WARNING = (
    "A large gRPC message's arrays came back from their worker through a pipe "
    "of their own"
)
INFER_WARNING = "A large ModelInfer message goes to a worker through its pipe"
GRPC_REQUEST_ID = "large-grpc"
"""The ``x-request-id`` of every gRPC call (:func:`grpc_call`)."""
REST_REQUEST_ID = "large-rest"
"""The ``x-request-id`` of every REST call."""


@dataclass(frozen=True)
class Stack:
    """A model server and a gateway in front of it."""

    server: ModelServer
    gateway: GatewayProcess
    folders: tuple[Path, ...] = ()
    """Their shared memory folders, when the test gave them ones."""


Call = Callable[[Stack], Outcome]
"""One call on a stack, and what it answered."""


@dataclass(frozen=True)
class Stacks:
    roomy: Stack
    tight: Stack


@contextlib.contextmanager
def _stack(registry: Path, folder: Path, shared_memory: Path | None) -> Iterator[Stack]:
    """The stack logging to ``folder``; with ``shared_memory``, its two
    servers get folders in it and the file size limit."""
    folder.mkdir(parents=True, exist_ok=True)
    server_flags = [
        f"--model_config_file={registry / SERVEKIT_CONFIG_FILE}",
        f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
        f"--monitoring_config_file={write_monitoring_config(folder)}",
    ]
    gateway_flags = [f"--max-body-bytes={MESSAGE_LIMIT}"]
    folders: tuple[Path, ...] = ()
    limit = None
    if shared_memory is not None:
        folders = (shared_memory / "model-server", shared_memory / "gateway")
        for made in folders:
            made.mkdir(parents=True)
        server_flags.append(f"--shared_memory_dir={folders[0]}")
        gateway_flags.append(f"--shared-memory-dir={folders[1]}")
        limit = FILE_SIZE_LIMIT
    with model_server(
        server_flags, log_path=folder / "model-server.log", file_size_limit=limit
    ) as server:
        rest = f'{{"{server.grpc_target}": "127.0.0.1:{server.rest_port}"}}'
        with running_gateway(
            folder / "gateway",
            env={"GATEWAY_REGISTRY": str(registry)},
            flags=[
                f"--default-backend={server.grpc_target}",
                f"--rest-backends={rest}",
                *gateway_flags,
            ],
            file_size_limit=limit,
        ) as gateway:
            yield Stack(server, gateway, folders)
            assert_no_traceback(gateway.process)
        assert_no_traceback(server.process)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stacks]:
    directory = tmp_path_factory.mktemp("no-room")
    registry = directory / "models"
    publish_wide_model(registry, "wide")
    publish_line_model(registry, "line")
    publish_classifier(registry, "classifier")
    publish_linear_pipeline(registry, "linear")
    roomy = _stack(registry, directory / "roomy", None)
    tight = _stack(registry, directory / "tight", directory / "shared-memory")
    with contextlib.ExitStack() as running:
        yield Stacks(running.enter_context(roomy), running.enter_context(tight))


def _warnings(process: ServerProcess, since: int) -> list[dict[str, Any]]:
    """The JSON warning lines ``process`` logged from byte ``since``."""
    lines = process.log_path.read_bytes()[since:].decode(errors="replace")
    found = []
    for line in lines.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("level") == "WARNING":
                found.append(record)
    return found


def _log_size(process: ServerProcess) -> int:
    return process.log_path.stat().st_size


def _leftovers(folders: tuple[Path, ...]) -> list[str]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        left = [path.name for folder in folders for path in folder.iterdir()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _grpc(method: str, data: Callable[[], bytes], on: str) -> Call:
    def call(stack: Stack) -> Outcome:
        target = stack.server.grpc_target if on == "server" else stack.gateway
        return grpc_call(target, data(), method, timeout=120)

    return call


def _rest(path: str, body: Callable[[], bytes]) -> Call:
    def call(stack: Stack) -> Outcome:
        answer = httpx.post(
            f"{stack.server.rest_url}/v1/models/{path}",
            content=body(),
            headers={
                "content-type": "application/json",
                "x-request-id": REST_REQUEST_ID,
            },
            timeout=120,
        )
        status = "OK" if answer.status_code == 200 else str(answer.status_code)
        return status, answer.headers["content-type"], answer.content

    return call


def _predict_body() -> bytes:
    values = np.random.default_rng(5).normal(size=(JSON_ROWS, FEATURES))
    return orjson.dumps({"instances": values}, option=orjson.OPT_SERIALIZE_NUMPY)


def _narrow_predict_body() -> bytes:
    values = np.random.default_rng(8).integers(0, 10, (NARROW_JSON_ROWS, FEATURES))
    return orjson.dumps({"instances": values}, option=orjson.OPT_SERIALIZE_NUMPY)


def _examples_body(examples: int) -> Callable[[], bytes]:
    def body() -> bytes:
        rows = np.random.default_rng(6).normal(size=(examples, 2)).tolist()
        return orjson.dumps({"examples": [{"a": [a], "b": [b]} for a, b in rows]})

    return body


def _narrow_predict() -> bytes:
    request = messages.PredictRequest()
    request.model_spec.name = "wide"
    tensor = request.inputs["x"]
    tensor.dtype = messages.DT_INT64
    tensor.tensor_shape.dim.add(size=NARROW_ROWS)
    tensor.tensor_shape.dim.add(size=FEATURES)
    values = np.random.default_rng(7).integers(0, 100, NARROW_ROWS * FEATURES)
    tensor.int64_val.extend(values.tolist())
    return request.SerializeToString()


def _small_predict() -> bytes:
    return _small_predict_message(ANSWER_ROWS)


@dataclass(frozen=True)
class Case:
    call: Call
    server_warnings: tuple[str, ...]
    """What the model server without room warns, once each."""
    gateway_warnings: tuple[str, ...] = ()
    """What the gateway without room warns, once each."""
    request_id: str = GRPC_REQUEST_ID
    """The request id the client sent, which every warning names."""


CASES: dict[str, Case] = {
    "16 MiB gRPC Predict": Case(
        _grpc(
            PREDICT, lambda: predict_request(PREDICT_ROWS).SerializeToString(), "server"
        ),
        (MESSAGE_WARNING,),
    ),
    "1.5 MiB gRPC Predict with 12 MiB of arrays": Case(
        _grpc(PREDICT, _narrow_predict, "server"), (MESSAGE_ARRAYS_WARNING,)
    ),
    "16 MiB answer to a small gRPC Predict": Case(
        _grpc(PREDICT, _small_predict, "server"), (ARRAYS_WARNING, ANSWER_WARNING)
    ),
    "10 MiB REST :predict body": Case(
        _rest("wide:predict", _predict_body),
        (BODY_WARNING,),
        request_id=REST_REQUEST_ID,
    ),
    "1.5 MiB REST :predict body with 6 MiB of arrays": Case(
        _rest("wide:predict", _narrow_predict_body),
        (BODY_ARRAYS_WARNING,),
        request_id=REST_REQUEST_ID,
    ),
    "5 MiB REST :classify body": Case(
        _rest("classifier:classify", _examples_body(CLASSIFY_EXAMPLES)),
        (BODY_WARNING, EXAMPLES_WARNING, ARRAYS_WARNING, ANSWER_WARNING),
        request_id=REST_REQUEST_ID,
    ),
    "20 MiB REST :regress body": Case(
        _rest("linear:regress", _examples_body(REGRESS_EXAMPLES)),
        (BODY_WARNING, EXAMPLES_WARNING, ARRAYS_WARNING, ANSWER_WARNING),
        request_id=REST_REQUEST_ID,
    ),
    "16 MiB gRPC Predict through the gateway": Case(
        _grpc(
            PREDICT,
            lambda: predict_request(PREDICT_ROWS).SerializeToString(),
            "gateway",
        ),
        (MESSAGE_WARNING,),
    ),
    "16 MiB typed ModelInfer through the gateway": Case(
        _grpc(MODEL_INFER, lambda: _typed_infer(TYPED_ROWS), "gateway"),
        (MESSAGE_WARNING,),
        (INFER_WARNING,),
    ),
    # The backend's Predict keeps the values as strings (DT_STRING, cast by
    # the model server): a 14 MiB message there too.
    "14 MiB BYTES ModelInfer through the gateway": Case(
        _grpc(MODEL_INFER, lambda: _bytes_infer().SerializeToString(), "gateway"),
        (MESSAGE_WARNING,),
        (INFER_WARNING,),
    ),
}


def _assert_warned(
    found: list[dict[str, Any]],
    expected: tuple[str, ...],
    folder: Path,
    request_id: str,
) -> None:
    messages = [str(record["message"]) for record in found]
    assert len(messages) == len(expected), messages
    # Every server line names its call (the gateway passes the client's id on
    # to the model server).
    assert [record.get("request_id") for record in found] == [request_id] * len(
        found
    ), found
    for text in expected:
        [message] = [message for message in messages if message.startswith(text)]
        # The folder the server was given, and the error of the write when the
        # server's side made it (the worker's side only says there was none).
        assert str(folder) in message, message
        if text not in (
            ANSWER_WARNING,
            EXAMPLES_WARNING,
            MESSAGE_ARRAYS_WARNING,
            BODY_ARRAYS_WARNING,
        ):
            assert ERRNO_TEXT in message, message


@pytest.mark.parametrize("case", list(CASES))
def test_a_large_call_without_room_is_answered_as_one_with_room(
    stacks: Stacks, case: str
) -> None:
    tight = stacks.tight
    call = CASES[case]
    server_since = _log_size(tight.server.process)
    gateway_since = _log_size(tight.gateway.process)
    roomy_since = (
        _log_size(stacks.roomy.server.process),
        _log_size(stacks.roomy.gateway.process),
    )
    expected = call.call(stacks.roomy)
    assert expected[0] == "OK", expected[:2]
    assert call.call(tight) == expected
    _assert_warned(
        _warnings(tight.server.process, server_since),
        call.server_warnings,
        tight.folders[0],
        call.request_id,
    )
    _assert_warned(
        _warnings(tight.gateway.process, gateway_since),
        call.gateway_warnings,
        tight.folders[1],
        call.request_id,
    )
    assert _warnings(stacks.roomy.server.process, roomy_since[0]) == []
    assert _warnings(stacks.roomy.gateway.process, roomy_since[1]) == []
    assert _leftovers(tight.folders) == []
    for process in (tight.server.process, tight.gateway.process):
        assert process.popen.poll() is None, process.log_tail()


def test_a_large_message_without_room_does_not_hold_the_model_servers_loop(
    stacks: Stacks,
) -> None:
    """The message goes to its worker, and its arrays come back, through
    pipes of their own, copied without the GIL (pickled through the pool's
    pipe, a 256 MiB message made the loop wait 90-960 ms at load 8-10): its
    lag is bounded as a message's through segments is
    (:func:`tests.security.loopstall.lag_limit`)."""
    server = stacks.tight.server
    data = predict_request(LAG_ROWS).SerializeToString()

    def call() -> None:
        options = [("grpc.max_send_message_length", MESSAGE_LIMIT)]
        with grpc.insecure_channel(server.grpc_target, options=options) as channel:
            answer = channel.unary_unary(PREDICT)(
                data, timeout=120, metadata=(("x-request-id", GRPC_REQUEST_ID),)
            )
        predictions = messages.PredictResponse.FromString(answer).outputs
        assert len(predictions["predictions"].double_val) == LAG_ROWS

    # The first call of a size starts what it needs (the descriptor sharer's
    # thread, memory the workers keep).
    call()
    since = _log_size(server.process)
    assert_no_stall(
        server.rest_url + METRICS_PATH,
        "modelserver",
        "model server without room, 48 MiB gRPC Predict",
        call,
        bound_lag=True,
    )
    _assert_warned(
        _warnings(server.process, since),
        (MESSAGE_WARNING,),
        stacks.tight.folders[0],
        GRPC_REQUEST_ID,
    )
    assert _leftovers(stacks.tight.folders) == []


INFER_LAG_CALLS: dict[str, tuple[int, Callable[[], bytes]]] = {
    "typed": (49_152, lambda: _typed_infer(49_152)),
    "BYTES": (384, lambda: _bytes_infer(384).SerializeToString()),
}
"""The ModelInfers whose lag is bounded, by kind: rows, message (96 MiB of
``fp64_contents``, or of 1 KiB BYTES values, under the message limit)."""


@pytest.mark.parametrize("kind", list(INFER_LAG_CALLS))
def test_a_large_model_infer_without_room_does_not_hold_the_gateways_loop(
    stacks: Stacks, kind: str
) -> None:
    """Message to the workers, Predict back, through pipes of their own: busy
    and lag bounded as through segments. The road before (the message copied
    on the loop and pickled, the Predict unpickled) failed it twice at load
    9-11 (busy 75-100 ms, lag 100-150 ms); now busy <= 20 ms, lag 15-50 ms."""
    gateway = stacks.tight.gateway
    rows, make = INFER_LAG_CALLS[kind]
    data = make()

    def call() -> None:
        options = [("grpc.max_send_message_length", MESSAGE_LIMIT)]
        with grpc.insecure_channel(gateway.grpc_target, options=options) as channel:
            answer = channel.unary_unary(MODEL_INFER)(
                data, timeout=120, metadata=(("x-request-id", GRPC_REQUEST_ID),)
            )
        outputs = oip.ModelInferResponse.FromString(answer).outputs
        assert [output.shape[0] for output in outputs] == [rows]

    call()  # starts what the calls need (memory the workers keep)
    since = _log_size(gateway.process)
    assert_no_stall(
        gateway.url + "/metrics",
        "gateway",
        f"gateway without room, 96 MiB {kind} ModelInfer",
        call,
        bound_lag=True,
    )
    _assert_warned(
        _warnings(gateway.process, since),
        (INFER_WARNING,),
        stacks.tight.folders[1],
        GRPC_REQUEST_ID,
    )
    assert _leftovers(stacks.tight.folders) == []
