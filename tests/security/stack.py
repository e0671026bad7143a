"""The servers the HTTP/1.1, body and gateway-admission attack tests run against.

:func:`serving_stack` starts a model server serving ``linear`` (scikit-learn, so
it starts in seconds) and a gateway in front of it, both on 127.0.0.1 with the
listener limits below: small timeouts and a small connection cap, so each attack
shows its bounded effect in a second or two. The figures the tests assert are
listed in the model server's and the gateway's READMEs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

from tests.security.figures import record
from tests.support.gateway import ApiKeys, GatewayProcess, running_gateway
from tests.support.models import publish_linear_pipeline
from tests.support.modelserver import ModelServer, model_server
from tests.support.processes import ServerProcess

HEADER_TIMEOUT = 1.0
"""Seconds both listeners give a request's headers."""
BODY_TIMEOUT = 1.5
"""Seconds both listeners give a request's body."""
IDLE_TIMEOUT = 1.0
"""Seconds both listeners keep an idle keep-alive connection."""
MAX_CONNECTIONS = 64
"""Connections each listener holds at once."""
MAX_HEADER_BYTES = 16 * 1024
"""Bytes of request line and headers each listener accepts (the default)."""
MAX_BODY_BYTES = 4 * 1024 * 1024
"""The gateway's body limit in these tests (the model server's REST body limit
is its gRPC message limit, 4 MiB here)."""
AUTH_FAILURES_PER_SECOND = 1.0
"""Failed key attempts a client address of the gateway earns back per second."""
AUTH_FAILURE_BURST = 5.0
"""Failed key attempts a client address of the gateway may make at once."""
SLACK = 1.0
"""Seconds allowed past a timeout for the timer to fire and the close to arrive
on a loaded 2-core machine."""

PREDICT_PATH = "/v1/models/linear:predict"
PREDICT_BODY = b'{"instances": [{"a": 1.0, "b": 2.0}]}'

MODEL_SERVER_LIMITS = (
    f"--rest_api_header_timeout_seconds={HEADER_TIMEOUT}",
    f"--rest_api_body_timeout_seconds={BODY_TIMEOUT}",
    f"--rest_api_idle_timeout_seconds={IDLE_TIMEOUT}",
    f"--rest_api_max_connections={MAX_CONNECTIONS}",
    f"--grpc_max_message_bytes={MAX_BODY_BYTES}",
)
GATEWAY_LIMITS = (
    f"--http-header-timeout-seconds={HEADER_TIMEOUT}",
    f"--http-body-timeout-seconds={BODY_TIMEOUT}",
    f"--http-idle-timeout-seconds={IDLE_TIMEOUT}",
    f"--http-max-connections={MAX_CONNECTIONS}",
    f"--max-body-bytes={MAX_BODY_BYTES}",
    f"--auth-failures-per-second={AUTH_FAILURES_PER_SECOND}",
    f"--auth-failure-burst={AUTH_FAILURE_BURST}",
)


