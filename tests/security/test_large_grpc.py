"""Large gRPC ``Predict`` messages against the model server's gRPC port.

protobuf's parser holds the GIL for the whole message (about 1 ms a MiB) and
decoding the tensors into arrays about half as much again, so a message parsed
on the event loop holds up every other client for that long. From
``--grpc_parse_offload_bytes`` up the model server parses it in a worker
process. The attack sends a 128 MiB PredictRequest from a separate process
(so that this process's GIL is not what the small calls wait for) while a gRPC
client and a REST client call over and over on their own connections, and
asserts that none of the small calls waited more than :data:`SMALL_CALL_LATENCY`,
that the large call is answered correctly, and that the server's resident
memory grew by less than :data:`MEMORY_GROWTH_LIMIT`. A second server parsing
every message in place answers the same requests byte for byte, errors
included. The shared memory segment of an ended process, left before the
servers start, is gone once they have started.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from servekit_protocol import messages
from servekit_protocol.segments import default_directory

from tests.security.figures import record
from tests.security.stack import assert_no_traceback, rss_bytes
from tests.support.models import publish_regression
from tests.support.modelserver import ModelServer, model_server
from tests.support.processes import spawned_workers

pytestmark = pytest.mark.integration

PREDICT = "/tensorflow.serving.PredictionService/Predict"
MESSAGE_LIMIT = 160 * 1024 * 1024
"""The servers' ``--grpc_max_message_bytes``: room for the large message."""
FEATURES = 256
"""Columns of the test model's one input, so that a large request has a small
answer (writing a large answer is the event loop's, and not what is tested)."""
LARGE_ROWS = 65_536
"""Rows of the large request: 65,536 x 256 ``double_val`` values, 128 MiB. In
place, its parse and arrays hold the loop about 0.6 s on a quiet 2-core machine
(0.31 s measured for half of it at load average 4)."""
SMALL_CALL_LATENCY = 0.5
"""Most a small gRPC or REST call may take while the large message is handled.
They take 2-5 ms; with the message offloaded the worst of hundreds took 56-210 ms
(load average 4.5-7.6 on 2 cores shared with the sender, the server's HTTP/2
reads and the worker's parse). Parsed in place, the worst took 748 ms at load
average 5; the memory bound below tells the two apart without timing too."""
MEMORY_GROWTH_LIMIT = 320 * 1024 * 1024
"""Most the server's resident memory may grow while it takes the 128 MiB
message: the received body and the decoded arrays (128 MiB each) and the
answer. Parsed in place, the body's copy and the parsed message come on top."""
OFFLOAD_BYTES = 1024 * 1024
"""The offloading server's threshold (the default)."""


def publish_wide_model(registry: Path, name: str) -> np.ndarray[Any, Any]:
    """A linear regression on one ``[-1, FEATURES]`` input ``x``; its weights
    (the intercept last), to compute the expected answers."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(3)
    features = rng.normal(size=(512, FEATURES))
    weights = rng.normal(size=FEATURES)
    model = LinearRegression().fit(features, features @ weights + 0.5)
    publish_regression(registry, name, model, FEATURES, {"r2": 1.0})
    return np.append(model.coef_, model.intercept_)


def large_values(rows: int = LARGE_ROWS) -> np.ndarray[Any, Any]:
    """The values of a request of ``rows`` rows, flat."""
    return np.random.default_rng(11).normal(size=rows * FEATURES)


def predict_request(rows: int) -> messages.PredictRequest:
    """A request of ``rows`` rows for the wide model, values in ``double_val``
    (the costliest encoding to parse)."""
    request = messages.PredictRequest()
    request.model_spec.name = "wide"
    tensor = request.inputs["x"]
    tensor.dtype = messages.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=FEATURES)
    tensor.double_val.extend(large_values(rows))
    return request


def send_large(target: str, rows: int, pipe: Connection) -> None:
    """Build the large request, say so, wait for the go, call and send back
    (seconds, status name, answer bytes). Runs in its own process."""
    data = predict_request(rows).SerializeToString()
    options = [("grpc.max_send_message_length", MESSAGE_LIMIT)]
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(PREDICT)
        pipe.send(len(data))
        pipe.recv()
        started = time.perf_counter()
        try:
            answer = call(data, timeout=120)
            outcome = ("OK", answer)
        except grpc.RpcError as exc:
            outcome = (exc.code().name, exc.details().encode())
        pipe.send((time.perf_counter() - started, *outcome))


@dataclass
class Servers:
    offloading: ModelServer
    in_place: ModelServer
    weights: np.ndarray[Any, Any]
    leftover: Path
    """A segment named for a process that has ended, made before the servers
    started (as a server killed while a worker decoded would leave it)."""
    live_segment: Path
    """A segment named for this (running) test process, made alongside."""


LEFTOVER_BYTES = 3 * 1024 * 1024


def _segment_of(pid: int) -> Path:
    return Path(default_directory()) / (
        f"servekit-{pid}-{secrets.token_hex(8)}-message"
    )


def _ended_process_id() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Two model servers on the wide model: one parsing messages from 1 MiB up
    in its workers, one parsing every message in place."""
    directory = tmp_path_factory.mktemp("large-grpc")
    registry = directory / "models"
    weights = publish_wide_model(registry, "wide")
    flags = [
        "--model_name=wide",
        f"--model_base_path={registry / 'wide'}",
        f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
    ]
    leftover = _segment_of(_ended_process_id())
    leftover.write_bytes(bytes(LEFTOVER_BYTES))
    live_segment = _segment_of(os.getpid())
    live_segment.write_bytes(b"live")
    starting = [
        model_server(
            [*flags, f"--grpc_parse_offload_bytes={OFFLOAD_BYTES}"],
            log_path=directory / "offloading.log",
        ),
        model_server(
            [*flags, "--grpc_parse_offload_bytes=0"],
            log_path=directory / "in-place.log",
        ),
    ]
    with contextlib.ExitStack() as stack:
        stack.callback(leftover.unlink, missing_ok=True)
        stack.callback(live_segment.unlink, missing_ok=True)
        # Started side by side: each takes 15-30 s to be ready on a loaded
        # machine (its workers, then its model).
        with ThreadPoolExecutor(len(starting)) as pool:
            entered = [pool.submit(manager.__enter__) for manager in starting]
        for manager, future in zip(starting, entered, strict=True):
            if future.exception() is None:
                stack.push(manager)
        offloading, in_place = (future.result() for future in entered)
        yield Servers(offloading, in_place, weights, leftover, live_segment)
        assert_no_traceback(offloading.process)
        assert_no_traceback(in_place.process)


