"""The harness's helper processes, spoken to a line at a time.

The in-process references and the compiled probe each read a line on their
standard input and answer with a line on their standard output. The harness
waits for each answer with a deadline; a blocking ``readline`` cannot time out,
so a thread moves the lines into a queue.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO


class LineTimeout(Exception):
    """No line arrived within the deadline."""


class LineReader:
    """Reads ``stream`` to its end in a daemon thread; :meth:`next` takes a line.

    ``keep`` filters the lines queued (all by default).
    """

    def __init__(self, stream: IO[str], keep: str = "") -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._keep = keep
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                if line.startswith(self._keep):
                    self._lines.put(line)
        self._lines.put(None)

    def next(self, timeout: float) -> str | None:
        """The next line, or ``None`` once the stream has ended.

        Raises:
            LineTimeout: Nothing within ``timeout`` seconds.
        """
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise LineTimeout from None


class LineProcess:
    """A started helper process: :meth:`send` a line, :meth:`next` its answer.

    Args:
        command: The argv.
        keep: Only stdout lines starting with this are answers (all by default).
        stderr: Where its standard error goes (``subprocess.PIPE`` to read it).
        cwd: Its working directory.

    Raises:
        OSError: The command cannot be started.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        keep: str = "",
        stderr: int = subprocess.DEVNULL,
        cwd: Path | None = None,
    ) -> None:
        self.popen = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=cwd,
        )
        assert self.popen.stdout is not None
        self._lines = LineReader(self.popen.stdout, keep)

    @property
    def closed(self) -> bool:
        """Whether its standard input is closed (by :meth:`stop`)."""
        return self.popen.stdin is None or self.popen.stdin.closed

    def send(self, line: str) -> None:
        """Write ``line`` and a newline. A process that exited is not an error
        here: its lines end, and :meth:`next` says so."""
        if self.popen.stdin is None:
            return
        with contextlib.suppress(OSError):
            self.popen.stdin.write(f"{line}\n")
            self.popen.stdin.flush()

    def next(self, timeout: float) -> str | None:
        """Its next answer line, or ``None`` once it has exited.

        Raises:
            LineTimeout: Nothing within ``timeout`` seconds.
        """
        return self._lines.next(timeout)

    def stop(self, timeout: float) -> None:
        """End of input, then ``timeout`` seconds to exit before it is killed."""
        stdin = self.popen.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.close()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
