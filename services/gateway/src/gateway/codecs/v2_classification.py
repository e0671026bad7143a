"""The classification extension of the Open Inference Protocol (Triton's).

An output asked for with `classification: k` is answered with its k highest
values instead of the tensor: a BYTES tensor whose elements read
`"<value>:<index>"`, highest first. A tensor of rank 2 or more is classified per
entry of its first (batch) dimension, giving shape [batch, k]; a vector gives
[k]. The value is printed with six decimals, as Triton prints it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gateway.errors import InvalidInput


def _top(row: np.ndarray[Any, Any], count: int) -> list[bytes]:
    # A stable sort keeps equal values in index order, as Triton's does.
    order = np.argsort(-row.astype(np.float64), kind="stable")[:count]
    return [f"{float(row[index]):f}:{int(index)}".encode() for index in order]


def classify(
    array: np.ndarray[Any, Any], class_count: int, name: str
) -> np.ndarray[Any, Any]:
    """The top `class_count` classes of a score tensor.

    Raises:
        InvalidInput: the output is not numeric, or is a scalar.
    """
    if array.dtype.kind not in "biuf":
        raise InvalidInput(
            f"output {name!r}: classification needs a numeric output, not {array.dtype}"
        )
    if array.ndim == 0:
        raise InvalidInput(
            f"output {name!r}: classification needs at least one dimension"
        )
    rows = [array] if array.ndim == 1 else list(array.reshape(array.shape[0], -1))
    width = min(class_count, rows[0].size if rows else 0)
    result = np.empty((len(rows), width), dtype=object)
    for position, row in enumerate(rows):
        result[position, :] = _top(row, width)
    return result[0] if array.ndim == 1 else result


__all__ = ["classify"]