@dataclass
class SmallCalls:
    """Small gRPC Predict and REST status calls, over and over, each on its own
    connection, in threads, until stopped."""

    server: ModelServer
    grpc_seconds: list[float] = field(default_factory=list)
    rest_seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for target in (self._grpc_calls, self._rest_calls):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        time.sleep(0.3)

    def stop(self) -> None:
        time.sleep(0.2)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _grpc_calls(self) -> None:
        small = predict_request(1).SerializeToString()
        with grpc.insecure_channel(self.server.grpc_target) as channel:
            call = channel.unary_unary(PREDICT)
            call(small, timeout=10)
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    call(small, timeout=10)
                except grpc.RpcError as exc:
                    self.failures.append(f"gRPC {exc.code().name}")
                self.grpc_seconds.append(time.perf_counter() - started)

    def _rest_calls(self) -> None:
        url = f"{self.server.rest_url}/v1/models/wide"
        with httpx.Client(timeout=10) as client:
            client.get(url)
            while not self._stop.is_set():
                started = time.perf_counter()
                answer = client.get(url)
                if answer.status_code != 200:
                    self.failures.append(f"REST {answer.status_code}")
                self.rest_seconds.append(time.perf_counter() - started)


def _large_call(server: ModelServer, rows: int) -> tuple[float, str, bytes, int]:
    """The large call from its own process, with small calls alongside and the
    server's peak resident memory growth: (seconds, status, answer, growth)."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    sender = context.Process(
        target=send_large, args=(server.grpc_target, rows, theirs), daemon=True
    )
    sender.start()
    try:
        assert ours.poll(120), "the large request was not built in time"
        ours.recv()
        pid = server.process.pid
        before = rss_bytes(pid)
        peak = before
        small = SmallCalls(server)
        small.start()
        ours.send("go")
        while not ours.poll(0.01):
            peak = max(peak, rss_bytes(pid))
            assert sender.is_alive(), "the sending process died"
        seconds, status, answer = ours.recv()
        small.stop()
    finally:
        sender.join(timeout=10)
    assert not small.failures, small.failures[:5]
    worst = max(max(small.grpc_seconds), max(small.rest_seconds))
    record("large call s", seconds)
    record("slowest small gRPC call s", max(small.grpc_seconds))
    record("slowest small REST call s", max(small.rest_seconds))
    record("memory growth MiB", (peak - before) / 2**20)
    assert worst < SMALL_CALL_LATENCY, (
        f"a small call waited {worst * 1000:.0f} ms while the large message was "
        f"handled ({len(small.grpc_seconds)} gRPC, {len(small.rest_seconds)} REST)"
    )
    return seconds, status, answer, peak - before


def test_a_large_message_parsed_off_the_loop_does_not_hold_up_other_clients(
    servers: Servers,
) -> None:
    server = servers.offloading
    _, status, answer, growth = _large_call(server, LARGE_ROWS)
    assert status == "OK", answer[:200]
    response = messages.PredictResponse.FromString(answer)
    predictions = np.asarray(response.outputs["predictions"].double_val)
    features = large_values().reshape(LARGE_ROWS, FEATURES)
    expected = features @ servers.weights[:-1] + servers.weights[-1]
    np.testing.assert_allclose(predictions, expected, rtol=1e-9, atol=1e-9)
    assert growth < MEMORY_GROWTH_LIMIT, f"+{growth >> 20} MiB"
    assert len(spawned_workers(server.process.pid)) == 2
    leftovers = list(Path(default_directory()).glob(f"servekit-{server.process.pid}-*"))
    assert not leftovers, leftovers


def _call(
    server: ModelServer, data: bytes, compression: grpc.Compression | None = None
) -> tuple[str, str, bytes]:
    """One raw Predict call: (status name, details, answer bytes)."""
    options = [("grpc.max_send_message_length", MESSAGE_LIMIT)]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        try:
            answer = channel.unary_unary(PREDICT)(
                data, timeout=60, compression=compression
            )
        except grpc.RpcError as exc:
            return exc.code().name, exc.details(), b""
    return "OK", "", answer


def over_the_limits() -> bytes:
    """Over 1 MiB, declaring more elements than the request limit allows."""
    request = predict_request(1024)
    request.inputs["x"].tensor_shape.dim[0].size = 1 << 24
    return request.SerializeToString()


def bad_content() -> bytes:
    """Over 1 MiB of ``tensor_content`` that does not fill its shape."""
    request = predict_request(1)
    tensor = request.inputs["x"]
    tensor.ClearField("double_val")
    tensor.tensor_shape.dim[0].size = 1024
    tensor.tensor_content = bytes(1024 * FEATURES * 8 - 8)
    return request.SerializeToString()


def strings_and_numbers() -> bytes:
    """Over 1 MiB with a string input next to the numeric one (the model
    refuses the extra input; the refusal must be the same)."""
    request = predict_request(1024)
    text = request.inputs["text"]
    text.dtype = messages.DT_STRING
    text.tensor_shape.dim.add(size=3)
    text.string_val.extend([b"a", b"\xff" * 10, b""])
    return request.SerializeToString()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: predict_request(2048).SerializeToString(), id="4 MiB"),
        pytest.param(
            lambda: predict_request(2048).SerializeToString()[:-7], id="truncated"
        ),
        pytest.param(over_the_limits, id="over the tensor limits"),
        pytest.param(bad_content, id="tensor_content short"),
        pytest.param(strings_and_numbers, id="string input"),
        pytest.param(
            lambda: b"\x0a\xff\xff\xff\xff\x0f" + bytes(2 << 20), id="garbage"
        ),
    ],
)
def test_an_offloaded_message_is_answered_as_one_parsed_in_place(
    servers: Servers, make: Any
) -> None:
    data = make()
    assert len(data) >= OFFLOAD_BYTES
    offloaded = _call(servers.offloading, data)
    in_place = _call(servers.in_place, data)
    assert offloaded == in_place


def test_a_large_compressed_message_is_offloaded_once_inflated(
    servers: Servers,
) -> None:
    # 4 MiB of zeros compress to a few KiB; the threshold counts the message
    # inflated, and the answer is the in-place one.
    request = predict_request(2048)
    request.inputs["x"].ClearField("double_val")
    request.inputs["x"].double_val.extend(np.zeros(2048 * FEATURES))
    data = request.SerializeToString()
    offloaded = _call(servers.offloading, data, grpc.Compression.Gzip)
    assert offloaded[0] == "OK", offloaded[1]
    assert offloaded == _call(servers.in_place, data, grpc.Compression.Gzip)
    answer = messages.PredictResponse.FromString(offloaded[2])
    predictions = np.asarray(answer.outputs["predictions"].double_val)
    np.testing.assert_allclose(predictions, servers.weights[-1], atol=1e-9)


def test_segments_left_by_ended_servers_are_removed_at_start(
    servers: Servers,
) -> None:
    assert not servers.leftover.exists()
    assert servers.live_segment.read_bytes() == b"live"
    # Both servers swept as they started; whichever came first removed it (and
    # possibly the leftovers of other ended processes on the machine).
    lines = [
        orjson.loads(line)
        for server in (servers.offloading, servers.in_place)
        for line in server.process.log_text().splitlines()
        if "shared memory segments" in line
    ]
    assert len(lines) >= 1, servers.offloading.process.log_tail(20)
    assert sum(line["segments"] for line in lines) >= 1
    assert sum(line["bytes_freed"] for line in lines) >= LEFTOVER_BYTES
