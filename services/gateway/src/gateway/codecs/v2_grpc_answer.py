"""A large ModelInfer's answer written from the backend's PredictResponse as
received, without parsing it on the event loop.

For a request with raw inputs the answer carries each output in
``raw_output_contents`` (as Triton answers): for FP32 and FP64 the bytes of
the packed ``float_val`` / ``double_val`` the backend sent (little-endian,
what ``tensor_content`` holds too), for any fixed-size dtype those of
``tensor_content``. So the ModelInferResponse is its small head (names,
datatypes, shapes, ids) serialized, followed by each output's values as they
came: the PredictResponse's top level and each asked output's TensorProto are
walked (:mod:`gateway.clients.wire`), never parsed. ``raw_output_contents``
is the response's last field, so these bytes are the ones protobuf writes for
the answer built from arrays (:func:`~gateway.codecs.v2_grpc.format_model_infer`).

Anything else (a typed request's answer, a classification, outputs in a typed
field that is not the raw bytes, a field the walk does not expect, a missing
output) is answered exactly as before, from the parsed response: in a thread
with the rest, as the whole function runs there, off the loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from servekit_protocol import messages
from servekit_protocol import oip_messages as oip
from servekit_protocol.dtypes import kind_of
from servekit_protocol.errors import ProtocolError
from servekit_protocol.tensors import to_ndarray, varint

from gateway.clients import wire
from gateway.clients.answers import ReceivedAnswer
from gateway.clients.arrays import ArrayResponse, output_arrays
from gateway.codecs.v2 import InferRequest
from gateway.codecs.v2_datatypes import NUMPY_TO_V2
from gateway.codecs.v2_grpc import format_model_infer
from gateway.errors import InvalidInput, unreadable_answer

_OUTPUTS_FIELD = 1
"""PredictResponse.outputs, a map entry (key 1, value 2)."""
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_DTYPE, _SHAPE, _CONTENT, _FLOAT_VAL, _DOUBLE_VAL = 1, 2, 4, 5, 6
"""TensorProto's fields the walk reads."""
_PACKED_FIELDS = {_FLOAT_VAL: messages.DT_FLOAT, _DOUBLE_VAL: messages.DT_DOUBLE}
"""The typed fields whose packed bytes are the raw values, and their dtype."""
_CHUNK_BYTES = 1024 * 1024
"""The most of an output's values copied with the GIL held at once."""
_RAW_OUTPUT_TAG = b"\x32"
"""ModelInferResponse.raw_output_contents (field 6)."""

Array = np.ndarray[Any, Any]


def chosen_outputs(
    model: str,
    request: InferRequest,
    response: messages.PredictResponse | ArrayResponse | ReceivedAnswer,
) -> dict[str, Array]:
    """The outputs the request asks for (all, without ``outputs``), in its
    order, as arrays.

    Raises:
        InvalidInput: an output that cannot be decoded, or one asked for that
            the model does not have.
    """
    try:
        answered = output_arrays(response)
    except ProtocolError as exc:
        raise InvalidInput(exc.message) from exc
    names = request.outputs or sorted(answered)
    missing = [name for name in names if name not in answered]
    if missing:
        raise InvalidInput(
            f"model {model!r} has no output {missing[0]!r} "
            f"(it has: {', '.join(sorted(answered))})"
        )
    return {name: answered[name] for name in names}


def write_infer_answer(
    model: str,
    model_version: str,
    received: ReceivedAnswer,
    request: InferRequest,
    raw: bool,
) -> bytes:
    """The serialized ModelInferResponse to a backend's answer kept as its
    bytes: written around the outputs' raw bytes where it can be, else built
    from the parsed answer as for any other (run in a thread: either reads
    the whole answer).

    Raises:
        BackendError: INTERNAL, the answer does not parse (as it fails when
            parsed on receipt).
        InvalidInput: as :func:`chosen_outputs` and
            :func:`~gateway.codecs.v2_grpc.format_model_infer`.
    """
    try:
        if raw:
            written = written_answer(model, model_version, received.data, request)
            if written is not None:
                return written
        outputs = chosen_outputs(model, request, received)
    except DecodeError as exc:
        raise unreadable_answer(exc) from exc
    answer = format_model_infer(model, model_version, outputs, request, raw=raw)
    return answer.SerializeToString()


def built_answer(
    model: str,
    model_version: str,
    outputs: Mapping[str, Array],
    request: InferRequest,
    raw: bool,
) -> bytes:
    """The serialized ModelInferResponse to outputs already decoded (a merged
    call's share): :func:`~gateway.codecs.v2_grpc.format_model_infer`'s
    answer, as the front would serialize it. Meant for a worker thread: a
    2 MiB share written as typed contents costs the loop some 10 ms, and a
    merged call's callers are all answered at once.

    Raises:
        InvalidInput: as :func:`~gateway.codecs.v2_grpc.format_model_infer`.
    """
    answer = format_model_infer(model, model_version, outputs, request, raw=raw)
    return answer.SerializeToString()


def outputs_size(outputs: Mapping[str, Array]) -> int:
    """The bytes the outputs' values hold (an object array's: its pointers)."""
    return sum(array.nbytes for array in outputs.values())


