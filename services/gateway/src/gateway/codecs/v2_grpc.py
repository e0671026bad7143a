"""The Open Inference Protocol's gRPC messages to arrays and back.

A tensor travels either in its typed `contents` field or, by position, in
`raw_input_contents` / `raw_output_contents` (the raw form of `codecs.v2_raw`);
a request uses one or the other for all its inputs, as Triton requires. Pure
functions; no transport here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from servekit_protocol import oip_messages as oip
from servekit_protocol import segments
from servekit_protocol.errors import ProtocolError
from servekit_protocol.messagepipe import PipedArrays, PipedMessage
from servekit_protocol.pickledmessage import ReceivedBytes, received_message
from servekit_protocol.tensor_limits import TensorLimits

from gateway.clients.arrays import ArrayRequest
from gateway.codecs.v2 import InferRequest, RequestedOutput, check_tensor_limits
from gateway.codecs.v2_classification import classify
from gateway.codecs.v2_raw import datatype_dtype, from_raw, to_raw
from gateway.errors import InvalidInput

# The typed field of InferTensorContents that carries each datatype.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameter_value(parameter: oip.InferParameter) -> Any:
    """The Python value of an InferParameter (None when unset)."""
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice is not None else None


def parameters_dict(parameters: Mapping[str, oip.InferParameter]) -> dict[str, Any]:
    """A parameters map as plain values."""
    return {key: parameter_value(value) for key, value in parameters.items()}


def check_input_count(inputs: int, raw: int) -> None:
    """The request's inputs against its ``raw_input_contents`` entries, as every
    ModelInfer path checks them.

    Raises:
        InvalidInput: no input, or raw entries for some inputs only.
    """
    if not inputs:
        raise InvalidInput("a ModelInferRequest needs at least one input")
    if raw and raw != inputs:
        raise InvalidInput(
            f"raw_input_contents has {raw} entries for {inputs} "
            f"inputs; give every input's data there, or none"
        )


def named_input(
    tensor: oip.ModelInferRequest.InferInputTensor, seen: Container[str]
) -> tuple[str, tuple[int, ...]]:
    """An input's name and shape, as every ModelInfer path checks them.

    Raises:
        InvalidInput: no name, a name in ``seen`` already, or a bad shape.
    """
    name = tensor.name
    if not name:
        raise InvalidInput("every input needs a name")
    if name in seen:
        raise InvalidInput(f"input {name!r} given twice")
    return name, input_shape(tensor.shape, name)


def input_shape(raw: Any, name: str) -> tuple[int, ...]:
    """An input's shape.

    Raises:
        InvalidInput: a dimension is negative.
    """
    shape = tuple(int(dim) for dim in raw)
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input {name!r}: shape must be non-negative integers")
    return shape


def _from_contents(
    tensor: oip.ModelInferRequest.InferInputTensor, shape: tuple[int, ...]
) -> np.ndarray[Any, Any]:
    name = tensor.name
    dtype = datatype_dtype(tensor.datatype, name)
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInput(
            f"input {name!r}: {tensor.datatype} has no typed contents field; send it "
            f"in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} needs {count} values, "
            f"{field} has {len(values)}"
        )
    if dtype.kind == "O":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        # A range check: int_contents holds INT8 and INT16 values too.
        wide = np.asarray(values, dtype=np.float64 if dtype.kind == "f" else None)
        array = wide.astype(dtype)
        if dtype.kind in "iu" and not np.array_equal(array, wide):
            raise InvalidInput(
                f"input {name!r}: a value is out of range for {tensor.datatype}"
            )
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"input {name!r}: {exc}") from exc
    return array.reshape(shape)


def requested_output(
    item: oip.ModelInferRequest.InferRequestedOutputTensor,
) -> RequestedOutput:
    parameters = parameters_dict(item.parameters)
    class_count = parameters.get("classification", 0)
    if (
        not isinstance(class_count, int)
        or isinstance(class_count, bool)
        or class_count < 0
    ):
        raise InvalidInput(
            f"output {item.name!r}: classification must be a non-negative integer"
        )
    return RequestedOutput(item.name, None, class_count)


def parse_model_infer(
    request: oip.ModelInferRequest, wanted: Mapping[str, np.dtype[Any]] | None = None
) -> InferRequest:
    """A ModelInferRequest as arrays.

    Args:
        wanted: the model's input dtypes when known, to convert numeric inputs.

    Raises:
        InvalidInput: anything that does not fit the protocol.
    """
    raw = request.raw_input_contents
    check_input_count(len(request.inputs), len(raw))
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    for position, tensor in enumerate(request.inputs):
        name, shape = named_input(tensor, inputs)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input {name!r}: contents must be empty when the request uses "
                    f"raw_input_contents"
                )
            array = from_raw(raw[position], tensor.datatype, shape, name)
        else:
            array = _from_contents(tensor, shape)
        target = wanted.get(name) if wanted is not None else None
        if (
            target is not None
            and target != array.dtype
            and array.dtype.kind in "biuf"
            and target.kind in "biuf"
        ):
            array = array.astype(target)
        inputs[name] = array
    requested = [requested_output(item) for item in request.outputs]
    return InferRequest(
        inputs,
        request.id or None,
        [item.name for item in requested] or None,
        parameters_dict(request.parameters),
        requested,
    )


def _fill_contents(
    contents: oip.InferTensorContents, datatype: str, array: np.ndarray[Any, Any]
) -> None:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"{datatype} outputs can only be sent as raw contents")
    flat = array.reshape(-1)
    if datatype == "BYTES":
        values: list[Any] = [
            item if isinstance(item, bytes) else str(item).encode("utf-8")
            for item in flat.tolist()
        ]
    else:
        values = flat.tolist()
    getattr(contents, field).extend(values)


def format_model_infer(
    model_name: str,
    model_version: str,
    outputs: Mapping[str, np.ndarray[Any, Any]],
    request: InferRequest,
    raw: bool,
) -> oip.ModelInferResponse:
    """A ModelInferResponse; `raw` puts the data in raw_output_contents (as Triton
    answers) instead of each output's typed contents. An output with no typed
    field (FP16) makes the whole answer raw: raw contents match outputs by
    position, so it is all or none.

    Raises:
        InvalidInput: an output with no v2 datatype, or classification of a
            non-numeric output.
    """
    response = oip.ModelInferResponse(
        model_name=model_name, model_version=model_version
    )
    if request.request_id:
        response.id = request.request_id
    class_counts = {item.name: item.class_count for item in request.requested}
    encoded: list[tuple[str, np.ndarray[Any, Any], str, bytes]] = []
    for name, array in outputs.items():
        tensor = array
        if class_counts.get(name):
            tensor = classify(array, class_counts[name], name)
        datatype, data = to_raw(tensor)
        encoded.append((name, tensor, datatype, data))
    raw = raw or any(CONTENTS_FIELD.get(item[2]) is None for item in encoded)
    for name, tensor, datatype, data in encoded:
        entry = response.outputs.add(name=name, datatype=datatype, shape=tensor.shape)
        if raw:
            response.raw_output_contents.append(data)
        else:
            _fill_contents(entry.contents, datatype, tensor)
    return response


@dataclass(frozen=True, slots=True, weakref_slot=True)
class InferMessage:
    """A large ModelInferRequest kept as its bytes (in a shared memory
    segment, or else in ``message``), with what routing and the answer need
    read from it in a worker process (a parse on the event loop would hold
    every other call about 1 ms a MiB)."""

    model_name: str
    model_version: str
    parameters: dict[str, Any]
    """The request's parameters as plain values."""
    raw: bool
    """Whether the inputs came in `raw_input_contents` (answered the same way)."""
    message: bytes | memoryview = b""
    """The message as received, when no segment holds it."""
    segment: str = ""
    """The shared memory segment holding the message (``message`` then
    empty), removed once the request is answered."""


