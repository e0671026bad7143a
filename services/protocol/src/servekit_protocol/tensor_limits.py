"""A cap on the total size of the tensors in one request, checked before any of
them is allocated.

A TensorProto declares its shape separately from its values, and TensorFlow's fill
rule lets one value stand for a whole tensor, so a request of a hundred bytes can
declare gigabytes; a per-tensor cap still lets it declare many tensors. The
declared elements and bytes of every input are summed from the shapes alone (and,
for JSON, from the nesting of the values) and refused above the limits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from servekit_protocol import tensors
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.messages import DT_STRING, TensorProto

DEFAULT_MAX_ELEMENTS = 1 << 25
"""Elements of all the tensors of one request (33,554,432)."""
DEFAULT_MAX_BYTES = 1 << 28
"""Bytes of all the tensors of one request once decoded (256 MiB)."""
DECODE_IN_THREAD_BYTES = 1 << 20
"""Decoded tensor bytes from which a message parsed on an event loop has its
tensors decoded (or merged) in a thread. Such a message is small (larger ones
are handed over whole), so this is TensorFlow's fill rule: a few bytes declaring
up to the request limit, one value written over every element. Writing 64 MiB of
new memory cost the loop's thread 12-36 ms of CPU, and 100-250 ms in about one
fresh process in four, the kernel's first zeroing of those pages (``perf``:
``clear_page_erms`` under the huge page fault, ten times its usual time). A
thread writes them with the GIL released; below this the hand-over costs more
than the write."""
_REFERENCE_BYTES = 8
"""What one element of a string tensor costs besides its bytes (a reference)."""


@dataclass(frozen=True, slots=True)
class TensorLimits:
    """The most one request's tensors may hold, all inputs together.

    Attributes:
        max_elements: Elements of all tensors.
        max_bytes: Bytes of all tensors once decoded (string tensors: their
            values' bytes plus a reference per element).
    """

    max_elements: int = DEFAULT_MAX_ELEMENTS
    max_bytes: int = DEFAULT_MAX_BYTES

    def check(self, elements: int, size: int) -> None:
        """Refuse a request whose tensors hold more than the limits.

        Raises:
            InvalidArgument: above either limit.
        """
        if elements > self.max_elements or size > self.max_bytes:
            raise InvalidArgument(
                f"The request's tensors hold {elements} elements ({size} bytes); "
                f"the limit is {self.max_elements} elements ({self.max_bytes} "
                "bytes) per request"
            )


def declared_size(
    tensor: TensorProto, declared: tuple[tuple[int, ...], int] | None = None
) -> tuple[int, int]:
    """The elements and decoded bytes a TensorProto's shape declares
    (``declared``: its :func:`~servekit_protocol.tensors.declared_shape`, when
    read already).

    Raises:
        InvalidArgument: an unknown rank or a negative dimension.
    """
    # The shape cache the decoding uses too: requests repeat a few shapes.
    _, elements = tensors.declared_shape(tensor) if declared is None else declared
    if tensor.dtype == DT_STRING:
        values = sum(len(value) for value in tensor.string_val)
        return elements, elements * _REFERENCE_BYTES + values
    try:
        itemsize = tensors.numpy_dtype(tensor.dtype).itemsize
    except InvalidArgument:
        # An unsupported dtype is refused when the tensor is decoded.
        itemsize = 1
    return elements, elements * itemsize


def check_tensor_protos(inputs: Iterable[TensorProto], limits: TensorLimits) -> None:
    """Refuse a request whose TensorProtos declare more than `limits`, together.

    Raises:
        InvalidArgument: above the limits, or a malformed shape.
    """
    elements = 0
    size = 0
    for tensor in inputs:
        count, nbytes = declared_size(tensor)
        elements += count
        size += nbytes
    limits.check(elements, size)


@dataclass(frozen=True, slots=True)
class DeclaredTensors:
    """Named TensorProtos whose shapes were read and found within the limits,
    not decoded yet.

    Attributes:
        named: Each tensor's name, proto and :func:`~servekit_protocol.tensors.declared_shape`.
        nbytes: The bytes decoding them allocates and writes, all together;
            with TensorFlow's fill rule far more than the message may hold.
    """

    named: list[tuple[str, TensorProto, tuple[tuple[int, ...], int]]]
    nbytes: int

    def decode(self) -> dict[str, np.ndarray[Any, Any]]:
        """The tensors decoded into new arrays.

        Raises:
            InvalidArgument: A tensor that cannot be decoded.
        """
        return {
            name: tensors.to_ndarray(tensor, declared)
            for name, tensor, declared in self.named
        }


def declare_tensor_protos(
    inputs: Iterable[tuple[str, TensorProto]], limits: TensorLimits | None
) -> DeclaredTensors:
    """Named TensorProtos with their shapes read and their sizes together
    checked against ``limits`` (None: no limit), before anything is decoded.

    Each shape is read once, for the check and the decoding both: for a request
    of many one-element tensors, reading it costs as much as decoding.

    Raises:
        InvalidArgument: above the limits, or a malformed shape.
    """
    named = [(name, tensor, tensors.declared_shape(tensor)) for name, tensor in inputs]
    elements = 0
    size = 0
    for _, tensor, declared in named:
        count, nbytes = declared_size(tensor, declared)
        elements += count
        size += nbytes
    if limits is not None:
        limits.check(elements, size)
    return DeclaredTensors(named, size)


def decode_tensor_protos(
    inputs: Iterable[tuple[str, TensorProto]], limits: TensorLimits | None
) -> dict[str, np.ndarray[Any, Any]]:
    """Named TensorProtos decoded, once their sizes together are within ``limits``
    (None: no limit); nothing is decoded before every shape has been checked.

    Raises:
        InvalidArgument: above the limits, a malformed shape, or a tensor that
            cannot be decoded.
    """
    return declare_tensor_protos(inputs, limits).decode()


def json_elements(value: object) -> int:
    """Elements a JSON value (nested lists) declares by its first row at every
    level; ragged values are refused later, when converted."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return math.prod(shape)


__all__ = [
    "DECODE_IN_THREAD_BYTES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ELEMENTS",
    "DeclaredTensors",
    "TensorLimits",
    "check_tensor_protos",
    "declare_tensor_protos",
    "declared_size",
    "decode_tensor_protos",
    "json_elements",
]
