"""The compiled 1-client probe against a real model server, over HTTP/1.1 and
HTTP/2, and against a scripted HTTP server for the answer shapes it must read."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from benchmarks.payloads import ModelPayloads, build_payloads
from benchmarks.probes import (
    CompiledProbe,
    ProbeError,
    build_probe,
)
from benchmarks.targets import GrpcTarget, HttpTarget
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

needs_gcc = pytest.mark.skipif(
    shutil.which("gcc") is None, reason="the probe is compiled with gcc"
)

PREDICT = "/tensorflow.serving.PredictionService/Predict"
BLOCK_SECONDS = 0.2


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("the probe is compiled with gcc")
    return build_probe(tmp_path_factory.mktemp("probe-bin"))


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ModelServer, ModelPayloads]]:
    root = tmp_path_factory.mktemp("probes")
    registry = root / "registry"
    publish_linear_pipeline(registry, "slow", sleep_seconds=0.005)
    payloads = build_payloads(registry, "slow", root / "payloads")
    with model_server(
        ["--model_name=slow", f"--model_base_path={registry / 'slow'}"],
        log_path=root / "server.log",
    ) as server:
        yield server, payloads


def answer_size(server: ModelServer, request: bytes) -> int:
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary(PREDICT)
        answer: bytes = call(request, timeout=10)
    return len(answer)


def predict_target(served: tuple[ModelServer, ModelPayloads], model: str) -> HttpTarget:
    server, payloads = served
    return HttpTarget(f"{server.rest_url}/v1/models/{model}:predict", payloads.tfs_rest)


def assert_slow_calls(latencies: list[int]) -> None:
    # Every call runs the pipeline's 5 ms sleep: a block of 0.2 s holds a few.
    assert len(latencies) >= 5
    assert all(5_000_000 <= latency < 1_000_000_000 for latency in latencies)


def test_http_probe_times_each_call_on_one_connection(
    binary: Path, served: tuple[ModelServer, ModelPayloads], tmp_path: Path
) -> None:
    with CompiledProbe(binary, predict_target(served, "slow"), tmp_path) as probe:
        assert_slow_calls(probe.block(BLOCK_SECONDS))
        assert_slow_calls(probe.block(BLOCK_SECONDS))
        # One connection for both blocks: the probe's only socket.
        sockets = [
            fd
            for fd in os.listdir(f"/proc/{probe.pid}/fd")
            if os.readlink(f"/proc/{probe.pid}/fd/{fd}").startswith("socket:")
        ]
        assert len(sockets) == 1
    # Its request files go with it.
    assert list(tmp_path.iterdir()) == []


def test_http_probe_reports_an_error_status(
    binary: Path, served: tuple[ModelServer, ModelPayloads], tmp_path: Path
) -> None:
    with CompiledProbe(binary, predict_target(served, "missing"), tmp_path) as probe:
        with pytest.raises(ProbeError, match="HTTP status 404"):
            probe.block(BLOCK_SECONDS)
        # The answer was read whole: the connection stays usable, the next block
        # gets the same answer instead of a lost connection.
        with pytest.raises(ProbeError, match="HTTP status 404"):
            probe.block(BLOCK_SECONDS)


def test_probe_is_pinned_to_the_given_cpu(
    binary: Path, served: tuple[ModelServer, ModelPayloads], tmp_path: Path
) -> None:
    target = predict_target(served, "slow")
    with CompiledProbe(binary, target, tmp_path, cpu=0) as probe:
        assert os.sched_getaffinity(probe.pid) == {0}


def test_grpc_probe_checks_the_answer_size(
    binary: Path, served: tuple[ModelServer, ModelPayloads], tmp_path: Path
) -> None:
    server, payloads = served
    size = answer_size(server, payloads.tfs_grpc.read_bytes())
    target = GrpcTarget(server.grpc_target, PREDICT, payloads.tfs_grpc, size)
    with CompiledProbe(binary, target, tmp_path) as probe:
        assert_slow_calls(probe.block(BLOCK_SECONDS))
        assert_slow_calls(probe.block(BLOCK_SECONDS))
    wrong = CompiledProbe(binary, replace(target, response_bytes=size + 1), tmp_path)
    with wrong, pytest.raises(ProbeError, match=f"answered {size + 5} message bytes"):
        wrong.block(BLOCK_SECONDS)
    # Without an expected size, any message will do.
    with CompiledProbe(binary, replace(target, response_bytes=None), tmp_path) as any_:
        assert_slow_calls(any_.block(BLOCK_SECONDS))


def test_grpc_probe_reports_a_failed_call(
    binary: Path, served: tuple[ModelServer, ModelPayloads], tmp_path: Path
) -> None:
    server, _ = served
    # An empty PredictRequest names no model: NOT_FOUND, which carries no message.
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    target = GrpcTarget(server.grpc_target, PREDICT, empty, None)
    with CompiledProbe(binary, target, tmp_path / "work") as probe:
        for _ in range(3):
            with pytest.raises(ProbeError, match="answered 0 message bytes"):
                probe.block(BLOCK_SECONDS)


def test_probe_that_cannot_connect_fails_at_start(binary: Path, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text("{}")
    target = HttpTarget(f"http://127.0.0.1:{free_port()}/predict", body)
    with pytest.raises(ProbeError, match="cannot connect to 127.0.0.1"):
        CompiledProbe(binary, target, tmp_path / "work")


class ScriptedHttpServer:
    """Answers each request on one connection with the next of ``answers``, then
    reads one more request and closes the connection without answering it; the
    requests it answered are kept in ``requests``."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            pending = b""
            for answer in self.answers:
                while b"\r\n\r\n" not in pending:
                    if not (received := connection.recv(65536)):
                        return
                    pending += received
                head, _, pending = pending.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split()[0])
                while len(pending) < length:
                    if not (received := connection.recv(65536)):
                        return
                    pending += received
                self.requests.append(head + b"\r\n\r\n" + pending[:length])
                pending = pending[length:]
                connection.sendall(answer)
            # Read the next request before closing, so the probe sees the end of
            # the connection rather than a reset.
            if not pending:
                connection.recv(65536)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


