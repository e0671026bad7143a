"""Hostile bodies against both services: compression bombs, tensor-declaration
bombs (a tiny PredictRequest declaring gigabytes), JSON nested deeper than any
parser's stack, over-long numbers and 5,000-digit versions in URLs.

Each is answered with the right status and TF Serving's ``{"error"}`` body (or the
gRPC status), the server's memory grows by less than a stated figure, and its log
holds no traceback.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable

import grpc
import httpx
import pytest
from servekit_protocol import grpcweb, messages
from servekit_protocol.services import PredictionServiceStub

from tests.security.figures import record
from tests.security.stack import (
    MAX_BODY_BYTES,
    PREDICT_PATH,
    Listener,
    Stack,
    assert_no_traceback,
    rss_bytes,
    timed_predict,
)

pytestmark = pytest.mark.integration

BOMB_INFLATED = 256 * 1024 * 1024
"""What each compression bomb inflates to (its body is about 250 KiB)."""
BOMB_MEMORY_LIMIT = 64 * 1024 * 1024
"""Resident memory a server may gain answering the bombs (the body limit is
4 MiB; before the cap, one bomb cost +0.5 GB)."""
BOMB_ANSWER_SECONDS = 2.0
"""Seconds a bomb's 413 may take (inflation stops one step past the limit)."""
TENSOR_MEMORY_LIMIT = 32 * 1024 * 1024
"""Resident memory a server may gain refusing the tensor bombs (each declares
256 MiB)."""
NORMAL_CALL_LATENCY = 2.0
"""Seconds a normal call may take meanwhile (a loaded 2-core machine)."""


@pytest.fixture(params=["model server REST", "gateway HTTP"])
def listener(listener_stack: Stack, request: pytest.FixtureRequest) -> Listener:
    return next(
        each for each in listener_stack.listeners() if each.name == request.param
    )


def _bomb(wbits: int) -> bytes:
    # Streamed, so the test itself never holds the inflated size.
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(1 << 20)
    parts = [compressor.compress(zeros) for _ in range(BOMB_INFLATED >> 20)]
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"gzip": _bomb(zlib.MAX_WBITS | 16), "deflate": _bomb(zlib.MAX_WBITS)}


def test_compression_bombs_stop_at_the_body_limit(
    listener: Listener, bombs: dict[str, bytes]
) -> None:
    before = rss_bytes(listener.process.pid)
    for coding, body in bombs.items():
        assert len(body) < 300 * 1024
        for _ in range(3):
            started = time.perf_counter()
            answer = httpx.post(
                listener.url + PREDICT_PATH,
                content=body,
                headers={
                    "content-type": "application/json",
                    "content-encoding": coding,
                    **listener.headers,
                },
                timeout=30,
            )
            assert time.perf_counter() - started < BOMB_ANSWER_SECONDS
            assert answer.status_code == 413, answer.text
            assert str(MAX_BODY_BYTES) in answer.json()["error"]
    grown = rss_bytes(listener.process.pid) - before
    record("VmRSS growth MiB", grown / 1024 / 1024)
    assert grown < BOMB_MEMORY_LIMIT, grown
    status, seconds = timed_predict(listener.url, listener.headers)
    assert status == 200
    assert seconds < NORMAL_CALL_LATENCY
    assert_no_traceback(listener.process)


def _json_bombs() -> dict[str, tuple[str, str, bytes | None]]:
    deep = b"[" * 2000 + b"]" * 2000
    return {
        "array nested 2,000 deep": (
            "POST",
            PREDICT_PATH,
            b'{"instances": ' + deep + b"}",
        ),
        "object nested 2,000 deep": (
            "POST",
            PREDICT_PATH,
            b'{"instances": [' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"]}",
        ),
        "array nested 900 deep": (
            "POST",
            PREDICT_PATH,
            b'{"inputs": {"a": ' + b"[" * 900 + b"1" + b"]" * 900 + b', "b": [1]}}',
        ),
        "classify nested 2,000 deep": (
            "POST",
            "/v1/models/linear:classify",
            b'{"examples": [{"a": ' + deep + b"}]}",
        ),
        "5,000-digit number": (
            "POST",
            PREDICT_PATH,
            b'{"instances": [{"a": 1' + b"0" * 5000 + b', "b": 1}]}',
        ),
        "4,000-digit integer": (
            "POST",
            PREDICT_PATH,
            b'{"instances": [{"a": 1' + b"0" * 4000 + b', "b": 1}]}',
        ),
        "5,000-digit version": (
            "GET",
            "/v1/models/linear/versions/" + "9" * 5000,
            None,
        ),
        "5,000-digit version predict": (
            "POST",
            "/v1/models/linear/versions/" + "9" * 5000 + ":predict",
            b'{"instances": [{"a": 1, "b": 1}]}',
        ),
        "20-digit version": ("GET", "/v1/models/linear/versions/" + "9" * 20, None),
    }


