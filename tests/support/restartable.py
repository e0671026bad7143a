"""A model server on fixed ports that a test can kill (as a crash would) and start
again on the same ports, e.g. to watch a client's circuit breaker open and close."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.modelserver import MODEL_SERVER, health_serving
from tests.support.processes import ServerProcess, free_port, running_process


@dataclass
class RestartableModelServer:
    """`servekit-model-server` on `<registry>/servekit.config`, restartable."""

    registry: Path
    log_dir: Path
    grpc_port: int = field(default_factory=free_port)
    rest_port: int = field(default_factory=free_port)
    flags: tuple[str, ...] = ()
    """More flags for the server."""
    process: ServerProcess | None = None
    starts: int = 0
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        """Start and wait until gRPC health says SERVING."""
        self.starts += 1
        argv = [
            str(MODEL_SERVER),
            f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}",
            "--host=127.0.0.1",
            f"--model_config_file={self.registry / 'servekit.config'}",
            "--model_config_file_poll_wait_seconds=1",
            "--file_system_poll_wait_seconds=1",
            *self.flags,
        ]
        self.process = self._stack.enter_context(
            running_process(
                argv,
                log_path=self.log_dir / f"model-server-{self.starts}.log",
                ready=lambda: health_serving(self.target),
                ready_timeout=120,
            )
        )

    def kill(self) -> None:
        """SIGKILL: no draining, connections drop at once."""
        if self.process is not None:
            self.process.popen.kill()
            self.process.popen.wait(timeout=10)
        self.stop()

    def stop(self) -> None:
        """SIGTERM (graceful), if still running."""
        self._stack.close()
        self.process = None
