"""Large gRPC ``Predict`` messages forwarded to the backend as they came.

The gateway needs three things from a PredictRequest: its model spec (to route,
authorize and name the target), the inputs' dtypes and shapes (to apply the
request's tensor limits) and nothing else; the tensors' values are the backend's.
Parsing a whole message holds the event loop (and so every other call) about
1 ms a MiB, and serializing it again for the backend about twice that: at the
16 MiB default body limit, some 25 ms and 50 ms. So from
``GATEWAY_GRPC_PARSE_OFFLOAD_BYTES`` up a message is read with a *head* type that
declares only those fields: protobuf's parser (upb) keeps the rest as unknown
fields, a copy at memory speed (about 3 ms for 16 MiB), without decoding a value.
The message then goes to the backend with its leading ``model_spec`` field cut
off and the target's spec written in its place; its other bytes are sent as
received (:mod:`gateway.clients.spliced`, shared with Classify, Regress and
MultiInference: :mod:`gateway.clients.forwarded_examples`). A message whose
``model_spec`` is not its one leading field is parsed whole, as below the
threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from servekit_protocol import messages
from servekit_protocol.grpc_server import OffloadedDecoder
from servekit_protocol.services import PREDICTION_SERVICE

from gateway.clients.forwarded_examples import read_examples, read_multi_inference
from gateway.clients.spliced import Spliced, leading_entries
from gateway.clients.wire import (
    LENGTH_DELIMITED,
    VARINT,
    length_delimited,
    skipped,
    tag,
    varint,
)

_SPEC_FIELD, _INPUTS_FIELD, _OUTPUT_FILTER_FIELD = 1, 2, 3
_HEAD_FIELDS = (_SPEC_FIELD, _INPUTS_FIELD, _OUTPUT_FILTER_FIELD)
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_DTYPE_FIELD, _SHAPE_FIELD, _STRING_VAL_FIELD = 1, 2, 8
_INT32_END = 1 << 31
_WALKED_TENSOR_FIELDS = 64
"""Fields of one tensor walked before it is parsed with the head type: values
are one packed field or ``tensor_content``, so only values written one field
each (valid, if no serializer's choice) come to more."""


def _head_types() -> tuple[Any, Any]:
    """The head message types, in a pool of their own: ``PredictHead`` has
    PredictRequest's field numbers for ``model_spec``, ``inputs`` and
    ``output_filter`` (declared so that upb checks their UTF-8 as the full
    parse does), and ``TensorHead`` those of TensorProto that
    :func:`~servekit_protocol.tensor_limits.declared_size` reads."""
    pool = descriptor_pool.DescriptorPool()
    spec_file = messages.ModelSpec.DESCRIPTOR.file
    shape_file = messages.TensorShapeProto.DESCRIPTOR.file
    for module in (*spec_file.dependencies, spec_file, shape_file):
        proto = descriptor_pb2.FileDescriptorProto()
        module.CopyToProto(proto)
        pool.Add(proto)
    field = descriptor_pb2.FieldDescriptorProto
    head = descriptor_pb2.FileDescriptorProto(
        name="servekit_gateway/predict_head.proto",
        package="servekit.gateway",
        syntax="proto3",
        dependency=[spec_file.name, shape_file.name],
    )
    tensor = head.message_type.add(name="TensorHead")
    tensor.field.add(
        name="dtype", number=1, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL
    )
    tensor.field.add(
        name="tensor_shape",
        number=2,
        type=field.TYPE_MESSAGE,
        type_name=f".{messages.TensorShapeProto.DESCRIPTOR.full_name}",
        label=field.LABEL_OPTIONAL,
    )
    tensor.field.add(
        name="string_val", number=8, type=field.TYPE_BYTES, label=field.LABEL_REPEATED
    )
    request = head.message_type.add(name="PredictHead")
    request.field.add(
        name="model_spec",
        number=1,
        type=field.TYPE_MESSAGE,
        type_name=f".{messages.ModelSpec.DESCRIPTOR.full_name}",
        label=field.LABEL_OPTIONAL,
    )
    entry = request.nested_type.add(name="InputsEntry")
    entry.options.map_entry = True
    entry.field.add(
        name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL
    )
    entry.field.add(
        name="value",
        number=2,
        type=field.TYPE_MESSAGE,
        type_name=".servekit.gateway.TensorHead",
        label=field.LABEL_OPTIONAL,
    )
    request.field.add(
        name="inputs",
        number=2,
        type=field.TYPE_MESSAGE,
        type_name=".servekit.gateway.PredictHead.InputsEntry",
        label=field.LABEL_REPEATED,
    )
    request.field.add(
        name="output_filter",
        number=3,
        type=field.TYPE_STRING,
        label=field.LABEL_REPEATED,
    )
    pool.Add(head)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("servekit.gateway.PredictHead")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("servekit.gateway.TensorHead")
        ),
    )


