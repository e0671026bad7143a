"""Read ahead: a thread pulls items from an iterator while the caller works on others.

A job's input is read (pyarrow's readers and the numpy conversions release the
GIL for most of their work) while the model runs on the chunk before and the
writer writes the one before that. The queue between them is bounded, so at
most ``depth`` items wait, read but not yet taken, whatever the input's size;
items come out in the order the iterator gives them, and an exception the
iterator raises comes out where its item would have.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Generic, TypeVar

Item = TypeVar("Item")

_POLL_SECONDS = 0.1
"""How often a reader blocked on a full queue looks whether it was stopped."""


class _End:
    """The iterator is exhausted."""


class _Failed:
    """The iterator raised ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(Generic[Item]):
    """Iterate ``source`` in a thread, at most ``depth`` items ahead of the caller.

    Use it as a context manager: leaving the block stops the thread (it is
    waiting on the full queue, or finishes the item it is reading) and closes
    ``source``, also when the caller stops early or raises.
    """

    def __init__(self, source: Iterator[Item], depth: int, *, name: str) -> None:
        if depth < 1:
            raise ValueError("depth must be 1 or more")
        self._source = source
        self._queue: queue.Queue[Item | _End | _Failed] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._pull, name=name, daemon=True)

    def __enter__(self) -> ReadAhead[Item]:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._thread.join()

    def __iter__(self) -> Iterator[Item]:
        while True:
            item = self._queue.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def _pull(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
            self._put(_End())
        except BaseException as exc:  # handed to the caller, raised there
            self._put(_Failed(exc))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def _put(self, item: Item | _End | _Failed) -> bool:
        """Queue ``item`` unless stopped first; whether it was queued."""
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
            except queue.Full:
                continue
            return True
        return False
