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
received.

That splice parses, on the backend, to exactly the message the in-place path
sends (the client's message with :func:`~gateway.context.apply_target` applied)
only when the client wrote ``model_spec`` once, as the first field: protobuf
merges repeated occurrences of a message field rather than replacing them, so a
spec left elsewhere in the message would merge into the target's (a version the
target does not set would survive). Every serializer writes fields in number
order, once; a message written otherwise is parsed whole, as below the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from servekit_protocol import messages, tensors
from servekit_protocol.grpc_server import OffloadedDecoder

_SPEC_TAG = 0x0A
"""Field 1 (``model_spec``), length-delimited."""
_MAX_VARINT_BYTES = 10


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
class ForwardedPredict:
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

    def SerializeToString(self) -> bytes:
        """The message for the backend: the spec first, then the rest as it came."""
        return b"".join((*self._spec_field(), self.rest))

    def framed(self) -> bytes:
        """The message framed as gRPC frames it (uncompressed), in one copy."""
        head = self._spec_field()
        size = sum(map(len, head)) + len(self.rest)
        return b"".join((b"\x00", size.to_bytes(4, "big"), *head, self.rest))

    def _spec_field(self) -> tuple[bytes, bytes, bytes]:
        spec = self.model_spec.SerializeToString()
        return bytes((_SPEC_TAG,)), tensors.varint(len(spec)), spec

    def copy(self) -> ForwardedPredict:
        """Another request with its own spec, its answer parsed (the rest is
        shared: it is never changed)."""
        spec = messages.ModelSpec()
        spec.CopyFrom(self.model_spec)
        return ForwardedPredict(spec, self.inputs, self.rest)


def read_predict(message: memoryview) -> ForwardedPredict | messages.PredictRequest:
    """A large Predict message, read for forwarding; parsed whole (as below the
    threshold) when its ``model_spec`` is not its one leading field.

    Raises:
        DecodeError: the message does not parse; the error is the full parse's,
            so that a client sees what the in-place path gives.
    """
    spec_end = _leading_spec_end(message)
    spec = messages.ModelSpec()
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


def forwarding_decoder(threshold: int) -> OffloadedDecoder:
    """The decoder of Predict messages from ``threshold`` bytes up, for the
    gRPC port and gRPC-Web alike: :func:`read_predict`, on the loop (the head
    parse runs at memory speed, a few ms for 16 MiB)."""

    async def decode(message: memoryview) -> ForwardedPredict | messages.PredictRequest:
        return read_predict(message)

    return OffloadedDecoder(decode, threshold)


def _parsed_whole(message: memoryview) -> messages.PredictRequest:
    return messages.PredictRequest.FromString(bytes(message))


def _leading_spec_end(message: memoryview) -> tuple[int, int] | None:
    """Where the value of a leading ``model_spec`` field starts and ends."""
    if len(message) < 2 or message[0] != _SPEC_TAG:
        return None
    length = 0
    for index in range(1, min(len(message), 1 + _MAX_VARINT_BYTES)):
        byte = message[index]
        length |= (byte & 0x7F) << (7 * (index - 1))
        if not byte & 0x80:
            start = index + 1
            end = start + length
            return (start, end) if end <= len(message) else None
    return None


__all__ = [
    "ForwardedPredict",
    "PredictHead",
    "TensorHead",
    "forwarding_decoder",
    "read_predict",
]
