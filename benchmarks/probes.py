"""The compiled one-request-at-a-time client of the interleaved 1-client turns.

The probe is ``benchmarks/probe.c``, compiled on first use (:func:`build_probe`)
and started once per served system (:class:`CompiledProbe`), pinned to the
load-generator core. It keeps one connection open and sends request bytes made
here, so its only work per call is a ``send`` and reading the answer: a few
microseconds of system calls, which count against the server measured, never
for it. Each line it reads (a number of seconds) it answers with one block of
timed calls, as the in-process reference processes do.

Over HTTP it speaks HTTP/1.1 with keep-alive and a call succeeds on status 200.
Over gRPC it speaks just enough HTTP/2 for unary calls on one connection: the
preface, a SETTINGS frame opening the receive windows wide (so it never has to
send WINDOW_UPDATE), and per call a HEADERS frame carrying the block of literal,
never-indexed fields built here (no HPACK state to keep) and the message's DATA
frames. It does not decode the answer's headers; as with h2load, a call
succeeded when its stream carried a message of the size a checked call
answered, since a failed gRPC call carries none.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from servekit_protocol.grpc_server import hpack_literal

from benchmarks.lines import LineProcess, LineTimeout
from benchmarks.targets import GrpcTarget, HttpTarget

PROBE_SOURCE = Path(__file__).with_name("probe.c")
CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-Werror")
READY_SECONDS = 30.0
"""How long the probe may take to connect and say it is ready."""
ANSWER_MARGIN_SECONDS = 30.0
"""How long past a block's length its answer may take (one slow call)."""
COMPILE_SECONDS = 120.0


class ProbeError(Exception):
    """A call failed (an error status, a malformed answer), the probe could not
    be built or started, or it died."""


