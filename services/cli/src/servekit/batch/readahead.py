"""Read ahead: a thread pulls items from an iterator while the caller works on others.

A job's input is read (pyarrow's readers and the numpy conversions release the
GIL for most of their work) while the model runs on the chunk before and the
writer writes the one before that. The queue between them is bounded, so at
most ``depth`` items, and at most ``budget`` bytes of them when a budget is
given, wait read but not yet taken, whatever the input's size; items come out
in the order the iterator gives them, and an exception the iterator raises
comes out where its item would have.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

Item = TypeVar("Item")


class _End:
    """The iterator is exhausted."""


class _Failed:
    """The iterator raised ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(Generic[Item]):
    """Iterate ``source`` in a thread, at most ``depth`` items ahead of the caller.

    With ``budget``, the items waiting also weigh at most ``budget`` bytes
    together (``size`` says what one weighs), except that one item always may
    wait, however large: a source that reads in large pieces gets to queue a
    whole piece's items of a narrow table while it reads the next, and few of
    a wide one's.

    Use it as a context manager: leaving the block stops the thread (it is
    waiting on the full queue, or finishes the item it is reading) and closes
    ``source``, also when the caller stops early or raises.
    """

    def __init__(
        self,
        source: Iterator[Item],
        depth: int,
        *,
        name: str,
        budget: int | None = None,
        size: Callable[[Item], int] | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be 1 or more")
        if (budget is None) != (size is None):
            raise ValueError("budget and size go together")
        self._source = source
        self._depth = depth
        self._budget = budget
        self._size = size
        self._waiting: deque[tuple[Item | _End | _Failed, int]] = deque()
        self._held = 0
        self._changed = threading.Condition()
        self._stopped = False
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
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        self._thread.join()

    def __iter__(self) -> Iterator[Item]:
        while True:
            with self._changed:
                while not self._waiting:
                    self._changed.wait()
                item, weight = self._waiting.popleft()
                self._held -= weight
                self._changed.notify_all()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def _pull(self) -> None:
        try:
            for item in self._source:
                weight = 0 if self._size is None else self._size(item)
                if not self._put(item, weight):
                    return
            self._put(_End())
        except BaseException as exc:  # handed to the caller, raised there
            self._put(_Failed(exc))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def _put(self, item: Item | _End | _Failed, weight: int = 0) -> bool:
        """Queue ``item`` unless stopped first; whether it was queued."""
        with self._changed:
            while not self._stopped and not self._room_for(weight):
                self._changed.wait()
            if self._stopped:
                return False
            self._waiting.append((item, weight))
            self._held += weight
            self._changed.notify_all()
            return True

    def _room_for(self, weight: int) -> bool:
        if not self._waiting:
            return True
        if len(self._waiting) >= self._depth:
            return False
        return self._budget is None or self._held + weight <= self._budget
