"""Start a server subprocess on 127.0.0.1 for a test and always stop it.

Usage::

    with running_process(
        [".venv/bin/servekit-model-server", f"--port={grpc_port}", ...],
        log_path=tmp_path / "server.log",
        ready=http_ready(f"http://127.0.0.1:{rest_port}/v1/models/m"),
    ) as server:
        ...  # server.log_text() holds everything the process wrote so far

stdout and stderr go to ``log_path`` (tests assert on its lines). Readiness is
polled; if the process exits or the timeout passes first, the test fails with
the log's tail. On exit the process gets SIGTERM, then SIGKILL if it lingers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"


_FILE_SIZE_LIMITED = (
    "import os, resource, signal, sys; "
    "limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def file_size_limited(
    argv: Sequence[str | os.PathLike[str]], limit_bytes: int
) -> list[str]:
    """``argv`` run with no file it writes allowed past ``limit_bytes``
    (``RLIMIT_FSIZE``, inherited by its children): a ``write`` beyond fails
    with ``EFBIG`` (``SIGXFSZ`` ignored, as Python does anyway), the way one
    to a full tmpfs fails with ``ENOSPC``, for any user and file system. The
    limit is set by a launcher that then becomes the program (same process
    id), not by ``preexec_fn``, which is unsafe in a process with threads."""
    return [
        sys.executable,
        "-c",
        _FILE_SIZE_LIMITED,
        str(limit_bytes),
        *(os.fspath(arg) for arg in argv),
    ]


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago.

    Only for servers that cannot bind port 0 themselves; call it right before
    starting the server.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServerProcess:
    """A running subprocess and the file its output goes to."""

    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self) -> str:
        """Everything the process has written to stdout/stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def send_signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; return its exit code."""
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; return the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        return self.popen.returncode


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    process: ServerProcess | None = None,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until it is true.

    Raises:
        AssertionError: on timeout, or when ``process`` exits while waiting
            (the message carries the process's log tail).
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if process is not None and process.popen.poll() is not None:
            raise AssertionError(
                f"process exited with {process.popen.returncode} while waiting for "
                f"{what}:\n{process.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = f":\n{process.log_tail()}" if process is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{tail}")
        time.sleep(interval)


def http_ready(url: str, expect_status: int = 200) -> Callable[[], bool]:
    """A readiness probe: ``GET url`` answers ``expect_status``."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status) == expect_status
        except urllib.error.HTTPError as error:
            return error.code == expect_status
        except OSError:
            return False

    return probe


@contextlib.contextmanager
def running_process(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path,
    ready: Callable[[], bool] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready_timeout: float = 90.0,
    stop_timeout: float = 15.0,
) -> Iterator[ServerProcess]:
    """Run ``argv``, wait for ``ready``, yield, and always stop the process."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env is not None:
        full_env.update(env)
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            [os.fspath(arg) for arg in argv],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
        )
    server = ServerProcess(popen=popen, log_path=log_path)
    try:
        if ready is not None:
            wait_until(
                ready,
                timeout=ready_timeout,
                interval=0.2,
                process=server,
                what=f"{Path(os.fspath(argv[0])).name} to be ready",
            )
        yield server
    finally:
        server.stop(timeout=stop_timeout)


def spawned_workers(pid: int) -> set[int]:
    """The process's ``spawn`` workers (not multiprocessing's resource tracker),
    from ``/proc/<pid>/task/*/children``."""
    workers = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        # Threads and children may end while they are read.
        with contextlib.suppress(FileNotFoundError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(FileNotFoundError):
                    if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                        workers.add(int(child))
    return workers
