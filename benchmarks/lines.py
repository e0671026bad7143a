"""Lines a helper process prints, read off its pipe by a thread.

The harness talks to its helper processes (the in-process references, the compiled
probe) a line at a time and waits for each answer with a deadline; a blocking
``readline`` cannot time out, so a thread moves the lines into a queue.
"""

from __future__ import annotations

import queue
import threading
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