def build_probe(directory: Path, source: Path = PROBE_SOURCE) -> Path:
    """The probe compiled from ``source`` into ``directory / "probe"``, rebuilt
    only when the source is newer than the binary.

    gcc writes a temporary file in ``directory`` that is then renamed over the
    binary, so a probe starting meanwhile (or another builder) never runs half a
    binary.

    Raises:
        ProbeError: gcc is missing or the compilation failed (with gcc's output).
    """
    binary = directory / "probe"
    with contextlib.suppress(FileNotFoundError):
        if binary.stat().st_mtime_ns >= source.stat().st_mtime_ns:
            return binary
    compiler = shutil.which("gcc")
    if compiler is None:
        raise ProbeError(
            f"gcc not found: the 1-client probe is compiled from {source} "
            "(apt-get install gcc)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=directory, prefix=".probe-", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        try:
            completed = subprocess.run(
                [compiler, *CFLAGS, "-o", str(temporary), str(source)],
                capture_output=True,
                text=True,
                timeout=COMPILE_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProbeError(f"cannot compile {source}: {exc}") from exc
        if completed.returncode != 0:
            raise ProbeError(
                f"cannot compile {source} (gcc exit {completed.returncode}):\n"
                f"{completed.stdout}{completed.stderr}".rstrip()
            )
        # mkstemp made the file private; the binary is to be run.
        temporary.chmod(0o755)
        temporary.replace(binary)
    finally:
        temporary.unlink(missing_ok=True)
    return binary


def grpc_header_block(target: GrpcTarget) -> bytes:
    """The HPACK block of a unary call of ``target``'s method."""
    return b"".join(
        hpack_literal(name.encode("ascii"), value.encode("ascii"))
        for name, value in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", target.path),
            (":authority", target.address),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )


def grpc_message(request: bytes) -> bytes:
    """A serialized request behind gRPC's prefix: not compressed, then its size."""
    return b"\x00" + len(request).to_bytes(4, "big") + request


def http_request(target: HttpTarget) -> bytes:
    """The whole HTTP/1.1 POST of ``target``'s body, head and body."""
    parts = urlsplit(target.url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    body = target.body_file.read_bytes()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: {target.content_type}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in target.headers)
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def probe_arguments(target: HttpTarget | GrpcTarget, directory: Path) -> list[str]:
    """The probe's arguments for ``target``, its request files written in
    ``directory``."""
    if isinstance(target, HttpTarget):
        parts = urlsplit(target.url)
        request = directory / "request.http"
        request.write_bytes(http_request(target))
        host = parts.hostname or "127.0.0.1"
        return ["http", host, str(parts.port or 80), str(request)]
    address, _, port = target.address.rpartition(":")
    block = directory / "headers.hpack"
    block.write_bytes(grpc_header_block(target))
    message = directory / "message.grpc"
    message.write_bytes(grpc_message(target.request_file.read_bytes()))
    expected = -1 if target.response_bytes is None else target.response_bytes
    host = address.strip("[]") or "127.0.0.1"
    return ["grpc", host, port, str(block), str(message), str(expected)]


class CompiledProbe:
    """The compiled probe, connected to one target and waiting for blocks.

    ``binary`` comes from :func:`build_probe`; the request files go in a fresh
    directory under ``work_dir``, removed on :meth:`close`. With ``cpu`` the probe
    is pinned to that CPU (``taskset -c``).

    Raises:
        ProbeError: The probe could not start or connect (its message says why).
    """

    def __init__(
        self,
        binary: Path,
        target: HttpTarget | GrpcTarget,
        work_dir: Path,
        cpu: int | None = None,
    ) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self._files = tempfile.TemporaryDirectory(dir=work_dir, prefix="probe-")
        try:
            command = [str(binary), *probe_arguments(target, Path(self._files.name))]
        except OSError as exc:
            self._files.cleanup()
            raise ProbeError(f"cannot write the probe's request: {exc}") from exc
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]
        try:
            self._process = LineProcess(command, stderr=subprocess.PIPE)
        except OSError as exc:
            self._files.cleanup()
            raise ProbeError(f"cannot start {command[0]}: {exc}") from exc
        self._last_error: str | None = None
        try:
            self._next_answer(READY_SECONDS)
        except ProbeError:
            self.close()
            raise

    @property
    def pid(self) -> int:
        """The probe's process id (``taskset`` execs it, keeping the id)."""
        return self._process.popen.pid

    def _next_answer(self, timeout: float) -> dict[str, Any]:
        """The probe's next line, as JSON.

        Raises:
            ProbeError: No line within ``timeout`` (the probe is then stopped),
                the probe exited (with what it wrote on its standard error), or
                the line is an error.
        """
        popen = self._process.popen
        try:
            line = self._process.next(timeout)
        except LineTimeout:
            popen.kill()
            raise ProbeError(f"the probe did not answer in {timeout:.0f} s") from None
        if line is None:
            code = popen.wait()
            assert popen.stderr is not None
            # A probe that lost its connection said why on its last line.
            detail = popen.stderr.read().strip() or self._last_error
            raise ProbeError(f"the probe exited (code {code}): {detail or 'no output'}")
        try:
            answer: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeError(f"the probe printed {line!r}") from exc
        if "error" in answer:
            self._last_error = str(answer["error"])
            raise ProbeError(self._last_error)
        return answer

    def block(self, seconds: float) -> list[int]:
        """One block: an uncounted call, then calls one at a time for about
        ``seconds``; their latencies in ns.

        Raises:
            ProbeError: A call of the block failed, the probe died, or it did not
                answer within ``seconds`` + ``ANSWER_MARGIN_SECONDS``.
        """
        if self._process.closed:
            raise ProbeError("the probe is closed")
        self._process.send(str(seconds))
        answer = self._next_answer(seconds + ANSWER_MARGIN_SECONDS)
        return [int(value) for value in answer["latencies_ns"]]

    def close(self) -> None:
        """End the probe (end of input makes it exit) and remove its files."""
        self._process.stop(5)
        if self._process.popen.stderr is not None:
            self._process.popen.stderr.close()
        self._files.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
