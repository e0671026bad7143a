"""What the tf.Examples of one ``Classify``, ``Regress`` or ``MultiInference``
request make once merged with their context, counted before any is decoded.

``Input.example_list_with_context`` merges its context into every example, so
a few hundred bytes of examples with a large context make that context's
values once an example (TF Serving copies the serialized context in front of
every example, ``InputToSerializedExampleTensor``, and has no limit on the
result). The request's tensor limits (:class:`~servekit_protocol.tensor_limits.TensorLimits`)
cap what the examples make, as they cap a ``Predict`` request's tensors:

* every float or int64 value is one element of 8 bytes (a column of
  :mod:`modelserver.examplecolumns` holds it in a typed array);
* every bytes value is one element of its bytes plus 48 (the Python bytes
  object's header, its slot in the column's lists and arrays);
* every feature of every example costs 16 bytes (its value count and its
  example's index in the column), so that a message of many empty features
  is not free;
* every example costs 48 bytes (the bytes object TensorFlow's runtime
  serializes it into, and its slot), so that a message of many empty
  examples is not free either;
* a float or int64 value of a feature held in more than one kind of list
  across the examples and the context (a ``float_list`` in one example, an
  ``int64_list`` or a ``bytes_list`` in another) costs 56 bytes instead of 8:
  its column keeps every value as a Python object (a float 24 bytes, an int
  up to 36), with a slot in a list and one in an object array (8 each, and
  the list's spare room). Counted at 8 bytes, 200,000 examples of 8 floats
  after one example of a bytes value took 2.65 times the count to build
  (3.15 times for large ints).

These are what a JSON worker and the server really allocate, so the bytes
limit bounds them. Measured as the peak resident growth of one process over
1,000,000 examples of 8 one-value float features (240 MB counted): building
the columns (:func:`modelserver.examplecolumns.from_examples`) 234 MB (0.97x
the count), TensorFlow's runtime serializing them again 243 MB (1.01x); for
4,000,000 examples of one feature (288 MB counted) 94 and 311 MB. Columns and
serialized examples together stay under twice the count. The former costs
(8 bytes a value and a feature, nothing an example) let the columns take
611 MB for 128 MB counted (lists: about 76 bytes a value), so that a message
at the default limit of one-value features cost its worker about 1.1 GB.
TensorFlow's runtime rebuilds the examples a chunk at a time
(:func:`~modelserver.examplecolumns.iter_examples`) and keeps them serialized.
The count comes before the message is parsed (about three times the message
in a worker): the message's bytes are walked
(:mod:`~modelserver.protocol.grpc.examplewire`) and each example counted as a
view of them, a run of examples alike once. A refused message so costs its
worker the message mapped and nothing an example: 250 MiB for a 250 MiB
message of 64-feature examples, against 1,011 MiB parsed first.

The parser counts an example's values (a view of it whose features merge into
one, :func:`~modelserver.protocol.grpc.serializedinput.tally`), not Python;
even so the count is skipped when the serialized examples (the context counted
once an example) bound it under the limits: a value takes at least one byte of
the message, a feature or an example at least two, and none makes more than
24 bytes a byte (an empty bytes value or example: 48 bytes of 2). That holds
in columns of mixed kinds too, where the count charges more than some values
take: an int64 value of one byte (0 to 127) is one of CPython's shared small
ints, 16 bytes of slots; of two bytes, a 28-byte object and its slots (45
bytes); a float takes 4 bytes (40). Skipping the count below the bound so
never lets more than the limits be built. The kinds of each feature are
looked at name by name
(:func:`~modelserver.protocol.grpc.serializedinput.feature_kinds`) only when
the request's examples and context hold more than one kind of list at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from google.protobuf.message import DecodeError
from servekit_protocol import messages
from servekit_protocol.tensor_limits import TensorLimits

from modelserver.errors import InvalidInput
from modelserver.protocol.grpc import examplewire, serializedinput

_VALUE_BYTES = 8
"""Bytes of a float or int64 value."""
_TEXT_VALUE_BYTES = 48
"""Bytes of a bytes value besides its bytes (the object's header, its slots)."""
_FEATURE_BYTES = 16
"""Bytes a feature of an example costs besides its values (its count, its
example's index)."""
_EXAMPLE_BYTES = 48
"""Bytes an example costs besides its features (serialized again for
TensorFlow: a bytes object's header and slot)."""
_OBJECT_VALUE_BYTES = 56
"""Bytes of a float or int64 value in a column of mixed kinds (a Python
object and two slots)."""
_WALKED_FLOOR = 1 << 20
"""Examples the wire walk always counts before it may stop (about a second of
it), however low the limit."""
_BYTES_PER_WIRE_BYTE = 24
"""The most bytes one byte of a serialized example makes (see above)."""
_KINDS = {
    "float_list": serializedinput.FLOATS,
    "int64_list": serializedinput.INTS,
    "bytes_list": serializedinput.TEXTS,
}


def feature_size(feature: messages.Feature) -> tuple[int, int]:
    """The elements and bytes one feature of one example makes."""
    kind = feature.WhichOneof("kind")
    if kind == "bytes_list":
        values = feature.bytes_list.value
        return len(values), _FEATURE_BYTES + sum(
            _TEXT_VALUE_BYTES + len(value) for value in values
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


def check_request(method: str, data: memoryview, limits: TensorLimits) -> bool:
    """Refuse the serialized ``method`` request in ``data`` when its examples
    make more than ``limits``, before it is parsed: its bytes are walked
    (:mod:`~modelserver.protocol.grpc.examplewire`), each example counted as a
    view of them. False when the walk cannot read the bytes: the parser then
    gives its own error, and must not take them.

    Raises:
        InvalidInput: Above the limits.
        DecodeError: The context or an example does not parse, with the message
            the whole request gives.
    """
    # Raised again from here: the exception of a deeper frame would keep that
    # frame's views of ``data`` (a mapped segment that is closed next) alive.
    error: Exception | None = None
    try:
        readable = _check(data, examplewire.REQUEST, limits)
    except InvalidInput as exc:
        error = InvalidInput(exc.message)
    except DecodeError as exc:
        error = serializedinput.decode_error(DecodeError(str(exc)), method)
    if error is not None:
        raise error
    return readable


def check_input(request_input: messages.Input, limits: TensorLimits) -> None:
    """:func:`check_request` on a parsed ``Input``, counted the same way.

    Raises:
        InvalidInput: Above the limits.
    """
    data = memoryview(request_input.SerializeToString())
    # Serialized by protobuf, it can always be walked and its parts parsed;
    # were it not, its examples would go uncounted, so it is refused.
    if not _check(data, examplewire.INPUT, limits):
        raise InvalidInput("The request's examples could not be counted")


def _check(data: memoryview, level: int, limits: TensorLimits) -> bool:
    # Every example costs _EXAMPLE_BYTES at least, so more than this many are
    # over the limit whatever they hold; the walk stops there. Lists a later
    # one replaces count too (upb builds them first), which the floor keeps
    # to requests no client sends.
    most = max(limits.max_bytes // _EXAMPLE_BYTES, _WALKED_FLOOR)
    try:
        located = examplewire.locate(data, level, most)
    except examplewire.Malformed:
        return False
    except examplewire.TooMany as exc:
        raise _refusal(0, exc.examples * _EXAMPLE_BYTES, limits) from None
    context_bytes = len(located.context or b"")
    if within_bound(
        located.wire_bytes + (located.examples + 1) * context_bytes, limits
    ):
        return True
    context = (
        None
        if located.context is None
        else messages.Example.FromString(located.context)
    )
    _check_examples(lambda: examplewire.examples(data, located, level), context, limits)
    return True


def _check_examples(
    examples: Callable[[], Iterator[tuple[memoryview, int]]],
    context: messages.Example | None,
    limits: TensorLimits,
) -> None:
    """Refuse serialized examples that make more than ``limits`` merged with
    ``context`` (an example's own feature replaces the context's of the same
    name). The parser counts each example's values
    (:func:`~modelserver.protocol.grpc.serializedinput.tally`); the count stops
    at the first example past the limits. ``examples`` hands them out again
    each call.

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
    kinds = _context_kinds(context)
    kinds_seen = 0
    for kind, _ in kinds.values():
        kinds_seen |= kind
    elements = 0
    size = 0
    previous: tuple[memoryview, int, int] | None = None
    for data, count in examples():
        # Examples often repeat one before (and an amplifying request's empty
        # ones always do): their count is known.
        if previous is not None and previous[0] == data:
            _, own_elements, own_size = previous
        else:
            counted = serializedinput.tally(data, names=bool(shared))
            kinds_seen |= counted.kinds
            own_elements = shared_elements + counted.numbers + counted.texts
            own_size = (
                _EXAMPLE_BYTES
                + shared_bytes
                + counted.numbers * _VALUE_BYTES
                + counted.texts * _TEXT_VALUE_BYTES
                + counted.text_bytes
                + counted.features * _FEATURE_BYTES
            )
            # Its own feature replaces the context's of the same name.
            for name in counted.names:
                if name in shared:
                    own_elements -= shared[name][0]
                    own_size -= shared[name][1]
            previous = (data, own_elements, own_size)
        if (
            elements + count * own_elements > limits.max_elements
            or size + count * own_size > limits.max_bytes
        ):
            # The first of them past the limits.
            past = count
            if own_elements:
                past = (limits.max_elements - elements) // own_elements + 1
            past = min(past, (limits.max_bytes - size) // own_size + 1)
            raise _refusal(
                elements + past * own_elements, size + past * own_size, limits
            )
        elements += count * own_elements
        size += count * own_size
    if kinds_seen & (kinds_seen - 1):
        size += (_OBJECT_VALUE_BYTES - _VALUE_BYTES) * _mixed_numbers(examples, kinds)
        if size > limits.max_bytes:
            raise _refusal(elements, size, limits)


def _refusal(elements: int, size: int, limits: TensorLimits) -> InvalidInput:
    return InvalidInput(
        f"The request's examples hold at least {elements} values "
        f"({size} bytes) with their context merged in; the limit is "
        f"{limits.max_elements} values ({limits.max_bytes} bytes) per "
        "request"
    )


def _context_kinds(context: messages.Example | None) -> dict[str, tuple[int, int]]:
    """The context's features: name -> (kind of list, float or int64 values)."""
    if context is None:
        return {}
    kinds = {}
    for name, feature in context.features.feature.items():
        kind = feature.WhichOneof("kind")
        count, _ = feature_size(feature)
        if kind is None or count == 0:
            kinds[name] = (0, 0)
        else:
            kinds[name] = (_KINDS[kind], 0 if kind == "bytes_list" else count)
    return kinds


def _mixed_numbers(
    examples: Callable[[], Iterator[tuple[memoryview, int]]],
    context: dict[str, tuple[int, int]],
) -> int:
    """The float and int64 values that land in a column of more than one kind
    of list, the context's counted in every example that lacks its feature
    (:func:`~modelserver.examplecolumns.from_examples` merges them so)."""
    kinds: dict[str, int] = {}
    lacking: set[str] = set()
    previous: memoryview | None = None
    for data, _ in examples():
        if data == previous:
            continue  # the same names and kinds again
        previous = data
        features = serializedinput.feature_kinds(data)
        for name, kind, _ in features:
            kinds[name] = kinds.get(name, 0) | kind
        if context:
            lacking |= context.keys() - {name for name, _, _ in features}
    for name in lacking:
        kinds[name] = kinds.get(name, 0) | context[name][0]
    mixed = {name for name, kind in kinds.items() if kind & (kind - 1)}
    if not mixed:
        return 0
    mixed_context = {name: context[name][1] for name in mixed & context.keys()}
    total = 0
    last: tuple[memoryview, int] | None = None
    for data, count in examples():
        if last is None or last[0] != data:
            features = serializedinput.feature_kinds(data)
            own = {name for name, _, _ in features}
            numbers = sum(number for name, _, number in features if name in mixed)
            numbers += sum(
                number for name, number in mixed_context.items() if name not in own
            )
            last = (data, numbers)
        total += last[1] * count
    return total
