"""The in-process call, kept ready in a few processes per model on the server core.

``python -m benchmarks.inprocess --reference`` loads the model once and answers each
line it reads (seconds) with a block of batch-1 calls; between blocks it waits on
its standard input and uses no CPU. :mod:`benchmarks.interleaved` has these blocks
take turns with the servers' on the same core.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.lines import LineReader, LineTimeout
from benchmarks.settings import REPO_ROOT

READY_SECONDS = 300.0


class ReferenceFailed(Exception):
    """A reference process failed to start or to answer."""


class _Process:
    """One model's reference process and the lines it printed."""

    def __init__(self, command: list[str], model: str) -> None:
        self.model = model
        self.popen = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO_ROOT,
        )
        assert self.popen.stdout is not None
        self.lines = LineReader(self.popen.stdout, keep="{")

    def next_answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.next(timeout)
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

    def stop(self) -> None:
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


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
        if process is None or process.popen.stdin is None:
            raise OSError(f"no in-process reference {process_index} of {model!r}")
        try:
            process.popen.stdin.write(f"{seconds}\n")
            process.popen.stdin.flush()
            answer = process.next_answer(seconds + 60)
        except (OSError, ReferenceFailed) as exc:
            del self._processes[model, process_index]
            process.stop()
            raise OSError(f"in-process reference of {model!r} failed: {exc}") from exc
        return [int(value) for value in answer["latencies_ns"]]

    def close(self) -> None:
        for process in self._processes.values():
            process.stop()
        self._processes.clear()
