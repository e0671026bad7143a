"""Class labels held as Python objects (a TensorFlow model's ``classes``
output is an object array of ``bytes``) as one buffer of their bytes and an
array of offsets into it, the layout of Arrow's strings, so that a shared
memory segment carries them as two numeric arrays rather than a pickle.

Pickled, 8 Mi labels held the GIL, and so the event loop, for the whole
pickling call in the process pool's feeder thread. Here the server's side
encodes them in a thread a bounded step at a time (the thread hands the GIL
back between two), and the worker that builds the answer decodes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

_LABELS_AT_ONCE = 65_536
"""Labels encoded by one step (a few milliseconds with the GIL held)."""
_BYTES_AT_ONCE = 4 * 1024 * 1024
"""Label bytes one step aims at, so that long labels make shorter steps."""


@dataclass(frozen=True, slots=True)
class LabelEncoding:
    """How :func:`decode_labels` reads a buffer back."""

    text: bool
    """The labels were ``str`` (UTF-8 in the buffer, lone surrogates kept);
    otherwise ``bytes``, as they were."""
    shared_row: bool
    """Only the first example's row is in the buffer: every example has it."""


@dataclass(frozen=True, slots=True)
class EncodedLabels:
    """Labels as a buffer and offsets, and how to read them back."""

    data: Array
    """``uint8``: every label's bytes, one after the other, row by row."""
    offsets: Array
    """``int64``, one more than the labels: label ``i`` is
    ``data[offsets[i]:offsets[i + 1]]``."""
    encoding: LabelEncoding


def encode_labels(labels: Array) -> EncodedLabels | None:
    """``labels`` (``[examples, classes]``, dtype object) as a buffer and
    offsets, the row alone when every example has the same one; None when
    they are not all ``bytes`` or all ``str`` (what else a model may return
    stays pickled). Blocking, in bounded steps: run it in a thread.
    """
    examples, classes = labels.shape
    if examples > 1 and labels.strides[0] == 0:
        # A view of one row for every example (a scikit-learn model's classes).
        encoded = _encode(labels[:1])
        if encoded is None:
            return None
        return _with_shared_row(encoded, True)
    encoded = _encode(labels)
    if encoded is None:
        return None
    if examples > 1 and classes and _rows_alike(encoded, examples, classes):
        # A TensorFlow classifier's classes are often its vocabulary tiled:
        # carried once, as a shared row is.
        end = int(encoded.offsets[classes])
        return EncodedLabels(
            encoded.data[:end].copy(),
            encoded.offsets[: classes + 1].copy(),
            LabelEncoding(encoded.encoding.text, True),
        )
    return encoded


def decode_labels(encoded: EncodedLabels, examples: int, classes: int) -> Array:
    """The labels :func:`encode_labels` took apart: an object array of
    ``[examples, classes]`` (a broadcast view of one row when the row was
    shared), holding ``bytes`` or ``str`` as they were."""
    data = encoded.data.tobytes()
    bounds: list[int] = encoded.offsets.tolist()
    items: list[Any]
    if encoded.encoding.text:
        items = [
            data[start:end].decode("utf-8", "surrogatepass")
            for start, end in zip(bounds, bounds[1:], strict=False)
        ]
    else:
        items = [
            data[start:end] for start, end in zip(bounds, bounds[1:], strict=False)
        ]
    flat: Array = np.empty(len(items), object)
    flat[:] = items
    if encoded.encoding.shared_row:
        return np.broadcast_to(flat, (examples, classes))
    return flat.reshape(examples, classes)


def _with_shared_row(encoded: EncodedLabels, shared: bool) -> EncodedLabels:
    return EncodedLabels(
        encoded.data,
        encoded.offsets,
        LabelEncoding(encoded.encoding.text, shared),
    )


def _rows_alike(encoded: EncodedLabels, examples: int, classes: int) -> bool:
    lengths = np.diff(encoded.offsets)
    row_bytes = int(encoded.offsets[classes])
    # Compared a stretch of rows at a time against the first row repeated:
    # one-dimensional numeric comparisons, which numpy makes without the GIL
    # (a broadcast one walks a row at a time, seconds for millions of rows).
    rows_at_once = max(1, _BYTES_AT_ONCE // max(row_bytes, classes * 8))
    repeated_lengths = np.tile(lengths[:classes], rows_at_once)
    repeated_data = np.tile(encoded.data[:row_bytes], rows_at_once)
    for start in range(0, examples, rows_at_once):
        rows = min(rows_at_once, examples - start)
        if not np.array_equal(
            lengths[start * classes : (start + rows) * classes],
            repeated_lengths[: rows * classes],
        ):
            return False
        if not np.array_equal(
            encoded.data[start * row_bytes : (start + rows) * row_bytes],
            repeated_data[: rows * row_bytes],
        ):
            return False
    return True


def _encode(labels: Array) -> EncodedLabels | None:
    count = labels.size
    offsets: Array = np.empty(count + 1, np.int64)
    offsets[0] = 0
    parts: list[bytes] = []
    text: bool | None = None
    # A contiguous array is read through a flat view; another is copied a
    # step at a time rather than whole (one call as long as pickling it).
    flat = labels.reshape(-1) if labels.flags.c_contiguous else None
    at_once = _LABELS_AT_ONCE
    start = 0
    while start < count:
        stop = min(count, start + at_once)
        items = (
            flat[start:stop].tolist()
            if flat is not None
            else _elements(labels, start, stop)
        )
        step = _step_bytes(items)
        if step is None:
            return None
        step_text, data, lengths = step
        if text is None:
            text = step_text
        elif text != step_text:
            return None
        ends = offsets[start + 1 : stop + 1]
        np.cumsum(lengths, out=ends)
        ends += offsets[start]
        parts.append(data)
        # Long labels make the next step shorter.
        at_once = max(
            1, min(_LABELS_AT_ONCE, len(items) * _BYTES_AT_ONCE // max(len(data), 1))
        )
        start = stop
    buffer: Array = np.empty(int(offsets[count]), np.uint8)
    position = 0
    for part in parts:
        buffer[position : position + len(part)] = np.frombuffer(part, np.uint8)
        position += len(part)
    return EncodedLabels(buffer, offsets, LabelEncoding(bool(text), False))


def _step_bytes(items: list[Any]) -> tuple[bool, bytes, Array] | None:
    """Whether ``items`` are ``str``, their bytes joined and each one's
    length in bytes; None when they are not all ``bytes`` or all ``str``."""
    kinds = set(map(type, items))
    if kinds == {bytes}:
        return False, b"".join(items), _lengths(items)
    if kinds != {str}:
        return None
    joined = "".join(items)
    if joined.isascii():
        # A byte a character: the lengths are the strings' own.
        return True, joined.encode("ascii"), _lengths(items)
    encoded = [item.encode("utf-8", "surrogatepass") for item in items]
    return True, b"".join(encoded), _lengths(encoded)


def _lengths(items: list[Any]) -> Array:
    return np.fromiter(map(len, items), np.int64, len(items))


def _elements(labels: Array, start: int, stop: int) -> list[Any]:
    """Elements ``start`` to ``stop`` of ``labels`` in C order, a row's
    stretch at a time."""
    classes = labels.shape[1]
    items: list[Any] = []
    row, column = divmod(start, classes)
    while start < stop:
        take = min(stop - start, classes - column)
        items.extend(labels[row, column : column + take].tolist())
        start += take
        row, column = row + 1, 0
    return items