@pytest.mark.parametrize("case", list(_json_bombs()))
def test_malformed_json_and_urls_answer_4xx_with_an_error_body(
    listener: Listener, case: str
) -> None:
    method, path, body = _json_bombs()[case]
    answer = httpx.request(
        method,
        listener.url + path,
        content=body,
        headers={"content-type": "application/json", **listener.headers},
        timeout=30,
    )
    assert answer.status_code in (400, 404), answer.text
    error = answer.json()["error"]
    assert isinstance(error, str)
    assert error
    assert_no_traceback(listener.process)


def _tensor_bomb() -> messages.PredictRequest:
    """About 130 bytes declaring four float tensors of 2^24 elements (256 MiB)."""
    request = messages.PredictRequest()
    request.model_spec.name = "linear"
    for name in ("a", "b", "c", "d"):
        tensor = request.inputs[name]
        tensor.dtype = messages.DT_FLOAT
        tensor.tensor_shape.dim.add(size=1 << 24)
        tensor.float_val.append(1.0)
    return request


def _grpc_predict(target: str, key: str | None) -> Callable[[], grpc.RpcError]:
    def call() -> grpc.RpcError:
        metadata = (("x-api-key", key),) if key else ()
        with grpc.insecure_channel(target) as channel:
            try:
                PredictionServiceStub(channel).Predict(
                    _tensor_bomb(), timeout=10, metadata=metadata
                )
            except grpc.RpcError as error:
                return error
        raise AssertionError("the tensor bomb was served")

    return call


def test_a_tiny_predict_request_declaring_gigabytes_is_refused(
    listener_stack: Stack,
) -> None:
    assert _tensor_bomb().ByteSize() < 160
    server, gateway = listener_stack.model_server, listener_stack.gateway
    attacks = [
        (server.process, _grpc_predict(server.grpc_target, None)),
        (
            gateway.process,
            _grpc_predict(gateway.grpc_target, listener_stack.keys.admin),
        ),
    ]
    for process, attack in attacks:
        before = rss_bytes(process.pid)
        for _ in range(4):
            error = attack()
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
            assert "67108864 elements" in (error.details() or "")
        grown = rss_bytes(process.pid) - before
        record("VmRSS growth MiB", grown / 1024 / 1024)
        assert grown < TENSOR_MEMORY_LIMIT, grown
        assert_no_traceback(process)


def test_the_same_bomb_over_grpc_web_is_refused(listener: Listener) -> None:
    before = rss_bytes(listener.process.pid)
    for _ in range(4):
        answer = httpx.post(
            listener.url + "/tensorflow.serving.PredictionService/Predict",
            content=grpcweb.frame(_tensor_bomb().SerializeToString()),
            headers={
                "content-type": "application/grpc-web+proto",
                "x-grpc-web": "1",
                **listener.headers,
            },
            timeout=30,
        )
        assert answer.status_code == 200
        status = answer.headers.get("grpc-status")
        message = answer.headers.get("grpc-message", "")
        if status is None:
            _, trailers = grpcweb.response_parts(answer.content)
            status = trailers.get("grpc-status")
            message = trailers.get("grpc-message", "")
        assert status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
        assert "67108864" in grpcweb.decode_status_message(message)
    grown = rss_bytes(listener.process.pid) - before
    record("VmRSS growth MiB", grown / 1024 / 1024)
    assert grown < TENSOR_MEMORY_LIMIT, grown
    assert_no_traceback(listener.process)