WorkerMessage = PipedMessage | ReceivedBytes | bytes
"""A message as a worker gets it: through a pipe of its own, pickled in
pieces, or whole."""


def read_infer_message(message: WorkerMessage) -> InferMessage:
    """An InferMessage's head, without the bytes (run in a worker process).

    Raises:
        DecodeError: the message does not parse.
        OSError: its pipe ended before the message did.
    """
    # upb parses any buffer; the stubs say bytes.
    request = oip.ModelInferRequest.FromString(cast(bytes, received_message(message)))
    return InferMessage(
        request.model_name,
        request.model_version,
        parameters_dict(request.parameters),
        bool(request.raw_input_contents),
    )


def read_infer_segment(segment: str) -> InferMessage:
    """:func:`read_infer_message` of the message in a shared memory segment
    (run in a worker process).

    Raises:
        DecodeError: the message does not parse.
    """
    with segments.mapped(segment) as view:
        # upb parses any buffer; the stubs say bytes.
        return read_infer_message(cast(bytes, view))


@dataclass(frozen=True, slots=True)
class EncodedInfer:
    """A ModelInfer request turned into the backend's Predict in a worker."""

    request: InferRequest
    """The request without its inputs: ids, outputs and parameters, for the
    answer."""
    message: bytes | memoryview
    """The PredictRequest for the backend without its model spec (the gateway
    writes the target's in front, as for a forwarded Predict)."""


