"""Large gRPC ModelInfer requests with raw inputs, written as the backend's
PredictRequest without copying their tensors.

tritonclient and KServe's gRPC client send numpy inputs in
``raw_input_contents``: for a fixed-size datatype, exactly the bytes a
TensorProto carries in ``tensor_content`` (little-endian, row-major). So a
large ModelInfer is read by walking its top-level fields
(:mod:`gateway.clients.wire`): every field but ``raw_input_contents`` (field
7) is small and is parsed as a ModelInferRequest of its own, the *head*; each
raw input is kept as a view of the received message. The PredictRequest for
the backend is then written as its small fields, each followed by one of
those views as a ``tensor_content`` (:class:`~gateway.clients.forwarded.WrittenPredict`).
Parsing the message whole, copying it for a worker process and pickling it
there held the loop some 200 ms at 64 MiB.

The checks are those of :func:`~gateway.codecs.v2_grpc.parse_model_infer`, in
its order, with its messages; an input cast to the target's dtype, and the
BOOL value check, read every byte, so the encoding runs in a thread (numpy
releases the GIL for both). A message the walk does not expect (a field not
in plain wire format, BYTES inputs, typed ``contents``, a head over
:data:`MAX_HEAD_BYTES`, more than :data:`MAX_TOP_LEVEL_FIELDS` fields) is left
to the worker path, which answers it as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from servekit_protocol import messages
from servekit_protocol import oip_messages as oip
from servekit_protocol.dtypes import kind_of
from servekit_protocol.errors import ProtocolError
from servekit_protocol.tensor_limits import TensorLimits
from servekit_protocol.tensors import varint

from gateway.clients import wire
from gateway.codecs.v2 import InferRequest
from gateway.codecs.v2_grpc import (
    check_input_count,
    named_input,
    parameters_dict,
    requested_output,
)
from gateway.codecs.v2_raw import check_raw
from gateway.errors import InvalidInput

RAW_INPUT_FIELD = 7
"""``ModelInferRequest.raw_input_contents``."""
MAX_HEAD_BYTES = 256 * 1024
"""Bytes of fields other than raw inputs parsed on the loop (well under a
millisecond); a request with more (typed contents, say) goes to a worker."""
MAX_TOP_LEVEL_FIELDS = 4096
"""Top-level fields walked before the message goes to a worker instead: one
per input, output, parameter and raw input, so only an odd request has
more, and walking millions in Python would hold the loop longer than a
parse."""
_INPUTS_TAG = b"\x12"
"""PredictRequest.inputs (field 2), a map entry."""
_OUTPUT_FILTER_TAG = b"\x1a"
"""PredictRequest.output_filter (field 3)."""
_ENTRY_KEY_TAG = b"\x0a"
_ENTRY_VALUE_TAG = b"\x12"
_TENSOR_CONTENT_TAG = b"\x22"
"""TensorProto.tensor_content (field 4)."""

Part = bytes | memoryview


@dataclass(frozen=True, slots=True)
class RawInfer:
    """A large ModelInferRequest with raw inputs: its head parsed, its raw
    inputs views of the received message (which is never reused)."""

    head: oip.ModelInferRequest
    """Every field of the request but ``raw_input_contents``."""
    raw: tuple[memoryview, ...]

    @property
    def model_name(self) -> str:
        return self.head.model_name

    @property
    def model_version(self) -> str:
        return self.head.model_version


@dataclass(frozen=True, slots=True)
class SplicedInfer:
    """A RawInfer written as the backend's PredictRequest."""

    request: InferRequest
    """The request without its inputs: ids, outputs and parameters, for the
    answer."""
    parts: tuple[Part, ...]
    """The PredictRequest without its model spec (the gateway writes the
    target's in front), in parts to send one after the other."""


def read_raw_infer(message: memoryview) -> RawInfer | None:
    """A large ModelInfer's head and raw inputs, or None when it is not one
    this module writes (the worker path then answers it as before)."""
    head_parts: list[memoryview] = []
    raw: list[memoryview] = []
    head_bytes = 0
    try:
        for count, (number, wire_type, field, value, end) in enumerate(
            wire.fields(message, 0, len(message)), 1
        ):
            if count > MAX_TOP_LEVEL_FIELDS:
                return None
            if number == RAW_INPUT_FIELD:
                if wire_type != wire.LENGTH_DELIMITED:
                    return None
                raw.append(message[value:end])
                continue
            head_bytes += end - field
            if head_bytes > MAX_HEAD_BYTES:
                return None
            head_parts.append(message[field:end])
    except IndexError:
        return None
    if not raw:
        return None
    try:
        # Fields keep their order, so the head parses as the whole message
        # does (last singular value wins, repeated ones append).
        head = oip.ModelInferRequest.FromString(b"".join(head_parts))
    except DecodeError:
        return None
    if any(
        tensor.datatype == "BYTES" or tensor.HasField("contents")
        for tensor in head.inputs
    ):
        return None
    return RawInfer(head, tuple(raw))