def test_http_probe_reads_chunked_answers_with_trailers_and_error_bodies(
    binary: Path, tmp_path: Path
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    sized = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    error = b"HTTP/1.1 503 Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
    # Two blocks of 0 s, one uncounted call each, then a block that fails; the
    # server then closes the connection and the probe says so and exits.
    server = ScriptedHttpServer([chunked, sized, error])
    body = tmp_path / "body.json"
    body.write_bytes(b'{"instances": [1]}')
    target = HttpTarget(f"http://127.0.0.1:{server.port}/v1/m:predict", body)
    try:
        with CompiledProbe(binary, target, tmp_path / "work") as probe:
            assert probe.block(0) == []
            assert probe.block(0) == []
            with pytest.raises(ProbeError, match="HTTP status 503"):
                probe.block(0)
            with pytest.raises(ProbeError, match="closed the connection"):
                probe.block(0)
            with pytest.raises(ProbeError, match=r"exited \(code 1\)"):
                probe.block(0)
    finally:
        server.close()
    assert (
        server.requests[0]
        == (
            f"POST /v1/m:predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 18\r\n\r\n"
            '{"instances": [1]}'
        ).encode()
    )
    assert len(server.requests) == 3


@needs_gcc
def test_probe_is_rebuilt_only_when_its_source_is_newer(tmp_path: Path) -> None:
    source = tmp_path / "probe.c"
    source.write_text("int main(void) { return 0; }\n")
    built = build_probe(tmp_path / "bin", source)
    first = built.stat()
    assert build_probe(tmp_path / "bin", source).stat().st_ino == first.st_ino
    # An edited source: a new binary replaces the old one (renamed over it).
    later = first.st_mtime_ns + 5_000_000_000
    os.utime(source, ns=(later, later))
    assert build_probe(tmp_path / "bin", source).stat().st_ino != first.st_ino
    assert os.access(built, os.X_OK)
    # No temporary files are left behind.
    assert [path.name for path in (tmp_path / "bin").iterdir()] == ["probe"]


@needs_gcc
def test_probe_that_does_not_compile_raises_with_gcc_output(tmp_path: Path) -> None:
    source = tmp_path / "probe.c"
    source.write_text("int main(void) { return undeclared; }\n")
    with pytest.raises(ProbeError, match="undeclared"):
        build_probe(tmp_path / "bin", source)
    assert list((tmp_path / "bin").iterdir()) == []
