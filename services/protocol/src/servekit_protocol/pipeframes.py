"""Arrays framed on a pipe (:mod:`servekit_protocol.messagepipe`): a small
header (names, types, shapes), then each array's bytes, read straight into
new arrays (``os.readv``, the GIL released while the kernel copies)."""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray[Any, Any]]

WRITE_BYTES = 1 << 20
"""Most bytes one ``write`` is given: the pipe takes what it has room for
(64 KiB by default) either way; a bound keeps each call's view small."""
_HEADER_SIZE_BYTES = 8
"""Length prefix of the arrays' header."""


def array_parts(arrays: Arrays) -> list[memoryview]:
    """What a pipe carries of ``arrays``: the header's length, the header
    (names, types, shapes), each array's bytes (what :func:`read_arrays`
    reads)."""
    header = pickle.dumps(
        [(name, array.dtype.str, array.shape) for name, array in arrays.items()]
    )
    return [
        memoryview(len(header).to_bytes(_HEADER_SIZE_BYTES, "big")),
        memoryview(header),
        # A copy in C order for an array that is not one already.
        *(array.reshape(-1).view(np.uint8).data for array in arrays.values()),
    ]


def write_all(descriptor: int, data: bytes | memoryview) -> None:
    """Write ``data`` whole to a blocking ``descriptor``."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.write(descriptor, view[done : done + WRITE_BYTES])


def _read_into(descriptor: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        read = os.readv(descriptor, [view[done:]])
        if read == 0:
            raise OSError("the arrays' pipe ended early")
        done += read


def _read_bytes(descriptor: int, size: int) -> bytearray:
    buffer = bytearray(size)
    _read_into(descriptor, memoryview(buffer))
    return buffer


def read_arrays(descriptor: int) -> Arrays:
    """The arrays :func:`array_parts` made, read from ``descriptor``.

    Raises:
        OSError: The pipe ended before the arrays did.
    """
    size = int.from_bytes(_read_bytes(descriptor, _HEADER_SIZE_BYTES), "big")
    header = pickle.loads(_read_bytes(descriptor, size))
    received: Arrays = {}
    for name, dtype, shape in header:
        array: np.ndarray[Any, Any] = np.empty(shape, np.dtype(dtype))
        _read_into(descriptor, array.reshape(-1).view(np.uint8).data)
        received[name] = array
    return received
