"""A worker's arrays that did not go the road they were given back to the
server: through a pipe the worker makes when their shared memory segment has
no room (:func:`~servekit_protocol.messagepipe.send_back`), or pickled through
the pool's pipe in pieces (:class:`CarriedArray`) where no pipe can be made
either. Used by the large gRPC messages decoded in a worker
(:mod:`~modelserver.protocol.grpc.largerequests`) and the large REST example
bodies (:mod:`~modelserver.protocol.rest.examplebodies`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
from servekit_protocol import segments
from servekit_protocol.json_codec.offload import received_from_worker
from servekit_protocol.messagepipe import PipedArrays, ReturnedArrays, send_back
from servekit_protocol.pickledmessage import PICKLE_CHUNK_BYTES

logger = logging.getLogger(__name__)


class _Piece:
    # One piece of a carried array: unpickled by calling a Python function,
    # where the unpickling thread can hand the GIL to the loop's.
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (_piece, (self.data,))


def _piece(data: bytes) -> bytes:
    return data


class CarriedArray:
    """An array carried back from a worker through the pool's pipe, pickled
    in pieces of ``PICKLE_CHUNK_BYTES`` and unpickled straight into a new
    array, so that the pool's result thread never holds the GIL for the whole
    array (a single ndarray is unpickled in one C call, 256 MiB in one go).

    Args:
        array: The array (in the worker); a new empty one being filled (in
            the server).
    """

    __slots__ = ("array", "_bytes", "_filled")

    def __init__(self, array: np.ndarray[Any, Any]) -> None:
        # Not ascontiguousarray: it makes a 0-d array 1-d.
        self.array = array if array.flags.c_contiguous else array.copy(order="C")
        self._bytes = self.array.reshape(-1).view(np.uint8)
        self._filled = 0

    @classmethod
    def _empty(cls, dtype: np.dtype[Any], shape: tuple[int, ...]) -> CarriedArray:
        return cls(np.empty(shape, dtype))

    def append(self, piece: bytes) -> None:
        """Copy the next piece in (unpickling calls it)."""
        end = self._filled + len(piece)
        self._bytes[self._filled : end] = np.frombuffer(piece, np.uint8)
        self._filled = end

    def __reduce__(self) -> tuple[Any, ...]:
        data = self._bytes
        pieces = (
            _Piece(data[start : start + PICKLE_CHUNK_BYTES].tobytes())
            for start in range(0, len(data), PICKLE_CHUNK_BYTES)
        )
        return (
            CarriedArray._empty,
            (self.array.dtype, self.array.shape),
            None,
            pieces,
        )


ArraysRoad = str | PipedArrays | None
"""Where a worker's arrays go: a new segment at that path, a pipe of their
own, or (None) pickled in its answer."""

Carried = dict[str, CarriedArray] | ReturnedArrays
"""A worker's arrays that did not go the road they were given: back through
a pipe the worker made (their segment had no room), or pickled in its answer
(no segment, or no pipe either)."""


def write_or_carry(
    arrays_segment: ArraysRoad, arrays: dict[str, np.ndarray[Any, Any]]
) -> tuple[list[segments.ArraySlot], Carried]:
    """In a worker, ``arrays`` written to ``arrays_segment``: their slots, and
    nothing carried; sent through their pipe: neither; with a segment without
    room, no slots, and the pipe the worker made for them; with no segment (or
    no pipe either), no slots, and the arrays to carry back through the pool's
    pipe."""
    if isinstance(arrays_segment, PipedArrays):
        arrays_segment.send(_contiguous(arrays))
        return [], {}
    if arrays_segment is not None:
        try:
            return segments.write_arrays(arrays_segment, arrays), {}
        except OSError:
            # What was written frees room for other calls at once.
            segments.unlink(arrays_segment)
        with contextlib.suppress(OSError):
            return [], send_back(_contiguous(arrays))
    return [], {name: CarriedArray(array) for name, array in arrays.items()}


def _contiguous(
    arrays: dict[str, np.ndarray[Any, Any]],
) -> dict[str, np.ndarray[Any, Any]]:
    # Not ascontiguousarray: it makes a 0-d array 1-d.
    return {
        name: array if array.flags.c_contiguous else array.copy(order="C")
        for name, array in arrays.items()
    }


async def carried_back(carried: Carried) -> dict[str, np.ndarray[Any, Any]]:
    """The arrays a worker's answer carried (see :func:`write_or_carry`),
    read from the worker's pipe in a thread.

    Raises:
        ParserUnavailable: The pipe ended before the arrays did (the worker
            died).
    """
    if isinstance(carried, ReturnedArrays):
        return await received_from_worker(
            carried, "The request could not be read: its worker stopped"
        )
    return {name: array.array for name, array in carried.items()}


def warn_carried(what: str, carried: Carried, directory: str) -> None:
    """One warning line for ``what`` (the worker's arrays) that found no room
    in their segment, saying which road they took instead."""
    logger.warning(
        "%s came back from their worker through %s: their shared memory "
        "segment could not be written (no room); give %s more room",
        what,
        "a pipe of their own"
        if isinstance(carried, ReturnedArrays)
        else "the worker pipe, copies that hold the GIL and so the event loop",
        directory,
    )
