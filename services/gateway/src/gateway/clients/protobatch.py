"""Predict protos merged into one and the merged answer cut back, tensor by tensor.

gRPC callers hold `PredictRequest`s; merging them concatenates each input along
the batch axis. Packed bytes and complete typed value lists are joined as they
are, without decoding; only a tensor in another form (one value standing for a
whole tensor, say) goes through numpy. Splitting cuts each output's rows the same
way. A large merged answer kept as its bytes is parsed, cut and each share
serialized in one go (`split_answer`), off the event loop; so is a merge whose
tensors decode to `DECODE_IN_THREAD_BYTES` or more (`write_merged`): small
messages can declare that much through the fill rule, and the loop's thread
would write it all, new memory the kernel zeroes first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from servekit_protocol import messages
from servekit_protocol.errors import ProtocolError
from servekit_protocol.tensor_limits import (
    DECODE_IN_THREAD_BYTES,
    declare_tensor_protos,
)
from servekit_protocol.tensors import element_field, from_ndarray, to_ndarray

from gateway.clients.answers import ReceivedAnswer
from gateway.clients.forwarded import ForwardedPredict


def _row_size(tensor: messages.TensorProto) -> int:
    size = 1
    for dim in tensor.tensor_shape.dim[1:]:
        size *= dim.size
    return size


def _concatenate(
    tensors: Sequence[messages.TensorProto],
    rows: Sequence[int],
    into: messages.TensorProto,
) -> None:
    """`into` = the tensors joined along axis 0.

    Packed bytes and complete typed value lists are joined as they are (no
    decoding); anything else (e.g. one value standing for a whole tensor) goes
    through numpy.

    Raises:
        ProtocolError: a tensor cannot be decoded or re-encoded.
    """
    first = tensors[0]
    into.dtype = first.dtype
    into.tensor_shape.CopyFrom(first.tensor_shape)
    into.tensor_shape.dim[0].size = sum(rows)
    if all(tensor.tensor_content for tensor in tensors):
        into.tensor_content = b"".join(tensor.tensor_content for tensor in tensors)
        return
    field_name = element_field(first.dtype)
    per_row = _row_size(first)
    if field_name is not None and all(
        not tensor.tensor_content
        and len(getattr(tensor, field_name)) == count * per_row
        for tensor, count in zip(tensors, rows, strict=True)
    ):
        values = getattr(into, field_name)
        for tensor in tensors:
            values.extend(getattr(tensor, field_name))
        return
    arrays = [to_ndarray(tensor) for tensor in tensors]
    from_ndarray(np.concatenate(arrays), first.dtype, into=into, packed=True)


def merge_requests(
    requests: Sequence[messages.PredictRequest], rows: Sequence[int]
) -> messages.PredictRequest:
    """One request whose inputs are the given ones concatenated along axis 0.

    Raises:
        ProtocolError: a tensor cannot be decoded or re-encoded.
    """
    first = requests[0]
    merged = messages.PredictRequest()
    merged.model_spec.CopyFrom(first.model_spec)
    merged.output_filter.extend(first.output_filter)
    for name in first.inputs:
        _concatenate(
            [request.inputs[name] for request in requests], rows, merged.inputs[name]
        )
    return merged


async def merged_request(
    requests: Sequence[messages.PredictRequest],
    rows: Sequence[int],
    keep_answer_from: int | None,
) -> messages.PredictRequest | ForwardedPredict:
    """`merge_requests`, or `write_merged` in a worker thread once the tensors
    decode to `DECODE_IN_THREAD_BYTES` or more; ``keep_answer_from`` as
    `ForwardedPredict`'s, for the latter. (The coalescer held the callers to
    the request limit together: `clients.batchkeys`.)

    Raises:
        ProtocolError: a tensor cannot be decoded or re-encoded.
    """
    size = declared_bytes(requests)
    if size is None or size < DECODE_IN_THREAD_BYTES:
        return merge_requests(requests, rows)
    return await asyncio.to_thread(write_merged, requests, rows, keep_answer_from)


def declared_bytes(requests: Sequence[messages.PredictRequest]) -> int | None:
    """The bytes the requests' tensors decode to, all together, read from their
    shapes; None when a shape cannot be read (the merge meets it as before)."""
    total = 0
    try:
        for request in requests:
            total += declare_tensor_protos(request.inputs.items(), None).nbytes
    except ProtocolError:
        return None
    return total


def write_merged(
    requests: Sequence[messages.PredictRequest],
    rows: Sequence[int],
    keep_answer_from: int | None,
) -> ForwardedPredict:
    """`merge_requests`, serialized: the bytes the merged request's
    ``SerializeToString`` gives, sent as they are. Meant for a worker thread,
    so that neither the tensors filled nor the message written are the event
    loop's thread's work; ``keep_answer_from`` as `ForwardedPredict`'s.

    Raises:
        ProtocolError: a tensor cannot be decoded or re-encoded.
    """
    merged = merge_requests(requests, rows)
    spec = messages.ModelSpec()
    spec.CopyFrom(merged.model_spec)
    # The spec is field 1, written first; the rest follows it unchanged.
    merged.ClearField("model_spec")
    rest = memoryview(merged.SerializeToString())
    return ForwardedPredict(spec, {}, rest, keep_answer_from)


def _split_tensor(
    tensor: messages.TensorProto, rows: Sequence[int]
) -> list[messages.TensorProto] | None:
    """The tensor cut into consecutive row ranges; None without a batch axis of
    `sum(rows)`."""
    dims = tensor.tensor_shape.dim
    total = sum(rows)
    if not dims or dims[0].size != total:
        return None
    per_row = _row_size(tensor)
    content = tensor.tensor_content
    field_name = element_field(tensor.dtype)
    values: Sequence[object] | None = None
    if content:
        if len(content) % max(1, total * per_row):
            return None
        step = len(content) // total if total else 0
    elif field_name is not None:
        values = getattr(tensor, field_name)
        if len(values) != total * per_row:
            values = None
    if not content and values is None:
        array = to_ndarray(tensor)
        parts: list[messages.TensorProto] = []
        start = 0
        for count in rows:
            parts.append(from_ndarray(array[start : start + count], tensor.dtype))
            start += count
        return parts
    parts = []
    start = 0
    for count in rows:
        part = messages.TensorProto()
        part.dtype = tensor.dtype
        part.tensor_shape.CopyFrom(tensor.tensor_shape)
        part.tensor_shape.dim[0].size = count
        if content:
            part.tensor_content = content[start * step : (start + count) * step]
        else:
            assert field_name is not None and values is not None
            getattr(part, field_name).extend(
                values[start * per_row : (start + count) * per_row]
            )
        parts.append(part)
        start += count
    return parts


def split_response(
    response: messages.PredictResponse, rows: Sequence[int]
) -> list[messages.PredictResponse] | None:
    """Each caller's rows of a merged answer; None when an output has no batch
    dimension of the merged size.

    Raises:
        ProtocolError: an output cannot be decoded.
    """
    pieces: dict[str, list[messages.TensorProto]] = {}
    for name in response.outputs:
        split = _split_tensor(response.outputs[name], rows)
        if split is None:
            return None
        pieces[name] = split
    answers: list[messages.PredictResponse] = []
    for index in range(len(rows)):
        answer = messages.PredictResponse()
        answer.model_spec.CopyFrom(response.model_spec)
        for name, split in pieces.items():
            answer.outputs[name].CopyFrom(split[index])
        answers.append(answer)
    return answers


def split_answer(
    answer: ReceivedAnswer, rows: Sequence[int]
) -> list[ReceivedAnswer] | None:
    """`split_response` of an answer kept as its bytes, each caller's share
    serialized: the bytes protobuf writes for the share `split_response` cuts
    from the parsed answer. Meant for a worker thread: parsing and writing
    again hold the GIL, but not the event loop's own thread.

    Raises:
        DecodeError: the answer does not parse.
        ProtocolError: an output cannot be decoded.
    """
    response = messages.PredictResponse.FromString(answer.data)
    parts = split_response(response, rows)
    if parts is None:
        return None
    return [ReceivedAnswer(part.SerializeToString(), part.model_spec) for part in parts]
