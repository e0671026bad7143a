"""``Classify``, ``Regress`` and ``MultiInference`` messages parsed with their
examples left serialized, as TF Serving's ``internal::SerializedInput`` does.

protobuf's parser (upb) keeps a parsed message at about ten times its
serialized size when it is made of many small features (307 MB for a 30 MiB
message of one-value features), all of it before anything could be counted.
Parsed with these messages instead, the request is its examples' bytes; each
example is parsed when it is counted, and again when it is read, one at a time
(:mod:`modelserver.examplesize`).

The messages have the field numbers of the real ones and, in a pool of their
own, their full names, so that a message that does not parse gives the error
it gives parsed whole. Parsing both ways agree on repeated occurrences: a
message field seen twice is merged, as a serialized message is merged by
concatenation (the context, a model spec), and the examples are appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from servekit_protocol import messages

_PACKAGE = messages.Input.DESCRIPTOR.full_name.rpartition(".")[0]
_REQUESTS = ("ClassificationRequest", "RegressionRequest", "MultiInferenceRequest")
_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_FLOAT = descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT
_INT64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL


def _message_types() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="servekit_serialized_input.proto", package=_PACKAGE, syntax="proto3"
    )

    def add(name: str, *fields: tuple[str, int, int, int, str]) -> Any:
        message = file.message_type.add(name=name)
        for field_name, number, label, kind, type_name in fields:
            added = message.field.add(
                name=field_name, number=number, label=label, type=kind
            )
            if type_name:
                added.type_name = type_name
        return message

    for request in _REQUESTS:
        # model_spec (Classify, Regress) or tasks (MultiInference), then input.
        add(
            request,
            ("head", 1, _REPEATED, _BYTES, ""),
            ("input", 2, _OPTIONAL, _MESSAGE, f".{_PACKAGE}.Input"),
        )
    add("ExampleList", ("examples", 1, _REPEATED, _BYTES, ""))
    add(
        "ExampleListWithContext",
        ("examples", 1, _REPEATED, _BYTES, ""),
        ("context", 2, _REPEATED, _BYTES, ""),
    )
    kind = add(
        "Input",
        ("example_list", 1, _OPTIONAL, _MESSAGE, f".{_PACKAGE}.ExampleList"),
        (
            "example_list_with_context",
            2,
            _OPTIONAL,
            _MESSAGE,
            f".{_PACKAGE}.ExampleListWithContext",
        ),
    )
    kind.oneof_decl.add(name="kind")
    for field in kind.field:
        field.oneof_index = 0
    # An Example whose map of features is read as one entry: every occurrence
    # of a singular message field is merged into it, so its lists hold the
    # values of all the features together (upb counts them, not Python).
    add("MergedList", ("bytes_value", 1, _REPEATED, _BYTES, ""))
    add("MergedFloats", ("value", 1, _REPEATED, _FLOAT, ""))
    add("MergedInts", ("value", 1, _REPEATED, _INT64, ""))
    add(
        "MergedFeature",
        ("bytes_list", 1, _OPTIONAL, _MESSAGE, f".{_PACKAGE}.MergedList"),
        ("float_list", 2, _OPTIONAL, _MESSAGE, f".{_PACKAGE}.MergedFloats"),
        ("int64_list", 3, _OPTIONAL, _MESSAGE, f".{_PACKAGE}.MergedInts"),
    )
    add("MergedEntry", ("value", 2, _OPTIONAL, _MESSAGE, f".{_PACKAGE}.MergedFeature"))
    add(
        "MergedFeatures",
        ("feature", 1, _OPTIONAL, _MESSAGE, f".{_PACKAGE}.MergedEntry"),
    )
    add(
        "MergedExample",
        ("features", 1, _OPTIONAL, _MESSAGE, f".{_PACKAGE}.MergedFeatures"),
    )
    # The same Example's features as the parser keeps them: a map, in which
    # a later entry of a name replaces an earlier one, and an entry holding a
    # field it does not know is left out (upb keeps it among the Features'
    # unknown fields, so the context's feature of that name is merged in).
    # Each with every kind of list it was sent.
    kept = add("KeptFeatures", ("feature", 1, _REPEATED, _MESSAGE, ""))
    kept.field[0].type_name = f".{_PACKAGE}.KeptFeatures.FeatureEntry"
    entry = kept.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=_OPTIONAL, type=_STRING)
    entry.field.add(
        name="value",
        number=2,
        label=_OPTIONAL,
        type=_MESSAGE,
        type_name=f".{_PACKAGE}.MergedFeature",
    )
    add(
        "KeptExample",
        ("features", 1, _OPTIONAL, _MESSAGE, f".{_PACKAGE}.KeptFeatures"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")
        )
        for name in (*_REQUESTS, "MergedExample", "KeptExample")
    }


_TYPES = _message_types()
_REQUEST_OF_METHOD = {
    "Classify": "ClassificationRequest",
    "Regress": "RegressionRequest",
    "MultiInference": "MultiInferenceRequest",
}


@dataclass(frozen=True, slots=True)
class SerializedInput:
    """A request with its examples serialized.

    Attributes:
        head: The serialized occurrences of field 1 (the model spec, or the
            tasks).
        examples: Each example serialized, in order.
        context: The serialized context; None when there is none.
    """

    head: Sequence[bytes]
    examples: Sequence[bytes]
    context: bytes | None


def parse(method: str, data: Any) -> SerializedInput:
    """Parse the ``method`` request in ``data`` (any buffer), its examples left
    serialized.

    Raises:
        DecodeError: The message does not parse.
    """
    # upb parses any buffer; the stubs say bytes.
    request = _TYPES[_REQUEST_OF_METHOD[method]].FromString(cast(bytes, data))
    request_input = request.input
    kind = request_input.WhichOneof("kind")
    context: bytes | None = None
    if kind == "example_list":
        listed = request_input.example_list
        examples = listed.examples
    elif kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        examples = listed.examples
        if listed.context:
            context = b"".join(listed.context)
    else:
        return SerializedInput(request.head, (), None)
    return SerializedInput(request.head, examples, context)


FLOATS = 1
"""A ``float_list``, in a mask of kinds of list."""
INTS = 2
"""An ``int64_list``, in a mask of kinds of list."""
TEXTS = 4
"""A ``bytes_list``, in a mask of kinds of list."""


def _kinds(floats: int, ints: int, texts: int) -> int:
    return (FLOATS if floats else 0) | (INTS if ints else 0) | (TEXTS if texts else 0)


@dataclass(frozen=True, slots=True)
class ExampleTally:
    """What one serialized example holds, counted by the parser.

    Attributes:
        numbers: Its float and int64 values.
        texts: Its bytes values.
        text_bytes: The bytes of those.
        features: Its features.
        names: Their names, when asked for.
        kinds: The kinds of list holding its values (:data:`FLOATS`,
            :data:`INTS`, :data:`TEXTS`).
    """

    numbers: int
    texts: int
    text_bytes: int
    features: int
    names: tuple[str, ...] = ()
    kinds: int = 0


def tally(data: bytes | memoryview, *, names: bool = False) -> ExampleTally:
    """Count the values of a serialized example, all its features at once.

    Its features and their names are those the parsed example keeps. Its
    values are every value sent: those of a feature sent with two kinds of
    list, or of an entry the parser leaves out or replaces, count too. Never
    less than it holds.

    Raises:
        DecodeError: It does not parse.
    """
    merged = _TYPES["MergedExample"].FromString(data).features.feature.value
    texts = merged.bytes_list.bytes_value
    floats = len(merged.float_list.value)
    ints = len(merged.int64_list.value)
    kept = _TYPES["KeptExample"].FromString(data).features.feature
    return ExampleTally(
        floats + ints,
        len(texts),
        sum(map(len, texts)),
        len(kept),
        tuple(kept) if names else (),
        _kinds(floats, ints, len(texts)),
    )


def feature_kinds(data: bytes | memoryview) -> tuple[tuple[str, int, int], ...]:
    """Each feature the parsed example keeps: (its name, the kinds of list it
    holds values in, its float and int64 values). A feature sent with two
    kinds of list has both (the parsed example keeps the last).

    Raises:
        DecodeError: It does not parse.
    """
    features = []
    for name, value in _TYPES["KeptExample"].FromString(data).features.feature.items():
        floats = len(value.float_list.value)
        ints = len(value.int64_list.value)
        kinds = _kinds(floats, ints, len(value.bytes_list.bytes_value))
        features.append((name, kinds, floats + ints))
    return tuple(features)


def parse_part(kind: type[Any], data: bytes, method: str) -> Any:
    """Parse one serialized part (an example, the context, a model spec) of a
    ``method`` request.

    Raises:
        DecodeError: It does not parse, with the message the whole request
            gives (:func:`decode_error`).
    """
    try:
        return kind.FromString(data)
    except DecodeError as exc:
        raise decode_error(exc, method) from exc


def corrupt(method: str) -> DecodeError:
    """The error upb gives a ``method`` request whose wire format it cannot
    read."""
    whole = f"{_PACKAGE}.{_REQUEST_OF_METHOD[method]}"
    return DecodeError(
        f"Error parsing message with type '{whole}': Wire format was corrupt"
    )


def decode_error(error: DecodeError, method: str) -> DecodeError:
    """``error``, raised parsing a part of a ``method`` request, as parsing the
    whole request gives it: upb names the message it was asked to parse."""
    part = str(error).split("'")
    if len(part) < 3:
        return error
    whole = f"{_PACKAGE}.{_REQUEST_OF_METHOD[method]}"
    return DecodeError("'".join([part[0], whole, *part[2:]]))