def written_answer(
    model: str, model_version: str, data: bytes, request: InferRequest
) -> bytes | None:
    """The ModelInferResponse (raw outputs) to a PredictResponse's bytes,
    written around its outputs' values; None when it cannot be (see the
    module's docstring)."""
    view = memoryview(data)
    tensors = _output_tensors(view)
    if tensors is None:
        return None
    names = request.outputs or sorted(tensors)
    classified = {item.name for item in request.requested if item.class_count}
    if any(name not in tensors or name in classified for name in names):
        return None
    raw_tensors = {name: _raw_tensor(view, *place) for name, place in tensors.items()}
    if any(raw_tensors[name] is None for name in names):
        return None
    for name, place in tensors.items():
        if raw_tensors[name] is None:
            # Not asked for, but the parsed path decodes every output, and
            # refuses the answer if one does not decode.
            _decoded(view, *place)
    response = oip.ModelInferResponse(model_name=model, model_version=model_version)
    if request.request_id:
        response.id = request.request_id
    values: list[memoryview] = []
    for name in names:
        tensor = raw_tensors[name]
        assert tensor is not None
        datatype, shape, content = tensor
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        values.append(content)
    pieces = [response.SerializeToString()]
    for content in values:
        pieces.append(_RAW_OUTPUT_TAG + varint(len(content)))
        # Copied a chunk at a time, then joined: bytes.join holds the GIL
        # while it copies a view (64 MiB: 110-200 ms on a loaded machine, the
        # event loop waiting all along), but not while it copies bytes.
        pieces += (
            bytes(content[start : start + _CHUNK_BYTES])
            for start in range(0, len(content), _CHUNK_BYTES)
        )
    return b"".join(pieces)


def _decoded(view: memoryview, start: int, end: int) -> None:
    """Decode one output as the parsed path does, for its error.

    Raises:
        InvalidInput: its values do not decode.
        DecodeError: it does not parse, as the whole answer would not.
    """
    try:
        to_ndarray(messages.TensorProto.FromString(view[start:end]))  # type: ignore[arg-type]
    except ProtocolError as exc:
        raise InvalidInput(exc.message) from exc


def _output_tensors(view: memoryview) -> Mapping[str, tuple[int, int]] | None:
    """Where each output's TensorProto lies in a PredictResponse, by name;
    None when an entry is not as a serializer writes it, or a name repeats."""
    tensors: dict[str, tuple[int, int]] = {}
    try:
        for number, wire_type, _, start, end in wire.fields(view, 0, len(view)):
            if number != _OUTPUTS_FIELD:
                continue
            if wire_type != wire.LENGTH_DELIMITED:
                return None
            key: str | None = None
            value: tuple[int, int] | None = None
            for field, entry_wire, _, inner, stop in wire.fields(view, start, end):
                if (
                    entry_wire != wire.LENGTH_DELIMITED
                    or (key if field == _ENTRY_KEY else value) is not None
                ):
                    return None
                if field == _ENTRY_KEY:
                    key = str(view[inner:stop], "utf-8")
                elif field == _ENTRY_VALUE:
                    value = (inner, stop)
                else:
                    return None
            if key is None or value is None or key in tensors:
                return None
            tensors[key] = value
    except (IndexError, UnicodeDecodeError):
        return None
    return tensors


def _raw_tensor(
    view: memoryview, start: int, end: int
) -> tuple[str, list[int], memoryview] | None:
    """A TensorProto's v2 datatype, shape and values as raw bytes, when its
    values are in ``tensor_content`` or a packed ``float_val``/``double_val``
    of exactly the shape's size; else None."""
    found: dict[int, tuple[int, int, int]] = {}
    try:
        for number, wire_type, _, inner, stop in wire.fields(view, start, end):
            if number in found or number not in (
                _DTYPE,
                _SHAPE,
                _CONTENT,
                *_PACKED_FIELDS,
            ):
                return None
            found[number] = (wire_type, inner, stop)
        dtype: int = messages.DT_INVALID
        if _DTYPE in found:
            wire_type, inner, _ = found[_DTYPE]
            if wire_type != wire.VARINT:
                return None
            dtype = wire.varint(view, inner)[0]
        shape = messages.TensorShapeProto()
        if _SHAPE in found:
            wire_type, inner, stop = found[_SHAPE]
            if wire_type != wire.LENGTH_DELIMITED:
                return None
            shape.MergeFromString(view[inner:stop])  # type: ignore[arg-type]
        kind = kind_of(dtype)
    except (IndexError, DecodeError, ProtocolError):
        return None
    sizes = [dim.size for dim in shape.dim]
    datatype = NUMPY_TO_V2.get(kind.numpy.str)
    if shape.unknown_rank or any(size < 0 for size in sizes) or datatype is None:
        return None
    values = [number for number in (_CONTENT, *_PACKED_FIELDS) if number in found]
    if len(values) > 1:
        return None
    content = view[0:0]
    if values:
        number = values[0]
        wire_type, inner, stop = found[number]
        if wire_type != wire.LENGTH_DELIMITED or (
            number in _PACKED_FIELDS and _PACKED_FIELDS[number] != dtype
        ):
            return None
        content = view[inner:stop]
    if len(content) != math.prod(sizes) * kind.numpy.itemsize:
        return None
    return datatype, sizes, content


__all__ = [
    "built_answer",
    "chosen_outputs",
    "outputs_size",
    "write_infer_answer",
    "written_answer",
]
