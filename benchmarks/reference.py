"""The in-process call, kept ready in a few processes per model on the server core.

``python -m benchmarks.inprocess --reference`` loads the model once and answers each
line it reads (seconds) with a block of batch-1 calls; between blocks it waits on
its standard input and uses no CPU. :mod:`benchmarks.interleaved` has these blocks
take turns with the servers' on the same core.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.lines import LineProcess, LineTimeout
from benchmarks.settings import REPO_ROOT

READY_SECONDS = 300.0
STOP_SECONDS = 10.0
"""How long a reference process may take to exit at the end of its input."""


class ReferenceFailed(Exception):
    """A reference process failed to start or to answer."""


class _Process(LineProcess):
    """One model's reference process."""

    def __init__(self, command: list[str], model: str) -> None:
        super().__init__(command, keep="{", cwd=REPO_ROOT)
        self.model = model

    def next_answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.next(timeout)
        except LineTimeout:
            raise ReferenceFailed(
                f"in-process reference of {self.model!r} did not answer in "
                f"{timeout:.0f} s"
            ) from None
        if line is None:
            raise ReferenceFailed(
                f"in-process reference of {self.model!r} exited "
                f"(code {self.popen.wait()})"
            )
        answer: dict[str, Any] = json.loads(line)
        return answer


class References:
    """``processes`` reference processes per model; ``block(model, seconds,
    process_index)`` runs a block in one of them."""

    def __init__(
        self,
        registry: Path,
        models: Sequence[str],
        cpu: int | None,
        processes: int = 1,
    ) -> None:
        self._processes: dict[tuple[str, int], _Process] = {}
        for model in models:
            command = [sys.executable, "-m", "benchmarks.inprocess", "--reference"]
            command += ["--registry", str(registry), "--model", model]
            if cpu is not None:
                command = ["taskset", "-c", str(cpu), *command]
            for index in range(1, processes + 1):
                self._processes[model, index] = _Process(command, model)
        try:
            for process in self._processes.values():
                process.next_answer(READY_SECONDS)
        except ReferenceFailed:
            self.close()
            raise

    def processes(self, model: str) -> list[int]:
        """The numbers of the model's processes still running."""
        return [index for name, index in self._processes if name == model]

    def block(self, model: str, seconds: float, process_index: int = 1) -> list[int]:
        """One block of the model's batch-1 calls in one of its processes: their
        latencies in ns.

        Raises:
            OSError: The process is gone (it is stopped and forgotten).
        """
        process = self._processes.get((model, process_index))
        if process is None or process.closed:
            raise OSError(f"no in-process reference {process_index} of {model!r}")
        process.send(str(seconds))
        try:
            answer = process.next_answer(seconds + 60)
        except ReferenceFailed as exc:
            del self._processes[model, process_index]
            process.stop(STOP_SECONDS)
            raise OSError(f"in-process reference of {model!r} failed: {exc}") from exc
        return [int(value) for value in answer["latencies_ns"]]

    def close(self) -> None:
        for process in self._processes.values():
            process.stop(STOP_SECONDS)
        self._processes.clear()