@dataclass(frozen=True)
class Listener:
    """One HTTP/1.1 port under attack and the process behind it.

    ``headers`` are what a normal client sends (the gateway's API key).
    """

    name: str
    port: int
    process: ServerProcess
    headers: Mapping[str, str]

    @property
    def header_lines(self) -> bytes:
        """``headers`` as raw request header lines."""
        return b"".join(
            f"{name}: {value}\r\n".encode() for name, value in self.headers.items()
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A raw TCP connection to the port."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


@dataclass(frozen=True)
class Stack:
    """The model server and the gateway in front of it."""

    model_server: ModelServer
    gateway: GatewayProcess

    keys: ApiKeys

    def listeners(self) -> list[Listener]:
        return [
            Listener(
                "model server REST",
                self.model_server.rest_port,
                self.model_server.process,
                {},
            ),
            Listener(
                "gateway HTTP",
                self.gateway.http_port,
                self.gateway.process,
                {"x-api-key": self.keys.admin},
            ),
        ]


@contextlib.contextmanager
def serving_stack(
    directory: Path,
    *,
    gateway_env: Mapping[str, str] | None = None,
    gateway_flags: Sequence[str] = (),
    model_server_flags: Sequence[str] = (),
) -> Iterator[Stack]:
    """Start both servers with the limits above, the gateway with API keys
    (:class:`ApiKeys`) required; stop them when the block ends. Flags given
    here come after the limits, so they replace them."""
    registry = directory / "models"
    if not (registry / "linear").exists():
        publish_linear_pipeline(registry, "linear", offset=1.0)
    keys = ApiKeys()
    keys_file = keys.write(directory / "keys.json", limited_rate=1.0, limited_burst=1.0)
    with model_server(
        [
            "--model_name=linear",
            f"--model_base_path={registry / 'linear'}",
            *MODEL_SERVER_LIMITS,
            *model_server_flags,
        ],
        log_path=directory / "model-server.log",
    ) as server:
        rest_backends = f'{{"{server.grpc_target}": "127.0.0.1:{server.rest_port}"}}'
        with running_gateway(
            directory / "gateway",
            env={
                "GATEWAY_REGISTRY": str(registry),
                "GATEWAY_AUTH_ENABLED": "true",
                "GATEWAY_API_KEYS_FILE": str(keys_file),
                **(gateway_env or {}),
            },
            flags=[
                f"--default-backend={server.grpc_target}",
                f"--rest-backends={rest_backends}",
                *GATEWAY_LIMITS,
                *gateway_flags,
            ],
        ) as gateway:
            yield Stack(server, gateway, keys)


def rss_bytes(pid: int) -> int:
    """The process's resident set size, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


class PeakMemory:
    """The peak resident memory of some processes together (``pids`` lists
    them at each sample), sampled every 5 ms in a thread until :meth:`growth`
    is read."""

    def __init__(self, pids: Callable[[], set[int]]) -> None:
        self._pids = pids
        self.before = self.peak = self._total()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _total(self) -> int:
        total = 0
        for pid in self._pids():
            # A worker may end between the listing and the read.
            with contextlib.suppress(FileNotFoundError):
                total += rss_bytes(pid)
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._total())

    def growth(self) -> int:
        """Stop sampling; the peak's bytes over the first sample."""
        self._stop.set()
        self._thread.join()
        return self.peak - self.before


def cpu_seconds(pid: int) -> float:
    """CPU time the process (all its threads, not its children) has used, from
    ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime and stime are the 14th and 15th fields; the split starts at the 3rd.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_cpu_seconds(pid: int) -> float:
    """CPU time the process's main thread has used, from
    ``/proc/<pid>/task/<pid>/stat``: both servers run their event loop there, so
    this is the time the loop was busy (other threads are the model's, the worker
    pools' feeders and gRPC's own)."""
    path = Path(f"/proc/{pid}/task/{pid}/stat")
    fields = path.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_page_faults(pid: int) -> int:
    """Page faults the process's main thread (its event loop's) has taken, from
    ``/proc/<pid>/task/<pid>/stat``: each is a page of memory the loop touched
    for the first time, which the kernel zeroed on that thread."""
    path = Path(f"/proc/{pid}/task/{pid}/stat")
    fields = path.read_text().rpartition(")")[2].split()
    # minflt and majflt are the 10th and 12th fields; the split starts at the 3rd.
    return int(fields[7]) + int(fields[9])


def timed_predict(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, float]:
    """One normal :predict call on a fresh connection: (status, seconds)."""
    started = time.perf_counter()
    answer = httpx.post(
        url + PREDICT_PATH,
        content=PREDICT_BODY,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=timeout,
    )
    seconds = time.perf_counter() - started
    record("normal call s", seconds)
    return answer.status_code, seconds


def read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """One whole HTTP/1.1 answer, its body sized by Content-Length or chunked
    (uvicorn chunks an answer that declares no length); nothing past it is read."""
    sock.settimeout(timeout)
    received = bytearray()

    def more() -> None:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-answer: {bytes(received)!r}"
        received.extend(chunk)

    while b"\r\n\r\n" not in received:
        more()
    end = received.index(b"\r\n\r\n") + 4
    length = 0
    chunked = False
    for line in bytes(received[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        while len(received) < end + length:
            more()
        assert len(received) == end + length, "bytes past the answer"
        return bytes(received)
    while True:
        while b"\r\n" not in received[end:]:
            more()
        size_line_end = received.index(b"\r\n", end)
        size = int(bytes(received[end:size_line_end]).split(b";")[0], 16)
        end = size_line_end + 2 + size + 2
        while len(received) < end:
            more()
        if size == 0:
            assert len(received) == end, "bytes past the answer"
            return bytes(received)


def read_until_closed(sock: socket.socket, deadline: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when that
    happened (monotonic); fails if the connection is still open at `deadline`."""
    received = bytearray()
    while True:
        # A connection closed before the deadline may be read after it.
        sock.settimeout(max(deadline - time.monotonic(), 0.05))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received), time.monotonic()
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"connection still open; received {bytes(received[:200])!r}"
                ) from None
            continue
        if not chunk:
            return bytes(received), time.monotonic()
        received += chunk


def assert_no_traceback(process: ServerProcess) -> None:
    """The server logged no Python traceback."""
    log = process.log_text()
    assert "Traceback" not in log, process.log_tail(40)


class RepeatedCalls:
    """One call after another on one connection, in a thread, until stopped: how
    long each waited, and the statuses seen. A subclass says which call."""

    interval = 0.01
    """Seconds between two calls: leaves the server idle in between, as separate
    clients would."""

    def __init__(self, base_url: str) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=30)
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self.statuses: set[int] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _send(self) -> httpx.Response:
        raise NotImplementedError

    def _call(self) -> None:
        started = time.perf_counter()
        answer = self._send()
        self.latencies.append(time.perf_counter() - started)
        self.statuses.add(answer.status_code)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._call()
            time.sleep(self.interval)

    def __enter__(self) -> Self:
        self._call()  # the connection is open before the calls are timed
        self.latencies.clear()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()


class SmallCalls(RepeatedCalls):
    """Small ``:predict`` calls one after another on one connection, in a thread,
    until stopped; the slowest one's seconds."""

    def __init__(self, listener: Listener) -> None:
        super().__init__(listener.url)
        self._headers = {"content-type": "application/json", **listener.headers}

    def _send(self) -> httpx.Response:
        return self._client.post(
            PREDICT_PATH, content=PREDICT_BODY, headers=self._headers
        )

    def assert_kept_up(self, limit: float, during: str) -> None:
        """Every small call answered 200, at least three of them, none slower
        than ``limit`` seconds (recorded as a figure)."""
        assert self.statuses == {200}
        assert len(self.latencies) >= 3
        slowest = max(self.latencies)
        record("slowest small call s", slowest)
        assert slowest < limit, (
            f"a small call waited {slowest:.3f} s while the {during}"
        )
