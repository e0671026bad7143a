"""The in-process call measured next to every 1-client run.

A 1-client p50 is compared with the model's in-process batch-1 call. On this kind of
machine the speed of that call drifts by several percent within minutes, which on
a 22 ms scikit-learn pipeline is more than the 1 ms a target allows; a reference
taken once per round, minutes before or after the run, mostly measures the drift.
So each model keeps one idle in-process process (``benchmarks.inprocess
--reference``) pinned to the server core, and the harness measures it for a couple
of seconds right before and right after each 1-client run: the mean of the two is
that run's reference. While a server is measured the reference process is blocked
on its standard input and uses no CPU.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

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
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert self.popen.stdout is not None
        threading.Thread(
            target=self._read, args=(self.popen.stdout,), daemon=True
        ).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if line.startswith("{"):
                self.lines.put(line)
        self.lines.put(None)

    def next_answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
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
    """One reference process per model; ``measure(model)`` is its batch-1 p50."""

    def __init__(
        self,
        registry: Path,
        models: Sequence[str],
        seconds: float,
        cpu: int | None,
        progress: Callable[[str], None],
    ) -> None:
        self._seconds = seconds
        self._progress = progress
        self._processes: dict[str, _Process] = {}
        for model in models:
            command = [sys.executable, "-m", "benchmarks.inprocess", "--reference"]
            command += ["--registry", str(registry), "--model", model]
            if cpu is not None:
                command = ["taskset", "-c", str(cpu), *command]
            self._processes[model] = _Process(command, model)
        try:
            for process in self._processes.values():
                process.next_answer(READY_SECONDS)
        except ReferenceFailed:
            self.close()
            raise

    def measure(self, model: str) -> float | None:
        """The batch-1 p50 in ms now, or None (reported) if the process failed."""
        process = self._processes.get(model)
        if process is None or process.popen.stdin is None:
            return None
        try:
            process.popen.stdin.write(f"{self._seconds}\n")
            process.popen.stdin.flush()
            answer = process.next_answer(self._seconds + 60)
        except (OSError, ReferenceFailed) as exc:
            self._progress(f"in-process reference {model}: FAILED: {exc}")
            del self._processes[model]
            process.stop()
            return None
        return float(answer["p50_ms"])

    def close(self) -> None:
        for process in self._processes.values():
            process.stop()
        self._processes.clear()
