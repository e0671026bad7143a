"""Large backend answers handed to the client as the backend sent them.

Of a Predict, Classify, Regress or MultiInference answer that goes back to a
gRPC or gRPC-Web client unchanged, the gateway reads one thing: the model
spec (the version that answered, for the access log, metrics and the signature
cache). Parsing the whole answer holds the event loop about 1 ms a MiB, and
serializing it again for the client longer still (some 30 ms for 16 MiB of
floats; string tensors cost more, per value). So from
``GATEWAY_GRPC_PARSE_OFFLOAD_BYTES`` up such an answer is kept as its bytes:
its top-level fields are walked (a handful: one per output, or one result),
only the model spec's bytes are parsed, and the gRPC and gRPC-Web servers send
the bytes as they came (:class:`~servekit_protocol.messages.Serialized`). The
model server serializes canonically, as protobuf does for the gateway, so a
client receives the same bytes either way.

An answer whose top level is not plain protobuf wire format (a truncated
field, a group, a field number 0), or that has more top-level fields than any
of these messages writes, is parsed whole instead, so it fails or succeeds
exactly as it did when every answer was parsed.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError
from servekit_protocol import messages

from gateway.clients.wire import FIXED32, FIXED64, LENGTH_DELIMITED, VARINT, varint

MAX_TOP_LEVEL_FIELDS = 4096
"""Top-level fields walked before an answer is parsed whole instead: a
PredictResponse has one per output (and its spec), the others one result, so
only a malformed answer has more, and walking millions in Python would hold
the loop longer than the parse."""


class ReceivedAnswer(messages.Serialized):
    """A backend's answer kept as the bytes it sent, with its model spec read.

    Args:
        data: The answer message's bytes, as received.
        model_spec: Its ``model_spec`` field (empty when it has none).
    """

    __slots__ = ("model_spec",)

    def __init__(self, data: bytes, model_spec: messages.ModelSpec) -> None:
        super().__init__(data)
        self.model_spec = model_spec


def spec_field_number(response_type: Any) -> int | None:
    """The field number of ``model_spec`` in a response message type (2 in
    PredictResponse, ClassificationResponse and RegressionResponse), or None."""
    field = response_type.DESCRIPTOR.fields_by_name.get("model_spec")
    return None if field is None else int(field.number)


def read_answer(data: bytes, spec_field: int | None) -> ReceivedAnswer | None:
    """The answer kept as ``data``, its model spec (field ``spec_field``) parsed;
    None when its top level is not plain wire format, so that it is parsed
    whole (and fails as it would have)."""
    spec = messages.ModelSpec()
    view = memoryview(data)
    end = len(data)
    position = 0
    fields = 0
    try:
        while position < end:
            fields += 1
            if fields > MAX_TOP_LEVEL_FIELDS:
                return None
            key, position = varint(data, position)
            number, wire = key >> 3, key & 7
            if number == 0:
                return None
            if wire == LENGTH_DELIMITED:
                length, position = varint(data, position)
                stop = position + length
                if stop > end:
                    return None
                if number == spec_field:
                    # Protobuf merges every occurrence of a message field.
                    spec.MergeFromString(view[position:stop])  # type: ignore[arg-type]
                position = stop
            elif number == spec_field:
                return None
            elif wire == VARINT:
                _, position = varint(data, position)
            elif wire == FIXED64:
                position += 8
            elif wire == FIXED32:
                position += 4
            else:
                return None
    except (DecodeError, IndexError):
        return None
    if position != end:
        return None
    return ReceivedAnswer(data, spec)


__all__ = [
    "MAX_TOP_LEVEL_FIELDS",
    "ReceivedAnswer",
    "read_answer",
    "spec_field_number",
]
