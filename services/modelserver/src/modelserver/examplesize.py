"""What the tf.Examples of one ``Classify``, ``Regress`` or ``MultiInference``
request make once merged with their context, counted before any is decoded.

``Input.example_list_with_context`` merges its context into every example, so
a few hundred bytes of examples with a large context make that context's
values once an example (TF Serving copies the serialized context in front of
every example, ``InputToSerializedExampleTensor``, and has no limit on the
result). The request's tensor limits (:class:`~servekit_protocol.tensor_limits.TensorLimits`)
cap what the examples make, as they cap a ``Predict`` request's tensors:

* every float or int64 value is one element of 8 bytes (what the columns of
  :mod:`modelserver.examplecolumns` keep);
* every bytes value is one element of its bytes plus a reference (8 bytes);
* every feature of every example also costs 8 bytes (its value count), so
  that a message of many empty features is not free.

What is counted is what the model's inputs hold, not what building them costs
in Python: a worker's columns take about 70 bytes a value while they are
built, so a message at the default limit (256 MiB) of one-value features,
about 241 MiB by this count, is accepted and costs its worker about 1.1 GB.

The parser counts an example's values (a view of it whose features merge into
one, :func:`~modelserver.protocol.grpc.serializedinput.tally`), not Python;
even so the count is skipped when the serialized examples (the context counted
once an example) bound it under the limits: a value takes at least one byte of
the message, a feature at least two, and none makes more than 8 bytes a byte.
"""

from __future__ import annotations

from collections.abc import Iterable

from servekit_protocol import messages
from servekit_protocol.tensor_limits import TensorLimits

from modelserver.errors import InvalidInput
from modelserver.protocol.grpc import serializedinput

_VALUE_BYTES = 8
"""Bytes of a float or int64 value, and of a bytes value's reference."""
_FEATURE_BYTES = 8
"""Bytes a feature of an example costs besides its values (its count)."""
_BYTES_PER_WIRE_BYTE = 8
"""The most bytes one byte of a serialized example makes (see above)."""


def feature_size(feature: messages.Feature) -> tuple[int, int]:
    """The elements and bytes one feature of one example makes."""
    kind = feature.WhichOneof("kind")
    if kind == "bytes_list":
        values = feature.bytes_list.value
        return len(values), _FEATURE_BYTES + sum(
            _VALUE_BYTES + len(value) for value in values
        )
    if kind == "float_list":
        count = len(feature.float_list.value)
    elif kind == "int64_list":
        count = len(feature.int64_list.value)
    else:
        count = 0
    return count, _FEATURE_BYTES + count * _VALUE_BYTES


def within_bound(wire_bytes: int, limits: TensorLimits) -> bool:
    """Whether examples of ``wire_bytes`` serialized bytes (the context counted
    once an example) cannot make more than ``limits``."""
    return (
        wire_bytes <= limits.max_elements
        and wire_bytes * _BYTES_PER_WIRE_BYTE <= limits.max_bytes
    )


def check_examples(
    examples: Iterable[bytes], context: messages.Example | None, limits: TensorLimits
) -> None:
    """Refuse serialized examples that make more than ``limits`` merged with
    ``context`` (an example's own feature replaces the context's of the same
    name). The parser counts each example's values
    (:func:`~modelserver.protocol.grpc.serializedinput.tally`); the count stops
    at the first example past the limits.

    Raises:
        InvalidInput: Above the limits.
        DecodeError: An example does not parse.
    """
    shared: dict[str, tuple[int, int]] = {}
    if context is not None:
        shared = {
            name: feature_size(feature)
            for name, feature in context.features.feature.items()
        }
    shared_elements = sum(elements for elements, _ in shared.values())
    shared_bytes = sum(size for _, size in shared.values())
    elements = 0
    size = 0
    previous: tuple[bytes, serializedinput.ExampleTally] | None = None
    for data in examples:
        # Examples often repeat the one before (and an amplifying request's
        # empty ones always do): their count is known.
        if previous is not None and previous[0] == data:
            counted = previous[1]
        else:
            counted = serializedinput.tally(data, names=bool(shared))
            previous = (data, counted)
        values = counted.numbers + counted.texts
        elements += shared_elements + values
        size += (
            shared_bytes
            + values * _VALUE_BYTES
            + counted.text_bytes
            + counted.features * _FEATURE_BYTES
        )
        # The example's names, not the context's: an example names few.
        for name in {name for name in counted.names if name in shared}:
            elements -= shared[name][0]
            size -= shared[name][1]
        if elements > limits.max_elements or size > limits.max_bytes:
            raise InvalidInput(
                f"The request's examples hold at least {elements} values "
                f"({size} bytes) with their context merged in; the limit is "
                f"{limits.max_elements} values ({limits.max_bytes} bytes) per "
                "request"
            )


def check_input(request_input: messages.Input, limits: TensorLimits) -> None:
    """:func:`check_examples` on a parsed ``Input``.

    Raises:
        InvalidInput: Above the limits.
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        listed = request_input.example_list
        if not within_bound(listed.ByteSize(), limits):
            check_examples(
                (example.SerializeToString() for example in listed.examples),
                None,
                limits,
            )
    elif kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        context = with_context.context if with_context.HasField("context") else None
        examples = with_context.examples
        # The context once in the list's size, and once more an example.
        wire_bytes = with_context.ByteSize()
        if context is not None:
            wire_bytes += len(examples) * context.ByteSize()
        if not within_bound(wire_bytes, limits):
            check_examples(
                (example.SerializeToString() for example in examples), context, limits
            )
