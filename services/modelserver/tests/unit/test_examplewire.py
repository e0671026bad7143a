"""The examples of a serialized request counted on its wire format
(:mod:`modelserver.protocol.grpc.examplewire`, :mod:`modelserver.examplesize`)
against what the whole request, parsed by protobuf, holds; and its bytes read
as upb reads them, valid or not.

Requests are written field by field, the ways a client other than protobuf's
own may write them: numbers packed and unpacked, a message sent in several
occurrences (merged), the other list of ``Input`` sent first (replaced),
unknown fields and groups at every level, empty examples and features.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import pytest
from google.protobuf.message import DecodeError
from modelserver import examplesize
from modelserver.errors import InvalidInput
from modelserver.protocol.grpc import examplewire, serializedinput
from servekit_protocol import messages
from servekit_protocol.tensor_limits import TensorLimits
from servekit_protocol.tensors import varint

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = range(6)
NAMES = ("a", "b", "c", "d", "é")
KINDS = ("bytes_list", "float_list", "int64_list")
GENERATED = 400
"""Requests generated for the parity test (each checked three times)."""
MUTATED = 3000
"""Mutations of generated requests the fuzz test tries."""


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def delimited(number: int, payload: bytes) -> bytes:
    return key(number, LENGTH) + varint(len(payload)) + payload


@dataclass
class Writer:
    """Writes tf.Example requests by hand, a random way each time."""

    rng: random.Random

    def unknown(self, depth: int = 0) -> bytes:
        """Nothing, or an unknown field (a group of some, at times)."""
        choice = self.rng.randrange(8)
        number = self.rng.randrange(5, 40)
        if choice == 0:
            return key(number, VARINT) + varint(self.rng.randrange(1 << 64))
        if choice == 1:
            return key(number, FIXED64) + bytes(8)
        if choice == 2:
            return key(number, FIXED32) + bytes(4)
        if choice == 3:
            return delimited(number, self.rng.randbytes(self.rng.randrange(6)))
        if choice == 4 and depth < 3:
            inner = self.unknown(depth + 1) + self.unknown(depth + 1)
            return key(number, START_GROUP) + inner + key(number, END_GROUP)
        return b""

    def values(self, kind: str, count: int) -> bytes:
        """A ``BytesList``, ``FloatList`` or ``Int64List`` of ``count``."""
        if kind == "bytes_list":
            return (
                b"".join(
                    delimited(1, self.rng.randbytes(self.rng.randrange(4)))
                    for _ in range(count)
                )
                + self.unknown()
            )
        if kind == "float_list":
            encoded = [struct.pack("<f", self.rng.random()) for _ in range(count)]
            wire = FIXED32
        else:
            # Negative int64 values take 10 bytes.
            encoded = [
                varint(self.rng.randrange(-(1 << 40), 1 << 40) % (1 << 64))
                for _ in range(count)
            ]
            wire = VARINT
        out = b""
        while encoded:
            part = self.rng.randrange(1, len(encoded) + 1)
            if self.rng.randrange(2):
                out += delimited(1, b"".join(encoded[:part]))
            else:
                out += b"".join(key(1, wire) + value for value in encoded[:part])
            out += self.unknown()
            del encoded[:part]
        return out

    def feature(self) -> bytes:
        """A ``Feature``: no list, an empty one, or one sent in parts."""
        choice = self.rng.randrange(5)
        if choice == 0:
            return self.unknown()
        kind = KINDS[self.rng.randrange(3)]
        number = KINDS.index(kind) + 1
        count = self.rng.randrange(5) if choice > 1 else 0
        first = self.rng.randrange(count + 1)
        out = delimited(number, self.values(kind, first)) + self.unknown()
        if count > first or self.rng.randrange(2):
            out += delimited(number, self.values(kind, count - first))
        return out

    def example(self) -> bytes:
        """An ``Example`` of features of distinct names (a name sent twice is
        kept once parsed), its ``features`` at times sent in two parts."""
        names = self.rng.sample(NAMES, self.rng.randrange(len(NAMES) + 1))
        entries = []
        for name in names:
            name_field = delimited(1, name.encode())
            value_field = delimited(2, self.feature())
            # No unknown field in an entry: upb keeps such an entry out of
            # the map (the wire count counts it all the same).
            if self.rng.randrange(2):
                entries.append(name_field + value_field)
            else:
                entries.append(value_field + name_field)
        cut = self.rng.randrange(len(entries) + 1)
        out = b""
        for part in (entries[:cut], entries[cut:]):
            if part or self.rng.randrange(3) == 0:
                body = b"".join(delimited(1, entry) for entry in part)
                out += delimited(1, body + self.unknown()) + self.unknown()
        return out

    def request(self) -> bytes:
        """A ``RegressionRequest``; its input in one or more occurrences, at
        times after a list that the other kind replaces."""
        head = delimited(1, messages.ModelSpec(name="m").SerializeToString())
        with_context = self.rng.randrange(2)
        number = 2 if with_context else 1
        lists = []
        if self.rng.randrange(4) == 0:
            # Replaced by the lists after it (Input's oneof).
            replaced = delimited(1, self.example()) * 3
            lists.append(delimited(3 - number, replaced))
        for _ in range(self.rng.randrange(1, 4)):
            # Examples sent several times in a row, at times.
            body = b"".join(
                delimited(1, self.example()) * self.rng.choice((1, 1, 2, 5))
                + self.unknown()
                for _ in range(self.rng.randrange(5))
            )
            if with_context and self.rng.randrange(2):
                body += delimited(2, self.example())
            lists.append(delimited(number, body))
        inputs = b""
        while lists:
            part = self.rng.randrange(1, len(lists) + 1)
            inputs += delimited(2, b"".join(lists[:part]) + self.unknown())
            inputs += self.unknown()
            del lists[:part]
        return head + self.unknown() + inputs


def counted(request: messages.RegressionRequest) -> tuple[int, int, int]:
    """(elements, bytes, values in columns of mixed kinds) the parsed
    request's examples make by the costs :mod:`modelserver.examplesize`
    states, worked out on the parsed message."""
    kind = request.input.WhichOneof("kind")
    if kind is None:
        return 0, 0, 0
    listed = getattr(request.input, kind)
    context = {}
    if kind == "example_list_with_context":
        context = dict(listed.context.features.feature)
    elements = size = 0
    kinds: dict[str, set[str]] = {}
    numbers: dict[str, int] = {}
    for example in listed.examples:
        size += 48
        merged = {**context, **example.features.feature}
        for name, feature in merged.items():
            which = feature.WhichOneof("kind")
            values = list(getattr(feature, which).value) if which else []
            elements += len(values)
            size += 16
            if which == "bytes_list":
                size += sum(48 + len(value) for value in values)
            else:
                size += 8 * len(values)
                numbers[name] = numbers.get(name, 0) + len(values)
            if values:
                kinds.setdefault(name, set()).add(str(which))
    # A float or int64 value in a column of several kinds: 56 bytes, not 8.
    mixed = sum(numbers.get(name, 0) for name, seen in kinds.items() if len(seen) > 1)
    return elements, size + 48 * mixed, mixed


def check(data: bytes, limits: TensorLimits) -> bool:
    return examplesize.check_request("Regress", memoryview(data), limits)


def assert_counts(data: bytes, elements: int, size: int) -> None:
    """The wire count of ``data`` is ``elements`` and ``size``: the limits it
    makes are met, one under refused."""
    assert check(data, TensorLimits(max_elements=elements, max_bytes=size))
    with pytest.raises(InvalidInput, match="^The request's examples hold at least"):
        check(data, TensorLimits(max_elements=elements, max_bytes=size - 1))
    if elements:
        with pytest.raises(InvalidInput):
            check(data, TensorLimits(max_elements=elements - 1, max_bytes=size))


def test_the_wire_count_is_what_the_parsed_request_holds() -> None:
    rng = random.Random(22)
    writer = Writer(rng)
    seen_mixed = seen_context = 0
    for _ in range(GENERATED):
        data = writer.request()
        request = messages.RegressionRequest.FromString(data)
        elements, size, mixed = counted(request)
        # Both passes of the walk find the examples the parser keeps.
        located = examplewire.locate(memoryview(data))
        handed_out = examplewire.examples(memoryview(data), located)
        assert located.examples == sum(count for _, count in handed_out)
        assert located.examples == len(
            request.input.example_list.examples
            or request.input.example_list_with_context.examples
        )
        if not size:  # no example kept
            assert check(data, TensorLimits(max_elements=0, max_bytes=0))
            continue
        seen_context += bool(request.input.example_list_with_context.context.features)
        seen_mixed += bool(mixed)
        assert_counts(data, elements, size)
        # The parsed Input (REST, small gRPC messages) counts the same.
        examplesize.check_input(
            request.input, TensorLimits(max_elements=elements, max_bytes=size)
        )
        with pytest.raises(InvalidInput, match="^The request's examples hold"):
            examplesize.check_input(
                request.input, TensorLimits(max_elements=elements, max_bytes=size - 1)
            )
    # The cases the generator is for did come up.
    assert seen_context > 20
    assert seen_mixed > 20


def parses(data: bytes) -> bool:
    """Whether the parser the walk stands in front of takes ``data``."""
    try:
        serializedinput.parse("Regress", data)
    except DecodeError:
        return False
    return True


def walks(data: bytes) -> bool:
    try:
        examplewire.locate(memoryview(data))
    except examplewire.Malformed:
        return False
    return True


def nested(groups: int) -> bytes:
    return key(3, START_GROUP) * groups + key(3, END_GROUP) * groups


EXAMPLE = delimited(
    1, delimited(1, delimited(1, delimited(1, b"a") + delimited(2, b"")))
)
"""An example field: one feature ``a`` of no list."""


@pytest.mark.parametrize(
    ("case", "data", "valid"),
    [
        ("empty", b"", True),
        ("field number 0", b"\x00\x00", False),
        ("field number 0, bytes", b"\x02\x00", False),
        ("field number 0 in a group", b"\x1b\x03\x00\x00\x04\x1c", True),
        ("wire type 6", b"\x1e", False),
        ("wire type 6 in a group", b"\x1b\x1e\x1c", False),
        ("wire type 7", b"\x1f", False),
        ("end group closing nothing", b"\x1c", False),
        ("end group of another number", b"\x1b\x24", False),
        ("group never closed", b"\x1b", False),
        ("group closed past its message", delimited(2, b"\x1b") + b"\x1c", False),
        ("varint of 10 bytes", b"\x18" + b"\xff" * 9 + b"\x01", True),
        ("varint of 10 bytes, overflowing", b"\x18" + b"\xff" * 9 + b"\x7f", True),
        ("varint of 11 bytes", b"\x18" + b"\xff" * 10 + b"\x01", False),
        ("varint cut off", b"\x18\x80", False),
        ("tag of 5 bytes", b"\x98\x80\x80\x80\x00\x00", True),
        ("tag of 6 bytes", b"\x98\x80\x80\x80\x80\x00\x00", False),
        ("tag over 32 bits", b"\xf8\xff\xff\xff\x1f\x00", False),
        ("largest field number", b"\xf8\xff\xff\xff\x0f\x00", True),
        ("tag cut off", b"\x98", False),
        ("length of 5 bytes", b"\x12\x80\x80\x80\x80\x00", True),
        ("length of 6 bytes", b"\x12\x80\x80\x80\x80\x80\x00", False),
        ("length of 2**31", b"\x12\x80\x80\x80\x80\x08", False),
        ("length past the end", b"\x12\x02\x0a", False),
        ("length missing", b"\x12", False),
        ("example past its list", delimited(2, b"\x0a\x02\x0a\x05abcde"), False),
        ("list past its input", delimited(2, b"\x0a\x04") + EXAMPLE, False),
        ("fixed64 cut off", b"\x19" + bytes(7), False),
        ("fixed32 cut off", delimited(2, b"\x0d" + bytes(3)), False),
        ("input of another wire type", b"\x10\x05\x15abcd", True),
        ("example of another wire type", delimited(2, delimited(1, b"\x08\x01")), True),
        ("groups 100 deep", nested(100), True),
        ("groups 101 deep", nested(101), False),
        ("groups 99 deep in the input", delimited(2, nested(99)), True),
        ("groups 100 deep in the input", delimited(2, nested(100)), False),
        ("groups 98 deep in a list", delimited(2, delimited(1, nested(98))), True),
        ("groups 99 deep in a list", delimited(2, delimited(1, nested(99))), False),
    ],
)
def test_the_walk_reads_what_upb_reads(case: str, data: bytes, valid: bool) -> None:
    assert parses(data) is valid, case
    assert walks(data) is valid, case


def test_a_list_sent_after_the_other_kind_replaces_it() -> None:
    other = delimited(2, delimited(1, EXAMPLE * 5))
    listed = delimited(2, delimited(2, EXAMPLE * 2))
    data = other + listed + other
    request = messages.RegressionRequest.FromString(data)
    assert len(request.input.example_list.examples) == 5
    located = examplewire.locate(memoryview(data))
    assert located.examples == 5
    assert located.run == 3
    # One example: 48 bytes, and 16 for its feature of no list.
    assert_counts(data, 0, 5 * 64)


def test_an_entry_the_parser_leaves_out_does_not_replace_the_context() -> None:
    # upb leaves a map entry holding an unknown field out of the map, so the
    # context's feature of that name is merged into the example: counted as
    # the example's own, a large context would be free.
    wide = delimited(2, delimited(1, delimited(1, b"x" * 10_000)))
    context = delimited(1, delimited(1, delimited(1, b"w") + wide))
    entry = delimited(1, b"w") + key(9, VARINT) + b"\x01" + delimited(2, b"")
    example = delimited(1, delimited(1, entry))
    data = delimited(
        2, delimited(2, delimited(1, example) * 100 + delimited(2, context))
    )
    request = messages.RegressionRequest.FromString(data)
    assert all(
        "w" not in parsed.features.feature
        for parsed in request.input.example_list_with_context.examples
    )
    elements, size, _ = counted(request)
    assert size > 100 * 10_000
    assert_counts(data, elements, size)


@pytest.mark.parametrize("limit", [0, 1, 63, 64, 65, 64 * 37, 64 * 100, 64 * 131])
def test_examples_alike_in_a_row_count_as_one_after_the_other(limit: int) -> None:
    other = delimited(1, delimited(1, delimited(1, delimited(1, b"b"))))
    examples = [EXAMPLE] * 37 + [other] + [EXAMPLE] * 93
    in_a_row = delimited(2, delimited(1, b"".join(examples)))
    # An unknown field after each: no two example fields side by side.
    apart = delimited(2, delimited(1, b"".join(e + b"\x18\x00" for e in examples)))
    assert examplewire.locate(memoryview(in_a_row)).examples == 131
    answers = []
    for data in (in_a_row, apart):
        try:
            check(data, TensorLimits(max_elements=0, max_bytes=limit))
        except InvalidInput as exc:
            answers.append(exc.message)
        else:
            answers.append("")
    assert answers[0] == answers[1]
    # 64 bytes an example.
    assert bool(answers[0]) is (limit < 64 * 131)


def test_a_malformed_example_gives_the_error_the_whole_request_gives() -> None:
    corrupt = b"\x0a\x05\x0a\x03\x0a\xff\xff"
    data = delimited(2, delimited(1, EXAMPLE * 1000 + delimited(1, corrupt)))
    with pytest.raises(DecodeError) as whole:
        messages.RegressionRequest.FromString(data)
    with pytest.raises(DecodeError) as walked:
        check(data, TensorLimits(max_elements=10))
    assert str(walked.value) == str(whole.value)
    # Refused before it is reached, as the count stops at the limits.
    with pytest.raises(InvalidInput):
        check(data, TensorLimits(max_bytes=64 * 999))


def mutate(rng: random.Random, data: bytes) -> bytes:
    """``data`` with a byte changed, bytes inserted, removed or repeated, or
    cut short."""
    changed = bytearray(data)
    at = rng.randrange(len(data) + 1)
    choice = rng.randrange(5)
    if choice == 0 and data:
        changed[min(at, len(data) - 1)] = rng.randrange(256)
    elif choice == 1:
        changed[at:at] = rng.randbytes(rng.randrange(1, 4))
    elif choice == 2:
        del changed[at : at + rng.randrange(1, 4)]
    elif choice == 3:
        changed[at:at] = data[at : at + rng.randrange(1, 40)]
    else:
        del changed[at:]
    return bytes(changed)


def test_mutated_requests_are_read_as_upb_reads_them_and_never_counted_less() -> None:
    rng = random.Random(27)
    writer = Writer(rng)
    outcomes = {"walked": 0, "malformed": 0, "counted": 0}
    for _ in range(MUTATED):
        data = writer.request()
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            data = mutate(rng, data)
        readable = walks(data)
        assert readable is parses(data), data
        if not readable:
            outcomes["malformed"] += 1
            continue
        outcomes["walked"] += 1
        try:
            request = messages.RegressionRequest.FromString(data)
        except DecodeError:
            continue  # an example or the context does not parse
        elements, size, _ = counted(request)
        if not size:
            continue
        outcomes["counted"] += 1
        # A feature sent twice counts twice on the wire (kept once parsed):
        # the count may be more than the request holds, never less.
        with pytest.raises(InvalidInput):
            check(data, TensorLimits(max_elements=elements, max_bytes=size - 1))
    # Each outcome came up often.
    assert min(outcomes.values()) > MUTATED // 20, outcomes


def test_the_walk_stops_once_its_lists_hold_more_examples_than_it_may_count() -> None:
    tiny = b"\x0a\x00\x0a\x02\x0a\x00" * 1000  # 2,000 examples, unlike in a row
    head = delimited(1, delimited(1, b"m"))
    whole = head + delimited(2, delimited(1, tiny))
    assert examplewire.locate(memoryview(whole), most=2000).examples == 2000
    with pytest.raises(examplewire.TooMany) as stopped:
        examplewire.locate(memoryview(whole), most=1999)
    assert stopped.value.examples == 2000
    # Bytes past that point are not walked: a broken tail is not seen.
    broken = head + delimited(2, delimited(1, tiny + b"\x0a\x7f"))
    with pytest.raises(examplewire.Malformed):
        examplewire.locate(memoryview(broken))
    with pytest.raises(examplewire.TooMany):
        examplewire.locate(memoryview(broken), most=100)


def test_replaced_lists_count_toward_the_examples_walked() -> None:
    # 200 empty examples in an ExampleList, replaced by one example with
    # context: the parser keeps one, but builds all 201 first.
    head = delimited(1, delimited(1, b"m"))
    replaced = delimited(2, delimited(1, b"\x0a\x00" * 200))
    kept = delimited(2, delimited(2, b"\x0a\x00"))
    data = memoryview(head + replaced + kept)
    assert examplewire.locate(data, most=201).examples == 1
    with pytest.raises(examplewire.TooMany):
        examplewire.locate(data, most=200)
