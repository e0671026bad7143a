"""Start server processes on 127.0.0.1, pinned to a core, and always stop them.

Each process gets its own session (process group), so stopping it also stops the
workers it forked (MLServer's inference pool, uvicorn's reloader, ...). Stopping
is SIGTERM to that group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from benchmarks.settings import child_environment


class StartError(Exception):
    """A server exited or did not become ready in time."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 a moment ago (for servers that cannot bind 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    """``argv`` run under ``taskset -c cpu`` (unchanged when ``cpu`` is None)."""
    if cpu is None:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


@dataclass
class ServerProcess:
    """A started server and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it if the leader lingers."""
        if self.running():
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout=grace)
        # Workers that outlived their leader are still in the group.
        self._signal_group(signal.SIGKILL)


@dataclass
class ProcessSet:
    """The servers of one benchmark run; leaving the ``with`` block stops them all."""

    log_dir: Path
    processes: list[ServerProcess] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        cpu: int | None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ServerProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log_file:
            popen = subprocess.Popen(
                pinned([os.fspath(arg) for arg in argv], cpu),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_environment(env),
                cwd=cwd,
                start_new_session=True,
            )
        process = ServerProcess(name=name, popen=popen, log_path=log_path)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()


def wait_models(
    process: ServerProcess,
    probes: Mapping[str, Callable[[], bool]],
    *,
    timeout: float,
    grace: float,
    grace_deadline: float | None = None,
) -> tuple[set[str], float, float | None]:
    """Wait until every model's probe passes.

    Once one model is ready, the others get ``grace`` more seconds (or until
    ``grace_deadline``, a ``time.monotonic()`` value shared by servers that started
    together): a model that fails to load may stay "loading" for minutes while the
    server retries it, and the rest can be measured without it.

    Returns:
        The ready models, the seconds waited, and when the grace period ends.

    Raises:
        StartError: The process exited, or no model was ready within ``timeout``.
    """
    started = time.monotonic()
    ready: set[str] = set()
    while True:
        for model, probe in probes.items():
            if model not in ready and probe():
                ready.add(model)
        now = time.monotonic()
        if ready and grace_deadline is None:
            grace_deadline = now + grace
        if len(ready) == len(probes):
            return ready, now - started, grace_deadline
        if grace_deadline is not None and ready and now > grace_deadline:
            return ready, now - started, grace_deadline
        if not process.running():
            raise StartError(
                f"{process.name} exited with {process.popen.returncode} before "
                f"serving {', '.join(probes)}:\n{process.log_tail()}"
            )
        if now - started > timeout:
            raise StartError(
                f"{process.name}: nothing ready after {timeout:.0f} s:\n"
                f"{process.log_tail()}"
            )
        time.sleep(0.25)


def http_post(
    url: str,
    body: bytes,
    content_type: str = "application/json",
    timeout: float = 10,
    headers: Sequence[tuple[str, str]] = (),
) -> tuple[int, bytes]:
    """POST ``body``; return the status and the answer (errors included)."""
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": content_type, **dict(headers)},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def http_post_succeeds(url: str, body: bytes) -> Callable[[], bool]:
    """A readiness probe: POST answers 200."""

    def probe() -> bool:
        try:
            status, _ = http_post(url, body, timeout=5)
        except OSError:
            return False
        return status == 200

    return probe


def grpc_call(address: str, method: str, request: bytes, timeout: float = 10) -> bytes:
    """One unary call with raw bytes; the raw answer.

    Raises:
        grpc.RpcError: The call failed.
    """
    import grpc

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(method)
        answer: bytes = call(request, timeout=timeout)
        return answer


def grpc_call_succeeds(address: str, method: str, request: bytes) -> Callable[[], bool]:
    """A readiness probe: the call returns OK."""
    import grpc

    def probe() -> bool:
        try:
            grpc_call(address, method, request, timeout=5)
        except grpc.RpcError:
            return False
        return True

    return probe


def file_exists(path: Path) -> Callable[[], bool]:
    return path.exists
