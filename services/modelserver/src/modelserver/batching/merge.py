"""Pure tensor work of batching: concatenate requests' inputs, split the outputs.

Follows TF Serving's ``BatchingSession``: inputs are concatenated along axis 0;
with ``allowed_batch_sizes`` the batch is padded to the next allowed size with
copies of the last request's first row; with ``pad_variable_length_inputs`` the
other dimensions are padded to the largest request's, filled with each
request's first element. Outputs are split back by each request's row count and
the padding rows dropped.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelserver.errors import InternalError, InvalidInput
from modelserver.types import Tensor

ShapeKey = tuple[tuple[tuple[int, ...], str], ...]


def padded_size(rows: int, allowed_batch_sizes: Sequence[int]) -> int:
    """The smallest allowed batch size holding ``rows`` (``rows`` if none given)."""
    if not allowed_batch_sizes:
        return rows
    index = bisect.bisect_left(allowed_batch_sizes, rows)
    if index == len(allowed_batch_sizes):
        return rows
    return int(allowed_batch_sizes[index])


def shape_key(inputs: Mapping[str, Tensor]) -> ShapeKey:
    """What must be equal for two requests to share a batch without padding."""
    return tuple((value.shape[1:], value.dtype.str) for value in inputs.values())


def merge_inputs(
    parts: Sequence[Mapping[str, Tensor]],
    *,
    allowed_batch_sizes: Sequence[int] = (),
    pad_variable_length: bool = False,
) -> tuple[dict[str, Tensor], int]:
    """Concatenate the requests' inputs along axis 0, padding as configured.

    Returns:
        The merged inputs and the batch's row count including padding rows.

    Raises:
        InvalidInput: Shapes differ beyond axis 0 and padding is off.
    """
    rows = sum(int(next(iter(part.values())).shape[0]) for part in parts)
    total = padded_size(rows, allowed_batch_sizes)
    if len(parts) == 1 and total == rows:
        return dict(parts[0]), rows
    merged: dict[str, Tensor] = {}
    for alias in parts[0]:
        tensors = [part[alias] for part in parts]
        if pad_variable_length:
            tensors = _pad_to_common_shape(tensors)
        elif any(tensor.shape[1:] != tensors[0].shape[1:] for tensor in tensors):
            raise InvalidInput(
                f"Tensors with name '{alias}' from different tasks have different "
                "shapes and padding is turned off. Set pad_variable_length_inputs "
                "to true, or ensure that all tensors with the same name have equal "
                "dimensions starting with the first dim."
            )
        if total > rows:
            filler = tensors[-1][:1]
            tensors.append(np.repeat(filler, total - rows, axis=0))
        merged[alias] = np.concatenate(tensors, axis=0)
    return merged, total


def _pad_to_common_shape(tensors: list[Tensor]) -> list[Tensor]:
    target = tuple(
        max(sizes)
        for sizes in zip(*(tensor.shape[1:] for tensor in tensors), strict=True)
    )
    padded: list[Tensor] = []
    for tensor in tensors:
        if tensor.shape[1:] == target:
            padded.append(tensor)
            continue
        widths = [(0, 0)] + [
            (0, want - have)
            for want, have in zip(target, tensor.shape[1:], strict=True)
        ]
        fill: Any = tensor.flat[0] if tensor.size else 0
        padded.append(np.pad(tensor, widths, mode="constant", constant_values=fill))
    return padded


def split_outputs(
    outputs: Mapping[str, Tensor], row_counts: Sequence[int], total: int
) -> list[dict[str, Tensor]]:
    """Give each request its rows of every output (padding rows dropped).

    Raises:
        InternalError: An output lacks the batch dimension.
    """
    for alias, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise InternalError(
                f"Batched output tensor '{alias}' has shape {list(value.shape)}; its "
                "0th dimension does not equal the sum of the 0th dimension sizes of "
                f"the input tensors ({total})"
            )
    used = int(sum(row_counts))
    if len(row_counts) == 1 and used == total:
        # A lone caller without padding rows (the usual case at low load).
        return [dict(outputs)]
    boundaries = np.cumsum(row_counts)[:-1].tolist()
    results: list[dict[str, Tensor]] = [{} for _ in row_counts]
    for alias, value in outputs.items():
        pieces = np.split(value[:used], boundaries, axis=0)
        for result, piece in zip(results, pieces, strict=True):
            result[alias] = piece
    return results