PredictHead, TensorHead = _head_types()


@dataclass(slots=True)
class ForwardedPredict(Spliced):
    """A PredictRequest the gateway forwards without parsing its tensors.

    ``model_spec`` is a real ModelSpec: routing reads it and
    :func:`~gateway.context.apply_target` rewrites it as it does a parsed
    request's. ``SerializeToString`` gives what goes to the backend.
    """

    model_spec: messages.ModelSpec
    inputs: Mapping[str, Any]
    """Each input's dtype, shape and string values (``TensorHead``): what the
    tensor limits read."""
    rest: memoryview
    """The client's message without its leading ``model_spec`` field (a view
    of the received body, which is not reused: see ``OffloadedDecoder``)."""
    keep_answer_from: int | None = None
    """Answers of this many bytes or more come back as the backend sent them
    (`clients.answers`): set where the answer goes to the client unchanged;
    None: parsed."""

    def leading(self) -> tuple[bytes]:
        return (self.model_spec.SerializeToString(),)

    def copy(self) -> ForwardedPredict:
        """Another request with its own spec, its answer parsed (the rest is
        shared: it is never changed)."""
        spec = messages.ModelSpec()
        spec.CopyFrom(self.model_spec)
        return ForwardedPredict(spec, self.inputs, self.rest)


@dataclass(slots=True)
class WrittenPredict(ForwardedPredict):
    """A PredictRequest the gateway wrote itself, in parts: its tensors'
    values are views of a client's message (a large OIP ModelInfer's raw
    inputs, :mod:`gateway.codecs.v2_spliced`), sent without being joined."""

    parts: tuple[bytes | memoryview, ...] = ()
    """The message after its model spec, in order."""

    def rest_parts(self) -> tuple[bytes | memoryview, ...]:
        return self.parts

    def copy(self) -> WrittenPredict:
        """Another request with its own spec, its answer parsed (the parts are
        shared: they are never changed)."""
        spec = messages.ModelSpec()
        spec.CopyFrom(self.model_spec)
        return WrittenPredict(spec, self.inputs, self.rest, parts=self.parts)


def read_predict(message: memoryview) -> ForwardedPredict | messages.PredictRequest:
    """A large Predict message, read for forwarding; parsed whole (as below the
    threshold) when its ``model_spec`` is not its one leading field.

    Raises:
        DecodeError: the message does not parse; the error is the full parse's,
            so that a client sees what the in-place path gives.
    """
    leading = leading_entries(message, 1)
    spec_end = leading[0] if len(leading) == 1 else None
    spec = messages.ModelSpec()
    walked = None if spec_end is None else _walked_inputs(message, spec_end[1])
    if spec_end is not None and walked is not None:
        try:
            spec.MergeFromString(cast(bytes, message[spec_end[0] : spec_end[1]]))
        except DecodeError:
            return _parsed_whole(message)
        return ForwardedPredict(spec, walked, message[spec_end[1] :])
    try:
        if spec_end is not None:
            # upb parses any buffer; the stubs say bytes.
            spec.MergeFromString(cast(bytes, message[spec_end[0] : spec_end[1]]))
        head = PredictHead.FromString(message[spec_end[1] if spec_end else 0 :])
    except DecodeError:
        return _parsed_whole(message)
    if spec_end is None or head.HasField("model_spec"):
        return _parsed_whole(message)
    # The head's unknown fields are a copy of the tensors' bytes, freed only
    # with the whole head: keep copies of the known fields alone.
    inputs = {}
    for name, tensor in head.inputs.items():
        tensor.DiscardUnknownFields()
        inputs[name] = TensorHead.FromString(tensor.SerializeToString())
    del head
    # Kept, not copied: a copy of the rest would hold the loop as long again.
    return ForwardedPredict(spec, inputs, message[spec_end[1] :])


def forwarding_decoders(threshold: int) -> dict[str, OffloadedDecoder]:
    """The decoders of the messages forwarded from ``threshold`` bytes up, by
    method path, for the gRPC port and gRPC-Web alike. They run on the loop:
    the reads parse the leading entries and let upb skip the rest, a few ms
    for 16 MiB."""

    async def predict(message: memoryview) -> object:
        return read_predict(message)

    async def classify(message: memoryview) -> object:
        return read_examples(message, messages.ClassificationRequest)

    async def regress(message: memoryview) -> object:
        return read_examples(message, messages.RegressionRequest)

    async def multi_inference(message: memoryview) -> object:
        return read_multi_inference(message)

    decoders = {
        "Predict": predict,
        "Classify": classify,
        "Regress": regress,
        "MultiInference": multi_inference,
    }
    return {
        f"/{PREDICTION_SERVICE}/{method}": OffloadedDecoder(decode, threshold)
        for method, decode in decoders.items()
    }