@dataclass(frozen=True, slots=True)
class WrittenInfer:
    """A ModelInfer request encoded as the backend's Predict in a worker, the
    Predict written to a shared memory segment."""

    request: InferRequest
    """The request without its inputs, as in :class:`EncodedInfer`."""
    size: int
    """Bytes of the Predict in the segment."""
    message: bytes = b""
    """The Predict itself when its segment could not be written (no room in
    shared memory): it then comes back through the pool's pipe."""


def encode_infer_message(
    message: WorkerMessage,
    wanted: Mapping[str, np.dtype[Any]] | None,
    limits: TensorLimits,
) -> EncodedInfer:
    """:func:`parse_model_infer` of a message's bytes, checked against the
    request's tensor limits and encoded as the PredictRequest the backend gets
    (run in a worker process: parsing, the arrays and serializing the Predict
    hold the GIL about 5 ms a MiB together).

    Raises:
        InvalidInput: anything that does not fit the protocol, or an array
            that cannot be encoded.
        InvalidArgument: above the tensor limits.
    """
    request = oip.ModelInferRequest.FromString(cast(bytes, received_message(message)))
    return _encoded(request, wanted, limits)


PREDICT_ARRAY = "predict"
"""The name the Predict's bytes go by through an arrays' pipe."""


def encode_infer_piped(
    message: PipedMessage,
    predict: PipedArrays,
    wanted: Mapping[str, np.dtype[Any]] | None,
    limits: TensorLimits,
) -> WrittenInfer:
    """:func:`encode_infer_message` of a message read from its own pipe, the
    Predict's bytes sent back through another (``PREDICT_ARRAY``; run in a
    worker process when no shared memory segment has room: the gateway's
    side copies the bytes in and out in threads, with the GIL released,
    instead of pickling them).

    Raises:
        InvalidInput: as :func:`encode_infer_message` (nothing sent back).
        InvalidArgument: above the tensor limits.
        OSError: a pipe ended early.
    """
    encoded = encode_infer_message(message, wanted, limits)
    data = np.frombuffer(encoded.message, np.uint8)
    predict.send({PREDICT_ARRAY: data})
    return WrittenInfer(encoded.request, len(data))


def encode_infer_segment(
    segment: str,
    predict_segment: str,
    wanted: Mapping[str, np.dtype[Any]] | None,
    limits: TensorLimits,
) -> WrittenInfer:
    """:func:`encode_infer_message` of the message in shared memory segment
    ``segment``, the Predict written to a new segment ``predict_segment`` (run
    in a worker process: the gateway's side only copies the bytes in and out
    in threads, with the GIL released, instead of pickling them on the loop).

    Raises:
        InvalidInput: as :func:`encode_infer_message`.
        InvalidArgument: above the tensor limits.
    """
    with segments.mapped(segment) as view:
        # upb parses any buffer; the stubs say bytes.
        request = oip.ModelInferRequest.FromString(cast(bytes, view))
    encoded = _encoded(request, wanted, limits)
    del request
    try:
        segments.write_bytes(predict_segment, encoded.message)
    except OSError:
        segments.unlink(predict_segment)
        # The worker serialized it: already bytes, not copied again.
        message = bytes(encoded.message)
        return WrittenInfer(encoded.request, len(message), message)
    return WrittenInfer(encoded.request, len(encoded.message))


def _encoded(
    request: oip.ModelInferRequest,
    wanted: Mapping[str, np.dtype[Any]] | None,
    limits: TensorLimits,
) -> EncodedInfer:
    parsed = parse_model_infer(request, wanted)
    check_tensor_limits(parsed, limits)
    try:
        predict = ArrayRequest(
            parsed.inputs, output_filter=tuple(parsed.outputs or ())
        ).to_proto()
    except ProtocolError as exc:
        raise InvalidInput(exc.message) from exc
    predict.ClearField("model_spec")
    return EncodedInfer(
        dataclasses.replace(parsed, inputs={}), predict.SerializeToString()
    )


__all__ = [
    "CONTENTS_FIELD",
    "InferMessage",
    "format_model_infer",
    "input_shape",
    "parameter_value",
    "requested_output",
    "parameters_dict",
    "EncodedInfer",
    "WrittenInfer",
    "encode_infer_message",
    "encode_infer_piped",
    "PREDICT_ARRAY",
    "WorkerMessage",
    "encode_infer_segment",
    "parse_model_infer",
    "read_infer_message",
    "read_infer_segment",
]
