"""The byte splice behind every large TF Serving request the gateway forwards.

A PredictRequest, ClassificationRequest and RegressionRequest name their
target in field 1 (``model_spec``), a MultiInferenceRequest in its repeated
field 1 (``tasks``, each with its own spec); the bulk of the message (tensors,
tf.Examples) is in the fields after it, which the gateway never reads. So a
large message is forwarded as its leading field-1 entries, each read and
written again with the target's spec, followed by the client's other bytes
as received (:class:`Spliced`).

On the backend that parses to the message the in-place path sends only when
field 1 occurs at the front alone: protobuf merges a repeated singular message
field and appends to a repeated one, so a field 1 left further on would merge
into the target's spec (or add a task). :func:`leading_entries` finds the
leading run and :func:`field_one_after` whether field 1 occurs again; a
message that fails either check is parsed whole, as below the threshold.
Every serializer writes fields in number order, so real clients' messages pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from servekit_protocol import tensors

from gateway.clients import wire

FIELD_ONE_TAG = 0x0A
"""Field 1, length-delimited: ``model_spec`` or a MultiInference ``tasks`` entry."""
MAX_WALKED_FIELDS = 4096
"""Fields after the leading entries walked in Python; a rest of more is
checked by upb (walking millions in Python would hold the loop longer)."""
MAX_FIELD_NUMBER = (1 << 29) - 1
"""protobuf's largest field number: a larger one fails upb's parse, so the
walk leaves it to upb."""


class Spliced:
    """A request written as its leading field-1 entries, then ``rest`` as
    received. Subclasses are dataclasses holding ``rest`` and the read
    entries; the backend client sends :meth:`SerializeToString` over gRPC and
    :meth:`framed` over gRPC-Web."""

    __slots__ = ()

    rest: memoryview
    """The client's message after its leading field-1 entries: a view of the
    received body, which is not reused (see ``OffloadedDecoder``)."""

    def leading(self) -> Sequence[bytes]:
        """The serialized values of the field-1 entries to send, in order."""
        raise NotImplementedError

    def rest_parts(self) -> tuple[bytes | memoryview, ...]:
        """The message after its leading entries, in parts sent one after the
        other: the rest as received (a subclass may write it in several)."""
        return (self.rest,)

    def SerializeToString(self) -> bytes:
        """The message for the backend: the entries, then the rest as it came."""
        return b"".join((*self._head(), *self.rest_parts()))

    def framed(self) -> tuple[bytes | memoryview, ...]:
        """The message framed as gRPC frames it (uncompressed), in parts: the
        frame's prefix and the entries, then the rest's parts, not copied (a
        copy of 64 MiB, into fresh pages, holds the loop some 80 ms)."""
        head = self._head()
        rest = self.rest_parts()
        size = sum(map(len, head)) + sum(map(len, rest))
        return b"".join((b"\x00", size.to_bytes(4, "big"), *head)), *rest

    def _head(self) -> list[bytes]:
        head: list[bytes] = []
        for value in self.leading():
            head += (bytes((FIELD_ONE_TAG,)), tensors.varint(len(value)), value)
        return head


def leading_entries(message: memoryview, most: int) -> list[tuple[int, int]]:
    """Where the values of the message's leading field-1 entries start and
    end, up to ``most + 1`` of them; empty when the message does not start
    with one (or its first is cut short)."""
    entries: list[tuple[int, int]] = []
    offset = 0
    while len(entries) <= most:
        entry = _field_one_at(message, offset)
        if entry is None:
            break
        entries.append(entry)
        offset = entry[1]
    return entries


def field_one_after(rest: memoryview) -> bool:
    """Whether field 1 occurs (length-delimited) in ``rest``, a message's
    bytes after its leading entries. Its first :data:`MAX_WALKED_FIELDS`
    fields are walked by their tags (a Classify's rest is one field, its
    examples); a longer or odd rest is left to upb, which walks the fields
    in C keeping the others as unknown bytes: a copy of the whole rest, which
    held the loop over 50 ms at 64 MiB.

    Raises:
        DecodeError: ``rest`` is not a run of well-formed fields.
    """
    try:
        for count, (number, wire_type, *_) in enumerate(
            wire.fields(rest, 0, len(rest)), 1
        ):
            if count > MAX_WALKED_FIELDS or number > MAX_FIELD_NUMBER:
                raise IndexError("left to upb")
            if number == 1 and wire_type == wire.LENGTH_DELIMITED:
                return True
        return False
    except IndexError:
        pass
    # upb parses any buffer; the stubs say bytes.
    head = FieldOneHead.FromString(cast(bytes, rest))
    return len(head.entries) > 0


def _field_one_at(message: memoryview, offset: int) -> tuple[int, int] | None:
    if len(message) < offset + 2 or message[offset] != FIELD_ONE_TAG:
        return None
    try:
        return wire.length_delimited(message, offset + 1, len(message))
    except IndexError:
        return None


def _field_one_head() -> Any:
    """A message type of one repeated ``bytes`` field 1, in a pool of its
    own: parsing with it finds field 1 without decoding anything else."""
    pool = descriptor_pool.DescriptorPool()
    field = descriptor_pb2.FieldDescriptorProto
    head = descriptor_pb2.FileDescriptorProto(
        name="servekit_gateway/field_one_head.proto",
        package="servekit.gateway",
        syntax="proto3",
    )
    head.message_type.add(name="FieldOneHead").field.add(
        name="entries", number=1, type=field.TYPE_BYTES, label=field.LABEL_REPEATED
    )
    pool.Add(head)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("servekit.gateway.FieldOneHead")
    )


FieldOneHead = _field_one_head()

__all__ = [
    "FIELD_ONE_TAG",
    "FieldOneHead",
    "Spliced",
    "field_one_after",
    "leading_entries",
]