def _parsed_whole(message: memoryview) -> messages.PredictRequest:
    # Parsed from the view: a copy of a large message would hold the loop
    # (60 MiB: ~50 ms), and one that is malformed fails at its first bad field.
    return messages.PredictRequest.FromString(cast(bytes, message))


def _walked_inputs(message: memoryview, start: int) -> dict[str, Any] | None:
    """The inputs' heads of the fields after the leading spec, read by walking
    the wire format instead of the head parse, which copies every tensor's
    values as unknown fields: at memory speed, but above 32 MiB into fresh
    pages (glibc maps them anew), some 1.2 ms a MiB. None when the message
    holds anything the walk leaves to upb (a second spec, a group, a field of
    the wrong wire type, a map entry with a field twice, a malformed field), so
    that it is read as before."""
    inputs: dict[str, Any] = {}
    end = len(message)
    position = start
    try:
        while position < end:
            number, wire, position = tag(message, position)
            if wire == LENGTH_DELIMITED:
                value_start, position = length_delimited(message, position, end)
                if number == _SPEC_FIELD:
                    return None
                if number == _INPUTS_FIELD:
                    entry = _walked_entry(message, value_start, position)
                    if entry is None:
                        return None
                    inputs[entry[0]] = entry[1]
                elif number == _OUTPUT_FILTER_FIELD:
                    # Checked as upb checks a string field.
                    str(message[value_start:position], "utf-8")
            elif number in _HEAD_FIELDS:
                return None
            else:
                position = skipped(message, position, wire)
    except (IndexError, UnicodeDecodeError, DecodeError):
        return None
    return inputs if position == end else None


def _walked_entry(message: memoryview, start: int, end: int) -> tuple[str, Any] | None:
    """An ``inputs`` map entry: its key and its tensor's head."""
    key: str | None = None
    tensor: Any = None
    position = start
    while position < end:
        number, wire, position = tag(message, position)
        if wire != LENGTH_DELIMITED:
            if number in (_ENTRY_KEY, _ENTRY_VALUE):
                return None
            position = skipped(message, position, wire)
            continue
        value_start, position = length_delimited(message, position, end)
        if number == _ENTRY_KEY:
            if key is not None:
                return None
            key = str(message[value_start:position], "utf-8")
        elif number == _ENTRY_VALUE:
            if tensor is not None:
                return None
            tensor = _walked_tensor(message, value_start, position)
    if position != end:
        return None
    return ("" if key is None else key), (TensorHead() if tensor is None else tensor)


def _walked_tensor(message: memoryview, start: int, end: int) -> Any:
    """A TensorProto's head: its dtype and shape walked to, its values skipped;
    a tensor of strings (whose values the limits count) or of values written
    one field each is parsed with the head type instead.

    Raises:
        DecodeError: the head type's parse failed.
    """
    tensor = TensorHead()
    position = start
    fields = 0
    while position < end:
        fields += 1
        number, wire, position = tag(message, position)
        if fields > _WALKED_TENSOR_FIELDS or number == _STRING_VAL_FIELD:
            # upb keeps strings as known fields: no bulk copy to avoid.
            return _head_parsed(message[start:end])
        if number == _DTYPE_FIELD and wire == VARINT:
            dtype, position = varint(message, position)
            if dtype >= _INT32_END:
                # A negative or overlong int32: upb's truncation decides.
                return _head_parsed(message[start:end])
            tensor.dtype = dtype
        elif number == _SHAPE_FIELD and wire == LENGTH_DELIMITED:
            value_start, position = length_delimited(message, position, end)
            tensor.tensor_shape.MergeFromString(message[value_start:position])
        elif number in (_DTYPE_FIELD, _SHAPE_FIELD):
            return _head_parsed(message[start:end])
        elif wire == LENGTH_DELIMITED:
            _, position = length_delimited(message, position, end)
        else:
            position = skipped(message, position, wire)
    if position != end:
        raise IndexError("a field runs past its tensor")
    return tensor


def _head_parsed(tensor: memoryview) -> Any:
    """A tensor's head from the head type's parse, without the copy of its
    values that the parse keeps as unknown fields (freed only with the
    message that holds them)."""
    head = TensorHead.FromString(tensor)
    head.DiscardUnknownFields()
    return TensorHead.FromString(head.SerializeToString())


__all__ = [
    "ForwardedPredict",
    "WrittenPredict",
    "PredictHead",
    "TensorHead",
    "forwarding_decoders",
    "read_predict",
]