@dataclass(slots=True)
class _Input:
    name: str
    shape: tuple[int, ...]
    data: memoryview
    dtype: np.dtype[Any]
    """The datatype's dtype."""
    target: np.dtype[Any]
    """The dtype it is sent as: the model's where a cast applies."""


def encode_raw_infer(
    infer: RawInfer,
    wanted: Mapping[str, np.dtype[Any]] | None,
    limits: TensorLimits,
) -> SplicedInfer:
    """The backend's PredictRequest of a RawInfer, its tensors the raw
    inputs themselves unless cast to the target's dtypes (run in a thread:
    a cast and the BOOL check read every byte, with the GIL released).

    Raises:
        InvalidInput: anything :func:`~gateway.codecs.v2_grpc.parse_model_infer`
            refuses, with its message, or an input that cannot be encoded.
        InvalidArgument: above the tensor limits.
    """
    head = infer.head
    raw = infer.raw
    # A raw infer always has entries: none at all is not this path's.
    check_input_count(len(head.inputs), len(raw))
    inputs: dict[str, _Input] = {}
    for position, tensor in enumerate(head.inputs):
        name, shape = named_input(tensor, inputs)
        dtype = check_raw(raw[position], tensor.datatype, shape, name)
        target = wanted.get(name) if wanted is not None else None
        cast = (
            target is not None
            and target != dtype
            and dtype.kind in "biuf"
            and target.kind in "biuf"
        )
        inputs[name] = _Input(
            name, shape, raw[position], dtype, target if cast and target else dtype
        )
    requested = [requested_output(item) for item in head.outputs]
    outputs = [item.name for item in requested]
    # What check_tensor_limits counts of the arrays the in-place path makes.
    elements = sum(math.prod(item.shape) for item in inputs.values())
    size = sum(math.prod(item.shape) * item.target.itemsize for item in inputs.values())
    limits.check(elements, size)
    parts = _Parts()
    for item in inputs.values():
        try:
            kind = kind_of(item.target)
        except ProtocolError as exc:
            raise InvalidInput(exc.message) from exc
        data = item.data
        if item.target != item.dtype:
            values = np.frombuffer(data, item.dtype.newbyteorder("<"))
            data = values.astype(kind.wire).data.cast("B")
        _write_input(parts, item.name, item.shape, kind.data_type, data)
    for name in outputs:
        encoded = name.encode("utf-8")
        parts.add(_OUTPUT_FILTER_TAG + varint(len(encoded)) + encoded)
    return SplicedInfer(
        InferRequest(
            {},
            head.id or None,
            outputs or None,
            parameters_dict(head.parameters),
            requested,
        ),
        parts.done(),
    )


class _Parts:
    """Parts of a message: small bytes joined, views kept as they are."""

    def __init__(self) -> None:
        self._parts: list[Part] = []
        self._pending = bytearray()

    def add(self, data: bytes) -> None:
        self._pending += data

    def view(self, data: memoryview) -> None:
        if self._pending:
            self._parts.append(bytes(self._pending))
            self._pending.clear()
        self._parts.append(data)

    def done(self) -> tuple[Part, ...]:
        if self._pending:
            self._parts.append(bytes(self._pending))
        return tuple(self._parts)


def _write_input(
    parts: _Parts,
    name: str,
    shape: tuple[int, ...],
    data_type: messages.DataType.ValueType,
    data: memoryview,
) -> None:
    """One ``inputs`` map entry, its TensorProto as ``from_ndarray(packed=True)``
    writes it: dtype, shape (none for a scalar), ``tensor_content`` (none when
    empty)."""
    tensor = messages.TensorProto(dtype=data_type)
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor_head = tensor.SerializeToString()
    if len(data):
        tensor_head += _TENSOR_CONTENT_TAG + varint(len(data))
    tensor_size = len(tensor_head) + len(data)
    key = name.encode("utf-8")
    entry = (
        _ENTRY_KEY_TAG
        + varint(len(key))
        + key
        + _ENTRY_VALUE_TAG
        + varint(tensor_size)
        + tensor_head
    )
    parts.add(_INPUTS_TAG + varint(len(entry) + len(data)) + entry)
    if len(data):
        parts.view(data)


__all__ = [
    "MAX_HEAD_BYTES",
    "MAX_TOP_LEVEL_FIELDS",
    "RAW_INPUT_FIELD",
    "RawInfer",
    "SplicedInfer",
    "encode_raw_infer",
    "read_raw_infer",
]
