"""A large message handed to a worker process pickled through the pool's
pipe: the last fallback when neither a shared memory segment
(:mod:`servekit_protocol.segments`) nor a pipe of its own
(:mod:`servekit_protocol.messagepipe`) can be made, and what a worker makes of
whichever it was handed."""

from __future__ import annotations

from typing import Any

from servekit_protocol.messagepipe import PipedMessage

PICKLE_CHUNK_BYTES = 4 << 20
"""Size of the pieces a message is pickled in: the feeder thread copies one
(about 1 ms) between chances for the loop's thread to take the GIL back."""


class ReceivedBytes(list[bytes]):
    """A message's bytes as a worker receives them (see :class:`MessageBytes`)."""

    def joined(self) -> bytes:
        """The message in one piece."""
        return b"".join(self)


class MessageBytes:
    """A message's bytes handed to a worker through the pool's pipe: pickled
    from the received buffer, without a copy on the caller's thread, in pieces
    of ``PICKLE_CHUNK_BYTES`` (a worker gets a :class:`ReceivedBytes`). The
    last fallback, where no pipe of its own can be made: the pool's feeder
    thread copies the pieces holding the GIL.

    Args:
        view: The message; it must stay unchanged until the worker answers.
    """

    __slots__ = ("_view",)

    def __init__(self, view: memoryview) -> None:
        self._view = view

    def __reduce__(self) -> tuple[Any, ...]:
        # The pieces are made as the pickler asks for them, in the thread
        # that pickles (the pool's feeder), never all at once.
        view = self._view
        pieces = (
            view[start : start + PICKLE_CHUNK_BYTES].tobytes()
            for start in range(0, len(view), PICKLE_CHUNK_BYTES)
        )
        return (ReceivedBytes, (), None, pieces)


def received_message(
    message: PipedMessage | ReceivedBytes | bytes,
) -> bytes | bytearray:
    """In a worker, the message it was handed, whole.

    Raises:
        OSError: The message's pipe ended before the message did.
    """
    if isinstance(message, PipedMessage):
        return message.received()
    if isinstance(message, ReceivedBytes):
        return message.joined()
    return message
