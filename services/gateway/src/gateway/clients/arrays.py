"""Predict calls whose tensors stay numpy arrays until the backend call.

The REST adapters parse JSON into arrays and answer from arrays. Going through
protos for each caller (a TensorProto per input, merged protos, the merged answer
split into protos, each decoded again) cost about 50 µs a request when 32 callers
share a call; concatenating the callers' arrays, encoding them once and slicing the
decoded answer costs about 3 µs. gRPC callers already hold protos and keep them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from servekit_protocol import messages
from servekit_protocol.tensors import from_ndarray, to_ndarray

from gateway.clients.answers import ReceivedAnswer
from gateway.errors import unreadable_answer

Array = np.ndarray[Any, Any]


@dataclass(slots=True)
class ArrayRequest:
    """A PredictRequest with its inputs as arrays; `model_spec` is routed as usual."""

    inputs: dict[str, Array]
    model_spec: messages.ModelSpec = field(default_factory=messages.ModelSpec)
    output_filter: tuple[str, ...] = ()
    size: tuple[int, int] | None = None
    """The inputs' `tensor_size`, when the request limit was checked on it
    already: counting a string tensor's bytes walks every value, on the event
    loop, and the coalescer needs the same count."""

    def to_proto(self) -> messages.PredictRequest:
        """The request as the backend receives it.

        Raises:
            ProtocolError: an array cannot be encoded (e.g. an unsupported dtype).
        """
        request = messages.PredictRequest()
        request.model_spec.CopyFrom(self.model_spec)
        request.output_filter.extend(self.output_filter)
        inputs = request.inputs
        for name, array in self.inputs.items():
            from_ndarray(array, into=inputs[name], packed=True)
        return request

    def copy(self) -> ArrayRequest:
        """Another request with the same (shared, never modified) arrays."""
        spec = messages.ModelSpec()
        spec.CopyFrom(self.model_spec)
        return ArrayRequest(dict(self.inputs), spec, self.output_filter, self.size)


@dataclass(slots=True)
class ArrayResponse:
    """A PredictResponse with its outputs decoded."""

    model_spec: messages.ModelSpec
    outputs: dict[str, Array]

    @classmethod
    def from_proto(cls, response: messages.PredictResponse) -> ArrayResponse:
        """Decode every output.

        Raises:
            ProtocolError: an output cannot be decoded.
        """
        return cls(
            response.model_spec,
            {name: to_ndarray(tensor) for name, tensor in response.outputs.items()},
        )


def array_layout(inputs: Mapping[str, Array]) -> tuple[tuple[object, ...], int] | None:
    """What merging needs equal (names, dtypes, trailing dimensions) and the rows.

    None when the inputs cannot merge: none, a scalar, or leading dimensions
    that differ.
    """
    rows = -1
    layout: list[object] = []
    for name in sorted(inputs):
        array = inputs[name]
        shape = array.shape
        if not shape or shape[0] < 1 or (rows != -1 and shape[0] != rows):
            return None
        rows = shape[0]
        layout.append((name, array.dtype.str, shape[1:]))
    if rows == -1:
        return None
    return tuple(layout), rows


def tensor_size(arrays: Iterable[Array]) -> tuple[int, int]:
    """The elements and bytes of arrays together, as the request limit counts
    them: an object array's references plus its values' lengths."""
    elements = 0
    size = 0
    for array in arrays:
        elements += array.size
        size += array.nbytes
        if array.dtype.kind == "O":
            size += sum(len(item) for item in array.reshape(-1).tolist())
    return elements, size


def merge_arrays(requests: Sequence[ArrayRequest]) -> ArrayRequest:
    """One request whose inputs are the given ones concatenated along axis 0."""
    first = requests[0]
    return ArrayRequest(
        {
            name: np.concatenate([request.inputs[name] for request in requests])
            for name in first.inputs
        },
        first.model_spec,
        first.output_filter,
    )


def split_arrays(
    response: ArrayResponse, rows: Sequence[int]
) -> list[ArrayResponse] | None:
    """Each caller's rows (views, not copies); None when an output does not lead
    with the merged batch size."""
    total = sum(rows)
    outputs = response.outputs
    if any(not array.shape or array.shape[0] != total for array in outputs.values()):
        return None
    answers: list[ArrayResponse] = []
    start = 0
    for count in rows:
        end = start + count
        answers.append(
            ArrayResponse(
                response.model_spec,
                {name: array[start:end] for name, array in outputs.items()},
            )
        )
        start = end
    return answers


def output_arrays(
    response: messages.PredictResponse | ArrayResponse | ReceivedAnswer,
) -> dict[str, Array]:
    """The outputs of any kind of answer as arrays (an answer kept as its
    bytes is parsed: callers that decode outputs do not ask for those).

    Raises:
        ProtocolError: an output cannot be decoded.
    """
    if isinstance(response, ArrayResponse):
        return response.outputs
    if isinstance(response, ReceivedAnswer):
        response = messages.PredictResponse.FromString(response.data)
    return ArrayResponse.from_proto(response).outputs


async def decoded_outputs(
    response: messages.PredictResponse | ArrayResponse | ReceivedAnswer,
) -> dict[str, Array]:
    """`output_arrays`, in a worker thread for an answer kept as its bytes:
    parsing and decoding a large answer cost the event loop about 2 ms a MiB
    that no other call is served (the thread holds the GIL while protobuf
    parses, but the loop's own thread is not the one working).

    Raises:
        BackendError: INTERNAL, a kept answer does not parse (as it fails when
            parsed on receipt).
        ProtocolError: an output cannot be decoded.
    """
    if not isinstance(response, ReceivedAnswer):
        return output_arrays(response)
    try:
        return await asyncio.to_thread(output_arrays, response)
    except DecodeError as exc:
        raise unreadable_answer(exc) from exc
